//! Fuzz target: the wire frame codec must never panic on any bytes a peer can send.
//!
//! The input is used two ways:
//! 1. whole, as one frame payload, through `frame::decode_payload`;
//! 2. as a byte stream through `FrameDecoder::push` / `next_frame` / `finish`, cut into chunks
//!    whose size comes from the first input byte (1..=64), so split length prefixes and payloads
//!    are exercised too.
//!
//! Every frame that decodes must also survive what a session does next: re-encoding it gives
//! bytes that decode to the same frame, and its cursors and change sets convert from their wire
//! form without panicking (errors are fine: they end a session, they must not crash it).
#![no_main]

use chainsync::protocol::frame::{self, Frame};
use chainsync::protocol::{FrameDecoder, encode_frame};
use libfuzzer_sys::fuzz_target;

/// Some fixed key standing in for HQ's: a fuzzed snapshot is checked against it.
fn fuzz_hq_key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()
}

/// What a session does with a decoded frame, minus the replica.
fn exercise(frame: &Frame) {
    // Round trip: a decoded frame re-encodes, and the encoding decodes to the same frame.
    if let Ok(bytes) = encode_frame(frame) {
        let again = frame::decode_payload(&bytes[4..]).expect("re-encoded frame decodes");
        assert_eq!(&again, frame, "frame changed across a round trip");
    }
    match frame.clone() {
        Frame::Hello { cursors, .. } => {
            let _ = frame::from_wire_cursors(cursors);
        }
        Frame::Pull { cursors, seeding } => {
            let _ = frame::from_wire_cursors(cursors);
            let _ = frame::from_wire_seeding(seeding);
        }
        Frame::Welcome {
            own_heads: heads, ..
        }
        | Frame::Notify { heads }
        | Frame::PushAck { heads, .. }
        | Frame::Reclaim { cursors: heads } => {
            let _ = frame::from_wire_cursors(heads);
        }
        Frame::Batch { snapshot_parts, .. } if !snapshot_parts.is_empty() => {
            if let Ok(parts) = frame::from_wire_snapshot_parts(snapshot_parts) {
                for part in &parts {
                    let _ = chainsync::validate::validate_snapshot(part, &fuzz_hq_key());
                }
            }
        }
        Frame::Push { change_sets }
        | Frame::Batch { change_sets, .. }
        | Frame::Returned { change_sets, .. } => {
            if let Ok(signed) = frame::from_wire_change_sets(change_sets) {
                for cs in &signed {
                    let _ = chainsync::validate::open(cs);
                }
            }
        }
        Frame::Lookup { query, .. } => {
            let _ = chainsync::lookup::LookupQuery::decode(&query);
        }
        Frame::LookupAnswer { answer, .. } => {
            let _ = chainsync::lookup::LookupAnswer::decode(&answer);
        }
        Frame::Challenge { .. }
        | Frame::Auth { .. }
        | Frame::Error { .. }
        | Frame::Enroll { .. }
        | Frame::Enrolled { .. } => {}
    }
    let _ = frame.name();
}

fuzz_target!(|data: &[u8]| {
    // 1. The whole input as one payload.
    if let Ok(frame) = frame::decode_payload(data) {
        exercise(&frame);
    }

    // 2. The input as a byte stream, in chunks.
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut decoder = FrameDecoder::default();
    for piece in stream.chunks(chunk) {
        // An error here ends a real session; keep going anyway, the decoder must still not
        // panic on whatever comes after.
        let _ = decoder.push(piece);
        // An error from next_frame drops the bad frame (or stops at an oversized prefix).
        while let Ok(Some(frame)) = decoder.next_frame() {
            exercise(&frame);
        }
    }
    let _ = decoder.finish();
});
