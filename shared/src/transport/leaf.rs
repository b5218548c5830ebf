//! The agent's side of the QUIC transport: enrollment, and the realtime connection that stays
//! up, reconnects with jittered backoff, pushes each local commit at once and pulls on notice.
//!
//! Invariants: a local commit is already durable before it is pushed, so losing the connection
//! at any moment loses nothing (the outbox resends); backoff is bounded
//! ([`RECONNECT_BACKOFF_MS_MAX`]) and jittered so that a fleet does not reconnect in lockstep
//! after HQ restarts.

use super::actor::ReplicaHandle;
use super::{SERVER_NAME, TransportError, now_ms, read_frame, tls, write_frames};
use crate::ids::{NodeId, RegionId};
use crate::protocol::frame::FrameDecoder;
use crate::protocol::session::{LeafSession, enroll_frame, enroll_reply};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// First reconnect delay.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 250;
/// Longest reconnect delay: a store is never out of touch much longer than this once HQ is back.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 15_000;
/// How long connecting (QUIC + TLS handshake) may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Where HQ is and how to trust it.
#[derive(Clone)]
pub struct HqAddress {
    pub addr: SocketAddr,
    /// HQ's certificate from the provisioning file, pinned.
    pub cert_der: Vec<u8>,
}

/// What the agent tells its status page about the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub connected: bool,
    /// Unix ms of the last frame from HQ.
    pub last_exchange_ms: Option<u64>,
    /// Why the last session ended.
    pub last_error: Option<String>,
}

async fn connect(hq: &HqAddress) -> Result<(quinn::Endpoint, quinn::Connection), TransportError> {
    let bind: SocketAddr = if hq.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(tls::client_config(&hq.cert_der)?);
    let connect_err = |reason: String| TransportError::Connect {
        addr: hq.addr,
        reason,
    };
    let connecting = endpoint
        .connect(hq.addr, SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| connect_err(format!("no answer within {CONNECT_TIMEOUT_MS} ms")))?
        .map_err(|e| connect_err(e.to_string()))?;
    Ok((endpoint, conn))
}

/// Enrolls this store at HQ with its freshly generated key and one-time token. Returns the
/// store's region.
pub async fn enroll(
    hq: &HqAddress,
    node: &NodeId,
    token: &str,
    key: &SigningKey,
) -> Result<RegionId, TransportError> {
    let (endpoint, conn) = connect(hq).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frames(
        &mut send,
        &[enroll_frame(node, token, &key.verifying_key())],
    )
    .await?;
    let mut decoder = FrameDecoder::default();
    let reply = read_frame(&mut recv, &mut decoder)
        .await?
        .ok_or(TransportError::Closed)?;
    let region = enroll_reply(reply)?;
    let _ = send.finish();
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    Ok(region)
}

/// The realtime link of a store: runs sessions with HQ until `shutdown` turns true.
pub struct RealtimeLink {
    pub hq: HqAddress,
    pub node: NodeId,
    pub key: SigningKey,
    /// Pull at least this often even without a notice.
    pub poll_interval_ms: u64,
    pub replica: ReplicaHandle,
    /// Signalled after every local commit, to push at once.
    pub local_commits: Arc<Notify>,
    pub status: watch::Sender<LinkStatus>,
}

impl RealtimeLink {
    /// Connects, syncs, stays connected; reconnects with backoff after any failure.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        while !*shutdown.borrow() {
            let started = now_ms();
            let result = self.session(&mut shutdown).await;
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = result.as_ref().err().map(ToString::to_string);
            });
            match &result {
                Ok(()) => tracing::info!("session with HQ ended"),
                Err(e) => tracing::warn!("session with HQ failed: {e}"),
            }
            if *shutdown.borrow() {
                break;
            }
            // A session that lasted a while resets the backoff; a quick failure doubles it.
            if now_ms().saturating_sub(started) > RECONNECT_BACKOFF_MS_MAX {
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
            }
            let jittered = backoff_ms / 2 + rand::random_range(0..=backoff_ms / 2);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(jittered)) => {}
                _ = super::stopped(&mut shutdown) => break,
            }
            backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
        }
    }

    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), TransportError> {
        let (endpoint, conn) = connect(&self.hq).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let binding = tls::tls_binding(&conn)?;
        let session = LeafSession::new(
            self.node.clone(),
            self.key.clone(),
            binding,
            self.poll_interval_ms,
        );
        let (mut session, frames) = self
            .replica
            .call(move |r| {
                let mut session = session;
                let frames = session.start(now_ms(), r);
                (session, frames)
            })
            .await?;
        write_frames(&mut send, &frames?).await?;
        self.status.send_modify(|s| s.connected = true);
        let mut decoder = FrameDecoder::default();
        let result = loop {
            let wake_at = session.poll_timeout();
            let sleep_ms = wake_at.map_or(60_000, |t| t.saturating_sub(now_ms()));
            let step = tokio::select! {
                frame = read_frame(&mut recv, &mut decoder) => match frame {
                    Ok(Some(frame)) => {
                        self.status.send_modify(|s| s.last_exchange_ms = Some(now_ms()));
                        Step::Frame(frame)
                    }
                    Ok(None) => break Err(TransportError::Closed),
                    Err(e) => break Err(e),
                },
                _ = self.local_commits.notified() => Step::LocalCommit,
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => Step::Timer,
                _ = super::stopped(shutdown) => break Ok(()),
            };
            let (s, frames) = self
                .replica
                .call(move |r| {
                    let now = now_ms();
                    let frames = match step {
                        Step::Frame(frame) => session.handle(now, frame, r),
                        Step::LocalCommit => session.local_commit(now, r),
                        Step::Timer => session.handle_timeout(now, r),
                    };
                    (session, frames)
                })
                .await?;
            session = s;
            match frames {
                Ok(frames) => write_frames(&mut send, &frames).await?,
                Err(e) => {
                    let _ = write_frames(&mut send, &[e.to_frame()]).await;
                    break Err(e.into());
                }
            }
        };
        let _ = send.finish();
        conn.close(0u32.into(), b"store disconnects");
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        result
    }
}

enum Step {
    Frame(crate::protocol::frame::Frame),
    LocalCommit,
    Timer,
}
