//! The SQLite replica: one node's log of every stream it keeps, its cursors, its outbox and the
//! materialized retail tables, in one database file (WAL).
//!
//! # Layout
//! - `mod.rs` (this file): opening, local writes, applying received batches, reading streams.
//! - `apply.rs`: materializing ops into the retail tables (the merge rules in SQL).
//! - `query.rs`: read-only questions (stock, balances, prices, receipts, stream status).
//! - `snapshot.rs`: building a signed snapshot of a stream and seeding a replica from one.
//!
//! # Invariants
//! - Applying a change set (log row, materialized rows, stream head) is one transaction; so is a
//!   whole received batch. A crash leaves all of it or none of it.
//! - A local write is a change set of the node's own stream, signed, validated by the same gate
//!   as received data, applied and committed before [`Replica::commit_local`] returns.
//! - A change set is applied at most once: the gate turns a repeat into a no-op.
//! - A stream's head moves only forward, by exactly one seq per applied change set, and always
//!   names the hash of the last applied body.
//! - The outbox is not a separate queue: it is every change set of the node's own streams above
//!   what the hub has acknowledged (`hub_acked_seq`), read from the log. Nothing leaves it until
//!   the hub says it made it durable.

mod apply;
use apply::StockDeltas;
mod cards;
pub use cards::{CardInfo, PossibleDuplicate};
mod hq;
mod members;
pub use members::{
    CardException, HOLD_TTL_MS, HoldOutcome, HoldRequest, ReceiptLedgerRow, StatementRow,
};
mod pricecheck;
mod query;
mod reclaim;
pub use reclaim::ReclaimStatus;
mod report;
mod retail;
pub use retail::{OriginalReceipt, OverrideRow, PromotionReportRow, UnverifiedReturn};
mod snapshot;
mod tokens;
pub use tokens::{ApiToken, TOKEN_ID_HEX_CHARS};

pub use hq::{EnrollError, PendingStore};
pub use pricecheck::{PRICE_CHECK_BATCH_RECEIPTS, PriceCheckPass, PriceDifference};
pub use query::{HaltedStream, StockRow, StreamStatus};
pub use report::{SalesReportRow, StockFilter, StockReportRow, StoreReportRow};
pub use snapshot::{
    BuiltSnapshot, SEED_FROM_CHANGE_SETS, SNAPSHOT_PART_BYTES, SeedProgress, SnapshotLoad,
};

use crate::changeset::{CHANGE_SET_FORMAT, ChangeSet, EncodeError, Op, SignedChangeSet};
use crate::hlc::{Clock, Hlc};
use crate::ids::{NodeId, StreamId, Topic};
use crate::validate::{
    self, ChangeSetError, Facts, OriginInfo, SnapshotError, StreamHead, Verdict,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, params};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// Schema version this build writes; a database of another version is refused.
pub const SCHEMA_VERSION: i64 = 4;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a committed transaction survives power loss. The default everywhere a
    /// sale or an acknowledgement depends on it.
    Full,
    /// `synchronous=OFF`: survives a killed process but not power loss. For the simulation and
    /// throwaway test replicas only.
    Relaxed,
}

/// Everything that can go wrong in the replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// SQLite failed (disk full, locked, corrupt file …).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A local change set could not be encoded or is over the size limit.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A local write broke a rule of the gate (e.g. a store writing an HQ topic).
    #[error("local write refused: {0}")]
    Refused(ChangeSetError),
    /// The database belongs to another node or another schema version.
    #[error("database {what}: found {found}, expected {expected}")]
    WrongDatabase {
        what: &'static str,
        found: String,
        expected: String,
    },
    /// A snapshot failed validation.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A request that cannot be carried out as asked (e.g. adding a store twice).
    #[error("{0}")]
    Invalid(String),
    /// Stored data does not decode: the file was damaged or written by a broken build.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A local write while this node's own history is not all here: HQ holds more of the stream
    /// than this replica (its database was lost and is being restored), or the replica was
    /// created afresh and has not heard from HQ yet. Writing now would fork the stream.
    #[error("{0}")]
    Restoring(String),
}

/// A node's identity: its id and the key that signs what it originates.
#[derive(Clone)]
pub struct Identity {
    pub node: NodeId,
    pub key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How often (in change sets) a long apply reports progress.
pub const PROGRESS_EVERY: usize = 1_000;

/// What a received batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// `(stream, seq)` of every change set applied, in order.
    pub applied: Vec<(StreamId, u64)>,
    /// Change sets that were already applied (no-ops).
    pub duplicates: usize,
    /// Change sets refused, with the reason. Each left the replica unchanged (an integrity failure
    /// also recorded its reason on its stream).
    pub rejected: Vec<ChangeSetError>,
}

/// A committed local write.
#[derive(Debug, Clone)]
pub struct Committed {
    pub stream: StreamId,
    pub seq: u64,
    pub signed: SignedChangeSet,
}

/// One node's replica.
pub struct Replica {
    conn: Connection,
    identity: Identity,
    hq_key: VerifyingKey,
    clock: Clock,
    /// HQ: snapshots built for seeding stores, by stream.
    snapshot_cache: std::collections::BTreeMap<StreamId, std::sync::Arc<BuiltSnapshot>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.identity.node)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens (creating if needed) the replica of `identity` at `path`. `hq_key` is HQ's public key,
    /// the root of trust (on HQ itself, its own).
    pub fn open(
        path: &Path,
        identity: Identity,
        hq_key: VerifyingKey,
        durability: Durability,
    ) -> Result<Self, ReplicaError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Relaxed => "OFF",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut replica = Replica {
            conn,
            identity,
            hq_key,
            clock: Clock::default(),
            snapshot_cache: Default::default(),
        };
        replica.init_schema()?;
        Ok(replica)
    }

    fn init_schema(&mut self) -> Result<(), ReplicaError> {
        let tx = self.conn.transaction()?;
        let has_meta: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            tx.execute_batch(include_str!("schema.sql"))?;
            put_meta(&tx, "schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            put_meta(&tx, "node", self.identity.node.as_str().as_bytes())?;
            put_meta(&tx, "hq_key", self.hq_key.as_bytes())?;
        }
        let version = get_meta(&tx, "schema_version")?.unwrap_or_default();
        if version != SCHEMA_VERSION.to_be_bytes() {
            return Err(ReplicaError::WrongDatabase {
                what: "schema version",
                found: format!("{version:?}"),
                expected: SCHEMA_VERSION.to_string(),
            });
        }
        let node = get_meta(&tx, "node")?.unwrap_or_default();
        if node != self.identity.node.as_str().as_bytes() {
            return Err(ReplicaError::WrongDatabase {
                what: "node",
                found: String::from_utf8_lossy(&node).into_owned(),
                expected: self.identity.node.to_string(),
            });
        }
        // Added after the first schema: created on open where missing.
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS lookup_cache (
                key TEXT PRIMARY KEY,      -- hosted stores: HQ's lookup answers, `sku:…`/`member:…`
                answer BLOB NOT NULL,
                fetched_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS store_retired_keys (  -- replaced store keys, postcard
                store TEXT PRIMARY KEY,
                body BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS restore_own (  -- own streams HQ holds further than here
                name TEXT PRIMARY KEY,
                hub_seq INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS seeding (  -- streams being seeded from snapshot parts
                stream INTEGER PRIMARY KEY REFERENCES streams(id),
                seq INTEGER NOT NULL,
                parts_done INTEGER NOT NULL,
                parts INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL
            );",
        )?;
        tx.execute_batch(reclaim::RECLAIM_TABLES)?;
        tokens::add_missing_columns(&tx)?;
        if let Some(bytes) = get_meta(&tx, "hlc")? {
            let hlc: Hlc = postcard::from_bytes(&bytes)
                .map_err(|e| ReplicaError::Corrupt(format!("stored clock: {e}")))?;
            self.clock = Clock::resume(hlc);
        }
        tx.commit()?;
        Ok(())
    }

    /// This replica's node.
    pub fn node(&self) -> &NodeId {
        &self.identity.node
    }

    /// HQ's public key, this replica's root of trust.
    pub fn hq_key(&self) -> &VerifyingKey {
        &self.hq_key
    }

    /// The node's clock (last timestamp issued or seen).
    pub fn clock(&self) -> Hlc {
        self.clock.last()
    }

    /// Writes and commits one row (the time of this check in `meta`): fails if the database
    /// cannot take a write (a read-only file, a full disk, a lock held past the busy timeout).
    pub fn check_writable(&mut self, now_ms: u64) -> Result<(), ReplicaError> {
        put_meta(&self.conn, "health_checked_ms", &now_ms.to_be_bytes())?;
        Ok(())
    }

    /// Forgets what this replica keeps in memory from its database (built snapshots), after a
    /// transaction it was built in was rolled back: a snapshot of writes that never committed
    /// must not be served.
    pub fn forget_cached(&mut self) {
        self.snapshot_cache.clear();
    }

    /// Reads one row of the database: fails if the file cannot be read.
    pub fn check_readable(&self) -> Result<(), ReplicaError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM meta")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    /// HQ's clock minus this store's, in ms, as last learned from HQ (`None` before HQ said
    /// anything). Read from the database, so a reader connection sees what the writer stored.
    pub fn hq_clock_offset(&self) -> Result<Option<i64>, ReplicaError> {
        get_meta(&self.conn, HQ_CLOCK_META)?
            .map(|bytes| {
                <[u8; 8]>::try_from(bytes.as_slice())
                    .map(i64::from_le_bytes)
                    .map_err(|_| ReplicaError::Corrupt("stored HQ clock offset".into()))
            })
            .transpose()
    }

    /// Durably records HQ's clock minus this store's ([`crate::hqclock`]).
    pub fn set_hq_clock_offset(&mut self, offset_ms: i64) -> Result<(), ReplicaError> {
        put_meta(&self.conn, HQ_CLOCK_META, &offset_ms.to_le_bytes())?;
        Ok(())
    }

    /// The time prices and promotions are evaluated at when this node's clock reads `now_ms`:
    /// HQ's clock as this store reckons it ([`crate::hqclock`]). Never the hybrid logical
    /// clock, which other stores' clocks move.
    pub fn pricing_time(&self, now_ms: u64) -> Result<i64, ReplicaError> {
        Ok(crate::hqclock::hq_now(now_ms, self.hq_clock_offset()?))
    }

    /// Writes `ops` as the next change set of this node's stream of `topic`, durably: when this
    /// returns `Ok`, the change set is committed, applied and in the outbox.
    pub fn commit_local(
        &mut self,
        topic: Topic,
        ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<Committed, ReplicaError> {
        self.commit_local_with(topic, ops, now_ms, |_| Ok(()))
    }

    /// [`Replica::commit_local`], running `also` inside the same transaction (for node-local
    /// bookkeeping that must commit with the change set or not at all).
    pub(crate) fn commit_local_with(
        &mut self,
        topic: Topic,
        ops: Vec<Op>,
        now_ms: u64,
        also: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<Committed, ReplicaError> {
        self.commit_local_all(vec![(topic, ops)], now_ms, also)?
            .pop()
            .ok_or_else(|| ReplicaError::Corrupt("a write committed nothing".into()))
    }

    /// Writes the next change set of each of this node's streams named in `writes`, and runs
    /// `also`, in one transaction: all of them or none.
    pub(crate) fn commit_local_all(
        &mut self,
        writes: Vec<(Topic, Vec<Op>)>,
        now_ms: u64,
        also: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<Vec<Committed>, ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        if get_meta(&tx, "awaiting_hub_heads")?.is_some() {
            return Err(ReplicaError::Restoring(
                "this store's database was created afresh or restored from a backup: writes \
                 wait until HQ has said how far it holds the store's own history"
                    .into(),
            ));
        }
        reclaim::refuse_while_reclaiming(&tx)?;
        let mut committed = Vec::with_capacity(writes.len());
        let mut stock = StockDeltas::default();
        let mut hlc = self.clock.last();
        for (topic, ops) in writes {
            let stream = StreamId::new(self.identity.node.clone(), topic);
            let head = stream_head(&tx, &stream)?;
            let at_hub: Option<i64> = tx
                .prepare_cached("SELECT hub_seq FROM restore_own WHERE name = ?1")?
                .query_row(params![stream.to_string()], |r| r.get(0))
                .optional()?;
            if let Some(at_hub) = at_hub.filter(|s| *s as u64 > head.seq) {
                return Err(ReplicaError::Restoring(format!(
                    "HQ holds {stream} up to seq {at_hub}, this store only up to {}: its history is \
                     being restored from HQ, and writes wait until it is",
                    head.seq
                )));
            }
            hlc = self.clock.tick(now_ms);
            let change_set = ChangeSet {
                format: CHANGE_SET_FORMAT,
                stream,
                seq: head.seq + 1,
                prev: head.hash,
                hlc,
                ops,
            };
            let signed = SignedChangeSet::sign(&change_set, &self.identity.key)?;
            let facts = TxFacts::new(&tx, &self.hq_key);
            // Every rule of the gate runs but the signature check, which would verify what this
            // node signed a moment ago; it is skipped only while this key is the one the
            // directory holds for the node (every receiver verifies it anyway).
            let signed_by = self.identity.key.verifying_key();
            let verified =
                match validate::validate_preverified(&signed, None, &facts, Some(&signed_by))? {
                    Ok(Verdict::Apply(cs)) => cs,
                    Ok(Verdict::Duplicate { stream, seq }) => {
                        // Cannot happen: seq is head + 1. A broken invariant, reported rather than hidden.
                        return Err(ReplicaError::Corrupt(format!(
                            "own write {stream} seq {seq} seen as a duplicate"
                        )));
                    }
                    Err(e) => return Err(ReplicaError::Refused(e)),
                };
            append(&tx, &verified, &signed, now_ms, &mut stock)?;
            committed.push(Committed {
                stream: verified.stream,
                seq: verified.seq,
                signed,
            });
        }
        stock.flush(&tx)?;
        also(&tx)?;
        put_meta(
            &tx,
            "hlc",
            &postcard::to_allocvec(&hlc).map_err(EncodeError::from)?,
        )?;
        tx.commit()?;
        Ok(committed)
    }

    /// Validates and applies a received batch in one transaction. `peer` is the authenticated
    /// store it came from (HQ receiving a push), or `None` (a store receiving from HQ, a bundle).
    /// Bad change sets are refused one by one and reported; the good ones are applied. `Err` means
    /// the database failed and nothing of the batch was applied.
    pub fn apply_batch(
        &mut self,
        batch: &[SignedChangeSet],
        peer: Option<&NodeId>,
        now_ms: u64,
    ) -> Result<BatchReport, ReplicaError> {
        self.apply_batch_inner(batch, peer, now_ms, false, &mut |_, _| {})
            .map(|r| r.unwrap_or_else(|r| r))
    }

    /// Like [`Replica::apply_batch`], but all or nothing: if any change set is refused, nothing
    /// of the batch is kept and `Ok(Err(report))` says why (a bundle file is accepted or rejected
    /// whole). Duplicates are not refusals: a bundle imported twice is accepted, as a no-op.
    pub fn apply_batch_all_or_nothing(
        &mut self,
        batch: &[SignedChangeSet],
        peer: Option<&NodeId>,
        now_ms: u64,
    ) -> Result<Result<BatchReport, BatchReport>, ReplicaError> {
        self.apply_batch_inner(batch, peer, now_ms, true, &mut |_, _| {})
    }

    /// [`Replica::apply_batch_all_or_nothing`] calling `progress(done, total)` as it goes (every
    /// [`PROGRESS_EVERY`] change sets and at the end), for a CLI's progress bar.
    pub fn apply_batch_all_or_nothing_with_progress(
        &mut self,
        batch: &[SignedChangeSet],
        peer: Option<&NodeId>,
        now_ms: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Result<BatchReport, BatchReport>, ReplicaError> {
        self.apply_batch_inner(batch, peer, now_ms, true, progress)
    }

    fn apply_batch_inner(
        &mut self,
        batch: &[SignedChangeSet],
        peer: Option<&NodeId>,
        now_ms: u64,
        all_or_nothing: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Result<BatchReport, BatchReport>, ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        let mut report = BatchReport::default();
        let mut newest = self.clock.last();
        let mut stock = StockDeltas::default();
        let facts = TxFacts::new(&tx, &self.hq_key);
        let verified_under = preverify(batch, &facts)?;
        for (i, (signed, key)) in batch.iter().zip(&verified_under).enumerate() {
            if i % PROGRESS_EVERY == 0 {
                progress(i, batch.len());
            }
            match validate::validate_preverified(signed, peer, &facts, key.as_ref())? {
                Ok(Verdict::Apply(cs)) => {
                    newest = newest.max(cs.hlc);
                    append(&tx, &cs, signed, now_ms, &mut stock)?;
                    if cs.stream.topic == Topic::Directory {
                        // Keys, regions or revocations may have changed for what follows.
                        facts.forget_origins();
                    }
                    report.applied.push((cs.stream, cs.seq));
                }
                Ok(Verdict::Duplicate { .. }) => report.duplicates += 1,
                Err(e) => {
                    if e.halts_stream()
                        && let Some(stream) = e.stream()
                    {
                        record_halt(&tx, stream, &e, now_ms)?;
                    }
                    report.rejected.push(e);
                }
            }
        }
        if all_or_nothing && !report.rejected.is_empty() {
            // Dropping the transaction rolls every change of the batch back.
            return Ok(Err(report));
        }
        progress(batch.len(), batch.len());
        stock.flush(&tx)?;
        // The clock must survive a restart having seen what was applied, or the next local
        // edit could lose to an older one from a store whose clock runs ahead.
        self.clock.observe(newest);
        let hlc = postcard::to_allocvec(&self.clock.last()).map_err(EncodeError::from)?;
        put_meta(&tx, "hlc", &hlc)?;
        tx.commit()?;
        Ok(Ok(report))
    }

    /// Change sets of `stream` after `after_seq`, in order, at most `max_count` of them and about
    /// `max_bytes` (always at least one if there is one).
    pub fn read_stream(
        &self,
        stream: &StreamId,
        after_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedChangeSet>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT log.body, log.sig FROM log JOIN streams ON streams.id = log.stream
             WHERE streams.name = ?1 AND log.seq > ?2 ORDER BY log.seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![
            stream.to_string(),
            after_seq as i64,
            max_count as i64
        ])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let body: Vec<u8> = row.get(0)?;
            let sig: Vec<u8> = row.get(1)?;
            let sig = sig_from_blob(&sig)?;
            if !out.is_empty() && bytes + body.len() > max_bytes {
                break;
            }
            bytes += body.len();
            out.push(SignedChangeSet { body, sig });
        }
        Ok(out)
    }

    /// Heads of every stream this replica holds.
    pub fn heads(&self) -> Result<Vec<(StreamId, StreamHead)>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, head_seq, head_hash FROM streams ORDER BY priority, name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, seq, hash) = row?;
            out.push((
                parse_stream(&name)?,
                StreamHead {
                    seq: seq as u64,
                    hash: hash32(&hash)?,
                },
            ));
        }
        Ok(out)
    }

    /// The head of one stream ([`StreamHead::EMPTY`] if unknown).
    pub fn head(&self, stream: &StreamId) -> Result<StreamHead, ReplicaError> {
        Ok(stream_head(&self.conn, stream)?)
    }

    /// Change sets of this node's own streams that the hub has not acknowledged, highest-priority
    /// topic first, at most `max_count` and about `max_bytes`.
    pub fn outbox(
        &self,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedChangeSet>, ReplicaError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (stream, acked, head) in self.own_streams()? {
            if acked >= head {
                continue;
            }
            let room = max_count.saturating_sub(out.len());
            if room == 0 || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            let budget = max_bytes.saturating_sub(bytes);
            let chunk = self.read_stream(&stream, acked, room, budget)?;
            if !out.is_empty()
                && chunk
                    .first()
                    .is_some_and(|c| bytes + c.body.len() > max_bytes)
            {
                break;
            }
            bytes += chunk.iter().map(|c| c.body.len()).sum::<usize>();
            out.extend(chunk);
        }
        Ok(out)
    }

    /// Own streams with `(stream, hub_acked_seq, head_seq)`.
    pub fn own_streams(&self) -> Result<Vec<(StreamId, u64, u64)>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, hub_acked_seq, head_seq FROM streams WHERE origin = ?1 ORDER BY priority, name",
        )?;
        let rows = stmt.query_map(params![self.identity.node.as_str()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, acked, head) = row?;
            out.push((parse_stream(&name)?, acked as u64, head as u64));
        }
        Ok(out)
    }

    /// Records what the hub holds of this node's own streams. The hub's word is taken as it is,
    /// even when it is lower than before (a hub restored from backup): the outbox then resends.
    pub fn set_hub_acked(&mut self, acked: &[(StreamId, u64)]) -> Result<(), ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        tx.execute("DELETE FROM meta WHERE key = 'awaiting_hub_heads'", [])?;
        {
            // HQ holding more of an own stream than this replica means its history was lost
            // here: remember how far HQ holds it, so that writes wait and the stream is restored.
            let mut behind = tx.prepare_cached(
                "INSERT OR REPLACE INTO restore_own (name, hub_seq) VALUES (?1, ?2)",
            )?;
            for (stream, seq) in acked {
                if stream.origin == self.identity.node && stream_head(&tx, stream)?.seq < *seq {
                    behind.execute(params![stream.to_string(), *seq as i64])?;
                }
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE streams SET hub_acked_seq = min(?2, head_seq) WHERE name = ?1 AND origin = ?3",
            )?;
            for (stream, seq) in acked {
                stmt.execute(params![
                    stream.to_string(),
                    *seq as i64,
                    self.identity.node.as_str()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a replica created afresh under an existing store, or restored from a backup: local
    /// writes wait until the hub
    /// has said how far it holds this node's own streams ([`Replica::set_hub_acked`]).
    pub fn await_hub_heads(&mut self) -> Result<(), ReplicaError> {
        put_meta(&self.conn, "awaiting_hub_heads", b"1")?;
        Ok(())
    }

    /// Own streams HQ holds further than this replica, with HQ's seq: to restore from HQ.
    pub fn own_streams_behind(&self) -> Result<Vec<(StreamId, u64)>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, hub_seq FROM restore_own ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, hub_seq) = row?;
            let stream = parse_stream(&name)?;
            if self.head(&stream)?.seq < hub_seq as u64 {
                out.push((stream, hub_seq as u64));
            }
        }
        Ok(out)
    }

    /// Hub side: records how far `node` holds each stream (from its pull cursors), for backlog and
    /// freshness figures.
    pub fn record_peer_cursors(
        &mut self,
        node: &NodeId,
        cursors: &[(StreamId, u64)],
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        // The cursors are the whole of what the node holds: a stream it no longer lists (its
        // database was lost or restored from an older copy) is one it holds nothing of.
        tx.prepare_cached("DELETE FROM peer_cursors WHERE node = ?1")?
            .execute(params![node.as_str()])?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO peer_cursors (node, stream, seq, seen_ms)
                 SELECT ?1, id, ?3, ?4 FROM streams WHERE name = ?2",
            )?;
            for (stream, seq) in cursors {
                stmt.execute(params![
                    node.as_str(),
                    stream.to_string(),
                    *seq as i64,
                    now_ms as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Walks every stream's log and checks the hash chain and the head (the second check of the
    /// invariant the gate checks on the way in). Returns the first break found. It reads one
    /// snapshot of the database (a read transaction), so a process writing beside it (the
    /// server, while a CLI or a test audits) cannot make a head and its log disagree.
    pub fn audit(&self) -> Result<(), ReplicaError> {
        if !self.conn.is_autocommit() {
            // Inside a transaction (a group commit) already: one snapshot.
            return self.audit_in_snapshot();
        }
        let snapshot = self.conn.unchecked_transaction()?;
        self.audit_in_snapshot()?;
        snapshot.finish()?;
        Ok(())
    }

    fn audit_in_snapshot(&self) -> Result<(), ReplicaError> {
        for (stream, head) in self.heads()? {
            let (base_seq, base_hash) = self.base_of(&stream)?;
            let mut prev = base_hash;
            let mut seq = base_seq;
            let mut after = base_seq;
            loop {
                let chunk = self.read_stream(&stream, after, 512, usize::MAX)?;
                if chunk.is_empty() {
                    break;
                }
                for signed in &chunk {
                    let cs = validate::open(signed)
                        .map_err(|e| ReplicaError::Corrupt(format!("{stream}: {e}")))?;
                    if cs.seq != seq + 1 || cs.prev != prev {
                        return Err(ReplicaError::Corrupt(format!(
                            "{stream}: chain breaks at seq {}",
                            cs.seq
                        )));
                    }
                    seq = cs.seq;
                    prev = signed.hash();
                }
                after = seq;
            }
            if seq != head.seq || prev != head.hash {
                return Err(ReplicaError::Corrupt(format!(
                    "{stream}: head says seq {} but the log ends at {seq}",
                    head.seq
                )));
            }
        }
        Ok(())
    }

    fn base_of(&self, stream: &StreamId) -> Result<(u64, [u8; 32]), ReplicaError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT snapshot_base.seq, snapshot_base.body FROM snapshot_base
                 JOIN streams ON streams.id = snapshot_base.stream WHERE streams.name = ?1",
                params![stream.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok((0, crate::changeset::ZERO_HASH)),
            Some((seq, body)) => {
                let snap: crate::changeset::Snapshot =
                    postcard::from_bytes(&body).map_err(|e| {
                        ReplicaError::Corrupt(format!("snapshot base of {stream}: {e}"))
                    })?;
                Ok((seq as u64, snap.head_hash))
            }
        }
    }

    /// The underlying connection, for read-only queries of the binaries' APIs.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// The gate's view of the replica inside a transaction.
struct TxFacts<'a> {
    conn: &'a Connection,
    hq_key: &'a VerifyingKey,
    /// Directory entries read so far in this transaction: a push batch has one origin, and
    /// decompressing its key once instead of per change set is measurable.
    origins: RefCell<HashMap<NodeId, Option<OriginInfo>>>,
}

impl<'a> TxFacts<'a> {
    fn new(conn: &'a Connection, hq_key: &'a VerifyingKey) -> Self {
        Self {
            conn,
            hq_key,
            origins: RefCell::new(HashMap::new()),
        }
    }

    /// Drops cached directory entries (after a directory change set was applied).
    fn forget_origins(&self) {
        self.origins.borrow_mut().clear();
    }

    fn load_origin(&self, node: &NodeId) -> Result<Option<OriginInfo>, rusqlite::Error> {
        if node.is_hq() {
            return Ok(Some(OriginInfo {
                key: *self.hq_key,
                revoked: false,
                may_set_own_prices: true,
                retired_keys: Vec::new(),
            }));
        }
        let retired_keys = retired_keys(self.conn, node)?;
        let row: Option<(Vec<u8>, bool, bool)> = self
            .conn
            .prepare_cached(
                "SELECT public_key, revoked, may_set_own_prices FROM stores WHERE id = ?1",
            )?
            .query_row(params![node.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(row.and_then(|(key, revoked, may_set_own_prices)| {
            let key: [u8; 32] = key.try_into().ok()?;
            let key = VerifyingKey::from_bytes(&key).ok()?;
            Some(OriginInfo {
                key,
                revoked,
                may_set_own_prices,
                retired_keys,
            })
        }))
    }
}

/// Batches at least this large have their signatures checked on several threads before the
/// transaction; smaller ones are not worth the thread start-up.
const PARALLEL_VERIFY_MIN: usize = 32;

/// Checks the signatures of `batch` on up to [`VERIFY_THREADS_MAX`] threads. For each change set,
/// the key its signature verified under, or `None` (not checked here: the gate checks it).
/// Uses single-signature verification, the same as the gate, so every node accepts exactly the
/// same signatures (batch verification can disagree with it on crafted edge cases).
fn preverify(
    batch: &[SignedChangeSet],
    facts: &TxFacts<'_>,
) -> rusqlite::Result<Vec<Option<VerifyingKey>>> {
    let mut keys: Vec<Option<VerifyingKey>> = vec![None; batch.len()];
    if batch.len() < PARALLEL_VERIFY_MIN {
        return Ok(keys);
    }
    for (signed, slot) in batch.iter().zip(keys.iter_mut()) {
        if let Ok(cs) = validate::open(signed) {
            *slot = facts.origin(&cs.stream.origin)?.map(|o| o.key);
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(VERIFY_THREADS_MAX);
    let chunk = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (signed, slots) in batch.chunks(chunk).zip(keys.chunks_mut(chunk)) {
            scope.spawn(move || {
                for (signed, slot) in signed.iter().zip(slots.iter_mut()) {
                    if slot.is_some_and(|key| signed.verify_signature(&key).is_err()) {
                        *slot = None;
                    }
                }
            });
        }
    });
    Ok(keys)
}

/// Most threads verifying one batch's signatures.
const VERIFY_THREADS_MAX: usize = 4;

impl Facts for TxFacts<'_> {
    type Error = rusqlite::Error;

    fn origin(&self, node: &NodeId) -> Result<Option<OriginInfo>, rusqlite::Error> {
        if let Some(found) = self.origins.borrow().get(node) {
            return Ok(found.clone());
        }
        let found = self.load_origin(node)?;
        self.origins
            .borrow_mut()
            .insert(node.clone(), found.clone());
        Ok(found)
    }

    fn head(&self, stream: &StreamId) -> Result<StreamHead, rusqlite::Error> {
        stream_head(self.conn, stream)
    }

    fn hash_at(&self, stream: &StreamId, seq: u64) -> Result<Option<[u8; 32]>, rusqlite::Error> {
        let body: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT log.body FROM log JOIN streams ON streams.id = log.stream
                 WHERE streams.name = ?1 AND log.seq = ?2",
            )?
            .query_row(params![stream.to_string(), seq as i64], |r| r.get(0))
            .optional()?;
        Ok(body.map(|b| crate::changeset::body_hash(&b)))
    }
}

/// A store's retired keys (empty if it never had one replaced). One that does not decode counts
/// as none: its old change sets then fail to verify, which halts rather than accepts.
fn retired_keys(
    conn: &Connection,
    store: &NodeId,
) -> rusqlite::Result<Vec<crate::model::RetiredKey>> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached("SELECT body FROM store_retired_keys WHERE store = ?1")?
        .query_row(params![store.as_str()], |r| r.get(0))
        .optional()?;
    Ok(body
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default())
}

fn stream_head(conn: &Connection, stream: &StreamId) -> rusqlite::Result<StreamHead> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT head_seq, head_hash FROM streams WHERE name = ?1")?
        .query_row(params![stream.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((seq, hash)) => StreamHead {
            seq: seq as u64,
            // The column is written only from [u8; 32]; a damaged value reads as a broken chain,
            // which the gate then reports as a prev-hash mismatch.
            hash: hash.try_into().unwrap_or([0xff; 32]),
        },
        None => StreamHead::EMPTY,
    })
}

/// The row id of `stream`, creating the row if needed.
fn ensure_stream(tx: &Connection, stream: &StreamId) -> rusqlite::Result<i64> {
    let name = stream.to_string();
    if let Some(id) = tx
        .prepare_cached("SELECT id FROM streams WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    tx.prepare_cached(
        "INSERT INTO streams (name, origin, priority, head_hash) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        name,
        stream.origin.as_str(),
        stream.topic.priority(),
        &crate::changeset::ZERO_HASH[..]
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Appends a validated change set: log row, materialized rows, head. Caller holds the transaction.
fn append(
    tx: &Connection,
    cs: &ChangeSet,
    signed: &SignedChangeSet,
    now_ms: u64,
    stock: &mut StockDeltas,
) -> rusqlite::Result<()> {
    let id = ensure_stream(tx, &cs.stream)?;
    tx.prepare_cached("INSERT INTO log (stream, seq, body, sig) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, cs.seq as i64, signed.body, &signed.sig[..]])?;
    append_ops(tx, &cs.stream, cs.seq, cs.hlc, &cs.ops, stock)?;
    tx.prepare_cached(
        "UPDATE streams SET head_seq = ?2, head_hash = ?3, last_applied_ms = ?4,
         halted_reason = NULL, halted_kind = NULL, halted_at_ms = NULL WHERE id = ?1",
    )?
    .execute(params![
        id,
        cs.seq as i64,
        &signed.hash()[..],
        now_ms as i64
    ])?;
    Ok(())
}

/// Materializes `ops` of `stream`. Caller holds the transaction.
fn append_ops(
    tx: &Connection,
    stream: &StreamId,
    seq: u64,
    hlc: Hlc,
    ops: &[Op],
    stock: &mut StockDeltas,
) -> rusqlite::Result<()> {
    for op in ops {
        apply::apply_op(tx, stream, seq, hlc, op, stock)?;
    }
    Ok(())
}

/// Records an integrity failure on a stream this replica already follows. A stream it has never
/// seen gets no row: otherwise forged input could add streams at will (the caller still gets the
/// error to log).
fn record_halt(
    tx: &Connection,
    stream: &StreamId,
    error: &crate::validate::ChangeSetError,
    now_ms: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE streams SET halted_reason = ?2, halted_kind = ?3,
                halted_at_ms = COALESCE(halted_at_ms, ?4)
         WHERE name = ?1",
    )?
    .execute(params![
        stream.to_string(),
        error.to_string(),
        error.halt_kind().map(crate::validate::HaltKind::as_str),
        now_ms as i64
    ])?;
    Ok(())
}

/// The `meta` key of HQ's clock offset (i64, little-endian).
const HQ_CLOCK_META: &str = "hq_clock_offset_ms";

/// A write transaction of the replica: its own `BEGIN IMMEDIATE` transaction when none is
/// open, or a savepoint inside the group commit the replica thread opened around several jobs
/// ([`crate::transport::actor`]). Either way it commits or rolls back alone (a job that fails
/// its own checks leaves its neighbours' writes in place); inside a group, durability comes at
/// the group's commit, before any job's caller is answered.
pub(crate) enum WriteTx<'a> {
    Own(rusqlite::Transaction<'a>),
    InGroup(rusqlite::Savepoint<'a>),
}

impl WriteTx<'_> {
    pub(crate) fn begin(conn: &mut Connection) -> rusqlite::Result<WriteTx<'_>> {
        if conn.is_autocommit() {
            // IMMEDIATE: take the write lock before reading a head, so another process writing
            // the same database (a CLI beside the server) waits instead of racing for a seq.
            Ok(WriteTx::Own(conn.transaction_with_behavior(
                rusqlite::TransactionBehavior::Immediate,
            )?))
        } else {
            Ok(WriteTx::InGroup(conn.savepoint()?))
        }
    }

    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        match self {
            WriteTx::Own(tx) => tx.commit(),
            WriteTx::InGroup(sp) => sp.commit(),
        }
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            WriteTx::Own(tx) => tx,
            WriteTx::InGroup(sp) => sp,
        }
    }
}

fn put_meta(tx: &Connection, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value])?;
    Ok(())
}

fn get_meta(tx: &Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()
}

fn parse_stream(name: &str) -> Result<StreamId, ReplicaError> {
    name.parse()
        .map_err(|e| ReplicaError::Corrupt(format!("stream name {name:?}: {e}")))
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], ReplicaError> {
    bytes
        .try_into()
        .map_err(|_| ReplicaError::Corrupt(format!("hash of {} bytes", bytes.len())))
}

fn sig_from_blob(bytes: &[u8]) -> Result<[u8; 64], ReplicaError> {
    bytes
        .try_into()
        .map_err(|_| ReplicaError::Corrupt(format!("signature of {} bytes", bytes.len())))
}
