//! When the remote instance is read again: the periodic read (resync), spread so that instances
//! created or started together do not all read together.

use std::time::{Duration, Instant};

/// When the first periodic read of a created instance falls, in intervals after the create.
pub const FIRST_READ_AFTER_CREATE: (f64, f64) = (1.0, 2.0);
/// When the next periodic read falls after a read, an adoption or another write, in intervals.
pub const NEXT_READ_AFTER_READ: (f64, f64) = (0.9, 1.1);

/// When the next periodic read is planned, and for which interval.
pub type ReadPlan = (Instant, Duration);

/// Whether the periodic read is due now, and the plan to remember. `planned` is what is
/// remembered; `settled` says the status shows the instance Ready for its generation (after a
/// restart, its first read is then spread over one interval instead of all instances reading at
/// start-up); `spread` is a random number in `[0, 1)`. A changed interval is planned again from
/// now, so a shorter one applies at once.
pub fn next_read_at(
    planned: Option<ReadPlan>,
    interval: Duration,
    settled: bool,
    now: Instant,
    spread: f64,
) -> (bool, Option<ReadPlan>) {
    match planned {
        Some((at, planned_for)) if planned_for == interval => (now >= at, Some((at, interval))),
        Some((at, _)) => {
            let replanned = now + interval.mul_f64(spread);
            (false, Some((at.min(replanned), interval)))
        }
        None if settled => (false, Some((now + interval.mul_f64(spread), interval))),
        None => (true, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Resync timing (finding 9). ----

    #[test]
    fn the_next_read_follows_the_interval_in_force() {
        let now = Instant::now();
        let ten_minutes = Duration::from_secs(600);
        let ten_seconds = Duration::from_secs(10);
        // Nothing planned: due now, unless the status says Ready (after a restart): spread.
        assert_eq!(next_read_at(None, ten_minutes, false, now, 0.5), (true, None));
        assert_eq!(
            next_read_at(None, ten_minutes, true, now, 0.5),
            (false, Some((now + Duration::from_secs(300), ten_minutes)))
        );
        // Planned for the same interval: due when its time has come.
        let planned = Some((now + ten_minutes, ten_minutes));
        assert_eq!(next_read_at(planned, ten_minutes, true, now, 0.5), (false, planned));
        assert!(next_read_at(planned, ten_minutes, true, now + ten_minutes, 0.5).0);
        // 10m changed to 10s: planned again within the new interval, not after the old one.
        let (due, replanned) = next_read_at(planned, ten_seconds, true, now, 0.5);
        assert!(!due);
        assert_eq!(replanned, Some((now + Duration::from_secs(5), ten_seconds)));
        // 10s changed to 10m: the read already planned stays (no longer wait than it was).
        let soon = Some((now + ten_seconds, ten_seconds));
        assert_eq!(
            next_read_at(soon, ten_minutes, true, now, 0.5),
            (false, Some((now + ten_seconds, ten_minutes)))
        );
    }
}
