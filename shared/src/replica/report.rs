//! HQ's reports: consolidated stock with freshness, sales by store and day, and the store
//! directory with last-seen time and backlog. Read-only SQL over the materialized tables.
//!
//! Freshness of a store's figures is the local time HQ last applied a change set from that
//! store (any of its streams): a figure is as fresh as the last thing HQ heard. A region filter
//! takes the region and every region under it (a branch company's manager sees its offices).

use super::{Replica, ReplicaError};
use crate::ids::{NodeId, RegionId};
use rusqlite::params;

/// Filters of a stock report; `None` means all.
#[derive(Debug, Clone, Default)]
pub struct StockFilter {
    pub sku: Option<String>,
    pub category: Option<String>,
    pub store: Option<NodeId>,
    pub region: Option<RegionId>,
}

/// One store's stock of one sku, with how fresh HQ's figure is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockReportRow {
    pub store: String,
    pub region: String,
    pub sku: String,
    pub category: Option<String>,
    pub qty: i64,
    /// Unix ms HQ last applied a change set from this store.
    pub as_of_ms: Option<i64>,
}

/// Sales of one store on one day (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesReportRow {
    pub store: String,
    pub region: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub receipts: i64,
    pub total_cents: i64,
}

/// A store as the directory page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReportRow {
    pub store: String,
    pub name: String,
    pub region: String,
    pub mode: String,
    pub revoked: bool,
    /// Unix ms HQ last heard from the store (a pull or a change set).
    pub last_seen_ms: Option<i64>,
    /// Change sets HQ holds that the store has not confirmed holding.
    pub backlog_change_sets: i64,
    /// The store's streams halted at HQ by an integrity failure (`halted_streams` says why).
    pub halted_streams: i64,
}

impl Replica {
    /// Consolidated stock, filtered, sorted by store then sku.
    pub fn stock_report(&self, f: &StockFilter) -> Result<Vec<StockReportRow>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.store, st.region, s.sku, p.category, s.qty,
                    (SELECT max(last_applied_ms) FROM streams WHERE origin = s.store)
             FROM stock s
             JOIN stores st ON st.id = s.store
             LEFT JOIN products p ON p.sku = s.sku
             WHERE (?1 IS NULL OR s.sku = ?1) AND (?2 IS NULL OR p.category = ?2)
               AND (?3 IS NULL OR s.store = ?3) AND (?4 IS NULL OR st.region IN (WITH RECURSIVE under(id) AS (SELECT ?4 UNION SELECT g.id FROM regions g JOIN under u ON g.parent = u.id) SELECT id FROM under))
             ORDER BY s.store, s.sku",
        )?;
        let rows = stmt.query_map(
            params![
                f.sku,
                f.category,
                f.store.as_ref().map(|s| s.as_str()),
                f.region.as_ref().map(|r| r.as_str())
            ],
            |r| {
                Ok(StockReportRow {
                    store: r.get(0)?,
                    region: r.get(1)?,
                    sku: r.get(2)?,
                    category: r.get(3)?,
                    qty: r.get(4)?,
                    as_of_ms: r.get(5)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sales (voided receipts excluded, returns not netted) per store and UTC day.
    pub fn sales_report(
        &self,
        store: Option<&NodeId>,
        region: Option<&RegionId>,
        day: Option<&str>,
    ) -> Result<Vec<SalesReportRow>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.store, st.region, date(r.sold_at_ms / 1000, 'unixepoch') AS day,
                    count(*), coalesce(sum(r.total_cents), 0)
             FROM receipts r JOIN stores st ON st.id = r.store
             WHERE r.voided = 0 AND (?1 IS NULL OR r.store = ?1) AND (?2 IS NULL OR st.region IN (WITH RECURSIVE under(id) AS (SELECT ?2 UNION SELECT g.id FROM regions g JOIN under u ON g.parent = u.id) SELECT id FROM under))
               AND (?3 IS NULL OR date(r.sold_at_ms / 1000, 'unixepoch') = ?3)
             GROUP BY r.store, day ORDER BY r.store, day",
        )?;
        let rows = stmt.query_map(
            params![store.map(|s| s.as_str()), region.map(|r| r.as_str()), day],
            |r| {
                Ok(SalesReportRow {
                    store: r.get(0)?,
                    region: r.get(1)?,
                    day: r.get(2)?,
                    receipts: r.get(3)?,
                    total_cents: r.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The store directory with last-seen time and backlog, optionally one region's.
    pub fn store_report(
        &self,
        region: Option<&RegionId>,
    ) -> Result<Vec<StoreReportRow>, ReplicaError> {
        let heads = self.heads()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT st.id, st.name, st.region, st.mode, st.revoked,
                    -- SQLite's max(a, b) is NULL if either is: a store that pushed but whose
                    -- pulls are not recorded yet (or the other way round) was never seen.
                    NULLIF(max(coalesce((SELECT max(last_applied_ms) FROM streams WHERE origin = st.id), 0),
                               coalesce((SELECT max(seen_ms) FROM peer_cursors WHERE node = st.id), 0)), 0),
                    (SELECT COUNT(*) FROM streams WHERE origin = st.id AND halted_reason IS NOT NULL)
             FROM stores st WHERE ?1 IS NULL OR st.region IN (WITH RECURSIVE under(id) AS (SELECT ?1 UNION SELECT g.id FROM regions g JOIN under u ON g.parent = u.id) SELECT id FROM under) ORDER BY st.id",
        )?;
        let rows = stmt.query_map(params![region.map(|r| r.as_str())], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (store, name, region, mode, revoked, last_seen_ms, halted_streams) = row?;
            let node =
                NodeId::new(store.clone()).map_err(|e| ReplicaError::Corrupt(e.to_string()))?;
            let place = self
                .place_of(&node)?
                .ok_or_else(|| ReplicaError::Corrupt(format!("store {node} left the directory")))?;
            let store_mode = match mode.as_str() {
                "hosted" => crate::model::StoreMode::Hosted,
                "batch" => crate::model::StoreMode::Batch,
                _ => crate::model::StoreMode::Realtime,
            };
            let cursors = self.peer_cursor_map(&node)?;
            let backlog: u64 = heads
                .iter()
                .filter(|(s, _)| crate::protocol::subscribes(&place, store_mode, s))
                .map(|(s, h)| {
                    h.seq
                        .saturating_sub(cursors.get(&s.to_string()).copied().unwrap_or(0))
                })
                .sum();
            out.push(StoreReportRow {
                store,
                name,
                region,
                mode,
                revoked,
                last_seen_ms,
                backlog_change_sets: backlog as i64,
                halted_streams,
            });
        }
        Ok(out)
    }

    /// How far `node` last said it holds each stream (from its pulls or bundles).
    pub fn peer_cursors(
        &self,
        node: &NodeId,
    ) -> Result<Vec<(crate::ids::StreamId, u64)>, ReplicaError> {
        self.peer_cursor_map(node)?
            .into_iter()
            .map(|(name, seq)| Ok((super::parse_stream(&name)?, seq)))
            .collect()
    }

    fn peer_cursor_map(
        &self,
        node: &NodeId,
    ) -> Result<std::collections::BTreeMap<String, u64>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT streams.name, peer_cursors.seq FROM peer_cursors JOIN streams ON streams.id = peer_cursors.stream
             WHERE peer_cursors.node = ?1",
        )?;
        let rows = stmt.query_map(params![node.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
