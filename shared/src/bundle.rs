//! Bundle files: change sets carried by hand (USB stick, mail attachment) between a store with no
//! network and HQ.
//!
//! ```text
//! file   = MAGIC (8 bytes) || body length (u64 BE) || body || sig (64) || blake3(all before) (32)
//! body   = postcard(BundleBody { format, from, to, created_ms, cursors, acks, change_sets })
//! sig    = ed25519 by `from` over ("chainsync/bundle/v1" || body)
//! ```
//!
//! - `cursors`: how far the sender holds the streams it follows (HQ answers with what it lacks);
//! - `acks`: HQ -> store, how far HQ holds the store's own streams (the store drops them from its
//!   outbox);
//! - `change_sets`: signed by their origins, unchanged; each is checked by the one gate on import.
//!
//! Invariants: reading checks size, checksum (a truncated or damaged file is named as such), format,
//! the sender's signature and the addressee before any change set is looked at; importing is all or
//! nothing (see `Replica::apply_batch_all_or_nothing`), so a bundle with one bad change set changes
//! nothing, and importing the same bundle twice changes nothing the second time.

use crate::changeset::{SignedChangeSet, signing_input};
use crate::ids::NodeId;
use crate::protocol::frame::{WireChangeSet, WireCursor};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// First bytes of every bundle file.
pub const MAGIC: &[u8; 8] = b"CSBNDL01";
/// Domain-separation prefix of the sender's signature.
pub const BUNDLE_SIG_PREFIX: &[u8] = b"chainsync/bundle/v1";
/// The body format this build writes and reads.
pub const BUNDLE_FORMAT: u16 = 1;
/// Largest bundle read: a month of a busy store's sales, or a store's full seed, fits.
pub const BUNDLE_BYTES_MAX: usize = 1024 * 1024 * 1024;
const SIG_BYTES: usize = 64;
const SUM_BYTES: usize = 32;

/// What a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleBody {
    pub format: u16,
    pub from: NodeId,
    pub to: NodeId,
    pub created_ms: u64,
    pub cursors: Vec<WireCursor>,
    pub acks: Vec<WireCursor>,
    pub change_sets: Vec<WireChangeSet>,
}

/// Why a bundle file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a chainsync bundle (wrong magic bytes)")]
    NotABundle,
    #[error("bundle of {0} bytes is over the {BUNDLE_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("truncated bundle: {have} bytes, the header announces {need}")]
    Truncated { have: usize, need: usize },
    #[error("damaged bundle: the checksum does not match")]
    Checksum,
    #[error("malformed bundle: {0}")]
    Malformed(String),
    #[error("bundle from unknown sender {0}")]
    UnknownSender(NodeId),
    #[error("bundle signature does not verify for sender {0}")]
    BadSignature(NodeId),
    #[error("bundle is addressed to {to}, not to {me}")]
    Foreign { to: NodeId, me: NodeId },
}

/// Encodes and signs a bundle.
pub fn write_bundle(body: &BundleBody, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    let encoded = postcard::to_allocvec(body).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let sig = key.sign(&signing_input(BUNDLE_SIG_PREFIX, &encoded));
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + encoded.len() + SIG_BYTES + SUM_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(encoded.len() as u64).to_be_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&sig.to_bytes());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    if out.len() > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Reads a bundle addressed to `me`, checking everything but the change sets themselves.
/// `sender_key` gives the key of a sender (HQ's for a store; the directory's for HQ).
pub fn read_bundle(
    bytes: &[u8],
    me: &NodeId,
    sender_key: impl Fn(&NodeId) -> Option<VerifyingKey>,
) -> Result<BundleBody, BundleError> {
    if bytes.len() > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge(bytes.len()));
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let header = MAGIC.len() + 8;
    let Some(len_bytes) = bytes.get(MAGIC.len()..header) else {
        return Err(BundleError::Truncated {
            have: bytes.len(),
            need: header,
        });
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let body_len =
        usize::try_from(u64::from_be_bytes(len)).map_err(|_| BundleError::TooLarge(usize::MAX))?;
    let need = header
        .saturating_add(body_len)
        .saturating_add(SIG_BYTES + SUM_BYTES);
    if need > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge(need));
    }
    if bytes.len() < need {
        return Err(BundleError::Truncated {
            have: bytes.len(),
            need,
        });
    }
    if bytes.len() > need {
        return Err(BundleError::Malformed(format!(
            "{} bytes after the end",
            bytes.len() - need
        )));
    }
    let (signed_part, sum) = bytes.split_at(need - SUM_BYTES);
    if blake3::hash(signed_part).as_bytes() != sum {
        return Err(BundleError::Checksum);
    }
    let body_bytes = &bytes[header..header + body_len];
    let sig_bytes = &bytes[header + body_len..header + body_len + SIG_BYTES];
    let (body, rest) = postcard::take_from_bytes::<BundleBody>(body_bytes)
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    if !rest.is_empty() || body.format != BUNDLE_FORMAT {
        return Err(BundleError::Malformed(format!(
            "format {} with {} stray bytes",
            body.format,
            rest.len()
        )));
    }
    let key =
        sender_key(&body.from).ok_or_else(|| BundleError::UnknownSender(body.from.clone()))?;
    let mut sig = [0u8; SIG_BYTES];
    sig.copy_from_slice(sig_bytes);
    key.verify(
        &signing_input(BUNDLE_SIG_PREFIX, body_bytes),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| BundleError::BadSignature(body.from.clone()))?;
    if &body.to != me {
        return Err(BundleError::Foreign {
            to: body.to,
            me: me.clone(),
        });
    }
    Ok(body)
}

/// The bundle's change sets in their signed form.
pub fn change_sets(body: &BundleBody) -> Result<Vec<SignedChangeSet>, BundleError> {
    body.change_sets
        .iter()
        .map(|c| {
            c.clone()
                .into_signed()
                .map_err(|e| BundleError::Malformed(e.to_string()))
        })
        .collect()
}

/// Why importing a bundle failed; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("bundle refused whole: {count} of its change sets are invalid; the first: {first}")]
    Rejected {
        count: usize,
        first: crate::validate::ChangeSetError,
    },
    #[error(transparent)]
    Replica(#[from] crate::replica::ReplicaError),
}

/// What an accepted bundle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub from: NodeId,
    pub applied: usize,
    pub duplicates: usize,
}

/// Most change sets put in one bundle.
pub const BUNDLE_CHANGE_SETS_MAX: usize = 1_000_000;

/// A store's bundle for HQ: its whole outbox and its cursors.
pub fn store_bundle(
    replica: &crate::replica::Replica,
    key: &SigningKey,
    now_ms: u64,
) -> Result<Vec<u8>, ImportError> {
    use crate::protocol::LeafStore;
    let cursors = LeafStore::cursors(replica)?;
    let outbox = replica.outbox(BUNDLE_CHANGE_SETS_MAX, BUNDLE_BYTES_MAX / 2)?;
    let body = BundleBody {
        format: BUNDLE_FORMAT,
        from: replica.node().clone(),
        to: NodeId::hq(),
        created_ms: now_ms,
        cursors: crate::protocol::frame::to_wire_cursors(&cursors),
        acks: vec![],
        change_sets: outbox.iter().map(WireChangeSet::from_signed).collect(),
    };
    Ok(write_bundle(&body, key)?)
}

/// HQ's bundle for `store`: everything it follows beyond what HQ last heard it holds, and how
/// far HQ holds the store's own streams.
pub fn hq_bundle(
    replica: &crate::replica::Replica,
    key: &SigningKey,
    store: &NodeId,
    now_ms: u64,
) -> Result<Vec<u8>, ImportError> {
    use crate::protocol::HubStore;
    let peer = replica.peer(store)?.ok_or_else(|| {
        crate::replica::ReplicaError::Invalid(format!("store {store} is not enrolled"))
    })?;
    let cursors: std::collections::BTreeMap<_, _> =
        replica.peer_cursors(store)?.into_iter().collect();
    let (change_sets, _) = replica.changes_for(
        &peer,
        &cursors,
        BUNDLE_CHANGE_SETS_MAX,
        BUNDLE_BYTES_MAX / 2,
    )?;
    let acks = replica.own_heads(store)?;
    let body = BundleBody {
        format: BUNDLE_FORMAT,
        from: NodeId::hq(),
        to: store.clone(),
        created_ms: now_ms,
        cursors: vec![],
        acks: crate::protocol::frame::to_wire_cursors(&acks),
        change_sets: change_sets.iter().map(WireChangeSet::from_signed).collect(),
    };
    Ok(write_bundle(&body, key)?)
}

/// Imports a bundle addressed to this replica's node, all or nothing.
pub fn import_bundle(
    replica: &mut crate::replica::Replica,
    bytes: &[u8],
    now_ms: u64,
) -> Result<ImportReport, ImportError> {
    import_bundle_with_progress(replica, bytes, now_ms, &mut |_, _| {})
}

/// [`import_bundle`] calling `progress(change sets checked and applied, total)` as it goes.
pub fn import_bundle_with_progress(
    replica: &mut crate::replica::Replica,
    bytes: &[u8],
    now_ms: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImportReport, ImportError> {
    use crate::protocol::HubStore;
    let me = replica.node().clone();
    let at_hq = me.is_hq();
    let hq_key = *replica.hq_key();
    let body = read_bundle(bytes, &me, |sender| {
        if at_hq {
            replica
                .peer(sender)
                .ok()
                .flatten()
                .filter(|p| !p.revoked)
                .map(|p| p.key)
        } else {
            sender.is_hq().then_some(hq_key)
        }
    })?;
    let batch = change_sets(&body)?;
    let peer = at_hq.then(|| body.from.clone());
    let report = match replica.apply_batch_all_or_nothing_with_progress(
        &batch,
        peer.as_ref(),
        now_ms,
        progress,
    )? {
        Ok(report) => report,
        Err(report) => {
            let count = report.rejected.len();
            let first = report.rejected.into_iter().next().ok_or_else(|| {
                crate::replica::ReplicaError::Corrupt("a refused batch with no reason".into())
            })?;
            return Err(ImportError::Rejected { count, first });
        }
    };
    let cursors = crate::protocol::frame::from_wire_cursors(body.cursors.clone())
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    let acks = crate::protocol::frame::from_wire_cursors(body.acks.clone())
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    if at_hq {
        replica.record_peer_cursors(&body.from, &cursors, now_ms)?;
    } else {
        replica.set_hub_acked(&acks)?;
        let offset = crate::hqclock::offset_after_bundle(
            replica.hq_clock_offset()?,
            body.created_ms,
            now_ms,
        );
        replica.set_hq_clock_offset(offset)?;
    }
    Ok(ImportReport {
        from: body.from,
        applied: report.applied.len(),
        duplicates: report.duplicates,
    })
}
