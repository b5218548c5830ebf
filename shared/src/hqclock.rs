//! HQ's clock as a store knows it: the time a store evaluates prices and promotions at.
//!
//! HQ sets when prices and promotions start and end, on HQ's clock, so a store evaluates them on
//! HQ's clock: not on its own (which may be hours off) and not on its hybrid logical clock, which
//! takes in every store's clock through the member edits it has seen, so that one store running
//! hours fast would make every store charge scheduled prices early. Receipts keep the store's own
//! clock for when they were sold.
//!
//! A store keeps one number: HQ's clock minus its own, in ms (the offset).
//! - Each `Welcome` and `Batch` from HQ carries HQ's time. The store estimates the offset at the
//!   midpoint of the round trip (error at most half of it) and ignores exchanges whose round trip
//!   took longer than [`ROUND_TRIP_MAX_MS`]. It stores a new estimate only when it differs from the
//!   last by more than [`TOLERANCE_MS`].
//! - A bundle from HQ says only that HQ's clock had reached the bundle's creation time when the
//!   store imports it: the offset is at least that, and is raised to it if lower.
//! - A store that never heard from HQ uses its own clock (offset 0).
//!
//! Invariants: pure (callers pass both clocks in); arithmetic saturates, so an absurd time from a
//! peer cannot overflow.

/// Exchanges that took longer than this round trip tell too little about HQ's clock to be used.
pub const ROUND_TRIP_MAX_MS: u64 = 5_000;

/// A new estimate closer than this to the stored offset is not stored again.
pub const TOLERANCE_MS: i64 = 500;

/// The offset (HQ's clock minus this store's, ms) from one exchange: the store asked at
/// `asked_ms` and got HQ's answer stamped `hq_ms` at `answered_ms`, both on its own clock.
/// `None` when the round trip took too long (or the store's clock ran backwards during it).
pub fn offset_from_exchange(asked_ms: u64, hq_ms: u64, answered_ms: u64) -> Option<i64> {
    let round_trip = answered_ms.checked_sub(asked_ms)?;
    if round_trip > ROUND_TRIP_MAX_MS {
        return None;
    }
    let midpoint = asked_ms.saturating_add(round_trip / 2);
    Some(signed(hq_ms).saturating_sub(signed(midpoint)))
}

/// Whether `estimate` should replace the stored offset.
pub fn worth_storing(stored: Option<i64>, estimate: i64) -> bool {
    stored.is_none_or(|s| s.saturating_sub(estimate).saturating_abs() > TOLERANCE_MS)
}

/// The offset after importing a bundle HQ created at `created_ms` (HQ's clock) when this store's
/// clock reads `local_ms`: HQ's clock is at least `created_ms` now.
pub fn offset_after_bundle(stored: Option<i64>, created_ms: u64, local_ms: u64) -> i64 {
    let at_least = signed(created_ms).saturating_sub(signed(local_ms));
    stored.unwrap_or(0).max(at_least)
}

/// HQ's time now, as this store reckons it: its own clock `local_ms` plus the offset.
pub fn hq_now(local_ms: u64, offset_ms: Option<i64>) -> i64 {
    signed(local_ms).saturating_add(offset_ms.unwrap_or(0))
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn an_exchange_gives_the_offset_at_the_midpoint_of_the_round_trip() {
        // (asked, HQ's stamp, answered) -> offset
        let cases: [(u64, u64, u64, Option<i64>); 7] = [
            (T, T, T, Some(0)),
            (T, T + 50, T + 100, Some(0)),
            // The store runs 5 h fast: HQ's stamp is 5 h before its clock.
            (T, T - 5 * HOUR as u64 + 50, T + 100, Some(-5 * HOUR)),
            // The store runs 5 h slow.
            (T, T + 5 * HOUR as u64 + 50, T + 100, Some(5 * HOUR)),
            // The longest round trip still used, and one longer.
            (T, T + 2_500, T + ROUND_TRIP_MAX_MS, Some(0)),
            (T, T + 2_500, T + ROUND_TRIP_MAX_MS + 1, None),
            // The store's clock stepped back during the exchange.
            (T, T, T - 1, None),
        ];
        for (asked, hq, answered, want) in cases {
            assert_eq!(
                offset_from_exchange(asked, hq, answered),
                want,
                "{asked} {hq} {answered}"
            );
        }
    }

    #[test]
    fn absurd_times_saturate() {
        assert_eq!(offset_from_exchange(0, u64::MAX, 0), Some(i64::MAX));
        assert_eq!(hq_now(u64::MAX, Some(i64::MAX)), i64::MAX);
        assert_eq!(hq_now(0, Some(i64::MIN)), i64::MIN);
        assert_eq!(offset_after_bundle(Some(i64::MIN), u64::MAX, 0), i64::MAX);
        assert!(worth_storing(Some(i64::MIN), i64::MAX));
    }

    #[test]
    fn only_an_estimate_that_moved_beyond_the_tolerance_is_stored() {
        let cases = [
            (None, 0, true),
            (Some(0), TOLERANCE_MS, false),
            (Some(0), -TOLERANCE_MS, false),
            (Some(0), TOLERANCE_MS + 1, true),
            (Some(5 * HOUR), -5 * HOUR, true),
        ];
        for (stored, estimate, want) in cases {
            assert_eq!(
                worth_storing(stored, estimate),
                want,
                "{stored:?} {estimate}"
            );
        }
    }

    #[test]
    fn a_bundle_only_raises_the_offset_to_what_its_creation_time_proves() {
        let cases = [
            // Never heard from HQ; the bundle is an hour old by the store's clock: nothing proven.
            (None, T - HOUR as u64, T, 0),
            // The store's clock is 5 h slow: HQ made the bundle "5 h in the future".
            (None, T + 5 * HOUR as u64, T, 5 * HOUR),
            // A session's estimate already says more.
            (Some(6 * HOUR), T + 5 * HOUR as u64, T, 6 * HOUR),
            // The estimate was too low.
            (Some(HOUR), T + 5 * HOUR as u64, T, 5 * HOUR),
            // A fast store's estimate is kept.
            (Some(-5 * HOUR), T - 6 * HOUR as u64, T, -5 * HOUR),
        ];
        for (stored, created, local, want) in cases {
            assert_eq!(
                offset_after_bundle(stored, created, local),
                want,
                "{stored:?} {created} {local}"
            );
        }
    }

    #[test]
    fn hq_now_is_the_store_clock_plus_the_offset() {
        assert_eq!(hq_now(T, None), T as i64);
        assert_eq!(hq_now(T, Some(-5 * HOUR)), T as i64 - 5 * HOUR);
        assert_eq!(hq_now(T, Some(5 * HOUR)), T as i64 + 5 * HOUR);
    }
}
