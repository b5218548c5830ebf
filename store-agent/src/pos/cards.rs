//! Cards and member look-up at the till: which member a card or a phone stands for, issuing a
//! card, reporting one lost (and replacing it).
//!
//! A realtime or batch store reads cards from its replica, so a card HQ froze or another store
//! reported lost is refused here as soon as this store has heard; a hosted store asks HQ, and
//! without HQ it cannot check a card and says so. A member merged into another resolves to the
//! survivor, so every write lands on the member whose balances count it.

use super::*;
use chainsync::ids::CardNo;
use chainsync::model::{Card, CardStatus};
use chainsync::replica::CardInfo;

/// Who is buying: the (canonical) member, and the card they showed.
pub(super) struct Customer {
    pub member: MemberId,
    pub card: Option<CardNo>,
}

/// The customer named by a till's `member` and/or `card`. A card must exist and be active, and
/// belong to `member` when both are given. One trip to the replica thread (a hosted store then
/// asks HQ about the card).
pub(super) async fn resolve(
    state: &PosState,
    member: Option<&str>,
    card: Option<&str>,
) -> Result<Option<Customer>, PosError> {
    let member = parse_member(member)?;
    let card = card.map(|c| parse::<CardNo>("card", c)).transpose()?;
    if member.is_none() && card.is_none() {
        return Ok(None);
    }
    let store = state.store.clone();
    let (named, number) = (member.clone(), card.clone());
    // (hosted, the named member resolved, the card as this replica holds it)
    let (hosted, named, local) = state
        .read(move |r| {
            if is_hosted(r, &store)? {
                // HQ resolves members and holds the cards.
                return Ok((true, named, None));
            }
            let named = named.map(|m| r.canonical_member(&m)).transpose()?;
            let local = number.map(|n| r.card(&n)).transpose()?.flatten();
            Ok((false, named, local))
        })
        .await?;
    let Some(number) = card else {
        return Ok(named.map(|member| Customer { member, card: None }));
    };
    let info = if hosted {
        hq_card(state, &number).await.map_err(|why| {
            PosError::unavailable(format!(
                "a hosted store checks cards at HQ, which is unreachable ({why}): take the member number instead"
            ))
        })?
    } else {
        local
    };
    let info = usable(&number, info)?;
    if let (Some(m), Some(named)) = (&member, &named)
        && *named != info.member
    {
        return Err(PosError::invalid(format!(
            "card {number} belongs to member {}, not {m}",
            info.member
        )));
    }
    Ok(Some(Customer {
        member: info.member,
        card: Some(number),
    }))
}

/// A card as HQ holds it (hosted stores), or why HQ could not say.
async fn hq_card(state: &PosState, number: &CardNo) -> Result<Option<CardInfo>, String> {
    match state.lookup(LookupQuery::Card(number.clone())).await? {
        LookupAnswer::Card(info) => Ok(info),
        _ => Err("HQ answered another question".into()),
    }
}

/// The card if it may be used: known, and active.
fn usable(number: &CardNo, info: Option<CardInfo>) -> Result<CardInfo, PosError> {
    let Some(info) = info else {
        return Err(PosError::not_found(format!("no card {number}")));
    };
    match &info.status {
        CardStatus::Active => Ok(info),
        CardStatus::Replaced { by } => Err(PosError::conflict(format!(
            "card {number} was replaced by card {by}: it cannot be used"
        ))),
        other => Err(PosError::conflict(format!(
            "card {number} is {}: it cannot be used",
            other.as_str()
        ))),
    }
}

/// `GET /v1/cards/{number}`: a card's member and status, whatever the status.
pub(super) async fn get_card(
    State(state): State<PosState>,
    Path(number): Path<String>,
) -> PosResult {
    let number: CardNo = parse("card", &number)?;
    let info = if state.hosted().await? {
        hq_card(&state, &number)
            .await
            .map_err(|why| PosError::unavailable(format!("HQ is unreachable ({why})")))?
    } else {
        let n = number.clone();
        state.read(move |r| Ok(r.card(&n)?)).await?
    };
    match info {
        Some(info) => Ok(Json(info.to_json()).into_response()),
        None => Err(PosError::not_found(format!("no card {number}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    number: String,
    member: String,
}

/// `POST /v1/cards`: a new card for a member (a sign-up, or a second card sharing the member's
/// balances). Issuing the same number to the same member again is a no-op.
pub(super) async fn issue(
    State(state): State<PosState>,
    body: Result<Json<IssueRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let number: CardNo = parse("card", &req.number)?;
    let member: MemberId = parse("member", &req.member)?;
    let (status, answer) = state
        .write(move |r| {
            let member = r.canonical_member(&member)?;
            if let Some(held) = r.card(&number)? {
                if held.member == member {
                    return Ok((StatusCode::OK, held.to_json()));
                }
                return Err(PosError::conflict(format!(
                    "card {number} belongs to member {}",
                    held.member
                )));
            }
            let card = Card {
                number: number.clone(),
                member: member.clone(),
                issued_at_ms: now_ms() as i64,
            };
            r.commit_local(Topic::Members, vec![Op::CardIssue(card)], now_ms())?;
            let info = r.card(&number)?.ok_or_else(|| {
                PosError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the card just issued is missing",
                )
            })?;
            Ok((StatusCode::CREATED, info.to_json()))
        })
        .await?;
    Ok((status, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LostRequest {
    /// A new card number for the same member, issued in the same change set.
    replacement: Option<String>,
}

/// `POST /v1/cards/{number}/lost`: the card is refused from now on, here at once and at every
/// other store as soon as it hears; with a `replacement`, the member's new card carries their
/// balances and history (they belong to the member).
pub(super) async fn report_lost(
    State(state): State<PosState>,
    Path(number): Path<String>,
    body: Result<Json<LostRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let number: CardNo = parse("card", &number)?;
    let replacement = req
        .replacement
        .as_deref()
        .map(|n| parse::<CardNo>("replacement", n))
        .transpose()?;
    if replacement.as_ref() == Some(&number) {
        return Err(PosError::invalid("a card cannot replace itself"));
    }
    if state.hosted().await? {
        return Err(PosError::unavailable(
            "a hosted store reports lost cards at HQ (`hq-server card lost`)",
        ));
    }
    let answer = state
        .write(move |r| {
            let Some(held) = r.card(&number)? else {
                return Err(PosError::not_found(format!("no card {number}")));
            };
            if let Some(new) = &replacement
                && let Some(other) = r.card(new)?
            {
                return Err(PosError::conflict(format!(
                    "card {new} already belongs to member {}",
                    other.member
                )));
            }
            let mut ops = Vec::new();
            let status = match &replacement {
                Some(by) => {
                    ops.push(Op::CardIssue(Card {
                        number: by.clone(),
                        member: held.member.clone(),
                        issued_at_ms: now_ms() as i64,
                    }));
                    CardStatus::Replaced { by: by.clone() }
                }
                None => CardStatus::Lost,
            };
            ops.push(Op::CardStatus {
                number: number.clone(),
                status,
                hlc: Hlc::default(),
            });
            r.commit_local(Topic::Members, ops, now_ms())?;
            let mut answer = json!({ "card": r.card(&number)?.as_ref().map(CardInfo::to_json) });
            if let Some(new) = &replacement {
                answer["replacement"] = json!(r.card(new)?.as_ref().map(CardInfo::to_json));
            }
            Ok(answer)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FindQuery {
    phone: String,
}

/// `GET /v1/members?phone=P`: the members whose phone has these digits, with their cards.
pub(super) async fn find_members(
    State(state): State<PosState>,
    query: Result<Query<FindQuery>, QueryRejection>,
) -> PosResult {
    let Query(q) = query?;
    if q.phone.len() > chainsync::model::TEXT_BYTES_MAX {
        return Err(PosError::invalid("phone is too long"));
    }
    if state.hosted().await? {
        return match state.lookup(LookupQuery::Phone(q.phone)).await {
            Ok(LookupAnswer::Members(members)) => Ok(Json(json!({
                "members": members.iter().map(|m| json!({ "member": m.as_str() })).collect::<Vec<_>>(),
                "source": "hq",
            }))
            .into_response()),
            Ok(_) => Err(PosError::unavailable("HQ answered another question")),
            Err(why) => Err(PosError::unavailable(format!("HQ is unreachable ({why})"))),
        };
    }
    let found = state
        .read(move |r| {
            let mut out = Vec::new();
            for m in r.members_by_phone(&q.phone)? {
                let cards: Vec<Value> = r.cards_of(&m)?.iter().map(CardInfo::to_json).collect();
                let facts = r.member_facts(&m)?;
                out.push(json!({
                    "member": m.as_str(),
                    "name": facts.profile.iter().find(|(f, _)| *f == ProfileField::Name).map(|(_, v)| v.as_str()),
                    "cards": cards,
                }));
            }
            Ok(out)
        })
        .await?;
    Ok(Json(json!({ "members": found, "source": "replica" })).into_response())
}
