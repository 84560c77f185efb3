//! `engine`: the whole per-packet path, replaying fixture captures held in
//! memory, in packets per second. Each iteration replays the set once into
//! a fresh engine (built outside the timing), so bans start from scratch.
//!
//! `engine/syn-ack`: one outbound Linux SYN-ACK (the full option set) per
//! iteration, to 1024 destinations in turn, with persona none (accept
//! only) and windows (every field rewritten, checksums fixed).
//!
//! Run: `cargo bench --bench engine`. Results are in the README (Benchmarks).
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

#[path = "common.rs"]
mod common;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcloak::config::Rules;
use portcloak::wire::TcpFlags;
use portcloak::wire::craft::Craft;
use portcloak::{Config, Direction, Engine, Timestamp};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/replay");
    for (name, prefix) in [("mixed", ""), ("legit", "legit-"), ("scans", "nmap")] {
        let packets = common::fixture_packets(prefix);
        let mut scratch = vec![0u8; 65_536];
        group.throughput(Throughput::Elements(packets.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || Engine::new(Config::default()),
                |engine| {
                    let mut accepted = 0usize;
                    for p in &packets {
                        let buf = &mut scratch[..p.bytes.len()];
                        buf.copy_from_slice(&p.bytes);
                        accepted += usize::from(
                            engine.handle(p.ts, p.direction, buf).verdict
                                == portcloak::Verdict::Accept,
                        );
                    }
                    (engine, accepted)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn syn_ack(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/syn-ack");
    group.throughput(Throughput::Elements(1));
    let server = "198.18.1.1".parse().unwrap();
    let packets: Vec<Vec<u8>> = (0..1024u16)
        .map(|i| {
            let peer = std::net::IpAddr::from([198, 18, 4 + (i >> 8) as u8, i as u8]);
            Craft::tcp(server, peer, 80, 40_000, TcpFlags::SYN | TcpFlags::ACK)
                .window(65_160)
                .df(true)
                .id(0)
                .options(&[2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7])
                .build()
        })
        .collect();
    for persona in ["none", "windows"] {
        let mut rules = Rules::default();
        rules.persona.name = persona.to_owned();
        let engine = Engine::new(Config::try_from(rules).expect("valid rules"));
        let mut buf = packets[0].clone();
        let mut i = 0usize;
        group.bench_function(persona, |b| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                buf.copy_from_slice(&packets[i]);
                engine.handle(Timestamp::from_secs(1), Direction::Outbound, &mut buf).rewritten
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, syn_ack);
criterion_main!(benches);
