//! The replay bench: `portcloak replay` on a generated capture of over a
//! million packets, scans and clients mixed, against `tcpdump -r FILE -w
//! /dev/null` on the same file, interleaved in one run:
//!
//! - (1) `portcloak replay --threads 1 FILE`;
//! - (2) `portcloak replay --threads 2 FILE`, when the binary has
//!   `--threads` (it says so otherwise);
//! - (t) `tcpdump -r FILE -w /dev/null`.
//!
//! The capture: 2000 clients that each open 50 connections to ports 80
//! and 443 (handshake, request, answer, close: 8 packets each) and 200
//! scanners that each probe 1000 ports with nmap's raw SYN (window 1024,
//! one MSS option), which the host answered with a reset, in time order:
//! 1 200 000 packets. Reports the median wall time of each, packets per
//! second, and the ratios the issue set targets for (at least 5 M packets/s
//! with one thread, 0.6 of tcpdump's rate, 1.6 times with two threads).
//!
//! Run: `cargo bench --bench replay -- [--rounds N] [--keep FILE]` (needs
//! tcpdump); `--keep` leaves the capture at FILE, for a profile.
#![allow(
    missing_docs,
    clippy::print_stderr,
    clippy::print_stdout,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::io::BufWriter;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcloak::Timestamp;
use portcloak::io::pcap::PcapWriter;
use portcloak::wire::TcpFlags as F;
use portcloak::wire::craft::Craft;

const CLIENTS: u32 = 2000;
const CONNECTIONS: u32 = 50;
const SCANNERS: u32 = 200;
const PORTS: u16 = 1000;

/// One segment of a connection: from the client?, flags, seq, ack,
/// window, options, payload.
type Segment<'a> = (bool, u16, u32, u32, u16, &'a [u8], &'a [u8]);

/// Writes the capture; returns its packet count.
fn generate(path: &Path) -> u64 {
    let server: IpAddr = "198.18.1.1".parse().unwrap();
    let mut pcap =
        PcapWriter::new(BufWriter::new(std::fs::File::create(path).unwrap()), 101).unwrap();
    let mut t = 1_800_000_000_000_000u64;
    let mut n = 0u64;
    let mut put = |bytes: Vec<u8>, t: &mut u64| {
        *t += 7;
        pcap.frame(Timestamp::from_micros(*t), &bytes).unwrap();
        n += 1;
    };
    let syn_opts = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    // Rounds: in each, every client opens one connection and every
    // scanner sends a fifth of its probes.
    for round in 0..CONNECTIONS {
        for c in 0..CLIENTS {
            let client = IpAddr::from((0xc613_0000u32 + c).to_be_bytes());
            let sport = 20_000 + (round * 7 + c) as u16 % 40_000;
            let dport = [80, 443][c as usize % 2];
            let (cs, ss) = (1000 + round * 100, 9000 + c);
            let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            let segments: [Segment<'_>; 8] = [
                (true, F::SYN, cs, 0, 64_240, &syn_opts, b""),
                (false, F::SYN | F::ACK, ss, cs + 1, 65_160, &syn_opts, b""),
                (true, F::ACK, cs + 1, ss + 1, 502, b"", b""),
                (true, F::ACK | F::PSH, cs + 1, ss + 1, 502, b"", request),
                (false, F::ACK | F::PSH, ss + 1, cs + 28, 509, b"", &[b'x'; 400]),
                (true, F::ACK | F::FIN, cs + 28, ss + 401, 502, b"", b""),
                (false, F::ACK | F::FIN, ss + 401, cs + 29, 509, b"", b""),
                (true, F::ACK, cs + 29, ss + 402, 502, b"", b""),
            ];
            for (from_client, flags, seq, ack, window, options, payload) in segments {
                let packet = if from_client {
                    Craft::tcp(client, server, sport, dport, flags)
                } else {
                    Craft::tcp(server, client, dport, sport, flags)
                };
                let packet =
                    packet.seq_ack(seq, ack).window(window).options(options).payload(payload);
                put(packet.build(), &mut t);
            }
        }
        if round % 10 == 0 {
            let fifth = PORTS / 5;
            let from = (round / 10) as u16 * fifth;
            for s in 0..SCANNERS {
                let scanner = IpAddr::from((0xc612_6400u32 + s).to_be_bytes());
                for port in from + 1..=from + fifth {
                    put(
                        Craft::tcp(scanner, server, 61_000, port, F::SYN)
                            .seq_ack(s, 0)
                            .window(1024)
                            .options(&[2, 4, 5, 180])
                            .df(false)
                            .build(),
                        &mut t,
                    );
                    put(
                        Craft::tcp(server, scanner, port, 61_000, F::RST | F::ACK)
                            .seq_ack(0, s + 1)
                            .window(0)
                            .build(),
                        &mut t,
                    );
                }
            }
        }
    }
    pcap.finish().unwrap();
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("run");
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5usize);
    let dir = std::env::temp_dir().join(format!("portcloak-replay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mixed.pcap");
    let packets = generate(&file);
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("capture: {packets} packets, {:.1} MB", size as f64 / 1e6);
    let bin = env!("CARGO_BIN_EXE_portcloak");
    let help = Command::new(bin).args(["replay", "--help"]).output().unwrap();
    let threads = String::from_utf8_lossy(&help.stdout).contains("--threads");
    let replay = |n: &str| {
        let mut c = Command::new(bin);
        c.args(["replay", "--no-progress"]);
        if threads {
            c.args(["--threads", n]);
        }
        c.arg(&file);
        c
    };
    // Warm the page cache and each binary once.
    time(&mut replay("1"));
    time(Command::new("tcpdump").args(["-r"]).arg(&file).args(["-w", "/dev/null"]));
    let (mut one, mut two, mut tcpdump) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        one.push(time(&mut replay("1")));
        if threads {
            two.push(time(&mut replay("2")));
        }
        tcpdump
            .push(time(Command::new("tcpdump").args(["-r"]).arg(&file).args(["-w", "/dev/null"])));
    }
    let rate = |d: Duration| packets as f64 / d.as_secs_f64() / 1e6;
    let (m1, mt) = (median(one), median(tcpdump));
    println!(
        "replay --threads 1   median {:>8.3} s  {:>5.2} M packets/s (target 5)",
        m1.as_secs_f64(),
        rate(m1)
    );
    if threads {
        let m2 = median(two);
        println!(
            "replay --threads 2   median {:>8.3} s  {:>5.2} M packets/s  {:.2}x one thread (target 1.6)",
            m2.as_secs_f64(),
            rate(m2),
            m1.as_secs_f64() / m2.as_secs_f64()
        );
    } else {
        println!("replay --threads 2   not measured: this build has no --threads");
    }
    println!(
        "tcpdump -r -w /dev/null median {:>4.3} s  {:>5.2} M packets/s; replay --threads 1 at {:.2} of its rate (target 0.6)",
        mt.as_secs_f64(),
        rate(mt),
        mt.as_secs_f64() / m1.as_secs_f64()
    );
    if let Some(keep) = args.iter().position(|a| a == "--keep").and_then(|i| args.get(i + 1)) {
        std::fs::rename(&file, keep).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
