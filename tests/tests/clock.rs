//! Store clocks set hours wrong, with real processes: two agents run under libfaketime, one five
//! hours ahead and one five hours behind HQ. Sales keep the store's own time, a member edited at
//! both ends up the same everywhere, stored value adds up everywhere, a price HQ sets "now" is
//! charged at once even by the store whose clock says it is not in effect yet, and a price HQ
//! schedules is charged by no store before HQ's clock reaches it: not by the fast one, nor by a
//! third store with a right clock that has seen the fast store's member edits.
//!
//! Ignored by plain `cargo test` because it needs libfaketime (`apt-get install faketime`);
//! `.ci/run` installs it and runs this test with `--ignored`.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, wait_until};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(30);
const HOUR_MS: i64 = 3_600_000;
const FAKETIME_LIBS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn price_at(agent: &Agent) -> i64 {
    price_of(agent, "cola")
}

fn price_of(agent: &Agent, sku: &str) -> i64 {
    let (status, body) = agent.get(&format!("/v1/prices/{sku}"));
    if status != 200 {
        return -1;
    }
    body["price_cents"].as_i64().unwrap_or(-1)
}

#[test]
#[ignore = "needs libfaketime (apt-get install faketime); .ci/run runs it"]
fn stores_with_clocks_hours_off_converge_and_keep_their_sale_times() {
    let lib = FAKETIME_LIBS
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("libfaketime is not installed: apt-get install faketime");
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    hq.cli_ok(&[
        "product",
        "add",
        "--sku",
        "cola",
        "--name",
        "Cola",
        "--category",
        "drinks",
    ]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    hq.cli_ok(&[
        "product",
        "add",
        "--sku",
        "water",
        "--name",
        "Water",
        "--category",
        "drinks",
    ]);
    let ahead_provision = hq.add_store("S001", "north");
    let behind_provision = hq.add_store("S002", "north");
    let right_provision = hq.add_store("S003", "north");
    let _hq = hq.start();
    let ahead = Agent::init(dir.path(), "S001", &ahead_provision).unwrap();
    let behind = Agent::init(dir.path(), "S002", &behind_provision).unwrap();
    let fake = |offset: &'static str| {
        [
            ("LD_PRELOAD", *lib),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    };
    let a = ahead.start_with_env(&fake("+5h"));
    let b = behind.start_with_env(&fake("-5h"));
    for (agent, proc) in [(&ahead, &a), (&behind, &b)] {
        let deadline = std::time::Instant::now() + WAIT;
        while price_at(agent) != 129 {
            assert!(
                std::time::Instant::now() < deadline,
                "no catalog at {}: {:?}\n{}",
                agent.store,
                agent.get("/v1/prices/cola"),
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Sales keep the store's clock, at HQ too.
    let mut sold = Vec::new();
    for (agent, offset) in [(&ahead, 5 * HOUR_MS), (&behind, -5 * HOUR_MS)] {
        let (status, body) = agent.send(
            "POST",
            "/v1/sales",
            &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
        );
        assert_eq!(status, 201, "{body}");
        sold.push((body["receipt_id"].as_str().unwrap().to_owned(), offset));
    }
    let replica = hq.replica();
    wait_until(WAIT, "both sales at HQ", || {
        (replica.receipt_count().unwrap() == 2).then_some(())
    });
    for (id, offset) in &sold {
        let sold_at: i64 = replica
            .connection()
            .query_row("SELECT sold_at_ms FROM receipts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let off_by = sold_at - now_ms();
        assert!(
            (off_by - offset).abs() < 10 * 60_000,
            "receipt {id} sold at {sold_at}: {off_by} ms from HQ's clock, expected about {offset}"
        );
    }

    // A member edited at both stores and earning at both ends up the same everywhere.
    for (agent, name) in [
        (&behind, "Bea (behind)"),
        (&ahead, "Bea (ahead)"),
        (&behind, "Bea"),
    ] {
        let (status, body) = agent.send("PUT", "/v1/members/M1", &json!({ "name": name }));
        assert_eq!(status, 200, "{body}");
        let (status, body) = agent.stored_value("M1", 10);
        assert_eq!(status, 201, "{body}");
    }
    let at_hq = wait_until(WAIT, "the member's stored value at HQ", || {
        let points = replica
            .balance(
                &"M1".parse().unwrap(),
                chainsync::model::LedgerAccount::StoredValue,
            )
            .unwrap();
        let profile = replica.member_profile(&"M1".parse().unwrap()).unwrap();
        (points == 30).then(|| profile[&chainsync::model::ProfileField::Name].value.clone())
    });
    for agent in [&ahead, &behind] {
        wait_until(WAIT, "one member everywhere", || {
            let (_, body) = agent.get("/v1/members/M1");
            (body["stored_value_cents"] == 30 && body["profile"]["name"] == at_hq.as_str())
                .then_some(())
        });
    }

    // HQ sets a price "now" (HQ's now): both stores charge it once it arrives, including the one
    // whose own clock is five hours before the price's start.
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.49"]);
    for agent in [&ahead, &behind] {
        wait_until(WAIT, "the new price at the store", || {
            (price_at(agent) == 149).then_some(())
        });
    }
    let (status, body) = behind.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
    );
    assert_eq!((status, &body["total_cents"]), (201, &json!(149)), "{body}");

    // HQ schedules a price two hours ahead on its clock: no store charges it yet, not the one
    // whose own clock is five hours ahead, and not the one whose clock is right but has seen the
    // fast store's member edits (which moved its hybrid logical clock five hours ahead).
    let starts = (now_ms() + 2 * HOUR_MS).to_string();
    hq.cli_ok(&[
        "price",
        "set",
        "--sku",
        "cola",
        "--price",
        "1.99",
        "--from-ms",
        &starts,
    ]);
    // Water's price comes after the scheduled one in HQ's price stream: a store that charges it
    // holds the scheduled one too.
    hq.cli_ok(&["price", "set", "--sku", "water", "--price", "0.99"]);
    let right = Agent::init(dir.path(), "S003", &right_provision).unwrap();
    let _c = right.start();
    wait_until(
        WAIT,
        "the fast store's member edit at the store whose clock is right",
        || {
            let (_, body) = right.get("/v1/members/M1");
            (body["profile"]["name"] == at_hq.as_str()).then_some(())
        },
    );
    for agent in [&ahead, &behind, &right] {
        wait_until(WAIT, "the price after the scheduled one", || {
            (price_of(agent, "water") == 99).then_some(())
        });
    }
    for agent in [&ahead, &behind, &right] {
        let (status, body) = agent.send(
            "POST",
            "/v1/sales",
            &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
        );
        assert_eq!(
            (status, &body["total_cents"]),
            (201, &json!(149)),
            "{} charged a price HQ scheduled two hours from now: {body}",
            agent.store
        );
    }
    let stock = |store: &str| {
        replica
            .stock_of(&NodeId::new(store).unwrap(), &"cola".parse().unwrap())
            .unwrap()
    };
    wait_until(WAIT, "stock at HQ", || {
        (stock("S001") == -2 && stock("S002") == -3 && stock("S003") == -1).then_some(())
    });
}
