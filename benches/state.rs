//! `state`: the state file at 65 536 bans, the ban table's default size.
//! Times one save (write, fsync, rename, directory fsync) and prints the
//! bytes each save writes, from `/proc/self/io` (`wchar`). The daemon
//! saves at most once a second (`SAVE_EVERY` in `runtime::daemon`), so at
//! a new ban every 50 ms it writes one file a second: those bytes are its
//! disk load per second.
//!
//! Run: `cargo bench --bench state`. Results are in the README (Security).
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

use criterion::{Criterion, criterion_group, criterion_main};
use portcloak::Timestamp;
use portcloak::runtime::state::{self, Saved};
use portcloak::track::{Ban, BanKind, BanReason, SourceKey};

const BANS: u32 = 65_536;

fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let now = Timestamp::from_secs(1_800_000_000);
    let bans: Vec<Saved> = (0..BANS)
        .map(|i| Saved {
            key: SourceKey::new(IpAddr::from((0xc612_0000 | i).to_be_bytes()), 64),
            ban: Ban {
                kind: BanKind::Ban,
                reason: BanReason::ClosedPorts(6),
                since: now,
                until: now.saturating_add(Duration::from_secs(3600)),
                offences: 1,
            },
            keep: Vec::new(),
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("portcloak-bench-state-{}", std::process::id()));
    let path = dir.join("state.json");
    let before = written();
    state::save(&path, now, 0, &bans, &[]).expect("save");
    let bytes = written() - before;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "state: {BANS} bans, file {size} bytes, {bytes} bytes written per save = {:.1} MB/s at one save a second",
        bytes as f64 / 1e6
    );
    c.bench_function("state/save-65536-bans", |b| {
        b.iter(|| state::save(&path, now, 0, &bans, &[]))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
