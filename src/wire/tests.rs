use std::net::IpAddr;

use super::craft::Craft;
use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, last])
}

fn v6(last: u16) -> IpAddr {
    IpAddr::from([0xfd5c, 0x0a11, 0, 0, 0, 0, 0, last])
}

#[test]
fn tcp_over_ipv4() {
    let bytes = Craft::tcp(v4(2), v4(1), 40_000, 80, TcpFlags::SYN)
        .window(1024)
        .options(&[2, 4, 5, 180])
        .ttl(51)
        .id(777)
        .df(false)
        .seq_ack(9, 0)
        .build();
    let view = parse(&bytes).unwrap();
    assert_eq!(view.ip.src, v4(2));
    assert_eq!(view.ip.dst, v4(1));
    assert_eq!((view.ip.ttl, view.ip.id, view.ip.df, view.ip.protocol), (51, 777, false, 6));
    assert_eq!(view.checksum, Checksum::Valid);
    assert!(!view.truncated);
    let Transport::Tcp(tcp) = view.transport else { panic!("not tcp: {view:?}") };
    assert_eq!((tcp.src_port, tcp.dst_port, tcp.seq, tcp.window), (40_000, 80, 9, 1024));
    assert_eq!(tcp.flags.classic(), TcpFlags::SYN);
    assert_eq!(tcp.options, &[2, 4, 5, 180]);
}

#[test]
fn udp_and_icmp_over_ipv6() {
    let bytes = Craft::udp(v6(2), v6(1), 5353, 53).payload(b"hello").build();
    let view = parse(&bytes).unwrap();
    assert_eq!(view.checksum, Checksum::Valid);
    let Transport::Udp(udp) = view.transport else { panic!() };
    assert_eq!((udp.src_port, udp.dst_port, udp.payload), (5353, 53, &b"hello"[..]));

    let bytes = Craft::icmp(v6(2), v6(1), 128, 0).payload(&[1, 2, 3]).build();
    let view = parse(&bytes).unwrap();
    assert_eq!(view.checksum, Checksum::Valid);
    let Transport::Icmp(icmp) = view.transport else { panic!() };
    assert!(icmp.v6);
    assert_eq!((icmp.kind, icmp.payload.len()), (128, 3));
}

#[test]
fn icmpv4_echo_fields() {
    let bytes = Craft::icmp(v4(2), v4(1), 8, 9)
        .icmp_rest([0x12, 0x34, 0x01, 0x27])
        .payload(&[0; 120])
        .build();
    let view = parse(&bytes).unwrap();
    assert_eq!(view.checksum, Checksum::Valid);
    let Transport::Icmp(icmp) = view.transport else { panic!() };
    assert_eq!((icmp.ident(), icmp.sequence(), icmp.code), (0x1234, 295, 9));
}

#[test]
fn bad_checksums_are_caught_at_every_layer() {
    for packet in [
        Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::SYN).bad_checksum().build(),
        Craft::udp(v4(2), v4(1), 1, 2).payload(b"x").bad_checksum().build(),
        Craft::icmp(v4(2), v4(1), 8, 0).bad_checksum().build(),
        Craft::tcp(v6(2), v6(1), 1, 2, TcpFlags::SYN).bad_checksum().build(),
        Craft::icmp(v6(2), v6(1), 128, 0).bad_checksum().build(),
        Craft::raw(v4(2), v4(1), 47).bad_checksum().build(),
    ] {
        assert_eq!(parse(&packet).unwrap().checksum, Checksum::Bad, "{packet:?}");
    }
    // A flipped payload bit breaks an otherwise good segment.
    let mut bytes = Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::ACK).payload(b"data").build();
    *bytes.last_mut().unwrap() ^= 1;
    assert_eq!(parse(&bytes).unwrap().checksum, Checksum::Bad);
}

#[test]
fn offloaded_checksums_are_told_from_bad_ones() {
    for packet in [
        Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::SYN).partial_checksum().build(),
        Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::ACK).payload(b"data").partial_checksum().build(),
        Craft::udp(v4(2), v4(1), 1, 2).payload(b"x").partial_checksum().build(),
        Craft::tcp(v6(2), v6(1), 1, 2, TcpFlags::SYN).partial_checksum().build(),
        Craft::udp(v6(2), v6(1), 1, 2).payload(b"query").partial_checksum().build(),
    ] {
        assert_eq!(parse(&packet).unwrap().checksum, Checksum::Partial, "{packet:?}");
    }
    // nmap's --badsum and random corruption stay bad: the field must be the
    // pseudo-header's sum exactly.
    let mut bytes = Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::SYN).partial_checksum().build();
    bytes[37] ^= 1;
    assert_eq!(parse(&bytes).unwrap().checksum, Checksum::Bad);
    // ICMP is always summed in software: never partial.
    let icmp = Craft::icmp(v4(2), v4(1), 8, 0).partial_checksum().build();
    assert_eq!(parse(&icmp).unwrap().checksum, Checksum::Valid);
}

#[test]
fn udp_zero_checksum_means_none_on_v4_only() {
    let mut bytes = Craft::udp(v4(2), v4(1), 1, 2).payload(b"abc").build();
    bytes[26..28].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&bytes).unwrap().checksum, Checksum::Valid);
    let mut bytes = Craft::udp(v6(2), v6(1), 1, 2).payload(b"abc").build();
    bytes[46..48].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&bytes).unwrap().checksum, Checksum::Bad);
}

#[test]
fn truncated_packets_are_unverified_not_bad() {
    let bytes = Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::ACK).payload(&[7; 400]).build();
    let view = parse(&bytes[..60]).unwrap();
    assert!(view.truncated);
    assert_eq!(view.checksum, Checksum::Unverified);
    assert!(matches!(view.transport, Transport::Tcp(_)));
}

#[test]
fn ipv4_fragments() {
    let mut first = Craft::udp(v4(2), v4(1), 1, 53).payload(&[1; 64]).build();
    first[6] |= 0x20; // more fragments
    fix_ipv4_header(&mut first);
    let view = parse(&first).unwrap();
    assert_eq!(view.ip.fragment, Fragment::First);
    assert_eq!(view.checksum, Checksum::Unverified);
    assert!(matches!(view.transport, Transport::Udp(_)));

    let mut later = Craft::udp(v4(2), v4(1), 1, 53).payload(&[1; 64]).build();
    later[6..8].copy_from_slice(&(185u16).to_be_bytes()); // offset 185*8, last fragment
    fix_ipv4_header(&mut later);
    let view = parse(&later).unwrap();
    assert_eq!(view.ip.fragment, Fragment::Later);
    assert_eq!(view.transport, Transport::Fragment);
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    // Hop-by-hop (8 bytes of padding) then a fragment header, then TCP.
    let tcp = Craft::tcp(v6(2), v6(1), 1000, 22, TcpFlags::SYN).build();
    let l4 = &tcp[40..];
    for (offset_units, more, want) in [(0u16, true, Fragment::First), (100, false, Fragment::Later)]
    {
        let mut p = tcp[..40].to_vec();
        p[6] = 0; // next header: hop-by-hop
        p.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop -> fragment, PadN
        let frag_field = (offset_units << 3) | u16::from(more);
        p.extend_from_slice(&[6, 0]);
        p.extend_from_slice(&frag_field.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 9]);
        p.extend_from_slice(l4);
        let len = u16::try_from(p.len() - 40).unwrap();
        p[4..6].copy_from_slice(&len.to_be_bytes());
        let view = parse(&p).unwrap();
        assert_eq!(view.ip.protocol, 6);
        assert_eq!(view.ip.fragment, want);
        match want {
            Fragment::First => {
                assert!(matches!(view.transport, Transport::Tcp(t) if t.dst_port == 22))
            }
            _ => assert_eq!(view.transport, Transport::Fragment),
        }
    }
}

#[test]
fn sctp_is_recognised() {
    let mut bytes = Craft::raw(v4(2), v4(1), 132)
        .payload(&[0x13, 0x88, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0])
        .build();
    fix_ipv4_header(&mut bytes);
    let view = parse(&bytes).unwrap();
    assert_eq!(view.transport, Transport::Sctp { src_port: 5000, dst_port: 80 });
    assert_eq!(parse(&bytes[..28]).map(|v| v.truncated), Err(Error::Sctp));
}

#[test]
fn errors_name_the_layer() {
    assert_eq!(parse(&[]), Err(Error::Ip));
    assert_eq!(parse(&[0x45]), Err(Error::Ip));
    assert_eq!(parse(&[0x75; 40]), Err(Error::Ip));
    let tcp = Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::SYN).options(&[2, 4, 5, 180]).build();
    assert_eq!(parse(&tcp[..30]), Err(Error::Tcp));
    let udp = Craft::udp(v4(2), v4(1), 1, 2).build();
    assert_eq!(parse(&udp[..25]), Err(Error::Udp));
    let icmp = Craft::icmp(v4(2), v4(1), 8, 0).build();
    assert_eq!(parse(&icmp[..24]), Err(Error::Icmp));
}

#[test]
fn quoted_headers_of_icmp_errors() {
    let probe = Craft::udp(v4(2), v4(1), 45_000, 7).build();
    let error = Craft::icmp(v4(1), v4(2), 3, 3).icmp_rest([0; 4]).payload(&probe[..28]).build();
    let view = parse(&error).unwrap();
    let Transport::Icmp(icmp) = view.transport else { panic!() };
    let q = quoted(&icmp).unwrap();
    assert_eq!((q.src, q.dst, q.protocol, q.src_port, q.dst_port), (v4(2), v4(1), 17, 45_000, 7));
    let echo = Craft::icmp(v4(1), v4(2), 0, 0).build();
    let Transport::Icmp(icmp) = parse(&echo).unwrap().transport else { panic!() };
    assert_eq!(quoted(&icmp), None);
}

#[test]
fn addresses_without_a_full_parse() {
    let bytes = Craft::tcp(v6(2), v6(1), 1, 2, TcpFlags::SYN).build();
    assert_eq!(addresses(&bytes), Some((v6(2), v6(1))));
    assert_eq!(addresses(&bytes[..20]), None);
    assert_eq!(addresses(&[0x10]), None);
}

/// Every prefix of every kind of packet, and a sweep of pseudo-random bytes,
/// parse or fail without panicking.
#[test]
fn no_input_panics() {
    let samples = [
        Craft::tcp(v4(2), v4(1), 1, 2, TcpFlags::SYN)
            .options(&[2, 4, 5, 180, 1, 3, 3, 7])
            .payload(b"x")
            .build(),
        Craft::tcp(v6(2), v6(1), 1, 2, TcpFlags::ACK).payload(&[0; 30]).build(),
        Craft::udp(v4(2), v4(1), 1, 2).payload(b"abc").build(),
        Craft::icmp(v4(1), v4(2), 3, 3).payload(&Craft::udp(v4(2), v4(1), 3, 4).build()).build(),
        Craft::icmp(v6(2), v6(1), 1, 4).payload(&Craft::tcp(v6(1), v6(2), 3, 4, 0).build()).build(),
        Craft::raw(v4(2), v4(1), 132).payload(&[0; 16]).build(),
    ];
    for sample in &samples {
        for end in 0..=sample.len() {
            let _ = parse(&sample[..end]);
            let mut flipped = sample.clone();
            if let Some(b) = flipped.get_mut(end) {
                *b = !*b;
            }
            let _ = parse(&flipped);
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..4000usize {
        let mut buf = vec![0u8; len % 120];
        for b in &mut buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if let Some(first) = buf.first_mut() {
            *first = if len % 2 == 0 { 0x45 } else { 0x60 };
        }
        if let Ok(view) = parse(&buf) {
            if let Transport::Icmp(icmp) = view.transport {
                let _ = quoted(&icmp);
            }
        }
    }
}

fn fix_ipv4_header(bytes: &mut [u8]) {
    bytes[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::compute(0, &bytes[..20]);
    bytes[10..12].copy_from_slice(&c.to_be_bytes());
}
