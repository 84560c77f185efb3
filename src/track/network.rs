//! Wider IPv6 networks: which of their tracked sources showed scan
//! evidence lately.
//!
//! One IPv6 host can hold a whole /48 and scan from a new /64 every few
//! probes, staying below every per-/64 threshold. A [`Suspects`] record per
//! /48 (`tracking.ipv6_escalate_prefix`) remembers the last few /64s of it
//! that touched enough closed ports, so that several of them within the
//! slow window ban the /48 (see `Engine`).

use std::time::Duration;

use crate::time::Timestamp;

/// /64s a network remembers; `tracking.ipv6_escalate` cannot exceed it.
pub const SUSPECT_SLOTS: usize = 8;

/// The last [`SUSPECT_SLOTS`] suspect sources of one network, newest kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Suspects {
    /// (the source's [`super::SourceKey::fold`], second of its latest
    /// evidence); a second of 0 marks a free slot.
    slots: [(u32, u32); SUSPECT_SLOTS],
}

impl Suspects {
    /// Records evidence of `member` at `now` and returns how many distinct
    /// members showed some within `horizon`, this one included.
    pub fn note(&mut self, member: u32, now: Timestamp, horizon: Duration) -> u32 {
        // Stored seconds start at 1: 0 marks a free slot.
        let now_s = now.secs_u32().max(1);
        let horizon_s = u32::try_from(horizon.as_secs()).unwrap_or(u32::MAX);
        let fresh = |at_s: u32| at_s != 0 && now_s.saturating_sub(at_s) < horizon_s;
        let slot = self
            .slots
            .iter()
            .position(|&(m, at_s)| m == member && at_s != 0)
            .or_else(|| self.slots.iter().position(|&(_, at_s)| !fresh(at_s)))
            .or_else(|| {
                let oldest = self.slots.iter().enumerate().min_by_key(|(_, (_, at_s))| *at_s);
                oldest.map(|(i, _)| i)
            });
        if let Some(s) = slot.and_then(|i| self.slots.get_mut(i)) {
            *s = (member, now_s);
        }
        let fresh_members = self.slots.iter().filter(|(_, at_s)| fresh(*at_s)).count();
        u32::try_from(fresh_members).unwrap_or(u32::MAX)
    }

    /// True when no member showed evidence within `horizon` of `now`.
    pub fn is_stale(&self, now: Timestamp, horizon: Duration) -> bool {
        let horizon_s = u32::try_from(horizon.as_secs()).unwrap_or(u32::MAX);
        self.slots
            .iter()
            .all(|&(_, at_s)| at_s == 0 || now.secs_u32().max(1).saturating_sub(at_s) >= horizon_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_members_within_the_horizon_are_counted_once_each() {
        let mut s = Suspects::default();
        let hour = Duration::from_secs(3600);
        let at = Timestamp::from_secs;
        assert_eq!(s.note(1, at(10), hour), 1);
        assert_eq!(s.note(1, at(20), hour), 1, "the same member again");
        assert_eq!(s.note(2, at(30), hour), 2);
        assert_eq!(s.note(3, at(3625), hour), 2, "member 1 is past the horizon");
        assert!(!s.is_stale(at(3700), hour));
        assert!(s.is_stale(at(3625 + 3600), hour));
        // More members than slots: the newest are kept.
        for m in 10..30 {
            s.note(m, at(5000 + u64::from(m)), hour);
        }
        assert_eq!(s.note(30, at(5100), hour), SUSPECT_SLOTS as u32);
    }
}
