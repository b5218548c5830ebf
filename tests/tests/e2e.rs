//! End to end with real processes on loopback: `hq-server serve` and `store-agent run`, real
//! QUIC, real SQLite files, the POS API over real TCP.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, wait_until};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A sale of `qty` cola at `agent`, acknowledged; returns the receipt id.
fn sell(agent: &Agent, qty: i64) -> String {
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": qty }] }),
    );
    assert_eq!(status, 201, "{body}");
    body["receipt_id"].as_str().unwrap().to_owned()
}

/// The price of cola at `agent`'s till, or -1 while the store does not know cola yet.
fn price_at(agent: &Agent) -> i64 {
    let (status, body) = agent.get("/v1/prices/cola");
    if status != 200 {
        return -1;
    }
    body["price_cents"].as_i64().unwrap_or(-1)
}

/// Waits until `agent` has pulled the catalog and the chain price of [`setup`].
fn wait_for_catalog(agent: &Agent) {
    wait_until(WAIT, "the catalog at the store", || {
        (price_at(agent) == 129).then_some(())
    });
}

fn setup(root: &std::path::Path) -> Hq {
    let hq = Hq::init(root);
    hq.cli_ok(&[
        "product",
        "add",
        "--sku",
        "cola",
        "--name",
        "Cola 330 ml",
        "--category",
        "drinks",
    ]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    hq
}

// Three stores in two regions: sales flow up, a regional price flows down to exactly that
// region, a member signed up at one store tops up stored value at another and both see one balance.
#[test]
fn three_stores_two_regions_sales_up_prices_down_members_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let provisions: Vec<_> = [("S001", "north"), ("S002", "north"), ("S003", "south")]
        .iter()
        .map(|(id, region)| (*id, hq.add_store(id, region)))
        .collect();
    let _hq_proc = hq.start();
    let agents: Vec<Agent> = provisions
        .iter()
        .map(|(id, p)| Agent::init(dir.path(), id, p).unwrap())
        .collect();
    let _procs: Vec<_> = agents.iter().map(|a| a.start()).collect();
    for agent in &agents {
        wait_until(WAIT, "the chain price at every store", || {
            (price_at(agent) == 129).then_some(())
        });
    }

    // Sales flow up.
    let receipts: Vec<String> = agents.iter().map(|a| sell(a, 2)).collect();
    let replica = hq.replica();
    wait_until(WAIT, "HQ to hold every receipt", || {
        (replica.receipt_count().unwrap() == 3).then_some(())
    });
    for (agent, receipt) in agents.iter().zip(&receipts) {
        assert_eq!(
            replica.receipt_ids(&node(&agent.store)).unwrap(),
            vec![receipt.clone()]
        );
        assert_eq!(
            replica
                .stock_of(&node(&agent.store), &"cola".parse().unwrap())
                .unwrap(),
            -2
        );
    }

    // A price for region north reaches S001 and S002, not S003.
    hq.cli_ok(&[
        "price",
        "set",
        "--sku",
        "cola",
        "--price",
        "0.99",
        "--scope",
        "region:north",
    ]);
    wait_until(WAIT, "the north price at S001 and S002", || {
        (price_at(&agents[0]) == 99 && price_at(&agents[1]) == 99).then_some(())
    });
    assert_eq!(price_at(&agents[2]), 129, "south keeps the chain price");

    // A member signed up at S001 tops up at S003; both see the same balance.
    let (status, body) = agents[0].send(
        "PUT",
        "/v1/members/M42",
        &json!({ "name": "Ada", "phone": "555-0100" }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = agents[0].stored_value("M42", 30);
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the member and the stored value at S003", || {
        let (status, body) = agents[2].get("/v1/members/M42");
        (status == 200 && body["profile"]["name"] == "Ada" && body["stored_value_cents"] == 30)
            .then_some(())
    });
    let (status, body) = agents[2].stored_value("M42", 12);
    assert_eq!(
        (status, body["balance"].as_i64()),
        (201, Some(42)),
        "{body}"
    );
    for agent in [&agents[0], &agents[2]] {
        wait_until(WAIT, "one balance everywhere", || {
            let (_, body) = agent.get("/v1/members/M42");
            (body["stored_value_cents"] == 42).then_some(())
        });
    }
}

// A used token cannot enroll again, a store HQ never added cannot enroll, and a revoked store's
// sales are refused while everyone else keeps flowing.
#[test]
fn reused_token_unknown_store_and_revoked_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let p1 = hq.add_store("S001", "north");
    let p2 = hq.add_store("S002", "north");
    let _hq_proc = hq.start();
    let a1 = Agent::init(dir.path(), "S001", &p1).unwrap();
    let a2 = Agent::init(dir.path(), "S002", &p2).unwrap();

    let again = Agent::init(&dir.path().join("again"), "S001", &p1).unwrap_err();
    assert!(again.contains("already used"), "{again}");
    let forged = std::fs::read_to_string(&p1)
        .unwrap()
        .replace("\"S001\"", "\"S999\"");
    let forged_path = dir.path().join("forged.provision");
    std::fs::write(&forged_path, forged).unwrap();
    let unknown = Agent::init(dir.path(), "S999", &forged_path).unwrap_err();
    assert!(unknown.contains("never added"), "{unknown}");

    let _p1 = a1.start();
    let p2proc = a2.start();
    wait_for_catalog(&a1);
    wait_for_catalog(&a2);
    sell(&a1, 1);
    sell(&a2, 1);
    let replica = hq.replica();
    wait_until(WAIT, "both first sales at HQ", || {
        (replica.receipt_count().unwrap() == 2).then_some(())
    });

    hq.cli_ok(&["store", "revoke", "--id", "S002"]);
    // The revoked store still sells locally (its till must work), but HQ takes nothing more.
    let late = sell(&a2, 5);
    sell(&a1, 1);
    wait_until(WAIT, "S001's second sale at HQ", || {
        (replica.receipt_count().unwrap() == 3).then_some(())
    });
    wait_until(WAIT, "S002's agent to hear it is revoked", || {
        p2proc.log_text().contains("revoked").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !replica.receipt_ids(&node("S002")).unwrap().contains(&late),
        "a revoked store's sale reached HQ"
    );
    let (_, sync) = a2.get("/v1/sync");
    assert_eq!(
        sync["outbox"]["sales"], 1,
        "the refused sale stays in S002's outbox: {sync}"
    );
}

// An agent SIGKILLed right after the POS got its answer delivers that sale after restart,
// exactly once, whether HQ was up or down at the time.
#[test]
fn agent_killed_right_after_an_acknowledged_sale_delivers_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let provision = hq.add_store("S001", "north");
    let hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();

    let proc = agent.start();
    wait_until(WAIT, "the catalog and price at the store", || {
        (price_at(&agent) == 129).then_some(())
    });
    assert!(proc.terminate(), "the agent stops cleanly on SIGTERM");

    // HQ down: the sale can only be in the store's database when the agent dies.
    assert!(hq_proc.terminate(), "HQ stops cleanly on SIGTERM");
    let proc = agent.start();
    let offline = sell(&agent, 3);
    proc.kill9();

    // HQ up: kill the agent the instant the sale is acknowledged.
    let _hq_proc = hq.start();
    let proc = agent.start();
    let online = sell(&agent, 4);
    proc.kill9();

    let _proc = agent.start();
    let replica = hq.replica();
    wait_until(WAIT, "both sales at HQ", || {
        (replica.receipt_count().unwrap() == 2).then_some(())
    });
    let mut expected = vec![offline, online];
    expected.sort();
    assert_eq!(replica.receipt_ids(&node("S001")).unwrap(), expected);
    assert_eq!(
        replica
            .stock_of(&node("S001"), &"cola".parse().unwrap())
            .unwrap(),
        -7,
        "counted once"
    );
    wait_until(WAIT, "an empty outbox", || {
        (agent.get("/v1/sync").1["outbox"]["sales"] == 0).then_some(())
    });
}

// Garbage on HQ's UDP port and malformed POS requests get clear errors and change nothing; HQ
// keeps serving the enrolled store throughout.
#[test]
fn garbage_datagrams_and_bad_pos_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let provision = hq.add_store("S001", "north");
    let _hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let _proc = agent.start();
    wait_for_catalog(&agent);

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 1200 + 1)).map(|b| (b * 31 + i) as u8).collect();
        socket.send_to(&junk, hq.addr).unwrap();
    }

    let bad: [(&str, serde_json::Value, u16, &str); 6] = [
        (
            "/v1/sales",
            json!({ "lines": [{ "sku": "tea", "qty": 1 }] }),
            422,
            "unknown sku tea",
        ),
        (
            "/v1/sales",
            json!({ "lines": [{ "sku": "cola", "qty": -2 }] }),
            422,
            "quantity -2 is outside 1..=",
        ),
        (
            "/v1/sales",
            json!({ "lines": [{ "sku": "cola", "qty": "two" }] }),
            400,
            "invalid type",
        ),
        (
            "/v1/sales",
            json!({ "lines": [] }),
            422,
            "at least one line",
        ),
        (
            "/v1/sales",
            json!({ "lines": [{ "sku": "cola", "qty": 1 }], "payments": [{ "method": "cash", "amount_cents": 1 }] }),
            422,
            "add up",
        ),
        (
            "/v1/stock/received",
            json!({ "movement_no": "m1", "sku": "cola", "qty": 0 }),
            422,
            "not allowed",
        ),
    ];
    for (path, body, status, message) in bad {
        let (got, answer) = agent.send("POST", path, &body);
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{answer}"
        );
    }
    let (got, answer) = agent.send_raw("POST", "/v1/sales", b"{not json");
    assert_eq!(got, 400, "{answer}");
    let (got, _) =
        chainsync_tests::e2e::http(agent.pos, "GET", "/v1/stock", Some("wrong"), None).unwrap();
    assert_eq!(got, 401);

    let (_, stock) = agent.get("/v1/stock");
    assert_eq!(stock["stock"], json!([]), "nothing was applied");
    sell(&agent, 1);
    let replica = hq.replica();
    wait_until(WAIT, "the good sale at HQ", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
}

// The HQ API: an admin sets a price that reaches the stores; a regional manager sees only their
// region (403 for the other), cannot price outside it, and reads consolidated stock with its
// freshness; a read-only token cannot write; a bad token is refused.
#[test]
fn hq_api_roles_consolidated_stock_and_prices() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let p1 = hq.add_store("S001", "north");
    let p3 = hq.add_store("S003", "south");
    let _hq_proc = hq.start();
    let a1 = Agent::init(dir.path(), "S001", &p1).unwrap();
    let a3 = Agent::init(dir.path(), "S003", &p3).unwrap();
    let (_x, _y) = (a1.start(), a3.start());
    for a in [&a1, &a3] {
        wait_until(WAIT, "the catalog at the store", || {
            (price_at(a) == 129).then_some(())
        });
        let (status, body) = a.send(
            "POST",
            "/v1/stock/received",
            &json!({ "movement_no": "delivery-1", "sku": "cola", "qty": 24 }),
        );
        assert_eq!(status, 201, "{body}");
    }
    sell(&a1, 4);
    let admin = hq.token("admin");
    let north = hq.token("regional:north");
    let readonly = hq.token("readonly");

    let (status, body) = hq.api(
        &admin,
        "POST",
        "/v1/prices",
        Some(&json!({ "sku": "cola", "scope": "store:S003", "price_cents": 111 })),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the store price at S003", || {
        (price_at(&a3) == 111).then_some(())
    });

    wait_until(WAIT, "S001's stock at HQ", || {
        let (_, body) = hq.api(&north, "GET", "/v1/stock?sku=cola", None);
        (body["totals"]["cola"] == 20).then_some(body)
    });
    let (status, body) = hq.api(&north, "GET", "/v1/stock", None);
    assert_eq!(status, 200);
    let rows = body["rows"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["region"] == "north"),
        "only north: {body}"
    );
    assert!(
        rows.iter().all(|r| r["as_of_ms"].as_i64().is_some()),
        "each figure says how fresh it is: {body}"
    );
    let (status, _) = hq.api(&north, "GET", "/v1/stock?region=south", None);
    assert_eq!(status, 403);
    let (status, _) = hq.api(&north, "GET", "/v1/stock?store=S003", None);
    assert_eq!(status, 403);
    wait_until(WAIT, "both stores' stock at HQ", || {
        let (_, body) = hq.api(&admin, "GET", "/v1/stock?sku=cola", None);
        (body["totals"]["cola"] == 44).then_some(())
    });

    let south_price = json!({ "sku": "cola", "scope": "region:south", "price_cents": 1 });
    let (status, body) = hq.api(&north, "POST", "/v1/prices", Some(&south_price));
    assert_eq!(status, 403, "{body}");
    let north_price = json!({ "sku": "cola", "scope": "region:north", "price_cents": 105 });
    let (status, body) = hq.api(&north, "POST", "/v1/prices", Some(&north_price));
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the north price at S001", || {
        (price_at(&a1) == 105).then_some(())
    });
    let (status, _) = hq.api(&readonly, "POST", "/v1/prices", Some(&north_price));
    assert_eq!(status, 403);
    let (status, body) = hq.api(
        &admin,
        "POST",
        "/v1/prices",
        Some(&json!({ "sku": "tea", "scope": "chain", "price_cents": 1 })),
    );
    assert_eq!(status, 422, "{body}");
    let (status, _) = hq.api("not-a-token", "GET", "/v1/stores", None);
    assert_eq!(status, 401);

    let (status, body) = hq.api(&north, "GET", "/v1/stores", None);
    assert_eq!(status, 200);
    assert_eq!(body["stores"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = hq.api(&north, "GET", "/v1/sales", None);
    assert_eq!(body["rows"][0]["receipts"], 1, "{body}");
    assert_eq!(body["rows"][0]["store"], "S001", "{body}");
}

// The catalog and price lists come from CSV, all or nothing; a promotion for one region reaches
// that region's tills only; stock goes back out to CSV.
#[test]
fn csv_import_export_and_regional_promotions() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    let products = dir.path().join("products.csv");
    std::fs::write(
        &products,
        "sku,name,category,unit_cost,barcodes\ncola,\"Cola, 330 ml\",drinks,0.55,4000001;4000002\ntea,Green tea,drinks,0.40,\n",
    )
    .unwrap();
    assert!(
        hq.cli_ok(&["import", "products", "--file", &products.to_string_lossy()])
            .contains("imported 2 products")
    );
    let bad = dir.path().join("bad-prices.csv");
    std::fs::write(
        &bad,
        "sku,scope,kind,price,effective_from_ms,effective_to_ms\ncola,chain,retail,1.29,,\nbiscuit,chain,retail,0.99,,\n",
    )
    .unwrap();
    let out = hq.cli(&["import", "prices", "--file", &bad.to_string_lossy()]);
    assert!(!out.status.success());
    // The row is named, as for every other bad row (issue "Sync on real lines", item 13).
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("bad-prices.csv line 3: sku biscuit is not in the catalog"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let typo = dir.path().join("typo-prices.csv");
    std::fs::write(
        &typo,
        "sku,scope,kind,price,effective_from_ms,effective_to_ms\ncola,chain,retail,1.2.9,,\n",
    )
    .unwrap();
    let out = hq.cli(&["import", "prices", "--file", &typo.to_string_lossy()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        hq.replica().price_entries().unwrap().is_empty(),
        "a refused import writes nothing"
    );
    let prices = dir.path().join("prices.csv");
    let north_first = dir.path().join("north-prices.csv");
    std::fs::write(
        &north_first,
        "sku,scope,kind,price,effective_from_ms,effective_to_ms\ncola,region:north,member,0.99,0,\n",
    )
    .unwrap();
    let out = hq.cli(&["import", "prices", "--file", &north_first.to_string_lossy()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("line 2: scope region:north: no such store or region"),
        "a price for a region HQ does not know yet: {said}"
    );
    hq.cli_ok(&["region", "add", "--id", "north", "--name", "North"]);
    std::fs::write(
        &prices,
        "sku,scope,kind,price,effective_from_ms,effective_to_ms\ncola,chain,retail,1.29,0,\ntea,chain,retail,0.89,0,\ncola,region:north,member,0.99,0,\n",
    )
    .unwrap();
    assert!(
        hq.cli_ok(&["import", "prices", "--file", &prices.to_string_lossy()])
            .contains("imported 3 price entries")
    );
    hq.cli_ok(&[
        "promo",
        "add",
        "--id",
        "tea-week",
        "--name",
        "Tea week",
        "--scope",
        "region:north",
        "--rule",
        "percent_off:20",
        "--sku",
        "tea",
    ]);
    let out = hq.cli(&[
        "promo", "add", "--id", "x", "--name", "x", "--rule", "half_off", "--sku", "tea",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not one of percent_off"));

    let p1 = hq.add_store("S001", "north");
    let p2 = hq.add_store("S002", "south");
    let _hq = hq.start();
    let (a1, a2) = (
        Agent::init(dir.path(), "S001", &p1).unwrap(),
        Agent::init(dir.path(), "S002", &p2).unwrap(),
    );
    let (_x, _y) = (a1.start(), a2.start());
    let promos_for = |a: &Agent| {
        let (_, body) = a.get("/v1/prices/tea");
        body["promotions"].as_array().map(|p| p.len())
    };
    wait_until(WAIT, "the promotion at the north till", || {
        (promos_for(&a1) == Some(1)).then_some(())
    });
    wait_until(WAIT, "prices at the south till", || {
        (price_at(&a2) == 129).then_some(())
    });
    assert_eq!(promos_for(&a2), Some(0), "south has no tea week");
    let (_, member_price) = a1.get("/v1/prices/cola?member=M1");
    assert_eq!(
        member_price["price_cents"], 99,
        "a north member pays the member price: {member_price}"
    );

    sell(&a1, 3);
    let replica = hq.replica();
    wait_until(WAIT, "the sale at HQ", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
    let export = dir.path().join("stock.csv");
    hq.cli_ok(&["export", "stock", "--file", &export.to_string_lossy()]);
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.starts_with("store,region,sku,category,qty,as_of_ms\n"),
        "{text}"
    );
    assert!(text.contains("S001,north,cola,drinks,-3,"), "{text}");
}

// A batch store sells all day without talking to HQ; `store-agent sync now` exchanges everything
// both ways and hangs up; switched to realtime at HQ, the agent follows and stays connected.
#[test]
fn a_batch_store_exchanges_on_request_and_follows_a_switch_to_realtime() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let (out, _) = hq.add_store_with("S001", "north", &["--mode", "batch"]);
    let _hq = hq.start();
    let agent = Agent::init(dir.path(), "S001", &out).unwrap();
    let _proc = agent.start();
    let sync_now = || {
        let out = std::process::Command::new(chainsync_tests::e2e::bin("store-agent"))
            .args(["sync", "now", "--data"])
            .arg(&agent.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // The first scheduled exchange happens at start: the catalog arrives, then the link hangs up.
    wait_until(WAIT, "the catalog from the first exchange", || {
        (price_at(&agent) == 129).then_some(())
    });
    wait_until(WAIT, "the batch link to hang up", || {
        (agent.get("/v1/sync").1["connected"] == false).then_some(())
    });

    let receipt = sell(&agent, 2);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.19"]);
    std::thread::sleep(Duration::from_millis(1_500));
    let replica = hq.replica();
    assert_eq!(
        replica.receipt_count().unwrap(),
        0,
        "a batch store does not push on its own"
    );
    assert_eq!(price_at(&agent), 129, "nor does it hear of new prices");

    let outcome = sync_now();
    assert_eq!(outcome["mode"], "batch", "{outcome}");
    assert!(
        outcome["pushed"].as_u64() >= Some(1) && outcome["pulled"].as_u64() >= Some(1),
        "{outcome}"
    );
    assert_eq!(replica.receipt_ids(&node("S001")).unwrap(), vec![receipt]);
    assert_eq!(price_at(&agent), 119);
    assert_eq!(agent.get("/v1/sync").1["outbox"]["sales"], 0);

    hq.cli_ok(&["store", "mode", "--id", "S001", "--mode", "realtime"]);
    sync_now();
    wait_until(WAIT, "the agent to stay connected", || {
        (agent.get("/v1/sync").1["connected"] == true).then_some(())
    });
    sell(&agent, 1);
    wait_until(WAIT, "a realtime sale at HQ without asking", || {
        (replica.receipt_count().unwrap() == 2).then_some(())
    });
}

// A batch store with a daily window makes no scheduled exchange outside it (after the first
// contact, which tells it its mode), while `sync now` still works; a window that is not a time of day stops the agent with the key named.
#[test]
fn a_batch_store_keeps_to_its_daily_window() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let (out, _) = hq.add_store_with("S001", "north", &["--mode", "batch"]);
    let _hq = hq.start();
    let agent = Agent::init(dir.path(), "S001", &out).unwrap();
    let config = agent.data.join("agent.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let set = |extra: &str| {
        let text: String = original
            .lines()
            .filter(|l| !l.starts_with("batch_interval_ms"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&config, format!("{text}batch_interval_ms = 500\n{extra}")).unwrap();
    };
    let store_agent = |args: &[&str]| {
        std::process::Command::new(chainsync_tests::e2e::bin("store-agent"))
            .args(args)
            .arg("--data")
            .arg(&agent.data)
            .output()
            .unwrap()
    };

    set("batch_window_utc = \"25:00-01:00\"\n");
    let out = store_agent(&["status"]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("batch_window_utc"), "{why}");

    // A one-hour window starting two hours from now (UTC).
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24) as u32;
    set(&format!(
        "batch_window_utc = \"{:02}:00-{:02}:00\"\n",
        (hour + 2) % 24,
        (hour + 3) % 24
    ));
    let _proc = agent.start();
    // The first contact (the agent learns its mode) brings the catalog; then it hangs up.
    wait_until(WAIT, "the catalog from the first contact", || {
        (price_at(&agent) == 129).then_some(())
    });
    wait_until(WAIT, "the batch link to hang up", || {
        (agent.get("/v1/sync").1["connected"] == false).then_some(())
    });
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.19"]);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        price_at(&agent),
        129,
        "no scheduled exchange outside the window (the interval is 500 ms)"
    );
    let out = store_agent(&["sync", "now"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(price_at(&agent), 119, "sync now works at any time");
}

// Issue "Sync on real lines", item 15: the POS's stock counts and transfers and HQ's product
// list had no test. Goods received, a count that finds three missing, a count that finds the
// books right (moves nothing), transfers out and in, each retried once: the store's stock and
// HQ's agree, and each movement counted once.
#[test]
fn stock_received_counted_and_transferred_once_each_reach_hq() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    let provision = hq.add_store("S001", "north");
    let _hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let _proc = agent.start();
    wait_for_catalog(&agent);

    let steps: [(&str, serde_json::Value, i64, i64); 5] = [
        (
            "/v1/stock/received",
            json!({ "movement_no": "r1", "sku": "cola", "qty": 10, "reference": "delivery 77" }),
            10,
            10,
        ),
        (
            "/v1/stock/counts",
            json!({ "movement_no": "c1", "sku": "cola", "qty": 7 }),
            -3,
            7,
        ),
        (
            "/v1/stock/counts",
            json!({ "movement_no": "c2", "sku": "cola", "qty": 7 }),
            0,
            7,
        ),
        (
            "/v1/stock/transfers",
            json!({ "movement_no": "t1", "sku": "cola", "qty": 2, "reference": "to S002" }),
            -2,
            5,
        ),
        (
            "/v1/stock/transfers",
            json!({ "movement_no": "t2", "sku": "cola", "qty": 4, "direction": "in" }),
            4,
            9,
        ),
    ];
    for (path, body, moved, after) in steps {
        let (status, answer) = agent.send("POST", path, &body);
        assert_eq!(status, 201, "{path} {body}: {answer}");
        assert_eq!(
            (&answer["moved"], &answer["qty"]),
            (&json!(moved), &json!(after))
        );
        // The till retries: the first answer again, nothing moved twice.
        let (status, again) = agent.send("POST", path, &body);
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["qty"], json!(after), "{again}");
        assert_eq!(agent.get("/v1/stock/cola").1["qty"], after);
    }
    for (body, error) in [
        (
            json!({ "movement_no": "t3", "sku": "cola", "qty": 1, "direction": "sideways" }),
            "direction `sideways` is neither in nor out",
        ),
        (
            json!({ "movement_no": "t4", "sku": "tea", "qty": 1 }),
            "unknown sku tea",
        ),
        (
            json!({ "movement_no": "t5", "sku": "cola", "qty": 0 }),
            "quantity 0 is not allowed here",
        ),
    ] {
        let (status, answer) = agent.send("POST", "/v1/stock/transfers", &body);
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(error)),
            "{answer}"
        );
    }
    assert_eq!(agent.get("/v1/stock/cola").1["qty"], 9);

    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    wait_until(WAIT, "the store's stock at HQ", || {
        (replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap() == 9).then_some(())
    });
    let (status, products) = hq.api(&hq.token("readonly"), "GET", "/v1/products", None);
    assert_eq!(status, 200, "{products}");
    assert_eq!(products["products"][0]["sku"], "cola", "{products}");
    assert_eq!(products["products"][0]["name"], "Cola 330 ml", "{products}");
}

fn error_of(answer: &serde_json::Value) -> &str {
    answer["error"].as_str().unwrap_or_default()
}

// API tokens (issue "Sync on real lines", item 10): an admin lists them (never the token
// itself), makes one with an expiry, and revokes one through the API or the CLI while HQ runs;
// a revoked or expired token is refused at its next request, naming why. Only an admin may.
#[test]
fn api_tokens_are_listed_revoked_and_expire_while_hq_runs() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    hq.add_store("S001", "north");
    let _hq_proc = hq.start();
    let admin = hq.token("admin");
    let north = hq.token("regional:north");
    let readonly = hq.token("readonly");

    let (status, listed) = hq.api(&admin, "GET", "/v1/tokens", None);
    assert_eq!(status, 200, "{listed}");
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3, "{listed}");
    assert!(
        tokens
            .iter()
            .all(|t| t["valid"] == true && t.get("token").is_none()),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(&admin),
        "a list never shows a token: {listed}"
    );
    for token in [&north, &readonly] {
        assert_eq!(hq.api(token, "GET", "/v1/tokens", None).0, 403);
        let body = json!({ "name": "x", "role": "admin" });
        assert_eq!(hq.api(token, "POST", "/v1/tokens", Some(&body)).0, 403);
    }

    // Made through the API, with an expiry; bad requests name the problem.
    let (status, made) = hq.api(
        &admin,
        "POST",
        "/v1/tokens",
        Some(&json!({ "name": "Auditor", "role": "regional:north", "expires_days": 30 })),
    );
    assert_eq!(status, 201, "{made}");
    let auditor = made["token"].as_str().unwrap().to_owned();
    let days =
        (made["expires_ms"].as_u64().unwrap() - made["created_ms"].as_u64().unwrap()) / 86_400_000;
    assert_eq!(days, 30, "{made}");
    assert_eq!(hq.api(&auditor, "GET", "/v1/stores", None).0, 200);
    for (body, status, error) in [
        (
            json!({ "name": "x", "role": "regional:nowhere" }),
            422,
            "no region nowhere",
        ),
        (
            json!({ "name": "x", "role": "owner" }),
            422,
            "is not admin, readonly",
        ),
        (
            json!({ "name": "x", "role": "admin", "expires_days": 0 }),
            422,
            "1 to 3660 days",
        ),
        (json!({ "name": " ", "role": "admin" }), 422, "name"),
        (
            json!({ "name": "x", "role": "admin", "scope": "all" }),
            400,
            "unknown field",
        ),
    ] {
        let (got, answer) = hq.api(&admin, "POST", "/v1/tokens", Some(&body));
        assert_eq!(got, status, "{body}: {answer}");
        assert!(error_of(&answer).contains(error), "{body}: {answer}");
    }

    // Revoked through the API: refused at the next request, revoking again keeps the time.
    let id = made["id"].as_str().unwrap();
    let (status, revoked) = hq.api(&admin, "POST", &format!("/v1/tokens/{id}/revoke"), None);
    assert_eq!(status, 200, "{revoked}");
    let (status, answer) = hq.api(&auditor, "GET", "/v1/stores", None);
    assert_eq!(status, 401, "{answer}");
    assert!(error_of(&answer).contains("revoked"), "{answer}");
    let (_, again) = hq.api(&admin, "POST", &format!("/v1/tokens/{id}/revoke"), None);
    assert_eq!(again["revoked_ms"], revoked["revoked_ms"], "{again}");
    let (status, answer) = hq.api(&admin, "POST", "/v1/tokens/0123456789ab/revoke", None);
    assert_eq!(status, 404, "{answer}");

    // Revoked with the CLI while HQ runs.
    let readonly_id = hq.api(&admin, "GET", "/v1/tokens", None).1["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "readonly")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(hq.api(&readonly, "GET", "/v1/stock", None).0, 200);
    let said = hq.cli_ok(&["token", "revoke", "--id", &readonly_id]);
    assert!(said.contains("revoked"), "{said}");
    let (status, answer) = hq.api(&readonly, "GET", "/v1/stock", None);
    assert_eq!(status, 401, "{answer}");
    let listing = hq.cli_ok(&["token", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&readonly_id) && l.contains("revoked")),
        "{listing}"
    );

    // Expired: a token whose expiry passes while HQ runs.
    let now = chainsync::transport::now_ms();
    hq.replica()
        .add_api_token(
            "soon-gone-token",
            "temp",
            "admin",
            None,
            Some(now + 1_500),
            now,
        )
        .unwrap();
    assert_eq!(hq.api("soon-gone-token", "GET", "/v1/stores", None).0, 200);
    let (_, answer) = wait_until(WAIT, "the token to expire", || {
        let (status, answer) = hq.api("soon-gone-token", "GET", "/v1/stores", None);
        (status == 401).then_some((status, answer))
    });
    assert!(error_of(&answer).contains("expired"), "{answer}");
    assert_eq!(
        hq.api(&admin, "GET", "/v1/stores", None).0,
        200,
        "others still work"
    );
    assert_eq!(hq.api(&north, "GET", "/v1/stores", None).0, 200);
}

// HQ's write routes per role (issue "Sync on real lines", item 15): products, promotions (made,
// ended early, allocated), prices and members; what each role may read of prices and
// promotions; bad bodies refused naming the problem, and nothing written by a refused request.
#[test]
fn hq_api_products_promotions_prices_and_members_per_role() {
    let dir = tempfile::tempdir().unwrap();
    let hq = setup(dir.path());
    hq.add_store("S001", "north");
    hq.add_store("S003", "south");
    let _hq_proc = hq.start();
    let admin = hq.token("admin");
    let north = hq.token("regional:north");
    let readonly = hq.token("readonly");

    // Products: admin only.
    let tea =
        json!({ "sku": "tea", "name": "Green tea", "category": "drinks", "unit_cost_cents": 40 });
    for token in [&north, &readonly] {
        assert_eq!(hq.api(token, "POST", "/v1/products", Some(&tea)).0, 403);
    }
    for (body, status, error) in [
        (json!({ "sku": "tea", "name": "" }), 422, "needs a name"),
        (
            json!({ "sku": "tea", "name": "Tea", "unit_cost_cents": -1 }),
            422,
            "non-negative cost",
        ),
        (json!({ "sku": "bad sku!", "name": "Tea" }), 422, "sku"),
        (
            json!({ "sku": "tea", "name": "Tea", "colour": "green" }),
            400,
            "unknown field",
        ),
    ] {
        let (got, answer) = hq.api(&admin, "POST", "/v1/products", Some(&body));
        assert_eq!(got, status, "{body}: {answer}");
        assert!(error_of(&answer).contains(error), "{body}: {answer}");
    }
    let (_, products) = hq.api(&admin, "GET", "/v1/products", None);
    assert_eq!(
        products["products"].as_array().unwrap().len(),
        1,
        "refused, so nothing written: {products}"
    );
    let (status, answer) = hq.api(&admin, "POST", "/v1/products", Some(&tea));
    assert_eq!(status, 201, "{answer}");
    let (_, products) = hq.api(&readonly, "GET", "/v1/products", None);
    assert!(
        products["products"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["sku"] == "tea" && p["name"] == "Green tea"),
        "{products}"
    );

    // Prices: each role reads what covers its stores.
    for (scope, cents) in [
        ("chain", 150),
        ("region:south", 140),
        ("store:S003", 130),
        ("region:north", 145),
        ("store:S001", 135),
    ] {
        let body = json!({ "sku": "tea", "scope": scope, "price_cents": cents });
        let (status, answer) = hq.api(&admin, "POST", "/v1/prices", Some(&body));
        assert_eq!(status, 201, "{scope}: {answer}");
    }
    for scope in ["store:S999", "region:mars"] {
        let body = json!({ "sku": "tea", "scope": scope, "price_cents": 1 });
        let (status, answer) = hq.api(&admin, "POST", "/v1/prices", Some(&body));
        assert_eq!(status, 422, "{scope}: {answer}");
        assert!(
            error_of(&answer).contains("no such store or region"),
            "{answer}"
        );
        let out = hq.cli(&[
            "price", "set", "--sku", "tea", "--price", "0.01", "--scope", scope,
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("no such store or region"),
            "{said}"
        );
    }
    let scopes = |token: &str| -> Vec<String> {
        let (status, prices) = hq.api(token, "GET", "/v1/prices?sku=tea", None);
        assert_eq!(status, 200, "{prices}");
        let mut scopes: Vec<String> = prices["prices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["scope"].as_str().unwrap().to_owned())
            .collect();
        scopes.sort();
        scopes
    };
    let all = [
        "chain",
        "region:north",
        "region:south",
        "store:S001",
        "store:S003",
    ];
    assert_eq!(scopes(&admin), all);
    assert_eq!(scopes(&readonly), all);
    assert_eq!(scopes(&north), ["chain", "region:north", "store:S001"]);
    assert_eq!(
        hq.api(&north, "GET", "/v1/prices?region=south", None).0,
        400,
        "no such filter"
    );

    // Promotions: a regional manager makes them for its region only and sees the chain's and
    // its own; ending and allocating follow the same rule.
    let promo = |id: &str, scope: &str| {
        json!({ "id": id, "name": format!("Tea {id}"), "scope": scope,
                "rule": { "percent_off": { "basis_points": 1000 } }, "skus": ["tea"] })
    };
    assert_eq!(
        hq.api(
            &north,
            "POST",
            "/v1/promotions",
            Some(&promo("s1", "region:south"))
        )
        .0,
        403
    );
    assert_eq!(
        hq.api(
            &north,
            "POST",
            "/v1/promotions",
            Some(&promo("c1", "chain"))
        )
        .0,
        403
    );
    assert_eq!(
        hq.api(
            &readonly,
            "POST",
            "/v1/promotions",
            Some(&promo("n0", "region:north"))
        )
        .0,
        403
    );
    let (status, answer) = hq.api(
        &north,
        "POST",
        "/v1/promotions",
        Some(&promo("n1", "region:north")),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["promotion"]["rule"],
        json!({ "percent_off": { "basis_points": 1000 } }),
        "the rule as data: {answer}"
    );
    for (id, scope) in [("c1", "chain"), ("s1", "region:south")] {
        let (status, answer) = hq.api(&admin, "POST", "/v1/promotions", Some(&promo(id, scope)));
        assert_eq!(status, 201, "{answer}");
    }
    let mut unknown_sku = promo("x1", "chain");
    unknown_sku["skus"] = json!(["biscuit"]);
    let mut bad_rule = promo("x2", "chain");
    bad_rule["rule"] = json!({ "percent_off": { "basis_points": 0 } });
    let mut bad_store = promo("x3", "chain");
    bad_store["allocations"] = json!([{ "store": "S999", "units": 5 }]);
    for (body, status) in [
        (unknown_sku, 422),
        (bad_rule, 422),
        (bad_store, 422),
        (json!({ "id": "x4" }), 400),
    ] {
        let (got, answer) = hq.api(&admin, "POST", "/v1/promotions", Some(&body));
        assert_eq!(got, status, "{body}: {answer}");
        assert!(!error_of(&answer).is_empty(), "{answer}");
    }
    let ids = |token: &str| -> Vec<String> {
        let (status, listed) = hq.api(token, "GET", "/v1/promotions", None);
        assert_eq!(status, 200, "{listed}");
        let mut ids: Vec<String> = listed["promotions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&admin),
        ["c1", "n1", "s1"],
        "refused promotions are not written"
    );
    assert_eq!(ids(&readonly), ["c1", "n1", "s1"]);
    assert_eq!(ids(&north), ["c1", "n1"]);

    let (status, _) = hq.api(
        &north,
        "POST",
        "/v1/promotions/s1/end?scope=region:south",
        None,
    );
    assert_eq!(status, 403);
    let (status, answer) = hq.api(
        &north,
        "POST",
        "/v1/promotions/n1/end?scope=region:north",
        None,
    );
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer["promotion"]["ends_at_ms"].as_i64().is_some(),
        "{answer}"
    );
    let (status, answer) = hq.api(
        &north,
        "POST",
        "/v1/promotions/n1/end?scope=region:north",
        None,
    );
    assert_eq!(status, 409, "ended already: {answer}");
    let (status, answer) = hq.api(&admin, "POST", "/v1/promotions/zz/end", None);
    assert_eq!(status, 404, "{answer}");
    let allocate = |token: &str, store: &str, units: u32| {
        hq.api(
            token,
            "PUT",
            "/v1/promotions/c1/allocations?scope=chain",
            Some(&json!({ "store": store, "units": units })),
        )
    };
    assert_eq!(
        allocate(&north, "S001", 5).0,
        403,
        "the chain's promotion is not north's"
    );
    let (status, answer) = allocate(&admin, "S001", 50);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["promotion"]["allocations"],
        json!([{ "store": "S001", "units": 50 }]),
        "{answer}"
    );
    let (status, answer) = allocate(&admin, "S999", 5);
    assert_eq!(status, 422, "{answer}");

    // Members at HQ: admin writes, every role reads; a birthday pricing cannot read is refused.
    let profile =
        json!({ "name": "Ann", "phone": "555-0101", "birthday": "04-15", "level": "gold" });
    for token in [&north, &readonly] {
        assert_eq!(
            hq.api(token, "PUT", "/v1/members/M9", Some(&profile)).0,
            403
        );
    }
    for (body, error) in [
        (json!({ "birthday": "1990-04-15" }), "is not MM-DD"),
        (json!({ "birthday": "13-01" }), "is not MM-DD"),
        (json!({ "name": "x".repeat(300) }), "longer than 200 bytes"),
        (json!({}), "no field to set"),
    ] {
        let (status, answer) = hq.api(&admin, "PUT", "/v1/members/M9", Some(&body));
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(error_of(&answer).contains(error), "{body}: {answer}");
    }
    let (_, m9) = hq.api(&admin, "GET", "/v1/members/M9", None);
    assert_eq!(m9["profile"], json!({}), "nothing written: {m9}");
    let (status, answer) = hq.api(&admin, "PUT", "/v1/members/M9", Some(&profile));
    assert_eq!(status, 200, "{answer}");
    for token in [&admin, &north, &readonly] {
        let (status, m9) = hq.api(token, "GET", "/v1/members/M9", None);
        assert_eq!(status, 200, "{m9}");
        assert_eq!(m9["profile"]["level"], "gold", "{m9}");
        assert_eq!(m9["profile"]["birthday"], "04-15", "{m9}");
    }
    let (_, found) = hq.api(&readonly, "GET", "/v1/members?phone=5550101", None);
    assert_eq!(found["members"][0]["member"], "M9", "{found}");

    // The loyalty policy and one card's allowance: admin only, bounds named.
    let (status, policy) = hq.api(&readonly, "GET", "/v1/loyalty/policy", None);
    assert_eq!(status, 200, "{policy}");
    let mut policy = policy;
    policy["points_per_unit"] = json!(3);
    assert_eq!(
        hq.api(&north, "PUT", "/v1/loyalty/policy", Some(&policy)).0,
        403
    );
    let (status, answer) = hq.api(&admin, "PUT", "/v1/loyalty/policy", Some(&policy));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        hq.api(&north, "GET", "/v1/loyalty/policy", None).1["points_per_unit"],
        3
    );
    let allowance = json!({ "stored_value_cents": 2500, "points": 100 });
    assert_eq!(
        hq.api(
            &readonly,
            "PUT",
            "/v1/members/M9/allowance",
            Some(&allowance)
        )
        .0,
        403
    );
    let absurd = json!({ "stored_value_cents": -1, "points": 0 });
    let (status, answer) = hq.api(&admin, "PUT", "/v1/members/M9/allowance", Some(&absurd));
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = hq.api(&admin, "PUT", "/v1/members/M9/allowance", Some(&allowance));
    assert_eq!(status, 200, "{answer}");
    let m9 = chainsync::ids::MemberId::new("M9").unwrap();
    let held = hq
        .replica()
        .member_allowance(&m9)
        .unwrap()
        .expect("an allowance");
    assert_eq!((held.stored_value_cents, held.points), (2500, 100));
    let (status, _) = hq.api(&admin, "DELETE", "/v1/members/M9/allowance", None);
    assert_eq!(status, 200);
    assert_eq!(hq.replica().member_allowance(&m9).unwrap(), None);
}
