//! Wire frames and their codec: a 4-byte big-endian length, then postcard of an [`Envelope`]
//! (protocol version + frame).
//!
//! Wire types are not domain types: frames carry change sets as opaque signed bytes and streams as
//! text, and convert by hand, so the retail model can change without breaking deployed agents.
//!
//! Invariants: the length prefix is checked against [`FRAME_BYTES_MAX`] before anything is
//! allocated for the payload; a decoder never holds more than one frame's worth past the limit;
//! any malformed input is an error naming the problem, never a panic.
//!
//! ```
//! use chainsync::protocol::frame::{Frame, FrameDecoder, encode_frame};
//! let bytes = encode_frame(&Frame::Challenge { nonce: [1; 32] }).unwrap();
//! let mut decoder = FrameDecoder::default();
//! decoder.push(&bytes[..3]).unwrap();
//! assert!(decoder.next_frame().unwrap().is_none()); // not all there yet
//! decoder.push(&bytes[3..]).unwrap();
//! assert_eq!(decoder.next_frame().unwrap(), Some(Frame::Challenge { nonce: [1; 32] }));
//! ```

use crate::changeset::SignedChangeSet;
use crate::ids::StreamId;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest version this build still accepts from a peer, so that HQ and agents one version
/// apart keep syncing during a roll-out. A version may only add frame variants at the end of
/// [`Frame`]: a frame of the older version then decodes as the same frame here, and a frame
/// written for an older peer ([`encode_frame_as`]) is refused if that peer lacks its variant
/// ([`Frame::since_version`]).
pub const PROTOCOL_VERSION_OLDEST: u16 = 2;
/// Largest frame payload. Holds a full batch ([`BATCH_BYTES_MAX`]) plus the largest single
/// change set with room for framing, and bounds what a peer can make us buffer.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most change sets per batch: keeps one apply transaction short.
pub const BATCH_CHANGE_SETS_MAX: usize = 512;
/// Target bytes of change-set bodies per batch (a single larger change set still goes alone).
pub const BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Most cursors in one frame: a store follows a few HQ streams and one members stream per node,
/// so this allows chains of tens of thousands of stores.
pub const CURSORS_MAX: usize = 65_536;
const LENGTH_PREFIX_BYTES: usize = 4;

/// A frame with the protocol version it was written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub frame: Frame,
}

/// A stream position on the wire: `S017/sales` at seq 42.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCursor {
    pub stream: String,
    pub seq: u64,
}

/// How far a store got seeding a stream from snapshot parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSeed {
    pub stream: String,
    pub seq: u64,
    pub parts_done: u32,
}

/// A signed change set (or snapshot part: the same two fields) on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChangeSet {
    pub body: Vec<u8>,
    pub sig: Vec<u8>,
}

/// Why a session was ended, sent to the peer before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    VersionMismatch,
    NotEnrolled,
    Revoked,
    AuthFailed,
    EnrollmentRefused,
    BadFrame,
    Unexpected,
    Internal,
}

/// Everything two nodes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Store -> HQ: who I am and how far I hold the streams I follow.
    Hello {
        node: String,
        cursors: Vec<WireCursor>,
    },
    /// HQ -> store: sign this to prove you hold your key.
    Challenge { nonce: [u8; 32] },
    /// Store -> HQ: ed25519 over `"chainsync/auth/v1" || nonce || tls binding`.
    Auth { signature: Vec<u8> },
    /// HQ -> store: authenticated; here is how far I hold your own streams, and my clock
    /// (Unix ms) as I sent this, which the store prices at ([`crate::hqclock`]).
    Welcome {
        own_heads: Vec<WireCursor>,
        hq_time_ms: u64,
    },
    /// Store -> HQ: my change sets you lack.
    Push { change_sets: Vec<WireChangeSet> },
    /// HQ -> store, after a durable commit: how far I now hold your streams, and what I refused.
    PushAck {
        heads: Vec<WireCursor>,
        rejected: Vec<String>,
    },
    /// Store -> HQ: how far I hold the streams I follow, and how far I got seeding streams from
    /// snapshots; send what I lack.
    Pull {
        cursors: Vec<WireCursor>,
        seeding: Vec<WireSeed>,
    },
    /// HQ -> store: snapshot parts of streams to seed (loaded first), then change sets you
    /// lack, in priority order; `more` if there are more; my clock as I sent this.
    Batch {
        snapshot_parts: Vec<WireChangeSet>,
        change_sets: Vec<WireChangeSet>,
        more: bool,
        hq_time_ms: u64,
    },
    /// HQ -> store: these streams moved.
    Notify { heads: Vec<WireCursor> },
    /// A new store's agent -> HQ, instead of Hello: enroll me with this key, here is my one-time
    /// token from the provisioning file.
    Enroll {
        node: String,
        token: String,
        public_key: Vec<u8>,
    },
    /// HQ -> store: enrolled; the session ends and the agent connects again with Hello.
    Enrolled { region: String },
    /// Either way: the session ends, and why.
    Error { code: ErrorCode, message: String },
    /// Store -> HQ (hosted stores, which keep no replica): facts about skus or a member; `query`
    /// is postcard of a [`crate::lookup::LookupQuery`].
    Lookup { id: u64, query: Vec<u8> },
    /// HQ -> store: the answer to lookup `id`, postcard of
    /// `Result<`[`crate::lookup::LookupAnswer`]`, String>`.
    LookupAnswer { id: u64, answer: Vec<u8> },
    /// HQ -> store (version 3): HQ was restored from a backup and holds these streams only this
    /// far, less than the store's Hello said it holds: send me what you hold beyond.
    Reclaim { cursors: Vec<WireCursor> },
    /// Store -> HQ (version 3): change sets of the streams HQ reclaimed, beyond its cursors, in
    /// order; `more` if the store holds more than fitted.
    Returned {
        change_sets: Vec<WireChangeSet>,
        more: bool,
    },
}

impl Frame {
    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Challenge { .. } => "Challenge",
            Frame::Auth { .. } => "Auth",
            Frame::Welcome { .. } => "Welcome",
            Frame::Push { .. } => "Push",
            Frame::PushAck { .. } => "PushAck",
            Frame::Pull { .. } => "Pull",
            Frame::Batch { .. } => "Batch",
            Frame::Notify { .. } => "Notify",
            Frame::Enroll { .. } => "Enroll",
            Frame::Enrolled { .. } => "Enrolled",
            Frame::Error { .. } => "Error",
            Frame::Lookup { .. } => "Lookup",
            Frame::LookupAnswer { .. } => "LookupAnswer",
            Frame::Reclaim { .. } => "Reclaim",
            Frame::Returned { .. } => "Returned",
        }
    }

    /// The first protocol version that has this frame.
    pub fn since_version(&self) -> u16 {
        match self {
            Frame::Reclaim { .. } | Frame::Returned { .. } => 3,
            _ => 2,
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The input ended inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    /// The payload does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} (this build speaks {PROTOCOL_VERSION_OLDEST} to {supported})")]
    Version { got: u16, supported: u16 },
    /// A frame written for a peer of an older version that lacks it.
    #[error("a {frame} frame cannot be sent to a peer speaking protocol version {version}")]
    NotInVersion { frame: &'static str, version: u16 },
}

/// Encodes a frame with its length prefix, in this build's version.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    encode_frame_as(frame, PROTOCOL_VERSION)
}

/// Encodes a frame for a peer speaking `version` (HQ answers each store in the version of its
/// frames); a frame that version lacks is an error.
pub fn encode_frame_as(frame: &Frame, version: u16) -> Result<Vec<u8>, FrameError> {
    if frame.since_version() > version {
        return Err(FrameError::NotInVersion {
            frame: frame.name(),
            version,
        });
    }
    let envelope = Envelope {
        version,
        frame: frame.clone(),
    };
    let payload =
        postcard::to_allocvec(&envelope).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes one payload (without its length prefix).
pub fn decode_payload(payload: &[u8]) -> Result<Frame, FrameError> {
    decode_versioned(payload).map(|e| e.frame)
}

/// Decodes one payload with the version it was written in (from
/// [`PROTOCOL_VERSION_OLDEST`] to [`PROTOCOL_VERSION`]).
pub fn decode_versioned(payload: &[u8]) -> Result<Envelope, FrameError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    // The version comes first so that a peer of another version gets a version error rather
    // than a confusing decode error.
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !(PROTOCOL_VERSION_OLDEST..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::Version {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    if envelope.frame.since_version() > version {
        return Err(FrameError::NotInVersion {
            frame: envelope.frame.name(),
            version,
        });
    }
    Ok(envelope)
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// The version of the last frame decoded (the peer's).
    version: u16,
    /// Largest frame payload accepted now ([`FRAME_BYTES_MAX`] unless lowered).
    frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            version: PROTOCOL_VERSION,
            frame_bytes_max: FRAME_BYTES_MAX,
        }
    }
}

impl FrameDecoder {
    /// Accepts frames of at most `max` bytes from now on (never more than [`FRAME_BYTES_MAX`]):
    /// HQ takes only small frames from a peer that has not authenticated.
    pub fn set_frame_bytes_max(&mut self, max: usize) {
        self.frame_bytes_max = max.min(FRAME_BYTES_MAX);
    }

    /// Adds received bytes. Fails at once if a length prefix announces an oversized frame.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        self.announced_len().map(|_| ())
    }

    fn announced_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
        len_bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frame_bytes_max,
            });
        }
        Ok(Some(len))
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        let end = LENGTH_PREFIX_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let envelope = decode_versioned(&self.buf[LENGTH_PREFIX_BYTES..end]);
        self.buf.drain(..end);
        let envelope = envelope?;
        self.version = envelope.version;
        Ok(Some(envelope.frame))
    }

    /// The protocol version of the last frame decoded: the version the peer speaks.
    pub fn peer_version(&self) -> u16 {
        self.version
    }

    /// Call at end of input: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.announced_len()? {
            Some(len) => LENGTH_PREFIX_BYTES + len,
            None => LENGTH_PREFIX_BYTES,
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }
}

impl WireChangeSet {
    /// The wire form of a signed change set.
    pub fn from_signed(signed: &SignedChangeSet) -> Self {
        Self {
            body: signed.body.clone(),
            sig: signed.sig.to_vec(),
        }
    }

    /// Back to a signed change set; only the signature's length is checked here (the gate checks
    /// everything else).
    pub fn into_signed(self) -> Result<SignedChangeSet, FrameError> {
        let sig: [u8; 64] = self.sig.try_into().map_err(|s: Vec<u8>| {
            FrameError::Malformed(format!("signature of {} bytes (expected 64)", s.len()))
        })?;
        Ok(SignedChangeSet {
            body: self.body,
            sig,
        })
    }
}

/// Cursors to their wire form.
pub fn to_wire_cursors(cursors: &[(StreamId, u64)]) -> Vec<WireCursor> {
    cursors
        .iter()
        .map(|(s, seq)| WireCursor {
            stream: s.to_string(),
            seq: *seq,
        })
        .collect()
}

/// Cursors from their wire form, refusing bad stream names and oversized lists.
pub fn from_wire_cursors(cursors: Vec<WireCursor>) -> Result<Vec<(StreamId, u64)>, FrameError> {
    if cursors.len() > CURSORS_MAX {
        return Err(FrameError::Malformed(format!(
            "{} cursors (at most {CURSORS_MAX})",
            cursors.len()
        )));
    }
    cursors
        .into_iter()
        .map(|c| {
            let stream = c
                .stream
                .parse()
                .map_err(|e| FrameError::Malformed(format!("cursor: {e}")))?;
            Ok((stream, c.seq))
        })
        .collect()
}

/// Seeding progress to its wire form.
pub fn to_wire_seeding(seeding: &[(StreamId, u64, u32)]) -> Vec<WireSeed> {
    seeding
        .iter()
        .map(|(s, seq, parts_done)| WireSeed {
            stream: s.to_string(),
            seq: *seq,
            parts_done: *parts_done,
        })
        .collect()
}

/// Seeding progress from its wire form, refusing bad stream names and oversized lists.
pub fn from_wire_seeding(
    seeding: Vec<WireSeed>,
) -> Result<std::collections::BTreeMap<StreamId, (u64, u32)>, FrameError> {
    if seeding.len() > CURSORS_MAX {
        return Err(FrameError::Malformed(format!(
            "{} seeding entries (at most {CURSORS_MAX})",
            seeding.len()
        )));
    }
    seeding
        .into_iter()
        .map(|w| {
            let stream = w
                .stream
                .parse()
                .map_err(|e| FrameError::Malformed(format!("seeding: {e}")))?;
            Ok((stream, (w.seq, w.parts_done)))
        })
        .collect()
}

/// Snapshot parts from their wire form.
pub fn from_wire_snapshot_parts(
    parts: Vec<WireChangeSet>,
) -> Result<Vec<crate::changeset::SignedSnapshot>, FrameError> {
    if parts.len() > BATCH_CHANGE_SETS_MAX {
        return Err(FrameError::Malformed(format!(
            "{} snapshot parts in one frame (at most {BATCH_CHANGE_SETS_MAX})",
            parts.len()
        )));
    }
    parts
        .into_iter()
        .map(|w| {
            let signed = w.into_signed()?;
            Ok(crate::changeset::SignedSnapshot {
                body: signed.body,
                sig: signed.sig,
            })
        })
        .collect()
}

/// Change sets from their wire form.
pub fn from_wire_change_sets(
    change_sets: Vec<WireChangeSet>,
) -> Result<Vec<SignedChangeSet>, FrameError> {
    if change_sets.len() > BATCH_CHANGE_SETS_MAX {
        return Err(FrameError::Malformed(format!(
            "{} change sets in one frame (at most {BATCH_CHANGE_SETS_MAX})",
            change_sets.len()
        )));
    }
    change_sets
        .into_iter()
        .map(WireChangeSet::into_signed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_byte_stream_in_any_chunking() {
        let frames = vec![
            Frame::Hello {
                node: "S1".into(),
                cursors: vec![WireCursor {
                    stream: "hq/catalog".into(),
                    seq: 3,
                }],
            },
            Frame::Push {
                change_sets: vec![WireChangeSet {
                    body: vec![1, 2, 3],
                    sig: vec![9; 64],
                }],
            },
            Frame::Error {
                code: ErrorCode::BadFrame,
                message: "x".into(),
            },
        ];
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|f| encode_frame(f).unwrap())
            .collect();
        for chunk in [1, 2, 7, 64, bytes.len()] {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece).unwrap();
                while let Some(f) = decoder.next_frame().unwrap() {
                    got.push(f);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(got, frames, "chunk size {chunk}");
        }
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_buffering_the_payload() {
        let mut decoder = FrameDecoder::default();
        let err = decoder
            .push(&((FRAME_BYTES_MAX as u32) + 1).to_be_bytes())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            }
        );
    }

    #[test]
    fn a_truncated_frame_is_reported_at_end_of_input() {
        let bytes = encode_frame(&Frame::Challenge { nonce: [0; 32] }).unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.push(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                have: bytes.len() - 1,
                need: bytes.len()
            })
        );
    }

    #[test]
    fn garbage_and_other_versions_are_named() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0, 0, 0, 3, 9, 0xff, 0xff]).unwrap();
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::Version { got: 9, .. }) | Err(FrameError::Malformed(_))
        ));
        let mut payload = postcard::to_allocvec(&Envelope {
            version: 9,
            frame: Frame::Pull {
                cursors: vec![],
                seeding: vec![],
            },
        })
        .unwrap();
        assert_eq!(
            decode_payload(&payload),
            Err(FrameError::Version {
                got: 9,
                supported: PROTOCOL_VERSION
            })
        );
        payload[0] = PROTOCOL_VERSION as u8;
        payload.push(0);
        assert!(
            matches!(decode_payload(&payload), Err(FrameError::Malformed(m)) if m.contains("trailing"))
        );
    }

    #[test]
    fn a_short_signature_is_malformed() {
        let err = WireChangeSet {
            body: vec![],
            sig: vec![0; 10],
        }
        .into_signed()
        .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(m) if m.contains("10 bytes")));
    }
}
