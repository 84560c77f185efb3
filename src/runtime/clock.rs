//! CLOCK: the daemon's time. The engine gets `CLOCK_MONOTONIC`, anchored
//! at the wall clock once, at start: rate limits, windows and ban lengths
//! then run on a clock that no wall-clock step (NTP, an operator's `date`)
//! moves. Only what leaves the process as a date — the state file, `bans`,
//! events — is converted to wall time, with the offset of that moment, and
//! what comes back in (the state file at start, the dates in SPA packets)
//! is compared or converted the other way.
//!
//! `CLOCK_MONOTONIC` stops while the machine is suspended, so a ban's end
//! moves later by the time spent asleep: servers do not sleep, and a ban
//! that lasts longer never lets a scanner in.

use std::time::{Instant, SystemTime};

use crate::time::Timestamp;

/// Monotonic time in the engine's units, anchored at the wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    anchor: Timestamp,
}

impl Clock {
    /// A clock whose time starts at the wall clock's now.
    pub fn start() -> Self {
        Self { start: Instant::now(), anchor: Timestamp::from_system(SystemTime::now()) }
    }

    /// The engine's time now.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// The engine's time at monotonic instant `mono`.
    pub fn at(&self, mono: Instant) -> Timestamp {
        self.anchor.saturating_add(mono.saturating_duration_since(self.start))
    }

    /// Wall time minus engine time, in microseconds, now: zero until the
    /// wall clock is stepped.
    pub fn wall_offset(&self) -> i64 {
        self.offset_at(SystemTime::now(), Instant::now())
    }

    /// Wall time minus engine time when the wall clock reads `wall` at
    /// monotonic instant `mono`.
    pub fn offset_at(&self, wall: SystemTime, mono: Instant) -> i64 {
        let wall = i128::from(Timestamp::from_system(wall).micros());
        let engine = i128::from(self.at(mono).micros());
        i64::try_from(wall - engine).unwrap_or(if wall > engine { i64::MAX } else { i64::MIN })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn engine_time_follows_the_monotonic_clock_and_the_offset_the_wall() {
        let c = Clock::start();
        let later = c.start + Duration::from_secs(600);
        assert_eq!(c.at(later).saturating_since(c.at(c.start)), Duration::from_secs(600));
        let wall = SystemTime::UNIX_EPOCH + Duration::from_micros(c.anchor.micros());
        assert_eq!(c.offset_at(wall + Duration::from_secs(600), later), 0);
        let back = wall + Duration::from_secs(600) - Duration::from_secs(3600);
        assert_eq!(c.offset_at(back, later), -3_600_000_000, "a step back of an hour");
        assert_eq!(c.at(c.start - Duration::from_secs(5)), c.anchor, "never before the start");
    }

    /// The lengths of the engine's bans over ten minutes of probes, one
    /// every 200 ms, with the wall clock stepped by `step` seconds after
    /// the first minute:
    /// what the daemon does each second (time from the clock, the offset
    /// refreshed from the wall).
    fn bans_with_a_wall_step(step: i64) -> (usize, Vec<u64>) {
        use crate::engine::{Direction, Engine};
        use crate::wire::craft::Craft;
        let c = Clock::start();
        let e = Engine::new(crate::Config::default());
        let mut lengths = Vec::new();
        for i in 0..3000u32 {
            let mono = c.start + Duration::from_millis(200 * u64::from(i));
            let stepped =
                if i >= 300 { Duration::from_secs(step.unsigned_abs()) } else { Duration::ZERO };
            let wall = SystemTime::UNIX_EPOCH + Duration::from_micros(c.at(mono).micros());
            let wall = if step < 0 { wall - stepped } else { wall + stepped };
            e.set_wall_offset(c.offset_at(wall, mono));
            // Spread over the 512 /24s of 198.18.0.0/15, 6 in each: within
            // every network's own single-packet allowance.
            let src = 0xc612_0000u32 + ((i % 512) << 8) + i / 512 + 1;
            let src = std::net::IpAddr::from(src.to_be_bytes());
            let mut null = Craft::tcp(src, [198, 18, 255, 1].into(), 1, 1, 0).build();
            if let Some(b) = e.handle(c.at(mono), Direction::Inbound, &mut null).ban {
                lengths.push(b.until.saturating_since(b.since).as_secs());
            }
        }
        (lengths.len(), lengths)
    }

    #[test]
    fn a_wall_step_either_way_changes_no_ban_decision() {
        // 3000 ban-worthy probes in 10 minutes, 5 a second: under the
        // single-packet pool (10 a second), so every one bans.
        let steady = bans_with_a_wall_step(0);
        assert_eq!(steady.0, 3000);
        assert_eq!(bans_with_a_wall_step(-3600), steady, "an hour back");
        assert_eq!(bans_with_a_wall_step(3600), steady, "an hour ahead");
    }
}
