//! The sync session as two sans-IO state machines: [`HubSession`] at HQ (one per connected
//! store) and [`LeafSession`] at the store.
//!
//! ```text
//! store                                   HQ
//! Hello {node, cursors}        ->
//!                              <-         Challenge {nonce}
//! Auth {sig(nonce || binding)} ->
//!                              <-         Welcome {own_heads}
//! Push {change sets}           ->         (validate, apply, commit)
//!                              <-         PushAck {heads, rejected}
//! Pull {cursors}               ->
//!                              <-         Batch {change sets, more}   (store applies, commits,
//! Pull {cursors} ...           ->                                       pulls again if more)
//!                              <-         Notify {heads}              (realtime: new data)
//!                              <-         Reclaim {cursors}           (HQ holds less than the
//! Returned {change sets, more} ->                                       store's Hello said)
//! ```
//!
//! `Reclaim` is how an HQ restored from a backup takes back what the stores hold beyond it
//! ([`crate::replica`]'s `reclaim` module): right after `Welcome`, HQ asks for every stream the
//! store's Hello shows further than HQ holds it, applies what comes back through the gate, and
//! asks again until it holds all the store had. Only stores speaking version 3 are asked.
//!
//! Sessions take frames and time and return frames; storage is reached through [`HubStore`] and
//! [`LeafStore`], which the SQLite replica implements. No socket, clock or randomness inside:
//! the nonce and the TLS binding are passed in.
//!
//! Invariants:
//! - nothing but `Hello`/`Auth` is accepted before authentication;
//! - HQ acknowledges a push only after the store's change sets are committed, and the store
//!   drops nothing from its outbox until that acknowledgement;
//! - the session runs over a reliable, ordered stream (QUIC): a frame is never resent within a
//!   session. The store sends each change set once per session, keeps at most
//!   [`PUSHES_IN_FLIGHT_MAX`] pushes and [`PUSH_BYTES_IN_FLIGHT_MAX`] in flight (the next goes
//!   while HQ applies the last, so a long line stays busy), and sends again only what an acknowledgement shows HQ refused (a
//!   gap, a bad change set, a stream halted at HQ): after [`RETRY_MS`], one change set, waiting
//!   twice as long each time it is refused again, up to [`REFUSED_RETRY_MS_MAX`]. An answer that
//!   does not come within [`ANSWER_TIMEOUT_MS`] ends the session; the next one starts from the
//!   acknowledged heads, so nothing is lost and a duplicate change set is a no-op;
//! - no stream blocks another: pushes and pulls are filled fairly across streams
//!   ([`super::gather`]), so one stream with a long refused backlog leaves room for the rest;
//! - a batch exchange ([`LeafSession::exchange_once`]) pushes what was pending when it opened,
//!   takes what HQ has, and is then idle: a busy till does not keep it up;
//! - a store whose frame is malformed or out of turn gets an `Error` frame and the session ends;
//!   a bad change set inside a good frame is refused alone and reported in the `PushAck`.

use super::frame::{
    BATCH_BYTES_MAX, BATCH_CHANGE_SETS_MAX, ErrorCode, Frame, FrameError, WireChangeSet,
    from_wire_change_sets, from_wire_cursors, from_wire_seeding, from_wire_snapshot_parts,
    to_wire_cursors, to_wire_seeding,
};
use super::gather::{PendingStream, ReadStream, gather};
use crate::changeset::{SignedChangeSet, SignedSnapshot, signing_input};
use crate::hqclock;
use crate::ids::{NodeId, Place, RegionId, StreamId, Topic};
use crate::lookup::{LookupAnswer, LookupQuery};
use crate::model::StoreMode;
use crate::replica::BatchReport;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::collections::{BTreeMap, VecDeque};

/// Domain-separation prefix of the authentication signature.
pub const AUTH_SIG_PREFIX: &[u8] = b"chainsync/auth/v1";
/// First wait before a store offers again what HQ refused, or pulls again after refusing what HQ
/// sent (a gap heals on the retry).
pub const RETRY_MS: u64 = 2_000;
/// Longest wait between offers of a stream that keeps being refused (halted at the other side).
pub const REFUSED_RETRY_MS_MAX: u64 = 60_000;
/// Pushes a store keeps in flight at most (each at most [`BATCH_CHANGE_SETS_MAX`] change sets and
/// [`BATCH_BYTES_MAX`] bytes), and the bytes of change sets they may hold together (a push
/// starts only below it). Enough to keep a 150 ms line with loss busy
/// (`cargo bench --bench lines`), bounded so that a backlog is not all in memory at once.
pub const PUSHES_IN_FLIGHT_MAX: usize = 16;
pub const PUSH_BYTES_IN_FLIGHT_MAX: usize = 4 * 1024 * 1024;
/// How long a push or pull may go unanswered before the store ends the session and connects
/// afresh. QUIC loses nothing within a connection, so this only catches an HQ that hangs while
/// its connection stays up; it is long enough for a full push on a slow line.
pub const ANSWER_TIMEOUT_MS: u64 = 60_000;
/// Largest lookup answer HQ sends (well inside a frame).
pub const LOOKUP_ANSWER_BYTES_MAX: usize = 3 * 1024 * 1024;
/// How long a store waits for a lookup answer before it reads its cache instead.
pub const LOOKUP_TIMEOUT_MS: u64 = 1_500;
/// How long a handshake may take before the store gives up and reconnects.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What HQ knows about a connecting store.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub node: NodeId,
    /// The store and its regions (innermost first), from HQ's directory.
    pub place: Place,
    pub mode: StoreMode,
    pub key: VerifyingKey,
    pub revoked: bool,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0} is not enrolled at HQ")]
    NotEnrolled(String),
    #[error("store {0} has been revoked")]
    Revoked(NodeId),
    #[error("authentication failed for {0}: the signature does not match the enrolled key")]
    AuthFailed(NodeId),
    #[error("enrollment refused: {0}")]
    EnrollmentRefused(String),
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        frame: &'static str,
        state: &'static str,
    },
    #[error("peer ended the session: {code:?}: {message}")]
    Peer { code: ErrorCode, message: String },
    #[error("no answer to the handshake within {0} ms")]
    Timeout(u64),
    #[error("HQ did not answer a push or pull within {0} ms")]
    NoAnswer(u64),
    #[error("storage: {0}")]
    Storage(String),
}

impl SessionError {
    /// The frame that tells the peer why the session ends.
    pub fn to_frame(&self) -> Frame {
        let code = match self {
            SessionError::Frame(FrameError::Version { .. }) => ErrorCode::VersionMismatch,
            SessionError::Frame(_) => ErrorCode::BadFrame,
            SessionError::NotEnrolled(_) => ErrorCode::NotEnrolled,
            SessionError::Revoked(_) => ErrorCode::Revoked,
            SessionError::AuthFailed(_) => ErrorCode::AuthFailed,
            SessionError::EnrollmentRefused(_) => ErrorCode::EnrollmentRefused,
            SessionError::Unexpected { .. }
            | SessionError::Peer { .. }
            | SessionError::Timeout(_)
            | SessionError::NoAnswer(_) => ErrorCode::Unexpected,
            SessionError::Storage(_) => ErrorCode::Internal,
        };
        Frame::Error {
            code,
            message: self.to_string(),
        }
    }
}

fn storage<E: std::fmt::Display>(e: E) -> SessionError {
    SessionError::Storage(e.to_string())
}

/// The bytes a store signs to authenticate.
pub fn auth_message(nonce: &[u8; 32], tls_binding: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + tls_binding.len());
    body.extend_from_slice(nonce);
    body.extend_from_slice(tls_binding);
    signing_input(AUTH_SIG_PREFIX, &body)
}

/// Whether a store follows a stream: HQ's directory, catalog and members, the prices and
/// promotions of its scopes, and every other node's members. Never its own streams. A hosted
/// store keeps no replica and follows only HQ's directory (a few rows per store), which tells
/// it its mode and its peers; everything else it looks up.
pub fn subscribes(place: &Place, mode: StoreMode, stream: &StreamId) -> bool {
    if stream.origin == place.store {
        return false;
    }
    if mode == StoreMode::Hosted {
        return stream.origin.is_hq() && stream.topic == Topic::Directory;
    }
    match &stream.topic {
        Topic::Members => true,
        Topic::Directory | Topic::Catalog => stream.origin.is_hq(),
        Topic::Prices(scope) | Topic::Promotions(scope) => {
            stream.origin.is_hq() && place.covers(scope)
        }
        Topic::Inventory | Topic::Sales => false,
    }
}

/// HQ's storage as a session needs it. The SQLite replica implements it; a PostgreSQL backend
/// would too.
pub trait HubStore {
    type Error: std::fmt::Display;
    /// The directory entry of a connecting node.
    fn peer(&self, node: &NodeId) -> Result<Option<PeerInfo>, Self::Error>;
    /// How far HQ holds each stream `node` originates.
    fn own_heads(&self, node: &NodeId) -> Result<Vec<(StreamId, u64)>, Self::Error>;
    /// Validates and durably applies change sets pushed by `peer`.
    fn apply_push(
        &mut self,
        peer: &NodeId,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, Self::Error>;
    /// Change sets `peer` lacks given its cursors, highest priority first, within the limits;
    /// `true` if more remain.
    fn changes_for(
        &self,
        peer: &PeerInfo,
        cursors: &BTreeMap<StreamId, u64>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedChangeSet>, bool), Self::Error>;
    /// Snapshot parts for the streams `peer` is better seeded than replayed (it holds nothing of a
    /// long stream, or is part-way through seeding one), within `max_bytes`, and which streams
    /// those are (their log is not sent until the seeding is done).
    fn seed_for(
        &mut self,
        peer: &PeerInfo,
        cursors: &BTreeMap<StreamId, u64>,
        seeding: &BTreeMap<StreamId, (u64, u32)>,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<SeedPlan, Self::Error>;
    /// Enrolls `node` with `public_key` if `token` is its unused one-time token; the inner `Err`
    /// is the refusal to tell the agent. Returns the store's region.
    fn enroll(
        &mut self,
        node: &NodeId,
        token: &str,
        public_key: [u8; 32],
        now_ms: u64,
    ) -> Result<Result<RegionId, String>, Self::Error>;
    /// Answers a store's lookup for that store's scopes, and places or releases its holds.
    fn lookup(
        &mut self,
        peer: &PeerInfo,
        query: &LookupQuery,
        now_ms: u64,
    ) -> Result<LookupAnswer, Self::Error>;
    /// How far HQ holds `stream` (0 if not at all).
    fn head_seq(&self, stream: &StreamId) -> Result<u64, Self::Error>;
    /// Validates and durably applies change sets a store returned (HQ's own, or relayed ones of
    /// other origins): each must verify under its origin's key, like one from a file.
    fn apply_returned(
        &mut self,
        peer: &NodeId,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, Self::Error>;
    /// Notes for a reclaim that `peer` holds `claimed` beyond HQ and whether it returned all.
    fn note_reclaim(
        &mut self,
        peer: &NodeId,
        claimed: &[(StreamId, u64)],
        returned_all: bool,
        now_ms: u64,
    ) -> Result<(), Self::Error>;
    /// Remembers how far `peer` holds what it follows.
    fn record_cursors(
        &mut self,
        peer: &NodeId,
        cursors: &[(StreamId, u64)],
        now_ms: u64,
    ) -> Result<(), Self::Error>;
}

/// What HQ sends a store to seed streams from snapshots.
#[derive(Debug, Default, Clone)]
pub struct SeedPlan {
    pub parts: Vec<SignedSnapshot>,
    /// Every stream being seeded, including those whose parts did not fit this time.
    pub streams: Vec<StreamId>,
    /// Parts remain, or the log after a snapshot is still to come.
    pub more: bool,
}

/// What loading snapshot parts did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Parts loaded (the next one of their stream).
    pub loaded: usize,
    /// Parts refused, with the reason.
    pub rejected: Vec<String>,
}

/// A store's storage as a session needs it; its own streams are read through [`ReadStream`].
pub trait LeafStore: ReadStream<Error: std::fmt::Display> {
    /// How far this store holds the streams it follows (not its own).
    fn cursors(&self) -> Result<Vec<(StreamId, u64)>, Self::Error>;
    /// Streams being seeded from snapshots: `(stream, snapshot seq, parts loaded)`.
    fn seeding(&self) -> Result<Vec<(StreamId, u64, u32)>, Self::Error>;
    /// Validates and loads snapshot parts from the hub, each the next of its stream or skipped.
    fn load_snapshot_parts(
        &mut self,
        parts: &[SignedSnapshot],
        now_ms: u64,
    ) -> Result<SeedReport, Self::Error>;
    /// This store's own streams in priority order: `(stream, seq the hub acknowledged, head)`.
    fn own_streams(&self) -> Result<Vec<(StreamId, u64, u64)>, Self::Error>;
    /// Records what the hub holds of the store's own streams.
    fn set_hub_acked(&mut self, heads: &[(StreamId, u64)]) -> Result<(), Self::Error>;
    /// Durably records HQ's clock minus this store's, in ms ([`crate::hqclock`]).
    fn set_hq_clock_offset(&mut self, offset_ms: i64) -> Result<(), Self::Error>;
    /// Validates and durably applies change sets received from the hub.
    fn apply_from_hub(
        &mut self,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, Self::Error>;
}

/// What a hub session wants done after a frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HubOutput {
    /// Frames to send to this store.
    pub frames: Vec<Frame>,
    /// Streams that moved because of this store's push: the driver tells the other sessions
    /// ([`HubSession::notify`]).
    pub moved: Vec<(StreamId, u64)>,
    /// What was refused from this store's push, for the log and the metrics.
    pub rejected: Vec<crate::validate::ChangeSetError>,
}

enum HubState {
    AwaitHello,
    /// Enrollment answered; nothing more is accepted.
    Enrolled,
    AwaitAuth {
        peer: PeerInfo,
        cursors: Vec<(StreamId, u64)>,
    },
    Open {
        peer: PeerInfo,
    },
}

/// HQ's side of one store's session.
pub struct HubSession {
    state: HubState,
    nonce: [u8; 32],
    tls_binding: Vec<u8>,
    /// The protocol version the store speaks (of its last frame).
    peer_version: u16,
    /// Streams the store holds further than HQ, with the store's seq, while HQ takes them back.
    reclaiming: BTreeMap<StreamId, u64>,
}

impl HubSession {
    /// A session for a new connection. `nonce` must be fresh random bytes; `tls_binding` ties the
    /// authentication to this TLS session (keying material exported by the adapter).
    pub fn new(nonce: [u8; 32], tls_binding: Vec<u8>) -> Self {
        Self {
            state: HubState::AwaitHello,
            nonce,
            tls_binding,
            peer_version: super::frame::PROTOCOL_VERSION,
            reclaiming: BTreeMap::new(),
        }
    }

    /// The protocol version of the store's frames, as the codec decoded them: frames it lacks
    /// are not sent to it.
    pub fn set_peer_version(&mut self, version: u16) {
        self.peer_version = version;
    }

    /// A `Reclaim` for the streams still held further by the store than by HQ, after noting
    /// where this store stands; `None` once HQ holds all it claimed (or it cannot be asked).
    fn reclaim_next<S: HubStore>(
        &mut self,
        now_ms: u64,
        progressed: bool,
        store: &mut S,
    ) -> Result<Option<Frame>, SessionError> {
        let Some(node) = self.peer().map(|p| p.node.clone()) else {
            return Ok(None);
        };
        let mut behind = Vec::new();
        for (stream, seq) in &self.reclaiming {
            let held = store.head_seq(stream).map_err(storage)?;
            if held < *seq {
                behind.push((stream.clone(), held));
            }
        }
        let claimed: Vec<(StreamId, u64)> = self
            .reclaiming
            .iter()
            .map(|(s, q)| (s.clone(), *q))
            .collect();
        if behind.is_empty() {
            self.reclaiming.clear();
            store
                .note_reclaim(&node, &claimed, true, now_ms)
                .map_err(storage)?;
            return Ok(None);
        }
        store
            .note_reclaim(&node, &claimed, false, now_ms)
            .map_err(storage)?;
        // An older agent cannot be asked; one that returned nothing usable is not asked again
        // in this session (what it could not give shows in `hq-server reclaim status`).
        if self.peer_version < 3 || !progressed {
            self.reclaiming.clear();
            return Ok(None);
        }
        Ok(Some(Frame::Reclaim {
            cursors: to_wire_cursors(&behind),
        }))
    }

    /// The authenticated store, once there is one.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.state {
            HubState::Open { peer } => Some(peer),
            _ => None,
        }
    }

    /// Handles one frame from the store. `Err` ends the session: send
    /// [`SessionError::to_frame`] and close.
    pub fn handle<S: HubStore>(
        &mut self,
        now_ms: u64,
        frame: Frame,
        store: &mut S,
    ) -> Result<HubOutput, SessionError> {
        let mut out = HubOutput::default();
        match (&self.state, frame) {
            (_, Frame::Error { code, message }) => {
                return Err(SessionError::Peer { code, message });
            }
            (HubState::AwaitHello, Frame::Hello { node, cursors }) => {
                let node =
                    NodeId::new(node).map_err(|e| SessionError::NotEnrolled(e.to_string()))?;
                let peer = store
                    .peer(&node)
                    .map_err(storage)?
                    .ok_or_else(|| SessionError::NotEnrolled(node.to_string()))?;
                if peer.revoked {
                    return Err(SessionError::Revoked(node));
                }
                let cursors = from_wire_cursors(cursors)?;
                self.state = HubState::AwaitAuth { peer, cursors };
                out.frames.push(Frame::Challenge { nonce: self.nonce });
            }
            (
                HubState::AwaitHello,
                Frame::Enroll {
                    node,
                    token,
                    public_key,
                },
            ) => {
                let node = NodeId::new(node)
                    .map_err(|e| SessionError::EnrollmentRefused(e.to_string()))?;
                let key: [u8; 32] = public_key.try_into().map_err(|_| {
                    SessionError::EnrollmentRefused("public key is not 32 bytes".into())
                })?;
                if VerifyingKey::from_bytes(&key).is_err() {
                    return Err(SessionError::EnrollmentRefused(
                        "public key is not an ed25519 key".into(),
                    ));
                }
                let region = store
                    .enroll(&node, &token, key, now_ms)
                    .map_err(storage)?
                    .map_err(SessionError::EnrollmentRefused)?;
                self.state = HubState::Enrolled;
                out.frames.push(Frame::Enrolled {
                    region: region.to_string(),
                });
            }
            (HubState::AwaitAuth { peer, cursors }, Frame::Auth { signature }) => {
                let sig: [u8; 64] = signature
                    .try_into()
                    .map_err(|_| SessionError::AuthFailed(peer.node.clone()))?;
                let message = auth_message(&self.nonce, &self.tls_binding);
                peer.key
                    .verify(&message, &Signature::from_bytes(&sig))
                    .map_err(|_| SessionError::AuthFailed(peer.node.clone()))?;
                let (peer, cursors) = (peer.clone(), cursors.clone());
                store
                    .record_cursors(&peer.node, &cursors, now_ms)
                    .map_err(storage)?;
                let own_heads = store.own_heads(&peer.node).map_err(storage)?;
                out.frames.push(Frame::Welcome {
                    own_heads: to_wire_cursors(&own_heads),
                    hq_time_ms: now_ms,
                });
                self.state = HubState::Open { peer };
                // What the store holds further than HQ: HQ lost it (restored from a backup).
                self.reclaiming.clear();
                for (stream, seq) in cursors {
                    if store.head_seq(&stream).map_err(storage)? < seq {
                        self.reclaiming.insert(stream, seq);
                    }
                }
                out.frames.extend(self.reclaim_next(now_ms, true, store)?);
            }
            (HubState::Open { peer }, Frame::Push { change_sets }) => {
                let peer = still_enrolled(store, &peer.node)?;
                self.state = HubState::Open { peer: peer.clone() };
                let batch = from_wire_change_sets(change_sets)?;
                let report = store
                    .apply_push(&peer.node, &batch, now_ms)
                    .map_err(storage)?;
                let heads = store.own_heads(&peer.node).map_err(storage)?;
                out.moved = report.applied;
                out.frames.push(Frame::PushAck {
                    heads: to_wire_cursors(&heads),
                    rejected: report.rejected.iter().map(ToString::to_string).collect(),
                });
                out.rejected = report.rejected;
            }
            (HubState::Open { peer }, Frame::Pull { cursors, seeding }) => {
                let peer = still_enrolled(store, &peer.node)?;
                self.state = HubState::Open { peer: peer.clone() };
                let cursors = from_wire_cursors(cursors)?;
                let seeding = from_wire_seeding(seeding)?;
                store
                    .record_cursors(&peer.node, &cursors, now_ms)
                    .map_err(storage)?;
                let mut cursors: BTreeMap<StreamId, u64> = cursors.into_iter().collect();
                let plan = store
                    .seed_for(&peer, &cursors, &seeding, BATCH_BYTES_MAX, now_ms)
                    .map_err(storage)?;
                // Streams being seeded get no log until their snapshot is in.
                for stream in &plan.streams {
                    cursors.insert(stream.clone(), u64::MAX);
                }
                // A batch carries snapshot parts or change sets, so it stays within its budget;
                // the log comes on the next pull.
                let (change_sets, more) = if plan.parts.is_empty() {
                    store
                        .changes_for(&peer, &cursors, BATCH_CHANGE_SETS_MAX, BATCH_BYTES_MAX)
                        .map_err(storage)?
                } else {
                    (Vec::new(), true)
                };
                let snapshot_parts = plan
                    .parts
                    .iter()
                    .map(|p| WireChangeSet {
                        body: p.body.clone(),
                        sig: p.sig.to_vec(),
                    })
                    .collect();
                let change_sets = change_sets.iter().map(WireChangeSet::from_signed).collect();
                out.frames.push(Frame::Batch {
                    snapshot_parts,
                    change_sets,
                    more: more || plan.more,
                    hq_time_ms: now_ms,
                });
            }
            (HubState::Open { peer }, Frame::Returned { change_sets, .. })
                if !self.reclaiming.is_empty() =>
            {
                let peer = still_enrolled(store, &peer.node)?;
                self.state = HubState::Open { peer: peer.clone() };
                let batch = from_wire_change_sets(change_sets)?;
                let report = store
                    .apply_returned(&peer.node, &batch, now_ms)
                    .map_err(storage)?;
                let progressed = !report.applied.is_empty();
                out.moved = report.applied;
                out.rejected = report.rejected;
                out.frames
                    .extend(self.reclaim_next(now_ms, progressed, store)?);
            }
            (HubState::Open { peer }, Frame::Lookup { id, query }) => {
                let peer = still_enrolled(store, &peer.node)?;
                self.state = HubState::Open { peer: peer.clone() };
                let query = LookupQuery::decode(&query)
                    .map_err(|e| SessionError::Frame(FrameError::Malformed(e.to_string())))?;
                let answer = store.lookup(&peer, &query, now_ms).map_err(storage)?;
                let mut bytes = LookupAnswer::encode(&Ok(answer)).map_err(storage)?;
                if bytes.len() > LOOKUP_ANSWER_BYTES_MAX {
                    bytes = LookupAnswer::encode(&Err(format!(
                        "the answer is {} bytes (at most {LOOKUP_ANSWER_BYTES_MAX}); ask for fewer skus",
                        bytes.len()
                    )))
                    .map_err(storage)?;
                }
                out.frames.push(Frame::LookupAnswer { id, answer: bytes });
            }
            (state, frame) => {
                let state = match state {
                    HubState::AwaitHello => "waiting for Hello",
                    HubState::Enrolled => "enrolled (reconnect with Hello)",
                    HubState::AwaitAuth { .. } => "waiting for Auth",
                    HubState::Open { .. } => "open",
                };
                return Err(SessionError::Unexpected {
                    frame: frame.name(),
                    state,
                });
            }
        }
        Ok(out)
    }

    /// A `Notify` for the streams among `moved` that this store follows, if any.
    pub fn notify(&self, moved: &[(StreamId, u64)]) -> Option<Frame> {
        let peer = self.peer()?;
        let heads: Vec<(StreamId, u64)> = moved
            .iter()
            .filter(|(s, _)| subscribes(&peer.place, peer.mode, s))
            .cloned()
            .collect();
        (!heads.is_empty()).then(|| Frame::Notify {
            heads: to_wire_cursors(&heads),
        })
    }
}

/// The store's directory entry as it is now (its mode may have changed); fails with `Revoked`
/// once HQ has revoked `node`, so a live session ends at its next frame.
fn still_enrolled<S: HubStore>(store: &S, node: &NodeId) -> Result<PeerInfo, SessionError> {
    match store.peer(node).map_err(storage)? {
        Some(peer) if !peer.revoked => Ok(peer),
        Some(_) => Err(SessionError::Revoked(node.clone())),
        None => Err(SessionError::NotEnrolled(node.to_string())),
    }
}

/// The frame a new agent sends to enroll.
pub fn enroll_frame(node: &NodeId, token: &str, key: &VerifyingKey) -> Frame {
    Frame::Enroll {
        node: node.to_string(),
        token: token.to_owned(),
        public_key: key.to_bytes().to_vec(),
    }
}

/// Reads HQ's answer to [`enroll_frame`]: the store's region, or why HQ refused.
pub fn enroll_reply(frame: Frame) -> Result<RegionId, SessionError> {
    match frame {
        Frame::Enrolled { region } => RegionId::new(region)
            .map_err(|e| SessionError::Frame(FrameError::Malformed(e.to_string()))),
        Frame::Error { code, message } => Err(SessionError::Peer { code, message }),
        other => Err(SessionError::Unexpected {
            frame: other.name(),
            state: "enrolling",
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafState {
    New,
    AwaitChallenge { since_ms: u64 },
    AwaitWelcome { since_ms: u64 },
    Open,
}

/// What a store's session has done so far, for status pages and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeafCounters {
    pub pushed_change_sets: u64,
    pub pulled_change_sets: u64,
    pub rejected_change_sets: u64,
    /// Snapshot parts loaded.
    pub seeded_parts: u64,
    /// Change sets returned to an HQ restored from a backup.
    pub returned_change_sets: u64,
}

/// A push sent and not yet answered.
#[derive(Debug, Clone)]
struct PushInFlight {
    sent_ms: u64,
    /// Bytes of the change sets it carries.
    bytes: usize,
    /// How far it carried each stream.
    upto: Vec<(StreamId, u64)>,
}

/// An own stream HQ refused: it is offered again, one change set at a time, from `retry_at_ms`.
#[derive(Debug, Clone, Copy)]
struct Refused {
    retry_at_ms: u64,
    delay_ms: u64,
    /// The one change set offered again is in flight.
    probing: bool,
}

/// The store's side of a session.
pub struct LeafSession {
    node: NodeId,
    key: SigningKey,
    tls_binding: Vec<u8>,
    state: LeafState,
    /// Highest seq of each own stream sent in this session: nothing is sent twice in a session
    /// unless HQ's acknowledgement shows it refused it.
    sent: BTreeMap<StreamId, u64>,
    /// Pushes in flight, oldest first (HQ answers them in order).
    pushes: VecDeque<PushInFlight>,
    /// Own streams HQ refused, offered again later.
    refused: BTreeMap<StreamId, Refused>,
    /// The last push attempt found nothing more to send (beyond refused streams and the cap).
    drained: bool,
    /// A batch exchange: push only what was pending when the session opened, ignore notices.
    exchange_once: bool,
    push_cap: Option<BTreeMap<StreamId, u64>>,
    /// When the unanswered pull was sent.
    pull_sent_ms: Option<u64>,
    /// A pull whose batch was refused: ask again at this time.
    pull_again_at_ms: Option<u64>,
    /// Wait before the next such retry (doubles while batches keep being refused).
    pull_retry_ms: u64,
    /// Pull at least this often even without a Notify (0 = only on Notify).
    poll_interval_ms: u64,
    last_pull_ms: u64,
    /// A Notify came while a pull was in flight: pull again when its batch is in.
    notified_during_pull: bool,
    /// HQ's clock minus this store's as last stored in this session.
    hq_clock_offset_ms: Option<i64>,
    counters: LeafCounters,
    /// Lookup answers received and not yet taken by the driver.
    answers: Vec<(u64, Result<LookupAnswer, String>)>,
    /// The kind of each change set (or `snapshot_part`) from HQ refused here, not yet taken
    /// by the driver.
    refused_kinds: Vec<&'static str>,
}

impl LeafSession {
    /// A session for a new connection. `poll_interval_ms` is how often to pull without being
    /// notified (a safety net in realtime mode).
    pub fn new(node: NodeId, key: SigningKey, tls_binding: Vec<u8>, poll_interval_ms: u64) -> Self {
        Self {
            node,
            key,
            tls_binding,
            state: LeafState::New,
            sent: BTreeMap::new(),
            pushes: VecDeque::new(),
            refused: BTreeMap::new(),
            drained: false,
            exchange_once: false,
            push_cap: None,
            pull_sent_ms: None,
            pull_again_at_ms: None,
            pull_retry_ms: RETRY_MS,
            poll_interval_ms,
            last_pull_ms: 0,
            notified_during_pull: false,
            hq_clock_offset_ms: None,
            counters: LeafCounters::default(),
            answers: Vec::new(),
            refused_kinds: Vec::new(),
        }
    }

    /// Makes this a batch exchange: it pushes what was pending when it opened (sales made
    /// meanwhile wait for the next exchange), takes what HQ has, and is then idle.
    pub fn exchange_once(mut self) -> Self {
        self.exchange_once = true;
        self
    }

    /// Whether authentication finished.
    pub fn is_open(&self) -> bool {
        self.state == LeafState::Open
    }

    /// Whether nothing is waiting for an answer and nothing more is to be sent now (open, no
    /// push or pull in flight, the outbox sent but for streams HQ refused).
    pub fn is_idle(&self) -> bool {
        self.is_open() && self.pushes.is_empty() && self.pull_sent_ms.is_none() && self.drained
    }

    /// Counters of what went through this session.
    pub fn counters(&self) -> LeafCounters {
        self.counters
    }

    /// Stores what an exchange (asked at `asked_ms`, answered at `now_ms`) says of HQ's clock.
    fn learn_hq_clock<S: LeafStore>(
        &mut self,
        asked_ms: u64,
        hq_time_ms: u64,
        now_ms: u64,
        store: &mut S,
    ) -> Result<(), SessionError> {
        let Some(estimate) = hqclock::offset_from_exchange(asked_ms, hq_time_ms, now_ms) else {
            return Ok(());
        };
        if hqclock::worth_storing(self.hq_clock_offset_ms, estimate) {
            store.set_hq_clock_offset(estimate).map_err(storage)?;
            self.hq_clock_offset_ms = Some(estimate);
        }
        Ok(())
    }

    /// The first frame: Hello with this store's cursors.
    pub fn start<S: LeafStore>(
        &mut self,
        now_ms: u64,
        store: &S,
    ) -> Result<Vec<Frame>, SessionError> {
        let cursors = store.cursors().map_err(storage)?;
        self.state = LeafState::AwaitChallenge { since_ms: now_ms };
        Ok(vec![Frame::Hello {
            node: self.node.to_string(),
            cursors: to_wire_cursors(&cursors),
        }])
    }

    /// Handles one frame from HQ. `Err` ends the session.
    pub fn handle<S: LeafStore>(
        &mut self,
        now_ms: u64,
        frame: Frame,
        store: &mut S,
    ) -> Result<Vec<Frame>, SessionError> {
        let mut out = Vec::new();
        match (self.state, frame) {
            (_, Frame::Error { code, message }) => {
                return Err(SessionError::Peer { code, message });
            }
            (LeafState::AwaitChallenge { .. }, Frame::Challenge { nonce }) => {
                let signature = self
                    .key
                    .sign(&auth_message(&nonce, &self.tls_binding))
                    .to_bytes()
                    .to_vec();
                out.push(Frame::Auth { signature });
                self.state = LeafState::AwaitWelcome { since_ms: now_ms };
            }
            (
                LeafState::AwaitWelcome { since_ms },
                Frame::Welcome {
                    own_heads,
                    hq_time_ms,
                },
            ) => {
                self.learn_hq_clock(since_ms, hq_time_ms, now_ms, store)?;
                // HQ lists every stream of this store it holds: one it does not list it holds
                // not at all (an HQ restored from an older backup), so it is pushed from the start.
                let mut acked = from_wire_cursors(own_heads)?;
                for (stream, _, _) in store.own_streams().map_err(storage)? {
                    if !acked.iter().any(|(s, _)| *s == stream) {
                        acked.push((stream, 0));
                    }
                }
                store.set_hub_acked(&acked).map_err(storage)?;
                self.state = LeafState::Open;
                if self.exchange_once {
                    let heads = store.own_streams().map_err(storage)?;
                    self.push_cap = Some(heads.into_iter().map(|(s, _, head)| (s, head)).collect());
                }
                out.extend(self.push_fill(now_ms, store)?);
                out.extend(self.pull(now_ms, store)?);
            }
            (LeafState::Open, Frame::PushAck { heads, rejected }) => {
                let heads = from_wire_cursors(heads)?;
                store.set_hub_acked(&heads).map_err(storage)?;
                self.counters.rejected_change_sets += rejected.len() as u64;
                if let Some(push) = self.pushes.pop_front() {
                    let acked: BTreeMap<StreamId, u64> = heads.into_iter().collect();
                    self.judge_push(now_ms, push, &acked);
                }
                out.extend(self.push_fill(now_ms, store)?);
            }
            (
                LeafState::Open,
                Frame::Batch {
                    snapshot_parts,
                    change_sets,
                    more,
                    hq_time_ms,
                },
            ) => {
                if let Some(asked_ms) = self.pull_sent_ms {
                    self.learn_hq_clock(asked_ms, hq_time_ms, now_ms, store)?;
                }
                let parts = from_wire_snapshot_parts(snapshot_parts)?;
                let batch = from_wire_change_sets(change_sets)?;
                let seeded = store.load_snapshot_parts(&parts, now_ms).map_err(storage)?;
                let report = store.apply_from_hub(&batch, now_ms).map_err(storage)?;
                self.counters.pulled_change_sets += report.applied.len() as u64;
                self.counters.seeded_parts += seeded.loaded as u64;
                self.counters.rejected_change_sets +=
                    (report.rejected.len() + seeded.rejected.len()) as u64;
                self.refused_kinds
                    .extend(report.rejected.iter().map(|e| e.kind()));
                self.refused_kinds
                    .extend(seeded.rejected.iter().map(|_| "snapshot_part"));
                self.pull_sent_ms = None;
                let progressed = !report.applied.is_empty() || seeded.loaded > 0;
                let refused = !report.rejected.is_empty() || !seeded.rejected.is_empty();
                if progressed {
                    self.pull_retry_ms = RETRY_MS;
                }
                if (more && progressed) || std::mem::take(&mut self.notified_during_pull) {
                    out.extend(self.pull(now_ms, store)?);
                } else if refused && !self.exchange_once {
                    // A gap or a bad change set: ask again later, waiting longer each time the
                    // same refusal comes back (a stream halted here must not become a busy loop).
                    self.pull_again_at_ms = Some(now_ms.saturating_add(self.pull_retry_ms));
                    self.pull_retry_ms = (self.pull_retry_ms * 2).min(REFUSED_RETRY_MS_MAX);
                }
            }
            (LeafState::Open, Frame::Reclaim { cursors }) => {
                // HQ lost these streams beyond `cursors`: return what this store holds of them.
                let heads: BTreeMap<StreamId, u64> = store
                    .cursors()
                    .map_err(storage)?
                    .into_iter()
                    .chain(
                        store
                            .own_streams()
                            .map_err(storage)?
                            .into_iter()
                            .map(|(s, _, h)| (s, h)),
                    )
                    .collect();
                let pending: Vec<PendingStream> = from_wire_cursors(cursors)?
                    .into_iter()
                    .filter_map(|(stream, after)| {
                        let head = heads.get(&stream).copied().unwrap_or(0);
                        (head > after).then(|| PendingStream {
                            stream,
                            after,
                            count: head - after,
                        })
                    })
                    .collect();
                let gathered = gather(&pending, BATCH_CHANGE_SETS_MAX, BATCH_BYTES_MAX, store)
                    .map_err(storage)?;
                self.counters.returned_change_sets += gathered.change_sets.len() as u64;
                out.push(Frame::Returned {
                    change_sets: gathered
                        .change_sets
                        .iter()
                        .map(WireChangeSet::from_signed)
                        .collect(),
                    more: gathered.left_out,
                });
            }
            (LeafState::Open, Frame::LookupAnswer { id, answer }) => {
                let answer = LookupAnswer::decode(&answer)
                    .map_err(|e| SessionError::Frame(FrameError::Malformed(e.to_string())))?;
                self.answers.push((id, answer));
            }
            (LeafState::Open, Frame::Notify { heads }) => {
                // A batch exchange takes what HQ had when it asked; news waits for the next one.
                if self.exchange_once {
                    return Ok(out);
                }
                let heads = from_wire_cursors(heads)?;
                let mine: BTreeMap<StreamId, u64> =
                    store.cursors().map_err(storage)?.into_iter().collect();
                let behind = heads
                    .iter()
                    .any(|(s, seq)| mine.get(s).copied().unwrap_or(0) < *seq);
                if behind && self.pull_sent_ms.is_none() {
                    out.extend(self.pull(now_ms, store)?);
                } else if behind {
                    self.notified_during_pull = true;
                }
            }
            (state, frame) => {
                let state = match state {
                    LeafState::New => "not started",
                    LeafState::AwaitChallenge { .. } => "waiting for Challenge",
                    LeafState::AwaitWelcome { .. } => "waiting for Welcome",
                    LeafState::Open => "open",
                };
                return Err(SessionError::Unexpected {
                    frame: frame.name(),
                    state,
                });
            }
        }
        Ok(out)
    }

    /// Compares what a push carried with what HQ now holds: a stream HQ holds less of was
    /// refused (a gap, a bad change set, a stream halted at HQ) and is offered again later, one
    /// change set at a time, from HQ's head.
    fn judge_push(&mut self, now_ms: u64, push: PushInFlight, acked: &BTreeMap<StreamId, u64>) {
        for (stream, upto) in push.upto {
            let held = acked.get(&stream).copied().unwrap_or(0);
            if held >= upto {
                self.refused.remove(&stream);
                continue;
            }
            self.sent.insert(stream.clone(), held);
            match self.refused.get_mut(&stream) {
                // The change set offered again was refused again: wait twice as long.
                Some(r) if r.probing => {
                    r.delay_ms = (r.delay_ms * 2).min(REFUSED_RETRY_MS_MAX);
                    r.retry_at_ms = now_ms.saturating_add(r.delay_ms);
                    r.probing = false;
                }
                // A push sent before the refusal was known: it changes nothing.
                Some(_) => {}
                None => {
                    self.refused.insert(
                        stream,
                        Refused {
                            retry_at_ms: now_ms.saturating_add(RETRY_MS),
                            delay_ms: RETRY_MS,
                            probing: false,
                        },
                    );
                }
            }
        }
    }

    /// The frame asking HQ `query` under the driver's `id`; the answer comes back through
    /// [`LeafSession::take_answers`]. Only once the session is open.
    pub fn lookup(&self, id: u64, query: &LookupQuery) -> Result<Frame, SessionError> {
        if !self.is_open() {
            return Err(SessionError::Unexpected {
                frame: "Lookup",
                state: "not open",
            });
        }
        let query = query.encode().map_err(storage)?;
        Ok(Frame::Lookup { id, query })
    }

    /// The kinds of what HQ sent that was refused here since the last call (for metrics).
    pub fn take_refused(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.refused_kinds)
    }

    /// Lookup answers received since the last call, by the driver's id.
    pub fn take_answers(&mut self) -> Vec<(u64, Result<LookupAnswer, String>)> {
        std::mem::take(&mut self.answers)
    }

    /// Call after a local commit: pushes at once if there is room in flight.
    pub fn local_commit<S: LeafStore>(
        &mut self,
        now_ms: u64,
        store: &S,
    ) -> Result<Vec<Frame>, SessionError> {
        if self.is_open() {
            return self.push_fill(now_ms, store);
        }
        Ok(Vec::new())
    }

    /// When [`LeafSession::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            LeafState::New => None,
            LeafState::AwaitChallenge { since_ms } | LeafState::AwaitWelcome { since_ms } => {
                Some(since_ms + HANDSHAKE_TIMEOUT_MS)
            }
            LeafState::Open => {
                let unanswered = self
                    .pushes
                    .front()
                    .map(|p| p.sent_ms)
                    .into_iter()
                    .chain(self.pull_sent_ms)
                    .map(|t| t.saturating_add(ANSWER_TIMEOUT_MS));
                let room = self.push_room();
                let refused = self
                    .refused
                    .values()
                    .filter(|r| room && !r.probing)
                    .map(|r| r.retry_at_ms);
                let poll = (self.poll_interval_ms > 0 && self.pull_sent_ms.is_none())
                    .then_some(self.last_pull_ms.saturating_add(self.poll_interval_ms));
                unanswered
                    .chain(refused)
                    .chain(self.pull_again_at_ms)
                    .chain(poll)
                    .min()
            }
        }
    }

    /// Offers refused streams again and polls on schedule. `Err` when the handshake or an
    /// answer took too long: the driver ends the session and connects afresh.
    pub fn handle_timeout<S: LeafStore>(
        &mut self,
        now_ms: u64,
        store: &S,
    ) -> Result<Vec<Frame>, SessionError> {
        let mut out = Vec::new();
        match self.state {
            LeafState::New => {}
            LeafState::AwaitChallenge { since_ms } | LeafState::AwaitWelcome { since_ms } => {
                if now_ms >= since_ms + HANDSHAKE_TIMEOUT_MS {
                    return Err(SessionError::Timeout(HANDSHAKE_TIMEOUT_MS));
                }
            }
            LeafState::Open => {
                let oldest_push = self.pushes.front().map(|p| p.sent_ms);
                if let Some(sent) = oldest_push.into_iter().chain(self.pull_sent_ms).min()
                    && now_ms >= sent.saturating_add(ANSWER_TIMEOUT_MS)
                {
                    return Err(SessionError::NoAnswer(ANSWER_TIMEOUT_MS));
                }
                if self
                    .refused
                    .values()
                    .any(|r| !r.probing && now_ms >= r.retry_at_ms)
                {
                    out.extend(self.push_fill(now_ms, store)?);
                }
                let again = self.pull_again_at_ms.is_some_and(|t| now_ms >= t);
                let poll_due = self.poll_interval_ms > 0
                    && now_ms >= self.last_pull_ms.saturating_add(self.poll_interval_ms);
                if self.pull_sent_ms.is_none() && (again || poll_due) {
                    out.extend(self.pull(now_ms, store)?);
                }
            }
        }
        Ok(out)
    }

    /// Whether another push may go: fewer than [`PUSHES_IN_FLIGHT_MAX`] in flight, holding less
    /// than [`PUSH_BYTES_IN_FLIGHT_MAX`].
    fn push_room(&self) -> bool {
        self.pushes.len() < PUSHES_IN_FLIGHT_MAX
            && self.pushes.iter().map(|p| p.bytes).sum::<usize>() < PUSH_BYTES_IN_FLIGHT_MAX
    }

    /// Sends pushes until there is no more room in flight or nothing is left to send.
    fn push_fill<S: LeafStore>(
        &mut self,
        now_ms: u64,
        store: &S,
    ) -> Result<Vec<Frame>, SessionError> {
        let mut out = Vec::new();
        while self.push_room() {
            match self.next_push(now_ms, store)? {
                Some(frame) => out.push(frame),
                None => break,
            }
        }
        Ok(out)
    }

    /// The next push: change sets not yet sent in this session, every stream its fair share
    /// ([`gather`]); a refused stream only once its wait is over, and then one change set.
    fn next_push<S: LeafStore>(
        &mut self,
        now_ms: u64,
        store: &S,
    ) -> Result<Option<Frame>, SessionError> {
        let mut pending = Vec::new();
        for (stream, acked, head) in store.own_streams().map_err(storage)? {
            let head = match self.push_cap.as_ref() {
                Some(cap) => head.min(cap.get(&stream).copied().unwrap_or(0)),
                None => head,
            };
            let from = acked.max(self.sent.get(&stream).copied().unwrap_or(0));
            let mut count = head.saturating_sub(from);
            if let Some(r) = self.refused.get(&stream) {
                let due = !r.probing && now_ms >= r.retry_at_ms;
                count = if due { count.min(1) } else { 0 };
            }
            if count > 0 {
                pending.push(PendingStream {
                    stream,
                    after: from,
                    count,
                });
            }
        }
        let gathered =
            gather(&pending, BATCH_CHANGE_SETS_MAX, BATCH_BYTES_MAX, store).map_err(storage)?;
        if gathered.change_sets.is_empty() {
            self.drained = true;
            return Ok(None);
        }
        self.drained = false;
        let mut upto = Vec::new();
        for (p, taken) in pending.iter().zip(&gathered.taken) {
            if *taken == 0 {
                continue;
            }
            let last = p.after.saturating_add(*taken);
            self.sent.insert(p.stream.clone(), last);
            if let Some(r) = self.refused.get_mut(&p.stream) {
                r.probing = true;
            }
            upto.push((p.stream.clone(), last));
        }
        self.counters.pushed_change_sets += gathered.change_sets.len() as u64;
        self.pushes.push_back(PushInFlight {
            sent_ms: now_ms,
            bytes: gathered
                .change_sets
                .iter()
                .map(|c| c.body.len() + c.sig.len())
                .sum(),
            upto,
        });
        let change_sets = gathered
            .change_sets
            .iter()
            .map(WireChangeSet::from_signed)
            .collect();
        Ok(Some(Frame::Push { change_sets }))
    }

    fn pull<S: LeafStore>(&mut self, now_ms: u64, store: &S) -> Result<Vec<Frame>, SessionError> {
        let cursors = store.cursors().map_err(storage)?;
        let seeding = store.seeding().map_err(storage)?;
        self.pull_sent_ms = Some(now_ms);
        self.pull_again_at_ms = None;
        self.last_pull_ms = now_ms;
        Ok(vec![Frame::Pull {
            cursors: to_wire_cursors(&cursors),
            seeding: to_wire_seeding(&seeding),
        }])
    }
}
