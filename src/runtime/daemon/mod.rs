//! DAEMON: `portcloak run`. Sets up the kernel side, starts the pinned
//! workers and the threads around them, and takes everything down again
//! on SIGTERM or SIGINT.
//!
//! Threads: one worker per queue (see [`super::worker`]); the ban keeper,
//! which batches bans into one nft transaction per 50 ms, logs them and
//! saves the state file; housekeeping (queue backlogs every 10 ms, engine
//! sweeps every second, listening ports, the periodic summary); the
//! control socket; and, when configured, the event file writer.
//!
//! This file starts and stops them; each has a file of its own:
//! `keeper.rs`, `housekeeping.rs`, `requests.rs` (the control socket's
//! answers) and `events.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam::channel::{self};

use crate::config::{Config, FailMode};
use crate::engine::Engine;
use crate::firewall::{self, Backend, Entry, Pair, Plan};
use crate::runtime::clock::Clock;
use crate::runtime::control::{self};
use crate::runtime::queue::{self};
use crate::runtime::worker::{self, BanStarts, KernelMsg, Shared, WorkerStats};
use crate::runtime::{fleet, knock, listen, log, metrics, state, sysctl};
use crate::time::{Rate, Timestamp};
use crate::track::SourceKey;

mod events;
mod housekeeping;
mod keeper;
mod requests;

use self::events::write_events;
use self::housekeeping::housekeeping;
use self::keeper::Keeper;
use self::requests::{Info, serve_control};

/// Ban changes are applied to the kernel at most this long after they happen.
pub(super) const BATCH: Duration = Duration::from_millis(50);
/// Capacity of the ban channel; a full channel loses bans to the kernel
/// (the engine still drops those sources) and counts them.
const BAN_CHANNEL: usize = 4096;
/// Capacity of the event channel.
const EVENT_CHANNEL: usize = 65_536;
/// Log lines and persona answers waiting for the output thread.
const OUTPUT_CHANNEL: usize = 4096;

/// How `run` was asked to start.
#[derive(Debug)]
pub struct Options {
    /// The rules.
    pub config: Config,
    /// Install and remove portcloak's firewall objects (not with `--no-firewall`).
    pub firewall: bool,
}

/// The number of workers `config` asks for: `daemon.workers`, or one per CPU.
pub fn worker_count(config: &Config) -> u16 {
    let n = match config.daemon.workers {
        0 => core_affinity::get_core_ids().map_or(1, |c| c.len()),
        n => n,
    };
    u16::try_from(n.max(1)).unwrap_or(u16::MAX)
}

/// The firewall plan for `config`, with the kernel's default TTLs read
/// now: only packets sent with them take the persona's TTL.
pub fn plan(config: &Config, backend: Backend, workers: u16) -> Plan {
    let mut plan = Plan::new(config, backend, workers);
    if let Some(ttl) = plan.ttl.as_mut() {
        let default = |name| sysctl::read(name).ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        ttl.from_v4 = default("net.ipv4.ip_default_ttl");
        ttl.from_v6 = default("net.ipv6.conf.default.hop_limit");
    }
    plan
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> anyhow::Result<()> {
    let Options { config, firewall: manage } = options;
    require_capabilities(&config)?;
    // Taken from the start, so a stop request during start-up still ends
    // in the clean shutdown below rather than the default exit.
    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&term))?;
    }
    let d = config.daemon.clone();
    let listener = control::bind(&d.socket)?;
    let clock = Clock::start();
    let now = clock.now();
    let (restored, saved_proofs) =
        match state::load(&d.state_file, now, 0, config.tracking.ipv6_prefix) {
            Ok(loaded) => {
                for why in &loaded.skipped {
                    log(&format!("warning: {why}"));
                }
                (loaded.bans, loaded.proofs)
            }
            Err(e) => {
                log(&format!("warning: {e}; starting with no saved bans"));
                (Vec::new(), Vec::new())
            }
        };
    let mut engine = Engine::new(config.clone());
    if config.spa.enabled() {
        engine = engine.with_spa_key(read_spa_key(&config.spa.key_file)?);
    }
    let engine = Arc::new(engine);
    // Rules edited between runs (another `ipv6_prefix`, escalation off)
    // leave saved keys no set would match: dropped, each with a warning.
    let (restored, foreign): (Vec<_>, Vec<_>) =
        restored.into_iter().partition(|saved| engine.tracks(saved.key));
    for saved in &foreign {
        log(&format!(
            "warning: saved ban of {} left out: these rules track no IPv6 /{} networks",
            saved.key,
            saved.key.prefix_len()
        ));
    }
    for saved in &restored {
        engine.restore(now, saved.key, saved.ban);
    }
    let kept: BTreeMap<SourceKey, Vec<Pair>> =
        restored.iter().map(|s| (s.key, s.keep.clone())).filter(|(_, k)| !k.is_empty()).collect();
    listen::refresh(engine.ports());
    engine.set_local(listen::local_addresses());

    // The fleet's active bans before the queues open.
    let fleet_key = if config.fleet.enabled() {
        Some(knock::read_key(&config.fleet.key_file).context("[fleet] key_file")?)
    } else {
        None
    };
    if let Some(key) = &fleet_key {
        let proofs = if manage {
            firewall::proofs().unwrap_or_else(|| saved_proofs.clone())
        } else {
            Vec::new()
        };
        let v6 = config.tracking.ipv6_prefix;
        let proven = |k: SourceKey| {
            proofs.iter().any(|p| p.pair.is_some() && SourceKey::new(p.source, v6) == k)
        };
        let clocks = fleet::Clocks { offset: clock.wall_offset() };
        match fleet::catch_up(
            &config.fleet,
            key.clone(),
            &engine,
            clocks,
            &proven,
            Duration::from_secs(5),
        ) {
            Ok(done) => log(&format!(
                "fleet: caught up: {} message(s) read, {} ban(s) of peers applied",
                done.read,
                done.applied.len()
            )),
            Err(e) => log(&format!(
                "warning: fleet: cannot catch up ({e}); starting with this host's bans"
            )),
        }
    }

    let _sysctls = persona_sysctls(&config)?;
    let workers = worker_count(&config);
    let backend = if manage { firewall::detect()? } else { Backend::Iptables };
    let plan = plan(&config, backend, workers);
    if manage {
        firewall::remove_queue_rules().context("removing stale queue rules")?;
    }
    let mut queues = Vec::new();
    let fail_open = d.fail_mode == FailMode::Open;
    for num in plan.inbound.iter() {
        queues.push(queue::open(num, &d, d.copy_range, fail_open).context("opening NFQUEUE")?);
    }
    if let Some(out) = plan.outbound {
        for num in out.iter() {
            queues.push(queue::open(num, &d, u16::MAX, fail_open).context("opening NFQUEUE")?);
        }
    }
    if let Some(num) = plan.hidden_queue {
        // Hidden ports fail closed: a full queue drops, and its worker
        // never sheds.
        let q = queue::open(num, &d, d.copy_range, false)
            .context("opening the hidden ports' NFQUEUE")?;
        queues.push(queue::BoundQueue { inspects_all: true, ..q });
    }
    if manage {
        let bans = entries(&engine, now, &kept);
        // Proven clients stay proven across a restart: the proof sets of
        // the table this one replaces (after a crash), or those a clean
        // stop saved.
        let proofs = firewall::proofs().unwrap_or(saved_proofs);
        firewall::install(&plan, &bans, &proofs).context("installing firewall objects")?;
    }

    // The fleet's key, link and outbox, with `[fleet]` on.
    let fleet = fleet_key.map(|key| {
        let (link, outbox) = fleet::Link::new();
        (key, Arc::new(link), outbox)
    });
    let (kernel_tx, kernel_rx) = channel::bounded(BAN_CHANNEL);
    let (events_tx, events_rx) = channel::bounded(EVENT_CHANNEL);
    let (output_tx, output_rx) = channel::bounded(OUTPUT_CHANNEL);
    let events_on = !d.events.as_os_str().is_empty();
    let shared = Arc::new(Shared {
        engine: Arc::clone(&engine),
        clock,
        stop: AtomicBool::new(false),
        kernel: kernel_tx.clone(),
        output: output_tx,
        events: events_on.then(|| events_tx.clone()),
        workers: (0..queues.len()).map(|_| WorkerStats::default()).collect(),
        fail_open,
        shed_backlog: d.shed_backlog,
        shed_age: d.shed_age.get(),
        gate_log: Rate::new(10.0, 10),
        proven_mark: plan.proven_mark(),
        bans_started: BanStarts::default(),
        fleet: fleet.as_ref().map(|(_, link, _)| Arc::clone(link)),
    });

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for (index, q) in queues.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        // Outbound queue i shares CPU i with inbound queue i: the kernel
        // hashes both directions of a flow to the same index.
        let core = (!cores.is_empty() && !q.inspects_all)
            .then(|| cores.get((index % usize::from(workers)) % cores.len()))
            .flatten()
            .copied();
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{}", q.num))
                .spawn(move || worker::run(q, &shared, index, core))?,
        );
    }
    let started = Instant::now();
    let output = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || worker::output(&shared, &output_rx))?
    };
    let keeper = {
        let (shared, path, events) =
            (Arc::clone(&shared), d.state_file.clone(), events_on.then(|| events_tx.clone()));
        std::thread::Builder::new().name("bans".into()).spawn(move || {
            let mut keeper = Keeper::new(&shared, manage, &path, kept);
            keeper.run(&kernel_rx, events.as_ref());
        })?
    };
    let writer = if events_on {
        let path = d.events.clone();
        Some(
            std::thread::Builder::new()
                .name("events".into())
                .spawn(move || write_events(&path, &events_rx, clock))?,
        )
    } else {
        None
    };
    drop(events_tx);
    let house = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || housekeeping(&shared, backend, manage))?
    };
    // Metrics that cannot be served are logged, never a reason to stop
    // inspecting packets.
    let (metrics_listener, metrics_state) = match d.metrics_addr() {
        None => (None, "off".to_owned()),
        Some(addr) => match metrics::bind(addr) {
            Ok(listener) => (Some(listener), addr.to_string()),
            Err(e) => {
                let why = format!("cannot listen on {addr} ([daemon] metrics): {e}");
                log(&format!("error: {why}; running without metrics"));
                (None, format!("not served: {why}"))
            }
        },
    };
    let info = Info { backend, manage, started, metrics: metrics_state };
    let metrics_thread = match metrics_listener {
        Some(listener) => {
            let shared = Arc::clone(&shared);
            let info = info.clone();
            Some(std::thread::Builder::new().name("metrics".into()).spawn(move || {
                metrics::serve(&listener, &shared.stop, &|| {
                    metrics::render(&requests::status(&shared, &info))
                });
            })?)
        }
        None => None,
    };
    let fleet_thread = match fleet {
        Some((key, link, outbox)) => {
            let shared = Arc::clone(&shared);
            let settings = config.fleet.clone();
            Some(std::thread::Builder::new().name("fleet".into()).spawn(move || {
                // Off the packet path: the fleet thread waits for the ban
                // keeper rather than lose a peer's ban.
                let kernel = |(k, ban): fleet::Applied| {
                    let _ = shared.kernel.send(KernelMsg::Ban(k, ban));
                };
                let proven = |k: SourceKey| {
                    manage && firewall::proven_pairs(k).is_ok_and(|pairs| !pairs.is_empty())
                };
                let daemon = fleet::Daemon {
                    engine: &shared.engine,
                    clocks: fleet::Clocks { offset: shared.clock.wall_offset() },
                    stop: &shared.stop,
                    kernel: &kernel,
                    proven: &proven,
                    log: &|line| log(&line),
                };
                fleet::run(&settings, key, &link, &outbox, &daemon);
            })?)
        }
        None => None,
    };
    let ctl = {
        let shared = Arc::clone(&shared);
        let kernel = kernel_tx.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(&listener, &shared, &kernel, &info))?
    };

    log(&format!(
        "started: {} worker(s) on queue(s) {}, {} firewall{}, fail {}, {} ban(s) restored, persona {}",
        workers,
        plan.inbound,
        if backend == Backend::Nft { "nft" } else { "iptables-nft" },
        if manage { "" } else { " (not managed: --no-firewall)" },
        if shared.fail_open { "open" } else { "closed" },
        restored.len(),
        config.persona.name,
    ));

    // Every thread runs until `stop`: one that ends before is dead (a
    // panic, or a bug). The daemon then exits non-zero, so systemd restarts
    // it and the bans come back from the state file.
    let mut crashed = None;
    while !term.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        crashed = first_dead(
            handles
                .iter()
                .chain([&keeper, &house, &ctl, &output])
                .chain(&metrics_thread)
                .chain(&fleet_thread),
        );
        if crashed.is_some() {
            break;
        }
    }
    if let Some(name) = crashed {
        // Leave the firewall objects: the queue bypass keeps traffic
        // flowing and the kernel keeps dropping banned sources until a
        // restart (systemd's Restart=on-failure) takes over.
        shared.stop.store(true, Relaxed);
        anyhow::bail!(
            "thread {name} stopped unexpectedly; firewall objects left in place for the restart"
        );
    }
    log("stopping");
    // Removing the table empties the proof sets: the state file keeps them.
    if manage && let Some(proofs) = firewall::proofs() {
        let _ = kernel_tx.send(KernelMsg::Proofs(proofs));
    }
    drop(kernel_tx);
    if manage && let Err(e) = firewall::remove() {
        log(&format!("error: removing firewall objects: {e}"));
    }
    shared.stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let _ = ctl.join();
    if let Some(m) = metrics_thread {
        let _ = m.join();
    }
    if let Some(f) = fleet_thread {
        let _ = f.join();
    }
    let _ = house.join();
    let _ = output.join();
    drop(shared);
    let _ = keeper.join();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = std::fs::remove_file(&d.socket);
    let saved = engine.bans(clock.now()).len();
    log(&format!("stopped; {saved} ban(s) kept in {}", d.state_file.display()));
    Ok(())
}

/// The name of the first of `threads` that has ended.
fn first_dead<'a>(mut threads: impl Iterator<Item = &'a JoinHandle<()>>) -> Option<String> {
    threads.find(|h| h.is_finished()).map(|h| h.thread().name().unwrap_or("unnamed").to_owned())
}

/// Puts a persona's sysctls back when dropped: on a clean stop, and on
/// every error return after they were applied.
struct SysctlGuard(sysctl::Applied);

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        self.0.restore();
    }
}

/// Applies the persona's sysctls when the rules ask for it; otherwise puts
/// back any a run that did not stop cleanly left changed.
fn persona_sysctls(config: &Config) -> anyhow::Result<Option<SysctlGuard>> {
    let saved = sysctl::saved_path(&config.daemon.state_file);
    let Some(persona) = config.persona().filter(|_| config.persona.apply_sysctls) else {
        if let Some(left) = sysctl::Applied::left_over(&saved) {
            left.restore();
        }
        return Ok(None);
    };
    let settings = sysctl::wanted(&persona.sysctls)?;
    let applied = sysctl::apply(&settings, &saved).context("applying the persona's sysctls")?;
    if let (Some(want), Ok((now, core))) =
        (persona.sysctls.window_scale, sysctl::window_scale_now())
        && now != want
    {
        log(&format!(
            "warning: window scale {now}, not the persona's {want}: net.core.rmem_max = {core} is global and sets the floor"
        ));
    }
    Ok(Some(SysctlGuard(applied)))
}

/// Reads the SPA key, refusing a symlink, a file owned by anyone but root
/// or the daemon's own user, and one that anyone but its owner may read.
/// The file is opened without following links, and checked as opened.
pub fn read_spa_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let context = || format!("reading the SPA key file {}", path.display());
    let link = std::fs::symlink_metadata(path).with_context(context)?;
    if link.file_type().is_symlink() {
        anyhow::bail!(
            "the SPA key file {} is a symbolic link: name the file itself",
            path.display()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(context)?;
    let meta = file.metadata().with_context(context)?;
    // /proc/self belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    if meta.uid() != 0 && meta.uid() != me {
        anyhow::bail!(
            "the SPA key file {} belongs to uid {}, not root: `chown root` it",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the SPA key file {} has mode {mode:o}: others may read it; `chmod 600` it",
            path.display()
        );
    }
    let mut text = String::new();
    file.read_to_string(&mut text).with_context(context)?;
    crate::gate::spa::parse_key(&text)
        .map_err(|e| anyhow::anyhow!("the SPA key file {}: {e}", path.display()))
}

/// Active bans and quarantines as the kernel sets hold them.
fn entries(engine: &Engine, now: Timestamp, kept: &BTreeMap<SourceKey, Vec<Pair>>) -> Vec<Entry> {
    engine
        .bans(now)
        .into_iter()
        .map(|(key, b)| Entry {
            key,
            remaining: b.until.saturating_since(now),
            kind: b.kind,
            keep: kept.get(&key).cloned().unwrap_or_default(),
        })
        .collect()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Fails unless the process holds the capabilities `config` needs.
fn require_capabilities(config: &Config) -> anyhow::Result<()> {
    missing_capability(config, super::effective_capabilities())
        .map_or(Ok(()), |why| Err(anyhow::anyhow!(why)))
}

/// Why a process with the `effective` capability mask cannot run
/// `config`, if it cannot.
fn missing_capability(config: &Config, effective: u64) -> Option<String> {
    if effective & (1 << CAP_NET_ADMIN) == 0 {
        return Some("portcloak run needs root or CAP_NET_ADMIN".into());
    }
    let answers = config.persona().is_some_and(|p| !p.answer.is_empty());
    if answers && effective & (1 << CAP_NET_RAW) == 0 {
        return Some(format!(
            "persona `{}` answers nmap's probes from a raw socket, which needs CAP_NET_RAW; \
             under systemd install the drop-in: install -D -m 0644 dist/portcloak.service.d/net-raw.conf \
             /etc/systemd/system/portcloak.service.d/net-raw.conf && systemctl daemon-reload",
            config.persona.name
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_thread_of_any_kind_is_found_by_name() {
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str, dies: bool| {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    assert!(!dies, "the ban keeper died");
                    while !stop.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .unwrap()
        };
        let alive = [spawn("worker-0", false), spawn("housekeeping", false)];
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(first_dead(alive.iter()), None);
        let keeper = spawn("bans", true);
        while !keeper.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(first_dead(alive.iter().chain([&keeper])).as_deref(), Some("bans"));
        stop.store(true, Relaxed);
    }

    #[test]
    fn cap_net_raw_is_required_only_by_a_persona_that_answers() {
        let with = |persona: &str| {
            Config::from_toml(&format!("[persona]\nname = \"{persona}\"\n")).unwrap()
        };
        let admin = 1 << CAP_NET_ADMIN;
        let raw = 1 << CAP_NET_RAW;
        let none = Config::default();
        assert!(missing_capability(&none, 0).unwrap().contains("CAP_NET_ADMIN"));
        assert_eq!(missing_capability(&none, admin), None);
        assert_eq!(missing_capability(&with("freebsd"), admin), None);
        let why = missing_capability(&with("windows-1709"), admin).unwrap();
        assert!(why.contains("CAP_NET_RAW") && why.contains("net-raw.conf"), "{why}");
        assert_eq!(missing_capability(&with("windows-1709"), admin | raw), None);
    }
}
