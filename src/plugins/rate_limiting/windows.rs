//! Window arithmetic shared by every counter store: where the current window of a period starts
//! (UTC calendar boundaries for months and years, multiples of the size since the epoch otherwise),
//! the sliding weight of the previous window, and the decision over several windows at once.

use http::HeaderName;

use crate::model::calendar::{civil_from_days, days_from_civil};

/// The most windows one plugin instance may count (six periods for rate-limiting; the same bound
/// for rate-limiting-advanced keeps a request's usage on the stack).
pub const MAX_WINDOWS: usize = 8;

/// How a window's boundaries are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A fixed number of seconds, aligned to multiples of it since the epoch.
    Seconds(i64),
    /// A UTC calendar month.
    Month,
    /// A UTC calendar year.
    Year,
}

impl Period {
    /// The nominal length Kong uses for `RateLimit-Reset` (30 days for a month, 365 for a year).
    pub fn nominal_secs(self) -> i64 {
        match self {
            Period::Seconds(s) => s,
            Period::Month => 2_592_000,
            Period::Year => 31_536_000,
        }
    }

    /// End of the window starting at `start`.
    pub fn end(self, start: i64) -> i64 {
        match self {
            Period::Seconds(s) => start + s,
            Period::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(86_400));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * 86_400
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(start.div_euclid(86_400));
                days_from_civil(y + 1, 1, 1) * 86_400
            }
        }
    }

    /// Start of the window holding `now` (unix seconds).
    pub fn start(self, now: i64) -> i64 {
        match self {
            Period::Seconds(s) => now - now.rem_euclid(s),
            Period::Month => {
                let (y, m, _) = civil_from_days(now.div_euclid(86_400));
                days_from_civil(y, m, 1) * 86_400
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(now.div_euclid(86_400));
                days_from_civil(y, 1, 1) * 86_400
            }
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub period: Period,
    pub limit: f64,
    /// Kong's sliding window: the previous window's count weighs in proportionally.
    pub sliding: bool,
    /// `X-RateLimit-Limit-<Name>` and `X-RateLimit-Remaining-<Name>`.
    pub limit_header: HeaderName,
    pub remaining_header: HeaderName,
}

/// A window as seen at one instant.
#[derive(Debug, Clone, Copy)]
pub struct WindowNow {
    pub start: i64,
    pub size: i64,
    /// Seconds until the window really ends (calendar months vary).
    pub left: i64,
    pub sliding: bool,
    pub limit: f64,
    /// Weight of the previous window's count (0 for fixed windows).
    pub prev_weight: f64,
    /// Seconds left until the window ends, at least 1 (`RateLimit-Reset`).
    pub reset: i64,
}

impl WindowNow {
    pub fn at(spec: &WindowSpec, now_ms: i64) -> WindowNow {
        let now = now_ms.div_euclid(1000);
        let start = spec.period.start(now);
        let size = spec.period.nominal_secs();
        let elapsed_ms = now_ms - start * 1000;
        let prev_weight =
            if spec.sliding { (1.0 - elapsed_ms as f64 / (size * 1000) as f64).clamp(0.0, 1.0) } else { 0.0 };
        WindowNow {
            start,
            size,
            left: (spec.period.end(start) - now).max(1),
            sliding: spec.sliding,
            limit: spec.limit,
            prev_weight,
            reset: (size - (now - start)).max(1),
        }
    }

    /// How long a counter of this window must be kept, in seconds: to the window's end, and one
    /// more window when sliding reads it as the previous one.
    pub fn ttl(&self) -> i64 {
        self.left + if self.sliding { self.size } else { 0 } + 1
    }
}

/// Usage of each window before this request, and whether it may pass.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub usage: [f64; MAX_WINDOWS],
}

/// The decision for counts read from a store: `counts[i] = (current, previous)`.
pub fn decide(windows: &[WindowNow], counts: impl Fn(usize) -> (u64, u64)) -> Decision {
    let mut usage = [0.0; MAX_WINDOWS];
    let mut allowed = true;
    for (i, w) in windows.iter().enumerate().take(MAX_WINDOWS) {
        let (cur, prev) = counts(i);
        let u = cur as f64 + prev as f64 * w.prev_weight;
        usage[i] = u;
        if u + 1.0 > w.limit {
            allowed = false;
        }
    }
    Decision { allowed, usage }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows_start_on_utc_boundaries() {
        // 2026-11-23T12:48:23Z
        let now = 1_795_438_103;
        assert_eq!(Period::Seconds(60).start(now), now - 23);
        assert_eq!(Period::Seconds(86_400).start(now), now - (12 * 3600 + 48 * 60 + 23));
        // 2026-11-01T00:00:00Z and 2026-01-01T00:00:00Z
        assert_eq!(Period::Month.start(now), 1_793_491_200);
        assert_eq!(Period::Year.start(now), 1_767_225_600);
        assert_eq!(Period::Month.end(1_793_491_200), 1_796_083_200);
        assert_eq!(Period::Year.end(1_767_225_600), 1_798_761_600);
    }

    #[test]
    fn sliding_weight_and_reset() {
        let spec = WindowSpec {
            period: Period::Seconds(60),
            limit: 10.0,
            sliding: true,
            limit_header: HeaderName::from_static("x-a"),
            remaining_header: HeaderName::from_static("x-b"),
        };
        let w = WindowNow::at(&spec, 120_000 + 15_000);
        assert_eq!(w.start, 120);
        assert!((w.prev_weight - 0.75).abs() < 1e-9);
        assert_eq!(w.reset, 45);
        // 4 now + 8 before, weighted 0.75 = 10: the 11th request is over the limit.
        let d = decide(&[w], |_| (4, 8));
        assert!(!d.allowed);
        let d = decide(&[w], |_| (3, 8));
        assert!(d.allowed);
    }
}
