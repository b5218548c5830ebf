//! Benchmark: seeding a new store from snapshots, and a store coming back from a long offline
//! spell, over real QUIC on loopback and through a bundle file.
//!
//! Run: `cargo bench -p chainsync-tests --bench offline` (readable lines, then one JSON line), or
//! `-- --json` for the JSON line alone. `OFFLINE_MEMBERS`, `OFFLINE_SKUS` and `OFFLINE_RECEIPTS`
//! change the sizes (defaults 500,000, 50,000 and 20,000).
//!
//! HQ (`hq_server::serve::serve`) and the agents (`store_agent::run::run`, realtime) run in this
//! process on one tokio runtime, with their own SQLite files (`synchronous=FULL`). Measured:
//!
//! 1. **Seeding** (`seed_s`): HQ holds the skus, a chain price for each and the members; a new
//!    store enrolls and starts; the time until it holds every stream it follows at HQ's head
//!    (its catalog, prices and members arrive as HQ-signed snapshot parts). Baseline in the same
//!    run (`seed_local_s`): loading the same snapshot parts into a fresh replica in process, no
//!    network, no session.
//! 2. **Reconnect** (`reconnect_s`): that store's agent stops, `OFFLINE_RECEIPTS` sales are
//!    committed to its replica as the POS would (one change set each), the agent starts again;
//!    the time until HQ holds all of them.
//! 3. **Bundle** (`bundle_export_s`, `bundle_import_s`): a second store with as many offline
//!    sales writes its bundle file; HQ imports it (all or nothing, in one transaction).
//!
//! Baseline for 2 and 3 (`plain_insert_s`): the same number of receipt rows inserted into a bare
//! SQLite table in one transaction. Targets (noted, not asserted): reconnect under 3 s, seeding
//! under 30 s.

use chainsync::changeset::Op;
use chainsync::hlc::Hlc;
use chainsync::ids::{NodeId, StreamId, Topic};
use chainsync::model::{MemberEdit, ProfileField, StoreMode};
use chainsync::replica::{Durability, Identity, PendingStore, Replica};
use chainsync_tests::bench::{env_or, round3};
use chainsync_tests::e2e::enroll_in_process;
use serde_json::json;
use std::time::{Duration, Instant};
use store_agent::config::AgentDir;

const WAIT: Duration = Duration::from_secs(600);
/// Ops per change set when HQ writes the catalog, prices and members.
const OPS_PER_CHANGE_SET: usize = 1_000;

fn main() {
    let json_only = std::env::args().any(|a| a == "--json");
    let say = |line: String| {
        if !json_only {
            println!("{line}");
        }
    };
    let members = env_or("OFFLINE_MEMBERS", 500_000);
    let skus = env_or("OFFLINE_SKUS", 50_000);
    let receipts = env_or("OFFLINE_RECEIPTS", 20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // HQ with the catalog, prices, members and two pending stores.
    let (hq_dir, hq_state, quic, api) = chainsync_tests::e2e::hq_in_process(dir.path());
    let setup = Instant::now();
    let stores: Vec<(PendingStore, String)> = (1..=2)
        .map(|i| {
            let store = PendingStore {
                id: NodeId::new(format!("S{i:04}")).expect("id"),
                name: format!("Store {i}"),
                region: chainsync_tests::region("north"),
                mode: StoreMode::Realtime,
            };
            (store, format!("offline-bench-token-{i:04}-0123456789"))
        })
        .collect();
    {
        let mut hq = hq_dir.open_replica(&hq_state.key).expect("hq replica");
        chainsync_tests::e2e::write_catalog(&mut hq, skus, OPS_PER_CHANGE_SET, |_| {
            "grocery".into()
        });
        for chunk in (0..members).collect::<Vec<_>>().chunks(OPS_PER_CHANGE_SET) {
            let edits = chunk.iter().map(|i| {
                Op::MemberEdit(MemberEdit {
                    member: chainsync_tests::member(&format!("M{i:07}")),
                    hlc: Hlc::default(),
                    fields: vec![
                        (ProfileField::Name, format!("Member {i}")),
                        (ProfileField::Phone, format!("555-{i:07}")),
                    ],
                })
            });
            hq.commit_local(Topic::Members, edits.collect(), 1)
                .expect("members");
        }
        for (store, token) in &stores {
            hq.add_store(store, token, 1).expect("add store");
        }
    }
    say(format!(
        "HQ holds {skus} skus with prices and {members} members ({:.1} s to write)",
        setup.elapsed().as_secs_f64()
    ));
    let (stop_hq, hq_shutdown) = tokio::sync::watch::channel(false);
    let serve = {
        let hq_dir = hq_dir.clone();
        runtime.spawn(async move { hq_server::serve::serve(&hq_dir, hq_shutdown).await })
    };
    wait_for("HQ to listen", || {
        std::net::TcpStream::connect(api).ok().map(|_| ())
    });
    let hq_read = hq_dir.open_replica(&hq_state.key).expect("hq reader");

    // Enroll both stores through the real path.
    let agents: Vec<(AgentDir, ed25519_dalek::SigningKey)> = stores
        .iter()
        .map(|(store, token)| {
            enroll_in_process(&runtime, &hq_state, quic, &store.id, token, dir.path())
        })
        .collect();

    // 1. Seeding S0001 over QUIC.
    let (agent_dir, key) = &agents[0];
    let s1 = stores[0].0.id.clone();
    let started = Instant::now();
    let (stop_agent, agent_shutdown) = tokio::sync::watch::channel(false);
    let task = {
        let agent_dir = agent_dir.clone();
        runtime.spawn(async move { store_agent::run::run(&agent_dir, agent_shutdown).await })
    };
    let followed = |r: &Replica, me: &NodeId| -> Vec<(StreamId, u64)> {
        r.heads()
            .expect("heads")
            .into_iter()
            .filter(|(s, _)| &s.origin != me && !matches!(s.topic, Topic::Sales | Topic::Inventory))
            .map(|(s, h)| (s, h.seq))
            .collect()
    };
    let target = followed(&hq_read, &s1);
    let store_read = || {
        Replica::open(
            &agent_dir.root.join("store.db"),
            Identity {
                node: s1.clone(),
                key: key.clone(),
            },
            hq_state.key.verifying_key(),
            Durability::Full,
        )
        .expect("store reader")
    };
    let reader = store_read();
    wait_for("the store to be seeded", || {
        (followed(&reader, &s1) == target).then_some(())
    });
    let seed_s = started.elapsed().as_secs_f64();
    let held: i64 = reader
        .connection()
        .query_row(
            "SELECT count(DISTINCT member) FROM member_fields",
            [],
            |r| r.get(0),
        )
        .expect("count members");
    assert_eq!(held as usize, members, "every member at the store");
    say(format!(
        "seeding a new store over QUIC: {seed_s:.2} s ({members} members, {skus} skus and prices)"
    ));

    // Baseline: the same snapshot parts loaded in process.
    let local_started = Instant::now();
    let mut parts = 0usize;
    let mut fresh = Replica::open(
        &dir.path().join("fresh.db"),
        Identity {
            node: NodeId::new("S0009").expect("id"),
            key: ed25519_dalek::SigningKey::generate(&mut rand::rng()),
        },
        hq_state.key.verifying_key(),
        Durability::Full,
    )
    .expect("fresh replica");
    for (stream, _) in &target {
        for part in hq_read
            .snapshot_parts(stream, chainsync::replica::SNAPSHOT_PART_BYTES)
            .expect("snapshot")
        {
            fresh.load_snapshot(&part, 1).expect("load part");
            parts += 1;
        }
    }
    let seed_local_s = local_started.elapsed().as_secs_f64();
    say(format!(
        "baseline: building and loading the same {parts} snapshot parts in process: {seed_local_s:.2} s"
    ));

    // 2. Reconnect after an offline spell.
    let _ = stop_agent.send(true);
    runtime
        .block_on(task)
        .expect("agent task")
        .expect("agent stops");
    {
        let mut store = store_read();
        sell_offline(&mut store, &s1, receipts);
    }
    let started = Instant::now();
    let (stop_agent, agent_shutdown) = tokio::sync::watch::channel(false);
    let task = {
        let agent_dir = agent_dir.clone();
        runtime.spawn(async move { store_agent::run::run(&agent_dir, agent_shutdown).await })
    };
    wait_for("HQ to hold the offline sales", || {
        (hq_read.receipt_ids(&s1).expect("receipts").len() == receipts).then_some(())
    });
    let reconnect_s = started.elapsed().as_secs_f64();
    say(format!(
        "reconnect: {receipts} offline receipts at HQ {reconnect_s:.2} s after the agent started"
    ));
    let _ = stop_agent.send(true);
    runtime
        .block_on(task)
        .expect("agent task")
        .expect("agent stops");

    // 3. The same through a bundle file.
    let (agent_dir2, key2) = &agents[1];
    let s2 = stores[1].0.id.clone();
    let mut store2 = Replica::open(
        &agent_dir2.root.join("store.db"),
        Identity {
            node: s2.clone(),
            key: key2.clone(),
        },
        hq_state.key.verifying_key(),
        Durability::Full,
    )
    .expect("store 2");
    // A store that never connected learns its own directory entry from HQ's first bundle; here
    // only HQ's directory stream is handed over.
    let directory = StreamId::new(NodeId::hq(), Topic::Directory);
    let entries = hq_read
        .read_stream(&directory, 0, 10_000, usize::MAX)
        .expect("directory");
    store2
        .apply_batch(&entries, None, 1)
        .expect("directory at S0002");
    // As HQ's first bundle would: HQ holds nothing of S0002's own streams yet.
    store2.set_hub_acked(&[]).expect("hub heads");
    sell_offline(&mut store2, &s2, receipts);
    let started = Instant::now();
    let bytes = chainsync::bundle::store_bundle(&store2, key2, 2).expect("bundle");
    let file = dir.path().join("S0002.bundle");
    chainsync::transport::process::write_new_file(&file, &bytes).expect("write bundle");
    let bundle_export_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let bytes = chainsync::transport::process::read_bundle_file(&file).expect("read bundle");
    let mut hq_write = hq_dir.open_replica(&hq_state.key).expect("hq writer");
    let report = chainsync::bundle::import_bundle(&mut hq_write, &bytes, 3).expect("import");
    let bundle_import_s = started.elapsed().as_secs_f64();
    assert_eq!(report.applied, receipts, "{report:?}");
    assert_eq!(hq_read.receipt_ids(&s2).expect("receipts").len(), receipts);
    say(format!(
        "bundle: {receipts} receipts, {:.1} MB; written in {bundle_export_s:.2} s, imported at HQ in {bundle_import_s:.2} s",
        bytes.len() as f64 / 1e6
    ));

    // Baseline: the same number of rows into a bare table.
    let plain_insert_s = plain_insert(&dir.path().join("plain.db"), receipts);
    say(format!(
        "baseline: {receipts} receipt rows into a bare SQLite table: {plain_insert_s:.3} s"
    ));

    let _ = stop_hq.send(true);
    let _ = runtime.block_on(serve);
    println!(
        "{}",
        json!({
            "bench": "offline",
            "members": members,
            "skus": skus,
            "receipts": receipts,
            "seed_s": round3(seed_s),
            "seed_parts": parts,
            "seed_local_s": round3(seed_local_s),
            "reconnect_s": round3(reconnect_s),
            "bundle_export_s": round3(bundle_export_s),
            "bundle_import_s": round3(bundle_import_s),
            "bundle_bytes": bytes.len(),
            "plain_insert_s": round3(plain_insert_s),
        })
    );
}

/// Commits `n` one-line sales, one change set each, as the POS does while HQ is unreachable.
fn sell_offline(store: &mut Replica, id: &NodeId, n: usize) {
    for i in 1..=n as u64 {
        let receipt = chainsync_tests::receipt(
            id,
            i,
            1_700_000_000_000 + i as i64,
            None,
            &[(&format!("SKU{:06}", i % 1000), 1, 199)],
        );
        store
            .commit_local(
                Topic::Sales,
                vec![Op::Receipt(receipt)],
                1_700_000_000_000 + i,
            )
            .expect("offline sale");
    }
}

fn plain_insert(path: &std::path::Path, n: usize) -> f64 {
    let mut conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE receipts (id TEXT PRIMARY KEY, store TEXT, sold_at INTEGER, body BLOB);",
    )
    .expect("schema");
    let started = Instant::now();
    let tx = conn.transaction().expect("tx");
    {
        let mut stmt = tx
            .prepare("INSERT INTO receipts VALUES (?1, 'S0001', ?2, ?3)")
            .expect("prepare");
        for i in 0..n {
            stmt.execute(rusqlite::params![
                format!("S0001-R{i}"),
                i as i64,
                vec![7u8; 120]
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
    started.elapsed().as_secs_f64()
}

fn wait_for(what: &str, check: impl FnMut() -> Option<()>) {
    chainsync_tests::e2e::wait_until_every(Duration::from_millis(10), WAIT, what, check)
}
