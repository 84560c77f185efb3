//! PROTOCOL: what the daemon answers on its control socket, one type per
//! answer. The daemon builds these and the CLI reads them back, so a
//! renamed field fails to compile, or fails the round-trip test, instead
//! of printing "?".

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::queue::KernelQueue;
use crate::firewall::KernelCounters;
use crate::gate::GateCounters;
use crate::policy::GuardCounters;
use crate::time::format_duration;
use crate::track::TableStats;

/// An answer of the daemon.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// To `status`.
    Status(Box<StatusReport>),
    /// To `bans`.
    Bans(BanList),
    /// To `ban`.
    Banned(Banned),
    /// To `unban`.
    Lifted(Lifted),
}

/// `status`: counters of every worker, the tables, the guards, the kernel
/// and the bans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime: u64,
    /// `nft`, `iptables-nft`, or `unmanaged` (`--no-firewall`).
    pub firewall: String,
    /// `open` or `closed`.
    pub fail_mode: String,
    /// One per queue.
    pub workers: Vec<WorkerStatus>,
    /// Packets the workers received.
    pub packets: u64,
    /// Of those, inspected by the engine.
    pub inspected: u64,
    /// Packets the persona rewrote.
    pub rewritten: u64,
    /// Probes the persona answered.
    pub answered: u64,
    /// The persona's name.
    pub persona: String,
    /// Queued packets that passed uninspected, when the kernel's counters
    /// could be read.
    pub uninspected: Option<u64>,
    /// Their share of the queued packets.
    pub uninspected_share: Option<f64>,
    /// Drops by reason name; reasons with none are left out.
    pub drops: BTreeMap<String, u64>,
    /// Table sizes and evictions.
    pub tables: TableStats,
    /// Bans the guards held back.
    pub guards: GuardCounters,
    /// Hidden services.
    pub gate: GateCounters,
    /// Active bans.
    pub bans: usize,
    /// Active quarantines.
    pub quarantines: usize,
    /// Active bans and quarantines by address family.
    pub active: ActiveBans,
    /// Bans started since the daemon started, by kind of reason and kind
    /// of ban, zeros included.
    pub bans_started: Vec<BanStart>,
    /// What the kernel passed and dropped itself; absent unmanaged.
    pub kernel_counters: Option<KernelCounters>,
    /// Memory, in bytes.
    pub memory: Memory,
    /// Where `/metrics` is served: an address, `off`, or why it is not.
    pub metrics: String,
    /// The fleet, when `[fleet]` is on.
    pub fleet: Option<FleetStatus>,
}

/// The fleet's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This host's name in the fleet.
    pub name: String,
    /// Connected, with the stream and this host's consumer ready.
    pub connected: bool,
    /// Messages published.
    pub sent: u64,
    /// Messages read from the stream.
    pub received: u64,
    /// Peers' bans applied here, sweeps included.
    pub applied: u64,
    /// This host's own messages read back.
    pub own: u64,
    /// Sweeps across hosts banned here.
    pub sweeps: u64,
    /// Peers' bans the local guards refused.
    pub guarded: u64,
    /// Messages waiting for the broker.
    pub pending: u64,
    /// Age of the oldest of them, in milliseconds.
    pub lag_ms: u64,
    /// Messages to publish dropped (queue full).
    pub dropped: u64,
    /// Messages refused, by reason (`malformed`, `unsigned`,
    /// `bad-signature`, `stale`, `replayed`).
    pub refused: BTreeMap<String, u64>,
    /// The last broker error.
    pub error: String,
}

/// Active bans and quarantines by address family (an IPv6 entry is a /64
/// or a wider network).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveBans {
    /// IPv4 sources banned.
    pub ipv4_bans: usize,
    /// IPv6 networks banned.
    pub ipv6_bans: usize,
    /// IPv4 sources quarantined.
    pub ipv4_quarantines: usize,
    /// IPv6 networks quarantined.
    pub ipv6_quarantines: usize,
}

/// How many bans of one kind of reason and one kind started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanStart {
    /// The kind of reason (`signature`, `probe`, `closed-ports`,
    /// `slow-scan`, `spread-scan`, `manual`).
    pub reason: String,
    /// `ban` or `quarantine`.
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// One worker, with the kernel's counters of its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its queue.
    pub queue: u32,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<u32>,
    /// Packets received.
    pub packets: u64,
    /// Accepted.
    pub accepted: u64,
    /// Dropped.
    pub dropped: u64,
    /// Passed uninspected because the worker was behind.
    pub shed: u64,
    /// Rewritten by the persona.
    pub rewritten: u64,
    /// Probes answered by the persona.
    pub answered: u64,
    /// Bans, events or output lost to full channels.
    pub lost: u64,
    /// Queue errors.
    pub errors: u64,
    /// The kernel's counters of the queue.
    pub kernel: KernelQueue,
}

/// The daemon's memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident now.
    pub rss: u64,
    /// Peak resident.
    pub peak: u64,
    /// `daemon.memory_limit`.
    pub limit: u64,
}

/// One active ban or quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The source key: an address, or an IPv6 network.
    pub source: String,
    /// `ban` or `quarantine`.
    pub kind: String,
    /// Why, as `closed-ports 6`.
    pub reason: String,
    /// Start, in Unix seconds of the wall clock.
    pub since: u64,
    /// End, likewise.
    pub until: u64,
    /// Seconds left.
    pub remaining: u64,
    /// Bans this source has had, this one included.
    pub offences: u16,
}

/// `bans`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanList {
    /// Every active ban, sorted by source.
    pub bans: Vec<BanEntry>,
}

/// `ban`: what was banned, for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banned {
    /// The source key banned.
    pub source: String,
    /// The length, in seconds.
    pub seconds: u64,
}

/// `unban`: the source keys whose bans were lifted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifted {
    /// Their names.
    pub lifted: Vec<String>,
}

impl StatusReport {
    /// The report as `portcloak status` prints it.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "portcloak pid {}, up {}s, firewall {}, fail {}",
            self.pid, self.uptime, self.firewall, self.fail_mode
        )?;
        writeln!(
            out,
            "{:>6} {:>4} {:>12} {:>12} {:>10} {:>8} {:>8} {:>10} {:>10}",
            "queue",
            "cpu",
            "packets",
            "accepted",
            "dropped",
            "shed",
            "waiting",
            "q_dropped",
            "u_dropped"
        )?;
        for w in &self.workers {
            let k = &w.kernel;
            writeln!(
                out,
                "{:>6} {:>4} {:>12} {:>12} {:>10} {:>8} {:>8} {:>10} {:>10}",
                w.queue,
                w.cpu.map_or("-".to_owned(), |c| c.to_string()),
                w.packets,
                w.accepted,
                w.dropped,
                w.shed,
                k.waiting,
                k.queue_dropped,
                k.user_dropped,
            )?;
        }
        writeln!(
            out,
            "inspected {} of {} packets; uninspected {} ({})",
            self.inspected,
            self.packets,
            self.uninspected.unwrap_or(0),
            self.uninspected_share.map_or("unknown".to_owned(), |x| format!("{:.2}%", x * 100.0)),
        )?;
        writeln!(
            out,
            "persona {}: {} packets rewritten, {} probes answered",
            self.persona, self.rewritten, self.answered
        )?;
        let g = &self.gate;
        writeln!(
            out,
            "hidden ports: {} opened, {} dropped; authorized by spa {}, by knock {}; spa refused: \
             malformed {}, bad-hmac {}, stale {}, wrong-source {}, replay {}, not-hidden {}; \
             rate-limited {}, over budget {}",
            g.hidden_opened,
            g.hidden_dropped,
            g.spa_authorized,
            g.knock_authorized,
            g.spa_malformed,
            g.spa_bad_hmac,
            g.spa_stale,
            g.spa_wrong_source,
            g.spa_replay,
            g.spa_not_hidden,
            g.spa_rate_limited,
            g.spa_over_budget,
        )?;
        let drops: Vec<String> = self.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            out,
            "drops: {}",
            if drops.is_empty() { "none".to_owned() } else { drops.join(", ") }
        )?;
        writeln!(out, "tables: {}", self.tables)?;
        let (lost, errors) =
            self.workers.iter().fold((0, 0), |(l, e), w| (l + w.lost, e + w.errors));
        if lost + errors > 0 {
            writeln!(
                out,
                "warnings: {lost} bans or events lost to full channels, {errors} queue errors"
            )?;
        }
        if let Some(k) = &self.kernel_counters {
            writeln!(
                out,
                "kernel: {} new connections of proven pairs passed (fast path), {} of quarantined \
                 sources dropped; what banned sources still send, dropped: {} packets ({} bytes) \
                 IPv4, {} packets ({} bytes) IPv6; denied: {} IPv4, {} IPv6",
                k.fast_path,
                k.quarantined,
                k.banned4,
                k.banned4_bytes,
                k.banned6,
                k.banned6_bytes,
                k.denied4,
                k.denied6,
            )?;
        }
        let started: Vec<String> = self
            .bans_started
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| format!("{} {} {}", b.kind, b.reason, b.count))
            .collect();
        writeln!(
            out,
            "bans started: {}",
            if started.is_empty() { "none".to_owned() } else { started.join(", ") }
        )?;
        let m = &self.memory;
        writeln!(
            out,
            "bans: {} ({} IPv4, {} IPv6), quarantines: {} ({} IPv4, {} IPv6); memory {} MiB \
             resident, {} MiB peak, limit {} MiB",
            self.bans,
            self.active.ipv4_bans,
            self.active.ipv6_bans,
            self.quarantines,
            self.active.ipv4_quarantines,
            self.active.ipv6_quarantines,
            m.rss >> 20,
            m.peak >> 20,
            m.limit >> 20,
        )?;
        writeln!(out, "metrics: {}", self.metrics)?;
        if let Some(f) = &self.fleet {
            let refused: Vec<String> = f
                .refused
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            writeln!(
                out,
                "fleet: {} {}; sent {}, received {} ({} own), applied {}, sweeps {}, guarded {}; \
                 refused: {}; waiting {} (lag {} ms), dropped {}{}",
                f.name,
                if f.connected { "connected" } else { "not connected" },
                f.sent,
                f.received,
                f.own,
                f.applied,
                f.sweeps,
                f.guarded,
                if refused.is_empty() { "none".to_owned() } else { refused.join(", ") },
                f.pending,
                f.lag_ms,
                f.dropped,
                if f.error.is_empty() {
                    String::new()
                } else {
                    format!("; last error: {}", f.error)
                },
            )?;
        }
        Ok(())
    }
}

impl BanList {
    /// The list as `portcloak bans` prints it.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.bans.is_empty() {
            return writeln!(out, "no active bans");
        }
        writeln!(
            out,
            "{:<28} {:<10} {:>10} {:>8}  reason",
            "source", "kind", "remaining", "offences"
        )?;
        for b in &self.bans {
            writeln!(
                out,
                "{:<28} {:<10} {:>10} {:>8}  {}",
                b.source,
                b.kind,
                format_duration(Duration::from_secs(b.remaining)),
                b.offences,
                b.reason,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_reads_back_what_the_daemon_wrote() {
        let status = StatusReport {
            pid: 7,
            uptime: 9,
            firewall: "nft".into(),
            fail_mode: "open".into(),
            workers: vec![WorkerStatus {
                queue: 1,
                cpu: Some(0),
                packets: 5,
                ..Default::default()
            }],
            packets: 5,
            inspected: 5,
            rewritten: 1,
            answered: 0,
            persona: "none".into(),
            uninspected: Some(0),
            uninspected_share: Some(0.0),
            drops: BTreeMap::from([("closed-port".to_owned(), 3)]),
            tables: TableStats { sources: 4, networks: 1, ..TableStats::default() },
            guards: GuardCounters::default(),
            gate: GateCounters::default(),
            bans: 1,
            quarantines: 0,
            active: ActiveBans { ipv4_bans: 1, ..ActiveBans::default() },
            bans_started: vec![BanStart {
                reason: "signature".into(),
                kind: "ban".into(),
                count: 1,
            }],
            kernel_counters: Some(KernelCounters { banned6: 2, ..KernelCounters::default() }),
            memory: Memory { rss: 3 << 20, peak: 4 << 20, limit: 512 << 20 },
            metrics: "127.0.0.1:9469".into(),
            fleet: None,
        };
        let round = |answer: &Answer| serde_json::to_value(answer).unwrap();
        let text = round(&Answer::Status(Box::new(status.clone())));
        assert_eq!(serde_json::from_value::<StatusReport>(text.clone()).unwrap(), status);
        // The names the lab scripts and operators' tools read.
        for key in ["packets", "workers", "kernel_counters", "memory", "tables", "guards", "gate"] {
            assert!(text.get(key).is_some(), "{key}: {text}");
        }
        assert_eq!(text["kernel_counters"]["banned6"], 2);
        let mut out = Vec::new();
        status.write_text(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("drops: closed-port 3\n") && out.contains("IPv6"), "{out}");
        assert!(out.contains("bans started: ban signature 1\n"), "{out}");
        assert!(out.contains("metrics: 127.0.0.1:9469\n"), "{out}");
        let ban = BanEntry {
            source: "fd5c:a11:5::/48".into(),
            kind: "ban".into(),
            reason: "spread-scan 4".into(),
            since: 1,
            until: 3601,
            remaining: 3600,
            offences: 1,
        };
        let list = BanList { bans: vec![ban] };
        assert_eq!(
            serde_json::from_value::<BanList>(round(&Answer::Bans(list.clone()))).unwrap(),
            list
        );
        let banned = Banned { source: "198.18.1.2".into(), seconds: 60 };
        assert_eq!(
            serde_json::from_value::<Banned>(round(&Answer::Banned(banned.clone()))).unwrap(),
            banned
        );
        let lifted = Lifted { lifted: vec!["198.18.1.2".into()] };
        assert_eq!(
            serde_json::from_value::<Lifted>(round(&Answer::Lifted(lifted.clone()))).unwrap(),
            lifted
        );
        let mut out = Vec::new();
        list.write_text(&mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("spread-scan 4"));
    }
}
