//! Retail reads and writes the till and HQ's reports need beyond the replication core:
//! original receipts and their returns (for checked returns), the units a store has given of
//! each allocated promotion, the POS's stored answers to keyed writes, and HQ's reports on
//! promotions, overrides and unverified returns.
//!
//! Invariant: a keyed POS write and its stored answer commit in one transaction
//! ([`Replica::commit_local_answering`]), so a retry after a crash finds either both or neither.

use super::{Committed, Replica, ReplicaError};
use crate::changeset::Op;
use crate::ids::{NodeId, RecordId, Sku, Topic};
use crate::model::{ReceiptLine, ReturnRecord};
use crate::returns;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

/// A receipt as a return needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OriginalReceipt {
    pub store: NodeId,
    pub voided: bool,
    pub member: Option<String>,
    pub total_cents: i64,
    /// Lines with their amounts (`discounts` are not loaded; `discount_cents` is).
    pub lines: Vec<ReceiptLine>,
}

/// Units, sales and discount of one promotion in one store or region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionReportRow {
    pub promotion: String,
    /// A store id or a region id, as asked.
    pub group: String,
    pub receipts: i64,
    pub units: i64,
    /// What the lines the promotion discounted were sold for, after discounts.
    pub sales_cents: i64,
    pub discount_cents: i64,
}

/// A price a till overrode or a discount it gave by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRow {
    pub store: String,
    pub receipt: String,
    pub sku: String,
    /// `price` or `discount`.
    pub kind: &'static str,
    /// For a price: the engine's price; for a discount: the line's value before it.
    pub list_cents: i64,
    /// For a price: what the till charged per unit; for a discount: its amount.
    pub cents: i64,
    pub reason: String,
    pub sold_at_ms: i64,
}

/// A return a store took without holding its original, and what HQ found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedReturn {
    pub id: String,
    pub store: String,
    pub original: String,
    pub at_ms: i64,
    pub refund_cents: i64,
    /// `waiting for the original`, `ok`, or what is wrong with it.
    pub status: String,
    /// True when the original is held and the return passes the checks.
    pub verified: bool,
}

impl Replica {
    /// The receipt `id` with its lines, if held.
    pub fn original_receipt(&self, id: &RecordId) -> Result<Option<OriginalReceipt>, ReplicaError> {
        let head: Option<(String, bool, Option<String>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT store, voided, member, total_cents FROM receipts WHERE id = ?1",
            )?
            .query_row(params![id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((store, voided, member, total_cents)) = head else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT sku, qty, unit_price_cents, discount_cents FROM receipt_lines
             WHERE receipt = ?1 ORDER BY line_no",
        )?;
        let rows = stmt.query_map(params![id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let corrupt = |e: crate::ids::IdError| ReplicaError::Corrupt(format!("receipt {id}: {e}"));
        let mut lines = Vec::new();
        for row in rows {
            let (sku, qty, unit, discount) = row?;
            let mut line = ReceiptLine::plain(Sku::new(sku).map_err(corrupt)?, qty, unit);
            line.discount_cents = discount;
            lines.push(line);
        }
        Ok(Some(OriginalReceipt {
            store: NodeId::new(store).map_err(corrupt)?,
            voided,
            member,
            total_cents,
            lines,
        }))
    }

    /// Every return held against `original`, oldest first.
    pub fn returns_against(&self, original: &RecordId) -> Result<Vec<ReturnRecord>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM returns WHERE original = ?1 ORDER BY at_ms, id")?;
        let rows = stmt.query_map(params![original.as_str()], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|b| super::query::decode("return", &b?)).collect()
    }

    /// A return held here, by id.
    pub fn return_record(&self, id: &RecordId) -> Result<Option<ReturnRecord>, ReplicaError> {
        let body: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT body FROM returns WHERE id = ?1")?
            .query_row(params![id.as_str()], |r| r.get(0))
            .optional()?;
        body.map(|b| super::query::decode("return", &b)).transpose()
    }

    /// Units of each of `promotions` that `store`'s receipts (not voided) were given.
    pub fn promotion_units_used(
        &self,
        store: &NodeId,
        promotions: &[RecordId],
    ) -> Result<BTreeMap<RecordId, u64>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COALESCE(SUM(d.units), 0) FROM line_discounts d
             JOIN receipts r ON r.id = d.receipt
             WHERE d.promotion = ?1 AND r.store = ?2 AND r.voided = 0",
        )?;
        let mut out = BTreeMap::new();
        for p in promotions {
            let used: i64 = stmt.query_row(params![p.as_str(), store.as_str()], |r| r.get(0))?;
            out.insert(p.clone(), used.max(0) as u64);
        }
        Ok(out)
    }

    /// [`Replica::commit_local`], storing `answer` under `key` in the same transaction.
    pub fn commit_local_answering(
        &mut self,
        topic: Topic,
        ops: Vec<Op>,
        now_ms: u64,
        key: &str,
        answer: &[u8],
    ) -> Result<Committed, ReplicaError> {
        self.commit_local_with(topic, ops, now_ms, |tx| {
            tx.prepare_cached("INSERT OR REPLACE INTO pos_answers (key, answer) VALUES (?1, ?2)")?
                .execute(params![key, answer])
                .map(|_| ())
        })
    }

    /// Stores the answer to a keyed POS request that wrote no change set.
    pub fn put_pos_answer(&self, key: &str, answer: &[u8]) -> Result<(), ReplicaError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO pos_answers (key, answer) VALUES (?1, ?2)")?
            .execute(params![key, answer])?;
        Ok(())
    }

    /// What the POS answered to the keyed write `key`, if it was made.
    pub fn pos_answer(&self, key: &str) -> Result<Option<Vec<u8>>, ReplicaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT answer FROM pos_answers WHERE key = ?1")?
            .query_row(params![key], |r| r.get(0))
            .optional()?)
    }

    /// Units, sales and discount per promotion, by store (`by_region` false) or region.
    pub fn promotion_report(
        &self,
        by_region: bool,
    ) -> Result<Vec<PromotionReportRow>, ReplicaError> {
        let group = if by_region {
            "COALESCE(s.region, '')"
        } else {
            "r.store"
        };
        let sql = format!(
            "SELECT d.promotion, {group}, COUNT(DISTINCT r.id), SUM(d.units), SUM(d.cents),
                    SUM(l.qty * l.unit_price_cents - l.discount_cents)
             FROM line_discounts d
             JOIN receipts r ON r.id = d.receipt AND r.voided = 0
             JOIN receipt_lines l ON l.receipt = d.receipt AND l.line_no = d.line_no
             LEFT JOIN stores s ON s.id = r.store
             WHERE d.promotion IS NOT NULL
             GROUP BY 1, 2 ORDER BY 1, 2"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok(PromotionReportRow {
                promotion: r.get(0)?,
                group: r.get(1)?,
                receipts: r.get(2)?,
                units: r.get(3)?,
                discount_cents: r.get(4)?,
                sales_cents: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every price override and manual discount on receipts not voided, newest first.
    pub fn override_report(&self) -> Result<Vec<OverrideRow>, ReplicaError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.store, r.id, l.sku, 'price', l.list_cents, l.unit_price_cents,
                    l.override_reason, r.sold_at_ms
             FROM receipt_lines l JOIN receipts r ON r.id = l.receipt AND r.voided = 0
             WHERE l.override_reason IS NOT NULL
             UNION ALL
             SELECT r.store, r.id, l.sku, 'discount', l.qty * l.unit_price_cents, d.cents,
                    d.reason, r.sold_at_ms
             FROM line_discounts d
             JOIN receipts r ON r.id = d.receipt AND r.voided = 0
             JOIN receipt_lines l ON l.receipt = d.receipt AND l.line_no = d.line_no
             WHERE d.promotion IS NULL
             ORDER BY 8 DESC, 2",
        )?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(3)?;
            Ok(OverrideRow {
                store: r.get(0)?,
                receipt: r.get(1)?,
                sku: r.get(2)?,
                kind: if kind == "price" { "price" } else { "discount" },
                list_cents: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                cents: r.get(5)?,
                reason: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                sold_at_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every return taken without its original, checked against the original where it has
    /// arrived, oldest first.
    pub fn unverified_returns(&self) -> Result<Vec<UnverifiedReturn>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM returns WHERE unverified = 1 ORDER BY at_ms, id")?;
        let bodies: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            let ret: ReturnRecord = super::query::decode("return", &body)?;
            let refund: i64 = ret.refunds.iter().map(|p| p.amount_cents).sum();
            let (status, verified) = match self.original_receipt(&ret.original)? {
                None => ("waiting for the original".to_owned(), false),
                Some(o) if o.voided => ("the original was voided".to_owned(), false),
                Some(o) => {
                    let earlier: Vec<ReceiptLine> = self
                        .returns_against(&ret.original)?
                        .into_iter()
                        .take_while(|r| r.id != ret.id)
                        .flat_map(|r| r.lines)
                        .collect();
                    let wanted: Vec<(Sku, i64)> =
                        ret.lines.iter().map(|l| (l.sku.clone(), l.qty)).collect();
                    match returns::refund_lines(&ret.original, &o.lines, &earlier, &wanted) {
                        Err(e) => (e.to_string(), false),
                        Ok(lines) => {
                            let due: i64 = lines.iter().map(ReceiptLine::amount_cents).sum();
                            if refund > due {
                                (
                                    format!(
                                        "refunded {refund} cents, {due} were paid for these units"
                                    ),
                                    false,
                                )
                            } else {
                                ("ok".to_owned(), true)
                            }
                        }
                    }
                }
            };
            out.push(UnverifiedReturn {
                id: ret.id.to_string(),
                store: ret.store.to_string(),
                original: ret.original.to_string(),
                at_ms: ret.at_ms,
                refund_cents: refund,
                status,
                verified,
            });
        }
        Ok(out)
    }

    /// Whether any return is held against `original`.
    pub fn has_returns(&self, original: &RecordId) -> Result<bool, ReplicaError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM returns WHERE original = ?1)",
            params![original.as_str()],
            |r| r.get(0),
        )?)
    }
}
