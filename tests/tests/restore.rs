//! A store whose database is lost (a disk replaced, the file deleted) while its key survives:
//! the agent refuses to sell until HQ has said what it holds of the store, restores the store's
//! own history from HQ's signed snapshots, and goes on from there without forking its streams.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, Proc, wait_until};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn sale(agent: &Agent, receipt_no: &str) -> (u16, serde_json::Value) {
    agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": receipt_no, "lines": [{ "sku": "cola", "qty": 1 }] }),
    )
}

/// No stream is halted at HQ (none forked).
fn assert_no_stream_halted(replica: &chainsync::replica::Replica) {
    let halted = replica.halted_streams().unwrap();
    assert!(halted.is_empty(), "no stream halted at HQ: {halted:?}");
}

/// HQ and S001 running, S001 with three sales and 25 cents of stored value for M1, all of it at HQ.
fn store_with_history(root: &std::path::Path) -> (Hq, Proc, Agent, Proc) {
    let hq = Hq::init(root);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let provision = hq.add_store("S001", "north");
    let hq_proc = hq.start();
    let agent = Agent::init(root, "S001", &provision).unwrap();
    let proc = agent.start();
    wait_until(WAIT, "the catalog", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 129).then_some(())
    });
    for n in 1..=3 {
        assert_eq!(sale(&agent, &n.to_string()).0, 201);
    }
    let (status, body) = agent.stored_value("M1", 25);
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "everything at HQ", || {
        let sync = agent.get("/v1/sync").1;
        (sync["outbox"]["sales"] == 0 && sync["outbox"]["members"] == 0).then_some(())
    });
    (hq, hq_proc, agent, proc)
}

#[test]
fn a_store_that_lost_its_database_restores_its_history_from_hq_before_selling() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, hq_proc, agent, proc) = store_with_history(dir.path());
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    wait_until(WAIT, "the sales at HQ", || {
        (replica.receipt_ids(&s1).unwrap().len() == 3).then_some(())
    });
    wait_until(WAIT, "the outbox empty", || {
        (agent.get("/v1/sync").1["outbox"]["members"] == 0).then_some(())
    });

    // The disk is replaced while HQ is unreachable: the agent comes back with no database.
    proc.kill9();
    hq_proc.kill9();
    for file in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(agent.data.join(file));
    }
    let _proc = agent.start();
    let (status, body) = sale(&agent, "4");
    assert_eq!(status, 503, "no sale before HQ has spoken: {body}");
    // A write that needs no catalog is refused too, for the reason that matters here.
    let (status, body) = agent.send("PUT", "/v1/members/M1", &json!({ "name": "Ann" }));
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("afresh"), "{body}");

    // HQ is back: the store's own streams come back as HQ-signed snapshots, then it sells on.
    let _hq_proc = hq.start();
    let (status, body) = wait_until(WAIT, "selling again", || {
        let (status, body) = sale(&agent, "4");
        (status != 503).then_some((status, body))
    });
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["seq"], 4,
        "the sale continues the restored stream: {body}"
    );
    let (status, body) = sale(&agent, "2");
    assert_eq!(
        (status, &body["duplicate"]),
        (200, &json!(true)),
        "the restored history knows receipt 2: {body}"
    );
    wait_until(WAIT, "the fourth sale at HQ", || {
        (replica.receipt_ids(&s1).unwrap().len() == 4).then_some(())
    });
    assert_no_stream_halted(&replica);
    assert_eq!(replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(), -4);
    let (_, stock) = agent.get("/v1/stock/cola");
    assert_eq!(stock["qty"], -4, "the store's stock is whole again");
    let (status, body) = agent.stored_value("M1", 5);
    assert_eq!((status, &body["balance"]), (201, &json!(30)), "{body}");
    replica.audit().unwrap();
}

// A store whose machine died with its key: HQ issues a replacement provisioning file, the new
// agent enrolls with a new key, gets back the store's history and sells on from there; a store
// that joins later replays the replaced store's member history (the old key up to the
// replacement, the new key after it) and agrees on the balance.
#[test]
fn a_store_replaced_after_losing_its_key_continues_its_history_under_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, _hq_proc, agent, proc) = store_with_history(dir.path());

    // The machine dies, key and all; HQ issues a replacement and the store is set up again.
    proc.kill9();
    std::fs::remove_dir_all(&agent.data).unwrap();
    let replacement = dir.path().join("S001-replacement.provision");
    let said = hq.cli_ok(&[
        "store",
        "replace",
        "--id",
        "S001",
        "--out",
        &replacement.to_string_lossy(),
    ]);
    assert!(said.contains("set up again"), "{said}");
    let agent = Agent::init(dir.path(), "S001", &replacement).unwrap();
    let _proc = agent.start();
    let (status, body) = wait_until(WAIT, "selling again", || {
        let (status, body) = sale(&agent, "4");
        (status != 503).then_some((status, body))
    });
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["seq"], 4,
        "the sale continues the store's stream: {body}"
    );
    assert_eq!(sale(&agent, "2").1["duplicate"], true);
    let (status, body) = agent.stored_value("M1", 5);
    assert_eq!((status, &body["balance"]), (201, &json!(30)), "{body}");
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    wait_until(WAIT, "the new sale at HQ", || {
        (replica.receipt_ids(&s1).unwrap().len() == 4).then_some(())
    });
    // The token of the replacement works once.
    let again = Agent::init(&dir.path().join("again"), "S001", &replacement);
    assert!(again.is_err(), "a used replacement token enrolled again");

    // A store joining now replays S001's member history, signed by both keys.
    let provision2 = hq.add_store("S002", "north");
    let other = Agent::init(dir.path(), "S002", &provision2).unwrap();
    let _other_proc = other.start();
    wait_until(WAIT, "S001's stored value at S002", || {
        (other.get("/v1/members/M1").1["stored_value_cents"] == 30).then_some(())
    });
    assert_no_stream_halted(&replica);
    replica.audit().unwrap();
}

/// The backup file `store-agent backup now` wrote, from what it printed.
fn backup_taken(agent: &Agent) -> std::path::PathBuf {
    let out = agent.cli(&["backup", "now"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = said
        .strip_prefix("backup ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("{said}"));
    std::path::PathBuf::from(path)
}

// Issue "Running a fleet": a backup taken while a till sells is whole; the store restored from
// it (an older state: sales and a top-up came after it) waits for HQ before writing, gets back
// what it signed after the backup, and sells on with nothing lost, nothing doubled and no
// stream forked. Restoring is refused while the agent runs, and a backup of another store is
// refused.
#[test]
fn a_store_restored_from_an_older_backup_catches_up_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, hq_proc, agent, proc) = store_with_history(dir.path());
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();

    // A backup while the till keeps selling (receipts 10..29).
    let till = {
        let agent = agent.clone();
        std::thread::spawn(move || {
            for n in 10..30 {
                assert_eq!(sale(&agent, &n.to_string()).0, 201);
            }
        })
    };
    let backup = backup_taken(&agent);
    till.join().unwrap();
    let listed = String::from_utf8_lossy(&agent.cli(&["backup", "list"]).stdout).into_owned();
    assert!(listed.contains(&backup.display().to_string()), "{listed}");
    // After the backup: more sales and a top-up, all at HQ.
    for n in 30..33 {
        assert_eq!(sale(&agent, &n.to_string()).0, 201);
    }
    let (status, body) = agent.stored_value("M1", 10);
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "every sale at HQ", || {
        (replica.receipt_ids(&s1).unwrap().len() == 26).then_some(())
    });
    wait_until(WAIT, "the outbox empty", || {
        let sync = agent.get("/v1/sync").1;
        (sync["outbox"]["sales"] == 0 && sync["outbox"]["members"] == 0).then_some(())
    });

    let out = agent.cli(&["restore", "--from", &backup.to_string_lossy()]);
    assert!(!out.status.success(), "refused while the agent runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proc.terminate());
    let other = dir.path().join("other.db");
    std::fs::copy(hq.data.join("hq.db"), &other).unwrap();
    let out = agent.cli(&["restore", "--from", &other.to_string_lossy()]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not of store S001"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.cli(&["restore", "--from", &backup.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // HQ is unreachable when the restored agent starts: writing now would fork its streams.
    hq_proc.kill9();
    let _proc = agent.start();
    let (status, body) = sale(&agent, "40");
    assert_eq!(status, 503, "no sale before HQ has spoken: {body}");
    let _hq_proc = hq.start();
    let (status, body) = wait_until(WAIT, "selling again", || {
        let (status, body) = sale(&agent, "40");
        (status != 503).then_some((status, body))
    });
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["seq"], 27, "after all 26 sales, none forked: {body}");
    // A sale made after the backup, sent again by its till: the restored history knows it.
    assert_eq!(sale(&agent, "31").1["duplicate"], true);
    assert_eq!(sale(&agent, "12").1["duplicate"], true);
    wait_until(WAIT, "the new sale at HQ", || {
        (replica.receipt_ids(&s1).unwrap().len() == 27).then_some(())
    });
    assert_no_stream_halted(&replica);
    let (_, stock) = agent.get("/v1/stock/cola");
    assert_eq!(stock["qty"], -27, "each sale counted once: {stock}");
    assert_eq!(
        replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(),
        -27
    );
    let (status, body) = agent.stored_value("M1", 1);
    assert_eq!(
        (status, &body["balance"]),
        (201, &json!(36)),
        "25 + 10 + 1: {body}"
    );
    replica.audit().unwrap();
}

/// HQ restored from an older backup with real processes: it refuses writes (CLI and API) until
/// the stores have returned what they hold of its history after the backup; S001 (running)
/// returns it at once, S002 (stopped meanwhile) when it starts; then HQ writes on from the
/// highest seq any store held, both stores take it, and no stream halts anywhere.
#[test]
fn hq_restored_from_an_older_backup_takes_its_history_back_from_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (hq, hq_proc, s1, s1_proc) = store_with_history(dir.path());
    let provision = hq.add_store("S002", "north");
    let s2 = Agent::init(dir.path(), "S002", &provision).unwrap();
    let s2_proc = s2.start();
    let price_at = |agent: &Agent, cents: i64| {
        wait_until(WAIT, &format!("{} charging {cents}", agent.store), || {
            (agent.get("/v1/prices/cola").1["price_cents"] == cents).then_some(())
        })
    };
    price_at(&s2, 129);
    let backup = {
        let said = hq.cli_ok(&["backup", "now"]);
        let path = said
            .split_whitespace()
            .nth(1)
            .expect("backup path")
            .to_owned();
        std::path::PathBuf::from(path)
    };
    // After the backup: a price both stores hear, a sale at S001, then a price only S001 hears.
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.39"]);
    price_at(&s1, 139);
    price_at(&s2, 139);
    assert!(s2_proc.terminate());
    assert_eq!(sale(&s1, "50").0, 201);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.49"]);
    price_at(&s1, 149);
    let s1_id = NodeId::new("S001").unwrap();
    wait_until(WAIT, "the sale at HQ", || {
        (hq.replica().receipt_ids(&s1_id).unwrap().len() == 4).then_some(())
    });

    let out = hq.cli(&["restore", "--from", &backup.to_string_lossy()]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("HQ is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hq_proc.kill9();
    let said = hq.cli_ok(&["restore", "--from", &backup.to_string_lossy()]);
    assert!(said.contains("writes nothing until"), "{said}");
    assert_eq!(hq.replica().receipt_ids(&s1_id).unwrap().len(), 3);
    let _hq_proc = hq.start();
    let out = hq.cli(&["price", "set", "--sku", "cola", "--price", "1.59"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("reclaim status"),
        "refused while reclaiming: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // S001 returns both later prices and pushes its sale again; HQ still waits for S002.
    wait_until(WAIT, "S001's history back at HQ", || {
        let status = hq.cli_ok(&["reclaim", "status"]);
        (status.contains("stores returned (1): S001")).then_some(())
    });
    let status = hq.cli_ok(&["reclaim", "status"]);
    assert!(status.contains("stores waited for (1): S002"), "{status}");
    assert!(status.contains("reclaiming since"), "{status}");
    wait_until(WAIT, "the sale at HQ again", || {
        (hq.replica().receipt_ids(&s1_id).unwrap().len() == 4).then_some(())
    });
    let admin = hq.token("admin");
    let (code, body) = hq.api(
        &admin,
        "POST",
        "/v1/prices",
        Some(&json!({ "sku": "cola", "scope": "chain", "price_cents": 159 })),
    );
    assert_eq!(code, 503, "{body}");
    let (code, health) = hq.api(&admin, "GET", "/healthz", None);
    assert_eq!(code, 200, "{health}");
    assert_eq!(
        health["reclaiming"]["stores_waiting"],
        json!(["S002"]),
        "{health}"
    );

    // S002 starts: it held nothing HQ lacks now, and the reclaim ends.
    let _s2_proc = s2.start();
    wait_until(WAIT, "the reclaim to end", || {
        let status = hq.cli_ok(&["reclaim", "status"]);
        status.starts_with("not reclaiming").then_some(())
    });
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.59"]);
    price_at(&s1, 159);
    price_at(&s2, 159);
    let replica = hq.replica();
    assert_no_stream_halted(&replica);
    for agent in [&s1, &s2] {
        let (code, health) = agent.get("/healthz");
        assert_eq!(
            (code, &health["halted_streams"]),
            (200, &json!(0)),
            "{health}"
        );
    }
    drop(s1_proc);
}
