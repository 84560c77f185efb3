//! TRACK: what portcloak remembers between packets, in sharded, bounded,
//! counted tables.
//!
//! NFQUEUE's `--queue-balance` hashes on (saddr, daddr, protocol), so one
//! scanner's TCP, UDP and ICMP probes can reach different workers. State is
//! therefore shared by all workers and split into shards by source, each
//! behind its own mutex; a packet takes exactly one shard lock. A shard holds:
//!
//! - `sources`: a segmented LRU of [`SourceState`], bounded; evictions are
//!   counted. New sources start in probation; a source with evidence
//!   (closed-port touches, a knock under way, a grant, a handshake) moves to
//!   the protected segment, which only sources with as much evidence can
//!   push it out of. A flood of one-packet sources churns probation alone,
//!   so it cannot erase a slow scan's evidence or a client's grant.
//! - `bans`: active bans and the offence history of banned sources. Bans
//!   are rate-capped by policy and never evicted while active, so a flood of
//!   spoofed sources that churns `sources` cannot unban anyone.
//! - `flows`: an LRU of connections seen to start, keyed by 4-tuple and
//!   sharded by the remote end, so replay can tell a stray ACK from a live
//!   connection without conntrack.
//! - `networks`: an LRU of wider IPv6 networks (/48s) and which of their
//!   sources showed scan evidence lately ([`Suspects`]). IPv6 sources are
//!   sharded by that wider network, so a network's record sits beside its
//!   sources and one lock still covers a packet.
//!
//! Hashing is hashbrown's default (foldhash), seeded at random per process,
//! so spoofed sources cannot aim at one bucket or one shard.
//!
//! No I/O and no clock: every call takes `now`.

pub mod flow;
mod key;
mod network;
mod segmented;
mod source;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lru::{DefaultHasher, LruCache};
use serde::Serialize;

use crate::classify::{ProbeKind, Signature};
use crate::time::Timestamp;

pub use self::flow::{Answered, Flow, FlowMatch, FlowState};
pub(crate) use self::key::prefix_mask;
pub use self::key::{FlowKey, SourceKey};
pub use self::network::{SUSPECT_SLOTS, Suspects};
pub use self::segmented::{Evidence, SegmentStats, Segmented, SideTable, bounded_lru};
pub use self::source::{Bucket, PROVEN_SLOTS, ProvenPorts, RECENT_SLOTS, Scores, SourceState};

/// Why a source was banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "detail")]
pub enum BanReason {
    /// A scanner fingerprint or an nmap OS probe.
    Signature(Signature),
    /// A stealth or illegal-flag probe.
    Probe(ProbeKind),
    /// Too many distinct closed ports within the short window.
    ClosedPorts(u32),
    /// Too many distinct closed ports within the long horizon.
    SlowScan(u32),
    /// A wider IPv6 network: this many of its sources (/64s) touched
    /// closed ports within the long horizon.
    SpreadScan(u32),
    /// Banned by an operator.
    Manual,
    /// Closed ports touched on this many hosts of a fleet within the
    /// short window: a sweep across hosts (`[fleet] sweep_hosts`).
    FleetSweep(u32),
}

impl BanReason {
    /// The names of the kinds of reason, as [`BanReason::kind_index`]
    /// numbers them: a bounded label for counters.
    pub const KINDS: [&'static str; 7] =
        ["signature", "probe", "closed-ports", "slow-scan", "spread-scan", "manual", "fleet-sweep"];

    /// This reason's kind, an index into [`BanReason::KINDS`].
    pub const fn kind_index(self) -> usize {
        match self {
            Self::Signature(_) => 0,
            Self::Probe(_) => 1,
            Self::ClosedPorts(_) => 2,
            Self::SlowScan(_) => 3,
            Self::SpreadScan(_) => 4,
            Self::Manual => 5,
            Self::FleetSweep(_) => 6,
        }
    }

    /// True for a ban that one packet called for (a signature or a stealth
    /// probe): anyone can forge it with a spoofed source.
    pub const fn single_packet(self) -> bool {
        matches!(self, Self::Signature(_) | Self::Probe(_))
    }
}

impl std::fmt::Display for BanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signature(s) => write!(f, "signature {s}"),
            Self::Probe(k) => write!(f, "probe {k}"),
            Self::ClosedPorts(n) => write!(f, "closed-ports {n}"),
            Self::SlowScan(n) => write!(f, "slow-scan {n}"),
            Self::SpreadScan(n) => write!(f, "spread-scan {n}"),
            Self::Manual => f.write_str("manual"),
            Self::FleetSweep(n) => write!(f, "fleet-sweep {n}"),
        }
    }
}

/// A ban reason that does not read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    /// A count that is not a number.
    #[error("bad count in `{0}`")]
    Count(String),
    /// No reason is written this way.
    #[error("unknown ban reason `{0}`")]
    Unknown(String),
}

impl std::str::FromStr for BanReason {
    type Err = ReasonError;

    /// Reads back what `Display` wrote.
    fn from_str(text: &str) -> Result<Self, ReasonError> {
        use crate::classify::{Fingerprint, OsProbe};
        let count =
            |rest: &str| rest.parse::<u32>().map_err(|_| ReasonError::Count(text.to_owned()));
        if text == "manual" {
            return Ok(Self::Manual);
        }
        if let Some(rest) = text.strip_prefix("closed-ports ") {
            return count(rest).map(Self::ClosedPorts);
        }
        if let Some(rest) = text.strip_prefix("slow-scan ") {
            return count(rest).map(Self::SlowScan);
        }
        if let Some(rest) = text.strip_prefix("spread-scan ") {
            return count(rest).map(Self::SpreadScan);
        }
        if let Some(rest) = text.strip_prefix("fleet-sweep ") {
            return count(rest).map(Self::FleetSweep);
        }
        let candidates = ProbeKind::ALL
            .into_iter()
            .map(Self::Probe)
            .chain(Fingerprint::ALL.into_iter().map(|f| Self::Signature(Signature::Tool(f))))
            .chain(OsProbe::ALL.into_iter().map(|p| Self::Signature(Signature::OsProbe(p))));
        for reason in candidates {
            if reason.to_string() == text {
                return Ok(reason);
            }
        }
        Err(ReasonError::Unknown(text.to_owned()))
    }
}

/// What a ban stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanKind {
    /// Every packet of the source.
    #[default]
    Ban,
    /// A source that proved its address: its proven (protocol, port) pairs
    /// keep working, every other new connection from it is dropped.
    Quarantine,
}

impl BanKind {
    /// `ban` or `quarantine`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ban => "ban",
            Self::Quarantine => "quarantine",
        }
    }
}

/// A ban, with the offence history that sets the next one's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ban {
    /// A ban or a quarantine.
    pub kind: BanKind,
    /// Why.
    pub reason: BanReason,
    /// When this ban started.
    pub since: Timestamp,
    /// When it ends.
    pub until: Timestamp,
    /// How many bans this source has had, this one included.
    pub offences: u16,
}

impl Ban {
    /// True while the ban holds.
    pub fn is_active(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

#[derive(Clone, Copy, Debug)]
struct BanRecord {
    ban: Ban,
    /// Set once the ban's end has been reported by a sweep.
    lifted: bool,
}

/// Table sizes and counters, summed over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TableStats {
    /// Sources tracked now.
    pub sources: usize,
    /// Source capacity.
    pub source_capacity: usize,
    /// Sources evicted to make room.
    pub source_evictions: u64,
    /// Of `sources`, those in the protected segment (they hold evidence).
    pub protected: usize,
    /// Sources moved from probation to the protected segment.
    pub promotions: u64,
    /// Sources with evidence kept in probation: the protected segment was
    /// full of sources with more.
    pub promotions_refused: u64,
    /// Flows tracked now.
    pub flows: usize,
    /// Flow capacity.
    pub flow_capacity: usize,
    /// Flows evicted to make room.
    pub flow_evictions: u64,
    /// Ban records held (active bans and remembered offenders).
    pub ban_records: usize,
    /// Bans refused because the ban table was full of active bans.
    pub bans_refused_full: u64,
    /// Active single-packet bans a ban on evidence displaced from a full
    /// table (the kernel set keeps each until its timeout).
    pub bans_displaced: u64,
    /// Wider IPv6 networks with suspect sources, tracked now.
    pub networks: usize,
    /// Network capacity.
    pub network_capacity: usize,
    /// Networks evicted to make room.
    pub network_evictions: u64,
    /// Sources in the gate's side table (with a hidden port).
    #[serde(default)]
    pub gate_states: usize,
    /// Its capacity; 0 when the gate keeps none.
    #[serde(default)]
    pub gate_capacity: usize,
    /// Peers in a persona's side table.
    #[serde(default)]
    pub peers: usize,
    /// Its capacity; 0 when the persona keeps none.
    #[serde(default)]
    pub peer_capacity: usize,
}

/// `sources 3/131072 (0 evicted), flows …, 1 ban records, networks …`:
/// how `status` and the replay summary print the tables.
impl std::fmt::Display for TableStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sources {}/{} ({} evicted), flows {}/{} ({} evicted), {} ban records, \
             networks {}/{} ({} evicted)",
            self.sources,
            self.source_capacity,
            self.source_evictions,
            self.flows,
            self.flow_capacity,
            self.flow_evictions,
            self.ban_records,
            self.networks,
            self.network_capacity,
            self.network_evictions,
        )?;
        if self.gate_capacity > 0 {
            write!(f, ", gate {}/{}", self.gate_states, self.gate_capacity)?;
        }
        if self.peer_capacity > 0 {
            write!(f, ", peers {}/{}", self.peers, self.peer_capacity)?;
        }
        Ok(())
    }
}

/// Sizes of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    /// Number of shards; rounded up to a power of two.
    pub shards: usize,
    /// Sources, over all shards.
    pub sources: usize,
    /// Flows, over all shards.
    pub flows: usize,
    /// Ban records, over all shards.
    pub bans: usize,
    /// IPv6 sources are sharded by their network of this many bits, which
    /// `networks` tracks; 0 shards them by the key and tracks no network.
    pub ipv6_network: u8,
}

impl TableLimits {
    /// Networks tracked, over all shards: one per eight sources.
    pub const fn networks(&self) -> usize {
        if self.ipv6_network == 0 { 0 } else { self.sources.div_ceil(NETWORKS_PER) }
    }
}

/// Sources per tracked network.
const NETWORKS_PER: usize = 8;

/// One shard: the state of every source that hashes to it.
#[derive(Debug)]
pub struct Shard {
    /// Sources: first-seen ones in probation, those with evidence (see
    /// [`SourceState::evidence`]) protected, so a flood of new one-packet
    /// sources churns probation only.
    sources: Segmented<SourceKey, SourceState>,
    flows: LruCache<FlowKey, Flow>,
    bans: HashMap<SourceKey, BanRecord, DefaultHasher>,
    ban_capacity: usize,
    networks: LruCache<SourceKey, Suspects>,
    network_evictions: u64,
    flow_evictions: u64,
    bans_refused_full: u64,
    bans_displaced: u64,
}

impl Shard {
    fn new(sources: usize, flows: usize, bans: usize, networks: usize) -> Self {
        Self {
            sources: Segmented::new(sources),
            flows: bounded_lru(flows),
            bans: HashMap::with_hasher(DefaultHasher::default()),
            ban_capacity: bans.max(1),
            networks: bounded_lru(networks),
            network_evictions: 0,
            flow_evictions: 0,
            bans_refused_full: 0,
            bans_displaced: 0,
        }
    }

    /// The state of `key`, created at `now` in probation if it is not
    /// tracked; an eviction to make room is counted.
    pub fn source(&mut self, key: SourceKey, now: Timestamp) -> &mut SourceState {
        self.sources.get_or_insert(key, || SourceState::new(now))
    }

    /// The state of `key` if tracked, without creating or promoting it.
    pub fn peek_source(&self, key: &SourceKey) -> Option<&SourceState> {
        self.sources.peek(key)
    }

    /// Moves `key`, holding `evidence`, to the protected segment: see
    /// [`Segmented::protect`].
    pub fn protect(&mut self, key: SourceKey, evidence: u32, now: Timestamp, horizon: Duration) {
        self.sources.protect(key, evidence, now, horizon);
    }

    /// Records that `source`, of the wider `network`, showed scan evidence
    /// at `now`; returns how many of the network's sources did within
    /// `horizon`. Making room for a new network is counted.
    pub fn suspect(
        &mut self,
        network: SourceKey,
        source: SourceKey,
        now: Timestamp,
        horizon: Duration,
    ) -> u32 {
        let full = self.networks.len() == self.networks.cap().get();
        let mut created = false;
        let suspects = self.networks.get_or_insert_mut(network, || {
            created = true;
            Suspects::default()
        });
        if created && full {
            self.network_evictions += 1;
        }
        suspects.note(source.fold(), now, horizon)
    }

    /// The active ban on `key`, if any.
    pub fn active_ban(&self, key: &SourceKey, now: Timestamp) -> Option<Ban> {
        self.bans.get(key).map(|r| r.ban).filter(|b| b.is_active(now))
    }

    /// Offences on record for `key` (active or remembered bans).
    pub fn offences(&self, key: &SourceKey) -> u16 {
        self.bans.get(key).map_or(0, |r| r.ban.offences)
    }

    /// Records a ban. When the shard's ban table is full, a ban that ended
    /// makes room; failing that, a ban on evidence (not a forgeable single
    /// packet) displaces the active single-packet ban that ends first, so
    /// forged packets cannot fill the table against a real scan. Returns
    /// false, and counts it, when there is no room.
    pub fn insert_ban(&mut self, key: SourceKey, ban: Ban, now: Timestamp) -> bool {
        if !self.bans.contains_key(&key) && self.bans.len() >= self.ban_capacity {
            let lifted = self.bans.iter().find(|(_, r)| !r.ban.is_active(now)).map(|(k, _)| *k);
            let displaced = || {
                self.bans
                    .iter()
                    .filter(|(_, r)| r.ban.reason.single_packet())
                    .min_by_key(|(_, r)| r.ban.until)
                    .map(|(k, _)| *k)
            };
            let room = lifted.or_else(|| (!ban.reason.single_packet()).then(displaced).flatten());
            match room {
                Some(old) => {
                    if lifted.is_none() {
                        self.bans_displaced += 1;
                    }
                    self.bans.remove(&old);
                }
                None => {
                    self.bans_refused_full += 1;
                    return false;
                }
            }
        }
        self.bans.insert(key, BanRecord { ban, lifted: false });
        true
    }

    /// Ends the ban on `key` now and forgets its offences. Returns the ban it lifted.
    pub fn remove_ban(&mut self, key: &SourceKey) -> Option<Ban> {
        self.bans.remove(key).map(|r| r.ban)
    }

    /// The flow `key`, if tracked and not idle for longer than `idle`. A
    /// stale entry is left for the sweep, or for `insert_flow` to replace.
    pub fn flow(&mut self, key: &FlowKey, now: Timestamp, idle: Duration) -> Option<&mut Flow> {
        self.flows.get_mut(key).filter(|f| f.is_fresh(now, idle))
    }

    /// The flow `key` when tracked and fresh; changes nothing.
    pub fn peek_flow(&self, key: &FlowKey, now: Timestamp, idle: Duration) -> Option<Flow> {
        self.flows.peek(key).filter(|f| f.is_fresh(now, idle)).copied()
    }

    /// Starts tracking a flow.
    pub fn insert_flow(&mut self, key: FlowKey, flow: Flow) {
        if let Some((evicted, _)) = self.flows.push(key, flow) {
            if evicted != key {
                self.flow_evictions += 1;
            }
        }
    }
}

/// The shared, sharded tables.
#[derive(Debug)]
pub struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHasher,
    mask: usize,
    limits: TableLimits,
}

/// What a sweep found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Bans that ended since the last sweep.
    pub lifted: Vec<(SourceKey, Ban)>,
    /// Idle sources dropped.
    pub sources_expired: usize,
    /// Idle flows dropped.
    pub flows_expired: usize,
}

/// Some of a table's shards: those whose index leaves `index` when divided
/// by `of`. Threads that each own one part of a table, and see their
/// sources' packets in order, change it exactly as one thread would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// Which part.
    pub index: usize,
    /// Of how many.
    pub of: usize,
}

impl Part {
    /// Every shard.
    pub const WHOLE: Self = Self { index: 0, of: 1 };

    /// True when shard `i` is in this part.
    pub const fn holds(self, i: usize) -> bool {
        self.of <= 1 || i % self.of == self.index
    }
}

impl Table {
    /// Empty tables of the given sizes.
    pub fn new(limits: TableLimits) -> Self {
        let n = limits.shards.clamp(1, 1 << 16).next_power_of_two();
        let per = |total: usize| total.div_ceil(n);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard::new(
                    per(limits.sources),
                    per(limits.flows),
                    per(limits.bans),
                    per(limits.networks()),
                ))
            })
            .collect();
        let limits = TableLimits { shards: n, ..limits };
        Self { shards, hasher: DefaultHasher::default(), mask: n - 1, limits }
    }

    /// Locks the shard that holds `key`: for an IPv6 key, the shard of its
    /// wider network (`ipv6_network`), which holds all of the network's
    /// sources and its record.
    pub fn lock(&self, key: &SourceKey) -> MutexGuard<'_, Shard> {
        let i = self.shard_of(key);
        // `i` is masked below the shard count, so the fallback never runs.
        let shard = self.shards.get(i).or_else(|| self.shards.first());
        match shard {
            Some(m) => lock(m),
            None => unreachable_shard(),
        }
    }

    /// The index of the shard that holds `key`, below [`Table::shards`].
    pub fn shard_of(&self, key: &SourceKey) -> usize {
        let home = match self.limits.ipv6_network {
            0 => *key,
            len => key.widen(len),
        };
        (self.hasher.hash_one(home) as usize) & self.mask
    }

    /// The number of shards, a power of two.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Sizes and counters.
    pub fn stats(&self) -> TableStats {
        let mut s = TableStats {
            source_capacity: self.limits.sources,
            flow_capacity: self.limits.flows,
            network_capacity: self.limits.networks(),
            ..TableStats::default()
        };
        for shard in self.shards.iter() {
            let g = lock(shard);
            let sources = g.sources.stats();
            s.sources += sources.len;
            s.protected += sources.protected;
            s.promotions += sources.promotions;
            s.promotions_refused += sources.promotions_refused;
            s.source_evictions += sources.evictions;
            s.flows += g.flows.len();
            s.flow_evictions += g.flow_evictions;
            s.ban_records += g.bans.len();
            s.bans_refused_full += g.bans_refused_full;
            s.bans_displaced += g.bans_displaced;
            s.networks += g.networks.len();
            s.network_evictions += g.network_evictions;
        }
        s
    }

    /// Every active ban, sorted by source.
    pub fn active_bans(&self, now: Timestamp) -> Vec<(SourceKey, Ban)> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|m| {
                let g = lock(m);
                g.bans
                    .iter()
                    .filter(|(_, r)| r.ban.is_active(now))
                    .map(|(k, r)| (*k, r.ban))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Drops what has expired: flows idle for `flow_idle`, sources silent for
    /// `source_idle`, networks with no evidence within `source_idle`, and
    /// ban records whose ban ended more than `memory` ago.
    /// Reports each ban that ended since the previous sweep.
    pub fn sweep(
        &self,
        now: Timestamp,
        flow_idle: Duration,
        source_idle: Duration,
        memory: Duration,
    ) -> Sweep {
        self.sweep_part(now, (flow_idle, source_idle, memory), Part::WHOLE)
    }

    /// [`Table::sweep`] over the shards of `part` alone.
    pub fn sweep_part(
        &self,
        now: Timestamp,
        (flow_idle, source_idle, memory): (Duration, Duration, Duration),
        part: Part,
    ) -> Sweep {
        let mut out = Sweep::default();
        let shards = self.shards.iter().enumerate();
        for (_, shard) in shards.filter(|(i, _)| part.holds(*i)) {
            let mut g = lock(shard);
            while g.flows.peek_lru().is_some_and(|(_, f)| !f.is_fresh(now, flow_idle)) {
                g.flows.pop_lru();
                out.flows_expired += 1;
            }
            out.sources_expired +=
                g.sources.expire(|s| now.saturating_since(s.last_seen) > source_idle);
            while g.networks.peek_lru().is_some_and(|(_, n)| n.is_stale(now, source_idle)) {
                g.networks.pop_lru();
            }
            for (key, record) in g.bans.iter_mut() {
                if !record.lifted && !record.ban.is_active(now) {
                    record.lifted = true;
                    out.lifted.push((*key, record.ban));
                }
            }
            g.bans.retain(|_, r| now.saturating_since(r.ban.until) <= memory);
        }
        out.lifted.sort_by_key(|(k, _)| *k);
        out
    }
}

/// Locks a shard, recovering it if a panicking thread poisoned the lock:
/// the tables hold plain counters and timestamps, valid at every step.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cold]
fn unreachable_shard() -> ! {
    // `Table::new` always builds at least one shard.
    unreachable!("a table always has at least one shard")
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn key(i: u32) -> SourceKey {
        SourceKey::new(IpAddr::V4(Ipv4Addr::from(0xc612_0000 | i)), 64)
    }

    #[test]
    fn ban_reasons_read_back_what_they_print() {
        use crate::classify::{Fingerprint, OsProbe};
        let reasons = ProbeKind::ALL
            .into_iter()
            .map(BanReason::Probe)
            .chain(Fingerprint::ALL.map(|f| BanReason::Signature(Signature::Tool(f))))
            .chain(OsProbe::ALL.map(|p| BanReason::Signature(Signature::OsProbe(p))))
            .chain([BanReason::ClosedPorts(6), BanReason::SlowScan(20), BanReason::Manual])
            .chain([BanReason::SpreadScan(4)]);
        for r in reasons {
            assert_eq!(r.to_string().parse::<BanReason>(), Ok(r));
        }
        assert!("probe nonsense".parse::<BanReason>().is_err());
    }

    fn table(sources: usize, bans: usize) -> Table {
        Table::new(TableLimits { shards: 1, sources, flows: 8, bans, ipv6_network: 0 })
    }

    #[test]
    fn sources_are_bounded_and_evictions_counted() {
        let t = table(100, 10);
        for i in 0..1000 {
            t.lock(&key(i))
                .source(key(i), Timestamp::from_secs(1))
                .seen(Timestamp::from_secs(1), ProbeKind::TcpSyn);
        }
        // Sources with no evidence share probation, half the table.
        let s = t.stats();
        assert_eq!((s.sources, s.protected), (50, 0));
        assert_eq!(s.source_evictions, 950);
    }

    #[test]
    fn active_bans_are_never_displaced() {
        let t = table(10, 2);
        let now = Timestamp::from_secs(10);
        let ban = |until| Ban {
            kind: BanKind::Ban,
            reason: BanReason::Manual,
            since: now,
            until: Timestamp::from_secs(until),
            offences: 1,
        };
        assert!(t.lock(&key(1)).insert_ban(key(1), ban(100), now));
        assert!(t.lock(&key(2)).insert_ban(key(2), ban(100), now));
        assert!(!t.lock(&key(3)).insert_ban(key(3), ban(100), now), "full of active bans");
        assert_eq!(t.stats().bans_refused_full, 1);
        let later = Timestamp::from_secs(200);
        assert!(t.lock(&key(3)).insert_ban(key(3), ban(300), later), "a lifted ban makes room");
        assert_eq!(t.active_bans(later).len(), 1);
    }

    #[test]
    fn sweep_reports_lifted_bans_once_and_forgets_later() {
        let t = table(10, 10);
        let ban = Ban {
            kind: BanKind::Ban,
            reason: BanReason::Manual,
            since: Timestamp::ZERO,
            until: Timestamp::from_secs(5),
            offences: 1,
        };
        t.lock(&key(1)).insert_ban(key(1), ban, Timestamp::ZERO);
        let d = Duration::from_secs(60);
        assert!(t.sweep(Timestamp::from_secs(1), d, d, d).lifted.is_empty());
        assert_eq!(t.sweep(Timestamp::from_secs(6), d, d, d).lifted, vec![(key(1), ban)]);
        assert!(t.sweep(Timestamp::from_secs(7), d, d, d).lifted.is_empty());
        assert_eq!(t.lock(&key(1)).offences(&key(1)), 1, "remembered");
        t.sweep(Timestamp::from_secs(100), d, d, d);
        assert_eq!(t.lock(&key(1)).offences(&key(1)), 0, "forgotten after the memory");
    }

    #[test]
    fn stale_flows_are_gone() {
        let t = table(10, 10);
        let fk = FlowKey {
            remote: key(1).ip(),
            local: key(2).ip(),
            remote_port: 1,
            local_port: 2,
            protocol: 6,
        };
        let flow = Flow {
            state: FlowState::SynSeen,
            inbound: true,
            isn: 0,
            last: Timestamp::from_secs(1),
        };
        let idle = Duration::from_secs(10);
        let mut g = t.lock(&key(1));
        g.insert_flow(fk, flow);
        assert!(g.flow(&fk, Timestamp::from_secs(5), idle).is_some());
        assert!(g.flow(&fk, Timestamp::from_secs(50), idle).is_none());
    }
}
