use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use super::*;
use crate::firewall::KernelCounters;
use crate::runtime::protocol::{ActiveBans, BanStart, Memory, WorkerStatus};

/// A status with something in every section.
fn sample() -> StatusReport {
    StatusReport {
        pid: 1,
        uptime: 61,
        firewall: "nft".into(),
        fail_mode: "open".into(),
        workers: vec![
            WorkerStatus {
                queue: 0,
                packets: 10,
                accepted: 7,
                dropped: 3,
                shed: 1,
                ..Default::default()
            },
            WorkerStatus { queue: 1, packets: 4, accepted: 4, ..Default::default() },
        ],
        packets: 14,
        inspected: 13,
        rewritten: 2,
        answered: 1,
        persona: "windows".into(),
        uninspected: Some(5),
        uninspected_share: Some(0.1),
        drops: BTreeMap::from([("closed-port".to_owned(), 2), ("banned".to_owned(), 1)]),
        tables: crate::track::TableStats { sources: 9, source_capacity: 100, ..Default::default() },
        guards: crate::policy::GuardCounters { rate_capped: 4, ..Default::default() },
        gate: crate::gate::GateCounters { spa_bad_hmac: 2, ..Default::default() },
        bans: 1,
        quarantines: 1,
        active: ActiveBans { ipv4_bans: 1, ipv6_quarantines: 1, ..ActiveBans::default() },
        bans_started: vec![BanStart { reason: "signature".into(), kind: "ban".into(), count: 3 }],
        kernel_counters: Some(KernelCounters {
            fast_path: 8,
            banned4: 6,
            banned4_bytes: 360,
            ..KernelCounters::default()
        }),
        memory: Memory { rss: 3 << 20, peak: 4 << 20, limit: 512 << 20 },
        metrics: "127.0.0.1:9469".into(),
        fleet: Some(crate::runtime::protocol::FleetStatus {
            name: "h1".into(),
            connected: true,
            sent: 4,
            refused: BTreeMap::from([("bad-signature".to_owned(), 1)]),
            lag_ms: 1500,
            ..Default::default()
        }),
    }
}

#[test]
fn the_status_becomes_named_counters_and_gauges() {
    let text = render(&sample());
    for line in [
        "# TYPE portcloak_packets_total counter",
        "portcloak_packets_total{queue=\"0\",verdict=\"drop\"} 3",
        "portcloak_shed_packets_total{queue=\"0\"} 1",
        "portcloak_uninspected_packets_total 5",
        "portcloak_drops_total{reason=\"closed-port\"} 2",
        "portcloak_drops_total{reason=\"bad-checksum\"} 0",
        "portcloak_bans_started_total{reason=\"signature\",kind=\"ban\"} 3",
        "portcloak_active_bans{kind=\"quarantine\",family=\"ipv6\"} 1",
        "portcloak_bans_held_back_total{guard=\"rate_capped\"} 4",
        "portcloak_kernel_fast_path_packets_total 8",
        "portcloak_kernel_dropped_packets_total{list=\"banned\",family=\"ipv4\"} 6",
        "portcloak_kernel_dropped_bytes_total{list=\"banned\",family=\"ipv4\"} 360",
        "portcloak_table_entries{table=\"sources\"} 9",
        "portcloak_table_capacity{table=\"sources\"} 100",
        "portcloak_spa_packets_total{outcome=\"bad_hmac\"} 2",
        "portcloak_persona_rewritten_packets_total 2",
        "portcloak_resident_memory_bytes 3145728",
        "# TYPE portcloak_uptime_seconds gauge",
        "portcloak_fleet_connected 1",
        "portcloak_fleet_messages_total{direction=\"sent\"} 4",
        "portcloak_fleet_refused_messages_total{reason=\"bad-signature\"} 1",
        "portcloak_fleet_lag_seconds 1.5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(
        text.contains(&format!(
            "portcloak_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ))
    );
    // Every counter's samples end in _total, and no label holds an address.
    for l in text.lines().filter(|l| l.starts_with("# TYPE") && l.ends_with(" counter")) {
        assert!(l.split(' ').nth(2).is_some_and(|n| n.ends_with("_total")), "{l}");
    }
    assert!(!text.contains("198.18.") && !text.contains("src="), "{text}");
}

#[test]
fn without_kernel_counters_their_metrics_are_left_out() {
    let status = StatusReport { kernel_counters: None, uninspected: None, ..sample() };
    let text = render(&status);
    let left_out = ["portcloak_kernel_", "portcloak_uninspected_"];
    assert!(!text.lines().any(|l| left_out.iter().any(|p| l.starts_with(p))), "{text}");
}

/// The server on a free loopback port, until the returned flag is set.
fn server() -> (SocketAddr, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let listener = bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || serve(&listener, &flag, &|| render(&sample())));
    (addr, stop, handle)
}

fn get(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT * 3)).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn metrics_are_served_at_their_path_and_nowhere_else() {
    let (addr, stop, handle) = server();
    let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains(CONTENT_TYPE) && ok.contains("portcloak_packets_total"), "{ok}");
    let lost = get(addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(lost.starts_with("HTTP/1.1 404 "), "{lost}");
    let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 * MAX_REQUEST));
    let refused = get(addr, &huge);
    assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    stop.store(true, Relaxed);
    handle.join().expect("server");
}

/// A thousand connections that send nothing hold a scrape back by at most
/// the timeout: the server closes the oldest past its cap and every one
/// past its timeout.
#[test]
fn idle_connections_never_hold_a_scrape_back_past_the_timeout() {
    let (addr, stop, handle) = server();
    let idle: Vec<TcpStream> = (0..1000).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    assert!(idle.len() >= 900, "{} connected", idle.len());
    let started = Instant::now();
    let ok = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    let took = started.elapsed();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(took <= TIMEOUT + Duration::from_secs(1), "a scrape took {took:?}");
    // A client that sends half a request is cut off after the timeout.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /metr").expect("write");
    slow.set_read_timeout(Some(TIMEOUT * 3)).expect("timeout");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    drop(idle);
    stop.store(true, Relaxed);
    handle.join().expect("server");
}

/// The Prometheus tools themselves read the text: `promtool check metrics`
/// (Debian's `prometheus`) finds no problem. Needs promtool: under CI a
/// missing one fails, elsewhere it is said and skipped.
#[test]
fn promtool_finds_no_problem_in_the_text() {
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no promtool ({e}); apt-get install prometheus");
            return;
        }
        Err(e) => panic!("CI needs promtool (apt-get install prometheus): {e}"),
    };
    let text = render(&sample());
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
