//! Members' money: stored value and points never overspent beyond the policy HQ set.
//!
//! - HQ's holds on real SQLite replicas: a hold counts against other holds until it is
//!   captured, released or expires; asking again with its id is answered the same.
//! - Real `hq-server` and `store-agent` processes on loopback: two stores online spending one
//!   card concurrently never exceed its balance; two stores offline overdraw it by at most their
//!   allowances and HQ lists the exception with the entries behind it until an adjustment
//!   settles it; a sale paid by stored value debits once through SIGKILLs of the agent between
//!   hold and capture; points earned at one store are redeemed at another, and a return and a
//!   void give back what they should; a card replaced at one store is refused at another once
//!   it has heard, HQ's freeze holds, and two offline sign-ups of one phone merge at HQ with
//!   every entry kept.

use chainsync::changeset::Op;
use chainsync::ids::Topic;
use chainsync::model::{LedgerAccount, LedgerEntry, LedgerKind, PaymentMethod, SpendAuth};
use chainsync::replica::{Durability, HOLD_TTL_MS, HoldOutcome, HoldRequest};
use chainsync_tests::e2e::{Agent, Hq, Proc, wait_until};
use chainsync_tests::{Chain, member, node, record};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// The agent's reconnect backoff grows while HQ is down (up to ~14 s between attempts).
const RECONNECT_WAIT: Duration = Duration::from_secs(60);
const T0: u64 = 1_700_000_000_000;

fn hold(id: &str, member_id: &str, amount: i64) -> HoldRequest {
    HoldRequest {
        id: record(id),
        member: member(member_id),
        account: LedgerAccount::StoredValue,
        amount,
        card: None,
    }
}

#[test]
fn a_hold_counts_until_captured_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::new(dir.path(), 2, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(T0);
    let (s1, s2) = (node("S001"), node("S002"));
    let top_up = LedgerEntry {
        id: record("S001-L1"),
        member: member("M1"),
        account: LedgerAccount::StoredValue,
        kind: LedgerKind::ToppedUp,
        amount: 5_000,
        receipt: None,
        at_ms: 0,
        auth: None,
        tender: Some(PaymentMethod::Cash),
        note: String::new(),
    };
    let c = stores[0]
        .commit_local(Topic::Members, vec![Op::Ledger(top_up)], T0)
        .unwrap();
    hq.apply_batch(&[c.signed], Some(&s1), T0).unwrap();

    let granted = |o: &HoldOutcome| matches!(o, HoldOutcome::Granted { .. });
    let t = T0 + 1_000;
    let first = hq
        .place_hold(&s1, &hold("S001-H1", "M1", 4_000), t)
        .unwrap();
    assert_eq!(
        first,
        HoldOutcome::Granted {
            expires_ms: t + HOLD_TTL_MS
        }
    );
    assert_eq!(
        hq.place_hold(&s1, &hold("S001-H1", "M1", 4_000), t + 5)
            .unwrap(),
        first,
        "asked again: the same hold"
    );
    assert!(
        !granted(
            &hq.place_hold(&s1, &hold("S001-H1", "M1", 3_000), t + 5)
                .unwrap()
        ),
        "the same id for another amount is refused"
    );
    match hq
        .place_hold(&s2, &hold("S002-H1", "M1", 1_001), t + 10)
        .unwrap()
    {
        HoldOutcome::Refused { available, .. } => assert_eq!(available, 1_000),
        other => panic!("another store's hold beyond what is free: {other:?}"),
    }
    assert!(
        !granted(
            &hq.place_hold(&s2, &hold("S001-H9", "M1", 1), t + 10)
                .unwrap()
        ),
        "a store cannot hold under another store's id"
    );
    assert!(granted(
        &hq.place_hold(&s2, &hold("S002-H2", "M1", 1_000), t + 10)
            .unwrap()
    ));
    assert_eq!(
        hq.held(&member("M1"), LedgerAccount::StoredValue, t + 10)
            .unwrap(),
        5_000
    );

    // Released: free again.
    assert!(hq.release_hold(&s2, &record("S002-H2")).unwrap());
    assert!(
        !hq.release_hold(&s2, &record("S002-H2")).unwrap(),
        "released once"
    );
    assert!(
        !hq.release_hold(&s2, &record("S001-H1")).unwrap(),
        "not S002's"
    );
    assert!(granted(
        &hq.place_hold(&s2, &hold("S002-H3", "M1", 1_000), t + 20)
            .unwrap()
    ));

    // Captured by the store's ledger entry: the entry counts, the hold no longer does.
    let spend = LedgerEntry {
        id: record("S001-P1-S"),
        member: member("M1"),
        account: LedgerAccount::StoredValue,
        kind: LedgerKind::Spent,
        amount: -4_000,
        receipt: Some(record("S001-P1")),
        at_ms: 0,
        auth: Some(SpendAuth::Held(record("S001-H1"))),
        tender: None,
        note: String::new(),
    };
    let c = stores[0]
        .commit_local(Topic::Members, vec![Op::Ledger(spend)], T0 + 30)
        .unwrap();
    hq.apply_batch(&[c.signed], Some(&s1), T0 + 30).unwrap();
    assert_eq!(
        hq.balance(&member("M1"), LedgerAccount::StoredValue)
            .unwrap(),
        1_000
    );
    assert_eq!(
        hq.held(&member("M1"), LedgerAccount::StoredValue, t + 30)
            .unwrap(),
        1_000,
        "only S002-H3 is left"
    );
    assert!(
        granted(
            &hq.place_hold(&s1, &hold("S001-H1", "M1", 4_000), t + 40)
                .unwrap()
        ),
        "a captured hold asked for again answers granted (the retry of a sale already made)"
    );

    // Never captured: it expires and the money is spendable again.
    let after = t + 20 + HOLD_TTL_MS;
    assert_eq!(
        hq.held(&member("M1"), LedgerAccount::StoredValue, after)
            .unwrap(),
        0
    );
    assert!(granted(
        &hq.place_hold(&s2, &hold("S002-H4", "M1", 1_000), after)
            .unwrap()
    ));
    drop(stores);
}

// ------------------------------------------------------------------------- real processes

/// HQ with a catalog, a loyalty policy and `stores` realtime stores, all running.
struct World {
    _dir: tempfile::TempDir,
    hq: Hq,
    hq_proc: Option<Proc>,
    agents: Vec<Agent>,
    procs: Vec<Option<Proc>>,
    admin: String,
}

fn world(stores: usize, policy: Value) -> World {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    for (sku, category, price) in [("tea", "drinks", "1.00"), ("cigars", "tobacco", "8.00")] {
        hq.cli_ok(&[
            "product",
            "add",
            "--sku",
            sku,
            "--name",
            sku,
            "--category",
            category,
        ]);
        hq.cli_ok(&["price", "set", "--sku", sku, "--price", price]);
    }
    let policy_file = dir.path().join("policy.json");
    std::fs::write(&policy_file, policy.to_string()).unwrap();
    hq.cli_ok(&["loyalty", "set", "--file", policy_file.to_str().unwrap()]);
    let admin = hq.token("admin");
    let provisions: Vec<_> = (1..=stores)
        .map(|i| hq.add_store(&format!("S00{i}"), "north"))
        .collect();
    let hq_proc = hq.start();
    let mut agents = Vec::new();
    let mut procs = Vec::new();
    for (i, provision) in provisions.iter().enumerate() {
        let agent = Agent::init(dir.path(), &format!("S00{}", i + 1), provision).unwrap();
        procs.push(Some(agent.start()));
        agents.push(agent);
    }
    World {
        _dir: dir,
        hq,
        hq_proc: Some(hq_proc),
        agents,
        procs,
        admin,
    }
}

fn stored_value(agent: &Agent, m: &str) -> i64 {
    agent.get(&format!("/v1/members/{m}")).1["stored_value_cents"]
        .as_i64()
        .unwrap_or(i64::MIN)
}

fn points(agent: &Agent, m: &str) -> i64 {
    agent.get(&format!("/v1/members/{m}")).1["points"]
        .as_i64()
        .unwrap_or(i64::MIN)
}

/// Waits until every agent and HQ report `cents` of stored value for `m`.
fn wait_everywhere(w: &World, m: &str, cents: i64, timeout: Duration) {
    let replica = w.hq.replica();
    wait_until(timeout, &format!("{m} at {cents} everywhere"), || {
        let at_hq = replica
            .balance(&member(m), LedgerAccount::StoredValue)
            .unwrap();
        (at_hq == cents && w.agents.iter().all(|a| stored_value(a, m) == cents)).then_some(())
    });
}

fn sign_up(agent: &Agent, m: &str, cents: i64) {
    // A fresh store refuses writes (503, nothing written) until HQ's Welcome has said what HQ
    // holds of it; the first sign-up may come before that.
    let (status, body) = wait_until(WAIT, "the store to take writes", || {
        let (status, body) = agent.send("PUT", &format!("/v1/members/{m}"), &json!({ "name": m }));
        (status != 503).then_some((status, body))
    });
    assert_eq!(status, 200, "{body}");
    if cents > 0 {
        let (status, body) = agent.stored_value(m, cents);
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["member_ledger"][0]["kind"], "topped_up", "{body}");
    }
}

fn sale(agent: &Agent, no: &str, m: &str, lines: Value, payments: Value) -> (u16, Value) {
    agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": no, "member": m, "lines": lines, "payments": payments }),
    )
}

#[test]
fn two_stores_online_spending_one_card_at_once_never_exceed_its_balance() {
    let w = world(2, json!({ "offline": { "stored_value_cents": 1000 } }));
    sign_up(&w.agents[0], "M1", 5_000);
    wait_everywhere(&w, "M1", 5_000, WAIT);

    // S001 sells tea paid by stored value, S002 takes from the card directly: 4.00 a time,
    // four tills at each store, four attempts each, all at once. 5,000 cents cover twelve.
    let (tills, attempts) = (4, 4);
    let results = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for till in 0..tills {
            let agents = &w.agents;
            handles.push(scope.spawn(move || {
                (0..attempts)
                    .map(|i| {
                        sale(
                            &agents[0],
                            &format!("c{till}-{i}"),
                            "M1",
                            json!([{ "sku": "tea", "qty": 4 }]),
                            json!([{ "method": "stored_value", "amount_cents": 400 }]),
                        )
                    })
                    .collect::<Vec<_>>()
            }));
            handles.push(scope.spawn(move || {
                (0..attempts)
                    .map(|_| agents[1].stored_value("M1", -400))
                    .collect::<Vec<_>>()
            }));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut accepted = 0;
    for (status, body) in &results {
        match status {
            201 => {
                let take = body["member_ledger"]
                    .as_array()
                    .and_then(|l| l.iter().find(|e| e["amount"] == -400))
                    .unwrap_or_else(|| panic!("no take in {body}"));
                assert!(take["auth"]["held"].is_string(), "held at HQ: {body}");
                accepted += 1;
            }
            409 => assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("HQ refused the hold"),
                "{body}"
            ),
            _ => panic!("unexpected answer {status}: {body}"),
        }
    }
    println!(
        "accepted {accepted} of {} takes of 400 from 5000",
        results.len()
    );
    assert_eq!(accepted, 12, "twelve takes fit, and no more");
    wait_everywhere(&w, "M1", 200, WAIT);
    let replica = w.hq.replica();
    assert_eq!(
        replica
            .held(
                &member("M1"),
                LedgerAccount::StoredValue,
                chainsync::transport::now_ms()
            )
            .unwrap(),
        0,
        "every granted hold was captured or released"
    );
    let (status, body) =
        w.hq.api(&w.admin, "GET", "/v1/reports/card-exceptions", None);
    assert_eq!((status, &body["rows"]), (200, &json!([])), "{body}");
    drop(w.procs);
    drop(w.hq_proc);
}

#[test]
fn two_stores_offline_overdraw_at_most_their_allowances_and_hq_lists_it_until_settled() {
    let mut w = world(2, json!({ "offline": { "stored_value_cents": 1000 } }));
    sign_up(&w.agents[0], "M2", 500);
    sign_up(&w.agents[0], "M3", 5_000);
    wait_everywhere(&w, "M2", 500, WAIT);
    wait_everywhere(&w, "M3", 5_000, WAIT);

    // HQ dies. A store that has not noticed yet asks for a hold, waits out the lookup timeout
    // and decides alone, as one that has noticed does at once.
    w.hq_proc.take().unwrap().kill9();
    // HQ lowers M3's allowance while the stores cannot hear it.
    w.hq.cli_ok(&[
        "member",
        "allowance",
        "--member",
        "M3",
        "--stored-value-cents",
        "100",
    ]);

    let (a, b) = (&w.agents[0], &w.agents[1]);
    let (status, body) = a.stored_value("M2", -500);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["member_ledger"][0]["auth"],
        json!({ "offline": { "allowance": 1000, "spent_before": 0 } }),
        "{body}"
    );
    let (status, body) = a.stored_value("M2", -1);
    assert_eq!(status, 409, "never beyond the balance it knows: {body}");
    let (status, body) = b.stored_value("M2", -500);
    assert_eq!(status, 201, "S002 still knows 500: {body}");
    let (status, body) = b.stored_value("M2", -600);
    assert_eq!(status, 409, "{body}");
    let (status, body) = a.stored_value("M3", -600);
    assert_eq!(status, 201, "S001 knows an allowance of 1000: {body}");
    let (status, body) = a.stored_value("M3", -500);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("offline allowance is 1000, of which this store has used 600"),
        "{body}"
    );
    // A sale paid by stored value offline takes the same path.
    let (status, body) = sale(
        b,
        "o1",
        "M3",
        json!([{ "sku": "tea", "qty": 2 }]),
        json!([{ "method": "stored_value", "amount_cents": 200 }]),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["member_ledger"][0]["auth"]["offline"]["allowance"], 1000,
        "{body}"
    );

    // HQ is back: the entries arrive, M2 is 500 overdrawn, within the two allowances.
    w.hq_proc = Some(w.hq.start());
    wait_everywhere(&w, "M2", -500, RECONNECT_WAIT);
    wait_everywhere(&w, "M3", 4_200, RECONNECT_WAIT);
    let m2 =
        w.hq.replica()
            .balance(&member("M2"), LedgerAccount::StoredValue)
            .unwrap();
    assert!(
        m2 >= -(1000 + 1000),
        "overdrawn by at most the two allowances"
    );
    let csv = w.hq.cli_ok(&["report", "card-exceptions"]);
    println!("{csv}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "member,store,account,balance,reasons,entry,amount,receipt,at_ms,auth"
    );
    let m2: Vec<&&str> = rows.iter().filter(|r| r.starts_with("M2,")).collect();
    assert_eq!(m2.len(), 2, "both offline takes behind M2: {csv}");
    assert!(
        m2.iter()
            .any(|r| r.starts_with("M2,S001,stored_value,-500,negative balance,"))
    );
    assert!(
        m2.iter()
            .any(|r| r.starts_with("M2,S002,stored_value,-500,negative balance,"))
    );
    let m3: Vec<&&str> = rows.iter().filter(|r| r.starts_with("M3,")).collect();
    assert!(
        m3.iter()
            .any(|r| r.contains("offline over policy") && r.contains(",-600,")),
        "S001 took 600 where HQ's policy now says 100: {csv}"
    );

    // An admin settles M2 with an adjustment, once however often it is sent.
    let adjust = json!({ "adjustment_no": "settle-M2", "account": "stored_value", "amount": 500, "note": "customer paid the overdraft in cash" });
    let (status, body) = w.hq.api(
        &w.admin,
        "POST",
        "/v1/members/M2/adjustments",
        Some(&adjust),
    );
    assert_eq!((status, &body["balance"]), (201, &json!(0)), "{body}");
    let (status, body) = w.hq.api(
        &w.admin,
        "POST",
        "/v1/members/M2/adjustments",
        Some(&adjust),
    );
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    // The same number for another card would be dropped on insert: refused, naming it.
    let mut reused = adjust.clone();
    reused["amount"] = json!(100);
    let (status, body) = w.hq.api(
        &w.admin,
        "POST",
        "/v1/members/M3/adjustments",
        Some(&reused),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already used for member M2"),
        "{body}"
    );
    let (status, body) =
        w.hq.api(&w.admin, "GET", "/v1/reports/card-exceptions", None);
    assert_eq!(status, 200, "{body}");
    let members: Vec<&str> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["member"].as_str().unwrap())
        .collect();
    assert!(
        !members.contains(&"M2") && members.contains(&"M3"),
        "{body}"
    );
    wait_everywhere(&w, "M2", 0, WAIT);
    let (status, body) = w.hq.api(&w.admin, "GET", "/v1/members/M2/statement", None);
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<(&str, i64)> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["balance_after"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{body}");
    assert_eq!(kinds[0], ("topped_up", 500));
    assert_eq!(kinds[3], ("adjusted", 0));
    let (status, body) = w.agents[1].get("/v1/members/M2/statement");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["entries"].as_array().unwrap().len(),
        4,
        "the same statement at a store"
    );
}

#[test]
fn a_sale_paid_by_stored_value_debits_once_through_sigkills_between_hold_and_capture() {
    let mut w = world(1, json!({}));
    sign_up(&w.agents[0], "M1", 10_000);
    wait_everywhere(&w, "M1", 10_000, WAIT);
    let rounds = 12u64;
    let mut fell = [0u32; 3];
    for round in 0..rounds {
        let agent = w.agents[0].clone();
        let body = json!({ "receipt_no": format!("k{round}"), "member": "M1",
            "lines": [{ "sku": "tea", "qty": 1 }],
            "payments": [{ "method": "stored_value", "amount_cents": 100 }] });
        // The first attempt's connection dies with the agent: its error is expected.
        let first = std::thread::spawn(move || {
            chainsync_tests::e2e::http(
                agent.pos,
                "POST",
                "/v1/sales",
                Some(&agent.token),
                Some(body.to_string().as_bytes()),
            )
        });
        // Kill somewhere around the hold at HQ and the commit of receipt and capture (a sale
        // paid by stored value takes a few milliseconds here).
        std::thread::sleep(Duration::from_micros(rand::random_range(0..8_000)));
        w.procs[0].take().unwrap().kill9();
        let killed_ms = chainsync::transport::now_ms() as i64;
        let _ = first.join();
        w.procs[0] = Some(w.agents[0].start());
        let (status, body) = wait_until(WAIT, "the till's retry to be answered", || {
            let (status, body) = sale(
                &w.agents[0],
                &format!("k{round}"),
                "M1",
                json!([{ "sku": "tea", "qty": 1 }]),
                json!([{ "method": "stored_value", "amount_cents": 100 }]),
            );
            (status == 200 || status == 201).then_some((status, body))
        });
        assert!(body["receipt_id"].is_string(), "{body}");
        // Where the kill fell: before HQ held the amount, between the hold and the commit, or
        // after the commit (then the retry is answered from the stored answer).
        let held_ms: Option<i64> =
            w.hq.replica()
                .connection()
                .query_row(
                    "SELECT created_ms FROM holds WHERE id = ?1",
                    [format!("S001-Pk{round}-HS")],
                    |r| r.get(0),
                )
                .ok();
        let slot = match (status, held_ms) {
            (200, _) => 2,
            (_, Some(t)) if t < killed_ms => 1,
            _ => 0,
        };
        fell[slot] += 1;
    }
    println!(
        "kills before the hold: {}, between hold and capture: {}, after the commit: {}",
        fell[0], fell[1], fell[2]
    );
    let expected = 10_000 - 100 * rounds as i64;
    wait_everywhere(&w, "M1", expected, RECONNECT_WAIT);
    let replica = w.hq.replica();
    let statement = replica.statement(&member("M1")).unwrap();
    let spends: Vec<_> = statement.iter().filter(|e| e.kind == "spent").collect();
    assert_eq!(
        spends.len() as u64,
        rounds,
        "one debit per sale: {statement:?}"
    );
    assert!(spends.iter().all(|e| e.auth.starts_with("held ")));
    assert_eq!(
        replica
            .held(
                &member("M1"),
                LedgerAccount::StoredValue,
                chainsync::transport::now_ms()
            )
            .unwrap(),
        0,
        "every hold captured"
    );
    drop(w.hq_proc.take());
}

#[test]
fn points_earned_at_one_store_are_redeemed_at_another_and_returns_and_voids_give_back() {
    let w = world(
        2,
        json!({
            "points_per_unit": 1,
            "point_value_cents": 10,
            "level_multipliers": { "gold": 200 },
            "excluded_categories": ["tobacco"],
        }),
    );
    let (a, b) = (&w.agents[0], &w.agents[1]);
    sign_up(a, "M4", 0);
    let (status, body) = a.send("PUT", "/v1/members/M4", &json!({ "level": "gold" }));
    assert_eq!(status, 200, "{body}");
    // 10 teas (10.00) and a box of cigars (8.00, earns nothing): 10 × 1 × 200 % = 20 points.
    let (status, body) = sale(
        a,
        "p1",
        "M4",
        json!([{ "sku": "tea", "qty": 10 }, { "sku": "cigars", "qty": 1 }]),
        json!([]),
    );
    assert_eq!(status, 201, "{body}");
    let earned: Vec<&Value> = body["member_ledger"].as_array().unwrap().iter().collect();
    assert_eq!(earned.len(), 1, "{body}");
    assert_eq!(
        (&earned[0]["kind"], &earned[0]["amount"]),
        (&json!("earned"), &json!(20))
    );
    wait_until(WAIT, "the points at S002", || {
        (points(b, "M4") == 20).then_some(())
    });

    // Redeemed at S002 as a payment: 1.00 of tea paid with 10 points (at 10 cents each).
    let (status, body) = sale(
        b,
        "p2",
        "M4",
        json!([{ "sku": "tea", "qty": 1 }]),
        json!([{ "method": "points", "amount_cents": 100 }]),
    );
    assert_eq!(status, 201, "{body}");
    let redeemed = body["member_ledger"].as_array().unwrap();
    assert_eq!(redeemed.len(), 1, "what points paid earns nothing: {body}");
    assert_eq!(
        (&redeemed[0]["kind"], &redeemed[0]["amount"]),
        (&json!("redeemed"), &json!(-10))
    );
    assert!(redeemed[0]["auth"]["held"].is_string(), "{body}");
    let (status, body) = sale(
        b,
        "p3",
        "M4",
        json!([{ "sku": "tea", "qty": 1 }]),
        json!([{ "method": "points", "amount_cents": 105 }]),
    );
    assert_eq!(status, 422, "not a whole number of points: {body}");

    // Half the teas come back at S001: half the points they earned go.
    let (status, body) = a.send(
        "POST",
        "/v1/returns",
        &json!({ "return_no": "1", "original": "S001-Pp1", "lines": [{ "sku": "tea", "qty": 5 }] }),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["member_ledger"][0]["amount"], -10, "{body}");
    // The cigars come back: they earned nothing, so nothing more is taken back.
    let (status, body) = a.send(
        "POST",
        "/v1/returns",
        &json!({ "return_no": "2", "original": "S001-Pp1", "lines": [{ "sku": "cigars", "qty": 1 }], "refund_method": "stored_value" }),
    );
    assert_eq!(status, 201, "{body}");
    let entries = body["member_ledger"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the refund to the card: {body}");
    assert_eq!(
        (&entries[0]["account"], &entries[0]["amount"]),
        (&json!("stored_value"), &json!(800))
    );
    let replica = w.hq.replica();
    wait_until(WAIT, "everything at HQ", || {
        let p = replica
            .balance(&member("M4"), LedgerAccount::Points)
            .unwrap();
        let sv = replica
            .balance(&member("M4"), LedgerAccount::StoredValue)
            .unwrap();
        (p == 0 && sv == 800).then_some(())
    });

    // A sale paid by stored value and voided: the card gets its money back, the points go.
    let (status, body) = sale(
        a,
        "p4",
        "M4",
        json!([{ "sku": "tea", "qty": 3 }]),
        json!([{ "method": "stored_value", "amount_cents": 300 }]),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(WAIT, "the sale's entries at S001", || {
        (points(a, "M4") == 6 && stored_value(a, "M4") == 500).then_some(())
    });
    let (status, body) = a.send(
        "POST",
        "/v1/voids",
        &json!({ "void_no": "1", "original": "S001-Pp4", "reason": "wrong customer" }),
    );
    assert_eq!(status, 201, "{body}");
    let kinds: Vec<(&str, i64)> = body["member_ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["amount"].as_i64().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("refunded", 300)) && kinds.contains(&("taken_back", -6)),
        "{body}"
    );
    wait_until(WAIT, "M4 back where it was, at HQ", || {
        let p = replica
            .balance(&member("M4"), LedgerAccount::Points)
            .unwrap();
        let sv = replica
            .balance(&member("M4"), LedgerAccount::StoredValue)
            .unwrap();
        (p == 0 && sv == 800).then_some(())
    });
    // A till cannot give points, nor top up without the money.
    let (status, body) = a.send(
        "POST",
        "/v1/members/M4/points",
        &json!({ "entry_no": "x1", "change": 1000 }),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = a.send(
        "POST",
        "/v1/members/M4/stored-value",
        &json!({ "entry_no": "x2", "change": 1i64 << 62 }),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = a.send(
        "POST",
        "/v1/members/M4/stored-value",
        &json!({ "entry_no": "x3", "change": 1000 }),
    );
    assert_eq!(status, 422, "a top-up needs its tender: {body}");
    // A retried ledger call posts once.
    let top_up = json!({ "entry_no": "x4", "change": 1000, "tender": "card" });
    let (status, _) = a.send("POST", "/v1/members/M4/stored-value", &top_up);
    assert_eq!(status, 201);
    let (status, body) = a.send("POST", "/v1/members/M4/stored-value", &top_up);
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    wait_until(WAIT, "one top-up", || {
        (stored_value(a, "M4") == 1_800).then_some(())
    });

    // Bought at S001, brought back to S002: S002 checks the return against HQ's copy of the
    // receipt and takes back what the returned units earned at S001.
    let (status, body) = sale(
        a,
        "p5",
        "M4",
        json!([{ "sku": "tea", "qty": 4 }]),
        json!([]),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["member_ledger"][0]["amount"], 8,
        "4.00 at 200 %: {body}"
    );
    wait_until(WAIT, "the sale at HQ and its points at S002", || {
        let at_hq = replica
            .original_receipt(&record("S001-Pp5"))
            .unwrap()
            .is_some();
        (at_hq && points(b, "M4") == 8).then_some(())
    });
    let (status, body) = b.send(
        "POST",
        "/v1/returns",
        &json!({ "return_no": "9", "original": "S001-Pp5", "lines": [{ "sku": "tea", "qty": 2 }] }),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (&body["unverified"], &body["refund_cents"]),
        (&json!(false), &json!(200)),
        "checked against HQ's copy: {body}"
    );
    assert_eq!(
        (
            &body["member_ledger"][0]["kind"],
            &body["member_ledger"][0]["amount"]
        ),
        (&json!("taken_back"), &json!(-4)),
        "{body}"
    );
    let (status, body) = b.send(
        "POST",
        "/v1/returns",
        &json!({ "return_no": "10", "original": "S001-Pp5", "lines": [{ "sku": "tea", "qty": 3 }] }),
    );
    assert_eq!(status, 422, "only 2 of the 4 are left to return: {body}");
    wait_until(WAIT, "the points taken back at HQ", || {
        (replica
            .balance(&member("M4"), LedgerAccount::Points)
            .unwrap()
            == 4)
            .then_some(())
    });

    // HQ's policy keeps points a year: a year on, the 4 left expire, once, on every statement.
    let policy = w.hq.cli_ok(&["loyalty", "show"]);
    let mut policy: Value = serde_json::from_str(&policy).unwrap();
    policy["points_expire_days"] = json!(365);
    let file = w.hq.data.join("policy-expiry.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    w.hq.cli_ok(&["loyalty", "set", "--file", file.to_str().unwrap()]);
    let year_on = (chainsync::transport::now_ms() + 366 * 86_400_000).to_string();
    let said = w.hq.cli_ok(&["loyalty", "expire", "--at-ms", &year_on]);
    assert!(said.contains("expired the points of 1 members"), "{said}");
    let said = w.hq.cli_ok(&["loyalty", "expire", "--at-ms", &year_on]);
    assert!(said.contains("of 0 members"), "once: {said}");
    wait_until(WAIT, "the expiry at S002", || {
        (points(b, "M4") == 0).then_some(())
    });
    let (_, body) = b.get("/v1/members/M4/statement");
    let expired: Vec<&Value> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1, "{body}");
    assert_eq!(
        (&expired[0]["amount"], &expired[0]["store"]),
        (&json!(-4), &json!("hq"))
    );

    // Double points on tea: the price is unchanged, the points the tea earns double.
    w.hq.cli_ok(&[
        "promo",
        "add",
        "--id",
        "dbl",
        "--name",
        "Double points on tea",
        "--rule",
        "bonus_points:100",
        "--sku",
        "tea",
    ]);
    wait_until(WAIT, "the promotion at S001", || {
        let (_, body) = a.get("/v1/prices/tea");
        body["promotions"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
            .then_some(())
    });
    let (status, body) = sale(
        a,
        "p6",
        "M4",
        json!([{ "sku": "tea", "qty": 2 }]),
        json!([]),
    );
    assert_eq!((status, &body["total_cents"]), (201, &json!(200)), "{body}");
    assert_eq!(
        body["member_ledger"][0]["amount"], 8,
        "2.00 × 1 point × 200 % bonus × 200 % gold: {body}"
    );
}

fn card_sale(agent: &Agent, no: &str, card: &str, cents: i64) -> (u16, Value) {
    agent.send(
        "POST",
        "/v1/sales",
        &json!({ "receipt_no": no, "card": card, "lines": [{ "sku": "tea", "qty": cents / 100 }],
                 "payments": [{ "method": "stored_value", "amount_cents": cents }] }),
    )
}

#[test]
fn cards_replaced_frozen_and_duplicate_sign_ups_merged_hold_at_every_store() {
    let mut w = world(2, json!({ "offline": { "stored_value_cents": 1000 } }));
    let (a, b) = (&w.agents[0], &w.agents[1]);
    let (status, body) = a.send(
        "PUT",
        "/v1/members/M5",
        &json!({ "name": "Ann", "phone": "+1 555-0100" }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.send(
        "POST",
        "/v1/cards",
        &json!({ "number": "C5", "member": "M5" }),
    );
    assert_eq!((status, &body["status"]), (201, &json!("active")), "{body}");
    let (status, body) = a.stored_value("M5", 1_000);
    assert_eq!(status, 201, "{body}");
    let found = wait_until(WAIT, "the card at S002", || {
        let (status, body) = b.get("/v1/cards/C5");
        (status == 200 && stored_value(b, "M5") == 1_000).then_some(body)
    });
    assert_eq!(found["member"], "M5", "{found}");
    let (status, body) = b.get("/v1/members?phone=15550100");
    assert_eq!(
        body["members"][0]["member"], "M5",
        "found by phone: {status} {body}"
    );
    let (status, body) = card_sale(b, "c1", "C5", 100);
    assert_eq!(status, 201, "{body}");

    // Lost at S001 and replaced: S002 refuses the old card once it has heard, and the new one
    // carries the balance.
    let (status, body) = a.send("POST", "/v1/cards/C5/lost", &json!({ "replacement": "C6" }));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["card"]["replaced_by"], "C6", "{body}");
    wait_until(WAIT, "S002 to hear of the replacement", || {
        (b.get("/v1/cards/C5").1["status"] == "replaced").then_some(())
    });
    let (status, body) = card_sale(b, "c2", "C5", 100);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("replaced by card C6"),
        "{body}"
    );
    let (status, body) = card_sale(b, "c3", "C6", 100);
    assert_eq!(status, 201, "{body}");
    wait_everywhere(&w, "M5", 800, WAIT);

    // HQ freezes C6: refused everywhere, and at HQ's holds at once; unfrozen, it works again.
    // A lost card stays lost: HQ cannot make C5 active again.
    let freeze = json!({ "status": "frozen" });
    let (status, body) =
        w.hq.api(&w.admin, "PUT", "/v1/cards/C6/status", Some(&freeze));
    assert_eq!(
        (status, &body["card"]["status"]),
        (200, &json!("frozen")),
        "{body}"
    );
    wait_until(WAIT, "both stores to hear of the freeze", || {
        w.agents
            .iter()
            .all(|x| x.get("/v1/cards/C6").1["status"] == "frozen")
            .then_some(())
    });
    let (status, body) = card_sale(a, "c4", "C6", 100);
    assert_eq!(status, 409, "{body}");
    let (status, body) = w.hq.api(
        &w.admin,
        "PUT",
        "/v1/cards/C6/status",
        Some(&json!({ "status": "active" })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = w.hq.api(
        &w.admin,
        "PUT",
        "/v1/cards/C5/status",
        Some(&json!({ "status": "active" })),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("final"), "{body}");
    let body = wait_until(WAIT, "C6 usable again at S001", || {
        let (status, body) = card_sale(a, "c5", "C6", 100);
        (status == 201).then_some(body)
    });
    assert!(
        body["member_ledger"][0]["auth"]["held"].is_string(),
        "{body}"
    );

    // One person signs up at both stores while HQ is down, with the same phone written two ways.
    w.hq_proc.take().unwrap().kill9();
    let (status, body) = a.send(
        "PUT",
        "/v1/members/M6",
        &json!({ "name": "Bo", "phone": "555 0199" }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = b.send(
        "PUT",
        "/v1/members/M7",
        &json!({ "name": "Bo", "phone": "(555) 0199" }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.stored_value("M6", 500).0, 201);
    assert_eq!(b.stored_value("M7", 300).0, 201);
    w.hq_proc = Some(w.hq.start());
    let replica = w.hq.replica();
    wait_until(RECONNECT_WAIT, "both sign-ups at HQ", || {
        let m6 = replica
            .balance(&member("M6"), LedgerAccount::StoredValue)
            .unwrap();
        let m7 = replica
            .balance(&member("M7"), LedgerAccount::StoredValue)
            .unwrap();
        (m6 == 500 && m7 == 300).then_some(())
    });
    let csv = w.hq.cli_ok(&["member", "duplicates"]);
    assert!(
        csv.contains("5550199,S001,M6,Bo") && csv.contains("5550199,S002,M7,Bo"),
        "{csv}"
    );
    let (status, body) = w.hq.api(
        &w.admin,
        "POST",
        "/v1/members/M6/merge",
        Some(&json!({ "alias": "M7" })),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = w.hq.api(
        &w.admin,
        "POST",
        "/v1/members/M7/merge",
        Some(&json!({ "alias": "M6" })),
    );
    assert_eq!(status, 422, "M7 is an alias now: {body}");
    // Every store learns the merge: M7 is M6, with both members' entries counted once.
    wait_everywhere(&w, "M6", 800, WAIT);
    for agent in &w.agents {
        let (status, body) = agent.get("/v1/members/M7");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["member"], &body["stored_value_cents"]),
            (&json!("M6"), &json!(800)),
            "{body}"
        );
    }
    // A store that still says M7 writes to M6.
    let (status, body) = b.stored_value("M7", -100);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["member"], "M6", "{body}");
    wait_everywhere(&w, "M6", 700, WAIT);
    let statement = replica.statement(&member("M6")).unwrap();
    assert_eq!(
        statement.len(),
        3,
        "both top-ups and the spend: {statement:?}"
    );
    let csv = w.hq.cli_ok(&["member", "duplicates"]);
    assert!(!csv.contains("5550199"), "merged members are one: {csv}");
}
