//! Every fixture, replayed through the engine with the default rules,
//! against the bounds in the README's fixture table.
//!
//! Each check takes the directory of captures, so the lab test can run the
//! same checks on captures it has just re-recorded from the live tools.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use portcloak::Engine;
use portcloak::classify::ProbeKind;
use portcloak::runtime::replay::{self, Report};
use portcloak::track::{BanKind, BanReason};
use portcloak::{Config, Reason};

const ATTACKER: [u8; 4] = [198, 18, 1, 2];

fn replay(dir: &Path, name: &str) -> (Engine, Report) {
    let engine = Engine::new(Config::default());
    let mut events = Vec::new();
    let options = replay::Options { json: true, ..replay::Options::default() };
    let path = dir.join(format!("{name}.pcap"));
    let report = replay::run(&engine, &[path], &options, &mut events).expect("replay");
    // Every event line is JSON.
    for line in String::from_utf8(events).expect("utf-8").lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    (engine, report)
}

/// Asserts the scanner at `scanner` was banned for `reason`, that nothing
/// from it was accepted while banned, and that at most `answered` replies
/// reached it.
fn assert_scan(dir: &Path, name: &str, scanner: IpAddr, reason: &str, answered: u64) -> Report {
    let (engine, report) = replay(dir, name);
    let s = report.source(scanner, &engine).unwrap_or_else(|| panic!("{name}: scanner not seen"));
    let ban = s.ban.unwrap_or_else(|| panic!("{name}: scanner not banned: {s:?}"));
    assert_eq!(ban.reason.to_string(), reason, "{name}");
    assert_eq!(s.accepted_while_banned, 0, "{name}: packets accepted while banned");
    assert!(s.answered <= answered, "{name}: {} probes answered, bound {answered}", s.answered);
    // A scanner that completed handshakes with open ports before its ban is
    // quarantined instead: the rest of those connections still passes.
    let in_flow = s.kinds.get(&ProbeKind::TcpFlow).copied().unwrap_or(0);
    let allowance = if ban.kind == BanKind::Quarantine { 10 + in_flow } else { 10 };
    assert!(s.dropped + allowance >= s.packets, "{name}: most of the scan must be dropped: {s:?}");
    assert_eq!(report.bans.len(), 1, "{name}: only the scanner is banned: {:?}", report.bans);
    report
}

fn attacker() -> IpAddr {
    IpAddr::from(ATTACKER)
}

fn nmap_syn_scan_is_banned_on_its_first_probe(dir: &Path) {
    let r = assert_scan(dir, "nmap-sS", attacker(), "signature nmap-syn", 0);
    let s = &r.sources.values().find(|s| s.ban.is_some()).expect("banned source");
    assert!(s.ports >= 200, "every probed port is counted: {}", s.ports);
    assert_eq!(s.kinds.get(&ProbeKind::TcpSyn).copied(), Some(s.ports as u64));
}

fn nmap_connect_scan_is_banned_on_the_closed_port_threshold(dir: &Path) {
    let r = assert_scan(dir, "nmap-sT", attacker(), "closed-ports 6", 6);
    let scanner = r.sources.values().find(|s| s.ban.is_some()).expect("banned");
    assert!(replay::scanner_name(scanner).contains("a TCP SYN or connect scan"));
    assert_eq!(r.drops.get(&Reason::ClosedPort).copied(), Some(6));
}

fn nmap_stealth_scans_are_banned_on_their_first_probe(dir: &Path) {
    for (name, kind) in [
        ("nmap-sF", "tcp-fin"),
        ("nmap-sN", "tcp-null"),
        ("nmap-sX", "tcp-xmas"),
        ("nmap-sM", "tcp-maimon"),
        ("nmap-sA", "tcp-ack"),
    ] {
        let r = assert_scan(dir, name, attacker(), &format!("probe {kind}"), 0);
        let scanner = r.sources.values().find(|s| s.ban.is_some()).expect("banned");
        assert!(scanner.signatures.contains("nmap-stealth"), "{name}: {:?}", scanner.signatures);
        assert_eq!(r.replies_suppressed + r.outbound, r.frames - r.inbound, "{name}");
        assert_eq!(r.outbound, 0, "{name}: the host never answers: {r:?}");
    }
}

fn nmap_udp_scan_is_banned_on_the_closed_port_threshold(dir: &Path) {
    let r = assert_scan(dir, "nmap-sU", attacker(), "closed-ports 6", 2);
    let scanner = r.sources.values().find(|s| s.ban.is_some()).expect("banned");
    assert!(replay::scanner_name(scanner).contains("a UDP scan"));
}

fn nmap_os_detection_is_banned_and_every_os_probe_recognised(dir: &Path) {
    let (engine, report) = replay(dir, "nmap-O");
    let s = report.source(attacker(), &engine).expect("seen");
    assert_eq!(s.ban.map(|b| b.reason.to_string()).as_deref(), Some("signature nmap-syn"));
    assert_eq!(s.answered, 0);
    let want: BTreeSet<String> = [
        "seq1", "seq2", "seq3", "seq4", "seq5", "seq6", "ecn", "t2", "t3", "t4", "t5", "t6", "t7",
        "u1", "ie1", "ie2",
    ]
    .iter()
    .map(|p| format!("nmap-os-{p}"))
    .collect();
    let missing: Vec<_> = want.difference(&s.signatures).collect();
    assert!(missing.is_empty(), "OS probes not recognised: {missing:?}");
}

fn nmap_host_discovery_is_banned(dir: &Path) {
    assert_scan(dir, "nmap-sn", attacker(), "signature nmap-echo", 0);
}

fn nmap_ipv6_syn_scan_is_banned_by_prefix(dir: &Path) {
    let scanner: IpAddr = "fd5c:a11:1::2".parse().expect("address");
    let r = assert_scan(dir, "nmap6-sS", scanner, "signature nmap-syn", 0);
    assert_eq!(r.bans[0].0.to_string(), "fd5c:a11:1::/64");
}

fn masscan_is_banned_on_its_first_probe(dir: &Path) {
    assert_scan(dir, "masscan", attacker(), "signature masscan", 0);
}

fn zmap_is_banned_on_its_first_probe(dir: &Path) {
    assert_scan(dir, "zmap", attacker(), "signature zmap", 0);
}

fn hping3_is_banned_on_its_first_probe(dir: &Path) {
    assert_scan(dir, "hping3", attacker(), "signature hping3", 0);
}

fn assert_legitimate(dir: &Path, name: &str) -> Report {
    let (_, report) = replay(dir, name);
    assert!(report.inbound > 50, "{name}: too little traffic: {report:?}");
    assert!(report.bans.is_empty(), "{name}: bans {:?}", report.bans);
    report
}

fn legitimate_traffic_is_never_dropped(dir: &Path) {
    for name in ["legit-burst", "legit-parallel", "legit-health"] {
        let r = assert_legitimate(dir, name);
        assert_eq!(r.dropped, 0, "{name}: drops {:?}", r.drops);
        assert_eq!(r.replies_suppressed, 0, "{name}");
    }
}

/// The client's two SYNs to ports that are closed are dropped, as every SYN
/// to a closed port is (`closed_ports = "drop"`); it is not banned, and every
/// one of its real requests passes.
fn a_client_that_mistypes_two_ports_keeps_working(dir: &Path) {
    let r = assert_legitimate(dir, "legit-mistype");
    assert_eq!(r.drops.keys().collect::<Vec<_>>(), vec![&Reason::ClosedPort], "{:?}", r.drops);
    let client = r.sources.values().next().expect("one client");
    assert!(client.dropped <= 4, "only the mistyped SYNs and their retries: {client:?}");
    assert_eq!(client.kinds.get(&ProbeKind::TcpSyn).copied(), Some(20 + client.dropped));
    assert!(matches!(client.ban.map(|b| b.reason), None | Some(BanReason::Manual)));
}

/// A check of one capture directory.
pub(crate) type Check = fn(&Path);

/// Every check, by name, for the lab test.
pub(crate) const CHECKS: &[(&str, Check)] = &[
    ("nmap_syn_scan_is_banned_on_its_first_probe", nmap_syn_scan_is_banned_on_its_first_probe),
    (
        "nmap_connect_scan_is_banned_on_the_closed_port_threshold",
        nmap_connect_scan_is_banned_on_the_closed_port_threshold,
    ),
    (
        "nmap_stealth_scans_are_banned_on_their_first_probe",
        nmap_stealth_scans_are_banned_on_their_first_probe,
    ),
    (
        "nmap_udp_scan_is_banned_on_the_closed_port_threshold",
        nmap_udp_scan_is_banned_on_the_closed_port_threshold,
    ),
    (
        "nmap_os_detection_is_banned_and_every_os_probe_recognised",
        nmap_os_detection_is_banned_and_every_os_probe_recognised,
    ),
    ("nmap_host_discovery_is_banned", nmap_host_discovery_is_banned),
    ("nmap_ipv6_syn_scan_is_banned_by_prefix", nmap_ipv6_syn_scan_is_banned_by_prefix),
    ("masscan_is_banned_on_its_first_probe", masscan_is_banned_on_its_first_probe),
    ("zmap_is_banned_on_its_first_probe", zmap_is_banned_on_its_first_probe),
    ("hping3_is_banned_on_its_first_probe", hping3_is_banned_on_its_first_probe),
    ("legitimate_traffic_is_never_dropped", legitimate_traffic_is_never_dropped),
    (
        "a_client_that_mistypes_two_ports_keeps_working",
        a_client_that_mistypes_two_ports_keeps_working,
    ),
];

macro_rules! on_committed_fixtures {
    ($($name:ident),* $(,)?) => {
        mod committed {
            $(
                #[test]
                fn $name() {
                    super::$name(&crate::util::root().join("tests/fixtures"));
                }
            )*
        }
    };
}

on_committed_fixtures!(
    nmap_syn_scan_is_banned_on_its_first_probe,
    nmap_connect_scan_is_banned_on_the_closed_port_threshold,
    nmap_stealth_scans_are_banned_on_their_first_probe,
    nmap_udp_scan_is_banned_on_the_closed_port_threshold,
    nmap_os_detection_is_banned_and_every_os_probe_recognised,
    nmap_host_discovery_is_banned,
    nmap_ipv6_syn_scan_is_banned_by_prefix,
    masscan_is_banned_on_its_first_probe,
    zmap_is_banned_on_its_first_probe,
    hping3_is_banned_on_its_first_probe,
    legitimate_traffic_is_never_dropped,
    a_client_that_mistypes_two_ports_keeps_working,
);

/// A generated capture of an IPv6 connect scan of ports 1-1000 from a new
/// /64 of fd5c:a11:5::/48 every 5 ports: replay bans the /48 and lists it.
#[test]
fn replay_bans_and_lists_a_network_a_scan_spread_over_its_64s() {
    use portcloak::Timestamp;
    use portcloak::io::pcap::PcapWriter;
    use portcloak::wire::TcpFlags;
    use portcloak::wire::craft::Craft;

    let dir = std::env::temp_dir().join(format!("portcloak-spread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("spread.pcap");
    let mut pcap =
        PcapWriter::new(std::fs::File::create(&path).expect("create"), 101).expect("header");
    let server: IpAddr = "fd5c:a11:1::1".parse().expect("address");
    for port in 1..=1000u16 {
        let src = IpAddr::from([0xfd5c, 0x0a11, 5, (port - 1) / 5, 0, 0, 0, 7]);
        let syn = Craft::tcp(src, server, 40_000, port, TcpFlags::SYN)
            .window(64_800)
            .options(&[2, 4, 5, 160, 4, 2])
            .build();
        pcap.frame(Timestamp::from_micros(1_700_000_000_000_000 + u64::from(port) * 100_000), &syn)
            .expect("frame");
    }
    pcap.finish().expect("flush");
    let engine = Engine::new(Config::default());
    let files = [path];
    let report =
        replay::run(&engine, &files, &replay::Options::default(), &mut Vec::new()).expect("replay");
    let mut summary = Vec::new();
    replay::write_summary(&mut summary, &files, &report).expect("summary");
    let summary = String::from_utf8(summary).expect("utf-8");
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(summary.contains("networks   1 banned whole (tracking.ipv6_escalate)"), "{summary}");
    assert!(summary.contains("\n  fd5c:a11:5::/48  banned at "), "{summary}");
    assert!(summary.contains(": spread-scan 4\n"), "{summary}");
    // After the ban, every probe is dropped as banned: 18 reached the policy.
    assert_eq!(report.drops.get(&Reason::Banned), Some(&982), "{summary}");
}

/// Replay shows what the persona and the gate did, as `status` does
/// inline: the client captures with the `windows` persona, and a SYN to a
/// hidden port.
#[test]
fn replay_shows_the_personas_rewrites_and_the_gates_drops() {
    let root = crate::util::root().join("tests/fixtures");
    let rules = "[persona]\nname = \"windows\"\n[[hidden]]\nport = 22\n";
    let engine = Engine::new(Config::from_toml(rules).expect("rules"));
    let files = [root.join("legit-burst.pcap"), root.join("nmap-sT.pcap")];
    let report =
        replay::run(&engine, &files, &replay::Options::default(), &mut Vec::new()).expect("replay");
    let mut summary = Vec::new();
    replay::write_summary(&mut summary, &files, &report).expect("summary");
    let summary = String::from_utf8(summary).expect("utf-8");
    assert!(report.rewritten > 0, "{summary}");
    assert!(
        summary.contains(&format!(
            "persona    {} packets rewritten, 0 probes answered",
            report.rewritten
        )),
        "{summary}"
    );
    // nmap -sT touched port 22, which is hidden here.
    assert!(report.engine.gate.hidden_dropped >= 1, "{summary}");
    assert!(summary.contains("gate       hidden ports: 0 opened, "), "{summary}");
}

/// Applies `change` to the IP packet inside an Ethernet frame.
fn in_ip(frame: &mut [u8], change: fn(&mut [u8])) {
    use portcloak::wire::{LinkType, link};
    if let Some(at) = link::ip_offset(LinkType::Ethernet, frame) {
        change(&mut frame[at..]);
    }
}

/// A fixture rewritten as if captured with checksum offload on: every
/// packet a kernel built (all of a connect scan's and a client's) carries
/// its checksum left for the NIC. `--checksums auto` replays it as the
/// original; `verify` drops those packets as bad; `off` judges every
/// packet on its headers; and nmap's --badsum probes stay bad under auto.
#[test]
fn checksums_left_for_the_nic_replay_as_whole_ones_under_auto() {
    use portcloak::io::pcap::{PcapReader, write_pcap};
    use portcloak::runtime::replay::{ChecksumMode, Decided};
    use portcloak::wire::craft;

    let dir = std::env::temp_dir().join(format!("portcloak-offload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let fixtures = crate::util::root().join("tests/fixtures");
    let rewrite = |name: &str, change: &dyn Fn(&mut [u8])| {
        let mut reader = PcapReader::open(&fixtures.join(format!("{name}.pcap"))).expect("open");
        let mut frames = Vec::new();
        while let Some(f) = reader.next_frame().expect("read") {
            let mut data = f.data.to_vec();
            change(&mut data);
            frames.push((f.ts, data));
        }
        let path = dir.join(format!("{name}-changed.pcap"));
        write_pcap(&mut std::fs::File::create(&path).expect("create"), 1, &frames).expect("write");
        path
    };
    let run = |path: &Path, checksums: ChecksumMode| {
        let engine = Engine::new(Config::default());
        let options = replay::Options { checksums, ..replay::Options::default() };
        replay::run(&engine, &[path.to_owned()], &options, &mut Vec::new()).expect("replay")
    };
    let essence = |r: &Report| format!("{} {} {:?} {:?}", r.accepted, r.dropped, r.drops, r.bans);
    for name in ["nmap-sT", "legit-burst", "legit-parallel"] {
        let original = run(&fixtures.join(format!("{name}.pcap")), ChecksumMode::Auto);
        let path = rewrite(name, &|f: &mut [u8]| in_ip(f, craft::leave_checksum_for_nic));
        let auto = run(&path, ChecksumMode::Auto);
        assert_eq!(essence(&auto), essence(&original), "{name}");
        let c = &auto.checksums[0];
        assert_eq!(c.decided, Decided::Offload, "{name}");
        assert_eq!(c.sample.partial, c.sample.sampled, "{name}: every packet was rewritten");
        assert!(c.partial_accepted > 0, "{name}");
        let strict = run(&path, ChecksumMode::Verify);
        assert!(strict.drops.get(&Reason::BadChecksum).copied().unwrap_or(0) > 0, "{name}");
        assert_eq!(essence(&run(&path, ChecksumMode::Off)), essence(&original), "{name}");
    }
    // nmap --badsum: every probe's checksum wrong, and not in the partial
    // form. More than a tenth of the sample is wrong, so auto checks none,
    // as Suricata does, and judges the probes on their headers: still
    // banned on the first. Verify drops every one as bad.
    let badsum = rewrite("nmap-sS", &|f: &mut [u8]| {
        let scanner = portcloak::wire::link::ip_offset(portcloak::wire::LinkType::Ethernet, f)
            .and_then(|at| portcloak::wire::addresses(&f[at..]))
            .is_some_and(|(src, _)| src == IpAddr::from(ATTACKER));
        if scanner {
            in_ip(f, craft::spoil_checksum);
        }
    });
    let r = run(&badsum, ChecksumMode::Auto);
    assert_eq!(r.checksums[0].decided, Decided::Off, "all wrong: more than a tenth");
    assert_eq!(r.bans.len(), 1, "judged on its headers: {:?}", r.drops);
    let r = run(&badsum, ChecksumMode::Verify);
    assert_eq!(r.drops.keys().collect::<Vec<_>>(), [&Reason::BadChecksum], "{:?}", r.drops);
    assert!(r.bans.is_empty());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A generated capture that puts every state the shards share to work:
/// 400 raw-SYN scanners from 40 /24s against a ban cap of 5 a second and
/// bans of 3 s (so the cap decides who is banned, and sweeps lift bans),
/// clients with handshakes, a port the host first answers mid-capture with
/// SYN-ACKs the survey does not count (so the engine learns ports while
/// others probe them), and datagrams the host sends from unknown ports.
fn busy_capture(path: &Path) {
    use portcloak::Timestamp;
    use portcloak::io::pcap::PcapWriter;
    use portcloak::wire::TcpFlags as F;
    use portcloak::wire::craft::Craft;

    let server: IpAddr = "198.18.1.1".parse().expect("address");
    let mut pcap =
        PcapWriter::new(std::fs::File::create(path).expect("create"), 101).expect("header");
    let mut t = 1_700_000_000_000_000u64;
    let mut put = |bytes: Vec<u8>| {
        t += 2_000;
        pcap.frame(Timestamp::from_micros(t), &bytes).expect("frame");
    };
    for round in 0..20u16 {
        for s in 0..20u8 {
            let scanner =
                IpAddr::from([198, 19, 40 + (s % 40), u8::try_from(round).unwrap_or(0) + 1]);
            for port in [21, 22, 23, 8080] {
                let syn = Craft::tcp(scanner, server, 50_000, port, F::SYN)
                    .window(1024)
                    .options(&[2, 4, 5, 180])
                    .df(false)
                    .build();
                put(syn);
                put(Craft::tcp(server, scanner, port, 50_000, F::RST | F::ACK).build());
            }
        }
        for c in 0..10u8 {
            let client = IpAddr::from([198, 18, 2, c + 1]);
            let sport = 40_000 + round * 16 + u16::from(c);
            let dport = if round == 10 && c == 0 { 8080 } else { 80 };
            put(Craft::tcp(client, server, sport, dport, F::SYN).window(64_240).build());
            // The host answers 8080 once with PSH set: the engine learns
            // the port, the survey (plain SYN-ACKs only) does not.
            let flags = if dport == 8080 { F::SYN | F::ACK | F::PSH } else { F::SYN | F::ACK };
            put(Craft::tcp(server, client, dport, sport, flags).window(65_160).build());
            put(Craft::tcp(client, server, sport, dport, F::ACK).window(502).build());
            put(Craft::udp(server, client, 33_000 + round, 53).payload(b"query").build());
        }
        // The host first answers port 9000 + round, with PSH set: the engine
        // learns it, the survey (plain SYN-ACKs only) does not. Right after,
        // 20 sources probe it and five closed ports: the closed-port
        // threshold (6) bans them only if the port was not yet learned.
        let client = IpAddr::from([198, 18, 3, u8::try_from(round).unwrap_or(0) + 1]);
        let learned = 9000 + round;
        put(Craft::tcp(client, server, 41_000, learned, F::SYN).window(64_240).build());
        put(Craft::tcp(server, client, learned, 41_000, F::SYN | F::ACK | F::PSH).build());
        for p in 0..20u8 {
            let prober = IpAddr::from([198, 18, 100 + p, u8::try_from(round).unwrap_or(0) + 1]);
            for port in [learned, 1, 2, 3, 4, 5] {
                put(Craft::tcp(prober, server, 42_000, port, F::SYN).window(64_240).build());
            }
        }
    }
    pcap.finish().expect("flush");
}

/// `--threads N` gives what one thread gives: the same report and the same
/// JSON lines, whatever N, on a capture where the ban cap, sweeps, learned
/// ports and dropped requests all cross the threads' shards.
#[test]
fn replay_with_threads_reports_and_logs_exactly_what_one_thread_does() {
    let dir = std::env::temp_dir().join(format!("portcloak-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("busy.pcap");
    busy_capture(&path);
    let rules = "[ban]\nduration = \"3s\"\nsingle_packet_per_second = 5\nmax_new_per_second = 5\n";
    let run = |threads: usize| {
        let engine = Engine::new(Config::from_toml(rules).expect("rules"));
        assert_eq!(replay::threads_for(&engine, threads), threads);
        let options = replay::Options { json: true, threads, ..replay::Options::default() };
        let mut events = Vec::new();
        let report = replay::run(&engine, std::slice::from_ref(&path), &options, &mut events)
            .expect("replay");
        let mut report = serde_json::to_value(&report).expect("json");
        report["memory_peak"] = 0.into();
        (report, String::from_utf8(events).expect("utf-8"))
    };
    let (one, one_events) = run(1);
    // The capture does what it is for.
    let guards = &one["engine"]["guards"];
    assert!(guards["rate_capped"].as_u64() > Some(0), "{guards}");
    assert!(one_events.contains("\"unban\""), "no ban lifted");
    assert!(one["replies_suppressed"].as_u64() > Some(0));
    assert!(one_events.lines().count() > 1000);
    for threads in [2, 3, 8] {
        let (many, many_events) = run(threads);
        assert!(one == many, "--threads {threads}: another report");
        assert!(one_events == many_events, "--threads {threads}: other events");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A persona's and the gate's tables span the shards: one thread judges.
#[test]
fn replay_with_a_persona_or_hidden_ports_judges_on_one_thread() {
    for rules in ["[persona]\nname = \"windows\"\n", "[[hidden]]\nport = 22\n", ""] {
        let engine = Engine::new(Config::from_toml(rules).expect("rules"));
        let wanted = if rules.is_empty() { 4 } else { 1 };
        assert_eq!(replay::threads_for(&engine, 4), wanted, "{rules}");
    }
}
