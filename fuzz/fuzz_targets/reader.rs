//! Any bytes as a capture file through the pcap and pcapng reader (which
//! reads paths, so each input goes through a file of its own).
#![no_main]

use portcloak::io::pcap::PcapReader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("portcloak-fuzz-{}.cap", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut reader) = PcapReader::open(&path) {
        for _ in 0..4096 {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    if let Some(link) = portcloak::wire::LinkType::from_pcap(frame.linktype) {
                        let _ = portcloak::wire::link::ip_offset(link, frame.data);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
