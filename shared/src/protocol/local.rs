//! One complete sync session between two replicas in the same process: the real session state
//! machines and the real frame codec, with an in-memory pipe instead of a socket.
//!
//! Used by the demo and by tests that need two nodes in step without a network. Bounded: it
//! stops after [`LOCAL_ROUNDS_MAX`] round trips even if the peers keep talking.
//!
//! ```no_run
//! # fn demo(hq: &mut chainsync::replica::Replica, store: &mut chainsync::replica::Replica,
//! #         key: ed25519_dalek::SigningKey) -> Result<(), chainsync::protocol::SessionError> {
//! let stats = chainsync::protocol::local::sync_pair(hq, store, key, 1_700_000_000_000)?;
//! println!("pushed {} change sets, pulled {}", stats.pushed, stats.pulled);
//! # Ok(()) }
//! ```

use super::frame::{Frame, FrameDecoder, FrameError, PROTOCOL_VERSION, encode_frame_as};
use super::session::{HubSession, LeafSession, SessionError};
use crate::replica::Replica;
use ed25519_dalek::SigningKey;

/// Most round trips one local session may take: enough for a backlog of
/// 10,000 batches, and a stop for a pair that would never go idle.
pub const LOCAL_ROUNDS_MAX: usize = 10_000;

/// What one local session moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LocalSyncStats {
    pub pushed: u64,
    pub pulled: u64,
    /// Snapshot parts loaded.
    pub seeded: u64,
    pub rounds: usize,
}

/// Runs a session between `hub` (HQ) and `leaf` (a store signing with `leaf_key`) until the store
/// has pushed its outbox and pulled everything it follows.
pub fn sync_pair(
    hub: &mut Replica,
    leaf: &mut Replica,
    leaf_key: SigningKey,
    now_ms: u64,
) -> Result<LocalSyncStats, SessionError> {
    sync_pair_clocks(hub, leaf, leaf_key, now_ms, now_ms)
}

/// [`sync_pair`] with the hub's clock reading `hub_now_ms` and the store's `leaf_now_ms` (a store
/// whose clock is off).
pub fn sync_pair_clocks(
    hub: &mut Replica,
    leaf: &mut Replica,
    leaf_key: SigningKey,
    hub_now_ms: u64,
    leaf_now_ms: u64,
) -> Result<LocalSyncStats, SessionError> {
    sync_pair_speaking(
        hub,
        leaf,
        leaf_key,
        hub_now_ms,
        leaf_now_ms,
        PROTOCOL_VERSION,
    )
}

/// [`sync_pair_clocks`] with the store speaking protocol `leaf_version` (an agent one version
/// behind HQ): its frames are written in that version, and it takes no frame of a later one.
pub fn sync_pair_speaking(
    hub: &mut Replica,
    leaf: &mut Replica,
    leaf_key: SigningKey,
    hub_now_ms: u64,
    leaf_now_ms: u64,
    leaf_version: u16,
) -> Result<LocalSyncStats, SessionError> {
    let binding = b"in-process".to_vec();
    // The nonce only has to be unique per session; in-process, the clock reading serves.
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&hub_now_ms.to_le_bytes());
    let mut hub_session = HubSession::new(nonce, binding.clone());
    let mut leaf_session = LeafSession::new(leaf.node().clone(), leaf_key, binding, 0);
    let mut to_hub = leaf_session.start(leaf_now_ms, leaf)?;
    let mut rounds = 0;
    while !to_hub.is_empty() {
        rounds += 1;
        if rounds > LOCAL_ROUNDS_MAX {
            return Err(SessionError::Timeout(0));
        }
        let mut to_leaf = Vec::new();
        let (frames, version) = through_codec(to_hub, leaf_version)?;
        hub_session.set_peer_version(version);
        for frame in frames {
            to_leaf.extend(hub_session.handle(hub_now_ms, frame, hub)?.frames);
        }
        to_hub = Vec::new();
        // HQ answers in the store's version; an older store could not read a later one.
        let (frames, version) = through_codec(to_leaf, version)?;
        if version > leaf_version {
            return Err(FrameError::Version {
                got: version,
                supported: leaf_version,
            }
            .into());
        }
        for frame in frames {
            to_hub.extend(leaf_session.handle(leaf_now_ms, frame, leaf)?);
        }
    }
    let counters = leaf_session.counters();
    Ok(LocalSyncStats {
        pushed: counters.pushed_change_sets,
        pulled: counters.pulled_change_sets,
        seeded: counters.seeded_parts,
        rounds,
    })
}

/// Encodes frames in `version` and decodes them, so the in-process path exercises the same
/// codec as the network; returns the frames and the version the decoder saw.
fn through_codec(frames: Vec<Frame>, version: u16) -> Result<(Vec<Frame>, u16), SessionError> {
    let mut decoder = FrameDecoder::default();
    for frame in &frames {
        decoder.push(&encode_frame_as(frame, version)?)?;
    }
    let mut out = Vec::with_capacity(frames.len());
    while let Some(frame) = decoder.next_frame()? {
        out.push(frame);
    }
    decoder.finish()?;
    let seen = if out.is_empty() {
        version
    } else {
        decoder.peer_version()
    };
    Ok((out, seen))
}
