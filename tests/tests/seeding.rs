//! Seeding a store that holds nothing from HQ's signed snapshot parts, through the real session
//! state machines: a new store gets long streams as snapshots (in several parts), then follows
//! the log; a seeding cut short by a crash resumes at the next part instead of starting over.

use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{StreamId, Topic};
use chainsync::model::{MemberEdit, PriceEntry, PriceKind, Product, ProfileField};
use chainsync::protocol::local::sync_pair;
use chainsync::protocol::{HubSession, LeafSession};
use chainsync::replica::{Durability, Replica};
use chainsync_tests::{Chain, key_for, member, node, points, record, sku};

const T0: u64 = 1_750_000_000_000;

/// HQ with a long catalog, price and member history (the members alone need several snapshot
/// parts), and S001's points for those members already at HQ.
fn busy_chain(dir: &std::path::Path) -> (Chain, Replica) {
    let chain = Chain::new(dir, 2, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    for round in 0..80u64 {
        let products = (0..50)
            .map(|i| {
                Op::ProductUpsert(Product {
                    sku: sku(&format!("SKU{i:04}")),
                    name: format!("Product {i} (edition {round})"),
                    category: "grocery".into(),
                    barcodes: vec![format!("400{i:010}")],
                    unit_cost_cents: 50 + round as i64,
                    active: true,
                })
            })
            .collect();
        hq.commit_local(Topic::Catalog, products, T0 + round)
            .unwrap();
        let prices = (0..50)
            .map(|i| {
                Op::PriceUpsert(PriceEntry {
                    id: record(&format!("hq-P{i:04}")),
                    sku: sku(&format!("SKU{i:04}")),
                    scope: chainsync::ids::Scope::Chain,
                    kind: PriceKind::Retail,
                    price_cents: 100 + round as i64,
                    effective_from_ms: 0,
                    effective_to_ms: None,
                })
            })
            .collect();
        hq.commit_local(
            Topic::Prices(chainsync::ids::Scope::Chain),
            prices,
            T0 + round,
        )
        .unwrap();
    }
    for batch in 0..100u64 {
        let edits = (0..200)
            .map(|i| {
                Op::MemberEdit(MemberEdit {
                    member: member(&format!("M{}", batch * 200 + i)),
                    hlc: Hlc::default(),
                    fields: vec![
                        (
                            ProfileField::Name,
                            format!("Member number {} of the chain", batch * 200 + i),
                        ),
                        (ProfileField::Phone, format!("555-{:07}", batch * 200 + i)),
                        (
                            ProfileField::Email,
                            format!("member.{}@example.org", batch * 200 + i),
                        ),
                    ],
                })
            })
            .collect();
        hq.commit_local(Topic::Members, edits, T0 + 100 + batch)
            .unwrap();
    }
    let s1 = node("S001");
    for n in 1..=70u64 {
        stores[0]
            .commit_local(
                Topic::Members,
                vec![Op::Ledger(points(&s1, n, &member(&format!("M{n}")), 10))],
                T0 + 300 + n,
            )
            .unwrap();
    }
    sync_pair(&mut hq, &mut stores[0], key_for("S001"), T0 + 400).unwrap();
    (chain, hq)
}

/// HQ's and the store's heads of every stream the store follows, and the state they hold.
fn assert_same_as_hq(hq: &Replica, store: &Replica) {
    let follows = |s: &StreamId| s.origin != *store.node();
    let hq_heads: Vec<_> = hq
        .heads()
        .unwrap()
        .into_iter()
        .filter(|(s, _)| follows(s))
        .map(|(s, h)| (s, h.seq, h.hash))
        .collect();
    let store_heads: Vec<_> = store
        .heads()
        .unwrap()
        .into_iter()
        .filter(|(s, _)| follows(s))
        .map(|(s, h)| (s, h.seq, h.hash))
        .collect();
    assert_eq!(store_heads, hq_heads);
    assert_eq!(store.price_entries().unwrap(), hq.price_entries().unwrap());
    assert_eq!(store.member_fields().unwrap(), hq.member_fields().unwrap());
    assert_eq!(store.balances().unwrap(), hq.balances().unwrap());
    for i in [0, 17, 49] {
        let s = sku(&format!("SKU{i:04}"));
        assert_eq!(store.product(&s).unwrap(), hq.product(&s).unwrap());
    }
    assert!(store.seeding().unwrap().is_empty());
    store.audit().unwrap();
}

#[test]
fn a_new_store_is_seeded_from_snapshot_parts_then_follows_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, mut hq) = busy_chain(dir.path());
    let s2 = node("S002");
    let mut store = chain.open_store(&s2);
    let stats = sync_pair(&mut hq, &mut store, key_for("S002"), T0 + 1_000).unwrap();
    // Catalog, prices, HQ's members (several parts) and S001's members come as snapshots; the
    // directory (one change set) comes as the log.
    assert!(stats.seeded >= 5, "{stats:?}");
    assert!(stats.pulled <= 1, "{stats:?}");
    assert_same_as_hq(&hq, &store);
    assert_eq!(
        store
            .head(&StreamId::new(chainsync::ids::NodeId::hq(), Topic::Members))
            .unwrap()
            .seq,
        100
    );

    // From there on the store follows the log.
    for n in 0..3 {
        hq.commit_local(
            Topic::Members,
            vec![Op::MemberEdit(MemberEdit {
                member: member("M5"),
                hlc: Hlc::default(),
                fields: vec![(ProfileField::Level, format!("gold {n}"))],
            })],
            T0 + 2_000 + n,
        )
        .unwrap();
    }
    let stats = sync_pair(&mut hq, &mut store, key_for("S002"), T0 + 3_000).unwrap();
    assert_eq!((stats.seeded, stats.pulled), (0, 3), "{stats:?}");
    assert_same_as_hq(&hq, &store);
}

#[test]
fn a_seeding_cut_short_by_a_crash_resumes_at_the_next_part() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, mut hq) = busy_chain(dir.path());
    let s2 = node("S002");
    let mut store = chain.open_store(&s2);

    // One session, stopped (the store "crashes") as soon as some parts are in.
    let mut hub = HubSession::new([9; 32], b"b".to_vec());
    let mut leaf = LeafSession::new(s2.clone(), key_for("S002"), b"b".to_vec(), 0);
    let mut to_hub = leaf.start(T0 + 1_000, &store).unwrap();
    for _ in 0..100 {
        let mut to_leaf = Vec::new();
        for frame in to_hub {
            to_leaf.extend(hub.handle(T0 + 1_000, frame, &mut hq).unwrap().frames);
        }
        to_hub = Vec::new();
        for frame in to_leaf {
            to_hub.extend(leaf.handle(T0 + 1_000, frame, &mut store).unwrap());
        }
        if store.seeding().unwrap().iter().any(|p| p.parts_done >= 1) {
            break;
        }
    }
    drop(store);
    let mut store = chain.open_store(&s2);
    let progress = store.seeding().unwrap();
    let members = StreamId::new(chainsync::ids::NodeId::hq(), Topic::Members);
    let half = progress
        .iter()
        .find(|p| p.stream == members)
        .expect("HQ's members part-way");
    assert!(half.parts >= 3 && half.parts_done < half.parts, "{half:?}");
    assert_eq!(
        store.head(&members).unwrap().seq,
        0,
        "the head moves only with the last part"
    );
    let (done, parts) = (half.parts_done, half.parts);

    // The next session picks up where the first left off (HQ still serves the same snapshot).
    let stats = sync_pair(&mut hq, &mut store, key_for("S002"), T0 + 2_000).unwrap();
    // Resumed, not restarted: fewer parts than the members snapshot has, at least those missing
    // (plus S001's members, one part, if the first session did not get to it).
    assert!(
        stats.seeded >= u64::from(parts - done) && stats.seeded < u64::from(parts),
        "{stats:?}, members {done} of {parts} before"
    );
    assert_same_as_hq(&hq, &store);
}
