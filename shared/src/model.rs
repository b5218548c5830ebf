//! The retail model: what a chain replicates.
//!
//! Plain data, no behaviour beyond small checks. Money is integer cents (`_cents`), time is Unix
//! milliseconds (`_ms`, store wall time where a store recorded it), quantities are whole units.
//!
//! Records are immutable once written (receipts, returns, voids, ledger entries, stock movements):
//! a correction is a new record that points at the original. Catalog, directory, price and
//! promotion records are keyed and replaced whole by their single writer. Member profiles merge per
//! field (see [`crate::merge`]).

use crate::hlc::Hlc;
use crate::ids::{MemberId, NodeId, RecordId, RegionId, Scope, Sku};
use serde::{Deserialize, Serialize};

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

/// A region of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub id: RegionId,
    pub name: String,
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

/// What a promotion gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromotionRule {
    /// A percentage off, in basis points (1,000 = 10 %).
    PercentOff { basis_points: u32 },
    /// A fixed amount off each unit.
    AmountOff { cents: i64 },
    /// Sold at this price per unit.
    FixedPrice { cents: i64 },
    /// Buy `buy`, get `get` more of the same sku free.
    BuyNGetM { buy: u32, get: u32 },
    /// Spend at least `spend_cents` on the receipt, get `off_cents` off.
    SpendXGetY { spend_cents: i64, off_cents: i64 },
}

/// A promotion: a rule and the conditions under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: RecordId,
    pub name: String,
    pub scope: Scope,
    pub rule: PromotionRule,
    /// The skus it applies to; empty means the whole receipt (for spend rules) or every sku.
    pub skus: Vec<Sku>,
    /// Members only.
    pub member_only: bool,
    /// Only in the member's birthday month.
    pub birthday_only: bool,
    pub starts_at_ms: i64,
    pub ends_at_ms: Option<i64>,
    /// Hours of the day (store local, `[from, to)`) when it applies, e.g. happy hour.
    pub hours: Option<(u8, u8)>,
    /// At most this many units per receipt.
    pub max_units_per_receipt: Option<u32>,
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
    /// `active`, `lost`, `cancelled`.
    CardStatus,
    /// The stored value a store may spend offline, in cents (set by HQ).
    OfflineAllowanceCents,
}

impl ProfileField {
    /// Every field, in a stable order.
    pub const ALL: [ProfileField; 7] = [
        ProfileField::Name,
        ProfileField::Phone,
        ProfileField::Email,
        ProfileField::Birthday,
        ProfileField::Level,
        ProfileField::CardStatus,
        ProfileField::OfflineAllowanceCents,
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

/// A sign-up or an edit of a member profile: the fields it sets, stamped with the writer's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEdit {
    pub member: MemberId,
    pub hlc: Hlc,
    pub fields: Vec<(ProfileField, String)>,
}

/// Which balance a ledger entry moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LedgerAccount {
    Points,
    /// Stored value, in cents.
    StoredValue,
}

/// Why a ledger entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerKind {
    Earned,
    Redeemed,
    Expired,
    ToppedUp,
    Spent,
    Adjusted,
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

/// One line of a receipt or return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptLine {
    pub sku: Sku,
    pub qty: i64,
    pub unit_price_cents: i64,
    pub discount_cents: i64,
}

impl ReceiptLine {
    /// What the line costs the customer.
    pub fn amount_cents(&self) -> i64 {
        self.qty
            .saturating_mul(self.unit_price_cents)
            .saturating_sub(self.discount_cents)
    }
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
    pub promotions_applied: Vec<RecordId>,
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
