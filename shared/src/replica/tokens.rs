//! HQ's API tokens: who holds each, the role it grants, when it expires and whether it was
//! revoked.
//!
//! - Only the blake3 hash of a token is stored; a token is shown once, when it is made.
//! - A token is named in lists and in `revoke` by its id: the first bytes of its hash in hex
//!   ([`TOKEN_ID_HEX_CHARS`]), which says nothing about the token itself.
//! - Revoking only sets `revoked_ms`; the row stays, so the list shows who held what and when
//!   it stopped. A revoked or expired token is refused from that moment: every request looks
//!   its token up again.

use super::{Replica, ReplicaError};
use crate::ids::RegionId;
use rusqlite::{OptionalExtension, Transaction, params};

/// Length of a token's id: hex of the first 6 bytes of its hash.
pub const TOKEN_ID_HEX_CHARS: usize = 12;

/// An API token as HQ keeps it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Hex of the first bytes of the token's hash: how lists and `revoke` name it.
    pub id: String,
    /// Who holds it, for the record.
    pub name: String,
    /// `admin`, `readonly` or `regional`.
    pub role: String,
    /// A regional manager's region.
    pub region: Option<String>,
    pub created_ms: u64,
    /// Refused from this time on; `None`: never expires.
    pub expires_ms: Option<u64>,
    /// Refused from this time on; `None`: not revoked.
    pub revoked_ms: Option<u64>,
}

impl ApiToken {
    /// Why the token is refused at `now_ms`, if it is.
    pub fn refusal(&self, now_ms: u64) -> Option<String> {
        if let Some(at) = self.revoked_ms.filter(|at| *at <= now_ms) {
            return Some(format!("token {} was revoked at {at} (Unix ms)", self.id));
        }
        if let Some(at) = self.expires_ms.filter(|at| *at <= now_ms) {
            return Some(format!("token {} expired at {at} (Unix ms)", self.id));
        }
        None
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

fn token_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(TOKEN_ID_HEX_CHARS / 2)])
}

const SELECT: &str =
    "SELECT token_hash, name, role, region, created_ms, expires_ms, revoked_ms FROM api_tokens";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    let hash: Vec<u8> = r.get(0)?;
    let ms = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(ApiToken {
        id: token_id(&hash),
        name: r.get(1)?,
        role: r.get(2)?,
        region: r.get(3)?,
        created_ms: r.get::<_, i64>(4)?.max(0) as u64,
        expires_ms: ms(5)?,
        revoked_ms: ms(6)?,
    })
}

/// Adds `expires_ms` and `revoked_ms` to a database made before tokens could expire.
pub(super) fn add_missing_columns(tx: &Transaction<'_>) -> Result<(), ReplicaError> {
    for column in ["expires_ms", "revoked_ms"] {
        let present: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('api_tokens') WHERE name = ?1)",
            params![column],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE api_tokens ADD COLUMN {column} INTEGER"
            ))?;
        }
    }
    Ok(())
}

impl Replica {
    /// Adds an HQ API token for `role` (`admin`, `readonly`, `regional` with `region`),
    /// refused from `expires_ms` on if given. Returns it as kept.
    pub fn add_api_token(
        &mut self,
        token: &str,
        name: &str,
        role: &str,
        region: Option<&RegionId>,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<ApiToken, ReplicaError> {
        let hash = token_hash(token);
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.conn.execute(
            "INSERT INTO api_tokens (token_hash, name, role, region, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &hash[..],
                name,
                role,
                region.map(|r| r.as_str()),
                ms(now_ms),
                expires_ms.map(ms)
            ],
        )?;
        Ok(ApiToken {
            id: token_id(&hash),
            name: name.to_owned(),
            role: role.to_owned(),
            region: region.map(|r| r.to_string()),
            created_ms: now_ms,
            expires_ms,
            revoked_ms: None,
        })
    }

    /// The token a presented bearer token is, if HQ made it (revoked and expired ones too:
    /// [`ApiToken::refusal`] says whether it may still be used).
    pub fn api_token(&self, token: &str) -> Result<Option<ApiToken>, ReplicaError> {
        Ok(self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE token_hash = ?1"))?
            .query_row(params![&token_hash(token)[..]], row)
            .optional()?)
    }

    /// Every API token, oldest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT} ORDER BY created_ms, token_hash"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes the token with id `id` at `now_ms` and returns it. Revoking a token revoked
    /// already changes nothing (the first time stays on record).
    pub fn revoke_api_token(&mut self, id: &str, now_ms: u64) -> Result<ApiToken, ReplicaError> {
        let id = id.trim().to_ascii_lowercase();
        let found: Vec<ApiToken> = self
            .api_tokens()?
            .into_iter()
            .filter(|t| t.id == id)
            .collect();
        let token = match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ReplicaError::Invalid(format!(
                    "no API token {id} (`hq-server token list` shows the ids)"
                )));
            }
            _ => {
                return Err(ReplicaError::Invalid(format!(
                    "{} tokens share the id {id}; none was revoked",
                    found.len()
                )));
            }
        };
        if token.revoked_ms.is_some() {
            return Ok(token);
        }
        let at = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.conn.execute(
            "UPDATE api_tokens SET revoked_ms = ?1 WHERE substr(token_hash, 1, ?2) = ?3",
            params![
                at,
                (TOKEN_ID_HEX_CHARS / 2) as i64,
                hex::decode(&id).map_err(|e| ReplicaError::Invalid(format!("token id: {e}")))?
            ],
        )?;
        Ok(ApiToken {
            revoked_ms: Some(now_ms),
            ..token
        })
    }
}
