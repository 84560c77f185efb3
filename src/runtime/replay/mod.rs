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
//!
//! This file drives the replay; `survey.rs` holds the survey and
//! `report.rs` the report and its summary.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::classify::ProbeKind;
use crate::config::Cidr;
use crate::disguise::Reply;
use crate::engine::{ChecksumCheck, Direction, Engine, Meta, Outcome};
use crate::event::Event;
use crate::gate::GateEvent;
use crate::io::pcap::{Frame, PcapReader, SourceError};
use crate::policy::Verdict;
use crate::runtime::effects::{Effects, deliver};
use crate::time::Timestamp;
use crate::track::{Ban, BanKind, FlowKey, SourceKey};
use crate::wire::{self, Checksum, LinkType, PacketView, TcpFlags, Transport};

mod checksums;
mod html;
mod report;
mod survey;
mod threads;

pub use self::checksums::{ChecksumMode, Decided, FileChecksums, SAMPLE, Sample};
pub use self::html::{DRAWN, TABLED, write_html};
use self::report::Sources;
pub use self::report::{
    BANS_LISTED, Others, PORT_ENTRIES, REPORT_BUDGET, REPORTED, Report, SourceReport, scanner_name,
    write_summary,
};
pub use self::report::{Fate, TIMELINE_BINS, TRAIL, TRAIL_POINTS, Timeline, TrailPoint};
pub use self::survey::SURVEY_HOSTS;
use self::survey::Survey;

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The host's own networks; inferred from each capture when empty.
    pub local: Vec<Cidr>,
    /// Write one JSON line per event to the event writer.
    pub json: bool,
    /// Show a progress bar on stderr for large inputs (only on a terminal).
    pub progress: bool,
    /// Which checksums to believe (`--checksums`).
    pub checksums: ChecksumMode,
    /// Keep each source's probes over time ([`SourceReport::trail`]), for
    /// the HTML report.
    pub trails: bool,
    /// Threads in all: with N above 1, the calling thread reads and
    /// accounts and N - 1 threads judge packets, each those of the
    /// sources of its own table shards; 0 and 1 do all on the calling
    /// thread. See [`run`].
    pub threads: usize,
}

/// Request tuples remembered, to suppress replies to dropped requests.
const TUPLES: usize = 1 << 18;

/// The request tuples replay dropped, as 64-bit fingerprints in a table of
/// [`TUPLES`] slots allocated once: a new one takes its slot from whatever
/// was there, so the table keeps the most recent ones, as an LRU would,
/// without a node per entry.
///
/// The slots are split evenly among the engine's table shards, by the
/// shard of the request's remote party: a thread that owns some shards
/// then changes its slots exactly as one thread would. Two tuples of one
/// slot are told apart by the fingerprint's bits above the slot's
/// (at least 46): one pair in 2^46 is taken for the other, and a reply to
/// an accepted request could then be skipped.
struct Requests {
    slots: Box<[u64]>,
    /// Slots per shard, a power of two.
    per: usize,
    hasher: lru::DefaultHasher,
}

impl Requests {
    /// A table for an engine of `shards` shards (a power of two).
    fn new(shards: usize) -> Self {
        let per = (TUPLES / shards.max(1)).max(1);
        Self {
            slots: vec![0; per * shards.max(1)].into_boxed_slice(),
            per,
            hasher: lru::DefaultHasher::default(),
        }
    }

    /// The slot of `t` in `shard` and its fingerprint (never 0, which marks
    /// a free slot).
    fn slot(&self, shard: usize, t: &FlowKey) -> (usize, u64) {
        let h = std::hash::BuildHasher::hash_one(&self.hasher, t);
        (shard * self.per + ((h as usize) & (self.per - 1)), h | 1)
    }

    fn put(&mut self, shard: usize, t: &FlowKey) {
        let (i, fp) = self.slot(shard, t);
        if let Some(s) = self.slots.get_mut(i) {
            *s = fp;
        }
    }

    fn contains(&self, shard: usize, t: &FlowKey) -> bool {
        let (i, fp) = self.slot(shard, t);
        self.slots.get(i) == Some(&fp)
    }

    fn pop(&mut self, shard: usize, t: &FlowKey) {
        let (i, fp) = self.slot(shard, t);
        if let Some(s) = self.slots.get_mut(i).filter(|s| **s == fp) {
            *s = 0;
        }
    }
}

/// Frames of standard input read ahead for the survey before replay starts
/// (`-` as a file): a live capture piped in is replayed as it arrives, after
/// at most this many frames or [`STDIN_HEAD_BYTES`].
pub const STDIN_HEAD_FRAMES: usize = 1 << 16;
/// Bytes of standard input read ahead at most.
pub const STDIN_HEAD_BYTES: usize = 64 << 20;

/// A captured frame held in memory: the head of standard input.
struct OwnedFrame {
    ts: Timestamp,
    linktype: u32,
    data: Vec<u8>,
    orig_len: usize,
}

impl OwnedFrame {
    fn frame(&self) -> Frame<'_> {
        Frame { ts: self.ts, linktype: self.linktype, data: &self.data, orig_len: self.orig_len }
    }
}

/// True for the file name that means standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Replays `files` in order through `engine`; `-` reads a capture from
/// standard input. JSON events go to `events`.
///
/// With [`Options::threads`] at N above 1, the calling thread reads and
/// accounts in capture order, and N - 1 threads judge the packets, each
/// those of the sources in its own table shards. The report and the events
/// are the same as with one thread (see `threads.rs` for why); with an OS
/// persona or hidden ports, whose tables span the shards, one thread does
/// all.
pub fn run(
    engine: &Engine,
    files: &[PathBuf],
    options: &Options,
    events: &mut dyn Write,
) -> Result<Report, ReplayError> {
    let mut state = Run {
        engine,
        options,
        events,
        report: Report::default(),
        sources: Sources::new(options.trails),
    };
    let threads = threads_for(engine, options.threads);
    if threads > 1 {
        threads::run(&mut state, files, threads - 1)?;
    } else {
        let mut inline = Inline { judge: Judge::new(engine) };
        state.files(files, &mut inline)?;
    }
    let mut report = state.report;
    report.engine = engine.stats();
    report.memory_peak = super::memory().1;
    (report.sources, report.others) = state.sources.into_report();
    Ok(report)
}

/// The threads a replay that wants `wanted` gets: the reader and at most
/// one judging thread per table shard, and one in all when state spans
/// the shards.
pub fn threads_for(engine: &Engine, wanted: usize) -> usize {
    if engine.shares_state_across_shards() { 1 } else { wanted.clamp(1, engine.shards() + 1) }
}

/// A replay under way: what lives from file to file.
struct Run<'a> {
    engine: &'a Engine,
    options: &'a Options,
    events: &'a mut dyn Write,
    report: Report,
    sources: Sources,
}

/// What one file's replay decided from its survey.
struct File {
    local: Vec<Cidr>,
    checksums: FileChecksums,
    next_sweep: Timestamp,
}

/// A frame placed by the reader: when, which way, between whom.
#[derive(Clone, Copy, Debug)]
struct Placed {
    now: Timestamp,
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    /// Cut short by the snap length.
    cut: bool,
}

impl Placed {
    /// The remote party: the source key's address.
    const fn remote(&self) -> IpAddr {
        match self.direction {
            Direction::Inbound => self.src,
            Direction::Outbound => self.dst,
        }
    }
}

/// What judging one frame came to. Held by value: boxing the outcome would
/// allocate once a packet.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A reply to a request portcloak dropped: never sent.
    Suppressed,
    /// Judged.
    Judged {
        outcome: Outcome,
        /// An outbound packet that answers a request.
        answers: bool,
        /// Its checksum was left for the NIC, and accepted.
        offloaded: bool,
    },
}

/// Where placed frames go: judged at once ([`Inline`]), or by threads
/// (`threads.rs`).
trait Drive {
    /// Judges `ip`, placed as `placed`, and accounts for it, now or later
    /// but in capture order.
    fn frame(
        &mut self,
        run: &mut Run<'_>,
        file: &mut File,
        placed: Placed,
        ip: &[u8],
    ) -> Result<(), ReplayError>;

    /// Sweeps the engine's tables at `now`, between the frames before and
    /// after.
    fn sweep(&mut self, run: &mut Run<'_>, now: Timestamp) -> Result<(), ReplayError>;

    /// Finishes the file: every frame judged and accounted.
    fn flush(&mut self, run: &mut Run<'_>, file: &mut File) -> Result<(), ReplayError>;
}

/// One thread judges each frame as the reader places it.
struct Inline<'a> {
    judge: Judge<'a>,
}

impl Drive for Inline<'_> {
    fn frame(
        &mut self,
        run: &mut Run<'_>,
        file: &mut File,
        placed: Placed,
        ip: &[u8],
    ) -> Result<(), ReplayError> {
        let step = self.judge.frame(file.checksums.decided, placed, ip);
        run.account(file, placed, step)
    }

    fn sweep(&mut self, run: &mut Run<'_>, now: Timestamp) -> Result<(), ReplayError> {
        let lifted = run.engine.sweep(now).lifted;
        run.unbans(now, &lifted)
    }

    fn flush(&mut self, _run: &mut Run<'_>, _file: &mut File) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// Judges frames: the engine, and the requests it dropped, whose replies
/// are skipped. A thread that owns some table shards holds the requests of
/// those shards' sources.
struct Judge<'a> {
    engine: &'a Engine,
    /// The requests portcloak dropped; one accepted later is taken out.
    dropped_requests: Requests,
    /// The frame's IP packet, which a persona may rewrite.
    buf: Vec<u8>,
}

impl<'a> Judge<'a> {
    fn new(engine: &'a Engine) -> Self {
        Self {
            engine,
            dropped_requests: Requests::new(engine.shards()),
            buf: Vec::with_capacity(2048),
        }
    }

    /// Judges one frame's IP packet.
    fn frame(&mut self, decided: Decided, placed: Placed, ip: &[u8]) -> Step {
        let engine = self.engine;
        let direction = placed.direction;
        // A frame cut short by the snap length cannot have its transport
        // checksum verified; one captured whole must be consistent.
        let checksum = match decided {
            Decided::Off => ChecksumCheck::Kernel,
            _ if placed.cut => ChecksumCheck::VerifyPartial,
            _ => ChecksumCheck::Verify,
        };
        let shard = engine.shard_of(placed.remote());
        // One parse: the tuples, then the engine, from the same view.
        let (request, reply, judged, meta) = {
            let parsed = wire::parse(ip);
            // A checksum left for the NIC, in a file taken with offload.
            let offloaded = decided == Decided::Offload
                && parsed.as_ref().is_ok_and(|v| v.checksum == Checksum::Partial);
            let meta = Meta { checksum, l4_partial: offloaded, ..Meta::new(direction) };
            let (request, reply) = parsed.as_ref().map_or((None, None), |v| tuples(v, direction));
            if direction == Direction::Outbound
                && reply.is_some_and(|t| self.dropped_requests.contains(shard, &t))
            {
                return Step::Suppressed;
            }
            (request, reply, engine.judge(placed.now, meta, parsed.as_ref().map_err(|e| *e)), meta)
        };
        // The frame is copied only for a persona to rewrite.
        let outcome = if judged.edits() {
            self.buf.clear();
            self.buf.extend_from_slice(ip);
            judged.apply(&mut self.buf, meta.l4_partial)
        } else {
            judged.apply(&mut [], meta.l4_partial)
        };
        if let Some(t) = request {
            if outcome.verdict == Verdict::Drop {
                self.dropped_requests.put(shard, &t);
            } else {
                self.dropped_requests.pop(shard, &t);
            }
        }
        Step::Judged { outcome, answers: reply.is_some(), offloaded: meta.l4_partial }
    }
}

impl Run<'_> {
    /// Replays `files` in order, judging with `drive`.
    fn files(&mut self, files: &[PathBuf], drive: &mut dyn Drive) -> Result<(), ReplayError> {
        for path in files {
            if is_stdin(path) {
                self.stdin(drive)?;
                continue;
            }
            let survey = Survey::of(path)?;
            let mut file = self.start(path, &survey)?;
            drop(survey);
            let mut reader = PcapReader::open(path)?;
            let progress = progress_bar(path, self.options.progress);
            while let Some(frame) = reader.next_frame()? {
                self.frame(drive, &mut file, frame)?;
                if let Some(bar) = &progress {
                    if self.report.frames % 4096 == 0 {
                        bar.set_position(reader.bytes_read());
                    }
                }
            }
            drive.flush(self, &mut file)?;
            if let Some(bar) = progress {
                bar.finish_and_clear();
            }
            self.report.checksums.push(file.checksums);
        }
        Ok(())
    }

    /// Replays a capture from standard input: surveys its head, then
    /// replays the head and the rest as it arrives.
    fn stdin(&mut self, drive: &mut dyn Drive) -> Result<(), ReplayError> {
        let name = Path::new("standard input");
        let mut reader = PcapReader::from_reader(name, Box::new(std::io::stdin()))?;
        let mut head = Vec::new();
        let mut bytes = 0;
        while head.len() < STDIN_HEAD_FRAMES && bytes < STDIN_HEAD_BYTES {
            let Some(f) = reader.next_frame()? else { break };
            bytes += f.data.len();
            head.push(OwnedFrame {
                ts: f.ts,
                linktype: f.linktype,
                data: f.data.to_vec(),
                orig_len: f.orig_len,
            });
        }
        let mut survey = Survey::default();
        for f in &head {
            survey.add(f.linktype, &f.data);
        }
        let mut file = self.start(name, &survey)?;
        drop(survey);
        for f in &head {
            self.frame(drive, &mut file, f.frame())?;
        }
        drop(head);
        while let Some(frame) = reader.next_frame()? {
            self.frame(drive, &mut file, frame)?;
        }
        drive.flush(self, &mut file)?;
        self.report.checksums.push(file.checksums);
        Ok(())
    }

    /// Starts a file: its local addresses, the ports it answered on, and
    /// what it does with checksums, all from `survey`.
    fn start(&mut self, path: &Path, survey: &Survey) -> Result<File, ReplayError> {
        let options = self.options;
        let local = if options.local.is_empty() { survey.local() } else { options.local.clone() };
        self.report.local.extend(local.iter().map(ToString::to_string));
        survey.learn_ports(self.engine, &local);
        let checksums = FileChecksums {
            file: path.display().to_string(),
            mode: options.checksums,
            decided: survey.checksums.decide(options.checksums),
            sample: survey.checksums,
            partial_accepted: 0,
        };
        if options.json {
            write_event(self.events, &checksums.event())?;
        }
        Ok(File { local, checksums, next_sweep: Timestamp::ZERO })
    }

    /// Reads one frame: counts it, sweeps when a second has passed, places
    /// its IP packet and hands it to `drive`.
    fn frame(
        &mut self,
        drive: &mut dyn Drive,
        file: &mut File,
        frame: Frame<'_>,
    ) -> Result<(), ReplayError> {
        let report = &mut self.report;
        report.frames += 1;
        let now = frame.ts;
        report.span = Some(report.span.map_or((now, now), |(a, b)| (a.min(now), b.max(now))));
        let Some(ip) = ip_bytes(frame.linktype, frame.data) else {
            report.not_ip += 1;
            return Ok(());
        };
        if now >= file.next_sweep {
            drive.sweep(self, now)?;
            file.next_sweep = now.saturating_add(std::time::Duration::from_secs(1));
        }
        let Some((src, dst)) = wire::addresses(ip) else {
            self.report.not_ip += 1;
            return Ok(());
        };
        let direction = if file.local.iter().any(|c| c.contains(src)) {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let placed = Placed { now, direction, src, dst, cut: frame.data.len() < frame.orig_len };
        drive.frame(self, file, placed, ip)
    }

    /// Accounts for one judged frame, in capture order.
    fn account(&mut self, file: &mut File, placed: Placed, step: Step) -> Result<(), ReplayError> {
        let Step::Judged { outcome, answers, offloaded } = step else {
            self.report.replies_suppressed += 1;
            return Ok(());
        };
        file.checksums.partial_accepted += u64::from(offloaded);
        let Placed { now, direction, src, dst, .. } = placed;
        let report = &mut self.report;
        let mut tally = Tally { report, sources: &mut self.sources, now, direction, answers };
        deliver(&mut tally, &outcome);
        if self.options.json {
            for event in Event::from_outcome(now, direction, Some((src, dst)), &outcome) {
                write_event(self.events, &event)?;
            }
        }
        Ok(())
    }

    /// Accounts for the bans a sweep at `now` lifted.
    fn unbans(&mut self, now: Timestamp, lifted: &[(SourceKey, Ban)]) -> Result<(), ReplayError> {
        if self.options.json {
            for (source, _) in lifted {
                write_event(self.events, &Event::unban(now, *source))?;
            }
        }
        Ok(())
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
    /// A judging thread stopped before the replay's end.
    #[error("a replay thread stopped")]
    Thread,
}

fn write_event(out: &mut dyn Write, event: &impl serde::Serialize) -> Result<(), ReplayError> {
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
pub(super) fn ip_bytes(linktype: u32, frame: &[u8]) -> Option<&[u8]> {
    let link = LinkType::from_pcap(linktype)?;
    frame.get(wire::link::ip_offset(link, frame)?..)
}

/// For an inbound packet, the request tuple it opens; for an outbound one,
/// the request tuple it answers, if it is a reply.
fn tuples(view: &PacketView<'_>, direction: Direction) -> (Option<FlowKey>, Option<FlowKey>) {
    match direction {
        Direction::Inbound => (request_tuple(view), None),
        Direction::Outbound => (None, reply_tuple(view)),
    }
}

/// The flow of a request: a TCP, UDP or SCTP packet's, or an ICMP
/// request's, by its identifier.
fn request_tuple(view: &PacketView<'_>) -> Option<FlowKey> {
    FlowKey::inbound(view).or_else(|| match view.transport {
        Transport::Icmp(i) if is_icmp_request(i.v6, i.kind) => Some(FlowKey {
            remote: view.ip.src,
            local: view.ip.dst,
            remote_port: i.ident(),
            local_port: 0,
            protocol: view.ip.protocol,
        }),
        _ => None,
    })
}

fn is_icmp_request(v6: bool, kind: u8) -> bool {
    if v6 { kind == 128 } else { matches!(kind, 8 | 13 | 17) }
}

/// The request a reply answers: the flow for TCP (a SYN-ACK or a reset),
/// UDP and SCTP, the quoted packet for ICMP errors, the identifier for
/// ICMP replies.
fn reply_tuple(view: &PacketView<'_>) -> Option<FlowKey> {
    match view.transport {
        Transport::Tcp(t) => {
            let reply = t.flags.has(TcpFlags::SYN | TcpFlags::ACK) || t.flags.has(TcpFlags::RST);
            FlowKey::outbound(view).filter(|_| reply)
        }
        Transport::Udp(_) | Transport::Sctp { .. } => FlowKey::outbound(view),
        Transport::Icmp(i) => {
            if let Some(q) = wire::quoted(&i) {
                return Some(FlowKey {
                    remote: q.src,
                    local: q.dst,
                    remote_port: q.src_port,
                    local_port: q.dst_port,
                    protocol: q.protocol,
                });
            }
            let is_reply = if i.v6 { i.kind == 129 } else { matches!(i.kind, 0 | 14 | 18) };
            is_reply.then_some(FlowKey {
                remote: view.ip.dst,
                local: view.ip.src,
                remote_port: i.ident(),
                local_port: 0,
                protocol: view.ip.protocol,
            })
        }
        _ => None,
    }
}

/// Replay's effects of one packet: the report's counts and its sources'.
struct Tally<'a> {
    report: &'a mut Report,
    sources: &'a mut Sources,
    now: Timestamp,
    direction: Direction,
    /// An outbound packet that answers a request.
    answers: bool,
}

impl Effects for Tally<'_> {
    fn count(&mut self, outcome: &Outcome) {
        let (report, now, direction) = (&mut *self.report, self.now, self.direction);
        let dropped = outcome.verdict == Verdict::Drop;
        report.rewritten += u64::from(outcome.rewritten);
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
        if direction == Direction::Inbound
            && let Some(kind) = outcome.kind
        {
            *report.kinds.entry(kind).or_default() += 1;
        }
        report.timeline.add(now, dropped);
        let Some(key) = outcome.source else { return };
        let answers = self.answers;
        let fate = match direction {
            Direction::Inbound if dropped => Some(Fate::Dropped),
            Direction::Inbound => Some(Fate::Accepted),
            Direction::Outbound if answers && !dropped => Some(Fate::Answered),
            Direction::Outbound => None,
        };
        let probe = direction == Direction::Outbound || outcome.kind.is_some_and(is_probe_kind);
        let point = fate.filter(|_| probe).zip(outcome.port).map(|(fate, (_, port))| TrailPoint {
            at: now,
            port,
            fate,
        });
        self.sources.update(key, point, |entry| {
            let mut port = None;
            match direction {
                Direction::Inbound => {
                    entry.packets += 1;
                    entry.dropped += u64::from(dropped);
                    // A quarantine lets the pairs it proved through.
                    let banned =
                        entry.ban.is_some_and(|b| b.is_active(now) && b.kind == BanKind::Ban);
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
                    entry.answered += u64::from(!dropped && answers);
                }
            }
            if let Some(ban) = outcome.ban {
                entry.ban.get_or_insert(ban);
            }
            port
        });
    }

    fn ban(&mut self, key: SourceKey, ban: Ban) {
        if self.report.bans.len() < BANS_LISTED {
            self.report.bans.push((key, ban));
        } else {
            self.report.bans_unlisted += 1;
        }
    }

    /// Counted by the gate itself: the summary prints its counters.
    fn gate(&mut self, _event: GateEvent) {}

    fn reply(&mut self, _reply: Reply) {
        self.report.persona_answers += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn tuple(i: u32) -> FlowKey {
        let remote = IpAddr::from(i.to_be_bytes());
        let local = IpAddr::from([198, 18, 1, 1]);
        FlowKey { remote, local, protocol: 6, remote_port: 40_000, local_port: 80 }
    }

    #[test]
    fn dropped_requests_are_remembered_until_accepted_or_pushed_out() {
        let mut r = Requests::new(1);
        r.put(0, &tuple(1));
        assert!(r.contains(0, &tuple(1)) && !r.contains(0, &tuple(2)));
        r.pop(0, &tuple(2));
        assert!(r.contains(0, &tuple(1)), "taking out another leaves it");
        r.pop(0, &tuple(1));
        assert!(!r.contains(0, &tuple(1)));
        // Many more than it holds: the newest are there, the table's size
        // never changes.
        for i in 0..4 * TUPLES as u32 {
            r.put(0, &tuple(i));
        }
        let last = 4 * TUPLES as u32 - 1;
        assert!(r.contains(0, &tuple(last)));
        let kept = (last - 1000..=last).filter(|i| r.contains(0, &tuple(*i))).count();
        assert!(kept > 990, "{kept}");
        assert_eq!(r.slots.len(), TUPLES);
    }

    #[test]
    fn each_shard_has_its_own_slots() {
        let mut r = Requests::new(4);
        assert_eq!((r.per, r.slots.len()), (TUPLES / 4, TUPLES));
        r.put(1, &tuple(1));
        assert!(r.contains(1, &tuple(1)) && !r.contains(2, &tuple(1)));
        // Filling shard 2 leaves shard 1's requests alone.
        for i in 0..TUPLES as u32 {
            r.put(2, &tuple(i));
        }
        assert!(r.contains(1, &tuple(1)));
    }
}
