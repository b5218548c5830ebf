//! The agent's side of the QUIC transport: enrollment, and the link to HQ in the store's mode:
//! realtime (stays up, reconnects with jittered backoff, pushes each local commit at once, pulls
//! on notice), batch (connects on schedule or on request, exchanges everything, hangs up) or
//! hosted (stays up like realtime, follows only HQ's directory, and carries the POS's lookups to
//! HQ: [`LookupRequest`]).
//!
//! Invariants: a local commit is already durable before it is pushed, so losing the connection
//! at any moment loses nothing (the outbox resends); a store notices HQ within about
//! [`CONNECT_ATTEMPT_INTERVAL_MS`] of HQ listening again (attempts overlap, each bounded by
//! [`CONNECT_TIMEOUT_MS`]), and backoff is bounded ([`RECONNECT_BACKOFF_MS_MAX`]), reset by a
//! session that opened, and jittered, so that a fleet does not reconnect in lockstep after HQ
//! restarts; a store HQ refuses (revoked, unknown, another protocol version) waits
//! [`REFUSED_BACKOFF_MS`]. The session loop never waits on a write: frames go to a writer task,
//! so the store always reads what HQ sends (HQ may be blocked writing a batch to it).

use super::actor::ReplicaHandle;
use super::metrics::{Direction, OpenSession, SyncMetrics};
use super::{SERVER_NAME, TransportError, now_ms, read_frame, tls, write_frames};
use crate::ids::{NodeId, RegionId};
use crate::lookup::{LookupAnswer, LookupQuery};
use crate::model::StoreMode;
use crate::protocol::frame::FrameDecoder;
use crate::protocol::frame::{ErrorCode, Frame};
use crate::protocol::session::{LeafSession, SessionError, enroll_frame, enroll_reply};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// First reconnect delay.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 250;
/// Longest reconnect delay after a failed session or a round of failed attempts (jittered
/// between half and all of it).
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// Wait after HQ refused this store (revoked, not enrolled, authentication, protocol version):
/// that does not heal in a second, and HQ should not be asked again every second.
pub const REFUSED_BACKOFF_MS: u64 = 60_000;
/// How long one connection attempt (QUIC + TLS handshake) may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// While attempts go unanswered, a new one starts this often (jittered between half and all of
/// it): an HQ that starts listening again is found within about this long.
pub const CONNECT_ATTEMPT_INTERVAL_MS: u64 = 1_000;
/// Attempts in one round (at most this many in flight), before the backoff.
pub const CONNECT_ATTEMPTS_PER_ROUND: usize = 3;
/// Batches of frames waiting for the writer task at most. The session bounds what it has in
/// flight (pushes, one pull, lookups), so this is never reached in practice.
const OUTGOING_BATCHES_MAX: usize = 256;

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

fn client_endpoint(hq: &HqAddress) -> Result<quinn::Endpoint, TransportError> {
    let bind: SocketAddr = if hq.addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(tls::client_config(&hq.cert_der)?);
    Ok(endpoint)
}

/// One attempt, bounded by [`CONNECT_TIMEOUT_MS`].
async fn attempt(connecting: quinn::Connecting) -> Result<quinn::Connection, String> {
    match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT_MS} ms")),
    }
}

/// A value between half and all of `ms`.
fn jittered(ms: u64) -> u64 {
    ms / 2 + rand::random_range(0..=ms / 2)
}

/// Connects to HQ: up to [`CONNECT_ATTEMPTS_PER_ROUND`] attempts, a new one about every
/// [`CONNECT_ATTEMPT_INTERVAL_MS`] while the earlier ones are still waiting; the first to
/// succeed wins. A lost handshake packet or an HQ that was down a moment ago so costs about a
/// second, not a whole timeout.
async fn connect(hq: &HqAddress) -> Result<(quinn::Endpoint, quinn::Connection), TransportError> {
    let endpoint = client_endpoint(hq)?;
    let connect_err = |reason: String| TransportError::Connect {
        addr: hq.addr,
        reason,
    };
    let mut attempts = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut next_at = tokio::time::Instant::now();
    let mut last_error = String::from("no attempt made");
    loop {
        if started < CONNECT_ATTEMPTS_PER_ROUND && tokio::time::Instant::now() >= next_at {
            let connecting = endpoint
                .connect(hq.addr, SERVER_NAME)
                .map_err(|e| connect_err(e.to_string()))?;
            attempts.spawn(attempt(connecting));
            started += 1;
            next_at += Duration::from_millis(jittered(CONNECT_ATTEMPT_INTERVAL_MS));
        }
        if attempts.is_empty() && started >= CONNECT_ATTEMPTS_PER_ROUND {
            return Err(connect_err(last_error));
        }
        tokio::select! {
            done = attempts.join_next(), if !attempts.is_empty() => match done {
                Some(Ok(Ok(conn))) => return Ok((endpoint, conn)),
                Some(Ok(Err(e))) => last_error = e,
                Some(Err(e)) => last_error = e.to_string(),
                None => {}
            },
            _ = tokio::time::sleep_until(next_at), if started < CONNECT_ATTEMPTS_PER_ROUND => {}
        }
    }
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

/// How long one batch exchange may take before it is abandoned (and retried next time).
pub const BATCH_SESSION_MS_MAX: u64 = 300_000;

/// What one "sync now" did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// `realtime` (already connected: nothing to do) or `batch`.
    pub mode: String,
    pub pushed: u64,
    pub pulled: u64,
    pub error: Option<String>,
}

/// A request to exchange everything pending now; answered when the exchange is over.
pub type SyncRequest = oneshot::Sender<SyncOutcome>;

/// A question for HQ from the POS of a hosted store; answered with HQ's answer or why there is
/// none (not connected, refused). The asker bounds its wait ([`crate::protocol::session::LOOKUP_TIMEOUT_MS`]).
pub struct LookupRequest {
    pub query: LookupQuery,
    pub reply: oneshot::Sender<Result<LookupAnswer, String>>,
}

/// A lookup unanswered for this long ends the session (HQ is taken to be gone).
pub const LOOKUP_DEADLINE_MS: u64 = 2 * crate::protocol::session::LOOKUP_TIMEOUT_MS;

/// Lookups in flight on one session at most.
pub const LOOKUPS_IN_FLIGHT_MAX: usize = 64;

/// Answers every waiting lookup with "not connected".
fn refuse_waiting(lookups: &mut mpsc::Receiver<LookupRequest>) {
    while let Ok(req) = lookups.try_recv() {
        let _ = req.reply.send(Err("not connected to HQ".into()));
    }
}

/// Runs `work` while answering each lookup that arrives "not connected", so that the POS reads
/// its cache at once instead of waiting for a session that is not there.
async fn refusing_lookups<T>(
    work: impl std::future::Future<Output = T>,
    lookups: &mut mpsc::Receiver<LookupRequest>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(req) = lookups.recv() => {
                let _ = req.reply.send(Err("not connected to HQ".into()));
            }
        }
    }
}

/// Hands `frames` to the session's writer task.
async fn queue(
    outgoing: &mpsc::Sender<Vec<Frame>>,
    frames: Vec<Frame>,
) -> Result<(), TransportError> {
    if frames.is_empty() {
        return Ok(());
    }
    outgoing
        .send(frames)
        .await
        .map_err(|_| TransportError::Closed)
}

/// A daily window for scheduled batch exchanges, in UTC minutes of the day: `[start, end)`,
/// wrapping midnight when `end <= start` (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    pub start_min: u32,
    pub end_min: u32,
}

const DAY_MS: u64 = 86_400_000;

impl DailyWindow {
    /// Parses `HH:MM-HH:MM` (UTC).
    pub fn parse(text: &str) -> Result<Self, String> {
        let minute = |part: &str| -> Result<u32, String> {
            let (h, m) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("hour in `{part}`"))?,
                m.parse().map_err(|_| format!("minute in `{part}`"))?,
            );
            if h > 23 || m > 59 {
                return Err(format!("`{part}` is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM"))?;
        let window = Self {
            start_min: minute(a)?,
            end_min: minute(b)?,
        };
        if window.start_min == window.end_min {
            return Err(format!("`{text}` is an empty window"));
        }
        Ok(window)
    }

    /// Whether `t_ms` (Unix ms) falls in the window.
    pub fn contains(&self, t_ms: u64) -> bool {
        let m = ((t_ms % DAY_MS) / 60_000) as u32;
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }

    /// The first moment at or after `t_ms` inside the window.
    pub fn next_open(&self, t_ms: u64) -> u64 {
        if self.contains(t_ms) {
            return t_ms;
        }
        let day = t_ms - t_ms % DAY_MS;
        let start = day + u64::from(self.start_min) * 60_000;
        if start > t_ms { start } else { start + DAY_MS }
    }
}

/// How a session should behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    /// Stay connected until the store's mode changes or the connection fails.
    Realtime,
    /// Exchange everything pending, then hang up.
    Batch,
}

/// A store's link to HQ. It follows the store's mode as HQ's directory says it: realtime (stay
/// connected, reconnect with backoff) or batch (connect every `batch_interval_ms`, or when asked
/// through `sync_requests`, exchange everything pending, hang up).
pub struct StoreLink {
    pub hq: HqAddress,
    pub node: NodeId,
    pub key: SigningKey,
    /// Realtime: pull at least this often even without a notice.
    pub poll_interval_ms: u64,
    /// Batch: connect this often.
    pub batch_interval_ms: u64,
    /// Batch: connect on schedule only inside this daily window (`sync now` works any time).
    pub batch_window: Option<DailyWindow>,
    pub replica: ReplicaHandle,
    /// Signalled after every local commit, to push at once.
    pub local_commits: Arc<Notify>,
    pub status: watch::Sender<LinkStatus>,
    /// The store's sync metrics (`/metrics`).
    pub metrics: Arc<SyncMetrics>,
}

impl StoreLink {
    /// The store's mode from its own directory entry (realtime until the directory says).
    async fn mode(&self) -> StoreMode {
        let node = self.node.clone();
        match self.replica.call(move |r| r.store_info(&node)).await {
            Ok(Ok(Some(info))) => info.mode,
            _ => StoreMode::Realtime,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
        mut sync_requests: mpsc::Receiver<SyncRequest>,
        mut lookups: mpsc::Receiver<LookupRequest>,
    ) {
        let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        let mut next_batch_ms = now_ms();
        while !*shutdown.borrow() {
            let kind = match self.mode().await {
                StoreMode::Batch => SessionKind::Batch,
                // A hosted store stays connected like a realtime one; HQ sends it only the
                // directory, and its POS looks the rest up through the session.
                StoreMode::Realtime | StoreMode::Hosted => SessionKind::Realtime,
            };
            if kind == SessionKind::Batch {
                // Wait for the schedule or a request, answering the request after the exchange.
                let due = match self.batch_window {
                    Some(window) => window.next_open(next_batch_ms.max(now_ms())),
                    None => next_batch_ms,
                };
                let wait_ms = due.saturating_sub(now_ms());
                refuse_waiting(&mut lookups);
                let request = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => None,
                    req = sync_requests.recv() => req,
                    _ = super::stopped(&mut shutdown) => break,
                };
                let result = tokio::time::timeout(
                    Duration::from_millis(BATCH_SESSION_MS_MAX),
                    self.session(
                        SessionKind::Batch,
                        &mut shutdown,
                        &mut sync_requests,
                        &mut lookups,
                    ),
                )
                .await
                .unwrap_or_else(|_| Err(TransportError::Closed));
                next_batch_ms = now_ms() + self.batch_interval_ms;
                let outcome = self.finish(result, "batch");
                if let Some(req) = request {
                    let _ = req.send(outcome);
                }
                continue;
            }
            let result = self
                .session(
                    SessionKind::Realtime,
                    &mut shutdown,
                    &mut sync_requests,
                    &mut lookups,
                )
                .await;
            let failed = result.is_err();
            let opened = self.status.borrow().connected;
            let refused = matches!(
                &result,
                Err(TransportError::Session(SessionError::Peer { code, .. })) if matches!(
                    code,
                    ErrorCode::Revoked
                        | ErrorCode::NotEnrolled
                        | ErrorCode::AuthFailed
                        | ErrorCode::VersionMismatch
                )
            );
            self.finish(result, "realtime");
            if *shutdown.borrow() {
                break;
            }
            if !failed {
                // The session ended because the mode changed to batch. Everything was just
                // exchanged, so the first batch exchange is one interval away.
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                next_batch_ms = now_ms() + self.batch_interval_ms;
                continue;
            }
            // A session that opened resets the backoff; a failure doubles it (bounded); a
            // refusal waits long.
            if opened {
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
            }
            let wait_ms = if refused {
                jittered(REFUSED_BACKOFF_MS)
            } else {
                jittered(backoff_ms)
            };
            let waited = async {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => false,
                    _ = super::stopped(&mut shutdown) => true,
                }
            };
            if refusing_lookups(waited, &mut lookups).await {
                break;
            }
            backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
        }
    }

    /// Records how a session ended and makes its outcome.
    fn finish(&self, result: Result<(u64, u64), TransportError>, mode: &str) -> SyncOutcome {
        self.status.send_modify(|s| {
            s.connected = false;
            s.last_error = result.as_ref().err().map(ToString::to_string);
        });
        match &result {
            Ok(_) => tracing::info!(mode, "session with HQ ended"),
            Err(e) => tracing::warn!(mode, "session with HQ failed: {e}"),
        }
        let (pushed, pulled) = *result.as_ref().unwrap_or(&(0, 0));
        SyncOutcome {
            mode: mode.to_owned(),
            pushed,
            pulled,
            error: result.err().map(|e| e.to_string()),
        }
    }

    /// One session. Returns the change sets pushed and pulled.
    async fn session(
        &self,
        kind: SessionKind,
        shutdown: &mut watch::Receiver<bool>,
        sync_requests: &mut mpsc::Receiver<SyncRequest>,
        lookups: &mut mpsc::Receiver<LookupRequest>,
    ) -> Result<(u64, u64), TransportError> {
        // Shutdown does not wait out a connect attempt to an HQ that does not answer, and the
        // POS's lookups are answered "not connected" at once meanwhile (it reads its cache).
        let connecting = async {
            tokio::select! {
                connected = connect(&self.hq) => Some(connected),
                _ = super::stopped(shutdown) => None,
            }
        };
        let Some(connected) = refusing_lookups(connecting, lookups).await else {
            return Err(TransportError::Closed);
        };
        let (endpoint, conn) = connected?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let binding = tls::tls_binding(&conn)?;
        // The writer task: this loop hands it frames and goes back to reading at once.
        let (outgoing, mut to_write) = mpsc::channel::<Vec<Frame>>(OUTGOING_BATCHES_MAX);
        let writer = tokio::spawn(async move {
            while let Some(frames) = to_write.recv().await {
                write_frames(&mut send, &frames).await?;
            }
            let _ = send.finish();
            Ok::<(), TransportError>(())
        });
        let session = LeafSession::new(
            self.node.clone(),
            self.key.clone(),
            binding,
            self.poll_interval_ms,
        );
        let session = match kind {
            SessionKind::Batch => session.exchange_once(),
            SessionKind::Realtime => session,
        };
        let (mut session, frames) = self
            .replica
            .call(move |r| {
                let mut session = session;
                let frames = session.start(now_ms(), r);
                (session, frames)
            })
            .await?;
        let frames = frames?;
        self.metrics.frames(Direction::Out, &frames);
        queue(&outgoing, frames).await?;
        let mut decoder = FrameDecoder::default();
        // Counts the session as open from HQ's welcome until this function returns.
        let mut counted: Option<OpenSession<'_>> = None;
        let node = self.node.clone();
        // Lookups sent and not answered: id -> (sent at, asker).
        let mut pending: std::collections::HashMap<u64, (u64, oneshot::Sender<_>)> =
            Default::default();
        let mut next_lookup_id = 0u64;
        let result = loop {
            let wake_at = session.poll_timeout();
            // A lookup unanswered this long means HQ is gone even if QUIC has not noticed yet:
            // end the session so that the POS answers from its cache at once.
            let lookup_deadline = pending
                .values()
                .map(|(sent, _)| sent + LOOKUP_DEADLINE_MS)
                .min();
            if lookup_deadline.is_some_and(|t| t <= now_ms()) {
                break Err(TransportError::Connect {
                    addr: self.hq.addr,
                    reason: format!("HQ did not answer a lookup within {LOOKUP_DEADLINE_MS} ms"),
                });
            }
            let wake_at = wake_at.into_iter().chain(lookup_deadline).min();
            let sleep_ms = wake_at.map_or(60_000, |t| t.saturating_sub(now_ms()));
            let step = tokio::select! {
                frame = read_frame(&mut recv, &mut decoder) => match frame {
                    Ok(Some(frame)) => {
                        self.status.send_modify(|s| s.last_exchange_ms = Some(now_ms()));
                        self.metrics.frame(Direction::In, &frame);
                        Step::Frame(frame)
                    }
                    Ok(None) => break Err(TransportError::Closed),
                    Err(e) => break Err(e),
                },
                _ = self.local_commits.notified() => Step::LocalCommit,
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => Step::Timer,
                req = sync_requests.recv(), if kind == SessionKind::Realtime => {
                    // Connected already: everything is exchanged as it happens.
                    if let Some(req) = req {
                        let c = session.counters();
                        let _ = req.send(SyncOutcome { mode: "realtime".into(), pushed: c.pushed_change_sets, pulled: c.pulled_change_sets, error: None });
                    }
                    continue;
                }
                req = lookups.recv(), if session.is_open() => {
                    let Some(req) = req else { continue };
                    // A lookup the till gave up on stays here until HQ answers it: it still
                    // says HQ is slow (the deadline rule above ends the session by it).
                    if req.reply.is_closed() {
                        continue; // the asker gave up while the link was down
                    }
                    if pending.len() >= LOOKUPS_IN_FLIGHT_MAX {
                        let _ = req.reply.send(Err("too many lookups waiting for HQ".into()));
                        continue;
                    }
                    next_lookup_id += 1;
                    match session.lookup(next_lookup_id, &req.query) {
                        Ok(frame) => {
                            pending.insert(next_lookup_id, (now_ms(), req.reply));
                            if let Err(e) = queue(&outgoing, vec![frame]).await {
                                break Err(e);
                            }
                        }
                        Err(e) => {
                            let _ = req.reply.send(Err(e.to_string()));
                        }
                    }
                    continue;
                }
                _ = super::stopped(shutdown) => break Ok(()),
            };
            let node = node.clone();
            let is_batch = matches!(step, Step::Frame(Frame::Batch { .. }));
            let started = std::time::Instant::now();
            let (s, frames, mode) = self
                .replica
                .call(move |r| {
                    let now = now_ms();
                    let seeded_before = session.counters().seeded_parts;
                    let frames = match step {
                        Step::Frame(frame) => session.handle(now, frame, r),
                        Step::LocalCommit => session.local_commit(now, r),
                        Step::Timer => session.handle_timeout(now, r),
                    };
                    if session.counters().seeded_parts != seeded_before {
                        log_seeding(r);
                    }
                    let mode = r.store_info(&node).ok().flatten().map(|i| i.mode);
                    (session, frames, mode)
                })
                .await?;
            session = s;
            if is_batch {
                self.metrics.applied_in(started.elapsed());
            }
            for kind in session.take_refused() {
                self.metrics.rejected(kind);
            }
            if session.is_open() && counted.is_none() {
                counted = Some(self.metrics.open_session());
            }
            if session.is_open() && !self.status.borrow().connected {
                self.status.send_modify(|s| s.connected = true);
            }
            for (id, answer) in session.take_answers() {
                if let Some((_, reply)) = pending.remove(&id) {
                    let _ = reply.send(answer);
                }
            }
            match frames {
                Ok(frames) => {
                    self.metrics.frames(Direction::Out, &frames);
                    if let Err(e) = queue(&outgoing, frames).await {
                        break Err(e);
                    }
                }
                Err(e) => {
                    let _ = queue(&outgoing, vec![e.to_frame()]).await;
                    break Err(e.into());
                }
            }
            let done = match kind {
                SessionKind::Batch => session.is_idle(),
                // Finish what is in flight first, then follow the switch to batch.
                SessionKind::Realtime => mode == Some(StoreMode::Batch) && session.is_idle(),
            };
            if done {
                break Ok(());
            }
        };
        drop(outgoing);
        // What is queued (an Error frame telling HQ why) goes out if it can within a moment.
        let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
        conn.close(0u32.into(), b"store disconnects");
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        drop(counted);
        let c = session.counters();
        result.map(|()| (c.pushed_change_sets, c.pulled_change_sets))
    }
}

/// Logs how far the streams being seeded from snapshots got.
fn log_seeding(replica: &crate::replica::Replica) {
    match replica.seeding() {
        Ok(progress) if progress.is_empty() => tracing::info!("seeding from HQ's snapshots done"),
        Ok(progress) => {
            for p in progress {
                tracing::info!(
                    stream = %p.stream,
                    "seeding from HQ's snapshot at seq {}: part {} of {}",
                    p.seq,
                    p.parts_done,
                    p.parts
                );
            }
        }
        Err(e) => tracing::warn!("reading seeding progress: {e}"),
    }
}

enum Step {
    Frame(Frame),
    LocalCommit,
    Timer,
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn a_daily_window_opens_at_its_start_and_wraps_midnight() {
        let night = DailyWindow::parse("22:00-06:00").unwrap();
        let day0 = 20_000 * DAY_MS;
        assert!(night.contains(day0 + 23 * H) && night.contains(day0 + 5 * H));
        assert!(!night.contains(day0 + 12 * H));
        assert_eq!(night.next_open(day0 + 12 * H), day0 + 22 * H);
        assert_eq!(night.next_open(day0 + 2 * H), day0 + 2 * H);
        let early = DailyWindow::parse("02:30-04:00").unwrap();
        assert_eq!(early.next_open(day0 + 5 * H), day0 + DAY_MS + 2 * H + H / 2);
        for bad in ["02:00", "25:00-01:00", "02:00-02:00", "aa:bb-01:00"] {
            assert!(DailyWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
