//! Benchmark: a store on a real line (issue "Sync on real lines", items 1 and 2).
//!
//! Run: `cargo bench -p chainsync-tests --bench lines` (readable lines, then one JSON line), or
//! `-- --json` for the JSON line alone. `LINES_RECEIPTS` sets the backlog (default 5,000),
//! `LINES_LOSS_PERCENT` and `LINES_DELAY_MS` the line (default 15 % loss, 150 ms each way).
//!
//! HQ (`hq_server::serve::serve`) and the agent (`store_agent::run::run`) run in this process,
//! with their own SQLite files; between them the project's fault relay (`chainsync_tests::relay`,
//! UDP on loopback). Measured in one run:
//!
//! 1. **Reconnect** (`reconnect_ms`): HQ stops; the agent keeps trying for `down_s` seconds with a
//!    receipt waiting; HQ starts again. The time from HQ's sync endpoint listening again to HQ
//!    holding the receipt, for several outage lengths.
//! 2. **Backlog on a clean line** (`clean_s`): the agent stops, `LINES_RECEIPTS` receipts are
//!    sold offline, the agent starts behind the relay with the delay and no loss; the time until
//!    HQ holds them all, and the bytes the agent put on the wire against the payload (the change
//!    sets' bodies and signatures).
//! 3. **Backlog on the lossy line** (`lossy_s`, `lossy_wire_ratio`): the same with the loss.
//! 4. **What the line carries** (`raw_lossy_s`, baseline): the same number of payload bytes over
//!    one plain QUIC stream through the same lossy relay, handshake included, with chainsync's
//!    TLS and transport settings. `lossy_line_share` = raw time / backlog time: the share of what
//!    the line carries that the drain achieves (target above 0.8), with bytes on the wire under
//!    1.3 times the payload.

use chainsync::changeset::Op;
use chainsync::ids::{NodeId, StreamId, Topic};
use chainsync::model::StoreMode;
use chainsync::replica::{Durability, Identity, PendingStore, Replica};
use chainsync_tests::bench::{env_or, round3};
use chainsync_tests::e2e::enroll_in_process;
use chainsync_tests::relay::{Faults, Relay};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use store_agent::config::AgentDir;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(600);

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn main() {
    let json_only = std::env::args().any(|a| a == "--json");
    let say = |line: String| {
        if !json_only {
            println!("{line}");
        }
    };
    let receipts = env_or("LINES_RECEIPTS", 5_000);
    let loss = env_or("LINES_LOSS_PERCENT", 15);
    let delay_ms = env_or("LINES_DELAY_MS", 150);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let (hq_dir, hq_state, quic, api) = chainsync_tests::e2e::hq_in_process(dir.path());
    let store = PendingStore {
        id: NodeId::new("S0001").expect("id"),
        name: "Store 1".into(),
        region: chainsync_tests::region("north"),
        mode: StoreMode::Realtime,
    };
    let token = "lines-bench-token-0001-0123456789".to_owned();
    {
        let mut hq = hq_dir.open_replica(&hq_state.key).expect("hq replica");
        chainsync_tests::e2e::write_catalog(&mut hq, 100, 100, |_| "grocery".into());
        hq.add_store(&store, &token, 1).expect("add store");
    }
    let start_hq = || -> Running {
        let (stop, shutdown) = watch::channel(false);
        let hq_dir = hq_dir.clone();
        let task = runtime.spawn(async move {
            if let Err(e) = hq_server::serve::serve(&hq_dir, shutdown).await {
                eprintln!("HQ stopped: {e:#}");
            }
        });
        Running { stop, task }
    };
    let stop = |r: Running| {
        let _ = r.stop.send(true);
        runtime.block_on(r.task).expect("task");
    };
    let hq = start_hq();
    wait_for("HQ to listen", || {
        std::net::TcpStream::connect(api).ok().map(|_| ())
    });
    let hq_read = hq_dir.open_replica(&hq_state.key).expect("hq reader");
    let (agent_dir, key) =
        enroll_in_process(&runtime, &hq_state, quic, &store.id, &token, dir.path());
    let s1 = store.id.clone();
    let open_store = || {
        Replica::open(
            &agent_dir.root.join("store.db"),
            Identity {
                node: s1.clone(),
                key: key.clone(),
            },
            hq_state.key.verifying_key(),
            Durability::Full,
        )
        .expect("store replica")
    };
    let start_agent = |agent_dir: &AgentDir| -> Running {
        let (stop, shutdown) = watch::channel(false);
        let agent_dir = agent_dir.clone();
        let task = runtime.spawn(async move {
            if let Err(e) = store_agent::run::run(&agent_dir, shutdown).await {
                eprintln!("agent stopped: {e:#}");
            }
        });
        Running { stop, task }
    };
    let held_at_hq = || hq_read.receipt_ids(&s1).expect("receipts").len() as u64;
    let mut sold = 0u64;

    // The agent's first session: HQ says how far it holds the store's history, and the store
    // takes the catalog.
    let agent = start_agent(&agent_dir);
    let catalog = StreamId::new(NodeId::hq(), Topic::Catalog);
    let catalog_head = hq_read.head(&catalog).expect("catalog").seq;
    wait_for("the first session", || {
        let conn = rusqlite::Connection::open_with_flags(
            agent_dir.root.join("store.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let head: i64 = conn
            .query_row(
                "SELECT head_seq FROM streams WHERE name = ?1",
                [catalog.to_string()],
                |r| r.get(0),
            )
            .ok()?;
        (head as u64 == catalog_head).then_some(())
    });
    stop(agent);

    // 1. Reconnect after HQ comes back.
    stop(hq);
    let mut reconnect_ms = Vec::new();
    for down_s in [2u64, 5, 9, 14] {
        sell_offline(&mut open_store(), &s1, sold + 1, 1);
        sold += 1;
        let agent = start_agent(&agent_dir);
        std::thread::sleep(Duration::from_secs(down_s));
        let restarted = Instant::now();
        let hq = start_hq();
        // The sync endpoint listens once the database is open; the API a moment later.
        wait_for("the receipt at HQ", || (held_at_hq() == sold).then_some(()));
        let ms = restarted.elapsed().as_millis() as u64;
        say(format!(
            "reconnect: HQ down {down_s} s, receipt at HQ {ms} ms after HQ started again"
        ));
        reconnect_ms.push(ms);
        stop(agent);
        stop(hq);
    }
    let hq = start_hq();
    wait_for("HQ to listen", || {
        std::net::TcpStream::connect(api).ok().map(|_| ())
    });

    // 2 and 3. A backlog through the relay, clean and lossy.
    let clean = Faults {
        delay_ms,
        ..Faults::NONE
    };
    let lossy = Faults {
        loss_percent: loss,
        ..clean
    };
    let relay = Relay::start(quic, clean, 11).expect("relay");
    point_agent_at(&agent_dir, quic, relay.addr);
    let drain = |faults: Faults, sold: &mut u64| -> (f64, u64, u64) {
        let payload = {
            let mut store = open_store();
            sell_offline(&mut store, &s1, *sold + 1, receipts);
            let sales = StreamId::new(s1.clone(), Topic::Sales);
            store
                .read_stream(&sales, *sold, usize::MAX, usize::MAX)
                .expect("backlog")
                .iter()
                .map(|c| (c.body.len() + c.sig.len()) as u64)
                .sum::<u64>()
        };
        *sold += receipts;
        relay.set_faults(faults);
        let before = relay.stats().client_bytes;
        let started = Instant::now();
        let agent = start_agent(&agent_dir);
        wait_for("the backlog at HQ", || {
            (held_at_hq() == *sold).then_some(())
        });
        let secs = started.elapsed().as_secs_f64();
        let wire = relay.stats().client_bytes - before;
        stop(agent);
        (secs, wire, payload)
    };
    let (clean_s, clean_wire, payload) = drain(clean, &mut sold);
    say(format!(
        "backlog of {receipts} receipts ({:.2} MB of change sets), {delay_ms} ms each way, no loss: {clean_s:.2} s, {:.2} x the payload on the wire",
        payload as f64 / 1e6,
        clean_wire as f64 / payload as f64
    ));
    let (lossy_s, lossy_wire, lossy_payload) = drain(lossy, &mut sold);
    say(format!(
        "the same at {loss} % loss: {lossy_s:.2} s, {:.2} x the payload on the wire",
        lossy_wire as f64 / lossy_payload as f64
    ));
    drop(relay);
    stop(hq);

    // 4. What the line carries: the payload over one plain QUIC stream, same relay settings.
    let raw_lossy_s = runtime.block_on(raw_transfer(lossy_payload, lossy));
    let raw_clean_s = runtime.block_on(raw_transfer(payload, clean));
    let share = raw_lossy_s / lossy_s;
    say(format!(
        "baseline: {:.2} MB over one QUIC stream through the same relay: {raw_clean_s:.2} s clean, {raw_lossy_s:.2} s at {loss} % loss; the backlog drains at {:.0} % of what the lossy line carries",
        lossy_payload as f64 / 1e6,
        share * 100.0
    ));
    println!(
        "{}",
        json!({
            "bench": "lines",
            "receipts": receipts,
            "loss_percent": loss,
            "delay_ms": delay_ms,
            "reconnect_down_s": [2, 5, 9, 14],
            "reconnect_ms": reconnect_ms,
            "payload_bytes": lossy_payload,
            "clean_s": round3(clean_s),
            "clean_wire_ratio": round3(clean_wire as f64 / payload as f64),
            "lossy_s": round3(lossy_s),
            "lossy_wire_ratio": round3(lossy_wire as f64 / lossy_payload as f64),
            "raw_clean_s": round3(raw_clean_s),
            "raw_lossy_s": round3(raw_lossy_s),
            "lossy_line_share": round3(share),
        })
    );
}

/// Rewrites the agent's HQ address.
fn point_agent_at(agent_dir: &AgentDir, hq: SocketAddr, relay: SocketAddr) {
    let path = agent_dir.root.join("agent.toml");
    let text = std::fs::read_to_string(&path).expect("agent.toml");
    let text = text.replace(&format!("\"{hq}\""), &format!("\"{relay}\""));
    std::fs::write(&path, text).expect("agent.toml");
}

/// Seconds to send `bytes` over one QUIC stream (connect and handshake included) through a
/// relay with `faults`, until the receiver has read them all and said so.
async fn raw_transfer(bytes: u64, faults: Faults) -> f64 {
    use chainsync::transport::{SERVER_NAME, tls};
    let cert = tls::generate_hq_certificate().expect("certificate");
    let server = quinn::Endpoint::server(
        tls::server_config(&cert).expect("server config"),
        ([127, 0, 0, 1], 0).into(),
    )
    .expect("server");
    let server_addr = server.local_addr().expect("addr");
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(64 * 1024, true).await.expect("read") {
            got += chunk.bytes.len() as u64;
        }
        send.write_all(&got.to_le_bytes()).await.expect("reply");
        let _ = send.finish();
        conn.closed().await;
    });
    let relay = Relay::start(server_addr, faults, 12).expect("relay");
    let mut client = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client");
    client.set_default_client_config(tls::client_config(&cert.cert_der).expect("client config"));
    let started = Instant::now();
    let conn = client
        .connect(relay.addr, SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let block = vec![7u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        send.write_all(&block[..n]).await.expect("write");
        left -= n as u64;
    }
    send.finish().expect("finish");
    let reply = recv.read_to_end(8).await.expect("reply");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(reply, bytes.to_le_bytes());
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver).await;
    drop(relay);
    secs
}

/// Commits `n` one-line sales numbered from `first`, one change set each, as the POS does while
/// HQ is unreachable.
fn sell_offline(store: &mut Replica, id: &NodeId, first: u64, n: u64) {
    for i in first..first + n {
        let receipt = chainsync_tests::receipt(
            id,
            i,
            1_700_000_000_000 + i as i64,
            None,
            &[(&format!("SKU{:06}", i % 100), 1, 199)],
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

fn wait_for(what: &str, check: impl FnMut() -> Option<()>) {
    chainsync_tests::e2e::wait_until_every(Duration::from_millis(5), WAIT, what, check)
}
