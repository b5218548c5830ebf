//! Hybrid logical clock: a timestamp that follows wall time but never runs backwards and always
//! orders an event after every event its node has seen.
//!
//! Member profile fields merge by last-writer-wins on `(Hlc, NodeId)`; the clock makes "last"
//! mean something even when store clocks disagree.
//!
//! Invariants: [`Clock::tick`] returns strictly increasing values; after [`Clock::observe`]`(h)`
//! every later tick is greater than `h`. The clock never reads the wall clock itself: callers
//! pass `now_ms` in (sans-IO).
//!
//! ```
//! use chainsync::hlc::Clock;
//! let mut clock = Clock::default();
//! let a = clock.tick(1_000);
//! let b = clock.tick(999); // the wall clock stepped back
//! assert!(b > a);
//! ```

use serde::{Deserialize, Serialize};

/// A hybrid logical timestamp: wall milliseconds, then a counter for events within one millisecond
/// (or while the wall clock lags behind what this node has seen).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as far as the node could tell.
    pub wall_ms: u64,
    /// Tie-breaking counter within `wall_ms`.
    pub logical: u32,
}

/// A node's clock state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that has already issued `last` (restored from storage after a restart).
    pub fn resume(last: Hlc) -> Self {
        Self { last }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new timestamp for a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.after(self.last)
        };
        self.last
    }

    /// Takes in a timestamp seen on a received change set.
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    fn after(&self, h: Hlc) -> Hlc {
        match h.logical.checked_add(1) {
            Some(logical) => Hlc {
                wall_ms: h.wall_ms,
                logical,
            },
            // 4 billion events in one millisecond cannot happen; moving to the next millisecond
            // keeps the order strict anyway.
            None => Hlc {
                wall_ms: h.wall_ms.saturating_add(1),
                logical: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_increase_even_when_wall_time_goes_back() {
        let mut c = Clock::default();
        let mut prev = c.tick(5_000);
        for now in [5_000, 4_000, 4_999, 5_001, 1, 6_000] {
            let next = c.tick(now);
            assert!(next > prev, "{next:?} should follow {prev:?}");
            prev = next;
        }
    }

    #[test]
    fn observed_time_orders_later_ticks() {
        let mut c = Clock::default();
        c.tick(1_000);
        let remote = Hlc {
            wall_ms: 9_000_000,
            logical: 3,
        };
        c.observe(remote);
        assert!(c.tick(1_001) > remote);
    }
}
