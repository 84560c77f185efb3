//! `flood`: a million SYNs from random spoofed sources to a closed port, the
//! shape of `hping3 --flood --rand-source`. Reports throughput, then checks
//! and prints that the tables stayed at their caps, and the resident memory
//! of a default-sized engine with every table full: a million spoofed SYNs
//! to a closed port and a million more from the same sources to another
//! fill the sources (the second touch is evidence, which fills the
//! protected half), a million more to an open port fill the flows, and the
//! ban table is filled by hand.
//!
//! Run: `cargo bench --bench flood`. Results are in the README (Benchmarks).
#![allow(
    missing_docs,
    clippy::print_stderr,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

#[path = "common.rs"]
mod common;

use std::net::IpAddr;

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcloak::config::{PortList, Rules};
use portcloak::wire::TcpFlags;
use portcloak::wire::craft::Craft;
use portcloak::{Config, Direction, Engine, Timestamp};

const FLOOD: u32 = 1_000_000;

/// `n` SYNs to `dport` from spoofed sources, the same sources for the
/// same `seed`.
fn spoofed_syns(n: u32, seed: u32, dport: u16) -> Vec<Vec<u8>> {
    let dst: IpAddr = "198.18.1.1".parse().expect("addr");
    let mut x: u32 = 0x1234_5678 ^ seed;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            Craft::tcp(
                IpAddr::from(x.to_be_bytes()),
                dst,
                (i % 60_000) as u16 + 1024,
                dport,
                TcpFlags::SYN,
            )
            .window(512)
            .options(&[2, 4, 5, 180])
            .build()
        })
        .collect()
}

fn flood(engine: &Engine, packets: &[Vec<u8>], scratch: &mut [u8]) {
    for (i, p) in packets.iter().enumerate() {
        let buf = &mut scratch[..p.len()];
        buf.copy_from_slice(p);
        engine.handle(Timestamp::from_micros(1_000_000_000 + i as u64), Direction::Inbound, buf);
    }
}

fn bench(c: &mut Criterion) {
    let packets = spoofed_syns(FLOOD, 9999, 9999);
    // The same sources again at a second closed port, newest first, while
    // they are still tracked: two closed-port touches are evidence, which
    // fills the protected half of the table that a flood of one-packet
    // sources never reaches.
    let mut again = spoofed_syns(FLOOD, 9999, 9998);
    again.reverse();
    let to_open_port = spoofed_syns(FLOOD, 80, 80);
    let mut scratch = vec![0u8; 2048];

    // Caps and memory, measured once, outside criterion's timing.
    let before = common::rss_bytes();
    let mut rules = Rules::default();
    rules.services.tcp = PortList::from_ports([80]);
    let engine = Engine::new(Config::try_from(rules).expect("valid rules"));
    flood(&engine, &packets, &mut scratch);
    flood(&engine, &again, &mut scratch);
    flood(&engine, &to_open_port, &mut scratch);
    let bans = engine.config().tracking.bans as u32;
    for i in 0..bans {
        // A full shard refuses; the assertion below bounds how many.
        let _ = engine.ban(
            Timestamp::from_secs(2_000),
            IpAddr::from((0x0a00_0000 | i).to_be_bytes()),
            Duration::from_secs(3600),
        );
    }
    let after = common::rss_bytes();
    let s = engine.stats().tables;
    assert_eq!(s.sources, s.source_capacity, "the source table fills to its cap and stays there");
    assert_eq!(s.flows, s.flow_capacity, "the flow table fills to its cap and stays there");
    assert!(s.ban_records as u32 >= bans * 9 / 10, "ban records {}", s.ban_records);
    eprintln!(
        "flood: {} spoofed sources -> {} tracked (cap {}), {} evicted; {} flows (cap {}), {} evicted; {} ban records",
        2 * FLOOD,
        s.sources,
        s.source_capacity,
        s.source_evictions,
        s.flows,
        s.flow_capacity,
        s.flow_evictions,
        s.ban_records,
    );
    eprintln!(
        "flood: RSS +{:.1} MiB with every table at its default capacity",
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0)
    );
    drop(engine);
    drop(to_open_port);
    drop(again);

    let mut group = c.benchmark_group("flood");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(FLOOD)));
    group.bench_function("1M-spoofed-syn", |b| {
        b.iter_batched(
            || Engine::new(Config::default()),
            |e| {
                flood(&e, &packets, &mut scratch);
                e
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
