//! Per-source state: fixed size, never grows with the packets a source sends.
//!
//! A [`SourceState`] remembers the distinct closed ports a source touched in
//! a short sliding window (exact, with weights), an estimate of the distinct
//! closed ports over a long horizon for slow scans, when it was first and
//! last seen, when it last completed a TCP handshake, and its ICMP echo
//! allowance. Bans and offence counts live beside it in the shard's ban map
//! (see `track::Shard`), so that losing this state to LRU eviction never
//! loses a ban.

use std::time::Duration;

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
/// by about one port at the default threshold of 20 in 256 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SlowWindow {
    start_s: u32,
    current: [u64; 4],
    previous: [u64; 4],
}

impl SlowWindow {
    fn add(&mut self, now_s: u32, half_s: u32, proto: PortProto, port: u16) -> u32 {
        let elapsed = now_s.saturating_sub(self.start_s);
        if elapsed >= half_s.saturating_mul(2) {
            *self = Self { start_s: now_s, ..Self::default() };
        } else if elapsed >= half_s {
            self.previous = self.current;
            self.current = [0; 4];
            self.start_s = self.start_s.saturating_add(half_s);
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

/// A token bucket in thousandths of a token, for ICMP echo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    milli: u32,
    last: Timestamp,
}

/// Everything portcloak remembers about one source between packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceState {
    /// Latest packet seen from this source.
    pub last_seen: Timestamp,
    /// Latest completed TCP handshake; [`Timestamp::ZERO`] for none.
    pub last_handshake: Timestamp,
    /// The (protocol, port) pairs it proved most recently: a TCP handshake
    /// completed, or a UDP flow this host answered. A quarantine lets these
    /// through.
    pub proven: ProvenPorts,
    /// Probe kinds seen from this source, as [`ProbeKind::bit`]s.
    pub kinds: u32,
    /// What an OS persona keeps about this address as a destination.
    pub peer: Peer,
    /// Knocks, authorizations and SPA allowance.
    pub gate: GateState,
    recent: [PortHit; RECENT_SLOTS],
    slow: SlowWindow,
    echo: Bucket,
    /// The larger score of the latest closed-port touch, and its second.
    closed_score: u16,
    closed_at_s: u32,
}

/// What an OS persona keeps about one peer: the IP ID counter of the
/// replies it gets, and its latest echo request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The last IP ID sent to it; meaningful once `ip_id_started`.
    pub ip_id: u16,
    /// Whether the counter has been seeded.
    pub ip_id_started: bool,
    /// Its latest echo request had DF set.
    pub echo_df: bool,
    /// Identifier and sequence of its latest echo request, when it sent one.
    pub echo: Option<(u16, u16)>,
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

    /// True when the pair was proven.
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
            last_handshake: Timestamp::ZERO,
            proven: ProvenPorts::default(),
            kinds: 0,
            peer: Peer::default(),
            recent: [PortHit::default(); RECENT_SLOTS],
            slow: SlowWindow { start_s: now.secs_u32(), ..SlowWindow::default() },
            echo: Bucket::full(now),
            gate: GateState::new(now),
            closed_score: 0,
            closed_at_s: 0,
        }
    }

    /// How much this source has shown at `now`, for the tables' eviction
    /// order: its closed-port score while it is younger than `horizon`
    /// (the slow window), the knock steps it took, 2 for a handshake within
    /// `horizon`, and far more for a live grant, which a flood must never
    /// erase. Sources with more are evicted last.
    pub fn evidence(&self, now: Timestamp, horizon: Duration) -> u32 {
        let horizon_s = u32::try_from(horizon.as_secs()).unwrap_or(u32::MAX);
        let fresh = |at_s: u32| at_s != 0 && now.secs_u32().saturating_sub(at_s) < horizon_s;
        let closed = self.closed_score(now, horizon);
        let handshake = if fresh(self.last_handshake.secs_u32()) { 2 } else { 0 };
        let grant = if self.gate.any_authorized(now) { 1 << 16 } else { 0 };
        closed + u32::from(self.gate.knock_step) + handshake + grant
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
        let slow = self.slow.add(now_s, half_s, proto, port);
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
    const fn full(now: Timestamp) -> Self {
        Self { milli: u32::MAX, last: now }
    }

    /// Takes one token; false when there is none.
    fn take(&mut self, now: Timestamp, per_second: f64, burst: u32) -> bool {
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

/// Addresses of one tracked source (an IPv6 /64 holds many) that may
/// hold an authorization at once; a newer one replaces the grant that
/// ends first.
const GRANTS: usize = 2;

/// Hidden ports one address may open, until when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Grant {
    /// The address, as the gate names it (a keyed hash: the packet's exact
    /// source address, never its network).
    host: u64,
    /// Hidden ports, as bits by `[[hidden]]` index.
    mask: u16,
    until: Timestamp,
}

/// A source's progress through the gate: its knock sequence so far, which
/// of its addresses are authorized to reach what until when, and its
/// allowance of valid SPA packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// Knock steps completed in order.
    pub knock_step: u8,
    /// When the first step arrived.
    pub knock_start: Timestamp,
    grants: [Grant; GRANTS],
    spa: Bucket,
}

impl GateState {
    fn new(now: Timestamp) -> Self {
        Self {
            knock_step: 0,
            knock_start: Timestamp::ZERO,
            grants: [Grant::default(); GRANTS],
            spa: Bucket::full(now),
        }
    }

    /// Takes one valid SPA packet; false when the source is over its rate.
    pub fn take_spa(&mut self, now: Timestamp, per_second: f64, burst: u32) -> bool {
        self.spa.take(now, per_second, burst)
    }

    /// True when address `host` may open the hidden port with index
    /// `index` at `now`.
    pub fn authorized(&self, index: usize, host: u64, now: Timestamp) -> bool {
        index < 16
            && self
                .grants
                .iter()
                .any(|g| g.host == host && now < g.until && g.mask & (1 << index) != 0)
    }

    /// True when any address of the source holds a grant at `now`.
    pub fn any_authorized(&self, now: Timestamp) -> bool {
        self.grants.iter().any(|g| now < g.until && g.mask != 0)
    }

    /// Opens the hidden ports in `mask` to address `host` until `until`.
    /// Ports still open to it from an earlier grant stay open with them,
    /// until the later end.
    pub fn authorize(&mut self, host: u64, mask: u16, now: Timestamp, until: Timestamp) {
        let live = |g: &Grant| now < g.until;
        let slot = self
            .grants
            .iter()
            .position(|g| live(g) && g.host == host)
            .or_else(|| self.grants.iter().position(|g| !live(g)))
            .or_else(|| {
                self.grants.iter().enumerate().min_by_key(|(_, g)| g.until).map(|(i, _)| i)
            });
        if let Some(g) = slot.and_then(|i| self.grants.get_mut(i)) {
            if !live(g) || g.host != host {
                *g = Grant { host, mask: 0, until: Timestamp::ZERO };
            }
            g.mask |= mask;
            g.until = g.until.max(until);
        }
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
        assert_eq!(std::mem::size_of::<SourceState>(), 352, "the README states this size");
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
