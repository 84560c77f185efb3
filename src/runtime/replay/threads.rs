//! `replay --threads N`: the calling thread reads and accounts, N - 1
//! threads judge, and the result is the one thread's, packet for packet.
//!
//! The engine keeps a source's state (its record, flows, bans and network)
//! in one table shard, and each shard's state changes only with its own
//! sources' packets. Judging thread `i` of `n` judges the packets whose remote
//! party lives in a shard `s` with `s % n == i`, in capture order, and
//! sweeps only those shards, at the same points of the capture as one
//! thread would. So each shard sees the same calls in the same order as
//! with one thread, and ends the same. Replay's table of dropped requests
//! is split by shard the same way.
//!
//! What the shards share is put in capture order:
//!
//! - **the ban cap** (`policy::BanOrder`): before a ban spends it, the
//!   banning thread waits until every other thread has judged every packet
//!   before this one. Only bans read the cap, so their order is the one
//!   thread's.
//! - **the ports learned from replies**: every packet reads them. A packet
//!   that may teach a port not yet open (an outbound SYN-ACK or datagram
//!   from one) is a fence: the threads finish everything before it, it is
//!   judged after all of them, and nothing after it starts before it ends.
//!   A survey learns a file's answered ports before its replay, so fences
//!   are rare.
//! - **the report and the events**: the reading thread takes the threads'
//!   results back per batch, merges them by capture order and accounts for
//!   them there, as one thread does.
//!
//! An OS persona and the gate of hidden ports keep tables that span the
//! shards; with either, one thread judges ([`super::threads_for`]).

use std::cell::Cell;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::channel::{Receiver, Sender, bounded};

use super::{Decided, Drive, File, Judge, Placed, ReplayError, Run, Step};
use crate::classify::PortProto;
use crate::engine::{Direction, Engine};
use crate::policy::BanOrder;
use crate::time::Timestamp;
use crate::track::{Ban, Part, SourceKey};
use crate::wire::{self, TcpFlags, Transport};

/// Frames per batch, over all threads.
const BATCH: usize = 4096;
/// Batches in flight before the reader waits for the oldest one's results.
const DEPTH: usize = 4;

/// Replays `files` with `threads` judging threads besides the caller.
pub(super) fn run(
    state: &mut Run<'_>,
    files: &[PathBuf],
    threads: usize,
) -> Result<(), ReplayError> {
    let engine = state.engine;
    let progress = Arc::new(Progress::new(threads));
    // Unset again however the replay ends.
    let _order = OrderedBans::new(engine, Arc::clone(&progress));
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            let (batches, batches_rx) = bounded::<Batch>(DEPTH + 1);
            let (results_tx, results) = bounded::<Batch>(DEPTH + 1);
            let progress = &*progress;
            let part = Part { index, of: threads };
            std::thread::Builder::new()
                .name(format!("judge-{index}"))
                .spawn_scoped(scope, move || work(engine, part, progress, &batches_rx, &results_tx))
                .map_err(ReplayError::Write)?;
            workers.push(Worker { batches, results, pending: Batch::default(), spare: Vec::new() });
        }
        let mut sharded = Sharded { workers, seq: 0, in_flight: 0, queued: 0 };
        state.files(files, &mut sharded)
        // Dropping `sharded` closes the batch channels: the threads end.
    })
}

/// One judging thread, seen from the reader.
struct Worker {
    batches: Sender<Batch>,
    /// Batches back, with their results.
    results: Receiver<Batch>,
    /// Its part of the batch being filled.
    pending: Batch,
    /// Batches back and accounted, whose buffers the next ones reuse: a
    /// fresh buffer per batch would cost the kernel's zeroing of its pages.
    spare: Vec<Batch>,
}

/// A thread's part of a run of frames: its frames and every sweep, and,
/// once back, what came of each.
#[derive(Default)]
struct Batch {
    decided: Option<Decided>,
    items: Vec<Item>,
    /// The IP packets of its frames, end to end.
    bytes: Vec<u8>,
    /// The sequence number after the run's last.
    end: u64,
    /// Each item's result, by sequence number.
    out: Vec<(u64, Out)>,
}

enum Item {
    Frame { seq: u64, placed: Placed, bytes: Range<usize>, fence: bool },
    Sweep { seq: u64, now: Timestamp },
}

/// A thread's result for one item. Most are steps, held by value: boxing
/// them would allocate once a packet.
#[allow(clippy::large_enum_variant)]
enum Out {
    Step(Placed, Step),
    Lifted(Timestamp, Vec<(SourceKey, Ban)>),
}

/// The reader's side: fills batches, sends them, merges what comes back.
struct Sharded {
    workers: Vec<Worker>,
    /// The next item's sequence number: items are numbered in capture
    /// order, frames and sweeps alike.
    seq: u64,
    /// Batches sent and not yet accounted.
    in_flight: usize,
    /// Frames in the batch being filled.
    queued: usize,
}

impl Drive for Sharded {
    fn frame(
        &mut self,
        run: &mut Run<'_>,
        file: &mut File,
        placed: Placed,
        ip: &[u8],
    ) -> Result<(), ReplayError> {
        let fence = may_teach_a_port(run.engine, placed, ip);
        if fence {
            self.send(file.checksums.decided)?;
            self.drain(run, file)?;
        }
        let seq = self.next_seq();
        let n = self.workers.len();
        let index = run.engine.shard_of(placed.remote()) % n;
        if let Some(w) = self.workers.get_mut(index) {
            let start = w.pending.bytes.len();
            w.pending.bytes.extend_from_slice(ip);
            let bytes = start..w.pending.bytes.len();
            w.pending.items.push(Item::Frame { seq, placed, bytes, fence });
        }
        self.queued += 1;
        if fence {
            self.send(file.checksums.decided)?;
            self.drain(run, file)?;
        } else if self.queued >= BATCH {
            self.send(file.checksums.decided)?;
            if self.in_flight > DEPTH {
                self.merge_one(run, file)?;
            }
        }
        Ok(())
    }

    fn sweep(&mut self, _run: &mut Run<'_>, now: Timestamp) -> Result<(), ReplayError> {
        let seq = self.next_seq();
        for w in &mut self.workers {
            w.pending.items.push(Item::Sweep { seq, now });
        }
        Ok(())
    }

    fn flush(&mut self, run: &mut Run<'_>, file: &mut File) -> Result<(), ReplayError> {
        self.send(file.checksums.decided)?;
        self.drain(run, file)
    }
}

impl Sharded {
    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }

    /// Sends the batch being filled, if it holds anything.
    fn send(&mut self, decided: Decided) -> Result<(), ReplayError> {
        if self.workers.iter().all(|w| w.pending.items.is_empty()) {
            return Ok(());
        }
        let end = self.seq;
        for w in &mut self.workers {
            let next = w.spare.pop().unwrap_or_default();
            let mut batch = std::mem::replace(&mut w.pending, next);
            batch.decided = Some(decided);
            batch.end = end;
            w.batches.send(batch).map_err(|_| ReplayError::Thread)?;
        }
        self.in_flight += 1;
        self.queued = 0;
        Ok(())
    }

    /// Accounts for every batch sent.
    fn drain(&mut self, run: &mut Run<'_>, file: &mut File) -> Result<(), ReplayError> {
        while self.in_flight > 0 {
            self.merge_one(run, file)?;
        }
        Ok(())
    }

    /// Takes the oldest batch's results from every thread and accounts for
    /// them in capture order.
    fn merge_one(&mut self, run: &mut Run<'_>, file: &mut File) -> Result<(), ReplayError> {
        self.in_flight -= 1;
        let mut done = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            done.push(w.results.recv().map_err(|_| ReplayError::Thread)?);
        }
        let mut parts: Vec<_> = done.iter_mut().map(|b| b.out.drain(..).peekable()).collect();
        loop {
            // The lowest sequence number at the head of a part.
            let next = parts.iter_mut().filter_map(|p| p.peek().map(|(seq, _)| *seq)).min();
            let Some(seq) = next else { break };
            let mut lifted_at: Option<(Timestamp, Vec<(SourceKey, Ban)>)> = None;
            for part in &mut parts {
                let Some((_, out)) = part.next_if(|(s, _)| *s == seq) else { continue };
                match out {
                    Out::Step(placed, step) => run.account(file, placed, step)?,
                    // A sweep runs on every thread: its lifted bans meet
                    // here, in the order one sweep gives.
                    Out::Lifted(now, lifted) => {
                        lifted_at.get_or_insert_with(|| (now, Vec::new())).1.extend(lifted);
                    }
                }
            }
            if let Some((now, mut lifted)) = lifted_at {
                lifted.sort_by_key(|(k, _)| *k);
                run.unbans(now, &lifted)?;
            }
        }
        drop(parts);
        for (w, mut batch) in self.workers.iter_mut().zip(done) {
            batch.items.clear();
            batch.bytes.clear();
            w.spare.push(batch);
        }
        Ok(())
    }
}

/// A judging thread: judges its batches' frames and sweeps its shards.
fn work(
    engine: &Engine,
    part: Part,
    progress: &Progress,
    batches: &Receiver<Batch>,
    results: &Sender<Batch>,
) {
    let mut judge = Judge::new(engine);
    TURN.with(|t| t.set(Some(part.index)));
    for mut batch in batches {
        let decided = batch.decided.unwrap_or(Decided::Verify);
        let mut out = std::mem::take(&mut batch.out);
        for item in &batch.items {
            match *item {
                Item::Frame { seq, placed, ref bytes, fence } => {
                    progress.reach(part.index, seq);
                    if fence {
                        progress.wait(part.index, seq);
                    }
                    let ip = batch.bytes.get(bytes.clone()).unwrap_or_default();
                    out.push((seq, Out::Step(placed, judge.frame(decided, placed, ip))));
                }
                Item::Sweep { seq, now } => {
                    progress.reach(part.index, seq);
                    out.push((seq, Out::Lifted(now, engine.sweep_part(now, part).lifted)));
                }
            }
        }
        batch.out = out;
        progress.reach(part.index, batch.end);
        if results.send(batch).is_err() {
            break;
        }
    }
}

/// True for a packet that may teach the engine a port not open yet: an
/// outbound SYN-ACK, or an outbound datagram, from a port the map does not
/// hold while learning is on. A port open now stays open, and the reader
/// is ahead of every thread, so a packet this calls false teaches nothing.
fn may_teach_a_port(engine: &Engine, placed: Placed, ip: &[u8]) -> bool {
    let ports = engine.ports();
    if placed.direction != Direction::Outbound || !ports.learns() {
        return false;
    }
    let Ok(view) = wire::parse_headers(ip) else { return false };
    match view.transport {
        Transport::Tcp(t) if t.flags.has(TcpFlags::SYN | TcpFlags::ACK) => {
            !ports.is_open(PortProto::Tcp, t.src_port)
        }
        Transport::Udp(u) => !ports.is_open(PortProto::Udp, u.src_port),
        _ => false,
    }
}

thread_local! {
    /// The judging thread's index, for [`BanOrder::wait`].
    static TURN: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How far each thread has judged: every item of its own before the
/// number it holds is done.
#[derive(Debug)]
struct Progress {
    done_below: Vec<AtomicU64>,
}

impl Progress {
    fn new(threads: usize) -> Self {
        Self { done_below: (0..threads).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Thread `index` has done all of its items before `seq`.
    fn reach(&self, index: usize, seq: u64) {
        if let Some(p) = self.done_below.get(index) {
            p.store(seq, Ordering::Release);
        }
    }

    /// The item `seq` of thread `index` waits until every other thread has
    /// done all of its items before `seq`. Never a deadlock: the thread
    /// with the lowest number never waits.
    fn wait(&self, index: usize, seq: u64) {
        let mut spins = 0u32;
        for (i, p) in self.done_below.iter().enumerate() {
            while i != index && p.load(Ordering::Acquire) < seq {
                spins = spins.saturating_add(1);
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// The current item of the calling judging thread, which is about to
    /// spend the ban cap.
    fn wait_turn(&self) {
        let Some(index) = TURN.with(Cell::get) else { return };
        let seq = self.done_below.get(index).map_or(0, |p| p.load(Ordering::Acquire));
        self.wait(index, seq);
    }
}

/// The ban cap in capture order, for as long as it lives.
struct OrderedBans<'a> {
    engine: &'a Engine,
}

#[derive(Debug)]
struct Turns(Arc<Progress>);

impl BanOrder for Turns {
    fn wait(&self) {
        self.0.wait_turn();
    }
}

impl<'a> OrderedBans<'a> {
    fn new(engine: &'a Engine, progress: Arc<Progress>) -> Self {
        engine.order_bans(Some(Arc::new(Turns(progress))));
        Self { engine }
    }
}

impl Drop for OrderedBans<'_> {
    fn drop(&mut self) {
        self.engine.order_bans(None);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::Config;
    use crate::wire::craft::Craft;

    fn placed(direction: Direction) -> Placed {
        let (src, dst) = (IpAddr::from([198, 18, 1, 1]), IpAddr::from([198, 18, 2, 1]));
        Placed { now: Timestamp::ZERO, direction, src, dst, cut: false }
    }

    #[test]
    fn outbound_answers_from_ports_not_yet_open_are_fences() {
        let engine = Engine::new(Config::default());
        let (host, peer) = (IpAddr::from([198, 18, 1, 1]), IpAddr::from([198, 18, 2, 1]));
        let syn_ack = Craft::tcp(host, peer, 8080, 40_000, TcpFlags::SYN | TcpFlags::ACK).build();
        let rst = Craft::tcp(host, peer, 8080, 40_000, TcpFlags::RST).build();
        let datagram = Craft::udp(host, peer, 5353, 40_000).build();
        let out = placed(Direction::Outbound);
        assert!(may_teach_a_port(&engine, out, &syn_ack));
        assert!(may_teach_a_port(&engine, out, &datagram));
        assert!(!may_teach_a_port(&engine, out, &rst), "a reset teaches nothing");
        assert!(!may_teach_a_port(&engine, placed(Direction::Inbound), &syn_ack));
        // Once open, the port stays open: no fence.
        engine.ports().learn(PortProto::Tcp, 8080);
        assert!(!may_teach_a_port(&engine, out, &syn_ack));
        // Without learning, nothing is ever taught.
        let rules = "[services]\nlearn_from_replies = false\n";
        let still = Engine::new(Config::from_toml(rules).expect("rules"));
        assert!(!may_teach_a_port(&still, out, &datagram));
    }

    #[test]
    fn a_thread_waits_only_for_the_threads_behind_it() {
        let p = Progress::new(3);
        p.reach(0, 10);
        p.reach(1, 12);
        p.reach(2, 11);
        // Every other thread is at or past 10: no wait.
        p.wait(0, 10);
        let p = Arc::new(p);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait(1, 12))
        };
        // Thread 1 at 12 waits for thread 0 (at 10) and 2 (at 11).
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        p.reach(0, 13);
        p.reach(2, 12);
        waiter.join().expect("waiter");
    }
}
