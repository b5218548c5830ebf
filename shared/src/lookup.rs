//! Lookups: the facts a till needs about skus and members, gathered in one place so that every
//! mode computes prices and balances from the same inputs by the same code.
//!
//! A realtime or batch store gathers them from its own replica; a hosted store keeps no replica
//! and asks HQ, which gathers them from its replica for that store's scopes (the `Lookup` frame)
//! and answers; the hosted agent keeps what it was told in its lookup cache so that it can go on
//! selling when HQ is unreachable. The till's arithmetic (which price entry wins, which promotions
//! apply) then runs on the facts with [`crate::merge`], wherever they came from.
//!
//! Invariants: facts for a store hold only what the store's scopes cover (HQ never tells a store
//! another region's prices); a lookup asks for at most [`LOOKUP_SKUS_MAX`] skus, so an answer
//! always fits one frame; the cache is a memo of answers, never replicated data: nothing in it is
//! applied to the replica's tables or passed on.

use crate::ids::{CardNo, MemberId, Place, RecordId, Sku};
use crate::model::ReturnRecord;
use crate::model::{
    Allowance, LedgerAccount, LoyaltyPolicy, PriceEntry, Product, ProfileField, Promotion,
};
use crate::replica::{CardInfo, HoldOutcome, HoldRequest, OriginalReceipt, Replica, ReplicaError};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most skus in one lookup: a receipt's lines ([`crate::model`] caps a receipt at 500).
pub const LOOKUP_SKUS_MAX: usize = 500;

/// What a store asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupQuery {
    /// The product, price entries and promotions of these skus.
    Skus(Vec<Sku>),
    /// A member's profile and balances.
    Member(MemberId),
    /// Hold an amount of a card for a sale about to be recorded (any online store; HQ writes).
    Hold(HoldRequest),
    /// Release a hold of the asking store (a sale abandoned or refused).
    Release(RecordId),
    /// A card and where it stands.
    Card(CardNo),
    /// The members with this phone number.
    Phone(String),
    /// A receipt of another store and the returns against it, so that a return can be checked
    /// where the goods come back.
    Original(RecordId),
}

/// What HQ answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupAnswer {
    Skus(Vec<SkuFacts>),
    Member(MemberFacts),
    Hold(HoldOutcome),
    /// Whether a live hold was released.
    Released(bool),
    Card(Option<CardInfo>),
    Members(Vec<MemberId>),
    Original(Option<(OriginalReceipt, Vec<ReturnRecord>)>),
}

/// Everything that decides what one sku costs at one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuFacts {
    pub sku: Sku,
    /// `None`: the catalog has no such sku.
    pub product: Option<Product>,
    /// Every price entry of the sku whose scope covers the store, in effect or not (an entry
    /// effective next week is here, so a hosted store offline next week still charges it).
    pub prices: Vec<PriceEntry>,
    /// Every promotion covering the store that names the sku or its category, or applies to
    /// every sku.
    pub promotions: Vec<Promotion>,
}

/// A member's profile and balances as the answering node holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFacts {
    pub member: MemberId,
    pub profile: Vec<(ProfileField, String)>,
    pub points: i64,
    pub stored_value_cents: i64,
    /// Whether the node knows the member at all (a profile field or a ledger entry).
    pub known: bool,
    /// The chain's loyalty policy, so that a store without HQ's members stream (hosted) earns
    /// and pays points by the same rules.
    pub policy: LoyaltyPolicy,
    /// The card's offline allowance as the answering node knows it.
    pub allowance: Allowance,
}

impl MemberFacts {
    /// A member nobody has told this node about: no profile, nothing on the card, no policy.
    pub fn unknown(member: MemberId) -> Self {
        MemberFacts {
            member,
            profile: Vec::new(),
            points: 0,
            stored_value_cents: 0,
            known: false,
            policy: LoyaltyPolicy::default(),
            allowance: Allowance::default(),
        }
    }

    /// The member as pricing sees them: level and birthday month (`MMDD`) from the profile.
    pub fn shopper(&self) -> crate::checkout::Shopper {
        let field = |f: ProfileField| {
            self.profile
                .iter()
                .find(|(field, _)| *field == f)
                .map(|(_, v)| v.clone())
        };
        crate::checkout::Shopper {
            level: field(ProfileField::Level),
            birthday_month: field(ProfileField::Birthday)
                .and_then(|b| b.get(..2).and_then(|m| m.parse().ok())),
        }
    }
}

/// Why a lookup could not be made or answered.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("a lookup asks for {0} skus (at most {LOOKUP_SKUS_MAX})")]
    TooManySkus(usize),
    #[error("malformed lookup: {0}")]
    Malformed(String),
    #[error("storage: {0}")]
    Storage(#[from] ReplicaError),
}

impl LookupQuery {
    /// Checks the size limit.
    pub fn check(&self) -> Result<(), LookupError> {
        match self {
            LookupQuery::Skus(skus) if skus.len() > LOOKUP_SKUS_MAX => {
                Err(LookupError::TooManySkus(skus.len()))
            }
            LookupQuery::Phone(phone) if phone.len() > crate::model::TEXT_BYTES_MAX => {
                Err(LookupError::Malformed("a phone number that long".into()))
            }
            _ => Ok(()),
        }
    }

    /// The query's wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, LookupError> {
        postcard::to_allocvec(self).map_err(|e| LookupError::Malformed(e.to_string()))
    }

    /// A query from wire bytes, size-checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, LookupError> {
        let query: Self =
            postcard::from_bytes(bytes).map_err(|e| LookupError::Malformed(e.to_string()))?;
        query.check()?;
        Ok(query)
    }
}

impl LookupAnswer {
    /// The answer's wire bytes (HQ's refusal travels as `Err`).
    pub fn encode(answer: &Result<LookupAnswer, String>) -> Result<Vec<u8>, LookupError> {
        postcard::to_allocvec(answer).map_err(|e| LookupError::Malformed(e.to_string()))
    }

    /// An answer from wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Result<LookupAnswer, String>, LookupError> {
        postcard::from_bytes(bytes).map_err(|e| LookupError::Malformed(e.to_string()))
    }
}

impl Replica {
    /// Answers `query` for the store at `place` from this replica.
    pub fn lookup(&self, place: &Place, query: &LookupQuery) -> Result<LookupAnswer, LookupError> {
        query.check()?;
        Ok(match query {
            LookupQuery::Skus(skus) => LookupAnswer::Skus(self.sku_facts(place, skus)?),
            LookupQuery::Member(member) => LookupAnswer::Member(self.member_facts(member)?),
            LookupQuery::Card(number) => LookupAnswer::Card(self.card(number)?),
            LookupQuery::Phone(phone) => LookupAnswer::Members(self.members_by_phone(phone)?),
            LookupQuery::Original(id) => LookupAnswer::Original(
                self.original_receipt(id)?
                    .map(|o| Ok::<_, ReplicaError>((o, self.returns_against(id)?)))
                    .transpose()?,
            ),
            LookupQuery::Hold(_) | LookupQuery::Release(_) => {
                return Err(LookupError::Malformed(
                    "holds are placed at HQ, by the hub (HubStore::lookup)".into(),
                ));
            }
        })
    }

    /// The facts a basket of `skus` is priced from at `place`, by sku: theirs and those of the
    /// gifts their promotions could add ([`crate::checkout::gift_skus`]).
    pub fn basket_facts(
        &self,
        place: &Place,
        skus: &[Sku],
    ) -> Result<BTreeMap<Sku, SkuFacts>, ReplicaError> {
        let mut facts: BTreeMap<Sku, SkuFacts> = self
            .sku_facts(place, skus)?
            .into_iter()
            .map(|f| (f.sku.clone(), f))
            .collect();
        let gifts = crate::checkout::gift_skus(&facts);
        for f in self.sku_facts(place, &gifts)? {
            facts.insert(f.sku.clone(), f);
        }
        Ok(facts)
    }

    /// The facts of `skus` for the store at `place`, in the order asked. Promotions are found
    /// through `promotion_keys` (those naming the sku or its category, or every sku).
    pub fn sku_facts(&self, place: &Place, skus: &[Sku]) -> Result<Vec<SkuFacts>, ReplicaError> {
        let mut prices_stmt = self
            .connection()
            .prepare_cached("SELECT body FROM price_entries WHERE sku = ?1 ORDER BY scope, id")?;
        let mut promos_stmt = self.connection().prepare_cached(
            "SELECT body FROM promotions
             WHERE (scope, id) IN (SELECT scope, id FROM promotion_keys WHERE key IN (?1, ?2, '*'))
             ORDER BY scope, id",
        )?;
        let corrupt =
            |what: &str, e: postcard::Error| ReplicaError::Corrupt(format!("stored {what}: {e}"));
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            let mut prices = Vec::new();
            let mut rows = prices_stmt.query(params![sku.as_str()])?;
            while let Some(row) = rows.next()? {
                let body: Vec<u8> = row.get(0)?;
                let entry: PriceEntry =
                    postcard::from_bytes(&body).map_err(|e| corrupt("price entry", e))?;
                if place.covers(&entry.scope) {
                    prices.push(entry);
                }
            }
            let product = self.product(sku)?;
            let category = product
                .as_ref()
                .map(|p| format!("cat:{}", p.category))
                .unwrap_or_default();
            let mut promotions = Vec::new();
            let mut rows = promos_stmt.query(params![format!("sku:{sku}"), category])?;
            while let Some(row) = rows.next()? {
                let body: Vec<u8> = row.get(0)?;
                let promo: Promotion =
                    postcard::from_bytes(&body).map_err(|e| corrupt("promotion", e))?;
                if place.covers(&promo.scope) {
                    promotions.push(promo);
                }
            }
            out.push(SkuFacts {
                sku: sku.clone(),
                product,
                prices,
                promotions,
            });
        }
        Ok(out)
    }

    /// A member's profile and balances as this replica holds them.
    pub fn member_facts(&self, member: &MemberId) -> Result<MemberFacts, ReplicaError> {
        let member = &self.canonical_member(member)?;
        let profile: Vec<(ProfileField, String)> = self
            .member_profile(member)?
            .into_iter()
            .map(|(f, v)| (f, v.value))
            .collect();
        let has_ledger: bool = self.connection().query_row(
            "SELECT EXISTS (SELECT 1 FROM ledger WHERE member IN (SELECT ?1 UNION ALL SELECT alias FROM member_aliases WHERE survivor = ?1))",
            params![member.as_str()],
            |r| r.get(0),
        )?;
        Ok(MemberFacts {
            member: member.clone(),
            known: has_ledger || !profile.is_empty(),
            profile,
            points: self.balance(member, LedgerAccount::Points)?,
            stored_value_cents: self.balance(member, LedgerAccount::StoredValue)?,
            policy: self.loyalty_policy()?,
            allowance: self.offline_allowance_of(member)?,
        })
    }

    /// Remembers what HQ answered (hosted stores), replacing older answers about the same
    /// skus and member.
    pub fn remember(
        &self,
        skus: &[SkuFacts],
        member: Option<&MemberFacts>,
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        let mut put = self.connection().prepare_cached(
            "INSERT OR REPLACE INTO lookup_cache (key, answer, fetched_ms) VALUES (?1, ?2, ?3)",
        )?;
        let encode = |what: &str, r: postcard::Result<Vec<u8>>| {
            r.map_err(|e| ReplicaError::Corrupt(format!("encoding cached {what}: {e}")))
        };
        for f in skus {
            let bytes = encode("sku", postcard::to_allocvec(f))?;
            put.execute(params![sku_key(&f.sku), bytes, now_ms as i64])?;
        }
        if let Some(m) = member {
            let bytes = encode("member", postcard::to_allocvec(m))?;
            put.execute(params![member_key(&m.member), bytes, now_ms as i64])?;
        }
        Ok(())
    }

    /// What HQ last said about `sku`, and when.
    pub fn remembered_sku(&self, sku: &Sku) -> Result<Option<(SkuFacts, u64)>, ReplicaError> {
        self.remembered(&sku_key(sku))
    }

    /// What HQ last said about `member`, and when.
    pub fn remembered_member(
        &self,
        member: &MemberId,
    ) -> Result<Option<(MemberFacts, u64)>, ReplicaError> {
        self.remembered(&member_key(member))
    }

    fn remembered<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, ReplicaError> {
        let row: Option<(Vec<u8>, i64)> = self
            .connection()
            .prepare_cached("SELECT answer, fetched_ms FROM lookup_cache WHERE key = ?1")?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(bytes, fetched_ms)| {
            postcard::from_bytes(&bytes)
                .map(|facts| (facts, fetched_ms as u64))
                .map_err(|e| ReplicaError::Corrupt(format!("cached {key}: {e}")))
        })
        .transpose()
    }
}

fn sku_key(sku: &Sku) -> String {
    format!("sku:{sku}")
}

fn member_key(member: &MemberId) -> String {
    format!("member:{member}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_over_the_sku_limit_is_refused_on_decode() {
        let skus: Vec<Sku> = (0..=LOOKUP_SKUS_MAX)
            .map(|i| Sku::new(format!("SKU{i}")).unwrap())
            .collect();
        let bytes = postcard::to_allocvec(&LookupQuery::Skus(skus)).unwrap();
        assert!(matches!(
            LookupQuery::decode(&bytes),
            Err(LookupError::TooManySkus(n)) if n == LOOKUP_SKUS_MAX + 1
        ));
        assert!(matches!(
            LookupQuery::decode(&[0xff, 0xff]),
            Err(LookupError::Malformed(_))
        ));
    }
}
