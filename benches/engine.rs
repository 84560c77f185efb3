//! `engine`: the whole per-packet path, replaying fixture captures held in
//! memory, in packets per second. Each iteration replays the set once into
//! a fresh engine (built outside the timing), so bans start from scratch.
//!
//! Run: `cargo bench --bench engine`. Results are in the README (Benchmarks).
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

#[path = "common.rs"]
mod common;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcloak::{Config, Engine};

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

criterion_group!(benches, bench);
criterion_main!(benches);
