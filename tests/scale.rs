//! Replay of a capture with millions of distinct sources stays within a
//! stated memory bound: the engine's tables at their caps plus the report's
//! bound (issue 11, point 9).

use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use portcloak::Timestamp;
use portcloak::io::pcap::PcapWriter;
use portcloak::runtime::replay::{REPORT_BUDGET, REPORTED};
use portcloak::wire::TcpFlags;
use portcloak::wire::craft::Craft;

/// Distinct sources in the generated capture.
const SOURCES: u32 = 2_000_000;
/// The scanner among them.
const SCANNER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// The host's addresses, one per family.
fn host(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd5c, 0xa11, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
    }
}

/// Source `i`: the first 65 536 from 198.19.0.0/16, the rest each from a
/// /64 of its own in fd5c:a11::/32.
fn source(i: u32) -> IpAddr {
    if i < 1 << 16 {
        IpAddr::V4(Ipv4Addr::from(0xc613_0000 | i))
    } else {
        let [a, b, c, d] = i.to_be_bytes();
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        IpAddr::V6(Ipv6Addr::new(0xfd5c, 0xa11, hi.wrapping_add(1), lo, 0, 0, 0, 1))
    }
}

/// Writes the capture: one SYN from each source, a browser's SYN to a
/// closed port (every thousandth one nmap's bare SYN instead), 10 000 a
/// second, with a connect scan of ports 1-1000 from `SCANNER` spread
/// through it. Returns the frames written.
fn write_capture(path: &std::path::Path) -> u64 {
    const MSS: [u8; 4] = [2, 4, 5, 0xb4];
    let file = BufWriter::with_capacity(1 << 20, File::create(path).expect("create capture"));
    let mut pcap = PcapWriter::new(file, 101).expect("pcap header");
    let mut frames = 0;
    let scan_every = SOURCES / 1000;
    for i in 0..SOURCES {
        let now = Timestamp::from_micros(u64::from(i) * 100);
        let src = source(i);
        let dst = host(src.is_ipv6());
        let port = 1 + (i % 1000) as u16;
        let syn = if i % 1000 == 999 {
            Craft::tcp(src, dst, 40_000, port, TcpFlags::SYN).window(1024).options(&MSS)
        } else {
            Craft::tcp(src, dst, 40_000 + (i % 20_000) as u16, port, TcpFlags::SYN)
                .window(64_240)
                .options(&MSS)
        };
        pcap.frame(now, &syn.build()).expect("write frame");
        frames += 1;
        if i % scan_every == 0 {
            let port = 1 + (i / scan_every) as u16;
            let probe = Craft::tcp(IpAddr::V4(SCANNER), host(false), 50_000, port, TcpFlags::SYN)
                .window(64_240)
                .options(&MSS);
            pcap.frame(now, &probe.build()).expect("write frame");
            frames += 1;
        }
    }
    pcap.finish().expect("flush capture");
    frames
}

/// Runs `portcloak replay` on `path` and returns its summary and the peak
/// resident memory it reports, in bytes.
fn replay_peak(path: &std::path::Path) -> (String, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcloak"))
        .args(["replay", "--no-progress", "--local", "198.18.0.1", "--local", "fd5c:a11::1"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run portcloak replay");
    assert!(out.status.success(), "replay failed: {}", out.status);
    let summary = String::from_utf8(out.stdout).expect("utf-8 summary");
    let mib: f64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("memory     peak "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no memory line: {summary}"));
    (summary, (mib * f64::from(1u32 << 20)) as u64)
}

#[test]
fn replay_of_two_million_sources_stays_within_the_tables_and_the_reports_bound() {
    // A minute of a whole CPU: not while a lab test times its scans.
    let _cpu = crate::lab::LAB.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = std::env::temp_dir().join(format!("portcloak-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let capture = dir.join("sources.pcap");
    let frames = write_capture(&capture);
    let (summary, peak) = replay_peak(&capture);
    std::fs::remove_dir_all(&dir).expect("clean up");

    let rules = portcloak::Config::default();
    let bound = rules.table_budget() + REPORT_BUDGET;
    eprintln!(
        "replay of {frames} frames from {SOURCES} sources: peak {} MiB, bound {} MiB",
        peak >> 20,
        bound >> 20
    );
    assert!(summary.contains(&format!("packets    {frames} frames")), "{summary}");
    assert!(peak <= bound, "peak {} MiB over the bound {} MiB", peak >> 20, bound >> 20);
    // The scanner is reported in full among two million others.
    let scanner = summary
        .split("\n  ")
        .find(|s| s.starts_with(&format!("{SCANNER} ")))
        .unwrap_or_else(|| panic!("the scanner is not reported: {summary}"));
    assert!(scanner.contains("closed-port"), "{scanner}");
    // Every source sent one packet but the scanner, so the reported ones
    // and the counted ones add up to all of them.
    let others =
        format!("others     {} sources not reported in full", SOURCES as usize + 1 - REPORTED);
    assert!(summary.contains(&others), "the rest are counted, {others:?}: {summary}");
}
