//! Fuzz target: the change-set gate (`validate::open` and `validate::validate`) must never panic
//! on any signed change set a peer or a bundle file can carry.
//!
//! Input layout (see `chainsync_fuzz::split_input`): byte 0 is a mode byte, then 64 bytes of
//! signature (zero-padded when the input is short), then the body.
//! - Mode bit 0 set: the body is re-signed with the key of its origin when that origin is one
//!   this target knows (`S001`, the revoked `S002`, or `hq`). Random bytes almost never carry a
//!   valid signature, so without this the fuzzer would never get past rule 5, and the ownership
//!   and hash-chain rules (6 and 7) would go untested.
//! - Mode bit 1 set: the change set is checked as arriving from the authenticated store `S001`
//!   (`peer = Some(S001)`), else as arriving from HQ or a file (`peer = None`).
//!
//! The replica is `chainsync_fuzz::MemFacts`: three known origins and two streams at seq 3.
#![no_main]

use chainsync::ids::NodeId;
use chainsync::validate::{self, Facts, Verdict};
use chainsync_fuzz::{MemFacts, known_key, sign_body, split_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, mut signed)) = split_input(data) else {
        return;
    };

    // Rules 1-2 alone (what routing and logging use).
    let opened = validate::open(&signed);

    if mode & 1 == 1
        && let Ok(cs) = &opened
        && let Some(k) = known_key(&cs.stream.origin)
    {
        signed.sig = sign_body(&signed.body, &k);
    }

    let peer = NodeId::new("S001").expect("node id");
    let peer = (mode & 2 == 2).then_some(&peer);
    let Ok(verdict) = validate::validate(&signed, peer, &MemFacts);
    match verdict {
        Ok(Verdict::Apply(cs)) => {
            // The gate lets through only the next change set of a stream, chained to its head.
            let Ok(head) = MemFacts.head(&cs.stream);
            assert_eq!(cs.seq, head.seq + 1, "applied a change set out of order");
            assert_eq!(cs.prev, head.hash, "applied a change set off the chain");
            assert!(opened.is_ok(), "validate accepted what open refused");
        }
        Ok(Verdict::Duplicate { seq, .. }) => assert!(seq >= 1),
        Err(e) => {
            // Error methods must not panic either.
            let _ = (e.to_string(), e.stream(), e.halts_stream());
        }
    }
});
