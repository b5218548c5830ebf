//! HQ's QUIC endpoint: one task per store connection driving a [`HubSession`], a broadcast of
//! moved streams so that realtime stores are notified, and graceful shutdown.
//!
//! Invariants: a connection task never decides anything itself (the session does); a push is
//! acknowledged only after the replica thread committed it; connections beyond
//! [`CONNECTIONS_MAX`] are refused; on shutdown HQ stops accepting, lets every connection task
//! finish its current frame (so in-flight transactions commit), then closes the endpoint.

use super::actor::ReplicaHandle;
use super::metrics::{Direction, NodeRole, OpenSession, SyncMetrics};
use super::{
    CONNECTIONS_MAX, TransportError, now_ms, read_frame, tls, write_frames, write_frames_as,
};
use crate::changeset::Op;
use crate::ids::{StreamId, Topic};
use crate::protocol::frame::FrameDecoder;
use crate::protocol::session::HubSession;
use crate::replica::Committed;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinSet;

/// Moved-stream notices buffered per connection; a connection that lags further skips them and
/// relies on its store's periodic pull.
pub const NOTIFY_QUEUE_MAX: usize = 1024;

/// How often HQ looks for streams moved by another process writing its database.
pub const HEADS_POLL_MS: u64 = 500;

/// Connections that have not authenticated yet, at most, counted apart from the stores' own
/// ([`CONNECTIONS_MAX`]): strangers cannot take the slots of enrolled stores.
pub const UNAUTHENTICATED_MAX: usize = 256;
/// How long a connection may take from its first packet to an authenticated session (or an
/// answered enrollment).
pub const AUTHENTICATION_TIMEOUT_MS: u64 = 10_000;
/// Largest frame HQ reads before authentication: a `Hello` with some 40,000 cursors, well
/// below the 4 MiB a store's frames may take.
pub const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 1024 * 1024;

/// Streams that moved, as broadcast to connection tasks.
pub type Moved = Arc<Vec<(StreamId, u64)>>;

/// HQ's sync service.
#[derive(Clone)]
pub struct Hub {
    replica: ReplicaHandle,
    /// Read-only connections (WAL readers) for reads that must not wait behind applying.
    readers: Arc<[ReplicaHandle]>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    moved: broadcast::Sender<Moved>,
    metrics: Arc<SyncMetrics>,
}

impl Hub {
    /// A hub over HQ's replica.
    pub fn new(replica: ReplicaHandle) -> Self {
        let (moved, _) = broadcast::channel(NOTIFY_QUEUE_MAX);
        Self {
            replica,
            readers: Arc::from(Vec::new()),
            next_reader: Default::default(),
            moved,
            metrics: Arc::new(SyncMetrics::new(NodeRole::Hq)),
        }
    }

    /// HQ's sync metrics (`/metrics`).
    pub fn metrics(&self) -> &Arc<SyncMetrics> {
        &self.metrics
    }

    /// The same hub with read-only connections to HQ's database for [`Hub::reader`].
    pub fn with_readers(mut self, readers: Vec<ReplicaHandle>) -> Self {
        self.readers = readers.into();
        self
    }

    /// HQ's replica: the single writer, on which sessions apply what stores push.
    pub fn replica(&self) -> &ReplicaHandle {
        &self.replica
    }

    /// A connection for reads (reports, look-ups of the HQ API): the read-only readers in turn,
    /// so that no read waits behind applying or delays it; the writer if there are none.
    pub fn reader(&self) -> &ReplicaHandle {
        match self.readers.len() {
            0 => &self.replica,
            n => {
                let i = self
                    .next_reader
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                &self.readers[i % n]
            }
        }
    }

    /// Commits a change set at HQ (a price, a promotion, a directory change) and notifies every
    /// connected store that follows the stream.
    pub async fn commit_local(
        &self,
        topic: Topic,
        ops: Vec<Op>,
    ) -> Result<Committed, TransportError> {
        let committed = self
            .replica
            .call(move |r| r.commit_local(topic, ops, now_ms()))
            .await?
            .map_err(|e| TransportError::Replica(e.to_string()))?;
        self.publish(vec![(committed.stream.clone(), committed.seq)]);
        Ok(committed)
    }

    /// Tells connection tasks that streams moved.
    pub fn publish(&self, moved: Vec<(StreamId, u64)>) {
        // No receivers just means no store is connected.
        let _ = self.moved.send(Arc::new(moved));
    }

    /// Notices streams moved by other writers of HQ's database (the CLI beside a running server)
    /// and notifies stores, until `shutdown` turns true.
    pub async fn watch_heads(&self, mut shutdown: watch::Receiver<bool>) {
        // `None` until the first look. (An empty map is not "not looked yet": a fresh HQ has no
        // stream at all, and its first catalog must be published like any later write.)
        let mut known: Option<BTreeMap<StreamId, u64>> = None;
        loop {
            match self.replica.call(|r| r.heads()).await {
                Ok(Ok(heads)) => {
                    let heads = heads.into_iter().map(|(s, h)| (s, h.seq));
                    match known.as_mut() {
                        None => known = Some(heads.collect()),
                        Some(known) => {
                            let moved: Vec<(StreamId, u64)> =
                                heads.filter(|(s, seq)| known.get(s) != Some(seq)).collect();
                            if !moved.is_empty() {
                                known.extend(moved.iter().cloned());
                                self.publish(moved);
                            }
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!("reading stream heads: {e}"),
                Err(_) => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(HEADS_POLL_MS)) => {}
                _ = super::stopped(&mut shutdown) => break,
            }
        }
    }

    /// Serves store connections on `endpoint` until `shutdown` turns true.
    pub async fn serve(&self, endpoint: quinn::Endpoint, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let strangers = Arc::new(Semaphore::new(UNAUTHENTICATED_MAX));
        let mut tasks = JoinSet::new();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => incoming,
                _ = super::stopped(&mut shutdown) => break,
            };
            let Some(incoming) = incoming else { break };
            let Ok(stranger) = strangers.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "connection refused: {UNAUTHENTICATED_MAX} connections already authenticating");
                incoming.refuse();
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "connection refused: {CONNECTIONS_MAX} connections already");
                incoming.refuse();
                continue;
            };
            let hub = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let remote = incoming.remote_address();
                if let Err(e) = hub.connection(incoming, stranger, shutdown).await {
                    tracing::info!(%remote, "connection ended: {e}");
                }
                drop(permit);
            });
            // Reap finished tasks so the set does not grow with every connection ever made.
            while tasks.try_join_next().is_some() {}
        }
        tracing::info!(
            "sync endpoint stops accepting; waiting for {} connections",
            tasks.len()
        );
        while tasks.join_next().await.is_some() {}
        endpoint.close(0u32.into(), b"hq shutting down");
        endpoint.wait_idle().await;
    }

    /// One connection. `stranger` is its place among the connections not yet authenticated,
    /// given up once the store has authenticated.
    async fn connection(
        &self,
        incoming: quinn::Incoming,
        stranger: tokio::sync::OwnedSemaphorePermit,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), TransportError> {
        let mut stranger = Some(stranger);
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(AUTHENTICATION_TIMEOUT_MS);
        let too_slow = || {
            TransportError::Session(crate::protocol::SessionError::Timeout(
                AUTHENTICATION_TIMEOUT_MS,
            ))
        };
        // Shutdown ends a connection at any point, also one still in its handshake or one
        // that never opens its session stream (it would otherwise hold HQ's shutdown until
        // the idle timeout).
        let conn = tokio::select! {
            conn = incoming => conn?,
            _ = tokio::time::sleep_until(deadline) => return Err(too_slow()),
            _ = super::stopped(&mut shutdown) => return Ok(()),
        };
        let (mut send, mut recv) = tokio::select! {
            streams = conn.accept_bi() => streams?,
            _ = tokio::time::sleep_until(deadline) => {
                conn.close(0u32.into(), b"not authenticated in time");
                return Err(too_slow());
            }
            _ = super::stopped(&mut shutdown) => {
                conn.close(0u32.into(), b"hq shutting down");
                return Ok(());
            }
        };
        let binding = tls::tls_binding(&conn)?;
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce);
        let mut session = Some(HubSession::new(nonce, binding));
        let mut moved = self.moved.subscribe();
        let mut decoder = FrameDecoder::default();
        decoder.set_frame_bytes_max(UNAUTHENTICATED_FRAME_BYTES_MAX);
        // Counts the session as open from authentication until this function returns.
        let mut counted: Option<OpenSession<'_>> = None;
        let result = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline), if stranger.is_some() => {
                    let e = crate::protocol::SessionError::Timeout(AUTHENTICATION_TIMEOUT_MS);
                    let _ = write_frames(&mut send, &[e.to_frame()]).await;
                    break Err(e.into());
                }
                frame = read_frame(&mut recv, &mut decoder) => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break Ok(()),
                        Err(e) => {
                            // Tell a peer that sent garbage why, then end.
                            if let TransportError::Frame(fe) = &e {
                                let reply = crate::protocol::SessionError::Frame(fe.clone()).to_frame();
                                let _ = write_frames(&mut send, &[reply]).await;
                            }
                            break Err(e);
                        }
                    };
                    let Some(mut s) = session.take() else { break Err(TransportError::Closed) };
                    // Answered in the store's own version (an agent one version behind
                    // during a roll-out is sent nothing it lacks).
                    s.set_peer_version(decoder.peer_version());
                    self.metrics.frame(Direction::In, &frame);
                    let is_push = matches!(frame, crate::protocol::frame::Frame::Push { .. });
                    let started = std::time::Instant::now();
                    let (s, result) = self.replica.call(move |r| {
                        let result = s.handle(now_ms(), frame, r);
                        (s, result)
                    }).await?;
                    if is_push {
                        self.metrics.applied_in(started.elapsed());
                    }
                    if stranger.is_some() && s.peer().is_some() {
                        // Authenticated: a store's connection from now on.
                        stranger = None;
                        decoder.set_frame_bytes_max(crate::protocol::frame::FRAME_BYTES_MAX);
                        counted = Some(self.metrics.open_session());
                    }
                    session = Some(s);
                    match result {
                        Ok(out) => {
                            if let Some(peer) = session.as_ref().and_then(|s| s.peer()) {
                                for reason in &out.rejected {
                                    tracing::warn!(store = %peer.node, "refused change set: {reason}");
                                }
                            }
                            for refusal in &out.rejected {
                                self.metrics.rejected(refusal.kind());
                            }
                            self.metrics.frames(Direction::Out, &out.frames);
                            write_frames_as(&mut send, &out.frames, decoder.peer_version()).await?;
                            if !out.moved.is_empty() {
                                self.publish(out.moved);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(remote = %conn.remote_address(), "session refused: {e}");
                            let _ = write_frames(&mut send, &[e.to_frame()]).await;
                            break Err(e.into());
                        }
                    }
                }
                notice = moved.recv() => {
                    let frame = match notice {
                        Ok(streams) => session.as_ref().and_then(|s| s.notify(&streams)),
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => break Ok(()),
                    };
                    if let Some(frame) = frame {
                        write_frames_as(&mut send, &[frame], decoder.peer_version()).await?;
                    }
                }
                _ = super::stopped(&mut shutdown) => break Ok(()),
            }
        };
        let _ = send.finish();
        // Give the peer a moment to read the last frames before the connection goes.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), send.stopped()).await;
        conn.close(0u32.into(), b"session over");
        drop(counted);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::model::Product;
    use crate::replica::{Durability, Identity, Replica};
    use std::time::Duration;

    fn open(path: &std::path::Path, key: &ed25519_dalek::SigningKey) -> Replica {
        let identity = Identity {
            node: NodeId::hq(),
            key: key.clone(),
        };
        Replica::open(path, identity, key.verifying_key(), Durability::Relaxed).unwrap()
    }

    fn cola() -> Op {
        Op::ProductUpsert(Product {
            sku: "cola".parse().unwrap(),
            name: "Cola".into(),
            category: "drinks".into(),
            barcodes: vec![],
            unit_cost_cents: 50,
            active: true,
        })
    }

    // Issue "Sync on real lines", item 12: the first catalog of a fresh HQ reached a realtime
    // store only at its 30 s poll. The heads watcher's first look found no stream at all, kept
    // an empty map, and took its next look (the catalog written by the CLI) for the first one,
    // so it published nothing and no store was told.
    #[test]
    fn the_first_write_to_an_hq_without_streams_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.db");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let replica = open(&path, &key);
        assert!(replica.heads().unwrap().is_empty(), "a fresh HQ");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (handle, thread) = ReplicaHandle::spawn(replica).unwrap();
        let hub = Hub::new(handle);
        let mut moved = hub.moved.subscribe();
        let (stop, shutdown) = watch::channel(false);
        let watcher = {
            let hub = hub.clone();
            runtime.spawn(async move { hub.watch_heads(shutdown).await })
        };
        // The watcher's first look is done; then the CLI writes the catalog beside the server.
        std::thread::sleep(Duration::from_millis(2 * HEADS_POLL_MS));
        let mut cli = open(&path, &key);
        let product = cola();
        cli.commit_local(Topic::Catalog, vec![product], 1).unwrap();
        let notice = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(5 * HEADS_POLL_MS), moved.recv()).await
        });
        let _ = stop.send(true);
        runtime.block_on(watcher).unwrap();
        drop(hub);
        drop(runtime);
        let _ = thread.join();
        let notice = notice.expect("no notice within 2.5 s").unwrap();
        assert_eq!(
            *notice,
            vec![(StreamId::new(NodeId::hq(), Topic::Catalog), 1)]
        );
    }

    // Issue "Sync on real lines", item 11: HQ's reports ran as jobs on the replica's single
    // writer thread, so every report delayed applying. A read through `Hub::reader` is answered
    // while the writer thread is busy (here: held until the read is done).
    #[test]
    fn a_read_is_answered_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.db");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut writer = open(&path, &key);
        let product = cola();
        writer
            .commit_local(Topic::Catalog, vec![product], 1)
            .unwrap();
        let reader = open(&path, &key);
        reader
            .connection()
            .pragma_update(None, "query_only", true)
            .unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (writer, writer_thread) = ReplicaHandle::spawn(writer).unwrap();
        let (reader, reader_thread) = ReplicaHandle::spawn_reader(reader).unwrap();
        let hub = Hub::new(writer).with_readers(vec![reader]);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let busy = {
            let hub = hub.clone();
            runtime.spawn(async move {
                hub.replica()
                    .call(move |_| {
                        let _ = started_tx.send(());
                        held.recv_timeout(Duration::from_secs(10)).is_ok()
                    })
                    .await
            })
        };
        started
            .recv_timeout(Duration::from_secs(5))
            .expect("the writer took the job");
        let read = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                hub.reader().call(|r| {
                    r.head(&StreamId::new(NodeId::hq(), Topic::Catalog))
                        .map(|h| h.seq)
                }),
            )
            .await
        });
        let _ = release.send(());
        let released = runtime.block_on(busy).unwrap().unwrap();
        drop(hub);
        drop(runtime);
        let _ = writer_thread.join();
        let _ = reader_thread.join();
        assert_eq!(
            read.expect("the read waited for the writer")
                .unwrap()
                .unwrap(),
            1
        );
        assert!(released, "the writer was held while the read ran");
    }
}
