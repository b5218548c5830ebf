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

/// A till that sells one receipt after another, retrying each until acknowledged.
fn till(
    agent: Arc<Agent>,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body =
                json!({ "receipt_no": format!("T{n}"), "lines": [{ "sku": "cola", "qty": 1 }] });
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
                        done.lock()
                            .unwrap()
                            .push(answer["receipt_id"].as_str().unwrap().to_owned());
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(30)),
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    })
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

    let mut expected = done.lock().unwrap().clone();
    expected.sort();
    let unique = {
        let mut u = expected.clone();
        u.dedup();
        u
    };
    assert_eq!(
        unique.len(),
        expected.len(),
        "the till got each receipt id once"
    );
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
