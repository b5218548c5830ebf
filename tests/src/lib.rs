//! chainsync-tests: fixtures shared by the end-to-end tests, the deterministic simulation and the
//! benchmarks.
//!
//! [`Chain`] builds a small chain in a temporary folder: HQ's key and replica, regions, stores
//! with their keys in HQ's directory, and store replicas that already hold the directory (so they
//! can verify each other's member streams). Keys come from fixed seeds, so runs repeat.

pub mod bench;
pub mod e2e;
pub mod relay;
pub mod sim;

use chainsync::changeset::Op;
use chainsync::ids::{MemberId, NodeId, RecordId, RegionId, Sku, Topic};
use chainsync::model::{
    AMOUNT_CENTS_MAX, LedgerAccount, LedgerEntry, LedgerKind, Payment, PaymentMethod, Receipt,
    ReceiptLine, Region, SpendAuth, StoreInfo, StoreMode,
};
use chainsync::replica::{Durability, Identity, Replica};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

/// A deterministic signing key for `name`.
pub fn key_for(name: &str) -> SigningKey {
    let hash = blake3::hash(format!("chainsync-test-key/{name}").as_bytes());
    SigningKey::from_bytes(hash.as_bytes())
}

/// Parses an id in test code (panics on a bad literal, which is a test bug).
pub fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("test node id")
}
/// See [`node`].
pub fn region(s: &str) -> RegionId {
    RegionId::new(s).expect("test region id")
}
/// See [`node`].
pub fn sku(s: &str) -> Sku {
    Sku::new(s).expect("test sku")
}
/// See [`node`].
pub fn member(s: &str) -> MemberId {
    MemberId::new(s).expect("test member id")
}
/// See [`node`].
pub fn record(s: &str) -> RecordId {
    RecordId::new(s).expect("test record id")
}

/// A store of a test chain.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub id: NodeId,
    pub region: RegionId,
}

/// A test chain: HQ and stores, each with a replica file under `dir`.
pub struct Chain {
    pub dir: PathBuf,
    pub hq_key: SigningKey,
    pub stores: Vec<StoreSpec>,
    pub durability: Durability,
}

impl Chain {
    /// A chain of `store_count` stores spread over `region_count` regions, in `dir`.
    pub fn new(
        dir: &Path,
        store_count: usize,
        region_count: usize,
        durability: Durability,
    ) -> Self {
        let stores = (0..store_count)
            .map(|i| StoreSpec {
                id: node(&format!("S{:03}", i + 1)),
                region: region(&format!("r{}", i % region_count.max(1))),
            })
            .collect();
        Self {
            dir: dir.to_owned(),
            hq_key: key_for("hq"),
            stores,
            durability,
        }
    }

    /// The key of a store.
    pub fn store_key(&self, store: &NodeId) -> SigningKey {
        key_for(store.as_str())
    }

    /// Path of a node's database.
    pub fn db_path(&self, node: &NodeId) -> PathBuf {
        self.dir.join(format!("{node}.db"))
    }

    /// Opens HQ's replica.
    pub fn open_hq(&self) -> Replica {
        let identity = Identity {
            node: NodeId::hq(),
            key: self.hq_key.clone(),
        };
        Replica::open(
            &self.db_path(&NodeId::hq()),
            identity,
            self.hq_key.verifying_key(),
            self.durability,
        )
        .expect("open HQ replica")
    }

    /// Opens a store's replica.
    pub fn open_store(&self, store: &NodeId) -> Replica {
        let identity = Identity {
            node: store.clone(),
            key: self.store_key(store),
        };
        Replica::open(
            &self.db_path(store),
            identity,
            self.hq_key.verifying_key(),
            self.durability,
        )
        .expect("open store replica")
    }

    /// The directory ops HQ writes for this chain.
    pub fn directory_ops(&self) -> Vec<Op> {
        let mut regions: Vec<RegionId> = self.stores.iter().map(|s| s.region.clone()).collect();
        regions.sort();
        regions.dedup();
        let mut ops: Vec<Op> = regions
            .into_iter()
            .map(|r| {
                Op::RegionUpsert(Region {
                    parent: None,
                    name: format!("Region {r}"),
                    id: r,
                })
            })
            .collect();
        ops.extend(self.stores.iter().map(|s| {
            Op::StoreUpsert(StoreInfo {
                id: s.id.clone(),
                name: format!("Store {}", s.id),
                region: s.region.clone(),
                mode: StoreMode::Realtime,
                public_key: self.store_key(&s.id).verifying_key().to_bytes(),
                may_set_own_prices: false,
                revoked: false,
                retired_keys: vec![],
                time_zone: "UTC".into(),
            })
        }));
        ops
    }

    /// Creates HQ with the directory written, and every store with HQ's directory applied.
    pub fn bootstrap(&self, now_ms: u64) -> (Replica, Vec<Replica>) {
        let mut hq = self.open_hq();
        let directory = hq
            .commit_local(Topic::Directory, self.directory_ops(), now_ms)
            .expect("write directory");
        let stores = self
            .stores
            .iter()
            .map(|s| {
                let mut replica = self.open_store(&s.id);
                let report = replica
                    .apply_batch(std::slice::from_ref(&directory.signed), None, now_ms)
                    .expect("apply directory");
                assert!(
                    report.rejected.is_empty(),
                    "directory refused: {:?}",
                    report.rejected
                );
                replica
            })
            .collect();
        (hq, stores)
    }
}

/// A receipt of `lines` (sku, qty, unit price) at `store`, number `n`, paid in cash.
pub fn receipt(
    store: &NodeId,
    n: u64,
    at_ms: i64,
    member: Option<MemberId>,
    lines: &[(&str, i64, i64)],
) -> Receipt {
    let lines: Vec<ReceiptLine> = lines
        .iter()
        .map(|(s, qty, price)| ReceiptLine::plain(sku(s), *qty, *price))
        .collect();
    let total = lines.iter().map(ReceiptLine::amount_cents).sum();
    Receipt {
        id: RecordId::minted(store, n),
        store: store.clone(),
        sold_at_ms: at_ms,
        member,
        lines,
        payments: vec![Payment {
            method: PaymentMethod::Cash,
            amount_cents: total,
        }],
        pricing: chainsync::model::PricingBasis::unknown(at_ms),
    }
}

/// A points ledger entry minted by `origin`.
pub fn points(origin: &NodeId, n: u64, member: &MemberId, amount: i64) -> LedgerEntry {
    LedgerEntry {
        id: RecordId::new(format!("{origin}-L{n}")).expect("ledger id"),
        member: member.clone(),
        account: LedgerAccount::Points,
        kind: if amount >= 0 {
            LedgerKind::Earned
        } else {
            LedgerKind::Redeemed
        },
        amount,
        // Points are earned by a sale.
        receipt: (amount >= 0)
            .then(|| RecordId::new(format!("{origin}-R{n}")).expect("receipt id")),
        at_ms: 0,
        auth: (amount < 0).then_some(SpendAuth::Offline {
            allowance: AMOUNT_CENTS_MAX,
            spent_before: 0,
        }),
        tender: None,
        note: String::new(),
    }
}
