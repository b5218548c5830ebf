//! Read-only questions to the replica: stock, balances, profiles, prices, receipts, stream status.
//!
//! Balances are always summed from the ledger and stock is the materialized sum of movements,
//! sales and returns; nothing here writes.

use super::apply::{account_code, price_kind_code};
use super::{Replica, ReplicaError, parse_stream};
use crate::hlc::Hlc;
use crate::ids::{MemberId, NodeId, Place, REGION_DEPTH_MAX, RegionId, Scope, Sku, StreamId};
use crate::merge::{self, FieldValue};
use crate::model::{
    LedgerAccount, PriceEntry, PriceKind, Product, ProfileField, Promotion, StoreInfo, StoreMode,
};
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

/// Where one stream stands on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub stream: StreamId,
    pub head_seq: u64,
    /// Own streams: what the hub has acknowledged.
    pub hub_acked_seq: u64,
    /// Local time the head last moved.
    pub last_applied_ms: Option<u64>,
    /// The last integrity failure, until a good change set moves the stream on.
    pub halted_reason: Option<String>,
}

/// A stream halted by an integrity failure, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaltedStream {
    pub stream: StreamId,
    /// The change set it waits for.
    pub next_seq: u64,
    pub kind: Option<crate::validate::HaltKind>,
    pub reason: String,
    /// When it first halted (Unix ms, this node's clock).
    pub since_ms: Option<i64>,
}

/// Stock of one sku at one store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StockRow {
    pub store: String,
    pub sku: String,
    pub qty: i64,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, ReplicaError> {
    postcard::from_bytes(bytes).map_err(|e| ReplicaError::Corrupt(format!("stored {what}: {e}")))
}

impl Replica {
    /// The streams halted now, oldest halt first.
    pub fn halted_streams(&self) -> Result<Vec<HaltedStream>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, head_seq, halted_kind, halted_reason, halted_at_ms FROM streams
             WHERE halted_reason IS NOT NULL ORDER BY halted_at_ms, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, head, kind, reason, since_ms) = row?;
            out.push(HaltedStream {
                stream: name
                    .parse()
                    .map_err(|e| ReplicaError::Corrupt(format!("stream name {name}: {e}")))?,
                next_seq: (head.max(0) as u64).saturating_add(1),
                kind: kind
                    .as_deref()
                    .and_then(crate::validate::HaltKind::from_code),
                reason,
                since_ms,
            });
        }
        Ok(out)
    }

    /// Every stream with its head, acknowledgement, freshness and halt reason.
    pub fn stream_status(&self) -> Result<Vec<StreamStatus>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, head_seq, hub_acked_seq, last_applied_ms, halted_reason
             FROM streams ORDER BY priority, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, head, acked, applied, halted) = row?;
            out.push(StreamStatus {
                stream: parse_stream(&name)?,
                head_seq: head as u64,
                hub_acked_seq: acked as u64,
                last_applied_ms: applied.map(|t| t as u64),
                halted_reason: halted,
            });
        }
        Ok(out)
    }

    /// Ids of the receipts of `store`, sorted.
    pub fn receipt_ids(&self, store: &NodeId) -> Result<Vec<String>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM receipts WHERE store = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![store.as_str()], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of receipts held, of every store.
    pub fn receipt_count(&self) -> Result<u64, ReplicaError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM receipts", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Stock of every (store, sku) this replica knows, sorted.
    pub fn stock_rows(&self, store: Option<&NodeId>) -> Result<Vec<StockRow>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT store, sku, qty FROM stock WHERE ?1 IS NULL OR store = ?1 ORDER BY store, sku",
        )?;
        let rows = stmt.query_map(params![store.map(|s| s.as_str())], |r| {
            Ok(StockRow {
                store: r.get(0)?,
                sku: r.get(1)?,
                qty: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stock of one sku at one store (0 if never moved).
    pub fn stock_of(&self, store: &NodeId, sku: &Sku) -> Result<i64, ReplicaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT qty FROM stock WHERE store = ?1 AND sku = ?2")?
            .query_row(params![store.as_str(), sku.as_str()], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// A member's balance of one account: the sum of the ledger entries this replica holds.
    pub fn balance(&self, member: &MemberId, account: LedgerAccount) -> Result<i64, ReplicaError> {
        let member = &self.canonical_member(member)?;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM ledger
                 WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2",
            )?
            .query_row(params![member.as_str(), account_code(account)], |r| {
                r.get(0)
            })?)
    }

    /// Every member's balances as `(member, points, stored value cents)`, sorted; a merged
    /// member's entries count under its survivor.
    pub fn balances(&self) -> Result<Vec<(String, i64, i64)>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT coalesce(a.survivor, l.member) AS owner,
                    coalesce(sum(CASE l.account WHEN 0 THEN l.amount END), 0),
                    coalesce(sum(CASE l.account WHEN 1 THEN l.amount END), 0)
             FROM ledger l LEFT JOIN member_aliases a ON a.alias = l.member
             GROUP BY owner ORDER BY owner",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A member's merged profile (empty if unknown here).
    pub fn member_profile(
        &self,
        member: &MemberId,
    ) -> Result<BTreeMap<ProfileField, FieldValue>, ReplicaError> {
        let member = &self.canonical_member(member)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT field, value, hlc_wall, hlc_logical, node FROM member_fields
             WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1)",
        )?;
        let rows = stmt.query_map(params![member.as_str()], |r| {
            Ok((
                r.get::<_, u8>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut profile = BTreeMap::new();
        for row in rows {
            let (code, value, wall, logical, node) = row?;
            let field = ProfileField::from_code(code)
                .ok_or_else(|| ReplicaError::Corrupt(format!("member field code {code}")))?;
            let node = NodeId::new(node).map_err(|e| ReplicaError::Corrupt(e.to_string()))?;
            let candidate = FieldValue {
                value,
                hlc: Hlc {
                    wall_ms: wall as u64,
                    logical,
                },
                node,
            };
            // A merged member has the fields of its aliases too: per field, the latest write.
            let newer = profile.get(&field).is_none_or(|held: &FieldValue| {
                (candidate.hlc, &candidate.node) > (held.hlc, &held.node)
            });
            if newer {
                profile.insert(field, candidate);
            }
        }
        Ok(profile)
    }

    /// Every member field as `(member, field code, value)`, sorted: a fingerprint for comparisons.
    pub fn member_fields(&self) -> Result<Vec<(String, u8, String)>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT member, field, value FROM member_fields ORDER BY member, field",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every price entry held, sorted by scope and id.
    pub fn price_entries(&self) -> Result<Vec<PriceEntry>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM price_entries ORDER BY scope, id")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|b| decode("price entry", &b?)).collect()
    }

    /// Every promotion held, sorted by scope and id. (A till reads only those concerning its
    /// basket, through `promotion_keys`: see [`Replica::sku_facts`].)
    pub fn promotions(&self) -> Result<Vec<Promotion>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM promotions ORDER BY scope, id")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|b| decode("promotion", &b?)).collect()
    }

    /// The entry setting the price of `sku` of `kind` at `t_ms` for `store` in `region`.
    pub fn effective_price(
        &self,
        sku: &Sku,
        kind: PriceKind,
        place: &Place,
        t_ms: i64,
    ) -> Result<Option<PriceEntry>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT body FROM price_entries WHERE sku = ?1 AND kind = ?2 AND effective_from_ms <= ?3
             AND (effective_to_ms IS NULL OR effective_to_ms > ?3)",
        )?;
        let rows = stmt.query_map(params![sku.as_str(), price_kind_code(kind), t_ms], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        let entries: Vec<PriceEntry> = rows
            .map(|b| decode("price entry", &b?))
            .collect::<Result<_, _>>()?;
        Ok(merge::effective_price(&entries, sku, kind, place, t_ms).cloned())
    }

    /// The directory entry of a store, if this replica holds it.
    pub fn store_info(&self, store: &NodeId) -> Result<Option<StoreInfo>, ReplicaError> {
        type Row = (String, String, String, Vec<u8>, bool, bool, String);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT name, region, mode, public_key, may_set_own_prices, revoked, time_zone
                 FROM stores WHERE id = ?1",
            )?
            .query_row(params![store.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .optional()?;
        let Some((name, region, mode, key, may_set_own_prices, revoked, time_zone)) = row else {
            return Ok(None);
        };
        let corrupt = |what: &str| ReplicaError::Corrupt(format!("store {store}: {what}"));
        let mode = match mode.as_str() {
            "realtime" => StoreMode::Realtime,
            "batch" => StoreMode::Batch,
            "hosted" => StoreMode::Hosted,
            _ => return Err(corrupt("mode")),
        };
        Ok(Some(StoreInfo {
            id: store.clone(),
            name,
            region: RegionId::new(region).map_err(|_| corrupt("region"))?,
            mode,
            public_key: key.try_into().map_err(|_| corrupt("key"))?,
            may_set_own_prices,
            revoked,
            retired_keys: super::retired_keys(&self.conn, store)?,
            time_zone,
        }))
    }

    /// Where `store` sits: its region and each region above it, from the directory (at most
    /// [`REGION_DEPTH_MAX`] levels; a cycle in bad data ends the walk).
    pub fn place_of(&self, store: &NodeId) -> Result<Option<Place>, ReplicaError> {
        let Some(info) = self.store_info(store)? else {
            return Ok(None);
        };
        Ok(Some(Place {
            store: store.clone(),
            regions: self.region_path(&info.region)?,
        }))
    }

    /// Whether the directory has `region`.
    pub fn region_exists(&self, region: &RegionId) -> Result<bool, ReplicaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM regions WHERE id = ?1)")?
            .query_row(params![region.as_str()], |r| r.get(0))?)
    }

    /// Whether HQ knows the store or region a price or promotion is set for: the chain, a
    /// region of the directory, or a store in it or added and not yet enrolled.
    pub fn scope_known(&self, scope: &Scope) -> Result<bool, ReplicaError> {
        Ok(match scope {
            Scope::Chain => true,
            Scope::Region(region) => self.region_exists(region)?,
            Scope::Store(store) => {
                self.store_info(store)?.is_some()
                    || self
                        .conn
                        .prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM enrollments WHERE store = ?1)",
                        )?
                        .query_row(params![store.as_str()], |r| r.get(0))?
            }
        })
    }

    /// `region` and each region above it, innermost first.
    pub fn region_path(&self, region: &RegionId) -> Result<Vec<RegionId>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT parent FROM regions WHERE id = ?1")?;
        let mut path = vec![region.clone()];
        while path.len() < REGION_DEPTH_MAX {
            let Some(last) = path.last() else { break };
            let parent: Option<Option<String>> = stmt
                .query_row(params![last.as_str()], |r| r.get(0))
                .optional()?;
            let Some(Some(parent)) = parent else { break };
            let parent = RegionId::new(parent)
                .map_err(|e| ReplicaError::Corrupt(format!("region parent: {e}")))?;
            if path.contains(&parent) {
                break;
            }
            path.push(parent);
        }
        Ok(path)
    }

    /// `region` and every region under it, at any depth.
    pub fn regions_under(&self, region: &RegionId) -> Result<Vec<RegionId>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE under(id, depth) AS (
                 SELECT ?1, 0
                 UNION SELECT r.id, u.depth + 1 FROM regions r JOIN under u ON r.parent = u.id
                 WHERE u.depth < ?2)
             SELECT DISTINCT id FROM under ORDER BY id",
        )?;
        let rows = stmt.query_map(params![region.as_str(), REGION_DEPTH_MAX as i64], |r| {
            r.get::<_, String>(0)
        })?;
        rows.map(|id| RegionId::new(id?).map_err(|e| ReplicaError::Corrupt(e.to_string())))
            .collect()
    }

    /// A product of the catalog.
    pub fn product(&self, sku: &Sku) -> Result<Option<Product>, ReplicaError> {
        let body: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT body FROM products WHERE sku = ?1")?
            .query_row(params![sku.as_str()], |r| r.get(0))
            .optional()?;
        body.map(|b| decode("product", &b)).transpose()
    }

    /// Whether a receipt is held here, and whether it was voided.
    pub fn receipt_state(&self, id: &str) -> Result<Option<bool>, ReplicaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT voided FROM receipts WHERE id = ?1")?
            .query_row(params![id], |r| r.get::<_, bool>(0))
            .optional()?)
    }

    /// Ids of every store in the directory, sorted.
    pub fn store_ids(&self) -> Result<Vec<NodeId>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM stores ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|id| NodeId::new(id?).map_err(|e| ReplicaError::Corrupt(e.to_string())))
            .collect()
    }
}
