//! Shared by the benches: fixture packets loaded into memory.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;

use portcloak::io::pcap::PcapReader;
use portcloak::wire::{self, LinkType};
use portcloak::{Direction, Timestamp};

// The allocator of the binary, so figures match what it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One packet: its time, direction and bytes from the IP header.
pub(crate) struct Packet {
    pub(crate) ts: Timestamp,
    pub(crate) direction: Direction,
    pub(crate) bytes: Vec<u8>,
}

/// The lab's server addresses, which every fixture was captured at.
fn is_server(ip: IpAddr) -> bool {
    ["198.18.1.1", "198.18.2.1", "fd5c:a11:1::1", "fd5c:a11:2::1"]
        .iter()
        .any(|s| s.parse() == Ok(ip))
}

/// Every packet of every fixture whose name starts with `prefix` ("" for all).
pub(crate) fn fixture_packets(prefix: &str) -> Vec<Packet> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let mut reader = PcapReader::open(&path).expect("open");
        while let Some(frame) = reader.next_frame().expect("read") {
            let link = LinkType::from_pcap(frame.linktype).expect("link type");
            let Some(offset) = wire::link::ip_offset(link, frame.data) else {
                continue;
            };
            let bytes = frame.data[offset..].to_vec();
            let Some((src, _)) = wire::addresses(&bytes) else {
                continue;
            };
            let direction = if is_server(src) { Direction::Outbound } else { Direction::Inbound };
            out.push(Packet { ts: frame.ts, direction, bytes });
        }
    }
    out
}

/// Resident memory of this process, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
