//! Helpers shared by the fuzz targets (`fuzz_targets/`) and the seed-corpus writer
//! (`examples/seed_corpus.rs`): fixed keys, a tiny in-memory [`Facts`], and the input layout of
//! `changeset_verify`.

use chainsync::changeset::{CHANGE_SET_SIG_PREFIX, SignedChangeSet};
use chainsync::ids::{NodeId, StreamId, Topic};
use chainsync::validate::{Facts, OriginInfo, StreamHead};
use ed25519_dalek::{Signer, SigningKey};
use std::convert::Infallible;

/// The head hash of the two streams [`MemFacts`] holds.
pub const HEAD_HASH: [u8; 32] = [7; 32];
/// The seq of the two streams [`MemFacts`] holds.
pub const HEAD_SEQ: u64 = 3;

/// A fixed key for `name`, the same on every run.
pub fn key(name: &str) -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    seed[31] ^= 0xa5;
    SigningKey::from_bytes(&seed)
}

/// The key of an origin [`MemFacts`] knows: `hq`, `S001`, and the revoked `S002`.
pub fn known_key(node: &NodeId) -> Option<SigningKey> {
    matches!(node.as_str(), "S001" | "S002" | "hq").then(|| key(node.as_str()))
}

/// Signs `body` as a change set of an origin with `key` would.
pub fn sign_body(body: &[u8], key: &SigningKey) -> [u8; 64] {
    let mut input = CHANGE_SET_SIG_PREFIX.to_vec();
    input.extend_from_slice(body);
    key.sign(&input).to_bytes()
}

/// Splits a `changeset_verify` input: mode byte, then 64 signature bytes (zero-padded when the
/// input is short), then the body.
pub fn split_input(data: &[u8]) -> Option<(u8, SignedChangeSet)> {
    let (&mode, rest) = data.split_first()?;
    let mut sig = [0u8; 64];
    let sig_len = rest.len().min(64);
    sig[..sig_len].copy_from_slice(&rest[..sig_len]);
    Some((
        mode,
        SignedChangeSet {
            body: rest[sig_len..].to_vec(),
            sig,
        },
    ))
}

/// The inverse of [`split_input`].
pub fn join_input(mode: u8, signed: &SignedChangeSet) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(&signed.sig);
    out.extend_from_slice(&signed.body);
    out
}

/// The gate's view of a tiny replica: origins `hq`, `S001` (may set its own prices) and `S002`
/// (revoked); `S001/sales` and `hq/directory` are at seq [`HEAD_SEQ`], every other stream is
/// empty.
pub struct MemFacts;

impl Facts for MemFacts {
    type Error = Infallible;

    fn origin(&self, node: &NodeId) -> Result<Option<OriginInfo>, Infallible> {
        Ok(known_key(node).map(|k| OriginInfo {
            key: k.verifying_key(),
            revoked: node.as_str() == "S002",
            may_set_own_prices: node.as_str() == "S001",
            retired_keys: Vec::new(),
        }))
    }

    fn head(&self, stream: &StreamId) -> Result<StreamHead, Infallible> {
        let held = matches!(
            (stream.origin.as_str(), &stream.topic),
            ("S001", Topic::Sales) | ("hq", Topic::Directory)
        );
        Ok(if held {
            StreamHead {
                seq: HEAD_SEQ,
                hash: HEAD_HASH,
            }
        } else {
            StreamHead::EMPTY
        })
    }

    fn hash_at(&self, stream: &StreamId, seq: u64) -> Result<Option<[u8; 32]>, Infallible> {
        let Ok(head) = self.head(stream);
        // Seq 1 is compacted away (unknown); seq 2 has a hash of its own.
        Ok((seq == 2 && head.seq >= 2).then_some([2; 32]))
    }
}
