//! The provisioning file HQ writes for a new store (`hq-server store add`) and the agent reads
//! (`store-agent init --provision FILE`): where HQ is, how to trust it, and a one-time token.
//!
//! For a store with no network at all (`hq-server store add --offline`), HQ enrolls the store
//! itself: it generates the store's key, publishes its public half in the directory at once, and
//! the file carries the secret half (`store_key`) and the region, so that `store-agent init`
//! needs no connection. Such a file is as secret as the key: hand it over, init, delete it.
//!
//! ```toml
//! store = "S001"
//! hq_addr = "127.0.0.1:7443"
//! hq_cert = "3082…"          # HQ's TLS certificate, DER, hex: the agent pins it
//! hq_public_key = "9f2c…"    # HQ's ed25519 key, hex: the root of trust for change sets
//! token = "5be1…"            # one-time enrollment token
//! ```

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// Largest provisioning file read: it holds one certificate and a few short fields.
pub const PROVISION_BYTES_MAX: usize = 64 * 1024;

/// The contents of a provisioning file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    pub store: NodeId,
    pub hq_addr: std::net::SocketAddr,
    pub hq_cert: String,
    pub hq_public_key: String,
    pub token: String,
    /// Offline enrollment: the store's signing key, hex (already enrolled at HQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key: Option<String>,
    /// Offline enrollment: the store's region (an online agent learns it when enrolling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<crate::ids::RegionId>,
}

/// Why a provisioning file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioning file is {0} bytes, more than a provisioning file can be")]
    TooLarge(usize),
    #[error("provisioning file does not parse: {0}")]
    Parse(String),
    #[error("provisioning file field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

impl Provisioning {
    /// Renders the file.
    pub fn to_toml(&self) -> Result<String, ProvisionError> {
        toml::to_string(self).map_err(|e| ProvisionError::Parse(e.to_string()))
    }

    /// Parses and checks a file's text.
    pub fn from_toml(text: &str) -> Result<Self, ProvisionError> {
        if text.len() > PROVISION_BYTES_MAX {
            return Err(ProvisionError::TooLarge(text.len()));
        }
        let p: Provisioning =
            toml::from_str(text).map_err(|e| ProvisionError::Parse(e.to_string()))?;
        p.cert_der()?;
        p.hq_key()?;
        p.store_key()?;
        if p.store_key.is_some() != p.region.is_some() {
            return Err(ProvisionError::Field {
                field: "store_key",
                reason: "an offline provisioning file has both store_key and region".into(),
            });
        }
        if p.token.len() < 16 {
            return Err(ProvisionError::Field {
                field: "token",
                reason: "too short to be a token".into(),
            });
        }
        Ok(p)
    }

    /// HQ's certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, ProvisionError> {
        hex::decode(&self.hq_cert).map_err(|e| ProvisionError::Field {
            field: "hq_cert",
            reason: e.to_string(),
        })
    }

    /// The store's key, for a store HQ enrolled offline.
    pub fn store_key(&self) -> Result<Option<ed25519_dalek::SigningKey>, ProvisionError> {
        let Some(text) = &self.store_key else {
            return Ok(None);
        };
        let bytes: [u8; 32] = hex::decode(text)
            .map_err(|e| ProvisionError::Field {
                field: "store_key",
                reason: e.to_string(),
            })?
            .try_into()
            .map_err(|_| ProvisionError::Field {
                field: "store_key",
                reason: "not 32 bytes".into(),
            })?;
        Ok(Some(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }

    /// HQ's public key.
    pub fn hq_key(&self) -> Result<ed25519_dalek::VerifyingKey, ProvisionError> {
        let bad = |reason: String| ProvisionError::Field {
            field: "hq_public_key",
            reason,
        };
        let bytes: [u8; 32] = hex::decode(&self.hq_public_key)
            .map_err(|e| bad(e.to_string()))?
            .try_into()
            .map_err(|_| bad("not 32 bytes".into()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
    }
}
