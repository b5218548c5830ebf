//! The README's first command, run as a newcomer would: `hq-server demo` builds a chain of HQ and
//! four agents over QUIC on loopback, syncs it, reports figures that can only be right if sync
//! worked end to end, keeps running, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_syncs_a_chain_reports_consistent_figures_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hq-server"))
        .args(["demo", "--api-listen", &api.to_string(), "--data"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.contains("\nready\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not get ready:\n{out}");
            }
        }
    }
    // The region price reached the north tills only.
    assert!(out.contains("  S001: 0.99 (region:north)"), "{out}");
    assert!(out.contains("  S004: 1.29 (chain)"), "{out}");
    // S004 received 48 cola and sold 2+3+4+5: HQ's consolidated figure for it is 34.
    assert!(
        out.lines()
            .any(|l| l.contains("S004") && l.contains("cola-330") && l.contains(" 34 ")),
        "{out}"
    );
    // North holds 48-2 + 48-2-3 = 89 cola; the north token is refused for south.
    assert!(out.contains("cola-330: 89 units in 2 stores"), "{out}");
    assert!(
        out.contains("region south with the north token: HTTP 403"),
        "{out}"
    );

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the demo exits cleanly on SIGTERM");

    // A second run into the same folder is refused rather than mixing two chains.
    let again = Command::new(env!("CARGO_BIN_EXE_hq-server"))
        .args(["demo", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a demo chain"));
}
