//! Durability and merge behaviour of the replica through its public API: sales, returns and voids
//! reach HQ with the same stock, member data merges whatever the order, prices resolve by scope
//! and time, and the outbox holds a store's own change sets until HQ acknowledges them, across
//! restarts.

use chainsync::changeset::{Op, SignedChangeSet};
use chainsync::hlc::Hlc;
use chainsync::ids::{MemberId, NodeId, Scope, StreamId, Topic};
use chainsync::model::{
    LedgerAccount, MemberEdit, MovementKind, Payment, PaymentMethod, PriceEntry, PriceKind,
    ProfileField, ReceiptLine, ReturnRecord, StockMovement, Void,
};
use chainsync::protocol::{HubStore, LeafStore};
use chainsync::replica::{Durability, Replica};
use chainsync_tests::{Chain, member, node, points, receipt, record, region, sku};
use std::collections::BTreeMap;
use tempfile::TempDir;

const T0: u64 = 1_000;

fn chain(stores: usize) -> (TempDir, Chain) {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), stores, 2, Durability::Relaxed);
    (dir, chain)
}

fn received(store: &NodeId, n: u64, s: &str, qty: i64) -> Op {
    Op::Stock(StockMovement {
        id: record(&format!("{store}-M{n}")),
        store: store.clone(),
        sku: sku(s),
        kind: MovementKind::Received,
        qty_delta: qty,
        reference: "delivery".into(),
        at_ms: 0,
    })
}

fn sale(store: &NodeId, n: u64, lines: &[(&str, i64, i64)]) -> Op {
    Op::Receipt(receipt(store, n, T0 as i64, None, lines))
}

fn void(store: &NodeId, n: u64, original: &str) -> Op {
    Op::Void(Void {
        id: record(&format!("{store}-V{n}")),
        store: store.clone(),
        original: record(original),
        at_ms: 0,
        reason: "till error".into(),
    })
}

fn edit(m: &MemberId, fields: &[(ProfileField, &str)]) -> Op {
    Op::MemberEdit(MemberEdit {
        member: m.clone(),
        hlc: Hlc::default(),
        fields: fields.iter().map(|(f, v)| (*f, (*v).to_owned())).collect(),
    })
}

fn price(id: &str, scope: Scope, kind: PriceKind, cents: i64, from: i64, to: Option<i64>) -> Op {
    Op::PriceUpsert(PriceEntry {
        id: record(id),
        sku: sku("cola"),
        scope,
        kind,
        price_cents: cents,
        effective_from_ms: from,
        effective_to_ms: to,
    })
}

/// Delivers `batch` to HQ as the authenticated push of `store` and checks nothing was refused.
fn deliver(hq: &mut Replica, store: &NodeId, batch: &[SignedChangeSet]) -> usize {
    let report = hq.apply_batch(batch, Some(store), T0 + 100).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    report.applied.len()
}

/// Pushes a store's outbox to HQ and records HQ's acknowledgement, as a session would.
fn push(hq: &mut Replica, store: &mut Replica) {
    let id = store.node().clone();
    deliver(hq, &id, &store.outbox(1_000, usize::MAX).unwrap());
    store.set_hub_acked(&hq.own_heads(&id).unwrap()).unwrap();
    assert!(store.outbox(1_000, usize::MAX).unwrap().is_empty());
}

/// Pulls into a store everything it follows at HQ, as a session would.
fn pull(hq: &Replica, store: &mut Replica) {
    let peer = HubStore::peer(hq, store.node()).unwrap().unwrap();
    loop {
        let cursors: BTreeMap<StreamId, u64> =
            LeafStore::cursors(store).unwrap().into_iter().collect();
        let (batch, more) = hq
            .changes_for(&peer, &cursors, 512, 2 * 1024 * 1024)
            .unwrap();
        let report = store.apply_batch(&batch, None, T0 + 200).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        if !more {
            break;
        }
    }
}

fn whole_stream(r: &Replica, stream: &StreamId) -> Vec<SignedChangeSet> {
    r.read_stream(stream, 0, 10_000, usize::MAX).unwrap()
}

fn audit_all<'a>(replicas: impl IntoIterator<Item = &'a Replica>) {
    for r in replicas {
        r.audit()
            .unwrap_or_else(|e| panic!("audit of {}: {e}", r.node()));
    }
}

// A sale committed at a store reaches HQ, which then holds the same stock and receipt ids.
#[test]
fn a_local_sale_reaches_hq_with_the_same_stock_and_receipts() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let store = &mut stores[0];
    store
        .commit_local(
            Topic::Inventory,
            vec![received(&s1, 1, "cola", 24), received(&s1, 2, "chips", 10)],
            2_000,
        )
        .unwrap();
    store
        .commit_local(
            Topic::Sales,
            vec![sale(&s1, 1, &[("cola", 2, 150), ("chips", 1, 200)])],
            2_001,
        )
        .unwrap();
    store
        .commit_local(Topic::Sales, vec![sale(&s1, 2, &[("cola", 5, 150)])], 2_002)
        .unwrap();
    assert_eq!(store.stock_of(&s1, &sku("cola")).unwrap(), 17);
    assert_eq!(store.stock_of(&s1, &sku("chips")).unwrap(), 9);

    push(&mut hq, store);
    assert_eq!(
        hq.stock_rows(Some(&s1)).unwrap(),
        store.stock_rows(Some(&s1)).unwrap()
    );
    assert_eq!(hq.receipt_ids(&s1).unwrap(), vec!["S001-1", "S001-2"]);
    assert_eq!(
        hq.receipt_ids(&s1).unwrap(),
        store.receipt_ids(&s1).unwrap()
    );
    assert_eq!(hq.receipt_count().unwrap(), 2);
    audit_all([&hq, &stores[0]]);
}

// A return at S002 of a receipt S001 wrote applies at HQ before the receipt arrives, and once both
// are in, stock at each store lines up with the stores' own figures, in either order.
#[test]
fn a_return_of_another_stores_receipt_applies_before_the_original() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (_dir2, chain2) = self::chain(2);
    let (mut other_hq, _) = chain2.bootstrap(T0);
    let (s1, s2) = (node("S001"), node("S002"));

    stores[0]
        .commit_local(Topic::Inventory, vec![received(&s1, 1, "cola", 10)], 2_000)
        .unwrap();
    stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 1, &[("cola", 3, 150)])], 2_001)
        .unwrap();
    stores[1]
        .commit_local(Topic::Inventory, vec![received(&s2, 1, "cola", 5)], 2_000)
        .unwrap();
    let ret = ReturnRecord {
        id: record("S002-R1"),
        store: s2.clone(),
        original: record("S001-1"),
        at_ms: 3_000,
        lines: vec![ReceiptLine::plain(sku("cola"), 1, 150)],
        refunds: vec![Payment {
            method: PaymentMethod::Cash,
            amount_cents: 150,
        }],
        unverified: true,
    };
    stores[1]
        .commit_local(Topic::Sales, vec![Op::Return(ret)], 3_000)
        .unwrap();
    let out1 = stores[0].outbox(100, usize::MAX).unwrap();
    let out2 = stores[1].outbox(100, usize::MAX).unwrap();

    // HQ: the return first, the original after; the other HQ the other way round.
    assert_eq!(deliver(&mut hq, &s2, &out2), 2);
    assert_eq!(hq.stock_of(&s2, &sku("cola")).unwrap(), 6);
    assert_eq!(hq.receipt_count().unwrap(), 0);
    assert_eq!(deliver(&mut hq, &s1, &out1), 2);
    assert_eq!(deliver(&mut other_hq, &s1, &out1), 2);
    assert_eq!(deliver(&mut other_hq, &s2, &out2), 2);

    assert_eq!(hq.stock_of(&s1, &sku("cola")).unwrap(), 7);
    assert_eq!(hq.stock_of(&s2, &sku("cola")).unwrap(), 6);
    assert_eq!(
        hq.stock_rows(Some(&s1)).unwrap(),
        stores[0].stock_rows(Some(&s1)).unwrap()
    );
    assert_eq!(
        hq.stock_rows(Some(&s2)).unwrap(),
        stores[1].stock_rows(Some(&s2)).unwrap()
    );
    assert_eq!(
        hq.stock_rows(None).unwrap(),
        other_hq.stock_rows(None).unwrap()
    );
    assert_eq!(hq.receipt_ids(&s1).unwrap(), vec!["S001-1"]);
    audit_all([&hq, &other_hq, &stores[0], &stores[1]]);
}

// A void puts the voided receipt's stock back exactly once: replaying its change set (at HQ or at
// the store) or voiding the same receipt again does not put it back twice.
#[test]
fn a_void_reverses_stock_exactly_once_even_when_replayed() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let cola = sku("cola");
    let store = &mut stores[0];
    store
        .commit_local(Topic::Inventory, vec![received(&s1, 1, "cola", 10)], 2_000)
        .unwrap();
    let sold = store
        .commit_local(Topic::Sales, vec![sale(&s1, 1, &[("cola", 3, 150)])], 2_001)
        .unwrap();
    store
        .commit_local(Topic::Sales, vec![sale(&s1, 2, &[("cola", 1, 150)])], 2_002)
        .unwrap();
    assert_eq!(store.stock_of(&s1, &cola).unwrap(), 6);
    let voided = store
        .commit_local(Topic::Sales, vec![void(&s1, 1, "S001-1")], 2_003)
        .unwrap();
    assert_eq!(store.stock_of(&s1, &cola).unwrap(), 9);
    push(&mut hq, store);
    assert_eq!(hq.stock_of(&s1, &cola).unwrap(), 9);

    for replica in [&mut hq, &mut *store] {
        let peer = if replica.node().is_hq() {
            Some(&s1)
        } else {
            None
        };
        let report = replica
            .apply_batch(&[voided.signed.clone(), sold.signed.clone()], peer, 3_000)
            .unwrap();
        assert_eq!(
            (
                report.applied.len(),
                report.duplicates,
                report.rejected.len()
            ),
            (0, 2, 0)
        );
        assert_eq!(replica.stock_of(&s1, &cola).unwrap(), 9);
    }

    // A second void of the same receipt is recorded but moves no stock.
    store
        .commit_local(Topic::Sales, vec![void(&s1, 2, "S001-1")], 3_001)
        .unwrap();
    assert_eq!(store.stock_of(&s1, &cola).unwrap(), 9);
    push(&mut hq, store);
    assert_eq!(hq.stock_of(&s1, &cola).unwrap(), 9);
    assert_eq!(
        hq.stock_rows(Some(&s1)).unwrap(),
        stores[0].stock_rows(Some(&s1)).unwrap()
    );
    audit_all([&hq, &stores[0]]);
}

// A ledger entry for a member whose sign-up (from another store's stream) has not arrived yet is
// kept, and once the sign-up is in, the profile and the balance are right everywhere.
#[test]
fn a_ledger_entry_before_the_members_sign_up_is_kept() {
    let (_dir, chain) = chain(3);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (s1, s2) = (node("S001"), node("S002"));
    let m = member("M7");
    stores[1]
        .commit_local(
            Topic::Members,
            vec![Op::Ledger(points(&s2, 1, &m, 120))],
            2_000,
        )
        .unwrap();
    stores[0]
        .commit_local(
            Topic::Members,
            vec![
                edit(
                    &m,
                    &[(ProfileField::Name, "Mia"), (ProfileField::Phone, "555")],
                ),
                Op::Ledger(points(&s1, 1, &m, 30)),
            ],
            3_000,
        )
        .unwrap();

    // HQ gets S002's entry first: kept, with no profile yet.
    let (left, right) = stores.split_at_mut(1);
    push(&mut hq, &mut right[0]);
    assert_eq!(hq.balance(&m, LedgerAccount::Points).unwrap(), 120);
    assert!(hq.member_profile(&m).unwrap().is_empty());
    push(&mut hq, &mut left[0]);
    assert_eq!(hq.balance(&m, LedgerAccount::Points).unwrap(), 150);
    assert_eq!(
        hq.member_profile(&m).unwrap()[&ProfileField::Name].value,
        "Mia"
    );

    // S003 receives the relayed streams in the same awkward order.
    let s3 = &mut stores[2];
    let from_s2 = whole_stream(&hq, &StreamId::new(s2.clone(), Topic::Members));
    assert_eq!(
        s3.apply_batch(&from_s2, None, 4_000).unwrap().applied.len(),
        1
    );
    assert_eq!(s3.balances().unwrap(), vec![("M7".to_owned(), 120, 0)]);
    assert!(s3.member_fields().unwrap().is_empty());
    let from_s1 = whole_stream(&hq, &StreamId::new(s1.clone(), Topic::Members));
    assert_eq!(
        s3.apply_batch(&from_s1, None, 4_000).unwrap().applied.len(),
        1
    );

    for store in &mut stores {
        pull(&hq, store);
        assert_eq!(store.balances().unwrap(), vec![("M7".to_owned(), 150, 0)]);
        assert_eq!(store.member_fields().unwrap(), hq.member_fields().unwrap());
    }
    assert_eq!(hq.balances().unwrap(), vec![("M7".to_owned(), 150, 0)]);
    audit_all(stores.iter().chain([&hq]));
}

// Two stores editing the same member merge per field, last writer wins on (HLC, node id), and
// every replica converges to the same fields whatever order it applied the edits in.
#[test]
fn member_fields_converge_per_field_in_any_order() {
    let (_dir, chain) = chain(3);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (_dir2, chain2) = self::chain(3);
    let (mut other_hq, _) = chain2.bootstrap(T0);
    let m = member("M1");
    // Same HLC on both Name writes: the greater node id (S002) wins the tie.
    stores[0]
        .commit_local(
            Topic::Members,
            vec![edit(
                &m,
                &[(ProfileField::Name, "Ann"), (ProfileField::Phone, "111")],
            )],
            5_000,
        )
        .unwrap();
    stores[1]
        .commit_local(
            Topic::Members,
            vec![edit(
                &m,
                &[
                    (ProfileField::Name, "Anna"),
                    (ProfileField::Email, "anna@example.com"),
                ],
            )],
            5_000,
        )
        .unwrap();
    // A later HLC wins over a greater node id.
    stores[0]
        .commit_local(
            Topic::Members,
            vec![edit(&m, &[(ProfileField::Level, "gold")])],
            7_000,
        )
        .unwrap();
    stores[1]
        .commit_local(
            Topic::Members,
            vec![edit(&m, &[(ProfileField::Level, "silver")])],
            6_000,
        )
        .unwrap();
    // An earlier HLC loses even when it was applied last.
    stores[2]
        .commit_local(
            Topic::Members,
            vec![edit(&m, &[(ProfileField::Phone, "333")])],
            4_000,
        )
        .unwrap();

    let outboxes: Vec<(NodeId, Vec<SignedChangeSet>)> = stores
        .iter()
        .map(|s| (s.node().clone(), s.outbox(100, usize::MAX).unwrap()))
        .collect();
    for (id, batch) in &outboxes {
        deliver(&mut hq, id, batch);
    }
    for (id, batch) in outboxes.iter().rev() {
        deliver(&mut other_hq, id, batch);
    }
    for store in &mut stores {
        pull(&hq, store);
    }

    let expected: Vec<(String, u8, String)> = [
        (ProfileField::Name, "Anna"),
        (ProfileField::Phone, "111"),
        (ProfileField::Email, "anna@example.com"),
        (ProfileField::Level, "gold"),
    ]
    .into_iter()
    .map(|(f, v)| ("M1".to_owned(), f.code(), v.to_owned()))
    .collect();
    assert_eq!(hq.member_fields().unwrap(), expected);
    assert_eq!(other_hq.member_fields().unwrap(), expected);
    for store in &stores {
        assert_eq!(
            store.member_fields().unwrap(),
            expected,
            "at {}",
            store.node()
        );
        assert_eq!(
            store.member_profile(&m).unwrap(),
            hq.member_profile(&m).unwrap()
        );
    }
    assert_eq!(
        hq.member_profile(&m).unwrap()[&ProfileField::Name].node,
        node("S002")
    );
    audit_all(stores.iter().chain([&hq, &other_hq]));
}

// The effective price at HQ and at a store honours the most specific scope in effect (store over
// region over chain), effective_from/effective_to (exclusive), the price kind, and removals.
#[test]
fn effective_price_honours_scope_and_time_at_hq_and_store() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (s1, s2) = (node("S001"), node("S002"));
    let (r0, r1) = (region("r0"), region("r1"));
    assert_eq!(chain.stores[0].region, r0);
    assert_eq!(chain.stores[1].region, r1);
    let store_scope = Topic::Prices(Scope::Store(s1.clone()));
    let chain_prices = vec![
        price("hq-c1", Scope::Chain, PriceKind::Retail, 100, 0, None),
        price("hq-c2", Scope::Chain, PriceKind::Retail, 120, 5_000, None),
        price("hq-c3", Scope::Chain, PriceKind::Member, 95, 0, None),
    ];
    hq.commit_local(Topic::Prices(Scope::Chain), chain_prices, T0)
        .unwrap();
    let regional = vec![price(
        "hq-r1",
        Scope::Region(r0.clone()),
        PriceKind::Retail,
        90,
        0,
        None,
    )];
    hq.commit_local(Topic::Prices(Scope::Region(r0.clone())), regional, T0)
        .unwrap();
    let local = vec![price(
        "hq-s1",
        Scope::Store(s1.clone()),
        PriceKind::Retail,
        80,
        1_000,
        Some(2_000),
    )];
    hq.commit_local(store_scope.clone(), local, T0).unwrap();
    for store in &mut stores {
        pull(&hq, store);
    }

    let cola = sku("cola");
    let at = |r: &Replica,
              store: &NodeId,
              region: &chainsync::ids::RegionId,
              kind: PriceKind,
              t: i64| {
        let place = chainsync::ids::Place::new(store.clone(), region.clone());
        r.effective_price(&cola, kind, &place, t)
            .unwrap()
            .map(|e| (e.id.to_string(), e.price_cents))
    };
    let retail = |id: &str, cents: i64| Some((id.to_owned(), cents));
    for r in [&hq, &stores[0]] {
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 500),
            retail("hq-r1", 90),
            "region beats chain"
        );
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 1_000),
            retail("hq-s1", 80),
            "store from its start"
        );
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 1_999),
            retail("hq-s1", 80)
        );
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 2_000),
            retail("hq-r1", 90),
            "effective_to is exclusive"
        );
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 6_000),
            retail("hq-r1", 90),
            "newer chain price loses to region"
        );
        assert_eq!(at(r, &s1, &r0, PriceKind::Member, 500), retail("hq-c3", 95));
        assert_eq!(at(r, &s1, &r0, PriceKind::Wholesale, 500), None);
    }
    for r in [&hq, &stores[1]] {
        assert_eq!(
            at(r, &s2, &r1, PriceKind::Retail, -1),
            None,
            "nothing before the first entry"
        );
        assert_eq!(
            at(r, &s2, &r1, PriceKind::Retail, 1_500),
            retail("hq-c1", 100)
        );
        assert_eq!(
            at(r, &s2, &r1, PriceKind::Retail, 4_999),
            retail("hq-c1", 100)
        );
        assert_eq!(
            at(r, &s2, &r1, PriceKind::Retail, 5_000),
            retail("hq-c2", 120),
            "later effective_from wins"
        );
    }
    // S002 follows neither r0's nor S001's prices.
    let held: Vec<String> = stores[1]
        .price_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(held, vec!["hq-c1", "hq-c2", "hq-c3"]);

    // Removing the store entry brings the region price back at S001.
    hq.commit_local(
        store_scope,
        vec![Op::PriceRemove {
            id: record("hq-s1"),
        }],
        T0 + 1,
    )
    .unwrap();
    pull(&hq, &mut stores[0]);
    for r in [&hq, &stores[0]] {
        assert_eq!(
            at(r, &s1, &r0, PriceKind::Retail, 1_500),
            retail("hq-r1", 90)
        );
    }
    audit_all(stores.iter().chain([&hq]));
}

// The outbox is every own change set HQ has not acknowledged: it survives closing and reopening
// the replica, empties only on set_hub_acked, refills when the hub reports less (restored from a
// backup), and never claims more than the head.
#[test]
fn the_outbox_holds_own_change_sets_until_acked_across_reopening() {
    let (_dir, chain) = chain(2);
    let (mut hq, stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let sales = StreamId::new(s1.clone(), Topic::Sales);
    let mut store = stores.into_iter().next().unwrap();
    store
        .commit_local(Topic::Inventory, vec![received(&s1, 1, "cola", 10)], 2_000)
        .unwrap();
    store
        .commit_local(Topic::Sales, vec![sale(&s1, 1, &[("cola", 1, 150)])], 2_001)
        .unwrap();
    store
        .commit_local(Topic::Sales, vec![sale(&s1, 2, &[("cola", 2, 150)])], 2_002)
        .unwrap();
    store
        .commit_local(
            Topic::Members,
            vec![edit(&member("M1"), &[(ProfileField::Name, "Lee")])],
            2_003,
        )
        .unwrap();
    let pending = store.outbox(100, usize::MAX).unwrap();
    assert_eq!(pending.len(), 4);
    assert_eq!(store.outbox(2, usize::MAX).unwrap(), pending[..2]);

    // HQ applies the push but its acknowledgement is lost; the store restarts.
    assert_eq!(deliver(&mut hq, &s1, &pending), 4);
    let clock = store.clock();
    drop(store);
    let mut store = chain.open_store(&s1);
    assert_eq!(store.outbox(100, usize::MAX).unwrap(), pending);
    assert!(store.clock() >= clock, "the clock resumes where it was");

    // The resend is all duplicates; HQ's heads then empty the outbox, for good.
    let report = hq.apply_batch(&pending, Some(&s1), 3_000).unwrap();
    assert_eq!((report.applied.len(), report.duplicates), (0, 4));
    store.set_hub_acked(&hq.own_heads(&s1).unwrap()).unwrap();
    assert!(store.outbox(100, usize::MAX).unwrap().is_empty());
    drop(store);
    let mut store = chain.open_store(&s1);
    assert!(store.outbox(100, usize::MAX).unwrap().is_empty());
    let acked = store
        .stream_status()
        .unwrap()
        .into_iter()
        .find(|s| s.stream == sales)
        .unwrap();
    assert_eq!((acked.head_seq, acked.hub_acked_seq), (2, 2));

    // A new sale waits alone; a hub restored from backup reports less and the outbox refills.
    let third = store
        .commit_local(Topic::Sales, vec![sale(&s1, 3, &[("cola", 1, 150)])], 3_001)
        .unwrap();
    assert_eq!(
        store.outbox(100, usize::MAX).unwrap(),
        vec![third.signed.clone()]
    );
    store.set_hub_acked(&[(sales.clone(), 1)]).unwrap();
    let resend = store.outbox(100, usize::MAX).unwrap();
    assert_eq!(resend.len(), 2);
    assert_eq!(resend[1], third.signed);
    let report = hq.apply_batch(&resend, Some(&s1), 3_002).unwrap();
    assert_eq!((report.applied.len(), report.duplicates), (1, 1));

    // An acknowledgement past the head is clamped to the head.
    store.set_hub_acked(&[(sales.clone(), 99)]).unwrap();
    let status = store
        .stream_status()
        .unwrap()
        .into_iter()
        .find(|s| s.stream == sales)
        .unwrap();
    assert_eq!((status.head_seq, status.hub_acked_seq), (3, 3));
    assert!(store.outbox(100, usize::MAX).unwrap().is_empty());
    assert_eq!(
        hq.stock_rows(Some(&s1)).unwrap(),
        store.stock_rows(Some(&s1)).unwrap()
    );
    audit_all([&hq, &store]);
}

// After a restart a replica's clock still orders its writes after everything it had observed, so
// an edit made after seeing another store's (clock-skewed) edit wins over it.
#[test]
fn a_reopened_replica_still_orders_its_writes_after_what_it_observed() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let m = member("M1");
    // S002's wall clock runs far ahead.
    stores[1]
        .commit_local(
            Topic::Members,
            vec![edit(&m, &[(ProfileField::Phone, "old")])],
            900_000,
        )
        .unwrap();
    push(&mut hq, &mut stores[1]);
    pull(&hq, &mut stores[0]);
    let seen = stores[0].clock();
    assert!(
        seen >= Hlc {
            wall_ms: 900_000,
            logical: 0
        }
    );

    // S001 restarts, then its clerk corrects the phone number it was shown.
    let mut stores = stores.into_iter();
    drop(stores.next());
    let mut s1_replica = chain.open_store(&s1);
    assert!(
        s1_replica.clock() >= seen,
        "clock after reopen {:?} forgot {seen:?}",
        s1_replica.clock()
    );
    s1_replica
        .commit_local(
            Topic::Members,
            vec![edit(&m, &[(ProfileField::Phone, "new")])],
            5_000,
        )
        .unwrap();
    push(&mut hq, &mut s1_replica);
    assert_eq!(
        hq.member_profile(&m).unwrap()[&ProfileField::Phone].value,
        "new"
    );
}

// A batch large enough to have its signatures checked on several threads before the transaction
// still refuses exactly the change set with a bad signature (and, after it, the gap it leaves),
// and still applies a store's change set whose key arrives earlier in the same batch.
#[test]
fn a_large_batch_checked_in_parallel_refuses_exactly_the_bad_signature() {
    let (_dir, chain) = chain(2);
    let (mut hq, mut stores) = chain.bootstrap(1_000);
    let s1 = chain.stores[0].id.clone();
    let mut batch: Vec<SignedChangeSet> = (1..=40)
        .map(|n| {
            stores[0]
                .commit_local(Topic::Sales, vec![sale(&s1, n, &[("cola", 1, 100)])], 2_000)
                .unwrap()
                .signed
        })
        .collect();
    batch[20].sig[5] ^= 0x01;
    let report = hq.apply_batch(&batch, Some(&s1), 3_000).unwrap();
    assert_eq!(report.applied.len(), 20);
    assert!(
        matches!(
            report.rejected[0],
            chainsync::validate::ChangeSetError::BadSignature { seq: 21, .. }
        ),
        "{:?}",
        report.rejected[0]
    );
    assert_eq!(
        report.rejected.len(),
        20,
        "the bad one, then 19 gaps behind it"
    );
    assert_eq!(hq.receipt_count().unwrap(), 20);
    batch[20].sig[5] ^= 0x01;
    let report = hq.apply_batch(&batch, Some(&s1), 4_000).unwrap();
    assert_eq!(
        (
            report.applied.len(),
            report.duplicates,
            report.rejected.len()
        ),
        (20, 20, 0)
    );

    // A relayed batch at a store: a new store's key and, later in the same batch, its members.
    let new = node("S009");
    let key = chainsync_tests::key_for("S009");
    let mut ops = chain.directory_ops();
    ops.retain(|op| matches!(op, Op::StoreUpsert(s) if s.id == chain.stores[0].id));
    if let Some(Op::StoreUpsert(s)) = ops.first_mut() {
        s.id = new.clone();
        s.public_key = key.verifying_key().to_bytes();
    }
    let mut relay = vec![
        hq.commit_local(Topic::Directory, ops, 5_000)
            .unwrap()
            .signed,
    ];
    let dir = tempfile::tempdir().unwrap();
    let identity = chainsync::replica::Identity {
        node: new.clone(),
        key,
    };
    let mut s9 = Replica::open(
        &dir.path().join("s9.db"),
        identity,
        chain.hq_key.verifying_key(),
        Durability::Relaxed,
    )
    .unwrap();
    let directory: Vec<SignedChangeSet> = hq
        .read_stream(
            &StreamId::new(NodeId::hq(), Topic::Directory),
            0,
            100,
            usize::MAX,
        )
        .unwrap();
    assert!(
        s9.apply_batch(&directory, None, 5_500)
            .unwrap()
            .rejected
            .is_empty()
    );
    for n in 0..40 {
        relay.push(
            s9.commit_local(
                Topic::Members,
                vec![Op::Ledger(points(&new, n, &member("M1"), 1))],
                6_000,
            )
            .unwrap()
            .signed,
        );
    }
    let report = stores[1].apply_batch(&relay, None, 7_000).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.applied.len(), 41);
    assert_eq!(
        stores[1]
            .balance(&member("M1"), chainsync::model::LedgerAccount::Points)
            .unwrap(),
        40
    );
}

// HQ prices every arriving receipt again with its own facts. A receipt charged as HQ's engine
// prices it is not listed; one charged otherwise is, once, with the cause: older facts when the
// store had not heard of HQ's latest price, "unexplained" when it held every fact and still
// charged otherwise.
#[test]
fn hq_prices_each_receipt_again_and_lists_those_charged_otherwise_with_the_cause() {
    use chainsync::model::{FactsSource, PricingBasis, Product};
    use chainsync::pricecheck::PriceCause;
    let (_dir, chain) = chain(1);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let store = &mut stores[0];
    let id = store.node().clone();
    let product = Op::ProductUpsert(Product {
        sku: sku("cola"),
        name: "Cola".into(),
        category: "drinks".into(),
        barcodes: vec![],
        unit_cost_cents: 50,
        active: true,
    });
    hq.commit_local(Topic::Catalog, vec![product], T0).unwrap();
    let chain_price = |cents| price("hq-cola", Scope::Chain, PriceKind::Retail, cents, 0, None);
    hq.commit_local(Topic::Prices(Scope::Chain), vec![chain_price(150)], T0)
        .unwrap();
    pull(&hq, store);
    let place = store.place_of(&id).unwrap().unwrap();
    let priced = |store: &Replica, n: u64, cents: i64| {
        let mut r = receipt(&id, n, T0 as i64, None, &[("cola", 2, cents)]);
        r.pricing = PricingBasis {
            source: FactsSource::Replica,
            heads: store.pricing_heads(&place).unwrap(),
            ..PricingBasis::unknown(T0 as i64)
        };
        Op::Receipt(r)
    };
    let heads = store.pricing_heads(&place).unwrap();
    assert_eq!(
        heads
            .iter()
            .map(|h| h.stream.to_string())
            .collect::<Vec<_>>(),
        ["hq/catalog", "hq/prices@chain"],
        "{heads:?}"
    );
    let right = priced(store, 1, 150);
    let wrong = priced(store, 2, 120);
    store.commit_local(Topic::Sales, vec![right], T0).unwrap();
    store.commit_local(Topic::Sales, vec![wrong], T0).unwrap();
    // HQ raises the price; the store sells before it hears of it.
    hq.commit_local(Topic::Prices(Scope::Chain), vec![chain_price(170)], T0)
        .unwrap();
    let stale = priced(store, 3, 150);
    store.commit_local(Topic::Sales, vec![stale], T0).unwrap();
    push(&mut hq, store);
    assert_eq!(hq.receipts_unchecked().unwrap(), 3);

    let pass = hq.check_prices(T0 as i64).unwrap();
    assert_eq!((pass.checked, pass.differing), (3, 3));
    let listed = hq.price_differences(None).unwrap();
    let seen: Vec<_> = listed
        .iter()
        .map(|d| (d.receipt.as_str(), d.charged_cents, d.hq_cents, d.cause))
        .collect();
    // Receipt 1 was right when sold, but HQ's price has moved since: older facts too.
    assert_eq!(
        seen,
        [
            ("S001-1", 300, Some(340), PriceCause::OlderFacts),
            ("S001-2", 240, Some(340), PriceCause::OlderFacts),
            ("S001-3", 300, Some(340), PriceCause::OlderFacts),
        ],
        "{listed:#?}"
    );
    assert_eq!(hq.check_prices(T0 as i64).unwrap().checked, 0, "once each");

    // The store catches up and sells again: right is not listed, wrong is unexplained.
    pull(&hq, store);
    let right = priced(store, 4, 170);
    let wrong = priced(store, 5, 160);
    store
        .commit_local(Topic::Sales, vec![right, wrong], T0)
        .unwrap();
    push(&mut hq, store);
    let pass = hq.check_prices(T0 as i64).unwrap();
    assert_eq!((pass.checked, pass.differing), (2, 1));
    let unexplained = hq.price_differences(Some(PriceCause::Unexplained)).unwrap();
    assert_eq!(unexplained.len(), 1, "{unexplained:#?}");
    assert_eq!(
        (unexplained[0].receipt.as_str(), unexplained[0].hq_cents),
        ("S001-5", Some(340))
    );
    assert!(
        unexplained[0].detail.starts_with(
            "line 0: charged 2 x cola @ 1.60; HQ 2 x cola @ 1.70; the store held every fact"
        ),
        "{}",
        unexplained[0].detail
    );
}

// Pricing time follows HQ's clock only (issue 10, item 8): a store learns HQ's clock in each
// session, whatever its own clock says; a member edit from a store whose clock runs five hours
// fast moves the hybrid logical clock of everyone who sees it, but nobody's pricing time; and a
// bundle from HQ raises the pricing time of a store that never connected to at least the time HQ
// made it.
#[test]
fn pricing_time_follows_hqs_clock_and_no_other_stores() {
    use chainsync::protocol::local::sync_pair_clocks;
    use chainsync_tests::key_for;
    const HOUR: u64 = 3_600_000;
    const HQ_NOW: u64 = 1_800_000_000_000;
    let (_dir, chain) = chain(3);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let mut stores = stores.drain(..);
    let (mut fast, mut right, mut by_bundle) = (
        stores.next().unwrap(),
        stores.next().unwrap(),
        stores.next().unwrap(),
    );
    assert_eq!(right.pricing_time(HQ_NOW).unwrap(), HQ_NOW as i64);

    // S001's clock runs 5 h fast; it edits a member and syncs.
    let m = member("M1");
    fast.commit_local(
        Topic::Members,
        vec![edit(&m, &[(ProfileField::Phone, "555")])],
        HQ_NOW + 5 * HOUR,
    )
    .unwrap();
    sync_pair_clocks(
        &mut hq,
        &mut fast,
        key_for("S001"),
        HQ_NOW,
        HQ_NOW + 5 * HOUR,
    )
    .unwrap();
    assert_eq!(
        fast.pricing_time(HQ_NOW + 5 * HOUR + 60_000).unwrap(),
        (HQ_NOW + 60_000) as i64,
        "the fast store prices on HQ's clock"
    );

    // S002's clock is right; it takes in the fast store's edit.
    sync_pair_clocks(
        &mut hq,
        &mut right,
        key_for("S002"),
        HQ_NOW + 1_000,
        HQ_NOW + 1_000,
    )
    .unwrap();
    assert_eq!(
        right.member_profile(&m).unwrap()[&ProfileField::Phone].value,
        "555"
    );
    assert!(
        right.clock().wall_ms >= HQ_NOW + 5 * HOUR,
        "the edit moved its HLC"
    );
    assert_eq!(
        right.pricing_time(HQ_NOW + 2_000).unwrap(),
        (HQ_NOW + 2_000) as i64,
        "another store's clock moved pricing time"
    );
    assert!(
        hq.clock().wall_ms >= HQ_NOW + 5 * HOUR,
        "HQ's HLC moved too"
    );

    // S003's clock runs 5 h slow and it only ever sees HQ by bundle.
    let bundle =
        chainsync::bundle::hq_bundle(&hq, &chain.hq_key, by_bundle.node(), HQ_NOW + 3_000).unwrap();
    let slow_now = HQ_NOW + 4_000 - 5 * HOUR;
    chainsync::bundle::import_bundle(&mut by_bundle, &bundle, slow_now).unwrap();
    assert_eq!(
        by_bundle.pricing_time(slow_now + 10_000).unwrap(),
        // Made at HQ + 3 s, imported at HQ + 4 s: the second in transit cannot be known, so
        // pricing time lags HQ's by it (never runs ahead of HQ's).
        (HQ_NOW + 13_000) as i64,
        "a bundle proves HQ's clock had reached its creation time"
    );
    // The offset is durable.
    drop(by_bundle);
    let reopened = chain.open_store(&node("S003"));
    assert_eq!(
        reopened.pricing_time(slow_now + 10_000).unwrap(),
        (HQ_NOW + 13_000) as i64
    );
}

// API tokens (issue "Sync on real lines", item 10): a token is refused once revoked or expired,
// revoking twice keeps the first time, an unknown id is named, and a database made before
// tokens could expire gains the columns on open and keeps its tokens.
#[test]
fn api_tokens_expire_and_are_revoked_and_old_databases_gain_the_columns() {
    let (_dir, chain) = chain(0);
    {
        let hq = chain.open_hq();
        hq.connection()
            .execute_batch(
                "ALTER TABLE api_tokens DROP COLUMN revoked_ms;
                 ALTER TABLE api_tokens DROP COLUMN expires_ms;
                 INSERT INTO api_tokens (token_hash, name, role, region, created_ms)
                 VALUES (x'00', 'old', 'admin', NULL, 5);",
            )
            .unwrap();
        let columns: i64 = hq
            .connection()
            .query_row(
                "SELECT count(*) FROM pragma_table_info('api_tokens')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(columns, 5, "the old layout");
    }
    let mut hq = chain.open_hq();
    let old = hq.api_tokens().unwrap();
    assert_eq!(old.len(), 1, "the old token is kept: {old:?}");
    assert_eq!((old[0].expires_ms, old[0].revoked_ms), (None, None));

    let north = region("north");
    let made = hq
        .add_api_token(
            "secret-1",
            "Ann",
            "regional",
            Some(&north),
            Some(T0 + 100),
            T0,
        )
        .unwrap();
    let id = made.id.clone();
    let ann = hq
        .api_token("secret-1")
        .unwrap()
        .expect("found by the token");
    assert_eq!(ann, made, "what add_api_token returns is what HQ keeps");
    assert_eq!(ann.id, id);
    assert_eq!(id.len(), chainsync::replica::TOKEN_ID_HEX_CHARS);
    assert_eq!(
        (ann.role.as_str(), ann.region.as_deref()),
        ("regional", Some("north"))
    );
    assert_eq!(ann.refusal(T0 + 99), None, "valid until it expires");
    let expired = ann.refusal(T0 + 100).expect("refused when it expires");
    assert!(expired.contains("expired"), "{expired}");
    assert!(
        hq.api_token("secret-2").unwrap().is_none(),
        "an unknown token"
    );

    hq.add_api_token("secret-2", "Bob", "admin", None, None, T0)
        .unwrap();
    let bob = hq.api_token("secret-2").unwrap().unwrap();
    assert_eq!(bob.refusal(u64::MAX), None, "no expiry: never expires");
    let revoked = hq
        .revoke_api_token(&bob.id.to_uppercase(), T0 + 10)
        .unwrap();
    assert_eq!(revoked.revoked_ms, Some(T0 + 10));
    let again = hq.revoke_api_token(&bob.id, T0 + 20).unwrap();
    assert_eq!(
        again.revoked_ms,
        Some(T0 + 10),
        "the first revocation stays"
    );
    let bob = hq.api_token("secret-2").unwrap().unwrap();
    assert_eq!(bob.refusal(T0 + 9), None);
    let why = bob.refusal(T0 + 10).expect("refused once revoked");
    assert!(why.contains("revoked") && why.contains(&bob.id), "{why}");
    assert_eq!(
        hq.api_token("secret-1").unwrap().unwrap().revoked_ms,
        None,
        "revoking one token leaves the others"
    );
    let err = hq.revoke_api_token("0123456789ab", T0).unwrap_err();
    assert!(
        err.to_string().contains("no API token 0123456789ab"),
        "{err}"
    );
    assert_eq!(hq.api_tokens().unwrap().len(), 3);
}

// `/healthz`'s database check writes: it fails on a database that cannot take a write (here a
// read-only connection) and passes on the writer.
#[test]
fn the_health_check_writes_and_fails_on_a_read_only_database() {
    let (_dir, chain) = chain(0);
    let mut hq = chain.open_hq();
    hq.check_writable(T0).unwrap();
    hq.connection()
        .pragma_update(None, "query_only", true)
        .unwrap();
    let err = hq.check_writable(T0).unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
}

// A local write is not verified again when the node signed it with the key the directory holds
// for it (issue "Performance at chain scale"); with any other key the gate still checks the
// signature and refuses it, and nothing is written.
#[test]
fn a_local_write_under_a_key_the_directory_does_not_hold_is_refused() {
    let (_dir, chain) = chain(1);
    let (_hq, mut stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let sale = |n| Op::Receipt(receipt(&s1, n, T0 as i64, None, &[("cola", 1, 100)]));
    stores[0]
        .commit_local(Topic::Sales, vec![sale(1)], T0)
        .expect("signed with the directory's key");
    drop(stores);
    let wrong = chainsync::replica::Identity {
        node: s1.clone(),
        key: chainsync_tests::key_for("someone else"),
    };
    let mut store = Replica::open(
        &chain.db_path(&s1),
        wrong,
        chain.hq_key.verifying_key(),
        Durability::Relaxed,
    )
    .unwrap();
    let err = store
        .commit_local(Topic::Sales, vec![sale(2)], T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            chainsync::replica::ReplicaError::Refused(
                chainsync::validate::ChangeSetError::BadSignature { .. }
            )
        ),
        "{err}"
    );
    let sales = StreamId::new(s1, Topic::Sales);
    assert_eq!(store.head(&sales).unwrap().seq, 1, "nothing written");
}
