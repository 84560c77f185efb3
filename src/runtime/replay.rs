//! Offline replay: a capture taken at the protected host, driven through the
//! engine with the capture's own timestamps.
//!
//! A capture records what the host really did without portcloak. To show
//! what portcloak would have changed, replay:
//!
//! 1. surveys the capture once before replaying it, to find the host's own
//!    addresses (`--local`, or the senders of SYN-ACKs, else the address
//!    sent to the most distinct ports, else the busiest destination), so
//!    each packet gets a direction, and the ports the host answered on (a
//!    SYN answered by a SYN-ACK; a datagram answered by a datagram), which
//!    are open unless `services.learn_from_replies` is off;
//! 2. drives every frame through the engine, in capture order, with the
//!    frame's own timestamp and a direction from the survey;
//! 3. skips every reply whose request portcloak dropped: inline, the host
//!    would never have seen the request, so it would never have answered.
//!    Replies that do go out to a source that ends up banned are counted as
//!    "answered probes": what the scanner learned before its ban.
//!
//! Memory is bounded whatever the capture holds: the engine's tables by
//! their caps, and replay's own bookkeeping by [`REPORT_BUDGET`]. The
//! report keeps [`REPORTED`] sources in full, banned ones first and then
//! the busiest (by order of magnitude of packets, the oldest going first
//! among equals), and counts the rest in [`Report::others`]; the survey
//! remembers the first [`SURVEY_HOSTS`] addresses of each kind.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use lru::LruCache;
use serde::Serialize;

use crate::classify::{PortProto, ProbeKind};
use crate::config::Cidr;
use crate::engine::{ChecksumCheck, Direction, Engine, EngineStats, Meta};
use crate::event::Event;
use crate::io::pcap::{PcapReader, SourceError};
use crate::policy::{Reason, Verdict};
use crate::time::Timestamp;
use crate::track::{Ban, BanKind, BanReason, SourceKey};
use crate::wire::{self, LinkType, PacketView, TcpFlags, Transport};

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The host's own networks; inferred from each capture when empty.
    pub local: Vec<Cidr>,
    /// Write one JSON line per event to the event writer.
    pub json: bool,
    /// Show a progress bar on stderr for large inputs (only on a terminal).
    pub progress: bool,
}

/// What happened to one source over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// Inbound packets from it.
    pub packets: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Inbound packets per probe kind.
    pub kinds: BTreeMap<ProbeKind, u64>,
    /// Signatures it matched.
    pub signatures: BTreeSet<String>,
    /// The tools those signatures belong to.
    pub tools: BTreeSet<&'static str>,
    /// Distinct (protocol, port) pairs it sent new connections or probes to.
    pub ports: usize,
    /// `ports` is a lower bound: the report's budget of remembered ports
    /// ([`PORT_ENTRIES`] over all sources) ran out.
    pub ports_capped: bool,
    /// Replies the host sent it that portcloak let out.
    pub answered: u64,
    /// Its first ban in this run.
    pub ban: Option<Ban>,
    /// Inbound packets accepted while it was banned (should stay 0).
    pub accepted_while_banned: u64,
}

/// Totals of a replay run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Frames read.
    pub frames: u64,
    /// Frames that carried no IP packet (ARP, unknown link types).
    pub not_ip: u64,
    /// Inbound packets handled.
    pub inbound: u64,
    /// Outbound packets handled.
    pub outbound: u64,
    /// Outbound replies skipped because their request was dropped.
    pub replies_suppressed: u64,
    /// Verdict counts over handled packets.
    pub accepted: u64,
    /// Dropped packets.
    pub dropped: u64,
    /// Drops by reason.
    pub drops: BTreeMap<Reason, u64>,
    /// Inbound packets per probe kind, over all sources.
    pub kinds: BTreeMap<ProbeKind, u64>,
    /// Sources reported in full, by key: at most [`REPORTED`].
    pub sources: BTreeMap<SourceKey, SourceReport>,
    /// What the sources left out of `sources` did, in total.
    pub others: Others,
    /// Bans issued, in order: the first [`BANS_LISTED`].
    pub bans: Vec<(SourceKey, Ban)>,
    /// Bans issued after those.
    pub bans_unlisted: u64,
    /// First and last capture time.
    pub span: Option<(Timestamp, Timestamp)>,
    /// The local addresses used for direction.
    pub local: Vec<String>,
    /// The engine's tables and ban guards at the end of the run.
    pub engine: EngineStats,
    /// This process's peak resident memory at the end of the run, in bytes
    /// (0 where `/proc` does not say).
    pub memory_peak: u64,
}

impl Report {
    /// The report of one source, if it sent anything.
    pub fn source(&self, ip: IpAddr, engine: &Engine) -> Option<&SourceReport> {
        self.sources.get(&SourceKey::new(ip, engine.config().tracking.ipv6_prefix))
    }
}

/// The sources left out of a report, counted. One that left and came back
/// is counted once for each time it left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Others {
    /// Source reports folded in here.
    pub sources: u64,
    /// Inbound packets from them.
    pub packets: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Replies the host sent them that portcloak let out.
    pub answered: u64,
    /// Of those sources, banned.
    pub banned: u64,
}

/// Sources a report keeps in full.
pub const REPORTED: usize = 1 << 14;
/// Distinct (protocol, port) pairs remembered over all reported sources.
pub const PORT_ENTRIES: usize = 1 << 20;
/// Bans a report lists one by one.
pub const BANS_LISTED: usize = 1 << 16;
/// Addresses the survey remembers of each kind (SYN-ACK senders, UDP
/// answerers, destinations).
pub const SURVEY_HOSTS: usize = 256;
/// Request tuples remembered, to suppress replies to dropped requests.
const TUPLES: usize = 1 << 18;
/// Datagrams the survey remembers, to find the ones answered.
const DATAGRAMS: usize = 1 << 16;

/// An upper bound on the memory replay itself takes beyond the engine's
/// tables ([`crate::config::Daemon::table_budget`]), whatever the capture
/// holds: the reported sources with their ports, the listed bans, the
/// remembered tuples and datagrams, the survey's port maps, and buffers.
/// Measured by `tests/scale.rs` with two million sources.
pub const REPORT_BUDGET: u64 = 128 << 20;

const MIB: f64 = (1u64 << 20) as f64;

/// A 5-tuple as the inbound request carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
}

/// Replays `files` in order through `engine`. JSON events go to `events`.
pub fn run(
    engine: &Engine,
    files: &[PathBuf],
    options: &Options,
    events: &mut dyn Write,
) -> Result<Report, ReplayError> {
    let mut report = Report::default();
    // The requests portcloak dropped; one accepted later is taken out.
    let mut dropped_requests: LruCache<Tuple, ()> =
        LruCache::new(NonZeroUsize::new(TUPLES).unwrap_or(NonZeroUsize::MIN));
    let mut sources = Sources::default();
    for path in files {
        let survey = Survey::of(path)?;
        let local = if options.local.is_empty() { survey.local() } else { options.local.clone() };
        report.local.extend(local.iter().map(ToString::to_string));
        survey.learn_ports(engine, &local);
        drop(survey);
        let mut reader = PcapReader::open(path)?;
        let progress = progress_bar(path, options.progress);
        let mut buf = Vec::with_capacity(2048);
        let mut next_sweep = Timestamp::ZERO;
        while let Some(frame) = reader.next_frame()? {
            report.frames += 1;
            let now = frame.ts;
            report.span = Some(report.span.map_or((now, now), |(a, b)| (a.min(now), b.max(now))));
            let Some(ip) = ip_bytes(frame.linktype, frame.data) else {
                report.not_ip += 1;
                continue;
            };
            buf.clear();
            buf.extend_from_slice(ip);
            if now >= next_sweep {
                for (source, _) in engine.sweep(now).lifted {
                    if options.json {
                        write_event(events, &Event::unban(now, source))?;
                    }
                }
                next_sweep = now.saturating_add(std::time::Duration::from_secs(1));
            }
            let Some((src, dst)) = wire::addresses(&buf) else {
                report.not_ip += 1;
                continue;
            };
            let direction = if local.iter().any(|c| c.contains(src)) {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            let (request, reply) = tuples(&buf, direction);
            if direction == Direction::Outbound
                && reply.is_some_and(|t| dropped_requests.contains(&t))
            {
                report.replies_suppressed += 1;
                continue;
            }
            // A frame cut short by the snap length cannot have its transport
            // checksum verified; one captured whole must be consistent.
            let checksum = if frame.data.len() < frame.orig_len {
                ChecksumCheck::VerifyPartial
            } else {
                ChecksumCheck::Verify
            };
            let outcome =
                engine.handle_with(now, Meta { checksum, ..Meta::new(direction) }, &mut buf);
            let dropped = outcome.verdict == Verdict::Drop;
            if let Some(t) = request {
                if dropped {
                    dropped_requests.put(t, ());
                } else {
                    dropped_requests.pop(&t);
                }
            }
            match direction {
                Direction::Inbound => report.inbound += 1,
                Direction::Outbound => report.outbound += 1,
            }
            if dropped {
                report.dropped += 1;
                *report.drops.entry(outcome.reason).or_default() += 1;
            } else {
                report.accepted += 1;
            }
            if direction == Direction::Inbound {
                if let Some(kind) = outcome.kind {
                    *report.kinds.entry(kind).or_default() += 1;
                }
            }
            if let Some(key) = outcome.source {
                sources.update(key, |entry| {
                    let mut port = None;
                    match direction {
                        Direction::Inbound => {
                            entry.packets += 1;
                            entry.dropped += u64::from(dropped);
                            // A quarantine lets the pairs it proved through.
                            let banned = entry
                                .ban
                                .is_some_and(|b| b.is_active(now) && b.kind == BanKind::Ban);
                            entry.accepted_while_banned += u64::from(banned && !dropped);
                            if let Some(kind) = outcome.kind {
                                *entry.kinds.entry(kind).or_default() += 1;
                                if is_probe_kind(kind) {
                                    port = outcome.port;
                                }
                            }
                            if let Some(sig) = outcome.signature {
                                entry.signatures.insert(sig.to_string());
                                entry.tools.insert(crate::policy::signature_tool(sig));
                            }
                        }
                        Direction::Outbound => {
                            entry.answered += u64::from(!dropped && reply.is_some());
                        }
                    }
                    if let Some(ban) = outcome.ban {
                        entry.ban.get_or_insert(ban);
                    }
                    port
                });
                let own = outcome.ban.map(|ban| (key, ban));
                for ban in own.into_iter().chain(outcome.escalated) {
                    if report.bans.len() < BANS_LISTED {
                        report.bans.push(ban);
                    } else {
                        report.bans_unlisted += 1;
                    }
                }
            }
            if options.json {
                for event in Event::from_outcome(now, direction, Some((src, dst)), &outcome) {
                    write_event(events, &event)?;
                }
            }
            if let Some(bar) = &progress {
                if report.frames % 4096 == 0 {
                    bar.set_position(reader.bytes_read());
                }
            }
        }
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
    }
    report.engine = engine.stats();
    report.memory_peak = super::memory().1;
    (report.sources, report.others) = sources.into_report();
    Ok(report)
}

/// The sources a report keeps in full, bounded by [`REPORTED`] and, for
/// their ports, [`PORT_ENTRIES`]. When full, a new source takes the place of
/// the lowest-ranked one if it ranks at least as high, and is counted in
/// [`Others`] otherwise; so is the one it displaces.
#[derive(Default)]
struct Sources {
    slots: HashMap<SourceKey, Slot>,
    /// Every slot by (rank, when it took that rank): the first goes first.
    order: BTreeSet<(u8, u64, SourceKey)>,
    /// Bumped for every rank taken.
    clock: u64,
    /// Ports remembered over all slots.
    ports: usize,
    others: Others,
}

#[derive(Default)]
struct Slot {
    report: SourceReport,
    ports: HashSet<(PortProto, u16)>,
    rank: u8,
    since: u64,
}

impl Slot {
    /// Banned sources rank above all others, then by order of magnitude of
    /// packets (a source's rank changes about 30 times in its life at most).
    fn rank(&self) -> u8 {
        let magnitude = 64 - self.report.packets.leading_zeros() as u8;
        (u8::from(self.report.ban.is_some()) << 7) | magnitude
    }

    /// Adds `port` to the ports this source probed while fewer than
    /// [`PORT_ENTRIES`] are `remembered` over all slots; past that, marks
    /// its count a lower bound.
    fn remember(&mut self, port: Option<(PortProto, u16)>, remembered: &mut usize) {
        let Some(port) = port else { return };
        if self.ports.contains(&port) {
            return;
        }
        if *remembered < PORT_ENTRIES {
            self.ports.insert(port);
            *remembered += 1;
        } else {
            self.report.ports_capped = true;
        }
    }
}

impl Sources {
    /// Applies `f` to `key`'s report, making one if needed; `f` returns a
    /// port the source probed.
    fn update(
        &mut self,
        key: SourceKey,
        f: impl FnOnce(&mut SourceReport) -> Option<(PortProto, u16)>,
    ) {
        if let Some(slot) = self.slots.get_mut(&key) {
            let port = f(&mut slot.report);
            slot.remember(port, &mut self.ports);
            let rank = slot.rank();
            if rank != slot.rank {
                self.order.remove(&(slot.rank, slot.since, key));
                self.clock += 1;
                (slot.rank, slot.since) = (rank, self.clock);
                self.order.insert((rank, self.clock, key));
            }
            return;
        }
        let mut slot = Slot::default();
        let port = f(&mut slot.report);
        slot.rank = slot.rank();
        if self.slots.len() >= REPORTED {
            let Some(&lowest) = self.order.first() else { return };
            if lowest.0 > slot.rank {
                self.fold(&slot.report);
                return;
            }
            self.order.remove(&lowest);
            if let Some(out) = self.slots.remove(&lowest.2) {
                self.ports -= out.ports.len();
                self.fold(&out.report);
            }
        }
        slot.remember(port, &mut self.ports);
        self.clock += 1;
        slot.since = self.clock;
        self.order.insert((slot.rank, slot.since, key));
        self.slots.insert(key, slot);
    }

    fn fold(&mut self, report: &SourceReport) {
        let o = &mut self.others;
        o.sources += 1;
        o.packets += report.packets;
        o.dropped += report.dropped;
        o.answered += report.answered;
        o.banned += u64::from(report.ban.is_some());
    }

    fn into_report(self) -> (BTreeMap<SourceKey, SourceReport>, Others) {
        let sources = self
            .slots
            .into_iter()
            .map(|(key, slot)| (key, SourceReport { ports: slot.ports.len(), ..slot.report }))
            .collect();
        (sources, self.others)
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A capture could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Events could not be written.
    #[error("cannot write events: {0}")]
    Write(#[from] std::io::Error),
}

fn write_event(out: &mut dyn Write, event: &Event) -> Result<(), ReplayError> {
    serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn is_probe_kind(kind: ProbeKind) -> bool {
    !matches!(
        kind,
        ProbeKind::TcpFlow | ProbeKind::UdpFlow | ProbeKind::IcmpOther | ProbeKind::Fragment
    )
}

fn progress_bar(path: &Path, wanted: bool) -> Option<ProgressBar> {
    const LARGE: u64 = 16 << 20;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    // Off when either output is piped: a bar belongs to a person watching.
    if !wanted
        || size < LARGE
        || !std::io::stderr().is_terminal()
        || !std::io::stdout().is_terminal()
    {
        return None;
    }
    let bar = ProgressBar::new(size);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
        .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(path.display().to_string());
    Some(bar)
}

/// The IP packet inside a captured frame.
fn ip_bytes(linktype: u32, frame: &[u8]) -> Option<&[u8]> {
    let link = LinkType::from_pcap(linktype)?;
    frame.get(wire::link::ip_offset(link, frame)?..)
}

/// For an inbound packet, the request tuple it opens; for an outbound one,
/// the request tuple it answers, if it is a reply.
fn tuples(bytes: &[u8], direction: Direction) -> (Option<Tuple>, Option<Tuple>) {
    let Ok(view) = wire::parse(bytes) else {
        return (None, None);
    };
    match direction {
        Direction::Inbound => (request_tuple(&view), None),
        Direction::Outbound => (None, reply_tuple(&view)),
    }
}

fn request_tuple(view: &PacketView<'_>) -> Option<Tuple> {
    let (sport, dport) = match view.transport {
        Transport::Tcp(t) => (t.src_port, t.dst_port),
        Transport::Udp(u) => (u.src_port, u.dst_port),
        Transport::Sctp { src_port, dst_port } => (src_port, dst_port),
        Transport::Icmp(i) if is_icmp_request(i.v6, i.kind) => (i.ident(), 0),
        _ => return None,
    };
    Some(Tuple { src: view.ip.src, dst: view.ip.dst, protocol: view.ip.protocol, sport, dport })
}

fn is_icmp_request(v6: bool, kind: u8) -> bool {
    if v6 { kind == 128 } else { matches!(kind, 8 | 13 | 17) }
}

/// The request a reply answers: reversed ports for TCP and UDP, the quoted
/// packet for ICMP errors, the identifier for ICMP replies.
fn reply_tuple(view: &PacketView<'_>) -> Option<Tuple> {
    let (src, dst, protocol) = (view.ip.dst, view.ip.src, view.ip.protocol);
    match view.transport {
        Transport::Tcp(t) => {
            let reply = t.flags.has(TcpFlags::SYN | TcpFlags::ACK) || t.flags.has(TcpFlags::RST);
            reply.then_some(Tuple { src, dst, protocol, sport: t.dst_port, dport: t.src_port })
        }
        Transport::Udp(u) => {
            Some(Tuple { src, dst, protocol, sport: u.dst_port, dport: u.src_port })
        }
        Transport::Sctp { src_port, dst_port } => {
            Some(Tuple { src, dst, protocol, sport: dst_port, dport: src_port })
        }
        Transport::Icmp(i) => {
            if let Some(q) = wire::quoted(&i) {
                return Some(Tuple {
                    src: q.src,
                    dst: q.dst,
                    protocol: q.protocol,
                    sport: q.src_port,
                    dport: q.dst_port,
                });
            }
            let is_reply = if i.v6 { i.kind == 129 } else { matches!(i.kind, 0 | 14 | 18) };
            let request_proto = protocol;
            is_reply.then_some(Tuple {
                src,
                dst,
                protocol: request_proto,
                sport: i.ident(),
                dport: 0,
            })
        }
        _ => None,
    }
}

/// What one pass over a capture, before replaying it, learns. Each map
/// remembers the first [`SURVEY_HOSTS`] addresses.
#[derive(Debug, Default)]
struct Survey {
    /// Senders of SYN-ACKs, with the ports they sent them from.
    syn_ack: HashMap<IpAddr, PortBits>,
    /// Senders of UDP datagrams that answered one, with their ports.
    udp_answers: HashMap<IpAddr, PortBits>,
    /// Distinct TCP and UDP ports each address was sent to.
    ports_to: HashMap<IpAddr, [PortBits; 2]>,
    /// Packets each address received.
    received: HashMap<IpAddr, u64>,
}

/// A set of ports, as 8 KiB of bits.
#[derive(Clone, Debug)]
struct PortBits(Box<[u64; 1024]>);

impl Default for PortBits {
    fn default() -> Self {
        Self(Box::new([0; 1024]))
    }
}

impl PortBits {
    fn insert(&mut self, port: u16) {
        if let Some(word) = self.0.get_mut(usize::from(port >> 6)) {
            *word |= 1 << (port & 63);
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX)
            .filter(|p| self.0.get(usize::from(p >> 6)).is_some_and(|w| w >> (p & 63) & 1 == 1))
    }
}

/// The entry for `key` in `map`, unless `map` is full and lacks it.
fn bounded<V: Default>(map: &mut HashMap<IpAddr, V>, key: IpAddr) -> Option<&mut V> {
    if map.len() >= SURVEY_HOSTS && !map.contains_key(&key) {
        return None;
    }
    Some(map.entry(key).or_default())
}

impl Survey {
    fn of(path: &Path) -> Result<Self, ReplayError> {
        let mut survey = Self::default();
        let mut datagrams: LruCache<(IpAddr, u16, IpAddr, u16), ()> =
            LruCache::new(NonZeroUsize::new(DATAGRAMS).unwrap_or(NonZeroUsize::MIN));
        let mut reader = PcapReader::open(path)?;
        while let Some(frame) = reader.next_frame()? {
            let Some(view) = ip_bytes(frame.linktype, frame.data).and_then(|b| wire::parse(b).ok())
            else {
                continue;
            };
            let (src, dst) = (view.ip.src, view.ip.dst);
            if let Some(n) = bounded(&mut survey.received, dst) {
                *n += 1;
            }
            match view.transport {
                Transport::Tcp(t) if t.flags.classic() == TcpFlags::SYN | TcpFlags::ACK => {
                    if let Some(ports) = bounded(&mut survey.syn_ack, src) {
                        ports.insert(t.src_port);
                    }
                }
                Transport::Tcp(t) => {
                    if let Some([tcp, _]) = bounded(&mut survey.ports_to, dst) {
                        tcp.insert(t.dst_port);
                    }
                }
                Transport::Udp(u) => {
                    if let Some([_, udp]) = bounded(&mut survey.ports_to, dst) {
                        udp.insert(u.dst_port);
                    }
                    if datagrams.contains(&(dst, u.dst_port, src, u.src_port)) {
                        if let Some(ports) = bounded(&mut survey.udp_answers, src) {
                            ports.insert(u.src_port);
                        }
                    }
                    datagrams.put((src, u.src_port, dst, u.dst_port), ());
                }
                _ => {}
            }
        }
        Ok(survey)
    }

    /// The capturing host's own addresses: the senders of SYN-ACKs; else
    /// the address sent to the most distinct ports (a scan target); else
    /// the busiest destination.
    fn local(&self) -> Vec<Cidr> {
        let most = |counts: Vec<(IpAddr, usize)>| {
            counts.into_iter().max_by_key(|(ip, n)| (*n, *ip)).map(|(ip, _)| ip)
        };
        let chosen: Vec<IpAddr> = if !self.syn_ack.is_empty() {
            self.syn_ack.keys().copied().collect()
        } else if let Some(ip) = most(
            self.ports_to.iter().map(|(ip, [tcp, udp])| (*ip, tcp.len() + udp.len())).collect(),
        ) {
            vec![ip]
        } else {
            most(self.received.iter().map(|(ip, n)| (*ip, *n as usize)).collect())
                .into_iter()
                .collect()
        };
        chosen.into_iter().filter_map(|ip| ip.to_string().parse().ok()).collect()
    }

    /// Marks the ports the local host answered on as open in `engine`.
    fn learn_ports(&self, engine: &Engine, local: &[Cidr]) {
        let is_local = |ip: &IpAddr| local.iter().any(|c| c.contains(*ip));
        for (proto, answers) in
            [(PortProto::Tcp, &self.syn_ack), (PortProto::Udp, &self.udp_answers)]
        {
            for port in answers.iter().filter(|(ip, _)| is_local(ip)).flat_map(|(_, p)| p.iter()) {
                engine.ports().learn(proto, port);
            }
        }
    }
}

/// Writes the human summary.
pub fn write_summary(
    out: &mut dyn Write,
    files: &[PathBuf],
    report: &Report,
) -> std::io::Result<()> {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    writeln!(out, "replay     {}", names.join(", "))?;
    writeln!(
        out,
        "local      {}",
        if report.local.is_empty() { "(none found)".to_owned() } else { report.local.join(", ") }
    )?;
    if let Some((a, b)) = report.span {
        writeln!(out, "span       {a} .. {b} ({:.3}s)", b.saturating_since(a).as_secs_f64())?;
    }
    writeln!(
        out,
        "packets    {} frames: {} inbound, {} outbound, {} not IP, {} replies suppressed (their request was dropped)",
        report.frames, report.inbound, report.outbound, report.not_ip, report.replies_suppressed
    )?;
    writeln!(out, "verdicts   accept {}, drop {}", report.accepted, report.dropped)?;
    if !report.drops.is_empty() {
        writeln!(out, "drops      {}", counts(&report.drops, |r| r.name()))?;
    }
    writeln!(out, "kinds      {}", counts(&report.kinds, ProbeKind::name))?;
    let banned: Vec<_> = report.sources.iter().filter(|(_, s)| s.ban.is_some()).collect();
    let (t, g) = (&report.engine.tables, &report.engine.guards);
    writeln!(
        out,
        "tables     {} sources (cap {}, {} evicted), {} flows (cap {}, {} evicted), {} ban records",
        t.sources,
        t.source_capacity,
        t.source_evictions,
        t.flows,
        t.flow_capacity,
        t.flow_evictions,
        t.ban_records
    )?;
    if g.handshake_grace + g.rate_capped + g.table_full > 0 {
        writeln!(
            out,
            "held back  {} bans: {} by the handshake grace, {} by the per-second cap, {} by a full ban table",
            g.handshake_grace + g.rate_capped + g.table_full,
            g.handshake_grace,
            g.rate_capped,
            g.table_full
        )?;
    }
    if report.memory_peak > 0 {
        writeln!(out, "memory     peak {:.1} MiB resident", report.memory_peak as f64 / MIB)?;
    }
    let o = &report.others;
    if o.sources > 0 {
        writeln!(
            out,
            "others     {} sources not reported in full (the report keeps {REPORTED}): {} packets, {} dropped, {} answered, {} banned",
            o.sources, o.packets, o.dropped, o.answered, o.banned
        )?;
    }
    writeln!(out, "bans       {}", banned.len())?;
    let start = report.span.map_or(Timestamp::ZERO, |s| s.0);
    for (key, s) in banned {
        let Some(ban) = s.ban else { continue };
        writeln!(out, "{}", ban_line(*key, &ban, start))?;
        writeln!(out, "      scanner    {}", scanner_name(s))?;
        writeln!(out, "      scan kinds {}", counts(&s.kinds, ProbeKind::name))?;
        writeln!(
            out,
            "      probes     {} packets, {}{} ports probed, {} dropped, {} answered, {} accepted while banned",
            s.packets,
            if s.ports_capped { "at least " } else { "" },
            s.ports,
            s.dropped,
            s.answered,
            s.accepted_while_banned
        )?;
    }
    let networks: Vec<_> =
        report.bans.iter().filter(|(_, b)| matches!(b.reason, BanReason::SpreadScan(_))).collect();
    if !networks.is_empty() {
        writeln!(out, "networks   {} banned whole (tracking.ipv6_escalate)", networks.len())?;
    }
    for (key, ban) in networks {
        writeln!(out, "{}", ban_line(*key, ban, start))?;
    }
    Ok(())
}

/// `  KEY  banned at T (+S s) for LENGTH, offence N: REASON`.
fn ban_line(key: SourceKey, ban: &Ban, start: Timestamp) -> String {
    format!(
        "  {key}  {} at {} (+{:.3}s) for {}, offence {}: {}",
        match ban.kind {
            BanKind::Ban => "banned",
            BanKind::Quarantine => "quarantined",
        },
        ban.since,
        ban.since.saturating_since(start).as_secs_f64(),
        crate::time::format_duration(ban.until.saturating_since(ban.since)),
        ban.offences,
        ban.reason
    )
}

/// `name count, name count, …` in key order.
fn counts<K: Copy>(map: &BTreeMap<K, u64>, name: impl Fn(K) -> &'static str) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{} {n}", name(*k))).collect();
    parts.join(", ")
}

/// Names the tool behind a source from its signatures; without one (a
/// connect or UDP scan goes through the scanner's own kernel, so it looks
/// like any client), names the style of scan from its most common probe.
pub fn scanner_name(s: &SourceReport) -> String {
    if !s.tools.is_empty() {
        let tools: Vec<&str> = s.tools.iter().copied().collect();
        let sigs: Vec<&str> = s.signatures.iter().map(String::as_str).collect();
        return format!("{} (signatures: {})", tools.join(", "), sigs.join(", "));
    }
    let style = match s.kinds.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k) {
        Some(ProbeKind::TcpSyn) => "a TCP SYN or connect scan",
        Some(ProbeKind::Udp) => "a UDP scan",
        Some(ProbeKind::Sctp) => "an SCTP scan",
        Some(k) if k.is_stealth() => "a stealth TCP scan",
        _ => "a port scan",
    };
    format!("unknown tool, {style} (no tool signature)")
}
