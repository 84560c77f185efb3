//! Per-source state: fixed size, never grows with the packets a source sends.
//!
//! A [`SourceState`] remembers the distinct closed ports a source touched in
//! a short sliding window (exact, with weights), an estimate of the distinct
//! closed ports over a long horizon for slow scans, when it was last seen,
//! when it last completed a TCP handshake, the pairs it proved, and its ICMP
//! echo allowance. Bans and offence counts live beside it in the shard's ban
//! map (see `track::Shard`), so that losing this state to LRU eviction never
//! loses a ban. What a stage keeps only while it is on (the gate's knocks
//! and grants, a persona's per-peer counters) lives in that stage's own
//! side table, so a source pays nothing for a feature that is off.

use std::time::Duration;

use super::Evidence;
use crate::classify::{PortProto, ProbeKind};
use crate::time::Timestamp;

/// Slots of the short window. Thresholds above this cannot be represented;
/// the rules loader rejects them.
pub const RECENT_SLOTS: usize = 16;

/// One closed-port touch in the short window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PortHit {
    /// Second of the last touch; 0 marks an empty slot.
    at_s: u32,
    port: u16,
    proto: u8,
    weight: u8,
}

/// Bits in each long-horizon bucket.
const SLOW_BITS: u32 = 256;

/// Distinct closed ports over a long horizon, as two half-horizon bitmaps.
///
/// The count is `popcount(current | previous)`: the distinct ports seen in
/// the last one to two half-horizons. Hash collisions can only undercount,
/// by about one port at the default threshold of 20 in 256 bits. The
/// current half's start is kept by the caller, beside its other seconds,
/// so the state packs without padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SlowWindow {
    current: [u64; 4],
    previous: [u64; 4],
}

impl SlowWindow {
    fn add(
        &mut self,
        start_s: &mut u32,
        now_s: u32,
        half_s: u32,
        proto: PortProto,
        port: u16,
    ) -> u32 {
        let elapsed = now_s.saturating_sub(*start_s);
        if elapsed >= half_s.saturating_mul(2) {
            *self = Self::default();
            *start_s = now_s;
        } else if elapsed >= half_s {
            self.previous = self.current;
            self.current = [0; 4];
            *start_s = start_s.saturating_add(half_s);
        }
        // Fibonacci hashing spreads ports that differ in low bits.
        let key = (u32::from(port) | ((proto.index() as u32) << 16)).wrapping_mul(0x9e37_79b9);
        let bit = (key >> 24) % SLOW_BITS;
        if let Some(word) = self.current.get_mut((bit / 64) as usize) {
            *word |= 1 << (bit % 64);
        }
        self.current.iter().zip(&self.previous).map(|(c, p)| (c | p).count_ones()).sum()
    }
}

/// A token bucket in thousandths of a token: a source's ICMP echo
/// allowance, and the gate's allowance of valid SPA packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    milli: u32,
    last: Timestamp,
}

/// Everything portcloak remembers about one source between packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceState {
    /// Latest packet seen from this source.
    pub last_seen: Timestamp,
    /// The (protocol, port) pairs it proved most recently: a TCP handshake
    /// completed, or a UDP flow this host answered. A quarantine lets these
    /// through.
    pub proven: ProvenPorts,
    /// Probe kinds seen from this source, as [`ProbeKind::bit`]s.
    pub kinds: u32,
    recent: [PortHit; RECENT_SLOTS],
    slow: SlowWindow,
    echo: Bucket,
    /// Second of the latest completed TCP handshake; 0 for none.
    handshake_s: u32,
    /// Second the slow window's current half started.
    slow_start_s: u32,
    /// The larger score of the latest closed-port touch, and its second.
    closed_score: u16,
    closed_at_s: u32,
}

/// Slots of [`ProvenPorts`].
pub const PROVEN_SLOTS: usize = 3;

/// The last few (protocol, port) pairs a source proved, newest kept when
/// full. The kernel keeps every pair inline; this is the engine's own
/// record, which replay relies on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProvenPorts {
    /// (protocol index + 1, port); a protocol of 0 marks a free slot.
    slots: [(u8, u16); PROVEN_SLOTS],
    /// The slot the next new pair replaces when all are taken.
    next: u8,
}

impl ProvenPorts {
    /// Records a proven pair.
    pub fn add(&mut self, proto: PortProto, port: u16) {
        let id = (proto.index() as u8).saturating_add(1);
        if self.slots.contains(&(id, port)) {
            return;
        }
        let slot = self.slots.iter().position(|s| s.0 == 0).unwrap_or(usize::from(self.next));
        if let Some(s) = self.slots.get_mut(slot) {
            *s = (id, port);
        }
        self.next = u8::try_from((slot + 1) % PROVEN_SLOTS).unwrap_or(0);
    }

    /// True when no pair is proven.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|(p, _)| *p == 0)
    }

    /// True when the pair is proven.
    pub fn contains(&self, proto: PortProto, port: u16) -> bool {
        self.slots.contains(&((proto.index() as u8).saturating_add(1), port))
    }
}

/// Scores after a closed-port touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scores {
    /// Weighted distinct closed ports in the short window.
    pub recent: u32,
    /// Distinct closed ports over the long horizon.
    pub slow: u32,
}

impl SourceState {
    /// A fresh source seen first at `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            last_seen: now,
            proven: ProvenPorts::default(),
            kinds: 0,
            recent: [PortHit::default(); RECENT_SLOTS],
            slow: SlowWindow::default(),
            echo: Bucket::full(now),
            handshake_s: 0,
            slow_start_s: now.secs_u32(),
            closed_score: 0,
            closed_at_s: 0,
        }
    }

    /// Records a TCP handshake it completed at `now`.
    pub fn handshake(&mut self, now: Timestamp) {
        // 0 marks "none", so stored seconds start at 1.
        self.handshake_s = now.secs_u32().max(1);
    }

    /// True when it completed a TCP handshake less than `grace` before
    /// `now` (to the second).
    pub fn handshake_within(&self, now: Timestamp, grace: Duration) -> bool {
        self.handshake_s != 0
            && now.saturating_since(Timestamp::from_secs(u64::from(self.handshake_s))) < grace
    }

    /// Its closed-port score (the larger of the weighted short-window count
    /// and the long-horizon count, at its latest closed-port touch), while
    /// that touch is younger than `horizon`; 0 after.
    pub fn closed_score(&self, now: Timestamp, horizon: Duration) -> u32 {
        let horizon_s = u32::try_from(horizon.as_secs()).unwrap_or(u32::MAX);
        let at_s = self.closed_at_s;
        let fresh = at_s != 0 && now.secs_u32().saturating_sub(at_s) < horizon_s;
        if fresh { u32::from(self.closed_score) } else { 0 }
    }

    /// Records that a packet of `kind` arrived at `now`.
    pub fn seen(&mut self, now: Timestamp, kind: ProbeKind) {
        self.last_seen = self.last_seen.max(now);
        self.kinds |= kind.bit();
    }

    /// Records a touch of a closed `port` and returns the updated scores.
    ///
    /// The short window counts each distinct (protocol, port) once, with the
    /// largest weight it was touched with, over the last `window`.
    pub fn touch_closed(
        &mut self,
        now: Timestamp,
        window: Duration,
        slow_window: Duration,
        proto: PortProto,
        port: u16,
        weight: u8,
    ) -> Scores {
        // `at_s == 0` marks a free slot, so stored seconds start at 1.
        let now_s = now.secs_u32().max(1);
        let window_s = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        let fresh = |hit: &PortHit| hit.at_s != 0 && now_s.saturating_sub(hit.at_s) < window_s;
        let proto_id = proto.index() as u8;
        let slot = self
            .recent
            .iter()
            .position(|h| fresh(h) && h.port == port && h.proto == proto_id)
            .or_else(|| self.recent.iter().position(|h| !fresh(h)))
            .unwrap_or_else(|| oldest(&self.recent));
        if let Some(hit) = self.recent.get_mut(slot) {
            let same = hit.at_s != 0 && hit.port == port && hit.proto == proto_id;
            let weight = if same { hit.weight.max(weight) } else { weight };
            *hit = PortHit { at_s: now_s, port, proto: proto_id, weight };
        }
        let recent =
            self.recent.iter().filter(|h| fresh(h)).map(|h| u32::from(h.weight)).sum::<u32>();
        let half_s = u32::try_from(slow_window.as_secs() / 2).unwrap_or(u32::MAX).max(1);
        let slow = self.slow.add(&mut self.slow_start_s, now_s, half_s, proto, port);
        self.closed_score = u16::try_from(recent.max(slow)).unwrap_or(u16::MAX);
        self.closed_at_s = now_s;
        Scores { recent, slow }
    }

    /// Takes one ICMP echo token; false when the source is over its rate.
    pub fn take_echo(&mut self, now: Timestamp, per_second: f64, burst: u32) -> bool {
        self.echo.take(now, per_second, burst)
    }
}

impl Bucket {
    /// A full bucket at `now`.
    pub const fn full(now: Timestamp) -> Self {
        Self { milli: u32::MAX, last: now }
    }

    /// Takes one token, refilled at `per_second` up to `burst`; false when
    /// there is none.
    pub fn take(&mut self, now: Timestamp, per_second: f64, burst: u32) -> bool {
        let cap = burst.saturating_mul(1000);
        let elapsed_ms = now.saturating_since(self.last).as_millis() as f64;
        let refill = (elapsed_ms * per_second).min(f64::from(cap)) as u32;
        self.milli = self.milli.saturating_add(refill).min(cap);
        self.last = self.last.max(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// How much this source has shown at `now`, for the source table's
/// eviction order: its closed-port score while it is younger than
/// `horizon` (the slow window), and 2 for a handshake within `horizon`.
/// Sources with more are evicted last.
impl Evidence for SourceState {
    fn evidence(&self, now: Timestamp, horizon: Duration) -> u32 {
        let handshake = if self.handshake_within(now, horizon) { 2 } else { 0 };
        self.closed_score(now, horizon) + handshake
    }
}

fn oldest(hits: &[PortHit]) -> usize {
    hits.iter().enumerate().min_by_key(|(_, h)| h.at_s).map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);
    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn short_window_counts_distinct_ports_with_weights() {
        let mut s = SourceState::new(Timestamp::from_secs(100));
        let t = Timestamp::from_secs(100);
        assert_eq!(s.touch_closed(t, W, H, PortProto::Tcp, 1, 1).recent, 1);
        assert_eq!(
            s.touch_closed(t, W, H, PortProto::Tcp, 1, 1).recent,
            1,
            "same port counts once"
        );
        assert_eq!(s.touch_closed(t, W, H, PortProto::Udp, 1, 1).recent, 2, "protocols differ");
        assert_eq!(s.touch_closed(t, W, H, PortProto::Tcp, 1, 2).recent, 3, "largest weight wins");
        let later = Timestamp::from_secs(100 + 61);
        assert_eq!(
            s.touch_closed(later, W, H, PortProto::Tcp, 9, 1).recent,
            1,
            "old touches slide out"
        );
    }

    #[test]
    fn short_window_is_bounded() {
        let mut s = SourceState::new(Timestamp::from_secs(1));
        let mut last = 0;
        for port in 0..1000u16 {
            last = s.touch_closed(Timestamp::from_secs(5), W, H, PortProto::Tcp, port, 1).recent;
        }
        assert_eq!(last, RECENT_SLOTS as u32);
    }

    #[test]
    fn slow_window_spans_the_horizon() {
        let mut s = SourceState::new(Timestamp::from_secs(10));
        let mut slow = 0;
        // One new port every 2 minutes: never 6 in a minute, 20 within 40 minutes.
        for i in 0..20u16 {
            let now = Timestamp::from_secs(10 + u64::from(i) * 120);
            let scores = s.touch_closed(now, W, H, PortProto::Tcp, 1000 + i * 7, 1);
            assert!(scores.recent <= 1);
            slow = scores.slow;
        }
        assert!(slow >= 18, "slow count {slow}");
        // After two whole horizons of silence the count starts again.
        let much_later = Timestamp::from_secs(10 + 3 * 3600);
        assert_eq!(s.touch_closed(much_later, W, H, PortProto::Tcp, 5, 1).slow, 1);
    }

    #[test]
    fn echo_bucket_allows_burst_then_rate() {
        let mut s = SourceState::new(Timestamp::from_secs(1));
        let t = Timestamp::from_secs(1);
        let allowed = (0..10).filter(|_| s.take_echo(t, 1.0, 4)).count();
        assert_eq!(allowed, 4);
        assert!(s.take_echo(Timestamp::from_secs(2), 1.0, 4));
        assert!(!s.take_echo(Timestamp::from_secs(2), 1.0, 4));
    }

    #[test]
    fn state_has_a_fixed_small_size() {
        assert_eq!(std::mem::size_of::<SourceState>(), 248, "the README states this size");
    }

    #[test]
    fn proven_ports_keep_the_newest_pairs() {
        let mut p = ProvenPorts::default();
        assert!(!p.contains(PortProto::Tcp, 0), "an empty slot is no pair");
        for port in [80, 443, 80, 22, 8080] {
            p.add(PortProto::Tcp, port);
        }
        assert!(!p.contains(PortProto::Tcp, 80), "the oldest pair went first");
        assert!(p.contains(PortProto::Tcp, 443) && p.contains(PortProto::Tcp, 22));
        assert!(p.contains(PortProto::Tcp, 8080));
        assert!(!p.contains(PortProto::Udp, 443), "protocols differ");
    }
}
