//! `store-agent` command line.

use anyhow::{Context, Result};
use chainsync::ids::Sku;
use chainsync::model::PriceKind;
use chainsync::transport::backups;
use chainsync::transport::leaf::{HqAddress, enroll};
use chainsync::transport::provision::Provisioning;
use chainsync_service::Program;
use chainsync_service::cli::{Host, ServiceCommand};
use clap::{Parser, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use std::path::Path;
use std::path::PathBuf;
use store_agent::config::AgentDir;

/// What `store-agent service …` needs to know about this program.
const SERVICE: Host = Host {
    program: Program::StoreAgent,
    default_data: "store-data",
    inspect: inspect_data_folder,
    run: run_as_service,
};

/// The folders besides the data folder that the agent writes (its bundle folder), once the data
/// folder is known to hold a set-up agent.
fn inspect_data_folder(data: &Path) -> Result<Vec<PathBuf>, String> {
    let state = AgentDir::new(data)
        .load()
        .map_err(|e| format!("{e:#} (set the store up with `store-agent init` first)"))?;
    Ok(state.config.bundle_folder.into_iter().collect())
}

/// `store-agent run`, as the Windows service entry point calls it.
fn run_as_service(data: &Path, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
    runtime()
        .and_then(|rt| rt.block_on(store_agent::run::run(&AgentDir::new(data), shutdown)))
        .map_err(|e| format!("{e:#}"))
}

#[derive(Parser)]
#[command(name = "store-agent", version, about = "chainsync store agent")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Set the store up from HQ's provisioning file: generate the store's key and enroll it.
    Init {
        /// The provisioning file from `hq-server store add`.
        #[arg(long)]
        provision: PathBuf,
        /// The agent's data folder.
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        /// Where the POS API will listen.
        #[arg(long, default_value = "127.0.0.1:7070")]
        pos_listen: std::net::SocketAddr,
    },
    /// Run the agent until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
    },
    /// Show every stream: how far this store holds it, what HQ has acknowledged, halts.
    Status {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
    },
    /// Online backups of the store's database into DATA/backups: take one now, or list them.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Replace the store's database by a backup (stop the agent first). The database as it was
    /// is backed up first. Sales then wait until HQ has said how far it holds this store's
    /// streams, and what the store signed after the backup comes back from HQ.
    Restore {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        /// The backup file (from `backup list`).
        #[arg(long)]
        from: PathBuf,
    },
    /// Exchange everything pending with HQ now (batch mode), through the running agent.
    Sync {
        #[command(subcommand)]
        what: SyncCommand,
    },
    /// Write everything HQ has not acknowledged to a bundle file (for a store without a network).
    Export {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a bundle file from HQ: all of it or, if anything in it is wrong, none of it.
    Import {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
    /// Set this store's own price of a sku (only where HQ allows it), through the running agent.
    SetPrice {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        #[arg(long)]
        sku: Sku,
        /// e.g. 1.99
        #[arg(long)]
        price: String,
        /// retail or member.
        #[arg(long, default_value = "retail")]
        kind: String,
    },
    /// Run as an operating-system service (systemd on Linux, the Windows Service Control
    /// Manager): install, uninstall, start, stop, status, or print the unit.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Look up the price of a sku now.
    Price {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
        #[arg(long)]
        sku: Sku,
        /// retail, member or wholesale.
        #[arg(long, default_value = "retail")]
        kind: String,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take an online backup now (the agent may keep running and selling).
    Now {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
    },
    /// List the backups, newest first.
    List {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Connect, push the outbox, pull what HQ has, hang up; prints what moved.
    Now {
        #[arg(long, default_value = "store-data")]
        data: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    chainsync::transport::process::init_logs(matches!(format, LogFormat::Json));
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let service_log = match &cli.command {
        Command::Service { command } => SERVICE.service_log_file(command),
        _ => None,
    };
    match service_log {
        // Started by the Windows SCM: no console, so logs go to a file in the data folder.
        Some(file) => chainsync::transport::process::init_file_logs(&file)?,
        None => init_logs(cli.log_format),
    }
    match cli.command {
        Command::Service { command } => Ok(chainsync_service::cli::execute(&SERVICE, command)?),
        Command::Init {
            provision,
            data,
            pos_listen,
        } => {
            let dir = AgentDir::new(&data);
            if dir.exists() {
                anyhow::bail!("{} already holds a store agent", data.display());
            }
            let text = std::fs::read_to_string(&provision)
                .with_context(|| format!("reading {}", provision.display()))?;
            let provisioning = Provisioning::from_toml(&text)?;
            if let (Some(key), Some(region)) =
                (provisioning.store_key()?, provisioning.region.clone())
            {
                // HQ enrolled this store offline: nothing to ask HQ.
                dir.create(&provisioning, region.clone(), &key, pos_listen)?;
                println!(
                    "store {} set up from an offline provisioning file (region {region}); import \
                     HQ's bundle (store-agent import --file …) before the first sale, and delete {}",
                    provisioning.store,
                    provision.display()
                );
                return Ok(());
            }
            let key = SigningKey::generate(&mut rand::rng());
            let hq = HqAddress {
                addr: provisioning.hq_addr,
                cert_der: provisioning.cert_der()?,
            };
            let region = runtime()?
                .block_on(enroll(&hq, &provisioning.store, &provisioning.token, &key))
                .with_context(|| {
                    format!(
                        "enrolling {} at HQ {}",
                        provisioning.store, provisioning.hq_addr
                    )
                })?;
            dir.create(&provisioning, region.clone(), &key, pos_listen)?;
            println!(
                "store {} enrolled at HQ {} (region {region}); start it with: store-agent run --data {}",
                provisioning.store,
                provisioning.hq_addr,
                data.display()
            );
            Ok(())
        }
        Command::Run { data } => runtime()?.block_on(async {
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                chainsync::transport::process::stop_signal().await;
                tracing::info!("shutdown requested");
                let _ = stop.send(true);
            });
            store_agent::run::run(&AgentDir::new(&data), shutdown).await
        }),
        Command::Status { data } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
            // The running agent's own view first (link, outbox), as `/healthz` gives it.
            match pos_request(state.config.pos_listen, "", "GET", "/healthz", "", 10) {
                Ok((status, body)) => print_health(status, &body),
                Err(e) => println!(
                    "agent: not answering on {} ({e}); what its database holds:",
                    state.config.pos_listen
                ),
            }
            let replica = dir.open_replica(&state)?;
            println!("{:<34} {:>8} {:>8}  halted", "stream", "head", "acked");
            for s in replica.stream_status()? {
                let acked = if s.stream.origin == state.config.store {
                    s.hub_acked_seq.to_string()
                } else {
                    "-".into()
                };
                println!(
                    "{:<34} {:>8} {:>8}  {}",
                    s.stream.to_string(),
                    s.head_seq,
                    acked,
                    s.halted_reason.unwrap_or_default()
                );
            }
            let mode = replica.store_info(&state.config.store)?.map_or_else(
                || "not known yet".to_owned(),
                |i| format!("{:?}", i.mode).to_lowercase(),
            );
            println!("mode: {mode}");
            for p in replica.seeding()? {
                println!(
                    "seeding {} from HQ's snapshot at seq {}: part {} of {}",
                    p.stream, p.seq, p.parts_done, p.parts
                );
            }
            Ok(())
        }
        Command::Backup {
            command: BackupCommand::Now { data },
        } => {
            let dir = AgentDir::new(&data);
            dir.load()?;
            let taken = backups::backup_now(
                &dir.root.join("store.db"),
                &dir.root.join(backups::BACKUP_FOLDER),
                "store",
                chainsync::transport::now_ms(),
            )?;
            println!("backup {} ({} bytes)", taken.path.display(), taken.bytes);
            Ok(())
        }
        Command::Backup {
            command: BackupCommand::List { data },
        } => {
            let dir = AgentDir::new(&data);
            for line in backups::list_lines(&dir.root.join(backups::BACKUP_FOLDER), "store")? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Restore { data, from } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
            if pos_request(state.config.pos_listen, "", "GET", "/healthz", "", 5).is_ok() {
                anyhow::bail!(
                    "the agent is running (it answers on {}): stop it first (`store-agent service stop`)",
                    state.config.pos_listen
                );
            }
            let node = backups::node_of(&from)?;
            if node != state.config.store.as_str() {
                anyhow::bail!(
                    "{} is a backup of {node}, not of store {}",
                    from.display(),
                    state.config.store
                );
            }
            let db = dir.root.join("store.db");
            let folder = dir.root.join(backups::BACKUP_FOLDER);
            let now = chainsync::transport::now_ms();
            if db.exists() {
                let before = backups::backup_now(&db, &folder, "before-restore", now)?;
                println!("the database as it was: {}", before.path.display());
            }
            backups::restore(&from, &db)?;
            // What the store signed after the backup is at HQ (or in bundles it sent): writing
            // before HQ has said how far it holds the store's streams would fork them.
            dir.open_replica(&state)?.await_hub_heads()?;
            println!(
                "restored {} from {}; sales wait until HQ has said how far it holds this store's \
                 streams (start the agent: its history after the backup comes back from HQ)",
                db.display(),
                from.display()
            );
            Ok(())
        }
        Command::Sync {
            what: SyncCommand::Now { data },
        } => {
            let state = AgentDir::new(&data).load()?;
            let (status, body) = post_sync_now(state.config.pos_listen, &state.config.pos_token)
                .with_context(|| {
                    format!(
                        "asking the agent at {} (is `store-agent run` running?)",
                        state.config.pos_listen
                    )
                })?;
            println!("{body}");
            if status != 200 {
                anyhow::bail!("sync failed (HTTP {status})");
            }
            Ok(())
        }
        Command::SetPrice {
            data,
            sku,
            price,
            kind,
        } => {
            let state = AgentDir::new(&data).load()?;
            let cents = parse_cents(&price)?;
            let body = serde_json::json!({ "price_cents": cents, "kind": kind }).to_string();
            let (status, answer) = pos_request(
                state.config.pos_listen,
                &state.config.pos_token,
                "PUT",
                &format!("/v1/prices/{sku}"),
                &body,
                30,
            )
            .with_context(|| {
                format!(
                    "asking the agent at {} (is `store-agent run` running?)",
                    state.config.pos_listen
                )
            })?;
            println!("{answer}");
            if status != 201 {
                anyhow::bail!("price refused (HTTP {status})");
            }
            Ok(())
        }
        Command::Export { data, out } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
            let replica = dir.open_replica(&state)?;
            let bytes = chainsync::bundle::store_bundle(
                &replica,
                &state.key,
                chainsync::transport::now_ms(),
            )?;
            chainsync::transport::process::write_new_file(&out, &bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            let pending: u64 = replica
                .own_streams()?
                .iter()
                .map(|(_, acked, head)| head - acked)
                .sum();
            println!(
                "wrote {} ({} bytes, {pending} change sets for HQ)",
                out.display(),
                bytes.len()
            );
            Ok(())
        }
        Command::Import { data, file } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
            let mut replica = dir.open_replica(&state)?;
            let bytes = chainsync::transport::process::read_bundle_file(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let report =
                chainsync::transport::process::import_bundle_with_bar(&mut replica, &bytes, &file)
                    .with_context(|| format!("{} was not imported", file.display()))?;
            println!(
                "imported {} from {}: {} change sets applied, {} already here",
                file.display(),
                report.from,
                report.applied,
                report.duplicates
            );
            Ok(())
        }
        Command::Price { data, sku, kind } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
            let replica = dir.open_replica(&state)?;
            let kind = match kind.as_str() {
                "retail" => PriceKind::Retail,
                "member" => PriceKind::Member,
                "wholesale" => PriceKind::Wholesale,
                other => anyhow::bail!("unknown price kind `{other}`"),
            };
            let now = replica.pricing_time(chainsync::transport::now_ms())?;
            let place = replica.place_of(&state.config.store)?.unwrap_or_else(|| {
                chainsync::ids::Place::new(state.config.store.clone(), state.config.region.clone())
            });
            match replica.effective_price(&sku, kind, &place, now)? {
                Some(e) => println!(
                    "{sku} {}.{:02} ({}, entry {})",
                    e.price_cents / 100,
                    e.price_cents % 100,
                    e.scope,
                    e.id
                ),
                None => println!("{sku} has no price here"),
            }
            Ok(())
        }
    }
}

/// The running agent's `/healthz` answer, one line each.
fn print_health(status: u16, body: &str) {
    let Ok(h) = serde_json::from_str::<serde_json::Value>(body) else {
        println!("agent: HTTP {status}, {body}");
        return;
    };
    let ago = |ms: &serde_json::Value| {
        ms.as_u64().map_or("never".to_owned(), |t| {
            let now = chainsync::transport::now_ms();
            format!("{} s ago", now.saturating_sub(t) / 1000)
        })
    };
    println!(
        "agent: {} (HTTP {status}), database {}",
        h["status"].as_str().unwrap_or("?"),
        if h["database_writable"] == true {
            "writable"
        } else {
            "NOT WRITABLE"
        }
    );
    if let Some(e) = h["database_error"].as_str() {
        println!("database error: {e}");
    }
    let link = &h["link"];
    println!(
        "link to HQ: {}, last exchange {}{}",
        if link["connected"] == true {
            "connected"
        } else {
            "not connected"
        },
        ago(&link["last_exchange_ms"]),
        link["last_error"]
            .as_str()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    println!(
        "outbox: {} change sets not yet acknowledged by HQ; halted streams: {}",
        h["outbox_change_sets"], h["halted_streams"]
    );
}

/// `POST /v1/sync/now` to the running agent; returns the status and the body.
fn post_sync_now(addr: std::net::SocketAddr, token: &str) -> Result<(u16, String)> {
    pos_request(addr, token, "POST", "/v1/sync/now", "", 150)
}

/// One request to the running agent's POS API (`Connection: close`, so the answer ends with the
/// stream).
fn pos_request(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout_s: u64,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(timeout_s)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `1.29` or `12` → cents.
fn parse_cents(text: &str) -> Result<i64> {
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(units) || fraction.len() > 2 || (!fraction.is_empty() && !digits(fraction)) {
        anyhow::bail!("`{text}` is not an amount like 1.29");
    }
    let units: i64 = units.parse().with_context(|| format!("`{text}`"))?;
    let fraction: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    units
        .checked_mul(100)
        .and_then(|c| c.checked_add(fraction))
        .with_context(|| format!("`{text}` is too large"))
}
