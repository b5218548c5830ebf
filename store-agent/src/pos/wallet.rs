//! Members' money at the till: taking stored value and points as payment, earning points with a
//! sale, giving them back on a void or a return, top-ups, and statements.
//!
//! How a take is authorised (the rules are [`chainsync::loyalty`]'s):
//! 1. connected to HQ: HQ holds the amount first ([`hold_takes`], a `Hold` lookup keyed by the
//!    till's receipt or entry number, so a retry after a crash finds the same hold); the
//!    ledger entry written with the receipt captures it; a sale that then fails releases it;
//! 2. HQ unreachable (or silent past the lookup timeout): the store decides alone, inside the
//!    write's transaction on the replica thread ([`authorise_offline`]), within the card's
//!    offline allowance less what it took offline and HQ has not acknowledged, and within the
//!    balance it knows. A hosted store has no balance of its own to trust and refuses.
//!
//! Invariants: a take, the points earned and the receipt are one transaction over the sales and
//! members streams ([`Replica::commit_local_many`]); every entry id derives from the till's key,
//! so a retried write can never post twice.

use super::*;
use chainsync::ids::CardNo;
use chainsync::loyalty::{self, EarningLine};
use chainsync::replica::{HoldOutcome, HoldRequest};

/// One take from a card on a receipt: the account, the amount in the account's unit (cents or
/// points), and the payment's cents.
#[derive(Debug, Clone)]
pub(super) struct Take {
    pub account: LedgerAccount,
    pub units: i64,
    pub cents: i64,
    /// Granted by HQ, when it was reachable.
    pub hold: Option<RecordId>,
}

/// The stored-value and points payments of a sale as takes (points at the policy's value).
pub(super) fn takes(
    payments: &[SalePayment],
    policy: &chainsync::model::LoyaltyPolicy,
) -> Result<Vec<Take>, PosError> {
    let mut sv = 0i64;
    let mut points_cents = 0i64;
    for p in payments {
        let slot = match p.method {
            Method::StoredValue => &mut sv,
            Method::Points => &mut points_cents,
            _ => continue,
        };
        *slot = slot
            .checked_add(p.amount_cents)
            .ok_or_else(|| PosError::invalid("payments overflow"))?;
    }
    let mut out = Vec::new();
    if sv > 0 {
        out.push(Take {
            account: LedgerAccount::StoredValue,
            units: sv,
            cents: sv,
            hold: None,
        });
    }
    if points_cents > 0 {
        let units = loyalty::points_for_cents(policy, points_cents).map_err(PosError::invalid)?;
        out.push(Take {
            account: LedgerAccount::Points,
            units,
            cents: points_cents,
            hold: None,
        });
    }
    Ok(out)
}

fn account_letter(account: LedgerAccount) -> &'static str {
    match account {
        LedgerAccount::StoredValue => "S",
        LedgerAccount::Points => "R",
    }
}

/// Asks HQ to hold every take, when connected. A refusal releases what was already held and
/// answers 409 with HQ's reason; a take HQ could not be asked about stays unheld (offline).
pub(super) async fn hold_takes(
    state: &PosState,
    key: &RecordId,
    member: &MemberId,
    card: Option<&CardNo>,
    takes: &mut [Take],
) -> Result<(), PosError> {
    for i in 0..takes.len() {
        if !state.link.borrow().connected {
            return Ok(());
        }
        let id = parse::<RecordId>(
            "hold id",
            &format!("{key}-H{}", account_letter(takes[i].account)),
        )?;
        let request = HoldRequest {
            id: id.clone(),
            member: member.clone(),
            account: takes[i].account,
            amount: takes[i].units,
            card: card.cloned(),
        };
        match state.lookup(LookupQuery::Hold(request)).await {
            Ok(LookupAnswer::Hold(HoldOutcome::Granted { .. })) => takes[i].hold = Some(id),
            Ok(LookupAnswer::Hold(HoldOutcome::Refused { reason, .. })) => {
                release(state, takes).await;
                return Err(PosError::conflict(format!("HQ refused the hold: {reason}")));
            }
            Ok(_) => {
                release(state, takes).await;
                return Err(PosError::unavailable("HQ answered another question"));
            }
            Err(why) => {
                // Unknown whether HQ held it: a hold that is never captured expires by itself.
                tracing::info!("hold {id} not answered ({why}): deciding offline");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Releases the takes' holds at HQ (a sale refused after they were granted), best effort: a
/// hold that cannot be released expires by itself.
pub(super) async fn release(state: &PosState, takes: &mut [Take]) {
    for t in takes.iter_mut() {
        if let Some(id) = t.hold.take()
            && let Err(why) = state.lookup(LookupQuery::Release(id.clone())).await
        {
            tracing::info!("hold {id} not released ({why}); it expires by itself");
        }
    }
}

/// The authorisation of a take HQ did not hold: the store's own decision within the card's
/// offline allowance. Runs on the replica thread, so two tills of one store count each other.
fn authorise_offline(
    r: &Replica,
    facts: &Facts,
    member: &MemberFacts,
    take: &Take,
) -> Result<SpendAuth, PosError> {
    if facts.source != Source::Replica {
        return Err(PosError::unavailable(
            "taking from a card at a hosted store needs HQ, which is unreachable",
        ));
    }
    let known = r.balance(&member.member, take.account)?;
    let before = r.offline_taken_unacked(&member.member, take.account)?;
    loyalty::offline_decision(known, member.allowance.of(take.account), before, take.units)
        .map_err(|e| PosError::conflict(e.to_string()))
}

/// The ledger entries a sale writes with its receipt: each take (held or offline) and the
/// points it earns. Fails (nothing written) when a take is not allowed.
pub(super) fn sale_entries(
    r: &Replica,
    facts: &Facts,
    receipt: &Receipt,
    takes: &[Take],
) -> Result<Vec<LedgerEntry>, PosError> {
    let Some(member_id) = &receipt.member else {
        return Ok(Vec::new());
    };
    let Some(member) = facts.member.as_ref() else {
        if takes.is_empty() {
            return Ok(Vec::new());
        }
        return Err(PosError::unavailable(format!(
            "HQ is unreachable and member {member_id} was never looked up at this store"
        )));
    };
    let mut out = Vec::new();
    for take in takes {
        let auth = match &take.hold {
            Some(hold) => SpendAuth::Held(hold.clone()),
            None => authorise_offline(r, facts, member, take)?,
        };
        let kind = match take.account {
            LedgerAccount::StoredValue => LedgerKind::Spent,
            LedgerAccount::Points => LedgerKind::Redeemed,
        };
        out.push(entry(
            &format!("{}-{}", receipt.id, account_letter(take.account)),
            member_id,
            take.account,
            kind,
            -take.units,
            Some(&receipt.id),
            Some(auth),
        )?);
    }
    let level = profile_field(member, ProfileField::Level);
    let cats = categories(facts, r, &receipt.lines);
    let ctx = context(facts, Some(member_id), facts.t_ms);
    let bonuses: Vec<u32> = receipt
        .lines
        .iter()
        .zip(&cats)
        .map(|(l, category)| {
            facts
                .skus
                .get(&l.sku)
                .map_or(0, |f| checkout::bonus_points_percent(f, category, &ctx))
        })
        .collect();
    let lines = earning_lines(&receipt.lines, &cats, &bonuses);
    let paid_with_points = takes
        .iter()
        .filter(|t| t.account == LedgerAccount::Points)
        .map(|t| t.cents)
        .sum();
    let earned = loyalty::points_earned(&member.policy, level, &lines, paid_with_points);
    if earned > 0 {
        out.push(entry(
            &format!("{}-E", receipt.id),
            member_id,
            LedgerAccount::Points,
            LedgerKind::Earned,
            earned,
            Some(&receipt.id),
            None,
        )?);
    }
    Ok(out)
}

/// What a void gives back: every take of the receipt refunded, the points it earned taken back.
pub(super) fn void_entries(r: &Replica, void: &Void) -> Result<Vec<LedgerEntry>, PosError> {
    let mut out = Vec::new();
    for (i, row) in r.receipt_ledger(&void.original)?.into_iter().enumerate() {
        let kind = match row.kind {
            LedgerKind::Spent | LedgerKind::Redeemed => LedgerKind::Refunded,
            LedgerKind::Earned => LedgerKind::TakenBack,
            _ => continue,
        };
        out.push(entry(
            &format!("{}-{i}", void.id),
            &row.member,
            row.account,
            kind,
            row.amount.saturating_neg(),
            Some(&void.original),
            None,
        )?);
    }
    Ok(out)
}

/// What a checked return does to the original's member: the points the returned units earned
/// are taken back; a refund to stored value goes onto the card.
pub(super) fn return_entries(
    r: &Replica,
    facts: &Facts,
    ret: &ReturnRecord,
    original: &chainsync::replica::OriginalReceipt,
    earlier: &[ReceiptLine],
) -> Result<Vec<LedgerEntry>, PosError> {
    let Some(member) = original
        .member
        .as_deref()
        .and_then(|m| m.parse::<MemberId>().ok())
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let refund_to_card: i64 = ret
        .refunds
        .iter()
        .filter(|p| p.method == PaymentMethod::StoredValue)
        .map(|p| p.amount_cents)
        .sum();
    if refund_to_card > 0 {
        out.push(entry(
            &format!("{}-S", ret.id),
            &member,
            LedgerAccount::StoredValue,
            LedgerKind::Refunded,
            refund_to_card,
            Some(&ret.original),
            None,
        )?);
    }
    let earned: i64 = r
        .receipt_ledger(&ret.original)?
        .iter()
        .filter(|e| e.kind == LedgerKind::Earned)
        .map(|e| e.amount)
        .sum();
    if earned > 0 {
        let policy = match facts.member.as_ref() {
            Some(m) => m.policy.clone(),
            None => r.loyalty_policy()?,
        };
        let eligible = |lines: &[ReceiptLine]| {
            let cats = categories(facts, r, lines);
            loyalty::eligible_cents(&policy, &earning_lines(lines, &cats, &[]))
        };
        let back = loyalty::points_taken_back(
            earned,
            eligible(&original.lines),
            eligible(earlier),
            eligible(&ret.lines),
        );
        if back > 0 {
            out.push(entry(
                &format!("{}-P", ret.id),
                &member,
                LedgerAccount::Points,
                LedgerKind::TakenBack,
                -back,
                Some(&ret.original),
                None,
            )?);
        }
    }
    Ok(out)
}

fn profile_field(member: &MemberFacts, field: ProfileField) -> Option<&str> {
    member
        .profile
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, v)| v.as_str())
}

/// The categories of `lines`' skus: from the facts, else the replica's catalog, else none.
fn categories(facts: &Facts, r: &Replica, lines: &[ReceiptLine]) -> Vec<String> {
    lines
        .iter()
        .map(
            |l| match facts.skus.get(&l.sku).and_then(|f| f.product.as_ref()) {
                Some(p) => p.category.clone(),
                None => r
                    .product(&l.sku)
                    .ok()
                    .flatten()
                    .map(|p| p.category)
                    .unwrap_or_default(),
            },
        )
        .collect()
}

/// `lines` as points see them, with each line's bonus-points percent (`bonuses`; missing: 0).
fn earning_lines<'a>(
    lines: &'a [ReceiptLine],
    categories: &'a [String],
    bonuses: &[u32],
) -> Vec<EarningLine<'a>> {
    lines
        .iter()
        .zip(categories)
        .enumerate()
        .map(|(i, (l, category))| EarningLine {
            sku: &l.sku,
            category,
            amount_cents: l.amount_cents(),
            bonus_percent: bonuses.get(i).copied().unwrap_or(0),
        })
        .collect()
}

fn entry(
    id: &str,
    member: &MemberId,
    account: LedgerAccount,
    kind: LedgerKind,
    amount: i64,
    receipt: Option<&RecordId>,
    auth: Option<SpendAuth>,
) -> Result<LedgerEntry, PosError> {
    Ok(LedgerEntry {
        id: parse("ledger id", id)?,
        member: member.clone(),
        account,
        kind,
        amount,
        receipt: receipt.cloned(),
        at_ms: now_ms() as i64,
        auth,
        tender: None,
        note: String::new(),
    })
}

/// The ledger part of a POS answer.
pub(super) fn entries_json(entries: &[LedgerEntry]) -> Value {
    json!(entries
        .iter()
        .map(|e| json!({
            "id": e.id.as_str(),
            "member": e.member.as_str(),
            "account": e.account.as_str(),
            "kind": e.kind.as_str(),
            "amount": e.amount,
            "auth": match &e.auth {
                Some(SpendAuth::Held(h)) => json!({ "held": h.as_str() }),
                Some(SpendAuth::Offline { allowance, spent_before }) => json!({ "offline": { "allowance": allowance, "spent_before": spent_before } }),
                None => Value::Null,
            },
        }))
        .collect::<Vec<_>>())
}

// ------------------------------------------------------------------------- ledger calls

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerRequest {
    /// The till's own number for this call: a retry gets the first answer and posts nothing.
    entry_no: String,
    /// Positive adds (a top-up), negative takes (a spend or a redemption outside a sale).
    change: i64,
    /// A top-up: the money that paid for it (`cash` or `card`).
    tender: Option<Method>,
    /// The till's reference.
    #[serde(default)]
    note: String,
    /// The card presented, checked like at a sale.
    card: Option<String>,
}

/// `POST /v1/members/{id}/points`: redeem points outside a sale (a gift from the catalog).
/// Points are earned only by sales, under HQ's policy; HQ adjusts by hand.
pub(super) async fn points(
    State(state): State<PosState>,
    Path(id): Path<String>,
    body: Result<Json<LedgerRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    if req.change > 0 {
        return Err(PosError::invalid(
            "a till does not give points: sales earn them under HQ's policy, and HQ adjusts",
        ));
    }
    ledger(state, id, req, LedgerAccount::Points).await
}

/// `POST /v1/members/{id}/stored-value`: a top-up paid in cash or by card, or a spend outside
/// a sale.
pub(super) async fn stored_value(
    State(state): State<PosState>,
    Path(id): Path<String>,
    body: Result<Json<LedgerRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    ledger(state, id, req, LedgerAccount::StoredValue).await
}

async fn ledger(
    state: PosState,
    id: String,
    req: LedgerRequest,
    account: LedgerAccount,
) -> PosResult {
    let customer = super::cards::resolve(&state, Some(&id), req.card.as_deref()).await?;
    let (member, card) = match customer {
        Some(c) => (c.member, c.card),
        None => (parse::<MemberId>("member", &id)?, None),
    };
    if req.change == 0 {
        return Err(PosError::invalid("change must not be zero"));
    }
    chainsync::model::check_amount("change", req.change).map_err(PosError::invalid)?;
    if req.note.len() > chainsync::model::TEXT_BYTES_MAX {
        return Err(PosError::invalid("note is too long"));
    }
    let tender = match (req.change > 0, req.tender) {
        (true, Some(m @ (Method::Cash | Method::Card))) => Some(PaymentMethod::from(m)),
        (true, _) => {
            return Err(PosError::invalid(
                "a top-up needs the `tender` that paid for it: `cash` or `card`",
            ));
        }
        (false, None) => None,
        (false, Some(_)) => return Err(PosError::invalid("only a top-up takes a tender")),
    };
    let store = state.store.clone();
    let entry_id: RecordId = parse("entry_no", &format!("{store}-L{}", req.entry_no))?;
    let key = format!("ledger:{entry_id}");
    let key_again = key.clone();
    if let Some(answer) = state.read(move |r| Ok(r.pos_answer(&key_again)?)).await? {
        return Ok((StatusCode::OK, Json(repeated(&answer)?)).into_response());
    }
    let mut takes = Vec::new();
    if req.change < 0 {
        takes.push(Take {
            account,
            units: req.change.saturating_neg(),
            cents: 0,
            hold: None,
        });
        hold_takes(&state, &entry_id, &member, card.as_ref(), &mut takes).await?;
    }
    let held = takes.clone();
    let written = state
        .write_with_facts(Vec::new(), Some(member.clone()), move |r, facts| {
            if let Some(answer) = r.pos_answer(&key)? {
                return Ok((StatusCode::OK, repeated(&answer)?));
            }
            let facts_member = facts
                .member
                .clone()
                .unwrap_or_else(|| MemberFacts::unknown(member.clone()));
            let (kind, auth) = match takes.first() {
                None => (LedgerKind::ToppedUp, None),
                Some(take) => {
                    let auth = match &take.hold {
                        Some(hold) => SpendAuth::Held(hold.clone()),
                        None => authorise_offline(r, &facts, &facts_member, take)?,
                    };
                    let kind = match account {
                        LedgerAccount::StoredValue => LedgerKind::Spent,
                        LedgerAccount::Points => LedgerKind::Redeemed,
                    };
                    (kind, Some(auth))
                }
            };
            let mut e = entry(
                entry_id.as_str(),
                &member,
                account,
                kind,
                req.change,
                None,
                auth,
            )?;
            e.tender = tender;
            e.note = req.note;
            let entries = [e];
            // What the store knows after this entry: its replica's sum, or HQ's (hosted).
            let before = match (facts.source, account) {
                (Source::Replica, _) => r.balance(&member, account)?,
                (_, LedgerAccount::Points) => facts_member.points,
                (_, LedgerAccount::StoredValue) => facts_member.stored_value_cents,
            };
            let balance = before.saturating_add(req.change);
            let answer = json!({
                "member": member.as_str(),
                "account": account.as_str(),
                "balance": balance,
                "member_ledger": entries_json(&entries),
                "source": facts.source.to_json(),
            });
            r.commit_local_many(
                vec![(
                    Topic::Members,
                    entries.into_iter().map(Op::Ledger).collect(),
                )],
                now_ms(),
                &key,
                &answer_bytes(&answer)?,
            )?;
            Ok((StatusCode::CREATED, answer))
        })
        .await;
    match written {
        Ok((status, answer)) => Ok((status, Json(answer)).into_response()),
        Err(e) => {
            let mut held = held;
            release(&state, &mut held).await;
            Err(e)
        }
    }
}

/// `GET /v1/members/{id}/statement`: every ledger entry this store holds for the member,
/// oldest first, with running balances (realtime and batch stores hold every node's entries).
pub(super) async fn statement(State(state): State<PosState>, Path(id): Path<String>) -> PosResult {
    let member: MemberId = parse("member", &id)?;
    if state.hosted().await? {
        return Err(PosError::unavailable(
            "a hosted store keeps no members' ledgers: ask HQ for the statement",
        ));
    }
    let rows = state.read(move |r| Ok(r.statement(&member)?)).await?;
    let entries: Vec<Value> = rows.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({ "entries": entries })).into_response())
}
