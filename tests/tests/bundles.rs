//! Bundle files with no network at all between HQ and the store (after enrollment): round trip
//! HQ -> file -> store and back; a replayed bundle changes nothing; a tampered, truncated or
//! foreign one is refused whole with its reason and changes nothing.

use chainsync::ids::NodeId;
use chainsync_tests::e2e::{Agent, Hq, bin, wait_until};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn agent_cli(agent: &Agent, args: &[&str]) -> Output {
    Command::new(bin("store-agent"))
        .args(args)
        .arg("--data")
        .arg(&agent.data)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn bundles_round_trip_without_a_network_and_bad_ones_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hq = Hq::init(d);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let (out1, _) = hq.add_store_with("S001", "north", &["--mode", "batch"]);
    let (out2, _) = hq.add_store_with("S002", "north", &["--mode", "batch"]);
    let (agent, _other) = {
        let _serve = hq.start(); // enrollment needs HQ once; from here on there is no network
        (
            Agent::init(d, "S001", &out1).unwrap(),
            Agent::init(d, "S002", &out2).unwrap(),
        )
    };
    let replica = hq.replica();

    // HQ -> store: the catalog and prices travel in a file.
    let b1 = path(d, "hq-to-S001-1.csb");
    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S001",
        "--out",
        &b1.to_string_lossy(),
    ]);
    let said = ok(agent_cli(
        &agent,
        &["import", "--file", &b1.to_string_lossy()],
    ));
    assert!(said.contains("from hq"), "{said}");
    let _proc = agent.start();
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 2 }] }),
    );
    assert_eq!(status, 201, "{body}");

    // Store -> HQ.
    let s1 = path(d, "S001-to-hq-1.csb");
    ok(agent_cli(
        &agent,
        &["export", "--out", &s1.to_string_lossy()],
    ));
    let before = replica.receipt_count().unwrap();
    assert_eq!(before, 0);
    let said = hq.cli_ok(&["bundle", "import", "--file", &s1.to_string_lossy()]);
    assert!(said.contains("applied"), "{said}");
    assert_eq!(
        replica
            .receipt_ids(&NodeId::new("S001").unwrap())
            .unwrap()
            .len(),
        1
    );

    // The same bundle again: accepted, nothing new.
    let said = hq.cli_ok(&["bundle", "import", "--file", &s1.to_string_lossy()]);
    assert!(said.contains("0 change sets applied"), "{said}");
    assert_eq!(replica.receipt_count().unwrap(), 1);

    // HQ's next bundle acknowledges the sale: the store's outbox empties; a new price arrives.
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.19"]);
    let b2 = path(d, "hq-to-S001-2.csb");
    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S001",
        "--out",
        &b2.to_string_lossy(),
    ]);

    // Tampered, truncated and foreign copies are refused whole, and change nothing.
    let bytes = std::fs::read(&b2).unwrap();
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    let t = path(d, "tampered.csb");
    std::fs::write(&t, &tampered).unwrap();
    assert!(
        err(agent_cli(
            &agent,
            &["import", "--file", &t.to_string_lossy()]
        ))
        .contains("checksum")
    );
    let tr = path(d, "truncated.csb");
    std::fs::write(&tr, &bytes[..bytes.len() - 100]).unwrap();
    assert!(
        err(agent_cli(
            &agent,
            &["import", "--file", &tr.to_string_lossy()]
        ))
        .contains("truncated bundle")
    );
    let f = path(d, "for-S002.csb");
    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S002",
        "--out",
        &f.to_string_lossy(),
    ]);
    assert!(
        err(agent_cli(
            &agent,
            &["import", "--file", &f.to_string_lossy()]
        ))
        .contains("addressed to S002")
    );
    let (_, price) = agent.get("/v1/prices/cola");
    assert_eq!(
        price["price_cents"], 129,
        "nothing of the refused bundles was applied"
    );

    ok(agent_cli(
        &agent,
        &["import", "--file", &b2.to_string_lossy()],
    ));
    wait_until(Duration::from_secs(5), "the new price", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 119).then_some(())
    });
    assert_eq!(
        agent.get("/v1/sync").1["outbox"]["sales"],
        0,
        "HQ's bundle acknowledged the sale"
    );
    // A replayed old bundle changes nothing either.
    let said = ok(agent_cli(
        &agent,
        &["import", "--file", &b1.to_string_lossy()],
    ));
    assert!(said.contains("0 change sets applied"), "{said}");

    // A file that is not a bundle at all.
    let junk = path(d, "junk.csb");
    std::fs::write(&junk, b"PK\x03\x04 not a bundle").unwrap();
    let said = err(hq.cli(&["bundle", "import", "--file", &junk.to_string_lossy()]));
    assert!(said.contains("not a chainsync bundle"), "{said}");
}

// A bundle correctly signed by its sender but holding one change set that is not (a store's till
// software gone wrong, or a forged change set) is refused whole: none of its change sets apply.
#[test]
fn a_signed_bundle_with_one_bad_change_set_applies_nothing() {
    use chainsync::bundle::{
        BUNDLE_FORMAT, BundleBody, ImportError, import_bundle, read_bundle, write_bundle,
    };
    use chainsync::changeset::Op;
    use chainsync::ids::Topic;
    use chainsync::protocol::frame::WireChangeSet;
    use chainsync::replica::Durability;
    let dir = tempfile::tempdir().unwrap();
    let chain = chainsync_tests::Chain::new(dir.path(), 1, 1, Durability::Relaxed);
    let (mut hq, mut stores) = chain.bootstrap(1_000);
    let s1 = chain.stores[0].id.clone();
    let key = chain.store_key(&s1);
    let mut change_sets: Vec<WireChangeSet> = (1..=3)
        .map(|n| {
            let receipt = chainsync_tests::receipt(&s1, n, 0, None, &[("cola", 1, 100)]);
            WireChangeSet::from_signed(
                &stores[0]
                    .commit_local(Topic::Sales, vec![Op::Receipt(receipt)], 2_000)
                    .unwrap()
                    .signed,
            )
        })
        .collect();
    change_sets[1].sig[0] ^= 1;
    let body = BundleBody {
        format: BUNDLE_FORMAT,
        from: s1.clone(),
        to: NodeId::hq(),
        created_ms: 0,
        cursors: vec![],
        acks: vec![],
        change_sets,
    };
    let bytes = write_bundle(&body, &key).unwrap();
    assert!(
        read_bundle(&bytes, &NodeId::hq(), |_| Some(key.verifying_key())).is_ok(),
        "the bundle itself is sound"
    );
    match import_bundle(&mut hq, &bytes, 3_000) {
        Err(ImportError::Rejected { count, first }) => {
            assert_eq!(count, 2, "the bad one and the gap behind it");
            assert!(
                matches!(
                    first,
                    chainsync::validate::ChangeSetError::BadSignature { seq: 2, .. }
                ),
                "{first}"
            );
        }
        other => panic!("expected a whole refusal, got {other:?}"),
    }
    assert_eq!(
        hq.receipt_count().unwrap(),
        0,
        "not even the good first change set was kept"
    );
    assert!(
        hq.stream_status()
            .unwrap()
            .iter()
            .all(|s| s.stream.origin != s1),
        "no trace of the stream"
    );
}

fn set_agent_option(agent: &Agent, key: &str, value: &str) {
    let path = agent.data.join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} ")))
        .map(str::to_owned)
        .collect();
    // Top-level keys must come before any table; agent.toml has none, so appending is fine.
    lines.push(format!("{key} = {value}"));
    std::fs::write(&path, lines.join("\n")).unwrap();
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

// Watched folders on both sides, carried by hand: HQ's bundle dropped in the store's inbox is
// imported and filed as processed; the store writes its sales to its outbox by itself; carried to
// HQ's inbox they are imported and answered in HQ's outbox; a damaged file is filed as rejected
// beside a reason.
#[test]
fn watched_bundle_folders_carry_a_store_without_a_network() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hq_bundles = path(d, "hq-bundles");
    let hq = Hq::init_with(d, &["--bundle-folder", &hq_bundles.to_string_lossy()]);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let (out, _) = hq.add_store_with("S001", "north", &["--mode", "batch"]);
    let _serve = hq.start();
    let agent = Agent::init(d, "S001", &out).unwrap();
    // From here on the store has no network: its HQ address leads nowhere.
    set_agent_option(&agent, "hq_addr", "\"127.0.0.1:9\"");
    let store_bundles = path(d, "store-bundles");
    set_agent_option(
        &agent,
        "bundle_folder",
        &format!("{:?}", store_bundles.to_string_lossy()),
    );
    set_agent_option(&agent, "batch_interval_ms", "300");
    let agent_proc = agent.start();
    let wait = Duration::from_secs(20);

    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S001",
        "--out",
        &store_bundles.join("inbox/hq-1.csb").to_string_lossy(),
    ]);
    wait_until(wait, "the store to import HQ's bundle", || {
        (agent.get("/v1/prices/cola").1["price_cents"] == 129).then_some(())
    });
    wait_until(wait, "the bundle filed as processed", || {
        (files_in(&store_bundles.join("processed")).len() == 1).then_some(())
    });

    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 3 }] }),
    );
    assert_eq!(status, 201, "{body}");
    let written = wait_until(wait, "the store's outbox bundle", || {
        files_in(&store_bundles.join("outbox"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "csb"))
    });
    std::fs::copy(
        &written,
        hq_bundles.join("inbox").join(written.file_name().unwrap()),
    )
    .unwrap();
    let replica = hq.replica();
    wait_until(wait, "HQ to import the store's bundle", || {
        (replica.receipt_count().unwrap() == 1).then_some(())
    });
    let answer = wait_until(wait, "HQ's answer", || {
        files_in(&hq_bundles.join("outbox/S001")).into_iter().next()
    });
    std::fs::copy(&answer, store_bundles.join("inbox/answer.csb")).unwrap();
    wait_until(wait, "the store's outbox to be acknowledged", || {
        (agent.get("/v1/sync").1["outbox"]["sales"] == 0).then_some(())
    });

    let mut damaged = std::fs::read(&answer).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(store_bundles.join("inbox/damaged.csb"), &damaged).unwrap();
    let reason = wait_until(wait, "the damaged bundle filed as rejected", || {
        files_in(&store_bundles.join("rejected"))
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(".reason.txt"))
    });
    assert!(
        std::fs::read_to_string(reason)
            .unwrap()
            .contains("checksum")
    );
    assert!(files_in(&store_bundles.join("inbox")).is_empty());

    // Issue "Sync on real lines", item 14: the inbox took `*.csb` only and said nothing of the
    // rest, and a bundle still being copied waited 30 s unmentioned. Now `.CSB` (a stick written
    // on Windows) is a bundle too; anything else is named in the log once and left alone; a
    // bundle not all there yet is named at once as incomplete.
    let answer_bytes = std::fs::read(&answer).unwrap();
    std::fs::write(store_bundles.join("inbox/AGAIN.CSB"), &answer_bytes).unwrap();
    std::fs::write(store_bundles.join("inbox/notes.txt"), b"not a bundle").unwrap();
    std::fs::write(
        store_bundles.join("inbox/half.csb"),
        &answer_bytes[..answer_bytes.len() / 2],
    )
    .unwrap();
    wait_until(wait, "the upper-case bundle filed as processed", || {
        (files_in(&store_bundles.join("processed")).len() == 3).then_some(())
    });
    wait_until(wait, "the log to name the other two", || {
        let log = agent_proc.log_text();
        (log.contains("notes.txt") && log.contains("half.csb") && log.contains("not complete yet"))
            .then_some(())
    });
    // Past the next rescan: still said once each, and both still in the inbox.
    std::thread::sleep(Duration::from_millis(
        chainsync::transport::folders::RESCAN_MS + 1_000,
    ));
    let log = agent_proc.log_text();
    assert_eq!(log.matches("ignored: not a bundle").count(), 1, "{log}");
    assert_eq!(log.matches("not complete yet").count(), 1, "{log}");
    assert!(store_bundles.join("inbox/notes.txt").exists());
    assert!(store_bundles.join("inbox/half.csb").exists());
}

// A store with no network at all, ever: HQ enrolls it offline (the provisioning file carries its
// key), the agent sets up without a connection, and everything travels in bundle files. HQ's
// server never runs in this test. A tampered offline provisioning file is refused.
#[test]
fn a_store_enrolled_offline_works_by_bundles_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hq = Hq::init(d);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let (provision, said) = hq.add_store_with("S001", "north", &["--mode", "batch", "--offline"]);
    assert!(said.contains("enrolled store S001 offline"), "{said}");

    // A provisioning file whose key was cut short is refused with the field named.
    let text = std::fs::read_to_string(&provision).unwrap();
    let broken = path(d, "broken.provision");
    let cut = text
        .lines()
        .map(|l| {
            if l.starts_with("store_key") {
                "store_key = \"abcd\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&broken, cut).unwrap();
    let out = Command::new(bin("store-agent"))
        .args(["init", "--provision"])
        .arg(&broken)
        .arg("--data")
        .arg(d.join("broken"))
        .output()
        .unwrap();
    let why = err(out);
    assert!(why.contains("store_key"), "{why}");

    // No HQ running: init succeeds from the file alone.
    let agent = Agent::init(d, "S001", &provision).unwrap();
    let hq_bundle = path(d, "hq-to-S001.csb");
    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S001",
        "--out",
        &hq_bundle.to_string_lossy(),
    ]);
    ok(agent_cli(
        &agent,
        &["import", "--file", &hq_bundle.to_string_lossy()],
    ));
    let _proc = agent.start();
    let (status, body) = agent.send(
        "POST",
        "/v1/sales",
        &json!({ "lines": [{ "sku": "cola", "qty": 3 }] }),
    );
    assert_eq!((status, &body["total_cents"]), (201, &json!(387)), "{body}");
    let store_bundle = path(d, "S001-to-hq.csb");
    ok(agent_cli(
        &agent,
        &["export", "--out", &store_bundle.to_string_lossy()],
    ));
    hq.cli_ok(&[
        "bundle",
        "import",
        "--file",
        &store_bundle.to_string_lossy(),
    ]);
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    assert_eq!(replica.receipt_ids(&s1).unwrap().len(), 1);
    assert_eq!(replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(), -3);
    // HQ's acknowledgement goes back by bundle too; then the store's outbox is empty.
    let ack = path(d, "hq-to-S001-2.csb");
    hq.cli_ok(&[
        "bundle",
        "export",
        "--id",
        "S001",
        "--out",
        &ack.to_string_lossy(),
    ]);
    ok(agent_cli(
        &agent,
        &["import", "--file", &ack.to_string_lossy()],
    ));
    wait_until(Duration::from_secs(20), "the outbox empty", || {
        (agent.get("/v1/sync").1["outbox"]["sales"] == 0).then_some(())
    });
}

// A store with no line whose database is lost gets its history back by bundles: HQ's next bundle
// tells it how far HQ holds its streams (writes wait), the store's bundle then asks for
// everything, HQ's answer carries its own streams with the rest, and it sells on from there.
#[test]
fn a_store_with_no_line_restores_a_lost_database_by_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hq = Hq::init(d);
    hq.cli_ok(&["product", "add", "--sku", "cola", "--name", "Cola"]);
    hq.cli_ok(&["price", "set", "--sku", "cola", "--price", "1.29"]);
    let (provision, _) = hq.add_store_with("S001", "north", &["--mode", "batch", "--offline"]);
    let agent = Agent::init(d, "S001", &provision).unwrap();
    let mut hop = 0;
    let mut hq_to_store = |agent: &Agent| {
        hop += 1;
        let file = path(d, &format!("hq-to-S001-{hop}.csb"));
        hq.cli_ok(&[
            "bundle",
            "export",
            "--id",
            "S001",
            "--out",
            &file.to_string_lossy(),
        ]);
        ok(agent_cli(
            agent,
            &["import", "--file", &file.to_string_lossy()],
        ))
    };
    let store_to_hq = |agent: &Agent, name: &str| {
        let file = path(d, name);
        ok(agent_cli(
            agent,
            &["export", "--out", &file.to_string_lossy()],
        ));
        hq.cli_ok(&["bundle", "import", "--file", &file.to_string_lossy()])
    };
    let sale = |agent: &Agent, no: &str| {
        agent.send(
            "POST",
            "/v1/sales",
            &json!({ "receipt_no": no, "lines": [{ "sku": "cola", "qty": 1 }] }),
        )
    };

    hq_to_store(&agent);
    {
        let _proc = agent.start();
        for no in ["1", "2"] {
            assert_eq!(sale(&agent, no).0, 201);
        }
    }
    store_to_hq(&agent, "S001-to-hq-1.csb");
    hq_to_store(&agent);

    // The database is lost. HQ's next bundle says what HQ holds of the store: writes wait.
    for file in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(agent.data.join(file));
    }
    hq_to_store(&agent);
    {
        let _proc = agent.start();
        let (status, body) = sale(&agent, "3");
        assert_eq!(
            status, 503,
            "nothing sold before the history is back: {body}"
        );
    }
    // The store asks for everything; HQ's answer restores it.
    store_to_hq(&agent, "S001-to-hq-2.csb");
    hq_to_store(&agent);
    let _proc = agent.start();
    let (status, body) = sale(&agent, "3");
    assert_eq!((status, &body["seq"]), (201, &json!(3)), "{body}");
    assert_eq!(
        sale(&agent, "2").1["duplicate"],
        true,
        "receipt 2 is known again"
    );
    store_to_hq(&agent, "S001-to-hq-3.csb");
    let replica = hq.replica();
    let s1 = NodeId::new("S001").unwrap();
    assert_eq!(replica.receipt_ids(&s1).unwrap().len(), 3);
    assert!(
        replica
            .stream_status()
            .unwrap()
            .iter()
            .all(|s| s.halted_reason.is_none()),
        "no stream forked at HQ"
    );
    assert_eq!(replica.stock_of(&s1, &"cola".parse().unwrap()).unwrap(), -3);
}
