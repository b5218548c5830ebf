//! The sync protocol: wire frames ([`frame`]) and the sans-IO session state machines
//! ([`session`]), plus the replica's implementation of the storage traits the sessions use.
//!
//! Invariant: nothing here performs IO. The QUIC adapter (in the binaries' shared driver) moves
//! frames between sockets and these state machines; the simulation moves them between in-memory
//! queues.

pub mod frame;
pub mod gather;
pub mod local;
pub mod session;

pub use frame::{Frame, FrameDecoder, FrameError, encode_frame};
pub use session::{
    HubOutput, HubSession, HubStore, LeafSession, LeafStore, PeerInfo, SeedPlan, SeedReport,
    SessionError, subscribes,
};

use crate::changeset::{SignedChangeSet, SignedSnapshot};
use crate::ids::{NodeId, Place, RegionId, StreamId};
use crate::lookup::{LookupAnswer, LookupQuery};
use crate::replica::{BatchReport, Replica, ReplicaError};
use ed25519_dalek::VerifyingKey;
use gather::{PendingStream, ReadStream, gather};
use std::collections::BTreeMap;

impl HubStore for Replica {
    type Error = ReplicaError;

    fn peer(&self, node: &NodeId) -> Result<Option<PeerInfo>, ReplicaError> {
        let Some(info) = self.store_info(node)? else {
            return Ok(None);
        };
        let key = VerifyingKey::from_bytes(&info.public_key)
            .map_err(|_| ReplicaError::Corrupt(format!("directory key of {node}")))?;
        let place = self
            .place_of(node)?
            .unwrap_or_else(|| Place::new(info.id.clone(), info.region.clone()));
        Ok(Some(PeerInfo {
            node: info.id,
            place,
            mode: info.mode,
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
        // heads() is in priority order, so the batch is too; every stream gets its share.
        let mut pending = Vec::new();
        for (stream, head) in self.heads()? {
            let own = stream.origin == peer.node && cursors.contains_key(&stream);
            if !own && !subscribes(&peer.place, peer.mode, &stream) {
                continue;
            }
            let cursor = cursors.get(&stream).copied().unwrap_or(0);
            if head.seq > cursor {
                pending.push(PendingStream {
                    stream,
                    after: cursor,
                    count: head.seq - cursor,
                });
            }
        }
        let gathered = gather(&pending, max_count, max_bytes, self)?;
        Ok((gathered.change_sets, gathered.left_out))
    }

    fn seed_for(
        &mut self,
        peer: &PeerInfo,
        cursors: &BTreeMap<StreamId, u64>,
        seeding: &BTreeMap<StreamId, (u64, u32)>,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<SeedPlan, ReplicaError> {
        let mut plan = SeedPlan::default();
        let mut bytes = 0usize;
        let mut full = false;
        for (stream, head) in self.heads()? {
            // A store restoring its own lost history asks for its own streams by name.
            let own = stream.origin == peer.node && cursors.contains_key(&stream);
            if !own && !subscribes(&peer.place, peer.mode, &stream) {
                continue;
            }
            let cursor = cursors.get(&stream).copied().unwrap_or(0);
            let progress = seeding.get(&stream).copied();
            // Only a store holding nothing of the stream is seeded: one that holds part of it
            // catches up from the log like any other. Its own streams always come as a
            // snapshot: HQ-signed, so they load even if the store's key changed since.
            let long = head.seq >= crate::replica::SEED_FROM_CHANGE_SETS;
            if cursor != 0 || !(long || own || progress.is_some()) || head.seq == 0 {
                continue;
            }
            plan.streams.push(stream.clone());
            if full {
                plan.more = true;
                continue;
            }
            let snapshot = self.cached_snapshot(&stream, progress.map(|p| p.0), now_ms)?;
            let start = match progress {
                Some((seq, done)) if seq == snapshot.seq => done as usize,
                _ => 0,
            };
            for part in snapshot.parts.iter().skip(start) {
                if bytes > 0 && bytes + part.body.len() > max_bytes {
                    full = true;
                    plan.more = true;
                    break;
                }
                bytes += part.body.len();
                plan.parts.push(part.clone());
            }
            if snapshot.seq < head.seq {
                plan.more = true; // the log after the snapshot follows on the next pull
            }
        }
        Ok(plan)
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

    fn lookup(
        &mut self,
        peer: &PeerInfo,
        query: &LookupQuery,
        now_ms: u64,
    ) -> Result<LookupAnswer, ReplicaError> {
        match query {
            LookupQuery::Hold(req) => {
                return Ok(LookupAnswer::Hold(self.place_hold(
                    &peer.place.store,
                    req,
                    now_ms,
                )?));
            }
            LookupQuery::Release(id) => {
                return Ok(LookupAnswer::Released(
                    self.release_hold(&peer.place.store, id)?,
                ));
            }
            LookupQuery::Skus(_)
            | LookupQuery::Member(_)
            | LookupQuery::Card(_)
            | LookupQuery::Phone(_)
            | LookupQuery::Original(_) => {}
        }
        let mut answer = Replica::lookup(self, &peer.place, query).map_err(|e| match e {
            crate::lookup::LookupError::Storage(e) => e,
            other => ReplicaError::Corrupt(other.to_string()),
        })?;
        // Entries that ended are of no use to the store; leaving them out bounds the answer.
        if let LookupAnswer::Skus(facts) = &mut answer {
            for f in facts {
                f.prices
                    .retain(|e| e.effective_to_ms.is_none_or(|to| to > now_ms as i64));
            }
        }
        Ok(answer)
    }

    fn head_seq(&self, stream: &StreamId) -> Result<u64, ReplicaError> {
        Ok(self.head(stream)?.seq)
    }

    fn apply_returned(
        &mut self,
        _peer: &NodeId,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, ReplicaError> {
        // Like change sets from a file: each verifies under its own origin's key.
        self.apply_batch(batch, None, now_ms)
    }

    fn note_reclaim(
        &mut self,
        peer: &NodeId,
        claimed: &[(StreamId, u64)],
        returned_all: bool,
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        Replica::note_reclaim(self, peer, claimed, returned_all, now_ms).map(|_| ())
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

impl ReadStream for Replica {
    type Error = ReplicaError;
    fn read(
        &self,
        stream: &StreamId,
        after: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<SignedChangeSet>, ReplicaError> {
        self.read_stream(stream, after, max_count, max_bytes)
    }
}

impl LeafStore for Replica {
    fn cursors(&self) -> Result<Vec<(StreamId, u64)>, ReplicaError> {
        let node = self.node().clone();
        let mut cursors: Vec<(StreamId, u64)> = self
            .heads()?
            .into_iter()
            .filter(|(s, _)| s.origin != node)
            .map(|(s, h)| (s, h.seq))
            .collect();
        // Own streams whose history HQ holds further (the database here was lost): asked for
        // like any other stream, to be restored.
        for (stream, _) in self.own_streams_behind()? {
            let head = self.head(&stream)?.seq;
            cursors.push((stream, head));
        }
        Ok(cursors)
    }

    fn seeding(&self) -> Result<Vec<(StreamId, u64, u32)>, ReplicaError> {
        Ok(Replica::seeding(self)?
            .into_iter()
            .map(|p| (p.stream, p.seq, p.parts_done))
            .collect())
    }

    fn load_snapshot_parts(
        &mut self,
        parts: &[SignedSnapshot],
        now_ms: u64,
    ) -> Result<SeedReport, ReplicaError> {
        let mut report = SeedReport::default();
        for part in parts {
            match self.load_snapshot(part, now_ms) {
                Ok(crate::replica::SnapshotLoad::Loaded { .. })
                | Ok(crate::replica::SnapshotLoad::Part { .. }) => report.loaded += 1,
                Ok(_) => {}
                Err(ReplicaError::Snapshot(e)) => report.rejected.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    fn own_streams(&self) -> Result<Vec<(StreamId, u64, u64)>, ReplicaError> {
        Replica::own_streams(self)
    }

    fn set_hub_acked(&mut self, heads: &[(StreamId, u64)]) -> Result<(), ReplicaError> {
        Replica::set_hub_acked(self, heads)
    }

    fn set_hq_clock_offset(&mut self, offset_ms: i64) -> Result<(), ReplicaError> {
        Replica::set_hq_clock_offset(self, offset_ms)
    }

    fn apply_from_hub(
        &mut self,
        batch: &[SignedChangeSet],
        now_ms: u64,
    ) -> Result<BatchReport, ReplicaError> {
        self.apply_batch(batch, None, now_ms)
    }
}
