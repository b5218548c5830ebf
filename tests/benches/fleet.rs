//! Benchmark: a fleet of realtime store agents connected to one HQ over QUIC on loopback.
//!
//! Run: `cargo bench -p chainsync-tests --bench fleet` (readable lines, then one JSON line), or
//! `-- --json` for the JSON line alone; `FLEET_AGENTS=N` changes the fleet size (default 100).
//!
//! HQ (`hq_server::serve::serve`: the QUIC sync endpoint and the HQ API) and N agents
//! (`store_agent::run::run`: realtime link and POS API, each with its own SQLite replica, all
//! `synchronous=FULL`) run in this process on one tokio runtime; every agent was enrolled through
//! the real enrollment path first. Measured:
//!
//! 1. **Price propagation** (`price_ms_p50`, `price_ms_p99`, `price_ms_max`): an admin sets a new
//!    chain price through the HQ API; the time until each agent's POS API (`GET /v1/prices/…`)
//!    returns it. Repeated `PRICE_ROUNDS` times; every agent is one sample per round. The POS
//!    APIs are polled by `POLLERS` threads, so a figure is late by at most one polling sweep
//!    (`poll_sweep_ms_mean` says how long a sweep took).
//! 2. **Sales ingest** (`ingest_receipts_per_s`): every agent records `SALES_PER_AGENT` sales
//!    through its POS API (`POLLERS` client threads); from the first request until HQ holds all
//!    of them. `pos_acks_per_s` is the rate at which the POS APIs acknowledged (durably) meanwhile.
//!
//! Target (noted, not asserted): p99 under 1 s on loopback with 100 agents. Correctness is
//! checked as it goes: every agent must show exactly the new price, every sale must be
//! acknowledged with 201, and HQ must end with exactly the receipts sent.

use chainsync::ids::NodeId;
use chainsync::replica::PendingStore;
use chainsync_tests::e2e::{enroll_in_process, http};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PRICE_ROUNDS: usize = 5;
const SALES_PER_AGENT: usize = 20;
const POLLERS: usize = 8;
const WAIT: Duration = Duration::from_secs(120);

struct FleetAgent {
    pos: SocketAddr,
    token: String,
}

fn main() {
    let json_only = std::env::args().any(|a| a == "--json");
    let agents: usize = std::env::var("FLEET_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (stop, shutdown) = tokio::sync::watch::channel(false);

    // HQ: init, catalog, price, N pending stores, an admin token; then serve.
    let (hq_dir, state, quic, api) = chainsync_tests::e2e::hq_in_process(dir.path());
    let mut tokens = Vec::new();
    {
        let mut hq = hq_dir.open_replica(&state.key).expect("hq replica");
        use chainsync::changeset::Op;
        use chainsync::ids::{RecordId, Scope, Topic};
        use chainsync::model::{PriceEntry, PriceKind, Product};
        let sku = chainsync_tests::sku("cola");
        let product = Product {
            sku: sku.clone(),
            name: "Cola".into(),
            category: "drinks".into(),
            barcodes: vec![],
            unit_cost_cents: 50,
            active: true,
        };
        hq.commit_local(Topic::Catalog, vec![Op::ProductUpsert(product)], 1)
            .expect("catalog");
        let price = PriceEntry {
            id: RecordId::new("hq-cola.r.0").expect("id"),
            sku,
            scope: Scope::Chain,
            kind: PriceKind::Retail,
            price_cents: 100,
            effective_from_ms: 0,
            effective_to_ms: None,
        };
        hq.commit_local(Topic::Prices(Scope::Chain), vec![Op::PriceUpsert(price)], 1)
            .expect("price");
        for i in 0..agents {
            let id = NodeId::new(format!("S{:04}", i + 1)).expect("id");
            let token = format!("fleet-token-{i:04}-0123456789");
            let store = PendingStore {
                id,
                name: format!("Store {i}"),
                region: chainsync_tests::region(&format!("r{}", i % 5)),
                mode: chainsync::model::StoreMode::Realtime,
            };
            hq.add_store(&store, &token, 1).expect("add store");
            tokens.push((store, token));
        }
        hq.add_api_token(
            "bench-admin-token-0123456789",
            "bench",
            "admin",
            None,
            None,
            1,
        )
        .expect("api token");
    }
    let serve = {
        let hq_dir = hq_dir.clone();
        let shutdown = shutdown.clone();
        runtime.spawn(async move { hq_server::serve::serve(&hq_dir, shutdown).await })
    };
    let admin = "bench-admin-token-0123456789";
    wait_for(
        || {
            http(api, "GET", "/v1/stores", Some(admin), None)
                .ok()
                .map(|_| ())
        },
        "HQ API",
    );

    // Agents: enroll each through the real path, then run them all.
    let setup = Instant::now();
    let mut fleet = Vec::new();
    let mut tasks = Vec::new();
    for (store, token) in &tokens {
        let (agent_dir, _key) =
            enroll_in_process(&runtime, &state, quic, &store.id, token, dir.path());
        let loaded = agent_dir.load().expect("agent load");
        let (pos, pos_token) = (loaded.config.pos_listen, loaded.config.pos_token);
        let shutdown = shutdown.clone();
        tasks.push(runtime.spawn(async move { store_agent::run::run(&agent_dir, shutdown).await }));
        fleet.push(FleetAgent {
            pos,
            token: pos_token,
        });
    }
    for agent in &fleet {
        wait_for(
            || {
                let (_, body) =
                    http(agent.pos, "GET", "/v1/sync", Some(&agent.token), None).ok()?;
                (body["connected"] == true).then_some(())
            },
            "agents to connect",
        );
    }
    let setup_s = setup.elapsed().as_secs_f64();
    if !json_only {
        println!("{agents} agents enrolled, running and connected in {setup_s:.1} s");
    }

    // 1. Price propagation.
    let mut samples_ms: Vec<f64> = Vec::new();
    let mut sweeps_ms: Vec<f64> = Vec::new();
    for round in 0..PRICE_ROUNDS {
        let cents = 200 + round as i64;
        let started = Instant::now();
        let (status, body) = http(
            api,
            "POST",
            "/v1/prices",
            Some(admin),
            Some(
                json!({ "sku": "cola", "scope": "chain", "price_cents": cents })
                    .to_string()
                    .as_bytes(),
            ),
        )
        .expect("set price");
        assert_eq!(status, 201, "{body}");
        let (lat, sweeps) = until_all(&fleet, started, |a| {
            let (_, body) = http(a.pos, "GET", "/v1/prices/cola", Some(&a.token), None).ok()?;
            (body["price_cents"] == cents).then_some(())
        });
        samples_ms.extend(lat);
        sweeps_ms.extend(sweeps);
    }
    samples_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| samples_ms[((samples_ms.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99, max) = (pct(0.50), pct(0.99), pct(1.0));
    let sweep_mean = sweeps_ms.iter().sum::<f64>() / sweeps_ms.len().max(1) as f64;
    if !json_only {
        println!(
            "price propagation over {} samples: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms (polling sweep {sweep_mean:.1} ms)",
            samples_ms.len()
        );
    }

    // 2. Sales ingest.
    let hq_read = hq_dir.open_replica(&state.key).expect("hq read");
    let before = hq_read.receipt_count().expect("count") as usize;
    let total = agents * SALES_PER_AGENT;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..POLLERS {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let agent = &fleet[n % fleet.len()];
                    let body = json!({ "lines": [{ "sku": "cola", "qty": 1 }, { "sku": "cola", "qty": 2 }, { "sku": "cola", "qty": 1 }] });
                    let (status, answer) =
                        http(agent.pos, "POST", "/v1/sales", Some(&agent.token), Some(body.to_string().as_bytes())).expect("sale");
                    assert_eq!(status, 201, "{answer}");
                }
            });
        }
    });
    // Every client thread has joined: every sale was acknowledged (201) by now.
    let acked_at = started.elapsed();
    wait_for(
        || (hq_read.receipt_count().ok()? as usize == before + total).then_some(()),
        "HQ to hold every sale",
    );
    let ingest = started.elapsed();
    let ingest_rate = total as f64 / ingest.as_secs_f64();
    let ack_rate = total as f64 / acked_at.as_secs_f64();
    if !json_only {
        println!(
            "sales ingest: {total} receipts (3 lines) through {agents} POS APIs, all at HQ after {:.2} s: {ingest_rate:.0} receipts/s (POS acknowledged {ack_rate:.0}/s)",
            ingest.as_secs_f64()
        );
    }

    let _ = stop.send(true);
    runtime.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
        let _ = serve.await;
    });
    println!(
        "{}",
        json!({
            "bench": "fleet",
            "agents": agents,
            "price_samples": samples_ms.len(),
            "price_ms_p50": round1(p50),
            "price_ms_p99": round1(p99),
            "price_ms_max": round1(max),
            "poll_sweep_ms_mean": round1(sweep_mean),
            "ingest_receipts": total,
            "ingest_receipts_per_s": ingest_rate.round(),
            "pos_acks_per_s": ack_rate.round(),
            "setup_s": round1(setup_s),
        })
    );
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Polls `check` (every 20 ms) until it holds, for at most [`WAIT`].
fn wait_for(mut check: impl FnMut() -> Option<()>, what: &str) {
    let deadline = Instant::now() + WAIT;
    while check().is_none() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls every agent with `check` from [`POLLERS`] threads until all pass; returns each agent's
/// time (ms since `started`) and the sweep durations.
fn until_all(
    fleet: &[FleetAgent],
    started: Instant,
    check: impl Fn(&FleetAgent) -> Option<()> + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let chunk = fleet.len().div_ceil(POLLERS);
    let results: Vec<(Vec<f64>, Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = fleet
            .chunks(chunk)
            .map(|agents| {
                let check = &check;
                scope.spawn(move || {
                    let mut seen: Vec<Option<f64>> = vec![None; agents.len()];
                    let mut sweeps = Vec::new();
                    let deadline = Instant::now() + WAIT;
                    while seen.iter().any(Option::is_none) {
                        assert!(Instant::now() < deadline, "an agent never got the price");
                        let sweep = Instant::now();
                        for (agent, slot) in agents.iter().zip(seen.iter_mut()) {
                            if slot.is_none() && check(agent).is_some() {
                                *slot = Some(started.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        sweeps.push(sweep.elapsed().as_secs_f64() * 1000.0);
                    }
                    (seen.into_iter().flatten().collect::<Vec<f64>>(), sweeps)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("poller"))
            .collect()
    });
    let mut lat = Vec::new();
    let mut sweeps = Vec::new();
    for (l, s) in results {
        lat.extend(l);
        sweeps.extend(s);
    }
    (lat, sweeps)
}
