//! The checkout engine's arithmetic and combination rules, as tables of baskets whose totals
//! were worked out by hand, and properties over random baskets.

use super::*;
use crate::ids::{MemberId, RegionId};
use crate::model::{
    ALL_DAYS, PriceEntry, PriceKind, Product, QuantityTier, SpendTier, StoreAllocation,
};
use proptest::prelude::*;

const T: i64 = 1_000_000;

fn sku(s: &str) -> Sku {
    Sku::new(s).unwrap()
}
fn id(s: &str) -> RecordId {
    RecordId::new(s).unwrap()
}

/// tea 1.00 and coffee 2.50 (drinks; coffee 2.20 for members), cake 3.00 (food), milk 0.80
/// (dairy), mug 5.00 (gifts).
fn catalog(promos: &[Promotion]) -> BTreeMap<Sku, SkuFacts> {
    let items = [
        ("tea", "drinks", 100),
        ("coffee", "drinks", 250),
        ("cake", "food", 300),
        ("milk", "dairy", 80),
        ("mug", "gifts", 500),
        ("noprice", "food", -1),
    ];
    items
        .iter()
        .map(|(s, cat, price)| {
            let mut prices = Vec::new();
            if *price >= 0 {
                prices.push(PriceEntry {
                    id: id(&format!("hq-p-{s}")),
                    sku: sku(s),
                    scope: Scope::Chain,
                    kind: PriceKind::Retail,
                    price_cents: *price,
                    effective_from_ms: 0,
                    effective_to_ms: None,
                });
            }
            if *s == "coffee" {
                prices.push(PriceEntry {
                    id: id("hq-m-coffee"),
                    sku: sku(s),
                    scope: Scope::Chain,
                    kind: PriceKind::Member,
                    price_cents: 220,
                    effective_from_ms: 0,
                    effective_to_ms: None,
                });
            }
            let facts = SkuFacts {
                sku: sku(s),
                product: Some(Product {
                    sku: sku(s),
                    name: s.to_string(),
                    category: cat.to_string(),
                    barcodes: vec![],
                    unit_cost_cents: 0,
                    active: true,
                }),
                prices,
                promotions: promos.to_vec(),
            };
            (sku(s), facts)
        })
        .collect()
}

fn promo(name: &str, rule: PromotionRule, skus: &[&str]) -> Promotion {
    Promotion {
        id: id(&format!("hq-{name}")),
        name: name.into(),
        scope: Scope::Chain,
        rule,
        skus: skus.iter().map(|s| sku(s)).collect(),
        categories: vec![],
        mode: Combination::BestPrice,
        priority: 0,
        member_only: false,
        member_levels: vec![],
        birthday_only: false,
        starts_at_ms: 0,
        ends_at_ms: None,
        local_dates: None,
        days_of_week: ALL_DAYS,
        hours: None,
        max_units_per_receipt: None,
        allocations: vec![],
    }
}

fn pct(bp: u32) -> PromotionRule {
    PromotionRule::PercentOff { basis_points: bp }
}
fn off(cents: i64) -> PromotionRule {
    PromotionRule::AmountOff { cents }
}
fn fixed(cents: i64) -> PromotionRule {
    PromotionRule::FixedPrice { cents }
}
fn tiers(t: &[(u32, i64)]) -> PromotionRule {
    PromotionRule::QuantityTiers {
        tiers: t
            .iter()
            .map(|(min_qty, unit_cents)| QuantityTier {
                min_qty: *min_qty,
                unit_cents: *unit_cents,
            })
            .collect(),
    }
}
fn bngm(buy: u32, get: u32, across_skus: bool) -> PromotionRule {
    PromotionRule::BuyNGetM {
        buy,
        get,
        across_skus,
    }
}
fn mix(count: u32, deal: GroupDeal) -> PromotionRule {
    PromotionRule::MixAndMatch { count, deal }
}
fn spend(t: &[(i64, SpendReward)]) -> PromotionRule {
    PromotionRule::SpendThreshold {
        tiers: t
            .iter()
            .map(|(spend_cents, reward)| SpendTier {
                spend_cents: *spend_cents,
                reward: reward.clone(),
            })
            .collect(),
    }
}
fn money_off(cents: i64) -> SpendReward {
    SpendReward::AmountOff { cents }
}

fn with(mut p: Promotion, f: impl FnOnce(&mut Promotion)) -> Promotion {
    f(&mut p);
    p
}
fn compound(p: Promotion) -> Promotion {
    with(p, |p| p.mode = Combination::Compound)
}
fn exclusive(p: Promotion) -> Promotion {
    with(p, |p| p.mode = Combination::Exclusive)
}
fn priority(p: Promotion, n: u16) -> Promotion {
    with(p, |p| p.priority = n)
}

/// Wednesday 2 December 2026, 14:00, store local.
fn wednesday_2pm() -> LocalTime {
    LocalTime {
        date: 20261202,
        month: 12,
        weekday: 2,
        hour: 14,
    }
}

fn gold() -> Option<Shopper> {
    Some(Shopper {
        level: Some("gold".into()),
        birthday_month: Some(6),
    })
}

/// One basket of the table.
struct Case {
    name: &'static str,
    promos: Vec<Promotion>,
    lines: Vec<(&'static str, i64)>,
    member: Option<Shopper>,
    local: LocalTime,
    used: Vec<(&'static str, u64)>,
    /// The total worked out by hand, in cents.
    total: i64,
}

fn case(
    name: &'static str,
    promos: Vec<Promotion>,
    lines: Vec<(&'static str, i64)>,
    total: i64,
) -> Case {
    Case {
        name,
        promos,
        lines,
        member: None,
        local: wednesday_2pm(),
        used: vec![],
        total,
    }
}

fn here() -> Place {
    Place::new(NodeId::new("S1").unwrap(), RegionId::new("north").unwrap())
}

fn run(c: &Case) -> Result<Priced, CheckoutError> {
    let place = here();
    let ctx = Context {
        place: &place,
        t_ms: T,
        local: c.local,
        member: c.member.clone(),
    };
    let basket: Vec<BasketLine> = c
        .lines
        .iter()
        .map(|(s, q)| BasketLine::new(sku(s), *q))
        .collect();
    let used = c.used.iter().map(|(p, n)| (id(p), *n)).collect();
    price_basket(&basket, &ctx, &catalog(&c.promos), &used)
}

fn member(c: Case, m: Option<Shopper>) -> Case {
    Case { member: m, ..c }
}
fn at(c: Case, local: LocalTime) -> Case {
    Case { local, ..c }
}

#[test]
fn each_kind_and_combination_gives_the_total_worked_out_by_hand() {
    let member_only = |p: Promotion| with(p, |p| p.member_only = true);
    let levels = |p: Promotion| with(p, |p| p.member_levels = vec!["gold".into()]);
    let birthday = |p: Promotion| with(p, |p| p.birthday_only = true);
    let hours = |p: Promotion, h| with(p, |p| p.hours = Some(h));
    let days = |p: Promotion, d| with(p, |p| p.days_of_week = d);
    let dates = |p: Promotion, d| with(p, |p| p.local_dates = Some(d));
    let cap = |p: Promotion, n| with(p, |p| p.max_units_per_receipt = Some(n));
    let alloc = |p: Promotion, store: &str, units| {
        with(p, |p| {
            p.allocations = vec![StoreAllocation {
                store: NodeId::new(store).unwrap(),
                units,
            }]
        })
    };
    let drinks = |p: Promotion| with(p, |p| p.categories = vec!["drinks".into()]);
    let trio = &["tea", "coffee", "cake"];
    let evening = LocalTime {
        hour: 23,
        ..wednesday_2pm()
    };
    let cases = vec![
        // Plain prices.
        case("no promotion", vec![], vec![("tea", 1)], 100),
        case(
            "two lines, no promotion",
            vec![],
            vec![("tea", 2), ("cake", 1)],
            500,
        ),
        // Percent off.
        case(
            "10% off tea",
            vec![promo("p10", pct(1000), &["tea"])],
            vec![("tea", 1)],
            90,
        ),
        case(
            "10% off, three units",
            vec![promo("p10", pct(1000), &["tea"])],
            vec![("tea", 3)],
            270,
        ),
        case(
            "15% off",
            vec![promo("p15", pct(1500), &["tea"])],
            vec![("tea", 1)],
            85,
        ),
        case(
            "33.33% rounds the discount to 33",
            vec![promo("p", pct(3333), &["tea"])],
            vec![("tea", 1)],
            67,
        ),
        case(
            "12.5% rounds half up to 13",
            vec![promo("p", pct(1250), &["tea"])],
            vec![("tea", 1)],
            87,
        ),
        case(
            "percent off a sku not in the basket",
            vec![promo("p", pct(1000), &["milk"])],
            vec![("tea", 1)],
            100,
        ),
        case(
            "percent off a category",
            vec![drinks(promo("d", pct(1000), &[]))],
            vec![("tea", 1), ("coffee", 1), ("cake", 1)],
            90 + 225 + 300,
        ),
        case(
            "percent off every sku",
            vec![promo("all", pct(1000), &[])],
            vec![("tea", 1), ("cake", 1)],
            360,
        ),
        // Amount off.
        case(
            "0.30 off each",
            vec![promo("a30", off(30), &["tea"])],
            vec![("tea", 2)],
            140,
        ),
        case(
            "amount off larger than the price stops at zero",
            vec![promo("a150", off(150), &["tea"])],
            vec![("tea", 1)],
            0,
        ),
        // Fixed price.
        case(
            "deal price 0.80",
            vec![promo("f80", fixed(80), &["tea"])],
            vec![("tea", 3)],
            240,
        ),
        case(
            "deal price above the price never raises it",
            vec![promo("f120", fixed(120), &["tea"])],
            vec![("tea", 1)],
            100,
        ),
        // Quantity tiers.
        case(
            "tiers: below the first",
            vec![promo("t", tiers(&[(3, 90), (6, 80)]), &["tea"])],
            vec![("tea", 2)],
            200,
        ),
        case(
            "tiers: the first reached",
            vec![promo("t", tiers(&[(3, 90), (6, 80)]), &["tea"])],
            vec![("tea", 3)],
            270,
        ),
        case(
            "tiers: the second reached",
            vec![promo("t", tiers(&[(3, 90), (6, 80)]), &["tea"])],
            vec![("tea", 6)],
            480,
        ),
        case(
            "tiers: past the second",
            vec![promo("t", tiers(&[(3, 90), (6, 80)]), &["tea"])],
            vec![("tea", 7)],
            560,
        ),
        case(
            "tiers: each line reaches its tier on its own",
            vec![promo("t", tiers(&[(3, 90)]), &["tea", "milk"])],
            vec![("tea", 3), ("milk", 2)],
            270 + 160,
        ),
        // Buy N get M, same sku.
        case(
            "buy 2 get 1: three",
            vec![promo("b", bngm(2, 1, false), &["tea"])],
            vec![("tea", 3)],
            200,
        ),
        case(
            "buy 2 get 1: two",
            vec![promo("b", bngm(2, 1, false), &["tea"])],
            vec![("tea", 2)],
            200,
        ),
        case(
            "buy 2 get 1: five",
            vec![promo("b", bngm(2, 1, false), &["tea"])],
            vec![("tea", 5)],
            400,
        ),
        case(
            "buy 2 get 1: six",
            vec![promo("b", bngm(2, 1, false), &["tea"])],
            vec![("tea", 6)],
            400,
        ),
        case(
            "buy 1 get 1 per line, not across lines",
            vec![promo("b", bngm(1, 1, false), &["tea", "cake"])],
            vec![("tea", 1), ("cake", 1)],
            400,
        ),
        // Buy N get M across a set: the cheapest in each group free.
        case(
            "buy 2 get 1 across: the cheapest free",
            vec![promo("x", bngm(2, 1, true), trio)],
            vec![("tea", 1), ("coffee", 1), ("cake", 1)],
            550,
        ),
        case(
            "buy 2 get 1 across: groups dearest first",
            vec![promo("x", bngm(2, 1, true), trio)],
            vec![("cake", 2), ("tea", 2)],
            700,
        ),
        case(
            "buy 2 get 1 across: not enough units",
            vec![promo("x", bngm(2, 1, true), trio)],
            vec![("cake", 1), ("tea", 1)],
            400,
        ),
        // Mix and match.
        case(
            "any 3 for 5.00",
            vec![promo("m", mix(3, GroupDeal::Price { cents: 500 }), trio)],
            vec![("tea", 1), ("coffee", 1), ("cake", 1)],
            500,
        ),
        case(
            "any 3 for 5.00, five cakes",
            vec![promo("m", mix(3, GroupDeal::Price { cents: 500 }), trio)],
            vec![("cake", 5)],
            500 + 600,
        ),
        case(
            "any 3 for 5.00 worth less never raises",
            vec![promo("m", mix(3, GroupDeal::Price { cents: 500 }), trio)],
            vec![("tea", 3)],
            300,
        ),
        case(
            "any 2 drinks 20% off",
            vec![drinks(promo(
                "m",
                mix(2, GroupDeal::PercentOff { basis_points: 2000 }),
                &[],
            ))],
            vec![("coffee", 1), ("tea", 1)],
            280,
        ),
        case(
            "any 2 for 0.50 off each pair",
            vec![promo(
                "m",
                mix(2, GroupDeal::AmountOff { cents: 50 }),
                &["tea"],
            )],
            vec![("tea", 4)],
            300,
        ),
        // Spend thresholds.
        case(
            "spend 5 get 0.50 off",
            vec![promo("s", spend(&[(500, money_off(50))]), &[])],
            vec![("cake", 2)],
            550,
        ),
        case(
            "spend threshold not reached",
            vec![promo("s", spend(&[(500, money_off(50))]), &[])],
            vec![("cake", 1)],
            300,
        ),
        case(
            "spend tiers: the higher",
            vec![promo(
                "s",
                spend(&[(500, money_off(50)), (1000, money_off(150))]),
                &[],
            )],
            vec![("cake", 4)],
            1050,
        ),
        case(
            "spend tiers: the lower",
            vec![promo(
                "s",
                spend(&[(500, money_off(50)), (1000, money_off(150))]),
                &[],
            )],
            vec![("cake", 2)],
            550,
        ),
        case(
            "spend 10 get 10%",
            vec![promo(
                "s",
                spend(&[(1000, SpendReward::PercentOff { basis_points: 1000 })]),
                &[],
            )],
            vec![("cake", 4)],
            1080,
        ),
        case(
            "threshold on the discounted total, reached",
            vec![
                promo("c10", pct(1000), &["cake"]),
                promo("s", spend(&[(500, money_off(50))]), &[]),
            ],
            vec![("cake", 2)],
            490,
        ),
        case(
            "threshold lost to a discount: the lower total wins",
            vec![
                promo("c20", pct(2000), &["cake"]),
                promo("s", spend(&[(500, money_off(50))]), &[]),
            ],
            vec![("cake", 2)],
            480,
        ),
        case(
            "threshold over some skus only",
            vec![promo("s", spend(&[(500, money_off(50))]), &["cake"])],
            vec![("cake", 1), ("coffee", 2)],
            800,
        ),
        case(
            "gift added to the basket",
            vec![promo(
                "g",
                spend(&[(500, SpendReward::Gift { sku: sku("mug") })]),
                &[],
            )],
            vec![("cake", 2)],
            600,
        ),
        case(
            "gift already in the basket is free",
            vec![promo(
                "g",
                spend(&[(500, SpendReward::Gift { sku: sku("mug") })]),
                &[],
            )],
            vec![("mug", 1), ("cake", 1)],
            300,
        ),
        // Members.
        case(
            "member-only without a member",
            vec![member_only(promo("mo", pct(1000), &["tea"]))],
            vec![("tea", 1)],
            100,
        ),
        member(
            case(
                "member-only with a member",
                vec![member_only(promo("mo", pct(1000), &["tea"]))],
                vec![("tea", 1)],
                90,
            ),
            gold(),
        ),
        member(
            case("member price", vec![], vec![("coffee", 1)], 220),
            gold(),
        ),
        case(
            "no member price for others",
            vec![],
            vec![("coffee", 1)],
            250,
        ),
        member(
            case(
                "gold level price",
                vec![levels(promo("gl", fixed(70), &["tea"]))],
                vec![("tea", 1)],
                70,
            ),
            gold(),
        ),
        member(
            case(
                "not for silver",
                vec![levels(promo("gl", fixed(70), &["tea"]))],
                vec![("tea", 1)],
                100,
            ),
            Some(Shopper {
                level: Some("silver".into()),
                birthday_month: None,
            }),
        ),
        case(
            "not without a member",
            vec![levels(promo("gl", fixed(70), &["tea"]))],
            vec![("tea", 1)],
            100,
        ),
        member(
            case(
                "birthday month",
                vec![birthday(promo("bd", pct(2000), &["cake"]))],
                vec![("cake", 1)],
                240,
            ),
            Some(Shopper {
                level: None,
                birthday_month: Some(12),
            }),
        ),
        member(
            case(
                "not the birthday month",
                vec![birthday(promo("bd", pct(2000), &["cake"]))],
                vec![("cake", 1)],
                300,
            ),
            gold(),
        ),
        // Time windows (store local).
        case(
            "outside the hours",
            vec![hours(promo("h", pct(1000), &["tea"]), (9, 12))],
            vec![("tea", 1)],
            100,
        ),
        case(
            "inside the hours",
            vec![hours(promo("h", pct(1000), &["tea"]), (14, 16))],
            vec![("tea", 1)],
            90,
        ),
        at(
            case(
                "hours wrapping midnight",
                vec![hours(promo("h", pct(1000), &["tea"]), (22, 2))],
                vec![("tea", 1)],
                90,
            ),
            evening,
        ),
        case(
            "hours wrapping midnight, afternoon",
            vec![hours(promo("h", pct(1000), &["tea"]), (22, 2))],
            vec![("tea", 1)],
            100,
        ),
        case(
            "Wednesdays",
            vec![days(promo("w", pct(1000), &["tea"]), 1 << 2)],
            vec![("tea", 1)],
            90,
        ),
        case(
            "Thursdays only",
            vec![days(promo("w", pct(1000), &["tea"]), 1 << 3)],
            vec![("tea", 1)],
            100,
        ),
        case(
            "local dates in range",
            vec![dates(promo("d", pct(1000), &["tea"]), (20261201, 20261224))],
            vec![("tea", 1)],
            90,
        ),
        case(
            "local dates out of range",
            vec![dates(promo("d", pct(1000), &["tea"]), (20261225, 20261231))],
            vec![("tea", 1)],
            100,
        ),
        case(
            "not started",
            vec![with(promo("f", pct(1000), &["tea"]), |p| {
                p.starts_at_ms = T + 1
            })],
            vec![("tea", 1)],
            100,
        ),
        case(
            "ended (end is exclusive)",
            vec![with(promo("e", pct(1000), &["tea"]), |p| {
                p.ends_at_ms = Some(T)
            })],
            vec![("tea", 1)],
            100,
        ),
        case(
            "other region's promotion",
            vec![with(promo("r", pct(1000), &["tea"]), |p| {
                p.scope = Scope::Region(RegionId::new("south").unwrap())
            })],
            vec![("tea", 1)],
            100,
        ),
        // Caps and allocations.
        case(
            "at most 2 units per receipt",
            vec![cap(promo("c", pct(1000), &["tea"]), 2)],
            vec![("tea", 5)],
            480,
        ),
        Case {
            used: vec![("hq-al", 2)],
            ..case(
                "allocation: 1 of 3 units left",
                vec![alloc(promo("al", pct(1000), &["tea"]), "S1", 3)],
                vec![("tea", 5)],
                490,
            )
        },
        Case {
            used: vec![("hq-al", 3)],
            ..case(
                "allocation used up",
                vec![alloc(promo("al", pct(1000), &["tea"]), "S1", 3)],
                vec![("tea", 5)],
                500,
            )
        },
        case(
            "allocated to another store only",
            vec![alloc(promo("al", pct(1000), &["tea"]), "S2", 3)],
            vec![("tea", 5)],
            500,
        ),
        // Exclusive.
        case(
            "exclusive beats a better best-price",
            vec![
                exclusive(promo("ex5", pct(500), &["tea"])),
                promo("bp20", pct(2000), &["tea"]),
            ],
            vec![("tea", 1)],
            95,
        ),
        case(
            "exclusive lines get no threshold",
            vec![
                exclusive(promo("ex", pct(1000), &["tea"])),
                promo("s", spend(&[(100, money_off(50))]), &[]),
            ],
            vec![("tea", 1), ("cake", 1)],
            90 + 250,
        ),
        case(
            "of two exclusives the better",
            vec![
                exclusive(promo("e10", pct(1000), &["tea"])),
                exclusive(promo("e20", pct(2000), &["tea"])),
            ],
            vec![("tea", 1)],
            80,
        ),
        case(
            "a higher-priority exclusive goes first",
            vec![
                priority(exclusive(promo("e5", pct(500), &["tea"])), 2),
                priority(exclusive(promo("e50", pct(5000), &["tea"])), 1),
            ],
            vec![("tea", 1)],
            95,
        ),
        case(
            "exclusive on one line, best price on another",
            vec![
                exclusive(promo("e", pct(1000), &["tea"])),
                promo("b", pct(2000), &["cake"]),
            ],
            vec![("tea", 1), ("cake", 1)],
            90 + 240,
        ),
        // Best price.
        case(
            "best of 10% and 0.15 off",
            vec![
                promo("p10", pct(1000), &["tea"]),
                promo("a15", off(15), &["tea"]),
            ],
            vec![("tea", 1)],
            85,
        ),
        case(
            "best-price promotions on different lines both apply",
            vec![
                promo("p10", pct(1000), &["tea"]),
                promo("c20", pct(2000), &["cake"]),
            ],
            vec![("tea", 1), ("cake", 1)],
            330,
        ),
        case(
            "buy 1 get 1 beats 30%",
            vec![
                promo("b", bngm(1, 1, false), &["tea"]),
                promo("p30", pct(3000), &["tea"]),
            ],
            vec![("tea", 2)],
            100,
        ),
        case(
            "lower priority but better: the customer gets it",
            vec![
                priority(promo("p10", pct(1000), &["tea"]), 5),
                priority(promo("p30", pct(3000), &["tea"]), 1),
            ],
            vec![("tea", 1)],
            70,
        ),
        case(
            "best price never stacks",
            vec![
                promo("p10", pct(1000), &["tea"]),
                promo("a10", off(10), &["tea"]),
            ],
            vec![("tea", 1)],
            90,
        ),
        // Compound.
        case(
            "compound: amount off then percent",
            vec![
                compound(promo("a10", off(10), &["tea"])),
                compound(promo("p10", pct(1000), &["tea"])),
            ],
            vec![("tea", 1)],
            81,
        ),
        case(
            "compound stack beats a best price",
            vec![
                compound(promo("a10", off(10), &["tea"])),
                compound(promo("p10", pct(1000), &["tea"])),
                promo("p15", pct(1500), &["tea"]),
            ],
            vec![("tea", 1)],
            81,
        ),
        case(
            "best price beats the stack",
            vec![
                compound(promo("a10", off(10), &["tea"])),
                compound(promo("p10", pct(1000), &["tea"])),
                promo("p25", pct(2500), &["tea"]),
            ],
            vec![("tea", 1)],
            75,
        ),
        case(
            "compound: deal price then percent",
            vec![
                compound(promo("p10", pct(1000), &["tea"])),
                compound(promo("f80", fixed(80), &["tea"])),
            ],
            vec![("tea", 1)],
            72,
        ),
        case(
            "compound across priorities does not stack",
            vec![
                priority(compound(promo("p10", pct(1000), &["tea"])), 2),
                priority(compound(promo("a10", off(10), &["tea"])), 1),
            ],
            vec![("tea", 1)],
            90,
        ),
        case(
            "three on one sku: stack of two, tier, threshold",
            vec![
                compound(promo("a10", off(10), &["cake"])),
                compound(promo("p10", pct(1000), &["cake"])),
                promo("t", tiers(&[(2, 250)]), &["cake"]),
                promo("s", spend(&[(400, money_off(20))]), &[]),
            ],
            vec![("cake", 2)],
            480,
        ),
    ];
    assert!(cases.len() >= 60, "{} baskets", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        match run(c) {
            Ok(priced) if priced.total_cents == c.total => {
                let sum: i64 = priced.lines.iter().map(ReceiptLine::amount_cents).sum();
                assert_eq!(sum, priced.total_cents, "{}: lines add up", c.name);
                for l in &priced.lines {
                    assert!(l.amount_cents() >= 0, "{}: a line below zero", c.name);
                    assert_eq!(l.check_bounds(), Ok(()), "{}", c.name);
                }
            }
            Ok(priced) => failures.push(format!(
                "{}: total {} (expected {})\n{}",
                c.name,
                priced.total_cents,
                c.total,
                priced.explanation.join("\n")
            )),
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn a_line_says_which_promotion_gave_what() {
    let c = case(
        "explained",
        vec![
            compound(promo("a10", off(10), &["tea"])),
            compound(promo("p10", pct(1000), &["tea"])),
        ],
        vec![("tea", 1)],
        81,
    );
    let priced = run(&c).unwrap();
    let line = &priced.lines[0];
    assert_eq!(line.discount_cents, 19);
    let by: Vec<(String, i64)> = line
        .discounts
        .iter()
        .map(|d| match &d.source {
            DiscountSource::Promotion(p) => (p.to_string(), d.cents),
            DiscountSource::Manual { reason } => (reason.clone(), d.cents),
            DiscountSource::AsSold { receipt } => (receipt.to_string(), d.cents),
        })
        .collect();
    assert_eq!(by, vec![("hq-a10".into(), 10), ("hq-p10".into(), 9)]);
    assert_eq!(
        priced.explanation,
        vec![
            "1 x tea @ 1.00 = 1.00",
            "  a10 (hq-a10)  -0.10",
            "  p10 (hq-p10)  -0.09",
            "total 0.81"
        ]
    );
    assert_eq!(priced.promotions.len(), 2);
}

#[test]
fn a_gift_is_its_own_free_line_and_a_spread_discount_adds_up() {
    let c = case(
        "gift",
        vec![promo(
            "g",
            spend(&[(500, SpendReward::Gift { sku: sku("mug") })]),
            &[],
        )],
        vec![("cake", 2)],
        600,
    );
    let priced = run(&c).unwrap();
    assert_eq!(priced.gift_lines, vec![1]);
    assert_eq!(priced.lines[1].sku, sku("mug"));
    assert_eq!(priced.lines[1].amount_cents(), 0);
    assert_eq!(priced.lines[1].discount_cents, 500);

    // 1.00 off over lines of 1.00, 2.50 and 3.00 (6.50): 15, 38 and 46 cents, plus one left over.
    let c = case(
        "spread",
        vec![promo("s", spend(&[(600, money_off(100))]), &[])],
        vec![("tea", 1), ("coffee", 1), ("cake", 1)],
        550,
    );
    let priced = run(&c).unwrap();
    let offs: Vec<i64> = priced.lines.iter().map(|l| l.discount_cents).collect();
    assert_eq!(offs.iter().sum::<i64>(), 100);
    assert_eq!(offs, vec![16, 38, 46]);
}

#[test]
fn overrides_and_manual_discounts_need_a_reason_and_stay_within_the_line() {
    let place = here();
    let ctx = Context {
        place: &place,
        t_ms: T,
        local: wednesday_2pm(),
        member: None,
    };
    let facts = catalog(&[promo("p10", pct(1000), &["tea"])]);
    let price = |lines: Vec<BasketLine>| price_basket(&lines, &ctx, &facts, &BTreeMap::new());
    let tea = |f: fn(&mut BasketLine)| {
        let mut l = BasketLine::new(sku("tea"), 1);
        f(&mut l);
        l
    };
    // An override takes no promotion and keeps the engine's price beside it.
    let p = price(vec![tea(|l| {
        l.price_override = Some((50, "damaged".into()))
    })])
    .unwrap();
    assert_eq!(p.total_cents, 50);
    assert_eq!(p.lines[0].price_override.as_ref().unwrap().list_cents, 100);
    // A manual discount comes after the promotion.
    let p = price(vec![tea(|l| {
        l.manual_discount = Some((20, "loyal".into()))
    })])
    .unwrap();
    assert_eq!(p.total_cents, 70);
    // Without a reason, or beyond what is left of the line: refused, naming the line.
    let err = price(vec![
        BasketLine::new(sku("cake"), 1),
        tea(|l| l.price_override = Some((50, " ".into()))),
    ])
    .unwrap_err();
    assert!(
        matches!(err, CheckoutError::Override { line: 1, .. }),
        "{err}"
    );
    let err = price(vec![tea(|l| {
        l.manual_discount = Some((91, "too much".into()))
    })])
    .unwrap_err();
    assert!(
        matches!(err, CheckoutError::Override { line: 0, .. }),
        "{err}"
    );
    let err = price(vec![tea(|l| {
        l.price_override = Some((UNIT_PRICE_CENTS_MAX + 1, "x".into()))
    })])
    .unwrap_err();
    assert!(
        matches!(err, CheckoutError::Override { line: 0, .. }),
        "{err}"
    );
}

#[test]
fn bad_baskets_are_refused_naming_the_line() {
    let bad = |lines: Vec<(&'static str, i64)>| run(&case("bad", vec![], lines, 0)).unwrap_err();
    assert_eq!(bad(vec![]), CheckoutError::Empty);
    assert_eq!(
        bad(vec![("tea", 1), ("nosuch", 1)]),
        CheckoutError::UnknownSku {
            line: 1,
            sku: sku("nosuch")
        }
    );
    assert_eq!(
        bad(vec![("noprice", 1)]),
        CheckoutError::NoPrice {
            line: 0,
            sku: sku("noprice")
        }
    );
    assert_eq!(
        bad(vec![("tea", 0)]),
        CheckoutError::Quantity { line: 0, qty: 0 }
    );
    assert_eq!(
        bad(vec![("tea", LINE_QTY_MAX_UNITS + 1)]),
        CheckoutError::Quantity {
            line: 0,
            qty: LINE_QTY_MAX_UNITS + 1
        }
    );
    assert_eq!(
        bad(vec![("tea", 1); RECEIPT_LINES_MAX + 1]),
        CheckoutError::TooManyLines(RECEIPT_LINES_MAX + 1)
    );
}

#[test]
fn local_time_follows_the_store_zone_and_its_daylight_saving() {
    // 2026-07-01 12:00 UTC is 14:00 in Paris (summer time) and 08:00 in New York.
    let t = 1_782_907_200_000;
    let (paris, known) = LocalTime::at(t, "Europe/Paris");
    assert!(known);
    assert_eq!((paris.date, paris.hour, paris.weekday), (20260701, 14, 2));
    let (ny, _) = LocalTime::at(t, "America/New_York");
    assert_eq!(ny.hour, 8);
    // 2026-12-01 12:00 UTC is 13:00 in Paris (winter time).
    let (winter, _) = LocalTime::at(1_796_126_400_000, "Europe/Paris");
    assert_eq!((winter.date, winter.hour, winter.month), (20261201, 13, 12));
    let (utc, known) = LocalTime::at(t, "Not/AZone");
    assert!(!known);
    assert_eq!(utc.hour, 12);
    let _ = MemberId::new("M1").unwrap();
}

// ------------------------------------------------------------------------------ properties

const SKUS: [&str; 5] = ["tea", "coffee", "cake", "milk", "mug"];

fn arb_rule() -> impl Strategy<Value = PromotionRule> {
    prop_oneof![
        (1u32..=10_000).prop_map(pct),
        (1i64..400).prop_map(off),
        (0i64..400).prop_map(fixed),
        ((2u32..5), (10i64..300)).prop_map(|(q, c)| tiers(&[(q, c)])),
        ((1u32..4), (1u32..3), any::<bool>()).prop_map(|(b, g, a)| bngm(b, g, a)),
        ((2u32..4), (0i64..800)).prop_map(|(n, c)| mix(n, GroupDeal::Price { cents: c })),
        ((2u32..4), (1u32..5000))
            .prop_map(|(n, b)| mix(n, GroupDeal::PercentOff { basis_points: b })),
        ((100i64..1500), (1i64..300)).prop_map(|(s, o)| spend(&[(s, money_off(o))])),
        ((100i64..1500), (1u32..5000))
            .prop_map(|(s, b)| spend(&[(s, SpendReward::PercentOff { basis_points: b })])),
        (100i64..1500).prop_map(|s| spend(&[(s, SpendReward::Gift { sku: sku("mug") })])),
    ]
}

fn arb_promo(n: usize) -> impl Strategy<Value = Promotion> {
    (
        arb_rule(),
        proptest::sample::subsequence(SKUS.to_vec(), 0..=3),
        any::<bool>(),
        0u16..3,
    )
        .prop_map(move |(rule, skus, is_compound, prio)| {
            let p = promo(&format!("r{n}"), rule, &skus);
            let p = if is_compound { compound(p) } else { p };
            priority(p, prio)
        })
}

fn arb_promos(max: usize) -> impl Strategy<Value = Vec<Promotion>> {
    (0..=max).prop_flat_map(|n| (0..n).map(arb_promo).collect::<Vec<_>>())
}

fn arb_basket() -> impl Strategy<Value = Vec<(&'static str, i64)>> {
    proptest::collection::vec((proptest::sample::select(SKUS.to_vec()), 1i64..7), 1..6)
}

fn total_of(promos: Vec<Promotion>, lines: Vec<(&'static str, i64)>) -> (i64, i64) {
    let c = case("prop", promos, lines, 0);
    let p = run(&c).unwrap();
    let gifts: i64 = p
        .gift_lines
        .iter()
        .map(|&i| p.lines[i].discount_cents)
        .sum();
    (p.total_cents, p.total_cents - gifts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A total is never negative, never above the plain price, and every line adds up.
    #[test]
    fn a_total_is_never_negative_nor_above_the_plain_price(promos in arb_promos(6), lines in arb_basket()) {
        let plain = total_of(vec![], lines.clone()).0;
        let (total, _) = total_of(promos, lines);
        prop_assert!(total >= 0);
        prop_assert!(total <= plain, "{total} > {plain}");
    }

    /// Line order does not change what the customer pays.
    #[test]
    fn line_order_does_not_change_the_total(promos in arb_promos(6), lines in arb_basket()) {
        let mut reversed = lines.clone();
        reversed.reverse();
        prop_assert_eq!(total_of(promos.clone(), lines).1, total_of(promos, reversed).1);
    }

    /// The search's bound changes no answer: with it off (every combination walked) the
    /// basket is priced the same, line by line.
    #[test]
    fn the_bounded_search_finds_what_the_whole_search_finds(promos in arb_promos(10), lines in arb_basket()) {
        let c = case("prop", promos, lines, 0);
        let bounded = run(&c);
        super::PRUNE.with(|p| p.set(false));
        let whole = run(&c);
        super::PRUNE.with(|p| p.set(true));
        prop_assert_eq!(bounded, whole);
    }

    /// Adding a best-price or compound promotion never raises what the customer pays.
    #[test]
    fn adding_a_promotion_never_raises_the_price(promos in arb_promos(6), extra in arb_promo(99), lines in arb_basket()) {
        let before = total_of(promos.clone(), lines.clone()).1;
        let mut more = promos;
        more.push(extra);
        let after = total_of(more, lines).1;
        prop_assert!(after <= before, "{after} > {before}");
    }
}

#[test]
fn every_rule_kind_survives_the_wire_and_json() {
    let rules = vec![
        pct(1000),
        off(10),
        fixed(99),
        tiers(&[(3, 90)]),
        bngm(2, 1, true),
        mix(3, GroupDeal::Price { cents: 500 }),
        mix(2, GroupDeal::PercentOff { basis_points: 2000 }),
        mix(2, GroupDeal::AmountOff { cents: 50 }),
        spend(&[
            (500, money_off(50)),
            (800, SpendReward::PercentOff { basis_points: 500 }),
            (1000, SpendReward::Gift { sku: sku("mug") }),
        ]),
    ];
    for rule in rules {
        let p = compound(promo("wire", rule, &["tea"]));
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<Promotion>(&bytes).unwrap(), p);
        let text = serde_json::to_string(&p.rule).unwrap();
        assert_eq!(
            serde_json::from_str::<PromotionRule>(&text).unwrap(),
            p.rule,
            "{text}"
        );
    }
    assert_eq!(
        serde_json::to_value(pct(1000)).unwrap(),
        serde_json::json!({ "percent_off": { "basis_points": 1000 } })
    );
}
