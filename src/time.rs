//! Time as the engine sees it: a count of microseconds passed in by the caller.
//!
//! The engine never reads a clock. Replay passes the capture's timestamps;
//! the daemon passes `CLOCK_MONOTONIC`, anchored at the wall clock when it
//! starts (`runtime::clock`). Both are plain microsecond counts, so
//! the same rules give the same answers offline and inline.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A point in time, in microseconds since an epoch the caller chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Self = Self(0);

    /// A timestamp `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// A timestamp `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000))
    }

    /// A wall-clock time, as microseconds since the Unix epoch (zero
    /// before it).
    pub fn from_system(t: std::time::SystemTime) -> Self {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// Microseconds since the epoch.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Microseconds past the whole second.
    pub const fn subsec_micros(self) -> u32 {
        (self.0 % 1_000_000) as u32
    }

    /// Whole seconds since the epoch, saturated to `u32`.
    pub fn secs_u32(self) -> u32 {
        u32::try_from(self.secs()).unwrap_or(u32::MAX)
    }

    /// This timestamp moved `d` later, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(micros))
    }

    /// This timestamp moved by `micros` (either way), saturating at both
    /// ends: how the daemon turns engine time into wall time and back.
    pub const fn shifted(self, micros: i64) -> Self {
        Self(self.0.saturating_add_signed(micros))
    }

    /// Time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.secs(), self.subsec_micros())
    }
}

impl Serialize for Timestamp {
    /// Seconds, as a float with microsecond precision.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 1e6)
    }
}

/// A rate limit over every thread, lock-free: `per_second` events a
/// second on average, up to `burst` at once, on the caller's clock. Tokens
/// come back one at a time, not all at the start of a second, so whoever
/// sends most often gets most of them: a sender cannot spend a second's
/// whole allowance in its first microsecond and starve everyone else.
/// Time that goes back takes nothing back: events stamped before the
/// newest one seen are judged against it.
///
/// (The generic cell rate algorithm: one theoretical arrival time, moved
/// one interval later per event allowed.)
#[derive(Debug)]
pub struct Rate {
    /// When the bucket is next full again, in microseconds.
    tat: AtomicU64,
    interval: u64,
    tolerance: u64,
}

impl Rate {
    /// `per_second` events a second (above 0), up to `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let interval = if per_second > 0.0 { (1e6 / per_second).max(1.0) as u64 } else { u64::MAX };
        let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
        Self { tat: AtomicU64::new(0), interval, tolerance }
    }

    /// True when one more event may happen at `now`; spends it.
    pub fn allow(&self, now: Timestamp) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let Some(next) = self.next_tat(tat, now) else { return false };
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Whether `tat` (a theoretical arrival time kept elsewhere, e.g. per
    /// network) allows one more event at `now`, and its next value if so.
    pub fn next_tat(&self, tat: u64, now: Timestamp) -> Option<u64> {
        let now = now.micros();
        let start = tat.max(now);
        (start - now <= self.tolerance).then(|| start.saturating_add(self.interval))
    }
}

/// Formats a duration the way the rules file writes it: `90s`, `1h`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms % 86_400_000 == 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `250ms`, `90s`, `10m`, `1h` or `1d` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["250ms", "90s", "10m", "1h", "0s", "7d"] {
            let d = parse_duration(text);
            assert_eq!(d.map(format_duration).as_deref(), Some(text));
        }
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn rates_refill_one_token_at_a_time_and_never_go_back() {
        let l = Rate::new(2.0, 2);
        let t = Timestamp::from_micros;
        assert!(l.allow(t(5_000_000)) && l.allow(t(5_000_000)) && !l.allow(t(5_000_000)));
        assert!(!l.allow(t(5_400_000)), "no token back before 500 ms");
        assert!(l.allow(t(5_500_000)) && !l.allow(t(5_500_000)), "one token after 500 ms");
        assert!(!l.allow(t(1_000_000)), "an older time gets nothing");
        assert!(l.allow(t(7_000_000)) && l.allow(t(7_000_000)) && !l.allow(t(7_000_000)));
        let once = Rate::new(0.5, 1);
        assert!(once.allow(t(0)) && !once.allow(t(1_999_999)) && once.allow(t(2_000_000)));
        assert_eq!(once.next_tat(0, t(10)), Some(2_000_010));
        assert_eq!(once.next_tat(2_000_010, t(10)), None);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_micros(u64::MAX - 1);
        assert_eq!(t.saturating_add(Duration::from_secs(1)).micros(), u64::MAX);
        assert_eq!(Timestamp::ZERO.saturating_since(t), Duration::ZERO);
        assert_eq!(Timestamp::from_secs(3).to_string(), "3.000000");
    }
}
