//! What replay reports: per source, with bounded memory, and the summary.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use lru::DefaultHasher;
use serde::Serialize;

use crate::classify::{PortProto, ProbeKind};
use crate::engine::{Engine, EngineStats};
use crate::policy::Reason;
use crate::time::Timestamp;
use crate::track::{Ban, BanKind, BanReason, SourceKey};

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
    /// Its probes and the replies it got, over time, for `--report`: at
    /// most [`TRAIL`] points, evenly thinned as it grows.
    pub trail: Vec<TrailPoint>,
}

/// One probe of a source, or one reply it got, for the report's picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TrailPoint {
    /// When.
    pub at: Timestamp,
    /// The port probed, or the port the reply came from.
    pub port: u16,
    /// What became of it.
    pub fate: Fate,
}

/// What became of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fate {
    /// Let through.
    Accepted,
    /// Dropped.
    Dropped,
    /// A reply the host sent it: what it learned.
    Answered,
}

/// Trail points a source keeps.
pub const TRAIL: usize = 1024;
/// Trail points over all reported sources.
pub const TRAIL_POINTS: usize = 1 << 21;

/// Packets per time bin by verdict, over the whole run, in at most
/// [`TIMELINE_BINS`] bins that start a millisecond wide and double as the
/// capture grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// Millisecond of the first packet.
    pub start_ms: u64,
    /// Milliseconds per bin; 0 before the first packet.
    pub width_ms: u64,
    /// (accepted, dropped) per bin.
    pub bins: Vec<(u64, u64)>,
}

/// Bins of a timeline at most.
pub const TIMELINE_BINS: usize = 720;

impl Timeline {
    /// Counts one packet at `now`.
    pub fn add(&mut self, now: Timestamp, dropped: bool) {
        let ms = now.micros() / 1000;
        if self.width_ms == 0 {
            (self.start_ms, self.width_ms) = (ms, 1);
        }
        // A packet stamped before the first (captures are not always in
        // order) counts in the first bin.
        let mut i = ms.saturating_sub(self.start_ms) / self.width_ms;
        while i >= TIMELINE_BINS as u64 {
            self.bins = self
                .bins
                .chunks(2)
                .map(|c| c.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)))
                .collect();
            self.width_ms *= 2;
            i = ms.saturating_sub(self.start_ms) / self.width_ms;
        }
        let i = usize::try_from(i).unwrap_or(0);
        if self.bins.len() <= i {
            self.bins.resize(i + 1, (0, 0));
        }
        if let Some(bin) = self.bins.get_mut(i) {
            if dropped {
                bin.1 += 1;
            } else {
                bin.0 += 1;
            }
        }
    }
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
    /// Packets the persona rewrote (outbound replies), as inline.
    pub rewritten: u64,
    /// Probes the persona answered (inline, from a raw socket).
    pub persona_answers: u64,
    /// The engine's tables, ban guards and gate at the end of the run.
    pub engine: EngineStats,
    /// This process's peak resident memory at the end of the run, in bytes
    /// (0 where `/proc` does not say).
    pub memory_peak: u64,
    /// Which checksums each file's replay believed, and why.
    pub checksums: Vec<super::FileChecksums>,
    /// Packets over time by verdict.
    pub timeline: Timeline,
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
/// An upper bound on the memory replay itself takes beyond the engine's
/// tables ([`crate::config::Rules::table_budget`]), whatever the capture
/// holds: the reported sources with their ports, the listed bans, the
/// remembered tuples and datagrams, the survey's port maps, and buffers.
/// Measured by `tests/scale.rs` with two million sources.
pub const REPORT_BUDGET: u64 = 128 << 20;

pub(super) const MIB: f64 = (1u64 << 20) as f64;

/// The sources a report keeps in full, bounded by [`REPORTED`] and, for
/// their ports, [`PORT_ENTRIES`]. When full, a new source takes the place of
/// the lowest-ranked one if it ranks at least as high, and is counted in
/// [`Others`] otherwise; so is the one it displaces.
#[derive(Default)]
pub(super) struct Sources {
    slots: HashMap<SourceKey, Slot, DefaultHasher>,
    /// Every slot by (rank, when it took that rank): the first goes first.
    order: BTreeSet<(u8, u64, SourceKey)>,
    /// Bumped for every rank taken.
    clock: u64,
    /// Ports remembered over all slots.
    ports: usize,
    others: Others,
    /// Keep each source's trail (`--report`).
    trails: bool,
    /// Trail points held over all slots.
    trail_points: usize,
}

#[derive(Default)]
pub(super) struct Slot {
    report: SourceReport,
    ports: HashSet<(PortProto, u16), DefaultHasher>,
    rank: u8,
    since: u64,
    /// Every `stride`-th point goes into the trail.
    stride: u32,
    /// Points offered to the trail.
    offered: u32,
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

impl Slot {
    /// Adds `point` to the trail while fewer than [`TRAIL_POINTS`] are
    /// `held` over all slots: every `stride`-th point, and when the trail
    /// is full, every other one is dropped and the stride doubles, so the
    /// trail covers the source's whole life evenly.
    fn trail(&mut self, point: TrailPoint, held: &mut usize) {
        let stride = self.stride.max(1);
        self.offered += 1;
        if self.offered % stride != 0 || *held >= TRAIL_POINTS {
            return;
        }
        self.report.trail.push(point);
        *held += 1;
        if self.report.trail.len() >= TRAIL {
            let before = self.report.trail.len();
            let mut i = 0;
            self.report.trail.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            *held -= before - self.report.trail.len();
            self.stride = stride * 2;
        }
    }
}

impl Sources {
    /// No sources yet; `trails` keeps each one's trail.
    pub(super) fn new(trails: bool) -> Self {
        Self { trails, ..Self::default() }
    }

    /// Applies `f` to `key`'s report, making one if needed; `f` returns a
    /// port the source probed. `point` goes on its trail, when trails are
    /// kept.
    pub(super) fn update(
        &mut self,
        key: SourceKey,
        point: Option<TrailPoint>,
        f: impl FnOnce(&mut SourceReport) -> Option<(PortProto, u16)>,
    ) {
        let point = point.filter(|_| self.trails);
        if let Some(slot) = self.slots.get_mut(&key) {
            let port = f(&mut slot.report);
            slot.remember(port, &mut self.ports);
            if let Some(p) = point {
                slot.trail(p, &mut self.trail_points);
            }
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
                self.trail_points -= out.report.trail.len();
                self.fold(&out.report);
            }
        }
        slot.remember(port, &mut self.ports);
        if let Some(p) = point {
            slot.trail(p, &mut self.trail_points);
        }
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

    pub(super) fn into_report(self) -> (BTreeMap<SourceKey, SourceReport>, Others) {
        let sources = self
            .slots
            .into_iter()
            .map(|(key, slot)| (key, SourceReport { ports: slot.ports.len(), ..slot.report }))
            .collect();
        (sources, self.others)
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
    for c in &report.checksums {
        let file = if report.checksums.len() > 1 { format!("{}: ", c.file) } else { String::new() };
        let mode = c.mode.name();
        let s = c.sample;
        let what = match c.decided {
            super::Decided::Verify => "every one must be right",
            super::Decided::Offload => "checked, those left for the NIC by offload accepted",
            super::Decided::Off => "none checked, packets judged on their headers",
        };
        writeln!(
            out,
            "checksums  {file}{mode} -> {}: {what} (first {} TCP/UDP packets: {} left for the \
             NIC, {} wrong; {} accepted as left for the NIC in all)",
            c.decided.name(),
            s.sampled,
            s.partial,
            s.bad,
            c.partial_accepted,
        )?;
    }
    if !report.drops.is_empty() {
        writeln!(out, "drops      {}", counts(&report.drops, |r| r.name()))?;
    }
    writeln!(out, "kinds      {}", counts(&report.kinds, ProbeKind::name))?;
    let banned: Vec<_> = report.sources.iter().filter(|(_, s)| s.ban.is_some()).collect();
    let g = &report.engine.guards;
    writeln!(out, "tables     {}", report.engine.tables)?;
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
    if report.rewritten + report.persona_answers > 0 {
        writeln!(
            out,
            "persona    {} packets rewritten, {} probes answered",
            report.rewritten, report.persona_answers
        )?;
    }
    let gate = &report.engine.gate;
    let refused = gate.spa_malformed
        + gate.spa_bad_hmac
        + gate.spa_stale
        + gate.spa_wrong_source
        + gate.spa_replay
        + gate.spa_not_hidden;
    if gate.hidden_opened + gate.hidden_dropped + refused > 0 {
        writeln!(
            out,
            "gate       hidden ports: {} opened, {} dropped; authorized by spa {}, by knock {}; {refused} spa packets refused",
            gate.hidden_opened, gate.hidden_dropped, gate.spa_authorized, gate.knock_authorized
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
pub(super) fn ban_line(key: SourceKey, ban: &Ban, start: Timestamp) -> String {
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
pub(super) fn counts<K: Copy>(map: &BTreeMap<K, u64>, name: impl Fn(K) -> &'static str) -> String {
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

#[cfg(test)]
mod timeline_tests {
    use super::*;

    #[test]
    fn the_timeline_widens_and_keeps_every_packet() {
        let mut t = Timeline::default();
        for i in 0..100_000u64 {
            t.add(Timestamp::from_micros(5_000_000 + i * 37_000), i % 3 == 0);
        }
        assert!(t.bins.len() <= TIMELINE_BINS);
        assert_eq!(t.bins.iter().map(|(a, d)| a + d).sum::<u64>(), 100_000);
        assert_eq!(t.bins.iter().map(|(_, d)| d).sum::<u64>(), 33_334);
        assert!(t.width_ms.is_power_of_two() && t.width_ms * TIMELINE_BINS as u64 >= 3_700_000);
    }
}
