//! The sync protocol: wire frames ([`frame`]) and the sans-IO session state machines
//! ([`session`]), plus the replica's implementation of the storage traits the sessions use.
//!
//! Invariant: nothing here performs IO. The QUIC adapter (in the binaries' shared driver) moves
//! frames between sockets and these state machines; the simulation moves them between in-memory
//! queues.

pub mod frame;
pub mod local;
pub mod session;

pub use frame::{Frame, FrameDecoder, FrameError, encode_frame};
pub use session::{
    HubOutput, HubSession, HubStore, LeafSession, LeafStore, PeerInfo, SessionError, subscribes,
};

use crate::changeset::SignedChangeSet;
use crate::ids::{NodeId, RegionId, StreamId};
use crate::replica::{BatchReport, Replica, ReplicaError};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

impl HubStore for Replica {
    type Error = ReplicaError;

    fn peer(&self, node: &NodeId) -> Result<Option<PeerInfo>, ReplicaError> {
        let Some(info) = self.store_info(node)? else {
            return Ok(None);
        };
        let key = VerifyingKey::from_bytes(&info.public_key)
            .map_err(|_| ReplicaError::Corrupt(format!("directory key of {node}")))?;
        Ok(Some(PeerInfo {
            node: info.id,
            region: info.region,
            key,
            revoked: info.revoked,
        }))
    }

    fn own_heads(&self, node: &NodeId) -> Result<Vec<(StreamId, u64)>, ReplicaError> {
        Ok(self
            .heads()?
            .into_iter()
            .filter(|(s, _)| &s.origin == node)
            .map(|(s, h)| (s, h.seq))
            .collect())
    }

    fn apply_push(
        &mut self,
        peer: &NodeId,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, ReplicaError> {
        self.apply_batch(batch, Some(peer), now_ms)
    }

    fn changes_for(
        &self,
        peer: &PeerInfo,
        cursors: &BTreeMap<StreamId, u64>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SignedChangeSet>, bool), ReplicaError> {
        let mut out: Vec<SignedChangeSet> = Vec::new();
        let mut bytes = 0usize;
        // heads() is in priority order, so the batch is too.
        for (stream, head) in self.heads()? {
            if !subscribes(&peer.node, &peer.region, &stream) {
                continue;
            }
            let cursor = cursors.get(&stream).copied().unwrap_or(0);
            if head.seq <= cursor {
                continue;
            }
            let room = max_count.saturating_sub(out.len());
            if room == 0 || (!out.is_empty() && bytes >= max_bytes) {
                return Ok((out, true));
            }
            let chunk = self.read_stream(&stream, cursor, room, max_bytes.saturating_sub(bytes))?;
            let full = (chunk.len() as u64) < head.seq - cursor;
            bytes += chunk.iter().map(|c| c.body.len()).sum::<usize>();
            out.extend(chunk);
            if full {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    fn enroll(
        &mut self,
        node: &NodeId,
        token: &str,
        public_key: [u8; 32],
        now_ms: u64,
    ) -> Result<Result<RegionId, String>, ReplicaError> {
        Ok(Replica::enroll(self, node, token, public_key, now_ms)?
            .map(|info| info.region)
            .map_err(|e| e.to_string()))
    }

    fn record_cursors(
        &mut self,
        peer: &NodeId,
        cursors: &[(StreamId, u64)],
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        self.record_peer_cursors(peer, cursors, now_ms)
    }
}

impl LeafStore for Replica {
    type Error = ReplicaError;

    fn cursors(&self) -> Result<Vec<(StreamId, u64)>, ReplicaError> {
        let node = self.node().clone();
        Ok(self
            .heads()?
            .into_iter()
            .filter(|(s, _)| s.origin != node)
            .map(|(s, h)| (s, h.seq))
            .collect())
    }

    fn outbox(
        &self,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedChangeSet>, ReplicaError> {
        Replica::outbox(self, max_count, max_bytes)
    }

    fn set_hub_acked(&mut self, heads: &[(StreamId, u64)]) -> Result<(), ReplicaError> {
        Replica::set_hub_acked(self, heads)
    }

    fn apply_from_hub(
        &mut self,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, ReplicaError> {
        self.apply_batch(batch, None, now_ms)
    }
}
