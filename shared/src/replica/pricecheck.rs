//! HQ's price check, the IO part: every receipt that arrives is priced again with HQ's own facts
//! and the same engine the tills use, and one that comes out otherwise is listed in
//! `price_differences` with a cause ([`crate::pricecheck`] has the rules).
//!
//! Invariants: each receipt is checked once (`receipts.price_check` moves from NULL in the same
//! transaction that lists a difference); the facts are HQ's for the receipt's store at the
//! receipt's pricing time, with the units of allocated promotions the store had given before it
//! (its earlier change sets, less receipts voided before it); nothing here writes a change set.

use super::{Replica, ReplicaError};
use crate::checkout::{self, Context, LocalTime};
use crate::ids::{NodeId, Place, RecordId, Sku, StreamId};
use crate::lookup::SkuFacts;
use crate::model::{Receipt, StreamHead};
use crate::pricecheck::{self, HqHead, PriceCause};
use rusqlite::params;
use std::collections::BTreeMap;

/// Most receipts one [`Replica::check_prices`] call prices again (one short transaction).
pub const PRICE_CHECK_BATCH_RECEIPTS: usize = 100;

/// A receipt that HQ's engine prices otherwise than the store charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceDifference {
    pub receipt: String,
    pub store: String,
    pub sold_at_ms: i64,
    pub charged_cents: i64,
    /// `None` where HQ's engine refused the basket ([`PriceCause::Unpriceable`]).
    pub hq_cents: Option<i64>,
    pub cause: PriceCause,
    /// What differs, line by line, and what the cause rests on.
    pub detail: String,
    pub checked_at_ms: i64,
}

/// What one pass of the check did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceCheckPass {
    pub checked: usize,
    pub differing: usize,
}

impl Replica {
    /// This node's heads of the streams that price baskets at `place` (catalog, and the prices
    /// and promotions of every scope covering it), as a store records them on a receipt.
    pub fn pricing_heads(&self, place: &Place) -> Result<Vec<StreamHead>, ReplicaError> {
        Ok(self
            .heads_pricing(place)?
            .into_iter()
            .map(|h| StreamHead {
                stream: h.stream,
                seq: h.seq,
            })
            .collect())
    }

    fn heads_pricing(&self, place: &Place) -> Result<Vec<HqHead>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, head_seq, last_applied_ms FROM streams
             WHERE head_seq > 0 AND (name LIKE '%/catalog' OR name LIKE '%/prices@%'
                                     OR name LIKE '%/promotions@%')
             ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, seq, moved_at_ms) = row?;
            let stream: StreamId = name
                .parse()
                .map_err(|e| ReplicaError::Corrupt(format!("stream name {name}: {e}")))?;
            if pricecheck::prices_place(place, &stream) {
                out.push(HqHead {
                    stream,
                    seq: seq.max(0) as u64,
                    moved_at_ms,
                });
            }
        }
        Ok(out)
    }

    /// Prices up to [`PRICE_CHECK_BATCH_RECEIPTS`] receipts not checked yet again (oldest change
    /// sets first) and lists those that differ.
    pub fn check_prices(&mut self, now_ms: i64) -> Result<PriceCheckPass, ReplicaError> {
        let unchecked: Vec<(String, i64, Vec<u8>)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, seq, body FROM receipts WHERE price_check IS NULL
                 ORDER BY seq, id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![PRICE_CHECK_BATCH_RECEIPTS as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut results = Vec::with_capacity(unchecked.len());
        for (id, seq, body) in unchecked {
            let receipt: Receipt = super::query::decode("receipt", &body)?;
            results.push((id, self.price_again(&receipt, seq.max(0) as u64, now_ms)?));
        }
        let pass = PriceCheckPass {
            checked: results.len(),
            differing: results.iter().filter(|(_, d)| d.is_some()).count(),
        };
        let tx = super::WriteTx::begin(&mut self.conn)?;
        {
            let mut mark =
                tx.prepare_cached("UPDATE receipts SET price_check = ?2 WHERE id = ?1")?;
            let mut list = tx.prepare_cached(
                "INSERT OR REPLACE INTO price_differences
                 (receipt, store, sold_at_ms, charged_cents, hq_cents, cause, detail, checked_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (id, difference) in &results {
                mark.execute(params![id, i64::from(difference.is_some())])?;
                if let Some(d) = difference {
                    list.execute(params![
                        d.receipt,
                        d.store,
                        d.sold_at_ms,
                        d.charged_cents,
                        d.hq_cents,
                        d.cause.as_str(),
                        d.detail,
                        d.checked_at_ms
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(pass)
    }

    /// `receipt` priced with HQ's facts: `None` when it comes out as the store charged it.
    fn price_again(
        &self,
        receipt: &Receipt,
        seq: u64,
        now_ms: i64,
    ) -> Result<Option<PriceDifference>, ReplicaError> {
        let charged_cents = receipt.total_cents();
        let listed = |hq_cents, cause, detail| PriceDifference {
            receipt: receipt.id.as_str().to_owned(),
            store: receipt.store.as_str().to_owned(),
            sold_at_ms: receipt.sold_at_ms,
            charged_cents,
            hq_cents,
            cause,
            detail,
            checked_at_ms: now_ms,
        };
        let (Some(place), Some(info)) = (
            self.place_of(&receipt.store)?,
            self.store_info(&receipt.store)?,
        ) else {
            return Ok(Some(listed(
                None,
                PriceCause::Unpriceable,
                format!("HQ's directory has no store {}", receipt.store),
            )));
        };
        let basket = pricecheck::basket_of(receipt);
        let mut skus: Vec<Sku> = basket.iter().map(|l| l.sku.clone()).collect();
        skus.sort();
        skus.dedup();
        let facts = self.basket_facts(&place, &skus)?;
        let shopper = match &receipt.member {
            Some(m) => Some(self.member_facts(m)?.shopper()),
            None => None,
        };
        let used = self.units_used_before(&receipt.store, &facts, seq)?;
        let t_ms = receipt.pricing.priced_at_ms;
        let ctx = Context {
            place: &place,
            t_ms,
            local: LocalTime::at(t_ms, &info.time_zone).0,
            member: shopper.clone(),
        };
        let (hq_lines, hq_cents) = match checkout::price_basket(&basket, &ctx, &facts, &used) {
            Ok(priced) => (priced.lines, priced.total_cents),
            Err(e) => {
                return Ok(Some(listed(
                    None,
                    PriceCause::Unpriceable,
                    format!("HQ's engine refused the basket: {e}"),
                )));
            }
        };
        let differences = pricecheck::differences(&receipt.lines, &hq_lines);
        if differences.is_empty() {
            return Ok(None);
        }
        let heads = self.heads_pricing(&place)?;
        let (cause, why) = pricecheck::cause(&receipt.pricing, &heads, shopper.as_ref());
        Ok(Some(listed(
            Some(hq_cents),
            cause,
            format!("{}; {why}", differences.join("; ")),
        )))
    }

    /// Units of each allocated promotion among `facts` that `store` had given on receipts of
    /// change sets before `seq`, less receipts it had voided before `seq`.
    fn units_used_before(
        &self,
        store: &NodeId,
        facts: &BTreeMap<Sku, SkuFacts>,
        seq: u64,
    ) -> Result<BTreeMap<RecordId, u64>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COALESCE(SUM(d.units), 0) FROM line_discounts d
             JOIN receipts r ON r.id = d.receipt
             WHERE d.promotion = ?1 AND r.store = ?2 AND r.seq < ?3
               AND NOT EXISTS (SELECT 1 FROM voids v WHERE v.original = r.id AND v.seq < ?3)",
        )?;
        let mut out = BTreeMap::new();
        for p in facts.values().flat_map(|f| &f.promotions) {
            if p.allocations.is_empty() || out.contains_key(&p.id) {
                continue;
            }
            let used: i64 = stmt
                .query_row(params![p.id.as_str(), store.as_str(), seq as i64], |r| {
                    r.get(0)
                })?;
            out.insert(p.id.clone(), used.max(0) as u64);
        }
        Ok(out)
    }

    /// Receipts listed by the price check, newest first; `cause` keeps one kind.
    pub fn price_differences(
        &self,
        cause: Option<PriceCause>,
    ) -> Result<Vec<PriceDifference>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT receipt, store, sold_at_ms, charged_cents, hq_cents, cause, detail, checked_at_ms
             FROM price_differences WHERE ?1 IS NULL OR cause = ?1
             ORDER BY sold_at_ms DESC, receipt",
        )?;
        let rows = stmt.query_map(params![cause.map(PriceCause::as_str)], |r| {
            Ok((
                PriceDifference {
                    receipt: r.get(0)?,
                    store: r.get(1)?,
                    sold_at_ms: r.get(2)?,
                    charged_cents: r.get(3)?,
                    hq_cents: r.get(4)?,
                    cause: PriceCause::Unexplained,
                    detail: r.get(6)?,
                    checked_at_ms: r.get(7)?,
                },
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut d, cause) = row?;
            d.cause = PriceCause::from_code(&cause)
                .ok_or_else(|| ReplicaError::Corrupt(format!("price check cause {cause}")))?;
            out.push(d);
        }
        Ok(out)
    }

    /// How many receipts wait for the price check.
    pub fn receipts_unchecked(&self) -> Result<u64, ReplicaError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM receipts WHERE price_check IS NULL")?
            .query_row([], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}
