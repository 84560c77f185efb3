//! The same capture in every link layer and file format replay reads gives
//! the same result: pcap in microseconds and nanoseconds, pcapng, and
//! Ethernet with VLAN tags, Linux cooked SLL and SLL2, raw IP, BSD null.

use std::io::Write;
use std::path::{Path, PathBuf};

use portcloak::io::pcap::{PcapReader, write_pcap};
use portcloak::runtime::replay::{self, Report};
use portcloak::{Config, Engine, Timestamp};

use crate::util::fixture;

/// The IP packets of a fixture, with their times.
pub(crate) fn ip_packets(name: &str) -> Vec<(Timestamp, Vec<u8>)> {
    let mut reader = PcapReader::open(&fixture(name)).expect("open");
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().expect("read") {
        assert_eq!(frame.linktype, 1, "fixtures are Ethernet");
        let ethertype = u16::from_be_bytes([frame.data[12], frame.data[13]]);
        if ethertype == 0x0800 || ethertype == 0x86dd {
            out.push((frame.ts, frame.data[14..].to_vec()));
        }
    }
    out
}

fn ethertype(ip: &[u8]) -> [u8; 2] {
    if ip[0] >> 4 == 6 { [0x86, 0xdd] } else { [0x08, 0x00] }
}

/// Wraps an IP packet in a link layer, by pcap link type.
fn wrap(linktype: u32, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    match linktype {
        0 => f.extend_from_slice(&(if ip[0] >> 4 == 6 { 30u32 } else { 2 }).to_le_bytes()),
        1 => {
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
            f.extend_from_slice(&ethertype(ip));
        }
        101 => {}
        113 => {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            f.extend_from_slice(&ethertype(ip));
        }
        276 => {
            f.extend_from_slice(&ethertype(ip));
            f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0]);
        }
        _ => unreachable!(),
    }
    f.extend_from_slice(ip);
    f
}

/// A pcapng file: one section, one interface with nanosecond timestamps.
pub(crate) fn write_pcapng(path: &Path, linktype: u16, frames: &[(Timestamp, Vec<u8>)]) {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let total = 12 + body.len().div_ceil(4) * 4;
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + (total - 12 - body.len()), 0);
        out.extend_from_slice(&(total as u32).to_le_bytes());
    }
    let mut out = Vec::new();
    block(
        &mut out,
        0x0a0d_0d0a,
        &[0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    let mut idb = Vec::new();
    idb.extend_from_slice(&linktype.to_le_bytes());
    idb.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    block(&mut out, 1, &idb);
    for (ts, data) in frames {
        let nanos = ts.micros() * 1000;
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((nanos >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(nanos as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        block(&mut out, 6, &epb);
    }
    std::fs::File::create(path).and_then(|mut f| f.write_all(&out)).expect("write pcapng");
}

fn replay_file(path: PathBuf) -> Report {
    let engine = Engine::new(Config::default());
    replay::run(&engine, &[path], &replay::Options::default(), &mut std::io::sink())
        .expect("replay")
}

/// What must not change with the container: counts, drops and bans.
fn essence(r: &Report) -> String {
    format!("{} {} {} {} {:?} {:?}", r.inbound, r.outbound, r.accepted, r.dropped, r.drops, r.bans)
}

#[test]
fn every_link_layer_and_format_replays_alike() {
    let dir = std::env::temp_dir().join(format!("portcloak-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for name in ["nmap-sS", "nmap6-sS", "legit-mistype"] {
        let packets = ip_packets(name);
        let want = essence(&replay_file(fixture(name)));
        for linktype in [0u32, 1, 101, 113, 276] {
            let frames: Vec<_> = packets.iter().map(|(ts, ip)| (*ts, wrap(linktype, ip))).collect();
            let pcap = dir.join(format!("{name}-{linktype}.pcap"));
            write_pcap(&mut std::fs::File::create(&pcap).expect("create"), linktype, &frames)
                .expect("write pcap");
            assert_eq!(essence(&replay_file(pcap)), want, "{name} as pcap link type {linktype}");
            let ng = dir.join(format!("{name}-{linktype}.pcapng"));
            write_pcapng(&ng, linktype as u16, &frames);
            assert_eq!(essence(&replay_file(ng)), want, "{name} as pcapng link type {linktype}");
        }
    }
    std::fs::remove_dir_all(dir).expect("clean up");
}
