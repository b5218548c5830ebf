//! Promotions at HQ: what the CLI and the API both take ([`PromotionSpec`], rules as data),
//! the checks before anything is written, ending early, per-store allocations, and how a
//! promotion is shown (`promotion_json`: the rule as data, not a debug string).
//!
//! Invariant: nothing here writes; each function returns the promotion to commit, so the CLI
//! (HQ's database directly) and the API (through the hub) write it the same way, and a promotion
//! that fails a check is never written.

use crate::admin::parse_cents;
use anyhow::{Context, Result, bail};
use chainsync::ids::{NodeId, RecordId, Scope, Sku};
use chainsync::model::{
    ALL_DAYS, Combination, GroupDeal, Promotion, PromotionRule, QuantityTier, SpendReward,
    SpendTier, StoreAllocation,
};
use chainsync::replica::Replica;
use serde::Deserialize;
use serde_json::{Value, json};

/// A promotion as HQ staff describe it (the API's JSON body; the CLI builds the same).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionSpec {
    /// Without the `hq-` prefix, e.g. `tea10`.
    pub id: String,
    pub name: String,
    #[serde(default = "chain")]
    pub scope: String,
    pub rule: PromotionRule,
    #[serde(default)]
    pub skus: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default = "best_price")]
    pub mode: Combination,
    #[serde(default)]
    pub priority: u16,
    #[serde(default)]
    pub member_only: bool,
    #[serde(default)]
    pub member_levels: Vec<String>,
    #[serde(default)]
    pub birthday_only: bool,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    /// Store-local `[YYYYMMDD, YYYYMMDD]`, both inclusive.
    pub local_dates: Option<(u32, u32)>,
    /// `mon` … `sun`; empty: every day.
    #[serde(default)]
    pub days_of_week: Vec<String>,
    /// Store-local `[from, to)` hours.
    pub hours: Option<(u8, u8)>,
    pub max_units_per_receipt: Option<u32>,
    #[serde(default)]
    pub allocations: Vec<AllocationSpec>,
}

/// Units of a promotion one store may give.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationSpec {
    pub store: String,
    pub units: u32,
}

fn chain() -> String {
    "chain".into()
}
fn best_price() -> Combination {
    Combination::BestPrice
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `mon,wed,fri` into the days-of-week mask.
pub fn parse_days(days: &[String]) -> Result<u8> {
    if days.is_empty() {
        return Ok(ALL_DAYS);
    }
    let mut mask = 0u8;
    for d in days {
        let i = DAYS
            .iter()
            .position(|x| x.eq_ignore_ascii_case(d.trim()))
            .with_context(|| format!("day `{d}` is not one of mon … sun"))?;
        mask |= 1 << i;
    }
    Ok(mask)
}

/// The promotion `spec` describes, checked against the catalog and the directory.
pub fn build(r: &Replica, spec: PromotionSpec, now_ms: i64) -> Result<Promotion> {
    let scope: Scope = spec
        .scope
        .parse()
        .map_err(|e| anyhow::anyhow!("scope: {e}"))?;
    if !r.scope_known(&scope)? {
        bail!("scope {scope}: no such store or region (add it first)");
    }
    let id = RecordId::new(format!("hq-{}", spec.id)).context("promotion id")?;
    let skus: Vec<Sku> = spec
        .skus
        .iter()
        .map(|s| Sku::new(s.as_str()).with_context(|| format!("sku `{s}`")))
        .collect::<Result<_>>()?;
    let mut named = skus.clone();
    if let PromotionRule::SpendThreshold { tiers } = &spec.rule {
        for t in tiers {
            if let SpendReward::Gift { sku } = &t.reward {
                named.push(sku.clone());
            }
        }
    }
    for sku in &named {
        if r.product(sku)?.is_none() {
            bail!("sku {sku} is not in the catalog");
        }
    }
    let mut allocations = Vec::with_capacity(spec.allocations.len());
    for a in &spec.allocations {
        let store =
            NodeId::new(a.store.as_str()).with_context(|| format!("store `{}`", a.store))?;
        if !r.scope_known(&Scope::Store(store.clone()))? {
            bail!("no store {store} (neither enrolled nor added)");
        }
        allocations.push(StoreAllocation {
            store,
            units: a.units,
        });
    }
    let promo = Promotion {
        id,
        name: spec.name,
        scope,
        rule: spec.rule,
        skus,
        categories: spec.categories,
        mode: spec.mode,
        priority: spec.priority,
        member_only: spec.member_only || !spec.member_levels.is_empty(),
        member_levels: spec.member_levels,
        birthday_only: spec.birthday_only,
        starts_at_ms: spec.starts_at_ms.unwrap_or(now_ms),
        ends_at_ms: spec.ends_at_ms,
        local_dates: spec.local_dates,
        days_of_week: parse_days(&spec.days_of_week)?,
        hours: spec.hours,
        max_units_per_receipt: spec.max_units_per_receipt,
        allocations,
    };
    promo.check_bounds().map_err(anyhow::Error::msg)?;
    Ok(promo)
}

/// The promotion `id` of `scope` as held.
pub fn find(r: &Replica, id: &str, scope: &Scope) -> Result<Promotion> {
    let id = RecordId::new(format!("hq-{id}")).context("promotion id")?;
    r.promotions()?
        .into_iter()
        .find(|p| p.id == id && &p.scope == scope)
        .with_context(|| format!("no promotion {id} in scope {scope}"))
}

/// `promo` ended at `now_ms` (it applies to nothing sold from then on).
pub fn ended(mut promo: Promotion, now_ms: i64) -> Result<Promotion> {
    if promo.ends_at_ms.is_some_and(|end| end <= now_ms) {
        bail!("promotion {} has already ended", promo.id);
    }
    promo.ends_at_ms = Some(now_ms.max(promo.starts_at_ms + 1));
    Ok(promo)
}

/// `promo` with `store`'s allocation set to `units` (0 removes the store from the list).
pub fn allocated(
    r: &Replica,
    mut promo: Promotion,
    store: &NodeId,
    units: u32,
) -> Result<Promotion> {
    if !r.scope_known(&Scope::Store(store.clone()))? {
        bail!("no store {store} (neither enrolled nor added)");
    }
    promo.allocations.retain(|a| &a.store != store);
    if units > 0 {
        promo.allocations.push(StoreAllocation {
            store: store.clone(),
            units,
        });
        promo.allocations.sort_by(|a, b| a.store.cmp(&b.store));
    }
    promo.check_bounds().map_err(anyhow::Error::msg)?;
    Ok(promo)
}

/// A promotion as the API and `promo list` show it.
pub fn promotion_json(p: &Promotion) -> Value {
    let days: Vec<&str> = DAYS
        .iter()
        .enumerate()
        .filter(|(i, _)| p.days_of_week & (1 << i) != 0)
        .map(|(_, d)| *d)
        .collect();
    json!({
        "id": p.id.as_str().strip_prefix("hq-").unwrap_or(p.id.as_str()),
        "record_id": p.id.as_str(),
        "name": p.name,
        "scope": p.scope.to_string(),
        "rule": p.rule,
        "skus": p.skus.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "categories": p.categories,
        "mode": p.mode,
        "priority": p.priority,
        "member_only": p.member_only,
        "member_levels": p.member_levels,
        "birthday_only": p.birthday_only,
        "starts_at_ms": p.starts_at_ms,
        "ends_at_ms": p.ends_at_ms,
        "local_dates": p.local_dates,
        "days_of_week": days,
        "hours": p.hours,
        "max_units_per_receipt": p.max_units_per_receipt,
        "allocations": p.allocations.iter().map(|a| json!({ "store": a.store.as_str(), "units": a.units })).collect::<Vec<_>>(),
    })
}

fn percent(p: &str) -> Result<u32> {
    let bp = (p.parse::<f64>().with_context(|| format!("percent `{p}`"))? * 100.0).round();
    if !(1.0..=10_000.0).contains(&bp) {
        bail!("percent `{p}` must be more than 0 and at most 100");
    }
    Ok(bp as u32)
}

fn count(what: &str, n: &str) -> Result<u32> {
    n.parse().with_context(|| format!("{what} `{n}`"))
}

/// Parses a rule written on the command line:
///
/// | text | rule |
/// |---|---|
/// | `percent_off:10` | 10 % off |
/// | `amount_off:0.50` | 0.50 off each unit |
/// | `fixed_price:0.99` | deal price 0.99 |
/// | `tiers:3=0.90,6=0.80` | 3 or more at 0.90 each, 6 or more at 0.80 |
/// | `buy:2:get:1` / `buy:2:get:1:across` | the same sku / the cheapest of the set free |
/// | `mix:3:price:5.00` / `mix:2:percent:20` / `mix:2:off:1.00` | any k of the set |
/// | `spend:50.00:off:5.00,100:off:15.00` | basket tiers, money off |
/// | `spend:50:percent:10` / `spend:30.00:gift:mug` | basket tiers, percent off or a gift |
/// | `bonus_points:100` | the points the lines earn raised by 100 % (double points) |
pub fn parse_rule(text: &str) -> Result<PromotionRule> {
    let parts: Vec<&str> = text.split(':').collect();
    let rule = match parts.as_slice() {
        ["percent_off", p] => PromotionRule::PercentOff {
            basis_points: percent(p)?,
        },
        ["amount_off", a] => PromotionRule::AmountOff {
            cents: parse_cents(a)?,
        },
        ["fixed_price", a] => PromotionRule::FixedPrice {
            cents: parse_cents(a)?,
        },
        ["tiers", list] => PromotionRule::QuantityTiers {
            tiers: list
                .split(',')
                .map(|t| {
                    let (q, price) = t
                        .split_once('=')
                        .with_context(|| format!("tier `{t}` is not QTY=PRICE"))?;
                    Ok(QuantityTier {
                        min_qty: count("tier quantity", q)?,
                        unit_cents: parse_cents(price)?,
                    })
                })
                .collect::<Result<_>>()?,
        },
        ["buy", n, "get", m] | ["buy", n, "get", m, "across"] => PromotionRule::BuyNGetM {
            buy: count("buy", n)?,
            get: count("get", m)?,
            across_skus: parts.len() == 5,
        },
        ["bonus_points", p] => PromotionRule::BonusPoints {
            percent: p
                .trim_end_matches('%')
                .parse()
                .with_context(|| format!("bonus `{p}` is not a whole percent"))?,
        },
        ["mix", k, kind, v] => PromotionRule::MixAndMatch {
            count: count("group of", k)?,
            deal: match *kind {
                "price" => GroupDeal::Price {
                    cents: parse_cents(v)?,
                },
                "percent" => GroupDeal::PercentOff {
                    basis_points: percent(v)?,
                },
                "off" => GroupDeal::AmountOff {
                    cents: parse_cents(v)?,
                },
                other => bail!("mix-and-match deal `{other}` is not price, percent or off"),
            },
        },
        ["spend", ..] => {
            let list = text.trim_start_matches("spend:");
            PromotionRule::SpendThreshold {
                tiers: list
                    .split(',')
                    .map(|t| {
                        let bits: Vec<&str> = t.split(':').collect();
                        let [spend, kind, v] = bits.as_slice() else {
                            bail!("spend tier `{t}` is not SPEND:off|percent|gift:VALUE");
                        };
                        Ok(SpendTier {
                            spend_cents: parse_cents(spend)?,
                            reward: match *kind {
                                "off" => SpendReward::AmountOff {
                                    cents: parse_cents(v)?,
                                },
                                "percent" => SpendReward::PercentOff {
                                    basis_points: percent(v)?,
                                },
                                "gift" => SpendReward::Gift {
                                    sku: Sku::new(*v).with_context(|| format!("gift sku `{v}`"))?,
                                },
                                other => {
                                    bail!("spend reward `{other}` is not off, percent or gift")
                                }
                            },
                        })
                    })
                    .collect::<Result<_>>()?,
            }
        }
        _ => bail!(
            "rule `{text}` is not one of percent_off:P, amount_off:A, fixed_price:A, tiers:Q=A,…, \
             buy:N:get:M[:across], mix:K:price|percent|off:V, spend:X:off|percent|gift:V,…"
        ),
    };
    rule.check().map_err(anyhow::Error::msg)?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_from_the_command_line_and_bad_ones_say_why() {
        assert_eq!(
            parse_rule("percent_off:12.5").unwrap(),
            PromotionRule::PercentOff { basis_points: 1250 }
        );
        assert_eq!(
            parse_rule("tiers:3=0.90,6=0.80").unwrap(),
            PromotionRule::QuantityTiers {
                tiers: vec![
                    QuantityTier {
                        min_qty: 3,
                        unit_cents: 90
                    },
                    QuantityTier {
                        min_qty: 6,
                        unit_cents: 80
                    }
                ]
            }
        );
        assert_eq!(
            parse_rule("buy:2:get:1:across").unwrap(),
            PromotionRule::BuyNGetM {
                buy: 2,
                get: 1,
                across_skus: true
            }
        );
        assert_eq!(
            parse_rule("mix:3:price:5.00").unwrap(),
            PromotionRule::MixAndMatch {
                count: 3,
                deal: GroupDeal::Price { cents: 500 }
            }
        );
        assert_eq!(
            parse_rule("spend:50:off:5,100:gift:mug").unwrap(),
            PromotionRule::SpendThreshold {
                tiers: vec![
                    SpendTier {
                        spend_cents: 5000,
                        reward: SpendReward::AmountOff { cents: 500 }
                    },
                    SpendTier {
                        spend_cents: 10000,
                        reward: SpendReward::Gift {
                            sku: Sku::new("mug").unwrap()
                        }
                    }
                ]
            }
        );
        for bad in [
            "percent_off:0",
            "percent_off:101",
            "amount_off:-1",
            "buy:0:get:1",
            "mix:2:free:1",
            "spend:50:off",
            "half_price",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_days(&["mon".into(), "Sun".into()]).unwrap(),
            0b100_0001
        );
        assert!(parse_days(&["funday".into()]).is_err());
    }
}
