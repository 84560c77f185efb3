//! Engine tests with synthetic time: each drives `Engine::handle` the way
//! the daemon and replay do, with crafted packets.

use std::net::IpAddr;

use super::*;
use crate::classify::{Fingerprint, OsProbe};
use crate::config::{Action, ClosedPorts, PortList, Rules};
use crate::wire::TcpFlags as F;
use crate::wire::craft::Craft;

const SERVER: [u8; 4] = [198, 18, 1, 1];

fn server() -> IpAddr {
    IpAddr::from(SERVER)
}

fn host(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 2, last])
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_micros(1_000_000_000 + ms * 1000)
}

fn rules() -> Rules {
    let mut r = Rules::default();
    r.services.tcp = PortList::from_ports([22, 80]);
    r.services.udp = PortList::from_ports([53]);
    r
}

fn config() -> Config {
    checked(rules())
}

fn checked(rules: Rules) -> Config {
    Config::try_from(rules).expect("valid rules")
}

fn syn(src: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    syn_to(src, server(), sport, dport)
}

fn syn_to(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    Craft::tcp(src, dst, sport, dport, F::SYN)
        .window(64_240)
        .options(&[2, 4, 5, 180, 4, 2, 1, 3, 3, 7])
        .build()
}

/// The next of a xorshift32 sequence: spoofed addresses, reproducibly.
fn xorshift(x: &mut u32) -> u32 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x
}

fn run(e: &Engine, now: Timestamp, dir: Direction, mut bytes: Vec<u8>) -> Outcome {
    e.handle(now, dir, &mut bytes)
}

/// A full client connection: SYN, SYN-ACK, ACK, data, FIN exchange.
fn connect(e: &Engine, now: Timestamp, src: IpAddr, sport: u16, dport: u16) -> Vec<Outcome> {
    connect_to(e, now, (src, server()), sport, dport)
}

/// [`connect`] to the address `dst` of this host.
fn connect_to(
    e: &Engine,
    now: Timestamp,
    (src, dst): (IpAddr, IpAddr),
    sport: u16,
    dport: u16,
) -> Vec<Outcome> {
    let mut out = vec![run(e, now, Direction::Inbound, syn_to(src, dst, sport, dport))];
    out.push(run(
        e,
        now,
        Direction::Outbound,
        Craft::tcp(dst, src, dport, sport, F::SYN | F::ACK).build(),
    ));
    for flags in [F::ACK, F::ACK | F::PSH, F::ACK | F::FIN] {
        out.push(run(
            e,
            now,
            Direction::Inbound,
            Craft::tcp(src, dst, sport, dport, flags).seq_ack(2, 2).build(),
        ));
    }
    out.push(run(
        e,
        now,
        Direction::Outbound,
        Craft::tcp(dst, src, dport, sport, F::ACK | F::FIN).build(),
    ));
    out.push(run(
        e,
        now,
        Direction::Inbound,
        Craft::tcp(src, dst, sport, dport, F::ACK).seq_ack(3, 3).build(),
    ));
    out
}

#[test]
fn closed_port_threshold_bans_and_the_ban_expires() {
    let e = Engine::new(config());
    let attacker = host(9);
    for (i, port) in (1000..1005).enumerate() {
        let o = run(&e, at(i as u64 * 100), Direction::Inbound, syn(attacker, 40_000, port));
        assert_eq!(
            (o.verdict, o.reason, o.ban),
            (Verdict::Drop, Reason::ClosedPort, None),
            "port {port}"
        );
    }
    // The sixth distinct closed port within the window bans.
    let o = run(&e, at(600), Direction::Inbound, syn(attacker, 40_000, 1005));
    let ban = o.ban.expect("banned");
    assert_eq!(ban.reason, BanReason::ClosedPorts(6));
    assert_eq!(ban.until.saturating_since(ban.since), Duration::from_secs(3600));
    // From then on everything from it is dropped, open ports included.
    let o = run(&e, at(700), Direction::Inbound, syn(attacker, 40_001, 80));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Banned));
    // Replies to it are suppressed too.
    let o = run(
        &e,
        at(700),
        Direction::Outbound,
        Craft::tcp(server(), attacker, 80, 40_001, F::SYN | F::ACK).build(),
    );
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Banned));
    // Other sources are untouched.
    assert!(connect(&e, at(800), host(7), 50_000, 80).iter().all(|o| o.verdict == Verdict::Accept));
    // After the ban, the source is accepted again, and the sweep reports the lift.
    let after = at(600 + 3_600_000 + 1);
    let lifted = e.sweep(after).lifted;
    assert_eq!(lifted.len(), 1);
    assert_eq!(
        run(&e, after, Direction::Inbound, syn(attacker, 40_002, 80)).verdict,
        Verdict::Accept
    );
}

/// Six SYNs to closed ports from `src` at `t`: a closed-port ban's evidence.
fn closed_scan(e: &Engine, t: Timestamp, src: IpAddr) -> Option<Ban> {
    (1000..1006).filter_map(|port| run(e, t, Direction::Inbound, syn(src, 40_000, port)).ban).next()
}

#[test]
fn repeat_offences_double_up_to_the_cap_but_forgeable_bans_never_do() {
    let e = Engine::new(config());
    let mut now = at(0);
    let mut lengths = Vec::new();
    for _ in 0..7 {
        let ban = closed_scan(&e, now, host(9)).expect("banned");
        lengths.push(ban.until.saturating_since(ban.since).as_secs() / 3600);
        now = ban.until;
    }
    assert_eq!(lengths, vec![1, 2, 4, 8, 16, 24, 24]);
    // One nmap SYN, sent again "from" the same address after each ban:
    // anyone can forge it, so the ban stays at ban.duration.
    let nmap = |t| {
        let bytes = Craft::tcp(host(8), server(), 40_000, 1, F::SYN)
            .window(1024)
            .options(&[2, 4, 5, 180])
            .df(false)
            .build();
        run(&e, t, Direction::Inbound, bytes)
    };
    let mut now = at(0);
    for offence in 1..=4 {
        let ban = nmap(now).ban.expect("banned");
        assert_eq!(
            (ban.offences, ban.until.saturating_since(ban.since).as_secs()),
            (offence, 3600)
        );
        now = ban.until;
    }
}

#[test]
fn legitimate_clients_are_never_dropped() {
    let e = Engine::new(config());
    // A browser opening 150 connections within a few seconds, a NAT of 20
    // users, and a monitor polling every service.
    for i in 0..150u16 {
        let outs = connect(&e, at(u64::from(i) * 20), host(10), 30_000 + i, 80);
        assert!(outs.iter().all(|o| o.verdict == Verdict::Accept), "{outs:?}");
    }
    for user in 0..20u16 {
        for i in 0..10u16 {
            let outs = connect(&e, at(5000 + u64::from(i)), host(11), 20_000 + user * 100 + i, 22);
            assert!(outs.iter().all(|o| o.verdict == Verdict::Accept));
        }
    }
    for round in 0..50u64 {
        for port in [22, 80] {
            assert!(
                connect(
                    &e,
                    at(10_000 + round * 1000),
                    host(12),
                    40_000 + port + round as u16 * 3,
                    port
                )
                .iter()
                .all(|o| o.verdict == Verdict::Accept)
            );
        }
        let q = Craft::udp(host(12), server(), 41_000 + round as u16, 53).payload(b"q").build();
        assert_eq!(
            run(&e, at(10_000 + round * 1000), Direction::Inbound, q).verdict,
            Verdict::Accept
        );
    }
    assert!(e.bans(at(100_000)).is_empty());
}

#[test]
fn stealth_probes_ban_at_once_unless_switched_off() {
    for (flags, kind) in [
        (0, ProbeKind::TcpNull),
        (F::FIN, ProbeKind::TcpFin),
        (F::FIN | F::PSH | F::URG, ProbeKind::TcpXmas),
        (F::FIN | F::ACK, ProbeKind::TcpMaimon),
        (F::ACK, ProbeKind::TcpAck),
        (F::SYN | F::FIN, ProbeKind::TcpSynFin),
        (F::SYN | F::RST, ProbeKind::TcpSynRst),
    ] {
        let e = Engine::new(config());
        let probe = Craft::tcp(host(9), server(), 40_000, 1, flags).window(1024).build();
        let o = run(&e, at(0), Direction::Inbound, probe.clone());
        assert_eq!((o.verdict, o.kind), (Verdict::Drop, Some(kind)));
        assert_eq!(o.ban.map(|b| b.reason), Some(BanReason::Probe(kind)), "{kind}");

        let mut c = rules();
        c.probes = crate::config::Probes {
            null: Action::Off,
            fin: Action::Off,
            xmas: Action::Off,
            maimon: Action::Off,
            ack: Action::Off,
            rst: Action::Off,
            syn_fin: Action::Off,
            syn_rst: Action::Off,
            illegal: Action::Off,
            os_detection: Action::Off,
        };
        let e = Engine::new(checked(c));
        let o = run(&e, at(0), Direction::Inbound, probe);
        assert_eq!(
            (o.verdict, o.reason, o.ban),
            (Verdict::Accept, Reason::RuleOff, None),
            "{kind} off"
        );
    }
}

#[test]
fn rst_outside_a_flow_is_dropped_not_banned() {
    let e = Engine::new(config());
    let o =
        run(&e, at(0), Direction::Inbound, Craft::tcp(host(9), server(), 1, 80, F::RST).build());
    assert_eq!((o.verdict, o.reason, o.ban), (Verdict::Drop, Reason::Probe, None));
}

#[test]
fn fingerprints_can_be_switched_off() {
    let nmap = || {
        Craft::tcp(host(9), server(), 40_000, 80, F::SYN)
            .window(1024)
            .options(&[2, 4, 5, 180])
            .df(false)
            .build()
    };
    let e = Engine::new(config());
    let o = run(&e, at(0), Direction::Inbound, nmap());
    assert_eq!(o.signature, Some(Signature::Tool(Fingerprint::NmapSyn)));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Signature));
    assert!(o.ban.is_some());

    let mut c = rules();
    c.fingerprints.nmap_syn = Action::Off;
    let e = Engine::new(checked(c));
    let o = run(&e, at(0), Direction::Inbound, nmap());
    assert_eq!(
        (o.verdict, o.reason, o.ban),
        (Verdict::Accept, Reason::OpenPort, None),
        "to open port 80"
    );
}

#[test]
fn handshake_guard_blocks_single_packet_bans_only() {
    let e = Engine::new(config());
    let client = host(20);
    assert!(connect(&e, at(0), client, 33_000, 80).iter().all(|o| o.verdict == Verdict::Accept));
    // A forged nmap SYN "from" the client: dropped, not banned.
    let forged = Craft::tcp(client, server(), 40_000, 1, F::SYN)
        .window(1024)
        .options(&[2, 4, 5, 180])
        .df(false)
        .build();
    let o = run(&e, at(1000), Direction::Inbound, forged);
    assert_eq!((o.verdict, o.ban), (Verdict::Drop, None));
    assert_eq!(e.stats().guards.handshake_grace, 1);
    // The closed-port threshold still bans it.
    let mut banned = None;
    for port in 2000..2010 {
        banned = banned.or(run(&e, at(2000), Direction::Inbound, syn(client, 40_001, port)).ban);
    }
    assert!(matches!(banned.map(|b| b.reason), Some(BanReason::ClosedPorts(_))));
    assert_eq!(banned.map(|b| b.kind), Some(BanKind::Quarantine), "a proven source is quarantined");
    // Once the grace has passed, a single packet bans again.
    let e = Engine::new(config());
    connect(&e, at(0), client, 33_000, 80);
    let forged = Craft::tcp(client, server(), 40_000, 1, 0).build();
    assert!(run(&e, at(11 * 60 * 1000), Direction::Inbound, forged).ban.is_some());
}

#[test]
fn a_quarantine_keeps_the_proven_pairs_and_drops_everything_else() {
    let e = Engine::new(config());
    let client = host(21);
    connect(&e, at(0), client, 33_000, 80);
    let mut quarantine = None;
    for port in 2000..2010 {
        quarantine =
            quarantine.or(run(&e, at(10), Direction::Inbound, syn(client, 40_001, port)).ban);
    }
    assert_eq!(quarantine.map(|q| q.kind), Some(BanKind::Quarantine));
    let to = |port, sport| run(&e, at(20), Direction::Inbound, syn(client, sport, port));
    let o = to(80, 33_001);
    assert_eq!((o.verdict, o.ban), (Verdict::Accept, None), "the proven pair keeps working");
    let o = to(22, 33_002);
    assert_eq!(
        (o.verdict, o.reason),
        (Verdict::Drop, Reason::Quarantined),
        "another open port is not"
    );
    assert_eq!(to(3000, 33_003).reason, Reason::Quarantined);
    // The host's replies on the proven pair still leave.
    let reply = Craft::tcp(server(), client, 80, 33_001, F::SYN | F::ACK).build();
    assert_eq!(run(&e, at(20), Direction::Outbound, reply).verdict, Verdict::Accept);
    // Unban lifts it.
    assert!(matches!(e.unban(client)[..], [(_, b)] if b.kind == BanKind::Quarantine));
    assert_eq!(to(22, 33_004).verdict, Verdict::Accept);
}

#[test]
fn the_kernels_word_proves_a_source() {
    let e = Engine::new(config());
    let client = host(22);
    let mut forged = Craft::tcp(client, server(), 40_000, 1, 0).build();
    let meta = Meta { proven: true, ..Meta::new(Direction::Inbound) };
    let o = e.handle_with(at(0), meta, &mut forged);
    assert_eq!((o.verdict, o.ban), (Verdict::Drop, None), "a proven source's NULL is not banned");
    assert_eq!(e.stats().guards.handshake_grace, 1);
    let mut forged = Craft::tcp(client, server(), 40_000, 1, 0).build();
    assert!(e.handle_with(at(0), Meta::new(Direction::Inbound), &mut forged).ban.is_some());
}

#[test]
fn own_special_and_link_local_addresses_are_never_banned() {
    let e = Engine::new(config());
    e.set_local(vec![server(), "fd5c:a11:1::1".parse().unwrap()]);
    let null = |src: IpAddr, dst: IpAddr| Craft::tcp(src, dst, 1, 1, 0).build();
    let o = run(&e, at(0), Direction::Inbound, null(server(), server()));
    assert_eq!((o.verdict, o.reason, o.ban), (Verdict::Drop, Reason::Martian, None));
    let server6: IpAddr = "fd5c:a11:1::1".parse().unwrap();
    for src in ["fe80::1", "::", "ff02::1"] {
        let o = run(&e, at(0), Direction::Inbound, null(src.parse().unwrap(), server6));
        assert_eq!((o.verdict, o.ban), (Verdict::Drop, None), "{src}");
    }
    for src in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
        let o = run(&e, at(0), Direction::Inbound, null(src.parse().unwrap(), server()));
        assert_eq!((o.verdict, o.ban), (Verdict::Drop, None), "{src}");
    }
    assert_eq!(e.stats().guards.unbannable, 6);
    assert_eq!(
        e.ban(at(0), "fe80::1".parse().unwrap(), Duration::from_secs(60)),
        Err(Refused::Unbannable)
    );
    assert_eq!(e.ban(at(0), server(), Duration::from_secs(60)), Err(Refused::Unbannable));
    assert!(e.bans(at(0)).is_empty());
}

#[test]
fn a_flow_this_host_opened_survives_a_ban_on_its_peer() {
    let e = Engine::new(config());
    let resolver = host(53);
    let query = Craft::udp(server(), resolver, 40_000, 53).build();
    assert_eq!(run(&e, at(0), Direction::Outbound, query).verdict, Verdict::Accept);
    // A forged NULL "from" the resolver bans it...
    assert!(
        run(&e, at(1), Direction::Inbound, Craft::tcp(resolver, server(), 1, 1, 0).build())
            .ban
            .is_some()
    );
    // ...yet its answers to this host's queries, and new queries, pass.
    let answer = Craft::udp(resolver, server(), 53, 40_000).build();
    assert_eq!(run(&e, at(2), Direction::Inbound, answer).verdict, Verdict::Accept);
    let query = Craft::udp(server(), resolver, 40_001, 53).build();
    assert_eq!(run(&e, at(3), Direction::Outbound, query).verdict, Verdict::Accept);
    // Anything else from it is dropped.
    let o = run(&e, at(4), Direction::Inbound, syn(resolver, 5000, 80));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Banned));
}

#[test]
fn other_protocols_count_like_closed_ports() {
    let e = Engine::new(config());
    let scanner = host(47);
    let mut ban = None;
    for protocol in [2u8, 4, 41, 47, 50, 51, 103, 115] {
        let o = run(&e, at(0), Direction::Inbound, Craft::raw(scanner, server(), protocol).build());
        let reason = if ban.is_some() { Reason::Banned } else { Reason::OtherProtocol };
        assert_eq!((o.verdict, o.reason), (Verdict::Drop, reason), "protocol {protocol}");
        ban = ban.or(o.ban);
    }
    assert!(matches!(ban.map(|b| b.reason), Some(BanReason::ClosedPorts(6))), "{ban:?}");
}

#[test]
fn single_packet_bans_have_a_pool_of_their_own_bounded_per_network() {
    let mut c = rules();
    c.ban.single_packet_per_second = 5;
    c.ban.single_packet_per_prefix = 3;
    let e = Engine::new(checked(c));
    // NULL probes from 100 networks at once: the pool's burst bans 5.
    let null =
        |src: IpAddr, t| run(&e, t, Direction::Inbound, Craft::tcp(src, server(), 1, 1, 0).build());
    let mut bans = 0;
    for i in 0..100u32 {
        let o = null(IpAddr::from((0xc612_0000u32 | (i << 8) | 1).to_be_bytes()), at(10));
        assert_eq!(o.verdict, Verdict::Drop);
        bans += usize::from(o.ban.is_some());
    }
    assert_eq!(bans, 5);
    assert_eq!(e.stats().guards.rate_capped, 95);
    // Tokens come back one at a time: one every 200 ms.
    assert!(null(host(99), at(110)).ban.is_none());
    assert!(null(host(99), at(210)).ban.is_some());
    // Evidence of many packets does not draw on that pool.
    assert!(closed_scan(&e, at(210), host(98)).is_some());
    // One /24 gets 3 single-packet bans per ban length, however slowly
    // they come.
    let net = |i: u8| IpAddr::from([198, 19, 7, i]);
    let got: Vec<bool> =
        (1..=6u8).map(|i| null(net(i), at(u64::from(i) * 10_000)).ban.is_some()).collect();
    assert_eq!(got, [true, true, true, false, false, false]);
    // A ban length later, the network has its allowance again.
    assert!(null(net(7), at(10_000 + 3_600_000)).ban.is_some());
}

#[test]
fn forged_signatures_at_any_rate_cannot_stop_a_real_scans_ban() {
    // A connect scan of ports 1-1000 (plain SYNs, about 1000 a second)
    // under 500 forged nmap SYNs a second from random sources, sent at
    // the start of each second and spread over it. Without the flood it is
    // banned after six closed ports and reaches what it reached before.
    let reach = |flood: bool| {
        let mut c = rules();
        c.services.tcp = PortList::from_ports([22, 80, 443]);
        let e = Engine::new(checked(c));
        let scanner = IpAddr::from([198, 18, 99, 7]);
        let mut rng = 0x1234_5678u32;
        let mut banned = None;
        let mut reached = Vec::new();
        for port in 1..=1000u16 {
            let t = at(u64::from(port));
            if flood && port % 2 == 0 {
                // 500 a second: a burst of 250 at each second's start.
                let burst = if port % 1000 == 2 { 250 } else { 1 };
                for _ in 0..burst {
                    let src = IpAddr::from(xorshift(&mut rng).to_be_bytes());
                    let forged = Craft::tcp(src, server(), 40_000, 7, F::SYN)
                        .window(1024)
                        .options(&[2, 4, 5, 180])
                        .df(false)
                        .build();
                    run(&e, t, Direction::Inbound, forged);
                }
            }
            let o = run(&e, t, Direction::Inbound, syn(scanner, 40_000, port));
            if o.verdict == Verdict::Accept {
                reached.push(port);
            }
            banned = banned.or(o.ban);
        }
        (banned.map(|b| b.reason), reached)
    };
    let quiet = reach(false);
    assert_eq!(quiet.0, Some(BanReason::ClosedPorts(6)));
    assert_eq!(reach(true), quiet, "the flood changes nothing");
}

#[test]
fn evidence_bans_displace_forged_ones_from_a_full_table() {
    let mut c = rules();
    c.tracking.bans = 4;
    c.tracking.shards = 1;
    let e = Engine::new(checked(c));
    for i in 1..=4u8 {
        let null = Craft::tcp(host(i), server(), 1, 1, 0).build();
        assert!(run(&e, at(0), Direction::Inbound, null).ban.is_some());
    }
    let null = Craft::tcp(host(5), server(), 1, 1, 0).build();
    assert!(run(&e, at(1), Direction::Inbound, null).ban.is_none(), "full: no room");
    assert!(closed_scan(&e, at(2), host(20)).is_some(), "a real scan takes a forged ban's place");
    let s = e.stats().tables;
    assert_eq!((s.bans_refused_full, s.bans_displaced), (1, 1));
}

#[test]
fn closed_ports_reject_lets_the_kernel_answer() {
    let mut c = rules();
    c.policy.closed_ports = ClosedPorts::Reject;
    let e = Engine::new(checked(c));
    let o = run(&e, at(0), Direction::Inbound, syn(host(9), 40_000, 9999));
    assert_eq!((o.verdict, o.reason), (Verdict::Accept, Reason::ClosedPortReject));
}

#[test]
fn allow_and_deny_lists() {
    let mut c = rules();
    c.lists.allow = vec!["198.18.2.0/28".parse().unwrap()];
    c.lists.deny = vec!["198.18.3.0/24".parse().unwrap()];
    let e = Engine::new(checked(c));
    for port in 1..100 {
        let o =
            run(&e, at(0), Direction::Inbound, Craft::tcp(host(5), server(), 1, port, 0).build());
        assert_eq!((o.verdict, o.reason), (Verdict::Accept, Reason::Allowlisted));
    }
    assert!(e.bans(at(1)).is_empty());
    let o = run(&e, at(0), Direction::Inbound, syn(IpAddr::from([198, 18, 3, 4]), 1, 80));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Denylisted));
}

#[test]
fn echo_is_rate_limited_and_empty_echo_bans() {
    let e = Engine::new(config());
    let echo = || Craft::icmp(host(9), server(), 8, 0).payload(&[0x42; 56]).build();
    let verdicts: Vec<Verdict> =
        (0..6).map(|_| run(&e, at(0), Direction::Inbound, echo()).verdict).collect();
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Accept).count(), 4);
    assert_eq!(run(&e, at(1000), Direction::Inbound, echo()).verdict, Verdict::Accept);
    assert!(e.bans(at(2000)).is_empty(), "rate limiting is not a ban");
    let o = run(&e, at(2000), Direction::Inbound, Craft::icmp(host(8), server(), 8, 0).build());
    assert_eq!(
        o.ban.map(|b| b.reason),
        Some(BanReason::Signature(Signature::Tool(Fingerprint::NmapEcho)))
    );
    let o = run(
        &e,
        at(2000),
        Direction::Inbound,
        Craft::icmp(host(7), server(), 13, 0).payload(&[0; 12]).build(),
    );
    assert_eq!((o.verdict, o.ban), (Verdict::Drop, None));
}

#[test]
fn os_probes_ban() {
    let e = Engine::new(config());
    let u1 = Craft::udp(host(9), server(), 40_000, 9).id(0x1042).payload(&[b'C'; 300]).build();
    let o = run(&e, at(0), Direction::Inbound, u1);
    assert_eq!(
        o.ban.map(|b| b.reason),
        Some(BanReason::Signature(Signature::OsProbe(OsProbe::U1)))
    );
}

#[test]
fn a_checksum_left_for_the_nic_is_whole_only_when_the_caller_says_it_may_be() {
    let e = Engine::new(config());
    let partial = || {
        Craft::tcp(host(9), server(), 1, 80, F::SYN)
            .window(64_240)
            .options(&[2, 4, 5, 180, 4, 2, 1, 3, 3, 7])
            .partial_checksum()
            .build()
    };
    let o = run(&e, at(0), Direction::Inbound, partial());
    assert_eq!(o.reason, Reason::BadChecksum, "strict: a partial checksum is bad");
    let offload = Meta { l4_partial: true, ..Meta::new(Direction::Inbound) };
    let o = e.handle_with(at(1), offload, &mut partial());
    assert_eq!((o.verdict, o.reason), (Verdict::Accept, Reason::OpenPort));
    // Any other wrong value stays bad, offload or not.
    let mut bad = Craft::tcp(host(9), server(), 1, 81, F::SYN).bad_checksum().build();
    assert_eq!(e.handle_with(at(2), offload, &mut bad).reason, Reason::BadChecksum);
}

#[test]
fn bad_checksums_are_dropped_and_never_count() {
    let e = Engine::new(config());
    for port in 1..50 {
        let bytes = Craft::tcp(host(9), server(), 1, port, 0).bad_checksum().build();
        let o = run(&e, at(0), Direction::Inbound, bytes);
        assert_eq!((o.verdict, o.reason, o.ban), (Verdict::Drop, Reason::BadChecksum, None));
    }
    let bytes = Craft::tcp(host(9), server(), 1, 80, F::SYN).bad_checksum().build();
    assert_eq!(run(&e, at(0), Direction::Inbound, bytes).reason, Reason::BadChecksum);
    assert_eq!(e.stats().tables.sources, 0, "never tracked");
    // The kernel-checked path skips verification.
    let mut bytes = syn(host(9), 1, 80);
    bytes[37] ^= 0xff;
    let meta = Meta { checksum: ChecksumCheck::Kernel, ..Meta::new(Direction::Inbound) };
    assert_eq!(e.handle_with(at(0), meta, &mut bytes).verdict, Verdict::Accept);
}

#[test]
fn stray_segments_of_known_flows_pass_and_unknown_ones_do_not() {
    let e = Engine::new(config());
    let client = host(30);
    connect(&e, at(0), client, 44_000, 80);
    let late = Craft::tcp(client, server(), 44_000, 80, F::ACK | F::RST).build();
    assert_eq!(run(&e, at(10), Direction::Inbound, late).verdict, Verdict::Accept);
    // A host-initiated connection: its replies are part of a flow.
    run(
        &e,
        at(0),
        Direction::Outbound,
        Craft::tcp(server(), host(31), 55_000, 443, F::SYN).build(),
    );
    let reply = Craft::tcp(host(31), server(), 443, 55_000, F::SYN | F::ACK).seq_ack(1, 1).build();
    assert_eq!(run(&e, at(1), Direction::Inbound, reply).reason, Reason::Flow);
    // The host's own DNS query: the answer comes back to a closed port but is a flow.
    run(
        &e,
        at(0),
        Direction::Outbound,
        Craft::udp(server(), host(32), 40_053, 53).payload(b"q").build(),
    );
    let answer = Craft::udp(host(32), server(), 53, 40_053).payload(b"a").build();
    assert_eq!(run(&e, at(1), Direction::Inbound, answer).reason, Reason::Flow);
    // An unsolicited SYN-ACK is dropped, never banned.
    let backscatter =
        Craft::tcp(host(33), server(), 80, 12_345, F::SYN | F::ACK).seq_ack(1, 1).build();
    let o = run(&e, at(1), Direction::Inbound, backscatter);
    assert_eq!((o.verdict, o.reason, o.ban), (Verdict::Drop, Reason::UnsolicitedSynAck, None));
}

#[test]
fn open_ports_are_learned_from_syn_acks() {
    let e = Engine::new(Config::default());
    assert_eq!(
        run(&e, at(0), Direction::Inbound, syn(host(1), 1, 8443)).reason,
        Reason::ClosedPort
    );
    run(
        &e,
        at(1),
        Direction::Outbound,
        Craft::tcp(server(), host(1), 8443, 1, F::SYN | F::ACK).build(),
    );
    assert_eq!(run(&e, at(2), Direction::Inbound, syn(host(2), 2, 8443)).reason, Reason::OpenPort);
    // The daemon's seam: listening sockets.
    e.ports().set_listening(PortProto::Tcp, &PortList::from_ports([9000]));
    assert_eq!(run(&e, at(3), Direction::Inbound, syn(host(3), 3, 9000)).reason, Reason::OpenPort);
}

#[test]
fn ipv6_sources_are_tracked_per_prefix() {
    let e = Engine::new(config());
    let from = |i: u16| IpAddr::from([0xfd5c, 0x0a11, 1, 0, 0xaaaa, 0, 0, i]);
    let dst = IpAddr::from([0xfd5c, 0x0a11, 1, 0, 0, 0, 0, 1]);
    let mut ban = None;
    // A new address per probe does not escape the /64.
    for i in 0..6u16 {
        let bytes = Craft::tcp(from(i), dst, 40_000, 1000 + i, F::SYN)
            .window(64_800)
            .options(&[2, 4, 5, 160, 4, 2])
            .build();
        ban = ban.or(run(&e, at(u64::from(i)), Direction::Inbound, bytes).ban);
    }
    assert_eq!(ban.map(|b| b.reason), Some(BanReason::ClosedPorts(6)));
    assert_eq!(e.bans(at(10))[0].0.to_string(), "fd5c:a11:1:0::/64".replace(":0::", "::"));
}

#[test]
fn flood_of_spoofed_sources_keeps_tables_bounded_and_bans() {
    let mut c = rules();
    c.tracking.sources = 1024;
    c.tracking.flows = 1024;
    c.tracking.shards = 4;
    let e = Engine::new(checked(c));
    assert!(e.ban(at(0), host(66), Duration::from_secs(3600)).is_ok());
    for i in 0..20_000u32 {
        let src = IpAddr::from((0x0a00_0000u32 | i).to_be_bytes());
        run(&e, at(1), Direction::Inbound, syn(src, 1, 80));
    }
    let s = e.stats().tables;
    assert!(s.sources <= 1024 && s.flows <= 1024, "{s:?}");
    assert!(s.source_evictions >= 18_000 && s.flow_evictions >= 18_000, "{s:?}");
    assert_eq!(run(&e, at(2), Direction::Inbound, syn(host(66), 1, 80)).reason, Reason::Banned);
    assert_eq!(e.unban(host(66)).len(), 1);
    assert_eq!(run(&e, at(3), Direction::Inbound, syn(host(66), 2, 80)).verdict, Verdict::Accept);
}

#[test]
fn no_packet_bytes_panic_the_engine() {
    let e = Engine::new(config());
    let samples = [
        syn(host(1), 1, 80),
        Craft::udp(host(1), server(), 1, 53).payload(b"abc").build(),
        Craft::icmp(server(), host(1), 3, 3).payload(&syn(host(1), 1, 80)).build(),
        Craft::tcp(
            IpAddr::from([0xfd5c, 0x0a11, 0, 0, 0, 0, 0, 2]),
            IpAddr::from([0xfd5c, 0x0a11, 0, 0, 0, 0, 0, 1]),
            1,
            2,
            F::ACK,
        )
        .build(),
    ];
    for (n, sample) in samples.iter().enumerate() {
        for end in 0..=sample.len() {
            for dir in [Direction::Inbound, Direction::Outbound] {
                let mut cut = sample[..end].to_vec();
                e.handle(at(n as u64), dir, &mut cut);
                for i in 0..cut.len() {
                    let mut flipped = sample.clone();
                    flipped[i] = flipped[i].wrapping_add(0x5b);
                    e.handle(at(n as u64), dir, &mut flipped);
                }
            }
        }
    }
    let o = run(&e, at(9), Direction::Inbound, vec![0x45, 0, 0]);
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Malformed));
}

/// Random bytes that look like an IP header are dropped: as malformed, for a
/// bad checksum, or as another protocol. The one thing accepted is a later
/// fragment, which carries no header to judge (`policy.fragments`).
#[test]
fn random_bytes_get_the_right_verdict() {
    let e = Engine::new(config());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut reasons = std::collections::BTreeMap::new();
    for n in 0..20_000usize {
        let mut buf = vec![0u8; 20 + n % 100];
        for b in &mut buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        buf[0] = if n % 2 == 0 { 0x45 } else { 0x60 };
        let o = e.handle(at(n as u64), Direction::Inbound, &mut buf);
        if o.verdict == Verdict::Accept {
            assert_eq!(o.kind, Some(ProbeKind::Fragment), "{o:?} for {buf:?}");
        }
        *reasons.entry(o.reason).or_insert(0u32) += 1;
    }
    assert!(reasons.get(&Reason::BadChecksum).copied().unwrap_or(0) > 5000, "{reasons:?}");
    assert!(reasons.get(&Reason::Malformed).copied().unwrap_or(0) > 5000, "{reasons:?}");
    assert!(e.bans(at(30_000)).is_empty(), "nothing random is trusted enough to ban on");
}

/// A packet shorter than its IP length: malformed when the caller says the
/// buffer is whole; judged on its headers when the buffer may be cut short
/// (a snap length, NFQUEUE's copy range).
#[test]
fn truncated_packets_depend_on_what_the_caller_knows() {
    let e = Engine::new(config());
    let full = Craft::tcp(host(9), server(), 40_000, 80, F::SYN).payload(&[1; 200]).build();
    let mut cut = full[..60].to_vec();
    let o = e.handle(at(0), Direction::Inbound, &mut cut.clone());
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Malformed));
    for checksum in [ChecksumCheck::VerifyPartial, ChecksumCheck::Kernel] {
        let meta = Meta { checksum, ..Meta::new(Direction::Inbound) };
        let o = e.handle_with(at(0), meta, &mut cut);
        assert_eq!((o.verdict, o.reason), (Verdict::Accept, Reason::OpenPort), "{checksum:?}");
    }
    // Cut inside the TCP header: malformed whatever the caller knows.
    let mut cut = full[..30].to_vec();
    let meta = Meta { checksum: ChecksumCheck::VerifyPartial, ..Meta::new(Direction::Inbound) };
    assert_eq!(e.handle_with(at(0), meta, &mut cut).reason, Reason::Malformed);
}

/// Only an ACK of this host's own SYN-ACK completes a handshake: a blind
/// spoofer, who never saw the SYN-ACK, cannot buy the handshake grace.
#[test]
fn a_blind_ack_does_not_complete_a_handshake() {
    let e = Engine::new(config());
    let spoofed = host(40);
    run(&e, at(0), Direction::Inbound, syn(spoofed, 33_000, 80));
    let syn_ack =
        Craft::tcp(server(), spoofed, 80, 33_000, F::SYN | F::ACK).seq_ack(0x7000_0000, 2);
    run(&e, at(1), Direction::Outbound, syn_ack.build());
    let blind = Craft::tcp(spoofed, server(), 33_000, 80, F::ACK).seq_ack(2, 0x1234_5678).build();
    assert_eq!(run(&e, at(2), Direction::Inbound, blind).reason, Reason::Flow);
    let probe = Craft::tcp(spoofed, server(), 40_000, 1, 0).build();
    assert!(
        run(&e, at(3), Direction::Inbound, probe).ban.is_some(),
        "no grace without a handshake"
    );

    let e = Engine::new(config());
    let owner = host(41);
    run(&e, at(0), Direction::Inbound, syn(owner, 33_000, 80));
    let syn_ack = Craft::tcp(server(), owner, 80, 33_000, F::SYN | F::ACK).seq_ack(0x7000_0000, 2);
    run(&e, at(1), Direction::Outbound, syn_ack.build());
    let ack = Craft::tcp(owner, server(), 33_000, 80, F::ACK).seq_ack(2, 0x7000_0001).build();
    run(&e, at(2), Direction::Inbound, ack);
    let forged = Craft::tcp(owner, server(), 40_000, 1, 0).build();
    assert!(
        run(&e, at(3), Direction::Inbound, forged).ban.is_none(),
        "grace after a real handshake"
    );
}

/// Workers share one engine: scanners and clients spread over threads (as
/// `--queue-balance` spreads them over queues) get the verdicts they get on
/// one thread.
#[test]
fn threads_sharing_one_engine_agree() {
    let e = std::sync::Arc::new(Engine::new(config()));
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let e = std::sync::Arc::clone(&e);
            scope.spawn(move || {
                for i in 0..200u16 {
                    // Each scanner's probes are split over all threads.
                    let scanner = IpAddr::from([198, 18, 3, (i % 10) as u8]);
                    run(
                        &e,
                        at(u64::from(i)),
                        Direction::Inbound,
                        syn(scanner, 40_000, 1000 + i * 4 + u16::from(t)),
                    );
                    let client = IpAddr::from([198, 18, 4, t]);
                    let outs = connect(&e, at(u64::from(i)), client, 20_000 + i, 80);
                    assert!(outs.iter().all(|o| o.verdict == Verdict::Accept), "{outs:?}");
                }
            });
        }
    });
    let bans = e.bans(at(1000));
    assert_eq!(bans.len(), 10, "{bans:?}");
    assert!(bans.iter().all(|(k, _)| k.to_string().starts_with("198.18.3.")));
}

#[test]
fn a_spoofed_flood_cannot_erase_a_slow_scans_evidence() {
    // 5 closed ports every 61 s (under the short window's threshold), and
    // 140 000 spoofed SYNs from new sources between the batches: 35 times
    // what the source table holds.
    let mut c = rules();
    c.tracking.sources = 4096;
    c.tracking.shards = 4;
    let e = Engine::new(checked(c));
    let scanner = IpAddr::from([198, 18, 77, 7]);
    let mut rng = 0x9e37_79b9u32;
    let mut banned = None;
    for batch in 0..8u16 {
        let t = at(u64::from(batch) * 61_000);
        for i in 0..5u16 {
            let port = 1000 + batch * 5 + i;
            let o = run(&e, t, Direction::Inbound, syn(scanner, 40_000, port));
            if let Some(b) = o.ban {
                banned = banned.or(Some((b.reason, batch * 5 + i + 1)));
            }
        }
        for _ in 0..20_000 {
            let src = IpAddr::from((0x0a00_0000 | (xorshift(&mut rng) >> 8)).to_be_bytes());
            run(&e, t, Direction::Inbound, syn(src, 40_000, (rng & 0x3ff) as u16 + 2000));
        }
    }
    assert_eq!(
        banned,
        Some((BanReason::SlowScan(20), 20)),
        "banned after 20 ports, as with no flood"
    );
    let s = e.stats().tables;
    assert!(s.source_evictions > 100_000 && s.protected >= 1, "{s:?}");
}

#[test]
fn only_sources_with_as_much_evidence_push_a_protected_one_out() {
    let mut c = rules();
    c.tracking.sources = 4;
    c.tracking.shards = 1;
    let e = Engine::new(checked(c));
    // Two protected slots: a source with 4 closed ports, one with 2.
    for port in 1000..1004 {
        run(&e, at(0), Direction::Inbound, syn(host(1), 40_000, port));
    }
    for port in 1000..1002 {
        run(&e, at(0), Direction::Inbound, syn(host(2), 40_000, port));
    }
    // A third with 3 pushes out the one with 2, not the one with 4.
    for port in 1000..1003 {
        run(&e, at(1), Direction::Inbound, syn(host(3), 40_000, port));
    }
    let s = e.stats().tables;
    assert_eq!((s.protected, s.promotions, s.promotions_refused), (2, 3, 0), "{s:?}");
    // A fourth with 2 finds no protected source with as little: refused.
    for port in 1000..1002 {
        run(&e, at(2), Direction::Inbound, syn(host(4), 40_000, port));
    }
    assert_eq!(e.stats().tables.promotions_refused, 1);
    // host(1) kept its count: two more ports ban it (6 within the window).
    run(&e, at(3), Direction::Inbound, syn(host(1), 40_000, 1004));
    let o = run(&e, at(3), Direction::Inbound, syn(host(1), 40_000, 1005));
    assert_eq!(o.ban.map(|b| b.reason), Some(BanReason::ClosedPorts(6)));
}

/// The IPv6 scan: ports 1 to 1000 from `network` (a /48, as its
/// first three groups), five probes from each /64 before the next. Returns
/// the probes that reached the policy (not dropped for a ban) and the
/// network bans it caused.
fn spread_scan(e: &Engine, network: [u16; 3], dst: IpAddr) -> (u32, Vec<(SourceKey, Ban)>) {
    let [a, b, c] = network;
    let (mut reached, mut escalated) = (0, Vec::new());
    for port in 1..=1000u16 {
        let subnet = (port - 1) / 5;
        let src = IpAddr::from([a, b, c, subnet, 0, 0, 0, 7]);
        let o =
            run(e, at(u64::from(port) * 100), Direction::Inbound, syn_to(src, dst, 40_000, port));
        reached += u32::from(o.reason != Reason::Banned);
        escalated.extend(o.escalated);
    }
    (reached, escalated)
}

#[test]
fn a_scan_that_moves_to_a_new_64_of_its_48_ends_in_a_ban_of_the_48() {
    let dst = IpAddr::from([0xfd5c, 0x0a11, 1, 0, 0, 0, 0, 1]);
    // Off, the scan of the issue goes through: no /64 reaches a threshold.
    let mut off = rules();
    off.tracking.ipv6_escalate = 0;
    let e = Engine::new(checked(off));
    assert_eq!(spread_scan(&e, [0xfd5c, 0x0a11, 2], dst), (1000, vec![]));
    assert!(e.bans(at(200_000)).is_empty());

    // On (the default: 4 /64s with 3 closed ports each).
    let e = Engine::new(config());
    e.set_local(vec![dst]);
    // A client of that /48 that proved itself before the scan.
    let client = IpAddr::from([0xfd5c, 0x0a11, 2, 0xffff, 0, 0, 0, 9]);
    assert!(
        connect_to(&e, at(50), (client, dst), 50_000, 80)
            .iter()
            .all(|o| o.verdict == Verdict::Accept)
    );
    let (reached, escalated) = spread_scan(&e, [0xfd5c, 0x0a11, 2], dst);
    assert_eq!(reached, 18, "the 4th /64's 3rd closed port bans the /48");
    let [(network, ban)] = escalated[..] else { panic!("one network ban: {escalated:?}") };
    assert_eq!(network.to_string(), "fd5c:a11:2::/48");
    assert_eq!((ban.reason, ban.kind), (BanReason::SpreadScan(4), BanKind::Ban));
    assert!(e.bans(at(200_000)).iter().any(|(k, _)| *k == network));
    let later = at(200_000);
    // Any other unproven /64 of it is dropped, open ports included...
    let fresh = IpAddr::from([0xfd5c, 0x0a11, 2, 0xfffe, 0, 0, 0, 1]);
    let o = run(&e, later, Direction::Inbound, syn_to(fresh, dst, 40_000, 80));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Banned));
    // ...the proven one keeps working, and other /48s are untouched.
    assert!(
        connect_to(&e, later, (client, dst), 50_001, 80)
            .iter()
            .all(|o| o.verdict == Verdict::Accept)
    );
    let other = IpAddr::from([0xfd5c, 0x0a11, 3, 0, 0, 0, 0, 1]);
    assert!(
        connect_to(&e, later, (other, dst), 50_002, 80)
            .iter()
            .all(|o| o.verdict == Verdict::Accept)
    );
    // Unbanning an address lifts its network's ban too.
    assert!(e.unban(fresh).iter().any(|(k, _)| *k == network));
    assert_eq!(
        run(&e, later, Direction::Inbound, syn_to(fresh, dst, 40_001, 80)).verdict,
        Verdict::Accept
    );

    // Saved bans of keys these rules do not track are left out at start.
    assert!(e.tracks(network) && e.tracks(SourceKey::new(fresh, 64)));
    assert!(!e.tracks(SourceKey::new(fresh, 56)));
    let mut off = rules();
    off.tracking.ipv6_escalate = 0;
    assert!(!Engine::new(checked(off)).tracks(network));

    // The /48 that holds this host's own address is never banned whole.
    let own = Engine::new(config());
    own.set_local(vec![dst]);
    let (reached, escalated) = spread_scan(&own, [0xfd5c, 0x0a11, 1], dst);
    assert_eq!((reached, escalated), (1000, vec![]));
}

/// A peer's ban: an unproven source is banned until the peer's end, one
/// that completed a handshake here is quarantined, an allowlisted one is
/// refused, and a ban here that lasts as long is left alone.
#[test]
fn a_peers_ban_bans_strangers_and_quarantines_clients_proven_here() {
    let mut r = rules();
    r.lists.allow = vec!["198.18.1.77/32".parse().expect("cidr")];
    let e = Engine::new(checked(r));
    let reason = BanReason::Signature(Signature::Tool(Fingerprint::NmapSyn));
    let key = |ip| SourceKey::new(ip, 64);
    let until = at(60_000);
    let stranger = host(5);
    let ban = e.peer_ban(at(0), key(stranger), reason, until, false).expect("ban");
    assert_eq!(ban.map(|b| (b.kind, b.until)), Some((BanKind::Ban, until)));
    assert_eq!(e.peer_ban(at(1), key(stranger), reason, at(30_000), false), Ok(None));
    let client = host(6);
    connect(&e, at(0), client, 40_000, 80);
    let q = e.peer_ban(at(10), key(client), reason, until, false).expect("quarantine");
    assert_eq!(q.map(|b| b.kind), Some(BanKind::Quarantine));
    // The kernel's word alone is enough.
    let q = e.peer_ban(at(10), key(host(7)), reason, until, true).expect("quarantine");
    assert_eq!(q.map(|b| b.kind), Some(BanKind::Quarantine));
    let allowed = "198.18.1.77".parse().expect("address");
    assert_eq!(e.peer_ban(at(0), key(allowed), reason, until, false), Err(Refused::Allowlisted));
    e.set_local(vec![server()]);
    assert_eq!(e.peer_ban(at(0), key(server()), reason, until, false), Err(Refused::Unbannable));
    let swept = e.sweep_ban(at(0), key(host(8)), 4, false).expect("sweep").expect("a ban");
    assert_eq!((swept.kind, swept.reason), (BanKind::Ban, BanReason::FleetSweep(4)));
}
