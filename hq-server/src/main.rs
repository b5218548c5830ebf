//! `hq-server` command line.

use anyhow::{Context, Result};
use chainsync::ids::{NodeId, Scope, Sku};
use chainsync::replica::PendingStore;
use chainsync_service::Program;
use chainsync_service::cli::{Host, ServiceCommand};
use clap::{Parser, Subcommand, ValueEnum};
use hq_server::admin::{self, PriceRequest};
use hq_server::config::{HqConfig, HqDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `hq-server service …` needs to know about this program.
const SERVICE: Host = Host {
    program: Program::Hq,
    default_data: "hq-data",
    inspect: inspect_data_folder,
    run: run_as_service,
};

/// The folders besides the data folder that HQ writes (its bundle folder), once the data folder
/// is known to hold a set-up HQ.
fn inspect_data_folder(data: &Path) -> Result<Vec<PathBuf>, String> {
    let state = HqDir::new(data).load().map_err(|e| format!("{e:#}"))?;
    Ok(state.config.bundle_folder.into_iter().collect())
}

/// `hq-server serve`, as the Windows service entry point calls it.
fn run_as_service(data: &Path, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(hq_server::serve::serve(&HqDir::new(data), shutdown)))
        .map_err(|e| format!("{e:#}"))
}

#[derive(Parser)]
#[command(name = "hq-server", version, about = "chainsync headquarters server")]
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
    /// Create a new HQ: signing key, TLS certificate, config and database in --data.
    Init {
        /// HQ's data folder.
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// UDP address the sync endpoint listens on.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Address stores dial (written into provisioning files).
        #[arg(long, default_value = "127.0.0.1:7443")]
        public_addr: SocketAddr,
        /// TCP address of the HQ API.
        #[arg(long, default_value = "127.0.0.1:7080")]
        api_listen: SocketAddr,
        /// Bundle folder for stores without a network (inbox/ watched; answers in outbox/<store>/).
        #[arg(long)]
        bundle_folder: Option<PathBuf>,
    },
    /// Run the sync endpoint until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Run as an operating-system service (systemd on Linux, the Windows Service Control
    /// Manager): install, uninstall, start, stop, status, or print the unit.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Manage stores.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Manage regions (nested: branch company, office …).
    #[command(subcommand)]
    Region(RegionCommand),
    /// Manage prices.
    #[command(subcommand)]
    Price(PriceCommand),
    /// Manage the catalog.
    #[command(subcommand)]
    Product(ProductCommand),
    /// Manage HQ API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Online backups of HQ's database into DATA/backups (HQ keeps running): now, or list.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Replace HQ's database by a backup (stop HQ first; the database as it was is backed up
    /// first). HQ then writes nothing until the stores have returned what they hold of its
    /// history after the backup (`reclaim status`).
    Restore {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// The backup file (from `backup list`).
        #[arg(long)]
        from: PathBuf,
    },
    /// After a restore: which stores have returned HQ's later history (status), or end the
    /// wait before all have (finish).
    #[command(subcommand)]
    Reclaim(ReclaimCommand),
    /// Manage promotions.
    #[command(subcommand)]
    Promo(PromoCommand),
    /// Reports as CSV: promotions, overrides, unverified returns, card exceptions, pricing, halts.
    #[command(subcommand)]
    Report(ReportCommand),
    /// The loyalty policy: points earned and paid, offline allowances.
    #[command(subcommand)]
    Loyalty(LoyaltyCommand),
    /// Members: a card's own allowance, adjustments, statements, look-up, duplicates, merges.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Loyalty cards: issue, look up, freeze, unfreeze, cancel, report lost, replace.
    #[command(subcommand)]
    Card(CardCommand),
    /// Import products or prices from CSV (all rows checked before anything is written).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Export consolidated stock to CSV.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Bundle files for stores without a network.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Run a small chain on this machine: HQ and four store agents (each with its own SQLite
    /// replica) over QUIC on loopback; stores sell, HQ changes a price, it prints consolidated
    /// stock, then keeps running until Ctrl-C with its API open.
    Demo {
        /// Folder for the demo's databases (default: a new folder in the system temp folder).
        #[arg(long)]
        data: Option<PathBuf>,
        /// TCP address of the demo's HQ API.
        #[arg(long, default_value = "127.0.0.1:7080")]
        api_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Add a region, or rename or move one; --parent puts it under another region.
    Add {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// List regions with the path up from each.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Register a store and write its provisioning file (carry it to the store).
    Add {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// Store id, e.g. S017.
        #[arg(long)]
        id: NodeId,
        /// Store name.
        #[arg(long)]
        name: String,
        /// Region id, e.g. north.
        #[arg(long)]
        region: String,
        /// realtime, batch or hosted.
        #[arg(long, default_value = "realtime")]
        mode: String,
        /// Where to write the provisioning file.
        #[arg(long)]
        out: PathBuf,
        /// Enroll the store here and now, for a store with no network at all: the provisioning
        /// file then holds the store's key (keep it secret; delete it after `store-agent init`).
        #[arg(long)]
        offline: bool,
    },
    /// A new provisioning file for a store whose machine or key was lost; the store enrolls again
    /// with a new key and gets back its own history from HQ.
    Replace {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: NodeId,
        /// Where to write the provisioning file.
        #[arg(long)]
        out: PathBuf,
        /// Enroll the new key here and now (see `store add --offline`).
        #[arg(long)]
        offline: bool,
    },
    /// Cut a store off: its connections are refused and its change sets rejected.
    Revoke {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: NodeId,
    },
    /// Switch a store between realtime, batch and hosted; its agent follows.
    Mode {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: NodeId,
        /// realtime, batch or hosted.
        #[arg(long)]
        mode: String,
    },
    /// Set a store's time zone (promotion days and hours are read in it) and whether it may
    /// set its own store-scope prices.
    Set {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: NodeId,
        /// IANA zone, e.g. Europe/Paris.
        #[arg(long)]
        time_zone: Option<String>,
        #[arg(long)]
        may_set_own_prices: Option<bool>,
    },
    /// List stores with their state and when HQ last heard from them.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

// Parsed once per run: the size of `Add` costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PromoCommand {
    /// Add a promotion, or replace one with the same id and scope.
    Add {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// Promotion id, e.g. summer-cola.
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// chain, region:<id> or store:<id>.
        #[arg(long, default_value = "chain")]
        scope: String,
        /// percent_off:10, amount_off:0.50, fixed_price:0.99, tiers:3=0.90,6=0.80,
        /// buy:2:get:1[:across], mix:3:price:5.00 (or percent:20, off:1.00),
        /// spend:50.00:off:5.00,100:off:15.00 (or percent:10, gift:SKU).
        #[arg(long)]
        rule: String,
        /// Skus it applies to (repeat; with no --sku and no --category: every sku).
        #[arg(long)]
        sku: Vec<String>,
        /// Product categories it applies to (repeat).
        #[arg(long)]
        category: Vec<String>,
        /// exclusive, best_price or compound.
        #[arg(long, default_value = "best_price")]
        mode: String,
        /// Higher first; a line is discounted at one priority only.
        #[arg(long, default_value_t = 0)]
        priority: u16,
        #[arg(long)]
        member_only: bool,
        /// Member levels it is for (repeat; implies members only).
        #[arg(long)]
        level: Vec<String>,
        #[arg(long)]
        birthday_only: bool,
        /// Starts at (Unix ms; default now).
        #[arg(long)]
        from_ms: Option<i64>,
        /// Ends at (Unix ms, exclusive; default open-ended).
        #[arg(long)]
        to_ms: Option<i64>,
        /// Store-local dates, both inclusive: 20261201-20261224.
        #[arg(long)]
        dates: Option<String>,
        /// Store-local days: mon,tue,… (default every day).
        #[arg(long, value_delimiter = ',')]
        days: Vec<String>,
        /// Store-local hours [from, to): 17-19 (22-2 wraps midnight).
        #[arg(long)]
        hours: Option<String>,
        /// At most this many units per receipt.
        #[arg(long)]
        max_units: Option<u32>,
        /// Units a store may give in all: S001=100 (repeat; then only the stores listed).
        #[arg(long)]
        allocate: Vec<String>,
    },
    /// End a promotion now: stores stop giving it as soon as they hear.
    End {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "chain")]
        scope: Scope,
    },
    /// Set how many units of a promotion one store may give in all (0 takes the store off).
    Allocate {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "chain")]
        scope: Scope,
        #[arg(long)]
        store: NodeId,
        #[arg(long)]
        units: u32,
    },
    /// List every promotion, one JSON object a line.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Remove a promotion.
    Remove {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "chain")]
        scope: Scope,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Units, sales and discount given per promotion, by store or region.
    Promotions {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// store or region.
        #[arg(long, default_value = "store")]
        by: String,
    },
    /// Prices tills overrode and discounts they gave by hand, with their reason codes.
    Overrides {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Returns stores took without the original receipt, checked once it has arrived.
    Returns {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Cards overdrawn, or taken from offline beyond policy, with the entries behind them.
    CardExceptions {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Streams halted by an integrity failure: since when, why, and what resolves it.
    Halts {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Receipts HQ priced again and found charged otherwise, with the cause (receipts not
    /// checked yet are checked first).
    Pricing {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum LoyaltyCommand {
    /// Set the policy from a JSON file (the shape `loyalty show` prints; see docs/API.md).
    Set {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the policy as JSON.
    Show {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Expire points by the policy now (a running server also does this every hour).
    Expire {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// Expire as at this time (Unix ms), e.g. the end of a month.
        #[arg(long)]
        at_ms: Option<i64>,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// A card's own offline allowance (or --clear to fall back to its level's or the chain's).
    Allowance {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        member: String,
        #[arg(long, default_value_t = 0)]
        stored_value_cents: i64,
        #[arg(long, default_value_t = 0)]
        points: i64,
        #[arg(long)]
        clear: bool,
    },
    /// Adjust a card (settle an overdraft, correct a mistake); --no makes it idempotent.
    Adjust {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        member: String,
        /// stored-value or points.
        #[arg(long)]
        account: String,
        /// Signed, in cents or points.
        #[arg(long, allow_hyphen_values = true)]
        amount: i64,
        /// Why.
        #[arg(long)]
        note: String,
        /// The adjustment's number (default: the time in milliseconds).
        #[arg(long)]
        no: Option<String>,
    },
    /// A member's ledger entries with running balances, as JSON.
    Statement {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        member: String,
    },
    /// The members with a phone number.
    Find {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        phone: String,
    },
    /// Members sharing a phone, possibly one person signed up twice (CSV).
    Duplicates {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Merge --alias into --into: one member survives, with every entry of both, counted once.
    Merge {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        alias: String,
        #[arg(long)]
        into: String,
    },
}

#[derive(Subcommand)]
enum CardCommand {
    /// Issue a card to a member.
    Issue {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        number: String,
        #[arg(long)]
        member: String,
    },
    /// Show a card as JSON.
    Show {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        number: String,
    },
    /// Set a card's status: active, frozen, cancelled, lost, or replaced (with --by NEW).
    Status {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        number: String,
        #[arg(long)]
        status: String,
        /// The new card replacing this one (issued to the same member).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Products: sku,name,category,unit_cost,barcodes (barcodes separated by `;`).
    Products {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
    /// Prices: sku,scope,kind,price,effective_from_ms,effective_to_ms.
    Prices {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Consolidated stock: store,region,sku,category,qty,as_of_ms.
    Stock {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Write a store's bundle: what it lacks of the streams it follows, and HQ's acknowledgement
    /// of what it sent.
    Export {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: NodeId,
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a store's bundle: all of it or, if anything in it is wrong, none of it.
    Import {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReclaimCommand {
    /// Stores that have returned what they held, stores waited for, streams still behind.
    Status {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Let HQ write again before every store has returned its history. A store that still
    /// holds later HQ change sets will halt those streams as forks (`report halts`).
    Finish {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take an online backup now.
    Now {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// List the backups, newest first.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it (it is stored hashed; it cannot be shown again).
    Add {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        /// Who holds it, for the record.
        #[arg(long)]
        name: String,
        /// admin, readonly, or regional:<region>.
        #[arg(long)]
        role: String,
        /// Refuse the token this many days from now (1 to 3660); without it, it never expires.
        #[arg(long)]
        expires_days: Option<u64>,
    },
    /// List the tokens: id, holder, role, created, expires (Unix ms) and whether still valid.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
    /// Revoke a token by its id (from `token list`): refused from now on, the server too.
    Revoke {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum ProductCommand {
    /// Add a product, or replace it if the sku exists.
    Add {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        sku: Sku,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "general")]
        category: String,
        /// Unit cost, e.g. 0.55 (for margins).
        #[arg(long, default_value = "0")]
        cost: String,
        /// Barcodes (repeat the flag for several).
        #[arg(long)]
        barcode: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PriceCommand {
    /// Set the price of a sku for a scope, now or from a given time.
    Set {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
        #[arg(long)]
        sku: Sku,
        /// Price, e.g. 1.29.
        #[arg(long)]
        price: String,
        /// chain, region:<id> or store:<id>.
        #[arg(long, default_value = "chain")]
        scope: Scope,
        /// retail, member or wholesale.
        #[arg(long, default_value = "retail")]
        kind: String,
        /// In effect from (Unix ms; default now).
        #[arg(long)]
        from_ms: Option<i64>,
        /// In effect until (Unix ms, exclusive; default open-ended).
        #[arg(long)]
        to_ms: Option<i64>,
    },
}

fn init_logs(format: LogFormat) {
    chainsync::transport::process::init_logs(matches!(format, LogFormat::Json));
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
            data,
            listen,
            public_addr,
            api_listen,
            bundle_folder,
        } => {
            let dir = HqDir::new(&data);
            dir.init(&HqConfig {
                listen,
                public_addr,
                api_listen,
                bundle_folder,
                ..Default::default()
            })?;
            println!(
                "HQ created in {}; start it with: hq-server serve --data {}",
                data.display(),
                data.display()
            );
            Ok(())
        }
        Command::Serve { data } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let (stop, shutdown) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    chainsync::transport::process::stop_signal().await;
                    tracing::info!("shutdown requested");
                    let _ = stop.send(true);
                });
                hq_server::serve::serve(&HqDir::new(&data), shutdown).await
            })
        }
        Command::Store(StoreCommand::Add {
            data,
            id,
            name,
            region,
            mode,
            out,
            offline,
        }) => {
            let store = PendingStore {
                id,
                name,
                region: admin::parse_region(&region)?,
                mode: admin::parse_mode(&mode)?,
            };
            admin::add_store(&HqDir::new(&data), store, &out, offline)
        }
        Command::Store(StoreCommand::Replace {
            data,
            id,
            out,
            offline,
        }) => admin::replace_store(&HqDir::new(&data), &id, &out, offline),
        Command::Store(StoreCommand::Revoke { data, id }) => {
            admin::revoke_store(&HqDir::new(&data), &id)
        }
        Command::Store(StoreCommand::Mode { data, id, mode }) => {
            admin::set_store_mode(&HqDir::new(&data), &id, admin::parse_mode(&mode)?)
        }
        Command::Store(StoreCommand::List { data }) => admin::list_stores(&HqDir::new(&data)),
        Command::Region(RegionCommand::Add {
            data,
            id,
            name,
            parent,
        }) => admin::add_region(
            &HqDir::new(&data),
            &admin::parse_region(&id)?,
            &name,
            parent.as_deref().map(admin::parse_region).transpose()?,
        ),
        Command::Region(RegionCommand::List { data }) => admin::list_regions(&HqDir::new(&data)),
        Command::Store(StoreCommand::Set {
            data,
            id,
            time_zone,
            may_set_own_prices,
        }) => admin::set_store(&HqDir::new(&data), &id, time_zone, may_set_own_prices),
        Command::Price(PriceCommand::Set {
            data,
            sku,
            price,
            scope,
            kind,
            from_ms,
            to_ms,
        }) => {
            let req = PriceRequest {
                sku,
                scope,
                kind: admin::parse_kind(&kind)?,
                price_cents: admin::parse_cents(&price)?,
                effective_from_ms: from_ms,
                effective_to_ms: to_ms,
            };
            admin::set_price(&HqDir::new(&data), req)
        }
        Command::Product(ProductCommand::Add {
            data,
            sku,
            name,
            category,
            cost,
            barcode,
        }) => {
            let product = chainsync::model::Product {
                sku,
                name,
                category,
                barcodes: barcode,
                unit_cost_cents: admin::parse_cents(&cost)?,
                active: true,
            };
            admin::add_product(&HqDir::new(&data), product)
        }
        Command::Promo(PromoCommand::Add {
            data,
            id,
            name,
            scope,
            rule,
            sku,
            category,
            mode,
            priority,
            member_only,
            level,
            birthday_only,
            from_ms,
            to_ms,
            dates,
            days,
            hours,
            max_units,
            allocate,
        }) => {
            let spec = hq_server::promo::PromotionSpec {
                id,
                name,
                scope,
                rule: hq_server::promo::parse_rule(&rule)?,
                skus: sku,
                categories: category,
                mode: serde_json::from_value(serde_json::Value::String(mode.clone())).map_err(
                    |_| anyhow::anyhow!("mode `{mode}` is not exclusive, best_price or compound"),
                )?,
                priority,
                member_only,
                member_levels: level,
                birthday_only,
                starts_at_ms: from_ms,
                ends_at_ms: to_ms,
                local_dates: dates.as_deref().map(parse_pair::<u32>).transpose()?,
                days_of_week: days,
                hours: hours.as_deref().map(parse_pair::<u8>).transpose()?,
                max_units_per_receipt: max_units,
                allocations: allocate
                    .iter()
                    .map(|a| {
                        let (store, units) = a
                            .split_once('=')
                            .with_context(|| format!("allocation `{a}` is not STORE=UNITS"))?;
                        Ok(hq_server::promo::AllocationSpec {
                            store: store.to_owned(),
                            units: units.parse().with_context(|| format!("units `{units}`"))?,
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            admin::add_promo(&HqDir::new(&data), spec)
        }
        Command::Promo(PromoCommand::End { data, id, scope }) => {
            admin::end_promo(&HqDir::new(&data), &id, scope)
        }
        Command::Promo(PromoCommand::Allocate {
            data,
            id,
            scope,
            store,
            units,
        }) => admin::allocate_promo(&HqDir::new(&data), &id, scope, &store, units),
        Command::Promo(PromoCommand::List { data }) => admin::list_promos(&HqDir::new(&data)),
        Command::Promo(PromoCommand::Remove { data, id, scope }) => {
            admin::remove_promo(&HqDir::new(&data), &id, scope)
        }
        Command::Report(report) => {
            let (data, kind) = match &report {
                ReportCommand::Promotions { data, by } => (
                    data,
                    hq_server::csvio::Report::Promotions {
                        by_region: by == "region",
                    },
                ),
                ReportCommand::Overrides { data } => (data, hq_server::csvio::Report::Overrides),
                ReportCommand::Returns { data } => {
                    (data, hq_server::csvio::Report::UnverifiedReturns)
                }
                ReportCommand::CardExceptions { data } => {
                    (data, hq_server::csvio::Report::CardExceptions)
                }
                ReportCommand::Pricing { data } => (data, hq_server::csvio::Report::Pricing),
                ReportCommand::Halts { data } => (data, hq_server::csvio::Report::Halts),
            };
            if let ReportCommand::Promotions { by, .. } = &report
                && by != "store"
                && by != "region"
            {
                anyhow::bail!("--by is store or region, not `{by}`");
            }
            let dir = HqDir::new(data);
            let state = dir.load()?;
            let mut replica = dir.open_replica(&state.key)?;
            if kind == hq_server::csvio::Report::Pricing {
                hq_server::serve::check_prices_until_done(&mut replica)?;
            }
            let mut out = std::io::stdout().lock();
            hq_server::csvio::write_report(&replica, kind, &mut out)
        }
        Command::Loyalty(LoyaltyCommand::Set { data, file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let spec = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a loyalty policy", file.display()))?;
            admin::set_loyalty_policy(&HqDir::new(&data), spec)
        }
        Command::Loyalty(LoyaltyCommand::Show { data }) => {
            admin::show_loyalty_policy(&HqDir::new(&data))
        }
        Command::Loyalty(LoyaltyCommand::Expire { data, at_ms }) => {
            let dir = HqDir::new(&data);
            let state = dir.load()?;
            let mut replica = dir.open_replica(&state.key)?;
            let at_ms = at_ms.unwrap_or(chainsync::transport::now_ms() as i64);
            let n = hq_server::loyalty::expire_points(&mut replica, at_ms)?;
            println!("expired the points of {n} members");
            Ok(())
        }
        Command::Member(MemberCommand::Allowance {
            data,
            member,
            stored_value_cents,
            points,
            clear,
        }) => {
            let allowance = (!clear).then_some(chainsync::model::Allowance {
                stored_value_cents,
                points,
            });
            admin::set_member_allowance(&HqDir::new(&data), &member, allowance)
        }
        Command::Member(MemberCommand::Adjust {
            data,
            member,
            account,
            amount,
            note,
            no,
        }) => admin::adjust_member(
            &HqDir::new(&data),
            &member,
            &account,
            amount,
            &note,
            no.unwrap_or_else(|| chainsync::transport::now_ms().to_string()),
        ),
        Command::Member(MemberCommand::Statement { data, member }) => {
            admin::member_statement(&HqDir::new(&data), &member)
        }
        Command::Member(MemberCommand::Find { data, phone }) => {
            admin::find_members(&HqDir::new(&data), &phone)
        }
        Command::Member(MemberCommand::Duplicates { data }) => {
            let dir = HqDir::new(&data);
            let state = dir.load()?;
            let replica = dir.open_replica(&state.key)?;
            let mut out = std::io::stdout().lock();
            hq_server::csvio::write_report(
                &replica,
                hq_server::csvio::Report::DuplicateMembers,
                &mut out,
            )
        }
        Command::Member(MemberCommand::Merge { data, alias, into }) => {
            admin::merge_members(&HqDir::new(&data), &alias, &into)
        }
        Command::Card(CardCommand::Issue {
            data,
            number,
            member,
        }) => admin::issue_card(&HqDir::new(&data), &number, &member),
        Command::Card(CardCommand::Show { data, number }) => {
            admin::show_card(&HqDir::new(&data), &number)
        }
        Command::Card(CardCommand::Status {
            data,
            number,
            status,
            by,
        }) => admin::set_card_status(&HqDir::new(&data), &number, &status, by.as_deref()),
        Command::Import(ImportCommand::Products { data, file }) => {
            let n = hq_server::csvio::import_products(&HqDir::new(&data), &file)?;
            println!("imported {n} products");
            Ok(())
        }
        Command::Import(ImportCommand::Prices { data, file }) => {
            let n = hq_server::csvio::import_prices(&HqDir::new(&data), &file)?;
            println!("imported {n} price entries");
            Ok(())
        }
        Command::Export(ExportCommand::Stock { data, file }) => {
            let n = hq_server::csvio::export_stock(&HqDir::new(&data), &file)?;
            println!("exported {n} stock rows to {}", file.display());
            Ok(())
        }
        Command::Bundle(BundleCommand::Export { data, id, out }) => {
            admin::export_bundle(&HqDir::new(&data), &id, &out)
        }
        Command::Bundle(BundleCommand::Import { data, file }) => {
            admin::import_bundle(&HqDir::new(&data), &file)
        }
        Command::Token(TokenCommand::Add {
            data,
            name,
            role,
            expires_days,
        }) => {
            let dir = HqDir::new(&data);
            let state = dir.load()?;
            let mut replica = dir.open_replica(&state.key)?;
            let (token, kept) = admin::add_token(
                &mut replica,
                &name,
                &role,
                expires_days,
                chainsync::transport::now_ms(),
            )?;
            // Only the token on stdout, so scripts can take it; its id for the record.
            println!("{token}");
            eprintln!(
                "token id {} (for `hq-server token list` and `token revoke`)",
                kept.id
            );
            Ok(())
        }
        Command::Backup(BackupCommand::Now { data }) => {
            use chainsync::transport::backups;
            let dir = HqDir::new(&data);
            dir.load()?;
            let taken = backups::backup_now(
                &dir.root.join("hq.db"),
                &dir.root.join(backups::BACKUP_FOLDER),
                "hq",
                chainsync::transport::now_ms(),
            )?;
            println!("backup {} ({} bytes)", taken.path.display(), taken.bytes);
            Ok(())
        }
        Command::Backup(BackupCommand::List { data }) => {
            use chainsync::transport::backups;
            let folder = HqDir::new(&data).root.join(backups::BACKUP_FOLDER);
            for line in backups::list_lines(&folder, "hq")? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Restore { data, from } => admin::restore(&HqDir::new(&data), &from),
        Command::Reclaim(ReclaimCommand::Status { data }) => {
            admin::reclaim_status(&HqDir::new(&data))
        }
        Command::Reclaim(ReclaimCommand::Finish { data }) => {
            admin::reclaim_finish(&HqDir::new(&data))
        }
        Command::Token(TokenCommand::List { data }) => admin::list_tokens(&HqDir::new(&data)),
        Command::Token(TokenCommand::Revoke { data, id }) => {
            admin::revoke_token(&HqDir::new(&data), &id)
        }
        Command::Demo { data, api_listen } => {
            let now_ms = chainsync::transport::now_ms();
            let dir = data
                .unwrap_or_else(|| std::env::temp_dir().join(format!("chainsync-demo-{now_ms}")));
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            let signals = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            signals.spawn(async move {
                chainsync::transport::process::stop_signal().await;
                let _ = stop.send(true);
            });
            hq_server::demo::run(&dir, api_listen, shutdown)
        }
    }
}

/// Parses `A-B` into a pair.
fn parse_pair<T: std::str::FromStr>(text: &str) -> Result<(T, T)> {
    let (a, b) = text
        .split_once('-')
        .with_context(|| format!("`{text}` is not FROM-TO"))?;
    let parse = |x: &str| {
        x.trim()
            .parse::<T>()
            .map_err(|_| anyhow::anyhow!("`{x}` in `{text}` is not a number"))
    };
    Ok((parse(a)?, parse(b)?))
}
