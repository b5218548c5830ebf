//! The replica behind a bounded queue: one thread owns the SQLite connection and runs jobs one at
//! a time, so async code never blocks on the disk and the database has a single writer.
//!
//! Group commit (the writer): the jobs waiting together, up to [`GROUP_JOBS_MAX`], run inside
//! one `BEGIN IMMEDIATE` … `COMMIT`; each job's own transaction is a savepoint in it, so a job
//! that fails its checks rolls back alone. One fsync then makes the whole group durable.
//!
//! Invariants: jobs run in the order they were queued; a job's caller gets its answer only
//! after the transaction holding its writes has committed (or, if that commit failed, an error
//! instead of the answer); readers (`spawn_reader`) run each job on its own.

use super::TransportError;
use crate::replica::Replica;
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for the replica thread at most; callers wait for room beyond that.
pub const REPLICA_QUEUE_MAX: usize = 1024;
/// How long a health check waits for the replica thread.
pub const HEALTH_CHECK_TIMEOUT_MS: u64 = 5_000;
/// Jobs one group commit takes at most (the rest wait for the next group).
pub const GROUP_JOBS_MAX: usize = 256;

/// Hands a job's answer to its caller once the group is committed (or says it was not).
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut Replica) -> Deliver + Send>;

/// A cloneable handle to the replica thread.
#[derive(Clone)]
pub struct ReplicaHandle {
    jobs: mpsc::Sender<Job>,
}

impl ReplicaHandle {
    /// Moves `replica` onto its own thread as the node's writer: jobs waiting together commit
    /// together. The thread ends when every handle is dropped.
    pub fn spawn(replica: Replica) -> Result<(Self, std::thread::JoinHandle<()>), TransportError> {
        Self::spawn_with(replica, true)
    }

    /// Moves a read-only connection onto its own thread: each job on its own, no group.
    pub fn spawn_reader(
        replica: Replica,
    ) -> Result<(Self, std::thread::JoinHandle<()>), TransportError> {
        Self::spawn_with(replica, false)
    }

    fn spawn_with(
        mut replica: Replica,
        group_commit: bool,
    ) -> Result<(Self, std::thread::JoinHandle<()>), TransportError> {
        let (jobs, mut rx) = mpsc::channel::<Job>(REPLICA_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("replica-{}", replica.node()))
            .spawn(move || {
                let mut group = Vec::with_capacity(GROUP_JOBS_MAX);
                while let Some(job) = rx.blocking_recv() {
                    group.push(job);
                    while group.len() < GROUP_JOBS_MAX {
                        match rx.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    if group_commit {
                        run_group(&mut replica, group.drain(..));
                    } else {
                        for job in group.drain(..) {
                            job(&mut replica)(Ok(()));
                        }
                    }
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
        let (tx, rx) = oneshot::channel::<Result<R, String>>();
        let job: Job = Box::new(move |replica| {
            let answer = f(replica);
            Box::new(move |committed: Result<(), String>| {
                // The caller may have gone away; then nobody wants the answer.
                let _ = tx.send(committed.map(|()| answer));
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| TransportError::ReplicaGone)?;
        rx.await
            .map_err(|_| TransportError::ReplicaGone)?
            .map_err(TransportError::Replica)
    }
}

/// Runs `jobs` in one transaction and answers each after its commit. If the group cannot be
/// opened (another process holds the write lock past the busy timeout), each job runs on its
/// own, as without grouping; if the commit fails, every job of the group is told so.
fn run_group(replica: &mut Replica, jobs: impl Iterator<Item = Job>) {
    let conn = replica.connection();
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        for job in jobs {
            job(replica)(Ok(()));
        }
        return;
    }
    let delivers: Vec<Deliver> = jobs.map(|job| job(replica)).collect();
    let conn = replica.connection();
    let committed = conn
        .execute_batch("COMMIT")
        .map_err(|e| format!("group commit failed, nothing of it was written: {e}"));
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
        replica.forget_cached();
    }
    for deliver in delivers {
        deliver(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::Op;
    use crate::ids::{NodeId, Topic};
    use crate::model::{Product, Void};
    use crate::replica::{Durability, Identity};

    fn hq(path: &std::path::Path) -> Replica {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let identity = Identity {
            node: NodeId::hq(),
            key: key.clone(),
        };
        Replica::open(path, identity, key.verifying_key(), Durability::Full).unwrap()
    }

    fn product(sku: &str) -> Op {
        Op::ProductUpsert(Product {
            sku: sku.parse().unwrap(),
            name: sku.into(),
            category: "drinks".into(),
            barcodes: vec![],
            unit_cost_cents: 50,
            active: true,
        })
    }

    // Jobs queued while the writer is busy run in one transaction; one that fails its checks
    // (HQ writing a store's topic) fails alone, and its neighbours' writes are committed.
    // A reader runs each job on its own.
    #[test]
    fn jobs_waiting_together_commit_together_and_a_failing_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.db");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (writer, thread) = ReplicaHandle::spawn(hq(&path)).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (answers, in_group) = runtime.block_on(async {
            let busy = {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .call(move |_| {
                            let _ = held.recv_timeout(std::time::Duration::from_secs(10));
                        })
                        .await
                })
            };
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut jobs = Vec::new();
            for (i, topic) in [Topic::Catalog, Topic::Sales, Topic::Catalog]
                .into_iter()
                .enumerate()
            {
                let writer = writer.clone();
                jobs.push(tokio::spawn(async move {
                    writer
                        .call(move |r| {
                            let grouped = !r.connection().is_autocommit();
                            let op = if topic == Topic::Sales {
                                Op::Void(Void {
                                    id: "S001-V1".parse().unwrap(),
                                    store: NodeId::new("S001").unwrap(),
                                    original: "S001-R1".parse().unwrap(),
                                    at_ms: 0,
                                    reason: "x".into(),
                                })
                            } else {
                                product(&format!("sku{i}"))
                            };
                            (grouped, r.commit_local(topic, vec![op], 1).is_ok())
                        })
                        .await
                        .unwrap()
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
            let mut answers = Vec::new();
            let mut in_group = Vec::new();
            for job in jobs {
                let (grouped, ok) = job.await.unwrap();
                in_group.push(grouped);
                answers.push(ok);
            }
            (answers, in_group)
        });
        assert_eq!(
            answers,
            vec![true, false, true],
            "the failing job fails alone"
        );
        assert_eq!(
            in_group,
            vec![true, true, true],
            "the three ran in one group"
        );
        drop(writer);
        thread.join().unwrap();
        let reopened = hq(&path);
        let catalog = crate::ids::StreamId::new(NodeId::hq(), Topic::Catalog);
        assert_eq!(
            reopened.head(&catalog).unwrap().seq,
            2,
            "both neighbours committed"
        );

        let (reader, thread) = ReplicaHandle::spawn_reader(reopened).unwrap();
        let alone = runtime
            .block_on(reader.call(|r| r.connection().is_autocommit()))
            .unwrap();
        assert!(alone, "a reader does not group");
        drop(reader);
        thread.join().unwrap();
    }
}
