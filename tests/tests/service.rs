//! The agent and HQ as operating-system services, with the real binaries: the units in
//! `deploy/linux/` are what `service unit` prints; under systemd's notify protocol (a real
//! `NOTIFY_SOCKET` datagram socket, as systemd gives a `Type=notify` service) each program says
//! READY=1 once it serves, pings the watchdog at half its timeout and says STOPPING=1 on SIGTERM;
//! `service install` on a machine without systemd changes nothing and says why; on a machine
//! with systemd, a real install, start, status and uninstall (skipped here with the reason
//! printed when systemd is not running); the Debian package holds what it should; the example
//! configurations parse with the real config types and name every field.

use chainsync_tests::e2e::{Agent, Hq, bin, wait_until};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(bin(program))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_units_in_deploy_are_what_service_unit_prints() {
    let cases = [
        (
            "store-agent",
            vec![
                "--binary",
                "/usr/bin/store-agent",
                "--data",
                "/var/lib/chainsync/store",
            ],
            "chainsync-store-agent.service",
        ),
        (
            "store-agent",
            vec!["--binary", "/usr/bin/store-agent", "--template"],
            "chainsync-store-agent@.service",
        ),
        (
            "hq-server",
            vec![
                "--binary",
                "/usr/bin/hq-server",
                "--data",
                "/var/lib/chainsync/hq",
            ],
            "chainsync-hq.service",
        ),
    ];
    for (program, extra, file) in cases {
        let mut args = vec!["service", "unit"];
        args.extend(extra);
        let printed = run_ok(program, &args);
        let committed = std::fs::read_to_string(repo().join("deploy/linux").join(file)).unwrap();
        assert_eq!(
            printed, committed,
            "deploy/linux/{file} differs from `{program} {args:?}`: regenerate it"
        );
    }
}

/// Collects what a program tells its "systemd" on `socket` until `done` holds or `WAIT` passes.
fn messages_until(socket: &UnixDatagram, got: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 4096];
    while !done(got) {
        assert!(Instant::now() < deadline, "only {got:?} from the service");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn count(got: &[String], line: &str) -> usize {
    got.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

#[test]
fn the_agent_and_hq_say_ready_ping_the_watchdog_and_say_stopping_as_systemd_expects() {
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    let provision = hq.add_store("S001", "north");
    for program in ["hq-server", "store-agent"] {
        let socket_path = dir.path().join(format!("{program}.notify"));
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let env = [
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // A 1 s watchdog: pings every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ];
        let mut got = Vec::new();
        let (hq_proc, agent_proc) = if program == "hq-server" {
            (hq.start_with_env(&env), None)
        } else {
            let hq_proc = hq.start();
            let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
            (hq_proc, Some(agent.start_with_env(&env)))
        };
        messages_until(&socket, &mut got, |got| {
            count(got, "READY=1") == 1 && count(got, "WATCHDOG=1") >= 3
        });
        let ready = got.iter().find(|m| m.contains("READY=1")).unwrap();
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_default();
        let want = if program == "hq-server" {
            "HQ syncing on"
        } else {
            "store S001 serving tills on 127.0.0.1:"
        };
        assert!(status.starts_with(want), "{program} status {status:?}");
        // The first watchdog ping comes only after READY=1.
        let first_ping = got.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
        let ready_at = got.iter().position(|m| m.contains("READY=1")).unwrap();
        assert!(ready_at <= first_ping, "{got:?}");
        // The agent stops while HQ still runs.
        let (watched, _hq_running) = match agent_proc {
            Some(agent) => (agent, Some(hq_proc)),
            None => (hq_proc, None),
        };
        assert!(watched.terminate(), "{program} did not stop cleanly");
        messages_until(&socket, &mut got, |got| count(got, "STOPPING=1") == 1);
    }
}

#[test]
fn service_install_without_systemd_changes_nothing_and_says_why() {
    if Path::new("/run/systemd/system").is_dir() {
        println!("skipped: systemd runs on this machine (the real install test covers it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    let provision = hq.add_store("S001", "north");
    let _hq = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let out = Command::new(bin("store-agent"))
        .args(["service", "install", "--data"])
        .arg(&agent.data)
        .arg("--unit-dir")
        .arg(&units)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("systemd is not running") && stderr.contains("nothing was installed"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&units).unwrap().count(), 0);
    // A folder that holds no agent is refused before anything else, naming the fix.
    let out = Command::new(bin("store-agent"))
        .args(["service", "install", "--data"])
        .arg(dir.path().join("nothing-here"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store-agent init"), "{stderr}");
    // The unit it would have written names this data folder.
    let unit = run_ok(
        "store-agent",
        &["service", "unit", "--data", agent.data.to_str().unwrap()],
    );
    let data = std::fs::canonicalize(&agent.data).unwrap();
    assert!(
        unit.contains(&format!("ReadWritePaths=\"{}\"", data.display())),
        "{unit}"
    );
}

#[test]
fn a_real_systemd_install_starts_the_agent_and_uninstall_removes_it() {
    let running = Path::new("/run/systemd/system").is_dir();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !running || !root {
        println!(
            "skipped: needs systemd running as PID 1 (running: {running}) and root (root: \
             {root}); this machine's PID 1 is {:?}",
            std::fs::read_to_string("/proc/1/comm")
                .unwrap_or_default()
                .trim()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hq = Hq::init(dir.path());
    let provision = hq.add_store("S001", "north");
    let _hq = hq.start();
    let agent = Agent::init(dir.path(), "S001", &provision).unwrap();
    let data = agent.data.to_str().unwrap();
    run_ok("store-agent", &["service", "install", "--data", data]);
    wait_until(WAIT, "the service to be active", || {
        (agent.try_get("/v1/sync").is_ok()).then_some(())
    });
    let status = run_ok("store-agent", &["service", "status"]);
    assert!(status.contains("active"), "{status}");
    run_ok("store-agent", &["service", "uninstall"]);
    assert!(!Path::new("/etc/systemd/system/chainsync-store-agent.service").exists());
}

#[test]
fn the_debian_package_holds_the_binaries_the_units_and_the_account() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        println!("skipped: dpkg-deb is not installed (not a Debian-based machine)");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let bin_dir = bin("store-agent").parent().unwrap().to_owned();
    let out = Command::new("bash")
        .arg(repo().join("deploy/linux/build-deb.sh"))
        .arg("--no-build")
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", out_dir.path())
        .env("COMPRESSION", "none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "chainsync");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Depends"), "adduser");
    let tree = out_dir.path().join("tree");
    let status = Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&deb)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    for unit in [
        "chainsync-store-agent.service",
        "chainsync-store-agent@.service",
        "chainsync-hq.service",
    ] {
        assert_eq!(
            std::fs::read(tree.join("lib/systemd/system").join(unit)).unwrap(),
            std::fs::read(repo().join("deploy/linux").join(unit)).unwrap(),
            "{unit}"
        );
    }
    for example in ["agent.toml", "hq.toml"] {
        assert!(
            tree.join("usr/share/doc/chainsync/examples")
                .join(example)
                .is_file()
        );
    }
    let postinst = std::fs::read_to_string(tree.join("DEBIAN/postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system --group --home /var/lib/chainsync"),
        "{postinst}"
    );
    // The packaged binaries run, and the units run them from where the package puts them.
    for program in ["store-agent", "hq-server"] {
        let packaged = tree.join("usr/bin").join(program);
        let out = Command::new(&packaged).arg("--version").output().unwrap();
        assert!(out.status.success(), "{}", packaged.display());
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
    let unit =
        std::fs::read_to_string(tree.join("lib/systemd/system/chainsync-store-agent.service"))
            .unwrap();
    assert!(
        unit.contains("ExecStart=\"/usr/bin/store-agent\" \"run\""),
        "{unit}"
    );
}

/// The example file with its commented-out settings (`# key = value`) switched on.
fn every_setting(text: &str) -> String {
    text.lines()
        .map(|l| {
            let setting = l.strip_prefix("# ").filter(|rest| {
                rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
            });
            setting.unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_configurations_parse_and_name_every_field() {
    let agent_text = std::fs::read_to_string(repo().join("deploy/agent.toml")).unwrap();
    let agent: store_agent::config::AgentConfig =
        toml::from_str(&every_setting(&agent_text)).unwrap();
    let hq_text = std::fs::read_to_string(repo().join("deploy/hq.toml")).unwrap();
    let hq: hq_server::config::HqConfig = toml::from_str(&every_setting(&hq_text)).unwrap();
    // Every field the program knows is set in its example: with the optional ones set, a
    // serialized config names every field, and the example names the same keys.
    assert!(agent.batch_window_utc.is_some() && agent.bundle_folder.is_some());
    assert!(hq.bundle_folder.is_some());
    let keys = |text: &str| -> Vec<String> {
        let mut keys: Vec<String> = toml::from_str::<toml::Table>(text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&every_setting(&agent_text)),
        keys(&toml::to_string(&agent).unwrap())
    );
    assert_eq!(
        keys(&every_setting(&hq_text)),
        keys(&toml::to_string(&hq).unwrap())
    );
    // And the defaults the examples state are the programs' defaults.
    assert_eq!(
        agent.poll_interval_ms,
        store_agent::config::POLL_INTERVAL_MS_DEFAULT
    );
    assert_eq!(
        agent.batch_interval_ms,
        store_agent::config::BATCH_INTERVAL_MS_DEFAULT
    );
    let defaults = hq_server::config::HqConfig::default();
    assert_eq!(
        (hq.listen, hq.api_listen),
        (defaults.listen, defaults.api_listen)
    );
}
