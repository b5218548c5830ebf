//! HQ restored from an older backup takes its later history back from the stores before it
//! writes again (`chainsync::replica` reclaim, `Reclaim`/`Returned` frames), through the real
//! session state machines and codec (`protocol::local`); and a store one protocol version
//! behind keeps syncing with the new HQ.

use chainsync::changeset::Op;
use chainsync::ids::{NodeId, Scope, StreamId, Topic};
use chainsync::model::{PriceEntry, PriceKind};
use chainsync::protocol::frame::{
    Frame, FrameError, PROTOCOL_VERSION, PROTOCOL_VERSION_OLDEST, decode_payload, encode_frame,
    encode_frame_as,
};
use chainsync::protocol::local::{sync_pair, sync_pair_speaking};
use chainsync::replica::{Durability, Replica, ReplicaError};
use chainsync::transport::backups;
use chainsync_tests::{Chain, node, receipt, record, sku};

const T0: u64 = 1_700_000_000_000;

fn price(n: u64, cents: i64) -> Op {
    Op::PriceUpsert(PriceEntry {
        id: record(&format!("hq-P{n}")),
        sku: sku("cola"),
        scope: Scope::Chain,
        kind: PriceKind::Retail,
        price_cents: cents,
        effective_from_ms: 0,
        effective_to_ms: None,
    })
}

fn sale(store: &NodeId, n: u64) -> Op {
    Op::Receipt(receipt(store, n, T0 as i64, None, &[("cola", 1, 150)]))
}

fn chain_prices() -> StreamId {
    StreamId::new(NodeId::hq(), Topic::Prices(Scope::Chain))
}

fn sync(chain: &Chain, hq: &mut Replica, store: &mut Replica) {
    let key = chain.store_key(store.node());
    sync_pair(hq, store, key, T0 + 1_000).expect("session");
}

/// An online backup of HQ's database, as `hq-server backup now` takes it.
fn backup_hq(chain: &Chain) -> std::path::PathBuf {
    backups::backup_now(
        &chain.db_path(&NodeId::hq()),
        &chain.dir.join("backups"),
        "hq",
        T0,
    )
    .unwrap()
    .path
}

/// HQ's database replaced by `backup` (HQ's replica closed before), opened again.
fn restore_hq(chain: &Chain, backup: &std::path::Path) -> Replica {
    backups::restore(backup, &chain.db_path(&NodeId::hq())).unwrap();
    chain.open_hq()
}

fn assert_healthy(replicas: &[&Replica]) {
    for r in replicas {
        r.audit()
            .unwrap_or_else(|e| panic!("audit of {}: {e}", r.node()));
        assert!(
            r.halted_streams().unwrap().is_empty(),
            "{} halted {:?}",
            r.node(),
            r.halted_streams().unwrap()
        );
    }
}

/// HQ makes prices 1-3, both stores hold them, HQ is backed up; then HQ makes 4 (both stores
/// hear) and 5 (only S001 hears), and S001 sells two receipts HQ takes. HQ is restored from the
/// backup: it refuses to write until S002 has returned price 4 and S001 price 5 (and pushed its
/// receipts again); then it writes price 6 on top of 5, which both stores take without a fork.
#[test]
fn hq_restored_from_an_older_backup_takes_its_history_back_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 2, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (s1, s2) = (node("S001"), node("S002"));
    for n in 1..=3 {
        hq.commit_local(
            Topic::Prices(Scope::Chain),
            vec![price(n, 100 + n as i64)],
            T0,
        )
        .unwrap();
    }
    for store in stores.iter_mut() {
        sync(&chain, &mut hq, store);
    }
    let backup = backup_hq(&chain);

    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(4, 104)], T0)
        .unwrap();
    for store in stores.iter_mut() {
        sync(&chain, &mut hq, store);
    }
    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(5, 105)], T0)
        .unwrap();
    stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 1), sale(&s1, 2)], T0)
        .unwrap();
    sync(&chain, &mut hq, &mut stores[0]);
    assert_eq!(hq.receipt_count().unwrap(), 2);
    assert_eq!(stores[0].head(&chain_prices()).unwrap().seq, 5);
    drop(hq);

    let mut hq = restore_hq(&chain, &backup);
    hq.begin_reclaim(T0 + 2_000).unwrap();
    assert_eq!(hq.head(&chain_prices()).unwrap().seq, 3);
    assert_eq!(hq.receipt_count().unwrap(), 0);
    let refused = hq.commit_local(Topic::Prices(Scope::Chain), vec![price(6, 106)], T0);
    assert!(
        matches!(&refused, Err(ReplicaError::Restoring(m)) if m.contains("reclaim status")),
        "{refused:?}"
    );

    // S002 held price 4: returned; HQ still waits for S001.
    sync(&chain, &mut hq, &mut stores[1]);
    assert_eq!(hq.head(&chain_prices()).unwrap().seq, 4);
    let status = hq.reclaim_status().unwrap();
    assert!(status.since_ms.is_some());
    assert_eq!(status.stores_returned, vec![s2.clone()]);
    assert_eq!(status.stores_waiting, vec![s1.clone()]);
    assert!(hq.is_reclaiming().unwrap());
    assert!(
        hq.commit_local(Topic::Prices(Scope::Chain), vec![price(6, 106)], T0)
            .is_err()
    );

    // S001 returns price 5 and pushes its receipts again: the reclaim ends by itself.
    sync(&chain, &mut hq, &mut stores[0]);
    assert_eq!(hq.head(&chain_prices()).unwrap().seq, 5);
    assert_eq!(hq.receipt_count().unwrap(), 2);
    let status = hq.reclaim_status().unwrap();
    assert_eq!(status.since_ms, None, "{status:?}");
    assert!(status.ended_ms.is_some());
    assert!(status.streams_behind.is_empty());

    // HQ writes on from the highest seq any store held; both stores take it.
    let six = hq
        .commit_local(Topic::Prices(Scope::Chain), vec![price(6, 106)], T0)
        .unwrap();
    assert_eq!(six.seq, 6);
    for store in stores.iter_mut() {
        sync(&chain, &mut hq, store);
    }
    for store in &stores {
        assert_eq!(store.head(&chain_prices()).unwrap().seq, 6);
    }
    assert_eq!(stores[0].receipt_count().unwrap(), 2);
    assert_healthy(&[&hq, &stores[0], &stores[1]]);
}

/// Without the reclaim, the same restore forks HQ's stream: the check that the test above
/// guards something real. HQ writes twice at once after the restore; the store that held the
/// later change set halts the stream (HQ's second one does not chain on what it holds).
#[test]
fn writing_at_once_after_a_restore_forks_the_stream_at_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(1, 101)], T0)
        .unwrap();
    let backup = backup_hq(&chain);
    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(2, 102)], T0)
        .unwrap();
    sync(&chain, &mut hq, &mut stores[0]);
    drop(hq);
    let mut hq = restore_hq(&chain, &backup);
    for n in 3..=4 {
        hq.commit_local(
            Topic::Prices(Scope::Chain),
            vec![price(n, 100 + n as i64)],
            T0,
        )
        .unwrap();
    }
    sync(&chain, &mut hq, &mut stores[0]);
    let halted = stores[0].halted_streams().unwrap();
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert_eq!(halted[0].stream, chain_prices());
}

/// A store one protocol version behind (2) keeps pushing and pulling with the new HQ, which
/// answers it in version 2 and never sends it a frame version 2 lacks: during a reclaim it is
/// not asked to return anything, and HQ keeps waiting for it.
#[test]
fn a_store_one_protocol_version_behind_keeps_syncing_and_is_not_asked_to_return() {
    assert_eq!(PROTOCOL_VERSION_OLDEST + 1, PROTOCOL_VERSION);
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let s1 = node("S001");
    let key = chain.store_key(&s1);
    let old = PROTOCOL_VERSION_OLDEST;

    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(1, 101)], T0)
        .unwrap();
    stores[0]
        .commit_local(Topic::Sales, vec![sale(&s1, 1)], T0)
        .unwrap();
    let backup = backup_hq(&chain);
    let stats = sync_pair_speaking(&mut hq, &mut stores[0], key.clone(), T0, T0, old).unwrap();
    assert_eq!((stats.pushed, stats.pulled), (1, 1));
    assert_eq!(hq.receipt_count().unwrap(), 1);
    assert_eq!(stores[0].head(&chain_prices()).unwrap().seq, 1);

    hq.commit_local(Topic::Prices(Scope::Chain), vec![price(2, 102)], T0)
        .unwrap();
    sync_pair_speaking(&mut hq, &mut stores[0], key.clone(), T0, T0, old).unwrap();
    drop(hq);
    let mut hq = restore_hq(&chain, &backup);
    hq.begin_reclaim(T0).unwrap();
    // The old store syncs (its receipt comes back by its own push) but cannot return price 2:
    // had HQ sent it a Reclaim, the session would have failed on a frame of version 3.
    sync_pair_speaking(&mut hq, &mut stores[0], key.clone(), T0, T0, old).unwrap();
    assert_eq!(hq.receipt_count().unwrap(), 1);
    assert_eq!(hq.head(&chain_prices()).unwrap().seq, 1);
    let status = hq.reclaim_status().unwrap();
    assert_eq!(status.stores_waiting, vec![s1.clone()]);
    assert_eq!(status.streams_behind.len(), 1, "{status:?}");
    assert!(hq.is_reclaiming().unwrap());
    // Upgraded to this version, it returns price 2 and the reclaim ends.
    sync_pair_speaking(&mut hq, &mut stores[0], key, T0, T0, PROTOCOL_VERSION).unwrap();
    assert_eq!(hq.head(&chain_prices()).unwrap().seq, 2);
    assert!(!hq.is_reclaiming().unwrap());
    assert_healthy(&[&hq, &stores[0]]);
}

/// The codec: frames of the oldest accepted version decode; a frame that version lacks is
/// neither written for it nor accepted in it; a version outside the range is refused.
#[test]
fn frames_of_the_previous_version_decode_and_later_frames_are_not_sent_to_it() {
    let reclaim = Frame::Reclaim { cursors: vec![] };
    let pull = Frame::Pull {
        cursors: vec![],
        seeding: vec![],
    };
    let old = encode_frame_as(&pull, PROTOCOL_VERSION_OLDEST).unwrap();
    assert_eq!(old[4], PROTOCOL_VERSION_OLDEST as u8);
    assert_eq!(decode_payload(&old[4..]).unwrap(), pull);
    assert_eq!(
        encode_frame_as(&reclaim, PROTOCOL_VERSION_OLDEST),
        Err(FrameError::NotInVersion {
            frame: "Reclaim",
            version: PROTOCOL_VERSION_OLDEST
        })
    );
    let mut forged = encode_frame(&reclaim).unwrap();
    forged[4] = PROTOCOL_VERSION_OLDEST as u8;
    assert!(matches!(
        decode_payload(&forged[4..]),
        Err(FrameError::NotInVersion { .. })
    ));
    let mut ancient = old.clone();
    ancient[4] = (PROTOCOL_VERSION_OLDEST - 1) as u8;
    assert!(matches!(
        decode_payload(&ancient[4..]),
        Err(FrameError::Version { .. })
    ));
}
