//! What a node reports to Prometheus (`GET /metrics`) and to a health check (`GET /healthz`).
//!
//! [`SyncMetrics`] holds the counters the transport moves as frames pass (sessions, change sets
//! and their bytes in and out by topic, snapshot parts, refusals by reason, apply latency);
//! [`Figures`] are read from the replica at each scrape (outbox backlog, halted streams,
//! seeding, last exchange; at HQ each store's backlog and last seen). Both binaries serve them
//! on their API listener without a token (loopback by default).
//!
//! Invariants: counting never blocks a session and never fails it (counters are atomics);
//! label values are few and fixed (a topic's kind, not its scope; a refusal's kind, not its
//! message), except HQ's per-store gauges, one per store in the directory.

use crate::changeset::peek_stream;
use crate::protocol::frame::{Frame, WireChangeSet};
use crate::replica::{Replica, ReplicaError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// The content type of [`SyncMetrics::encode`]'s text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/healthz`'s verdict from the database check: HTTP status and word. Healthy means the
/// database takes a write; a store without HQ is healthy (it sells offline).
pub fn health_verdict(database_writable: &Result<(), String>) -> (u16, &'static str) {
    match database_writable {
        Ok(()) => (200, "ok"),
        Err(_) => (503, "failing"),
    }
}

/// Which node the metrics are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Hq,
    Store,
}

impl NodeRole {
    fn as_str(self) -> &'static str {
        match self {
            NodeRole::Hq => "hq",
            NodeRole::Store => "store",
        }
    }
}

/// Whether a frame came in or went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    direction: &'static str,
    topic: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    role: &'static str,
    protocol: String,
}

/// Every topic kind, so that each series exists (at 0) from the first scrape.
const TOPIC_KINDS: [&str; 7] = [
    "directory",
    "catalog",
    "prices",
    "promotions",
    "members",
    "inventory",
    "sales",
];

/// Every kind of refusal ([`crate::validate::ChangeSetError::kind`], and at a store what HQ
/// refused of its pushes and snapshot parts it refused), so each series exists from the start.
const REFUSAL_KINDS: [&str; 13] = [
    "too_large",
    "malformed",
    "not_peers_stream",
    "unknown_origin",
    "revoked",
    "bad_signature",
    "topic_not_allowed",
    "op_not_allowed",
    "seq_gap",
    "prev_hash_mismatch",
    "fork",
    "refused_at_hq",
    "snapshot_part",
];

/// A node's sync metrics. Shared (`Arc`) between the transport, which counts, and the API,
/// which encodes.
pub struct SyncMetrics {
    role: NodeRole,
    registry: Registry,
    sessions_opened: Counter,
    sessions_open: Gauge,
    change_sets: Family<FlowLabels, Counter>,
    change_set_bytes: Family<FlowLabels, Counter>,
    snapshot_parts: Family<DirectionLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    apply_seconds: Histogram,
    outbox: Family<TopicLabels, Gauge>,
    halted_streams: Gauge,
    seeding_parts_done: Gauge,
    seeding_parts: Gauge,
    last_exchange_seconds: Gauge,
    store_backlog: Family<StoreLabels, Gauge>,
    store_last_seen_seconds: Family<StoreLabels, Gauge>,
    /// Gauges set from [`Figures`] and the encoding happen under this lock, so two scrapes at
    /// once do not interleave.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for SyncMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncMetrics")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl SyncMetrics {
    /// Metrics of a node in `role`, every series registered.
    pub fn new(role: NodeRole) -> Self {
        let m = SyncMetrics {
            role,
            registry: Registry::with_prefix("chainsync"),
            sessions_opened: Counter::default(),
            sessions_open: Gauge::default(),
            change_sets: Family::default(),
            change_set_bytes: Family::default(),
            snapshot_parts: Family::default(),
            rejected: Family::default(),
            // 0.5 ms to about 4 s.
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            outbox: Family::default(),
            halted_streams: Gauge::default(),
            seeding_parts_done: Gauge::default(),
            seeding_parts: Gauge::default(),
            last_exchange_seconds: Gauge::default(),
            store_backlog: Family::default(),
            store_last_seen_seconds: Family::default(),
            scrape: Mutex::new(()),
        };
        m.registered()
    }

    /// Registers every metric (the registry holds handles to the same atomics).
    fn registered(mut self) -> Self {
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                role: self.role.as_str(),
                protocol: crate::protocol::frame::PROTOCOL_VERSION.to_string(),
            })
            .set(1);
        let r = &mut self.registry;
        r.register(
            "build_info",
            "This build: version, role, protocol version",
            build,
        );
        r.register(
            "sessions_opened",
            "Sync sessions opened (authenticated)",
            self.sessions_opened.clone(),
        );
        r.register(
            "sessions_open",
            "Sync sessions open now",
            self.sessions_open.clone(),
        );
        r.register(
            "change_sets",
            "Change sets received (in) and sent (out), by topic kind",
            self.change_sets.clone(),
        );
        r.register(
            "change_set_bytes",
            "Bytes of change set bodies received (in) and sent (out), by topic kind",
            self.change_set_bytes.clone(),
        );
        r.register(
            "snapshot_parts",
            "Snapshot parts received (in) and sent (out)",
            self.snapshot_parts.clone(),
        );
        r.register(
            "rejected_change_sets",
            "Change sets refused, by reason (at a store, refused_at_hq: what HQ refused of its pushes)",
            self.rejected.clone(),
        );
        r.register(
            "apply_seconds",
            "Time to validate, apply and commit one received push or batch",
            self.apply_seconds.clone(),
        );
        r.register(
            "halted_streams",
            "Streams halted by an integrity failure (hq-server report halts says why)",
            self.halted_streams.clone(),
        );
        r.register(
            "seeding_parts_done",
            "Snapshot parts loaded of the streams being seeded",
            self.seeding_parts_done.clone(),
        );
        r.register(
            "seeding_parts",
            "Snapshot parts in all of the streams being seeded (0: not seeding)",
            self.seeding_parts.clone(),
        );
        r.register(
            "last_exchange_timestamp_seconds",
            "Unix time of the last frame from HQ (stores) or from any store (HQ); 0: never",
            self.last_exchange_seconds.clone(),
        );
        match self.role {
            NodeRole::Store => r.register(
                "outbox_change_sets",
                "Own change sets not yet acknowledged by HQ, by topic kind",
                self.outbox.clone(),
            ),
            NodeRole::Hq => {
                r.register(
                    "store_backlog_change_sets",
                    "Change sets HQ holds that the store has not confirmed holding",
                    self.store_backlog.clone(),
                );
                r.register(
                    "store_last_seen_timestamp_seconds",
                    "Unix time HQ last heard from the store; 0: never",
                    self.store_last_seen_seconds.clone(),
                );
            }
        }
        // Every series exists (at 0) from the first scrape.
        for direction in [Direction::In, Direction::Out] {
            for topic in TOPIC_KINDS {
                let labels = FlowLabels {
                    direction: direction.as_str(),
                    topic,
                };
                let _ = self.change_sets.get_or_create(&labels);
                let _ = self.change_set_bytes.get_or_create(&labels);
            }
            let _ = self.snapshot_parts.get_or_create(&DirectionLabels {
                direction: direction.as_str(),
            });
        }
        for reason in REFUSAL_KINDS {
            let _ = self.rejected.get_or_create(&ReasonLabels { reason });
        }
        if self.role == NodeRole::Store {
            for topic in TOPIC_KINDS {
                let _ = self.outbox.get_or_create(&TopicLabels { topic });
            }
        }
        self
    }

    /// A session opened (HQ: a store authenticated; store: HQ welcomed it); it counts as open
    /// until the guard is dropped, whichever way the session ends.
    pub fn open_session(&self) -> OpenSession<'_> {
        self.sessions_opened.inc();
        self.sessions_open.inc();
        OpenSession(self)
    }

    /// Sessions open now.
    pub fn sessions_open(&self) -> i64 {
        self.sessions_open.get()
    }

    /// Counts the change sets and snapshot parts a frame carries.
    pub fn frame(&self, direction: Direction, frame: &Frame) {
        let (parts, change_sets): (&[WireChangeSet], &[WireChangeSet]) = match frame {
            Frame::Push { change_sets } | Frame::Returned { change_sets, .. } => (&[], change_sets),
            Frame::Batch {
                snapshot_parts,
                change_sets,
                ..
            } => (snapshot_parts, change_sets),
            Frame::PushAck { rejected, .. } if direction == Direction::In => {
                for _ in rejected {
                    self.rejected("refused_at_hq");
                }
                return;
            }
            _ => return,
        };
        if !parts.is_empty() {
            self.snapshot_parts
                .get_or_create(&DirectionLabels {
                    direction: direction.as_str(),
                })
                .inc_by(parts.len() as u64);
        }
        for cs in change_sets {
            let topic = peek_stream(&cs.body).map_or("unreadable", |s| s.topic.kind());
            let labels = FlowLabels {
                direction: direction.as_str(),
                topic,
            };
            self.change_sets.get_or_create(&labels).inc();
            self.change_set_bytes
                .get_or_create(&labels)
                .inc_by(cs.body.len() as u64);
        }
    }

    /// Counts every frame of `frames`.
    pub fn frames(&self, direction: Direction, frames: &[Frame]) {
        for frame in frames {
            self.frame(direction, frame);
        }
    }

    /// A change set refused, by the kind of refusal.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How long one received push or batch took to validate, apply and commit.
    pub fn applied_in(&self, elapsed: std::time::Duration) {
        self.apply_seconds.observe(elapsed.as_secs_f64());
    }

    /// The Prometheus (OpenMetrics) text of every metric, the gauges set from `figures`.
    pub fn encode(&self, figures: &Figures) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let secs = |ms: Option<u64>| ms.map_or(0, |ms| (ms / 1000) as i64);
        if self.role == NodeRole::Store {
            for topic in TOPIC_KINDS {
                let backlog: u64 = figures
                    .outbox
                    .iter()
                    .filter(|(t, _)| *t == topic)
                    .map(|(_, n)| *n)
                    .sum();
                self.outbox
                    .get_or_create(&TopicLabels { topic })
                    .set(i64::try_from(backlog).unwrap_or(i64::MAX));
            }
        }
        self.halted_streams.set(figures.halted_streams as i64);
        self.seeding_parts_done
            .set(figures.seeding_parts_done as i64);
        self.seeding_parts.set(figures.seeding_parts as i64);
        self.last_exchange_seconds
            .set(secs(figures.last_exchange_ms));
        for store in &figures.stores {
            let labels = StoreLabels {
                store: store.store.clone(),
            };
            self.store_backlog
                .get_or_create(&labels)
                .set(store.backlog_change_sets as i64);
            self.store_last_seen_seconds
                .get_or_create(&labels)
                .set(secs(store.last_seen_ms));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// An open session as [`SyncMetrics`] counts it (see [`SyncMetrics::open_session`]).
#[derive(Debug)]
pub struct OpenSession<'a>(&'a SyncMetrics);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.sessions_open.dec();
    }
}

/// What a scrape reads from the replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Own change sets not acknowledged by HQ, by topic kind (stores).
    pub outbox: Vec<(&'static str, u64)>,
    pub halted_streams: u64,
    pub seeding_parts_done: u64,
    pub seeding_parts: u64,
    /// Unix ms of the last frame from the other side.
    pub last_exchange_ms: Option<u64>,
    /// HQ: each store's backlog and last seen.
    pub stores: Vec<StoreFigures>,
}

/// One store as HQ sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFigures {
    pub store: String,
    pub backlog_change_sets: u64,
    pub last_seen_ms: Option<u64>,
}

impl Figures {
    /// Reads the figures of `role` from `replica`; `last_exchange_ms` is the caller's (the
    /// link knows it at a store; HQ takes the latest of its stores').
    pub fn read(
        replica: &Replica,
        role: NodeRole,
        last_exchange_ms: Option<u64>,
    ) -> Result<Figures, ReplicaError> {
        let mut figures = Figures {
            halted_streams: replica.halted_streams()?.len() as u64,
            last_exchange_ms,
            ..Figures::default()
        };
        for p in replica.seeding()? {
            figures.seeding_parts_done += u64::from(p.parts_done);
            figures.seeding_parts += u64::from(p.parts);
        }
        match role {
            NodeRole::Store => {
                for (stream, acked, head) in replica.own_streams()? {
                    figures
                        .outbox
                        .push((stream.topic.kind(), head.saturating_sub(acked)));
                }
            }
            NodeRole::Hq => {
                for row in replica.store_report(None)? {
                    let last_seen_ms = row.last_seen_ms.map(|ms| ms.max(0) as u64);
                    figures.last_exchange_ms = figures.last_exchange_ms.max(last_seen_ms);
                    figures.stores.push(StoreFigures {
                        store: row.store,
                        backlog_change_sets: row.backlog_change_sets.max(0) as u64,
                        last_seen_ms,
                    });
                }
            }
        }
        Ok(figures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::{CHANGE_SET_FORMAT, ChangeSet, Op, SignedChangeSet, ZERO_HASH};
    use crate::hlc::Hlc;
    use crate::ids::{NodeId, Scope, StreamId, Topic};
    use crate::model::Void;

    fn wire(topic: Topic, seq: u64) -> WireChangeSet {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let change_set = ChangeSet {
            format: CHANGE_SET_FORMAT,
            stream: StreamId::new(NodeId::new("S001").unwrap(), topic),
            seq,
            prev: ZERO_HASH,
            hlc: Hlc::default(),
            ops: vec![Op::Void(Void {
                id: "S001-V1".parse().unwrap(),
                store: NodeId::new("S001").unwrap(),
                original: "S001-R1".parse().unwrap(),
                at_ms: 0,
                reason: "test".into(),
            })],
        };
        let signed = SignedChangeSet::sign(&change_set, &key).unwrap();
        WireChangeSet {
            body: signed.body,
            sig: signed.sig.to_vec(),
        }
    }

    fn text(m: &SyncMetrics) -> String {
        m.encode(&Figures::default())
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    // Change sets are counted by the kind of their topic (not its scope), bytes by body; a
    // body that does not read is counted as "unreadable", not dropped; refusals by kind.
    #[test]
    fn frames_are_counted_by_topic_kind_direction_and_refusal() {
        let m = SyncMetrics::new(NodeRole::Store);
        let sales = [wire(Topic::Sales, 1), wire(Topic::Sales, 2)];
        let bytes = (sales[0].body.len() + sales[1].body.len()) as f64;
        m.frame(
            Direction::Out,
            &Frame::Push {
                change_sets: sales.to_vec(),
            },
        );
        let region = Scope::Region("north".parse().unwrap());
        m.frame(
            Direction::In,
            &Frame::Batch {
                snapshot_parts: vec![wire(Topic::Catalog, 1)],
                change_sets: vec![
                    wire(Topic::Prices(region), 1),
                    WireChangeSet {
                        body: vec![0xff; 3],
                        sig: vec![],
                    },
                ],
                more: false,
                hq_time_ms: 0,
            },
        );
        m.frame(
            Direction::In,
            &Frame::PushAck {
                heads: vec![],
                rejected: vec!["bad".into()],
            },
        );
        m.rejected("seq_gap");
        let t = text(&m);
        let out_sales = r#"chainsync_change_sets_total{direction="out",topic="sales"}"#;
        assert_eq!(value(&t, out_sales), Some(2.0), "{t}");
        assert_eq!(
            value(
                &t,
                r#"chainsync_change_set_bytes_total{direction="out",topic="sales"}"#
            ),
            Some(bytes)
        );
        let in_prices = r#"chainsync_change_sets_total{direction="in",topic="prices"}"#;
        assert_eq!(value(&t, in_prices), Some(1.0), "{t}");
        let unreadable = r#"chainsync_change_sets_total{direction="in",topic="unreadable"}"#;
        assert_eq!(value(&t, unreadable), Some(1.0), "{t}");
        let parts = r#"chainsync_snapshot_parts_total{direction="in"}"#;
        assert_eq!(value(&t, parts), Some(1.0), "{t}");
        let refused = r#"chainsync_rejected_change_sets_total{reason="refused_at_hq"}"#;
        assert_eq!(value(&t, refused), Some(1.0), "{t}");
        let gap = r#"chainsync_rejected_change_sets_total{reason="seq_gap"}"#;
        assert_eq!(value(&t, gap), Some(1.0), "{t}");
        let fork = r#"chainsync_rejected_change_sets_total{reason="fork"}"#;
        assert_eq!(
            value(&t, fork),
            Some(0.0),
            "every reason present from the start: {t}"
        );
    }

    // A session counts as open until its guard drops; the outbox gauge follows the figures.
    #[test]
    fn sessions_and_scrape_time_figures() {
        let m = SyncMetrics::new(NodeRole::Store);
        {
            let _open = m.open_session();
            assert_eq!(value(&text(&m), "chainsync_sessions_open"), Some(1.0));
        }
        let figures = Figures {
            outbox: vec![("sales", 3), ("sales", 2), ("members", 1)],
            halted_streams: 1,
            last_exchange_ms: Some(1_700_000_000_123),
            ..Figures::default()
        };
        let t = m.encode(&figures);
        assert_eq!(value(&t, "chainsync_sessions_open"), Some(0.0), "{t}");
        assert_eq!(
            value(&t, "chainsync_sessions_opened_total"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"chainsync_outbox_change_sets{topic="sales"}"#),
            Some(5.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"chainsync_outbox_change_sets{topic="members"}"#),
            Some(1.0)
        );
        assert_eq!(value(&t, "chainsync_halted_streams"), Some(1.0));
        assert_eq!(
            value(&t, "chainsync_last_exchange_timestamp_seconds"),
            Some(1_700_000_000.0)
        );
        assert!(
            !t.contains("chainsync_store_backlog"),
            "HQ's series only at HQ: {t}"
        );
    }
}
