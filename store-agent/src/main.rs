//! `store-agent` command line.

use anyhow::{Context, Result};
use chainsync::ids::Sku;
use chainsync::model::PriceKind;
use chainsync::transport::leaf::{HqAddress, enroll};
use chainsync::transport::provision::Provisioning;
use clap::{Parser, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use std::path::PathBuf;
use store_agent::config::AgentDir;

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

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
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
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                let _ = stop.send(true);
            });
            store_agent::run::run(&AgentDir::new(&data), shutdown).await
        }),
        Command::Status { data } => {
            let dir = AgentDir::new(&data);
            let state = dir.load()?;
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
            let now = chainsync::transport::now_ms() as i64;
            match replica.effective_price(
                &sku,
                kind,
                &state.config.store,
                &state.config.region,
                now,
            )? {
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

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
