//! `store-agent` command line. The agent's commands (init, run, status, sync now, bundles) arrive
//! with the network work; for now it only tells what it is.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "store-agent",
    version,
    about = "chainsync store agent (the sync service arrives with the network work; try `hq-server demo`)"
)]
struct Cli {}

fn main() {
    Cli::parse();
    println!(
        "store-agent {}: nothing to run yet; `hq-server demo` shows a chain syncing",
        env!("CARGO_PKG_VERSION")
    );
}
