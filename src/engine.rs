//! The engine: one call per packet, the same for the NFQUEUE daemon and for
//! replay. It wires the stages together and owns nothing but them.
//!
//! `Engine::handle(now, direction, &mut bytes)`: `wire::parse` →
//! shard lock → flow lookup → `classify` → `track` update → `policy`
//! decision → [`Outcome`]. No I/O, no clock; no allocation but a new table
//! entry while its table is below its cap.
//! `Engine::sweep(now)` expires idle state and reports lifted bans.
//!
//! ```
//! use portcloak::wire::{TcpFlags, craft::Craft};
//! use portcloak::{Config, Direction, Engine, Timestamp, Verdict};
//!
//! let engine = Engine::new(Config::default());
//! // nmap's raw SYN: window 1024, only an MSS option, no DF.
//! let (scanner, server) = ("198.18.1.2".parse()?, "198.18.1.1".parse()?);
//! let mut syn = Craft::tcp(scanner, server, 40_000, 22, TcpFlags::SYN)
//!     .window(1024)
//!     .options(&[2, 4, 5, 180])
//!     .df(false)
//!     .build();
//! let out = engine.handle(Timestamp::from_secs(1), Direction::Inbound, &mut syn);
//! assert_eq!(out.verdict, Verdict::Drop);
//! assert_eq!(out.ban.map(|b| b.reason.to_string()).as_deref(), Some("signature nmap-syn"));
//! # Ok::<(), std::net::AddrParseError>(())
//! ```

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::classify::{self, PortProto, ProbeKind, Signature};
use crate::config::Config;
use crate::disguise::{Answer, Disguise, Edits, Reply};
use crate::gate::{Gate, GateCounters, GateEvent, Gated};
use crate::policy::{BanOrder, Decision, GuardCounters, Inbound, Policy, PortMap, Reason, Verdict};
use crate::time::Timestamp;
use crate::track::{
    Ban, BanKind, BanReason, Evidence, FlowKey, FlowMatch, Part, Shard, SourceKey, Sweep, Table,
    TableLimits, TableStats,
};
use crate::wire::{self, Checksum, PacketView, TcpFlags, Transport};

/// Which way a packet travels, seen from the protected host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To the host.
    Inbound,
    /// From the host.
    Outbound,
}

/// Who checks a packet's checksums, and whether the buffer may be cut short.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChecksumCheck {
    /// Verify here. The buffer is the whole packet, so one shorter than its
    /// IP length says is malformed.
    #[default]
    Verify,
    /// Verify what can be: the buffer may have been cut short (a capture's
    /// snap length), and a packet cut short, whose transport checksum cannot
    /// be computed, is judged on its headers.
    VerifyPartial,
    /// The kernel vouched for them (conntrack marks bad ones INVALID and
    /// the daemon's rules drop those), and the buffer may be cut short by
    /// NFQUEUE's copy range: skip the work.
    Kernel,
}

/// What the caller knows about a packet besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Its direction.
    pub direction: Direction,
    /// Who checks checksums.
    pub checksum: ChecksumCheck,
    /// Routed through this host rather than sent by it: an outbound packet
    /// the persona never rewrites (its TTL was the sender's to set).
    pub forwarded: bool,
    /// The transport checksum may hold only the pseudo-header sum, for the
    /// NIC to complete (the kernel's CHECKSUM_PARTIAL inline; a capture
    /// taken with checksum offload in replay): such a checksum is not bad,
    /// and rewrites of transport bytes leave it alone.
    pub l4_partial: bool,
    /// The kernel vouches for the source (inline: the mark of the `proof`
    /// chain): it completed a handshake with this host, this host answered
    /// it, or this host opened a flow to it. The engine also proves sources
    /// itself, from the handshakes it sees.
    pub proven: bool,
}

impl Meta {
    /// A packet in `direction`, sent or received by this host, whose
    /// checksums the engine verifies.
    pub const fn new(direction: Direction) -> Self {
        Self {
            direction,
            checksum: ChecksumCheck::Verify,
            forwarded: false,
            l4_partial: false,
            proven: false,
        }
    }
}

/// The result of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Accept or drop.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The remote party's source key, when the packet parsed.
    pub source: Option<SourceKey>,
    /// What the packet was, for inbound packets that reached classification.
    pub kind: Option<ProbeKind>,
    /// Its signature, if one matched.
    pub signature: Option<Signature>,
    /// Destination port (inbound) or source port (outbound).
    pub port: Option<(PortProto, u16)>,
    /// A ban this packet caused.
    pub ban: Option<Ban>,
    /// A ban of the source's wider IPv6 network this packet caused (see
    /// `tracking.ipv6_escalate`): the network, and the ban.
    pub escalated: Option<(SourceKey, Ban)>,
    /// True when the engine rewrote the buffer in place (an OS persona's
    /// edits of an outbound packet); the caller must send the new bytes.
    pub rewritten: bool,
    /// A packet to send in the host's name: the persona's answer to the
    /// (dropped) probe.
    pub reply: Option<Reply>,
    /// What the gate of hidden services has to tell: an authorization, or
    /// a refused SPA packet.
    pub gate: Option<GateEvent>,
}

impl Outcome {
    /// The bans this packet caused: its source's, then its network's.
    pub fn bans(&self) -> impl Iterator<Item = (SourceKey, Ban)> {
        let own = self.ban.zip(self.source).map(|(ban, source)| (source, ban));
        own.into_iter().chain(self.escalated)
    }

    fn bare(decision: Decision) -> Self {
        Self {
            verdict: decision.verdict,
            reason: decision.reason,
            source: None,
            kind: None,
            signature: None,
            port: None,
            ban: None,
            escalated: None,
            rewritten: false,
            reply: None,
            gate: None,
        }
    }
}

/// The engine's decision for one packet, with the persona's edits still to
/// apply: see [`Engine::judge`].
#[must_use = "the outcome comes out of `apply`"]
#[derive(Debug)]
pub struct Judged {
    outcome: Outcome,
    edits: Option<Edits>,
}

impl Judged {
    /// True when the persona has edits to apply: [`Judged::apply`] needs
    /// the packet's bytes.
    pub const fn edits(&self) -> bool {
        self.edits.is_some()
    }

    /// Applies the persona's edits, if any, to `packet`, the bytes the
    /// judged view was parsed from, and returns the outcome.
    pub fn apply(self, packet: &mut [u8], l4_partial: bool) -> Outcome {
        let mut out = self.outcome;
        if let Some(edits) = self.edits {
            out.rewritten = edits.apply(packet, l4_partial);
        }
        out
    }
}

/// Why a ban by hand was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// This host's own, unspecified, multicast, broadcast or link-local.
    #[error(
        "this address is never banned (the host's own, unspecified, multicast, broadcast or link-local)"
    )]
    Unbannable,
    /// The ban table is full of active bans.
    #[error("the ban table is full")]
    TableFull,
    /// On the allowlist (a peer's ban).
    #[error("the address is on the allowlist")]
    Allowlisted,
    /// A key these rules do not track (a peer's IPv6 ban of another prefix
    /// length).
    #[error("these rules do not track this key")]
    Untracked,
}

/// Counters of the engine's tables and guards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Table sizes and evictions.
    pub tables: TableStats,
    /// Bans held back by the guards.
    pub guards: GuardCounters,
    /// Hidden services: authorizations and refused SPA packets.
    pub gate: GateCounters,
}

/// The inspection engine. `Sync`: workers share one behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    table: Table,
    disguise: Option<Disguise>,
    gate: Gate,
}

impl Engine {
    /// An engine enforcing `config`, with empty tables.
    pub fn new(config: Config) -> Self {
        let t = &config.tracking;
        let table = Table::new(TableLimits {
            shards: t.shards,
            sources: t.sources,
            flows: t.flows,
            bans: t.bans,
            ipv6_network: t.escalation_prefix().unwrap_or(0),
        });
        let disguise = config.persona().map(|spec| Disguise::new(spec, t));
        let gate = Gate::new(&config, None);
        Self { policy: Policy::new(config), table, disguise, gate }
    }

    /// The same engine, checking single-packet authorization with `key`
    /// (read by the daemon from `spa.key_file`).
    #[must_use]
    pub fn with_spa_key(mut self, key: Vec<u8>) -> Self {
        self.gate = Gate::new(self.config(), Some(key));
        self
    }

    /// The rules in force.
    pub fn config(&self) -> &Config {
        self.policy.config()
    }

    /// The open-port map: the seam for replay's pre-pass and the daemon's
    /// listening-socket reader.
    pub fn ports(&self) -> &PortMap {
        self.policy.ports()
    }

    /// Handles one packet whose checksums the engine verifies.
    pub fn handle(&self, now: Timestamp, direction: Direction, packet: &mut [u8]) -> Outcome {
        self.handle_with(now, Meta::new(direction), packet)
    }

    /// Handles one packet, with what the caller knows about it.
    pub fn handle_with(&self, now: Timestamp, meta: Meta, packet: &mut [u8]) -> Outcome {
        let judged = self.judge(now, meta, wire::parse(packet).as_ref().map_err(|e| *e));
        judged.apply(packet, meta.l4_partial)
    }

    /// Decides for a packet the caller has parsed already (replay, which
    /// reads the view for its own bookkeeping, parses each packet once).
    /// The persona's edits wait in the [`Judged`] until it is applied to
    /// the same bytes.
    pub fn judge(
        &self,
        now: Timestamp,
        meta: Meta,
        parsed: Result<&PacketView<'_>, wire::Error>,
    ) -> Judged {
        let (outcome, edits) = match parsed {
            Ok(view) => match meta.direction {
                Direction::Inbound => (self.inbound(now, meta, view), None),
                Direction::Outbound => self.outbound(now, meta, view),
            },
            Err(e) => match meta.direction {
                Direction::Inbound => (Outcome::bare(self.policy.malformed(e)), None),
                Direction::Outbound => (Outcome::bare(accept(Reason::Outbound)), None),
            },
        };
        Judged { outcome, edits }
    }

    fn key(&self, ip: IpAddr) -> SourceKey {
        SourceKey::new(ip, self.config().tracking.ipv6_prefix)
    }

    /// The wider IPv6 network of `key` that escalation bans, when it is on.
    fn network(&self, key: SourceKey) -> Option<SourceKey> {
        let len = self.config().tracking.escalation_prefix()?;
        key.is_ipv6().then(|| key.widen(len))
    }

    /// The ban that holds for `key`: its own, or else its network's, which
    /// a proven source passes (`proven`, or a handshake within the grace).
    fn ban_on(&self, shard: &Shard, key: SourceKey, proven: bool, now: Timestamp) -> Option<Ban> {
        shard.active_ban(&key, now).or_else(|| {
            let wide = shard.active_ban(&self.network(key)?, now)?;
            let vouched = proven
                || shard.peek_source(&key).is_some_and(|s| self.policy.handshake_recent(s, now));
            (!vouched).then_some(wide)
        })
    }

    /// Notes that `key` (unproven) showed scan evidence, and bans its wider
    /// network when enough of the network's sources did within the slow
    /// window. Never a network that holds one of this host's addresses.
    fn escalate(
        &self,
        shard: &mut Shard,
        (key, src): (SourceKey, IpAddr),
        now: Timestamp,
    ) -> Option<(SourceKey, Ban)> {
        let network = self.network(key)?;
        let horizon = self.config().scan.slow_window.get();
        let suspects = shard.suspect(network, key, now, horizon);
        if suspects < u32::from(self.config().tracking.ipv6_escalate)
            || shard.active_ban(&network, now).is_some()
            || self.policy.holds_local(network)
        {
            return None;
        }
        let reason = BanReason::SpreadScan(suspects);
        let ban = self.policy.ban(shard, (network, src), now, reason, BanKind::Ban)?;
        Some((network, ban))
    }

    fn inbound(&self, now: Timestamp, meta: Meta, view: &PacketView<'_>) -> Outcome {
        let src = view.ip.src;
        let key = self.key(src);
        let mut out = Outcome { source: Some(key), ..Outcome::bare(accept(Reason::Flow)) };
        // A checksum left for the NIC is whole when the caller says the
        // packet's transport checksum may be partial (the kernel's flag
        // inline; replay, for a capture taken with checksum offload).
        let bad = match view.checksum {
            Checksum::Bad => true,
            Checksum::Partial => !meta.l4_partial,
            Checksum::Valid | Checksum::Unverified => false,
        };
        if meta.checksum != ChecksumCheck::Kernel && bad {
            return Outcome { verdict: Verdict::Drop, reason: Reason::BadChecksum, ..out };
        }
        if meta.checksum == ChecksumCheck::Verify && view.truncated {
            let d = self.policy.malformed(wire::Error::Ip);
            return Outcome { verdict: d.verdict, reason: d.reason, ..out };
        }
        let lists = &self.config().lists;
        if lists.denies(src) {
            return Outcome { verdict: Verdict::Drop, reason: Reason::Denylisted, ..out };
        }
        if self.policy.is_local(src) {
            return Outcome { verdict: Verdict::Drop, reason: Reason::Martian, ..out };
        }
        let flow_key = FlowKey::inbound(view);
        let allowed = lists.allows(src);
        let mut shard = self.table.lock(&key);
        let idle = self.config().tracking.flow_idle.get();
        let ban = self.ban_on(&shard, key, meta.proven, now).filter(|_| !allowed);
        if let Some(ban) = ban {
            let known = flow_key.and_then(|fk| shard.peek_flow(&fk, now, idle));
            // A flow this host opened is never cut off by a ban.
            let ours = known.is_some_and(|f| !f.inbound);
            let in_flow = known.is_some();
            let probe = classify::classify(view, in_flow);
            let proven_pair = || {
                probe.port.is_some_and(|(proto, port)| {
                    shard.peek_source(&key).is_some_and(|s| s.proven.contains(proto, port))
                })
            };
            let passes = ours || (ban.kind == BanKind::Quarantine && (in_flow || proven_pair()));
            if !passes {
                // Classified for reports only: no state of the source changes.
                drop(shard);
                let reason = match ban.kind {
                    BanKind::Ban => Reason::Banned,
                    BanKind::Quarantine => Reason::Quarantined,
                };
                return Outcome {
                    verdict: Verdict::Drop,
                    reason,
                    kind: Some(probe.kind),
                    signature: probe.signature,
                    port: probe.port,
                    ..out
                };
            }
        }
        let flow = flow_key.map_or(FlowMatch::None, |fk| shard.follow_inbound(fk, view, now, idle));
        let in_flow = flow != FlowMatch::None;
        let probe = classify::classify(view, in_flow);
        out.kind = Some(probe.kind);
        out.signature = probe.signature;
        out.port = probe.port;
        if allowed {
            shard.open_inbound(flow_key, view, now);
            return Outcome { reason: Reason::Allowlisted, ..out };
        }
        let state = shard.source(key, now);
        if flow == FlowMatch::Handshake {
            state.handshake(now);
            if let Some((proto, port)) = probe.port {
                state.proven.add(proto, port);
            }
        }
        let proven = meta.proven || self.policy.handshake_recent(state, now);
        let ctx = Inbound {
            now,
            kind: probe.kind,
            signature: probe.signature,
            port: probe.port,
            in_flow,
            proven,
        };
        state.seen(now, probe.kind);
        let (gated, event) = self.gate.check(now, view, key, probe.kind, in_flow);
        out.gate = event;
        let mut decision = match gated {
            Gated::Pass => self.policy.inbound(ctx, state),
            Gated::Drop(reason) => Decision { verdict: Verdict::Drop, reason, ban: None },
            Gated::Closed => self.policy.hidden(state, now, probe.port),
            Gated::Open => accept(Reason::Authorized),
        };
        if decision.verdict == Verdict::Accept
            && let Some(disguise) = &self.disguise
            && let Answer::Drop(reply) = disguise.inbound(view, probe.signature, key)
        {
            decision = Decision { verdict: Verdict::Drop, reason: Reason::Persona, ban: None };
            out.reply = reply;
        }
        let horizon = self.config().scan.slow_window.get();
        let evidence = state.evidence(now, horizon);
        let suspect = !proven && state.closed_score(now, horizon) >= self.policy.suspect_score();
        shard.protect(key, evidence, now, horizon);
        let opens = matches!(probe.kind, ProbeKind::TcpSyn | ProbeKind::Udp | ProbeKind::Sctp);
        if decision.verdict == Verdict::Accept && opens {
            shard.open_inbound(flow_key, view, now);
        }
        // A quarantined source that got this far sent a proven pair's
        // packet: it is not banned again.
        let kind = if proven { BanKind::Quarantine } else { BanKind::Ban };
        let escalated = if suspect && ban.is_none() {
            self.escalate(&mut shard, (key, src), now)
        } else {
            None
        };
        let ban = decision
            .ban
            .filter(|_| ban.is_none())
            .and_then(|reason| self.policy.ban(&mut shard, (key, src), now, reason, kind));
        Outcome { verdict: decision.verdict, reason: decision.reason, ban, escalated, ..out }
    }

    fn outbound(
        &self,
        now: Timestamp,
        meta: Meta,
        view: &PacketView<'_>,
    ) -> (Outcome, Option<Edits>) {
        let key = self.key(view.ip.dst);
        let mut out = Outcome { source: Some(key), ..Outcome::bare(accept(Reason::Outbound)) };
        let mut shard = self.table.lock(&key);
        let banned = self.ban_on(&shard, key, false, now).is_some_and(|b| b.kind == BanKind::Ban);
        if banned && !self.config().lists.allows(view.ip.dst) && !self.ours(&shard, view, now) {
            return (Outcome { verdict: Verdict::Drop, reason: Reason::Banned, ..out }, None);
        }
        out.port = self.track_outbound_flow(&mut shard, view, now);
        drop(shard);
        let edits = self.disguise.as_ref().and_then(|d| d.outbound(view, key, meta.forwarded));
        (out, edits)
    }

    /// True when an outbound packet belongs to a flow this host opens or
    /// opened: a ban never cuts those off.
    fn ours(&self, shard: &Shard, view: &PacketView<'_>, now: Timestamp) -> bool {
        let idle = self.config().tracking.flow_idle.get();
        let known = FlowKey::outbound(view).and_then(|fk| shard.peek_flow(&fk, now, idle));
        match (known, view.transport) {
            (Some(flow), _) => !flow.inbound,
            (None, Transport::Tcp(t)) => {
                t.flags.classic() & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN
            }
            (None, Transport::Udp(_)) => true,
            _ => false,
        }
    }

    /// Follows a connection or datagram flow this host answers or starts,
    /// learns the ports it answers from, and proves a peer it answered;
    /// returns the local port.
    fn track_outbound_flow(
        &self,
        shard: &mut Shard,
        view: &PacketView<'_>,
        now: Timestamp,
    ) -> Option<(PortProto, u16)> {
        let fk = FlowKey::outbound(view)?;
        let idle = self.config().tracking.flow_idle.get();
        let answered = shard.follow_outbound(fk, view, now, idle);
        match view.transport {
            Transport::Tcp(tcp) => {
                let f = tcp.flags;
                if f.has(TcpFlags::SYN | TcpFlags::ACK)
                    && f.classic() & (TcpFlags::RST | TcpFlags::FIN) == 0
                {
                    self.ports().learn(PortProto::Tcp, tcp.src_port);
                }
                Some((PortProto::Tcp, tcp.src_port))
            }
            Transport::Udp(udp) => {
                if answered.datagram {
                    self.ports().learn(PortProto::Udp, udp.src_port);
                    // This host answered: the pair is proven.
                    shard
                        .source(self.key(view.ip.dst), now)
                        .proven
                        .add(PortProto::Udp, udp.src_port);
                }
                Some((PortProto::Udp, udp.src_port))
            }
            _ => None,
        }
    }

    /// Expires idle flows and sources and ban records past their memory, and
    /// reports the bans that ended since the last sweep.
    pub fn sweep(&self, now: Timestamp) -> Sweep {
        self.sweep_part(now, Part::WHOLE)
    }

    /// [`Engine::sweep`] over the table shards of `part` alone: for a
    /// thread that owns those shards' sources (see [`Engine::shard_of`]).
    pub fn sweep_part(&self, now: Timestamp, part: Part) -> Sweep {
        let c = self.config();
        let source_idle =
            c.scan.slow_window.get().max(c.ban.handshake_grace.get()).max(c.scan.window.get());
        let times = (c.tracking.flow_idle.get(), source_idle, c.ban.remember.get());
        self.table.sweep_part(now, times, part)
    }

    /// The table shard that holds the state of remote address `ip`: its
    /// source's, its flows', its bans' and its network's. Below
    /// [`Engine::shards`].
    pub fn shard_of(&self, ip: IpAddr) -> usize {
        self.table.shard_of(&self.key(ip))
    }

    /// The number of table shards.
    pub fn shards(&self) -> usize {
        self.table.shards()
    }

    /// True when some state outside the table shards changes with each
    /// source's packets: an OS persona's per-peer table, or the gate's
    /// per-source one (with hidden ports). Threads that each own some
    /// shards then cannot judge a stream as one thread would.
    pub fn shares_state_across_shards(&self) -> bool {
        self.disguise.is_some() || self.gate.table().1 > 0
    }

    /// Orders the ban cap's decisions across threads (see [`BanOrder`]),
    /// or no longer (`None`).
    pub fn order_bans(&self, order: Option<std::sync::Arc<dyn BanOrder>>) {
        self.policy.order_bans(order);
    }

    /// The ban in force on exactly `key`, if any.
    pub fn active_ban(&self, key: SourceKey, now: Timestamp) -> Option<Ban> {
        self.table.lock(&key).active_ban(&key, now)
    }

    /// Every active ban, sorted by source.
    pub fn bans(&self, now: Timestamp) -> Vec<(SourceKey, Ban)> {
        self.table.active_bans(now)
    }

    /// This host's own addresses: never banned, and inbound packets that
    /// claim one as their source are dropped (`martian`).
    pub fn set_local(&self, addrs: Vec<IpAddr>) {
        self.policy.set_local(addrs);
    }

    /// Wall time minus the time passed in, in microseconds: how far the
    /// caller's clock is from the dates SPA packets carry. Zero (the
    /// default) when the caller passes wall time, as replay does; the
    /// daemon, on a monotonic clock, refreshes it every second.
    pub fn set_wall_offset(&self, micros: i64) {
        self.gate.set_wall_offset(micros);
    }

    /// Bans `ip` by hand for `length`.
    pub fn ban(&self, now: Timestamp, ip: IpAddr, length: Duration) -> Result<Ban, Refused> {
        if !self.policy.bannable(ip) {
            return Err(Refused::Unbannable);
        }
        let key = self.key(ip);
        let mut shard = self.table.lock(&key);
        let offences = shard.offences(&key).saturating_add(1);
        let ban = Ban {
            kind: BanKind::Ban,
            reason: BanReason::Manual,
            since: now,
            until: now.saturating_add(length),
            offences,
        };
        if shard.insert_ban(key, ban, now) { Ok(ban) } else { Err(Refused::TableFull) }
    }

    /// Applies a ban that another host of the fleet started on `key`,
    /// until `until`. Local guards win: an allowlisted or unbannable
    /// address is refused, and a source this host has proven (`proven`,
    /// from the kernel's proof sets, or a handshake the engine saw within
    /// the grace, or a proven pair) is quarantined, never banned, so a
    /// forged scan at one host cannot cut off another host's clients.
    /// A ban here that lasts as long already is left alone (`Ok(None)`).
    pub fn peer_ban(
        &self,
        now: Timestamp,
        key: SourceKey,
        reason: BanReason,
        until: Timestamp,
        proven: bool,
    ) -> Result<Option<Ban>, Refused> {
        let ip = key.ip();
        if self.config().lists.allows(ip) {
            return Err(Refused::Allowlisted);
        }
        if !self.policy.bannable(ip) {
            return Err(Refused::Unbannable);
        }
        if !self.tracks(key) {
            return Err(Refused::Untracked);
        }
        let mut shard = self.table.lock(&key);
        if shard.active_ban(&key, now).is_some_and(|b| b.until >= until) {
            return Ok(None);
        }
        let vouched = proven
            || shard
                .peek_source(&key)
                .is_some_and(|s| self.policy.handshake_recent(s, now) || !s.proven.is_empty());
        let kind = if vouched { BanKind::Quarantine } else { BanKind::Ban };
        let offences = shard.offences(&key).saturating_add(1);
        let ban = Ban { kind, reason, since: now, until, offences };
        if shard.insert_ban(key, ban, now) { Ok(Some(ban)) } else { Err(Refused::TableFull) }
    }

    /// Bans `key` for a sweep across the fleet's hosts (`hosts` of them),
    /// for the ban length of its offence, with the same guards as
    /// [`Engine::peer_ban`].
    pub fn sweep_ban(
        &self,
        now: Timestamp,
        key: SourceKey,
        hosts: u32,
        proven: bool,
    ) -> Result<Option<Ban>, Refused> {
        let offences = self.table.lock(&key).offences(&key).saturating_add(1);
        let until = now.saturating_add(self.policy.ban_length(offences));
        self.peer_ban(now, key, BanReason::FleetSweep(hosts), until, proven)
    }

    /// Puts back a ban saved by an earlier run, with its reason and offence
    /// count. Returns false when the ban table is full.
    pub fn restore(&self, now: Timestamp, source: SourceKey, ban: Ban) -> bool {
        self.table.lock(&source).insert_ban(source, ban, now)
    }

    /// Lifts the bans that stop `ip`, its own and its network's (see
    /// `tracking.ipv6_escalate`), and forgets their offences. Returns the
    /// bans it lifted.
    pub fn unban(&self, ip: IpAddr) -> Vec<(SourceKey, Ban)> {
        let key = self.key(ip);
        let keys = std::iter::once(key).chain(self.network(key));
        keys.filter_map(|k| Some((k, self.lift(k)?))).collect()
    }

    /// Lifts the ban on exactly `key` and forgets its offences.
    pub fn lift(&self, key: SourceKey) -> Option<Ban> {
        self.table.lock(&key).remove_ban(&key)
    }

    /// The source keys these rules track or ban: IPv4 addresses, IPv6
    /// `ipv6_prefix` networks, and the `ipv6_escalate_prefix` networks
    /// escalation bans while it is on.
    pub fn tracks(&self, key: SourceKey) -> bool {
        let t = &self.config().tracking;
        !key.is_ipv6()
            || key.prefix_len() == t.ipv6_prefix
            || t.escalation_prefix() == Some(key.prefix_len())
    }

    /// Table sizes and counters.
    pub fn stats(&self) -> EngineStats {
        let (gate_states, gate_capacity) = self.gate.table();
        let (peers, peer_capacity) = self.disguise.as_ref().map_or((0, 0), Disguise::table);
        EngineStats {
            tables: TableStats {
                gate_states,
                gate_capacity,
                peers,
                peer_capacity,
                ..self.table.stats()
            },
            guards: self.policy.guard_counters(),
            gate: self.gate.counters(),
        }
    }

    /// The gate of hidden services.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

const fn accept(reason: Reason) -> Decision {
    Decision { verdict: Verdict::Accept, reason, ban: None }
}

#[cfg(test)]
mod tests;
