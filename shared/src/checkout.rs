//! The checkout engine: what a basket costs, line by line, and why.
//!
//! Pure and deterministic, like [`crate::merge`]: from a basket (lines, member, store, time) and
//! the facts the store holds ([`SkuFacts`]: price entries and promotions; the units of each
//! allocated promotion this store has already given), [`price_basket`] computes each line's unit
//! price, what each promotion took off which line, the total and a receipt-printable
//! explanation. The store prices with it in every mode (from its replica, or from the lookup
//! cache when hosted), and HQ re-prices with the same code.
//!
//! # Rules
//! 1. **Lines.** Lines of one sku without an override or manual discount are one line (in
//!    the place of the first), whatever way the till split them. A line takes promotions as a
//!    whole: the units a capped or grouped promotion leaves over get nothing else.
//! 2. **Unit price.** Retail, or for a member the member price where one is in effect and lower
//!    ([`merge::shelf_price_cents`]). A till may override it only with a reason code; an
//!    overridden line takes no promotion.
//! 3. **Which promotions apply.** In effect at `t_ms` (`starts_at_ms` ≤ t < `ends_at_ms`), on a
//!    store-local date, day and hour it allows, covering the store, for the member it asks for
//!    (member only, member level, birthday month), and, if HQ allocated it per store, with
//!    units of this store's allocation left. A promotion names skus and categories; naming none
//!    means every sku.
//! 4. **Exclusive promotions first, alone.** By priority (higher first), the one giving most
//!    first (ties: smaller id); each takes the lines it discounts, and nothing else — no other
//!    promotion, no spend threshold — touches those lines.
//! 5. **Best price and compound.** A line is discounted at one priority only ("stack within a
//!    priority, never across"). At its priority a line takes either one best-price promotion or
//!    a stack of compound ones, applied in a fixed order: deal prices (fixed price, tiers, mix
//!    and match at a price), then buy N get M, then amounts off, then percentages off, each on
//!    what the previous left. Among all combinations of the candidate promotions the engine
//!    takes the one with the lowest final total (spend thresholds included); ties go to fewer
//!    promotions, then to the smaller ids (a gift counts at its shelf price). The search walks
//!    the combinations as a tree and does not take a promotion that would change nothing, so
//!    promotions competing for the same lines cost little. Because every subset is tried, adding a non-exclusive
//!    promotion never raises what the customer pays. The search is exhaustive up to
//!    [`SEARCH_CANDIDATES_MAX`] candidates (those giving most on their own); beyond, the rest
//!    are added greedily where they lower the total.
//! 6. **Spend thresholds last**, on the discounted total of their eligible lines (not
//!    exclusive-taken, not overridden): the highest tier reached; of several threshold
//!    promotions the one giving most (ties: higher priority, smaller id). Money off is spread
//!    over the eligible lines in proportion to their amounts (cents left over go to the first
//!    lines), so every line knows what it cost; a gift is one unit of its sku free, added as a
//!    line when the basket has none.
//! 7. **Manual discounts last**, only with a reason code, never more than what is left of the
//!    line.
//! 8. **Caps.** `max_units_per_receipt` and what is left of the store's allocation cap the units
//!    a promotion discounts (whole groups for group kinds; a threshold counts one unit).
//!
//! Arithmetic: percentages round half up, per line; pooled kinds (buy N get M across skus, mix
//! and match) order units most expensive first and form groups in that order, considering at
//! most [`POOL_UNITS_MAX`] units; every product is computed in `i128` and every amount is
//! bounded by the limits of [`crate::model`], so nothing overflows. No line ends below zero.

use crate::ids::{NodeId, Place, RecordId, Scope, Sku};
use crate::lookup::SkuFacts;
use crate::merge;
use crate::model::{
    Combination, DiscountSource, GroupDeal, LINE_QTY_MAX_UNITS, LineDiscount, PriceOverride,
    Promotion, PromotionRule, RECEIPT_LINES_MAX, ReceiptLine, SpendReward, UNIT_PRICE_CENTS_MAX,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most candidate promotions searched exhaustively (2^10 combinations).
pub const SEARCH_CANDIDATES_MAX: usize = 10;
/// Most units a pooled promotion (mix and match, buy N get M across skus) considers.
pub const POOL_UNITS_MAX: usize = 1_000;

/// Store-local calendar facts of the pricing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// `YYYYMMDD`.
    pub date: u32,
    /// 1..=12.
    pub month: u8,
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// 0..24.
    pub hour: u8,
}

impl LocalTime {
    /// The local calendar facts of `t_ms` in the IANA zone `zone` (UTC when the zone is unknown
    /// on this machine; the second value says so).
    pub fn at(t_ms: i64, zone: &str) -> (LocalTime, bool) {
        let tz = jiff::tz::TimeZone::get(zone).ok();
        let known = tz.is_some();
        let tz = tz.unwrap_or(jiff::tz::TimeZone::UTC);
        let ts = jiff::Timestamp::from_millisecond(t_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let dt = ts.to_zoned(tz).datetime();
        let local = LocalTime {
            date: (dt.year().max(0) as u32) * 10_000 + dt.month() as u32 * 100 + dt.day() as u32,
            month: dt.month() as u8,
            weekday: dt.weekday().to_monday_zero_offset() as u8,
            hour: dt.hour() as u8,
        };
        (local, known)
    }
}

/// The member at the till, as far as pricing cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shopper {
    pub level: Option<String>,
    /// The month of the member's birthday, 1..=12.
    pub birthday_month: Option<u8>,
}

/// Where and when a basket is priced, and for whom.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The store and its regions.
    pub place: &'a Place,
    /// Pricing time (Unix ms).
    pub t_ms: i64,
    pub local: LocalTime,
    pub member: Option<Shopper>,
}

/// One line as the till sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasketLine {
    pub sku: Sku,
    pub qty: i64,
    /// The till's own unit price, with its reason code.
    pub price_override: Option<(i64, String)>,
    /// A discount given by hand, with its reason code.
    pub manual_discount: Option<(i64, String)>,
}

impl BasketLine {
    /// A plain line.
    pub fn new(sku: Sku, qty: i64) -> Self {
        Self {
            sku,
            qty,
            price_override: None,
            manual_discount: None,
        }
    }
}

/// Why a basket cannot be priced. Each names the line (0-based) it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    #[error("a basket needs at least one line")]
    Empty,
    #[error("{0} lines: at most {RECEIPT_LINES_MAX} per receipt")]
    TooManyLines(usize),
    #[error("line {line}: unknown sku {sku}")]
    UnknownSku { line: usize, sku: Sku },
    #[error("line {line}: sku {sku} is withdrawn from sale")]
    Withdrawn { line: usize, sku: Sku },
    #[error("line {line}: sku {sku} has no price in effect here")]
    NoPrice { line: usize, sku: Sku },
    #[error("line {line}: quantity {qty} is outside 1..={LINE_QTY_MAX_UNITS}")]
    Quantity { line: usize, qty: i64 },
    #[error("line {line}: {what}")]
    Override { line: usize, what: String },
}

/// A promotion's share of a priced basket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedPromotion {
    pub id: RecordId,
    pub name: String,
    pub cents: i64,
    pub units: u32,
}

/// A priced basket: the receipt lines to record, and what to tell the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// One per basket line, in order (plain lines of one sku merged into the first), then any
    /// gift lines.
    pub lines: Vec<ReceiptLine>,
    /// Which lines are gifts added by a spend threshold.
    pub gift_lines: Vec<usize>,
    pub total_cents: i64,
    pub discount_cents: i64,
    pub promotions: Vec<AppliedPromotion>,
    /// Lines a receipt can print, e.g. `  Tea 10% (hq-tea10)  -0.20`.
    pub explanation: Vec<String>,
}

/// The skus gifts of the promotions in `facts` could add: the caller gathers their facts too.
pub fn gift_skus(facts: &BTreeMap<Sku, SkuFacts>) -> Vec<Sku> {
    let mut out: Vec<Sku> = Vec::new();
    for f in facts.values() {
        for p in &f.promotions {
            if let PromotionRule::SpendThreshold { tiers } = &p.rule {
                for t in tiers {
                    if let SpendReward::Gift { sku } = &t.reward
                        && !facts.contains_key(sku)
                        && !out.contains(sku)
                    {
                        out.push(sku.clone());
                    }
                }
            }
        }
    }
    out
}

/// Whether `promo`'s conditions (time, store, member) hold in `ctx`; sku and allocation aside.
pub fn conditions_met(promo: &Promotion, ctx: &Context<'_>) -> bool {
    let t = ctx.t_ms;
    let local = ctx.local;
    let in_window = promo.starts_at_ms <= t && promo.ends_at_ms.is_none_or(|end| t < end);
    let in_dates = promo
        .local_dates
        .is_none_or(|(from, to)| from <= local.date && local.date <= to);
    let on_day = promo.days_of_week & (1 << local.weekday.min(6)) != 0;
    let in_hours = promo.hours.is_none_or(|(from, to)| {
        if from <= to {
            (from..to).contains(&local.hour)
        } else {
            local.hour >= from || local.hour < to // wraps midnight
        }
    });
    let member_ok = match &ctx.member {
        None => !promo.member_only && promo.member_levels.is_empty() && !promo.birthday_only,
        Some(m) => {
            (promo.member_levels.is_empty()
                || m.level
                    .as_ref()
                    .is_some_and(|l| promo.member_levels.contains(l)))
                && (!promo.birthday_only || m.birthday_month == Some(local.month))
        }
    };
    in_window && in_dates && on_day && in_hours && member_ok && ctx.place.covers(&promo.scope)
}

/// The bonus on the points a line of `sku` (in `category`) earns in `ctx`: the largest
/// `BonusPoints` percent among the promotions covering it whose conditions hold (0: none).
pub fn bonus_points_percent(facts: &SkuFacts, category: &str, ctx: &Context<'_>) -> u32 {
    facts
        .promotions
        .iter()
        .filter_map(|p| match p.rule {
            PromotionRule::BonusPoints { percent }
                if conditions_met(p, ctx)
                    && ((p.skus.is_empty() && p.categories.is_empty())
                        || p.skus.contains(&facts.sku)
                        || p.categories.iter().any(|c| c == category)) =>
            {
                Some(percent)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Units of `promo` this store may still give (`None`: unlimited), from what it gave already.
pub fn allocation_left(promo: &Promotion, store: &NodeId, used_units: u64) -> Option<u64> {
    if promo.allocations.is_empty() {
        return None;
    }
    let allocated = promo
        .allocations
        .iter()
        .find(|a| &a.store == store)
        .map_or(0, |a| u64::from(a.units));
    Some(allocated.saturating_sub(used_units))
}

// ------------------------------------------------------------------------------ working state

/// A line while the engine works on it.
#[derive(Debug, Clone)]
struct Work<'a> {
    /// No override and no manual discount: merged with other plain lines of its sku.
    plain: bool,
    /// The (first) basket line it came from.
    from_line: usize,
    /// Borrowed from the basket and the facts: the search copies lines often.
    sku: &'a Sku,
    category: &'a str,
    qty: i64,
    unit: i64,
    /// The engine's unit price (differs from `unit` only when the till overrode it).
    list: i64,
    /// What the line costs now (gross less discounts so far); never below zero.
    amount: i64,
    discounts: Vec<(usize, i64, u32)>, // (promotion index, cents, units)
    /// The priority and mode of whatever discounted the line.
    taken: Option<(u16, Combination)>,
    /// Overridden lines and lines taken by an exclusive promotion get nothing more.
    closed: bool,
}

impl Work<'_> {
    fn take(&mut self, promo: usize, p: &Promotion, cents: i64, units: u32) {
        let cents = cents.clamp(0, self.amount);
        if cents == 0 && units == 0 {
            return;
        }
        self.amount -= cents;
        self.discounts.push((promo, cents, units));
        self.taken = Some((p.priority, p.mode));
        if p.mode == Combination::Exclusive {
            self.closed = true;
        }
    }

    /// Whether `p` may still discount this line.
    fn open_to(&self, p: &Promotion) -> bool {
        if self.closed || self.amount == 0 {
            return false;
        }
        match self.taken {
            None => true,
            Some((prio, Combination::Compound)) => {
                p.mode == Combination::Compound && p.priority == prio
            }
            Some(_) => false,
        }
    }
}

fn eligible(p: &Promotion, line: &Work<'_>) -> bool {
    (p.skus.is_empty() && p.categories.is_empty())
        || p.skus.contains(line.sku)
        || p.categories.iter().any(|c| c == line.category)
}

/// Round half up of `num / den` for non-negative values.
fn div_round(num: i128, den: i128) -> i64 {
    if den <= 0 {
        return 0;
    }
    i64::try_from((num + den / 2) / den).unwrap_or(i64::MAX)
}

fn mul_div(a: i64, b: i64, c: i64) -> i64 {
    if c <= 0 {
        return 0;
    }
    i64::try_from(i128::from(a) * i128::from(b) / i128::from(c)).unwrap_or(i64::MAX)
}

/// The stacking order of a rule (deal prices, then buy N get M, then amounts, then percents).
fn stack_rank(rule: &PromotionRule) -> u8 {
    match rule {
        PromotionRule::FixedPrice { .. }
        | PromotionRule::QuantityTiers { .. }
        | PromotionRule::MixAndMatch {
            deal: GroupDeal::Price { .. },
            ..
        } => 0,
        PromotionRule::BuyNGetM { .. } => 1,
        PromotionRule::AmountOff { .. }
        | PromotionRule::MixAndMatch {
            deal: GroupDeal::AmountOff { .. },
            ..
        } => 2,
        PromotionRule::PercentOff { .. }
        | PromotionRule::MixAndMatch {
            deal: GroupDeal::PercentOff { .. },
            ..
        } => 3,
        PromotionRule::SpendThreshold { .. } => 4,
        PromotionRule::BonusPoints { .. } => 5,
    }
}

/// Applies item promotion `pi` to those of its `eligible_lines` open to it, within `cap`
/// units. Returns the units it discounted.
fn apply_item(
    pi: usize,
    p: &Promotion,
    lines: &mut [Work<'_>],
    cap: Option<u64>,
    eligible_lines: &[usize],
) -> u64 {
    let mut idxs: Vec<usize> = eligible_lines
        .iter()
        .copied()
        .filter(|&i| lines[i].open_to(p))
        .collect();
    if idxs.is_empty() {
        return 0;
    }
    // Capped units go to the dearest units first.
    idxs.sort_by(|&a, &b| {
        let (la, lb) = (&lines[a], &lines[b]);
        (i128::from(lb.amount) * i128::from(la.qty))
            .cmp(&(i128::from(la.amount) * i128::from(lb.qty)))
            .then(la.sku.cmp(lb.sku))
            .then(a.cmp(&b))
    });
    let mut left = cap.unwrap_or(u64::MAX);
    let mut used = 0u64;
    let per_unit = |line: &Work<'_>, units: i64| mul_div(line.amount, units, line.qty);
    match &p.rule {
        PromotionRule::PercentOff { basis_points } => {
            for i in idxs {
                let units = (lines[i].qty as u64).min(left) as i64;
                if units == 0 {
                    break;
                }
                let covered = per_unit(&lines[i], units);
                let off = div_round(
                    i128::from(covered) * i128::from((*basis_points).min(10_000)),
                    10_000,
                );
                if off > 0 {
                    lines[i].take(pi, p, off, units as u32);
                    left -= units as u64;
                    used += units as u64;
                }
            }
        }
        PromotionRule::AmountOff { cents } | PromotionRule::FixedPrice { cents } => {
            for i in idxs {
                let units = (lines[i].qty as u64).min(left) as i64;
                if units == 0 {
                    break;
                }
                let covered = per_unit(&lines[i], units);
                let off = match &p.rule {
                    PromotionRule::AmountOff { .. } => covered.min(cents.saturating_mul(units)),
                    _ => covered.saturating_sub(cents.saturating_mul(units)).max(0),
                };
                if off > 0 {
                    lines[i].take(pi, p, off, units as u32);
                    left -= units as u64;
                    used += units as u64;
                }
            }
        }
        PromotionRule::QuantityTiers { tiers } => {
            for i in idxs {
                let qty = lines[i].qty;
                let Some(tier) = tiers
                    .iter()
                    .filter(|t| i64::from(t.min_qty) <= qty)
                    .max_by_key(|t| t.min_qty)
                else {
                    continue;
                };
                let units = (qty as u64).min(left) as i64;
                if units == 0 {
                    break;
                }
                let covered = per_unit(&lines[i], units);
                let off = covered
                    .saturating_sub(tier.unit_cents.saturating_mul(units))
                    .max(0);
                if off > 0 {
                    lines[i].take(pi, p, off, units as u32);
                    left -= units as u64;
                    used += units as u64;
                }
            }
        }
        PromotionRule::BuyNGetM {
            buy,
            get,
            across_skus: false,
        } => {
            let group = u64::from(*buy) + u64::from(*get);
            if group == 0 || *get == 0 {
                return 0;
            }
            for i in idxs {
                let groups = (lines[i].qty as u64 / group).min(left / group);
                if groups == 0 {
                    continue;
                }
                let free = (groups * u64::from(*get)) as i64;
                let off = per_unit(&lines[i], free);
                if off > 0 {
                    let units = groups * group;
                    lines[i].take(pi, p, off, units as u32);
                    left -= units;
                    used += units;
                }
            }
        }
        PromotionRule::BuyNGetM {
            buy,
            get,
            across_skus: true,
        } => {
            let group = (*buy as usize).saturating_add(*get as usize);
            if group == 0 || *get == 0 {
                return 0;
            }
            let units = pooled_units(lines, &idxs);
            let groups = (units.len() / group).min((left / group as u64) as usize);
            let mut off = vec![0i64; lines.len()];
            let mut counted = vec![0u32; lines.len()];
            for (pos, (line, value)) in units.iter().take(groups * group).enumerate() {
                counted[*line] += 1;
                if pos % group >= *buy as usize {
                    off[*line] += value;
                }
            }
            used += settle(pi, p, lines, &off, &counted);
        }
        PromotionRule::MixAndMatch { count, deal } => {
            let group = *count as usize;
            if group == 0 {
                return 0;
            }
            let units = pooled_units(lines, &idxs);
            let groups = (units.len() / group).min((left / group as u64) as usize);
            let mut off = vec![0i64; lines.len()];
            let mut counted = vec![0u32; lines.len()];
            for g in units.chunks(group).take(groups) {
                let value: i64 = g.iter().map(|(_, v)| v).sum();
                let group_off = match deal {
                    GroupDeal::Price { cents } => value.saturating_sub(*cents).max(0),
                    GroupDeal::AmountOff { cents } => value.min(*cents),
                    GroupDeal::PercentOff { basis_points } => div_round(
                        i128::from(value) * i128::from((*basis_points).min(10_000)),
                        10_000,
                    ),
                };
                spread(group_off, g, &mut off);
                for (line, _) in g {
                    counted[*line] += 1;
                }
            }
            used += settle(pi, p, lines, &off, &counted);
        }
        PromotionRule::SpendThreshold { .. } | PromotionRule::BonusPoints { .. } => {}
    }
    used
}

/// The units of `idxs`, each with its share of its line's amount, dearest first (at most
/// [`POOL_UNITS_MAX`]).
fn pooled_units(lines: &[Work<'_>], idxs: &[usize]) -> Vec<(usize, i64)> {
    let mut units = Vec::new();
    for &i in idxs {
        let line = &lines[i];
        let qty = line.qty.max(1);
        let (base, extra) = (line.amount / qty, line.amount % qty);
        for u in 0..qty.min(POOL_UNITS_MAX as i64) {
            units.push((i, base + i64::from(u < extra)));
        }
    }
    units.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(lines[a.0].sku.cmp(lines[b.0].sku))
            .then(a.0.cmp(&b.0))
    });
    units.truncate(POOL_UNITS_MAX);
    units
}

/// Spreads `off` over a group's units in proportion to their values (remainder to the first).
fn spread(off: i64, group: &[(usize, i64)], out: &mut [i64]) {
    let value: i64 = group.iter().map(|(_, v)| v).sum();
    if value <= 0 || off <= 0 {
        return;
    }
    let off = off.min(value);
    let mut given = 0;
    for (line, v) in group {
        let share = mul_div(off, *v, value);
        out[*line] += share;
        given += share;
    }
    let mut rest = off - given;
    for (line, v) in group {
        if rest == 0 {
            break;
        }
        if *v > 0 {
            out[*line] += 1;
            rest -= 1;
        }
    }
}

fn settle(pi: usize, p: &Promotion, lines: &mut [Work<'_>], off: &[i64], counted: &[u32]) -> u64 {
    let mut used = 0;
    // Every line with units in a complete group takes part (the paying units too), so no other
    // promotion of another priority or a best-price one can use those units again.
    for (i, line) in lines.iter_mut().enumerate() {
        if counted[i] > 0 {
            line.take(pi, p, off[i], counted[i]);
            used += u64::from(counted[i]);
        }
    }
    used
}

/// The threshold promotion's discount per line (and gift), on the current lines.
struct ThresholdOutcome {
    off: Vec<i64>,
    gift: Option<(Sku, i64)>,
    value: i64,
}

fn evaluate_threshold(
    p: &Promotion,
    lines: &[Work<'_>],
    facts: &BTreeMap<Sku, SkuFacts>,
    ctx: &Context<'_>,
) -> Option<ThresholdOutcome> {
    let PromotionRule::SpendThreshold { tiers } = &p.rule else {
        return None;
    };
    let idxs: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].closed && eligible(p, &lines[i]))
        .collect();
    let spend: i64 = idxs.iter().map(|&i| lines[i].amount).sum();
    let tier = tiers
        .iter()
        .filter(|t| t.spend_cents <= spend)
        .max_by_key(|t| t.spend_cents)?;
    let mut off = vec![0i64; lines.len()];
    let total_off = match &tier.reward {
        SpendReward::AmountOff { cents } => (*cents).min(spend),
        SpendReward::PercentOff { basis_points } => div_round(
            i128::from(spend) * i128::from((*basis_points).min(10_000)),
            10_000,
        ),
        SpendReward::Gift { sku } => {
            // One unit of the gift free: on its line if the basket has one, else a new line.
            if let Some(&i) = idxs
                .iter()
                .find(|&&i| lines[i].sku == sku && lines[i].amount > 0)
            {
                let one = lines[i].unit.min(lines[i].amount);
                off[i] = one;
                return Some(ThresholdOutcome {
                    off,
                    gift: None,
                    value: one,
                });
            }
            let f = facts.get(sku).filter(|f| f.product.is_some())?;
            let price =
                merge::shelf_price_cents(&f.prices, sku, ctx.place, ctx.t_ms, ctx.member.is_some())
                    .unwrap_or(0);
            return Some(ThresholdOutcome {
                off,
                gift: Some((sku.clone(), price)),
                value: price,
            });
        }
    };
    let items: Vec<(usize, i64)> = idxs.iter().map(|&i| (i, lines[i].amount)).collect();
    spread(total_off, &items, &mut off);
    Some(ThresholdOutcome {
        off,
        gift: None,
        value: total_off,
    })
}

/// One evaluation: item promotions `chosen` (indexes into `promos`, in application order)
/// on a copy of `base`, then the best threshold. Returns the lines, the gift and the total.
struct Outcome<'a> {
    lines: Vec<Work<'a>>,
    threshold: Option<(usize, Option<(Sku, i64)>)>,
    /// What the customer pays less the value of a gift: what the search minimises.
    score: i64,
}

#[cfg(test)]
thread_local! {
    /// Tests turn the search's bound off to compare against the whole search.
    static PRUNE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn prune() -> bool {
    #[cfg(test)]
    return PRUNE.with(std::cell::Cell::get);
    #[cfg(not(test))]
    true
}

/// What bounds the search (see [`Engine::search`]).
struct Bound {
    /// `rest_gain[k]`: the sum of what `searched[k..]` take off the basket each alone.
    rest_gain: Vec<i64>,
    /// At least what a spend threshold can give.
    threshold: i64,
}

struct Engine<'a> {
    promos: Vec<&'a Promotion>,
    caps: Vec<Option<u64>>,
    /// Per promotion, the lines its skus and categories name (computed once).
    eligible: Vec<Vec<usize>>,
    thresholds: Vec<usize>,
    facts: &'a BTreeMap<Sku, SkuFacts>,
    ctx: &'a Context<'a>,
}

impl<'a> Engine<'a> {
    /// Applies item promotion `pi` to `lines` with its cap and eligible lines.
    fn apply(&self, pi: usize, lines: &mut [Work<'_>]) {
        apply_item(
            pi,
            self.promos[pi],
            lines,
            self.caps[pi],
            &self.eligible[pi],
        );
    }

    /// What `pi` alone takes off `base`, and the lines after it.
    fn gain(&self, pi: usize, base: &[Work<'a>]) -> (i64, Vec<Work<'a>>) {
        let mut trial = base.to_vec();
        self.apply(pi, &mut trial);
        let total = |ls: &[Work<'_>]| ls.iter().map(|l| l.amount).sum::<i64>();
        (total(base) - total(&trial), trial)
    }

    fn evaluate(&self, base: &[Work<'a>], chosen: &[usize]) -> Outcome<'a> {
        let mut lines = base.to_vec();
        for &pi in chosen {
            self.apply(pi, &mut lines);
        }
        self.with_threshold(lines)
    }

    /// Every combination of `searched[k..]` on top of `lines` (the ones `chosen` so far), keeping
    /// the best in `best`. A promotion that changes nothing where it would apply is not taken:
    /// that branch is the same as leaving it out (the fewer promotions win a tie anyway), so
    /// promotions competing for one line cut the tree down to the outcomes that differ.
    ///
    /// Branch and bound: `bound.rest_gain[k]` is what `searched[k..]` take off the basket each
    /// alone, which is at least what they can take together on top of any lines (a discount
    /// never grows as the amounts it applies to shrink), and `bound.threshold` is at least what
    /// any spend threshold can give on any lines of this basket. A branch that cannot get
    /// below the best score so far even so is not walked: it could at best tie, and a tie
    /// with more promotions loses.
    fn search(
        &self,
        searched: &[usize],
        k: usize,
        lines: &[Work<'a>],
        chosen: &mut Vec<usize>,
        best: &mut (Outcome<'a>, Vec<usize>),
        bound: &Bound,
    ) {
        if k < searched.len() {
            let total: i64 = lines.iter().map(|l| l.amount).sum();
            let lowest = total - bound.rest_gain[k] - bound.threshold;
            if lowest > best.0.score {
                return;
            }
        }
        let Some(&pi) = searched.get(k) else {
            let outcome = self.with_threshold(lines.to_vec());
            if better(&outcome, chosen, &best.0, &best.1, &self.promos) {
                *best = (outcome, chosen.clone());
            }
            return;
        };
        let p = self.promos[pi];
        if self.eligible[pi].iter().any(|&i| lines[i].open_to(p)) {
            let mut taken = lines.to_vec();
            self.apply(pi, &mut taken);
            let entries = |ls: &[Work<'_>]| ls.iter().map(|l| l.discounts.len()).sum::<usize>();
            if entries(&taken) != entries(lines) {
                chosen.push(pi);
                self.search(searched, k + 1, &taken, chosen, best, bound);
                chosen.pop();
            }
        }
        self.search(searched, k + 1, lines, chosen, best, bound);
    }

    /// At least what any spend threshold can give on lines of this basket after any item
    /// promotions: what the best one gives on `base` (spends only shrink from there), or a
    /// gift's shelf price (a gift whose sku's line was discounted to nothing is added whole).
    fn threshold_bound(&self, base: &[Work<'a>]) -> i64 {
        if self.thresholds.is_empty() {
            return 0;
        }
        let on_base = self.with_threshold(base.to_vec());
        let items: i64 = base.iter().map(|l| l.amount).sum();
        let mut bound = items - on_base.score;
        for &ti in &self.thresholds {
            if let PromotionRule::SpendThreshold { tiers } = &self.promos[ti].rule {
                for t in tiers {
                    if let SpendReward::Gift { sku } = &t.reward
                        && let Some(f) = self.facts.get(sku)
                    {
                        let price = merge::shelf_price_cents(
                            &f.prices,
                            sku,
                            self.ctx.place,
                            self.ctx.t_ms,
                            self.ctx.member.is_some(),
                        )
                        .unwrap_or(0);
                        let unit = base
                            .iter()
                            .filter(|l| l.sku == sku)
                            .map(|l| l.unit)
                            .max()
                            .unwrap_or(0);
                        bound = bound.max(price).max(unit);
                    }
                }
            }
        }
        bound.max(0)
    }

    /// The best spend threshold on `lines`, applied.
    fn with_threshold(&self, mut lines: Vec<Work<'a>>) -> Outcome<'a> {
        let mut best: Option<(i64, usize, ThresholdOutcome)> = None;
        for &ti in &self.thresholds {
            if self.caps[ti] == Some(0) {
                continue;
            }
            if let Some(o) = evaluate_threshold(self.promos[ti], &lines, self.facts, self.ctx)
                && o.value > 0
                && best.as_ref().is_none_or(|(v, _, _)| o.value > *v)
            {
                best = Some((o.value, ti, o));
            }
        }
        let mut threshold = None;
        let mut gift_value = 0;
        if let Some((_, ti, o)) = best {
            for (i, cents) in o.off.iter().enumerate() {
                if *cents > 0 {
                    lines[i].amount -= (*cents).min(lines[i].amount);
                    lines[i].discounts.push((ti, *cents, 0));
                }
            }
            // The receipt's single unit of the threshold goes on its first discounted line.
            if let Some(d) = lines
                .iter_mut()
                .flat_map(|l| l.discounts.iter_mut())
                .find(|d| d.0 == ti)
            {
                d.2 = 1;
            }
            if let Some((_, price)) = &o.gift {
                gift_value = *price;
            }
            threshold = Some((ti, o.gift));
        }
        let total: i64 = lines.iter().map(|l| l.amount).sum();
        Outcome {
            lines,
            threshold,
            score: total - gift_value,
        }
    }
}

/// Prices `basket` in `ctx` from `facts` (every basket sku's facts, and those of possible gifts,
/// see [`gift_skus`]); `used_units` says how many units of each allocated promotion this store
/// has given already.
pub fn price_basket(
    basket: &[BasketLine],
    ctx: &Context<'_>,
    facts: &BTreeMap<Sku, SkuFacts>,
    used_units: &BTreeMap<RecordId, u64>,
) -> Result<Priced, CheckoutError> {
    if basket.is_empty() {
        return Err(CheckoutError::Empty);
    }
    if basket.len() > RECEIPT_LINES_MAX {
        return Err(CheckoutError::TooManyLines(basket.len()));
    }
    // Rules 1 and 2: lines and unit prices.
    let mut base = Vec::with_capacity(basket.len());
    for (line, b) in basket.iter().enumerate() {
        let sku = &b.sku;
        let f = facts
            .get(sku)
            .and_then(|f| f.product.as_ref().map(|p| (f, p)));
        let Some((f, product)) = f else {
            return Err(CheckoutError::UnknownSku {
                line,
                sku: sku.clone(),
            });
        };
        if !product.active {
            return Err(CheckoutError::Withdrawn {
                line,
                sku: sku.clone(),
            });
        }
        if !(1..=LINE_QTY_MAX_UNITS).contains(&b.qty) {
            return Err(CheckoutError::Quantity { line, qty: b.qty });
        }
        let shelf =
            merge::shelf_price_cents(&f.prices, sku, ctx.place, ctx.t_ms, ctx.member.is_some());
        let unit = match &b.price_override {
            Some((cents, _)) => *cents,
            None => shelf.ok_or_else(|| CheckoutError::NoPrice {
                line,
                sku: sku.clone(),
            })?,
        };
        if let Some((cents, reason)) = &b.price_override {
            crate::model::check_text("a price override's reason", reason)
                .map_err(|what| CheckoutError::Override { line, what })?;
            if !(0..=UNIT_PRICE_CENTS_MAX).contains(cents) {
                return Err(CheckoutError::Override {
                    line,
                    what: format!("override price {cents} is outside 0..={UNIT_PRICE_CENTS_MAX}"),
                });
            }
        }
        // Plain lines of the same sku are priced (and recorded) as one line, so that how the
        // till split them changes nothing.
        let plain = b.price_override.is_none() && b.manual_discount.is_none();
        if plain
            && let Some(w) = base
                .iter_mut()
                .find(|w: &&mut Work<'_>| w.plain && w.sku == sku)
        {
            if w.qty + b.qty > LINE_QTY_MAX_UNITS {
                return Err(CheckoutError::Quantity {
                    line,
                    qty: w.qty + b.qty,
                });
            }
            w.qty += b.qty;
            w.amount = w.qty * w.unit;
            continue;
        }
        base.push(Work {
            plain,
            from_line: line,
            sku,
            category: &product.category,
            qty: b.qty,
            unit,
            list: shelf.unwrap_or(0),
            amount: b.qty * unit, // both bounded: at most 1e11
            discounts: Vec::new(),
            taken: None,
            closed: b.price_override.is_some(),
        });
    }

    // Rule 3: the promotions that apply, each once (keyed by scope and id), in a stable order.
    let mut seen: BTreeMap<(Scope, RecordId), &Promotion> = BTreeMap::new();
    for l in &base {
        if let Some(f) = facts.get(l.sku) {
            for p in &f.promotions {
                seen.entry((p.scope.clone(), p.id.clone())).or_insert(p);
            }
        }
    }
    // Bonus points change no price: they are the loyalty rules' ([`bonus_points_percent`]).
    let mut promos: Vec<&Promotion> = seen
        .into_values()
        .filter(|p| !matches!(p.rule, PromotionRule::BonusPoints { .. }))
        .filter(|p| conditions_met(p, ctx))
        .collect();
    promos.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(stack_rank(&a.rule).cmp(&stack_rank(&b.rule)))
            .then(a.id.cmp(&b.id))
            .then(a.scope.cmp(&b.scope))
    });
    let caps: Vec<Option<u64>> = promos
        .iter()
        .map(|p| {
            let used = used_units.get(&p.id).copied().unwrap_or(0);
            let alloc = allocation_left(p, &ctx.place.store, used);
            match (alloc, p.max_units_per_receipt) {
                (Some(a), Some(m)) => Some(a.min(u64::from(m))),
                (a, m) => a.or(m.map(u64::from)),
            }
        })
        .collect();
    let is_threshold = |p: &Promotion| matches!(p.rule, PromotionRule::SpendThreshold { .. });
    let thresholds: Vec<usize> = (0..promos.len())
        .filter(|&i| is_threshold(promos[i]))
        .collect();
    let eligible_lines: Vec<Vec<usize>> = promos
        .iter()
        .map(|p| (0..base.len()).filter(|&i| eligible(p, &base[i])).collect())
        .collect();
    let engine = Engine {
        promos,
        caps,
        eligible: eligible_lines,
        thresholds,
        facts,
        ctx,
    };

    let promos = &engine.promos;

    // Rule 4: exclusive promotions, by priority, the one giving most first.
    let mut exclusive: Vec<usize> = (0..promos.len())
        .filter(|&i| promos[i].mode == Combination::Exclusive && !is_threshold(promos[i]))
        .collect();
    while !exclusive.is_empty() {
        let top = promos[exclusive[0]].priority;
        let mut best: Option<(i64, usize, Vec<Work<'_>>)> = None;
        for &pi in exclusive.iter().filter(|&&i| promos[i].priority == top) {
            let (gain, trial) = engine.gain(pi, &base);
            if gain > 0 && best.as_ref().is_none_or(|(g, _, _)| gain > *g) {
                best = Some((gain, pi, trial));
            }
        }
        match best {
            Some((_, pi, trial)) => {
                base = trial;
                exclusive.retain(|&i| i != pi);
            }
            None => exclusive.retain(|&i| promos[i].priority != top),
        }
    }

    // Rule 5: the best combination of the other item promotions.
    let mut candidates: Vec<(i64, usize)> = (0..promos.len())
        .filter(|&i| promos[i].mode != Combination::Exclusive && !is_threshold(promos[i]))
        .filter_map(|pi| {
            let (gain, _) = engine.gain(pi, &base);
            (gain > 0).then_some((gain, pi))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let extra: Vec<usize> = candidates
        .iter()
        .skip(SEARCH_CANDIDATES_MAX)
        .map(|c| c.1)
        .collect();
    let mut searched: Vec<usize> = candidates
        .iter()
        .take(SEARCH_CANDIDATES_MAX)
        .map(|c| c.1)
        .collect();
    searched.sort_unstable(); // application order is the promotions' order
    let gain_of = |pi: usize| candidates.iter().find(|c| c.1 == pi).map_or(0, |c| c.0);
    let mut rest_gain = vec![0i64; searched.len() + 1];
    for k in (0..searched.len()).rev() {
        rest_gain[k] = rest_gain[k + 1] + gain_of(searched[k]);
    }
    let bound = Bound {
        rest_gain,
        threshold: if prune() {
            engine.threshold_bound(&base)
        } else {
            i64::MAX / 4
        },
    };
    let mut found = (engine.evaluate(&base, &[]), Vec::new());
    engine.search(&searched, 0, &base, &mut Vec::new(), &mut found, &bound);
    let (mut best, mut best_choice) = found;
    for pi in extra {
        let mut chosen = best_choice.clone();
        chosen.push(pi);
        chosen.sort_unstable();
        let outcome = engine.evaluate(&base, &chosen);
        if outcome.score < best.score {
            best = outcome;
            best_choice = chosen;
        }
    }

    finish(basket, best, promos)
}

/// Whether `a` (chosen `ac`) beats `b` (chosen `bc`): lower total (less any gift's value), then
/// fewer promotions, then smaller ids.
fn better(a: &Outcome, ac: &[usize], b: &Outcome, bc: &[usize], promos: &[&Promotion]) -> bool {
    let ids = |c: &[usize]| -> Vec<&RecordId> {
        let mut v: Vec<&RecordId> = c.iter().map(|&i| &promos[i].id).collect();
        v.sort();
        v
    };
    match (a.score, ac.len()).cmp(&(b.score, bc.len())) {
        std::cmp::Ordering::Equal => ids(ac) < ids(bc),
        less_or_more => less_or_more.is_lt(),
    }
}

/// Manual discounts, gift line, receipt lines and the explanation.
fn finish(
    basket: &[BasketLine],
    outcome: Outcome,
    promos: &[&Promotion],
) -> Result<Priced, CheckoutError> {
    let mut lines = Vec::with_capacity(outcome.lines.len() + 1);
    let mut applied: BTreeMap<usize, (i64, u32)> = BTreeMap::new();
    let mut explanation = Vec::new();
    for w in &outcome.lines {
        let (i, b) = (w.from_line, &basket[w.from_line]);
        let mut discounts: Vec<LineDiscount> = Vec::new();
        explanation.push(format!(
            "{} x {} @ {} = {}",
            w.qty,
            w.sku,
            cents(w.unit),
            cents(w.qty * w.unit)
        ));
        for (pi, c, units) in &w.discounts {
            let p = promos[*pi];
            let e = applied.entry(*pi).or_default();
            e.0 += c;
            e.1 += units;
            if *c > 0 {
                explanation.push(format!("  {} ({})  -{}", p.name, p.id, cents(*c)));
            }
            discounts.push(LineDiscount {
                source: DiscountSource::Promotion(p.id.clone()),
                cents: *c,
                units: *units,
            });
        }
        let mut amount = w.amount;
        if let Some((c, reason)) = &b.manual_discount {
            crate::model::check_text("a manual discount's reason", reason)
                .map_err(|what| CheckoutError::Override { line: i, what })?;
            if *c <= 0 || *c > amount {
                return Err(CheckoutError::Override {
                    line: i,
                    what: format!(
                        "a manual discount of {c} cents is outside 1..={amount} (what is left of the line)"
                    ),
                });
            }
            amount -= c;
            explanation.push(format!("  manual: {reason}  -{}", cents(*c)));
            discounts.push(LineDiscount {
                source: DiscountSource::Manual {
                    reason: reason.clone(),
                },
                cents: *c,
                units: w.qty as u32,
            });
        }
        let discount_cents = w.qty * w.unit - amount;
        lines.push(ReceiptLine {
            sku: w.sku.clone(),
            qty: w.qty,
            unit_price_cents: w.unit,
            discount_cents,
            discounts,
            price_override: b.price_override.as_ref().map(|(_, reason)| PriceOverride {
                list_cents: w.list,
                reason: reason.clone(),
            }),
        });
    }
    let mut gift_lines = Vec::new();
    if let Some((ti, Some((sku, price)))) = &outcome.threshold {
        let p = promos[*ti];
        let e = applied.entry(*ti).or_default();
        e.0 += price;
        e.1 += 1;
        explanation.push(format!(
            "1 x {sku} @ {} = {} (gift)",
            cents(*price),
            cents(*price)
        ));
        explanation.push(format!("  {} ({})  -{}", p.name, p.id, cents(*price)));
        gift_lines.push(lines.len());
        lines.push(ReceiptLine {
            sku: sku.clone(),
            qty: 1,
            unit_price_cents: *price,
            discount_cents: *price,
            discounts: vec![LineDiscount {
                source: DiscountSource::Promotion(p.id.clone()),
                cents: *price,
                units: 1,
            }],
            price_override: None,
        });
    }
    let total_cents: i64 = lines.iter().map(ReceiptLine::amount_cents).sum();
    let discount_cents: i64 = lines.iter().map(|l| l.discount_cents).sum();
    explanation.push(format!("total {}", cents(total_cents)));
    Ok(Priced {
        lines,
        gift_lines,
        total_cents,
        discount_cents,
        promotions: applied
            .into_iter()
            .map(|(pi, (c, units))| AppliedPromotion {
                id: promos[pi].id.clone(),
                name: promos[pi].name.clone(),
                cents: c,
                units,
            })
            .collect(),
        explanation,
    })
}

/// `1234` → `12.34`.
pub fn cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

#[cfg(test)]
mod tests;
