//! The lab. The first test re-records every fixture from the live tools, in private network
//! namespaces (`tests/fixtures/record.sh`), and runs the replay checks on
//! the fresh captures. This keeps the recording script working and proves
//! the signatures against the tools installed today, not only against the
//! committed captures.
//!
//! The second runs the daemon inline against real scanners.
//!
//! Needs root, `ip`, `nmap`, `masscan`, `zmap`, `hping3`, `tcpdump`,
//! `ethtool`, `python3`, `nft`, `iptables-nft` and `p0f`.
//! With `CI=true` a missing prerequisite fails the test; elsewhere the test
//! skips and prints why.

use std::path::Path;
use std::process::Command;

use crate::replay::CHECKS;
use crate::util::{prerequisites, root};

const TOOLS: [&str; 16] = [
    "ip",
    "nmap",
    "masscan",
    "zmap",
    "hping3",
    "tcpdump",
    "ethtool",
    "python3",
    "nft",
    "iptables-nft",
    "ip6tables-nft",
    "p0f",
    "conntrack",
    "curl",
    "promtool",
    "nats-server",
];

/// The lab tests share two CPUs; run them one at a time, so a flood in one
/// does not starve the timed scans of the other. Other CPU-heavy tests
/// (`scale`) take it too.
pub(crate) static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the lab, or skips (outside CI) or fails (in CI) when a
/// prerequisite is missing.
fn take_lab() -> Option<std::sync::MutexGuard<'static, ()>> {
    prerequisites("a lab test", &TOOLS)
        .then(|| LAB.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

#[test]
fn captures_recorded_now_from_live_tools_meet_the_same_bounds() {
    let Some(_lab) = take_lab() else { return };
    let dir = std::env::temp_dir().join(format!("portcloak-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new("bash")
        .arg(root().join("tests/fixtures/record.sh"))
        .env("PORTCLOAK_FIXTURE_DIR", &dir)
        .output()
        .expect("run record.sh");
    assert!(
        out.status.success(),
        "record.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_all(&dir);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Captures taken with checksum offload on, the default on veth, as an
/// operator takes them: the kernels' packets carry checksums left for the
/// NIC. Recorded twice from the live tools, offload on and off, and
/// replayed with the default `--checksums auto`: the same sources banned,
/// the offloaded recording judged exactly as with checksums unchecked, and
/// the clients never dropped.
#[test]
fn captures_taken_with_checksum_offload_replay_as_those_without() {
    use portcloak::runtime::replay::{self, Decided};
    let Some(_lab) = take_lab() else { return };
    let names = ["nmap-sT", "nmap-sU", "legit-burst", "legit-parallel"];
    let record = |offload: &str| {
        let dir = std::env::temp_dir()
            .join(format!("portcloak-offload-{offload}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = Command::new("bash")
            .arg(root().join("tests/fixtures/record.sh"))
            .args(names)
            .env("PORTCLOAK_FIXTURE_DIR", &dir)
            .env("PORTCLOAK_OFFLOAD", offload)
            .output()
            .expect("run record.sh");
        assert!(
            out.status.success(),
            "record.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    };
    let (on, off) = (record("on"), record("off"));
    let replay = |dir: &Path, name: &str, mode: replay::ChecksumMode| {
        let engine = portcloak::Engine::new(portcloak::Config::default());
        let options = replay::Options { checksums: mode, ..replay::Options::default() };
        let path = dir.join(format!("{name}.pcap"));
        replay::run(&engine, &[path], &options, &mut std::io::sink()).expect("replay")
    };
    let bans = |r: &replay::Report| -> Vec<String> {
        r.bans
            .iter()
            .map(|(k, b)| format!("{k} {:?} {:?}", b.kind, std::mem::discriminant(&b.reason)))
            .collect()
    };
    for name in names {
        let (with, without) = (
            replay(&on, name, replay::ChecksumMode::Auto),
            replay(&off, name, replay::ChecksumMode::Auto),
        );
        let c = &with.checksums[0];
        eprintln!("offload: {name}: {:?}, drops {:?} against {:?}", c, with.drops, without.drops);
        assert_eq!(c.decided, Decided::Offload, "{name}");
        // Two live recordings differ in timing, so a ban's kind may differ
        // between them; who is banned may not. Within one recording,
        // checksums left for the NIC must judge exactly as unchecked ones.
        let sources =
            |r: &replay::Report| r.bans.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sources(&with),
            sources(&without),
            "{name}: the same sources banned with offload on and off"
        );
        let unchecked = replay(&on, name, replay::ChecksumMode::Off);
        assert_eq!(bans(&with), bans(&unchecked), "{name}: auto judges as unchecked");
        assert_eq!(
            (with.accepted, with.dropped, &with.drops),
            (unchecked.accepted, unchecked.dropped, &unchecked.drops),
            "{name}"
        );
        assert!(
            !with.drops.contains_key(&portcloak::Reason::BadChecksum),
            "{name}: {:?}",
            with.drops
        );
        if name.starts_with("legit") {
            assert_eq!((with.dropped, without.dropped), (0, 0), "{name}: a client dropped");
        } else {
            assert_eq!(with.bans.len(), 1, "{name}: the scanner is banned");
        }
    }
    // The recordings did carry offloaded checksums: strict verification
    // drops the connect scan's and the clients' packets, which the kernel
    // built.
    for name in ["nmap-sT", "legit-burst"] {
        let strict = replay(&on, name, replay::ChecksumMode::Verify);
        let auto = replay(&on, name, replay::ChecksumMode::Auto);
        assert!(auto.checksums[0].partial_accepted > 0, "{name}: no checksum left for the NIC");
        assert!(
            strict.drops.get(&portcloak::Reason::BadChecksum).copied().unwrap_or(0) > 0,
            "{name}: {:?}",
            strict.drops
        );
    }
    for dir in [on, off] {
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}

fn check_all(dir: &Path) {
    for (name, check) in CHECKS {
        eprintln!("lab: {name}");
        check(dir);
    }
}

/// The daemon inline, against real nmap, hping3 and clients
/// (`tests/lab/inline.py`): every scan learns at most what the issue
/// allows, clients never fail, kill -9 fails open, bans survive restarts
/// and floods, and a clean stop leaves an empty ruleset.
#[test]
fn inline_daemon_hides_the_server_from_real_scanners() {
    run_script("inline");
}

/// OS personas against real nmap -O and p0f, and real traffic through the
/// rewritten path (`tests/lab/persona.py`): windows reads as Windows with
/// no Linux guess, freebsd as FreeBSD, windows-1709 as Windows 10 1709 with
/// forged answers, none as Linux; downloads keep their bytes and retransmit
/// no more than without a persona.
#[test]
fn personas_fool_nmap_and_p0f_and_keep_connections_whole() {
    run_script("persona");
}

/// Runs `tests/lab/NAME.py BINARY WORKDIR` in the lab; its log goes to
/// stderr.
fn run_script(name: &str) {
    let Some(_lab) = take_lab() else { return };
    let dir = std::env::temp_dir().join(format!("portcloak-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("python3")
        .arg(root().join(format!("tests/lab/{name}.py")))
        .arg(env!("CARGO_BIN_EXE_portcloak"))
        .arg(&dir)
        .status()
        .unwrap_or_else(|e| panic!("run {name}.py: {e}"));
    assert!(status.success(), "tests/lab/{name}.py failed (its log is above)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hidden services against real nmap, `portcloak knock` and crafted
/// packets (`tests/lab/hidden.py`): SSH reads filtered, opens for the
/// client after SPA or the knock sequence and never for the attacker;
/// replays, wrong keys, stale, truncated and random packets open nothing
/// and are counted; the hidden port stays closed when the daemon dies.
#[test]
fn hidden_ports_open_only_for_a_source_that_proves_itself() {
    run_script("hidden");
}

/// Proven clients against real nmap decoys, hping3 and forged segments
/// (`tests/lab/proof.py`): a returning client and a DNS-like client skip
/// the queue; decoy and forged sweeps never cut off the client; a blind
/// spoofer proves nothing; `-sO` and `-sY` learn nothing and are banned;
/// the server's resolver survives a forged NULL; packets from the server's
/// own and link-local addresses ban nothing; a scanner that used one
/// service learns nothing more.
#[test]
fn proven_clients_skip_the_queue_and_forged_packets_never_cut_them_off() {
    run_script("proof");
}

/// An IPv6 connect scan from a new /64 of one /48 every 5 ports
/// (`tests/lab/spread.py`): the /48 is banned in the kernel's wide6 set,
/// which drops its unproven /64s and passes the one that proved itself;
/// the ban survives a restart, and unbanning an address lifts it.
#[test]
fn a_scan_spread_over_the_64s_of_a_48_ends_in_a_kernel_ban_of_the_48() {
    run_script("spread");
}

/// The live daemon's `/metrics` (`tests/lab/metrics.py`): curl scrapes it
/// and promtool finds no problem; after a scan the drops, bans and
/// kernel-drop counters move by what `status` shows; a thousand idle
/// connections to the metrics port delay a scrape by at most its timeout
/// while a client loop keeps every request; and every metric the Grafana
/// dashboard queries is on the endpoint.
#[test]
fn the_metrics_endpoint_counts_what_status_shows_and_outlasts_idle_clients() {
    run_script("metrics");
}

/// A fleet of four hosts sharing bans through NATS JetStream
/// (`tests/lab/fleet.py`, Debian's nats-server in a broker namespace): a
/// scan of one host bans the scanner on the others within 1 s; 100 bans'
/// propagation (p50, p99); a sweep of one closed port per host is banned
/// fleet-wide; a client proven on one host is only quarantined there when
/// a decoy scan with its address hits another; a message signed with
/// another key changes nothing; bans wait out a stopped broker; a host
/// restarted later catches up; a three-node cluster with a node killed
/// keeps bans flowing.
#[test]
fn a_fleet_shares_bans_and_catches_sweeps_through_jetstream() {
    run_script("fleet");
}
