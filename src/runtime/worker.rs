//! WORKER: one thread per queue, pinned to its CPU. Each takes a packet
//! from its queue, hands it to the shared engine and sends the verdict.
//!
//! No lock is taken here besides the engine's own per-shard locks, and
//! nothing is allocated per packet: the payload is copied into one buffer
//! the worker owns (the engine may rewrite it in place, and nfq would send
//! any payload borrowed mutably back to the kernel), and bans and events
//! go out over bounded channels of plain values.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use crossbeam::channel::Sender;
use nfq::Verdict as NfVerdict;

use super::effects::{Effects, deliver};
use super::queue::BoundQueue;
use crate::disguise::Reply;
use crate::engine::{ChecksumCheck, Direction, Engine, Meta, Outcome};
use crate::event::Event;
use crate::gate::{GateEvent, Via};
use crate::policy::{Reason, Verdict};
use crate::time::{Rate, Timestamp};
use crate::track::{Ban, BanKind, BanReason, SourceKey};

/// Netfilter hook numbers on which portcloak's rules queue outbound packets.
const NF_INET_LOCAL_OUT: u8 = 3;
const NF_INET_POST_ROUTING: u8 = 4;

/// What the worker tells the ban keeper.
#[derive(Clone, Debug)]
pub enum KernelMsg {
    /// The engine banned `source`.
    Ban(SourceKey, Ban),
    /// An operator lifted the ban on `source`.
    Unban(SourceKey),
    /// The kernel's proof sets at a clean stop, for the state file.
    Proofs(Vec<crate::firewall::Proof>),
}

/// One worker's counters, read by `status` and the summary.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Queue number.
    pub queue: AtomicU32,
    /// CPU it is pinned to, or `u32::MAX`.
    pub cpu: AtomicU32,
    /// Packets received.
    pub packets: AtomicU64,
    /// Inspected and accepted.
    pub accepted: AtomicU64,
    /// Inspected and dropped.
    pub dropped: AtomicU64,
    /// Rewritten in place by the persona and sent on.
    pub rewritten: AtomicU64,
    /// Probes the persona answered with a packet of its own.
    pub answered: AtomicU64,
    /// Passed (or, failing closed, dropped) without inspection because the
    /// worker fell behind.
    pub shed: AtomicU64,
    /// Bans, events, log lines or persona answers lost because their
    /// channel was full.
    pub lost: AtomicU64,
    /// Queue socket errors.
    pub errors: AtomicU64,
    /// Packets waiting in the kernel for this queue, sampled.
    pub backlog: AtomicU32,
    /// Drops by reason, indexed by `Reason as usize`.
    pub drops: [AtomicU64; Reason::ALL.len()],
}

/// What every worker shares.
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The engine's time.
    pub clock: super::clock::Clock,
    /// Set to stop.
    pub stop: AtomicBool,
    /// Bans to the kernel.
    pub kernel: Sender<KernelMsg>,
    /// Log lines and persona answers to the output thread.
    pub output: Sender<Output>,
    /// Drop events for the event file, when one is configured.
    pub events: Option<Sender<Event>>,
    /// Per-worker counters, by worker index.
    pub workers: Vec<WorkerStats>,
    /// `daemon.fail_mode == "open"`.
    pub fail_open: bool,
    /// Shed while the backlog is above this.
    pub shed_backlog: u32,
    /// Shed packets older than this (when the kernel stamped them).
    pub shed_age: std::time::Duration,
    /// Caps the log lines of refused SPA packets, ten a second over all
    /// workers; the rest are only counted (the gate's counters have every
    /// one).
    pub gate_log: Rate,
    /// The mark bit the kernel sets on a proven source's queued packets.
    pub proven_mark: u32,
    /// Bans started since the daemon started.
    pub bans_started: BanStarts,
    /// The fleet, when `[fleet]` is on: this host's bans and closed-port
    /// touches go to it.
    pub fleet: Option<Arc<super::fleet::Link>>,
}

/// Bans started, by kind of reason ([`BanReason::KINDS`]) and kind of ban
/// (a ban, a quarantine).
#[derive(Debug, Default)]
pub struct BanStarts([[AtomicU64; 2]; BanReason::KINDS.len()]);

impl BanStarts {
    /// Counts `ban`.
    pub fn count(&self, ban: &Ban) {
        let kind = usize::from(ban.kind == BanKind::Quarantine);
        if let Some(c) = self.0.get(ban.reason.kind_index()).and_then(|r| r.get(kind)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Every count so far, zeros included: (reason, kind, count).
    pub fn read(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (reason, row) in BanReason::KINDS.iter().zip(&self.0) {
            for (kind, c) in ["ban", "quarantine"].iter().zip(row) {
                out.push((*reason, *kind, c.load(Relaxed)));
            }
        }
        out
    }
}

/// Runs worker `index` on `queue` until `shared.stop` is set.
pub fn run(
    mut queue: BoundQueue,
    shared: &Shared,
    index: usize,
    cpu: Option<core_affinity::CoreId>,
) {
    let Some(stats) = shared.workers.get(index) else { return };
    stats.queue.store(u32::from(queue.num), Relaxed);
    if let Some(core) = cpu
        && core_affinity::set_for_current(core)
    {
        stats.cpu.store(u32::try_from(core.id).unwrap_or(u32::MAX), Relaxed);
    } else {
        stats.cpu.store(u32::MAX, Relaxed);
    }
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut shed = Shedder::new(shared.shed_backlog);
    while !shared.stop.load(Relaxed) {
        let mut msg = match queue.queue.recv() {
            Ok(msg) => msg,
            Err(e) => {
                use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
                if !matches!(e.kind(), WouldBlock | TimedOut | Interrupted) {
                    stats.errors.fetch_add(1, Relaxed);
                }
                continue;
            }
        };
        stats.packets.fetch_add(1, Relaxed);
        let wall = SystemTime::now();
        let shedding = shed.update(stats.backlog.load(Relaxed)) && !queue.inspects_all;
        let stale = !queue.inspects_all
            && msg
                .get_timestamp()
                .and_then(|t| wall.duration_since(t).ok())
                .is_some_and(|age| age > shared.shed_age);
        let verdict = if shedding || stale {
            stats.shed.fetch_add(1, Relaxed);
            if shared.fail_open { NfVerdict::Accept } else { NfVerdict::Drop }
        } else {
            inspect(shared, index, &mut msg, &mut buf, shared.clock.now())
        };
        msg.set_verdict(verdict);
        if queue.queue.verdict(msg).is_err() {
            stats.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Whether a worker sheds: from the moment its backlog passes the
/// threshold until it has fallen to half of it, so it does not flap.
#[derive(Clone, Copy, Debug)]
pub struct Shedder {
    high: u32,
    shedding: bool,
}

impl Shedder {
    /// Sheds above `high` waiting packets.
    pub const fn new(high: u32) -> Self {
        Self { high, shedding: false }
    }

    /// Takes the current backlog; true while shedding.
    pub const fn update(&mut self, backlog: u32) -> bool {
        if backlog > self.high {
            self.shedding = true;
        } else if backlog <= self.high / 2 {
            self.shedding = false;
        }
        self.shedding
    }
}

/// What workers hand to the output thread, which does the writing that
/// could block (stderr to a stalled journald, a raw socket's send): the
/// packet path only ever `try_send`s, and counts what a full channel lost.
#[derive(Debug)]
pub enum Output {
    /// A log line.
    Log(String),
    /// A persona's answer, with the index of the worker that made it.
    Reply(usize, Reply),
}

/// Runs the output thread until `shared.stop` is set and the channel is
/// drained.
pub fn output(shared: &Shared, rx: &crossbeam::channel::Receiver<Output>) {
    let mut sender = RawSender::default();
    loop {
        let out = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(out) => out,
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => break,
            Err(_) if shared.stop.load(Relaxed) => break,
            Err(_) => continue,
        };
        match out {
            Output::Log(line) => super::log(&line),
            Output::Reply(index, reply) => {
                let Some(stats) = shared.workers.get(index) else { continue };
                match sender.send(&reply) {
                    Ok(()) => stats.answered.fetch_add(1, Relaxed),
                    Err(_) => stats.errors.fetch_add(1, Relaxed),
                };
            }
        }
    }
}

/// Hands `out` to the output thread; a full channel counts it lost.
fn hand_over(shared: &Shared, stats: &WorkerStats, out: Output) {
    if shared.output.try_send(out).is_err() {
        stats.lost.fetch_add(1, Relaxed);
    }
}

/// Raw sockets that send a persona's answers, opened on first use. The
/// packets carry their own IP header (`IPPROTO_RAW`), and leave through
/// the host's output path like any reply, the outbound queue included.
#[derive(Default)]
struct RawSender {
    v4: Option<socket2::Socket>,
    v6: Option<socket2::Socket>,
}

impl RawSender {
    fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        use socket2::{Domain, Protocol, Socket, Type};
        let (slot, domain) = match reply.dst {
            IpAddr::V4(_) => (&mut self.v4, Domain::IPV4),
            IpAddr::V6(_) => (&mut self.v6, Domain::IPV6),
        };
        let socket = match slot {
            Some(s) => s,
            None => slot.insert(Socket::new(
                domain,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )?),
        };
        let to = socket2::SockAddr::from(std::net::SocketAddr::new(reply.dst, 0));
        socket.send_to(reply.bytes(), &to).map(|_| ())
    }
}

fn inspect(
    shared: &Shared,
    index: usize,
    msg: &mut nfq::Message,
    buf: &mut [u8],
    now: Timestamp,
) -> NfVerdict {
    let Some(stats) = shared.workers.get(index) else { return NfVerdict::Accept };
    let direction = match msg.get_hook() {
        NF_INET_LOCAL_OUT | NF_INET_POST_ROUTING => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let payload = msg.get_payload();
    let checksum = if msg.get_original_len() <= payload.len() {
        // Whole packets (every probe and bare SYN fits the copy range):
        // the engine verifies their checksums itself.
        ChecksumCheck::Verify
    } else {
        // Cut short by the copy range. Conntrack verified the checksums:
        // a bad one makes a packet INVALID, and the queue rules drop
        // INVALID packets longer than the copy range before queueing.
        ChecksumCheck::Kernel
    };
    let n = payload.len().min(buf.len());
    let (Some(dst), Some(src)) = (buf.get_mut(..n), payload.get(..n)) else {
        return NfVerdict::Accept;
    };
    dst.copy_from_slice(src);
    let meta = Meta {
        direction,
        checksum,
        // A packet with an input device was routed here from elsewhere.
        forwarded: direction == Direction::Outbound && msg.get_indev() != 0,
        l4_partial: !msg.is_checksum_ready(),
        proven: direction == Direction::Inbound && msg.get_nfmark() & shared.proven_mark != 0,
    };
    let out = shared.engine.handle_with(now, meta, dst);
    if out.rewritten && out.verdict == Verdict::Accept {
        // `dst` is the whole packet: the engine never rewrites one the
        // copy range cut short, so the kernel gets back every byte.
        let target = msg.get_payload_mut();
        if let Some(target) = target.get_mut(..n) {
            target.copy_from_slice(dst);
            stats.rewritten.fetch_add(1, Relaxed);
        }
    }
    deliver(&mut Inline { shared, stats, index, now, direction, packet: dst }, &out);
    match out.verdict {
        Verdict::Accept => NfVerdict::Accept,
        Verdict::Drop => NfVerdict::Drop,
    }
}

/// The daemon's effects of one packet: counters, bans to the ban keeper,
/// log lines and persona answers to the output thread, drop events to the
/// event file; never waiting on a full channel (each loss is counted).
struct Inline<'a> {
    shared: &'a Shared,
    stats: &'a WorkerStats,
    index: usize,
    now: Timestamp,
    direction: Direction,
    packet: &'a [u8],
}

impl Effects for Inline<'_> {
    fn count(&mut self, out: &Outcome) {
        let stats = self.stats;
        match out.verdict {
            Verdict::Accept => {
                stats.accepted.fetch_add(1, Relaxed);
            }
            Verdict::Drop => {
                stats.dropped.fetch_add(1, Relaxed);
                // A closed port touched by a source not banned here: the
                // fleet's sweep detector counts hosts.
                if matches!(out.reason, Reason::ClosedPort | Reason::ClosedPortReject)
                    && out.ban.is_none()
                    && let (Some(fleet), Some(key)) = (&self.shared.fleet, out.source)
                {
                    fleet.send(super::fleet::Out::Touch(key));
                }
                if let Some(counter) = stats.drops.get(out.reason as usize) {
                    counter.fetch_add(1, Relaxed);
                }
                if let Some(events) = &self.shared.events {
                    let addrs = crate::wire::addresses(self.packet);
                    // The drop alone: the ban keeper reports bans.
                    let event = Event::from_outcome(self.now, self.direction, addrs, out).next();
                    if event.is_some_and(|e| events.try_send(e).is_err()) {
                        stats.lost.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }

    fn ban(&mut self, key: SourceKey, ban: Ban) {
        self.shared.bans_started.count(&ban);
        if let Some(fleet) = &self.shared.fleet {
            fleet.send(super::fleet::Out::Ban(key, ban));
        }
        if self.shared.kernel.try_send(KernelMsg::Ban(key, ban)).is_err() {
            self.stats.lost.fetch_add(1, Relaxed);
        }
    }

    fn gate(&mut self, event: GateEvent) {
        if let Some(line) = gate_line(self.shared, self.now, self.packet, event) {
            hand_over(self.shared, self.stats, Output::Log(line));
        }
    }

    fn reply(&mut self, reply: Reply) {
        hand_over(self.shared, self.stats, Output::Reply(self.index, reply));
    }
}

/// The log line for an authorization (always) or a refused SPA packet
/// (within the log limit).
fn gate_line(shared: &Shared, now: Timestamp, packet: &[u8], event: GateEvent) -> Option<String> {
    let (src, _) = crate::wire::addresses(packet)?;
    match event {
        GateEvent::Authorized { via, mask, until } => {
            let ports: Vec<String> = shared
                .engine
                .gate()
                .hidden()
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, h)| format!("{}/{}", h.proto.name(), h.port))
                .collect();
            let secs = until.saturating_since(now).as_secs();
            let via = match via {
                Via::Spa => "spa",
                Via::Knock => "knock",
            };
            Some(format!("authorized {src} by {via} for {} for {secs}s", ports.join(", ")))
        }
        GateEvent::Rejected(why) if shared.gate_log.allow(now) => {
            Some(format!("spa refused from {src}: {}", why.name()))
        }
        GateEvent::Rejected(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_output_channel_is_counted_never_waited_on() {
        let (kernel, _k) = crossbeam::channel::bounded(1);
        let (out_tx, rx) = crossbeam::channel::bounded(2);
        let shared = Shared {
            engine: Arc::new(Engine::new(crate::Config::default())),
            clock: super::super::clock::Clock::start(),
            stop: AtomicBool::new(false),
            kernel,
            output: out_tx,
            events: None,
            workers: vec![WorkerStats::default()],
            fail_open: true,
            shed_backlog: 1,
            shed_age: std::time::Duration::from_millis(1),
            gate_log: Rate::new(10.0, 10),
            proven_mark: 0,
            bans_started: BanStarts::default(),
            fleet: None,
        };
        let stats = &shared.workers[0];
        for i in 0..5 {
            hand_over(&shared, stats, Output::Log(format!("line {i}")));
        }
        assert_eq!(stats.lost.load(Relaxed), 3, "two fit, three lost, none waited for");
        assert_eq!(rx.len(), 2);
        // The output thread drains the channel and stops with the daemon.
        shared.stop.store(true, Relaxed);
        output(&shared, &rx);
        assert!(rx.is_empty());
    }

    #[test]
    fn shedding_starts_above_the_threshold_and_stops_at_half_of_it() {
        let mut s = Shedder::new(2048);
        let seen: Vec<bool> = [0, 2048, 2049, 1500, 1025, 1024, 1500, 3000]
            .into_iter()
            .map(|b| s.update(b))
            .collect();
        assert_eq!(seen, [false, false, true, true, true, false, false, true]);
    }
}
