//! HQ's price check, the pure part: a receipt as a basket to price again, the differences
//! between what a store charged and what HQ's engine says, and why they differ.
//!
//! HQ prices every receipt that arrives again, with the same engine (`checkout::price_basket`),
//! its own facts, the receipt's pricing time and the till's overrides and manual discounts as
//! given (those are reported as overrides, not here). A receipt whose lines come out the same is
//! fine. One that differs is listed with a cause, decided from the receipt's
//! [`PricingBasis`] against what HQ holds:
//! - [`PriceCause::OlderFacts`]: the store priced with older catalog, price or promotion facts
//!   than HQ holds now (an offline store, a change HQ made after the sale, a hosted store's
//!   cache). Expected; the report shows what it cost or gained.
//! - [`PriceCause::HqBehind`]: the store held more of one of its own streams than HQ has yet.
//! - [`PriceCause::MemberDiffered`]: the store saw the member at another level or birthday month.
//! - [`PriceCause::Unpriceable`]: HQ's engine refused the basket (an unknown sku, no price).
//! - [`PriceCause::Unexplained`]: the store held every fact HQ holds and still charged otherwise:
//!   a defect or a tampered agent, for someone to look at.
//!
//! Invariant: the cause is decided only from the basis and HQ's heads, in that order, so the
//! same receipt against the same HQ always gets the same cause.

use crate::checkout::{BasketLine, Shopper, cents};
use crate::ids::{Place, StreamId, Topic};
use crate::model::{DiscountSource, FactsSource, PricingBasis, Receipt, ReceiptLine};

/// Most line differences one listed receipt spells out.
pub const DETAIL_LINES_MAX: usize = 3;

/// Why a store's receipt differs from HQ's pricing of it (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PriceCause {
    OlderFacts,
    HqBehind,
    MemberDiffered,
    Unpriceable,
    Unexplained,
}

impl PriceCause {
    pub const ALL: [PriceCause; 5] = [
        PriceCause::OlderFacts,
        PriceCause::HqBehind,
        PriceCause::MemberDiffered,
        PriceCause::Unpriceable,
        PriceCause::Unexplained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PriceCause::OlderFacts => "older_facts",
            PriceCause::HqBehind => "hq_behind",
            PriceCause::MemberDiffered => "member_differed",
            PriceCause::Unpriceable => "unpriceable",
            PriceCause::Unexplained => "unexplained",
        }
    }

    pub fn from_code(s: &str) -> Option<PriceCause> {
        PriceCause::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Whether `stream` carries facts that price a basket at `place`: the catalog, and the prices
/// and promotions of every scope covering the store.
pub fn prices_place(place: &Place, stream: &StreamId) -> bool {
    match &stream.topic {
        Topic::Catalog => true,
        Topic::Prices(scope) | Topic::Promotions(scope) => place.covers(scope),
        _ => false,
    }
}

/// The basket a receipt was priced from: its lines less the gift line the engine added, each
/// with the till's override and manual discount as recorded.
pub fn basket_of(receipt: &Receipt) -> Vec<BasketLine> {
    let bought = if receipt.pricing.gift_line {
        receipt.lines.len().saturating_sub(1)
    } else {
        receipt.lines.len()
    };
    receipt.lines[..bought]
        .iter()
        .map(|l| {
            let manual = l.discounts.iter().find_map(|d| match &d.source {
                DiscountSource::Manual { reason } => Some((d.cents, reason.clone())),
                _ => None,
            });
            BasketLine {
                sku: l.sku.clone(),
                qty: l.qty,
                price_override: l
                    .price_override
                    .as_ref()
                    .map(|o| (l.unit_price_cents, o.reason.clone())),
                manual_discount: manual,
            }
        })
        .collect()
}

/// The store's lines against HQ's, one text per differing line (at most
/// [`DETAIL_LINES_MAX`], then a count of the rest); empty when they are the same.
pub fn differences(charged: &[ReceiptLine], hq: &[ReceiptLine]) -> Vec<String> {
    let mut out = Vec::new();
    let mut more = 0usize;
    for i in 0..charged.len().max(hq.len()) {
        let (c, h) = (charged.get(i), hq.get(i));
        if c == h {
            continue;
        }
        if out.len() == DETAIL_LINES_MAX {
            more += 1;
            continue;
        }
        out.push(format!(
            "line {i}: charged {}; HQ {}",
            describe(c),
            describe(h)
        ));
    }
    if more > 0 {
        out.push(format!("and {more} more lines"));
    }
    out
}

fn describe(line: Option<&ReceiptLine>) -> String {
    let Some(l) = line else {
        return "no line".into();
    };
    let mut s = format!("{} x {} @ {}", l.qty, l.sku, cents(l.unit_price_cents));
    for d in &l.discounts {
        let by = match &d.source {
            DiscountSource::Promotion(p) => p.as_str(),
            DiscountSource::Manual { .. } => "manual",
            DiscountSource::AsSold { .. } => "as sold",
        };
        s.push_str(&format!(" -{} ({by})", cents(d.cents)));
    }
    s
}

/// One stream as HQ holds it, for [`cause`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HqHead {
    pub stream: StreamId,
    pub seq: u64,
    /// When HQ's head of it last moved (Unix ms), if ever.
    pub moved_at_ms: Option<i64>,
}

/// Why a receipt priced with `basis` differs from HQ's pricing, given HQ's heads of the
/// streams that price the store (`hq_heads`, see [`prices_place`]) and the member as HQ sees
/// them (`None` for a receipt without one). The text says what the cause rests on.
pub fn cause(
    basis: &PricingBasis,
    hq_heads: &[HqHead],
    hq_shopper: Option<&Shopper>,
) -> (PriceCause, String) {
    let store_seq = |s: &StreamId| {
        basis
            .heads
            .iter()
            .find(|h| &h.stream == s)
            .map_or(0, |h| h.seq)
    };
    match basis.source {
        FactsSource::Cache => {
            return (
                PriceCause::OlderFacts,
                "priced from the hosted store's lookup cache while HQ was unreachable".into(),
            );
        }
        FactsSource::Replica => {
            for h in hq_heads {
                let at_store = store_seq(&h.stream);
                if at_store < h.seq {
                    return (
                        PriceCause::OlderFacts,
                        format!(
                            "the store held {} to change set {at_store}, HQ holds {}",
                            h.stream, h.seq
                        ),
                    );
                }
            }
            for s in &basis.heads {
                let at_hq = hq_heads
                    .iter()
                    .find(|h| h.stream == s.stream)
                    .map_or(0, |h| h.seq);
                if at_hq < s.seq {
                    return (
                        PriceCause::HqBehind,
                        format!(
                            "the store held {} to change set {}, HQ only to {at_hq}",
                            s.stream, s.seq
                        ),
                    );
                }
            }
        }
        FactsSource::Hq => {
            if let Some(h) = hq_heads
                .iter()
                .find(|h| h.moved_at_ms.is_some_and(|t| t > basis.priced_at_ms))
            {
                return (
                    PriceCause::OlderFacts,
                    format!(
                        "priced from HQ's answer; {} changed at HQ after the sale",
                        h.stream
                    ),
                );
            }
        }
    }
    if let Some(hq) = hq_shopper
        && (hq.level != basis.member_level || hq.birthday_month != basis.birthday_month)
    {
        return (
            PriceCause::MemberDiffered,
            format!(
                "the store saw the member at level {} born in month {}, HQ at {} born in {}",
                or_none(basis.member_level.as_deref()),
                or_none(basis.birthday_month.map(|m| m.to_string()).as_deref()),
                or_none(hq.level.as_deref()),
                or_none(hq.birthday_month.map(|m| m.to_string()).as_deref()),
            ),
        );
    }
    (
        PriceCause::Unexplained,
        "the store held every fact HQ holds and charged otherwise".into(),
    )
}

fn or_none(s: Option<&str>) -> &str {
    s.unwrap_or("none")
}

#[cfg(test)]
mod tests;
