//! FIREWALL: the kernel side of the daemon. portcloak owns exactly these
//! objects and touches nothing else:
//!
//! - the nft table `inet portcloak`: the ban and quarantine sets (IPv6
//!   keyed by the tracked prefix), with element timeouts; the allow and
//!   deny sets; the dynamic sets of proof (`proven4/6`: the source,
//!   protocol and port of every handshake conntrack saw complete, and of
//!   every UDP flow this host answered; `peers4/6`: proven sources); a
//!   chain after conntrack, ahead of every filter, that drops banned and
//!   denied sources except on flows this host opened; and the `proof`
//!   chain, which records proofs, drops quarantined sources' other new
//!   connections and marks packets: the fast path for a proven pair's new
//!   connection, a bit for the worker on a proven source's;
//! - the rules that feed the queues. Where the kernel has the nft `queue`
//!   expression they are chains of the same table. Where it does not (the
//!   common case: `CONFIG_NFT_QUEUE` unset), they live in the iptables-nft
//!   chains `PORTCLOAK_IN` and `PORTCLOAK_OUT` of the `mangle` table, each
//!   with one jump from `PREROUTING` or `POSTROUTING`.
//!
//! Installing replaces the nft table in one transaction and loads each
//! iptables chain with one `iptables-restore --noflush`, so stale objects
//! from a crashed run are replaced, never stacked. [`remove`] deletes them
//! all. Ban updates are one nft transaction per batch.

mod render;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;

pub use self::render::{Backend, MIN_FAST_WINDOW, PROOF_SET_SIZE, Plan, QueueRange, TtlRewrite};
use crate::classify::PortProto;
use crate::track::{BanKind, SourceKey};

/// The nft table portcloak owns.
pub const TABLE: &str = "portcloak";
/// The iptables chain that feeds inbound packets to the queues.
pub const CHAIN_IN: &str = "PORTCLOAK_IN";
/// The iptables chain that feeds outbound replies to the queues.
pub const CHAIN_OUT: &str = "PORTCLOAK_OUT";

/// A firewall command that failed.
#[derive(Debug, Error)]
pub enum FirewallError {
    /// The program is not installed, or could not be started.
    #[error("cannot run `{program}` (install nftables and iptables): {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// A (protocol, port) pair of a source.
pub type Pair = (PortProto, u16);

/// A ban or quarantine as the kernel sets hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The source.
    pub key: SourceKey,
    /// How long from now.
    pub remaining: Duration,
    /// A ban or a quarantine.
    pub kind: BanKind,
    /// For a quarantine, the proven pairs that keep working.
    pub keep: Vec<Pair>,
}

/// An element of the kernel's proof sets: a proven source (`peers4/6`),
/// or a proven (source, protocol, port) pair (`proven4/6`), with the time
/// it has left. Carried across a restart, so that proven clients keep the
/// fast path and keep passing a ban of their network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The source, as the set holds it (an IPv6 source's tracked prefix).
    pub source: std::net::IpAddr,
    /// The pair, for an element of `proven4/6`.
    pub pair: Option<Pair>,
    /// Time left before the kernel drops it.
    pub left: Duration,
}

/// One change to the kernel sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanOp {
    /// Ban or quarantine (again) a source for this long from now.
    Add(Entry),
    /// Lift a ban or quarantine, with the pairs it kept.
    Remove(SourceKey, Vec<Pair>),
}

/// Runs `program args`, feeding `input` on stdin when given.
fn exec(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, FirewallError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { program, source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| FirewallError::Spawn { program, source })?;
    }
    let out =
        child.wait_with_output().map_err(|source| FirewallError::Spawn { program, source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Which backend this kernel supports for the queue rules: nft when a
/// dry run of a `queue` rule passes, iptables-nft otherwise.
pub fn detect() -> Result<Backend, FirewallError> {
    let probe = "table inet portcloak_probe {\n chain c {\n  type filter hook prerouting priority 0;\n  queue flags bypass num 0\n }\n}\n";
    match exec("nft", &["-c", "-f", "-"], Some(probe)) {
        Ok(_) => Ok(Backend::Nft),
        Err(FirewallError::Failed { .. }) => Ok(Backend::Iptables),
        Err(e) => Err(e),
    }
}

/// Installs everything in `plan`, replacing the objects of an earlier run,
/// with `bans` already in the sets. The nft table is replaced whole; each
/// iptables chain is flushed and reloaded, and its jump added only when
/// missing. A chain the plan no longer has (`daemon.outbound` switched
/// off) stays: call [`remove_queue_rules`] first.
pub fn install(plan: &Plan, bans: &[Entry], proofs: &[Proof]) -> Result<(), FirewallError> {
    exec("nft", &["-f", "-"], Some(&plan.nft_script(bans, proofs)))?;
    if plan.backend == Backend::Iptables {
        for family in [Family::V4, Family::V6] {
            exec(family.restore(), &["--noflush"], Some(&plan.iptables_script(family.is_v6())))?;
            for (hook, chain) in plan.iptables_jumps() {
                let check = ["-t", "mangle", "-C", hook, "-j", chain];
                if exec(family.tool(), &check, None).is_err() {
                    exec(family.tool(), &["-t", "mangle", "-I", hook, "1", "-j", chain], None)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes everything portcloak may have installed, in any earlier run.
/// Missing objects are not errors.
pub fn remove() -> Result<(), FirewallError> {
    remove_iptables()?;
    let script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    exec("nft", &["-f", "-"], Some(&script)).map(drop)
}

/// Removes the iptables queue rules of an earlier run and leaves the ban
/// table, so the kernel keeps dropping banned sources while the daemon
/// starts. (nft queue chains go with the table's atomic replacement.)
pub fn remove_queue_rules() -> Result<(), FirewallError> {
    remove_iptables()
}

fn remove_iptables() -> Result<(), FirewallError> {
    for family in [Family::V4, Family::V6] {
        let tool = family.tool();
        for (hook, chain) in [("PREROUTING", CHAIN_IN), ("POSTROUTING", CHAIN_OUT)] {
            if exec(tool, &["-t", "mangle", "-n", "-L", chain], None).is_err() {
                continue;
            }
            while exec(tool, &["-t", "mangle", "-D", hook, "-j", chain], None).is_ok() {}
            exec(tool, &["-t", "mangle", "-F", chain], None)?;
            exec(tool, &["-t", "mangle", "-X", chain], None)?;
        }
        drop_empty_mangle(family);
    }
    Ok(())
}

/// iptables-nft leaves the `mangle` table and its base chains behind when
/// the last rule goes. A table with no rules at all filters nothing, so
/// it is deleted, leaving the ruleset as portcloak found it.
fn drop_empty_mangle(family: Family) {
    let table = format!("{} mangle", family.nft_family());
    let Ok(listing) = exec("nft", &["-a", "list", "table", family.nft_family(), "mangle"], None)
    else {
        return;
    };
    let has_rules = listing.lines().any(|l| {
        let l = l.trim();
        l.contains("# handle") && !l.starts_with("chain ") && !l.starts_with("table ")
    });
    if !has_rules {
        let _ = exec("nft", &["-f", "-"], Some(&format!("delete table {table}\n")));
    }
}

/// Applies a batch of ban changes in one nft transaction; IPv6 keys
/// wider than `ipv6_prefix` are banned networks.
pub fn apply(ops: &[BanOp], ipv6_prefix: u8) -> Result<(), FirewallError> {
    if ops.is_empty() {
        return Ok(());
    }
    exec("nft", &["-f", "-"], Some(&render::ban_ops(ops, ipv6_prefix))).map(drop)
}

/// Packets the queue rules sent to the queues so far (every one,
/// inspected or passed by the kernel's fail-open and bypass), read from
/// the rule counters; `None` when they cannot be read.
pub fn queued_packets(backend: Backend) -> Option<u64> {
    match backend {
        Backend::Iptables => {
            let mut total = 0u64;
            for family in [Family::V4, Family::V6] {
                for chain in [CHAIN_IN, CHAIN_OUT] {
                    let args = ["-t", "mangle", "-n", "-v", "-x", "-L", chain];
                    let Ok(text) = exec(family.tool(), &args, None) else { continue };
                    total = total.saturating_add(render::sum_iptables_counters(&text));
                }
            }
            Some(total)
        }
        Backend::Nft => {
            let text = exec("nft", &["list", "chain", "inet", TABLE, "inbound"], None).ok()?;
            Some(render::sum_nft_queue_counters(&text))
        }
    }
}

/// The kernel's counters of what it passed or dropped itself, by rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    /// New connections of proven pairs passed without a queue trip.
    pub fast_path: u64,
    /// New connections of quarantined sources dropped.
    pub quarantined: u64,
    /// Packets of banned sources dropped, IPv4: what they still send.
    pub banned4: u64,
    /// The same, IPv6 (banned /64s and /48s).
    pub banned6: u64,
    /// Packets of denylisted sources dropped, IPv4.
    pub denied4: u64,
    /// The same, IPv6.
    pub denied6: u64,
    /// The bytes of the packets `banned4` counts.
    pub banned4_bytes: u64,
    /// The bytes of the packets `banned6` counts.
    pub banned6_bytes: u64,
    /// The bytes of the packets `denied4` counts.
    pub denied4_bytes: u64,
    /// The bytes of the packets `denied6` counts.
    pub denied6_bytes: u64,
}

/// Reads the counters of the `inet portcloak` rules; `None` when the
/// table cannot be listed.
pub fn kernel_counters() -> Option<KernelCounters> {
    // Terse: without the elements of the sets, which may be many.
    let text = exec("nft", &["-t", "list", "table", "inet", TABLE], None).ok()?;
    Some(render::kernel_counters(&text))
}

/// Every element of the proof sets now, each with its time left; `None`
/// when there is no portcloak table (a first start, or after a clean stop).
pub fn proofs() -> Option<Vec<Proof>> {
    let mut out = Vec::new();
    for set in ["proven4", "proven6", "peers4", "peers6"] {
        let text = exec("nft", &["-j", "list", "set", "inet", TABLE, set], None).ok()?;
        out.extend(render::proofs_of(&text));
    }
    Some(out)
}

/// The pairs `key` proved, as the kernel's proof sets hold them now.
pub fn proven_pairs(key: SourceKey) -> Result<Vec<Pair>, FirewallError> {
    let set = if key.is_ipv6() { "proven6" } else { "proven4" };
    let text = exec("nft", &["list", "set", "inet", TABLE, set], None)?;
    Ok(render::pairs_of(&text, key))
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    const fn is_v6(self) -> bool {
        matches!(self, Self::V6)
    }

    const fn tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables-nft",
            Self::V6 => "ip6tables-nft",
        }
    }

    const fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-nft-restore",
            Self::V6 => "ip6tables-nft-restore",
        }
    }

    const fn nft_family(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }
}

#[cfg(test)]
mod tests;
