//! Wall-clock time as the gateway stores and compares it (unix seconds and milliseconds), and
//! deadlines computed without overflow. A leaf: no other module of the crate is used here.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `start + after`, or a point far enough in the future when that overflows `Instant` (a timeout
/// from configuration may be huge; adding it must never panic).
pub fn deadline(start: Instant, after: Duration) -> Instant {
    start.checked_add(after).unwrap_or_else(|| far_future(start))
}

/// About thirty years after `start`: later than any deadline that matters, and always representable.
fn far_future(start: Instant) -> Instant {
    const THIRTY_YEARS: Duration = Duration::from_secs(30 * 365 * 86_400);
    start.checked_add(THIRTY_YEARS).unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
        assert_eq!(deadline(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
