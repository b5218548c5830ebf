//! Signed snapshots: a stream compacted to the ops that rebuild its state at a seq, cut into
//! parts of bounded size so that a large stream (500,000 members) travels in ordinary frames.
//!
//! HQ builds them ([`Replica::snapshot_parts`]) from its full log; a new or re-seeded node loads
//! the parts in order ([`Replica::load_snapshot`]) and then follows the stream from `seq + 1`.
//!
//! Compaction keeps the last op per key for keyed records (regions, stores, products, price
//! entries, promotions, including removals, so loading over a partial replica still removes), the
//! newest write per member field, and every immutable record (receipts, returns, voids, ledger
//! entries, stock movements) in stream order.
//!
//! Invariants: loading one part is one transaction that applies its ops and records the progress
//! (`seeding`: stream, seq, parts loaded); the stream's head moves to `(seq, head_hash)` only in
//! the transaction of the last part, so a crash mid-way leaves the stream where it was (the ops
//! already applied are idempotent, and loading resumes at the next part); parts load strictly in
//! order (a duplicate or a gap is skipped, not applied); a snapshot at or behind the replica's
//! head changes nothing.

use super::{Replica, ReplicaError, append_ops, ensure_stream};
use crate::changeset::{CHANGE_SET_FORMAT, Op, SignedSnapshot, Snapshot};
use crate::hlc::Hlc;
use crate::ids::StreamId;
use crate::model::{MemberEdit, ProfileField};
use crate::validate;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

/// Most change sets read from the log per step while building a snapshot.
const SNAPSHOT_READ_CHUNK: usize = 1024;
/// Target size of one snapshot part's ops when sent over the network: one part per frame with
/// room to spare.
pub const SNAPSHOT_PART_BYTES: usize = 1024 * 1024;
/// Bytes per part kept free for the part's header (stream, seq, hash, clock, counts).
const PART_HEADER_BYTES: usize = 512;

/// A stream at least this long is sent to a store that holds nothing of it as a snapshot rather
/// than replayed change set by change set.
pub const SEED_FROM_CHANGE_SETS: u64 = 64;
/// How long HQ serves a built snapshot to stores starting to seed before building a fresh one.
pub const SNAPSHOT_CACHE_MS: u64 = 60_000;
/// Streams whose snapshots HQ keeps built at most.
pub const SNAPSHOT_CACHE_STREAMS: usize = 32;

/// A snapshot HQ built and keeps for the stores seeding from it.
#[derive(Debug)]
pub struct BuiltSnapshot {
    pub seq: u64,
    pub built_ms: u64,
    pub parts: Vec<SignedSnapshot>,
}

/// What loading a snapshot part did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotLoad {
    /// The last part: the replica now stands at the snapshot's seq.
    Loaded { seq: u64, ops: usize },
    /// A part before the last: applied, progress recorded.
    Part { seq: u64, part: u32, parts: u32 },
    /// The replica already held the stream at or past that seq.
    AlreadyAhead { head_seq: u64 },
    /// Not the part that comes next (a duplicate, or a gap): nothing applied.
    OutOfOrder { expected: u32, got: u32 },
}

/// A stream being seeded from a snapshot: how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedProgress {
    pub stream: StreamId,
    pub seq: u64,
    pub parts_done: u32,
    pub parts: u32,
}

impl Replica {
    /// Builds a snapshot of `stream` at its current head in one part, signed with this node's key
    /// (HQ's).
    pub fn snapshot(&self, stream: &StreamId) -> Result<SignedSnapshot, ReplicaError> {
        let mut parts = self.snapshot_parts(stream, usize::MAX)?;
        match (parts.pop(), parts.is_empty()) {
            (Some(only), true) => Ok(only),
            _ => Err(ReplicaError::Corrupt(format!(
                "{stream}: a one-part snapshot came out in several parts"
            ))),
        }
    }

    /// Builds a snapshot of `stream` at its current head, cut into parts whose ops take at most
    /// about `part_bytes` each, every part signed with this node's key (HQ's).
    pub fn snapshot_parts(
        &self,
        stream: &StreamId,
        part_bytes: usize,
    ) -> Result<Vec<SignedSnapshot>, ReplicaError> {
        let head = self.head(stream)?;
        let mut compactor = Compactor::default();
        let mut after = 0;
        let mut hlc = Hlc::default();
        loop {
            let chunk = self.read_stream(stream, after, SNAPSHOT_READ_CHUNK, usize::MAX)?;
            if chunk.is_empty() {
                break;
            }
            for signed in &chunk {
                let cs = validate::open(signed)
                    .map_err(|e| ReplicaError::Corrupt(format!("{stream}: {e}")))?;
                if cs.seq != after + 1 {
                    return Err(ReplicaError::Corrupt(format!(
                        "{stream}: log jumps from {after} to {} (this node was seeded from a snapshot)",
                        cs.seq
                    )));
                }
                after = cs.seq;
                hlc = cs.hlc;
                for op in cs.ops {
                    compactor.push(op, cs.hlc);
                }
            }
        }
        let budget = part_bytes.saturating_sub(PART_HEADER_BYTES).max(1);
        let mut chunks: Vec<Vec<Op>> = vec![Vec::new()];
        let mut bytes = 0usize;
        for op in compactor.finish() {
            let size = postcard::experimental::serialized_size(&op)
                .map_err(crate::changeset::EncodeError::from)?;
            if bytes + size > budget && chunks.last().is_some_and(|c| !c.is_empty()) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(last) = chunks.last_mut() {
                last.push(op);
            }
        }
        let parts = u32::try_from(chunks.len())
            .ok()
            .filter(|n| *n <= crate::changeset::SNAPSHOT_PARTS_MAX)
            .ok_or_else(|| ReplicaError::Corrupt(format!("{stream}: too many snapshot parts")))?;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, ops)| {
                let snapshot = Snapshot {
                    format: CHANGE_SET_FORMAT,
                    stream: stream.clone(),
                    seq: head.seq,
                    head_hash: head.hash,
                    hlc,
                    part: i as u32,
                    parts,
                    ops,
                };
                Ok(SignedSnapshot::sign(&snapshot, &self.identity.key)?)
            })
            .collect()
    }

    /// The snapshot of `stream` HQ serves now: the one a store is part-way through (`seq`), or
    /// one built in the last [`SNAPSHOT_CACHE_MS`], or a new one at the head.
    pub fn cached_snapshot(
        &mut self,
        stream: &StreamId,
        seq: Option<u64>,
        now_ms: u64,
    ) -> Result<std::sync::Arc<BuiltSnapshot>, ReplicaError> {
        if let Some(built) = self.snapshot_cache.get(stream)
            && (Some(built.seq) == seq || now_ms.saturating_sub(built.built_ms) < SNAPSHOT_CACHE_MS)
        {
            return Ok(built.clone());
        }
        let head = self.head(stream)?;
        let built = std::sync::Arc::new(BuiltSnapshot {
            seq: head.seq,
            built_ms: now_ms,
            parts: self.snapshot_parts(stream, SNAPSHOT_PART_BYTES)?,
        });
        if self.snapshot_cache.len() >= SNAPSHOT_CACHE_STREAMS {
            let oldest = self
                .snapshot_cache
                .iter()
                .min_by_key(|(_, b)| b.built_ms)
                .map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                self.snapshot_cache.remove(&oldest);
            }
        }
        self.snapshot_cache.insert(stream.clone(), built.clone());
        Ok(built)
    }

    /// Validates a snapshot part signed by HQ and loads it, if it is the next one.
    pub fn load_snapshot(
        &mut self,
        signed: &SignedSnapshot,
        now_ms: u64,
    ) -> Result<SnapshotLoad, ReplicaError> {
        let snapshot = validate::validate_snapshot(signed, &self.hq_key)?;
        let tx = super::WriteTx::begin(&mut self.conn)?;
        let head = super::stream_head(&tx, &snapshot.stream)?;
        let id = ensure_stream(&tx, &snapshot.stream)?;
        if head.seq >= snapshot.seq {
            tx.execute("DELETE FROM seeding WHERE stream = ?1", params![id])?;
            tx.commit()?;
            return Ok(SnapshotLoad::AlreadyAhead { head_seq: head.seq });
        }
        let progress: Option<(i64, u32)> = tx
            .query_row(
                "SELECT seq, parts_done FROM seeding WHERE stream = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // A part 0 starts (or restarts, at another seq) the seeding; any other part must be the
        // one that comes next at the same seq.
        let expected = match progress {
            Some((seq, done)) if seq as u64 == snapshot.seq => done,
            _ => 0,
        };
        if snapshot.part != expected {
            return Ok(SnapshotLoad::OutOfOrder {
                expected,
                got: snapshot.part,
            });
        }
        let mut stock = super::StockDeltas::default();
        append_ops(
            &tx,
            &snapshot.stream,
            0,
            snapshot.hlc,
            &snapshot.ops,
            &mut stock,
        )?;
        stock.flush(&tx)?;
        let last = snapshot.part + 1 == snapshot.parts;
        if last {
            tx.execute("DELETE FROM seeding WHERE stream = ?1", params![id])?;
            tx.execute(
                "DELETE FROM log WHERE stream = ?1 AND seq <= ?2",
                params![id, snapshot.seq as i64],
            )?;
            // The base names the head hash the next change set chains on (the last part's
            // header carries it like every part's).
            tx.execute(
                "INSERT OR REPLACE INTO snapshot_base (stream, seq, body, sig) VALUES (?1, ?2, ?3, ?4)",
                params![id, snapshot.seq as i64, signed.body, &signed.sig[..]],
            )?;
            tx.execute(
                "UPDATE streams SET head_seq = ?2, head_hash = ?3, base_seq = ?2, last_applied_ms = ?4,
                 halted_reason = NULL, halted_kind = NULL, halted_at_ms = NULL, hub_acked_seq = max(hub_acked_seq, ?2) WHERE id = ?1",
                params![
                    id,
                    snapshot.seq as i64,
                    &snapshot.head_hash[..],
                    now_ms as i64
                ],
            )?;
        } else {
            tx.execute(
                "INSERT OR REPLACE INTO seeding (stream, seq, parts_done, parts, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    snapshot.seq as i64,
                    snapshot.part + 1,
                    snapshot.parts,
                    now_ms as i64
                ],
            )?;
        }
        self.clock.observe(snapshot.hlc);
        let hlc = postcard::to_allocvec(&self.clock.last())
            .map_err(crate::changeset::EncodeError::from)?;
        super::put_meta(&tx, "hlc", &hlc)?;
        tx.commit()?;
        Ok(if last {
            SnapshotLoad::Loaded {
                seq: snapshot.seq,
                ops: snapshot.ops.len(),
            }
        } else {
            SnapshotLoad::Part {
                seq: snapshot.seq,
                part: snapshot.part,
                parts: snapshot.parts,
            }
        })
    }

    /// The streams being seeded from a snapshot, with their progress.
    pub fn seeding(&self) -> Result<Vec<SeedProgress>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT streams.name, seeding.seq, seeding.parts_done, seeding.parts
             FROM seeding JOIN streams ON streams.id = seeding.stream ORDER BY streams.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, seq, parts_done, parts) = row?;
            out.push(SeedProgress {
                stream: super::parse_stream(&name)?,
                seq: seq as u64,
                parts_done,
                parts,
            });
        }
        Ok(out)
    }
}

/// Folds a stream's ops into the fewest that rebuild the same state.
#[derive(Default)]
struct Compactor {
    keyed: BTreeMap<(u8, String), Op>,
    fields: BTreeMap<(String, ProfileField), (Hlc, String)>,
    records: Vec<Op>,
}

impl Compactor {
    fn push(&mut self, op: Op, change_set_hlc: Hlc) {
        let key = match &op {
            Op::RegionUpsert(r) => (0, r.id.to_string()),
            Op::StoreUpsert(s) => (1, s.id.to_string()),
            Op::ProductUpsert(p) => (2, p.sku.to_string()),
            Op::PriceUpsert(e) => (3, e.id.to_string()),
            Op::PriceRemove { id } => (3, id.to_string()),
            Op::PromotionUpsert(p) => (4, p.id.to_string()),
            Op::PromotionRemove { id } => (4, id.to_string()),
            Op::LoyaltyPolicy(_) => (5, String::new()),
            Op::MemberAllowance { member, .. } => (6, member.to_string()),
            // Merges depend on their order: kept as records, in stream order. A card status
            // keeps its change set's clock, which decides among statuses of equal strength.
            Op::MemberMerge { .. } | Op::CardIssue(_) => {
                self.records.push(op);
                return;
            }
            Op::CardStatus {
                number,
                status,
                hlc,
            } => {
                let hlc = if *hlc == Hlc::default() {
                    change_set_hlc
                } else {
                    *hlc
                };
                self.records.push(Op::CardStatus {
                    number: number.clone(),
                    status: status.clone(),
                    hlc,
                });
                return;
            }
            Op::MemberEdit(edit) => {
                let stamp = if edit.hlc == Hlc::default() {
                    change_set_hlc
                } else {
                    edit.hlc
                };
                for (field, value) in &edit.fields {
                    let slot = self.fields.entry((edit.member.to_string(), *field));
                    let newer = match &slot {
                        std::collections::btree_map::Entry::Occupied(o) => o.get().0 < stamp,
                        std::collections::btree_map::Entry::Vacant(_) => true,
                    };
                    if newer {
                        slot.insert_entry((stamp, value.clone()));
                    }
                }
                return;
            }
            Op::Ledger(_) | Op::Stock(_) | Op::Receipt(_) | Op::Return(_) | Op::Void(_) => {
                self.records.push(op);
                return;
            }
        };
        self.keyed.insert(key, op);
    }

    fn finish(self) -> Vec<Op> {
        let mut ops: Vec<Op> = self.keyed.into_values().collect();
        for ((member, field), (hlc, value)) in self.fields {
            // Member ids were valid when they were applied; one that no longer parses is skipped.
            if let Ok(member) = member.parse() {
                ops.push(Op::MemberEdit(MemberEdit {
                    member,
                    hlc,
                    fields: vec![(field, value)],
                }));
            }
        }
        ops.extend(self.records);
        ops
    }
}
