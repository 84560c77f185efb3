//! `flood`: a million SYNs from random spoofed sources to a closed port, the
//! shape of `hping3 --flood --rand-source`. Reports throughput, then checks
//! and prints that the tables stayed at their caps, and the resident memory
//! of a default-sized engine filled to capacity.
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

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcloak::wire::TcpFlags;
use portcloak::wire::craft::Craft;
use portcloak::{Config, Direction, Engine, Timestamp};

const FLOOD: u32 = 1_000_000;

fn spoofed_syns(n: u32) -> Vec<Vec<u8>> {
    let dst: IpAddr = "198.18.1.1".parse().expect("addr");
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            Craft::tcp(
                IpAddr::from(x.to_be_bytes()),
                dst,
                (i % 60_000) as u16 + 1024,
                9999,
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
        engine.handle(
            Timestamp::from_micros(1_000_000_000 + i as u64),
            Direction::Inbound,
            buf,
        );
    }
}

fn bench(c: &mut Criterion) {
    let packets = spoofed_syns(FLOOD);
    let mut scratch = vec![0u8; 2048];

    // Caps and memory, measured once, outside criterion's timing.
    let before = common::rss_bytes();
    let engine = Engine::new(Config::default());
    flood(&engine, &packets, &mut scratch);
    let after = common::rss_bytes();
    let s = engine.stats().tables;
    assert_eq!(
        s.sources, s.source_capacity,
        "the source table fills to its cap and stays there"
    );
    assert_eq!(
        s.source_evictions,
        u64::from(FLOOD) - s.source_capacity as u64
    );
    eprintln!(
        "flood: {} spoofed sources -> {} tracked (cap {}), {} evicted; {} flows (cap {}); RSS +{:.1} MiB at default capacity",
        FLOOD,
        s.sources,
        s.source_capacity,
        s.source_evictions,
        s.flows,
        s.flow_capacity,
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0)
    );

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
