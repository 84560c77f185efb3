//! No packet bytes panic the engine: every prefix of every fixture packet,
//! and each with bytes corrupted, in both directions.

use portcloak::io::pcap::PcapReader;
use portcloak::wire::{self, LinkType};
use portcloak::{Config, Direction, Engine, Timestamp};

use crate::util::all_fixtures;

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
