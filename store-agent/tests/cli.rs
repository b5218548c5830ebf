//! The agent's command line refuses bad setup input with a clear message.

use std::process::Command;

// A provisioning file that is not one is refused before anything is created.
#[test]
fn init_refuses_a_broken_provisioning_file() {
    let dir = tempfile::tempdir().unwrap();
    let provision = dir.path().join("bad.provision");
    std::fs::write(&provision, "store = \"S001\"\nhq_addr = \"nowhere\"\n").unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_store-agent"))
        .args(["init", "--provision"])
        .arg(&provision)
        .arg("--data")
        .arg(&data)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("provisioning file does not parse"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing was created");
}
