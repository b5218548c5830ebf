//! Benchmark: recording sales at a store from concurrent tills, durable (`synchronous=FULL`).
//!
//! Run: `cargo bench -p chainsync-tests --bench tills` (readable lines, then one JSON line), or
//! `-- --json` for the JSON line alone. `TILLS` (default 8) and `TILLS_RECEIPTS` (default 4,000
//! per round) change the sizes.
//!
//! 1. **The replica thread** (`grouped_per_s`, `one_by_one_per_s`): `TILLS` tasks each commit
//!    one-line receipts through a store's `ReplicaHandle`, one change set each, as the POS
//!    does: once with group commit (the writer as the agent runs it), once with each job on
//!    its own (`spawn_reader`, which does not group: the baseline, one fsync per sale).
//! 2. **The POS API** (`pos_per_s`, `p50_ms`, `p99_ms`): HQ and one realtime agent in this
//!    process over real QUIC on loopback; `TILLS` threads post priced sales with a
//!    `receipt_no` to `POST /v1/sales`, one request at a time each, in two rounds (the second
//!    with the first round's sales already in the store: the cost must not grow with it).
//!
//! Target of issue "Performance at chain scale" (noted, not asserted): 10,000 durable
//! receipts/s from 8 tills through the POS API, the same at 10,000 and 100,000 receipts held.

use chainsync::changeset::Op;
use chainsync::ids::{NodeId, Topic};
use chainsync::model::StoreMode;
use chainsync::replica::{Durability, PendingStore};
use chainsync::transport::actor::ReplicaHandle;
use chainsync_tests::bench::{env_or, round3};
use chainsync_tests::e2e::{enroll_in_process, http, wait_until_every};
use chainsync_tests::{Chain, node};
use serde_json::json;
use std::time::{Duration, Instant};

const SKUS: usize = 200;

fn main() {
    let json_only = std::env::args().any(|a| a == "--json");
    let say = |line: String| {
        if !json_only {
            println!("{line}");
        }
    };
    let tills = env_or("TILLS", 8usize);
    let receipts = env_or("TILLS_RECEIPTS", 4_000usize);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    // 1. The replica thread, grouped and one by one.
    let grouped_per_s = replica_thread(&runtime, tills, receipts, true);
    say(format!(
        "replica thread, group commit: {receipts} receipts from {tills} tills, {grouped_per_s:.0}/s"
    ));
    let one_by_one_per_s = replica_thread(&runtime, tills, receipts, false);
    say(format!(
        "replica thread, one commit each (baseline): {one_by_one_per_s:.0}/s"
    ));

    // 2. Through the POS API.
    let dir = tempfile::tempdir().expect("tempdir");
    let (hq_dir, hq_state, quic, api) = chainsync_tests::e2e::hq_in_process(dir.path());
    let store = PendingStore {
        id: NodeId::new("S0001").expect("id"),
        name: "Store 1".into(),
        region: chainsync_tests::region("north"),
        mode: StoreMode::Realtime,
    };
    let token = "tills-bench-token-0123456789";
    {
        let mut hq = hq_dir.open_replica(&hq_state.key).expect("hq replica");
        chainsync_tests::e2e::write_catalog(&mut hq, SKUS, SKUS, |i| format!("cat{}", i % 5));
        hq.add_store(&store, token, 1).expect("add store");
    }
    let (stop_hq, hq_shutdown) = tokio::sync::watch::channel(false);
    let serve = {
        let hq_dir = hq_dir.clone();
        runtime.spawn(async move { hq_server::serve::serve(&hq_dir, hq_shutdown).await })
    };
    wait_for("HQ to listen", || {
        std::net::TcpStream::connect(api).ok().map(|_| ())
    });
    let (agent_dir, _key) =
        enroll_in_process(&runtime, &hq_state, quic, &store.id, token, dir.path());
    let (stop_agent, agent_shutdown) = tokio::sync::watch::channel(false);
    let agent = {
        let agent_dir = agent_dir.clone();
        runtime.spawn(async move { store_agent::run::run(&agent_dir, agent_shutdown).await })
    };
    let state = agent_dir.load().expect("agent config");
    let (pos, pos_token) = (state.config.pos_listen, state.config.pos_token.clone());
    wait_for("the store to price the catalog", || {
        let path = format!("/v1/prices/SKU{:06}", SKUS - 1);
        let (status, _) = http(pos, "GET", &path, Some(&pos_token), None).ok()?;
        (status == 200).then_some(())
    });
    let mut rounds = Vec::new();
    for round in 0..2 {
        let (per_s, p50, p99) = pos_round(pos, &pos_token, tills, receipts, round);
        say(format!(
            "POS API round {}: {receipts} sales from {tills} tills, {per_s:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({} receipts in the store before)",
            round + 1,
            round * receipts
        ));
        rounds.push(
            json!({ "pos_per_s": per_s.round(), "p50_ms": round3(p50), "p99_ms": round3(p99),
                            "held_before": round * receipts }),
        );
    }
    let _ = stop_agent.send(true);
    runtime.block_on(agent).expect("agent task").expect("agent");
    let _ = stop_hq.send(true);
    runtime.block_on(serve).expect("serve task").expect("serve");
    println!(
        "{}",
        json!({
            "bench": "tills",
            "tills": tills,
            "receipts_per_round": receipts,
            "grouped_per_s": grouped_per_s.round(),
            "one_by_one_per_s": one_by_one_per_s.round(),
            "pos_rounds": rounds,
        })
    );
}

/// Receipts per second through a store's replica thread, `tills` tasks at once.
fn replica_thread(
    runtime: &tokio::runtime::Runtime,
    tills: usize,
    receipts: usize,
    grouped: bool,
) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = Chain::new(dir.path(), 1, 1, Durability::Full);
    let (_hq, mut stores) = chain.bootstrap(1);
    let store = stores.remove(0);
    let (handle, thread) = if grouped {
        ReplicaHandle::spawn(store)
    } else {
        ReplicaHandle::spawn_reader(store)
    }
    .expect("replica thread");
    let s1 = node("S001");
    let per_till = receipts / tills.max(1);
    let started = Instant::now();
    runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for till in 0..tills {
            let (handle, s1) = (handle.clone(), s1.clone());
            set.spawn(async move {
                for i in 0..per_till {
                    let n = (till * per_till + i + 1) as u64;
                    let sku = format!("SKU{:06}", n % SKUS as u64);
                    let receipt =
                        chainsync_tests::receipt(&s1, n, n as i64, None, &[(&sku, 1, 199)]);
                    handle
                        .call(move |r| r.commit_local(Topic::Sales, vec![Op::Receipt(receipt)], n))
                        .await
                        .expect("replica thread")
                        .expect("sale committed");
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.expect("till task");
        }
    });
    let per_s = (per_till * tills) as f64 / started.elapsed().as_secs_f64();
    drop(handle);
    thread.join().expect("replica thread");
    per_s
}

/// One round of sales through the POS API: receipts per second, p50 and p99 in ms.
fn pos_round(
    pos: std::net::SocketAddr,
    token: &str,
    tills: usize,
    receipts: usize,
    round: usize,
) -> (f64, f64, f64) {
    let per_till = receipts / tills.max(1);
    let started = Instant::now();
    let threads: Vec<_> = (0..tills)
        .map(|till| {
            let token = token.to_owned();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_till);
                for i in 0..per_till {
                    let body = json!({
                        "receipt_no": format!("r{round}-t{till}-{i}"),
                        "lines": [{ "sku": format!("SKU{:06}", (till * 31 + i) % SKUS), "qty": 1 },
                                  { "sku": format!("SKU{:06}", (i * 7) % SKUS), "qty": 2 }],
                    })
                    .to_string();
                    let sent = Instant::now();
                    let (status, answer) = http(
                        pos,
                        "POST",
                        "/v1/sales",
                        Some(&token),
                        Some(body.as_bytes()),
                    )
                    .expect("POS answers");
                    assert_eq!(status, 201, "{answer}");
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("till thread"))
        .collect();
    let per_s = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (per_s, at(0.5), at(0.99))
}

fn wait_for(what: &str, check: impl FnMut() -> Option<()>) {
    wait_until_every(
        Duration::from_millis(50),
        Duration::from_secs(120),
        what,
        check,
    );
}
