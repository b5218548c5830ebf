//! Real processes on loopback: `hq-server` and `store-agent` started from the workspace's target
//! folder, driven through their CLIs and the POS API, killed with SIGTERM or SIGKILL.
//!
//! `cargo test --workspace` builds both binaries before any test runs (each binary's package has
//! integration tests of its own), so [`bin`] finds them beside the test executable.
//!
//! Every wait is bounded ([`wait_until`]); every process is killed when its handle drops.

use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`hq-server`, `store-agent`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_until_every(Duration::from_millis(20), timeout, what, check)
}

/// Polls `check` every `poll` until it returns `Some`, for at most `timeout`.
pub fn wait_until_every<T>(
    poll: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(poll);
    }
}

/// Ports the tests hand out: below Linux's ephemeral range (32768..), so no client socket opened
/// meanwhile (QUIC clients bind an ephemeral port) can take one between our check and the
/// server's bind; handed out once per process, so parallel tests never share one.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn free_port(bindable: impl Fn(u16) -> bool) -> u16 {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Start where the process id says, so test binaries run one after another do not walk the
    // same ports while the previous one's sockets linger.
    let start = (std::process::id() % u32::from(span)) as u16 + 1;
    let _ = NEXT_PORT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + n % span;
        if bindable(port) {
            return port;
        }
    }
    panic!("no free test port in {TEST_PORTS:?}");
}

/// A loopback UDP port nobody listens on, reserved for this test.
pub fn free_udp_port() -> u16 {
    free_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A loopback TCP port nobody listens on, reserved for this test.
pub fn free_tcp_port() -> u16 {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A running process, killed (SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited with success.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("RUST_BACKTRACE")
        .output()
        .expect("run command")
}

/// HQ: its data folder and, while running, its process.
pub struct Hq {
    pub data: PathBuf,
    pub addr: SocketAddr,
    pub api: SocketAddr,
}

impl Hq {
    /// `hq-server init` in `root/hq` on a free loopback port.
    pub fn init(root: &Path) -> Hq {
        Self::init_with(root, &[])
    }

    /// [`Hq::init`] with more `init` flags.
    pub fn init_with(root: &Path, extra: &[&str]) -> Hq {
        let addr: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let data = root.join("hq");
        let hq = Hq { data, addr, api };
        let (addr, api) = (addr.to_string(), api.to_string());
        let mut args = vec![
            "init",
            "--listen",
            &addr,
            "--public-addr",
            &addr,
            "--api-listen",
            &api,
        ];
        args.extend_from_slice(extra);
        hq.cli_ok(&args);
        hq
    }

    /// Runs an `hq-server` subcommand with `--data` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("hq-server"));
        // The subcommand words come first, then --data (every data-using command takes it).
        cmd.args(args).arg("--data").arg(&self.data);
        run(&mut cmd)
    }

    /// Like [`Hq::cli`], asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hq-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `hq-server serve` and waits until it listens.
    pub fn start(&self) -> Proc {
        self.start_with_env(&[])
    }

    /// [`Hq::start`] with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Proc {
        let log = self.data.join(format!("serve-{}.log", rand_suffix()));
        let mut cmd = Command::new(bin("hq-server"));
        cmd.arg("serve").arg("--data").arg(&self.data);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(&mut cmd, log);
        let mut proc = proc;
        wait_until(Duration::from_secs(20), "HQ to listen", || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("hq-server serve exited ({status}): {}", proc.log_text());
            }
            proc.log_text().contains("HQ API listening").then_some(())
        });
        proc
    }

    /// Registers a store and returns its provisioning file.
    pub fn add_store(&self, id: &str, region: &str) -> PathBuf {
        self.add_store_with(id, region, &[]).0
    }

    /// Registers a store with more `store add` flags (`--mode batch`, `--offline`); returns its
    /// provisioning file and what the command printed.
    pub fn add_store_with(&self, id: &str, region: &str, flags: &[&str]) -> (PathBuf, String) {
        let out = self.data.join(format!("{id}.provision"));
        let name = format!("Store {id}");
        let out_text = out.to_string_lossy().into_owned();
        let mut args = vec![
            "store", "add", "--id", id, "--name", &name, "--region", region, "--out", &out_text,
        ];
        args.extend_from_slice(flags);
        let said = self.cli_ok(&args);
        (out, said)
    }

    /// Creates an HQ API token for `role` (admin, readonly, regional:<region>).
    pub fn token(&self, role: &str) -> String {
        self.cli_ok(&["token", "add", "--name", "test", "--role", role])
            .trim()
            .to_owned()
    }

    /// An HQ API request with `token`.
    pub fn api(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        http(self.api, method, path, Some(token), body.as_deref()).expect("HQ API request")
    }

    /// Opens HQ's replica read-side, beside a running server (WAL allows it).
    pub fn replica(&self) -> chainsync::replica::Replica {
        let dir = hq_server::config::HqDir::new(&self.data);
        let state = dir.load().expect("load HQ");
        dir.open_replica(&state.key).expect("open HQ replica")
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A store agent: its data folder, POS address and token.
#[derive(Debug, Clone)]
pub struct Agent {
    pub store: String,
    pub data: PathBuf,
    pub pos: SocketAddr,
    pub token: String,
}

impl Agent {
    /// `store-agent init` from a provisioning file; HQ must be running.
    pub fn init(root: &Path, store: &str, provision: &Path) -> Result<Agent, String> {
        let data = root.join(store);
        let pos: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let out = run(Command::new(bin("store-agent"))
            .args(["init", "--provision"])
            .arg(provision)
            .arg("--data")
            .arg(&data)
            .args(["--pos-listen", &pos.to_string()]));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let config = std::fs::read_to_string(data.join("agent.toml")).map_err(|e| e.to_string())?;
        let config: toml::Table = config.parse().map_err(|e| format!("agent.toml: {e}"))?;
        let token = config
            .get("pos_token")
            .and_then(|v| v.as_str())
            .ok_or("no pos_token")?
            .to_owned();
        Ok(Agent {
            store: store.to_owned(),
            data,
            pos,
            token,
        })
    }

    /// Starts `store-agent run` and waits until the POS API answers.
    pub fn start(&self) -> Proc {
        self.start_with_env(&[])
    }

    /// Runs a `store-agent` subcommand with `--data` (the words first) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("store-agent"))
            .args(args)
            .arg("--data")
            .arg(&self.data))
    }

    /// [`Agent::start`] with extra environment variables (e.g. a preloaded fake clock).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Proc {
        let log = self.data.join(format!("run-{}.log", rand_suffix()));
        let mut cmd = Command::new(bin("store-agent"));
        cmd.arg("run").arg("--data").arg(&self.data);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(&mut cmd, log);
        let mut proc = proc;
        wait_until(Duration::from_secs(20), "the POS API to answer", || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("store-agent run exited ({status}): {}", proc.log_text());
            }
            self.try_get("/v1/sync").ok().map(|_| ())
        });
        proc
    }

    /// Sets the safety-net poll interval in agent.toml (before start).
    pub fn set_poll_interval_ms(&self, ms: u64) {
        let path = self.data.join("agent.toml");
        let text = std::fs::read_to_string(&path).expect("agent.toml");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("poll_interval_ms") {
                    format!("poll_interval_ms = {ms}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, text).expect("write agent.toml");
    }

    /// GET, returning (status, JSON body).
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, Value)> {
        http(self.pos, "GET", path, Some(&self.token), None)
    }

    /// GET that must answer.
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path).expect("GET")
    }

    /// A request with a JSON body.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        http(
            self.pos,
            method,
            path,
            Some(&self.token),
            Some(body.to_string().as_bytes()),
        )
        .expect("request")
    }

    /// A request with raw body bytes (for malformed input).
    pub fn send_raw(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        http(self.pos, method, path, Some(&self.token), Some(body)).expect("request")
    }

    /// A stored-value call at the POS under a fresh entry number: a top-up paid in cash when
    /// `change` is positive, a spend when negative.
    pub fn stored_value(&self, member: &str, change: i64) -> (u16, Value) {
        static ENTRY_NO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let no = ENTRY_NO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut body = serde_json::json!({ "entry_no": format!("t{no}"), "change": change });
        if change > 0 {
            body["tender"] = serde_json::json!("cash");
        }
        self.send("POST", &format!("/v1/members/{member}/stored-value"), &body)
    }
}

pub use hq_server::demo::http_request as http;
pub use hq_server::demo::http_text;

/// The value of the Prometheus sample `series` (name and labels exactly as printed, e.g.
/// `chainsync_change_sets_total{direction="in",topic="sales"}`) in `text`, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// Enrolls `store` at the HQ of `hq` (running in this process, listening on `quic`) through the
/// real enrollment path and creates its agent folder under `root`, with a free POS port. For
/// benchmarks that run HQ and agents in one process.
pub fn enroll_in_process(
    runtime: &tokio::runtime::Runtime,
    hq: &hq_server::config::HqState,
    quic: SocketAddr,
    store: &chainsync::ids::NodeId,
    token: &str,
    root: &Path,
) -> (store_agent::config::AgentDir, ed25519_dalek::SigningKey) {
    let hq_address = chainsync::transport::leaf::HqAddress {
        addr: quic,
        cert_der: hq.cert.cert_der.clone(),
    };
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let region = runtime
        .block_on(chainsync::transport::leaf::enroll(
            &hq_address,
            store,
            token,
            &key,
        ))
        .expect("enroll");
    let provisioning = chainsync::transport::provision::Provisioning {
        store: store.clone(),
        hq_addr: quic,
        hq_cert: hex::encode(&hq.cert.cert_der),
        hq_public_key: hex::encode(hq.key.verifying_key().to_bytes()),
        token: token.to_owned(),
        store_key: None,
        region: None,
    };
    let pos: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let agent_dir = store_agent::config::AgentDir::new(&root.join(store.as_str()));
    agent_dir
        .create(&provisioning, region, &key, pos)
        .expect("agent dir");
    (agent_dir, key)
}

/// An HQ data folder under `root/hq` for benches that run HQ in this process, on free loopback
/// ports; returns the folder, its state, the QUIC and the API address.
pub fn hq_in_process(
    root: &Path,
) -> (
    hq_server::config::HqDir,
    hq_server::config::HqState,
    SocketAddr,
    SocketAddr,
) {
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let hq_dir = hq_server::config::HqDir::new(&root.join("hq"));
    hq_dir
        .init(&hq_server::config::HqConfig {
            listen: quic,
            public_addr: quic,
            api_listen: api,
            bundle_folder: None,
            ..Default::default()
        })
        .expect("hq init");
    let state = hq_dir.load().expect("hq load");
    (hq_dir, state, quic, api)
}

/// Writes `skus` products `SKU000000…` (category from `category`) with a chain retail price
/// each (1.00 to 5.99) into HQ's replica, `ops_per_change_set` at a time.
pub fn write_catalog(
    hq: &mut chainsync::replica::Replica,
    skus: usize,
    ops_per_change_set: usize,
    category: impl Fn(usize) -> String,
) {
    use chainsync::changeset::Op;
    use chainsync::ids::{RecordId, Scope, Topic};
    use chainsync::model::{PriceEntry, PriceKind, Product};
    for chunk in (0..skus).collect::<Vec<_>>().chunks(ops_per_change_set) {
        let products = chunk.iter().map(|i| {
            Op::ProductUpsert(Product {
                sku: crate::sku(&format!("SKU{i:06}")),
                name: format!("Product {i}"),
                category: category(*i),
                barcodes: vec![format!("40{i:011}")],
                unit_cost_cents: 50,
                active: true,
            })
        });
        hq.commit_local(Topic::Catalog, products.collect(), 1)
            .expect("catalog");
        let prices = chunk.iter().map(|i| {
            Op::PriceUpsert(PriceEntry {
                id: RecordId::new(format!("hq-p{i:06}")).expect("id"),
                sku: crate::sku(&format!("SKU{i:06}")),
                scope: Scope::Chain,
                kind: PriceKind::Retail,
                price_cents: 100 + (*i as i64 % 500),
                effective_from_ms: 0,
                effective_to_ms: None,
            })
        });
        hq.commit_local(Topic::Prices(Scope::Chain), prices.collect(), 1)
            .expect("prices");
    }
}

/// An HTTP/1.1 client that keeps its loopback connection open between requests, as a till's
/// POS client does (the one-shot [`http`] opens a connection per request). Answers must carry a
/// `Content-Length` (every JSON answer of the APIs does). For benchmarks.
pub struct KeptConnection {
    addr: SocketAddr,
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl KeptConnection {
    pub fn open(addr: SocketAddr) -> std::io::Result<KeptConnection> {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(KeptConnection {
            addr,
            stream: std::io::BufReader::new(stream),
        })
    }

    /// One request on the open connection: the status and the JSON body (`Null` if not JSON).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Value)> {
        use std::io::{BufRead, Read, Write};
        let body = body.unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request)?;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in the headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut answer = vec![0; length.ok_or_else(|| bad("no Content-Length"))?];
        self.stream.read_exact(&mut answer)?;
        Ok((
            status,
            serde_json::from_slice(&answer).unwrap_or(Value::Null),
        ))
    }
}
