//! The POS API: HTTP + JSON on loopback, for the tills of this store.
//!
//! Every request carries `Authorization: Bearer <pos_token>` (from `agent.toml`). Writes are
//! validated here (unknown sku, non-positive quantity, payments that do not add up …: 422 with a
//! message naming the problem), then committed as a change set of the store's own stream; the
//! answer (`201`) comes only after that commit, so an acknowledged sale survives a crash. Nothing
//! is half-applied: a request is one change set or nothing.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/sales` | record a sale (`receipt_no` makes retries idempotent) |
//! | `POST /v1/returns` | goods brought back (any store's receipt) |
//! | `POST /v1/voids` | cancel one of this store's receipts |
//! | `GET /v1/prices/{sku}?member=M` | price to charge now, with the promotions that apply |
//! | `GET /v1/members/{id}` | profile and balances |
//! | `PUT /v1/members/{id}` | sign up or edit |
//! | `POST /v1/members/{id}/points` | earn (+) or redeem (−) points |
//! | `POST /v1/members/{id}/stored-value` | top up (+) or spend (−) |
//! | `POST /v1/stock/received`, `/v1/stock/counts`, `/v1/stock/transfers` | stock movements |
//! | `GET /v1/stock`, `GET /v1/stock/{sku}` | local stock |
//! | `GET /v1/sync` | link to HQ: connected, last exchange, outbox backlog by topic |
//! | `POST /v1/sync/now` | exchange everything pending now (batch mode); answers when done |

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, RecordId, RegionId, Sku, StreamId, Topic};
use chainsync::merge::{self, PromotionContext};
use chainsync::model::{
    LedgerAccount, LedgerEntry, LedgerKind, MemberEdit, MovementKind, Payment, PaymentMethod,
    PriceKind, ProfileField, Receipt, ReceiptLine, ReturnRecord, StockMovement, Void,
};
use chainsync::replica::{Replica, ReplicaError};
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::leaf::LinkStatus;
use chainsync::transport::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// Most lines on one receipt: a generous till basket; beyond that it is a data error.
pub const RECEIPT_LINES_MAX: usize = 500;
/// Largest request body accepted.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;

/// What every handler needs.
#[derive(Clone)]
pub struct PosState {
    pub replica: ReplicaHandle,
    pub local_commits: Arc<Notify>,
    pub link: watch::Receiver<LinkStatus>,
    pub store: NodeId,
    pub region: RegionId,
    pub token: Arc<str>,
    /// Asks the link to exchange everything now.
    pub sync_requests: tokio::sync::mpsc::Sender<chainsync::transport::leaf::SyncRequest>,
}

/// The router of the POS API.
pub fn router(state: PosState) -> Router {
    Router::new()
        .route("/v1/sales", post(record_sale))
        .route("/v1/returns", post(record_return))
        .route("/v1/voids", post(record_void))
        .route("/v1/prices/{sku}", get(price))
        .route("/v1/members/{id}", get(member).put(edit_member))
        .route("/v1/members/{id}/points", post(points))
        .route("/v1/members/{id}/stored-value", post(stored_value))
        .route("/v1/stock", get(stock_all))
        .route("/v1/stock/{sku}", get(stock_one))
        .route("/v1/stock/received", post(stock_received))
        .route("/v1/stock/counts", post(stock_count))
        .route("/v1/stock/transfers", post(stock_transfer))
        .route("/v1/sync", get(sync_status))
        .route("/v1/sync/now", post(sync_now))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(state)
}

/// An error answer: status and a message naming the problem.
#[derive(Debug)]
pub struct PosError {
    status: StatusCode,
    message: String,
}

impl PosError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
}

impl IntoResponse for PosError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ReplicaError> for PosError {
    fn from(e: ReplicaError) -> Self {
        tracing::error!("replica: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {e}"))
    }
}

impl From<chainsync::transport::TransportError> for PosError {
    fn from(e: chainsync::transport::TransportError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<JsonRejection> for PosError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    }
}

impl From<QueryRejection> for PosError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text()))
    }
}

type PosResult = Result<Response, PosError>;

async fn require_token(
    State(state): State<PosState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(&*state.token) {
        return PosError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see pos_token in agent.toml)",
        )
        .into_response();
    }
    next.run(request).await
}

fn parse<T: std::str::FromStr<Err = chainsync::ids::IdError>>(
    what: &str,
    text: &str,
) -> Result<T, PosError> {
    text.parse()
        .map_err(|e| PosError::invalid(format!("{what}: {e}")))
}

impl PosState {
    /// Runs a write on the replica thread and, if it committed, wakes the link to push it.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> Result<R, PosError> + Send + 'static,
    ) -> Result<R, PosError> {
        let result = self.replica.call(f).await??;
        self.local_commits.notify_one();
        Ok(result)
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> Result<R, PosError> + Send + 'static,
    ) -> Result<R, PosError> {
        self.replica.call(f).await?
    }
}

/// The next seq of this store's stream of `topic`: used to mint record ids that are unique
/// because the replica thread runs one write at a time.
fn next_seq(r: &Replica, topic: Topic) -> Result<u64, PosError> {
    Ok(r.head(&StreamId::new(r.node().clone(), topic))?.seq + 1)
}

fn minted(store: &NodeId, letter: &str, n: u64) -> Result<RecordId, PosError> {
    RecordId::new(format!("{store}-{letter}{n}")).map_err(|e| PosError::invalid(e.to_string()))
}

// ------------------------------------------------------------------------- sales

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleLine {
    sku: String,
    qty: i64,
    /// Defaults to the effective price (member price for a member).
    unit_price_cents: Option<i64>,
    #[serde(default)]
    discount_cents: i64,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Method {
    Cash,
    Card,
    StoredValue,
    Points,
    Voucher,
}

impl From<Method> for PaymentMethod {
    fn from(m: Method) -> Self {
        match m {
            Method::Cash => PaymentMethod::Cash,
            Method::Card => PaymentMethod::Card,
            Method::StoredValue => PaymentMethod::StoredValue,
            Method::Points => PaymentMethod::Points,
            Method::Voucher => PaymentMethod::Voucher,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SalePayment {
    method: Method,
    amount_cents: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleRequest {
    /// The till's own number for the receipt; a retry with the same number records nothing new.
    receipt_no: Option<String>,
    member: Option<String>,
    lines: Vec<SaleLine>,
    #[serde(default)]
    payments: Vec<SalePayment>,
    #[serde(default)]
    promotions_applied: Vec<String>,
}

fn check_lines(
    r: &Replica,
    lines: Vec<SaleLine>,
    member: bool,
    store: &NodeId,
    region: &RegionId,
) -> Result<Vec<ReceiptLine>, PosError> {
    if lines.is_empty() {
        return Err(PosError::invalid("a receipt needs at least one line"));
    }
    if lines.len() > RECEIPT_LINES_MAX {
        return Err(PosError::invalid(format!(
            "{} lines: at most {RECEIPT_LINES_MAX} per receipt",
            lines.len()
        )));
    }
    let now = now_ms() as i64;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let sku: Sku = parse(&format!("line {i} sku"), &line.sku)?;
        if r.product(&sku)?.is_none() {
            return Err(PosError::invalid(format!("line {i}: unknown sku {sku}")));
        }
        if line.qty <= 0 {
            return Err(PosError::invalid(format!(
                "line {i}: quantity {} must be positive (record returns with POST /v1/returns)",
                line.qty
            )));
        }
        let unit_price_cents = match line.unit_price_cents {
            Some(p) if p < 0 => {
                return Err(PosError::invalid(format!("line {i}: negative price {p}")));
            }
            Some(p) => p,
            None => effective_cents(r, &sku, member, store, region, now)?.ok_or_else(|| {
                PosError::invalid(format!("line {i}: sku {sku} has no price in effect here"))
            })?,
        };
        if line.discount_cents < 0 {
            return Err(PosError::invalid(format!("line {i}: negative discount")));
        }
        out.push(ReceiptLine {
            sku,
            qty: line.qty,
            unit_price_cents,
            discount_cents: line.discount_cents,
        });
    }
    Ok(out)
}

fn effective_cents(
    r: &Replica,
    sku: &Sku,
    member: bool,
    store: &NodeId,
    region: &RegionId,
    t_ms: i64,
) -> Result<Option<i64>, PosError> {
    let retail = r
        .effective_price(sku, PriceKind::Retail, store, region, t_ms)?
        .map(|e| e.price_cents);
    let member_price = if member {
        r.effective_price(sku, PriceKind::Member, store, region, t_ms)?
            .map(|e| e.price_cents)
    } else {
        None
    };
    Ok(match (retail, member_price) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

async fn record_sale(
    State(state): State<PosState>,
    body: Result<Json<SaleRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let (store, region) = (state.store.clone(), state.region.clone());
    let (status, receipt) = state
        .write(move |r| {
            let id = match &req.receipt_no {
                Some(no) => parse::<RecordId>("receipt_no", &format!("{store}-P{no}"))?,
                None => minted(&store, "R", next_seq(r, Topic::Sales)?)?,
            };
            if r.receipt_state(id.as_str())?.is_some() {
                return Ok((
                    StatusCode::OK,
                    json!({ "receipt_id": id.as_str(), "duplicate": true }),
                ));
            }
            let member = req
                .member
                .as_deref()
                .map(|m| parse::<MemberId>("member", m))
                .transpose()?;
            let lines = check_lines(r, req.lines, member.is_some(), &store, &region)?;
            let mut receipt = Receipt {
                id,
                store: store.clone(),
                sold_at_ms: now_ms() as i64,
                member,
                lines,
                payments: vec![],
                promotions_applied: req
                    .promotions_applied
                    .iter()
                    .map(|p| parse::<RecordId>("promotion", p))
                    .collect::<Result<_, _>>()?,
            };
            let total = receipt.total_cents();
            receipt.payments = if req.payments.is_empty() {
                vec![Payment {
                    method: PaymentMethod::Cash,
                    amount_cents: total,
                }]
            } else {
                req.payments
                    .iter()
                    .map(|p| Payment {
                        method: p.method.into(),
                        amount_cents: p.amount_cents,
                    })
                    .collect()
            };
            let paid: i64 = receipt.payments.iter().map(|p| p.amount_cents).sum();
            if paid != total {
                return Err(PosError::invalid(format!(
                    "payments add up to {paid}, the receipt total is {total}"
                )));
            }
            let id = receipt.id.to_string();
            let committed = r.commit_local(Topic::Sales, vec![Op::Receipt(receipt)], now_ms())?;
            Ok((
                StatusCode::CREATED,
                json!({ "receipt_id": id, "total_cents": total, "seq": committed.seq }),
            ))
        })
        .await?;
    Ok((status, Json(receipt)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnRequest {
    original: String,
    lines: Vec<SaleLine>,
    refund_method: Option<Method>,
}

async fn record_return(
    State(state): State<PosState>,
    body: Result<Json<ReturnRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let (store, region) = (state.store.clone(), state.region.clone());
    let answer = state
        .write(move |r| {
            let original: RecordId = parse("original", &req.original)?;
            let lines = check_lines(r, req.lines, false, &store, &region)?;
            let refund: i64 = lines.iter().map(ReceiptLine::amount_cents).sum();
            let id = minted(&store, "T", next_seq(r, Topic::Sales)?)?;
            let ret = ReturnRecord {
                id: id.clone(),
                store: store.clone(),
                original,
                at_ms: now_ms() as i64,
                lines,
                refunds: vec![Payment {
                    method: req.refund_method.unwrap_or(Method::Cash).into(),
                    amount_cents: refund,
                }],
            };
            r.commit_local(Topic::Sales, vec![Op::Return(ret)], now_ms())?;
            Ok(json!({ "return_id": id.as_str(), "refund_cents": refund }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidRequest {
    original: String,
    reason: String,
}

async fn record_void(
    State(state): State<PosState>,
    body: Result<Json<VoidRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let store = state.store.clone();
    let answer = state
        .write(move |r| {
            let original: RecordId = parse("original", &req.original)?;
            match r.receipt_state(original.as_str())? {
                None => {
                    return Err(PosError::not_found(format!(
                        "no receipt {original} at this store"
                    )));
                }
                Some(true) => {
                    return Err(PosError::conflict(format!(
                        "receipt {original} is already voided"
                    )));
                }
                Some(false) => {}
            }
            if !chainsync::ids::record_id_owned_by(&original, &store) {
                return Err(PosError::invalid(format!(
                    "receipt {original} is not this store's to void"
                )));
            }
            let id = minted(&store, "V", next_seq(r, Topic::Sales)?)?;
            let void = Void {
                id: id.clone(),
                store: store.clone(),
                original,
                at_ms: now_ms() as i64,
                reason: req.reason,
            };
            r.commit_local(Topic::Sales, vec![Op::Void(void)], now_ms())?;
            Ok(json!({ "void_id": id.as_str() }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

// ------------------------------------------------------------------------- prices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceQuery {
    member: Option<String>,
    at_ms: Option<i64>,
}

async fn price(
    State(state): State<PosState>,
    Path(sku): Path<String>,
    query: Result<Query<PriceQuery>, QueryRejection>,
) -> PosResult {
    let Query(q) = query?;
    let sku: Sku = parse("sku", &sku)?;
    let (store, region) = (state.store.clone(), state.region.clone());
    let answer = state
        .read(move |r| {
            if r.product(&sku)?.is_none() {
                return Err(PosError::not_found(format!("unknown sku {sku}")));
            }
            let member = q.member.as_deref().map(|m| parse::<MemberId>("member", m)).transpose()?;
            let t = q.at_ms.unwrap_or(now_ms() as i64);
            let retail = r.effective_price(&sku, PriceKind::Retail, &store, &region, t)?;
            let member_entry = match &member {
                Some(_) => r.effective_price(&sku, PriceKind::Member, &store, &region, t)?,
                None => None,
            };
            let charge = effective_cents(r, &sku, member.is_some(), &store, &region, t)?;
            let birthday_month = match &member {
                Some(m) => r
                    .member_profile(m)?
                    .get(&ProfileField::Birthday)
                    .and_then(|b| b.value.get(..2).map(str::to_owned))
                    .is_some_and(|mm| mm == month_of(t)),
                None => false,
            };
            let ctx = PromotionContext {
                store: &store,
                region: &region,
                t_ms: t,
                local_hour: ((t / 3_600_000) % 24) as u8,
                is_member: member.is_some(),
                birthday_month,
            };
            let promotions: Vec<Value> = r
                .promotions()?
                .into_iter()
                .filter(|p| merge::promotion_applies(p, &sku, &ctx))
                .map(|p| json!({ "id": p.id.as_str(), "name": p.name, "rule": format!("{:?}", p.rule) }))
                .collect();
            Ok(json!({
                "sku": sku.as_str(),
                "price_cents": charge,
                "retail": retail.map(|e| json!({ "price_cents": e.price_cents, "scope": e.scope.to_string(), "entry": e.id.as_str() })),
                "member": member_entry.map(|e| json!({ "price_cents": e.price_cents, "scope": e.scope.to_string(), "entry": e.id.as_str() })),
                "promotions": promotions,
            }))
        })
        .await?;
    Ok(Json(answer).into_response())
}

/// `MM` of a Unix-ms time (UTC), by the civil-from-days algorithm.
fn month_of(t_ms: i64) -> String {
    let days = t_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{month:02}")
}

// ------------------------------------------------------------------------- members

fn member_json(r: &Replica, member: &MemberId) -> Result<Option<Value>, PosError> {
    let profile = r.member_profile(member)?;
    let points = r.balance(member, LedgerAccount::Points)?;
    let stored = r.balance(member, LedgerAccount::StoredValue)?;
    let has_ledger: bool = r
        .connection()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM ledger WHERE member = ?1)",
            [member.as_str()],
            |row| row.get(0),
        )
        .map_err(ReplicaError::from)?;
    if profile.is_empty() && !has_ledger {
        return Ok(None);
    }
    let fields: BTreeMap<String, String> = profile
        .into_iter()
        .map(|(f, v)| (format!("{f:?}").to_lowercase(), v.value))
        .collect();
    Ok(Some(
        json!({ "member": member.as_str(), "profile": fields, "points": points, "stored_value_cents": stored }),
    ))
}

async fn member(State(state): State<PosState>, Path(id): Path<String>) -> PosResult {
    let member: MemberId = parse("member", &id)?;
    let answer = state
        .read(move |r| {
            member_json(r, &member)?
                .ok_or_else(|| PosError::not_found(format!("no member {member} here")))
        })
        .await?;
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRequest {
    name: Option<String>,
    phone: Option<String>,
    email: Option<String>,
    /// `MM-DD`.
    birthday: Option<String>,
    level: Option<String>,
    card_status: Option<String>,
}

async fn edit_member(
    State(state): State<PosState>,
    Path(id): Path<String>,
    body: Result<Json<MemberRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let member: MemberId = parse("member", &id)?;
    let mut fields = Vec::new();
    for (field, value) in [
        (ProfileField::Name, req.name),
        (ProfileField::Phone, req.phone),
        (ProfileField::Email, req.email),
        (ProfileField::Birthday, req.birthday),
        (ProfileField::Level, req.level),
        (ProfileField::CardStatus, req.card_status),
    ] {
        if let Some(value) = value {
            if value.len() > 200 {
                return Err(PosError::invalid(format!(
                    "{field:?} is longer than 200 characters"
                )));
            }
            fields.push((field, value));
        }
    }
    if let Some((_, b)) = fields.iter().find(|(f, _)| *f == ProfileField::Birthday) {
        let ok = b.len() == 5
            && b.as_bytes()[2] == b'-'
            && b[..2].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m))
            && b[3..].parse::<u8>().is_ok_and(|d| (1..=31).contains(&d));
        if !ok {
            return Err(PosError::invalid(format!("birthday `{b}` is not MM-DD")));
        }
    }
    if fields.is_empty() {
        return Err(PosError::invalid("no field to set"));
    }
    let answer = state
        .write(move |r| {
            let edit = MemberEdit {
                member: member.clone(),
                hlc: Hlc::default(),
                fields,
            };
            r.commit_local(Topic::Members, vec![Op::MemberEdit(edit)], now_ms())?;
            member_json(r, &member)
        })
        .await?;
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerRequest {
    /// Positive adds (earn, top up), negative takes (redeem, spend).
    change: i64,
    receipt: Option<String>,
}

async fn ledger(
    state: PosState,
    id: String,
    req: LedgerRequest,
    account: LedgerAccount,
) -> PosResult {
    let member: MemberId = parse("member", &id)?;
    if req.change == 0 {
        return Err(PosError::invalid("change must not be zero"));
    }
    let store = state.store.clone();
    let answer = state
        .write(move |r| {
            let balance = r.balance(&member, account)?;
            if req.change < 0 && balance + req.change < 0 {
                return Err(PosError::conflict(format!(
                    "balance is {balance}; taking {} would overdraw it",
                    -req.change
                )));
            }
            let kind = match (account, req.change > 0) {
                (LedgerAccount::Points, true) => LedgerKind::Earned,
                (LedgerAccount::Points, false) => LedgerKind::Redeemed,
                (LedgerAccount::StoredValue, true) => LedgerKind::ToppedUp,
                (LedgerAccount::StoredValue, false) => LedgerKind::Spent,
            };
            let entry = LedgerEntry {
                id: minted(&store, "L", next_seq(r, Topic::Members)?)?,
                member: member.clone(),
                account,
                kind,
                amount: req.change,
                receipt: req
                    .receipt
                    .as_deref()
                    .map(|x| parse::<RecordId>("receipt", x))
                    .transpose()?,
                at_ms: now_ms() as i64,
            };
            r.commit_local(Topic::Members, vec![Op::Ledger(entry)], now_ms())?;
            Ok(json!({ "member": member.as_str(), "balance": r.balance(&member, account)? }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn points(
    State(state): State<PosState>,
    Path(id): Path<String>,
    body: Result<Json<LedgerRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    ledger(state, id, req, LedgerAccount::Points).await
}

async fn stored_value(
    State(state): State<PosState>,
    Path(id): Path<String>,
    body: Result<Json<LedgerRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    ledger(state, id, req, LedgerAccount::StoredValue).await
}

// ------------------------------------------------------------------------- stock

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovementRequest {
    sku: String,
    /// Received / transferred units (positive), or the counted quantity for a count.
    qty: i64,
    #[serde(default)]
    reference: String,
    /// Transfers: `out` (default) or `in`.
    direction: Option<String>,
}

#[derive(Clone, Copy)]
enum MovementOp {
    Received,
    Count,
    Transfer,
}

async fn movement(state: PosState, req: MovementRequest, op: MovementOp) -> PosResult {
    let sku: Sku = parse("sku", &req.sku)?;
    if req.reference.len() > 200 {
        return Err(PosError::invalid("reference is longer than 200 characters"));
    }
    let store = state.store.clone();
    let answer = state
        .write(move |r| {
            if r.product(&sku)?.is_none() {
                return Err(PosError::invalid(format!("unknown sku {sku}")));
            }
            let current = r.stock_of(&store, &sku)?;
            let (kind, delta) = match op {
                MovementOp::Received if req.qty > 0 => (MovementKind::Received, req.qty),
                MovementOp::Count if req.qty >= 0 => {
                    (MovementKind::CountAdjustment, req.qty - current)
                }
                MovementOp::Transfer if req.qty > 0 => {
                    match req.direction.as_deref().unwrap_or("out") {
                        "out" => (MovementKind::TransferOut, -req.qty),
                        "in" => (MovementKind::TransferIn, req.qty),
                        other => {
                            return Err(PosError::invalid(format!(
                                "direction `{other}` is neither in nor out"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(PosError::invalid(format!(
                        "quantity {} is not allowed here",
                        req.qty
                    )));
                }
            };
            if delta != 0 {
                let m = StockMovement {
                    id: minted(&store, "K", next_seq(r, Topic::Inventory)?)?,
                    store: store.clone(),
                    sku: sku.clone(),
                    kind,
                    qty_delta: delta,
                    reference: req.reference,
                    at_ms: now_ms() as i64,
                };
                r.commit_local(Topic::Inventory, vec![Op::Stock(m)], now_ms())?;
            }
            Ok(json!({ "sku": sku.as_str(), "qty": r.stock_of(&store, &sku)?, "moved": delta }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn stock_received(
    State(state): State<PosState>,
    body: Result<Json<MovementRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    movement(state, req, MovementOp::Received).await
}

async fn stock_count(
    State(state): State<PosState>,
    body: Result<Json<MovementRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    movement(state, req, MovementOp::Count).await
}

async fn stock_transfer(
    State(state): State<PosState>,
    body: Result<Json<MovementRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    movement(state, req, MovementOp::Transfer).await
}

async fn stock_all(State(state): State<PosState>) -> PosResult {
    let store = state.store.clone();
    let rows = state.read(move |r| Ok(r.stock_rows(Some(&store))?)).await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|row| json!({ "sku": row.sku, "qty": row.qty }))
        .collect();
    Ok(Json(json!({ "stock": rows })).into_response())
}

async fn stock_one(State(state): State<PosState>, Path(sku): Path<String>) -> PosResult {
    let sku: Sku = parse("sku", &sku)?;
    let store = state.store.clone();
    let qty = state.read(move |r| Ok(r.stock_of(&store, &sku)?)).await?;
    Ok(Json(json!({ "qty": qty })).into_response())
}

// ------------------------------------------------------------------------- sync

async fn sync_status(State(state): State<PosState>) -> PosResult {
    let link = state.link.borrow().clone();
    let streams = state.read(|r| Ok(r.own_streams()?)).await?;
    let backlog: BTreeMap<String, u64> = streams
        .into_iter()
        .map(|(s, acked, head)| (s.topic.to_string(), head.saturating_sub(acked)))
        .collect();
    Ok(Json(json!({
        "connected": link.connected,
        "last_exchange_ms": link.last_exchange_ms,
        "last_error": link.last_error,
        "outbox": backlog,
    }))
    .into_response())
}

/// How long `POST /v1/sync/now` waits for the exchange.
pub const SYNC_NOW_WAIT_MS: u64 = 120_000;

async fn sync_now(State(state): State<PosState>) -> PosResult {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.sync_requests.try_send(tx).map_err(|_| {
        PosError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many sync requests waiting; try again",
        )
    })?;
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(SYNC_NOW_WAIT_MS), rx)
        .await
        .map_err(|_| {
            PosError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the exchange with HQ did not finish in time",
            )
        })?
        .map_err(|_| PosError::new(StatusCode::SERVICE_UNAVAILABLE, "the link to HQ stopped"))?;
    let status = if outcome.error.is_some() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "mode": outcome.mode, "pushed": outcome.pushed, "pulled": outcome.pulled, "error": outcome.error })),
    )
        .into_response())
}
