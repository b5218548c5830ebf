//! Hosted stores with real processes: the agent keeps no replica, looks prices and members up at
//! HQ, pushes each write at once, keeps selling from its journal and cache while HQ is down,
//! drains the journal exactly once when HQ is back, and follows a switch to realtime.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, wait_until};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn sale(agent: &Agent, receipt_no: &str, sku: &str) -> (u16, serde_json::Value) {
    agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": receipt_no, "lines": [{ "sku": sku, "qty": 1 }] }),
    )
}

/// Rows of `table` in the agent's own database (opened read-only beside the running agent).
fn local_rows(agent: &Agent, table: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        agent.data.join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_hosted_store_reads_through_to_hq_sells_offline_and_drains_its_journal_once() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    for (sku, name) in [("cola", "Cola 330 ml"), ("chips", "Chips 150 g")] {
        hq.cli_ok(&[
            "product",
            "add",
            "--sku",
            sku,
            "--name",
            name,
            "--category",
            "snacks",
        ]);
    }
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    hq.cli_ok(&["price", "set", "--sku", "chips", "--price", "2.49"]);
    let (provision, _) = hq.add_store_with("S001", "north", &["--mode", "hosted"]);
    let hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let agent_proc = agent.start();

    // Reads come from HQ.
    let price = wait_until(WAIT, "the price of cola from HQ", || {
        let (status, body) = agent.get("/v1/prices/cola");
        (status == 200).then_some(body)
    });
    assert_eq!(price["price_cents"], 129, "{price}");
    assert_eq!(price["source"], "hq", "{price}");
    let (status, body) = agent.get("/v1/prices/nosuch");
    assert_eq!(status, 404, "an sku HQ does not know: {body}");

    // Writes go to HQ at once.
    let (status, body) = sale(&agent, "1", "cola");
    assert_eq!((status, &body["total_cents"]), (201, &json!(129)), "{body}");
    let (status, body) = agent.send("PUT", "/v1/members/M9", &json!({ "name": "Bea" }));
    assert_eq!(status, 200, "{body}");
    let (status, body) = agent.stored_value("M9", 40);
    assert_eq!((status, &body["balance"]), (201, &json!(40)), "{body}");
    let replica = hq.replica();
    wait_until(WAIT, "the sale and the stored value at HQ", || {
        (replica.receipt_ids(&node("S001")).unwrap().len() == 1
            && replica
                .balance(
                    &"M9".parse().unwrap(),
                    chainsync::model::LedgerAccount::StoredValue,
                )
                .unwrap()
                == 40)
            .then_some(())
    });
    let (status, body) = agent.get("/v1/members/M9");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["stored_value_cents"],
            &body["profile"]["name"],
            &body["source"]
        ),
        (&json!(40), &json!("Bea"), &json!("hq")),
        "{body}"
    );
    // No replica: the catalog, prices and HQ's directory of other data are not held locally.
    assert_eq!(local_rows(&agent, "products"), 0);
    assert_eq!(local_rows(&agent, "price_entries"), 0);

    // HQ goes away: the store keeps selling what it has looked up, from its cache.
    hq_proc.kill9();
    let body = wait_until(WAIT, "the price of cola from the cache", || {
        let (status, body) = agent.get("/v1/prices/cola");
        (status == 200 && body["source"]["cache_fetched_ms"].is_u64()).then_some(body)
    });
    assert_eq!(body["price_cents"], 129, "{body}");
    for n in 2..=6 {
        let (status, body) = sale(&agent, &n.to_string(), "cola");
        assert_eq!((status, &body["total_cents"]), (201, &json!(129)), "{body}");
    }
    let (status, body) = sale(&agent, "7", "chips");
    assert_eq!(status, 503, "chips was never looked up here: {body}");
    assert!(body["error"].as_str().unwrap().contains("chips"), "{body}");
    let (status, body) = agent.stored_value("M9", -10);
    assert_eq!(status, 503, "spending at a hosted store needs HQ: {body}");
    let (status, body) = agent.stored_value("M9", 5);
    assert_eq!(status, 201, "a top-up paid in cash works offline: {body}");
    // A till retrying a sale it already made records nothing new, offline too.
    let (status, body) = sale(&agent, "3", "cola");
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    assert_eq!(agent.get("/v1/sync").1["outbox"]["sales"], 5);

    // The agent is killed outright while HQ is still down: the journal is on disk.
    agent_proc.kill9();
    let _agent_proc = agent.start();
    assert_eq!(agent.get("/v1/sync").1["outbox"]["sales"], 5);
    let (status, body) = agent.get("/v1/prices/cola");
    assert_eq!(status, 200, "the cache survives too: {body}");

    // HQ comes back: the journal drains, in order, exactly once.
    let _hq_proc = hq.start();
    wait_until(WAIT, "the offline sales at HQ", || {
        (replica.receipt_ids(&node("S001")).unwrap().len() == 6).then_some(())
    });
    wait_until(WAIT, "the journal drained", || {
        let sync = agent.get("/v1/sync").1;
        (sync["outbox"]["sales"] == 0 && sync["outbox"]["members"] == 0).then_some(())
    });
    let mut ids = replica.receipt_ids(&node("S001")).unwrap();
    ids.sort();
    let expected: Vec<String> = (1..=6).map(|n| format!("S001-P{n}")).collect();
    assert_eq!(ids, expected, "every sale once, none twice");
    assert_eq!(
        replica
            .stock_of(&node("S001"), &"cola".parse().unwrap())
            .unwrap(),
        -6
    );
    wait_until(WAIT, "HQ's balance read back through the store", || {
        let (status, body) = agent.get("/v1/members/M9");
        (status == 200 && body["stored_value_cents"] == 45 && body["source"] == "hq").then_some(())
    });
    let (status, body) = agent.stored_value("M9", -10);
    assert_eq!((status, &body["balance"]), (201, &json!(35)), "{body}");

    // Switched to realtime at HQ, the store builds its replica and answers from it.
    hq.cli_ok(&["store", "mode", "--id", "S001", "--mode", "realtime"]);
    wait_until(WAIT, "the catalog in the store's own replica", || {
        let (status, body) = agent.get("/v1/prices/chips");
        (status == 200 && body["source"] == "replica").then_some(body)
    });
    assert_eq!(local_rows(&agent, "products"), 2);
    let (status, body) = sale(&agent, "8", "chips");
    assert_eq!((status, &body["total_cents"]), (201, &json!(249)), "{body}");
    wait_until(WAIT, "the realtime sale at HQ", || {
        (replica.receipt_ids(&node("S001")).unwrap().len() == 7).then_some(())
    });

    // And back to hosted: answers come from HQ again, and a new HQ price is there at once.
    hq.cli_ok(&["store", "mode", "--id", "S001", "--mode", "hosted"]);
    wait_until(WAIT, "answers from HQ again", || {
        let (status, body) = agent.get("/v1/prices/chips");
        (status == 200 && body["source"] == "hq").then_some(())
    });
    hq.cli_ok(&["price", "set", "--sku", "chips", "--price", "2.29"]);
    wait_until(WAIT, "HQ's new price through the hosted store", || {
        (agent.get("/v1/prices/chips").1["price_cents"] == 229).then_some(())
    });
}

// Issue "Sync on real lines", item 5: a busy hosted till stalled 20 s when HQ died. Each lookup
// the till gave up on (after 1.5 s) was dropped before the 3 s rule could see it, so at a steady
// request rate the session lived until QUIC's idle timeout (20 s) and every answer in between
// cost the till 1.5 s. Now the session ends by the lookup rule, and the till reads its cache at
// once. (The 10 s bound is half QUIC's idle timeout: it tells the two apart.)
#[test]
fn a_busy_hosted_till_reads_its_cache_soon_after_hq_dies() {
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
    let (provision, _) = hq.add_store_with("S001", "north", &["--mode", "hosted"]);
    let hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let _agent_proc = agent.start();
    wait_until(WAIT, "the price of cola from HQ", || {
        let (status, body) = agent.get("/v1/prices/cola");
        (status == 200 && body["source"] == "hq").then_some(())
    });

    // Four tills asking all the time, until told to stop (at most 40 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tills: Vec<_> = (0..4)
        .map(|_| {
            let (agent, stop) = (agent.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(40)
                {
                    let _ = agent.try_get("/v1/prices/cola");
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    hq_proc.kill9();
    let killed = std::time::Instant::now();
    let sync = wait_until(Duration::from_secs(10), "the link to give HQ up", || {
        let sync = agent.get("/v1/sync").1;
        (sync["connected"] == false).then_some(sync)
    });
    let gave_up_after = killed.elapsed();
    let (status, body) = agent.get("/v1/prices/cola");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for till in tills {
        till.join().unwrap();
    }
    assert!(
        sync["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer a lookup")),
        "ended by the lookup rule after {gave_up_after:?}: {sync}"
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["source"]["cache_fetched_ms"].is_u64(), "{body}");
}
