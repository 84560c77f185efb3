//! No bytes panic portcloak, and no stream of them grows its tables past
//! their caps.
//!
//! - Every prefix of every fixture packet, and each with bytes corrupted,
//!   in both directions.
//! - A seeded sweep of [`MUTATIONS`] mutated packets (header bytes, flags,
//!   options, lengths, truncations, appended junk) through an engine with
//!   every stage on: a persona that rewrites and answers, a hidden port, a
//!   knock sequence and SPA. Most mutants get valid checksums again, so
//!   they pass the parser and reach classify, the gate, policy and
//!   disguise; the sweep runs with checksums verified and with them left
//!   to the kernel, in both directions.
//! - Random and cut pcap and pcapng files through the reader, and mutated
//!   rules files through the config loader.

use std::net::IpAddr;

use portcloak::engine::{ChecksumCheck, Meta};
use portcloak::gate::spa::{self, Request};
use portcloak::io::pcap::{PcapReader, PcapWriter};
use portcloak::wire::craft::Craft;
use portcloak::wire::{self, LinkType, TcpFlags};
use portcloak::{Config, Direction, Engine, Timestamp};

use crate::util::{all_fixtures, root};

#[test]
fn every_prefix_and_corruption_of_every_fixture_packet() {
    let engine = Engine::new(Config::default());
    let mut packets = 0;
    for path in all_fixtures() {
        let mut reader = PcapReader::open(&path).expect("open fixture");
        while let Some(frame) = reader.next_frame().expect("read fixture") {
            let link = LinkType::from_pcap(frame.linktype).expect("known link type");
            let Some(offset) = wire::link::ip_offset(link, frame.data) else {
                continue;
            };
            let ip = &frame.data[offset..];
            packets += 1;
            for end in 0..=ip.len() {
                for direction in [Direction::Inbound, Direction::Outbound] {
                    let mut cut = ip[..end].to_vec();
                    let _ = wire::parse(&cut);
                    engine.handle(frame.ts, direction, &mut cut);
                }
            }
            // Corrupt one byte at a time in the headers.
            for i in 0..ip.len().min(80) {
                let mut bad = ip.to_vec();
                bad[i] ^= 0xa5;
                engine.handle(Timestamp::from_micros(i as u64), Direction::Inbound, &mut bad);
            }
        }
    }
    assert!(packets > 1000, "{packets} packets swept");
}

/// Mutated packets per run of the sweep.
const MUTATIONS: u64 = 1_000_000;

/// A xorshift64 sequence: the sweep is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const KEY: [u8; 32] = [7; 32];
const SERVER: [u8; 4] = [198, 18, 1, 1];
const SERVER6: [u16; 8] = [0xfd5c, 0xa11, 1, 0, 0, 0, 0, 1];

/// Every stage on (`tests/fixtures/every-stage.toml`). `answering` turns off the probe bans that
/// would stop nmap's T2 and T3 before the persona answers them.
fn engine(answering: bool) -> Engine {
    let probes = if answering {
        "[probes]\nos_detection = \"off\"\nnull = \"off\"\nsyn_fin = \"off\"\nxmas = \"off\"\n"
    } else {
        ""
    };
    let rules = probes.to_owned() + include_str!("fixtures/every-stage.toml");
    let config = Config::from_toml(&rules).expect("sweep rules");
    let engine = Engine::new(config).with_spa_key(KEY.to_vec());
    engine.set_local(vec![IpAddr::from(SERVER), IpAddr::from(SERVER6)]);
    engine
}

/// The packets the mutants start from: every kind each stage looks at,
/// in both families and directions.
fn seeds(rng: &mut Rng) -> Vec<(Direction, Vec<u8>)> {
    let (s4, s6) = (IpAddr::from(SERVER), IpAddr::from(SERVER6));
    let (c4, c6) = (IpAddr::from([198, 18, 2, 2]), IpAddr::from([0xfd5c, 0xa11, 2, 0, 0, 0, 0, 2]));
    let mut out = Vec::new();
    for (server, client) in [(s4, c4), (s6, c6)] {
        let inbound = |c: Craft| (Direction::Inbound, c.build());
        let outbound = |c: Craft| (Direction::Outbound, c.build());
        let options = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        for port in [22, 80, 1000, 7001, 7003] {
            out.push(inbound(
                Craft::tcp(client, server, 40_000, port, TcpFlags::SYN)
                    .window(64_240)
                    .options(&options),
            ));
            out.push(inbound(Craft::tcp(client, server, 40_000, port, TcpFlags::SYN).window(1024)));
        }
        for flags in
            [TcpFlags::ACK, TcpFlags::FIN, 0, TcpFlags::FIN | TcpFlags::URG | TcpFlags::PSH]
        {
            out.push(inbound(Craft::tcp(client, server, 40_001, 80, flags).seq_ack(5, 9)));
        }
        // nmap's T2 and T3, which windows-1709 answers with a reset.
        let t_opts = [3, 3, 10, 1, 2, 4, 1, 9, 8, 10, 255, 255, 255, 255, 0, 0, 0, 0, 4, 2];
        for (flags, window) in
            [(0, 128), (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG, 256)]
        {
            out.push(inbound(
                Craft::tcp(client, server, 40_014, 80, flags)
                    .seq_ack(1000, 77)
                    .window(window)
                    .df(true)
                    .options(&t_opts),
            ));
        }
        out.push(inbound(Craft::udp(client, server, 5353, 53).payload(b"query")));
        out.push(inbound(Craft::udp(client, server, 5353, 7002)));
        out.push(inbound(Craft::icmp(client, server, if client.is_ipv4() { 8 } else { 128 }, 0)));
        out.push(inbound(Craft::icmp(client, server, 13, 0).payload(&[0; 12])));
        let request = Request {
            timestamp: 1_700_000_000,
            nonce: [rng.byte(); 16],
            port: 22,
            protocol: 6,
            ip: client,
        };
        out.push(inbound(
            Craft::udp(client, server, 40_002, 62_201).payload(&spa::seal(&KEY, &request)),
        ));
        out.push(outbound(
            Craft::tcp(server, client, 80, 40_000, TcpFlags::SYN | TcpFlags::ACK)
                .window(64_240)
                .options(&options),
        ));
        out.push(outbound(Craft::tcp(server, client, 1000, 40_000, TcpFlags::RST | TcpFlags::ACK)));
        out.push(outbound(Craft::icmp(server, client, if server.is_ipv4() { 0 } else { 129 }, 0)));
        out.push(outbound(Craft::icmp(server, client, if server.is_ipv4() { 3 } else { 1 }, 3)));
        out.push(outbound(Craft::udp(server, client, 53, 5353).payload(b"answer")));
    }
    out
}

/// One mutation of `packet`, in place or by resizing it.
fn mutate(rng: &mut Rng, packet: &mut Vec<u8>) {
    let len = packet.len();
    match rng.below(8) {
        // A header byte.
        0 | 1 => {
            let i = rng.below(len.min(64));
            if let Some(b) = packet.get_mut(i) {
                *b = rng.byte();
            }
        }
        // A bit anywhere.
        2 => {
            let i = rng.below(len);
            if let Some(b) = packet.get_mut(i) {
                *b ^= 1 << rng.below(8);
            }
        }
        // TCP flags (IPv4 at 33, IPv6 at 53), or whatever sits there.
        3 => {
            let at = if packet.first().is_some_and(|b| b >> 4 == 6) { 53 } else { 33 };
            if let Some(b) = packet.get_mut(at) {
                *b = rng.byte();
            }
        }
        // A length field: IPv4 total length or IHL, IPv6 payload length,
        // the TCP data offset, the UDP length.
        4 => {
            let at = [2, 3, 0, 4, 5, 32, 24, 25, 44, 52][rng.below(10)];
            if let Some(b) = packet.get_mut(at) {
                *b = rng.byte();
            }
        }
        // Cut short.
        5 => packet.truncate(rng.below(len + 1)),
        // Junk appended (options or payload beyond what the lengths say).
        6 => {
            for _ in 0..rng.below(48) + 1 {
                packet.push(rng.byte());
            }
        }
        // Options of random kinds and lengths inside a TCP header.
        _ => {
            let start = if packet.first().is_some_and(|b| b >> 4 == 6) { 60 } else { 40 };
            for i in start..len.min(start + 20) {
                if let Some(b) = packet.get_mut(i) {
                    *b = [0, 1, 2, 3, 4, 8, 30, 255, rng.byte()][rng.below(9)];
                }
            }
        }
    }
}

/// Makes the remote end of `packet` peer number `peer` (below 4096):
/// 198.18.x.y, or the /64 fd5c:a11:2:xy::2.
fn set_remote(packet: &mut [u8], direction: Direction, peer: u16) {
    let v6 = packet.first().is_some_and(|b| b >> 4 == 6);
    let at = match (v6, direction) {
        (_, Direction::Inbound) => 14,
        (false, Direction::Outbound) => 18,
        (true, Direction::Outbound) => 30,
    };
    if let Some(bytes) = packet.get_mut(at..at + 2) {
        bytes.copy_from_slice(&peer.to_be_bytes());
    }
}

/// RFC 1071 over `bytes`, added to `acc`.
fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        acc += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Makes the IPv4 header checksum and the TCP, UDP or ICMP checksum valid
/// again where the (mutated) headers still say where they are.
fn fix_checksums(p: &mut [u8]) {
    let Some(&first) = p.first() else { return };
    let (protocol, l4_start, pseudo) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0xf) * 4;
            if ihl < 20 || p.len() < ihl {
                return;
            }
            p[10] = 0;
            p[11] = 0;
            let c = fold(sum(0, &p[..ihl]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
            let l4_len = p.len() - ihl;
            let pseudo = sum(0, &p[12..20]) + u32::from(p[9]) + l4_len as u32;
            (p[9], ihl, if p[9] == 1 { 0 } else { pseudo })
        }
        6 if p.len() >= 40 => {
            let l4_len = p.len() - 40;
            (p[6], 40, sum(0, &p[8..40]) + u32::from(p[6]) + l4_len as u32)
        }
        _ => return,
    };
    let at = match protocol {
        6 => 16,
        17 => 6,
        1 | 58 => 2,
        _ => return,
    };
    let l4 = &mut p[l4_start..];
    if l4.len() < at + 2 {
        return;
    }
    l4[at] = 0;
    l4[at + 1] = 0;
    let c = fold(sum(pseudo, l4));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn a_million_mutated_packets_reach_every_stage_and_panic_nothing() {
    let engines = [engine(false), engine(true)];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds(&mut rng);
    let (mut rewritten, mut answered, mut gated) = (0u64, 0u64, 0u64);
    for i in 0..MUTATIONS {
        let (direction, seed) = &seeds[rng.below(seeds.len())];
        let mut packet = seed.clone();
        // The remote end: one of 4096 peers, so bans and evictions happen
        // without one ban silencing the whole sweep.
        let peer = rng.below(4096) as u16;
        set_remote(&mut packet, *direction, peer);
        for _ in 0..rng.below(3) + 1 {
            mutate(&mut rng, &mut packet);
        }
        // Most get valid checksums again, to pass the parser's check.
        if rng.below(8) != 0 {
            fix_checksums(&mut packet);
        }
        let checksum = if i % 2 == 0 { ChecksumCheck::Verify } else { ChecksumCheck::Kernel };
        let meta = Meta { checksum, proven: rng.below(16) == 0, ..Meta::new(*direction) };
        // 10 000 packets a second of synthetic time.
        let now = Timestamp::from_micros(1_700_000_000_000_000 + i * 100);
        let engine = &engines[(i / 2 % 2) as usize];
        let out = engine.handle_with(now, meta, &mut packet);
        rewritten += u64::from(out.rewritten);
        answered += u64::from(out.reply.is_some());
        gated += u64::from(out.gate.is_some());
        if i % 100_000 == 0 {
            engine.sweep(now);
        }
    }
    for engine in &engines {
        let t = engine.stats().tables;
        assert!(t.sources <= t.source_capacity && t.flows <= t.flow_capacity, "{t:?}");
        assert!(t.networks <= t.network_capacity && t.ban_records <= 1024, "{t:?}");
    }
    let stats = engines[0].stats();
    let t = stats.tables;
    eprintln!(
        "sweep: {MUTATIONS} mutants, {rewritten} rewritten, {answered} answered, {gated} gate \
         events; tables {t:?}; gate {:?}",
        stats.gate
    );
    assert!(t.sources <= t.source_capacity && t.flows <= t.flow_capacity, "{t:?}");
    assert!(t.networks <= t.network_capacity && t.ban_records <= 1024, "{t:?}");
    // The sweep went past the parser into every stage.
    assert!(
        rewritten > 1000 && answered > 100,
        "disguise: {rewritten} rewritten, {answered} answered"
    );
    assert!(
        gated > 100 && stats.gate.hidden_dropped > 100,
        "gate: {gated} events, {:?}",
        stats.gate
    );
    assert!(t.source_evictions > 0 && t.ban_records > 10, "track and policy: {t:?}");
}

#[test]
fn random_and_cut_captures_never_panic_the_reader() {
    let dir = std::env::temp_dir().join(format!("portcloak-robust-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rng = Rng(0x51ed_2701_f00d_cafe);
    let mut bases: Vec<Vec<u8>> =
        all_fixtures().into_iter().filter_map(|p| std::fs::read(p).ok()).collect();
    let ng = dir.join("fixture.pcapng");
    crate::formats::write_pcapng(&ng, 101, &crate::formats::ip_packets("nmap-sS")[..40]);
    bases.push(std::fs::read(&ng).expect("read pcapng"));
    let mut small = PcapWriter::new(Vec::new(), 101).expect("header");
    small.frame(Timestamp::from_secs(1), &[0x45; 40]).expect("frame");
    bases.push(small.finish().expect("flush"));
    let path = dir.join("mutant.cap");
    let mut frames = 0u64;
    for round in 0..2000 {
        let base = &bases[rng.below(bases.len())];
        let mut bytes = base[..base.len().min(4096)].to_vec();
        match round % 4 {
            0 => bytes.truncate(rng.below(bytes.len() + 1)),
            1 => {
                for _ in 0..rng.below(16) + 1 {
                    let i = rng.below(bytes.len());
                    if let Some(b) = bytes.get_mut(i) {
                        *b = rng.byte();
                    }
                }
            }
            2 => {
                let keep = rng.below(bytes.len().min(64) + 1);
                bytes.truncate(keep);
                bytes.extend((0..rng.below(512)).map(|_| rng.byte()));
            }
            _ => bytes = (0..rng.below(1024)).map(|_| rng.byte()).collect(),
        }
        std::fs::write(&path, &bytes).expect("write mutant");
        let Ok(mut reader) = PcapReader::open(&path) else { continue };
        for _ in 0..10_000 {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    frames += 1;
                    if let Some(link) = LinkType::from_pcap(frame.linktype) {
                        let _ = wire::link::ip_offset(link, frame.data);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(frames > 100, "{frames} frames read from mutants");
}

#[test]
fn mutated_rules_never_panic_the_loader() {
    let text = std::fs::read_to_string(root().join("rules/default.toml")).expect("default rules");
    let lines: Vec<&str> = text.lines().collect();
    let mut rng = Rng(0xdead_beef_0bad_f00d);
    let mut loaded = 0;
    let values =
        ["0", "-1", "99999999999", "\"\"", "\"x\"", "[]", "[\"tcp:0\"]", "1.5", "true", "\"0s\""];
    for _ in 0..3000 {
        let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        for _ in 0..rng.below(4) + 1 {
            let i = rng.below(out.len());
            match rng.below(4) {
                0 => {
                    out.remove(i);
                }
                1 => {
                    if let Some((key, _)) = out[i].split_once(" = ") {
                        out[i] = format!("{key} = {}", values[rng.below(values.len())]);
                    }
                }
                2 => {
                    let mut bytes = out[i].clone().into_bytes();
                    if !bytes.is_empty() {
                        let j = rng.below(bytes.len());
                        bytes[j] = b"[]=\"#.\n\\x"[rng.below(9)];
                    }
                    out[i] = String::from_utf8_lossy(&bytes).into_owned();
                }
                _ => out.insert(i, out[rng.below(out.len())].clone()),
            }
        }
        loaded += usize::from(Config::from_toml(&out.join("\n")).is_ok());
    }
    assert!(loaded > 100, "{loaded} of the mutants still load");
}
