//! GATE: hidden services. A hidden port is closed to everyone (a SYN to it
//! is dropped and counts as a closed-port touch, so nmap reads it
//! "filtered") until a source proves itself, by a knock sequence or by one
//! signed UDP packet (single-packet authorization, [`spa`]). Then that
//! source, and no other, may start connections to it for `open_for`;
//! connections it started live on in conntrack after that.
//!
//! Runs under the source's shard lock, after classification and before
//! policy; what it keeps per source is in a side table of its own
//! ([`GateState`]), made only when a port is hidden. No I/O, no clock; the
//! SPA key is handed in by the daemon.

pub mod spa;
mod state;

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;

pub use self::state::GateState;
use crate::classify::ProbeKind;
use crate::config::{Config, GateProto, Hidden, KnockStep};
use crate::policy::Reason;
use crate::time::{Rate, Timestamp};
use crate::track::{Evidence, Segmented, SideTable, SourceKey};
use crate::wire::{PacketView, Transport};

/// What the gate decided for one inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gated {
    /// Not the gate's business: policy decides.
    Pass,
    /// A knock or SPA packet: dropped, so those ports look filtered too.
    Drop(Reason),
    /// A new connection to a hidden port from a source not authorized:
    /// dropped, and counted as a touch of a closed port.
    Closed,
    /// A new connection to a hidden port from an authorized source.
    Open,
}

/// How a source proved itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A knock sequence.
    Knock,
    /// A single signed packet.
    Spa,
}

/// Why an SPA packet opened nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Not an SPA packet: wrong length or layout (a truncated packet,
    /// random bytes).
    Malformed,
    /// The HMAC does not hold: another key, or altered bytes.
    BadHmac,
    /// Its timestamp is further from now than `spa.max_age`.
    Stale,
    /// Sent from another address than the one it names: a replay from
    /// elsewhere, or a client behind NAT that did not say its public IP.
    WrongSource,
    /// Its nonce was seen before: a replay.
    Replay,
    /// It asks for a port that is not hidden.
    NotHidden,
}

impl Rejection {
    /// A short stable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadHmac => "bad-hmac",
            Self::Stale => "stale",
            Self::WrongSource => "wrong-source",
            Self::Replay => "replay",
            Self::NotHidden => "not-hidden",
        }
    }
}

/// Something the log should tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateEvent {
    /// A source may now open the hidden ports in `mask` until `until`.
    Authorized {
        /// How.
        via: Via,
        /// The hidden ports, as bits by `[[hidden]]` index.
        mask: u16,
        /// Until when.
        until: Timestamp,
    },
    /// An SPA packet opened nothing.
    Rejected(Rejection),
}

/// Counters of the gate, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GateCounters {
    /// Authorizations by SPA.
    pub spa_authorized: u64,
    /// Authorizations by a knock sequence.
    pub knock_authorized: u64,
    /// SPA packets refused, by reason.
    pub spa_malformed: u64,
    /// See [`Rejection::BadHmac`].
    pub spa_bad_hmac: u64,
    /// See [`Rejection::Stale`].
    pub spa_stale: u64,
    /// See [`Rejection::WrongSource`].
    pub spa_wrong_source: u64,
    /// See [`Rejection::Replay`].
    pub spa_replay: u64,
    /// See [`Rejection::NotHidden`].
    pub spa_not_hidden: u64,
    /// Valid SPA packets over their source's rate (`spa.rate`), dropped.
    pub spa_rate_limited: u64,
    /// SPA packets over the global budget of checks
    /// (`spa.checks_per_second`), dropped unchecked.
    pub spa_over_budget: u64,
    /// New connections to hidden ports let through.
    pub hidden_opened: u64,
    /// New connections to hidden ports dropped.
    pub hidden_dropped: u64,
}

/// The gate's counters, each bumped by the worker that saw the packet.
#[derive(Debug, Default)]
struct Counters {
    spa_authorized: AtomicU64,
    knock_authorized: AtomicU64,
    malformed: AtomicU64,
    bad_hmac: AtomicU64,
    stale: AtomicU64,
    wrong_source: AtomicU64,
    replay: AtomicU64,
    not_hidden: AtomicU64,
    limited: AtomicU64,
    over_budget: AtomicU64,
    opened: AtomicU64,
    dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    /// The counter of authorizations `via`: every kind has its own, so a
    /// new one is a compile error here, never a silent skip.
    const fn authorized(&self, via: Via) -> &AtomicU64 {
        match via {
            Via::Spa => &self.spa_authorized,
            Via::Knock => &self.knock_authorized,
        }
    }

    /// The counter of refusals for `r`, likewise.
    const fn rejected(&self, r: Rejection) -> &AtomicU64 {
        match r {
            Rejection::Malformed => &self.malformed,
            Rejection::BadHmac => &self.bad_hmac,
            Rejection::Stale => &self.stale,
            Rejection::WrongSource => &self.wrong_source,
            Rejection::Replay => &self.replay,
            Rejection::NotHidden => &self.not_hidden,
        }
    }

    fn read(&self) -> GateCounters {
        let load = |c: &AtomicU64| c.load(Relaxed);
        GateCounters {
            spa_authorized: load(&self.spa_authorized),
            knock_authorized: load(&self.knock_authorized),
            spa_malformed: load(&self.malformed),
            spa_bad_hmac: load(&self.bad_hmac),
            spa_stale: load(&self.stale),
            spa_wrong_source: load(&self.wrong_source),
            spa_replay: load(&self.replay),
            spa_not_hidden: load(&self.not_hidden),
            spa_rate_limited: load(&self.limited),
            spa_over_budget: load(&self.over_budget),
            hidden_opened: load(&self.opened),
            hidden_dropped: load(&self.dropped),
        }
    }
}

/// Nonces seen, bounded. A nonce evicted from the cache could be replayed
/// while its packet is still young, so every packet stamped no later than
/// the newest evicted one is refused as a possible replay.
#[derive(Debug)]
struct Nonces {
    seen: LruCache<[u8; 16], u64>,
    floor: u64,
}

#[derive(Debug)]
struct SpaGate {
    key: Vec<u8>,
    port: u16,
    max_age: u64,
    rate: f64,
    burst: u32,
    /// HMAC checks over all sources.
    budget: Rate,
    nonces: Mutex<Nonces>,
}

/// Sources whose gate state is kept, per source the main table tracks.
const STATES_PER: usize = 8;

/// The gate: the hidden ports, the knock sequence and the SPA check.
#[derive(Debug)]
pub struct Gate {
    /// Per-source knocks, grants and SPA allowance; `None` with no hidden
    /// port, when the gate has nothing to do.
    states: Option<SideTable<GateState>>,
    hidden: Vec<Hidden>,
    knock: Vec<KnockStep>,
    within: Duration,
    spa: Option<SpaGate>,
    counters: Counters,
    /// Wall time minus engine time, for the dates in SPA packets.
    wall_offset: AtomicI64,
    /// Names each authorized address exactly, with keys no sender knows.
    hosts: RandomState,
}

impl Gate {
    /// The gate `config` describes. SPA is on when `key` is given and the
    /// rules name a key file.
    pub fn new(config: &Config, key: Option<Vec<u8>>) -> Self {
        let s = &config.spa;
        let spa = key.filter(|_| s.enabled()).map(|key| SpaGate {
            key,
            port: s.port,
            max_age: s.max_age.get().as_secs(),
            rate: s.rate,
            burst: s.burst,
            budget: Rate::new(f64::from(s.checks_per_second), s.checks_per_second),
            nonces: Mutex::new(Nonces { seen: crate::track::bounded_lru(s.nonces), floor: 0 }),
        });
        let t = &config.tracking;
        let states = (!config.hidden.is_empty())
            .then(|| SideTable::new(t.sources.div_ceil(STATES_PER), t.shards));
        Self {
            states,
            hidden: config.hidden.clone(),
            knock: config.knock.sequence.clone(),
            within: config.knock.within.get(),
            spa,
            counters: Counters::default(),
            wall_offset: AtomicI64::new(0),
            hosts: RandomState::new(),
        }
    }

    /// See [`crate::Engine::set_wall_offset`].
    pub fn set_wall_offset(&self, micros: i64) {
        self.wall_offset.store(micros, Relaxed);
    }

    /// The one address an authorization names, as the state stores it.
    fn host(&self, ip: IpAddr) -> u64 {
        self.hosts.hash_one(ip)
    }

    /// The hidden ports, by index.
    pub fn hidden(&self) -> &[Hidden] {
        &self.hidden
    }

    /// The counters.
    pub fn counters(&self) -> GateCounters {
        self.counters.read()
    }

    /// Entries of the side table and its capacity; (0, 0) with no hidden
    /// port.
    pub fn table(&self) -> (usize, usize) {
        self.states.as_ref().map_or((0, 0), SideTable::fill)
    }

    /// Decides what the gate does with an inbound packet from `key`, a
    /// source that is neither banned nor allowlisted, updating its state.
    pub fn check(
        &self,
        now: Timestamp,
        view: &PacketView<'_>,
        key: SourceKey,
        kind: ProbeKind,
        in_flow: bool,
    ) -> (Gated, Option<GateEvent>) {
        // The rules allow knocks and SPA only with a hidden port to open:
        // without one the gate has nothing to do and keeps no state.
        let Some(states) = &self.states else {
            return (Gated::Pass, None);
        };
        let mut table = states.lock(&key);
        let reset = |table: &mut Segmented<SourceKey, GateState>| {
            if let Some(s) = table.get_mut(&key) {
                s.knock_step = 0;
            }
        };
        let (proto, port, payload) = match view.transport {
            Transport::Tcp(t) => (GateProto::Tcp, t.dst_port, None),
            Transport::Udp(u) => (GateProto::Udp, u.dst_port, Some(u.payload)),
            _ => {
                if !in_flow {
                    reset(&mut table);
                }
                return (Gated::Pass, None);
            }
        };
        let opens = matches!(kind, ProbeKind::TcpSyn | ProbeKind::Udp);
        if let Some(spa) = &self.spa
            && proto == GateProto::Udp
            && port == spa.port
            && !in_flow
        {
            reset(&mut table);
            let src = view.ip.src;
            let event = self.spa(now, (key, src), payload.unwrap_or_default(), spa, &mut table);
            return (Gated::Drop(Reason::Spa), event);
        }
        if !self.knock.is_empty() && !in_flow {
            let hit = KnockStep { proto, port };
            let host = self.host(view.ip.src);
            let state = if self.knock.contains(&hit) {
                Some(table.get_or_insert(key, || GateState::new(now)))
            } else {
                table.get_mut(&key)
            };
            if let Some(state) = state {
                let decision = self.knock(now, hit, opens, host, state);
                let evidence = state.evidence(now, self.within);
                table.protect(key, evidence, now, self.within);
                if let Some(decision) = decision {
                    return decision;
                }
            }
        }
        let Some(index) = self.hidden_index(proto, port) else {
            return (Gated::Pass, None);
        };
        if !opens {
            return (Gated::Pass, None);
        }
        let host = self.host(view.ip.src);
        if table.peek(&key).is_some_and(|s| s.authorized(index, host, now)) {
            bump(&self.counters.opened);
            (Gated::Open, None)
        } else {
            bump(&self.counters.dropped);
            (Gated::Closed, None)
        }
    }

    fn hidden_index(&self, proto: GateProto, port: u16) -> Option<usize> {
        self.hidden.iter().position(|h| h.proto == proto && h.port == port)
    }

    /// Advances, repeats or resets the source's knock sequence. `None`:
    /// not a knock port, and the sequence was reset.
    fn knock(
        &self,
        now: Timestamp,
        hit: KnockStep,
        opens: bool,
        host: u64,
        state: &mut GateState,
    ) -> Option<(Gated, Option<GateEvent>)> {
        let step = usize::from(state.knock_step);
        let fresh = step > 0 && now.saturating_since(state.knock_start) <= self.within;
        let expected = if fresh { step } else { 0 };
        let is_knock_port = self.knock.contains(&hit);
        if opens && self.knock.get(expected) == Some(&hit) {
            if expected == 0 {
                state.knock_start = now;
            }
            let done = expected + 1 == self.knock.len();
            state.knock_step = if done { 0 } else { u8::try_from(expected + 1).unwrap_or(0) };
            let event = done.then(|| {
                bump(self.counters.authorized(Via::Knock));
                let mask = mask_of(self.hidden.len());
                let until = now.saturating_add(self.longest_open());
                state.authorize(host, mask, now, until);
                GateEvent::Authorized { via: Via::Knock, mask, until }
            });
            return Some((Gated::Drop(Reason::Knock), event));
        }
        // The step just taken, sent again (a retransmitted SYN): neither
        // advances nor resets.
        if opens && fresh && expected.checked_sub(1).and_then(|i| self.knock.get(i)) == Some(&hit) {
            return Some((Gated::Drop(Reason::Knock), None));
        }
        state.knock_step = 0;
        is_knock_port.then_some((Gated::Drop(Reason::Knock), None))
    }

    fn longest_open(&self) -> Duration {
        self.hidden.iter().map(|h| h.open_for.get()).max().unwrap_or_default()
    }

    fn spa(
        &self,
        now: Timestamp,
        (key, src): (SourceKey, IpAddr),
        payload: &[u8],
        spa: &SpaGate,
        table: &mut Segmented<SourceKey, GateState>,
    ) -> Option<GateEvent> {
        // Forged packets cost at most the global budget of checks, and
        // spend nothing of the source's own allowance: a flood of junk
        // "from" a client cannot stop its real packets.
        if !spa.budget.allow(now) {
            bump(&self.counters.over_budget);
            return None;
        }
        let reject = |r: Rejection| {
            bump(self.counters.rejected(r));
            Some(GateEvent::Rejected(r))
        };
        let req = match spa::open(&spa.key, payload) {
            Ok(req) => req,
            Err(spa::OpenError::Malformed) => return reject(Rejection::Malformed),
            Err(spa::OpenError::BadHmac) => return reject(Rejection::BadHmac),
        };
        let now_s = now.shifted(self.wall_offset.load(Relaxed)).secs();
        if req.timestamp.abs_diff(now_s) > spa.max_age {
            return reject(Rejection::Stale);
        }
        if req.ip != src {
            return reject(Rejection::WrongSource);
        }
        let state = table.get_or_insert(key, || GateState::new(now));
        if !state.take_spa(now, spa.rate, spa.burst) {
            bump(&self.counters.limited);
            return None;
        }
        let proto = match req.protocol {
            6 => GateProto::Tcp,
            17 => GateProto::Udp,
            _ => return reject(Rejection::NotHidden),
        };
        let Some(index) = self.hidden_index(proto, req.port) else {
            return reject(Rejection::NotHidden);
        };
        {
            let mut n = spa.nonces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if req.timestamp <= n.floor || n.seen.contains(&req.nonce) {
                drop(n);
                return reject(Rejection::Replay);
            }
            if let Some((_, evicted)) = n.seen.push(req.nonce, req.timestamp) {
                n.floor = n.floor.max(evicted);
            }
        }
        bump(self.counters.authorized(Via::Spa));
        let open_for = self.hidden.get(index).map(|h| h.open_for.get()).unwrap_or_default();
        let mask = u32::try_from(index).ok().and_then(|i| 1u16.checked_shl(i)).unwrap_or(0);
        let until = now.saturating_add(open_for);
        state.authorize(self.host(src), mask, now, until);
        let evidence = state.evidence(now, open_for);
        table.protect(key, evidence, now, open_for);
        Some(GateEvent::Authorized { via: Via::Spa, mask, until })
    }
}

/// Bits for the first `n` hidden ports.
fn mask_of(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

#[cfg(test)]
mod tests;
