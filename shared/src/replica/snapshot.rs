//! Signed snapshots: a stream compacted to the ops that rebuild its state at a seq.
//!
//! HQ builds them ([`Replica::snapshot`]) from its full log; a new or re-seeded node loads one
//! ([`Replica::load_snapshot`]) and then follows the stream from `seq + 1`.
//!
//! Compaction keeps the last op per key for keyed records (regions, stores, products, price
//! entries, promotions, including removals, so loading over a partial replica still removes), the
//! newest write per member field, and every immutable record (receipts, returns, voids, ledger
//! entries, stock movements) in stream order.
//!
//! Invariant: loading a snapshot is one transaction that applies its ops and sets the stream's
//! head to `(seq, head_hash)`; a snapshot at or behind the replica's head changes nothing.

use super::{Replica, ReplicaError, append_ops, ensure_stream};
use crate::changeset::{CHANGE_SET_FORMAT, Op, SignedSnapshot, Snapshot};
use crate::hlc::Hlc;
use crate::ids::StreamId;
use crate::model::{MemberEdit, ProfileField};
use crate::validate;
use rusqlite::params;
use std::collections::BTreeMap;

/// Most change sets read from the log per step while building a snapshot.
const SNAPSHOT_READ_CHUNK: usize = 1024;

/// What loading a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotLoad {
    /// The replica now stands at the snapshot's seq.
    Loaded { seq: u64, ops: usize },
    /// The replica already held the stream at or past that seq.
    AlreadyAhead { head_seq: u64 },
}

impl Replica {
    /// Builds a snapshot of `stream` at its current head, signed with this node's key (HQ's).
    pub fn snapshot(&self, stream: &StreamId) -> Result<SignedSnapshot, ReplicaError> {
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
        let snapshot = Snapshot {
            format: CHANGE_SET_FORMAT,
            stream: stream.clone(),
            seq: head.seq,
            head_hash: head.hash,
            hlc,
            ops: compactor.finish(),
        };
        Ok(SignedSnapshot::sign(&snapshot, &self.identity.key)?)
    }

    /// Validates a snapshot signed by HQ and seeds its stream from it.
    pub fn load_snapshot(
        &mut self,
        signed: &SignedSnapshot,
        now_ms: u64,
    ) -> Result<SnapshotLoad, ReplicaError> {
        let snapshot = validate::validate_snapshot(signed, &self.hq_key)?;
        let tx = self.conn.transaction()?;
        let head = super::stream_head(&tx, &snapshot.stream)?;
        if head.seq >= snapshot.seq {
            return Ok(SnapshotLoad::AlreadyAhead { head_seq: head.seq });
        }
        let id = ensure_stream(&tx, &snapshot.stream)?;
        let mut stock = super::StockDeltas::default();
        append_ops(
            &tx,
            &snapshot.stream,
            snapshot.hlc,
            &snapshot.ops,
            &mut stock,
        )?;
        stock.flush(&tx)?;
        tx.execute(
            "DELETE FROM log WHERE stream = ?1 AND seq <= ?2",
            params![id, snapshot.seq as i64],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshot_base (stream, seq, body, sig) VALUES (?1, ?2, ?3, ?4)",
            params![id, snapshot.seq as i64, signed.body, &signed.sig[..]],
        )?;
        tx.execute(
            "UPDATE streams SET head_seq = ?2, head_hash = ?3, base_seq = ?2, last_applied_ms = ?4,
             halted_reason = NULL WHERE id = ?1",
            params![
                id,
                snapshot.seq as i64,
                &snapshot.head_hash[..],
                now_ms as i64
            ],
        )?;
        self.clock.observe(snapshot.hlc);
        let hlc = postcard::to_allocvec(&self.clock.last())
            .map_err(crate::changeset::EncodeError::from)?;
        super::put_meta(&tx, "hlc", &hlc)?;
        tx.commit()?;
        Ok(SnapshotLoad::Loaded {
            seq: snapshot.seq,
            ops: snapshot.ops.len(),
        })
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
