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

#[test]
fn modified_pcap_with_its_longer_records() {
    // Old Red Hat tcpdump: magic 0xa1b2cd34, and 8 more bytes per record
    // (interface index, protocol, packet type, padding).
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_cd34u32.to_le_bytes());
    b.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101, 0, 0, 0]);
    for (secs, data) in [(5u32, &[1u8, 2][..]), (6, &[3][..])] {
        b.extend_from_slice(&secs.to_le_bytes());
        b.extend_from_slice(&250_000u32.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(data);
    }
    let path = temp("modified.pcap", &b);
    assert_eq!(
        frames(&path),
        vec![
            (Timestamp::from_micros(5_250_000), 101, vec![1, 2]),
            (Timestamp::from_micros(6_250_000), 101, vec![3]),
        ]
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn pcapng_time_offsets_and_frame_check_sequences() {
    let mut b = block(
        0x0a0d_0d0a,
        &[0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    // Ethernet, if_tsoffset = 1_000_000_000 s, if_fcslen = 4.
    let mut idb = vec![1, 0, 0, 0, 0, 0, 1, 0];
    idb.extend_from_slice(&[14, 0, 8, 0]);
    idb.extend_from_slice(&1_000_000_000u64.to_le_bytes());
    idb.extend_from_slice(&[13, 0, 1, 0, 4, 0, 0, 0]);
    b.extend(block(1, &idb));
    let mut epb = Vec::new();
    epb.extend_from_slice(&0u32.to_le_bytes());
    epb.extend_from_slice(&0u32.to_le_bytes());
    epb.extend_from_slice(&2_500_000u32.to_le_bytes());
    epb.extend_from_slice(&7u32.to_le_bytes());
    epb.extend_from_slice(&7u32.to_le_bytes());
    epb.extend_from_slice(&[1, 2, 3, 0xfc, 0xfc, 0xfc, 0xfc]);
    b.extend(block(6, &epb));
    let path = temp("offset.pcapng", &b);
    assert_eq!(
        frames(&path),
        vec![(Timestamp::from_micros(1_000_000_002_500_000), 1, vec![1, 2, 3])],
        "the offset added, the FCS cut off"
    );
    std::fs::remove_file(path).unwrap();
    // pcap says it in the link type's upper bits: FCS present, 2 words.
    let mut bytes = Vec::new();
    let linktype = 1 | 0x0400_0000 | (2 << 28);
    write_pcap(&mut bytes, linktype, &[(Timestamp::ZERO, vec![5, 6, 0, 0, 0, 0])]).unwrap();
    let path = temp("fcs.pcap", &bytes);
    assert_eq!(frames(&path), vec![(Timestamp::ZERO, 1, vec![5, 6])]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_capture_streams_from_a_pipe() {
    let mut bytes = Vec::new();
    let input: Vec<_> =
        (0..5000u64).map(|i| (Timestamp::from_micros(i), vec![i as u8; 300])).collect();
    write_pcap(&mut bytes, 101, &input).unwrap();
    // Bytes that arrive a few at a time, as from a pipe.
    struct Trickle(std::io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }
    let mut r =
        PcapReader::from_reader(Path::new("-"), Box::new(Trickle(std::io::Cursor::new(bytes))))
            .unwrap();
    let mut n = 0;
    while let Some(f) = r.next_frame().unwrap() {
        assert_eq!((f.ts, f.data), (input[n].0, &input[n].1[..]));
        n += 1;
    }
    assert_eq!(n, 5000);
}

#[test]
fn a_file_many_buffers_long_reads_whole() {
    // Frames of every size straddle the reader's 64 KiB reads.
    let input: Vec<_> = (0..4000u64)
        .map(|i| (Timestamp::from_micros(i), vec![i as u8; (i as usize * 37) % 1500 + 1]))
        .collect();
    let mut bytes = Vec::new();
    write_pcap(&mut bytes, 101, &input).unwrap();
    assert!(bytes.len() > 40 * CHUNK);
    let path = temp("long.pcap", &bytes);
    let got = frames(&path);
    assert_eq!(got.len(), input.len());
    assert!(got.iter().zip(&input).all(|(g, i)| g.0 == i.0 && g.2 == i.1));
    std::fs::remove_file(path).unwrap();
}
