use std::io::Write;

use super::*;

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("portcloak-pcap-{}-{name}", std::process::id()));
    let mut f = File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    path
}

fn frames(path: &Path) -> Vec<(Timestamp, u32, Vec<u8>)> {
    let mut r = PcapReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().unwrap() {
        out.push((f.ts, f.linktype, f.data.to_vec()));
    }
    out
}

#[test]
fn pcap_round_trip() {
    let mut bytes = Vec::new();
    let input = vec![
        (Timestamp::from_micros(1_500_000), vec![1, 2, 3]),
        (Timestamp::from_micros(2_000_001), vec![4]),
    ];
    write_pcap(&mut bytes, 101, &input).unwrap();
    let path = temp("rt.pcap", &bytes);
    let got = frames(&path);
    assert_eq!(got, vec![(input[0].0, 101, vec![1, 2, 3]), (input[1].0, 101, vec![4])]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn big_endian_nanosecond_pcap() {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
    b.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1]);
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&123_456_789u32.to_be_bytes());
    b.extend_from_slice(&2u32.to_be_bytes());
    b.extend_from_slice(&2u32.to_be_bytes());
    b.extend_from_slice(&[9, 9]);
    let path = temp("ns.pcap", &b);
    assert_eq!(frames(&path), vec![(Timestamp::from_micros(7_123_456), 1, vec![9, 9])]);
    std::fs::remove_file(path).unwrap();
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let total = 12 + body.len().div_ceil(4) * 4;
    let mut b = Vec::new();
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&(total as u32).to_le_bytes());
    b.extend_from_slice(body);
    b.resize(total - 4, 0);
    b.extend_from_slice(&(total as u32).to_le_bytes());
    b
}

#[test]
fn pcapng_with_two_interfaces_and_resolutions() {
    let mut b = block(
        0x0a0d_0d0a,
        &[0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    // Interface 0: Ethernet, default microseconds.
    b.extend(block(1, &[1, 0, 0, 0, 0, 0, 1, 0]));
    // Interface 1: raw IP, nanoseconds (if_tsresol = 9).
    b.extend(block(1, &[101, 0, 0, 0, 0, 0, 1, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]));
    let epb = |iface: u32, ts: u64, data: &[u8]| {
        let mut body = Vec::new();
        body.extend_from_slice(&iface.to_le_bytes());
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        block(6, &body)
    };
    b.extend(epb(0, 3_000_000, &[1, 2, 3, 4, 5]));
    b.extend(block(5, &[0; 8])); // an unknown block is skipped
    b.extend(epb(1, 4_000_000_000, &[6]));
    b.extend(block(3, &[2, 0, 0, 0, 7, 8]));
    let path = temp("ng.pcapng", &b);
    assert_eq!(
        frames(&path),
        vec![
            (Timestamp::from_secs(3), 1, vec![1, 2, 3, 4, 5]),
            (Timestamp::from_secs(4), 101, vec![6]),
            (Timestamp::from_secs(4), 1, vec![7, 8]),
        ]
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn garbage_is_a_clear_error() {
    for (name, bytes, want) in [
        ("empty", &b""[..], "file is empty"),
        ("text", &b"hello, I am not a capture"[..], "not a pcap or pcapng file"),
        ("short", &0xa1b2_c3d4u32.to_le_bytes()[..], "truncated pcap file header"),
    ] {
        let path = temp(name, bytes);
        let err = PcapReader::open(&path).err().unwrap().to_string();
        assert!(err.contains(want), "{name}: {err}");
        std::fs::remove_file(path).unwrap();
    }
    let mut bytes = Vec::new();
    write_pcap(&mut bytes, 1, &[(Timestamp::ZERO, vec![0; 50])]).unwrap();
    bytes.truncate(bytes.len() - 10);
    let path = temp("cut.pcap", &bytes);
    let mut r = PcapReader::open(&path).unwrap();
    let err = r.next_frame().err().unwrap().to_string();
    assert!(err.contains("file ends inside a packet"), "{err}");
    std::fs::remove_file(path).unwrap();
    assert!(matches!(
        PcapReader::open(Path::new("/nonexistent/x.pcap")),
        Err(SourceError::Io { .. })
    ));
}
