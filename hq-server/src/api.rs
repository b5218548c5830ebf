//! The HQ API: HTTP + JSON for HQ staff and regional managers, with role-scoped tokens.
//!
//! `Authorization: Bearer <token>`; tokens come from `hq-server token add`. Roles:
//! - `admin`: everything;
//! - `regional` (with a region): reads only its region (asking for another gets 403) and sets
//!   prices and promotions only for its region or its region's stores;
//! - `readonly`: every read, no write.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/stores` | directory: mode, last seen, backlog |
//! | `GET /v1/stock?sku=&category=&store=&region=` | consolidated stock, each figure with `as_of_ms` |
//! | `GET /v1/sales?store=&region=&day=YYYY-MM-DD` | receipts and takings per store and day |
//! | `GET /v1/products`, `POST /v1/products` | the catalog |
//! | `GET /v1/prices?sku=`, `POST /v1/prices` | price entries (now or effective at a date) |
//! | `GET /v1/promotions`, `POST /v1/promotions` | promotions (the rule as data) |
//! | `POST /v1/promotions/{id}/end?scope=` | end a promotion now |
//! | `PUT /v1/promotions/{id}/allocations?scope=` | units one store may give |
//! | `GET /v1/reports/promotions?by=store\|region&format=csv` | units, sales, discount per promotion |
//! | `GET /v1/reports/overrides`, `GET /v1/reports/returns` | till overrides; unverified returns, checked |
//! | `GET /v1/members/{id}`, `PUT /v1/members/{id}` | members' profiles and balances |
//! | `GET /v1/members/{id}/statement` | every ledger entry of a member, with running balances |
//! | `PUT`/`DELETE /v1/members/{id}/allowance` | a card's own offline allowance |
//! | `POST /v1/members/{id}/adjustments` | an adjustment (`adjustment_no` makes it idempotent) |
//! | `GET /v1/loyalty/policy`, `PUT /v1/loyalty/policy` | points and offline allowances |
//! | `GET /v1/reports/card-exceptions?format=csv` | cards overdrawn or over policy offline |
//! | `GET /v1/reports/duplicate-members` | members sharing a phone (possibly one person) |
//! | `GET /v1/reports/pricing?format=csv` | receipts HQ's price check priced otherwise, with the cause |
//! | `GET /v1/reports/halts` | streams halted by an integrity failure, since when, and the action |
//! | `GET /v1/members?phone=` | look a member up by phone |
//! | `POST /v1/members/{id}/merge` | `{"alias": B}`: B becomes another name of this member |
//! | `POST /v1/cards`, `GET /v1/cards/{number}` | issue a card (`number`, `member`), look one up |
//! | `PUT /v1/cards/{number}/status` | `active`, `frozen`, `cancelled`, `lost`, `replaced` (+ `by`) |
//!
//! Writes are change sets of HQ's streams, committed before the answer and pushed to connected
//! stores at once.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, RegionId, Scope, Sku, Topic};
use chainsync::model::{
    LedgerAccount, MemberEdit, PriceEntry, PriceKind, Product, ProfileField, Promotion,
};
use chainsync::replica::{Replica, ReplicaError, StockFilter};
use chainsync::transport::hub::Hub;
use chainsync::transport::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest request body accepted.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Regional(RegionId),
    ReadOnly,
}

/// The router of the HQ API.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/v1/stores", get(stores))
        .route("/v1/stock", get(stock))
        .route("/v1/sales", get(sales))
        .route("/v1/products", get(products).post(add_product))
        .route("/v1/prices", get(prices).post(set_price))
        .route("/v1/promotions", get(promotions).post(add_promotion))
        .route(
            "/v1/promotions/{id}/end",
            axum::routing::post(end_promotion),
        )
        .route(
            "/v1/promotions/{id}/allocations",
            axum::routing::put(allocate_promotion),
        )
        .route("/v1/reports/{name}", get(report))
        .route("/v1/members", get(find_members))
        .route("/v1/members/{id}", get(member).put(edit_member))
        .route("/v1/members/{id}/merge", axum::routing::post(merge_member))
        .route("/v1/cards", axum::routing::post(issue_card))
        .route("/v1/cards/{number}", get(get_card))
        .route(
            "/v1/cards/{number}/status",
            axum::routing::put(set_card_status),
        )
        .route("/v1/members/{id}/statement", get(member_statement))
        .route(
            "/v1/members/{id}/allowance",
            axum::routing::put(set_allowance).delete(clear_allowance),
        )
        .route(
            "/v1/members/{id}/adjustments",
            axum::routing::post(adjust_member),
        )
        .route(
            "/v1/loyalty/policy",
            get(loyalty_policy).put(set_loyalty_policy),
        )
        .route("/v1/tokens", get(tokens).post(add_token))
        .route("/v1/tokens/{id}/revoke", axum::routing::post(revoke_token))
        .layer(middleware::from_fn_with_state(hub.clone(), authenticate))
        // Health and metrics take no token (the API listens on loopback by default).
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(hub)
}

/// An error answer naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> Self {
        // HQ restored from a backup writes nothing until the stores have returned its history.
        if let ReplicaError::Restoring(why) = e {
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, why);
        }
        tracing::error!("replica: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {e}"))
    }
}
impl From<chainsync::transport::TransportError> for ApiError {
    fn from(e: chainsync::transport::TransportError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    }
}
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text()))
    }
}

type ApiResult = Result<Response, ApiError>;

async fn authenticate(State(hub): State<Hub>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    let found = hub.reader().call(move |r| r.api_token(&token)).await;
    let token = match found {
        Ok(Ok(Some(token))) => token,
        Ok(Ok(None)) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "unknown token").into_response();
        }
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(refusal) = token.refusal(now_ms()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, refusal).into_response();
    }
    let role = match (token.role.as_str(), token.region) {
        ("admin", _) => Role::Admin,
        ("readonly", _) => Role::ReadOnly,
        ("regional", Some(region)) => match RegionId::new(region) {
            Ok(region) => Role::Regional(region),
            Err(_) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "token region is damaged")
                    .into_response();
            }
        },
        _ => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "token role is damaged")
                .into_response();
        }
    };
    request.extensions_mut().insert(role);
    next.run(request).await
}

fn parse<T: std::str::FromStr<Err = chainsync::ids::IdError>>(
    what: &str,
    text: &str,
) -> Result<T, ApiError> {
    text.parse()
        .map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// A read on one of HQ's read-only connections: it never waits behind applying, nor delays it.
async fn read<R: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&mut Replica) -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    hub.reader().call(f).await?
}

/// The region a read is limited to: a regional manager's own, or one under it (403 for any
/// other). A region filter covers the region and every region under it.
fn read_region(
    r: &Replica,
    role: &Role,
    asked: Option<RegionId>,
) -> Result<Option<RegionId>, ApiError> {
    match (role, asked) {
        (Role::Regional(own), Some(asked)) => {
            if asked == *own || r.region_path(&asked)?.contains(own) {
                Ok(Some(asked))
            } else {
                Err(ApiError::forbidden(format!(
                    "a manager of region {own} cannot see region {asked}"
                )))
            }
        }
        (Role::Regional(own), None) => Ok(Some(own.clone())),
        (_, asked) => Ok(asked),
    }
}

/// The regions `store` is in, innermost first: from the directory, or for a store added but
/// not yet enrolled from its enrollment (prices and promotions can be set for it before its
/// first connection). `None`: HQ knows no such store.
fn regions_of_store(r: &Replica, store: &NodeId) -> Result<Option<Vec<RegionId>>, ApiError> {
    if let Some(place) = r.place_of(store)? {
        return Ok(Some(place.regions));
    }
    match r.pending_stores()?.into_iter().find(|p| p.id == *store) {
        Some(pending) => Ok(Some(r.region_path(&pending.region)?)),
        None => Ok(None),
    }
}

/// Whether `store` is in `region` or a region under it.
fn store_in_region(r: &Replica, store: &NodeId, region: &RegionId) -> Result<bool, ApiError> {
    Ok(regions_of_store(r, store)?.is_some_and(|regions| regions.contains(region)))
}

/// Checks that `role` may write in `scope`, and that the scope's store or region exists.
fn may_write_scope(r: &Replica, role: &Role, scope: &Scope) -> Result<(), ApiError> {
    if !r.scope_known(scope)? {
        return Err(ApiError::invalid(format!(
            "scope {scope}: no such store or region"
        )));
    }
    match (role, scope) {
        (Role::Admin, _) => Ok(()),
        (Role::ReadOnly, _) => Err(ApiError::forbidden(
            "a read-only token cannot change anything",
        )),
        (Role::Regional(own), Scope::Region(region))
            if region == own || r.region_path(region)?.contains(own) =>
        {
            Ok(())
        }
        (Role::Regional(own), Scope::Store(s)) => match regions_of_store(r, s)? {
            Some(regions) if regions.contains(own) => Ok(()),
            Some(_) => Err(ApiError::forbidden(format!(
                "store {s} is not in region {own}"
            ))),
            None => Err(ApiError::invalid(format!("no store {s}"))),
        },
        (Role::Regional(own), scope) => Err(ApiError::forbidden(format!(
            "a manager of region {own} cannot write scope {scope}"
        ))),
    }
}

fn admin_only(role: &Role) -> Result<(), ApiError> {
    match role {
        Role::Admin => Ok(()),
        _ => Err(ApiError::forbidden("only an admin token can do this")),
    }
}

// ------------------------------------------------------------------------- reads

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionQuery {
    region: Option<String>,
}

async fn stores(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let asked = q
        .region
        .as_deref()
        .map(|r| parse("region", r))
        .transpose()?;
    let rows = read(&hub, move |r| {
        let region = read_region(r, &role, asked)?;
        Ok(r.store_report(region.as_ref())?)
    })
    .await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            json!({ "store": s.store, "name": s.name, "region": s.region, "mode": s.mode, "revoked": s.revoked,
                    "last_seen_ms": s.last_seen_ms, "backlog_change_sets": s.backlog_change_sets,
                    "halted_streams": s.halted_streams })
        })
        .collect();
    Ok(Json(json!({ "stores": rows })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StockQuery {
    sku: Option<String>,
    category: Option<String>,
    store: Option<String>,
    region: Option<String>,
}

async fn stock(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    q: Result<Query<StockQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let asked = q
        .region
        .as_deref()
        .map(|r| parse("region", r))
        .transpose()?;
    let store: Option<NodeId> = q.store.as_deref().map(|s| parse("store", s)).transpose()?;
    let (sku, category) = (q.sku, q.category);
    let rows = read(&hub, move |r| {
        let region = read_region(r, &role, asked)?;
        let filter = StockFilter {
            sku,
            category,
            store: store.clone(),
            region: region.clone(),
        };
        if let (Some(store), Some(region)) = (&store, &region)
            && r.store_info(store)?.is_some()
            && !store_in_region(r, store, region)?
        {
            return Err(ApiError::forbidden(format!(
                "store {store} is not in region {region}"
            )));
        }
        Ok(r.stock_report(&filter)?)
    })
    .await?;
    let mut totals = std::collections::BTreeMap::<String, i64>::new();
    for row in &rows {
        *totals.entry(row.sku.clone()).or_default() += row.qty;
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| json!({ "store": s.store, "region": s.region, "sku": s.sku, "category": s.category, "qty": s.qty, "as_of_ms": s.as_of_ms }))
        .collect();
    Ok(Json(json!({ "rows": rows, "totals": totals })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SalesQuery {
    store: Option<String>,
    region: Option<String>,
    day: Option<String>,
}

async fn sales(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    q: Result<Query<SalesQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let asked = q
        .region
        .as_deref()
        .map(|r| parse("region", r))
        .transpose()?;
    let store: Option<NodeId> = q.store.as_deref().map(|s| parse("store", s)).transpose()?;
    if let Some(day) = &q.day {
        let ok = day.len() == 10 && day.as_bytes()[4] == b'-' && day.as_bytes()[7] == b'-';
        if !ok {
            return Err(ApiError::invalid(format!("day `{day}` is not YYYY-MM-DD")));
        }
    }
    let rows = read(&hub, move |r| {
        let region = read_region(r, &role, asked)?;
        if let (Some(store), Some(region)) = (&store, &region)
            && r.store_info(store)?.is_some()
            && !store_in_region(r, store, region)?
        {
            return Err(ApiError::forbidden(format!(
                "store {store} is not in region {region}"
            )));
        }
        Ok(r.sales_report(store.as_ref(), region.as_ref(), q.day.as_deref())?)
    })
    .await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| json!({ "store": s.store, "region": s.region, "day": s.day, "receipts": s.receipts, "total_cents": s.total_cents }))
        .collect();
    Ok(Json(json!({ "rows": rows })).into_response())
}

async fn products(State(hub): State<Hub>) -> ApiResult {
    let rows = read(&hub, |r| {
        let mut stmt = r.connection().prepare("SELECT sku, name, category, unit_cost_cents, active FROM products ORDER BY sku").map_err(ReplicaError::from)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(json!({ "sku": row.get::<_, String>(0)?, "name": row.get::<_, String>(1)?, "category": row.get::<_, String>(2)?,
                           "unit_cost_cents": row.get::<_, i64>(3)?, "active": row.get::<_, bool>(4)? }))
            })
            .map_err(ReplicaError::from)?;
        Ok(rows.collect::<Result<Vec<_>, _>>().map_err(ReplicaError::from)?)
    })
    .await?;
    Ok(Json(json!({ "products": rows })).into_response())
}

// ------------------------------------------------------------------------- writes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductRequest {
    sku: String,
    name: String,
    #[serde(default = "general")]
    category: String,
    #[serde(default)]
    barcodes: Vec<String>,
    #[serde(default)]
    unit_cost_cents: i64,
    #[serde(default = "yes")]
    active: bool,
}
fn general() -> String {
    "general".into()
}
fn yes() -> bool {
    true
}

async fn add_product(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<ProductRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    if req.name.trim().is_empty() || req.unit_cost_cents < 0 {
        return Err(ApiError::invalid(
            "a product needs a name and a non-negative cost",
        ));
    }
    let product = Product {
        sku: parse("sku", &req.sku)?,
        name: req.name,
        category: req.category,
        barcodes: req.barcodes,
        unit_cost_cents: req.unit_cost_cents,
        active: req.active,
    };
    let committed = hub
        .commit_local(Topic::Catalog, vec![Op::ProductUpsert(product)])
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "stream": committed.stream.to_string(), "seq": committed.seq })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesQuery {
    sku: Option<String>,
}

async fn prices(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    q: Result<Query<PricesQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let entries = read(&hub, move |r| {
        let mut out = Vec::new();
        for e in r.price_entries()? {
            if may_read_scope(r, &role, &e.scope)? {
                out.push(e);
            }
        }
        Ok(out)
    })
    .await?;
    let rows: Vec<Value> = entries
        .into_iter()
        .filter(|e| q.sku.as_deref().is_none_or(|s| e.sku.as_str() == s))
        .map(|e| {
            json!({ "id": e.id.as_str(), "sku": e.sku.as_str(), "scope": e.scope.to_string(), "kind": kind_name(e.kind),
                    "price_cents": e.price_cents, "effective_from_ms": e.effective_from_ms, "effective_to_ms": e.effective_to_ms })
        })
        .collect();
    Ok(Json(json!({ "prices": rows })).into_response())
}

fn kind_name(kind: PriceKind) -> &'static str {
    match kind {
        PriceKind::Retail => "retail",
        PriceKind::Member => "member",
        PriceKind::Wholesale => "wholesale",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceRequest {
    sku: String,
    /// `chain`, `region:<id>`, `store:<id>`.
    scope: String,
    #[serde(default = "retail")]
    kind: String,
    price_cents: i64,
    effective_from_ms: Option<i64>,
    effective_to_ms: Option<i64>,
}
fn retail() -> String {
    "retail".into()
}

async fn set_price(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<PriceRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let sku: Sku = parse("sku", &req.sku)?;
    let scope: Scope = parse("scope", &req.scope)?;
    let kind = match req.kind.as_str() {
        "retail" => PriceKind::Retail,
        "member" => PriceKind::Member,
        "wholesale" => PriceKind::Wholesale,
        other => {
            return Err(ApiError::invalid(format!(
                "kind `{other}` is not retail, member or wholesale"
            )));
        }
    };
    if req.price_cents < 0 {
        return Err(ApiError::invalid("a price cannot be negative"));
    }
    let from = req.effective_from_ms.unwrap_or(now_ms() as i64);
    if req.effective_to_ms.is_some_and(|to| to <= from) {
        return Err(ApiError::invalid(
            "effective_to_ms must come after effective_from_ms",
        ));
    }
    let check_scope = scope.clone();
    let check_sku = sku.clone();
    read(&hub, move |r| {
        may_write_scope(r, &role, &check_scope)?;
        if r.product(&check_sku)?.is_none() {
            return Err(ApiError::invalid(format!("unknown sku {check_sku}")));
        }
        Ok(())
    })
    .await?;
    let id = crate::csvio::price_entry_id(&sku, kind, from)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let entry = PriceEntry {
        id: id.clone(),
        sku,
        scope: scope.clone(),
        kind,
        price_cents: req.price_cents,
        effective_from_ms: from,
        effective_to_ms: req.effective_to_ms,
    };
    let committed = hub
        .commit_local(Topic::Prices(scope), vec![Op::PriceUpsert(entry)])
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id.as_str(), "stream": committed.stream.to_string(), "seq": committed.seq }))).into_response())
}

async fn promotions(State(hub): State<Hub>, Extension(role): Extension<Role>) -> ApiResult {
    let promos = read(&hub, move |r| {
        let mut out = Vec::new();
        for p in r.promotions()? {
            if may_read_scope(r, &role, &p.scope)? {
                out.push(crate::promo::promotion_json(&p));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({ "promotions": promos })).into_response())
}

/// Whether `role` may see what is set for `scope` (a regional manager: the chain, their region
/// and its stores).
fn may_read_scope(r: &Replica, role: &Role, scope: &Scope) -> Result<bool, ApiError> {
    Ok(match (role, scope) {
        // Its own region, regions above it (they cover its stores) and regions under it.
        (Role::Regional(own), Scope::Region(region)) => {
            region == own
                || r.region_path(own)?.contains(region)
                || r.region_path(region)?.contains(own)
        }
        (Role::Regional(own), Scope::Store(s)) => store_in_region(r, s, own)?,
        _ => true,
    })
}

/// `POST /v1/promotions`: a promotion as [`crate::promo::PromotionSpec`] (the rule as data).
async fn add_promotion(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<crate::promo::PromotionSpec>, JsonRejection>,
) -> ApiResult {
    let Json(spec) = body?;
    let promo = read(&hub, move |r| {
        let promo = crate::promo::build(r, spec, now_ms() as i64)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        may_write_scope(r, &role, &promo.scope)?;
        Ok(promo)
    })
    .await?;
    commit_promotion(&hub, promo).await
}

async fn commit_promotion(hub: &Hub, promo: Promotion) -> ApiResult {
    let shown = crate::promo::promotion_json(&promo);
    let committed = hub
        .commit_local(
            Topic::Promotions(promo.scope.clone()),
            vec![Op::PromotionUpsert(promo)],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "promotion": shown, "stream": committed.stream.to_string(), "seq": committed.seq }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    scope: Option<String>,
}

/// `POST /v1/promotions/{id}/end?scope=`: the promotion stops applying now.
async fn end_promotion(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let scope: Scope = parse("scope", q.scope.as_deref().unwrap_or("chain"))?;
    let promo = read(&hub, move |r| {
        may_write_scope(r, &role, &scope)?;
        let found = crate::promo::find(r, &id, &scope)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}")))?;
        crate::promo::ended(found, now_ms() as i64)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))
    })
    .await?;
    commit_promotion(&hub, promo).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationRequest {
    store: String,
    units: u32,
}

/// `PUT /v1/promotions/{id}/allocations?scope=`: the units one store may give in all.
async fn allocate_promotion(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
    body: Result<Json<AllocationRequest>, JsonRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let Json(req) = body?;
    let scope: Scope = parse("scope", q.scope.as_deref().unwrap_or("chain"))?;
    let store: NodeId = parse("store", &req.store)?;
    let promo = read(&hub, move |r| {
        may_write_scope(r, &role, &scope)?;
        may_write_scope(r, &role, &Scope::Store(store.clone()))?;
        let found = crate::promo::find(r, &id, &scope)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}")))?;
        crate::promo::allocated(r, found, &store, req.units)
            .map_err(|e| ApiError::invalid(format!("{e:#}")))
    })
    .await?;
    commit_promotion(&hub, promo).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// `store` (default) or `region` (promotions report).
    by: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `GET /v1/reports/{promotions|overrides|returns}?by=&format=`: HQ's reports, limited to a
/// regional manager's stores.
async fn report(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(name): Path<String>,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> ApiResult {
    use crate::csvio::Report;
    let Query(q) = q?;
    let by_region = match q.by.as_deref().unwrap_or("store") {
        "store" => false,
        "region" => true,
        other => {
            return Err(ApiError::invalid(format!(
                "by `{other}` is neither store nor region"
            )));
        }
    };
    let kind = match name.as_str() {
        "promotions" => Report::Promotions { by_region },
        "overrides" => Report::Overrides,
        "returns" => Report::UnverifiedReturns,
        "card-exceptions" => Report::CardExceptions,
        "duplicate-members" => Report::DuplicateMembers,
        "pricing" => Report::Pricing,
        "halts" => Report::Halts,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no report `{other}` (promotions, overrides, returns, card-exceptions, duplicate-members, pricing, halts)"
                ),
            ));
        }
    };
    let csv = match q.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => {
            return Err(ApiError::invalid(format!(
                "format `{other}` is neither json nor csv"
            )));
        }
    };
    let (header, rows) = read(&hub, move |r| {
        let (header, rows) = crate::csvio::report_rows(r, kind)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let Role::Regional(own) = &role else {
            return Ok((header, rows));
        };
        // Column 1 is the store (or, by region, the region) of every report.
        let mut mine = Vec::new();
        for row in rows {
            let keep = if by_region && matches!(kind, Report::Promotions { .. }) {
                match RegionId::new(row[1].as_str()) {
                    Ok(region) => region == *own || r.region_path(&region)?.contains(own),
                    Err(_) => false,
                }
            } else {
                match NodeId::new(row[1].as_str()) {
                    Ok(store) => store_in_region(r, &store, own)?,
                    Err(_) => false,
                }
            };
            if keep {
                mine.push(row);
            }
        }
        Ok((header, mine))
    })
    .await?;
    if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        let written = w
            .write_record(&header)
            .and_then(|_| rows.iter().try_for_each(|row| w.write_record(row)));
        let bytes = written
            .map_err(|e| e.to_string())
            .and_then(|_| w.into_inner().map_err(|e| e.to_string()))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], bytes).into_response());
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let obj: serde_json::Map<String, Value> = header
                .iter()
                .zip(row)
                .map(|(h, cell)| {
                    let v = cell
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(cell));
                    (h.to_string(), v)
                })
                .collect();
            Value::Object(obj)
        })
        .collect();
    Ok(Json(json!({ "rows": rows })).into_response())
}

async fn member(State(hub): State<Hub>, Path(id): Path<String>) -> ApiResult {
    let member: MemberId = parse("member", &id)?;
    let answer = read(&hub, move |r| {
        let profile = r.member_profile(&member)?;
        let fields: std::collections::BTreeMap<String, String> = profile
            .into_iter()
            .map(|(f, v)| (format!("{f:?}").to_lowercase(), v.value))
            .collect();
        Ok(json!({ "member": member.as_str(), "profile": fields,
                   "points": r.balance(&member, LedgerAccount::Points)?,
                   "stored_value_cents": r.balance(&member, LedgerAccount::StoredValue)? }))
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
    birthday: Option<String>,
    level: Option<String>,
}

async fn edit_member(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    body: Result<Json<MemberRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let member: MemberId = parse("member", &id)?;
    let mut fields = Vec::new();
    for (field, value) in [
        (ProfileField::Name, req.name),
        (ProfileField::Phone, req.phone),
        (ProfileField::Email, req.email),
        (ProfileField::Birthday, req.birthday),
        (ProfileField::Level, req.level),
    ] {
        if let Some(value) = value {
            fields.push((field, value));
        }
    }
    if fields.is_empty() {
        return Err(ApiError::invalid("no field to set"));
    }
    let edit = MemberEdit {
        member,
        hlc: Hlc::default(),
        fields,
    };
    edit.check_bounds().map_err(ApiError::invalid)?;
    let committed = hub
        .commit_local(Topic::Members, vec![Op::MemberEdit(edit)])
        .await?;
    Ok(
        Json(json!({ "stream": committed.stream.to_string(), "seq": committed.seq }))
            .into_response(),
    )
}

// ------------------------------------------------------------------------- members' money

fn anyhow_invalid(e: anyhow::Error) -> ApiError {
    ApiError::invalid(format!("{e:#}"))
}

async fn member_statement(State(hub): State<Hub>, Path(id): Path<String>) -> ApiResult {
    let member: MemberId = parse("member", &id)?;
    let answer = read(&hub, move |r| {
        crate::loyalty::statement_json(r, &member)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
    })
    .await?;
    Ok(Json(answer).into_response())
}

async fn loyalty_policy(State(hub): State<Hub>) -> ApiResult {
    let policy = read(&hub, |r| Ok(r.loyalty_policy()?)).await?;
    Ok(Json(crate::loyalty::policy_json(&policy)).into_response())
}

async fn set_loyalty_policy(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<crate::loyalty::PolicySpec>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(spec) = body?;
    let policy = crate::loyalty::build_policy(spec).map_err(anyhow_invalid)?;
    let answer = crate::loyalty::policy_json(&policy);
    let committed = hub
        .commit_local(Topic::Members, vec![Op::LoyaltyPolicy(policy)])
        .await?;
    Ok(Json(json!({ "policy": answer, "seq": committed.seq })).into_response())
}

async fn set_allowance(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    body: Result<Json<crate::loyalty::AllowanceSpec>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(spec) = body?;
    let member: MemberId = parse("member", &id)?;
    let allowance: chainsync::model::Allowance = spec.into();
    allowance.check_bounds().map_err(ApiError::invalid)?;
    let committed = hub
        .commit_local(
            Topic::Members,
            vec![Op::MemberAllowance {
                member,
                allowance: Some(allowance),
            }],
        )
        .await?;
    Ok(Json(json!({ "allowance": spec, "seq": committed.seq })).into_response())
}

async fn clear_allowance(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult {
    admin_only(&role)?;
    let member: MemberId = parse("member", &id)?;
    let committed = hub
        .commit_local(
            Topic::Members,
            vec![Op::MemberAllowance {
                member,
                allowance: None,
            }],
        )
        .await?;
    Ok(Json(json!({ "allowance": null, "seq": committed.seq })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustmentRequest {
    /// The caller's number for the adjustment: asking again adjusts nothing.
    adjustment_no: String,
    /// `stored_value` or `points`.
    account: String,
    /// Signed, in the account's unit.
    amount: i64,
    /// Why (required).
    note: String,
}

async fn adjust_member(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    body: Result<Json<AdjustmentRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let member: MemberId = parse("member", &id)?;
    let account = crate::loyalty::parse_account(&req.account).map_err(anyhow_invalid)?;
    let (member_again, no) = (member.clone(), req.adjustment_no.clone());
    let op = read(&hub, move |r| {
        crate::loyalty::adjustment(
            r,
            &no,
            &member_again,
            account,
            req.amount,
            &req.note,
            now_ms() as i64,
        )
        .map_err(anyhow_invalid)
    })
    .await?;
    let Some(op) = op else {
        return Ok(Json(
            json!({ "adjustment": format!("hq-A{}", req.adjustment_no), "duplicate": true }),
        )
        .into_response());
    };
    let committed = hub.commit_local(Topic::Members, vec![op]).await?;
    let balance = read(&hub, move |r| Ok(r.balance(&member, account)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "adjustment": format!("hq-A{}", req.adjustment_no), "balance": balance, "seq": committed.seq })),
    )
        .into_response())
}

// ------------------------------------------------------------------------- cards and merges

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhoneQuery {
    phone: String,
}

async fn find_members(
    State(hub): State<Hub>,
    q: Result<Query<PhoneQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    if q.phone.len() > chainsync::model::TEXT_BYTES_MAX {
        return Err(ApiError::invalid("phone is too long"));
    }
    let members = read(&hub, move |r| {
        let mut out = Vec::new();
        for m in r.members_by_phone(&q.phone)? {
            let cards: Vec<Value> = r
                .cards_of(&m)?
                .iter()
                .map(chainsync::replica::CardInfo::to_json)
                .collect();
            out.push(json!({ "member": m.as_str(), "cards": cards }));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({ "members": members })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeRequest {
    alias: String,
}

async fn merge_member(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
    body: Result<Json<MergeRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let survivor: MemberId = parse("member", &id)?;
    let alias: MemberId = parse("alias", &req.alias)?;
    let op = read(&hub, move |r| {
        crate::loyalty::merge_op(r, &alias, &survivor).map_err(anyhow_invalid)
    })
    .await?;
    let committed = hub.commit_local(Topic::Members, vec![op]).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "survivor": id, "alias": req.alias, "seq": committed.seq })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueCardRequest {
    number: String,
    member: String,
}

async fn issue_card(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<IssueCardRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let number: chainsync::ids::CardNo = parse("card", &req.number)?;
    let member: MemberId = parse("member", &req.member)?;
    let n = number.clone();
    let op = read(&hub, move |r| {
        crate::loyalty::card_issue_op(r, &n, &member, now_ms() as i64).map_err(anyhow_invalid)
    })
    .await?;
    let status = match op {
        Some(op) => {
            hub.commit_local(Topic::Members, vec![op]).await?;
            StatusCode::CREATED
        }
        None => StatusCode::OK,
    };
    let card = read(&hub, move |r| Ok(r.card(&number)?)).await?;
    Ok((
        status,
        Json(json!({ "card": card.as_ref().map(chainsync::replica::CardInfo::to_json) })),
    )
        .into_response())
}

async fn get_card(State(hub): State<Hub>, Path(number): Path<String>) -> ApiResult {
    let number: chainsync::ids::CardNo = parse("card", &number)?;
    let n = number.clone();
    match read(&hub, move |r| Ok(r.card(&n)?)).await? {
        Some(card) => Ok(Json(card.to_json()).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no card {number}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CardStatusRequest {
    status: String,
    by: Option<String>,
}

async fn set_card_status(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(number): Path<String>,
    body: Result<Json<CardStatusRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let number: chainsync::ids::CardNo = parse("card", &number)?;
    let n = number.clone();
    let ops = read(&hub, move |r| {
        crate::loyalty::card_status_ops(r, &n, &req.status, req.by.as_deref(), now_ms() as i64)
            .map_err(anyhow_invalid)
    })
    .await?;
    hub.commit_local(Topic::Members, ops).await?;
    let card = read(&hub, move |r| Ok(r.card(&number)?)).await?;
    Ok(
        Json(json!({ "card": card.as_ref().map(chainsync::replica::CardInfo::to_json) }))
            .into_response(),
    )
}

// ------------------------------------------------------------------------- API tokens

fn token_json(t: &chainsync::replica::ApiToken, now_ms: u64) -> Value {
    json!({ "id": t.id, "name": t.name, "role": t.role, "region": t.region,
            "created_ms": t.created_ms, "expires_ms": t.expires_ms, "revoked_ms": t.revoked_ms,
            "valid": t.refusal(now_ms).is_none() })
}

/// `GET /v1/tokens` (admin): every token, revoked and expired ones too; never the token itself.
async fn tokens(State(hub): State<Hub>, Extension(role): Extension<Role>) -> ApiResult {
    admin_only(&role)?;
    let tokens = read(&hub, |r| Ok(r.api_tokens()?)).await?;
    let now = now_ms();
    let rows: Vec<Value> = tokens.iter().map(|t| token_json(t, now)).collect();
    Ok(Json(json!({ "tokens": rows })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// Who holds it.
    name: String,
    /// `admin`, `readonly` or `regional:<region>`.
    role: String,
    /// Refused this many days from now; without it, never.
    expires_days: Option<u64>,
}

/// `POST /v1/tokens` (admin): a new token, shown in this answer only.
async fn add_token(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> ApiResult {
    admin_only(&role)?;
    let Json(req) = body?;
    let (token, kept) = hub
        .replica()
        .call(move |r| {
            crate::admin::add_token(r, &req.name, &req.role, req.expires_days, now_ms())
                .map_err(anyhow_invalid)
        })
        .await??;
    let mut answer = token_json(&kept, now_ms());
    answer["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `POST /v1/tokens/{id}/revoke` (admin): refused from now on. Revoking twice keeps the first
/// time.
async fn revoke_token(
    State(hub): State<Hub>,
    Extension(role): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult {
    admin_only(&role)?;
    let revoked = hub
        .replica()
        .call(move |r| match r.revoke_api_token(&id, now_ms()) {
            Ok(t) => Ok(t),
            Err(ReplicaError::Invalid(msg)) => Err(ApiError::new(StatusCode::NOT_FOUND, msg)),
            Err(e) => Err(e.into()),
        })
        .await??;
    Ok(Json(token_json(&revoked, now_ms())).into_response())
}

// ------------------------------------------------------------------------- health and metrics

/// `GET /healthz`: 200 when HQ's database takes a write, 503 otherwise; sessions open, stores
/// never seen or silent, halted streams either way.
async fn healthz(State(hub): State<Hub>) -> ApiResult {
    let writable = hub.replica().check_writable().await;
    let figures = read(&hub, |r| {
        let figures = chainsync::transport::metrics::Figures::read(
            r,
            chainsync::transport::metrics::NodeRole::Hq,
            None,
        )?;
        Ok((figures, r.pending_stores()?.len(), r.reclaim_status()?))
    })
    .await
    .ok();
    let (figures, pending, reclaim) = match figures {
        Some((figures, pending, reclaim)) => (Some(figures), Some(pending), Some(reclaim)),
        None => (None, None, None),
    };
    // Restored from a backup: HQ syncs and serves reads, but writes nothing until the stores
    // have returned its later history.
    let reclaim = reclaim.filter(|r| r.since_ms.is_some()).map(|r| {
        json!({
            "since_ms": r.since_ms,
            "stores_returned": r.stores_returned.len(),
            "stores_waiting": r.stores_waiting,
            "streams_behind": r.streams_behind.len(),
        })
    });
    let (code, verdict) = chainsync::transport::metrics::health_verdict(&writable);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({
        "status": verdict,
        "version": env!("CARGO_PKG_VERSION"),
        "database_writable": writable.is_ok(),
        "database_error": writable.err(),
        "sessions_open": hub.metrics().sessions_open(),
        "stores": figures.as_ref().map(|f| f.stores.len()),
        "stores_pending": pending,
        "stores_never_seen": figures.as_ref().map(|f| f.stores.iter().filter(|s| s.last_seen_ms.is_none()).count()),
        "halted_streams": figures.as_ref().map(|f| f.halted_streams),
        "reclaiming": reclaim,
    });
    Ok((status, Json(body)).into_response())
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(hub): State<Hub>) -> ApiResult {
    let figures = read(&hub, |r| {
        Ok(chainsync::transport::metrics::Figures::read(
            r,
            chainsync::transport::metrics::NodeRole::Hq,
            None,
        )?)
    })
    .await?;
    let text = hub.metrics().encode(&figures);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            chainsync::transport::metrics::METRICS_CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}
