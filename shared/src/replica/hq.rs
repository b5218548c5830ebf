//! HQ's administration of the directory: adding a store with a one-time enrollment token,
//! enrolling it with the key it generated, changing its mode, revoking it.
//!
//! Invariants:
//! - only the blake3 hash of a token is stored; a token enrolls its store once, and marking it
//!   used commits in the same transaction as the directory change set that publishes the key;
//! - every directory change is an ordinary change set of `hq/directory`, so stores learn of
//!   enrollments and revocations by the same path as everything else.

use super::{Replica, ReplicaError};
use crate::changeset::Op;
use crate::ids::{NodeId, RegionId, Topic};
use crate::model::{Region, StoreInfo, StoreMode};
use rusqlite::{OptionalExtension, params};

/// A store added at HQ, waiting for its agent to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStore {
    pub id: NodeId,
    pub name: String,
    pub region: RegionId,
    pub mode: StoreMode,
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// No store of that id was added at HQ.
    #[error("store {0} was never added at HQ (run `hq-server store add` first)")]
    UnknownStore(NodeId),
    /// The token does not match.
    #[error("wrong enrollment token for store {0}")]
    WrongToken(NodeId),
    /// The token was used already.
    #[error(
        "the enrollment token of store {0} was already used; ask HQ for a new provisioning file"
    )]
    TokenUsed(NodeId),
}

/// `(name, region, mode, token hash, used at)` of a pending enrollment.
type EnrollmentRow = (String, String, String, Vec<u8>, Option<i64>);

/// blake3 of a token, as stored.
fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The storage name of a mode.
pub(crate) fn mode_from_str(mode: &str) -> Option<StoreMode> {
    match mode {
        "realtime" => Some(StoreMode::Realtime),
        "batch" => Some(StoreMode::Batch),
        "hosted" => Some(StoreMode::Hosted),
        _ => None,
    }
}

impl Replica {
    /// Adds a store (and its region, if new) pending enrollment with `token`. Adding a store
    /// that was added but not yet enrolled replaces its pending entry and token.
    pub fn add_store(
        &mut self,
        store: &PendingStore,
        token: &str,
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        if self.store_info(&store.id)?.is_some() {
            return Err(ReplicaError::Invalid(format!(
                "store {} is already enrolled",
                store.id
            )));
        }
        if !self.region_exists(&store.region)? {
            let region = Region {
                id: store.region.clone(),
                name: store.region.to_string(),
                parent: None,
            };
            self.commit_local(Topic::Directory, vec![Op::RegionUpsert(region)], now_ms)?;
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO enrollments (store, name, region, mode, token_hash, created_ms, used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![
                store.id.as_str(),
                store.name,
                store.region.as_str(),
                store.mode.as_str(),
                &token_hash(token)[..],
                now_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Issues a new one-time token for a store already in the directory whose machine or key was
    /// lost: enrolling with it replaces the store's key ([`Replica::enroll`]).
    pub fn replace_store(
        &mut self,
        store: &NodeId,
        token: &str,
        now_ms: u64,
    ) -> Result<StoreInfo, ReplicaError> {
        let info = self.store_info(store)?.ok_or_else(|| {
            ReplicaError::Invalid(format!("store {store} is not in the directory"))
        })?;
        self.conn.execute(
            "INSERT OR REPLACE INTO enrollments (store, name, region, mode, token_hash, created_ms, used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![
                store.as_str(),
                info.name,
                info.region.as_str(),
                info.mode.as_str(),
                &token_hash(token)[..],
                now_ms as i64
            ],
        )?;
        Ok(info)
    }

    /// Enrolls `store` with the key its agent generated, if `token` is its unused token.
    pub fn enroll(
        &mut self,
        store: &NodeId,
        token: &str,
        public_key: [u8; 32],
        now_ms: u64,
    ) -> Result<Result<StoreInfo, EnrollError>, ReplicaError> {
        let row: Option<EnrollmentRow> = self
            .conn
            .query_row(
                "SELECT name, region, mode, token_hash, used_ms FROM enrollments WHERE store = ?1",
                params![store.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((name, region, mode, hash, used)) = row else {
            return Ok(Err(EnrollError::UnknownStore(store.clone())));
        };
        if used.is_some() {
            return Ok(Err(EnrollError::TokenUsed(store.clone())));
        }
        if hash != token_hash(token) {
            return Ok(Err(EnrollError::WrongToken(store.clone())));
        }
        let corrupt = |what: &str| ReplicaError::Corrupt(format!("enrollment of {store}: {what}"));
        let info = StoreInfo {
            id: store.clone(),
            name,
            region: RegionId::new(region).map_err(|_| corrupt("region"))?,
            mode: mode_from_str(&mode).ok_or_else(|| corrupt("mode"))?,
            public_key,
            may_set_own_prices: false,
            revoked: false,
            retired_keys: Vec::new(),
            time_zone: "UTC".into(),
        };
        // A store already in the directory is being replaced: its old key is retired with how
        // far it signed each stream, and the new key takes over from there.
        let info = match self.store_info(store)? {
            None => info,
            Some(old) => {
                let valid_through = self
                    .heads()?
                    .into_iter()
                    .filter(|(s, h)| &s.origin == store && h.seq > 0)
                    .map(|(s, h)| (s.topic, h.seq))
                    .collect();
                let mut retired_keys = old.retired_keys.clone();
                retired_keys.push(crate::model::RetiredKey {
                    public_key: old.public_key,
                    valid_through,
                });
                StoreInfo {
                    public_key,
                    revoked: false,
                    retired_keys,
                    ..old
                }
            }
        };
        let store_id = store.as_str().to_owned();
        self.commit_local_with(
            Topic::Directory,
            vec![Op::StoreUpsert(info.clone())],
            now_ms,
            |tx| {
                tx.execute(
                    "UPDATE enrollments SET used_ms = ?2 WHERE store = ?1",
                    params![store_id, now_ms as i64],
                )
                .map(|_| ())
            },
        )?;
        Ok(Ok(info))
    }

    /// Rewrites a store's directory entry (mode, revocation …) with `change`.
    pub fn update_store(
        &mut self,
        store: &NodeId,
        now_ms: u64,
        change: impl FnOnce(&mut StoreInfo),
    ) -> Result<StoreInfo, ReplicaError> {
        let mut info = self.store_info(store)?.ok_or_else(|| {
            ReplicaError::Invalid(format!("store {store} is not in the directory"))
        })?;
        change(&mut info);
        self.commit_local(
            Topic::Directory,
            vec![Op::StoreUpsert(info.clone())],
            now_ms,
        )?;
        Ok(info)
    }

    /// Stores added but not yet enrolled.
    pub fn pending_stores(&self) -> Result<Vec<PendingStore>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT store, name, region, mode FROM enrollments WHERE used_ms IS NULL ORDER BY store")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, region, mode) = row?;
            let corrupt = |what: &str| ReplicaError::Corrupt(format!("enrollment of {id}: {what}"));
            out.push(PendingStore {
                id: NodeId::new(id.clone()).map_err(|_| corrupt("id"))?,
                name,
                region: RegionId::new(region).map_err(|_| corrupt("region"))?,
                mode: mode_from_str(&mode).ok_or_else(|| corrupt("mode"))?,
            });
        }
        Ok(out)
    }
}
