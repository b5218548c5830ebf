//! `hq-server demo`: a whole small chain on this machine, over the real network path.
//!
//! It creates HQ and four stores in two regions in one folder, each with its own SQLite replica;
//! starts HQ's QUIC sync endpoint and HQ API, enrolls each store with its one-time token and runs
//! its agent (realtime link and POS API on loopback) in this process. Then, through the same
//! HTTP APIs a till and a manager would use, the stores receive goods and sell, HQ cuts a price
//! for region north, and it prints what a regional manager would ask for: consolidated stock per
//! store with its freshness, and the price each store now charges. It keeps running (HQ, API and
//! agents) until Ctrl-C or SIGTERM, printing the addresses and tokens to try by hand.

use crate::config::{HqConfig, HqDir};
use anyhow::{Context, Result, bail};
use chainsync::changeset::Op;
use chainsync::ids::{NodeId, RecordId, RegionId, Scope, Sku, Topic};
use chainsync::model::{PriceEntry, PriceKind, Product, StoreMode};
use chainsync::replica::PendingStore;
use chainsync::transport::leaf::{HqAddress, enroll};
use chainsync::transport::provision::Provisioning;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use store_agent::config::AgentDir;
use tokio::sync::watch;

const PRODUCTS: [(&str, &str, &str, i64); 4] = [
    ("cola-330", "Cola 330 ml", "drinks", 129),
    ("chips-150", "Potato chips 150 g", "snacks", 199),
    ("water-1l", "Still water 1 l", "drinks", 89),
    ("choc-100", "Dark chocolate 100 g", "snacks", 249),
];
const STORES: [(&str, &str); 4] = [
    ("S001", "north"),
    ("S002", "north"),
    ("S003", "south"),
    ("S004", "south"),
];
const WAIT: Duration = Duration::from_secs(30);

/// A running demo store.
struct DemoStore {
    id: String,
    pos: SocketAddr,
    token: String,
}

/// Runs the demo in `dir` with the HQ API on `api_listen`, until `shutdown` turns true.
pub fn run(dir: &Path, api_listen: SocketAddr, shutdown: watch::Receiver<bool>) -> Result<()> {
    if dir.join("hq").exists() {
        bail!(
            "{} already holds a demo chain; pick another --data folder or delete it",
            dir.display()
        );
    }
    let quic = free_local_udp()?;
    let hq_dir = HqDir::new(&dir.join("hq"));
    hq_dir.init(&HqConfig {
        listen: quic,
        public_addr: quic,
        api_listen,
        bundle_folder: None,
        ..Default::default()
    })?;
    let state = hq_dir.load()?;
    let (admin, north) = seed_hq(&hq_dir)?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let serve = {
        let (hq_dir, shutdown) = (hq_dir.clone(), shutdown.clone());
        runtime.spawn(async move { crate::serve::serve(&hq_dir, shutdown).await })
    };
    wait_for("HQ API", || {
        http_request(api_listen, "GET", "/v1/stores", Some(&admin), None)
            .ok()
            .map(|_| ())
    })?;
    println!("chainsync demo in {}", dir.display());
    println!(
        "1. HQ is up: sync on udp://{quic}, API on http://{api_listen}; catalog and chain prices written."
    );

    let hq_address = HqAddress {
        addr: quic,
        cert_der: state.cert.cert_der.clone(),
    };
    let mut stores = Vec::new();
    let mut agents = Vec::new();
    for (id, _) in STORES.iter() {
        let node = NodeId::new(*id)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
        let token = format!("demo-enrollment-token-{id}");
        let region = runtime.block_on(enroll(&hq_address, &node, &token, &key))?;
        let provisioning = Provisioning {
            store: node,
            hq_addr: quic,
            hq_cert: hex::encode(&state.cert.cert_der),
            hq_public_key: hex::encode(state.key.verifying_key().to_bytes()),
            token,
            store_key: None,
            region: None,
        };
        let pos = free_local_tcp()?;
        let agent_dir = AgentDir::new(&dir.join(id));
        agent_dir.create(&provisioning, region, &key, pos)?;
        let pos_token = agent_dir.load()?.config.pos_token;
        let shutdown = shutdown.clone();
        agents
            .push(runtime.spawn(async move { store_agent::run::run(&agent_dir, shutdown).await }));
        stores.push(DemoStore {
            id: (*id).to_owned(),
            pos,
            token: pos_token,
        });
    }
    for store in &stores {
        wait_for("the stores to receive the catalog", || {
            let (_, body) = store.get("/v1/prices/cola-330").ok()?;
            (body["price_cents"] == 129).then_some(())
        })?;
    }
    println!(
        "2. Four stores enrolled with their one-time tokens and pulled the catalog and prices."
    );

    for (n, store) in stores.iter().enumerate() {
        for (sku, ..) in PRODUCTS {
            store.post(
                "/v1/stock/received",
                &json!({ "movement_no": format!("d1-{sku}"), "sku": sku, "qty": 48, "reference": "delivery 1" }),
            )?;
        }
        for r in 0..=n as i64 {
            let lines =
                json!([{ "sku": "cola-330", "qty": 2 + r }, { "sku": "chips-150", "qty": 1 }]);
            store.post("/v1/sales", &json!({ "lines": lines }))?;
        }
    }
    wait_for("HQ to hold every sale", || {
        let (_, body) = http_request(api_listen, "GET", "/v1/sales", Some(&admin), None).ok()?;
        let receipts: i64 = body["rows"]
            .as_array()?
            .iter()
            .filter_map(|r| r["receipts"].as_i64())
            .sum();
        (receipts == 10).then_some(())
    })?;
    println!(
        "3. The stores received goods and made 10 sales through their POS APIs; HQ has them all."
    );

    let started = Instant::now();
    let price = json!({ "sku": "cola-330", "scope": "region:north", "price_cents": 99 });
    let (status, body) = http_request(
        api_listen,
        "POST",
        "/v1/prices",
        Some(&admin),
        Some(price.to_string().as_bytes()),
    )?;
    if status != 201 {
        bail!("setting the price failed: {body}");
    }
    for store in &stores[..2] {
        wait_for("the north stores to get the new price", || {
            let (_, body) = store.get("/v1/prices/cola-330").ok()?;
            (body["price_cents"] == 99).then_some(())
        })?;
    }
    println!(
        "4. HQ cut the price of cola-330 for region north; both north stores charged it {} ms later.\n",
        started.elapsed().as_millis()
    );

    print_report(api_listen, &north, &admin, &stores)?;
    println!("\nRunning until Ctrl-C. Try:");
    println!(
        "  curl -H 'Authorization: Bearer {north}' 'http://{api_listen}/v1/stock?sku=cola-330'   # north manager"
    );
    println!(
        "  curl -H 'Authorization: Bearer {admin}' http://{api_listen}/v1/stores                   # admin"
    );
    if let Some(s) = stores.first() {
        println!(
            "  curl -H 'Authorization: Bearer {}' http://{}/v1/prices/cola-330                      # the till of {}",
            s.token, s.pos, s.id
        );
    }
    println!("ready");
    runtime.block_on(async {
        for agent in agents {
            agent.await.context("agent task")??;
        }
        serve.await.context("HQ task")?
    })?;
    println!("demo stopped; the databases stay in {}", dir.display());
    Ok(())
}

/// Writes HQ's catalog, chain prices, the pending stores and two API tokens.
fn seed_hq(hq_dir: &HqDir) -> Result<(String, String)> {
    let state = hq_dir.load()?;
    let mut hq = hq_dir.open_replica(&state.key)?;
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
    let now = chainsync::transport::now_ms();
    hq.commit_local(Topic::Catalog, catalog, now)?;
    hq.commit_local(Topic::Prices(Scope::Chain), prices, now)?;
    for (id, region) in STORES {
        let store = PendingStore {
            id: NodeId::new(id)?,
            name: format!("Store {id}"),
            region: RegionId::new(region)?,
            mode: StoreMode::Realtime,
        };
        hq.add_store(&store, &format!("demo-enrollment-token-{id}"), now)?;
    }
    let mut token = |role: &str, region: Option<&RegionId>| -> Result<String> {
        let mut bytes = [0u8; 16];
        rand::fill(&mut bytes);
        let token = hex::encode(bytes);
        hq.add_api_token(&token, "demo", role, region, None, now)?;
        Ok(token)
    };
    let admin = token("admin", None)?;
    let north = token("regional", Some(&RegionId::new("north")?))?;
    Ok((admin, north))
}

fn print_report(api: SocketAddr, north: &str, admin: &str, stores: &[DemoStore]) -> Result<()> {
    let (_, body) = http_request(api, "GET", "/v1/stock", Some(admin), None)?;
    println!("Consolidated stock at HQ (store, region, sku, qty, figures as of):");
    let now = chainsync::transport::now_ms() as i64;
    for row in body["rows"].as_array().into_iter().flatten() {
        let age = row["as_of_ms"]
            .as_i64()
            .map_or("never".to_owned(), |t| format!("{} ms ago", now - t));
        println!(
            "  {:<5} {:<6} {:<10} {:>4}   ({age})",
            row["store"].as_str().unwrap_or("?"),
            row["region"].as_str().unwrap_or("?"),
            row["sku"].as_str().unwrap_or("?"),
            row["qty"]
        );
    }
    let (status, body) = http_request(api, "GET", "/v1/stock?sku=cola-330", Some(north), None)?;
    println!(
        "The north manager's view of cola-330: {} units in {} stores",
        body["totals"]["cola-330"],
        body["rows"].as_array().map_or(0, Vec::len)
    );
    let (south_status, _) = http_request(api, "GET", "/v1/stock?region=south", Some(north), None)?;
    println!(
        "(asking for region south with the north token: HTTP {south_status}; own region: HTTP {status})"
    );
    println!("\nPrice of cola-330 at each till now:");
    for store in stores {
        let (_, body) = store.get("/v1/prices/cola-330")?;
        println!(
            "  {}: {} ({})",
            store.id,
            cents(body["price_cents"].as_i64().unwrap_or(0)),
            body["retail"]["scope"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

impl DemoStore {
    fn get(&self, path: &str) -> std::io::Result<(u16, Value)> {
        http_request(self.pos, "GET", path, Some(&self.token), None)
    }
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, answer) = http_request(
            self.pos,
            "POST",
            path,
            Some(&self.token),
            Some(body.to_string().as_bytes()),
        )?;
        if !(200..300).contains(&status) {
            bail!("{} {path}: HTTP {status}: {answer}", self.id);
        }
        Ok(answer)
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> Option<()>) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while check().is_none() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_local_udp() -> Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_local_tcp() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A minimal HTTP/1.1 client for JSON APIs on loopback: one request per connection. Returns the
/// status and the JSON body (`Null` if the body is not JSON). Used by the demo and the tests.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Value)> {
    let (status, text) = http_text(addr, method, path, token, body)?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Like [`http_request`], the body as text (e.g. `/metrics`).
pub fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // One write, without Nagle's delay: a request split in two writes waits for the
    // acknowledgement of the first before its body leaves, a round trip added to every POST.
    stream.set_nodelay(true)?;
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_owned()))
}
