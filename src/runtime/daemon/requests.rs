//! The control requests: status, bans, ban and unban, answered with the
//! types of `runtime::protocol`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use super::housekeeping::{Totals, ban_counts, uninspected};
use crate::firewall::{self, Backend};
use crate::policy::Reason;
use crate::runtime::control::{self, Request};
use crate::runtime::protocol::{
    Answer, BanEntry, BanList, BanStart, Banned, Lifted, Memory, StatusReport, WorkerStatus,
};
use crate::runtime::queue::{self, KernelQueue};
use crate::runtime::worker::{KernelMsg, Shared};
use crate::time::Timestamp;
use crate::track::SourceKey;

#[derive(Clone, Debug)]
pub(super) struct Info {
    /// Where the queue rules live.
    pub(super) backend: Backend,
    /// The daemon manages the firewall objects.
    pub(super) manage: bool,
    /// When it started.
    pub(super) started: Instant,
    /// Where `/metrics` is served, `off`, or why it is not.
    pub(super) metrics: String,
}

pub(super) fn serve_control(
    listener: &std::os::unix::net::UnixListener,
    shared: &Shared,
    kernel: &Sender<KernelMsg>,
    info: &Info,
) {
    control::serve(listener, &shared.stop, |req| handle(req, shared, kernel, info));
}

/// Why the daemon refused a control request.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// `ban --for 0s`.
    #[error("a ban must last longer than 0s")]
    ZeroLength,
    /// The engine would not ban the address.
    #[error(transparent)]
    Engine(#[from] crate::engine::Refused),
    /// The ban keeper is gone (the daemon is stopping).
    #[error("the daemon is stopping: its ban keeper no longer takes changes")]
    KeeperGone,
}

pub(super) fn handle(
    req: Request,
    shared: &Shared,
    kernel: &Sender<KernelMsg>,
    info: &Info,
) -> Result<Answer, Refusal> {
    let engine = &shared.engine;
    let config = engine.config();
    let now = shared.clock.now();
    let send = |msg| kernel.send(msg).map_err(|_| Refusal::KeeperGone);
    match req {
        Request::Status => Ok(Answer::Status(Box::new(status(shared, info)))),
        Request::Bans => Ok(Answer::Bans(BanList { bans: ban_entries(shared, now) })),
        Request::Ban { ip, seconds } => {
            let length = seconds.map_or(config.ban.duration.get(), Duration::from_secs);
            if length.is_zero() {
                return Err(Refusal::ZeroLength);
            }
            let ban = engine.ban(now, ip, length)?;
            shared.bans_started.count(&ban);
            let key = SourceKey::new(ip, config.tracking.ipv6_prefix);
            if let Some(fleet) = &shared.fleet {
                fleet.send(crate::runtime::fleet::Out::Ban(key, ban));
            }
            send(KernelMsg::Ban(key, ban))?;
            Ok(Answer::Banned(Banned { source: key.to_string(), seconds: length.as_secs() }))
        }
        Request::Unban { ip } => {
            // An address: its own ban and its network's; none: every ban.
            let (keys, lifted): (Vec<SourceKey>, Vec<SourceKey>) = match ip {
                Some(ip) => {
                    let own = SourceKey::new(ip, config.tracking.ipv6_prefix);
                    let lifted: Vec<SourceKey> =
                        engine.unban(ip).into_iter().map(|(k, _)| k).collect();
                    let mut keys = lifted.clone();
                    // The kernel set may hold it even when the engine does not.
                    if !keys.contains(&own) {
                        keys.push(own);
                    }
                    (keys, lifted)
                }
                None => {
                    let all: Vec<SourceKey> =
                        engine.bans(now).into_iter().map(|(k, _)| k).collect();
                    let lifted =
                        all.iter().copied().filter(|k| engine.lift(*k).is_some()).collect();
                    (all, lifted)
                }
            };
            for key in keys {
                send(KernelMsg::Unban(key))?;
            }
            Ok(Answer::Lifted(Lifted { lifted: lifted.iter().map(ToString::to_string).collect() }))
        }
    }
}

/// Active bans, with their start and end as Unix seconds of the wall
/// clock now.
pub(super) fn ban_entries(shared: &Shared, now: Timestamp) -> Vec<BanEntry> {
    let offset = shared.clock.wall_offset();
    shared
        .engine
        .bans(now)
        .into_iter()
        .map(|(k, b)| BanEntry {
            source: k.to_string(),
            kind: b.kind.name().to_owned(),
            reason: b.reason.to_string(),
            since: b.since.shifted(offset).secs(),
            until: b.until.shifted(offset).secs(),
            remaining: b.until.saturating_since(now).as_secs(),
            offences: b.offences,
        })
        .collect()
}

pub(super) fn status(shared: &Shared, info: &Info) -> StatusReport {
    let kq: BTreeMap<u16, KernelQueue> =
        queue::kernel_queues().into_iter().map(|k| (k.queue, k)).collect();
    let workers = shared
        .workers
        .iter()
        .map(|w| {
            let q = w.queue.load(Relaxed);
            let cpu = w.cpu.load(Relaxed);
            WorkerStatus {
                queue: q,
                cpu: (cpu != u32::MAX).then_some(cpu),
                packets: w.packets.load(Relaxed),
                accepted: w.accepted.load(Relaxed),
                dropped: w.dropped.load(Relaxed),
                shed: w.shed.load(Relaxed),
                rewritten: w.rewritten.load(Relaxed),
                answered: w.answered.load(Relaxed),
                lost: w.lost.load(Relaxed),
                errors: w.errors.load(Relaxed),
                kernel: u16::try_from(q).ok().and_then(|q| kq.get(&q)).copied().unwrap_or_default(),
            }
        })
        .collect();
    let totals = Totals::read(&shared.workers);
    let drops = Reason::ALL
        .iter()
        .zip(totals.drops)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.name().to_owned(), n))
        .collect();
    let (missed, share) = uninspected(info.backend, info.manage, &totals)
        .map_or((None, None), |(m, s)| (Some(m), Some(s)));
    let stats = shared.engine.stats();
    let (rss, peak) = crate::runtime::memory();
    let active = ban_counts(shared);
    let firewall = match (info.manage, info.backend) {
        (false, _) => "unmanaged",
        (true, Backend::Nft) => "nft",
        (true, Backend::Iptables) => "iptables-nft",
    };
    StatusReport {
        pid: std::process::id(),
        uptime: info.started.elapsed().as_secs(),
        firewall: firewall.to_owned(),
        fail_mode: if shared.fail_open { "open" } else { "closed" }.to_owned(),
        workers,
        packets: totals.packets,
        inspected: totals.inspected(),
        rewritten: totals.rewritten,
        answered: totals.answered,
        persona: shared.engine.config().persona.name.clone(),
        uninspected: missed,
        uninspected_share: share,
        drops,
        tables: stats.tables,
        guards: stats.guards,
        gate: stats.gate,
        bans: active.ipv4_bans + active.ipv6_bans,
        quarantines: active.ipv4_quarantines + active.ipv6_quarantines,
        active,
        bans_started: shared
            .bans_started
            .read()
            .into_iter()
            .map(|(reason, kind, count)| BanStart {
                reason: reason.to_owned(),
                kind: kind.to_owned(),
                count,
            })
            .collect(),
        kernel_counters: if info.manage { firewall::kernel_counters() } else { None },
        memory: Memory { rss, peak, limit: shared.engine.config().daemon.memory_limit << 20 },
        metrics: info.metrics.clone(),
        fleet: shared.fleet.as_ref().map(|link| {
            link.stats.report(crate::runtime::fleet::host_name(&shared.engine.config().fleet))
        }),
    }
}
