//! Members' money in the replica: HQ's holds, the loyalty policy and card allowances, a store's
//! offline takes not yet acknowledged, HQ's exceptions, statements, and writes that span the
//! sales and members streams.
//!
//! Invariants:
//! - a hold is granted, refused or released inside one IMMEDIATE transaction that reads the
//!   balance and the live holds, so two stores asking at once are decided one after the other;
//!   the answer goes out only after the commit;
//! - a ledger entry naming a hold captures it in the transaction that applies the entry
//!   (`apply.rs`); a captured hold no longer counts, the entry does;
//! - [`Replica::commit_local_many`] writes change sets of several own streams (a receipt and
//!   the ledger entries it pays with) in one transaction: both or neither.

use super::apply::{account_code, account_from_code};
use super::{Committed, Replica, ReplicaError};
use crate::changeset::Op;
use crate::ids::{CardNo, MemberId, NodeId, RecordId, StreamId, Topic, record_id_owned_by};
use crate::loyalty::{self, TakeRefusal};
use crate::model::{Allowance, LedgerAccount, LedgerKind, LoyaltyPolicy, ProfileField};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// How long HQ keeps a hold that is neither captured nor released.
pub const HOLD_TTL_MS: u64 = 5 * 60 * 1000;

/// A store's request to hold an amount of a card's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    /// The store's id for the hold (`{store}-…`): asking again with it is answered the same.
    pub id: RecordId,
    pub member: MemberId,
    pub account: LedgerAccount,
    /// Positive, in the account's unit.
    pub amount: i64,
    /// The card presented, if any: HQ refuses a hold on a card that is not active.
    pub card: Option<CardNo>,
}

/// HQ's answer to a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldOutcome {
    /// Held until `expires_ms` (HQ's clock) unless captured or released first.
    Granted { expires_ms: u64 },
    /// Not held, and why (too little available, card not active …).
    Refused { available: i64, reason: String },
}

/// A card HQ lists for a person to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardException {
    pub member: String,
    pub account: LedgerAccount,
    pub balance: i64,
    /// `negative balance`, `offline over policy`, or both.
    pub reasons: Vec<&'static str>,
    /// The offline takes since the card's last adjustment, which caused it.
    pub entries: Vec<StatementRow>,
}

/// One ledger entry on a member's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    pub id: String,
    pub account: LedgerAccount,
    pub kind: String,
    pub amount: i64,
    /// The account's balance after this entry, in statement order.
    pub balance_after: i64,
    /// The node that wrote it.
    pub store: String,
    pub receipt: Option<String>,
    pub at_ms: i64,
    /// `held H`, `offline (allowance A, taken before B)`, or empty.
    pub auth: String,
    pub note: String,
}

impl StatementRow {
    /// The entry as the POS and HQ APIs show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "account": self.account.as_str(),
            "kind": self.kind,
            "amount": self.amount,
            "balance_after": self.balance_after,
            "store": self.store,
            "receipt": self.receipt,
            "at_ms": self.at_ms,
            "auth": self.auth,
            "note": self.note,
        })
    }
}

/// One member's points entries as `(at_ms, amount)`.
pub type MemberPoints = (MemberId, Vec<(i64, i64)>);

/// A ledger entry written with a receipt, as a void or return reverses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptLedgerRow {
    pub member: MemberId,
    pub account: LedgerAccount,
    pub kind: LedgerKind,
    pub amount: i64,
}

impl Replica {
    /// The chain's loyalty policy (the empty policy until HQ sets one).
    pub fn loyalty_policy(&self) -> Result<LoyaltyPolicy, ReplicaError> {
        let body: Option<Vec<u8>> = self
            .connection()
            .prepare_cached("SELECT body FROM loyalty_policy WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        match body {
            None => Ok(LoyaltyPolicy::default()),
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| ReplicaError::Corrupt(format!("stored loyalty policy: {e}"))),
        }
    }

    /// A card's own offline allowance, if HQ set one.
    pub fn member_allowance(&self, member: &MemberId) -> Result<Option<Allowance>, ReplicaError> {
        Ok(self
            .connection()
            .prepare_cached(
                "SELECT stored_value_cents, points FROM member_allowances WHERE member = ?1",
            )?
            .query_row(params![member.as_str()], |r| {
                Ok(Allowance {
                    stored_value_cents: r.get(0)?,
                    points: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// The offline allowance that applies to a card now: its own, its level's or the chain's.
    pub fn offline_allowance_of(&self, member: &MemberId) -> Result<Allowance, ReplicaError> {
        let member = &self.canonical_member(member)?;
        let level = self
            .member_profile(member)?
            .remove(&ProfileField::Level)
            .map(|f| f.value);
        Ok(loyalty::offline_allowance(
            &self.loyalty_policy()?,
            level.as_deref(),
            self.member_allowance(member)?,
        ))
    }

    /// What this node took offline from a card's account and HQ has not acknowledged yet.
    pub fn offline_taken_unacked(
        &self,
        member: &MemberId,
        account: LedgerAccount,
    ) -> Result<i64, ReplicaError> {
        let member = &self.canonical_member(member)?;
        let members = StreamId::new(self.node().clone(), Topic::Members).to_string();
        Ok(self
            .connection()
            .prepare_cached(
                "SELECT coalesce(sum(-l.amount), 0) FROM ledger l
                 WHERE l.member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND l.account = ?2 AND l.origin = ?3
                   AND l.offline_allowance IS NOT NULL
                   AND l.seq > coalesce((SELECT hub_acked_seq FROM streams WHERE name = ?4), 0)",
            )?
            .query_row(
                params![
                    member.as_str(),
                    account_code(account),
                    self.node().as_str(),
                    members
                ],
                |r| r.get(0),
            )?)
    }

    /// What live holds (not captured, released or expired at `now_ms`) keep of a card's account.
    pub fn held(
        &self,
        member: &MemberId,
        account: LedgerAccount,
        now_ms: u64,
    ) -> Result<i64, ReplicaError> {
        let member = &self.canonical_member(member)?;
        Ok(self
            .connection()
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM holds
                 WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2 AND state = 0
                   AND expires_ms > ?3",
            )?
            .query_row(
                params![member.as_str(), account_code(account), now_ms as i64],
                |r| r.get(0),
            )?)
    }

    /// HQ: holds `req` for `store` if the card's balance less every other live hold covers it.
    /// Asking again with the same id answers the same while the hold lives (or was captured).
    pub fn place_hold(
        &mut self,
        store: &NodeId,
        req: &HoldRequest,
        now_ms: u64,
    ) -> Result<HoldOutcome, ReplicaError> {
        let refused = |available, reason: String| Ok(HoldOutcome::Refused { available, reason });
        if !record_id_owned_by(&req.id, store) {
            return refused(
                0,
                format!("hold id {} does not start with `{store}-`", req.id),
            );
        }
        if let Err(e) = crate::model::check_amount("hold", req.amount) {
            return refused(0, e);
        }
        let member = self.canonical_member(&req.member)?;
        if let Some(number) = &req.card {
            match self.card(number)? {
                None => return refused(0, format!("no card {number}")),
                Some(card) if card.member != member => {
                    return refused(0, format!("card {number} is not {member}'s"));
                }
                Some(card) if !card.usable() => {
                    return refused(0, format!("card {number} is {}", card.status.as_str()));
                }
                Some(_) => {}
            }
        }
        let req = &HoldRequest {
            member,
            ..req.clone()
        };
        let tx = super::WriteTx::begin(&mut self.conn)?;
        let existing: Option<(String, i64, i64, i64, u8)> = tx
            .prepare_cached(
                "SELECT member, account, amount, expires_ms, state FROM holds WHERE id = ?1",
            )?
            .query_row(params![req.id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        if let Some((member, account, amount, expires_ms, state)) = existing {
            let same = member == req.member.as_str()
                && account == i64::from(account_code(req.account))
                && amount == req.amount;
            if !same {
                return refused(
                    0,
                    format!("hold {} exists for another card or amount", req.id),
                );
            }
            let live = state == 0 && expires_ms > now_ms as i64;
            if live || state == 1 {
                return Ok(HoldOutcome::Granted {
                    expires_ms: expires_ms as u64,
                });
            }
        }
        let balance: i64 = tx
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM ledger WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2",
            )?
            .query_row(
                params![req.member.as_str(), account_code(req.account)],
                |r| r.get(0),
            )?;
        let held: i64 = tx
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM holds
                 WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2 AND state = 0
                   AND expires_ms > ?3 AND id != ?4",
            )?
            .query_row(
                params![
                    req.member.as_str(),
                    account_code(req.account),
                    now_ms as i64,
                    req.id.as_str()
                ],
                |r| r.get(0),
            )?;
        if let Err(e) = loyalty::hold_decision(balance, held, req.amount) {
            let available = match e {
                TakeRefusal::Insufficient { available, .. } => available,
                _ => balance.saturating_sub(held),
            };
            return refused(available, e.to_string());
        }
        let expires_ms = now_ms.saturating_add(HOLD_TTL_MS);
        tx.prepare_cached(
            "INSERT OR REPLACE INTO holds
             (id, store, member, account, amount, created_ms, expires_ms, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
        )?
        .execute(params![
            req.id.as_str(),
            store.as_str(),
            req.member.as_str(),
            account_code(req.account),
            req.amount,
            now_ms as i64,
            expires_ms as i64
        ])?;
        tx.commit()?;
        Ok(HoldOutcome::Granted { expires_ms })
    }

    /// HQ: releases `store`'s live hold `id`; `false` if there was none to release.
    pub fn release_hold(&mut self, store: &NodeId, id: &RecordId) -> Result<bool, ReplicaError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE holds SET state = 2 WHERE id = ?1 AND store = ?2 AND state = 0",
            )?
            .execute(params![id.as_str(), store.as_str()])?;
        Ok(n > 0)
    }

    /// Writes change sets of several of this node's streams in one transaction, storing `answer`
    /// under `key` with them: a receipt and the ledger entries that pay for it commit together.
    pub fn commit_local_many(
        &mut self,
        writes: Vec<(Topic, Vec<Op>)>,
        now_ms: u64,
        key: &str,
        answer: &[u8],
    ) -> Result<Vec<Committed>, ReplicaError> {
        self.commit_local_all(writes, now_ms, |tx| {
            tx.prepare_cached("INSERT OR REPLACE INTO pos_answers (key, answer) VALUES (?1, ?2)")?
                .execute(params![key, answer])
                .map(|_| ())
        })
    }

    /// Every member's points entries as `(at_ms, amount)`, by canonical member: what expiry
    /// looks at.
    pub fn points_entries(&self) -> Result<Vec<MemberPoints>, ReplicaError> {
        let mut stmt = self.connection().prepare(
            "SELECT coalesce(a.survivor, l.member) AS owner, l.at_ms, l.amount
             FROM ledger l LEFT JOIN member_aliases a ON a.alias = l.member
             WHERE l.account = 0 ORDER BY owner, l.at_ms, l.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out: Vec<MemberPoints> = Vec::new();
        for row in rows {
            let (owner, at_ms, amount) = row?;
            let Ok(owner) = owner.parse::<MemberId>() else {
                continue;
            };
            match out.last_mut() {
                Some((m, entries)) if *m == owner => entries.push((at_ms, amount)),
                _ => out.push((owner, vec![(at_ms, amount)])),
            }
        }
        Ok(out)
    }

    /// The ledger entries written with `receipt` (what paid it, what it earned, what returns
    /// took back), by any node.
    pub fn receipt_ledger(
        &self,
        receipt: &RecordId,
    ) -> Result<Vec<ReceiptLedgerRow>, ReplicaError> {
        let mut stmt = self.connection().prepare_cached(
            "SELECT member, account, kind, amount FROM ledger WHERE receipt = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![receipt.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u8>(1)?,
                r.get::<_, u8>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (member, account, kind, amount) = row?;
            let corrupt =
                |what: &str| ReplicaError::Corrupt(format!("ledger of {receipt}: {what}"));
            out.push(ReceiptLedgerRow {
                member: member.parse().map_err(|_| corrupt("member id"))?,
                account: account_from_code(account).ok_or_else(|| corrupt("account code"))?,
                kind: LedgerKind::from_code(kind).ok_or_else(|| corrupt("kind code"))?,
                amount,
            });
        }
        Ok(out)
    }

    /// The member a ledger entry of this id was written for, if this replica holds it.
    pub fn ledger_entry_member(&self, id: &RecordId) -> Result<Option<MemberId>, ReplicaError> {
        let member: Option<String> = self
            .connection()
            .prepare_cached("SELECT member FROM ledger WHERE id = ?1")?
            .query_row(params![id.as_str()], |r| r.get(0))
            .optional()?;
        member
            .map(|m| {
                m.parse()
                    .map_err(|_| ReplicaError::Corrupt(format!("member of ledger entry {id}")))
            })
            .transpose()
    }

    /// A member's ledger entries, oldest first, with each account's running balance.
    pub fn statement(&self, member: &MemberId) -> Result<Vec<StatementRow>, ReplicaError> {
        let member = &self.canonical_member(member)?;
        self.ledger_rows(
            "WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) ORDER BY at_ms, id",
            params![member.as_str()],
            true,
        )
    }

    fn ledger_rows(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
        running: bool,
    ) -> Result<Vec<StatementRow>, ReplicaError> {
        let sql = format!(
            "SELECT id, account, kind, amount, origin, receipt, at_ms, hold, offline_allowance,
                    offline_before, note, member
             FROM ledger {filter}"
        );
        let mut stmt = self.connection().prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u8>(1)?,
                r.get::<_, u8>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<i64>>(9)?,
                r.get::<_, String>(10)?,
            ))
        })?;
        let mut balances = [0i64; 2];
        let mut out = Vec::new();
        for row in rows {
            let (id, account, kind, amount, store, receipt, at_ms, hold, allowance, before, note) =
                row?;
            let account = account_from_code(account)
                .ok_or_else(|| ReplicaError::Corrupt(format!("ledger account code {account}")))?;
            let slot = &mut balances[usize::from(account_code(account))];
            *slot = slot.saturating_add(amount);
            let auth = match (hold, allowance, before) {
                (Some(h), _, _) => format!("held {h}"),
                (None, Some(a), Some(b)) => format!("offline (allowance {a}, taken before {b})"),
                _ => String::new(),
            };
            out.push(StatementRow {
                id,
                account,
                kind: LedgerKind::from_code(kind)
                    .map_or("unknown", LedgerKind::as_str)
                    .to_owned(),
                amount,
                balance_after: if running { *slot } else { 0 },
                store,
                receipt,
                at_ms,
                auth,
                note,
            });
        }
        Ok(out)
    }

    /// HQ: every card account whose balance is negative, or on which a store took more offline
    /// than HQ's policy allows now, since the account's last adjustment; with the offline takes
    /// behind it. Sorted by member and account.
    pub fn card_exceptions(&self) -> Result<Vec<CardException>, ReplicaError> {
        let mut stmt = self.connection().prepare(
            "SELECT coalesce(a.survivor, l.member) AS owner, l.account, sum(l.amount)
             FROM ledger l LEFT JOIN member_aliases a ON a.alias = l.member
             GROUP BY owner, l.account
             HAVING sum(l.amount) < 0 OR sum(l.offline_allowance IS NOT NULL) > 0
             ORDER BY owner, l.account",
        )?;
        let candidates: Vec<(String, u8, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (member_text, account, balance) in candidates {
            let Ok(member) = member_text.parse::<MemberId>() else {
                continue;
            };
            let account = account_from_code(account)
                .ok_or_else(|| ReplicaError::Corrupt(format!("ledger account code {account}")))?;
            let settled_at: i64 = self
                .connection()
                .prepare_cached(
                    "SELECT coalesce(max(at_ms), -1) FROM ledger
                     WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2 AND kind = 5",
                )?
                .query_row(params![member.as_str(), account_code(account)], |r| {
                    r.get(0)
                })?;
            let entries = self.ledger_rows(
                "WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2 AND offline_allowance IS NOT NULL
                   AND at_ms > ?3 ORDER BY at_ms, id",
                params![member.as_str(), account_code(account), settled_at],
                false,
            )?;
            let allowance = self.offline_allowance_of(&member)?.of(account);
            let over_policy = self
                .connection()
                .prepare_cached(
                    "SELECT offline_before, amount FROM ledger
                     WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1) AND account = ?2 AND offline_allowance IS NOT NULL
                       AND at_ms > ?3",
                )?
                .query_map(
                    params![member.as_str(), account_code(account), settled_at],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .any(|(before, amount)| {
                    loyalty::is_over_policy(allowance, before, amount.saturating_neg())
                });
            let mut reasons = Vec::new();
            if balance < 0 {
                reasons.push("negative balance");
            }
            if over_policy {
                reasons.push("offline over policy");
            }
            if !reasons.is_empty() {
                out.push(CardException {
                    member: member_text,
                    account,
                    balance,
                    reasons,
                    entries,
                });
            }
        }
        Ok(out)
    }
}
