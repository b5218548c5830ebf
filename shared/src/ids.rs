//! Identifiers of the retail domain and of replication streams.
//!
//! Every identifier is a short printable string checked once, where it enters (a change set being
//! decoded, an API request, a CLI flag), so that everything past that point can rely on it.
//!
//! Invariants:
//! - A [`NodeId`] is 1..=[`NODE_ID_CHARS_MAX`] characters of `[A-Za-z0-9_-]`; HQ is always `hq`.
//! - A record created by a node (receipt, ledger entry, stock movement …) has an id that starts with
//!   `"{origin}-"`, so two nodes can never mint the same id ([`record_id_owned_by`]).
//! - A [`StreamId`] renders as `origin/topic`, e.g. `S017/sales` or `hq/prices@region:north`, and
//!   parses back to the same value.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest node (store or HQ) id: long enough for `"S" + 6 digits` style codes and readable names.
pub const NODE_ID_CHARS_MAX: usize = 32;
/// Longest record id (receipt, ledger entry, sku, member …): ids are printed on receipts and typed by
/// staff, so anything longer is a mistake, and a bound keeps rows small.
pub const RECORD_ID_CHARS_MAX: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    /// The id was longer than its limit.
    #[error("{kind} id `{id}` is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        id: String,
        max: usize,
    },
    /// The id held a character outside the allowed set.
    #[error("{kind} id `{id}` holds a character other than letters, digits, `-`, `_`, `.` or `:`")]
    BadCharacter { kind: &'static str, id: String },
    /// A stream or topic name that does not parse.
    #[error("`{0}` is not a stream name (expected origin/topic, e.g. S017/sales)")]
    BadStream(String),
}

fn check(kind: &'static str, id: &str, max: usize, extra: &[char]) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.chars().count() > max {
        return Err(IdError::TooLong {
            kind,
            id: id.to_owned(),
            max,
        });
    }
    let ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c));
    if !ok {
        return Err(IdError::BadCharacter {
            kind,
            id: id.to_owned(),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $extra:expr) => {
        $(#[$doc])*
        /// Kept inline up to 24 bytes ([`CompactString`]): no allocation to decode or copy one.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(CompactString);

        impl $name {
            /// Checks and wraps an id.
            pub fn new(id: impl AsRef<str>) -> Result<Self, IdError> {
                let id = id.as_ref();
                check($kind, id, $max, $extra)?;
                Ok(Self(CompactString::new(id)))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let id = CompactString::deserialize(d)?;
                check($kind, id.as_str(), $max, $extra).map_err(serde::de::Error::custom)?;
                Ok(Self(id))
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<Self, IdError> {
                Self::new(id)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // pad, not write_str: honours width and alignment in tables.
                f.pad(self.0.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

string_id!(
    /// A node of the chain: HQ (`hq`) or a store (`S017`).
    NodeId, "node", NODE_ID_CHARS_MAX, &[]
);
string_id!(
    /// A region grouping stores (`north`).
    RegionId, "region", NODE_ID_CHARS_MAX, &[]
);
string_id!(
    /// A stock-keeping unit: one sellable product.
    Sku, "sku", RECORD_ID_CHARS_MAX, &['.']
);
string_id!(
    /// A member (a loyalty customer): balances and history belong to the member, not a card.
    MemberId, "member", RECORD_ID_CHARS_MAX, &['.']
);
string_id!(
    /// A loyalty card's number, as printed on the card or shown in an app. A card belongs to one
    /// member; a member may hold several over time (replacements) or at once (a child's card).
    CardNo, "card", RECORD_ID_CHARS_MAX, &['.']
);
string_id!(
    /// Any record minted by a node: receipt, return, void, ledger entry, stock movement, price entry,
    /// promotion. Records that a node creates carry its id as a prefix (see [`record_id_owned_by`]).
    RecordId, "record", RECORD_ID_CHARS_MAX, &['.', ':']
);

impl NodeId {
    /// HQ's node id.
    pub fn hq() -> Self {
        Self(CompactString::const_new("hq"))
    }
    /// Whether this node is HQ.
    pub fn is_hq(&self) -> bool {
        self.0 == "hq"
    }
}

impl RecordId {
    /// The id `"{origin}-{n}"`, the form nodes use for what they create.
    pub fn minted(origin: &NodeId, n: u64) -> Self {
        Self(compact_str::format_compact!("{origin}-{n}"))
    }
}

/// Whether `id` is owned by `origin`, i.e. starts with `"{origin}-"`.
pub fn record_id_owned_by(id: &RecordId, origin: &NodeId) -> bool {
    id.as_str()
        .strip_prefix(origin.as_str())
        .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1)
}

/// Which part of the chain a price entry or promotion applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every store.
    Chain,
    /// Every store of one region.
    Region(RegionId),
    /// One store.
    Store(NodeId),
}

/// Most levels of regions one store sits in (HQ → branch company → office → store uses 2).
pub const REGION_DEPTH_MAX: usize = 8;

/// Where a store sits in the chain: its id and its regions, its own first, then each parent up
/// to a top region (2- to 4-tier chains: `[office, branch]`, `[region]`, or none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Place {
    pub store: NodeId,
    /// Innermost first; at most [`REGION_DEPTH_MAX`].
    pub regions: Vec<RegionId>,
}

impl Place {
    /// A store directly in one top region.
    pub fn new(store: NodeId, region: RegionId) -> Self {
        Self {
            store,
            regions: vec![region],
        }
    }

    /// Whether this store falls under `scope`: the chain, any of its regions, or itself.
    pub fn covers(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Chain => true,
            Scope::Region(r) => self.regions.contains(r),
            Scope::Store(s) => s == &self.store,
        }
    }

    /// How specific `scope` is for this store: the chain (0) < a top region < … < the store's
    /// own region < the store itself. The most specific scope in effect wins.
    pub fn specificity(&self, scope: &Scope) -> usize {
        match scope {
            Scope::Chain => 0,
            Scope::Region(r) => self
                .regions
                .iter()
                .position(|x| x == r)
                .map_or(0, |i| self.regions.len() - i),
            Scope::Store(_) => usize::MAX,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Chain => f.write_str("chain"),
            Scope::Region(r) => write!(f, "region:{r}"),
            Scope::Store(s) => write!(f, "store:{s}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s == "chain" {
            return Ok(Scope::Chain);
        }
        if let Some(r) = s.strip_prefix("region:") {
            return Ok(Scope::Region(RegionId::new(r)?));
        }
        if let Some(n) = s.strip_prefix("store:") {
            return Ok(Scope::Store(NodeId::new(n)?));
        }
        Err(IdError::BadStream(s.to_owned()))
    }
}

/// What a stream carries. Each topic has one set of ops it may hold and one set of writers
/// (see [`crate::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// Regions, stores, their modes and keys. HQ only.
    Directory,
    /// Products. HQ only.
    Catalog,
    /// Price entries of one scope. HQ, or a store for its own store scope where HQ allows.
    Prices(Scope),
    /// Promotions of one scope. HQ only.
    Promotions(Scope),
    /// Member profile edits and ledger entries. Any node, for the members it serves.
    Members,
    /// Stock movements of the writing store. Stores only.
    Inventory,
    /// Receipts, returns and voids of the writing store. Stores only.
    Sales,
}

impl Topic {
    /// The topic without its scope (`prices`, not `prices@region:north`): a metric's label.
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::Directory => "directory",
            Topic::Catalog => "catalog",
            Topic::Prices(_) => "prices",
            Topic::Promotions(_) => "promotions",
            Topic::Members => "members",
            Topic::Inventory => "inventory",
            Topic::Sales => "sales",
        }
    }

    /// Delivery priority, lowest first: a store needs the directory (keys) before anything signed by
    /// other stores, and prices before history.
    pub fn priority(&self) -> u8 {
        match self {
            Topic::Directory => 0,
            Topic::Catalog => 1,
            Topic::Prices(_) => 2,
            Topic::Promotions(_) => 3,
            Topic::Members => 4,
            Topic::Inventory => 5,
            Topic::Sales => 6,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Directory => f.write_str("directory"),
            Topic::Catalog => f.write_str("catalog"),
            Topic::Prices(s) => write!(f, "prices@{s}"),
            Topic::Promotions(s) => write!(f, "promotions@{s}"),
            Topic::Members => f.write_str("members"),
            Topic::Inventory => f.write_str("inventory"),
            Topic::Sales => f.write_str("sales"),
        }
    }
}

impl std::str::FromStr for Topic {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Ok(match s {
            "directory" => Topic::Directory,
            "catalog" => Topic::Catalog,
            "members" => Topic::Members,
            "inventory" => Topic::Inventory,
            "sales" => Topic::Sales,
            _ => {
                if let Some(scope) = s.strip_prefix("prices@") {
                    Topic::Prices(scope.parse()?)
                } else if let Some(scope) = s.strip_prefix("promotions@") {
                    Topic::Promotions(scope.parse()?)
                } else {
                    return Err(IdError::BadStream(s.to_owned()));
                }
            }
        })
    }
}

/// A stream: the append-only chain of change sets one origin writes on one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// The node that writes (and signs) this stream.
    pub origin: NodeId,
    /// What it carries.
    pub topic: Topic,
}

impl StreamId {
    /// The stream `origin/topic`.
    pub fn new(origin: NodeId, topic: Topic) -> Self {
        Self { origin, topic }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.topic)
    }
}

impl std::str::FromStr for StreamId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (origin, topic) = s
            .split_once('/')
            .ok_or_else(|| IdError::BadStream(s.to_owned()))?;
        Ok(StreamId {
            origin: origin.parse()?,
            topic: topic.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        for name in [
            "S017/sales",
            "hq/directory",
            "hq/prices@chain",
            "hq/prices@region:north",
            "S017/prices@store:S017",
            "hq/promotions@store:S2",
            "S2/members",
            "S2/inventory",
            "hq/catalog",
        ] {
            let stream: StreamId = name.parse().unwrap();
            assert_eq!(stream.to_string(), name);
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert!(matches!(
            "S017".parse::<StreamId>(),
            Err(IdError::BadStream(_))
        ));
        assert!(matches!(
            "S 17/sales".parse::<StreamId>(),
            Err(IdError::BadCharacter { .. })
        ));
        assert!(matches!(
            "/sales".parse::<StreamId>(),
            Err(IdError::Empty { .. })
        ));
        assert!(matches!(
            "S1/prices@planet:x".parse::<StreamId>(),
            Err(IdError::BadStream(_))
        ));
        let long = "x".repeat(NODE_ID_CHARS_MAX + 1);
        assert!(matches!(NodeId::new(long), Err(IdError::TooLong { .. })));
    }

    #[test]
    fn ids_that_fail_checks_do_not_deserialize() {
        let bytes = postcard::to_allocvec(&"bad id!".to_owned()).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
    }

    #[test]
    fn record_ownership_needs_the_full_prefix() {
        let s1 = NodeId::new("S1").unwrap();
        assert!(record_id_owned_by(&RecordId::minted(&s1, 7), &s1));
        assert!(!record_id_owned_by(&RecordId::new("S10-7").unwrap(), &s1));
        assert!(!record_id_owned_by(&RecordId::new("S1-").unwrap(), &s1));
        assert!(!record_id_owned_by(&RecordId::new("S1").unwrap(), &s1));
    }

    #[test]
    fn scope_specificity_and_cover() {
        let s = NodeId::new("S1").unwrap();
        let north = RegionId::new("north").unwrap();
        let south = RegionId::new("south").unwrap();
        let place = Place::new(s.clone(), north.clone());
        assert!(place.covers(&Scope::Chain));
        assert!(place.covers(&Scope::Region(north.clone())));
        assert!(!place.covers(&Scope::Region(south.clone())));
        assert!(place.covers(&Scope::Store(s.clone())));
        assert!(
            place.specificity(&Scope::Store(s.clone()))
                > place.specificity(&Scope::Region(north.clone()))
        );
        // Three tiers: the office is more specific than the branch above it.
        let office = RegionId::new("paris").unwrap();
        let nested = Place {
            store: s.clone(),
            regions: vec![office.clone(), north.clone()],
        };
        assert!(nested.covers(&Scope::Region(north.clone())));
        assert!(!nested.covers(&Scope::Region(south)));
        assert!(
            nested.specificity(&Scope::Region(office))
                > nested.specificity(&Scope::Region(north.clone()))
        );
        assert!(nested.specificity(&Scope::Region(north)) > nested.specificity(&Scope::Chain));
    }
}
