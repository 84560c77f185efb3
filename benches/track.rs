//! `track`: the sharded source table. Hot sources (one key over and over)
//! against cold ones (a new key every time, evicting), and one thread
//! against two on the same table.
//!
//! Run: `cargo bench --bench track`. Results are in the README (Benchmarks).
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcloak::Timestamp;
use portcloak::classify::{PortProto, ProbeKind};
use portcloak::track::{SourceKey, Table, TableLimits};

const CAP: usize = 131_072;

fn key(i: u32) -> SourceKey {
    SourceKey::new(IpAddr::from(i.to_be_bytes()), 64)
}

fn touch(table: &Table, i: u32) {
    let k = key(i);
    let now = Timestamp::from_secs(1_000);
    let mut shard = table.lock(&k);
    let s = shard.source(k, now);
    s.seen(now, ProbeKind::TcpSyn);
    black_box(s.touch_closed(
        now,
        Duration::from_secs(60),
        Duration::from_secs(3600),
        PortProto::Tcp,
        22,
        1,
    ));
}

fn table() -> Table {
    Table::new(TableLimits { shards: 64, sources: CAP, flows: 1024, bans: 1024, ipv6_network: 0 })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("track");
    group.throughput(Throughput::Elements(1));
    let t = table();
    group.bench_function("hot-source", |b| b.iter(|| touch(&t, 7)));
    let t = table();
    let mut i = 0u32;
    group.bench_function("cold-sources", |b| {
        b.iter(|| {
            i = i.wrapping_add(0x9e37_79b9);
            touch(&t, i);
        })
    });
    group.finish();

    // The same total work, done by one thread or split over two.
    let mut group = c.benchmark_group("track/threads");
    const OPS: u32 = 100_000;
    group.throughput(Throughput::Elements(u64::from(OPS)));
    for threads in [1u32, 2] {
        group.bench_function(format!("{threads}-thread"), |b| {
            b.iter_custom(|iters| {
                let t = table();
                let start = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|scope| {
                        for n in 0..threads {
                            let t = &t;
                            scope.spawn(move || {
                                for j in 0..OPS / threads {
                                    touch(
                                        t,
                                        (j * threads + n).wrapping_mul(2_654_435_761)
                                            % (CAP as u32 * 2),
                                    );
                                }
                            });
                        }
                    });
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
