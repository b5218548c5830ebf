//! `hq-server` command line.

use anyhow::{Context, Result};
use chainsync::ids::{NodeId, Scope, Sku};
use chainsync::replica::PendingStore;
use clap::{Parser, Subcommand, ValueEnum};
use hq_server::admin::{self, PriceRequest};
use hq_server::config::{HqConfig, HqDir};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Manage stores.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Manage prices.
    #[command(subcommand)]
    Price(PriceCommand),
    /// Manage the catalog.
    #[command(subcommand)]
    Product(ProductCommand),
    /// Manage HQ API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage promotions.
    #[command(subcommand)]
    Promo(PromoCommand),
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
    /// List stores with their state and when HQ last heard from them.
    List {
        #[arg(long, default_value = "hq-data")]
        data: PathBuf,
    },
}

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
        scope: Scope,
        /// percent_off:10, amount_off:0.50, fixed_price:0.99, buy:2:get:1 or spend:50.00:off:5.00.
        #[arg(long)]
        rule: String,
        /// Skus it applies to (repeat; none means every sku / the whole receipt).
        #[arg(long)]
        sku: Vec<Sku>,
        #[arg(long)]
        member_only: bool,
        #[arg(long)]
        birthday_only: bool,
        /// Starts at (Unix ms; default now).
        #[arg(long)]
        from_ms: Option<i64>,
        /// Ends at (Unix ms, exclusive; default open-ended).
        #[arg(long)]
        to_ms: Option<i64>,
        /// At most this many units per receipt.
        #[arg(long)]
        max_units: Option<u32>,
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
    init_logs(cli.log_format);
    match cli.command {
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
            member_only,
            birthday_only,
            from_ms,
            to_ms,
            max_units,
        }) => {
            let req = admin::PromoRequest {
                id,
                name,
                scope,
                rule: admin::parse_rule(&rule)?,
                skus: sku,
                member_only,
                birthday_only,
                starts_at_ms: from_ms,
                ends_at_ms: to_ms,
                max_units_per_receipt: max_units,
            };
            admin::add_promo(&HqDir::new(&data), req)
        }
        Command::Promo(PromoCommand::Remove { data, id, scope }) => {
            admin::remove_promo(&HqDir::new(&data), &id, scope)
        }
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
        Command::Token(TokenCommand::Add { data, name, role }) => {
            println!("{}", admin::add_token(&HqDir::new(&data), &name, &role)?);
            Ok(())
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
