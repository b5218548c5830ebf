//! The session on real lines, driven without sockets: real replicas, the real state machines, a
//! clock the test moves. Each test is named for what broke (issue "Sync on real lines"):
//! a push resent every two seconds while QUIC still carried it, a stream refused at HQ that
//! filled every push so that sales were never sent again, a pull answer filled by one long
//! stream, and a batch exchange that never hung up while a till kept selling.

use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{NodeId, Scope, StreamId, Topic};
use chainsync::model::{MemberEdit, PriceEntry, PriceKind, Product, ProfileField};
use chainsync::protocol::frame::{BATCH_BYTES_MAX, BATCH_CHANGE_SETS_MAX, Frame};
use chainsync::protocol::session::{ANSWER_TIMEOUT_MS, PUSHES_IN_FLIGHT_MAX, RETRY_MS};
use chainsync::protocol::{HubSession, HubStore, LeafSession, SessionError};
use chainsync::replica::{Durability, Replica};
use chainsync_tests::{Chain, key_for, member, node, receipt, record, sku};
use std::collections::BTreeMap;

const T0: u64 = 1_000_000;

fn sale(store: &NodeId, n: u64) -> Op {
    Op::Receipt(receipt(store, n, T0 as i64, None, &[("cola", 1, 150)]))
}

fn member_edit(n: u64) -> Op {
    Op::MemberEdit(MemberEdit {
        member: member(&format!("M{n}")),
        hlc: Hlc::default(),
        fields: vec![(ProfileField::Name, format!("Member {n}"))],
    })
}

fn sell(store: &mut Replica, from: u64, count: u64) {
    let id = store.node().clone();
    for n in from..from + count {
        store
            .commit_local(Topic::Sales, vec![sale(&id, n)], T0 + n)
            .unwrap();
    }
}

fn sales_at_hq(hq: &Replica, store: &str) -> u64 {
    hq.head(&StreamId::new(node(store), Topic::Sales))
        .unwrap()
        .seq
}

/// Change sets in a push frame.
fn pushed(frames: &[Frame]) -> usize {
    frames
        .iter()
        .map(|f| match f {
            Frame::Push { change_sets } => change_sets.len(),
            _ => 0,
        })
        .sum()
}

/// Opens a session: Hello, Challenge, Auth, Welcome. Returns what the store sends once open.
fn open(
    hub: &mut HubSession,
    leaf: &mut LeafSession,
    hq: &mut Replica,
    store: &mut Replica,
) -> Vec<Frame> {
    let mut to_hub = leaf.start(T0, store).unwrap();
    for _ in 0..2 {
        let mut to_leaf = Vec::new();
        for f in to_hub {
            to_leaf.extend(hub.handle(T0, f, hq).unwrap().frames);
        }
        to_hub = Vec::new();
        for f in to_leaf {
            to_hub.extend(leaf.handle(T0, f, store).unwrap());
        }
    }
    assert!(leaf.is_open());
    to_hub
}

/// Delivers frames both ways at `now` until neither side has anything to say (at most `rounds`).
/// Returns the change sets the store pushed.
fn exchange(
    now: u64,
    mut to_hub: Vec<Frame>,
    hub: &mut HubSession,
    leaf: &mut LeafSession,
    hq: &mut Replica,
    store: &mut Replica,
    rounds: usize,
) -> usize {
    let mut sent = 0;
    for _ in 0..rounds {
        if to_hub.is_empty() {
            break;
        }
        sent += pushed(&to_hub);
        let mut to_leaf = Vec::new();
        for f in to_hub {
            to_leaf.extend(hub.handle(now, f, hq).unwrap().frames);
        }
        to_hub = Vec::new();
        for f in to_leaf {
            to_hub.extend(leaf.handle(now, f, store).unwrap());
        }
    }
    sent
}

#[test]
fn a_push_in_flight_is_never_sent_again_within_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let mut store = stores.remove(0);
    let s1 = node("S001");
    sell(&mut store, 1, 1_500);

    let mut hub = HubSession::new([1; 32], b"b".to_vec());
    let mut leaf = LeafSession::new(s1.clone(), key_for("S001"), b"b".to_vec(), 0);
    let first = open(&mut hub, &mut leaf, &mut hq, &mut store);
    // The store keeps the line busy with several pushes, each change set once.
    let in_flight = pushed(&first);
    assert_eq!(
        in_flight, 1_500,
        "every pending receipt goes out once at the start"
    );
    assert!(
        first
            .iter()
            .filter(|f| matches!(f, Frame::Push { .. }))
            .count()
            <= PUSHES_IN_FLIGHT_MAX
    );

    // HQ is slow to answer (the line is lossy and QUIC is still retransmitting): the store must
    // not send any of it again, however many retry periods pass.
    for wait in [RETRY_MS, 5 * RETRY_MS, 20 * RETRY_MS, ANSWER_TIMEOUT_MS - 1] {
        let again = leaf.handle_timeout(T0 + wait, &store).unwrap();
        assert_eq!(pushed(&again), 0, "change sets resent after {wait} ms");
    }
    // An HQ that never answers ends the session; the next one starts from HQ's heads.
    assert_eq!(
        leaf.handle_timeout(T0 + ANSWER_TIMEOUT_MS, &store).err(),
        Some(SessionError::NoAnswer(ANSWER_TIMEOUT_MS))
    );

    // Answered, the session sends nothing twice: 1,500 change sets for 1,500 receipts.
    let mut hub = HubSession::new([2; 32], b"b".to_vec());
    let mut leaf = LeafSession::new(s1.clone(), key_for("S001"), b"b".to_vec(), 0);
    let first = open(&mut hub, &mut leaf, &mut hq, &mut store);
    let sent = exchange(T0, first, &mut hub, &mut leaf, &mut hq, &mut store, 50);
    assert_eq!(sent, 1_500);
    assert_eq!(sales_at_hq(&hq, "S001"), 1_500);
    assert!(leaf.is_idle());
}

#[test]
fn a_stream_refused_at_hq_leaves_room_for_the_sales_and_is_offered_sparingly() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let mut store = stores.remove(0);
    let s1 = node("S001");
    // 600 member edits, more than a push holds, then 40 sales.
    for n in 1..=600 {
        store
            .commit_local(Topic::Members, vec![member_edit(n)], T0 + n)
            .unwrap();
    }
    sell(&mut store, 1, 40);
    // The first member edit's signature is damaged on the store's disk: HQ refuses it, and
    // everything after it is a gap.
    let members = StreamId::new(s1.clone(), Topic::Members);
    drop(store);
    {
        let conn = rusqlite::Connection::open(chain.db_path(&s1)).unwrap();
        let changed = conn
            .execute(
                "UPDATE log SET sig = zeroblob(64)
                 WHERE seq = 1 AND stream = (SELECT id FROM streams WHERE name = ?1)",
                [members.to_string()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let mut store = chain.open_store(&s1);

    let mut hub = HubSession::new([1; 32], b"b".to_vec());
    let mut leaf = LeafSession::new(s1.clone(), key_for("S001"), b"b".to_vec(), 0);
    let first = open(&mut hub, &mut leaf, &mut hq, &mut store);
    let mut sent = exchange(T0, first, &mut hub, &mut leaf, &mut hq, &mut store, 50);
    assert_eq!(
        sales_at_hq(&hq, "S001"),
        40,
        "the sales got through beside the halted stream"
    );
    assert_eq!(hq.head(&members).unwrap().seq, 0);

    // Ten minutes on: the refused stream is offered one change set at a time, less and less
    // often; new sales still go at once.
    let mut now = T0;
    let mut wakes = 0;
    while now < T0 + 600_000 && wakes < 1_000 {
        wakes += 1;
        now = leaf.poll_timeout().unwrap_or(now + 1_000).max(now + 1);
        let frames = leaf.handle_timeout(now, &store).unwrap();
        sent += exchange(now, frames, &mut hub, &mut leaf, &mut hq, &mut store, 10);
        if wakes == 5 {
            sell(&mut store, 41, 3);
            let frames = leaf.local_commit(now, &store).unwrap();
            sent += exchange(now, frames, &mut hub, &mut leaf, &mut hq, &mut store, 10);
        }
    }
    assert_eq!(sales_at_hq(&hq, "S001"), 43);
    // At most one share of the members at first, then one change set per offer (2 s, 4 s, ...
    // up to a minute apart): a few dozen in ten minutes, not 512 every two seconds.
    assert!(
        sent <= 600 + 43 + 20,
        "{sent} change sets sent in ten minutes"
    );
    assert!(wakes < 100, "{wakes} timer wakes in ten minutes");
}

#[test]
fn a_pull_answer_gives_every_stream_a_share() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, _stores) = chain.bootstrap(T0);
    // A long catalog (more than a batch) and then a price change the store is waiting for.
    for n in 0..700 {
        let product = Op::ProductUpsert(Product {
            sku: sku(&format!("sku{n}")),
            name: format!("Product {n}"),
            category: "grocery".into(),
            barcodes: vec![],
            unit_cost_cents: 50,
            active: true,
        });
        hq.commit_local(Topic::Catalog, vec![product], T0 + n)
            .unwrap();
    }
    let price = Op::PriceUpsert(PriceEntry {
        id: record("hq-P-cola"),
        sku: sku("sku1"),
        scope: Scope::Chain,
        kind: PriceKind::Retail,
        price_cents: 99,
        effective_from_ms: 0,
        effective_to_ms: None,
    });
    hq.commit_local(Topic::Prices(Scope::Chain), vec![price], T0 + 1_000)
        .unwrap();
    let peer = hq.peer(&node("S001")).unwrap().unwrap();
    let directory = StreamId::new(NodeId::hq(), Topic::Directory);
    let cursors: BTreeMap<StreamId, u64> = [(directory, 1)].into_iter().collect();
    let (batch, more) = hq
        .changes_for(&peer, &cursors, BATCH_CHANGE_SETS_MAX, BATCH_BYTES_MAX)
        .unwrap();
    let prices = StreamId::new(NodeId::hq(), Topic::Prices(Scope::Chain));
    let streams: Vec<StreamId> = batch
        .iter()
        .map(|cs| chainsync::validate::open(cs).unwrap().stream)
        .collect();
    assert!(more);
    assert_eq!(batch.len(), BATCH_CHANGE_SETS_MAX);
    assert!(
        streams.contains(&prices),
        "the price change waited behind the catalog"
    );
}

#[test]
fn a_batch_exchange_hangs_up_while_the_till_keeps_selling() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let mut store = stores.remove(0);
    let s1 = node("S001");
    sell(&mut store, 1, 100);

    let mut hub = HubSession::new([1; 32], b"b".to_vec());
    let mut leaf = LeafSession::new(s1.clone(), key_for("S001"), b"b".to_vec(), 0).exchange_once();
    let mut to_hub = open(&mut hub, &mut leaf, &mut hq, &mut store);
    // A sale at every step of the exchange, each followed by the commit notice.
    let mut n = 101;
    let mut steps = 0;
    while !leaf.is_idle() && steps < 50 {
        steps += 1;
        let mut to_leaf = Vec::new();
        for f in to_hub {
            to_leaf.extend(hub.handle(T0, f, &mut hq).unwrap().frames);
        }
        to_hub = Vec::new();
        sell(&mut store, n, 1);
        n += 1;
        to_hub.extend(leaf.local_commit(T0, &store).unwrap());
        for f in to_leaf {
            to_hub.extend(leaf.handle(T0, f, &mut store).unwrap());
        }
    }
    assert!(leaf.is_idle(), "still busy after {steps} steps");
    assert!(to_hub.is_empty(), "{} frames still to send", to_hub.len());
    assert_eq!(
        sales_at_hq(&hq, "S001"),
        100,
        "what was pending when it opened, no more"
    );
    assert_eq!(leaf.counters().pushed_change_sets, 100);
}
