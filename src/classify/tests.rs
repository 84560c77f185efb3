use std::net::IpAddr;

use super::*;
use crate::wire::craft::Craft;
use crate::wire::{self, TcpFlags as F};

fn a() -> IpAddr {
    IpAddr::from([198, 18, 1, 2])
}

fn b() -> IpAddr {
    IpAddr::from([198, 18, 1, 1])
}

fn probe(bytes: &[u8], in_flow: bool) -> Probe {
    classify(&wire::parse(bytes).unwrap(), in_flow)
}

fn linux_syn(dport: u16) -> Craft {
    // A Linux connect(): window 64240, MSS, SACK, TS, NOP, WS7, DF.
    Craft::tcp(a(), b(), 50_000, dport, F::SYN)
        .window(64_240)
        .options(&[2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7])
}

#[test]
fn flag_kinds() {
    let cases = [
        (F::SYN, false, ProbeKind::TcpSyn),
        (0, false, ProbeKind::TcpNull),
        (0, true, ProbeKind::TcpNull),
        (F::FIN, false, ProbeKind::TcpFin),
        (F::FIN | F::PSH | F::URG, false, ProbeKind::TcpXmas),
        (F::FIN | F::URG | F::ACK, true, ProbeKind::TcpXmas),
        (F::FIN | F::ACK, false, ProbeKind::TcpMaimon),
        (F::FIN | F::ACK, true, ProbeKind::TcpFlow),
        (F::ACK, false, ProbeKind::TcpAck),
        (F::ACK | F::PSH, false, ProbeKind::TcpAck),
        (F::ACK, true, ProbeKind::TcpFlow),
        (F::RST, false, ProbeKind::TcpRst),
        (F::RST | F::ACK, false, ProbeKind::TcpRst),
        (F::RST, true, ProbeKind::TcpFlow),
        (F::SYN | F::FIN, true, ProbeKind::TcpSynFin),
        (F::SYN | F::RST, false, ProbeKind::TcpSynRst),
        (F::SYN | F::ACK, false, ProbeKind::TcpSynAck),
        (F::SYN | F::ACK, true, ProbeKind::TcpFlow),
        (F::PSH, false, ProbeKind::TcpIllegal),
        (F::URG, false, ProbeKind::TcpIllegal),
    ];
    for (flags, in_flow, want) in cases {
        assert_eq!(tcp_kind(F(flags), in_flow), want, "flags {flags:#x} in_flow {in_flow}");
    }
}

#[test]
fn ordinary_packets_carry_no_signature() {
    for bytes in [
        linux_syn(80).build(),
        Craft::udp(a(), b(), 40_000, 53).payload(b"query").build(),
        Craft::icmp(a(), b(), 8, 0).payload(&[0x55; 56]).build(),
        Craft::tcp(a(), b(), 50_000, 80, F::RST).seq_ack(5, 0).build(),
    ] {
        assert_eq!(probe(&bytes, false).signature, None, "{bytes:?}");
    }
}

#[test]
fn nmap_syn() {
    let nmap =
        Craft::tcp(a(), b(), 40_562, 22, F::SYN).window(1024).options(&[2, 4, 5, 180]).df(false);
    let p = probe(&nmap.build(), false);
    assert_eq!(p.kind, ProbeKind::TcpSyn);
    assert_eq!(p.signature, Some(Signature::Tool(Fingerprint::NmapSyn)));
    assert_eq!(p.port, Some((PortProto::Tcp, 22)));
    // With DF set it is not nmap's raw SYN.
    assert_eq!(probe(&nmap.clone().df(true).build(), false).signature, None);
    assert_eq!(probe(&nmap.window(1025).build(), false).signature, None);
}

#[test]
fn masscan_ip_id_relation() {
    let seq = 0x1234_5678u32;
    let dst = u32::from_be_bytes([198, 18, 1, 1]);
    let id = ((dst ^ 80 ^ seq) & 0xffff) as u16;
    let m = Craft::tcp(a(), b(), 61_000, 80, F::SYN).window(1024).seq_ack(seq, 0).id(id).df(false);
    assert_eq!(
        probe(&m.clone().options(&[2, 4, 5, 180]).window(1025).build(), false).signature,
        Some(Signature::Tool(Fingerprint::Masscan))
    );
    assert_eq!(
        probe(&m.clone().build(), false).signature,
        Some(Signature::Tool(Fingerprint::Masscan))
    );
    // Wrong IP ID and an MSS option: not masscan.
    let other = m.id(id ^ 1).options(&[2, 4, 5, 180]).window(1025).build();
    assert_eq!(probe(&other, false).signature, None);
}

#[test]
fn zmap_old_and_new() {
    let old = Craft::tcp(a(), b(), 40_000, 443, F::SYN).window(65_535).id(54_321).df(false);
    assert_eq!(probe(&old.build(), false).signature, Some(Signature::Tool(Fingerprint::Zmap)));
    let new = Craft::tcp(a(), b(), 40_000, 443, F::SYN)
        .window(65_535)
        .id(999)
        .df(false)
        .options(&[2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2]);
    assert_eq!(
        probe(&new.clone().build(), false).signature,
        Some(Signature::Tool(Fingerprint::Zmap))
    );
    // Real Windows sends the same options with DF.
    assert_eq!(probe(&new.df(true).build(), false).signature, None);
}

#[test]
fn hping3_ack_without_ack_flag() {
    let h = Craft::tcp(a(), b(), 2000, 0, 0).window(512).seq_ack(1, 0x1d04_cd86);
    let p = probe(&h.build(), false);
    assert_eq!(p.kind, ProbeKind::TcpNull);
    assert_eq!(p.signature, Some(Signature::Tool(Fingerprint::Hping3)));
    let syn = Craft::tcp(a(), b(), 2000, 80, F::SYN).window(512).seq_ack(1, 7).build();
    assert_eq!(probe(&syn, false).signature, Some(Signature::Tool(Fingerprint::Hping3)));
    // RST without ACK may carry any ack; real stacks do.
    let rst = Craft::tcp(a(), b(), 2000, 80, F::RST).seq_ack(1, 7).build();
    assert_eq!(probe(&rst, false).signature, None);
}

#[test]
fn nmap_os_probes_exactly() {
    const TS: [u8; 10] = [8, 10, 255, 255, 255, 255, 0, 0, 0, 0];
    let t2 = [&[3, 3, 10, 1, 2, 4, 1, 9][..], &TS, &[4, 2]].concat();
    let mut t7 = t2.clone();
    t7[2] = 15;
    let seq1 = [&[3, 3, 10, 1, 2, 4, 5, 180][..], &TS, &[4, 2]].concat();
    let cases: Vec<(OsProbe, u16, u16, Vec<u8>)> = vec![
        (OsProbe::Seq1, F::SYN, 1, seq1),
        (OsProbe::Seq2, F::SYN, 63, [&[2, 4, 5, 120, 3, 3, 0, 4, 2][..], &TS, &[0]].concat()),
        (OsProbe::Seq3, F::SYN, 4, [&TS[..], &[1, 1, 3, 3, 5, 1, 2, 4, 2, 128]].concat()),
        (OsProbe::Seq4, F::SYN, 4, [&[4, 2][..], &TS, &[3, 3, 10, 0]].concat()),
        (OsProbe::Seq5, F::SYN, 16, [&[2, 4, 2, 24, 4, 2][..], &TS, &[3, 3, 10, 0]].concat()),
        (OsProbe::Seq6, F::SYN, 512, [&[2, 4, 1, 9, 4, 2][..], &TS].concat()),
        (OsProbe::Ecn, F::SYN | F::ECE | F::CWR, 3, vec![3, 3, 10, 1, 2, 4, 5, 180, 4, 2, 1, 1]),
        (OsProbe::T2, 0, 128, t2.clone()),
        (OsProbe::T3, F::SYN | F::FIN | F::PSH | F::URG, 256, t2.clone()),
        (OsProbe::T4, F::ACK, 1024, t2.clone()),
        (OsProbe::T5, F::SYN, 31_337, t2.clone()),
        (OsProbe::T6, F::ACK, 32_768, t2),
        (OsProbe::T7, F::FIN | F::PSH | F::URG, 65_535, t7),
    ];
    for (want, flags, window, options) in cases {
        let bytes = Craft::tcp(a(), b(), 46_350, 22, flags)
            .window(window)
            .options(&options)
            .seq_ack(7, 99)
            .build();
        assert_eq!(probe(&bytes, false).signature, Some(Signature::OsProbe(want)), "{want:?}");
        // One option byte off and it is no longer that probe.
        let mut off = options.clone();
        off[0] ^= 0x40;
        let bytes = Craft::tcp(a(), b(), 46_350, 22, flags).window(window).options(&off).build();
        assert_ne!(probe(&bytes, false).signature, Some(Signature::OsProbe(want)));
    }
}

#[test]
fn nmap_os_udp_and_icmp_probes() {
    let u1 = Craft::udp(a(), b(), 40_000, 9).id(0x1042).payload(&[b'C'; 300]).build();
    assert_eq!(probe(&u1, false).signature, Some(Signature::OsProbe(OsProbe::U1)));
    let ie1 = Craft::icmp(a(), b(), 8, 9).icmp_rest([0, 7, 1, 39]).payload(&[0; 120]).build();
    assert_eq!(
        probe(&ie1, false),
        Probe {
            kind: ProbeKind::IcmpEcho,
            signature: Some(Signature::OsProbe(OsProbe::Ie1)),
            port: None
        }
    );
    let ie2 =
        Craft::icmp(a(), b(), 8, 0).tos(4).icmp_rest([0, 8, 1, 40]).payload(&[0; 150]).build();
    assert_eq!(probe(&ie2, false).signature, Some(Signature::OsProbe(OsProbe::Ie2)));
}

#[test]
fn icmp_kinds() {
    let empty_echo = Craft::icmp(a(), b(), 8, 0).build();
    assert_eq!(probe(&empty_echo, false).signature, Some(Signature::Tool(Fingerprint::NmapEcho)));
    let v6_echo =
        Craft::icmp("fd5c:a11::2".parse().unwrap(), "fd5c:a11::1".parse().unwrap(), 128, 0).build();
    assert_eq!(probe(&v6_echo, false).signature, Some(Signature::Tool(Fingerprint::NmapEcho)));
    assert_eq!(
        probe(&Craft::icmp(a(), b(), 13, 0).payload(&[0; 12]).build(), false).kind,
        ProbeKind::IcmpTimestamp
    );
    assert_eq!(
        probe(&Craft::icmp(a(), b(), 17, 0).payload(&[0; 4]).build(), false).kind,
        ProbeKind::IcmpAddressMask
    );
    assert_eq!(probe(&Craft::icmp(a(), b(), 0, 0).build(), false).kind, ProbeKind::IcmpOther);
}

#[test]
fn names_are_unique() {
    let mut names: Vec<&str> = ProbeKind::ALL.iter().map(|k| k.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ProbeKind::ALL.len());
    assert!(ProbeKind::ALL.iter().all(|k| k.bit() != 0));
}

#[test]
fn nmap_stealth_probes() {
    for flags in [0, F::FIN, F::FIN | F::PSH | F::URG] {
        let p = Craft::tcp(a(), b(), 40_000, 22, flags)
            .window(1024)
            .df(false)
            .seq_ack(0x1234, 0)
            .build();
        assert_eq!(
            probe(&p, false).signature,
            Some(Signature::Tool(Fingerprint::NmapStealth)),
            "{flags:#x}"
        );
    }
    for flags in [F::ACK, F::FIN | F::ACK] {
        let p =
            Craft::tcp(a(), b(), 40_000, 22, flags).window(1024).df(false).seq_ack(0, 0x55).build();
        assert_eq!(
            probe(&p, false).signature,
            Some(Signature::Tool(Fingerprint::NmapStealth)),
            "{flags:#x}"
        );
        // A real stack's ACK carries a sequence number, and DF.
        let real = Craft::tcp(a(), b(), 40_000, 22, flags)
            .window(1024)
            .df(false)
            .seq_ack(77, 0x55)
            .build();
        assert_eq!(probe(&real, false).signature, None);
    }
    // The same shape inside a flow is not a probe.
    let in_flow =
        Craft::tcp(a(), b(), 40_000, 22, F::ACK).window(1024).df(false).seq_ack(0, 1).build();
    assert_eq!(probe(&in_flow, true).signature, None);
    let with_df = Craft::tcp(a(), b(), 40_000, 22, F::FIN).window(1024).build();
    assert_eq!(probe(&with_df, false).signature, None);
}
