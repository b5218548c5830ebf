//! Returns checked against the original receipt, as a pure function.
//!
//! Rules ([`refund_lines`]):
//! - a returned sku must be on the original receipt;
//! - no more units of a sku come back than were sold less what earlier returns took back;
//! - the refund is what was paid for those units after every discount: of the `paid` cents a
//!   sku's lines cost for `sold` units, returning `q` units after `before` returned earlier
//!   refunds `⌊paid·(before+q)/sold⌋ − ⌊paid·before/sold⌋`, so returning everything, in any
//!   number of steps, refunds exactly what was paid.
//!
//! The store applies them when it holds the original; HQ applies the same function to the
//! returns a store took without it (unverified) once the original arrives.

use crate::ids::{RecordId, Sku};
use crate::model::{DiscountSource, LINE_QTY_MAX_UNITS, LineDiscount, ReceiptLine};
use std::collections::BTreeMap;

/// Why a return cannot be taken against its original.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnError {
    #[error("line {line}: sku {sku} is not on receipt {receipt}")]
    NotOnReceipt {
        line: usize,
        sku: Sku,
        receipt: RecordId,
    },
    #[error(
        "line {line}: {wanted} units of {sku} returned, but receipt {receipt} sold {sold} and earlier returns took back {returned}"
    )]
    TooMany {
        line: usize,
        sku: Sku,
        receipt: RecordId,
        wanted: i64,
        sold: i64,
        returned: i64,
    },
    #[error("line {line}: quantity {qty} is outside 1..={LINE_QTY_MAX_UNITS}")]
    Quantity { line: usize, qty: i64 },
}

#[derive(Default)]
struct Sold {
    qty: i64,
    paid: i64,
    top_unit: i64,
    returned: i64,
}

/// The lines of a return of `wanted` (sku, units) against `original`'s lines, given the lines of
/// the returns taken against it before: each line carries the original's top unit price and,
/// as an [`DiscountSource::AsSold`] discount, what makes its amount the refund.
pub fn refund_lines(
    receipt: &RecordId,
    original: &[ReceiptLine],
    earlier: &[ReceiptLine],
    wanted: &[(Sku, i64)],
) -> Result<Vec<ReceiptLine>, ReturnError> {
    let mut sold: BTreeMap<&Sku, Sold> = BTreeMap::new();
    for l in original {
        let s = sold.entry(&l.sku).or_default();
        s.qty += l.qty;
        s.paid += l.amount_cents();
        s.top_unit = s.top_unit.max(l.unit_price_cents);
    }
    for l in earlier {
        if let Some(s) = sold.get_mut(&l.sku) {
            s.returned += l.qty;
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (line, (sku, qty)) in wanted.iter().enumerate() {
        if !(1..=LINE_QTY_MAX_UNITS).contains(qty) {
            return Err(ReturnError::Quantity { line, qty: *qty });
        }
        let Some(s) = sold.get_mut(sku) else {
            return Err(ReturnError::NotOnReceipt {
                line,
                sku: sku.clone(),
                receipt: receipt.clone(),
            });
        };
        if s.returned + qty > s.qty {
            return Err(ReturnError::TooMany {
                line,
                sku: sku.clone(),
                receipt: receipt.clone(),
                wanted: *qty,
                sold: s.qty,
                returned: s.returned,
            });
        }
        let share = |units: i64| -> i64 {
            // paid ≤ 1e11 and units ≤ 1e4: the product fits i128 with room to spare.
            i64::try_from(i128::from(s.paid) * i128::from(units) / i128::from(s.qty.max(1)))
                .unwrap_or(0)
        };
        let refund = share(s.returned + qty) - share(s.returned);
        s.returned += qty;
        let gross = qty * s.top_unit; // both bounded
        let as_sold = (gross - refund).max(0);
        out.push(ReceiptLine {
            sku: sku.clone(),
            qty: *qty,
            unit_price_cents: s.top_unit,
            discount_cents: as_sold,
            discounts: if as_sold > 0 {
                vec![LineDiscount {
                    source: DiscountSource::AsSold {
                        receipt: receipt.clone(),
                    },
                    cents: as_sold,
                    units: *qty as u32,
                }]
            } else {
                Vec::new()
            },
            price_override: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(s: &str) -> Sku {
        Sku::new(s).unwrap()
    }

    fn line(s: &str, qty: i64, unit: i64, discount: i64) -> ReceiptLine {
        let mut l = ReceiptLine::plain(sku(s), qty, unit);
        l.discount_cents = discount;
        l
    }

    #[test]
    fn returns_refund_what_was_paid_and_no_more_units_than_were_sold() {
        let r = RecordId::new("S1-R1").unwrap();
        // 3 teas at 1.00 with 0.50 off in all (paid 2.50), 1 cake at 3.00.
        let original = vec![line("tea", 3, 100, 50), line("cake", 1, 300, 0)];
        let refund = |earlier: &[ReceiptLine], wanted: &[(&str, i64)]| {
            let wanted: Vec<(Sku, i64)> = wanted.iter().map(|(s, q)| (sku(s), *q)).collect();
            refund_lines(&r, &original, earlier, &wanted)
        };
        let one = refund(&[], &[("tea", 1)]).unwrap();
        assert_eq!(one[0].amount_cents(), 83, "a third of 2.50, rounded down");
        assert_eq!(one[0].check_bounds(), Ok(()));
        let two_more = refund(&one, &[("tea", 2)]).unwrap();
        assert_eq!(two_more[0].amount_cents(), 167, "the rest: 2.50 in all");
        let all: Vec<ReceiptLine> = one.iter().chain(&two_more).cloned().collect();
        assert!(matches!(
            refund(&all, &[("tea", 1)]),
            Err(ReturnError::TooMany {
                sold: 3,
                returned: 3,
                ..
            })
        ));
        assert!(matches!(
            refund(&[], &[("tea", 4)]),
            Err(ReturnError::TooMany {
                line: 0,
                wanted: 4,
                ..
            })
        ));
        assert!(matches!(
            refund(&[], &[("cake", 1), ("milk", 1)]),
            Err(ReturnError::NotOnReceipt { line: 1, .. })
        ));
        assert!(matches!(
            refund(&[], &[("tea", 1), ("tea", 3)]),
            Err(ReturnError::TooMany { line: 1, .. })
        ));
        assert_eq!(refund(&[], &[("cake", 1)]).unwrap()[0].amount_cents(), 300);
        assert!(matches!(
            refund(&[], &[("cake", 0)]),
            Err(ReturnError::Quantity { .. })
        ));
    }
}
