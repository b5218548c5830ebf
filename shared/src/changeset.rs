//! Change sets: the unit of replication, signed by their origin and hash-chained per stream.
//!
//! ```text
//! ChangeSet       { format, stream, seq (1, 2, 3 … no gaps), prev, hlc, ops }
//! SignedChangeSet { body: postcard(ChangeSet), sig: ed25519("chainsync/changeset/v1" || body) }
//! ```
//!
//! `prev` is the blake3 hash of the previous change set's body (all zero for seq 1), so a stream is
//! a hash chain: changing, dropping or reordering any change set breaks every later link.
//!
//! Invariants:
//! - A signed change set keeps the exact body bytes it was signed over; nothing re-encodes them
//!   (relays forward `body` unchanged, and the hash is taken over those bytes).
//! - Only [`crate::validate`] turns received bytes into a [`ChangeSet`] that the replica applies.
//!
//! ```
//! use chainsync::changeset::{ChangeSet, SignedChangeSet, Op, ZERO_HASH, CHANGE_SET_FORMAT};
//! use chainsync::ids::{NodeId, StreamId, Topic};
//! use chainsync::hlc::Hlc;
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let body = ChangeSet {
//!     format: CHANGE_SET_FORMAT,
//!     stream: StreamId::new(NodeId::new("S1").unwrap(), Topic::Sales),
//!     seq: 1, prev: ZERO_HASH, hlc: Hlc::default(), ops: vec![],
//! };
//! let signed = SignedChangeSet::sign(&body, &key).unwrap();
//! assert!(signed.verify_signature(&key.verifying_key()).is_ok());
//! ```

use crate::hlc::Hlc;
use crate::ids::{CardNo, MemberId, RecordId, StreamId};
use crate::model::{
    Allowance, Card, CardStatus, LedgerEntry, LoyaltyPolicy, MemberEdit, PriceEntry, Product,
    Promotion, Receipt, Region, ReturnRecord, StockMovement, StoreInfo, Void,
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain-separation prefix of change-set signatures.
pub const CHANGE_SET_SIG_PREFIX: &[u8] = b"chainsync/changeset/v1";
/// Domain-separation prefix of snapshot signatures.
pub const SNAPSHOT_SIG_PREFIX: &[u8] = b"chainsync/snapshot/v1";
/// The body format this build writes and reads.
/// 2: promotions as data with combination rules, receipt lines with their discounts, store
/// time zones, returns marked unverified.
/// 3: ledger entries with their authorisation, tender and note; the loyalty policy, card
/// allowances, cards and member merges as ops.
/// 4: receipts carry their pricing basis (pricing time, the streams' heads, the member as
/// seen) for HQ's price check.
pub const CHANGE_SET_FORMAT: u16 = 4;
/// Largest change-set body. A change set is one local transaction (a receipt, a price list
/// import); 1 MiB holds ~10,000 price entries while keeping a frame of several within limits.
pub const CHANGE_SET_BYTES_MAX: usize = 1024 * 1024;
/// Most ops in one change set: bounds the work one apply does inside its transaction.
pub const CHANGE_SET_OPS_MAX: usize = 20_000;
/// Largest snapshot body: a seed of 50,000 skus with prices fits with room to spare.
pub const SNAPSHOT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most parts one snapshot is cut into.
pub const SNAPSHOT_PARTS_MAX: u32 = 1_000_000;
/// `prev` of the first change set of a stream.
pub const ZERO_HASH: [u8; 32] = [0; 32];

/// One change inside a change set. Which ops a topic may carry is checked by [`crate::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    // directory (HQ)
    RegionUpsert(Region),
    StoreUpsert(StoreInfo),
    // catalog (HQ)
    ProductUpsert(Product),
    // prices
    PriceUpsert(PriceEntry),
    PriceRemove {
        id: RecordId,
    },
    // promotions (HQ)
    PromotionUpsert(Promotion),
    PromotionRemove {
        id: RecordId,
    },
    // members (any node)
    MemberEdit(MemberEdit),
    Ledger(LedgerEntry),
    // members (HQ only): the chain's points and stored-value rules, a card's own allowance
    LoyaltyPolicy(LoyaltyPolicy),
    /// A card's own offline allowance (`None`: back to its level's or the chain's).
    MemberAllowance {
        member: MemberId,
        allowance: Option<Allowance>,
    },
    /// Two sign-ups found to be one person: `alias` becomes another name of `survivor`, whose
    /// balances and history then hold both members' entries, each counted once (HQ only).
    MemberMerge {
        alias: MemberId,
        survivor: MemberId,
    },
    // cards (any node issues and reports lost or replaced; HQ also freezes and cancels)
    CardIssue(Card),
    /// A card's status, stamped with its writer's clock (`Hlc::default()`: the change set's),
    /// so that a snapshot keeps the order of statuses of equal strength.
    CardStatus {
        number: CardNo,
        status: CardStatus,
        hlc: Hlc,
    },
    // inventory (store)
    Stock(StockMovement),
    // sales (store)
    Receipt(Receipt),
    Return(ReturnRecord),
    Void(Void),
}

/// The signed content of one step of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// Body format version ([`CHANGE_SET_FORMAT`]).
    pub format: u16,
    pub stream: StreamId,
    /// 1 for the first change set of the stream, then +1 with no gaps.
    pub seq: u64,
    /// blake3 of the previous change set's body; [`ZERO_HASH`] for seq 1.
    pub prev: [u8; 32],
    /// The origin's clock when it wrote the change set.
    pub hlc: Hlc,
    pub ops: Vec<Op>,
}

/// Why a change set could not be built or signed locally.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The body did not serialize.
    #[error("change set does not encode: {0}")]
    Encode(#[from] postcard::Error),
    /// The body is over [`CHANGE_SET_BYTES_MAX`].
    #[error("change set of {bytes} bytes is over the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
}

/// A change set as it travels and is stored: the exact body bytes and the origin's signature.
/// (Not serde: frames and bundles carry it as their own wire type.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChangeSet {
    pub body: Vec<u8>,
    pub sig: [u8; 64],
}

/// The stream a change set body names, read from its first fields without decoding the ops
/// (for counting; nothing is trusted from it). `None` if the body does not start like one.
pub fn peek_stream(body: &[u8]) -> Option<StreamId> {
    #[derive(Deserialize)]
    struct Head {
        _format: u16,
        stream: StreamId,
    }
    postcard::take_from_bytes::<Head>(body)
        .ok()
        .map(|(head, _)| head.stream)
}

impl SignedChangeSet {
    /// Encodes and signs a change set with the origin's key.
    pub fn sign(change_set: &ChangeSet, key: &SigningKey) -> Result<Self, EncodeError> {
        let body = postcard::to_allocvec(change_set)?;
        if body.len() > CHANGE_SET_BYTES_MAX {
            return Err(EncodeError::TooLarge {
                bytes: body.len(),
                max: CHANGE_SET_BYTES_MAX,
            });
        }
        let sig = key
            .sign(&signing_input(CHANGE_SET_SIG_PREFIX, &body))
            .to_bytes();
        Ok(Self { body, sig })
    }

    /// The hash the next change set of the stream names as `prev`.
    pub fn hash(&self) -> [u8; 32] {
        body_hash(&self.body)
    }

    /// Checks the signature against the origin's key.
    pub fn verify_signature(
        &self,
        key: &VerifyingKey,
    ) -> Result<(), ed25519_dalek::SignatureError> {
        key.verify(
            &signing_input(CHANGE_SET_SIG_PREFIX, &self.body),
            &Signature::from_bytes(&self.sig),
        )
    }
}

/// blake3 of a body: what `prev` links to.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    *blake3::hash(body).as_bytes()
}

/// `prefix || body`, the bytes a signature covers.
pub(crate) fn signing_input(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(prefix.len() + body.len());
    input.extend_from_slice(prefix);
    input.extend_from_slice(body);
    input
}

/// The state of one stream at `seq`, compacted to the ops that rebuild it, signed by HQ.
///
/// A new or re-seeded node loads it instead of replaying the stream from seq 1, then follows the
/// stream from `seq + 1`; `head_hash` is the hash of change set `seq`, which change set `seq + 1`
/// names as `prev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u16,
    pub stream: StreamId,
    pub seq: u64,
    pub head_hash: [u8; 32],
    pub hlc: Hlc,
    /// Which part this is, from 0, of `parts`: a large stream travels in parts of bounded size,
    /// each signed, loaded in order; the stream stands at `seq` once the last is loaded.
    pub part: u32,
    pub parts: u32,
    pub ops: Vec<Op>,
}

/// A snapshot as it travels: exact body bytes and HQ's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSnapshot {
    pub body: Vec<u8>,
    pub sig: [u8; 64],
}

impl SignedSnapshot {
    /// Encodes and signs a snapshot with HQ's key.
    pub fn sign(snapshot: &Snapshot, hq_key: &SigningKey) -> Result<Self, EncodeError> {
        let body = postcard::to_allocvec(snapshot)?;
        if body.len() > SNAPSHOT_BYTES_MAX {
            return Err(EncodeError::TooLarge {
                bytes: body.len(),
                max: SNAPSHOT_BYTES_MAX,
            });
        }
        let sig = hq_key
            .sign(&signing_input(SNAPSHOT_SIG_PREFIX, &body))
            .to_bytes();
        Ok(Self { body, sig })
    }
}
