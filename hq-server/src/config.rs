//! HQ's data folder: its config, keys, certificate and database.
//!
//! ```text
//! DIR/hq.toml           config (below), written by `hq-server init` with the defaults
//! DIR/hq.key            HQ's ed25519 signing key (hex), the chain's root of trust; mode 0600
//! DIR/hq-cert.der       HQ's TLS certificate, pinned by every agent
//! DIR/hq-cert-key.der   its private key; mode 0600
//! DIR/hq.db             HQ's replica (SQLite, WAL)
//! ```

use anyhow::{Context, Result, bail};
use chainsync::ids::NodeId;
use chainsync::replica::{Durability, Identity, Replica};
use chainsync::transport::keyfile::{read_key, write_key, write_secret};
use chainsync::transport::tls::{HqCertificate, generate_hq_certificate};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `hq.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqConfig {
    /// UDP address the QUIC sync endpoint listens on. Default `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Address stores dial, written into provisioning files. Default `127.0.0.1:7443`.
    pub public_addr: SocketAddr,
    /// TCP address of the HQ API. Default `127.0.0.1:7080`.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Bundle folder for stores without a network: `inbox/` is watched; for each store bundle
    /// imported, HQ's answer is written to `outbox/<store>/`. Off if absent.
    #[serde(default)]
    pub bundle_folder: Option<PathBuf>,
    /// Scheduled online backups into `backups/` in the data folder: every this many ms
    /// (default six hours; 0: none). `backup now` takes one at any time.
    #[serde(default = "chainsync::transport::backups::default_interval_ms")]
    pub backup_interval_ms: u64,
    /// Scheduled backups kept, the newest (default 8).
    #[serde(default = "chainsync::transport::backups::default_kept")]
    pub backups_kept: usize,
}

fn default_api_listen() -> SocketAddr {
    ([127, 0, 0, 1], 7080).into()
}

impl Default for HqConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 7443).into(),
            public_addr: ([127, 0, 0, 1], 7443).into(),
            api_listen: default_api_listen(),
            bundle_folder: None,
            backup_interval_ms: chainsync::transport::backups::default_interval_ms(),
            backups_kept: chainsync::transport::backups::default_kept(),
        }
    }
}

/// The files of an HQ data folder.
#[derive(Debug, Clone)]
pub struct HqDir {
    pub root: PathBuf,
}

/// Everything `serve` needs, loaded.
pub struct HqState {
    pub config: HqConfig,
    pub key: SigningKey,
    pub cert: HqCertificate,
}

impl HqDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates a new HQ: key, certificate, config and an empty database.
    pub fn init(&self, config: &HqConfig) -> Result<()> {
        if self.path("hq.key").exists() {
            bail!(
                "{} already holds an HQ (hq.key exists); refusing to overwrite its keys",
                self.root.display()
            );
        }
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let key = SigningKey::generate(&mut rand::rng());
        let cert = generate_hq_certificate()?;
        write_key(&self.path("hq.key"), &key)?;
        write_secret(&self.path("hq-cert-key.der"), &cert.key_der)?;
        std::fs::write(self.path("hq-cert.der"), &cert.cert_der).context("writing hq-cert.der")?;
        std::fs::write(self.path("hq.toml"), config_text(config)?).context("writing hq.toml")?;
        self.open_replica(&key)?;
        Ok(())
    }

    /// Loads config, key and certificate.
    pub fn load(&self) -> Result<HqState> {
        let text = std::fs::read_to_string(self.path("hq.toml")).with_context(|| {
            format!(
                "reading {}/hq.toml (run `hq-server init` first)",
                self.root.display()
            )
        })?;
        let config: HqConfig = toml::from_str(&text).context("hq.toml")?;
        let key = read_key(&self.path("hq.key"))?;
        let cert = HqCertificate {
            cert_der: std::fs::read(self.path("hq-cert.der")).context("reading hq-cert.der")?,
            key_der: std::fs::read(self.path("hq-cert-key.der"))
                .context("reading hq-cert-key.der")?,
        };
        Ok(HqState { config, key, cert })
    }

    /// Opens HQ's replica.
    pub fn open_replica(&self, key: &SigningKey) -> Result<Replica> {
        let identity = Identity {
            node: NodeId::hq(),
            key: key.clone(),
        };
        Replica::open(
            &self.path("hq.db"),
            identity,
            key.verifying_key(),
            Durability::Full,
        )
        .with_context(|| format!("opening {}/hq.db", self.root.display()))
    }
}

/// The config file text: the values with a comment per field.
pub fn config_text(config: &HqConfig) -> Result<String> {
    Ok([
        "# chainsync HQ configuration".to_owned(),
        "# UDP address the QUIC sync endpoint listens on.".to_owned(),
        format!("listen = \"{}\"", config.listen),
        "# Address stores dial; written into provisioning files.".to_owned(),
        format!("public_addr = \"{}\"", config.public_addr),
        "# TCP address of the HQ API (role-scoped tokens: `hq-server token add`).".to_owned(),
        format!("api_listen = \"{}\"", config.api_listen),
        "# Bundle folder for stores without a network (inbox/ watched, answers in outbox/<store>/).".to_owned(),
        match &config.bundle_folder {
            Some(dir) => format!("bundle_folder = {:?}", dir.display().to_string()),
            None => "# bundle_folder = \"bundles\"".to_owned(),
        },
        "# Scheduled online backups into backups/ (ms between them, 0: none; how many kept).".to_owned(),
        format!("backup_interval_ms = {}", config.backup_interval_ms),
        format!("backups_kept = {}", config.backups_kept),
        String::new(),
    ]
    .join("\n"))
}
