//! The replica behind a bounded queue: one thread owns the SQLite connection and runs jobs one at
//! a time, so async code never blocks on the disk and the database has a single writer.
//!
//! Invariant: jobs run in the order they were queued; a job's transaction has committed (or
//! failed) before its caller gets the answer.

use super::TransportError;
use crate::replica::Replica;
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for the replica thread at most; callers wait for room beyond that.
pub const REPLICA_QUEUE_MAX: usize = 1024;

/// How long a health check waits for the replica thread.
pub const HEALTH_CHECK_TIMEOUT_MS: u64 = 5_000;

type Job = Box<dyn FnOnce(&mut Replica) + Send>;

/// A cloneable handle to the replica thread.
#[derive(Clone)]
pub struct ReplicaHandle {
    jobs: mpsc::Sender<Job>,
}

impl ReplicaHandle {
    /// Moves `replica` onto its own thread. The thread ends when every handle is dropped.
    pub fn spawn(
        mut replica: Replica,
    ) -> Result<(Self, std::thread::JoinHandle<()>), TransportError> {
        let (jobs, mut rx) = mpsc::channel::<Job>(REPLICA_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("replica-{}", replica.node()))
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut replica);
                }
            })
            .map_err(TransportError::Io)?;
        Ok((Self { jobs }, thread))
    }

    /// Whether the replica thread answers and its database reads (the watchdog's check).
    pub async fn check_health(&self) -> Result<(), String> {
        self.call(|r| r.check_readable())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Whether the replica thread answers within [`HEALTH_CHECK_TIMEOUT_MS`] and its database
    /// takes a write (`/healthz`).
    pub async fn check_writable(&self) -> Result<(), String> {
        let check = self.call(|r| r.check_writable(super::now_ms()));
        match tokio::time::timeout(
            std::time::Duration::from_millis(HEALTH_CHECK_TIMEOUT_MS),
            check,
        )
        .await
        {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the replica thread did not answer within {HEALTH_CHECK_TIMEOUT_MS} ms"
            )),
        }
    }

    /// Runs `f` on the replica thread and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> R + Send + 'static,
    ) -> Result<R, TransportError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |replica| {
            // The caller may have gone away; then nobody wants the answer.
            let _ = tx.send(f(replica));
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| TransportError::ReplicaGone)?;
        rx.await.map_err(|_| TransportError::ReplicaGone)
    }
}
