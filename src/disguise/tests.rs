//! Persona rewrites, checked by re-parsing the output: every checksum must
//! verify, and only the fields the persona names may change.

use std::net::IpAddr;

use super::*;
use crate::config::{Action, ClosedPorts, Config, Rules};
use crate::engine::{Direction, Engine, Meta};
use crate::policy::{Reason, Verdict};
use crate::time::Timestamp;
use crate::wire::checksum;
use crate::wire::craft::Craft;
use crate::wire::{self, Checksum, TcpFlags as F};

const LINUX_FULL: [u8; 20] = [2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7];
const WIN_FULL: [u8; 20] = [2, 4, 5, 180, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0];

fn server() -> IpAddr {
    IpAddr::from([198, 18, 1, 1])
}

fn peer() -> IpAddr {
    IpAddr::from([198, 18, 1, 2])
}

fn server6() -> IpAddr {
    "fd5c:a11:1::1".parse().unwrap()
}

fn peer6() -> IpAddr {
    "fd5c:a11:1::2".parse().unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_secs(1_000)
}

/// Rules with every detection rule off, so scanner probes reach the
/// persona, and the kernel answers closed ports.
fn open_rules(persona: &str) -> Rules {
    let mut c = Rules::default();
    c.persona.name = persona.to_owned();
    c.policy.closed_ports = ClosedPorts::Reject;
    c.probes.os_detection = Action::Off;
    c.probes.null = Action::Off;
    c.probes.syn_fin = Action::Off;
    c.probes.xmas = Action::Off;
    c.probes.ack = Action::Off;
    c.fingerprints.hping3 = Action::Off;
    c.fingerprints.nmap_stealth = Action::Off;
    c
}

fn engine(persona: &str) -> Engine {
    Engine::new(Config::try_from(open_rules(persona)).unwrap())
}

fn out(e: &Engine, bytes: &mut [u8]) -> bool {
    e.handle(now(), Direction::Outbound, bytes).rewritten
}

fn syn_ack(src: IpAddr, dst: IpAddr, options: &[u8]) -> Vec<u8> {
    Craft::tcp(src, dst, 80, 40_000, F::SYN | F::ACK)
        .seq_ack(7, 8)
        .window(65_160)
        .ttl(64)
        .df(true)
        .id(0)
        .options(options)
        .build()
}

fn view(bytes: &[u8]) -> wire::PacketView<'_> {
    let v = wire::parse(bytes).unwrap();
    assert_eq!(v.checksum, Checksum::Valid, "checksums must verify after a rewrite");
    v
}

fn tcp(bytes: &[u8]) -> wire::Tcp<'_> {
    match view(bytes).transport {
        Transport::Tcp(t) => t,
        other => panic!("not TCP: {other:?}"),
    }
}

#[test]
fn windows_rewrites_a_syn_ack_coherently_and_keeps_every_option_value() {
    let e = engine("windows");
    let mut p = syn_ack(server(), peer(), &LINUX_FULL);
    assert!(out(&e, &mut p));
    let v = view(&p);
    assert_eq!(v.ip.ttl, 128);
    assert_ne!(v.ip.id, 0);
    let t = tcp(&p);
    assert_eq!(t.window, 8192);
    assert_eq!(t.options, WIN_FULL, "MSS,NOP,WS,SACKP,TS with the same values");
    assert_eq!((t.seq, t.ack, t.src_port, t.dst_port), (7, 8, 80, 40_000));
}

#[test]
fn none_rewrites_nothing() {
    let e = engine("none");
    let mut p = syn_ack(server(), peer(), &LINUX_FULL);
    let before = p.clone();
    assert!(!out(&e, &mut p));
    assert_eq!(p, before);
}

#[test]
fn option_layouts_follow_bsd_and_windows_alignment() {
    let order = [TcpOpt::Mss, TcpOpt::Ws, TcpOpt::Sok, TcpOpt::Ts];
    let lay = |b: &[u8]| rewrite::reorder_options(b, &order, false).map(|(o, n)| o[..n].to_vec());
    // No timestamps (Linux: MSS NOP NOP SACKP NOP WS).
    assert_eq!(
        lay(&[2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 8]).unwrap(),
        [2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2]
    );
    // BSD pads a last lone SACK-permitted with EOLs instead.
    assert_eq!(
        rewrite::reorder_options(&[2, 4, 5, 180, 1, 1, 4, 2, 1, 3, 3, 8], &order, true)
            .map(|(o, n)| o[..n].to_vec()),
        Some(vec![2, 4, 5, 180, 1, 3, 3, 8, 4, 2, 0, 0])
    );
    // No SACK (Linux: MSS NOP NOP TS NOP WS).
    let ts = [8, 10, 1, 2, 3, 4, 0, 0, 0, 0];
    let mut linux = vec![2, 4, 5, 180, 1, 1];
    linux.extend(ts);
    linux.extend([1, 3, 3, 8]);
    let mut win = vec![2, 4, 5, 180, 1, 3, 3, 8, 1, 1];
    win.extend(ts);
    assert_eq!(lay(&linux).unwrap(), win);
    // No window scale (Linux MSS SACKP TS): already the Windows layout.
    let mut no_ws = vec![2, 4, 5, 180, 4, 2];
    no_ws.extend(ts);
    assert_eq!(lay(&no_ws), None);
    // MSS only (nmap -sS) and no options: nothing to do.
    assert_eq!(lay(&[2, 4, 5, 180]), None);
    assert_eq!(lay(&[]), None);
    // An option portcloak does not know, a repeat, or a bad length: left alone.
    assert_eq!(lay(&[2, 4, 5, 180, 30, 4, 0, 0, 1, 3, 3, 8]), None);
    assert_eq!(lay(&[2, 4, 5, 180, 2, 4, 5, 180]), None);
    assert_eq!(lay(&[2, 4, 5, 180, 1, 3, 3]), None);
    assert_eq!(lay(&[2, 5, 5, 180, 1, 1, 1, 1]), None);
    // An order that leaves options out keeps them, after the named ones.
    let short = rewrite::reorder_options(&LINUX_FULL, &[TcpOpt::Ws], false)
        .map(|(o, n)| o[..n].to_vec())
        .unwrap();
    assert_eq!(short, [1, 3, 3, 7, 2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0]);
}

#[test]
fn ip_id_is_one_counter_per_destination_shared_with_echo_replies() {
    let e = engine("windows");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut p = syn_ack(server(), peer(), &LINUX_FULL);
        out(&e, &mut p);
        ids.push(view(&p).ip.id);
    }
    let mut echo = Craft::icmp(server(), peer(), 0, 9).icmp_rest([0, 1, 1, 39]).id(0).build();
    assert!(out(&e, &mut echo));
    let v = view(&echo);
    ids.push(v.ip.id);
    match v.transport {
        Transport::Icmp(i) => assert_eq!((i.kind, i.code), (0, 0), "echo-reply code zeroed"),
        other => panic!("{other:?}"),
    }
    let diffs: Vec<u16> = ids.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert_eq!(diffs, [1, 1, 1]);
    // Another destination has its own counter: it never sees this one move.
    let mut other = syn_ack(server(), IpAddr::from([198, 18, 1, 3]), &LINUX_FULL);
    out(&e, &mut other);
    let mut again = syn_ack(server(), peer(), &LINUX_FULL);
    out(&e, &mut again);
    assert_eq!(view(&again).ip.id, ids[3].wrapping_add(1));
}

#[test]
fn random_increments_look_like_nmaps_class_ri() {
    let e = engine("freebsd");
    let mut last = None;
    for seq in 0..50u8 {
        let mut p = Craft::icmp(server(), peer(), 0, 0).icmp_rest([0, 1, 0, seq]).build();
        assert!(out(&e, &mut p));
        let id = view(&p).ip.id;
        if let Some(prev) = last {
            let step: u16 = id.wrapping_sub(prev);
            assert!((1001..=20_000).contains(&step) && step % 256 != 0, "step {step}");
        }
        last = Some(id);
    }
    // FreeBSD keeps the kernel's zero ID on TCP.
    let mut p = syn_ack(server(), peer(), &LINUX_FULL);
    out(&e, &mut p);
    assert_eq!(view(&p).ip.id, 0);
}

#[test]
fn freebsd_echo_replies_copy_the_requests_df() {
    let e = engine("freebsd");
    for (df, seq) in [(true, 295u16), (false, 296)] {
        let s = seq.to_be_bytes();
        let mut req = Craft::icmp(peer(), server(), 8, 0)
            .icmp_rest([0, 5, s[0], s[1]])
            .payload(&[0; 56])
            .df(df)
            .build();
        assert_eq!(e.handle(now(), Direction::Inbound, &mut req).verdict, Verdict::Accept);
        let mut reply =
            Craft::icmp(server(), peer(), 0, 0).icmp_rest([0, 5, s[0], s[1]]).df(false).build();
        out(&e, &mut reply);
        assert_eq!(view(&reply).ip.df, df);
    }
}

#[test]
fn rsts_without_ack_get_a_nonzero_ack_and_others_keep_theirs() {
    let e = engine("windows");
    let mut rst = Craft::tcp(server(), peer(), 80, 40_000, F::RST).seq_ack(12_345, 0).build();
    assert!(out(&e, &mut rst));
    assert_eq!(tcp(&rst).ack, 12_345);
    let mut rst_ack =
        Craft::tcp(server(), peer(), 81, 40_000, F::RST | F::ACK).seq_ack(0, 99).build();
    out(&e, &mut rst_ack);
    let t = tcp(&rst_ack);
    assert_eq!((t.seq, t.ack), (0, 99));
}

#[test]
fn ipv6_gets_the_hop_limit_and_the_same_syn_ack_rewrites() {
    let e = engine("windows");
    let mut p = syn_ack(server6(), peer6(), &LINUX_FULL);
    assert!(out(&e, &mut p));
    assert_eq!(view(&p).ip.ttl, 128);
    let t = tcp(&p);
    assert_eq!((t.window, t.options), (8192, &WIN_FULL[..]));
    let mut echo = Craft::icmp(server6(), peer6(), 129, 9).icmp_rest([0, 1, 0, 1]).build();
    assert!(out(&e, &mut echo));
    assert!(matches!(view(&echo).transport, Transport::Icmp(i) if i.code == 0));
}

#[test]
fn udp_and_icmp_errors_get_ttl_and_id() {
    let e = engine("windows");
    let mut udp = Craft::udp(server(), peer(), 53, 40_000).payload(b"answer").ttl(64).build();
    assert!(out(&e, &mut udp));
    let mut unreachable = Craft::icmp(server(), peer(), 3, 3).payload(&[0x45; 28]).ttl(64).build();
    assert!(out(&e, &mut unreachable));
    let (a, b) = (view(&udp), view(&unreachable));
    assert_eq!((a.ip.ttl, b.ip.ttl), (128, 128));
    assert_eq!(b.ip.id, a.ip.id.wrapping_add(1));
}

#[test]
fn neighbour_discovery_keeps_its_hop_limit() {
    let e = engine("windows");
    let mut na = Craft::icmp(server6(), peer6(), 136, 0).payload(&[0; 20]).ttl(255).build();
    assert!(!out(&e, &mut na));
    assert_eq!(view(&na).ip.ttl, 255);
}

#[test]
fn a_packet_cut_short_by_the_copy_range_passes_unmodified() {
    let e = engine("windows");
    let full = syn_ack(server(), peer(), &LINUX_FULL);
    let mut long = Craft::tcp(server(), peer(), 80, 40_000, F::ACK | F::RST)
        .payload(&[7; 400])
        .ttl(64)
        .build();
    for bytes in [&full[..], &long[..]] {
        let mut cut = bytes[..bytes.len() - 4].to_vec();
        let before = cut.clone();
        let outcome = e.handle_with(
            now(),
            Meta {
                checksum: crate::engine::ChecksumCheck::Kernel,
                ..Meta::new(Direction::Outbound)
            },
            &mut cut,
        );
        assert!(!outcome.rewritten);
        assert_eq!(cut, before);
    }
    // The same packet whole is rewritten.
    assert!(out(&e, &mut long));
}

#[test]
fn a_partial_checksum_is_left_for_the_nic_to_complete() {
    let e = engine("windows");
    let mut p = syn_ack(server(), peer(), &LINUX_FULL);
    let l4 = 20;
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum only.
    p[l4 + 16..l4 + 18].copy_from_slice(&[0x12, 0x34]);
    let meta = Meta { l4_partial: true, ..Meta::new(Direction::Outbound) };
    assert!(e.handle_with(now(), meta, &mut p).rewritten);
    assert_eq!(p[l4 + 16..l4 + 18], [0x12, 0x34], "transport checksum untouched");
    assert!(checksum::verifies(0, &p[..20]), "the IP header checksum is still fixed");
    assert_eq!(&p[l4 + 20..l4 + 40], &WIN_FULL);
}

#[test]
fn forwarded_packets_are_never_disguised() {
    let e = engine("windows");
    let mut p = syn_ack(server(), peer(), &LINUX_FULL);
    let before = p.clone();
    let meta = Meta { forwarded: true, ..Meta::new(Direction::Outbound) };
    assert!(!e.handle_with(now(), meta, &mut p).rewritten);
    assert_eq!(p, before);
}

#[test]
fn personas_silence_the_probes_their_os_ignores() {
    let t7 = |src| {
        Craft::tcp(src, server(), 40_019, 1, F::FIN | F::PSH | F::URG)
            .window(65_535)
            .options(&[3, 3, 15, 1, 2, 4, 1, 9, 8, 10, 255, 255, 255, 255, 0, 0, 0, 0, 4, 2])
            .build()
    };
    let windows = engine("windows");
    let o = windows.handle(now(), Direction::Inbound, &mut t7(peer()));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Persona));
    assert!(o.ban.is_none());
    let none = engine("none");
    let o = none.handle(now(), Direction::Inbound, &mut t7(peer()));
    assert_eq!(o.verdict, Verdict::Accept, "{:?}", o.reason);
}

#[test]
fn builtin_personas_parse_and_check() {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        personas: std::collections::BTreeMap<String, crate::config::PersonaSpec>,
    }
    let parsed: File = toml::from_str(crate::config::BUILTIN_PERSONAS).unwrap();
    assert_eq!(parsed.personas.keys().collect::<Vec<_>>(), ["freebsd", "windows", "windows-1709"]);
    assert_eq!(crate::config::builtin_personas(), &parsed.personas);
    for name in ["windows", "freebsd", "windows-1709"] {
        let c = Config::from_toml(&format!("[persona]\nname = \"{name}\"\n")).unwrap();
        assert!(c.persona().is_some());
    }
    let err = Config::from_toml("[persona]\nname = \"solaris\"\n").unwrap_err().to_string();
    assert!(err.contains("persona.name") && err.contains("windows"), "{err}");
    // A persona is data: a rules file can define its own.
    let c = Config::from_toml(
        "[persona]\nname = \"mine\"\n[personas.mine]\nttl = 255\nsilence = [\"t2\"]\n",
    )
    .unwrap();
    assert_eq!(c.persona().map(|p| p.ttl), Some(255));
    let err =
        Config::from_toml("[personas.x.sysctls]\nwindow_scale = 15\n").unwrap_err().to_string();
    assert!(err.contains("personas.x.sysctls.window_scale"), "{err}");
}

/// nmap's T2-T7 option bytes (WS10, NOP, MSS265, TS, SACKP; T7 has WS15).
const T_OPTS: [u8; 20] = [3, 3, 10, 1, 2, 4, 1, 9, 8, 10, 255, 255, 255, 255, 0, 0, 0, 0, 4, 2];

fn answering() -> Engine {
    let mut c = open_rules("mine");
    c.personas.insert(
        "mine".into(),
        crate::config::PersonaSpec {
            ttl: 128,
            ip_id: crate::config::IpId::Counter,
            answer: vec![OsProbe::T2, OsProbe::T3],
            ..Default::default()
        },
    );
    Engine::new(Config::try_from(c).unwrap())
}

#[test]
fn answered_probes_are_dropped_and_get_an_rfc_reset_in_the_personas_style() {
    let e = answering();
    // T2: no flags, DF, window 128: RST+ACK acknowledging exactly its seq.
    let mut t2 = Craft::tcp(peer(), server(), 40_014, 80, 0)
        .seq_ack(1000, 77)
        .window(128)
        .df(true)
        .options(&T_OPTS)
        .build();
    let o = e.handle(now(), Direction::Inbound, &mut t2);
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Persona));
    let reply = o.reply.expect("an answer");
    assert_eq!(reply.dst, peer());
    let v = view(reply.bytes());
    assert_eq!((v.ip.src, v.ip.dst, v.ip.ttl, v.ip.df), (server(), peer(), 128, true));
    assert_ne!(v.ip.id, 0, "the persona's IP ID counter");
    let t = tcp(reply.bytes());
    assert_eq!(t.flags.0, F::RST | F::ACK);
    assert_eq!((t.seq, t.ack, t.window, t.src_port, t.dst_port), (0, 1000, 0, 80, 40_014));
    // T3: SYN+FIN+PSH+URG, both SYN and FIN take a sequence number.
    let mut t3 = Craft::tcp(peer(), server(), 40_015, 80, F::SYN | F::FIN | F::PSH | F::URG)
        .seq_ack(1000, 77)
        .window(256)
        .df(false)
        .options(&T_OPTS)
        .build();
    let o = e.handle(now(), Direction::Inbound, &mut t3);
    assert_eq!(tcp(o.reply.expect("an answer").bytes()).ack, 1002);
    // Not listed: no answer.
    let mut t7 = Craft::tcp(peer(), server(), 40_019, 1, F::FIN | F::PSH | F::URG)
        .window(65_535)
        .options(&[3, 3, 15, 1, 2, 4, 1, 9, 8, 10, 255, 255, 255, 255, 0, 0, 0, 0, 4, 2])
        .build();
    assert!(e.handle(now(), Direction::Inbound, &mut t7).reply.is_none());
}

#[test]
fn a_reset_to_a_segment_with_ack_takes_its_sequence_from_the_ack_and_works_over_ipv6() {
    let e = answering();
    let p = Persona::new(e.config().persona().unwrap());
    let probe = Craft::tcp(peer6(), server6(), 40_000, 22, F::ACK).seq_ack(5, 4242).build();
    let reply = p.reset(&view(&probe), None, 1).unwrap();
    let v = view(reply.bytes());
    assert_eq!((v.ip.src, v.ip.ttl), (server6(), 128));
    let t = tcp(reply.bytes());
    assert_eq!((t.flags.0, t.seq, t.ack), (F::RST, 4242, 0));
}

#[test]
fn answers_must_be_tcp_probes_and_not_silenced_too() {
    let err = Config::from_toml("[personas.x]\nanswer = [\"ie1\"]\n").unwrap_err().to_string();
    assert!(err.contains("personas.x.answer"), "{err}");
    let err = Config::from_toml("[personas.x]\nanswer = [\"t2\"]\nsilence = [\"t2\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("silence"), "{err}");
}

#[test]
fn per_peer_counters_live_in_the_personas_own_table() {
    let e = engine("windows");
    let t = e.stats().tables;
    assert!(t.peer_capacity > 0 && t.peers == 0);
    let mut reply = syn_ack(server(), peer(), &LINUX_FULL);
    assert!(out(&e, &mut reply));
    let t = e.stats().tables;
    assert_eq!(t.peers, 1, "one destination, one counter");
    assert_eq!(t.sources, 0, "the host's replies make no source in the source table");
    let plain = engine("none").stats().tables;
    assert_eq!((plain.peers, plain.peer_capacity), (0, 0), "no persona: no table");
}
