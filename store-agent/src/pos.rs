//! The POS API: HTTP + JSON on loopback, for the tills of this store.
//!
//! Prices, promotions and members come from [`Facts`]: the store's own replica in realtime and
//! batch mode; in hosted mode (no replica) a lookup at HQ, remembered in the lookup cache, and when
//! HQ cannot be reached the cache (answers say which: `"source"`). Writes go to the store's own
//! streams in every mode (for a hosted store that is its journal, pushed to HQ at once), and stock
//! is always read locally: only the store's own streams move its stock, and it holds them all.
//!
//! Prices are the checkout engine's ([`chainsync::checkout`]): the store is the pricing
//! authority for its tills in every mode; a till's own price or discount needs a reason code.
//!
//! Every request carries `Authorization: Bearer <pos_token>` (from `agent.toml`). Writes are
//! validated here (unknown sku, non-positive quantity, payments that do not add up …: 422 with a
//! message naming the problem), then committed as a change set of the store's own stream; the
//! answer (`201`) comes only after that commit, so an acknowledged sale survives a crash. Nothing
//! is half-applied: a request is one change set or nothing. Every write takes a key from the
//! till (`receipt_no`, `return_no`, `void_no`, `movement_no`); the answer is committed with the
//! write, and a retry gets it again (`"duplicate": true`) and writes nothing.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/baskets/price` | price a basket as the till builds it (nothing written) |
//! | `POST /v1/sales` | record a sale, priced by the engine (`receipt_no` makes retries idempotent) |
//! | `POST /v1/returns` | goods brought back, checked against the original (`return_no`) |
//! | `POST /v1/voids` | cancel one of this store's receipts without returns (`void_no`) |
//! | `GET /v1/prices/{sku}?member=M` | unit price, the promotions that apply, one unit's price after them |
//! | `PUT /v1/prices/{sku}` | this store's own price (only where HQ allows it: `may_set_own_prices`) |
//! | `GET /v1/members?phone=P` | the members with this phone |
//! | `GET /v1/members/{id}` | profile and balances |
//! | `POST /v1/cards` | issue a card to a member (`number`, `member`) |
//! | `GET /v1/cards/{number}` | a card's member and status |
//! | `POST /v1/cards/{number}/lost` | report a card lost, optionally with its `replacement` |
//! | `PUT /v1/members/{id}` | sign up or edit |
//! | `POST /v1/members/{id}/points` | redeem points outside a sale (−; `entry_no`) |
//! | `POST /v1/members/{id}/stored-value` | top up (+, with its `tender`) or spend (−; `entry_no`) |
//! | `GET /v1/members/{id}/statement` | the member's ledger entries with running balances |
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
use chainsync::checkout::{self, BasketLine, Context, LocalTime, Priced, Shopper};
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, Place, RecordId, RegionId, Sku, StreamId, Topic};
use chainsync::lookup::{LookupAnswer, LookupQuery, MemberFacts, SkuFacts};
use chainsync::merge;
use chainsync::model::{
    AMOUNT_CENTS_MAX, DiscountSource, FactsSource, LedgerAccount, LedgerEntry, LedgerKind,
    LineDiscount, MemberEdit, MovementKind, Payment, PaymentMethod, PriceKind, PricingBasis,
    ProfileField, RECEIPT_LINES_MAX, Receipt, ReceiptLine, ReturnRecord, STOCK_MOVE_MAX_UNITS,
    SpendAuth, StockMovement, StoreMode, StreamHead, Void,
};
use chainsync::protocol::session::LOOKUP_TIMEOUT_MS;
use chainsync::replica::{Replica, ReplicaError};
use chainsync::returns;
use chainsync::transport::actor::ReplicaHandle;
use chainsync::transport::leaf::{LinkStatus, LookupRequest};
use chainsync::transport::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

mod cards;
mod health;
mod wallet;

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
    /// Carries a hosted store's lookups to HQ.
    pub lookups: tokio::sync::mpsc::Sender<LookupRequest>,
    /// Read-only connections to the same replica, each on its own thread, for pricing what
    /// writes nothing (baskets, price look-ups) beside the writer and each other (WAL readers).
    /// Empty: everything goes through `replica`.
    pub readers: Arc<[ReplicaHandle]>,
    /// Which reader the next read goes to (round robin).
    pub next_reader: Arc<std::sync::atomic::AtomicUsize>,
    /// The link's sync metrics, for `/metrics`.
    pub metrics: Arc<chainsync::transport::metrics::SyncMetrics>,
}

/// The router of the POS API.
pub fn router(state: PosState) -> Router {
    Router::new()
        .route("/v1/baskets/price", post(price_basket))
        .route("/v1/sales", post(record_sale))
        .route("/v1/returns", post(record_return))
        .route("/v1/voids", post(record_void))
        .route("/v1/prices/{sku}", get(price).put(set_own_price))
        .route("/v1/members", get(cards::find_members))
        .route("/v1/members/{id}", get(member).put(edit_member))
        .route("/v1/cards", post(cards::issue))
        .route("/v1/cards/{number}", get(cards::get_card))
        .route("/v1/cards/{number}/lost", post(cards::report_lost))
        .route("/v1/members/{id}/points", post(wallet::points))
        .route("/v1/members/{id}/stored-value", post(wallet::stored_value))
        .route("/v1/members/{id}/statement", get(wallet::statement))
        .route("/v1/stock", get(stock_all))
        .route("/v1/stock/{sku}", get(stock_one))
        .route("/v1/stock/received", post(stock_received))
        .route("/v1/stock/counts", post(stock_count))
        .route("/v1/stock/transfers", post(stock_transfer))
        .route("/v1/sync", get(sync_status))
        .route("/v1/sync/now", post(sync_now))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Health and metrics take no token: a monitoring agent on the till PC reads them.
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
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
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for PosError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ReplicaError> for PosError {
    fn from(e: ReplicaError) -> Self {
        if let ReplicaError::Restoring(why) = e {
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, why);
        }
        // A database created afresh (a new or restored store) knows itself only once HQ's
        // directory has arrived; until then its writes would not verify anywhere.
        if let ReplicaError::Refused(chainsync::validate::ChangeSetError::UnknownOrigin(node)) = &e
        {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "store {node} is not in this database's directory yet: waiting for HQ's directory"
                ),
            );
        }
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

// ------------------------------------------------------------------------- facts

/// Where the facts behind an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This store's replica (realtime and batch).
    Replica,
    /// HQ, just now (hosted).
    Hq,
    /// The lookup cache, because HQ could not be reached (hosted); the oldest fact's fetch time.
    Cache { fetched_ms: u64 },
}

impl Source {
    fn to_json(self) -> Value {
        match self {
            Source::Replica => json!("replica"),
            Source::Hq => json!("hq"),
            Source::Cache { fetched_ms } => json!({ "cache_fetched_ms": fetched_ms }),
        }
    }
}

/// What a request needs to know about skus and a member.
struct Facts {
    skus: BTreeMap<Sku, SkuFacts>,
    /// `None` only for a hosted store that could not reach HQ and never looked the member up.
    member: Option<MemberFacts>,
    source: Source,
    /// The time prices and promotions are evaluated at: HQ's clock as this store reckons it
    /// ([`chainsync::hqclock`]). A store whose clock runs hours off thus charges a price HQ set
    /// "now" as soon as the price arrives and a scheduled one when HQ's clock reaches it, and no
    /// other store's clock moves it. (Receipts keep the store's own clock.)
    t_ms: i64,
    /// The store and its regions, innermost first (which scopes cover it).
    place: Place,
    /// The store's IANA time zone, for promotion days and hours.
    time_zone: String,
    /// Units this store has given of each allocated promotion among the facts.
    used_units: BTreeMap<RecordId, u64>,
}

impl PosState {
    /// Whether this store is hosted (also while its directory entry has not arrived yet: then
    /// HQ is the only one who knows anything).
    async fn hosted(&self) -> Result<bool, PosError> {
        let store = self.store.clone();
        self.read(move |r| is_hosted(r, &store)).await
    }

    /// The facts about `skus` and `member`: from the replica (through a reader), or for a
    /// hosted store from HQ (then remembered), or from the cache when HQ cannot be reached.
    async fn facts(&self, skus: Vec<Sku>, member: Option<MemberId>) -> Result<Facts, PosError> {
        let (store, region) = (self.store.clone(), self.region.clone());
        let (skus_again, member_again) = (skus.clone(), member.clone());
        let reader = match self.readers.len() {
            0 => &self.replica,
            n => {
                let i = self
                    .next_reader
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                &self.readers[i % n]
            }
        };
        let local = reader
            .call(move |r| {
                if is_hosted(r, &store)? {
                    return Ok(None);
                }
                local_facts(r, &store, &region, &skus_again, member_again.as_ref()).map(Some)
            })
            .await??;
        match local {
            Some(facts) => Ok(facts),
            None => self.hosted_facts(skus, member).await,
        }
    }

    /// Runs `f` on the replica thread with the facts about `skus` and `member`, then wakes the
    /// link: one trip to the replica thread when the facts are local (realtime, batch), a lookup
    /// first when the store is hosted.
    async fn write_with_facts<R: Send + 'static, F>(
        &self,
        skus: Vec<Sku>,
        member: Option<MemberId>,
        f: F,
    ) -> Result<R, PosError>
    where
        F: FnOnce(&mut Replica, Facts) -> Result<R, PosError> + Send + 'static,
    {
        let (store, region) = (self.store.clone(), self.region.clone());
        let (skus_again, member_again) = (skus.clone(), member.clone());
        let done = self
            .replica
            .call(move |r| -> Result<Result<R, F>, PosError> {
                if is_hosted(r, &store)? {
                    return Ok(Err(f));
                }
                let facts = local_facts(r, &store, &region, &skus_again, member_again.as_ref())?;
                f(r, facts).map(Ok)
            })
            .await??;
        let result = match done {
            Ok(result) => result,
            Err(f) => {
                let facts = self.hosted_facts(skus, member).await?;
                self.replica.call(move |r| f(r, facts)).await??
            }
        };
        self.local_commits.notify_one();
        Ok(result)
    }

    /// A hosted store's facts: from HQ (then remembered), or from the cache.
    async fn hosted_facts(
        &self,
        skus: Vec<Sku>,
        member: Option<MemberId>,
    ) -> Result<Facts, PosError> {
        match self.ask_hq(&skus, member.as_ref()).await {
            Ok(mut facts) => {
                let gifts = checkout::gift_skus(&facts.skus);
                if !gifts.is_empty()
                    && let Ok(more) = self.ask_hq(&gifts, None).await
                {
                    facts.skus.extend(more.skus);
                }
                let skus: Vec<SkuFacts> = facts.skus.values().cloned().collect();
                let member = facts.member.clone();
                let (store, region) = (self.store.clone(), self.region.clone());
                let (t_ms, place, (time_zone, used_units)) = self
                    .read(move |r| {
                        r.remember(&skus, member.as_ref(), now_ms())?;
                        let map = skus.into_iter().map(|f| (f.sku.clone(), f)).collect();
                        Ok((
                            pricing_time(r)?,
                            place_of(r, &store, &region)?,
                            store_facts(r, &store, &map)?,
                        ))
                    })
                    .await?;
                Ok(Facts {
                    t_ms,
                    place,
                    time_zone,
                    used_units,
                    ..facts
                })
            }
            Err(why) => self.cached_facts(skus, member, why).await,
        }
    }

    async fn ask_hq(&self, skus: &[Sku], member: Option<&MemberId>) -> Result<Facts, String> {
        if !self.link.borrow().connected {
            return Err("not connected to HQ".into());
        }
        let sku_lookup = async {
            if skus.is_empty() {
                return Ok(Vec::new());
            }
            match self.lookup(LookupQuery::Skus(skus.to_vec())).await? {
                LookupAnswer::Skus(facts) => Ok(facts),
                _ => Err("HQ answered another question".to_owned()),
            }
        };
        let member_lookup = async {
            let Some(member) = member else {
                return Ok(None);
            };
            match self.lookup(LookupQuery::Member(member.clone())).await? {
                LookupAnswer::Member(facts) => Ok(Some(facts)),
                _ => Err("HQ answered another question".to_owned()),
            }
        };
        let (skus, member) = tokio::join!(sku_lookup, member_lookup);
        Ok(Facts {
            skus: skus?.into_iter().map(|f| (f.sku.clone(), f)).collect(),
            member: member?,
            source: Source::Hq,
            t_ms: now_ms() as i64,
            place: Place::new(self.store.clone(), self.region.clone()),
            time_zone: "UTC".into(),
            used_units: BTreeMap::new(),
        })
    }

    async fn lookup(&self, query: LookupQuery) -> Result<LookupAnswer, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.lookups
            .try_send(LookupRequest { query, reply })
            .map_err(|_| "the link to HQ is busy".to_owned())?;
        match tokio::time::timeout(std::time::Duration::from_millis(LOOKUP_TIMEOUT_MS), answer)
            .await
        {
            Err(_) => Err(format!("HQ did not answer within {LOOKUP_TIMEOUT_MS} ms")),
            Ok(Err(_)) => Err("the link to HQ stopped".into()),
            Ok(Ok(answer)) => answer.map_err(|e| format!("HQ refused the lookup: {e}")),
        }
    }

    async fn cached_facts(
        &self,
        skus: Vec<Sku>,
        member: Option<MemberId>,
        why: String,
    ) -> Result<Facts, PosError> {
        let (store, region) = (self.store.clone(), self.region.clone());
        self.read(move |r| {
            let mut oldest = u64::MAX;
            let mut out = BTreeMap::new();
            for sku in skus {
                let Some((facts, fetched_ms)) = r.remembered_sku(&sku)? else {
                    return Err(PosError::unavailable(format!(
                        "HQ is unreachable ({why}) and sku {sku} was never looked up at this store"
                    )));
                };
                oldest = oldest.min(fetched_ms);
                out.insert(sku, facts);
            }
            let member = match member {
                Some(m) => r.remembered_member(&m)?.map(|(facts, fetched_ms)| {
                    oldest = oldest.min(fetched_ms);
                    facts
                }),
                None => None,
            };
            // Gifts the cache knows of are given; one it never heard of is not.
            for gift in checkout::gift_skus(&out) {
                if let Some((facts, _)) = r.remembered_sku(&gift)? {
                    out.insert(gift, facts);
                }
            }
            tracing::debug!("answering from the lookup cache: {why}");
            let (time_zone, used_units) = store_facts(r, r.node(), &out)?;
            let place = place_of(r, &store, &region)?;
            Ok(Facts {
                place,
                skus: out,
                member,
                source: Source::Cache {
                    fetched_ms: if oldest == u64::MAX { 0 } else { oldest },
                },
                t_ms: pricing_time(r)?,
                time_zone,
                used_units,
            })
        })
        .await
    }
}

/// Whether this store is hosted (also while its directory entry has not arrived yet: then HQ is
/// the only one who knows anything).
fn is_hosted(r: &Replica, store: &NodeId) -> Result<bool, PosError> {
    Ok(r.store_info(store)?
        .is_none_or(|i| i.mode == StoreMode::Hosted))
}

/// Facts from this store's own replica, read in one read transaction: one consistent state of
/// the replica, and one lock taken instead of one per query.
fn local_facts(
    r: &Replica,
    store: &NodeId,
    region: &RegionId,
    skus: &[Sku],
    member: Option<&MemberId>,
) -> Result<Facts, PosError> {
    if !r.connection().is_autocommit() {
        // On the writer, inside its group commit: one transaction already.
        return read_local_facts(r, store, region, skus, member);
    }
    let read = r
        .connection()
        .unchecked_transaction()
        .map_err(ReplicaError::from)?;
    let facts = read_local_facts(r, store, region, skus, member)?;
    read.commit().map_err(ReplicaError::from)?;
    Ok(facts)
}

fn read_local_facts(
    r: &Replica,
    store: &NodeId,
    region: &RegionId,
    skus: &[Sku],
    member: Option<&MemberId>,
) -> Result<Facts, PosError> {
    let place = place_of(r, store, region)?;
    let skus = r.basket_facts(&place, skus)?;
    let member = member.map(|m| r.member_facts(m)).transpose()?;
    let (time_zone, used_units) = store_facts(r, store, &skus)?;
    Ok(Facts {
        skus,
        member,
        source: Source::Replica,
        t_ms: pricing_time(r)?,
        place,
        time_zone,
        used_units,
    })
}

/// The store's place in the chain from HQ's directory (its region from `agent.toml` until the
/// directory arrives).
fn place_of(r: &Replica, store: &NodeId, region: &RegionId) -> Result<Place, PosError> {
    Ok(r.place_of(store)?
        .unwrap_or_else(|| Place::new(store.clone(), region.clone())))
}

/// What only the store itself knows in every mode: its time zone (from HQ's directory) and the
/// units it has given of each allocated promotion (from its own receipts).
fn store_facts(
    r: &Replica,
    store: &NodeId,
    skus: &BTreeMap<Sku, SkuFacts>,
) -> Result<(String, BTreeMap<RecordId, u64>), PosError> {
    let time_zone = r
        .store_info(store)?
        .map_or_else(|| "UTC".to_owned(), |i| i.time_zone);
    let mut allocated: Vec<RecordId> = skus
        .values()
        .flat_map(|f| &f.promotions)
        .filter(|p| !p.allocations.is_empty())
        .map(|p| p.id.clone())
        .collect();
    allocated.sort();
    allocated.dedup();
    Ok((time_zone, r.promotion_units_used(store, &allocated)?))
}

/// See [`Facts::t_ms`].
fn pricing_time(r: &Replica) -> Result<i64, PosError> {
    Ok(r.pricing_time(now_ms())?)
}

fn minted(store: &NodeId, letter: &str, n: u64) -> Result<RecordId, PosError> {
    RecordId::new(format!("{store}-{letter}{n}")).map_err(|e| PosError::invalid(e.to_string()))
}

// ------------------------------------------------------------------------- pricing

/// One line as the till sends it. A till's own price or discount needs a reason code.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleLine {
    sku: String,
    qty: i64,
    /// The till's own unit price (an override): needs `reason`.
    unit_price_cents: Option<i64>,
    /// A discount given by hand: needs `reason`.
    discount_cents: Option<i64>,
    /// The reason code of an override or a manual discount (reported at HQ).
    reason: Option<String>,
}

/// The distinct skus of a request's lines, checking the line count and each sku's form.
fn line_skus(lines: &[SaleLine]) -> Result<Vec<Sku>, PosError> {
    if lines.is_empty() {
        return Err(PosError::invalid("a receipt needs at least one line"));
    }
    if lines.len() > RECEIPT_LINES_MAX {
        return Err(PosError::invalid(format!(
            "{} lines: at most {RECEIPT_LINES_MAX} per receipt",
            lines.len()
        )));
    }
    let mut skus = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let sku: Sku = parse(&format!("line {i} sku"), &line.sku)?;
        if !skus.contains(&sku) {
            skus.push(sku);
        }
    }
    Ok(skus)
}

/// The basket the engine prices: a till's price or discount only with a reason code.
fn basket_lines(lines: &[SaleLine]) -> Result<Vec<BasketLine>, PosError> {
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let sku: Sku = parse(&format!("line {i} sku"), &line.sku)?;
        let manual = line.discount_cents.filter(|d| *d != 0);
        let reason = match (
            &line.reason,
            line.unit_price_cents.is_some() || manual.is_some(),
        ) {
            (Some(r), _) => r.clone(),
            (None, true) => {
                return Err(PosError::invalid(format!(
                    "line {i}: a price or discount from the till needs a reason code (`reason`); \
                     leave both out to charge what HQ's prices and promotions say"
                )));
            }
            (None, false) => String::new(),
        };
        out.push(BasketLine {
            sku,
            qty: line.qty,
            price_override: line.unit_price_cents.map(|p| (p, reason.clone())),
            manual_discount: manual.map(|d| (d, reason.clone())),
        });
    }
    Ok(out)
}

/// The member as pricing sees them (a member HQ's answer did not reach: no level, no birthday).
fn shopper(facts: &Facts, member: Option<&MemberId>) -> Option<Shopper> {
    member?;
    Some(
        facts
            .member
            .as_ref()
            .map(MemberFacts::shopper)
            .unwrap_or_default(),
    )
}

/// What a receipt records of its pricing, for HQ's price check; `heads` are the replica's heads
/// of the streams that priced it (read when the sale is recorded, not for every basket).
fn pricing_basis(
    facts: &Facts,
    priced: &Priced,
    member: Option<&MemberId>,
    heads: Vec<StreamHead>,
) -> PricingBasis {
    let shopper = shopper(facts, member).unwrap_or_default();
    PricingBasis {
        priced_at_ms: facts.t_ms,
        source: match facts.source {
            Source::Replica => FactsSource::Replica,
            Source::Hq => FactsSource::Hq,
            Source::Cache { .. } => FactsSource::Cache,
        },
        heads,
        member_level: shopper.level,
        birthday_month: shopper.birthday_month,
        gift_line: !priced.gift_lines.is_empty(),
    }
}

/// Prices `lines` with the checkout engine at `t_ms` (store-local time from the store's zone).
fn price_lines(
    facts: &Facts,
    lines: &[BasketLine],
    member: Option<&MemberId>,
    t_ms: i64,
) -> Result<Priced, PosError> {
    let ctx = context(facts, member, t_ms);
    checkout::price_basket(lines, &ctx, &facts.skus, &facts.used_units)
        .map_err(|e| PosError::invalid(e.to_string()))
}

/// What pricing and points see of the moment: the store, the time (store-local from its zone)
/// and the shopper.
fn context<'a>(facts: &'a Facts, member: Option<&MemberId>, t_ms: i64) -> Context<'a> {
    let (local, _) = LocalTime::at(t_ms, &facts.time_zone);
    Context {
        place: &facts.place,
        t_ms,
        local,
        member: shopper(facts, member),
    }
}

fn discount_json(d: &LineDiscount) -> Value {
    match &d.source {
        DiscountSource::Promotion(p) => {
            json!({ "promotion": p.as_str(), "cents": d.cents, "units": d.units })
        }
        DiscountSource::Manual { reason } => {
            json!({ "manual": reason, "cents": d.cents, "units": d.units })
        }
        DiscountSource::AsSold { receipt } => {
            json!({ "as_sold": receipt.as_str(), "cents": d.cents, "units": d.units })
        }
    }
}

fn line_json(l: &ReceiptLine, gift: bool) -> Value {
    json!({
        "sku": l.sku.as_str(),
        "qty": l.qty,
        "unit_price_cents": l.unit_price_cents,
        "discount_cents": l.discount_cents,
        "amount_cents": l.amount_cents(),
        "discounts": l.discounts.iter().map(discount_json).collect::<Vec<_>>(),
        "price_override": l.price_override.as_ref().map(|o| json!({ "list_cents": o.list_cents, "reason": o.reason })),
        "gift": gift,
    })
}

/// A priced basket as the POS answers it.
fn priced_json(p: &Priced) -> Value {
    json!({
        "lines": p.lines.iter().enumerate().map(|(i, l)| line_json(l, p.gift_lines.contains(&i))).collect::<Vec<_>>(),
        "total_cents": p.total_cents,
        "discount_cents": p.discount_cents,
        "promotions": p.promotions.iter().map(|a| json!({ "id": a.id.as_str(), "name": a.name, "cents": a.cents, "units": a.units })).collect::<Vec<_>>(),
        "explanation": p.explanation,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasketRequest {
    member: Option<String>,
    card: Option<String>,
    lines: Vec<SaleLine>,
}

/// `POST /v1/baskets/price`: what the basket costs now, nothing written.
async fn price_basket(
    State(state): State<PosState>,
    body: Result<Json<BasketRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let customer = cards::resolve(&state, req.member.as_deref(), req.card.as_deref()).await?;
    let member = customer.map(|c| c.member);
    let skus = line_skus(&req.lines)?;
    let basket = basket_lines(&req.lines)?;
    let facts = state.facts(skus, member.clone()).await?;
    let priced = price_lines(&facts, &basket, member.as_ref(), facts.t_ms)?;
    let mut answer = priced_json(&priced);
    answer["source"] = facts.source.to_json();
    Ok(Json(answer).into_response())
}

fn parse_member(member: Option<&str>) -> Result<Option<MemberId>, PosError> {
    member.map(|m| parse::<MemberId>("member", m)).transpose()
}

// ------------------------------------------------------------------------- sales

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
    /// The till's own number for the receipt; a retry with the same number records nothing new
    /// and gets the first answer.
    receipt_no: Option<String>,
    member: Option<String>,
    /// The loyalty card presented (instead of, or with, `member`): refused unless active.
    card: Option<String>,
    lines: Vec<SaleLine>,
    #[serde(default)]
    payments: Vec<SalePayment>,
}

/// The stored answer to a keyed write, marked as a repeat.
fn repeated(answer: &[u8]) -> Result<Value, PosError> {
    let mut v: Value = serde_json::from_slice(answer).map_err(|e| {
        PosError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored answer: {e}"),
        )
    })?;
    v["duplicate"] = json!(true);
    Ok(v)
}

fn answer_bytes(answer: &Value) -> Result<Vec<u8>, PosError> {
    serde_json::to_vec(answer)
        .map_err(|e| PosError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Checks the till's payments against the total (cash for the total when none are given).
fn payments(req: &[SalePayment], total: i64) -> Result<Vec<Payment>, PosError> {
    if req.is_empty() {
        return Ok(vec![Payment {
            method: PaymentMethod::Cash,
            amount_cents: total,
        }]);
    }
    let mut paid = 0i64;
    let mut out = Vec::with_capacity(req.len());
    for (i, p) in req.iter().enumerate() {
        if !(0..=AMOUNT_CENTS_MAX).contains(&p.amount_cents) {
            return Err(PosError::invalid(format!(
                "payment {i}: {} cents is outside 0..={AMOUNT_CENTS_MAX}",
                p.amount_cents
            )));
        }
        paid = paid
            .checked_add(p.amount_cents)
            .ok_or_else(|| PosError::invalid("payments overflow"))?;
        out.push(Payment {
            method: p.method.into(),
            amount_cents: p.amount_cents,
        });
    }
    if paid != total {
        return Err(PosError::invalid(format!(
            "payments add up to {paid}, the receipt total is {total}"
        )));
    }
    Ok(out)
}

async fn record_sale(
    State(state): State<PosState>,
    body: Result<Json<SaleRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let store = state.store.clone();
    let customer = cards::resolve(&state, req.member.as_deref(), req.card.as_deref()).await?;
    let card = customer.as_ref().and_then(|c| c.card.clone());
    let member = customer.map(|c| c.member);
    let skus = line_skus(&req.lines)?;
    let basket = basket_lines(&req.lines)?;
    let paid_by_card = req
        .payments
        .iter()
        .any(|p| matches!(p.method, Method::StoredValue | Method::Points) && p.amount_cents > 0);
    let mut takes = Vec::new();
    let mut held_for = None;
    if paid_by_card {
        // Stored value and points: held at HQ first when it is reachable, under a hold id made
        // from the till's receipt number, so that a retry finds the same hold.
        let (Some(no), Some(m)) = (&req.receipt_no, &member) else {
            return Err(PosError::invalid(
                "a sale paid with stored value or points needs the till's `receipt_no` and the `member`",
            ));
        };
        let id: RecordId = parse("receipt_no", &format!("{store}-P{no}"))?;
        let key = format!("sale:{id}");
        if let Some(answer) = state.read(move |r| Ok(r.pos_answer(&key)?)).await? {
            return Ok((StatusCode::OK, Json(repeated(&answer)?)).into_response());
        }
        let facts = state.facts(Vec::new(), Some(m.clone())).await?;
        let policy = facts.member.map(|m| m.policy).unwrap_or_default();
        takes = wallet::takes(&req.payments, &policy)?;
        wallet::hold_takes(&state, &id, m, card.as_ref(), &mut takes).await?;
        held_for = Some(takes.clone());
    }
    let written = state
        .write_with_facts(skus, member.clone(), move |r, facts| {
            let id = match &req.receipt_no {
                Some(no) => parse::<RecordId>("receipt_no", &format!("{store}-P{no}"))?,
                None => minted(&store, "R", next_seq(r, Topic::Sales)?)?,
            };
            let key = format!("sale:{id}");
            if let Some(answer) = r.pos_answer(&key)? {
                return Ok((StatusCode::OK, repeated(&answer)?));
            }
            if r.receipt_state(id.as_str())?.is_some() {
                // Recorded before this node kept answers (a restored database): say so.
                return Ok((
                    StatusCode::OK,
                    json!({ "receipt_id": id.as_str(), "duplicate": true }),
                ));
            }
            let sold_at_ms = now_ms() as i64;
            let priced = price_lines(&facts, &basket, member.as_ref(), facts.t_ms)?;
            let heads = match facts.source {
                Source::Replica => r.pricing_heads(&facts.place)?,
                Source::Hq | Source::Cache { .. } => Vec::new(),
            };
            let pricing = pricing_basis(&facts, &priced, member.as_ref(), heads);
            let receipt = Receipt {
                id: id.clone(),
                store: store.clone(),
                sold_at_ms,
                member,
                payments: payments(&req.payments, priced.total_cents)?,
                pricing,
                lines: priced.lines.clone(),
            };
            receipt.check_bounds().map_err(PosError::invalid)?;
            let entries = wallet::sale_entries(r, &facts, &receipt, &takes)?;
            let mut answer = priced_json(&priced);
            answer["receipt_id"] = json!(id.as_str());
            answer["seq"] = json!(next_seq(r, Topic::Sales)?);
            if !entries.is_empty() {
                answer["member_ledger"] = wallet::entries_json(&entries);
            }
            let mut writes = vec![(Topic::Sales, vec![Op::Receipt(receipt)])];
            if !entries.is_empty() {
                writes.push((
                    Topic::Members,
                    entries.into_iter().map(Op::Ledger).collect(),
                ));
            }
            r.commit_local_many(writes, now_ms(), &key, &answer_bytes(&answer)?)?;
            Ok((StatusCode::CREATED, answer))
        })
        .await;
    let (status, receipt) = match written {
        Ok(done) => done,
        Err(e) => {
            if let Some(mut held) = held_for {
                wallet::release(&state, &mut held).await;
            }
            return Err(e);
        }
    };
    Ok((status, Json(receipt)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnLine {
    sku: String,
    qty: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnRequest {
    /// The till's own number for the return: a retry gets the first answer.
    return_no: String,
    /// The receipt the goods were sold on.
    original: String,
    lines: Vec<ReturnLine>,
    refund_method: Option<Method>,
}

/// `POST /v1/returns`: checked against the original when this store holds it, or HQ does and
/// can be reached (units sold less earlier returns, refund at the price paid, the points the
/// units earned taken back); otherwise taken as unverified, at today's price, for HQ to check
/// when the original arrives.
async fn record_return(
    State(state): State<PosState>,
    body: Result<Json<ReturnRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let store = state.store.clone();
    let original: RecordId = parse("original", &req.original)?;
    let id: RecordId = parse("return_no", &format!("{store}-T{}", req.return_no))?;
    if req.lines.is_empty() || req.lines.len() > RECEIPT_LINES_MAX {
        return Err(PosError::invalid(format!(
            "a return has 1..={RECEIPT_LINES_MAX} lines"
        )));
    }
    let mut wanted = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        wanted.push((parse::<Sku>(&format!("line {i} sku"), &l.sku)?, l.qty));
    }
    let mut skus: Vec<Sku> = wanted.iter().map(|(s, _)| s.clone()).collect();
    skus.dedup();
    // The original: this store's own, or (another store's receipt) HQ's copy while HQ can be
    // reached, with the returns HQ holds against it. Its member's policy decides the points
    // taken back.
    let original_again = original.clone();
    let held_here = state
        .read(move |r| r.original_receipt(&original_again).map_err(PosError::from))
        .await?;
    let from_hq = match &held_here {
        Some(_) => None,
        None if state.link.borrow().connected => {
            match state.lookup(LookupQuery::Original(original.clone())).await {
                Ok(LookupAnswer::Original(found)) => found,
                Ok(_) => None,
                Err(why) => {
                    tracing::info!("original {original} not looked up at HQ ({why})");
                    None
                }
            }
        }
        None => None,
    };
    let member = held_here
        .as_ref()
        .or(from_hq.as_ref().map(|(o, _)| o))
        .and_then(|o| o.member.as_deref())
        .and_then(|m| m.parse::<MemberId>().ok());
    let refund_method = req.refund_method.unwrap_or(Method::Cash);
    if matches!(refund_method, Method::Points) {
        return Err(PosError::invalid(
            "a refund goes to cash, card, voucher or stored value; points come back by themselves",
        ));
    }
    let (status, answer) = state
        .write_with_facts(skus, member, move |r, facts| {
            let key = format!("return:{id}");
            if let Some(answer) = r.pos_answer(&key)? {
                return Ok((StatusCode::OK, repeated(&answer)?));
            }
            if r.return_record(&id)?.is_some() {
                return Ok((
                    StatusCode::OK,
                    json!({ "return_id": id.as_str(), "duplicate": true }),
                ));
            }
            let mut earlier_returns = r.returns_against(&original)?;
            let held_original = match (r.original_receipt(&original)?, from_hq) {
                (Some(o), _) => Some(o),
                (None, Some((o, at_hq))) => {
                    // HQ's returns and this store's own not yet at HQ, each once.
                    for ret in at_hq {
                        if !earlier_returns.iter().any(|e| e.id == ret.id) {
                            earlier_returns.push(ret);
                        }
                    }
                    Some(o)
                }
                (None, None) => None,
            };
            let mut earlier: Vec<ReceiptLine> = Vec::new();
            let (lines, unverified) = match &held_original {
                Some(o) if o.voided => {
                    return Err(PosError::conflict(format!(
                        "receipt {original} was voided: nothing to return"
                    )));
                }
                Some(o) => {
                    earlier = earlier_returns.into_iter().flat_map(|ret| ret.lines).collect();
                    let lines = returns::refund_lines(&original, &o.lines, &earlier, &wanted)
                        .map_err(|e| PosError::invalid(e.to_string()))?;
                    (lines, false)
                }
                None => {
                    // Not held here: today's price, flagged for HQ to check.
                    let basket: Vec<BasketLine> = wanted
                        .iter()
                        .map(|(s, q)| BasketLine::new(s.clone(), *q))
                        .collect();
                    let priced = price_lines(&facts, &basket, None, facts.t_ms)?;
                    let lines = priced
                        .lines
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| !priced.gift_lines.contains(i))
                        .map(|(_, l)| l)
                        .collect();
                    (lines, true)
                }
            };
            let refund: i64 = lines.iter().map(ReceiptLine::amount_cents).sum();
            let ret = ReturnRecord {
                id: id.clone(),
                store: store.clone(),
                original: original.clone(),
                at_ms: now_ms() as i64,
                refunds: vec![Payment {
                    method: refund_method.into(),
                    amount_cents: refund,
                }],
                lines,
                unverified,
            };
            ret.check_bounds().map_err(PosError::invalid)?;
            let entries = match &held_original {
                Some(o) => wallet::return_entries(r, &facts, &ret, o, &earlier)?,
                None => Vec::new(),
            };
            if matches!(refund_method, Method::StoredValue)
                && !entries.iter().any(|e| e.account == LedgerAccount::StoredValue)
            {
                return Err(PosError::invalid(format!(
                    "a refund to stored value needs the original receipt {original} of a member at this store"
                )));
            }
            let mut answer = json!({
                "return_id": id.as_str(),
                "original": original.as_str(),
                "refund_cents": refund,
                "unverified": unverified,
                "lines": ret.lines.iter().map(|l| line_json(l, false)).collect::<Vec<_>>(),
                "seq": next_seq(r, Topic::Sales)?,
            });
            let mut writes = vec![(Topic::Sales, vec![Op::Return(ret)])];
            if !entries.is_empty() {
                answer["member_ledger"] = wallet::entries_json(&entries);
                writes.push((Topic::Members, entries.into_iter().map(Op::Ledger).collect()));
            }
            r.commit_local_many(writes, now_ms(), &key, &answer_bytes(&answer)?)?;
            Ok((StatusCode::CREATED, answer))
        })
        .await?;
    Ok((status, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidRequest {
    /// The till's own number for the void: a retry gets the first answer.
    void_no: String,
    original: String,
    reason: String,
}

async fn record_void(
    State(state): State<PosState>,
    body: Result<Json<VoidRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let store = state.store.clone();
    let original: RecordId = parse("original", &req.original)?;
    let id: RecordId = parse("void_no", &format!("{store}-V{}", req.void_no))?;
    chainsync::model::check_text("reason", &req.reason).map_err(PosError::invalid)?;
    let (status, answer) = state
        .write(move |r| {
            let key = format!("void:{id}");
            if let Some(answer) = r.pos_answer(&key)? {
                return Ok((StatusCode::OK, repeated(&answer)?));
            }
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
            if r.has_returns(&original)? {
                return Err(PosError::conflict(format!(
                    "receipt {original} has returns against it: it cannot be voided (return the rest instead)"
                )));
            }
            let void = Void {
                id: id.clone(),
                store: store.clone(),
                original: original.clone(),
                at_ms: now_ms() as i64,
                reason: req.reason,
            };
            let entries = wallet::void_entries(r, &void)?;
            let mut answer = json!({ "void_id": id.as_str(), "original": original.as_str(), "seq": next_seq(r, Topic::Sales)? });
            let mut writes = vec![(Topic::Sales, vec![Op::Void(void)])];
            if !entries.is_empty() {
                answer["member_ledger"] = wallet::entries_json(&entries);
                writes.push((Topic::Members, entries.into_iter().map(Op::Ledger).collect()));
            }
            r.commit_local_many(writes, now_ms(), &key, &answer_bytes(&answer)?)?;
            Ok((StatusCode::CREATED, answer))
        })
        .await?;
    Ok((status, Json(answer)).into_response())
}

// ------------------------------------------------------------------------- prices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceQuery {
    member: Option<String>,
    at_ms: Option<i64>,
}

/// `GET /v1/prices/{sku}`: the unit price, the promotions that apply to one unit and what one
/// unit costs after them (the engine prices a basket of one).
async fn price(
    State(state): State<PosState>,
    Path(sku): Path<String>,
    query: Result<Query<PriceQuery>, QueryRejection>,
) -> PosResult {
    let Query(q) = query?;
    let sku: Sku = parse("sku", &sku)?;
    let member = parse_member(q.member.as_deref())?;
    let facts = state.facts(vec![sku.clone()], member.clone()).await?;
    let Some(f) = facts.skus.get(&sku).filter(|f| f.product.is_some()) else {
        return Err(PosError::not_found(format!("unknown sku {sku}")));
    };
    let t = q.at_ms.unwrap_or(facts.t_ms);
    let place = &facts.place;
    let retail = merge::effective_price(&f.prices, &sku, PriceKind::Retail, place, t);
    let member_entry = member
        .is_some()
        .then(|| merge::effective_price(&f.prices, &sku, PriceKind::Member, place, t))
        .flatten();
    let charge = merge::shelf_price_cents(&f.prices, &sku, place, t, member.is_some());
    let one = charge
        .map(|_| {
            price_lines(
                &facts,
                &[BasketLine::new(sku.clone(), 1)],
                member.as_ref(),
                t,
            )
        })
        .transpose()?;
    let (local, _) = LocalTime::at(t, &facts.time_zone);
    let ctx = Context {
        place,
        t_ms: t,
        local,
        member: shopper(&facts, member.as_ref()),
    };
    let promotions: Vec<Value> = f
        .promotions
        .iter()
        .filter(|p| checkout::conditions_met(p, &ctx))
        .map(|p| {
            let gave = one
                .as_ref()
                .and_then(|o| o.promotions.iter().find(|a| a.id == p.id))
                .map_or(0, |a| a.cents);
            json!({ "id": p.id.as_str(), "name": p.name, "rule": p.rule, "mode": p.mode, "priority": p.priority, "one_unit_cents": gave })
        })
        .collect();
    let entry_json = |e: &chainsync::model::PriceEntry| json!({ "price_cents": e.price_cents, "scope": e.scope.to_string(), "entry": e.id.as_str() });
    Ok(Json(json!({
        "sku": sku.as_str(),
        "price_cents": charge,
        "promoted_cents": one.as_ref().map(|o| o.total_cents),
        "retail": retail.map(entry_json),
        "member": member_entry.map(entry_json),
        "promotions": promotions,
        "explanation": one.map(|o| o.explanation),
        "source": facts.source.to_json(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnPriceRequest {
    price_cents: i64,
    /// `retail` (default) or `member`.
    kind: Option<String>,
    /// Default: now.
    effective_from_ms: Option<i64>,
    effective_to_ms: Option<i64>,
}

/// `PUT /v1/prices/{sku}`: a store-scope price entry of this store, in its own prices stream.
/// Only a store HQ allows (`may_set_own_prices`); it is the most specific scope, so it beats
/// HQ's chain and region prices here, and it replicates up to HQ like every own stream.
/// Idempotent: the entry's id is the sku, kind and start, so a retry replaces it with itself.
async fn set_own_price(
    State(state): State<PosState>,
    Path(sku): Path<String>,
    body: Result<Json<OwnPriceRequest>, JsonRejection>,
) -> PosResult {
    let Json(req) = body?;
    let sku: Sku = parse("sku", &sku)?;
    let kind = match req.kind.as_deref().unwrap_or("retail") {
        "retail" => PriceKind::Retail,
        "member" => PriceKind::Member,
        other => {
            return Err(PosError::invalid(format!(
                "price kind `{other}` is neither retail nor member"
            )));
        }
    };
    let store = state.store.clone();
    let answer = state
        .write_with_facts(vec![sku.clone()], None, move |r, facts| {
            match r.store_info(&store)? {
                Some(info) if info.may_set_own_prices => {}
                Some(_) => {
                    return Err(PosError::new(
                        StatusCode::FORBIDDEN,
                        format!("HQ does not let store {store} set its own prices (may_set_own_prices)"),
                    ));
                }
                None => {
                    return Err(PosError::unavailable(
                        "this store has not heard from HQ yet",
                    ));
                }
            }
            if facts.skus.get(&sku).is_none_or(|f| f.product.is_none()) {
                return Err(PosError::invalid(format!("unknown sku {sku}")));
            }
            let from = req.effective_from_ms.unwrap_or(facts.t_ms);
            let kind_code = match kind {
                PriceKind::Retail => "r",
                _ => "m",
            };
            let entry = chainsync::model::PriceEntry {
                id: parse("price entry", &format!("{store}-{sku}-{kind_code}{from}"))?,
                sku: sku.clone(),
                scope: chainsync::ids::Scope::Store(store.clone()),
                kind,
                price_cents: req.price_cents,
                effective_from_ms: from,
                effective_to_ms: req.effective_to_ms,
            };
            entry.check_bounds().map_err(PosError::invalid)?;
            let id = entry.id.to_string();
            let committed = r.commit_local(
                Topic::Prices(chainsync::ids::Scope::Store(store.clone())),
                vec![Op::PriceUpsert(entry)],
                now_ms(),
            )?;
            Ok(json!({ "id": id, "sku": sku.as_str(), "price_cents": req.price_cents, "scope": format!("store:{store}"), "seq": committed.seq }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

// ------------------------------------------------------------------------- members

fn member_json(m: &MemberFacts, source: Source) -> Value {
    let fields: BTreeMap<String, &str> = m
        .profile
        .iter()
        .map(|(f, v)| (format!("{f:?}").to_lowercase(), v.as_str()))
        .collect();
    json!({
        "member": m.member.as_str(),
        "profile": fields,
        "points": m.points,
        "stored_value_cents": m.stored_value_cents,
        "source": source.to_json(),
    })
}

async fn member(State(state): State<PosState>, Path(id): Path<String>) -> PosResult {
    let member: MemberId = parse("member", &id)?;
    let facts = state.facts(Vec::new(), Some(member.clone())).await?;
    match facts.member {
        Some(m) if m.known => Ok(Json(member_json(&m, facts.source)).into_response()),
        Some(_) => Err(PosError::not_found(format!("no member {member} here"))),
        None => Err(PosError::unavailable(format!(
            "HQ is unreachable and member {member} was never looked up at this store"
        ))),
    }
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
    ] {
        if let Some(value) = value {
            fields.push((field, value));
        }
    }
    if fields.is_empty() {
        return Err(PosError::invalid("no field to set"));
    }
    MemberEdit {
        member: member.clone(),
        hlc: Hlc::default(),
        fields: fields.clone(),
    }
    .check_bounds()
    .map_err(PosError::invalid)?;
    // A hosted store answers with what HQ (or its cache) knew, with this edit laid over it.
    let before = if state.hosted().await? {
        Some(state.facts(Vec::new(), Some(member.clone())).await?)
    } else {
        None
    };
    let answer = state
        .write(move |r| {
            let edit = MemberEdit {
                member: member.clone(),
                hlc: Hlc::default(),
                fields: fields.clone(),
            };
            r.commit_local(Topic::Members, vec![Op::MemberEdit(edit)], now_ms())?;
            Ok(match before {
                None => member_json(&r.member_facts(&member)?, Source::Replica),
                Some(facts) => {
                    let mut m = facts.member.unwrap_or_else(|| MemberFacts {
                        known: true,
                        ..MemberFacts::unknown(member)
                    });
                    for (field, value) in fields {
                        m.profile.retain(|(f, _)| *f != field);
                        m.profile.push((field, value));
                    }
                    member_json(&m, facts.source)
                }
            })
        })
        .await?;
    Ok(Json(answer).into_response())
}

// ------------------------------------------------------------------------- stock

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovementRequest {
    /// The till's own number for the movement: a retry gets the first answer.
    movement_no: String,
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
    if !(0..=STOCK_MOVE_MAX_UNITS).contains(&req.qty) {
        return Err(PosError::invalid(format!(
            "quantity {} is outside 0..={STOCK_MOVE_MAX_UNITS}",
            req.qty
        )));
    }
    let store = state.store.clone();
    let id: RecordId = parse("movement_no", &format!("{store}-K{}", req.movement_no))?;
    let (status, answer) = state
        .write_with_facts(vec![sku.clone()], None, move |r, facts| {
            let key = format!("movement:{id}");
            if let Some(answer) = r.pos_answer(&key)? {
                return Ok((StatusCode::OK, repeated(&answer)?));
            }
            if facts.skus.get(&sku).is_none_or(|f| f.product.is_none()) {
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
            let after = current
                .checked_add(delta)
                .ok_or_else(|| PosError::invalid("stock would overflow"))?;
            let answer = json!({ "movement_id": id.as_str(), "sku": sku.as_str(), "qty": after, "moved": delta });
            if delta != 0 {
                let m = StockMovement {
                    id: id.clone(),
                    store: store.clone(),
                    sku: sku.clone(),
                    kind,
                    qty_delta: delta,
                    reference: req.reference,
                    at_ms: now_ms() as i64,
                };
                m.check_bounds().map_err(PosError::invalid)?;
                r.commit_local_answering(
                    Topic::Inventory,
                    vec![Op::Stock(m)],
                    now_ms(),
                    &key,
                    &answer_bytes(&answer)?,
                )?;
            } else {
                // A count that found the books right moves nothing, but its retry must not
                // move anything later either.
                r.put_pos_answer(&key, &answer_bytes(&answer)?)?;
            }
            Ok((StatusCode::CREATED, answer))
        })
        .await?;
    Ok((status, Json(answer)).into_response())
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
    let (streams, seeding, info) = state
        .read(|r| {
            let node = r.node().clone();
            Ok((r.own_streams()?, r.seeding()?, r.store_info(&node)?))
        })
        .await?;
    let seeding: Vec<Value> = seeding
        .into_iter()
        .map(|p| json!({ "stream": p.stream.to_string(), "seq": p.seq, "parts_done": p.parts_done, "parts": p.parts }))
        .collect();
    let backlog: BTreeMap<String, u64> = streams
        .into_iter()
        .map(|(s, acked, head)| (s.topic.to_string(), head.saturating_sub(acked)))
        .collect();
    Ok(Json(json!({
        "connected": link.connected,
        "last_exchange_ms": link.last_exchange_ms,
        "last_error": link.last_error,
        "outbox": backlog,
        "mode": info.map(|i| format!("{:?}", i.mode).to_lowercase()),
        "seeding": seeding,
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
