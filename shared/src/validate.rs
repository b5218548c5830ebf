//! The one gate for untrusted change sets and snapshots.
//!
//! Everything a node applies, whether it came from a peer, a bundle file or its own local write,
//! passes through [`validate`] (change sets) or [`validate_snapshot`] (snapshots) first. Nothing
//! skips it; the replica applies only a [`Verdict::Apply`].
//!
//! Rules for a change set, in the order they are checked:
//! 1. the body is at most [`CHANGE_SET_BYTES_MAX`] bytes ([`ChangeSetError::TooLarge`]);
//! 2. it decodes as a [`ChangeSet`] with nothing left over, in a format this build reads, holding
//!    1..=[`CHANGE_SET_OPS_MAX`] ops ([`ChangeSetError::Malformed`]);
//! 3. when it arrives from an authenticated store, the stream is that store's own
//!    ([`ChangeSetError::NotPeersStream`]);
//! 4. the origin is in the directory ([`ChangeSetError::UnknownOrigin`]) and not revoked
//!    ([`ChangeSetError::Revoked`]);
//! 5. the signature over `"chainsync/changeset/v1" || body` verifies under the origin's key
//!    ([`ChangeSetError::BadSignature`]);
//! 6. the origin may write the topic ([`ChangeSetError::TopicNotAllowed`]) and every op belongs
//!    in that topic, names only what the origin owns and keeps within the domain limits of
//!    [`crate::model`] (quantities, prices, amounts, promotion rules)
//!    ([`ChangeSetError::OpNotAllowed`]);
//! 7. against the stream's head: a seq at or below the head with the same hash is a
//!    [`Verdict::Duplicate`] (a no-op), with another hash a [`ChangeSetError::Fork`]; a seq past
//!    head + 1 is a [`ChangeSetError::SeqGap`]; at head + 1, `prev` must equal the head's hash
//!    ([`ChangeSetError::PrevHashMismatch`]).
//!
//! The gate only reads: it never writes, so a rejected change set leaves the replica as it was.

use crate::changeset::{
    CHANGE_SET_BYTES_MAX, CHANGE_SET_FORMAT, CHANGE_SET_OPS_MAX, ChangeSet, Op, SNAPSHOT_BYTES_MAX,
    SNAPSHOT_SIG_PREFIX, SignedChangeSet, SignedSnapshot, Snapshot, ZERO_HASH, signing_input,
};
use crate::ids::{NodeId, RecordId, Scope, StreamId, Topic, record_id_owned_by};
use crate::model::UNIT_PRICE_CENTS_MAX;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// What the gate needs to know about an origin.
#[derive(Debug, Clone)]
pub struct OriginInfo {
    pub key: VerifyingKey,
    pub revoked: bool,
    /// Stores only: may write `prices@store:<self>`.
    pub may_set_own_prices: bool,
    /// Stores only: keys replaced, each valid up to a seq per stream.
    pub retired_keys: Vec<crate::model::RetiredKey>,
}

/// A stream's head: the last applied seq and its hash (seq 0 and [`ZERO_HASH`] before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl StreamHead {
    /// The head of a stream nothing has been applied to.
    pub const EMPTY: StreamHead = StreamHead {
        seq: 0,
        hash: ZERO_HASH,
    };
}

/// What the gate reads from the replica. `Err` is a storage failure, not a verdict.
pub trait Facts {
    type Error;
    /// The directory entry of `node` (HQ's own key for `hq`).
    fn origin(&self, node: &NodeId) -> Result<Option<OriginInfo>, Self::Error>;
    /// The head of `stream` ([`StreamHead::EMPTY`] if unknown).
    fn head(&self, stream: &StreamId) -> Result<StreamHead, Self::Error>;
    /// The hash of change set `seq` of `stream`, if this replica still holds it.
    fn hash_at(&self, stream: &StreamId, seq: u64) -> Result<Option<[u8; 32]>, Self::Error>;
}

/// What to do with a change set that passed the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next change set of its stream: apply it.
    Apply(ChangeSet),
    /// Already applied: do nothing.
    Duplicate { stream: StreamId, seq: u64 },
}

/// Every way a change set can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeSetError {
    /// The body is over the size limit.
    #[error("change set of {bytes} bytes is over the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
    /// The body does not decode, is in an unknown format, or holds no or too many ops.
    #[error("malformed change set: {0}")]
    Malformed(String),
    /// An authenticated store sent a stream that is not its own.
    #[error("{peer} sent stream {stream}, which it does not originate")]
    NotPeersStream { peer: NodeId, stream: StreamId },
    /// The origin is not in the directory.
    #[error("unknown origin {0}: not in the directory")]
    UnknownOrigin(NodeId),
    /// The origin has been revoked by HQ.
    #[error("origin {0} has been revoked")]
    Revoked(NodeId),
    /// The signature does not verify under the origin's key.
    #[error("bad signature on {stream} seq {seq}")]
    BadSignature { stream: StreamId, seq: u64 },
    /// The origin may not write this topic.
    #[error("{origin} may not write topic {topic}")]
    TopicNotAllowed { origin: NodeId, topic: Topic },
    /// An op does not belong in the topic or names what the origin does not own.
    #[error("{stream} seq {seq} op {index}: {reason}")]
    OpNotAllowed {
        stream: StreamId,
        seq: u64,
        index: usize,
        reason: String,
    },
    /// The seq skips ahead of the stream's head.
    #[error("seq gap on {stream}: expected {expected}, got {got}")]
    SeqGap {
        stream: StreamId,
        expected: u64,
        got: u64,
    },
    /// `prev` does not name the head's hash.
    #[error("prev-hash mismatch on {stream} at seq {seq}")]
    PrevHashMismatch { stream: StreamId, seq: u64 },
    /// A second, different change set for a seq already applied.
    #[error("fork on {stream} at seq {seq}: a different change set was applied there")]
    Fork { stream: StreamId, seq: u64 },
}

impl ChangeSetError {
    /// A short fixed name of the kind of failure (a metric's label).
    pub fn kind(&self) -> &'static str {
        match self {
            ChangeSetError::TooLarge { .. } => "too_large",
            ChangeSetError::Malformed(_) => "malformed",
            ChangeSetError::NotPeersStream { .. } => "not_peers_stream",
            ChangeSetError::UnknownOrigin(_) => "unknown_origin",
            ChangeSetError::Revoked(_) => "revoked",
            ChangeSetError::BadSignature { .. } => "bad_signature",
            ChangeSetError::TopicNotAllowed { .. } => "topic_not_allowed",
            ChangeSetError::OpNotAllowed { .. } => "op_not_allowed",
            ChangeSetError::SeqGap { .. } => "seq_gap",
            ChangeSetError::PrevHashMismatch { .. } => "prev_hash_mismatch",
            ChangeSetError::Fork { .. } => "fork",
        }
    }

    /// The stream the failure belongs to, when the body could be read that far.
    pub fn stream(&self) -> Option<&StreamId> {
        match self {
            ChangeSetError::NotPeersStream { stream, .. }
            | ChangeSetError::BadSignature { stream, .. }
            | ChangeSetError::OpNotAllowed { stream, .. }
            | ChangeSetError::SeqGap { stream, .. }
            | ChangeSetError::PrevHashMismatch { stream, .. }
            | ChangeSetError::Fork { stream, .. } => Some(stream),
            _ => None,
        }
    }

    /// Whether the failure is an integrity failure that halts its stream (recorded, visible)
    /// until a valid change set for the expected seq arrives. A gap is only a delivery hiccup:
    /// the receiver asks again from its cursor.
    pub fn halts_stream(&self) -> bool {
        self.halt_kind().is_some()
    }

    /// Which kind of halt the failure is, if it halts its stream.
    pub fn halt_kind(&self) -> Option<HaltKind> {
        Some(match self {
            ChangeSetError::BadSignature { .. } => HaltKind::BadSignature,
            ChangeSetError::OpNotAllowed { .. } => HaltKind::OpNotAllowed,
            ChangeSetError::PrevHashMismatch { .. } => HaltKind::PrevHashMismatch,
            ChangeSetError::Fork { .. } => HaltKind::Fork,
            _ => return None,
        })
    }
}

/// The kinds of integrity failure that halt a stream, each with what the operator does about
/// it (listed at HQ: `hq-server report halts`, `GET /v1/reports/halts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltKind {
    BadSignature,
    OpNotAllowed,
    PrevHashMismatch,
    Fork,
}

impl HaltKind {
    pub const ALL: [HaltKind; 4] = [
        HaltKind::BadSignature,
        HaltKind::OpNotAllowed,
        HaltKind::PrevHashMismatch,
        HaltKind::Fork,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HaltKind::BadSignature => "bad_signature",
            HaltKind::OpNotAllowed => "op_not_allowed",
            HaltKind::PrevHashMismatch => "prev_hash_mismatch",
            HaltKind::Fork => "fork",
        }
    }

    pub fn from_code(s: &str) -> Option<HaltKind> {
        HaltKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What resolves it.
    pub fn action(self) -> &'static str {
        match self {
            HaltKind::BadSignature => {
                "a copy damaged on the way, or not signed by the origin's key: it heals by \
                 itself when a good copy arrives (the origin resends); if it stays, the store's \
                 key changed without HQ knowing (a reinstalled agent): `hq-server store replace \
                 --id STORE` and enroll the agent again"
            }
            HaltKind::OpNotAllowed => {
                "the origin wrote what it may not (another store's records, an amount out of \
                 bounds, a version of the agent HQ does not know): check the agent's version; \
                 only the origin can send a valid change set for that seq, so if it cannot, \
                 `hq-server store replace --id STORE` gives it a new key and stream history"
            }
            HaltKind::PrevHashMismatch | HaltKind::Fork => {
                "the origin's history differs from the one this node holds (an old store.db \
                 restored from a backup, or tampering): stop the agent and move its store.db \
                 aside, so that it restores its streams from HQ when it starts; never re-enroll \
                 it over the old database"
            }
        }
    }
}

/// Every way a snapshot can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {bytes} bytes is over the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    #[error("bad HQ signature on the snapshot of {0}")]
    BadSignature(StreamId),
    #[error("snapshot of {stream}: {reason}")]
    OpNotAllowed { stream: StreamId, reason: String },
}

/// Decodes a postcard value that must fill `bytes` exactly.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the body", rest.len()));
    }
    Ok(value)
}

/// Checks a received change set against every rule in the module doc. `peer` is the
/// authenticated store the change set came from, or `None` when it came from HQ or a file
/// (where relayed streams of other origins are expected).
pub fn validate<F: Facts>(
    signed: &SignedChangeSet,
    peer: Option<&NodeId>,
    facts: &F,
) -> Result<Result<Verdict, ChangeSetError>, F::Error> {
    validate_preverified(signed, peer, facts, None)
}

/// [`validate`] for a change set whose signature the caller already checked under
/// `verified_under` (HQ checks a batch's signatures on several cores before its transaction).
/// Rule 5 is skipped only if that key is the origin's key as the directory holds it now;
/// otherwise the signature is checked here as usual. Every other rule runs unchanged.
pub fn validate_preverified<F: Facts>(
    signed: &SignedChangeSet,
    peer: Option<&NodeId>,
    facts: &F,
    verified_under: Option<&VerifyingKey>,
) -> Result<Result<Verdict, ChangeSetError>, F::Error> {
    let change_set = match open(signed) {
        Ok(cs) => cs,
        Err(e) => return Ok(Err(e)),
    };
    let stream = &change_set.stream;
    if let Some(peer) = peer
        && *peer != stream.origin
    {
        return Ok(Err(ChangeSetError::NotPeersStream {
            peer: peer.clone(),
            stream: stream.clone(),
        }));
    }
    let Some(origin) = facts.origin(&stream.origin)? else {
        return Ok(Err(ChangeSetError::UnknownOrigin(stream.origin.clone())));
    };
    if origin.revoked {
        return Ok(Err(ChangeSetError::Revoked(stream.origin.clone())));
    }
    let already_verified = verified_under.is_some_and(|key| *key == origin.key);
    // A change set from before the store's key was replaced verifies under the retired key, if
    // that key signed this stream at least that far.
    let under_retired = || {
        origin
            .retired_keys
            .iter()
            .filter(|k| k.covers(&stream.topic, change_set.seq))
            .filter_map(|k| VerifyingKey::from_bytes(&k.public_key).ok())
            .any(|k| signed.verify_signature(&k).is_ok())
    };
    if !already_verified && signed.verify_signature(&origin.key).is_err() && !under_retired() {
        return Ok(Err(ChangeSetError::BadSignature {
            stream: stream.clone(),
            seq: change_set.seq,
        }));
    }
    if let Err(e) = check_ownership(&change_set, &origin) {
        return Ok(Err(e));
    }
    let head = facts.head(stream)?;
    let hash = signed.hash();
    if change_set.seq <= head.seq {
        let stored = if change_set.seq == head.seq {
            Some(head.hash)
        } else {
            facts.hash_at(stream, change_set.seq)?
        };
        return Ok(match stored {
            Some(h) if h != hash => Err(ChangeSetError::Fork {
                stream: stream.clone(),
                seq: change_set.seq,
            }),
            _ => Ok(Verdict::Duplicate {
                stream: stream.clone(),
                seq: change_set.seq,
            }),
        });
    }
    if change_set.seq > head.seq + 1 {
        return Ok(Err(ChangeSetError::SeqGap {
            stream: stream.clone(),
            expected: head.seq + 1,
            got: change_set.seq,
        }));
    }
    if change_set.prev != head.hash {
        return Ok(Err(ChangeSetError::PrevHashMismatch {
            stream: stream.clone(),
            seq: change_set.seq,
        }));
    }
    Ok(Ok(Verdict::Apply(change_set)))
}

/// Rules 1 and 2: size, decoding, format, op count. Used on its own to learn a change set's
/// stream (for routing and logs); never enough to apply it.
pub fn open(signed: &SignedChangeSet) -> Result<ChangeSet, ChangeSetError> {
    if signed.body.len() > CHANGE_SET_BYTES_MAX {
        return Err(ChangeSetError::TooLarge {
            bytes: signed.body.len(),
            max: CHANGE_SET_BYTES_MAX,
        });
    }
    let change_set: ChangeSet = decode_exact(&signed.body).map_err(ChangeSetError::Malformed)?;
    if change_set.format != CHANGE_SET_FORMAT {
        return Err(ChangeSetError::Malformed(format!(
            "body format {} (this build reads {CHANGE_SET_FORMAT})",
            change_set.format
        )));
    }
    if change_set.seq == 0 {
        return Err(ChangeSetError::Malformed(
            "seq 0 (streams start at 1)".into(),
        ));
    }
    if change_set.ops.is_empty() || change_set.ops.len() > CHANGE_SET_OPS_MAX {
        return Err(ChangeSetError::Malformed(format!(
            "{} ops (1..={CHANGE_SET_OPS_MAX} allowed)",
            change_set.ops.len()
        )));
    }
    Ok(change_set)
}

/// Rule 6: topic and op ownership.
fn check_ownership(cs: &ChangeSet, origin: &OriginInfo) -> Result<(), ChangeSetError> {
    let stream = &cs.stream;
    if !may_write_topic(&stream.origin, &stream.topic, origin) {
        return Err(ChangeSetError::TopicNotAllowed {
            origin: stream.origin.clone(),
            topic: stream.topic.clone(),
        });
    }
    for (index, op) in cs.ops.iter().enumerate() {
        if let Err(reason) = op_allowed(&stream.origin, &stream.topic, op) {
            return Err(ChangeSetError::OpNotAllowed {
                stream: stream.clone(),
                seq: cs.seq,
                index,
                reason,
            });
        }
    }
    Ok(())
}

/// Which topics a node may originate.
pub fn may_write_topic(origin: &NodeId, topic: &Topic, info: &OriginInfo) -> bool {
    if origin.is_hq() {
        return !matches!(topic, Topic::Inventory | Topic::Sales);
    }
    match topic {
        Topic::Members | Topic::Inventory | Topic::Sales => true,
        Topic::Prices(Scope::Store(s)) => s == origin && info.may_set_own_prices,
        _ => false,
    }
}

fn owned(id: &RecordId, origin: &NodeId, what: &str) -> Result<(), String> {
    if record_id_owned_by(id, origin) {
        Ok(())
    } else {
        Err(format!("{what} id {id} does not start with `{origin}-`"))
    }
}

fn same_store(store: &NodeId, origin: &NodeId, what: &str) -> Result<(), String> {
    if store == origin {
        Ok(())
    } else {
        Err(format!("{what} belongs to store {store}, not to {origin}"))
    }
}

fn same_scope(scope: &Scope, topic_scope: &Scope, what: &str) -> Result<(), String> {
    if scope == topic_scope {
        Ok(())
    } else {
        Err(format!(
            "{what} for scope {scope} in a stream of scope {topic_scope}"
        ))
    }
}

/// Whether `op` may appear in `origin`'s stream of `topic`; `Err` says why not.
fn op_allowed(origin: &NodeId, topic: &Topic, op: &Op) -> Result<(), String> {
    check_bounds(op)?;
    match (topic, op) {
        (Topic::Directory, Op::RegionUpsert(r)) if r.parent.as_ref() == Some(&r.id) => {
            Err(format!("region {} cannot be its own parent", r.id))
        }
        (Topic::Directory, Op::RegionUpsert(_)) => Ok(()),
        (Topic::Directory, Op::StoreUpsert(store)) => {
            match VerifyingKey::from_bytes(&store.public_key) {
                Ok(_) => Ok(()),
                Err(_) => Err(format!(
                    "store {} has a public key that is not an ed25519 point",
                    store.id
                )),
            }
        }
        (Topic::Catalog, Op::ProductUpsert(_)) => Ok(()),
        (Topic::Prices(scope), Op::PriceUpsert(entry)) => {
            owned(&entry.id, origin, "price entry")?;
            same_scope(&entry.scope, scope, "price entry")
        }
        (Topic::Prices(_), Op::PriceRemove { id }) => owned(id, origin, "price entry"),
        (Topic::Promotions(scope), Op::PromotionUpsert(promo)) => {
            owned(&promo.id, origin, "promotion")?;
            same_scope(&promo.scope, scope, "promotion")
        }
        (Topic::Promotions(_), Op::PromotionRemove { id }) => owned(id, origin, "promotion"),
        (Topic::Members, Op::MemberEdit(_)) => Ok(()),
        (Topic::Members, Op::Ledger(entry)) => {
            owned(&entry.id, origin, "ledger entry")?;
            ledger_allowed(origin, entry)
        }
        (Topic::Members, Op::MemberMerge { alias, survivor }) if alias == survivor => {
            Err(format!("member {alias} cannot be merged into itself"))
        }
        (Topic::Members, Op::CardIssue(_)) => Ok(()),
        (Topic::Members, Op::CardStatus { status, number, .. }) => {
            let final_status = matches!(
                status,
                crate::model::CardStatus::Lost | crate::model::CardStatus::Replaced { .. }
            );
            if origin.is_hq() || final_status {
                Ok(())
            } else {
                Err(format!(
                    "card {number}: only HQ freezes, unfreezes or cancels a card"
                ))
            }
        }
        (
            Topic::Members,
            Op::LoyaltyPolicy(_) | Op::MemberAllowance { .. } | Op::MemberMerge { .. },
        ) => {
            if origin.is_hq() {
                Ok(())
            } else {
                Err(format!("only HQ sets the {}", op_name(op)))
            }
        }
        (Topic::Inventory, Op::Stock(m)) => {
            owned(&m.id, origin, "stock movement")?;
            same_store(&m.store, origin, "stock movement")
        }
        (Topic::Sales, Op::Receipt(r)) => {
            owned(&r.id, origin, "receipt")?;
            same_store(&r.store, origin, "receipt")
        }
        (Topic::Sales, Op::Return(r)) => {
            owned(&r.id, origin, "return")?;
            same_store(&r.store, origin, "return")
        }
        (Topic::Sales, Op::Void(v)) => {
            owned(&v.id, origin, "void")?;
            owned(&v.original, origin, "voided receipt")?;
            same_store(&v.store, origin, "void")
        }
        (topic, op) => Err(format!("{} does not belong in topic {topic}", op_name(op))),
    }
}

/// What a ledger entry may say for its origin: HQ alone adjusts and expires; a store takes from
/// a balance only with an authorisation (a hold of its own, or its offline allowance).
fn ledger_allowed(origin: &NodeId, entry: &crate::model::LedgerEntry) -> Result<(), String> {
    use crate::model::{LedgerKind, SpendAuth};
    if origin.is_hq() {
        return Ok(());
    }
    match (&entry.kind, &entry.auth) {
        (LedgerKind::Adjusted | LedgerKind::Expired, _) => {
            Err(format!("only HQ writes {:?} ledger entries", entry.kind))
        }
        (LedgerKind::Spent | LedgerKind::Redeemed, None) => Err(format!(
            "ledger entry {}: a store takes from a balance only with a hold or within its offline allowance",
            entry.id
        )),
        // Points come from sales, refunds and take-backs from voids and returns: each names
        // the receipt it belongs to.
        (LedgerKind::Earned | LedgerKind::Refunded | LedgerKind::TakenBack, _)
            if entry.receipt.is_none() =>
        {
            Err(format!(
                "ledger entry {}: a store's {:?} entry names the receipt it comes from",
                entry.id, entry.kind
            ))
        }
        (_, Some(SpendAuth::Held(hold))) => owned(hold, origin, "hold"),
        _ => Ok(()),
    }
}

/// The domain limits of [`crate::model`], for every op that carries numbers: a node's own
/// writes and every change set from any node pass the same checks.
fn check_bounds(op: &Op) -> Result<(), String> {
    match op {
        Op::PriceUpsert(e) => e.check_bounds(),
        Op::PromotionUpsert(p) => p.check_bounds(),
        Op::Ledger(e) => e.check_bounds(),
        Op::LoyaltyPolicy(p) => p.check_bounds(),
        Op::MemberAllowance {
            allowance: Some(a), ..
        } => a.check_bounds(),
        Op::Stock(m) => m.check_bounds(),
        Op::Receipt(r) => r.check_bounds(),
        Op::Return(r) => r.check_bounds(),
        Op::Void(v) => crate::model::check_text("void reason", &v.reason),
        Op::MemberEdit(e) => e.check_bounds(),
        Op::ProductUpsert(p) if !(0..=UNIT_PRICE_CENTS_MAX).contains(&p.unit_cost_cents) => {
            Err(format!(
                "unit cost {} of {} is out of range",
                p.unit_cost_cents, p.sku
            ))
        }
        _ => Ok(()),
    }
}

/// The op's kind, for messages.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::RegionUpsert(_) => "region",
        Op::StoreUpsert(_) => "store",
        Op::ProductUpsert(_) => "product",
        Op::PriceUpsert(_) => "price entry",
        Op::PriceRemove { .. } => "price removal",
        Op::PromotionUpsert(_) => "promotion",
        Op::PromotionRemove { .. } => "promotion removal",
        Op::MemberEdit(_) => "member edit",
        Op::Ledger(_) => "ledger entry",
        Op::LoyaltyPolicy(_) => "loyalty policy",
        Op::MemberAllowance { .. } => "member allowance",
        Op::MemberMerge { .. } => "member merge",
        Op::CardIssue(_) => "card",
        Op::CardStatus { .. } => "card status",
        Op::Stock(_) => "stock movement",
        Op::Receipt(_) => "receipt",
        Op::Return(_) => "return",
        Op::Void(_) => "void",
    }
}

/// Checks a snapshot: size, decoding, HQ's signature, and that every op belongs in the stream's
/// topic for its origin (rules 1, 2, 5 and 6 of change sets, with HQ as the signer). Whether the
/// snapshot is ahead of the replica is the loader's business.
pub fn validate_snapshot(
    signed: &SignedSnapshot,
    hq_key: &VerifyingKey,
) -> Result<Snapshot, SnapshotError> {
    if signed.body.len() > SNAPSHOT_BYTES_MAX {
        return Err(SnapshotError::TooLarge {
            bytes: signed.body.len(),
            max: SNAPSHOT_BYTES_MAX,
        });
    }
    let snapshot: Snapshot = decode_exact(&signed.body).map_err(SnapshotError::Malformed)?;
    if snapshot.format != CHANGE_SET_FORMAT {
        return Err(SnapshotError::Malformed(format!(
            "format {}",
            snapshot.format
        )));
    }
    if snapshot.parts == 0
        || snapshot.parts > crate::changeset::SNAPSHOT_PARTS_MAX
        || snapshot.part >= snapshot.parts
    {
        return Err(SnapshotError::Malformed(format!(
            "part {} of {}",
            snapshot.part, snapshot.parts
        )));
    }
    let input = signing_input(SNAPSHOT_SIG_PREFIX, &signed.body);
    if hq_key
        .verify(&input, &Signature::from_bytes(&signed.sig))
        .is_err()
    {
        return Err(SnapshotError::BadSignature(snapshot.stream));
    }
    let stream = &snapshot.stream;
    for op in &snapshot.ops {
        if let Err(reason) = op_allowed(&stream.origin, &stream.topic, op) {
            return Err(SnapshotError::OpNotAllowed {
                stream: stream.clone(),
                reason,
            });
        }
    }
    Ok(snapshot)
}
