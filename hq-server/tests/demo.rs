//! The README's first command, run as a newcomer would: `hq-server demo` builds a chain, syncs it,
//! and reports figures that can only be right if sync worked end to end.

use std::process::Command;

#[test]
fn demo_syncs_a_chain_and_reports_consistent_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let output = Command::new(env!("CARGO_BIN_EXE_hq-server"))
        .args(["demo", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The region price reached the north stores only.
    assert!(
        stdout.contains("S001 (north): 0.99 (region:north)"),
        "{stdout}"
    );
    assert!(stdout.contains("S003 (south): 1.29 (chain)"), "{stdout}");
    // Points earned at four stores (10+20+30+40) agree on every node.
    for node in ["hq", "S001", "S002", "S003", "S004"] {
        assert!(
            stdout.contains(&format!("  {node}: 100\n")),
            "{node} balance: {stdout}"
        );
    }
    // Store S004 received 48 and sold 2+3+4+5 cola: HQ's figure for it is 34.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("S004") && l.contains("cola-330") && l.contains(" 34 ")),
        "{stdout}"
    );
    assert!(stdout.contains("HQ holds 10 receipts"), "{stdout}");
    // A second run into the same folder is refused rather than mixing two chains.
    let again = Command::new(env!("CARGO_BIN_EXE_hq-server"))
        .args(["demo", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo chain"));
}
