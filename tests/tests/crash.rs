//! Crash tests with real processes: the agent and, separately, HQ are SIGKILLed at random moments
//! while the till keeps recording sales and HQ keeps changing prices, 20 times each, restarting
//! every time. The till retries each sale with the same `receipt_no` until it is acknowledged (a
//! kill can land after the commit but before the answer). At the end: every sale is at HQ exactly
//! once, and prices and stock agree.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, wait_until};
use chainsync_tests::sim::Rng;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KILLS: usize = 20;
const WAIT: Duration = Duration::from_secs(60);

/// A till that sells one receipt after another, retrying each until acknowledged, and sending
/// every third one again after its answer (as a till does that lost the answer). Records each
/// answer.
fn till(
    agent: Arc<Agent>,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Answer>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let receipt_no = format!("T{n}");
            let body = json!({ "receipt_no": receipt_no, "lines": [{ "sku": "cola", "qty": 1 }] });
            let sends = if n.is_multiple_of(3) { 2 } else { 1 };
            for send in 0..sends {
                // Bounded: the agent is never down for long, and the test stops the till anyway.
                for _ in 0..1_000 {
                    match chainsync_tests::e2e::http(
                        agent.pos,
                        "POST",
                        "/v1/sales",
                        Some(&agent.token),
                        Some(body.to_string().as_bytes()),
                    ) {
                        Ok((200 | 201, answer)) => {
                            done.lock().unwrap().push(Answer {
                                receipt_no: receipt_no.clone(),
                                receipt_id: answer["receipt_id"].as_str().unwrap().to_owned(),
                                resent_after_an_answer: send > 0,
                                duplicate: answer["duplicate"] == true,
                            });
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(30)),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    })
}

/// One answer the till got.
#[derive(Debug, Clone)]
struct Answer {
    receipt_no: String,
    receipt_id: String,
    /// Sent again although the first send was answered (a till that lost the answer).
    resent_after_an_answer: bool,
    duplicate: bool,
}

/// The receipt ids the till was given, one per receipt number. Fails if a number got two ids,
/// two numbers one id, or a send repeated after an answer was not answered as a repeat (the
/// agent sold again).
fn receipt_ids_once_each(answers: &[Answer]) -> Vec<String> {
    let mut by_no: std::collections::BTreeMap<&str, &str> = Default::default();
    for a in answers {
        let first = *by_no.entry(&a.receipt_no).or_insert(&a.receipt_id);
        assert_eq!(
            first, a.receipt_id,
            "receipt_no {} was answered with two receipt ids",
            a.receipt_no
        );
        assert!(
            !a.resent_after_an_answer || a.duplicate,
            "receipt_no {} sent again after its answer was sold again: {a:?}",
            a.receipt_no
        );
    }
    let mut ids: Vec<String> = by_no.values().map(|id| (*id).to_owned()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "two receipt numbers got one receipt id");
    ids
}

#[test]
fn sigkill_of_agent_and_of_hq_at_random_moments_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let provision = hq.add_store("S001", "north");
    let mut hq_proc = Some(hq.start());
    let agent = Arc::new(Agent::init(dir.path(), "S001", &provision).unwrap());
    agent.set_poll_interval_ms(1_000);
    let mut agent_proc = Some(agent.start());
    wait_until(WAIT, "the catalog", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 129).then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(Vec::new()));
    let till = till(agent.clone(), stop.clone(), done.clone());
    let mut rng = Rng::new(2026);
    let mut last_price = 129;

    // The agent dies at random moments: mid-write, mid-push, mid-pull.
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        agent_proc.take().unwrap().kill9();
        agent_proc = Some(agent.start());
    }
    // HQ dies at random moments: mid-apply, mid-acknowledgement, mid-price change.
    for i in 0..KILLS {
        if i % 4 == 0 {
            last_price = 100 + i as i64;
            hq.cli_ok(&[
                "price",
                "set",
                "--sku",
                "cola",
                "--price",
                &format!("{}.{:02}", last_price / 100, last_price % 100),
            ]);
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        hq_proc.take().unwrap().kill9();
        hq_proc = Some(hq.start());
    }
    stop.store(true, Ordering::Relaxed);
    till.join().unwrap();

    // Every answer to a receipt number, first sale or retry, names the same receipt.
    let answers = done.lock().unwrap().clone();
    let expected = receipt_ids_once_each(&answers);
    let retried = answers.len() - expected.len();
    assert!(retried > 10, "the till retried only {retried} receipts");
    assert!(
        expected.len() > 40,
        "the till kept selling through the kills: {}",
        expected.len()
    );
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    wait_until(WAIT, "every acknowledged sale at HQ", || {
        (replica.receipt_count().unwrap() as usize == expected.len()).then_some(())
    });
    assert_eq!(
        replica.receipt_ids(&s1).unwrap(),
        expected,
        "nothing lost, nothing counted twice"
    );
    assert_eq!(
        replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(),
        -(expected.len() as i64)
    );
    wait_until(WAIT, "the last price at the store", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == last_price).then_some(())
    });
    let (_, stock) = agent.get("/v1/stock/cola");
    assert_eq!(
        stock["qty"],
        -(expected.len() as i64),
        "the store's stock agrees with HQ's"
    );
    replica.audit().unwrap();
    println!(
        "{} sales through {KILLS} agent kills and {KILLS} HQ kills: all at HQ exactly once",
        expected.len()
    );
}

/// HQ's members stream: `change_sets` change sets of 500 new members each (long enough that a new
/// store is seeded from snapshot parts).
fn write_members(hq: &Hq, change_sets: u64) {
    use chainsync::changeset::Op;
    use chainsync::model::{MemberEdit, ProfileField};
    let mut replica = hq.replica();
    for c in 0..change_sets {
        let edits = (0..500)
            .map(|i| {
                let n = c * 500 + i;
                Op::MemberEdit(MemberEdit {
                    member: format!("M{n}").parse().unwrap(),
                    hlc: chainsync::hlc::Hlc::default(),
                    fields: vec![
                        (ProfileField::Name, format!("Member {n} of the chain")),
                        (ProfileField::Email, format!("member.{n}@example.org")),
                    ],
                })
            })
            .collect();
        replica
            .commit_local(chainsync::ids::Topic::Members, edits, 1_000 + c)
            .unwrap();
    }
}

/// `n` sales committed straight into the stopped agent's replica, as its POS would while HQ is
/// unreachable; returns their ids.
fn sell_offline(agent: &Agent, first: u64, n: u64) -> Vec<String> {
    use chainsync::changeset::Op;
    let dir = store_agent::config::AgentDir::new(&agent.data);
    let state = dir.load().unwrap();
    let mut replica = dir.open_replica(&state).unwrap();
    let store = NodeId::new(&agent.store).unwrap();
    (first..first + n)
        .map(|i| {
            let receipt =
                chainsync_tests::receipt(&store, i, 1_700_000_000_000, None, &[("cola", 1, 129)]);
            let id = receipt.id.to_string();
            replica
                .commit_local(
                    chainsync::ids::Topic::Sales,
                    vec![Op::Receipt(receipt)],
                    1_700_000_000_000 + i,
                )
                .unwrap();
            id
        })
        .collect()
}

/// The store's head of `stream`, read from its database while the agent is down.
fn store_head(agent: &Agent, stream: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        agent.data.join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT coalesce((SELECT head_seq FROM streams WHERE name = ?1), 0)",
        [stream],
        |r| r.get(0),
    )
    .unwrap()
}

// A new store seeding 60,000 members from snapshot parts is SIGKILLed 20 times and ends up with
// exactly HQ's members; then, with thousands of sales in its backlog, the agent is SIGKILLed 20
// times mid-push, and HQ 20 times mid-apply: every sale at HQ exactly once.
#[test]
fn sigkill_during_seeding_and_during_a_large_backlog_loses_and_doubles_nothing() {
    const MEMBER_CHANGE_SETS: u64 = 120;
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    write_members(&hq, MEMBER_CHANGE_SETS);
    let provision = hq.add_store("S001", "north");
    let mut hq_proc = Some(hq.start());
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let mut rng = Rng::new(4242);

    // Seeding, killed at random moments.
    let mut mid_seeding = 0;
    for _ in 0..KILLS {
        let proc = agent.start();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        proc.kill9();
        let head = store_head(&agent, "hq/members");
        if (head as u64) < MEMBER_CHANGE_SETS {
            mid_seeding += 1;
        }
    }
    let mut agent_proc = Some(agent.start());
    let replica = hq.replica();
    let hq_members = replica.member_fields().unwrap();
    wait_until(WAIT, "the store seeded", || {
        let (_, sync) = agent.get("/v1/sync");
        // The head too: before the directory arrives an agent asks HQ (as if hosted), so a
        // member answer alone does not show that the store holds the members.
        (sync["seeding"] == json!([])
            && agent.get("/v1/members/M59999").0 == 200
            && store_head(&agent, "hq/members") == MEMBER_CHANGE_SETS as i64)
            .then_some(())
    });
    agent_proc.take().unwrap().kill9();
    assert!(mid_seeding > 0, "no kill landed during the seeding");
    assert_eq!(store_head(&agent, "hq/members"), MEMBER_CHANGE_SETS as i64);
    let store_members: Vec<(String, u8, String)> = {
        let conn = rusqlite::Connection::open_with_flags(
            agent.data.join("store.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT member, field, value FROM member_fields ORDER BY member, field")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        store_members == hq_members,
        "the store holds exactly HQ's members"
    );

    // A large backlog, the agent killed mid-push.
    let mut expected = sell_offline(&agent, 1, 3_000);
    for _ in 0..KILLS {
        let proc = agent.start();
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        proc.kill9();
    }
    // Another backlog, HQ killed mid-apply.
    expected.extend(sell_offline(&agent, 3_001, 3_000));
    agent_proc = Some(agent.start());
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        hq_proc.take().unwrap().kill9();
        hq_proc = Some(hq.start());
    }
    let s1 = NodeId::new("S001").unwrap();
    wait_until(WAIT, "the whole backlog at HQ", || {
        (replica.receipt_count().unwrap() as usize == expected.len()).then_some(())
    });
    expected.sort();
    assert_eq!(
        replica.receipt_ids(&s1).unwrap(),
        expected,
        "nothing lost, nothing counted twice"
    );
    assert_eq!(
        replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(),
        -(expected.len() as i64)
    );
    wait_until(WAIT, "the outbox drained", || {
        (agent.get("/v1/sync").1["outbox"]["sales"] == 0).then_some(())
    });
    replica.audit().unwrap();
    println!(
        "seeding killed {KILLS} times ({mid_seeding} mid-seeding); {} backlog sales through {KILLS} agent and {KILLS} HQ kills: all at HQ exactly once",
        expected.len()
    );
    drop(agent_proc);
}
