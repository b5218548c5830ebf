//! `hq-server demo`: a whole small chain on this machine, to see chainsync work in a minute.
//!
//! HQ and four stores in two regions, each with its own SQLite replica in one folder. Stores sell,
//! receive goods and sign up a member; HQ changes a price; each store syncs with HQ through the
//! real session state machines and frame codec (in process: the QUIC transport arrives with the
//! network issue). At the end it prints what a regional manager would ask for: consolidated stock
//! per store with its freshness, the price each store now charges, and a member's balance as every
//! node sees it.

use anyhow::{Context, Result, bail};
use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, RecordId, RegionId, Scope, Sku, Topic};
use chainsync::model::{
    LedgerAccount, LedgerEntry, LedgerKind, MemberEdit, MovementKind, Payment, PaymentMethod,
    PriceEntry, PriceKind, Product, ProfileField, Receipt, ReceiptLine, Region, StockMovement,
    StoreInfo, StoreMode,
};
use chainsync::protocol::local::sync_pair;
use chainsync::replica::{Durability, Identity, Replica};
use ed25519_dalek::SigningKey;
use std::path::Path;

struct DemoStore {
    id: NodeId,
    region: RegionId,
    key: SigningKey,
    replica: Replica,
}

const PRODUCTS: [(&str, &str, &str, i64); 4] = [
    ("cola-330", "Cola 330 ml", "drinks", 129),
    ("chips-150", "Potato chips 150 g", "snacks", 199),
    ("water-1l", "Still water 1 l", "drinks", 89),
    ("choc-100", "Dark chocolate 100 g", "snacks", 249),
];

/// Runs the demo in `dir` (created; must not hold an earlier demo) and prints the results.
pub fn run(dir: &Path, now_ms: u64) -> Result<()> {
    if dir.join("hq.db").exists() {
        bail!(
            "{} already holds a demo chain; pick another --data folder or delete it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let hq_key = SigningKey::generate(&mut rand::rng());
    let hq_identity = Identity {
        node: NodeId::hq(),
        key: hq_key.clone(),
    };
    let mut hq = Replica::open(
        &dir.join("hq.db"),
        hq_identity,
        hq_key.verifying_key(),
        Durability::Full,
    )?;

    let mut stores = Vec::new();
    for (id, region) in [
        ("S001", "north"),
        ("S002", "north"),
        ("S003", "south"),
        ("S004", "south"),
    ] {
        let id = NodeId::new(id)?;
        let key = SigningKey::generate(&mut rand::rng());
        let identity = Identity {
            node: id.clone(),
            key: key.clone(),
        };
        let replica = Replica::open(
            &dir.join(format!("{id}.db")),
            identity,
            hq_key.verifying_key(),
            Durability::Full,
        )?;
        stores.push(DemoStore {
            id,
            region: RegionId::new(region)?,
            key,
            replica,
        });
    }

    println!("chainsync demo in {}", dir.display());
    hq_setup(&mut hq, &stores, now_ms)?;
    sync_all(&mut hq, &mut stores, now_ms)?;
    println!("1. HQ wrote the directory, catalog and chain prices; every store pulled them.");

    store_business(&mut stores, now_ms)?;
    sync_all(&mut hq, &mut stores, now_ms + 1)?;
    println!("2. Stores received goods, sold, and signed up member M1000; HQ has it all.");

    let price = PriceEntry {
        id: RecordId::minted(&NodeId::hq(), 100),
        sku: Sku::new("cola-330")?,
        scope: Scope::Region(RegionId::new("north")?),
        kind: PriceKind::Retail,
        price_cents: 99,
        effective_from_ms: now_ms as i64,
        effective_to_ms: None,
    };
    hq.commit_local(
        Topic::Prices(price.scope.clone()),
        vec![Op::PriceUpsert(price)],
        now_ms + 2,
    )?;
    sync_all(&mut hq, &mut stores, now_ms + 2)?;
    println!("3. HQ cut the price of cola-330 in region north; the stores pulled it.\n");

    print_report(&hq, &stores, now_ms + 3)
}

fn hq_setup(hq: &mut Replica, stores: &[DemoStore], now_ms: u64) -> Result<()> {
    let mut directory: Vec<Op> = ["north", "south"]
        .iter()
        .map(|r| {
            Ok(Op::RegionUpsert(Region {
                id: RegionId::new(*r)?,
                name: format!("Region {r}"),
            }))
        })
        .collect::<Result<_>>()?;
    for s in stores {
        directory.push(Op::StoreUpsert(StoreInfo {
            id: s.id.clone(),
            name: format!("Store {}", s.id),
            region: s.region.clone(),
            mode: StoreMode::Realtime,
            public_key: s.key.verifying_key().to_bytes(),
            may_set_own_prices: false,
            revoked: false,
        }));
    }
    hq.commit_local(Topic::Directory, directory, now_ms)?;
    let mut catalog = Vec::new();
    let mut prices = Vec::new();
    for (n, (sku, name, category, price)) in PRODUCTS.iter().enumerate() {
        catalog.push(Op::ProductUpsert(Product {
            sku: Sku::new(*sku)?,
            name: (*name).into(),
            category: (*category).into(),
            barcodes: vec![],
            unit_cost_cents: price / 2,
            active: true,
        }));
        prices.push(Op::PriceUpsert(PriceEntry {
            id: RecordId::minted(&NodeId::hq(), n as u64 + 1),
            sku: Sku::new(*sku)?,
            scope: Scope::Chain,
            kind: PriceKind::Retail,
            price_cents: *price,
            effective_from_ms: 0,
            effective_to_ms: None,
        }));
    }
    hq.commit_local(Topic::Catalog, catalog, now_ms)?;
    hq.commit_local(Topic::Prices(Scope::Chain), prices, now_ms)?;
    Ok(())
}

fn store_business(stores: &mut [DemoStore], now_ms: u64) -> Result<()> {
    let member = MemberId::new("M1000")?;
    for (n, store) in stores.iter_mut().enumerate() {
        let id = store.id.clone();
        let mut movements = Vec::new();
        for (k, (sku, ..)) in PRODUCTS.iter().enumerate() {
            movements.push(Op::Stock(StockMovement {
                id: RecordId::new(format!("{id}-K{k}"))?,
                store: id.clone(),
                sku: Sku::new(*sku)?,
                kind: MovementKind::Received,
                qty_delta: 48,
                reference: "delivery note 1".into(),
                at_ms: now_ms as i64,
            }));
        }
        store
            .replica
            .commit_local(Topic::Inventory, movements, now_ms)?;
        let region = store.region.clone();
        for r in 0..=n as u64 {
            let mut lines = Vec::new();
            for (sku, qty) in [("cola-330", 2 + r as i64), ("chips-150", 1)] {
                let sku = Sku::new(sku)?;
                let entry = store.replica.effective_price(
                    &sku,
                    PriceKind::Retail,
                    &id,
                    &region,
                    now_ms as i64,
                )?;
                let price = entry
                    .map(|e| e.price_cents)
                    .context("no price for a catalog sku")?;
                lines.push(ReceiptLine {
                    sku,
                    qty,
                    unit_price_cents: price,
                    discount_cents: 0,
                });
            }
            let receipt = Receipt {
                id: RecordId::new(format!("{id}-R{r}"))?,
                store: id.clone(),
                sold_at_ms: now_ms as i64,
                member: (n == 0).then(|| member.clone()),
                payments: vec![Payment {
                    method: PaymentMethod::Card,
                    amount_cents: 0,
                }],
                lines,
                promotions_applied: vec![],
            };
            store
                .replica
                .commit_local(Topic::Sales, vec![Op::Receipt(receipt)], now_ms)?;
        }
        // The member signs up at the first store and earns points at every store.
        let mut ops = Vec::new();
        if n == 0 {
            ops.push(Op::MemberEdit(MemberEdit {
                member: member.clone(),
                hlc: Hlc::default(),
                fields: vec![
                    (ProfileField::Name, "Ada Lovelace".into()),
                    (ProfileField::Level, "silver".into()),
                ],
            }));
        }
        ops.push(Op::Ledger(LedgerEntry {
            id: RecordId::new(format!("{id}-L1"))?,
            member: member.clone(),
            account: LedgerAccount::Points,
            kind: LedgerKind::Earned,
            amount: 10 * (n as i64 + 1),
            receipt: None,
            at_ms: now_ms as i64,
        }));
        store.replica.commit_local(Topic::Members, ops, now_ms)?;
    }
    Ok(())
}

/// Syncs every store with HQ, twice, so what one store pushed reaches the others.
fn sync_all(hq: &mut Replica, stores: &mut [DemoStore], now_ms: u64) -> Result<()> {
    for _ in 0..2 {
        for store in stores.iter_mut() {
            sync_pair(hq, &mut store.replica, store.key.clone(), now_ms)
                .with_context(|| format!("syncing {}", store.id))?;
        }
    }
    Ok(())
}

fn print_report(hq: &Replica, stores: &[DemoStore], now_ms: u64) -> Result<()> {
    println!("Consolidated stock at HQ (store, sku, qty, figures as of):");
    let status = hq.stream_status()?;
    for store in stores {
        let fresh = status
            .iter()
            .filter(|s| s.stream.origin == store.id)
            .filter_map(|s| s.last_applied_ms)
            .max()
            .map_or("never".to_owned(), |t| {
                format!("{} ms ago", now_ms.saturating_sub(t))
            });
        for row in hq.stock_rows(Some(&store.id))? {
            println!(
                "  {:<5} {:<10} {:>4}   ({fresh})",
                row.store, row.sku, row.qty
            );
        }
    }
    println!("\nPrice of cola-330 as each store now sees it:");
    let cola = Sku::new("cola-330")?;
    for store in stores {
        let entry = store.replica.effective_price(
            &cola,
            PriceKind::Retail,
            &store.id,
            &store.region,
            now_ms as i64,
        )?;
        let price = entry.map_or("none".to_owned(), |e| {
            format!(
                "{}.{:02} ({})",
                e.price_cents / 100,
                e.price_cents % 100,
                e.scope
            )
        });
        println!("  {} ({}): {price}", store.id, store.region);
    }
    let member = MemberId::new("M1000")?;
    println!("\nMember M1000's points, as every node sees them:");
    println!("  hq: {}", hq.balance(&member, LedgerAccount::Points)?);
    for store in stores {
        println!(
            "  {}: {}",
            store.id,
            store.replica.balance(&member, LedgerAccount::Points)?
        );
    }
    println!(
        "\nHQ holds {} receipts. The databases stay in the folder above for a look with sqlite3.",
        hq.receipt_count()?
    );
    Ok(())
}
