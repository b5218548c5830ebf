//! `/healthz` and `/metrics` of a real HQ and a real store agent after real traffic (issue
//! "Running a fleet"): every metric named there present, and moving as the store sells, goes
//! offline and comes back.

use chainsync_tests::e2e::{Agent, Hq, http, http_text, sample, wait_until};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn metrics(addr: SocketAddr) -> String {
    let (status, text) = http_text(addr, "GET", "/metrics", None, None).expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of `series` in `text`, which must be there.
fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

fn sell(agent: &Agent, n: usize) {
    for _ in 0..n {
        let (status, body) = agent.send(
            "POST",
            "/v1/sales",
            &json!({ "lines": [{ "sku": "cola", "qty": 1 }] }),
        );
        assert_eq!(status, 201, "{body}");
    }
}

const SALES_OUT: &str = r#"chainsync_change_sets_total{direction="out",topic="sales"}"#;
const SALES_IN: &str = r#"chainsync_change_sets_total{direction="in",topic="sales"}"#;
const SALES_OUTBOX: &str = r#"chainsync_outbox_change_sets{topic="sales"}"#;

#[test]
fn healthz_and_metrics_after_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let provision = hq.add_store("S001", "north");
    hq.add_store("S002", "north"); // never connects
    let hq_proc = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let _agent_proc = agent.start();
    wait_until(WAIT, "the catalog at the store", || {
        (agent.get("/v1/prices/cola").0 == 200).then_some(())
    });
    sell(&agent, 3);
    wait_until(WAIT, "3 sales at HQ", || {
        (sample(&metrics(hq.api), SALES_IN) == Some(3.0)).then_some(())
    });

    // The store: no token needed, every metric present.
    let (status, health) = http(agent.pos, "GET", "/healthz", None, None).unwrap();
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["database_writable"], true, "{health}");
    assert_eq!(health["link"]["connected"], true, "{health}");
    assert_eq!(health["store"], "S001", "{health}");
    let store = wait_until(WAIT, "the store's outbox to drain", || {
        let text = metrics(agent.pos);
        (sample(&text, SALES_OUTBOX) == Some(0.0)).then_some(text)
    });
    assert_eq!(value(&store, SALES_OUT), 3.0);
    assert!(
        value(
            &store,
            r#"chainsync_change_set_bytes_total{direction="out",topic="sales"}"#
        ) > 0.0
    );
    assert!(
        value(
            &store,
            r#"chainsync_change_sets_total{direction="in",topic="catalog"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &store,
            r#"chainsync_change_sets_total{direction="in",topic="directory"}"#
        ) >= 1.0
    );
    assert!(value(&store, "chainsync_sessions_opened_total") >= 1.0);
    assert_eq!(value(&store, "chainsync_sessions_open"), 1.0);
    assert!(
        value(&store, "chainsync_apply_seconds_count") >= 1.0,
        "HQ's batches applied"
    );
    assert!(value(&store, "chainsync_last_exchange_timestamp_seconds") > 1.7e9);
    assert_eq!(value(&store, "chainsync_halted_streams"), 0.0);
    assert_eq!(value(&store, "chainsync_seeding_parts"), 0.0);
    assert!(
        store.contains(r#"chainsync_build_info{version=""#) && store.contains(r#"role="store""#),
        "{store}"
    );
    assert_eq!(
        value(
            &store,
            r#"chainsync_rejected_change_sets_total{reason="bad_signature"}"#
        ),
        0.0
    );
    assert!(
        store.contains(r#"chainsync_snapshot_parts_total{direction="in"}"#),
        "{store}"
    );

    // HQ: the same, and each store's backlog and last seen.
    let (status, health) = http(hq.api, "GET", "/healthz", None, None).unwrap();
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["database_writable"], true, "{health}");
    assert_eq!(health["sessions_open"], 1, "{health}");
    assert_eq!(health["stores"], 1, "{health}");
    assert_eq!(health["stores_pending"], 1, "S002 never enrolled: {health}");
    assert_eq!(health["stores_never_seen"], 0, "{health}");
    let central = metrics(hq.api);
    assert_eq!(value(&central, "chainsync_sessions_open"), 1.0);
    assert!(
        value(
            &central,
            r#"chainsync_change_sets_total{direction="out",topic="catalog"}"#
        ) >= 1.0
    );
    assert!(
        value(&central, "chainsync_apply_seconds_count") >= 1.0,
        "pushes applied"
    );
    assert!(
        value(
            &central,
            r#"chainsync_store_last_seen_timestamp_seconds{store="S001"}"#
        ) > 1.7e9
    );
    assert_eq!(
        sample(
            &central,
            r#"chainsync_store_last_seen_timestamp_seconds{store="S002"}"#
        ),
        None,
        "a store not enrolled has no series"
    );
    assert!(
        sample(
            &central,
            r#"chainsync_store_backlog_change_sets{store="S001"}"#
        )
        .is_some()
    );
    assert!(central.contains(r#"role="hq""#), "{central}");

    // Offline: the store stays healthy, its outbox grows and says so.
    // (Stopped, not killed: after a kill -9 the store waits out QUIC's 20 s idle timeout on
    // its old connection before it dials again.)
    assert!(hq_proc.terminate(), "HQ stops on SIGTERM");
    wait_until(WAIT, "the store to notice HQ is gone", || {
        let (_, health) = http(agent.pos, "GET", "/healthz", None, None).unwrap();
        (health["link"]["connected"] == false).then_some(())
    });
    assert_eq!(value(&metrics(agent.pos), "chainsync_sessions_open"), 0.0);
    sell(&agent, 2);
    let (status, health) = http(agent.pos, "GET", "/healthz", None, None).unwrap();
    assert_eq!(status, 200, "offline selling is healthy: {health}");
    assert_eq!(health["outbox_change_sets"], 2, "{health}");
    let offline = metrics(agent.pos);
    assert_eq!(value(&offline, SALES_OUTBOX), 2.0);

    // Back: the backlog drains and the counters move on.
    let _hq_proc = hq.start();
    let back = wait_until(WAIT, "the backlog at HQ", || {
        let text = metrics(agent.pos);
        (sample(&text, SALES_OUTBOX) == Some(0.0)).then_some(text)
    });
    assert_eq!(value(&back, SALES_OUT), 5.0, "each sale sent once");
    assert!(value(&back, "chainsync_sessions_opened_total") >= 2.0);
    let central = metrics(hq.api);
    assert_eq!(
        value(&central, SALES_IN),
        2.0,
        "a new HQ process counts from zero"
    );
}
