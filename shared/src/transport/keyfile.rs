//! Key and secret files of both binaries: an ed25519 signing key as hex text, written so that
//! only its owner may read it.

use ed25519_dalek::SigningKey;
use std::path::Path;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} does not hold a 32-byte hex key")]
    NotAKey(String),
}

/// Reads a hex ed25519 signing key.
pub fn read_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyFileError::NotAKey(path.display().to_string()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Writes a key as hex, readable by its owner only.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    write_secret(path, hex::encode(key.to_bytes()).as_bytes())
}

/// Writes a file only its owner may read.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(path, bytes).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}
