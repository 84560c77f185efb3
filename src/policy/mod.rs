//! DECIDE: from a classified packet and its source's state, a verdict, and
//! sometimes a ban.
//!
//! Every threshold comes from [`Config`]; nothing here reads a clock or does
//! I/O. The functions run under the source's shard lock, which `engine`
//! holds for the whole decision.
//!
//! # Why bans are guarded
//!
//! Single-packet signatures are cheap to forge with a spoofed source
//! address: anyone could send one nmap-looking SYN "from" a customer's
//! resolver and get it banned. The guards bound that harm:
//!
//! - a *proven* source (it completed a TCP handshake within
//!   `ban.handshake_grace`, so it acknowledged this host's SYN-ACK, which a
//!   spoofer never sees; or this host answered or opened a flow with it) is
//!   never banned on one packet: its forged probes are dropped and count as
//!   touches of closed ports. When it crosses a threshold it is
//!   *quarantined*, not banned: the pairs it proved keep working and every
//!   other new connection from it is dropped. Inline the kernel does the
//!   proving (see `firewall`) and tells the engine through a packet mark.
//! - this host's own addresses, the unspecified, multicast and broadcast
//!   addresses and IPv6 link-local ones are never banned
//!   ([`Policy::bannable`]).
//! - new bans are capped (`BanGuard`), in two pools: evidence of many
//!   packets has its own allowance, and single-packet bans share another,
//!   bounded per /24 or /48, last `ban.duration` and never double. So a
//!   spoofed flood cannot fill the ban table, push thousands of addresses
//!   into the kernel set, or spend the allowance a real scan's ban needs.
//!   Probes over the cap are still dropped; only the ban is skipped, and
//!   counted, and the next probe from the same source tries again. When
//!   the ban table is full, an evidence ban displaces the single-packet ban
//!   that ends first.

mod ports;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;

pub use self::ports::PortMap;
use crate::classify::{Fingerprint, PortProto, ProbeKind, Signature};
use crate::config::{Action, BanRules, ClosedPorts, Config, Toggle};
use crate::time::{Rate, Timestamp};
use crate::track::{Ban, BanKind, BanReason, Scores, Shard, SourceKey, SourceState, bounded_lru};
use crate::wire;

/// Accept or drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let the packet through.
    Accept,
    /// Drop it silently.
    Drop,
}

/// Why a verdict was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Part of a known connection.
    Flow,
    /// A new connection or datagram to an open port.
    OpenPort,
    /// To a closed port, let through so the kernel answers (`closed_ports = "reject"`).
    ClosedPortReject,
    /// From an allowlisted network.
    Allowlisted,
    /// ICMP within its limits.
    Icmp,
    /// A later fragment, accepted by `policy.fragments`.
    Fragment,
    /// Another IP protocol, accepted by `policy.other_protocols`.
    OtherProtocol,
    /// A rule matched but is switched off.
    RuleOff,
    /// Sent by this host.
    Outbound,
    /// A malformed packet, accepted by `policy.malformed`.
    Malformed,
    /// From a banned source, or to one.
    Banned,
    /// From a denylisted network.
    Denylisted,
    /// A wrong IP, TCP, UDP or ICMP checksum.
    BadChecksum,
    /// To a closed port.
    ClosedPort,
    /// A stealth or illegal-flag probe.
    Probe,
    /// A scanner fingerprint or an nmap OS probe.
    Signature,
    /// ICMP over its rate.
    RateLimited,
    /// A SYN-ACK answering nothing.
    UnsolicitedSynAck,
    /// An nmap OS probe the persona's OS never answers.
    Persona,
    /// A new connection to a hidden port from a source not authorized.
    Hidden,
    /// A knock on a knock port.
    Knock,
    /// A single-packet authorization packet, good or not.
    Spa,
    /// A new connection to a hidden port from an authorized source.
    Authorized,
    /// A new connection from a quarantined source, to a pair it never proved.
    Quarantined,
    /// Inbound with one of this host's own addresses as its source: forged.
    Martian,
}

impl Reason {
    /// Every reason, in declaration order: `Reason::ALL[r as usize] == r`.
    pub const ALL: [Self; 25] = [
        Self::Flow,
        Self::OpenPort,
        Self::ClosedPortReject,
        Self::Allowlisted,
        Self::Icmp,
        Self::Fragment,
        Self::OtherProtocol,
        Self::RuleOff,
        Self::Outbound,
        Self::Malformed,
        Self::Banned,
        Self::Denylisted,
        Self::BadChecksum,
        Self::ClosedPort,
        Self::Probe,
        Self::Signature,
        Self::RateLimited,
        Self::UnsolicitedSynAck,
        Self::Persona,
        Self::Hidden,
        Self::Knock,
        Self::Spa,
        Self::Authorized,
        Self::Quarantined,
        Self::Martian,
    ];

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::OpenPort => "open-port",
            Self::ClosedPortReject => "closed-port-reject",
            Self::Allowlisted => "allowlisted",
            Self::Icmp => "icmp",
            Self::Fragment => "fragment",
            Self::OtherProtocol => "other-protocol",
            Self::RuleOff => "rule-off",
            Self::Outbound => "outbound",
            Self::Malformed => "malformed",
            Self::Banned => "banned",
            Self::Denylisted => "denylisted",
            Self::BadChecksum => "bad-checksum",
            Self::ClosedPort => "closed-port",
            Self::Probe => "probe",
            Self::Signature => "signature",
            Self::RateLimited => "rate-limited",
            Self::UnsolicitedSynAck => "unsolicited-syn-ack",
            Self::Persona => "persona",
            Self::Hidden => "hidden",
            Self::Knock => "knock",
            Self::Spa => "spa",
            Self::Authorized => "authorized",
            Self::Quarantined => "quarantined",
            Self::Martian => "martian",
        }
    }
}

/// What policy decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Accept or drop.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// A ban this packet calls for; [`Policy::ban`] issues it, subject to
    /// the guards that need the whole shard.
    pub ban: Option<BanReason>,
}

impl Decision {
    const fn accept(reason: Reason) -> Self {
        Self { verdict: Verdict::Accept, reason, ban: None }
    }

    const fn drop(reason: Reason) -> Self {
        Self { verdict: Verdict::Drop, reason, ban: None }
    }
}

/// Bans that were not issued, by guard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GuardCounters {
    /// Single-packet bans skipped because the source is proven.
    pub handshake_grace: u64,
    /// Bans skipped because the address is never bannable (this host's,
    /// unspecified, multicast, broadcast, IPv6 link-local).
    pub unbannable: u64,
    /// Skipped because the new-bans-per-second cap was reached.
    pub rate_capped: u64,
    /// Skipped because the ban table was full of active bans.
    pub table_full: u64,
}

/// How many networks' single-packet allowances are remembered, at least
/// and at most: enough for every network the global pool can reach within
/// one ban length, so the oldest is forgotten only once its allowance is
/// full again.
const PREFIXES_MIN: usize = 1024;
const PREFIXES_MAX: usize = 1 << 20;
const PREFIX_SHARDS: usize = 16;

/// The ban cap, in two pools that cannot spend each other's allowance.
///
/// - Evidence that takes many packets (closed-port and slow-scan
///   thresholds) has `ban.max_new_per_second`.
/// - Single-packet bans (a signature or a stealth probe, forgeable with a
///   spoofed source) share `ban.single_packet_per_second`, and each /24 or
///   /48 may take at most `ban.single_packet_per_prefix` of them per ban
///   length, so no spoofer can ban many chosen addresses of one network.
///
/// Tokens come back one at a time ([`Rate`]), so a flood that sends its
/// packets at the start of each second does not win the whole second.
#[derive(Debug)]
struct BanGuard {
    evidence: Rate,
    single: Rate,
    /// Per network: the theoretical arrival time of its next ban (see
    /// [`Rate::next_tat`]), sharded by network.
    prefixes: Vec<Mutex<LruCache<u64, u64>>>,
    per_prefix: Rate,
}

impl BanGuard {
    fn new(b: &BanRules) -> Self {
        let length = b.duration.get().as_secs_f64().max(1.0);
        let reach = f64::from(b.single_packet_per_second) * length;
        let cap = (reach as usize).clamp(PREFIXES_MIN, PREFIXES_MAX) / PREFIX_SHARDS;
        let cap = NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN);
        Self {
            evidence: Rate::new(f64::from(b.max_new_per_second), b.max_new_per_second),
            single: Rate::new(f64::from(b.single_packet_per_second), b.single_packet_per_second),
            prefixes: (0..PREFIX_SHARDS).map(|_| Mutex::new(bounded_lru(cap.get()))).collect(),
            per_prefix: Rate::new(
                f64::from(b.single_packet_per_prefix) / length,
                b.single_packet_per_prefix,
            ),
        }
    }

    /// Spends an allowance for a ban of `reason` on `ip` at `now`.
    fn allow(&self, ip: IpAddr, reason: BanReason, now: Timestamp) -> bool {
        if !reason.single_packet() {
            return self.evidence.allow(now);
        }
        let prefix = network(ip);
        let shard = (prefix as usize) % PREFIX_SHARDS;
        let Some(shard) = self.prefixes.get(shard) else { return false };
        let mut map = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A network seen for the first time is only remembered once the
        // global pool allowed its ban: a flood of new networks then cannot
        // push out the ones it spent.
        let tat = map.peek(&prefix).copied().unwrap_or(0);
        let Some(next) = self.per_prefix.next_tat(tat, now) else { return false };
        if !self.single.allow(now) {
            return false;
        }
        map.put(prefix, next);
        true
    }
}

/// The /24 of an IPv4 address or the /48 of an IPv6 one, as a number
/// (IPv4 networks with a tag bit, so the two never meet).
fn network(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => (1 << 63) | u64::from(u32::from(a) >> 8),
        IpAddr::V6(a) => (u128::from(a) >> 80) as u64,
    }
}

/// Puts the ban cap's decisions in packet order when several threads judge
/// one stream of packets, each thread the sources of its own shards
/// (`replay --threads`). The ban cap is the one state that sources of
/// different shards share and that only bans read: [`BanOrder::wait`]
/// runs before each of its decisions and returns once every decision of
/// an earlier packet is made.
pub trait BanOrder: Send + Sync + std::fmt::Debug {
    /// Waits until the packet being judged on this thread may spend the
    /// ban cap.
    fn wait(&self);
}

/// The decision maker: the rules, the open ports and the ban guards.
#[derive(Debug)]
pub struct Policy {
    config: Config,
    ports: PortMap,
    limiter: BanGuard,
    order: std::sync::RwLock<Option<std::sync::Arc<dyn BanOrder>>>,
    /// This host's own addresses.
    local: LocalAddrs,
    guarded: AtomicU64,
    unbannable: AtomicU64,
    capped: AtomicU64,
    full: AtomicU64,
}

impl Policy {
    /// A policy enforcing `config`.
    pub fn new(config: Config) -> Self {
        let ports = PortMap::new(&config.services);
        let limiter = BanGuard::new(&config.ban);
        Self {
            config,
            ports,
            limiter,
            order: std::sync::RwLock::new(None),
            local: LocalAddrs::default(),
            guarded: AtomicU64::new(0),
            unbannable: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    /// The rules.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The open-port map.
    pub fn ports(&self) -> &PortMap {
        &self.ports
    }

    /// Replaces the set of this host's own addresses.
    pub fn set_local(&self, addrs: Vec<IpAddr>) {
        self.local.set(addrs);
    }

    /// True when `ip` is one of this host's own addresses.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.local.contains(ip)
    }

    /// True when one of this host's own addresses lies in `network`: such
    /// a network is never banned whole (its neighbours, its router).
    pub fn holds_local(&self, network: SourceKey) -> bool {
        self.local.all().iter().any(|ip| SourceKey::new(*ip, network.prefix_len()) == network)
    }

    /// The closed-port score (see [`SourceState::closed_score`]) from which
    /// an unproven IPv6 source counts toward its network's escalation: half
    /// of `scan.closed_port_threshold`, rounded up, and at least 2.
    pub fn suspect_score(&self) -> u32 {
        self.config.scan.closed_port_threshold.div_ceil(2).max(2)
    }

    /// False for addresses that are never banned nor put in a kernel set:
    /// this host's own, the unspecified, multicast and broadcast addresses,
    /// and IPv6 link-local ones (one forged on-link packet must not stop
    /// neighbour discovery or the router's messages). Loopback is never
    /// queued, and is never banned either.
    pub fn bannable(&self, ip: IpAddr) -> bool {
        let special = match ip {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
            }
            IpAddr::V6(a) => {
                a.is_unspecified()
                    || a.is_multicast()
                    || a.is_loopback()
                    || a.is_unicast_link_local()
                    || a.to_ipv4_mapped().is_some()
            }
        };
        !special && !self.is_local(ip)
    }

    /// Bans the guards held back.
    pub fn guard_counters(&self) -> GuardCounters {
        GuardCounters {
            handshake_grace: self.guarded.load(Ordering::Relaxed),
            unbannable: self.unbannable.load(Ordering::Relaxed),
            rate_capped: self.capped.load(Ordering::Relaxed),
            table_full: self.full.load(Ordering::Relaxed),
        }
    }

    /// The action configured for a signature.
    pub fn signature_action(&self, signature: Signature) -> Action {
        let f = &self.config.fingerprints;
        match signature {
            Signature::OsProbe(_) => self.config.probes.os_detection,
            Signature::Tool(Fingerprint::NmapSyn) => f.nmap_syn,
            Signature::Tool(Fingerprint::Masscan) => f.masscan,
            Signature::Tool(Fingerprint::Zmap) => f.zmap,
            Signature::Tool(Fingerprint::Hping3) => f.hping3,
            Signature::Tool(Fingerprint::NmapEcho) => f.nmap_echo,
            Signature::Tool(Fingerprint::NmapStealth) => f.nmap_stealth,
        }
    }

    /// The action configured for a stealth kind, or `None` for other kinds.
    pub fn probe_action(&self, kind: ProbeKind) -> Option<Action> {
        let p = &self.config.probes;
        Some(match kind {
            ProbeKind::TcpNull => p.null,
            ProbeKind::TcpFin => p.fin,
            ProbeKind::TcpXmas => p.xmas,
            ProbeKind::TcpMaimon => p.maimon,
            ProbeKind::TcpAck => p.ack,
            ProbeKind::TcpRst => p.rst,
            ProbeKind::TcpSynFin => p.syn_fin,
            ProbeKind::TcpSynRst => p.syn_rst,
            ProbeKind::TcpIllegal => p.illegal,
            ProbeKind::IcmpTimestamp => self.config.icmp.timestamp,
            ProbeKind::IcmpAddressMask => self.config.icmp.address_mask,
            _ => return None,
        })
    }

    /// Decides an inbound packet from a source that is not banned, allowed
    /// or denied, given that source's state. The caller has already recorded
    /// the packet in the state's last-seen time and kind mask, and issues
    /// any ban the decision calls for with [`Policy::ban`].
    pub fn inbound(&self, ctx: Inbound, state: &mut SourceState) -> Decision {
        let Inbound { now, kind, signature, port, in_flow, proven } = ctx;
        let stealth = self.config.scan.weight_stealth;
        // Rules, most specific first: an nmap OS probe, then the probe's
        // kind, then a tool fingerprint. The first one switched on decides.
        let os_probe = signature.filter(|s| matches!(s, Signature::OsProbe(_)));
        let tool = signature.filter(|s| matches!(s, Signature::Tool(_)));
        let kind_rule = self.probe_action(kind);
        let rules = [
            os_probe
                .map(|s| (self.signature_action(s), Reason::Signature, BanReason::Signature(s))),
            kind_rule.map(|a| (a, Reason::Probe, BanReason::Probe(kind))),
            tool.map(|s| (self.signature_action(s), Reason::Signature, BanReason::Signature(s))),
        ];
        for (action, reason, ban) in rules.into_iter().flatten() {
            match action {
                Action::Ban => {
                    return self.ban_or_touch(
                        state,
                        now,
                        proven,
                        ban,
                        port,
                        Decision::drop(reason),
                    );
                }
                Action::Drop => {
                    return self.touch(state, now, port, stealth, Decision::drop(reason));
                }
                Action::Off => {}
            }
        }
        if kind_rule.is_some() {
            return Decision::accept(Reason::RuleOff);
        }
        match kind {
            ProbeKind::TcpFlow | ProbeKind::UdpFlow => Decision::accept(Reason::Flow),
            ProbeKind::TcpSyn | ProbeKind::Udp | ProbeKind::Sctp => match port {
                Some((proto, number)) if !self.ports.is_open(proto, number) => {
                    let scan = &self.config.scan;
                    let weight = match proto {
                        PortProto::Tcp | PortProto::Ip => scan.weight_tcp,
                        PortProto::Udp => scan.weight_udp,
                        PortProto::Sctp => scan.weight_sctp,
                    };
                    let closed = match self.config.policy.closed_ports {
                        ClosedPorts::Drop => Decision::drop(Reason::ClosedPort),
                        ClosedPorts::Reject => Decision::accept(Reason::ClosedPortReject),
                    };
                    self.touch(state, now, port, weight, closed)
                }
                _ => Decision::accept(Reason::OpenPort),
            },
            ProbeKind::TcpSynAck if !in_flow => {
                toggle(self.config.policy.unsolicited_syn_ack, Reason::UnsolicitedSynAck)
            }
            ProbeKind::IcmpEcho => {
                let icmp = &self.config.icmp;
                if state.take_echo(now, icmp.echo_rate, icmp.echo_burst) {
                    Decision::accept(Reason::Icmp)
                } else {
                    Decision::drop(Reason::RateLimited)
                }
            }
            ProbeKind::Fragment => toggle(self.config.policy.fragments, Reason::Fragment),
            // Each protocol number counts like a closed port (`nmap -sO`).
            ProbeKind::OtherProtocol => match self.config.policy.other_protocols {
                Toggle::Accept => Decision::accept(Reason::OtherProtocol),
                Toggle::Drop => self.touch(
                    state,
                    now,
                    port,
                    self.config.scan.weight_tcp,
                    Decision::drop(Reason::OtherProtocol),
                ),
            },
            _ => Decision::accept(Reason::Icmp),
        }
    }

    /// A new connection to a hidden port from a source not authorized:
    /// dropped, and counted like one to a closed port.
    pub fn hidden(
        &self,
        state: &mut SourceState,
        now: Timestamp,
        port: Option<(PortProto, u16)>,
    ) -> Decision {
        let weight = match port {
            Some((PortProto::Udp, _)) => self.config.scan.weight_udp,
            _ => self.config.scan.weight_tcp,
        };
        self.touch(state, now, port, weight, Decision::drop(Reason::Hidden))
    }

    /// The verdict for a packet that could not be parsed.
    pub fn malformed(&self, _error: wire::Error) -> Decision {
        toggle(self.config.policy.malformed, Reason::Malformed)
    }

    /// Records a closed-port touch; calls for a ban on a crossed threshold.
    fn touch(
        &self,
        state: &mut SourceState,
        now: Timestamp,
        port: Option<(PortProto, u16)>,
        weight: u8,
        mut decision: Decision,
    ) -> Decision {
        let Some((proto, number)) = port else {
            return decision;
        };
        let scan = &self.config.scan;
        let Scores { recent, slow } = state.touch_closed(
            now,
            scan.window.get(),
            scan.slow_window.get(),
            proto,
            number,
            weight,
        );
        decision.ban = if recent >= scan.closed_port_threshold {
            Some(BanReason::ClosedPorts(recent))
        } else if slow >= scan.slow_threshold {
            Some(BanReason::SlowScan(slow))
        } else {
            None
        };
        decision
    }

    /// True when `state` completed a TCP handshake within the grace.
    pub fn handshake_recent(&self, state: &SourceState, now: Timestamp) -> bool {
        state.handshake_within(now, self.config.ban.handshake_grace.get())
    }

    /// Calls for a ban at once, unless the source is proven; then the
    /// probe only counts as a touch of a closed port.
    fn ban_or_touch(
        &self,
        state: &mut SourceState,
        now: Timestamp,
        proven: bool,
        reason: BanReason,
        port: Option<(PortProto, u16)>,
        decision: Decision,
    ) -> Decision {
        if proven {
            self.guarded.fetch_add(1, Ordering::Relaxed);
            return self.touch(state, now, port, self.config.scan.weight_stealth, decision);
        }
        Decision { ban: Some(reason), ..decision }
    }

    /// Issues a ban of `kind` on `key` (whose packet came from `ip`),
    /// doubling with each repeat offence, unless the address is never
    /// bannable, or the per-second cap or a full ban table holds it back
    /// (each counted).
    pub fn ban(
        &self,
        shard: &mut Shard,
        (key, ip): (SourceKey, IpAddr),
        now: Timestamp,
        reason: BanReason,
        kind: BanKind,
    ) -> Option<Ban> {
        if !self.bannable(ip) {
            self.unbannable.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(order) = &*self.order.read().unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            order.wait();
        }
        if !self.limiter.allow(ip, reason, now) {
            self.capped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let offences = shard.offences(&key).saturating_add(1);
        // A forgeable ban never doubles: a spoofer that re-sends one packet
        // "from" a chosen address cannot make its ban longer.
        let length = if reason.single_packet() {
            self.config.ban.duration.get()
        } else {
            self.ban_length(offences)
        };
        let ban = Ban { kind, reason, since: now, until: now.saturating_add(length), offences };
        if shard.insert_ban(key, ban, now) {
            Some(ban)
        } else {
            self.full.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Orders the ban cap's decisions with `order` from now on, or no
    /// longer (`None`).
    pub fn order_bans(&self, order: Option<std::sync::Arc<dyn BanOrder>>) {
        *self.order.write().unwrap_or_else(std::sync::PoisonError::into_inner) = order;
    }

    /// Length of the ban for the `offences`-th offence.
    pub fn ban_length(&self, offences: u16) -> Duration {
        let b = &self.config.ban;
        let doublings = u32::from(offences.saturating_sub(1)).min(32);
        b.duration.get().saturating_mul(1u32 << doublings.min(31)).min(b.max_duration.get())
    }
}

/// Addresses kept in plain atomics, read on every inbound packet with no
/// shared write (a lock's reader count would bounce between the workers'
/// CPUs); more than this many go to the locked list.
const LOCAL_SLOTS: usize = 32;

/// This host's own addresses. They change rarely (the daemon re-reads
/// them every `listen_interval` and writes only a changed list); a reader
/// racing a change may miss an address for that moment, which only means
/// one forged packet is judged like any other source's (a ban is checked
/// again under [`Policy::bannable`], through the same list).
#[derive(Debug, Default)]
struct LocalAddrs {
    /// Each address as an IPv6 (IPv4 mapped), split in two halves.
    slots: [(AtomicU64, AtomicU64); LOCAL_SLOTS],
    count: AtomicUsize,
    /// Addresses beyond the slots, with the whole list for comparison.
    rest: RwLock<(Vec<IpAddr>, Vec<IpAddr>)>,
}

impl LocalAddrs {
    fn bits(ip: IpAddr) -> (u64, u64) {
        let v6 = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        let n = u128::from(v6);
        ((n >> 64) as u64, n as u64)
    }

    fn set(&self, mut addrs: Vec<IpAddr>) {
        addrs.sort_unstable();
        addrs.dedup();
        let Ok(mut rest) = self.rest.write() else { return };
        if rest.1 == addrs {
            return;
        }
        let n = addrs.len().min(LOCAL_SLOTS);
        self.count.store(0, Ordering::Release);
        for ((hi, lo), ip) in self.slots.iter().zip(&addrs) {
            let (h, l) = Self::bits(*ip);
            hi.store(h, Ordering::Relaxed);
            lo.store(l, Ordering::Relaxed);
        }
        self.count.store(n, Ordering::Release);
        *rest = (addrs.get(LOCAL_SLOTS..).unwrap_or_default().to_vec(), addrs);
    }

    /// Every address, from the locked list.
    fn all(&self) -> Vec<IpAddr> {
        self.rest.read().map(|r| r.1.clone()).unwrap_or_default()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (h, l) = Self::bits(ip);
        let n = self.count.load(Ordering::Acquire);
        let found = self
            .slots
            .iter()
            .take(n)
            .any(|(hi, lo)| hi.load(Ordering::Relaxed) == h && lo.load(Ordering::Relaxed) == l);
        found
            || (n == LOCAL_SLOTS && self.rest.read().is_ok_and(|r| r.0.binary_search(&ip).is_ok()))
    }
}

/// What `Policy::inbound` needs to know about a packet.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    /// Arrival time.
    pub now: Timestamp,
    /// Its kind.
    pub kind: ProbeKind,
    /// Its signature, if any.
    pub signature: Option<Signature>,
    /// Destination port.
    pub port: Option<(PortProto, u16)>,
    /// Whether it belongs to a known flow.
    pub in_flow: bool,
    /// Whether its source is proven: single-packet signatures do not ban it.
    pub proven: bool,
}

fn toggle(t: Toggle, reason: Reason) -> Decision {
    match t {
        Toggle::Accept => Decision::accept(reason),
        Toggle::Drop => Decision::drop(reason),
    }
}

/// The tool a signature belongs to.
pub fn signature_tool(signature: Signature) -> &'static str {
    match signature {
        Signature::Tool(f) => f.tool(),
        Signature::OsProbe(_) => "nmap",
    }
}

#[cfg(test)]
mod tests;
