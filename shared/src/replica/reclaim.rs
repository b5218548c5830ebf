//! HQ restored from a backup takes its history back from the stores.
//!
//! Stores hold change sets HQ made (and relayed) after the backup was taken. If HQ wrote again
//! from the backup's heads, its new change sets would reuse those seqs with other bodies: every
//! store holding the old ones would halt the stream as a fork. So `hq-server restore` marks the
//! replica as reclaiming ([`Replica::begin_reclaim`]), and then:
//! - every local write is refused ([`super::ReplicaError::Restoring`]) until the reclaim ends;
//! - each store's session compares the store's Hello cursors with HQ's heads, asks for what the
//!   store holds beyond them (`Reclaim`/`Returned` frames, [`crate::protocol::session`]) and
//!   applies it through the gate like any relayed change set (signed by its origin, chained);
//! - each store is noted: what it claimed to hold beyond HQ ([`Replica::note_reclaim`]) and
//!   whether it has returned all of it;
//! - the reclaim ends by itself once every enrolled, unrevoked store has returned all it held
//!   and HQ's heads reach every seq any store claimed; HQ then writes on from the highest seq
//!   any store held. `hq-server reclaim finish` ends it early (a store that never reported may
//!   then hold change sets HQ will fork: it halts them, and `report halts` lists them).
//!
//! Invariant: while `reclaiming` is in `meta`, HQ signs nothing new.

use super::{Replica, ReplicaError, WriteTx, get_meta, parse_stream, put_meta, stream_head};
use crate::ids::{NodeId, StreamId};
use rusqlite::{OptionalExtension, params};

const RECLAIMING_META: &str = "reclaiming";
const RECLAIMED_META: &str = "reclaimed";

/// Tables of a reclaim (created on open).
pub(super) const RECLAIM_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS reclaim_stores (  -- HQ reclaiming: each store heard from
        store TEXT PRIMARY KEY,
        returned_all INTEGER NOT NULL,
        noted_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS reclaim_claims (  -- HQ reclaiming: most any store held of a stream
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );";

/// Where a reclaim stands, for `hq-server reclaim status` and `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReclaimStatus {
    /// When the reclaim began (Unix ms); `None` if HQ is not reclaiming.
    pub since_ms: Option<u64>,
    /// When the last reclaim ended, if one did.
    pub ended_ms: Option<u64>,
    /// Enrolled, unrevoked stores that have returned everything they held beyond HQ.
    pub stores_returned: Vec<NodeId>,
    /// Enrolled, unrevoked stores not heard from, or not done returning.
    pub stores_waiting: Vec<NodeId>,
    /// Streams a store held further than HQ holds them now: `(stream, HQ's seq, store's seq)`.
    pub streams_behind: Vec<(StreamId, u64, u64)>,
}

impl Replica {
    /// Marks this (HQ) replica as restored from a backup: local writes are refused until the
    /// stores have returned what they hold beyond it (module doc).
    pub fn begin_reclaim(&mut self, now_ms: u64) -> Result<(), ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        tx.execute("DELETE FROM reclaim_stores", [])?;
        tx.execute("DELETE FROM reclaim_claims", [])?;
        put_meta(&tx, RECLAIMING_META, &now_ms.to_le_bytes())?;
        tx.commit()?;
        Ok(())
    }

    /// Whether local writes wait for a reclaim.
    pub fn is_reclaiming(&self) -> Result<bool, ReplicaError> {
        Ok(get_meta(&self.conn, RECLAIMING_META)?.is_some())
    }

    /// Notes what `store` said: it held `claimed` streams beyond HQ (`(stream, store's seq)`),
    /// and whether it has now returned all it held. Ends the reclaim if that was the last one
    /// (returns `true` then). A no-op when HQ is not reclaiming.
    pub fn note_reclaim(
        &mut self,
        store: &NodeId,
        claimed: &[(StreamId, u64)],
        returned_all: bool,
        now_ms: u64,
    ) -> Result<bool, ReplicaError> {
        if !self.is_reclaiming()? {
            return Ok(false);
        }
        let tx = WriteTx::begin(&mut self.conn)?;
        for (stream, seq) in claimed {
            tx.execute(
                "INSERT INTO reclaim_claims (name, seq) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![stream.to_string(), (*seq).min(i64::MAX as u64) as i64],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO reclaim_stores (store, returned_all, noted_ms)
             VALUES (?1, ?2, ?3)",
            params![store.as_str(), returned_all, now_ms as i64],
        )?;
        tx.commit()?;
        let status = self.reclaim_status()?;
        if status.stores_waiting.is_empty() && status.streams_behind.is_empty() {
            self.end_reclaim(now_ms)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Ends a reclaim (by itself when complete, or `hq-server reclaim finish`): HQ writes again.
    pub fn end_reclaim(&mut self, now_ms: u64) -> Result<(), ReplicaError> {
        let tx = WriteTx::begin(&mut self.conn)?;
        tx.execute("DELETE FROM meta WHERE key = ?1", params![RECLAIMING_META])?;
        put_meta(&tx, RECLAIMED_META, &now_ms.to_le_bytes())?;
        tx.commit()?;
        Ok(())
    }

    /// Where the reclaim stands.
    pub fn reclaim_status(&self) -> Result<ReclaimStatus, ReplicaError> {
        let ms = |v: Option<Vec<u8>>| {
            v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_le_bytes)
        };
        let since_ms = ms(get_meta(&self.conn, RECLAIMING_META)?);
        let ended_ms = ms(get_meta(&self.conn, RECLAIMED_META)?);
        let mut stores_returned = Vec::new();
        let mut stores_waiting = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.id, r.returned_all FROM stores s
             LEFT JOIN reclaim_stores r ON r.store = s.id
             WHERE s.revoked = 0 ORDER BY s.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<bool>>(1)?))
        })?;
        for row in rows {
            let (id, returned) = row?;
            let id = NodeId::new(id).map_err(|e| ReplicaError::Corrupt(e.to_string()))?;
            if returned == Some(true) {
                stores_returned.push(id);
            } else {
                stores_waiting.push(id);
            }
        }
        let mut streams_behind = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, seq FROM reclaim_claims ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, seq) = row?;
            let stream = parse_stream(&name)?;
            let held = stream_head(&self.conn, &stream)?.seq;
            if held < seq as u64 {
                streams_behind.push((stream, held, seq as u64));
            }
        }
        Ok(ReclaimStatus {
            since_ms,
            ended_ms,
            stores_returned,
            stores_waiting,
            streams_behind,
        })
    }
}

/// The refusal of a local write while reclaiming, if HQ is.
pub(super) fn refuse_while_reclaiming(conn: &rusqlite::Connection) -> Result<(), ReplicaError> {
    let since: Option<Vec<u8>> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![RECLAIMING_META], |r| r.get(0))
        .optional()?;
    match since {
        None => Ok(()),
        Some(_) => Err(ReplicaError::Restoring(
            "HQ was restored from a backup and is taking its later history back from the \
             stores: writes wait until every store has returned it (`hq-server reclaim status`)"
                .into(),
        )),
    }
}
