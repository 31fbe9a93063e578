//! Wall-clock time as the gateway stores and compares it (unix seconds and milliseconds), and
//! deadlines computed without overflow. A leaf: no other module of the crate is used here.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds (0 if the clock is before 1970).
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How old a thread's pairing of the two clocks may get before [`epoch_millis_at`] reads both
/// again: a wall clock set meanwhile shows in its answers within this long.
const PAIRING_AGE: Duration = Duration::from_secs(1);

thread_local! {
    /// An instant and unix milliseconds read together (this thread's, no lock).
    static PAIRING: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// Unix milliseconds of `at` (a moment of this process, such as when a request came in) without
/// reading the wall clock each time: from a pairing of the monotonic and wall clocks that this
/// thread read at most [`PAIRING_AGE`] before `at`, or reads now. A log entry's `started_at`
/// takes a subtraction, not a second clock read per request.
pub fn epoch_millis_at(at: Instant) -> u64 {
    let (base, ms) = match PAIRING.get() {
        // One subtraction when the pairing is fresh (nearly always).
        Some((base, ms)) => match at.checked_duration_since(base) {
            Some(since) if since <= PAIRING_AGE => return ms.saturating_add(since.as_millis() as u64),
            Some(_) => pair(),
            None => (base, ms),
        },
        None => pair(),
    };
    match at.checked_duration_since(base) {
        Some(since) => ms.saturating_add(since.as_millis() as u64),
        None => ms.saturating_sub(base.duration_since(at).as_millis() as u64),
    }
}

/// Reads both clocks, as this thread's pairing.
fn pair() -> (Instant, u64) {
    let (base, ms) = (Instant::now(), u64::try_from(now_millis()).unwrap_or(0));
    PAIRING.set(Some((base, ms)));
    (base, ms)
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
    fn an_instant_reads_as_the_wall_clock_did_then() {
        let before = now_millis() as u64;
        let at = Instant::now();
        let after = now_millis() as u64;
        let ms = epoch_millis_at(at);
        // Each clock is read in whole milliseconds: a millisecond either way.
        assert!((before - 1..=after + 1).contains(&ms), "{before} ≤ {ms} ≤ {after}");
        // Earlier and later instants, within the pairing and past its age (read anew).
        let earlier = at.checked_sub(Duration::from_secs(5)).unwrap_or(at);
        assert_eq!(epoch_millis_at(earlier), ms - at.duration_since(earlier).as_millis() as u64);
        let later = at + Duration::from_secs(3);
        let got = epoch_millis_at(later);
        assert!((ms + 2_990..=ms + 3_010).contains(&got), "{got} is about {ms} + 3000");
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
        assert_eq!(deadline(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
