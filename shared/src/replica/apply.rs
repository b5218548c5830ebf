//! Materializing ops into the retail tables.
//!
//! [`apply_op`] runs inside the caller's transaction and never fails for domain reasons: a receipt
//! for an unknown sku, a ledger entry for a member not signed up yet, a return whose original is
//! elsewhere are all stored as they are and line up once the rest arrives. It fails only when
//! SQLite does, and then the caller's whole transaction rolls back.
//!
//! Invariants (each is what makes applying commutative and idempotent):
//! - immutable records (receipts, returns, voids, ledger entries, stock movements) are inserted
//!   once by id; their stock effect is applied only when the insert happened, so a record seen
//!   twice (in a replayed change set or a snapshot over a partial replica) counts once;
//! - keyed records (regions, stores, products, price entries, promotions) are replaced whole;
//!   price entries and promotions are keyed by (scope, id), so a removal in one scope's stream can
//!   never touch another scope's entry;
//! - a member field is overwritten only by a write with a greater `(hlc, node)`;
//! - a void of a receipt this node does not hold yet is kept; the receipt's stock effect is then
//!   skipped when it arrives (a store's sales stream always carries the receipt first, so this
//!   only happens when someone else's void stands in a snapshot before its receipt).

use crate::changeset::Op;
use crate::hlc::Hlc;
use crate::ids::{NodeId, StreamId, Topic};
use crate::model::{
    DiscountSource, LedgerAccount, LedgerKind, MovementKind, PriceKind, ProfileField, Receipt,
    ReceiptLine, SpendAuth,
};
use rusqlite::{Connection, params};
use std::collections::BTreeMap;

/// Stock changes gathered while applying, written once per (store, sku) by [`StockDeltas::flush`]
/// in the same transaction: a batch of receipts touches the same few skus over and over, and one
/// upsert per sku instead of one per line is most of the apply cost saved.
#[derive(Debug, Default)]
pub(crate) struct StockDeltas(BTreeMap<(String, String), i64>);

impl StockDeltas {
    fn add(&mut self, store: &NodeId, sku: &str, delta: i64) {
        let slot = self
            .0
            .entry((store.as_str().to_owned(), sku.to_owned()))
            .or_default();
        *slot = slot.saturating_add(delta);
    }

    /// Writes the gathered changes. Must run before the transaction commits.
    pub(crate) fn flush(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO stock (store, sku, qty) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, sku) DO UPDATE SET qty = qty + excluded.qty",
        )?;
        for ((store, sku), delta) in std::mem::take(&mut self.0) {
            stmt.execute(params![store, sku, delta])?;
        }
        Ok(())
    }
}

/// Applies one op of `stream`, stamped `hlc`, inside the caller's transaction; stock changes go
/// to `stock` (the caller flushes them before committing).
pub(crate) fn apply_op(
    tx: &Connection,
    stream: &StreamId,
    seq: u64,
    hlc: Hlc,
    op: &Op,
    stock: &mut StockDeltas,
) -> rusqlite::Result<()> {
    match op {
        Op::RegionUpsert(r) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO regions (id, name, parent) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                r.id.as_str(),
                r.name,
                r.parent.as_ref().map(|p| p.as_str())
            ])?;
        }
        Op::StoreUpsert(s) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO stores
                 (id, name, region, mode, public_key, may_set_own_prices, revoked, time_zone)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                s.id.as_str(),
                s.name,
                s.region.as_str(),
                s.mode.as_str(),
                &s.public_key[..],
                s.may_set_own_prices,
                s.revoked,
                s.time_zone
            ])?;
            tx.prepare_cached("DELETE FROM store_retired_keys WHERE store = ?1")?
                .execute(params![s.id.as_str()])?;
            if !s.retired_keys.is_empty() {
                let body = postcard::to_allocvec(&s.retired_keys)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                tx.prepare_cached("INSERT INTO store_retired_keys (store, body) VALUES (?1, ?2)")?
                    .execute(params![s.id.as_str(), body])?;
            }
        }
        Op::ProductUpsert(p) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO products (sku, name, category, unit_cost_cents, active, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                p.sku.as_str(),
                p.name,
                p.category,
                p.unit_cost_cents,
                p.active,
                encode(p)
            ])?;
        }
        Op::PriceUpsert(e) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO price_entries
                 (scope, id, sku, kind, price_cents, effective_from_ms, effective_to_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                e.scope.to_string(),
                e.id.as_str(),
                e.sku.as_str(),
                price_kind_code(e.kind),
                e.price_cents,
                e.effective_from_ms,
                e.effective_to_ms,
                encode(e)
            ])?;
        }
        Op::PriceRemove { id } => {
            if let Topic::Prices(scope) = &stream.topic {
                tx.prepare_cached("DELETE FROM price_entries WHERE scope = ?1 AND id = ?2")?
                    .execute(params![scope.to_string(), id.as_str()])?;
            }
        }
        Op::PromotionUpsert(p) => {
            let scope = p.scope.to_string();
            tx.prepare_cached(
                "INSERT OR REPLACE INTO promotions (scope, id, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![scope, p.id.as_str(), encode(p)])?;
            tx.prepare_cached("DELETE FROM promotion_keys WHERE scope = ?1 AND id = ?2")?
                .execute(params![scope, p.id.as_str()])?;
            let mut key = tx.prepare_cached(
                "INSERT OR IGNORE INTO promotion_keys (key, scope, id) VALUES (?1, ?2, ?3)",
            )?;
            if p.skus.is_empty() && p.categories.is_empty() {
                key.execute(params!["*", scope, p.id.as_str()])?;
            }
            for sku in &p.skus {
                key.execute(params![format!("sku:{sku}"), scope, p.id.as_str()])?;
            }
            for category in &p.categories {
                key.execute(params![format!("cat:{category}"), scope, p.id.as_str()])?;
            }
        }
        Op::PromotionRemove { id } => {
            if let Topic::Promotions(scope) = &stream.topic {
                tx.prepare_cached("DELETE FROM promotions WHERE scope = ?1 AND id = ?2")?
                    .execute(params![scope.to_string(), id.as_str()])?;
                tx.prepare_cached("DELETE FROM promotion_keys WHERE scope = ?1 AND id = ?2")?
                    .execute(params![scope.to_string(), id.as_str()])?;
            }
        }
        Op::MemberEdit(edit) => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO member_fields (member, field, value, hlc_wall, hlc_logical, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (member, field) DO UPDATE SET
                   value = excluded.value, hlc_wall = excluded.hlc_wall,
                   hlc_logical = excluded.hlc_logical, node = excluded.node
                 WHERE (excluded.hlc_wall, excluded.hlc_logical, excluded.node)
                     > (member_fields.hlc_wall, member_fields.hlc_logical, member_fields.node)",
            )?;
            // The edit's own stamp, or the change set's if the writer left it empty.
            let stamp = if edit.hlc == Hlc::default() {
                hlc
            } else {
                edit.hlc
            };
            for (field, value) in &edit.fields {
                stmt.execute(params![
                    edit.member.as_str(),
                    field.code(),
                    value,
                    stamp.wall_ms as i64,
                    stamp.logical,
                    stream.origin.as_str()
                ])?;
            }
            if edit.fields.iter().any(|(f, _)| *f == ProfileField::Phone) {
                // The phone that won the merge, as digits.
                let phone: String = tx
                    .prepare_cached(
                        "SELECT value FROM member_fields WHERE member = ?1 AND field = ?2",
                    )?
                    .query_row(
                        params![edit.member.as_str(), ProfileField::Phone.code()],
                        |r| r.get(0),
                    )?;
                let digits = crate::loyalty::phone_digits(&phone);
                if digits.is_empty() {
                    tx.prepare_cached("DELETE FROM member_phones WHERE member = ?1")?
                        .execute(params![edit.member.as_str()])?;
                } else {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO member_phones (member, digits) VALUES (?1, ?2)",
                    )?
                    .execute(params![edit.member.as_str(), digits])?;
                }
            }
        }
        Op::Ledger(e) => {
            let (hold, offline) = match &e.auth {
                Some(SpendAuth::Held(hold)) => (Some(hold.as_str()), None),
                Some(SpendAuth::Offline {
                    allowance,
                    spent_before,
                }) => (None, Some((*allowance, *spent_before))),
                None => (None, None),
            };
            tx.prepare_cached(
                "INSERT OR IGNORE INTO ledger (id, member, account, kind, amount, receipt, at_ms,
                     origin, seq, hold, offline_allowance, offline_before, tender, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                e.id.as_str(),
                e.member.as_str(),
                account_code(e.account),
                ledger_kind_code(e.kind),
                e.amount,
                e.receipt.as_ref().map(|r| r.as_str()),
                e.at_ms,
                stream.origin.as_str(),
                seq as i64,
                hold,
                offline.map(|o| o.0),
                offline.map(|o| o.1),
                e.tender.map(|t| t as u8),
                e.note,
            ])?;
            // At HQ the entry captures the hold it names (elsewhere there are no holds).
            if let Some(hold) = hold {
                tx.prepare_cached("UPDATE holds SET state = 1 WHERE id = ?1")?
                    .execute(params![hold])?;
            }
        }
        Op::MemberMerge { alias, survivor } => {
            // The survivor's own final survivor (merges chain), unless that is the alias itself.
            let survivor: String = tx
                .prepare_cached(
                    "SELECT coalesce((SELECT survivor FROM member_aliases WHERE alias = ?1), ?1)",
                )?
                .query_row(params![survivor.as_str()], |r| r.get(0))?;
            if survivor != alias.as_str() {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO member_aliases (alias, survivor) VALUES (?1, ?2)",
                )?
                .execute(params![alias.as_str(), survivor])?;
                tx.prepare_cached("UPDATE member_aliases SET survivor = ?2 WHERE survivor = ?1")?
                    .execute(params![alias.as_str(), survivor])?;
            }
        }
        Op::CardIssue(card) => {
            tx.prepare_cached(
                "INSERT INTO cards (number, member, issued_at_ms, node) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (number) DO UPDATE SET
                   member = excluded.member, issued_at_ms = excluded.issued_at_ms,
                   node = excluded.node
                 WHERE (excluded.issued_at_ms, excluded.node) < (cards.issued_at_ms, cards.node)",
            )?
            .execute(params![
                card.number.as_str(),
                card.member.as_str(),
                card.issued_at_ms,
                stream.origin.as_str()
            ])?;
        }
        Op::CardStatus {
            number,
            status,
            hlc: stamp,
        } => {
            let stamp = if *stamp == Hlc::default() {
                hlc
            } else {
                *stamp
            };
            let replaced_by = match status {
                crate::model::CardStatus::Replaced { by } => Some(by.as_str()),
                _ => None,
            };
            tx.prepare_cached(
                "INSERT INTO card_status (number, code, rank, replaced_by, hlc_wall, hlc_logical, node)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (number) DO UPDATE SET
                   code = excluded.code, rank = excluded.rank, replaced_by = excluded.replaced_by,
                   hlc_wall = excluded.hlc_wall, hlc_logical = excluded.hlc_logical,
                   node = excluded.node
                 WHERE (excluded.rank, excluded.hlc_wall, excluded.hlc_logical, excluded.node)
                     > (card_status.rank, card_status.hlc_wall, card_status.hlc_logical,
                        card_status.node)",
            )?
            .execute(params![
                number.as_str(),
                status.code(),
                status.rank(),
                replaced_by,
                stamp.wall_ms as i64,
                stamp.logical,
                stream.origin.as_str()
            ])?;
        }
        Op::LoyaltyPolicy(policy) => {
            tx.prepare_cached("INSERT OR REPLACE INTO loyalty_policy (id, body) VALUES (1, ?1)")?
                .execute(params![encode(policy)])?;
        }
        Op::MemberAllowance { member, allowance } => {
            match allowance {
                Some(a) => {
                    tx.prepare_cached(
                    "INSERT OR REPLACE INTO member_allowances (member, stored_value_cents, points)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![member.as_str(), a.stored_value_cents, a.points])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM member_allowances WHERE member = ?1")?
                        .execute(params![member.as_str()])?;
                }
            }
        }
        Op::Stock(m) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO stock_movements
                     (id, store, sku, kind, qty_delta, reference, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    m.id.as_str(),
                    m.store.as_str(),
                    m.sku.as_str(),
                    movement_kind_code(m.kind),
                    m.qty_delta,
                    m.reference,
                    m.at_ms
                ])?;
            if inserted == 1 {
                stock.add(&m.store, m.sku.as_str(), m.qty_delta);
            }
        }
        Op::Receipt(r) => apply_receipt(tx, r, seq, stock)?,
        Op::Return(r) => {
            let refund: i64 = r
                .refunds
                .iter()
                .map(|p| p.amount_cents)
                .fold(0, i64::saturating_add);
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO returns (id, store, original, at_ms, refund_cents, unverified, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    r.id.as_str(),
                    r.store.as_str(),
                    r.original.as_str(),
                    r.at_ms,
                    refund,
                    r.unverified,
                    encode(r)
                ])?;
            if inserted == 1 {
                for line in &r.lines {
                    stock.add(&r.store, line.sku.as_str(), line.qty);
                }
            }
        }
        Op::Void(v) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO voids (id, store, original, at_ms, reason, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    v.id.as_str(),
                    v.store.as_str(),
                    v.original.as_str(),
                    v.at_ms,
                    v.reason,
                    seq as i64
                ])?;
            if inserted == 1 {
                let newly_voided = tx
                    .prepare_cached("UPDATE receipts SET voided = 1 WHERE id = ?1 AND voided = 0")?
                    .execute(params![v.original.as_str()])?;
                if newly_voided == 1 {
                    for line in receipt_lines(tx, v.original.as_str())? {
                        stock.add(&v.store, line.0.as_str(), line.1);
                    }
                }
            }
        }
    }
    Ok(())
}

fn apply_receipt(
    tx: &Connection,
    r: &Receipt,
    seq: u64,
    stock: &mut StockDeltas,
) -> rusqlite::Result<()> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO receipts (id, store, sold_at_ms, member, total_cents, seq, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            r.id.as_str(),
            r.store.as_str(),
            r.sold_at_ms,
            r.member.as_ref().map(|m| m.as_str()),
            r.total_cents(),
            seq as i64,
            encode(r),
        ])?;
    if inserted == 0 {
        return Ok(());
    }
    let already_voided: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM voids WHERE original = ?1)")?
        .query_row(params![r.id.as_str()], |row| row.get(0))?;
    if already_voided {
        tx.prepare_cached("UPDATE receipts SET voided = 1 WHERE id = ?1")?
            .execute(params![r.id.as_str()])?;
    }
    let mut line_stmt = tx.prepare_cached(
        "INSERT INTO receipt_lines
         (receipt, line_no, sku, qty, unit_price_cents, discount_cents, list_cents, override_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut discount_stmt = tx.prepare_cached(
        "INSERT INTO line_discounts (receipt, line_no, n, promotion, reason, cents, units)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (line_no, line) in r.lines.iter().enumerate() {
        insert_line(&mut line_stmt, r, line_no, line)?;
        for (n, d) in line.discounts.iter().enumerate() {
            let (promotion, reason) = match &d.source {
                DiscountSource::Promotion(p) => (Some(p.as_str()), None),
                DiscountSource::Manual { reason } => (None, Some(reason.as_str())),
                DiscountSource::AsSold { .. } => continue,
            };
            discount_stmt.execute(params![
                r.id.as_str(),
                line_no as i64,
                n as i64,
                promotion,
                reason,
                d.cents,
                d.units
            ])?;
        }
        if !already_voided {
            stock.add(&r.store, line.sku.as_str(), -line.qty);
        }
    }
    Ok(())
}

fn insert_line(
    stmt: &mut rusqlite::CachedStatement<'_>,
    r: &Receipt,
    line_no: usize,
    line: &ReceiptLine,
) -> rusqlite::Result<()> {
    stmt.execute(params![
        r.id.as_str(),
        line_no as i64,
        line.sku.as_str(),
        line.qty,
        line.unit_price_cents,
        line.discount_cents,
        line.price_override.as_ref().map(|o| o.list_cents),
        line.price_override.as_ref().map(|o| o.reason.as_str())
    ])?;
    Ok(())
}

fn receipt_lines(tx: &Connection, receipt: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = tx.prepare_cached("SELECT sku, qty FROM receipt_lines WHERE receipt = ?1")?;
    let rows = stmt.query_map(params![receipt], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Model values always serialize (no maps with non-string keys, no failing Serialize impls);
    // an empty body would be caught when read back.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub(crate) fn price_kind_code(kind: PriceKind) -> u8 {
    match kind {
        PriceKind::Retail => 0,
        PriceKind::Member => 1,
        PriceKind::Wholesale => 2,
    }
}

pub(crate) fn account_code(account: LedgerAccount) -> u8 {
    match account {
        LedgerAccount::Points => 0,
        LedgerAccount::StoredValue => 1,
    }
}

/// The account of a storage code (see [`account_code`]).
pub(crate) fn account_from_code(code: u8) -> Option<LedgerAccount> {
    match code {
        0 => Some(LedgerAccount::Points),
        1 => Some(LedgerAccount::StoredValue),
        _ => None,
    }
}

fn ledger_kind_code(kind: LedgerKind) -> u8 {
    kind as u8
}

fn movement_kind_code(kind: MovementKind) -> u8 {
    kind as u8
}
