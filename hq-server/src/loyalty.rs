//! Members' money at HQ: the loyalty policy as staff write it (the API's JSON and the CLI's
//! file), cards' own offline allowances, adjustments that settle exceptions, statements and the
//! exceptions report; cards (issue, freeze, unfreeze, cancel, lost, replace) and merging
//! members found to be one person. Thin: each checks its input, then becomes ops of HQ's members stream; the
//! rules themselves are `chainsync::loyalty`'s.

use anyhow::{Context, Result, bail};
use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{CardNo, MemberId, RecordId, Sku};
use chainsync::model::{
    Allowance, Card, CardStatus, LedgerAccount, LedgerEntry, LedgerKind, LevelAllowance,
    LevelMultiplier, LoyaltyPolicy,
};
use chainsync::replica::Replica;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// An allowance as staff write it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowanceSpec {
    pub stored_value_cents: i64,
    pub points: i64,
}

impl From<AllowanceSpec> for Allowance {
    fn from(a: AllowanceSpec) -> Self {
        Allowance {
            stored_value_cents: a.stored_value_cents,
            points: a.points,
        }
    }
}

/// The loyalty policy as staff write it:
///
/// ```json
/// { "points_per_unit": 1, "point_value_cents": 1,
///   "level_multipliers": { "gold": 200 },
///   "excluded_skus": ["tobacco20"], "excluded_categories": ["giftcards"],
///   "offline": { "stored_value_cents": 1000, "points": 500 },
///   "level_offline": { "gold": { "stored_value_cents": 5000, "points": 2000 } } }
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// Points earned per whole currency unit of eligible spend.
    pub points_per_unit: u32,
    /// What one point pays at the till, in cents (0: points are not a payment).
    pub point_value_cents: u32,
    /// Percent by member level (200: double points).
    pub level_multipliers: BTreeMap<String, u32>,
    pub excluded_skus: Vec<String>,
    pub excluded_categories: Vec<String>,
    /// What a store may take from a card while HQ is unreachable, unless the card or its level
    /// has its own.
    pub offline: AllowanceSpec,
    pub level_offline: BTreeMap<String, AllowanceSpec>,
    /// Points not used within this many days expire (0: never).
    pub points_expire_days: u32,
}

/// The policy a spec describes, checked.
pub fn build_policy(spec: PolicySpec) -> Result<LoyaltyPolicy> {
    let excluded_skus = spec
        .excluded_skus
        .iter()
        .map(|s| {
            s.parse::<Sku>()
                .with_context(|| format!("excluded sku `{s}`"))
        })
        .collect::<Result<_>>()?;
    let policy = LoyaltyPolicy {
        points_per_unit: spec.points_per_unit,
        level_multipliers: spec
            .level_multipliers
            .into_iter()
            .map(|(level, percent)| LevelMultiplier { level, percent })
            .collect(),
        excluded_skus,
        excluded_categories: spec.excluded_categories,
        point_value_cents: spec.point_value_cents,
        offline: spec.offline.into(),
        level_offline: spec
            .level_offline
            .into_iter()
            .map(|(level, a)| LevelAllowance {
                level,
                allowance: a.into(),
            })
            .collect(),
        points_expire_days: spec.points_expire_days,
    };
    if let Err(e) = policy.check_bounds() {
        bail!("loyalty policy: {e}");
    }
    Ok(policy)
}

/// A policy as the API and the CLI show it (the spec's shape).
pub fn policy_json(p: &LoyaltyPolicy) -> Value {
    let allowance =
        |a: &Allowance| json!({ "stored_value_cents": a.stored_value_cents, "points": a.points });
    json!({
        "points_per_unit": p.points_per_unit,
        "point_value_cents": p.point_value_cents,
        "level_multipliers": p.level_multipliers.iter().map(|m| (m.level.clone(), json!(m.percent))).collect::<serde_json::Map<_, _>>(),
        "excluded_skus": p.excluded_skus.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "excluded_categories": p.excluded_categories,
        "offline": allowance(&p.offline),
        "level_offline": p.level_offline.iter().map(|l| (l.level.clone(), allowance(&l.allowance))).collect::<serde_json::Map<_, _>>(),
        "points_expire_days": p.points_expire_days,
    })
}

/// The account named `text` (`stored-value`/`stored_value` or `points`).
pub fn parse_account(text: &str) -> Result<LedgerAccount> {
    match text {
        "stored-value" | "stored_value" => Ok(LedgerAccount::StoredValue),
        "points" => Ok(LedgerAccount::Points),
        other => bail!("account `{other}` is neither stored_value nor points"),
    }
}

/// An adjustment: HQ's correction of a card, e.g. settling an overdraft. Its id comes from the
/// caller's number (`hq-A{no}`), so asking again is a no-op; `None` if it was already made.
pub fn adjustment(
    replica: &Replica,
    no: &str,
    member: &MemberId,
    account: LedgerAccount,
    amount: i64,
    note: &str,
    now_ms: i64,
) -> Result<Option<Op>> {
    let id: RecordId = format!("hq-A{no}")
        .parse()
        .with_context(|| format!("adjustment number `{no}`"))?;
    if note.trim().is_empty() {
        bail!("an adjustment needs a note saying why");
    }
    match replica.ledger_entry_member(&id)? {
        None => {}
        Some(m) if replica.canonical_member(&m)? == replica.canonical_member(member)? => {
            return Ok(None);
        }
        // An id already used for another member would be dropped on insert: say so instead.
        Some(m) => bail!("adjustment number `{no}` was already used for member {m}"),
    }
    let entry = LedgerEntry {
        id,
        member: member.clone(),
        account,
        kind: LedgerKind::Adjusted,
        amount,
        receipt: None,
        at_ms: now_ms,
        auth: None,
        tender: None,
        note: note.to_owned(),
    };
    if let Err(e) = entry.check_bounds() {
        bail!("adjustment: {e}");
    }
    Ok(Some(Op::Ledger(entry)))
}

/// The card exceptions as report rows, one per offline take behind them (or one with empty
/// entry cells when none is, e.g. points taken back after they were spent). Column 1 is the
/// store, as in every report.
pub fn exception_rows(replica: &Replica) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    let header = vec![
        "member", "store", "account", "balance", "reasons", "entry", "amount", "receipt", "at_ms",
        "auth",
    ];
    let mut rows = Vec::new();
    for x in replica.card_exceptions()? {
        let account = x.account.as_str();
        let reasons = x.reasons.join("; ");
        if x.entries.is_empty() {
            rows.push(vec![
                x.member.clone(),
                String::new(),
                account.into(),
                x.balance.to_string(),
                reasons.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for e in &x.entries {
            rows.push(vec![
                x.member.clone(),
                e.store.clone(),
                account.into(),
                x.balance.to_string(),
                reasons.clone(),
                e.id.clone(),
                e.amount.to_string(),
                e.receipt.clone().unwrap_or_default(),
                e.at_ms.to_string(),
                e.auth.clone(),
            ]);
        }
    }
    Ok((header, rows))
}

/// A statement as JSON.
pub fn statement_json(replica: &Replica, member: &MemberId) -> Result<Value> {
    let rows = replica.statement(member)?;
    Ok(json!({
        "member": member.as_str(),
        "points": replica.balance(member, LedgerAccount::Points)?,
        "stored_value_cents": replica.balance(member, LedgerAccount::StoredValue)?,
        "entries": rows.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
    }))
}

/// The ops that set card `number`'s status to `status` (`active`, `frozen`, `cancelled`,
/// `lost`, or `replaced` with `by`, a new card issued to the same member in the same change set).
pub fn card_status_ops(
    replica: &Replica,
    number: &CardNo,
    status: &str,
    by: Option<&str>,
    now_ms: i64,
) -> Result<Vec<Op>> {
    let Some(card) = replica.card(number)? else {
        bail!("no card {number}");
    };
    let mut ops = Vec::new();
    let status = match (status, by) {
        ("active", None) => CardStatus::Active,
        ("frozen", None) => CardStatus::Frozen,
        ("cancelled", None) => CardStatus::Cancelled,
        ("lost", None) => CardStatus::Lost,
        ("replaced", Some(by)) => {
            let by: CardNo = by.parse().with_context(|| format!("card `{by}`"))?;
            if by == *number {
                bail!("a card cannot replace itself");
            }
            if let Some(other) = replica.card(&by)? {
                bail!("card {by} already belongs to member {}", other.member);
            }
            ops.push(Op::CardIssue(Card {
                number: by.clone(),
                member: card.member.clone(),
                issued_at_ms: now_ms,
            }));
            CardStatus::Replaced { by }
        }
        ("replaced", None) => bail!("a replacement needs the new card's number"),
        (other, _) => bail!(
            "card status `{other}` is none of active, frozen, cancelled, lost, replaced (with its new card)"
        ),
    };
    if status.rank() < card.status.rank() {
        bail!(
            "card {number} is {}: that is final, it cannot become {}",
            card.status.as_str(),
            status.as_str()
        );
    }
    ops.push(Op::CardStatus {
        number: number.clone(),
        status,
        hlc: Hlc::default(),
    });
    Ok(ops)
}

/// The op that issues card `number` to `member`; `None` if it is already theirs.
pub fn card_issue_op(
    replica: &Replica,
    number: &CardNo,
    member: &MemberId,
    now_ms: i64,
) -> Result<Option<Op>> {
    let member = replica.canonical_member(member)?;
    if let Some(card) = replica.card(number)? {
        if card.member == member {
            return Ok(None);
        }
        bail!("card {number} belongs to member {}", card.member);
    }
    Ok(Some(Op::CardIssue(Card {
        number: number.clone(),
        member,
        issued_at_ms: now_ms,
    })))
}

/// The op that merges `alias` into `survivor`, after checking both are members HQ knows and
/// neither was merged away already.
pub fn merge_op(replica: &Replica, alias: &MemberId, survivor: &MemberId) -> Result<Op> {
    if alias == survivor {
        bail!("a member cannot be merged into itself");
    }
    for m in [alias, survivor] {
        if replica.canonical_member(m)? != *m {
            bail!(
                "member {m} was merged into {} already",
                replica.canonical_member(m)?
            );
        }
        if !replica.member_facts(m)?.known {
            bail!("no member {m} at HQ");
        }
    }
    Ok(Op::MemberMerge {
        alias: alias.clone(),
        survivor: survivor.clone(),
    })
}

/// Members sharing a phone, as report rows: `phone,store,member,name` (the store that wrote
/// the phone; column 1, as in every report).
pub fn duplicate_rows(replica: &Replica) -> Result<(Vec<&'static str>, Vec<Vec<String>>)> {
    let header = vec!["phone", "store", "member", "name"];
    let mut rows = Vec::new();
    for d in replica.possible_duplicates()? {
        for m in &d.members {
            let profile = replica.member_profile(m)?;
            let field = |f: chainsync::model::ProfileField| profile.get(&f).cloned();
            let phone = field(chainsync::model::ProfileField::Phone);
            rows.push(vec![
                d.phone_digits.clone(),
                phone.map(|p| p.node.to_string()).unwrap_or_default(),
                m.to_string(),
                field(chainsync::model::ProfileField::Name)
                    .map(|n| n.value)
                    .unwrap_or_default(),
            ]);
        }
    }
    Ok((header, rows))
}

/// How often a running HQ expires points.
pub const EXPIRY_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// The expiry entries HQ's policy calls for at `at_ms` (none when points never expire), in
/// change sets of at most `chunk` ops. Each entry's id names the day and the member, so running
/// it twice a day, or from two processes, writes each expiry once.
pub fn expiry_ops(replica: &Replica, at_ms: i64, chunk: usize) -> Result<Vec<Vec<Op>>> {
    let days = replica.loyalty_policy()?.points_expire_days;
    if days == 0 {
        return Ok(Vec::new());
    }
    let cutoff = at_ms.saturating_sub(i64::from(days).saturating_mul(86_400_000));
    let day = at_ms.div_euclid(86_400_000);
    let mut ops = Vec::new();
    for (member, entries) in replica.points_entries()? {
        let expiring = chainsync::loyalty::points_to_expire(&entries, cutoff);
        if expiring > 0 {
            ops.push(Op::Ledger(LedgerEntry {
                id: format!("hq-X{day}-{member}")
                    .parse()
                    .with_context(|| format!("expiry id for {member}"))?,
                member,
                account: LedgerAccount::Points,
                kind: LedgerKind::Expired,
                amount: -expiring,
                receipt: None,
                at_ms,
                auth: None,
                tender: None,
                note: format!("points added before {cutoff} ms and not used within {days} days"),
            }));
        }
    }
    Ok(ops.chunks(chunk.max(1)).map(<[Op]>::to_vec).collect())
}

/// Writes what [`expiry_ops`] says into HQ's members stream; returns the entries written.
pub fn expire_points(replica: &mut Replica, at_ms: i64) -> Result<usize> {
    let mut written = 0;
    for ops in expiry_ops(replica, at_ms, 5_000)? {
        written += ops.len();
        replica.commit_local(
            chainsync::ids::Topic::Members,
            ops,
            chainsync::transport::now_ms(),
        )?;
    }
    Ok(written)
}
