//! Adversarial input: every way a change set, a frame, a session step or a snapshot can be wrong
//! is refused with its typed error, and the replica that refused it holds exactly what it held
//! before (compared through a fingerprint of its public queries).

use chainsync::changeset::{
    CHANGE_SET_BYTES_MAX, CHANGE_SET_FORMAT, CHANGE_SET_OPS_MAX, CHANGE_SET_SIG_PREFIX, ChangeSet,
    Op, SNAPSHOT_SIG_PREFIX, SignedChangeSet, SignedSnapshot, Snapshot, ZERO_HASH,
};
use chainsync::hlc::Hlc;
use chainsync::ids::{NodeId, Scope, StreamId, Topic};
use chainsync::model::{
    MemberEdit, MovementKind, PriceEntry, PriceKind, Product, ProfileField, StockMovement, Void,
};
use chainsync::protocol::frame::{
    FRAME_BYTES_MAX, PROTOCOL_VERSION, WireChangeSet, decode_payload,
};
use chainsync::protocol::session::auth_message;
use chainsync::protocol::{
    Frame, FrameDecoder, FrameError, HubSession, HubStore, LeafStore, SessionError, encode_frame,
};
use chainsync::replica::{Durability, Replica, ReplicaError, SnapshotLoad, StockRow};
use chainsync::validate::{self, ChangeSetError, HaltKind, SnapshotError, StreamHead};
use chainsync_tests::{Chain, key_for, member, node, points, receipt, record, sku};
use ed25519_dalek::{Signer, SigningKey};
use hq_server::csvio::Report;
use std::collections::BTreeMap;
use tempfile::TempDir;

const T0: u64 = 1_000;
const T1: u64 = 10_000;
const NONCE: [u8; 32] = [7; 32];
const BINDING: &[u8] = b"binding";

/// Everything a caller can see of a replica's data.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    heads: Vec<(StreamId, StreamHead)>,
    receipts: u64,
    stock: Vec<StockRow>,
    balances: Vec<(String, i64, i64)>,
    members: Vec<(String, u8, String)>,
    prices: Vec<PriceEntry>,
}

fn fingerprint(r: &Replica) -> Fingerprint {
    Fingerprint {
        heads: r.heads().unwrap(),
        receipts: r.receipt_count().unwrap(),
        stock: r.stock_rows(None).unwrap(),
        balances: r.balances().unwrap(),
        members: r.member_fields().unwrap(),
        prices: r.price_entries().unwrap(),
    }
}

/// A chain of three stores with some history: HQ's directory and a chain price; S001 and S002
/// each received stock, signed up a member with points and sold once, and HQ holds all of it;
/// every store has pulled what it follows.
struct World {
    _dir: TempDir,
    chain: Chain,
    hq: Replica,
    stores: Vec<Replica>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 3, 2, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    hq.commit_local(
        Topic::Prices(Scope::Chain),
        vec![Op::PriceUpsert(price("hq-p1", Scope::Chain, "cola", 150))],
        T0,
    )
    .unwrap();
    for (i, store) in stores.iter_mut().take(2).enumerate() {
        let id = store.node().clone();
        let m = member(&format!("M{i}"));
        store
            .commit_local(
                Topic::Inventory,
                vec![Op::Stock(received(&id, 1, "cola", 10))],
                T0 + 10,
            )
            .unwrap();
        store
            .commit_local(
                Topic::Members,
                vec![
                    Op::MemberEdit(edit(&m, ProfileField::Name, "Kim")),
                    Op::Ledger(points(&id, 1, &m, 50)),
                ],
                T0 + 20,
            )
            .unwrap();
        store
            .commit_local(Topic::Sales, vec![sale(&id, 1, 2)], T0 + 30)
            .unwrap();
        push(&mut hq, store);
    }
    for store in &mut stores {
        pull(&hq, store);
    }
    World {
        _dir: dir,
        chain,
        hq,
        stores,
    }
}

fn price(id: &str, scope: Scope, s: &str, cents: i64) -> PriceEntry {
    PriceEntry {
        id: record(id),
        sku: sku(s),
        scope,
        kind: PriceKind::Retail,
        price_cents: cents,
        effective_from_ms: 0,
        effective_to_ms: None,
    }
}

fn received(store: &NodeId, n: u64, s: &str, qty: i64) -> StockMovement {
    StockMovement {
        id: record(&format!("{store}-M{n}")),
        store: store.clone(),
        sku: sku(s),
        kind: MovementKind::Received,
        qty_delta: qty,
        reference: "delivery".into(),
        at_ms: 0,
    }
}

fn edit(m: &chainsync::ids::MemberId, field: ProfileField, value: &str) -> MemberEdit {
    MemberEdit {
        member: m.clone(),
        hlc: Hlc::default(),
        fields: vec![(field, value.into())],
    }
}

fn sale(store: &NodeId, n: u64, qty: i64) -> Op {
    Op::Receipt(receipt(store, n, T0 as i64, None, &[("cola", qty, 150)]))
}

/// Pushes a store's outbox to HQ as an authenticated push and records HQ's acknowledgement.
fn push(hq: &mut Replica, store: &mut Replica) {
    let id = store.node().clone();
    let report = hq
        .apply_batch(
            &store.outbox(1_000, usize::MAX).unwrap(),
            Some(&id),
            T0 + 100,
        )
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    store.set_hub_acked(&hq.own_heads(&id).unwrap()).unwrap();
}

/// Pulls into a store everything it follows at HQ.
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

fn stream(origin: &str, topic: Topic) -> StreamId {
    StreamId::new(node(origin), topic)
}

/// A change set built by hand and signed with whatever key the test likes.
fn forge(
    stream: &StreamId,
    seq: u64,
    prev: [u8; 32],
    ops: Vec<Op>,
    key: &SigningKey,
) -> SignedChangeSet {
    let cs = ChangeSet {
        format: CHANGE_SET_FORMAT,
        stream: stream.clone(),
        seq,
        prev,
        hlc: Hlc {
            wall_ms: T1,
            logical: 0,
        },
        ops,
    };
    SignedChangeSet::sign(&cs, key).unwrap()
}

/// A forged change set that would be the next one of `stream` on `r`.
fn forge_next(r: &Replica, stream: &StreamId, ops: Vec<Op>, key: &SigningKey) -> SignedChangeSet {
    let head = r.head(stream).unwrap();
    forge(stream, head.seq + 1, head.hash, ops, key)
}

/// Signs raw bytes as a change set, whatever they hold.
fn sign_raw(body: Vec<u8>, key: &SigningKey) -> SignedChangeSet {
    let sig = key
        .sign(&[CHANGE_SET_SIG_PREFIX, &body].concat())
        .to_bytes();
    SignedChangeSet { body, sig }
}

fn halted(r: &Replica, stream: &StreamId) -> Option<String> {
    r.stream_status()
        .unwrap()
        .into_iter()
        .find(|s| &s.stream == stream)
        .and_then(|s| s.halted_reason)
}

fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// Applies `bad` at `r` and checks it is refused with `expected` and changes nothing.
fn refused(r: &mut Replica, bad: SignedChangeSet, peer: Option<&NodeId>, expected: ChangeSetError) {
    let before = fingerprint(r);
    let report = r.apply_batch(&[bad], peer, T1).unwrap();
    assert_eq!(report.rejected, vec![expected]);
    assert!(report.applied.is_empty());
    assert_eq!(report.duplicates, 0);
    assert_eq!(fingerprint(r), before);
}

// A bit flipped in the body (still decodable) or in the signature is a bad signature; it halts
// the stream visibly, and the genuine change set still applies and clears the halt.
#[test]
fn a_flipped_bit_in_body_or_signature_is_a_bad_signature_until_the_genuine_change_set() {
    let mut w = world();
    let s1 = node("S001");
    let sales = stream("S001", Topic::Sales);
    let genuine = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 3)], T1)
        .unwrap()
        .signed;

    let mut body_flip = genuine.clone();
    let at = position(&body_flip.body, b"cola");
    body_flip.body[at] ^= 0x20; // "cola" -> "Cola": still a valid sku
    assert!(
        validate::open(&body_flip).is_ok(),
        "the flip must keep the body decodable"
    );
    let mut sig_flip = genuine.clone();
    sig_flip.sig[17] ^= 0x04;

    for bad in [body_flip, sig_flip] {
        refused(
            &mut w.hq,
            bad,
            Some(&s1),
            ChangeSetError::BadSignature {
                stream: sales.clone(),
                seq: 2,
            },
        );
        assert!(halted(&w.hq, &sales).is_some_and(|r| r.contains("bad signature")));
    }
    // HQ's operator sees the halt, what it waits for, since when, and what to do.
    let halts = w.hq.halted_streams().unwrap();
    assert_eq!(
        halts
            .iter()
            .map(|h| (h.stream.clone(), h.next_seq, h.kind, h.since_ms))
            .collect::<Vec<_>>(),
        vec![(
            sales.clone(),
            2,
            Some(HaltKind::BadSignature),
            Some(T1 as i64)
        )],
        "{halts:?}"
    );
    let (header, rows) = hq_server::csvio::report_rows(&w.hq, Report::Halts).unwrap();
    assert_eq!(header[1], "store");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0][0].as_str(), rows[0][1].as_str()),
        ("S001/sales", "S001")
    );
    assert!(
        rows[0][6].contains("hq-server store replace"),
        "{:?}",
        rows[0]
    );
    let halted_at = |r: &Replica| {
        r.store_report(None)
            .unwrap()
            .into_iter()
            .find(|s| s.store == "S001")
            .map(|s| s.halted_streams)
    };
    assert_eq!(halted_at(&w.hq), Some(1), "the store list shows it too");

    let report = w.hq.apply_batch(&[genuine], Some(&s1), T1).unwrap();
    assert_eq!(report.applied, vec![(sales.clone(), 2)]);
    assert_eq!(halted(&w.hq, &sales), None);
    assert_eq!(
        w.hq.halted_streams().unwrap(),
        vec![],
        "healed: listed no more"
    );
    assert_eq!(halted_at(&w.hq), Some(0));
    assert_eq!(
        w.hq.stock_rows(Some(&s1)).unwrap(),
        w.stores[0].stock_rows(Some(&s1)).unwrap()
    );
    w.hq.audit().unwrap();
}

// A change set signed by another store's key, or a store's key signing an HQ stream, is a bad
// signature, at HQ and at a store alike.
#[test]
fn a_change_set_signed_by_the_wrong_key_is_a_bad_signature() {
    let mut w = world();
    let s1 = node("S001");
    let sales = stream("S001", Topic::Sales);
    let bad = forge_next(&w.hq, &sales, vec![sale(&s1, 2, 1)], &key_for("S002"));
    refused(
        &mut w.hq,
        bad,
        Some(&s1),
        ChangeSetError::BadSignature {
            stream: sales,
            seq: 2,
        },
    );

    let prices = stream("hq", Topic::Prices(Scope::Chain));
    let ops = vec![Op::PriceUpsert(price("hq-p1", Scope::Chain, "cola", 1))];
    let bad = forge_next(&w.stores[1], &prices, ops, &key_for("S001"));
    refused(
        &mut w.stores[1],
        bad,
        None,
        ChangeSetError::BadSignature {
            stream: prices.clone(),
            seq: 2,
        },
    );
    assert!(halted(&w.stores[1], &prices).is_some());
}

// A replayed change set is counted as a duplicate, not an error, and nothing is applied twice,
// whether it was applied long ago or earlier in the same batch.
#[test]
fn a_replayed_change_set_is_a_duplicate_and_applies_once() {
    let mut w = world();
    let s1 = node("S001");
    let sales = stream("S001", Topic::Sales);
    let old = w.stores[0].read_stream(&sales, 0, 10, usize::MAX).unwrap();
    let before = fingerprint(&w.hq);
    let report = w.hq.apply_batch(&old, Some(&s1), T1).unwrap();
    assert_eq!(
        (
            report.applied.len(),
            report.duplicates,
            report.rejected.len()
        ),
        (0, 1, 0)
    );
    assert_eq!(fingerprint(&w.hq), before);

    let fresh = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 4)], T1)
        .unwrap()
        .signed;
    let report =
        w.hq.apply_batch(&[fresh.clone(), fresh.clone(), fresh], Some(&s1), T1)
            .unwrap();
    assert_eq!(report.applied, vec![(sales, 2)]);
    assert_eq!((report.duplicates, report.rejected.len()), (2, 0));
    assert_eq!(w.hq.receipt_count().unwrap(), before.receipts + 1);
    assert_eq!(w.hq.stock_of(&s1, &sku("cola")).unwrap(), 10 - 2 - 4);

    // A relayed stream replayed at a store is a duplicate there too.
    let members = stream("S001", Topic::Members);
    let relayed = w.hq.read_stream(&members, 0, 10, usize::MAX).unwrap();
    let before = fingerprint(&w.stores[1]);
    let report = w.stores[1].apply_batch(&relayed, None, T1).unwrap();
    assert_eq!(
        (
            report.applied.len(),
            report.duplicates,
            report.rejected.len()
        ),
        (0, 1, 0)
    );
    assert_eq!(fingerprint(&w.stores[1]), before);
}

// A change set past head + 1 is a gap: refused without halting, and the missing one heals it.
#[test]
fn a_seq_gap_is_refused_without_halting_the_stream() {
    let mut w = world();
    let s1 = node("S001");
    let sales = stream("S001", Topic::Sales);
    let second = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 1)], T1)
        .unwrap()
        .signed;
    let third = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 3, 1)], T1)
        .unwrap()
        .signed;
    refused(
        &mut w.hq,
        third.clone(),
        Some(&s1),
        ChangeSetError::SeqGap {
            stream: sales.clone(),
            expected: 2,
            got: 3,
        },
    );
    assert_eq!(halted(&w.hq, &sales), None);
    let report = w.hq.apply_batch(&[second, third], Some(&s1), T1).unwrap();
    assert_eq!(report.applied, vec![(sales.clone(), 2), (sales, 3)]);
}

// A validly signed change set at the right seq whose prev does not name the head is a prev-hash
// mismatch; a different validly signed change set for an applied seq (at or below the head) is a
// fork. Both halt the stream and change nothing.
#[test]
fn a_wrong_prev_hash_is_a_mismatch_and_a_second_version_of_an_applied_seq_is_a_fork() {
    let mut w = world();
    let s1 = node("S001");
    let key = key_for("S001");
    let sales = stream("S001", Topic::Sales);
    let bad = forge(&sales, 2, [9; 32], vec![sale(&s1, 2, 1)], &key);
    refused(
        &mut w.hq,
        bad,
        Some(&s1),
        ChangeSetError::PrevHashMismatch {
            stream: sales.clone(),
            seq: 2,
        },
    );
    assert!(halted(&w.hq, &sales).is_some());

    // At the head (seq 1).
    let fork = forge(&sales, 1, ZERO_HASH, vec![sale(&s1, 1, 99)], &key);
    refused(
        &mut w.hq,
        fork,
        Some(&s1),
        ChangeSetError::Fork {
            stream: sales.clone(),
            seq: 1,
        },
    );

    // Below the head (seq 1 once seq 2 is applied).
    let second = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 1)], T1)
        .unwrap()
        .signed;
    assert_eq!(
        w.hq.apply_batch(&[second], Some(&s1), T1)
            .unwrap()
            .applied
            .len(),
        1
    );
    assert_eq!(halted(&w.hq, &sales), None);
    let fork = forge(&sales, 1, ZERO_HASH, vec![sale(&s1, 1, 99)], &key);
    refused(
        &mut w.hq,
        fork,
        Some(&s1),
        ChangeSetError::Fork {
            stream: sales.clone(),
            seq: 1,
        },
    );
    assert!(halted(&w.hq, &sales).is_some_and(|r| r.contains("fork")));
    let halts = w.hq.halted_streams().unwrap();
    assert_eq!(halts.len(), 1, "{halts:?}");
    assert_eq!(halts[0].kind, Some(HaltKind::Fork));
    assert!(
        halts[0].kind.unwrap().action().contains("store.db aside"),
        "{halts:?}"
    );
}

// A store may not originate HQ's topics (chain prices, catalog, directory) nor its own store
// prices unless HQ allows it: each is TopicNotAllowed.
#[test]
fn a_store_writing_hq_topics_is_topic_not_allowed() {
    let mut w = world();
    let s1 = node("S001");
    let key = key_for("S001");
    let product = Product {
        sku: sku("cola"),
        name: "Free cola".into(),
        category: "drinks".into(),
        barcodes: vec![],
        unit_cost_cents: 0,
        active: true,
    };
    let mut own = w.hq.store_info(&s1).unwrap().unwrap();
    own.may_set_own_prices = true;
    let cases = [
        (
            Topic::Prices(Scope::Chain),
            Op::PriceUpsert(price("S001-p1", Scope::Chain, "cola", 1)),
        ),
        (Topic::Catalog, Op::ProductUpsert(product)),
        (Topic::Directory, Op::StoreUpsert(own)),
        (
            Topic::Prices(Scope::Store(s1.clone())),
            Op::PriceUpsert(price("S001-p1", Scope::Store(s1.clone()), "cola", 1)),
        ),
        (
            Topic::Promotions(Scope::Chain),
            Op::PromotionRemove {
                id: record("S001-x"),
            },
        ),
    ];
    for (topic, op) in cases {
        let bad = forge(
            &StreamId::new(s1.clone(), topic.clone()),
            1,
            ZERO_HASH,
            vec![op],
            &key,
        );
        refused(
            &mut w.hq,
            bad,
            Some(&s1),
            ChangeSetError::TopicNotAllowed {
                origin: s1.clone(),
                topic,
            },
        );
    }
}

// At HQ, an authenticated store pushing a stream it does not originate (another store's, or
// HQ's) is NotPeersStream, even when the change set itself is genuine.
#[test]
fn a_store_pushing_another_nodes_stream_is_not_peers_stream() {
    let mut w = world();
    let (s1, s2) = (node("S001"), node("S002"));
    let genuine = w.stores[1]
        .commit_local(Topic::Sales, vec![sale(&s2, 2, 1)], T1)
        .unwrap()
        .signed;
    let s2_sales = stream("S002", Topic::Sales);
    refused(
        &mut w.hq,
        genuine.clone(),
        Some(&s1),
        ChangeSetError::NotPeersStream {
            peer: s1.clone(),
            stream: s2_sales.clone(),
        },
    );
    assert_eq!(halted(&w.hq, &s2_sales), None);
    let hq_prices = stream("hq", Topic::Prices(Scope::Chain));
    let relayed =
        w.hq.read_stream(&hq_prices, 0, 1, usize::MAX)
            .unwrap()
            .remove(0);
    refused(
        &mut w.hq,
        relayed,
        Some(&s1),
        ChangeSetError::NotPeersStream {
            peer: s1.clone(),
            stream: hq_prices,
        },
    );
    // From its rightful origin it applies.
    assert_eq!(
        w.hq.apply_batch(&[genuine], Some(&s2), T1).unwrap().applied,
        vec![(s2_sales, 2)]
    );
}

// Inside its own streams a store may only write what it owns: a receipt of another store (by
// `store` or by id), a void of another store's receipt, an op of the wrong topic, or a member's
// offline allowance are OpNotAllowed, and the whole change set is refused.
#[test]
fn a_store_writing_what_it_does_not_own_is_op_not_allowed() {
    let mut w = world();
    let (s1, s2) = (node("S001"), node("S002"));
    let key = key_for("S001");
    let sales = stream("S001", Topic::Sales);
    let mut other_store = receipt(&s1, 2, 0, None, &[("cola", 1, 150)]);
    other_store.store = s2.clone();
    let mut other_id = receipt(&s1, 3, 0, None, &[("cola", 1, 150)]);
    other_id.id = record("S002-1");
    let void = Void {
        id: record("S001-V1"),
        store: s1.clone(),
        original: record("S002-1"),
        at_ms: 0,
        reason: "test".into(),
    };
    let cases = [
        (vec![Op::Receipt(other_store)], 0),
        (vec![sale(&s1, 2, 1), Op::Receipt(other_id)], 1),
        (vec![Op::Void(void)], 0),
        (
            vec![sale(&s1, 2, 1), Op::Stock(received(&s1, 2, "cola", 5))],
            1,
        ),
    ];
    for (ops, index) in cases {
        let before = fingerprint(&w.hq);
        let report =
            w.hq.apply_batch(&[forge_next(&w.hq, &sales, ops, &key)], Some(&s1), T1)
                .unwrap();
        assert!(
            matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { stream: s, seq: 2, index: i, .. }]
                if *s == sales && *i == index),
            "{:?}",
            report.rejected
        );
        assert_eq!(fingerprint(&w.hq), before);
        assert!(halted(&w.hq, &sales).is_some());
    }

    // Members' money: what only HQ may write, and what a store may not write without its
    // authorisation or its tender.
    let members = stream("S001", Topic::Members);
    let ledger = |id: &str, account, kind, amount, auth, tender| {
        Op::Ledger(chainsync::model::LedgerEntry {
            id: record(id),
            member: member("M0"),
            account,
            kind,
            amount,
            receipt: None,
            at_ms: 0,
            auth,
            tender,
            note: String::new(),
        })
    };
    use chainsync::model::{LedgerAccount as A, LedgerKind as K, PaymentMethod as P};
    let cases = [
        (
            Op::MemberAllowance {
                member: member("M0"),
                allowance: Some(chainsync::model::Allowance {
                    stored_value_cents: 1_000_000,
                    points: 0,
                }),
            },
            "only HQ sets the member allowance",
        ),
        (
            Op::LoyaltyPolicy(chainsync::model::LoyaltyPolicy::default()),
            "only HQ sets the loyalty policy",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::Adjusted, 5_000, None, None),
            "only HQ writes Adjusted",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::Spent, -5_000, None, None),
            "only with a hold or within its offline allowance",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::ToppedUp, 5_000, None, None),
            "must carry the cash or card payment",
        ),
        (
            ledger(
                "S001-L7",
                A::StoredValue,
                K::ToppedUp,
                5_000,
                None,
                Some(P::StoredValue),
            ),
            "must carry the cash or card payment",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::Spent, 5_000, None, None),
            "must be negative",
        ),
        (
            ledger(
                "S001-L7",
                A::StoredValue,
                K::Spent,
                -5_000,
                Some(chainsync::model::SpendAuth::Held(record("S002-H1"))),
                None,
            ),
            "hold id S002-H1 does not start with `S001-`",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::Earned, 5, None, None),
            "does not move StoredValue",
        ),
        (
            ledger("S001-L7", A::Points, K::Earned, 5_000, None, None),
            "names the receipt it comes from",
        ),
        (
            ledger("S001-L7", A::StoredValue, K::Refunded, 5_000, None, None),
            "names the receipt it comes from",
        ),
        (
            Op::CardStatus {
                number: "C1".parse().unwrap(),
                status: chainsync::model::CardStatus::Active,
                hlc: chainsync::hlc::Hlc::default(),
            },
            "only HQ freezes, unfreezes or cancels a card",
        ),
        (
            Op::MemberMerge {
                alias: member("M1"),
                survivor: member("M0"),
            },
            "only HQ sets the member merge",
        ),
    ];
    for (op, what) in cases {
        let bad = forge_next(&w.hq, &members, vec![op], &key);
        let before = fingerprint(&w.hq);
        let report = w.hq.apply_batch(&[bad], Some(&s1), T1).unwrap();
        assert!(
            matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { stream: s, index: 0, reason, .. }]
                if *s == members && reason.contains(what)),
            "{what}: {:?}",
            report.rejected
        );
        assert_eq!(fingerprint(&w.hq), before);
    }
}

// Absurd numbers from a store's own signed stream are refused at HQ's gate naming the limit, and
// change nothing: 2^62 units of a sale (which made HQ's reports overflow), a negative price, a
// discount larger than the line, a ledger entry of 2^62 cents, a stock movement of 2^40 units.
#[test]
fn absurd_quantities_and_amounts_from_any_node_are_refused_at_the_gate() {
    let mut w = world();
    let s1 = node("S001");
    let key = key_for("S001");
    let sales = stream("S001", Topic::Sales);
    let huge = sale(&s1, 2, 1 << 62);
    let mut negative = receipt(&s1, 3, 0, None, &[("cola", 1, -150)]);
    negative.payments.clear();
    let mut over_discounted = receipt(&s1, 4, 0, None, &[("cola", 1, 150)]);
    over_discounted.lines[0].discount_cents = 200;
    for (op, what) in [
        (huge, "quantity 4611686018427387904"),
        (Op::Receipt(negative), "unit price -150"),
        (Op::Receipt(over_discounted), "add up to 0"),
    ] {
        let before = fingerprint(&w.hq);
        let report =
            w.hq.apply_batch(&[forge_next(&w.hq, &sales, vec![op], &key)], Some(&s1), T1)
                .unwrap();
        assert!(
            matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { reason, .. }] if reason.contains(what)),
            "{what}: {:?}",
            report.rejected
        );
        assert_eq!(fingerprint(&w.hq), before);
    }
    let members = stream("S001", Topic::Members);
    let entry = chainsync::model::LedgerEntry {
        id: record("S001-L9"),
        member: member("M0"),
        account: chainsync::model::LedgerAccount::StoredValue,
        kind: chainsync::model::LedgerKind::ToppedUp,
        amount: 1 << 62,
        receipt: None,
        at_ms: 0,
        auth: None,
        tender: Some(chainsync::model::PaymentMethod::Cash),
        note: String::new(),
    };
    let report =
        w.hq.apply_batch(
            &[forge_next(&w.hq, &members, vec![Op::Ledger(entry)], &key)],
            Some(&s1),
            T1,
        )
        .unwrap();
    assert!(
        matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { reason, .. }] if reason.contains("beyond the limit")),
        "{:?}",
        report.rejected
    );
    // A profile from a store: a birthday pricing cannot read, a 1 kB name.
    for (fields, what) in [
        (
            vec![(ProfileField::Birthday, "1990-04-15".to_owned())],
            "is not MM-DD",
        ),
        (
            vec![(ProfileField::Name, "x".repeat(1000))],
            "longer than 200 bytes",
        ),
    ] {
        let edit = Op::MemberEdit(MemberEdit {
            member: member("M0"),
            hlc: Hlc::default(),
            fields,
        });
        let before = fingerprint(&w.hq);
        let report =
            w.hq.apply_batch(
                &[forge_next(&w.hq, &members, vec![edit], &key)],
                Some(&s1),
                T1,
            )
            .unwrap();
        assert!(
            matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { reason, .. }] if reason.contains(what)),
            "{what}: {:?}",
            report.rejected
        );
        assert_eq!(fingerprint(&w.hq), before);
    }
    let inventory = stream("S001", Topic::Inventory);
    let report =
        w.hq.apply_batch(
            &[forge_next(
                &w.hq,
                &inventory,
                vec![Op::Stock(received(&s1, 9, "cola", 1 << 40))],
                &key,
            )],
            Some(&s1),
            T1,
        )
        .unwrap();
    assert!(
        matches!(&report.rejected[..], [ChangeSetError::OpNotAllowed { reason, .. }] if reason.contains("at most 1000000")),
        "{:?}",
        report.rejected
    );
}

// An origin missing from the directory is UnknownOrigin; once HQ revokes a store, its change
// sets are Revoked at HQ and at stores that hold the new directory, and its session is refused.
#[test]
fn an_unknown_origin_and_a_revoked_store_are_refused() {
    let mut w = world();
    let stranger = stream("S999", Topic::Sales);
    let bad = forge(
        &stranger,
        1,
        ZERO_HASH,
        vec![sale(&node("S999"), 1, 1)],
        &key_for("S999"),
    );
    refused(
        &mut w.hq,
        bad.clone(),
        None,
        ChangeSetError::UnknownOrigin(node("S999")),
    );
    refused(
        &mut w.stores[0],
        bad,
        None,
        ChangeSetError::UnknownOrigin(node("S999")),
    );

    let s2 = node("S002");
    let mut info = w.hq.store_info(&s2).unwrap().unwrap();
    info.revoked = true;
    w.hq.commit_local(Topic::Directory, vec![Op::StoreUpsert(info)], T1)
        .unwrap();
    pull(&w.hq, &mut w.stores[0]);

    let sale2 = w.stores[1]
        .commit_local(Topic::Sales, vec![sale(&s2, 2, 1)], T1)
        .unwrap()
        .signed;
    refused(
        &mut w.hq,
        sale2,
        Some(&s2),
        ChangeSetError::Revoked(s2.clone()),
    );
    let m = member("M1");
    let ops = vec![Op::Ledger(points(&s2, 2, &m, 1_000))];
    let members = w.stores[1]
        .commit_local(Topic::Members, ops, T1)
        .unwrap()
        .signed;
    refused(
        &mut w.hq,
        members.clone(),
        Some(&s2),
        ChangeSetError::Revoked(s2.clone()),
    );
    refused(
        &mut w.stores[0],
        members,
        None,
        ChangeSetError::Revoked(s2.clone()),
    );

    let mut session = HubSession::new(NONCE, BINDING.to_vec());
    let hello = Frame::Hello {
        node: "S002".into(),
        cursors: vec![],
    };
    assert_eq!(
        session.handle(T1, hello, &mut w.hq).unwrap_err(),
        SessionError::Revoked(s2)
    );
}

// Size and shape: a body over the limit is TooLarge; garbage, trailing bytes after a valid body,
// another format, seq 0, no ops or too many ops are Malformed, even when validly signed.
#[test]
fn oversized_garbage_and_misshapen_bodies_are_refused() {
    let mut w = world();
    let s1 = node("S001");
    let key = key_for("S001");
    let sales = stream("S001", Topic::Sales);
    let huge = SignedChangeSet {
        body: vec![0; CHANGE_SET_BYTES_MAX + 1],
        sig: [0; 64],
    };
    refused(
        &mut w.hq,
        huge,
        Some(&s1),
        ChangeSetError::TooLarge {
            bytes: CHANGE_SET_BYTES_MAX + 1,
            max: CHANGE_SET_BYTES_MAX,
        },
    );

    let mut trailing = forge_next(&w.hq, &sales, vec![sale(&s1, 2, 1)], &key).body;
    trailing.push(0);
    let shaped = |format: u16, seq: u64, ops: Vec<Op>| {
        let cs = ChangeSet {
            format,
            stream: sales.clone(),
            seq,
            prev: ZERO_HASH,
            hlc: Hlc::default(),
            ops,
        };
        SignedChangeSet::sign(&cs, &key).unwrap()
    };
    let too_many = vec![
        Op::PriceRemove {
            id: record("S001-1")
        };
        CHANGE_SET_OPS_MAX + 1
    ];
    let cases = [
        (sign_raw(b"this is not a change set".to_vec(), &key), ""),
        (sign_raw(vec![0xff; 64], &key), ""),
        (sign_raw(Vec::new(), &key), ""),
        (sign_raw(trailing, &key), "trailing"),
        (
            shaped(CHANGE_SET_FORMAT + 1, 2, vec![sale(&s1, 2, 1)]),
            "format",
        ),
        (shaped(CHANGE_SET_FORMAT, 0, vec![sale(&s1, 2, 1)]), "seq 0"),
        (shaped(CHANGE_SET_FORMAT, 2, vec![]), "0 ops"),
        (shaped(CHANGE_SET_FORMAT, 2, too_many), "ops"),
    ];
    for (bad, says) in cases {
        let before = fingerprint(&w.hq);
        let report = w.hq.apply_batch(&[bad], Some(&s1), T1).unwrap();
        assert!(
            matches!(&report.rejected[..], [ChangeSetError::Malformed(m)] if m.contains(says)),
            "expected Malformed naming {says:?}: {:?}",
            report.rejected
        );
        assert_eq!(fingerprint(&w.hq), before);
    }
    assert_eq!(halted(&w.hq, &sales), None);
}

// A local write that breaks the gate's rules is refused as ReplicaError::Refused with the typed
// reason, and nothing is written: no head moves, the outbox stays as it was.
#[test]
fn a_local_write_that_breaks_the_rules_is_refused_and_writes_nothing() {
    let mut w = world();
    let s1 = node("S001");
    let product = Product {
        sku: sku("cola"),
        name: "Cola".into(),
        category: "drinks".into(),
        barcodes: vec![],
        unit_cost_cents: 50,
        active: true,
    };
    let before = fingerprint(&w.stores[0]);
    let outbox_before = w.stores[0].outbox(100, usize::MAX).unwrap();

    let err = w.stores[0]
        .commit_local(Topic::Catalog, vec![Op::ProductUpsert(product)], T1)
        .unwrap_err();
    assert!(
        matches!(&err, ReplicaError::Refused(ChangeSetError::TopicNotAllowed { origin, topic: Topic::Catalog })
            if *origin == s1),
        "{err:?}"
    );
    assert_eq!(
        w.stores[0].head(&stream("S001", Topic::Catalog)).unwrap(),
        StreamHead::EMPTY
    );

    let mut other = receipt(&s1, 2, 0, None, &[("cola", 1, 150)]);
    other.store = node("S002");
    let err = w.stores[0]
        .commit_local(Topic::Sales, vec![Op::Receipt(other)], T1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::Refused(ChangeSetError::OpNotAllowed {
                seq: 2,
                index: 0,
                ..
            })
        ),
        "{err:?}"
    );

    let err = w.stores[0]
        .commit_local(Topic::Sales, vec![], T1)
        .unwrap_err();
    assert!(
        matches!(err, ReplicaError::Refused(ChangeSetError::Malformed(_))),
        "{err:?}"
    );

    let err =
        w.hq.commit_local(Topic::Sales, vec![sale(&NodeId::hq(), 1, 1)], T1)
            .unwrap_err();
    assert!(
        matches!(&err, ReplicaError::Refused(ChangeSetError::TopicNotAllowed { origin, topic: Topic::Sales })
            if origin.is_hq()),
        "{err:?}"
    );

    assert_eq!(
        w.hq.head(&stream("hq", Topic::Sales)).unwrap(),
        StreamHead::EMPTY
    );

    assert_eq!(fingerprint(&w.stores[0]), before);
    assert_eq!(w.stores[0].outbox(100, usize::MAX).unwrap(), outbox_before);
    assert_eq!(halted(&w.stores[0], &stream("S001", Topic::Sales)), None);
    // The next good write takes the seq the refused ones did not use.
    let ok = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 1)], T1)
        .unwrap();
    assert_eq!(ok.seq, 2);
    w.stores[0].audit().unwrap();
}

// A frame cut short is reported as Truncated when the input ends.
#[test]
fn a_truncated_frame_is_reported_at_end_of_input() {
    let bytes = encode_frame(&Frame::Hello {
        node: "S001".into(),
        cursors: vec![],
    })
    .unwrap();
    for cut in [1, 3, 4, bytes.len() - 1] {
        let mut decoder = FrameDecoder::default();
        decoder.push(&bytes[..cut]).unwrap();
        assert_eq!(decoder.next_frame().unwrap(), None);
        let need = if cut < 4 { 4 } else { bytes.len() };
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated { have: cut, need })
        );
    }
}

// A length prefix over the limit is refused as soon as the prefix is in, before any payload.
#[test]
fn an_oversized_length_prefix_is_refused_before_buffering() {
    for len in [FRAME_BYTES_MAX as u32 + 1, u32::MAX] {
        let mut decoder = FrameDecoder::default();
        let err = decoder.push(&len.to_be_bytes()).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: len as usize,
                max: FRAME_BYTES_MAX
            }
        );
        assert_eq!(decoder.next_frame().unwrap_err(), err);
    }
    // A frame exactly at the limit is announced without complaint.
    let mut decoder = FrameDecoder::default();
    decoder
        .push(&(FRAME_BYTES_MAX as u32).to_be_bytes())
        .unwrap();
    assert_eq!(decoder.next_frame().unwrap(), None);
}

// Payloads that are not frames are Malformed (or a Version error when the version is another),
// and so is a good frame followed by trailing bytes.
#[test]
fn garbage_payloads_are_malformed_or_another_version() {
    assert!(matches!(decode_payload(&[]), Err(FrameError::Malformed(_))));
    assert!(matches!(
        decode_payload(&[0xff, 0xff, 0xff, 0xff]),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode_payload(&[PROTOCOL_VERSION as u8, 99]),
        Err(FrameError::Malformed(_))
    ));
    assert!(matches!(
        decode_payload(&[PROTOCOL_VERSION as u8, 0]),
        Err(FrameError::Malformed(_))
    ));
    assert_eq!(
        decode_payload(&[9, 0]),
        Err(FrameError::Version {
            got: 9,
            supported: PROTOCOL_VERSION
        })
    );

    let good = encode_frame(&Frame::Pull {
        cursors: vec![],
        seeding: vec![],
    })
    .unwrap();
    let mut longer = good[4..].to_vec();
    longer.push(0);
    let mut framed = (longer.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&longer);
    let mut decoder = FrameDecoder::default();
    decoder.push(&framed).unwrap();
    assert!(
        matches!(decoder.next_frame(), Err(FrameError::Malformed(m)) if m.contains("trailing"))
    );
    // The bad frame is consumed: a good one after it still decodes.
    decoder.push(&good).unwrap();
    assert_eq!(
        decoder.next_frame().unwrap(),
        Some(Frame::Pull {
            cursors: vec![],
            seeding: vec![],
        })
    );
}

// HQ's session accepts nothing before Hello and Auth, refuses an unknown node and a signature
// from the wrong key (or over another TLS binding), and none of it touches HQ's data.
#[test]
fn the_hub_session_refuses_out_of_turn_frames_unknown_nodes_and_wrong_keys() {
    let mut w = world();
    let before = fingerprint(&w.hq);

    let mut session = HubSession::new(NONCE, BINDING.to_vec());
    let err = session
        .handle(
            T1,
            Frame::Push {
                change_sets: vec![],
            },
            &mut w.hq,
        )
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::Unexpected {
            frame: "Push",
            state: "waiting for Hello"
        }
    );

    for name in ["S999", "not a node!"] {
        let mut session = HubSession::new(NONCE, BINDING.to_vec());
        let err = session
            .handle(
                T1,
                Frame::Hello {
                    node: name.into(),
                    cursors: vec![],
                },
                &mut w.hq,
            )
            .unwrap_err();
        assert!(matches!(err, SessionError::NotEnrolled(_)), "{err:?}");
    }

    let wrong_key = key_for("S002")
        .sign(&auth_message(&NONCE, BINDING))
        .to_bytes()
        .to_vec();
    let wrong_binding = key_for("S001")
        .sign(&auth_message(&NONCE, b"other"))
        .to_bytes()
        .to_vec();
    let short = vec![0; 10];
    for signature in [wrong_key, wrong_binding, short] {
        let mut session = HubSession::new(NONCE, BINDING.to_vec());
        let out = session
            .handle(
                T1,
                Frame::Hello {
                    node: "S001".into(),
                    cursors: vec![],
                },
                &mut w.hq,
            )
            .unwrap();
        assert_eq!(out.frames, vec![Frame::Challenge { nonce: NONCE }]);
        let err = session
            .handle(
                T1,
                Frame::Pull {
                    cursors: vec![],
                    seeding: vec![],
                },
                &mut w.hq,
            )
            .unwrap_err();
        assert_eq!(
            err,
            SessionError::Unexpected {
                frame: "Pull",
                state: "waiting for Auth"
            }
        );
        let err = session
            .handle(T1, Frame::Auth { signature }, &mut w.hq)
            .unwrap_err();
        assert_eq!(err, SessionError::AuthFailed(node("S001")));
        assert!(session.peer().is_none());
    }
    assert_eq!(fingerprint(&w.hq), before);
}

// Once authenticated, a bad change set inside a good Push is refused alone and reported in the
// PushAck; a Push whose wire form is broken ends the session with a frame error.
#[test]
fn an_authenticated_push_with_bad_content_changes_nothing() {
    let mut w = world();
    let s1 = node("S001");
    let mut session = HubSession::new(NONCE, BINDING.to_vec());
    session
        .handle(
            T1,
            Frame::Hello {
                node: "S001".into(),
                cursors: vec![],
            },
            &mut w.hq,
        )
        .unwrap();
    let signature = key_for("S001")
        .sign(&auth_message(&NONCE, BINDING))
        .to_bytes()
        .to_vec();
    let out = session
        .handle(T1, Frame::Auth { signature }, &mut w.hq)
        .unwrap();
    assert!(matches!(out.frames[..], [Frame::Welcome { .. }]));
    let before = fingerprint(&w.hq);

    let mut tampered = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 1)], T1)
        .unwrap()
        .signed;
    tampered.sig[0] ^= 1;
    let push = Frame::Push {
        change_sets: vec![WireChangeSet::from_signed(&tampered)],
    };
    let out = session.handle(T1, push, &mut w.hq).unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert!(out.moved.is_empty());
    assert!(matches!(&out.frames[..], [Frame::PushAck { rejected, .. }] if rejected.len() == 1));
    assert_eq!(fingerprint(&w.hq), before);

    let short_sig = WireChangeSet {
        body: tampered.body,
        sig: vec![0; 10],
    };
    let err = session
        .handle(
            T1,
            Frame::Push {
                change_sets: vec![short_sig],
            },
            &mut w.hq,
        )
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Frame(FrameError::Malformed(_))),
        "{err:?}"
    );
    assert_eq!(fingerprint(&w.hq), before);
}

/// HQ's chain price stream with a removal and an update, so a snapshot of it is compacted.
fn more_prices(hq: &mut Replica) -> StreamId {
    let topic = Topic::Prices(Scope::Chain);
    hq.commit_local(
        topic.clone(),
        vec![Op::PriceUpsert(price("hq-p2", Scope::Chain, "chips", 200))],
        T1,
    )
    .unwrap();
    hq.commit_local(
        topic.clone(),
        vec![Op::PriceUpsert(price("hq-p1", Scope::Chain, "cola", 160))],
        T1,
    )
    .unwrap();
    hq.commit_local(
        topic.clone(),
        vec![Op::PriceRemove {
            id: record("hq-p2"),
        }],
        T1,
    )
    .unwrap();
    StreamId::new(NodeId::hq(), topic)
}

// A snapshot with a flipped body bit, one signed by a store, and garbage are refused with their
// typed error, and loading them changes nothing.
#[test]
fn a_tampered_or_store_signed_snapshot_is_refused() {
    let mut w = world();
    let prices = more_prices(&mut w.hq);
    let genuine = w.hq.snapshot(&prices).unwrap();
    let hq_key = w.chain.hq_key.verifying_key();

    let mut flipped = genuine.clone();
    let at = position(&flipped.body, b"cola");
    flipped.body[at] ^= 0x20;
    let resigned = SignedSnapshot {
        body: genuine.body.clone(),
        sig: key_for("S001")
            .sign(&[SNAPSHOT_SIG_PREFIX, &genuine.body].concat())
            .to_bytes(),
    };
    let by_hand = Snapshot {
        format: CHANGE_SET_FORMAT,
        stream: prices.clone(),
        seq: 4,
        head_hash: w.hq.head(&prices).unwrap().hash,
        hlc: Hlc::default(),
        part: 0,
        parts: 1,
        ops: vec![Op::PriceUpsert(price("hq-p1", Scope::Chain, "cola", 1))],
    };
    let store_signed = SignedSnapshot::sign(&by_hand, &key_for("S001")).unwrap();
    // A store's replica signs snapshots with its own key: no use to anyone else.
    let s1_sales = stream("S001", Topic::Sales);
    let own = w.stores[0].snapshot(&s1_sales).unwrap();
    let mut trailing = genuine.clone();
    trailing.body.push(0);
    let garbage = SignedSnapshot {
        body: b"snapshot? no".to_vec(),
        sig: genuine.sig,
    };

    let dir = tempfile::tempdir().unwrap();
    let fresh_chain = Chain::new(dir.path(), 3, 2, Durability::Relaxed);
    let mut fresh = fresh_chain.open_store(&node("S003"));
    for replica in [&mut fresh, &mut w.stores[2]] {
        let before = fingerprint(replica);
        for (bad, stream) in [
            (&flipped, &prices),
            (&resigned, &prices),
            (&store_signed, &prices),
            (&own, &s1_sales),
        ] {
            let err = validate::validate_snapshot(bad, &hq_key).unwrap_err();
            assert_eq!(err, SnapshotError::BadSignature(stream.clone()));
            let err = replica.load_snapshot(bad, T1).unwrap_err();
            assert!(
                matches!(&err, ReplicaError::Snapshot(SnapshotError::BadSignature(s)) if s == stream),
                "{err:?}"
            );
        }
        for bad in [&trailing, &garbage] {
            let err = replica.load_snapshot(bad, T1).unwrap_err();
            assert!(
                matches!(err, ReplicaError::Snapshot(SnapshotError::Malformed(_))),
                "{err:?}"
            );
        }
        assert_eq!(fingerprint(replica), before);
    }
    assert_eq!(fresh.head(&prices).unwrap(), StreamHead::EMPTY);
}

// An HQ-signed snapshot holding an op its stream's origin may not write is OpNotAllowed.
#[test]
fn a_snapshot_with_an_op_its_origin_does_not_own_is_refused() {
    let mut w = world();
    let s1_sales = stream("S001", Topic::Sales);
    let snapshot = Snapshot {
        format: CHANGE_SET_FORMAT,
        stream: s1_sales.clone(),
        seq: 5,
        head_hash: [1; 32],
        hlc: Hlc::default(),
        part: 0,
        parts: 1,
        ops: vec![sale(&node("S002"), 7, 1)],
    };
    let signed = SignedSnapshot::sign(&snapshot, &w.chain.hq_key).unwrap();
    let before = fingerprint(&w.stores[2]);
    let err = w.stores[2].load_snapshot(&signed, T1).unwrap_err();
    assert!(
        matches!(&err, ReplicaError::Snapshot(SnapshotError::OpNotAllowed { stream, .. }) if *stream == s1_sales),
        "{err:?}"
    );
    assert_eq!(fingerprint(&w.stores[2]), before);
}

// A valid HQ snapshot seeds a fresh store replica (directory, prices, another store's stock and
// sales): afterwards it matches HQ, the next change set of each stream applies on top, a snapshot
// at or behind its head changes nothing, and the seeded log audits clean.
#[test]
fn a_valid_snapshot_seeds_a_fresh_store_that_then_follows_the_stream() {
    let mut w = world();
    let s1 = node("S001");
    let prices = more_prices(&mut w.hq);
    let streams = [
        stream("hq", Topic::Directory),
        prices.clone(),
        stream("S001", Topic::Inventory),
        stream("S001", Topic::Sales),
    ];

    let dir = tempfile::tempdir().unwrap();
    let fresh_chain = Chain::new(dir.path(), 3, 2, Durability::Relaxed);
    let mut fresh = fresh_chain.open_store(&node("S003"));
    for s in &streams {
        let head = w.hq.head(s).unwrap();
        let loaded = fresh.load_snapshot(&w.hq.snapshot(s).unwrap(), T1).unwrap();
        assert!(
            matches!(loaded, SnapshotLoad::Loaded { seq, .. } if seq == head.seq),
            "{loaded:?}"
        );
        assert_eq!(fresh.head(s).unwrap(), head);
    }
    assert_eq!(
        fresh.price_entries().unwrap(),
        w.hq.price_entries().unwrap()
    );
    assert_eq!(
        fresh.price_entries().unwrap().len(),
        1,
        "the removed entry stays removed"
    );
    assert_eq!(
        fresh.stock_rows(Some(&s1)).unwrap(),
        w.hq.stock_rows(Some(&s1)).unwrap()
    );
    assert_eq!(
        fresh.receipt_ids(&s1).unwrap(),
        w.hq.receipt_ids(&s1).unwrap()
    );
    assert_eq!(fresh.store_ids().unwrap(), w.hq.store_ids().unwrap());

    // The next change sets apply on top.
    let next_price =
        w.hq.commit_local(
            prices.topic.clone(),
            vec![Op::PriceUpsert(price("hq-p3", Scope::Chain, "tea", 90))],
            T1,
        )
        .unwrap();
    let next_sale = w.stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 2, 5)], T1)
        .unwrap();
    push(&mut w.hq, &mut w.stores[0]);
    let report = fresh
        .apply_batch(&[next_price.signed, next_sale.signed], None, T1)
        .unwrap();
    assert_eq!(
        report.applied,
        vec![
            (prices.clone(), next_price.seq),
            (next_sale.stream, next_sale.seq)
        ]
    );
    assert_eq!(
        fresh.price_entries().unwrap(),
        w.hq.price_entries().unwrap()
    );
    assert_eq!(
        fresh.stock_rows(Some(&s1)).unwrap(),
        w.hq.stock_rows(Some(&s1)).unwrap()
    );

    // An older snapshot changes nothing.
    let before = fingerprint(&fresh);
    let old = w.hq.snapshot(&stream("hq", Topic::Directory)).unwrap();
    assert!(matches!(
        fresh.load_snapshot(&old, T1).unwrap(),
        SnapshotLoad::AlreadyAhead { .. }
    ));
    assert_eq!(fingerprint(&fresh), before);
    fresh.audit().unwrap();
}

// After a store's key is replaced, the old key verifies only what it signed before: a change set
// it signs past that point is a bad signature and changes nothing; the new key's is applied.
#[test]
fn a_retired_key_signs_nothing_after_the_replacement() {
    let mut w = world();
    let s1 = node("S001");
    let sales = stream("S001", Topic::Sales);
    let head = w.hq.head(&sales).unwrap();
    let new_key = key_for("S001-replacement");
    w.hq.update_store(&s1, T1, |info| {
        info.retired_keys.push(chainsync::model::RetiredKey {
            public_key: info.public_key,
            valid_through: vec![(Topic::Sales, head.seq)],
        });
        info.public_key = new_key.verifying_key().to_bytes();
    })
    .unwrap();
    let before = fingerprint(&w.hq);
    let by_old = forge(
        &sales,
        head.seq + 1,
        head.hash,
        vec![sale(&s1, 77, 1)],
        &key_for("S001"),
    );
    let report = w.hq.apply_batch(&[by_old], Some(&s1), T1).unwrap();
    assert!(
        matches!(&report.rejected[..], [ChangeSetError::BadSignature { seq, .. }] if *seq == head.seq + 1),
        "{:?}",
        report.rejected
    );
    let mut after = fingerprint(&w.hq);
    after.heads.retain(|(s, _)| s.topic != Topic::Directory);
    let mut expected = before;
    expected.heads.retain(|(s, _)| s.topic != Topic::Directory);
    assert_eq!(after, expected);
    let by_new = forge(
        &sales,
        head.seq + 1,
        head.hash,
        vec![sale(&s1, 78, 1)],
        &new_key,
    );
    let report = w.hq.apply_batch(&[by_new], Some(&s1), T1).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(w.hq.head(&sales).unwrap().seq, head.seq + 1);
}
