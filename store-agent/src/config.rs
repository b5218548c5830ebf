//! The agent's data folder.
//!
//! ```text
//! DIR/agent.toml   config (below), written by `store-agent init`
//! DIR/store.key    the store's ed25519 signing key (hex), generated on the store; mode 0600
//! DIR/store.db     the store's replica (SQLite, WAL)
//! ```

use anyhow::{Context, Result, bail};
use chainsync::ids::{NodeId, RegionId};
use chainsync::replica::{Durability, Identity, Replica};
use chainsync::transport::keyfile::{read_key, write_key, write_secret};
use chainsync::transport::leaf::HqAddress;
use chainsync::transport::provision::Provisioning;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default interval of the safety-net pull in realtime mode (notifications do the real work).
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 30_000;

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This store's id.
    pub store: NodeId,
    /// Its region (from HQ at enrollment).
    pub region: RegionId,
    /// HQ's sync address.
    pub hq_addr: SocketAddr,
    /// HQ's TLS certificate (DER, hex), pinned.
    pub hq_cert: String,
    /// HQ's ed25519 public key (hex): the root of trust.
    pub hq_public_key: String,
    /// Pull at least this often, in ms, even without a notice from HQ.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// Batch mode: connect this often, in ms (default 15 minutes); `store-agent sync now` or
    /// `POST /v1/sync/now` exchanges at once.
    #[serde(default = "default_batch_interval")]
    pub batch_interval_ms: u64,
    /// Batch mode: scheduled exchanges only inside this daily window, `HH:MM-HH:MM` in UTC
    /// (e.g. `"01:00-04:00"`, or `"22:00-06:00"` across midnight). Any time if absent.
    #[serde(default)]
    pub batch_window_utc: Option<String>,
    /// Where the POS API listens (keep it on loopback).
    #[serde(default = "default_pos_listen")]
    pub pos_listen: SocketAddr,
    /// Bearer token the tills present to the POS API.
    pub pos_token: String,
    /// For a store without a network: a folder whose `inbox/` is watched for bundles from HQ and
    /// whose `outbox/` receives this store's bundles every `batch_interval_ms`. Off if absent.
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

/// Default batch interval: a quarter of an hour.
pub const BATCH_INTERVAL_MS_DEFAULT: u64 = 15 * 60 * 1000;

fn default_batch_interval() -> u64 {
    BATCH_INTERVAL_MS_DEFAULT
}

fn default_pos_listen() -> SocketAddr {
    ([127, 0, 0, 1], 7070).into()
}

fn default_poll() -> u64 {
    POLL_INTERVAL_MS_DEFAULT
}

/// The files of an agent data folder.
#[derive(Debug, Clone)]
pub struct AgentDir {
    pub root: PathBuf,
}

/// A loaded agent.
pub struct AgentState {
    pub config: AgentConfig,
    /// `batch_window_utc`, parsed.
    pub batch_window: Option<chainsync::transport::leaf::DailyWindow>,
    pub key: SigningKey,
    pub hq_key: VerifyingKey,
    pub hq: HqAddress,
}

impl AgentDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether an agent was already set up here.
    pub fn exists(&self) -> bool {
        self.path("store.key").exists()
    }

    /// Writes config and key for an enrolled store and creates its database.
    pub fn create(
        &self,
        provisioning: &Provisioning,
        region: RegionId,
        key: &SigningKey,
        pos_listen: SocketAddr,
    ) -> Result<()> {
        if self.exists() {
            bail!(
                "{} already holds a store agent (store.key exists)",
                self.root.display()
            );
        }
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let config = AgentConfig {
            store: provisioning.store.clone(),
            region,
            hq_addr: provisioning.hq_addr,
            hq_cert: provisioning.hq_cert.clone(),
            hq_public_key: provisioning.hq_public_key.clone(),
            poll_interval_ms: POLL_INTERVAL_MS_DEFAULT,
            batch_interval_ms: BATCH_INTERVAL_MS_DEFAULT,
            batch_window_utc: None,
            pos_listen,
            bundle_folder: None,
            backup_interval_ms: chainsync::transport::backups::default_interval_ms(),
            backups_kept: chainsync::transport::backups::default_kept(),
            pos_token: {
                let mut bytes = [0u8; 24];
                rand::fill(&mut bytes);
                hex::encode(bytes)
            },
        };
        write_key(&self.path("store.key"), key)?;
        let text = format!(
            "# chainsync store agent configuration\n{}",
            toml::to_string(&config)?
        );
        write_secret(&self.path("agent.toml"), text.as_bytes())?;
        let state = self.load()?;
        self.open_replica(&state)?;
        Ok(())
    }

    /// Loads config and key.
    pub fn load(&self) -> Result<AgentState> {
        let text = std::fs::read_to_string(self.path("agent.toml")).with_context(|| {
            format!(
                "reading {}/agent.toml (run `store-agent init` first)",
                self.root.display()
            )
        })?;
        let config: AgentConfig = toml::from_str(&text).context("agent.toml")?;
        let key = read_key(&self.path("store.key"))?;
        // The same checks as the provisioning file it came from.
        let as_provisioning = Provisioning {
            store: config.store.clone(),
            hq_addr: config.hq_addr,
            hq_cert: config.hq_cert.clone(),
            hq_public_key: config.hq_public_key.clone(),
            token: String::new(),
            store_key: None,
            region: None,
        };
        let hq_key = as_provisioning.hq_key().context("agent.toml")?;
        let hq = HqAddress {
            addr: config.hq_addr,
            cert_der: as_provisioning.cert_der().context("agent.toml")?,
        };
        let batch_window = config
            .batch_window_utc
            .as_deref()
            .map(chainsync::transport::leaf::DailyWindow::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("agent.toml batch_window_utc: {e}"))?;
        Ok(AgentState {
            batch_window,
            config,
            key,
            hq_key,
            hq,
        })
    }

    /// Opens the store's replica.
    ///
    /// A database that does not exist yet is created waiting for HQ's first word: nothing is
    /// written until HQ has said how far it holds this store's own streams (on the first
    /// connection, or in its first bundle). For a new store that is a formality; for one whose
    /// database was lost, or that was replaced after its machine died, it is what keeps the
    /// store from starting its streams over instead of restoring what it sold before.
    pub fn open_replica(&self, state: &AgentState) -> Result<Replica> {
        let fresh = !self.path("store.db").exists();
        let mut replica = self.open_store_db(state)?;
        if fresh {
            replica.await_hub_heads()?;
        }
        Ok(replica)
    }

    /// A read-only connection to `store.db` (opened after [`AgentDir::open_replica`]): it
    /// refuses any write (`query_only`).
    pub fn open_reader(&self, state: &AgentState) -> Result<Replica> {
        let replica = self.open_store_db(state)?;
        replica
            .connection()
            .pragma_update(None, "query_only", true)
            .context("making the POS reader read-only")?;
        Ok(replica)
    }

    fn open_store_db(&self, state: &AgentState) -> Result<Replica> {
        let identity = Identity {
            node: state.config.store.clone(),
            key: state.key.clone(),
        };
        Replica::open(
            &self.path("store.db"),
            identity,
            state.hq_key,
            Durability::Full,
        )
        .with_context(|| format!("opening {}/store.db", self.root.display()))
    }
}
