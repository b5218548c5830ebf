//! The retail model: what a chain replicates.
//!
//! Plain data, no behaviour beyond small checks. Money is integer cents (`_cents`), time is Unix
//! milliseconds (`_ms`, store wall time where a store recorded it), quantities are whole units.
//!
//! Every number a node accepts has a domain limit (the `*_MAX` constants below, units in the
//! name), checked at the POS and again at the validation gate for change sets from any node, so
//! that sums over a receipt, a store or a report cannot overflow `i64`.
//!
//! Records are immutable once written (receipts, returns, voids, ledger entries, stock movements):
//! a correction is a new record that points at the original. Catalog, directory, price and
//! promotion records are keyed and replaced whole by their single writer. Member profiles merge per
//! field (see [`crate::merge`]).

use crate::hlc::Hlc;
use crate::ids::{CardNo, MemberId, NodeId, RecordId, RegionId, Scope, Sku, StreamId};
use serde::{Deserialize, Serialize};

/// Most units on one receipt line (and in one return line).
pub const LINE_QTY_MAX_UNITS: i64 = 10_000;
/// Most lines on one receipt or return.
pub const RECEIPT_LINES_MAX: usize = 500;
/// Highest price of one unit, in cents (100,000.00).
pub const UNIT_PRICE_CENTS_MAX: i64 = 10_000_000;
/// Largest single amount (a payment, a refund, a ledger entry, a receipt total), in cents.
/// A receipt at its limits (500 lines of 10,000 units at the highest price) stays below it
/// only as 5e13; sums of up to 10^5 such amounts still fit `i64`.
pub const AMOUNT_CENTS_MAX: i64 = 100_000_000_000_000;
/// Largest change of stock by one movement, in units.
pub const STOCK_MOVE_MAX_UNITS: i64 = 1_000_000;
/// Longest free text a till may attach (a reason code, a reference), in bytes.
pub const TEXT_BYTES_MAX: usize = 200;

/// How a store exchanges data with HQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoreMode {
    /// Always connected; changes flow both ways as they happen.
    Realtime,
    /// Full local replica; connects on a schedule or swaps bundle files.
    Batch,
    /// No local replica; data lives at HQ.
    Hosted,
}

impl StoreMode {
    /// The mode's name as used in configs and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreMode::Realtime => "realtime",
            StoreMode::Batch => "batch",
            StoreMode::Hosted => "hosted",
        }
    }
}

/// A region of the chain: a branch company, an office, a district. Regions nest: a price or
/// promotion for a region covers every store in it and in the regions under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub id: RegionId,
    pub name: String,
    /// The region it belongs to; `None` for a top region.
    pub parent: Option<RegionId>,
}

/// A store as HQ's directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub id: NodeId,
    pub name: String,
    pub region: RegionId,
    pub mode: StoreMode,
    /// The store's ed25519 public key, which signs everything it originates.
    pub public_key: [u8; 32],
    /// Whether the store may set prices for its own store scope.
    pub may_set_own_prices: bool,
    /// A revoked store's connections are refused and its change sets rejected.
    pub revoked: bool,
    /// Keys the store signed with before it was replaced (a dead machine, a lost key), each with
    /// how far it signed each of the store's streams: its change sets up to there still verify
    /// for anyone replaying them, and nothing after.
    pub retired_keys: Vec<RetiredKey>,
    /// The store's IANA time zone (`Europe/Paris`), in which promotion days, hours and dates
    /// are read; `UTC` when HQ set none.
    pub time_zone: String,
}

/// A store key that was replaced, and the last seq it signed in each of the store's streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    pub public_key: [u8; 32],
    pub valid_through: Vec<(crate::ids::Topic, u64)>,
}

impl RetiredKey {
    /// Whether this key may have signed change set `seq` of the store's `topic` stream.
    pub fn covers(&self, topic: &crate::ids::Topic, seq: u64) -> bool {
        self.valid_through
            .iter()
            .any(|(t, through)| t == topic && seq <= *through)
    }
}

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub barcodes: Vec<String>,
    /// What the chain pays for one unit, for margin figures.
    pub unit_cost_cents: i64,
    /// A withdrawn product stays in the catalog (old receipts name it) but is no longer sold.
    pub active: bool,
}

/// Which price list an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PriceKind {
    Retail,
    Member,
    Wholesale,
}

/// One price of one sku for one scope and kind, in effect from `effective_from_ms` until
/// `effective_to_ms` (exclusive; open-ended if `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceEntry {
    pub id: RecordId,
    pub sku: Sku,
    pub scope: Scope,
    pub kind: PriceKind,
    pub price_cents: i64,
    pub effective_from_ms: i64,
    pub effective_to_ms: Option<i64>,
}

impl PriceEntry {
    /// Whether the entry is in effect at `t_ms`.
    pub fn in_effect_at(&self, t_ms: i64) -> bool {
        self.effective_from_ms <= t_ms && self.effective_to_ms.is_none_or(|to| t_ms < to)
    }
}

/// What a promotion gives. The arithmetic of each kind is in [`crate::checkout`].
///
/// In JSON a rule is externally tagged: `{"percent_off": {"basis_points": 1000}}` (postcard,
/// which carries change sets, cannot read internally tagged enums).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionRule {
    /// A percentage off each eligible unit, in basis points (1,000 = 10 %).
    PercentOff { basis_points: u32 },
    /// A fixed amount off each eligible unit.
    AmountOff { cents: i64 },
    /// Sold at this deal price per unit (never raises a price).
    FixedPrice { cents: i64 },
    /// Quantity tiers: a line of at least `min_qty` units pays `unit_cents` each (the highest
    /// tier reached; each line reaches its tier on its own).
    QuantityTiers { tiers: Vec<QuantityTier> },
    /// Buy `buy`, get `get` free. Per line (the same sku) unless `across_skus`: then every
    /// eligible unit of the receipt is pooled, most expensive first, and in each group of
    /// `buy + get` the cheapest `get` are free.
    BuyNGetM {
        buy: u32,
        get: u32,
        #[serde(default)]
        across_skus: bool,
    },
    /// Mix and match: any `count` eligible units, pooled most expensive first, form a group
    /// that gets `deal`.
    MixAndMatch { count: u32, deal: GroupDeal },
    /// Basket spend thresholds in tiers, on the already discounted total of eligible lines:
    /// the highest tier reached gives its reward.
    SpendThreshold { tiers: Vec<SpendTier> },
    /// Bonus points: the points the eligible lines earn are raised by `percent` (100: double
    /// points). Changes no price; see [`crate::loyalty::points_earned`].
    BonusPoints { percent: u32 },
}

/// One quantity tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantityTier {
    pub min_qty: u32,
    pub unit_cents: i64,
}

/// What a mix-and-match group gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupDeal {
    /// The group costs this much in all.
    Price {
        cents: i64,
    },
    PercentOff {
        basis_points: u32,
    },
    /// This much off the group.
    AmountOff {
        cents: i64,
    },
}

/// One spend tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendTier {
    pub spend_cents: i64,
    pub reward: SpendReward,
}

/// What reaching a spend tier gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendReward {
    AmountOff {
        cents: i64,
    },
    PercentOff {
        basis_points: u32,
    },
    /// One unit of this sku free (added to the receipt if it is not on it).
    Gift {
        sku: Sku,
    },
}

/// How a promotion combines with others (see [`crate::checkout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combination {
    /// Tried first and alone: the lines it applies to get nothing else.
    Exclusive,
    /// Competes with the others; the combination best for the customer wins.
    BestPrice,
    /// Stacks with the other compound promotions of its priority on the same lines.
    Compound,
}

/// How many units of a promotion one store may give in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAllocation {
    pub store: NodeId,
    pub units: u32,
}

/// Every day of the week (Monday is bit 0, Sunday bit 6).
pub const ALL_DAYS: u8 = 0x7f;

/// A promotion: a rule and the conditions under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: RecordId,
    pub name: String,
    pub scope: Scope,
    pub rule: PromotionRule,
    /// The skus it applies to; with `categories` empty too, every sku.
    pub skus: Vec<Sku>,
    /// Product categories it applies to (in addition to `skus`).
    pub categories: Vec<String>,
    pub mode: Combination,
    /// Higher goes first; a line is discounted at one priority only.
    pub priority: u16,
    /// Members only.
    pub member_only: bool,
    /// Members of these levels only (empty: any).
    pub member_levels: Vec<String>,
    /// Only in the member's birthday month (store-local).
    pub birthday_only: bool,
    pub starts_at_ms: i64,
    /// Exclusive; ending a promotion early sets it.
    pub ends_at_ms: Option<i64>,
    /// Store-local dates `YYYYMMDD`, both inclusive.
    pub local_dates: Option<(u32, u32)>,
    /// Store-local days of the week (bit 0 Monday … bit 6 Sunday).
    pub days_of_week: u8,
    /// Store-local hours `[from, to)`, e.g. happy hour; `from > to` wraps midnight.
    pub hours: Option<(u8, u8)>,
    /// At most this many units per receipt.
    pub max_units_per_receipt: Option<u32>,
    /// Empty: every store in scope, without limit. Otherwise only the stores listed, each up to
    /// its units (exact offline: only that store spends its allocation).
    pub allocations: Vec<StoreAllocation>,
}

/// A member profile field, merged independently of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProfileField {
    Name,
    Phone,
    Email,
    /// `MM-DD`.
    Birthday,
    /// Member level, e.g. `silver`.
    Level,
}

impl ProfileField {
    /// Every field, in a stable order.
    pub const ALL: [ProfileField; 5] = [
        ProfileField::Name,
        ProfileField::Phone,
        ProfileField::Email,
        ProfileField::Birthday,
        ProfileField::Level,
    ];

    /// A small stable number for storage.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The field for a storage code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// A loyalty card issued to a member (at a store's counter or by HQ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub number: CardNo,
    pub member: MemberId,
    pub issued_at_ms: i64,
}

/// Where a card stands. Statuses are ordered by strength ([`CardStatus::rank`]): a stronger one
/// is never undone by a weaker one, whatever the clocks say, so an offline store's old edit
/// cannot revive a card HQ cancelled. Only HQ moves a card between active and frozen (its own
/// stream orders those); lost, cancelled and replaced are final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardStatus {
    Active,
    /// Blocked for now by HQ (a dispute, a suspected fraud); HQ may unfreeze it.
    Frozen,
    /// Reported lost (at a store or at HQ).
    Lost,
    /// Closed by HQ.
    Cancelled,
    /// Lost and replaced by another card of the same member, which carries the balances.
    Replaced {
        by: CardNo,
    },
}

impl CardStatus {
    /// Strength: 0 for active and frozen (HQ toggles them), then lost, cancelled, replaced.
    pub fn rank(&self) -> u8 {
        match self {
            CardStatus::Active | CardStatus::Frozen => 0,
            CardStatus::Lost => 1,
            CardStatus::Cancelled => 2,
            CardStatus::Replaced { .. } => 3,
        }
    }

    /// A small stable number for storage.
    pub fn code(&self) -> u8 {
        match self {
            CardStatus::Active => 0,
            CardStatus::Frozen => 1,
            CardStatus::Lost => 2,
            CardStatus::Cancelled => 3,
            CardStatus::Replaced { .. } => 4,
        }
    }

    /// The status's name in the APIs.
    pub fn as_str(&self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Frozen => "frozen",
            CardStatus::Lost => "lost",
            CardStatus::Cancelled => "cancelled",
            CardStatus::Replaced { .. } => "replaced",
        }
    }
}

/// A sign-up or an edit of a member profile: the fields it sets, stamped with the writer's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEdit {
    pub member: MemberId,
    pub hlc: Hlc,
    pub fields: Vec<(ProfileField, String)>,
}

/// Longest value of a member profile field, in bytes.
pub const PROFILE_VALUE_BYTES_MAX: usize = 200;

impl MemberEdit {
    /// Each value at most [`PROFILE_VALUE_BYTES_MAX`] bytes; a birthday `MM-DD` (or empty, to
    /// clear it), so birthday promotions read the month every node reads.
    pub fn check_bounds(&self) -> Result<(), String> {
        for (field, value) in &self.fields {
            if value.len() > PROFILE_VALUE_BYTES_MAX {
                return Err(format!(
                    "{field:?} of member {} is longer than {PROFILE_VALUE_BYTES_MAX} bytes",
                    self.member
                ));
            }
            if *field == ProfileField::Birthday && !value.is_empty() && !is_month_day(value) {
                return Err(format!(
                    "birthday `{value}` of member {} is not MM-DD",
                    self.member
                ));
            }
        }
        Ok(())
    }
}

/// `MM-DD` with a month 01..=12 and a day 01..=31.
fn is_month_day(b: &str) -> bool {
    let bytes = b.as_bytes();
    bytes.len() == 5
        && bytes[2] == b'-'
        && b.get(..2)
            .and_then(|m| m.parse::<u8>().ok())
            .is_some_and(|m| (1..=12).contains(&m))
        && b.get(3..)
            .and_then(|d| d.parse::<u8>().ok())
            .is_some_and(|d| (1..=31).contains(&d))
}

/// Which balance a ledger entry moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LedgerAccount {
    Points,
    /// Stored value, in cents.
    StoredValue,
}

impl LedgerAccount {
    /// The account's name in the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerAccount::Points => "points",
            LedgerAccount::StoredValue => "stored_value",
        }
    }
}

/// Why a ledger entry was written. Each kind has one sign (see [`LedgerEntry::check_bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerKind {
    /// Points a sale earned (+).
    Earned,
    /// Points paid with (−).
    Redeemed,
    /// Points expired by HQ's policy (−, HQ only).
    Expired,
    /// Stored value bought with money (+, carries its tender).
    ToppedUp,
    /// Stored value paid with (−).
    Spent,
    /// A correction by HQ, e.g. settling an overdrawn card (either sign, HQ only).
    Adjusted,
    /// Stored value or points given back by a void or a return (+).
    Refunded,
    /// Points a return takes back because the returned units earned them (−).
    TakenBack,
}

impl LedgerKind {
    /// Every kind, in storage-code order.
    pub const ALL: [LedgerKind; 8] = [
        LedgerKind::Earned,
        LedgerKind::Redeemed,
        LedgerKind::Expired,
        LedgerKind::ToppedUp,
        LedgerKind::Spent,
        LedgerKind::Adjusted,
        LedgerKind::Refunded,
        LedgerKind::TakenBack,
    ];

    /// The kind of a storage code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The kind's name on statements and in the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Earned => "earned",
            LedgerKind::Redeemed => "redeemed",
            LedgerKind::Expired => "expired",
            LedgerKind::ToppedUp => "topped_up",
            LedgerKind::Spent => "spent",
            LedgerKind::Adjusted => "adjusted",
            LedgerKind::Refunded => "refunded",
            LedgerKind::TakenBack => "taken_back",
        }
    }
}

/// How a store was allowed to take from a balance (a spend or a redemption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpendAuth {
    /// HQ held the amount first; this entry captures hold `0` (a hold id of the store).
    Held(RecordId),
    /// HQ could not be reached: the store took it within the card's offline allowance. Both
    /// figures are as the store knew them, in the account's unit: the allowance it applied, and
    /// what it had already taken offline from this card and HQ had not yet acknowledged.
    Offline { allowance: i64, spent_before: i64 },
}

/// One movement of a member's points or stored value. Balances are the sum of entries; no node
/// ever stores a balance as the truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: RecordId,
    pub member: MemberId,
    pub account: LedgerAccount,
    pub kind: LedgerKind,
    /// Signed: positive adds to the balance.
    pub amount: i64,
    pub receipt: Option<RecordId>,
    pub at_ms: i64,
    /// A store's spend or redemption: how it was authorised (required from stores).
    pub auth: Option<SpendAuth>,
    /// A top-up: the money that paid for it (cash or card; required).
    pub tender: Option<PaymentMethod>,
    /// A store's free text: the reason of an adjustment, the till's reference.
    pub note: String,
}

/// What a store may take from one card while it cannot reach HQ, in each account's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    pub stored_value_cents: i64,
    pub points: i64,
}

impl Allowance {
    /// The allowance of one account.
    pub fn of(&self, account: LedgerAccount) -> i64 {
        match account {
            LedgerAccount::Points => self.points,
            LedgerAccount::StoredValue => self.stored_value_cents,
        }
    }
}

/// A member level's multiplier on points earned, in percent (150: one and a half times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelMultiplier {
    pub level: String,
    pub percent: u32,
}

/// A member level's offline allowance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelAllowance {
    pub level: String,
    pub allowance: Allowance,
}

/// HQ's rules for points and stored value, one for the chain, replaced whole (HQ's members
/// stream). Read by [`crate::loyalty`]; with no policy at all a store earns no points, takes
/// no points as payment and spends nothing offline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoyaltyPolicy {
    /// Points earned per whole currency unit (100 cents) of eligible spend.
    pub points_per_unit: u32,
    /// Multipliers by member level (a level not listed earns 100 %).
    pub level_multipliers: Vec<LevelMultiplier>,
    /// Skus that earn no points (tobacco, gift cards …).
    pub excluded_skus: Vec<Sku>,
    /// Categories that earn no points.
    pub excluded_categories: Vec<String>,
    /// What one point pays at the till, in cents (0: points are not a means of payment).
    pub point_value_cents: u32,
    /// The offline allowance of a card with no allowance of its own and no level listed.
    pub offline: Allowance,
    /// Offline allowances by member level.
    pub level_offline: Vec<LevelAllowance>,
    /// Points not used within this many days of being added expire (0: never); HQ writes the
    /// expiry entries.
    pub points_expire_days: u32,
}

/// Why stock moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovementKind {
    /// Goods received from a supplier or HQ.
    Received,
    TransferIn,
    TransferOut,
    /// A stock count found more or fewer than the books.
    CountAdjustment,
    /// Damaged, expired, stolen.
    WriteOff,
}

/// A stock movement recorded by the store holding the stock (sales and returns move stock through
/// their receipts, not through movements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockMovement {
    pub id: RecordId,
    pub store: NodeId,
    pub sku: Sku,
    pub kind: MovementKind,
    /// Signed change of the store's stock.
    pub qty_delta: i64,
    /// Delivery note, transfer partner, count sheet …
    pub reference: String,
    pub at_ms: i64,
}

/// Where a line's discount came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscountSource {
    Promotion(RecordId),
    /// Given by hand at the till, with the reason code the till sent.
    Manual {
        reason: String,
    },
    /// On a return: the share of the original receipt's discounts on the returned units, so
    /// the refund is what was paid.
    AsSold {
        receipt: RecordId,
    },
}

/// One discount on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDiscount {
    pub source: DiscountSource,
    pub cents: i64,
    /// Units the discount applied to (allocations count these).
    pub units: u32,
}

/// One line of a receipt or return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptLine {
    pub sku: Sku,
    pub qty: i64,
    /// What one unit was charged before discounts.
    pub unit_price_cents: i64,
    /// The sum of `discounts`.
    pub discount_cents: i64,
    pub discounts: Vec<LineDiscount>,
    /// Set when the till overrode the price the engine gave (`list_cents`), with its reason.
    pub price_override: Option<PriceOverride>,
}

/// A till's override of the engine's unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceOverride {
    pub list_cents: i64,
    pub reason: String,
}

impl ReceiptLine {
    /// A line at `unit_price_cents` with no discount.
    pub fn plain(sku: Sku, qty: i64, unit_price_cents: i64) -> Self {
        Self {
            sku,
            qty,
            unit_price_cents,
            discount_cents: 0,
            discounts: Vec::new(),
            price_override: None,
        }
    }

    /// What the line costs the customer.
    pub fn amount_cents(&self) -> i64 {
        self.qty
            .saturating_mul(self.unit_price_cents)
            .saturating_sub(self.discount_cents)
    }

    /// Checks the line against the domain limits; `Err` names the problem.
    pub fn check_bounds(&self) -> Result<(), String> {
        if !(1..=LINE_QTY_MAX_UNITS).contains(&self.qty) {
            return Err(format!(
                "quantity {} of {} is outside 1..={LINE_QTY_MAX_UNITS}",
                self.qty, self.sku
            ));
        }
        if !(0..=UNIT_PRICE_CENTS_MAX).contains(&self.unit_price_cents) {
            return Err(format!(
                "unit price {} of {} is outside 0..={UNIT_PRICE_CENTS_MAX} cents",
                self.unit_price_cents, self.sku
            ));
        }
        let gross = self.qty * self.unit_price_cents; // both bounded: at most 1e11
        let mut sum = 0i64;
        for d in &self.discounts {
            if !(0..=gross).contains(&d.cents) {
                return Err(format!(
                    "a discount of {} on {} is outside 0..={gross} cents",
                    d.cents, self.sku
                ));
            }
            if let DiscountSource::Manual { reason } = &d.source {
                check_text("discount reason", reason)?;
            }
            sum += d.cents; // at most 500 * 1e11
        }
        if sum != self.discount_cents || sum > gross {
            return Err(format!(
                "discounts of {} add up to {sum}, the line says {} and is worth {gross}",
                self.sku, self.discount_cents
            ));
        }
        if let Some(o) = &self.price_override {
            check_text("price override reason", &o.reason)?;
            if !(0..=UNIT_PRICE_CENTS_MAX).contains(&o.list_cents) {
                return Err(format!("list price {} out of range", o.list_cents));
            }
        }
        Ok(())
    }
}

/// Checks a till's free text: not empty, at most [`TEXT_BYTES_MAX`] bytes.
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > TEXT_BYTES_MAX {
        return Err(format!("{what} must be 1..={TEXT_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// Checks an amount of money against [`AMOUNT_CENTS_MAX`] (either sign).
pub fn check_amount(what: &str, cents: i64) -> Result<(), String> {
    if cents.checked_abs().is_none_or(|a| a > AMOUNT_CENTS_MAX) {
        return Err(format!(
            "{what} of {cents} cents is beyond the limit of {AMOUNT_CENTS_MAX}"
        ));
    }
    Ok(())
}

/// How a receipt was paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentMethod {
    Cash,
    Card,
    StoredValue,
    Points,
    Voucher,
}

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub method: PaymentMethod,
    pub amount_cents: i64,
}

/// A sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: RecordId,
    pub store: NodeId,
    /// Store wall time when the sale was made.
    pub sold_at_ms: i64,
    pub member: Option<MemberId>,
    pub lines: Vec<ReceiptLine>,
    pub payments: Vec<Payment>,
    /// What the checkout engine priced the receipt with, so that HQ can price it again.
    pub pricing: PricingBasis,
}

/// Where the facts a receipt was priced with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FactsSource {
    /// The store's own replica (realtime and batch): [`PricingBasis::heads`] says how far.
    Replica,
    /// HQ's answer to a lookup, just then (hosted).
    Hq,
    /// A hosted store's lookup cache, because HQ could not be reached.
    Cache,
}

/// How far a store held one stream when it priced a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHead {
    pub stream: StreamId,
    pub seq: u64,
}

/// Most streams a [`PricingBasis`] names: the catalog and two per scope covering a store.
pub const PRICING_HEADS_MAX: usize = 32;

/// The inputs of a receipt's pricing that HQ cannot know by itself: when the engine priced it,
/// how far the store held the catalog, price and promotion streams covering it, and the member
/// as the store saw them. HQ prices every arriving receipt again from its own facts and, where
/// the answers differ, uses this to say why (`replica/pricecheck.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingBasis {
    /// The pricing time the engine used (Unix ms); it can be later than `sold_at_ms`.
    pub priced_at_ms: i64,
    pub source: FactsSource,
    /// With [`FactsSource::Replica`]: the store's heads of the streams that priced it.
    pub heads: Vec<StreamHead>,
    /// The member's level and birthday month as the store knew them.
    pub member_level: Option<String>,
    pub birthday_month: Option<u8>,
    /// Whether the last line is a gift the engine added (a spend threshold's reward).
    pub gift_line: bool,
}

impl PricingBasis {
    /// A basis for receipts priced outside the engine (tests, tools): from the store's
    /// replica, knowing no heads.
    pub fn unknown(priced_at_ms: i64) -> Self {
        Self {
            priced_at_ms,
            source: FactsSource::Replica,
            heads: Vec::new(),
            member_level: None,
            birthday_month: None,
            gift_line: false,
        }
    }

    /// Checks the sizes and the texts.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.heads.len() > PRICING_HEADS_MAX {
            return Err(format!(
                "a pricing basis of {} streams (at most {PRICING_HEADS_MAX})",
                self.heads.len()
            ));
        }
        if let Some(level) = &self.member_level {
            check_text("member level", level)?;
        }
        if self.birthday_month.is_some_and(|m| !(1..=12).contains(&m)) {
            return Err("a birthday month outside 1..=12".into());
        }
        Ok(())
    }
}

impl Receipt {
    /// Sum of the line amounts.
    pub fn total_cents(&self) -> i64 {
        self.lines
            .iter()
            .map(ReceiptLine::amount_cents)
            .fold(0, i64::saturating_add)
    }
}

/// Goods brought back. The original may be a receipt of another store, or one this node has not
/// received yet; the return stands on its own and points at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRecord {
    pub id: RecordId,
    pub store: NodeId,
    pub original: RecordId,
    pub at_ms: i64,
    /// Returned units, with positive quantities.
    pub lines: Vec<ReceiptLine>,
    pub refunds: Vec<Payment>,
    /// The store did not hold the original when it took the return: HQ lists it and checks it
    /// once the original arrives.
    pub unverified: bool,
}

/// A receipt cancelled whole at the till, by the store that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Void {
    pub id: RecordId,
    pub store: NodeId,
    pub original: RecordId,
    pub at_ms: i64,
    pub reason: String,
}

// ------------------------------------------------------------------------------ domain limits

/// Most tiers of a quantity or spend promotion.
pub const PROMOTION_TIERS_MAX: usize = 20;
/// Largest group of a buy-N-get-M or mix-and-match promotion, in units.
pub const PROMOTION_GROUP_MAX_UNITS: u32 = 100;
/// Most skus, categories, levels or store allocations one promotion names.
pub const PROMOTION_LIST_MAX: usize = 10_000;

fn check_lines(lines: &[ReceiptLine]) -> Result<(), String> {
    if lines.is_empty() || lines.len() > RECEIPT_LINES_MAX {
        return Err(format!(
            "{} lines (1..={RECEIPT_LINES_MAX} allowed)",
            lines.len()
        ));
    }
    lines.iter().try_for_each(ReceiptLine::check_bounds)
}

fn check_payments(what: &str, payments: &[Payment]) -> Result<(), String> {
    if payments.len() > 20 {
        return Err(format!("{} {what}s (at most 20)", payments.len()));
    }
    for p in payments {
        check_amount(what, p.amount_cents)?;
    }
    Ok(())
}

impl Receipt {
    /// Checks every number against the domain limits.
    pub fn check_bounds(&self) -> Result<(), String> {
        check_lines(&self.lines)?;
        check_payments("payment", &self.payments)?;
        self.pricing.check_bounds()?;
        if self.pricing.gift_line && self.lines.len() < 2 {
            return Err("a gift line needs a line it was given for".into());
        }
        check_amount("receipt total", self.total_cents())
    }
}

impl ReturnRecord {
    /// Checks every number against the domain limits.
    pub fn check_bounds(&self) -> Result<(), String> {
        check_lines(&self.lines)?;
        check_payments("refund", &self.refunds)?;
        if self.refunds.iter().any(|r| r.amount_cents < 0) {
            return Err("a negative refund".into());
        }
        Ok(())
    }
}

impl StockMovement {
    /// Checks the quantity and the reference.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self
            .qty_delta
            .checked_abs()
            .is_none_or(|q| q > STOCK_MOVE_MAX_UNITS)
        {
            return Err(format!(
                "a stock movement of {} units (at most {STOCK_MOVE_MAX_UNITS} either way)",
                self.qty_delta
            ));
        }
        if self.reference.len() > TEXT_BYTES_MAX {
            return Err(format!("reference longer than {TEXT_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

impl LedgerEntry {
    /// Checks the amount, its sign for the kind, and what the kind must carry.
    pub fn check_bounds(&self) -> Result<(), String> {
        check_amount("ledger amount", self.amount)?;
        if self.note.len() > TEXT_BYTES_MAX {
            return Err(format!("ledger note longer than {TEXT_BYTES_MAX} bytes"));
        }
        let (sign_ok, sign) = match self.kind {
            LedgerKind::Earned | LedgerKind::ToppedUp | LedgerKind::Refunded => {
                (self.amount > 0, "positive")
            }
            LedgerKind::Redeemed
            | LedgerKind::Spent
            | LedgerKind::Expired
            | LedgerKind::TakenBack => (self.amount < 0, "negative"),
            LedgerKind::Adjusted => (self.amount != 0, "non-zero"),
        };
        if !sign_ok {
            return Err(format!(
                "a {:?} ledger entry of {} must be {sign}",
                self.kind, self.amount
            ));
        }
        let account_ok = match self.kind {
            LedgerKind::Earned
            | LedgerKind::Redeemed
            | LedgerKind::Expired
            | LedgerKind::TakenBack => self.account == LedgerAccount::Points,
            LedgerKind::ToppedUp | LedgerKind::Spent => self.account == LedgerAccount::StoredValue,
            LedgerKind::Adjusted | LedgerKind::Refunded => true,
        };
        if !account_ok {
            return Err(format!(
                "a {:?} ledger entry does not move {:?}",
                self.kind, self.account
            ));
        }
        match (self.kind, self.tender) {
            (LedgerKind::ToppedUp, Some(PaymentMethod::Cash | PaymentMethod::Card)) => {}
            (LedgerKind::ToppedUp, other) => {
                return Err(format!(
                    "a top-up must carry the cash or card payment that funded it, not {other:?}"
                ));
            }
            (_, Some(_)) => return Err("only a top-up carries a tender".into()),
            (_, None) => {}
        }
        if self.auth.is_some() && !matches!(self.kind, LedgerKind::Spent | LedgerKind::Redeemed) {
            return Err("only a spend or a redemption carries an authorisation".into());
        }
        if let Some(SpendAuth::Offline {
            allowance,
            spent_before,
        }) = &self.auth
        {
            check_amount("offline allowance", *allowance)?;
            check_amount("offline spends", *spent_before)?;
        }
        Ok(())
    }
}

impl LoyaltyPolicy {
    /// Checks the numbers and list sizes.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.points_per_unit > 10_000 || self.point_value_cents > 10_000 {
            return Err("points per unit and a point's value are at most 10,000".into());
        }
        if self.points_expire_days > 36_600 {
            return Err("points expire within at most 36,600 days".into());
        }
        let lists = [
            self.level_multipliers.len(),
            self.excluded_skus.len(),
            self.excluded_categories.len(),
            self.level_offline.len(),
        ];
        if lists.iter().any(|n| *n > PROMOTION_LIST_MAX) {
            return Err(format!("a policy list over {PROMOTION_LIST_MAX} entries"));
        }
        if self.level_multipliers.iter().any(|m| m.percent > 10_000) {
            return Err("a level multiplier over 10,000 %".into());
        }
        self.offline.check_bounds()?;
        self.level_offline
            .iter()
            .try_for_each(|l| l.allowance.check_bounds())
    }
}

impl Allowance {
    /// Checks both amounts: not negative, within the limits.
    pub fn check_bounds(&self) -> Result<(), String> {
        for (what, v) in [
            ("stored value allowance", self.stored_value_cents),
            ("points allowance", self.points),
        ] {
            if !(0..=AMOUNT_CENTS_MAX).contains(&v) {
                return Err(format!("{what} of {v} is outside 0..={AMOUNT_CENTS_MAX}"));
            }
        }
        Ok(())
    }
}

impl PriceEntry {
    /// Checks the price and the dates.
    pub fn check_bounds(&self) -> Result<(), String> {
        if !(0..=UNIT_PRICE_CENTS_MAX).contains(&self.price_cents) {
            return Err(format!(
                "price {} of {} is outside 0..={UNIT_PRICE_CENTS_MAX} cents",
                self.price_cents, self.sku
            ));
        }
        if self
            .effective_to_ms
            .is_some_and(|to| to <= self.effective_from_ms)
        {
            return Err(format!("price entry {} ends before it starts", self.id));
        }
        Ok(())
    }
}

fn check_price(what: &str, cents: i64) -> Result<(), String> {
    if !(0..=AMOUNT_CENTS_MAX).contains(&cents) {
        return Err(format!(
            "{what} of {cents} cents is outside 0..={AMOUNT_CENTS_MAX}"
        ));
    }
    Ok(())
}

fn check_percent(basis_points: u32) -> Result<(), String> {
    if basis_points == 0 || basis_points > 10_000 {
        return Err(format!("{basis_points} basis points is outside 1..=10000"));
    }
    Ok(())
}

fn check_group(what: &str, n: u32) -> Result<(), String> {
    if n == 0 || n > PROMOTION_GROUP_MAX_UNITS {
        return Err(format!(
            "{what} {n} is outside 1..={PROMOTION_GROUP_MAX_UNITS}"
        ));
    }
    Ok(())
}

impl PromotionRule {
    /// Checks the rule's numbers: percentages 1..=100 %, amounts within the limits, groups and
    /// tiers of sane sizes.
    pub fn check(&self) -> Result<(), String> {
        match self {
            PromotionRule::PercentOff { basis_points } => check_percent(*basis_points),
            PromotionRule::AmountOff { cents } if *cents <= 0 => {
                Err(format!("amount off of {cents} cents must be positive"))
            }
            PromotionRule::AmountOff { cents } | PromotionRule::FixedPrice { cents } => {
                check_price("amount", *cents)
            }
            PromotionRule::QuantityTiers { tiers } => {
                if tiers.is_empty() || tiers.len() > PROMOTION_TIERS_MAX {
                    return Err(format!("{} tiers (1..={PROMOTION_TIERS_MAX})", tiers.len()));
                }
                for t in tiers {
                    if t.min_qty == 0 || i64::from(t.min_qty) > LINE_QTY_MAX_UNITS {
                        return Err(format!("tier from {} units", t.min_qty));
                    }
                    check_price("tier price", t.unit_cents)?;
                }
                Ok(())
            }
            PromotionRule::BuyNGetM { buy, get, .. } => {
                check_group("buy", *buy)?;
                check_group("get", *get)
            }
            PromotionRule::MixAndMatch { count, deal } => {
                check_group("group of", *count)?;
                match deal {
                    GroupDeal::PercentOff { basis_points } => check_percent(*basis_points),
                    GroupDeal::AmountOff { cents } if *cents <= 0 => {
                        Err("a group's amount off must be positive".into())
                    }
                    GroupDeal::Price { cents } | GroupDeal::AmountOff { cents } => {
                        check_price("group price", *cents)
                    }
                }
            }
            PromotionRule::BonusPoints { percent } if *percent == 0 || *percent > 10_000 => {
                Err(format!("a bonus of {percent} % is outside 1..=10000"))
            }
            PromotionRule::BonusPoints { .. } => Ok(()),
            PromotionRule::SpendThreshold { tiers } => {
                if tiers.is_empty() || tiers.len() > PROMOTION_TIERS_MAX {
                    return Err(format!("{} tiers (1..={PROMOTION_TIERS_MAX})", tiers.len()));
                }
                for t in tiers {
                    check_price("spend threshold", t.spend_cents)?;
                    match &t.reward {
                        SpendReward::PercentOff { basis_points } => check_percent(*basis_points)?,
                        SpendReward::AmountOff { cents } if *cents <= 0 => {
                            return Err("a spend tier's amount off must be positive".into());
                        }
                        SpendReward::AmountOff { cents } => check_price("amount off", *cents)?,
                        SpendReward::Gift { .. } => {}
                    }
                }
                Ok(())
            }
        }
    }
}

impl Promotion {
    /// Checks the rule and the conditions.
    pub fn check_bounds(&self) -> Result<(), String> {
        self.rule
            .check()
            .map_err(|e| format!("promotion {}: {e}", self.id))?;
        if self.name.len() > TEXT_BYTES_MAX {
            return Err(format!(
                "promotion {}: name longer than {TEXT_BYTES_MAX} bytes",
                self.id
            ));
        }
        let lists = [
            self.skus.len(),
            self.categories.len(),
            self.member_levels.len(),
            self.allocations.len(),
        ];
        if lists.iter().any(|n| *n > PROMOTION_LIST_MAX) {
            return Err(format!(
                "promotion {}: a list over {PROMOTION_LIST_MAX} entries",
                self.id
            ));
        }
        if self.days_of_week == 0 || self.days_of_week > ALL_DAYS {
            return Err(format!("promotion {}: no day of the week", self.id));
        }
        if self
            .hours
            .is_some_and(|(from, to)| from > 23 || to > 24 || from == to)
        {
            return Err(format!(
                "promotion {}: hours must be 0..=23 to 1..=24, not empty",
                self.id
            ));
        }
        if self.ends_at_ms.is_some_and(|end| end <= self.starts_at_ms) {
            return Err(format!("promotion {} ends before it starts", self.id));
        }
        if self
            .local_dates
            .is_some_and(|(from, to)| from > to || !(19_000_101..=99_991_231).contains(&from))
        {
            return Err(format!(
                "promotion {}: local dates are YYYYMMDD, from before to",
                self.id
            ));
        }
        Ok(())
    }
}
