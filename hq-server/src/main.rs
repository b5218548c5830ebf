//! `hq-server` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(name = "hq-server", version, about = "chainsync headquarters server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a small chain (HQ and four stores, each with its own SQLite replica) on this machine:
    /// stores sell, HQ changes a price, everything syncs, and it prints consolidated stock.
    Demo {
        /// Folder for the demo's databases (default: a new folder in the system temp folder).
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_millis() as u64;
    match cli.command {
        Command::Demo { data } => {
            let dir = data
                .unwrap_or_else(|| std::env::temp_dir().join(format!("chainsync-demo-{now_ms}")));
            hq_server::demo::run(&dir, now_ms)
        }
    }
}
