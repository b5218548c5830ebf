//! Points and stored value: HQ's [`LoyaltyPolicy`] applied, as pure functions.
//!
//! Stored value is money and points are nearly so, so what a store may take from a card is
//! decided here and nowhere else:
//!
//! - **Online**, a store asks HQ to *hold* the amount ([`hold_decision`]): HQ grants it only
//!   when the card's balance less every other live hold covers it, so stores that reach HQ can
//!   never overspend a card together, whatever the timing. The receipt's ledger entry then
//!   *captures* the hold; a hold never captured expires by itself and the money is free again.
//! - **Offline**, a store may take only within the card's offline allowance
//!   ([`offline_allowance`]: the card's own, else its level's, else the chain's) counting what
//!   it already took offline and HQ has not yet acknowledged, and never beyond the balance it
//!   knows ([`offline_decision`]). Each store keeps its own count, so two stores offline
//!   overdraw a card by at most the sum of their allowances.
//! - **At HQ**, every card whose balance went negative, or on which a store took more offline
//!   than HQ's policy allows, is an exception ([`is_over_policy`]) until an adjustment settles it.
//!
//! Points are earned on the eligible part of a sale ([`points_earned`]: excluded skus and
//! categories earn nothing, nor does what was paid with points), times the member level's
//! multiplier, raised on the lines a bonus-points promotion covers; a return takes back what the returned units earned ([`points_taken_back`]),
//! cumulatively, so returning everything in any number of steps takes back exactly what was
//! earned. Points pay at [`LoyaltyPolicy::point_value_cents`] each ([`points_for_cents`]).
//! Under a policy that keeps points for some days, HQ expires what was added before the cutoff
//! and not used since, oldest points used first ([`points_to_expire`]).
//!
//! Invariants: no function here creates or loses a unit: every figure is exact integer
//! arithmetic, widened to `i128` where it multiplies, and refusals say which rule refused.

use crate::ids::Sku;
use crate::model::{Allowance, LoyaltyPolicy, SpendAuth};

/// Why a store may not take an amount from a card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TakeRefusal {
    /// The amount is not positive.
    #[error("an amount of {0} cannot be taken")]
    NotPositive(i64),
    /// The balance, less what is held, does not cover it.
    #[error("the card has {available} available; {amount} cannot be taken")]
    Insufficient { available: i64, amount: i64 },
    /// Offline, the card's allowance does not cover it.
    #[error(
        "HQ is unreachable and the card's offline allowance is {allowance}, of which this store has used {spent_before}; {amount} cannot be taken"
    )]
    OverAllowance {
        allowance: i64,
        spent_before: i64,
        amount: i64,
    },
}

/// HQ's decision on a hold: granted when `balance − held_by_others` covers `amount`.
pub fn hold_decision(balance: i64, held_by_others: i64, amount: i64) -> Result<(), TakeRefusal> {
    if amount <= 0 {
        return Err(TakeRefusal::NotPositive(amount));
    }
    let available = balance.saturating_sub(held_by_others);
    if available < amount {
        return Err(TakeRefusal::Insufficient { available, amount });
    }
    Ok(())
}

/// The offline allowance of a card: its own if HQ set one, else its level's, else the chain's.
pub fn offline_allowance(
    policy: &LoyaltyPolicy,
    level: Option<&str>,
    own: Option<Allowance>,
) -> Allowance {
    if let Some(own) = own {
        return own;
    }
    level
        .and_then(|level| policy.level_offline.iter().find(|l| l.level == level))
        .map_or(policy.offline, |l| l.allowance)
}

/// A store's decision on taking `amount` from a card while HQ is unreachable: within the
/// balance it knows (`known_balance`, its own takes included) and within `allowance` counting
/// `spent_before` (what it took offline and HQ has not acknowledged). The entry's
/// authorisation on success.
pub fn offline_decision(
    known_balance: i64,
    allowance: i64,
    spent_before: i64,
    amount: i64,
) -> Result<SpendAuth, TakeRefusal> {
    if amount <= 0 {
        return Err(TakeRefusal::NotPositive(amount));
    }
    if known_balance < amount {
        return Err(TakeRefusal::Insufficient {
            available: known_balance,
            amount,
        });
    }
    if spent_before.saturating_add(amount) > allowance {
        return Err(TakeRefusal::OverAllowance {
            allowance,
            spent_before,
            amount,
        });
    }
    Ok(SpendAuth::Offline {
        allowance,
        spent_before,
    })
}

/// Whether an offline take of `amount` went beyond `allowance` (HQ's policy now) given what
/// the store had taken before it.
pub fn is_over_policy(allowance: i64, spent_before: i64, amount: i64) -> bool {
    spent_before.saturating_add(amount) > allowance
}

/// One receipt line as points see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarningLine<'a> {
    pub sku: &'a Sku,
    pub category: &'a str,
    /// What the line cost after every discount.
    pub amount_cents: i64,
    /// A bonus-points promotion's percent on this line (0: none).
    pub bonus_percent: u32,
}

/// Whether a line earns points under `policy`.
pub fn earns(policy: &LoyaltyPolicy, sku: &Sku, category: &str) -> bool {
    !policy.excluded_skus.contains(sku) && !policy.excluded_categories.iter().any(|c| c == category)
}

/// The eligible spend of lines: what the lines that earn cost.
pub fn eligible_cents(policy: &LoyaltyPolicy, lines: &[EarningLine<'_>]) -> i64 {
    lines
        .iter()
        .filter(|l| earns(policy, l.sku, l.category))
        .map(|l| l.amount_cents.max(0))
        .fold(0, i64::saturating_add)
}

/// Points a sale earns: eligible spend less what was paid with points, in whole currency
/// units (100 cents) times `points_per_unit`, times the level's multiplier, each line raised by
/// its bonus-points promotion; rounded down once, over the receipt. What was paid with points
/// earns nothing and comes off the lines without a bonus first.
pub fn points_earned(
    policy: &LoyaltyPolicy,
    level: Option<&str>,
    lines: &[EarningLine<'_>],
    paid_with_points_cents: i64,
) -> i64 {
    // Eligible cents weighted by 100 + bonus %, the lines without a bonus first.
    let mut weighted: Vec<(i128, i128)> = lines
        .iter()
        .filter(|l| earns(policy, l.sku, l.category))
        .map(|l| {
            (
                i128::from(100 + l.bonus_percent.min(10_000)),
                i128::from(l.amount_cents.max(0)),
            )
        })
        .collect();
    weighted.sort_by_key(|(w, _)| *w);
    let mut unpaid = i128::from(paid_with_points_cents.max(0));
    let mut total = 0i128;
    for (weight, cents) in weighted {
        let paid = unpaid.min(cents);
        unpaid -= paid;
        total += (cents - paid) * weight;
    }
    let percent = level
        .and_then(|level| policy.level_multipliers.iter().find(|m| m.level == level))
        .map_or(100, |m| m.percent);
    let points =
        total * i128::from(policy.points_per_unit) * i128::from(percent) / (100 * 100 * 100);
    i64::try_from(points).unwrap_or(i64::MAX)
}

/// Points a return takes back: of `earned` by a sale whose eligible lines cost
/// `sold_eligible_cents`, the share of the eligible refunds so far (`returned_before_cents`
/// earlier, `returned_now_cents` now) less what earlier returns took back. Cumulative, so the
/// parts always add up to `earned` when everything eligible comes back.
pub fn points_taken_back(
    earned: i64,
    sold_eligible_cents: i64,
    returned_before_cents: i64,
    returned_now_cents: i64,
) -> i64 {
    if earned <= 0 || sold_eligible_cents <= 0 {
        return 0;
    }
    let share = |returned: i64| -> i128 {
        let returned = returned.clamp(0, sold_eligible_cents);
        i128::from(earned) * i128::from(returned) / i128::from(sold_eligible_cents)
    };
    let after = share(returned_before_cents.saturating_add(returned_now_cents.max(0)));
    let before = share(returned_before_cents);
    i64::try_from(after - before).unwrap_or(0)
}

/// The points that pay `cents` at the till, or why points cannot pay it.
pub fn points_for_cents(policy: &LoyaltyPolicy, cents: i64) -> Result<i64, String> {
    let value = i64::from(policy.point_value_cents);
    if value == 0 {
        return Err("HQ's policy does not take points as a payment".into());
    }
    if cents <= 0 || cents % value != 0 {
        return Err(format!(
            "a points payment of {cents} cents is not a whole number of points at {value} cents each"
        ));
    }
    Ok(cents / value)
}

/// Points that expire when a policy keeps points until `cutoff_ms` (added before it and not yet
/// used): of the points added before the cutoff (earned, refunded, adjusted up), what every take
/// so far has not consumed, takes using the oldest points first (redemptions, take-backs,
/// earlier expiries, adjustments down); never more than the balance. Earlier expiries count as
/// takes, so expiring again at the same cutoff expires nothing more.
/// `entries` are one member's points entries as `(at_ms, amount)`.
pub fn points_to_expire(entries: &[(i64, i64)], cutoff_ms: i64) -> i64 {
    let mut added_before = 0i64;
    let mut taken = 0i64;
    let mut balance = 0i64;
    for &(at_ms, amount) in entries {
        balance = balance.saturating_add(amount);
        if amount < 0 {
            taken = taken.saturating_add(amount.saturating_neg());
        } else if at_ms < cutoff_ms {
            added_before = added_before.saturating_add(amount);
        }
    }
    added_before.saturating_sub(taken).clamp(0, balance.max(0))
}

/// A phone number as digits only, the form look-ups and duplicate checks compare
/// (`+44 (0)20 7946-0000` and `4402079460000` are the same).
pub fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LevelAllowance, LevelMultiplier};

    fn sku(s: &str) -> Sku {
        s.parse().unwrap()
    }

    fn policy() -> LoyaltyPolicy {
        LoyaltyPolicy {
            points_per_unit: 2,
            level_multipliers: vec![LevelMultiplier {
                level: "gold".into(),
                percent: 150,
            }],
            excluded_skus: vec![sku("tobacco")],
            excluded_categories: vec!["giftcards".into()],
            point_value_cents: 5,
            offline: Allowance {
                stored_value_cents: 1_000,
                points: 100,
            },
            level_offline: vec![LevelAllowance {
                level: "gold".into(),
                allowance: Allowance {
                    stored_value_cents: 5_000,
                    points: 500,
                },
            }],
            points_expire_days: 0,
        }
    }

    #[test]
    fn holds_never_grant_beyond_balance_less_other_holds() {
        // (balance, held by others, amount, granted)
        let table = [
            (5_000, 0, 4_000, true),
            (5_000, 4_000, 4_000, false),
            (5_000, 4_000, 1_000, true),
            (5_000, 4_000, 1_001, false),
            (5_000, 0, 5_000, true),
            (0, 0, 1, false),
            (-300, 0, 1, false),
            (5_000, 0, 0, false),
            (5_000, 0, -10, false),
            (i64::MAX, i64::MIN, 1, true),
        ];
        for (balance, held, amount, granted) in table {
            assert_eq!(
                hold_decision(balance, held, amount).is_ok(),
                granted,
                "balance {balance}, held {held}, amount {amount}"
            );
        }
        assert_eq!(
            hold_decision(5_000, 4_000, 4_000),
            Err(TakeRefusal::Insufficient {
                available: 1_000,
                amount: 4_000
            })
        );
    }

    #[test]
    fn offline_allowance_is_the_cards_then_the_levels_then_the_chains() {
        let p = policy();
        let own = Allowance {
            stored_value_cents: 7,
            points: 3,
        };
        assert_eq!(offline_allowance(&p, Some("gold"), Some(own)), own);
        assert_eq!(
            offline_allowance(&p, Some("gold"), None).stored_value_cents,
            5_000
        );
        assert_eq!(
            offline_allowance(&p, Some("silver"), None).stored_value_cents,
            1_000
        );
        assert_eq!(offline_allowance(&p, None, None).points, 100);
        assert_eq!(
            offline_allowance(&LoyaltyPolicy::default(), None, None),
            Allowance::default()
        );
    }

    #[test]
    fn offline_takes_stay_within_balance_and_allowance() {
        // (known balance, allowance, spent before, amount, outcome)
        use TakeRefusal::*;
        type Row = (i64, i64, i64, i64, Result<(), TakeRefusal>);
        let table: [Row; 8] = [
            (5_000, 1_000, 0, 1_000, Ok(())),
            (
                5_000,
                1_000,
                0,
                1_001,
                Err(OverAllowance {
                    allowance: 1_000,
                    spent_before: 0,
                    amount: 1_001,
                }),
            ),
            (5_000, 1_000, 600, 400, Ok(())),
            (
                5_000,
                1_000,
                600,
                401,
                Err(OverAllowance {
                    allowance: 1_000,
                    spent_before: 600,
                    amount: 401,
                }),
            ),
            (
                300,
                1_000,
                0,
                400,
                Err(Insufficient {
                    available: 300,
                    amount: 400,
                }),
            ),
            (300, 1_000, 0, 300, Ok(())),
            (
                5_000,
                0,
                0,
                1,
                Err(OverAllowance {
                    allowance: 0,
                    spent_before: 0,
                    amount: 1,
                }),
            ),
            (5_000, 1_000, 0, 0, Err(NotPositive(0))),
        ];
        for (balance, allowance, before, amount, outcome) in table {
            let got = offline_decision(balance, allowance, before, amount).map(|auth| {
                assert_eq!(
                    auth,
                    SpendAuth::Offline {
                        allowance,
                        spent_before: before
                    }
                );
            });
            assert_eq!(
                got, outcome,
                "balance {balance}, allowance {allowance}, before {before}, amount {amount}"
            );
        }
    }

    #[test]
    fn two_offline_stores_overdraw_by_at_most_their_allowances() {
        // Each store knows the same balance and keeps its own count; they take in turns until
        // both are refused. The card ends at no less than minus the two allowances.
        for (balance, allowance, step) in [
            (5_000, 1_000, 300),
            (500, 1_000, 70),
            (0, 250, 1),
            (10, 0, 5),
        ] {
            let mut taken = [0i64; 2];
            let mut known = [balance; 2];
            for _ in 0..10_000 {
                let mut any = false;
                for s in 0..2 {
                    if offline_decision(known[s], allowance, taken[s], step).is_ok() {
                        taken[s] += step;
                        known[s] -= step;
                        any = true;
                    }
                }
                if !any {
                    break;
                }
            }
            let end = balance - taken[0] - taken[1];
            assert!(end >= -2 * allowance, "balance {balance}: ended at {end}");
            assert!(taken.iter().all(|t| *t <= allowance && *t <= balance));
        }
    }

    #[test]
    fn over_policy_is_what_passed_the_allowance() {
        assert!(!is_over_policy(1_000, 0, 1_000));
        assert!(is_over_policy(1_000, 1, 1_000));
        assert!(is_over_policy(0, 0, 1));
        assert!(!is_over_policy(i64::MAX, i64::MAX, i64::MAX));
    }

    #[test]
    fn points_earned_by_table() {
        let p = policy();
        let (tea, tobacco, card) = (sku("tea"), sku("tobacco"), sku("gc50"));
        let line = |sku, category, amount_cents| EarningLine {
            sku,
            category,
            amount_cents,
            bonus_percent: 0,
        };
        let bonus = |sku, category, amount_cents, bonus_percent| EarningLine {
            sku,
            category,
            amount_cents,
            bonus_percent,
        };
        // (lines, level, paid with points, points)
        let table: Vec<(Vec<EarningLine>, Option<&str>, i64, i64)> = vec![
            (vec![line(&tea, "drinks", 1_000)], None, 0, 20),
            (vec![line(&tea, "drinks", 1_099)], None, 0, 21),
            (vec![line(&tea, "drinks", 1_000)], Some("gold"), 0, 30),
            (vec![line(&tea, "drinks", 1_000)], Some("silver"), 0, 20),
            (
                vec![
                    line(&tea, "drinks", 1_000),
                    line(&tobacco, "tobacco", 5_000),
                ],
                None,
                0,
                20,
            ),
            (vec![line(&card, "giftcards", 5_000)], None, 0, 0),
            (vec![line(&tea, "drinks", 1_000)], None, 500, 10),
            (vec![line(&tea, "drinks", 1_000)], None, 5_000, 0),
            (vec![line(&tea, "drinks", 49)], None, 0, 0),
            (vec![line(&tea, "drinks", 50)], None, 0, 1),
            (vec![], None, 0, 0),
            // Double points on tea: 10.00 at 2 a unit, twice.
            (vec![bonus(&tea, "drinks", 1_000, 100)], None, 0, 40),
            (vec![bonus(&tea, "drinks", 1_000, 100)], Some("gold"), 0, 60),
            // Points paid 5.00: off the line without a bonus first.
            (
                vec![
                    bonus(&tea, "drinks", 1_000, 100),
                    line(&card, "drinks", 500),
                ],
                None,
                500,
                40,
            ),
            // An excluded sku earns nothing, bonus or not.
            (vec![bonus(&tobacco, "tobacco", 1_000, 100)], None, 0, 0),
        ];
        for (lines, level, paid, points) in table {
            assert_eq!(
                points_earned(&p, level, &lines, paid),
                points,
                "{lines:?} {level:?} {paid}"
            );
        }
        assert_eq!(
            points_earned(
                &LoyaltyPolicy::default(),
                None,
                &[line(&tea, "drinks", 10_000)],
                0
            ),
            0
        );
    }

    #[test]
    fn returns_take_back_exactly_what_was_earned_in_any_steps() {
        // (earned, eligible sold, returns in steps) -> every step's take-back sums to the share.
        let cases: [(i64, i64, &[i64]); 5] = [
            (21, 1_099, &[1_099]),
            (21, 1_099, &[100, 100, 899]),
            (7, 300, &[100, 100, 100]),
            (1, 3, &[1, 1, 1]),
            (1_000, 999, &[1, 998]),
        ];
        for (earned, sold, steps) in cases {
            let mut before = 0;
            let mut total = 0;
            for step in steps {
                let back = points_taken_back(earned, sold, before, *step);
                assert!(back >= 0);
                total += back;
                before += step;
            }
            assert_eq!(total, earned, "{earned} over {steps:?}");
        }
        assert_eq!(points_taken_back(20, 1_000, 0, 500), 10);
        assert_eq!(
            points_taken_back(20, 1_000, 900, 500),
            2,
            "never more than was sold"
        );
        assert_eq!(points_taken_back(0, 1_000, 0, 500), 0);
        assert_eq!(points_taken_back(20, 0, 0, 500), 0);
    }

    #[test]
    fn points_expire_oldest_first_and_once() {
        const DAY: i64 = 86_400_000;
        let earned = |d: i64, a: i64| (d * DAY, a);
        // (entries, cutoff day, expiring)
        type Row = (Vec<(i64, i64)>, i64, i64);
        let table: Vec<Row> = vec![
            (vec![earned(0, 100)], 5, 100),
            (vec![earned(0, 100)], 0, 0),
            (vec![earned(0, 100), earned(10, -30)], 5, 70),
            (vec![earned(0, 100), earned(10, -30), earned(40, 50)], 5, 70),
            // The 70 expired: the same cutoff again expires nothing.
            (
                vec![
                    earned(0, 100),
                    earned(10, -30),
                    earned(40, 50),
                    earned(35, -70),
                ],
                5,
                0,
            ),
            // Later, the 50 earned on day 40 go too.
            (
                vec![
                    earned(0, 100),
                    earned(10, -30),
                    earned(40, 50),
                    earned(35, -70),
                ],
                50,
                50,
            ),
            // Redeemed more than the old points: the newer ones were used, nothing old is left.
            (
                vec![earned(0, 100), earned(40, 50), earned(45, -120)],
                20,
                0,
            ),
            // Never more than the balance (points taken back after they were spent).
            (vec![earned(0, 100), earned(1, -100), earned(2, -20)], 5, 0),
            (vec![], 5, 0),
        ];
        for (entries, cutoff, expiring) in table {
            assert_eq!(
                points_to_expire(&entries, cutoff * DAY),
                expiring,
                "{entries:?} cutoff day {cutoff}"
            );
        }
    }

    #[test]
    fn points_pay_whole_points_only() {
        let p = policy();
        assert_eq!(points_for_cents(&p, 500), Ok(100));
        assert!(points_for_cents(&p, 501).is_err());
        assert!(points_for_cents(&p, 0).is_err());
        assert!(points_for_cents(&LoyaltyPolicy::default(), 500).is_err());
    }
}
