//! `wire`: parsing and checksum verification, per packet.
//!
//! Run: `cargo bench --bench wire`. Results are in the README (Benchmarks).
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcloak::wire::craft::Craft;
use portcloak::wire::{self, TcpFlags};

fn bench(c: &mut Criterion) {
    let a: IpAddr = "198.18.1.2".parse().expect("addr");
    let b: IpAddr = "198.18.1.1".parse().expect("addr");
    let a6: IpAddr = "fd5c:a11:1::2".parse().expect("addr");
    let b6: IpAddr = "fd5c:a11:1::1".parse().expect("addr");
    let cases = [
        (
            "syn-v4",
            Craft::tcp(a, b, 40_000, 80, TcpFlags::SYN)
                .options(&[2, 4, 5, 180, 4, 2, 1, 3, 3, 7])
                .build(),
        ),
        (
            "syn-v6",
            Craft::tcp(a6, b6, 40_000, 80, TcpFlags::SYN)
                .options(&[2, 4, 5, 160, 4, 2, 1, 3, 3, 7])
                .build(),
        ),
        ("udp-v4", Craft::udp(a, b, 40_000, 53).payload(&[7; 40]).build()),
        ("icmp-echo-v4", Craft::icmp(a, b, 8, 0).payload(&[1; 56]).build()),
        ("ack-1400-v4", Craft::tcp(a, b, 40_000, 80, TcpFlags::ACK).payload(&[9; 1400]).build()),
    ];
    let mut group = c.benchmark_group("wire/parse");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in &cases {
        group.bench_function(*name, |bench| bench.iter(|| wire::parse(black_box(bytes)).is_ok()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
