//! A fault-injecting UDP relay for tests: agents talk to the relay, the relay talks to HQ, and in
//! between datagrams are lost, delayed with jitter (and so reordered), duplicated, and cut off
//! entirely while a partition is on. QUIC runs over UDP, so this exercises every network fault
//! that matters, on loopback, without kernel netem.
//!
//! Invariants: every thread stops by itself when the relay is dropped (sockets poll with a short
//! timeout and check a flag); the random choices come from a seed, so a run can be repeated.

use crate::sim::Rng;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest datagram relayed (QUIC keeps well under it).
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// The faults, changeable while the relay runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    pub loss_percent: u64,
    pub duplicate_percent: u64,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// Partitions flap: `partition_on_ms` cut off, then `partition_off_ms` connected (0: never).
    pub partition_on_ms: u64,
    pub partition_off_ms: u64,
}

impl Faults {
    /// No faults at all.
    pub const NONE: Faults = Faults {
        loss_percent: 0,
        duplicate_percent: 0,
        delay_ms: 0,
        jitter_ms: 0,
        partition_on_ms: 0,
        partition_off_ms: 0,
    };
}

struct Pending {
    at: Instant,
    order: u64,
    from_client: bool,
    peer: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // A min-heap on (time, order).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

struct Shared {
    faults: Mutex<Faults>,
    queue: Mutex<(BinaryHeap<Pending>, u64)>,
    wake: Condvar,
    running: AtomicBool,
    rng: Mutex<Rng>,
    started: Instant,
    stats: Mutex<RelayStats>,
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub relayed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cut_by_partition: u64,
    /// UDP payload bytes the clients (agents) sent, lost ones included: what they put on the
    /// wire.
    pub client_bytes: u64,
    /// UDP payload bytes the upstream (HQ) sent, lost ones included.
    pub upstream_bytes: u64,
}

/// A running relay in front of `upstream`.
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            queue: Mutex::new((BinaryHeap::new(), 0)),
            wake: Condvar::new(),
            running: AtomicBool::new(true),
            rng: Mutex::new(Rng::new(seed)),
            started: Instant::now(),
            stats: Mutex::new(RelayStats::default()),
        });
        // One upstream socket per client address, so HQ sees each agent as its own peer.
        let upstreams: Arc<Mutex<BTreeMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let mut threads = Vec::new();
        {
            let (shared, front, upstreams) = (shared.clone(), front.clone(), upstreams.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
                let mut readers = Vec::new();
                while shared.running.load(Ordering::Relaxed) {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let known = upstreams
                        .lock()
                        .map(|m| m.contains_key(&client))
                        .unwrap_or(true);
                    if !known && let Ok(socket) = UdpSocket::bind("127.0.0.1:0") {
                        let socket = Arc::new(socket);
                        let _ = socket.set_read_timeout(Some(POLL));
                        if let Ok(mut map) = upstreams.lock() {
                            map.insert(client, socket.clone());
                        }
                        let shared = shared.clone();
                        readers.push(std::thread::spawn(move || {
                            let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
                            while shared.running.load(Ordering::Relaxed) {
                                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                                    schedule(&shared, false, client, buf[..n].to_vec());
                                }
                            }
                        }));
                    }
                    schedule(&shared, true, client, buf[..n].to_vec());
                }
                for r in readers {
                    let _ = r.join();
                }
            }));
        }
        {
            let (shared, front, upstreams) = (shared.clone(), front.clone(), upstreams.clone());
            threads.push(std::thread::spawn(move || {
                deliver(&shared, &front, &upstreams, upstream)
            }));
        }
        Ok(Relay {
            addr,
            shared,
            threads,
        })
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.shared.faults.lock() {
            *f = faults;
        }
    }

    /// What the relay did so far.
    pub fn stats(&self) -> RelayStats {
        self.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Decides a datagram's fate and queues its copies.
fn schedule(shared: &Shared, from_client: bool, peer: SocketAddr, bytes: Vec<u8>) {
    let Ok(faults) = shared.faults.lock().map(|f| *f) else {
        return;
    };
    let Ok(mut rng) = shared.rng.lock() else {
        return;
    };
    let Ok(mut stats) = shared.stats.lock() else {
        return;
    };
    if from_client {
        stats.client_bytes += bytes.len() as u64;
    } else {
        stats.upstream_bytes += bytes.len() as u64;
    }
    let cycle = faults.partition_on_ms + faults.partition_off_ms;
    if faults.partition_on_ms > 0 && cycle > 0 {
        let t = shared.started.elapsed().as_millis() as u64 % cycle;
        if t < faults.partition_on_ms {
            stats.cut_by_partition += 1;
            return;
        }
    }
    if rng.chance(faults.loss_percent) {
        stats.lost += 1;
        return;
    }
    let copies = if rng.chance(faults.duplicate_percent) {
        stats.duplicated += 1;
        2
    } else {
        1
    };
    stats.relayed += 1;
    let Ok(mut queue) = shared.queue.lock() else {
        return;
    };
    for _ in 0..copies {
        let jitter = if faults.jitter_ms > 0 {
            rng.below(faults.jitter_ms * 2 + 1)
        } else {
            0
        };
        let delay =
            (faults.delay_ms + jitter).saturating_sub(faults.jitter_ms.min(faults.delay_ms));
        let order = queue.1;
        queue.1 += 1;
        queue.0.push(Pending {
            at: Instant::now() + Duration::from_millis(delay),
            order,
            from_client,
            peer,
            bytes: bytes.clone(),
        });
    }
    shared.wake.notify_one();
}

/// Sends queued datagrams when they are due.
fn deliver(
    shared: &Shared,
    front: &UdpSocket,
    upstreams: &Mutex<BTreeMap<SocketAddr, Arc<UdpSocket>>>,
    upstream: SocketAddr,
) {
    while shared.running.load(Ordering::Relaxed) {
        let due = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            match queue.0.peek() {
                Some(p) if p.at <= Instant::now() => queue.0.pop(),
                Some(p) => {
                    let wait = p.at.saturating_duration_since(Instant::now()).min(POLL);
                    let _ = shared.wake.wait_timeout(queue, wait);
                    None
                }
                None => {
                    let _ = shared.wake.wait_timeout(queue, POLL);
                    None
                }
            }
        };
        let Some(p) = due else { continue };
        if p.from_client {
            let socket = upstreams.lock().ok().and_then(|m| m.get(&p.peer).cloned());
            if let Some(socket) = socket {
                let _ = socket.send_to(&p.bytes, upstream);
            }
        } else {
            let _ = front.send_to(&p.bytes, p.peer);
        }
    }
}
