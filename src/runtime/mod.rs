//! Drivers of the engine. Each turns a packet source into `Engine::handle`
//! calls and reports what happened; none adds packet logic of its own.
//!
//! - [`replay`]: offline captures, with their own timestamps.
//! - [`knock`]: the client of hidden services (`portcloak knock`, `keygen`).
//! - [`daemon`]: `portcloak run`, inline on NFQUEUE, on the monotonic
//!   [`clock`]; its parts are [`queue`] (the sockets), [`worker`] (one per queue),
//!   [`state`] (bans across restarts), [`sysctl`] (a persona's kernel
//!   settings), [`listen`] (the host's open ports)
//!   and [`control`] (the Unix socket behind `status`, `bans`, `ban`,
//!   `unban`).

pub mod clock;
pub mod control;
pub mod daemon;
pub mod effects;
pub mod fleet;
pub mod knock;
pub mod listen;
pub mod metrics;
pub mod protocol;
pub mod queue;
pub mod replay;
pub mod state;
pub mod sysctl;
pub mod worker;

/// Writes one log line to stderr, prefixed `portcloak:` (journald keeps
/// stderr; a fail2ban filter can follow the ban lines).
#[allow(clippy::print_stderr)]
pub fn log(line: &str) {
    eprintln!("portcloak: {line}");
}

/// This process's resident and peak resident memory (`VmRSS`, `VmHWM`),
/// in bytes; 0 where `/proc` does not say.
pub fn memory() -> (u64, u64) {
    let status = self_status();
    let kib = |name| {
        status_field(&status, name)
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS"), kib("VmHWM"))
}

/// `/proc/self/status`, empty where it cannot be read.
fn self_status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

/// The value of field `name` in a `/proc/PID/status` text, trimmed.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

/// This process's effective capability set, as a mask (0 where `/proc`
/// does not say).
pub fn effective_capabilities() -> u64 {
    status_field(&self_status(), "CapEff")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}
