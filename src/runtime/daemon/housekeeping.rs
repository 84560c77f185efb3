//! Housekeeping: queue backlogs, engine sweeps, listening ports, the
//! wall-clock offset and the periodic summary.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::firewall::{self, Backend, KernelCounters};
use crate::policy::Reason;
use crate::runtime::protocol::ActiveBans;
use crate::runtime::queue::{self};
use crate::runtime::worker::{Shared, WorkerStats};
use crate::runtime::{listen, log};
use crate::time::format_duration;
use crate::track::BanKind;

/// Counter totals over every worker.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Totals {
    pub(super) packets: u64,
    pub(super) accepted: u64,
    pub(super) dropped: u64,
    pub(super) shed: u64,
    pub(super) rewritten: u64,
    pub(super) answered: u64,
    pub(super) drops: [u64; Reason::ALL.len()],
}

impl Totals {
    pub(super) fn read(workers: &[WorkerStats]) -> Self {
        let mut t = Self::default();
        for w in workers {
            t.packets += w.packets.load(Relaxed);
            t.accepted += w.accepted.load(Relaxed);
            t.dropped += w.dropped.load(Relaxed);
            t.shed += w.shed.load(Relaxed);
            t.rewritten += w.rewritten.load(Relaxed);
            t.answered += w.answered.load(Relaxed);
            for (sum, c) in t.drops.iter_mut().zip(&w.drops) {
                *sum += c.load(Relaxed);
            }
        }
        t
    }

    pub(super) fn inspected(&self) -> u64 {
        self.accepted + self.dropped
    }
}

/// Packets queued by the rules but never inspected (kernel fail-open,
/// bypass, shedding), and their share of all queued.
pub(super) fn uninspected(backend: Backend, manage: bool, totals: &Totals) -> Option<(u64, f64)> {
    let queued = if manage { firewall::queued_packets(backend)? } else { totals.packets };
    let queued = queued.max(totals.packets);
    let missed = queued.saturating_sub(totals.inspected());
    #[allow(clippy::cast_precision_loss)]
    let share = if queued == 0 { 0.0 } else { missed as f64 / queued as f64 };
    Some((missed, share))
}

pub(super) fn housekeeping(shared: &Shared, backend: Backend, manage: bool) {
    let d = &shared.engine.config().daemon;
    let mut last_sweep = Instant::now();
    let mut last_listen = Instant::now();
    let mut last_summary = Instant::now();
    let mut previous = Totals::default();
    let mut previous_kernel = KernelCounters::default();
    while !shared.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
        let kq = queue::kernel_queues();
        for w in &shared.workers {
            let num = w.queue.load(Relaxed);
            if let Some(k) = kq.iter().find(|k| u32::from(k.queue) == num) {
                w.backlog.store(k.waiting, Relaxed);
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            let sweep = shared.engine.sweep(shared.clock.now());
            shared.engine.set_wall_offset(shared.clock.wall_offset());
            for (key, _) in &sweep.lifted {
                log(&format!("unban {key} reason \"expired\""));
            }
        }
        if last_listen.elapsed() >= d.listen_interval.get() {
            last_listen = Instant::now();
            listen::refresh(shared.engine.ports());
            shared.engine.set_local(listen::local_addresses());
        }
        if last_summary.elapsed() >= d.summary_interval.get() {
            let span = last_summary.elapsed();
            last_summary = Instant::now();
            let now = Totals::read(&shared.workers);
            let kernel = if manage { firewall::kernel_counters() } else { None };
            log(&summary(
                &previous,
                &now,
                span,
                uninspected(backend, manage, &now),
                kernel.map(|k| (previous_kernel, k)),
                ban_counts(shared),
            ));
            if let Some(k) = kernel {
                previous_kernel = k;
            }
            let rss = crate::runtime::memory().0;
            if rss > d.memory_limit.saturating_mul(1 << 20) {
                log(&format!(
                    "warning: resident memory {} MiB is over daemon.memory_limit {} MiB",
                    rss >> 20,
                    d.memory_limit
                ));
            }
            previous = now;
        }
    }
}

pub(super) fn summary(
    before: &Totals,
    now: &Totals,
    span: Duration,
    missed: Option<(u64, f64)>,
    kernel: Option<(KernelCounters, KernelCounters)>,
    active: ActiveBans,
) -> String {
    let mut reasons: Vec<String> = Reason::ALL
        .iter()
        .zip(now.drops.iter().zip(&before.drops))
        .filter(|(_, (n, b))| n > b)
        .map(|(r, (n, b))| format!("{} {}", r.name(), n - b))
        .collect();
    if reasons.is_empty() {
        reasons.push("none".into());
    }
    let missed = missed.map_or_else(|| "unknown".to_owned(), |(_, s)| format!("{:.2}%", s * 100.0));
    let kernel = kernel.map_or_else(String::new, |(b, n)| {
        format!(
            "; kernel: {} fast-path, {} quarantined, banned sources still sent {} IPv4 and {} IPv6 (dropped)",
            n.fast_path.saturating_sub(b.fast_path),
            n.quarantined.saturating_sub(b.quarantined),
            n.banned4.saturating_sub(b.banned4),
            n.banned6.saturating_sub(b.banned6),
        )
    });
    format!(
        "summary {}: {} packets, {} dropped ({}), {} rewritten, {} shed{kernel}; uninspected since start {}; {} active ban(s), {} quarantine(s)",
        format_duration(span),
        now.packets - before.packets,
        now.dropped - before.dropped,
        reasons.join(", "),
        now.rewritten - before.rewritten,
        now.shed - before.shed,
        missed,
        active.ipv4_bans + active.ipv6_bans,
        active.ipv4_quarantines + active.ipv6_quarantines,
    )
}

/// Active bans and active quarantines, by family.
pub(super) fn ban_counts(shared: &Shared) -> ActiveBans {
    let mut a = ActiveBans::default();
    for (key, ban) in shared.engine.bans(shared.clock.now()) {
        let slot = match (ban.kind == BanKind::Quarantine, key.is_ipv6()) {
            (false, false) => &mut a.ipv4_bans,
            (false, true) => &mut a.ipv6_bans,
            (true, false) => &mut a.ipv4_quarantines,
            (true, true) => &mut a.ipv6_quarantines,
        };
        *slot += 1;
    }
    a
}
