//! The gate through the engine, with crafted packets and synthetic time.

use std::net::IpAddr;

use super::spa::{Request, seal};
use super::*;
use crate::config::Config;
use crate::engine::{Direction, Engine};
use crate::policy::Verdict;
use crate::wire::TcpFlags as F;
use crate::wire::craft::Craft;

const KEY: [u8; 32] = [9; 32];

fn server() -> IpAddr {
    IpAddr::from([198, 18, 1, 1])
}

/// The server's address in the family of `src`.
fn server_for(src: IpAddr) -> IpAddr {
    if src.is_ipv6() { "fd5c:a11:1::1".parse().unwrap() } else { server() }
}

fn client() -> IpAddr {
    IpAddr::from([198, 18, 2, 2])
}

fn attacker() -> IpAddr {
    IpAddr::from([198, 18, 1, 2])
}

fn at(s: u64) -> Timestamp {
    Timestamp::from_secs(1_800_000_000 + s)
}

fn engine() -> Engine {
    let config = Config::from_toml(
        r#"
[services]
tcp = [80]
[[hidden]]
port = 22
open_for = "30s"
[knock]
sequence = ["tcp:7001", "udp:7002", "tcp:7003"]
within = "10s"
[spa]
key_file = "/dev/null"
"#,
    )
    .unwrap();
    Engine::new(config).with_spa_key(KEY.to_vec())
}

fn syn(src: IpAddr, port: u16) -> Vec<u8> {
    Craft::tcp(src, server_for(src), 50_000, port, F::SYN)
        .window(64_240)
        .options(&[2, 4, 5, 180, 4, 2, 1, 3, 3, 7])
        .build()
}

fn udp(src: IpAddr, port: u16, payload: &[u8]) -> Vec<u8> {
    Craft::udp(src, server_for(src), 50_001, port).payload(payload).build()
}

fn send(e: &Engine, now: Timestamp, mut p: Vec<u8>) -> crate::engine::Outcome {
    e.handle(now, Direction::Inbound, &mut p)
}

fn spa_packet(ip: IpAddr, timestamp: u64, nonce: u8, key: &[u8]) -> Vec<u8> {
    let r = Request { timestamp, nonce: [nonce; 16], port: 22, protocol: 6, ip };
    udp(ip, 62_201, &seal(key, &r))
}

fn now_s(t: Timestamp) -> u64 {
    t.secs()
}

#[test]
fn a_hidden_port_is_dropped_and_counted_until_spa_opens_it_for_that_source_only() {
    let e = engine();
    let o = send(&e, at(0), syn(client(), 22));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Hidden));
    let o = send(&e, at(1), spa_packet(client(), now_s(at(1)), 1, &KEY));
    assert_eq!((o.verdict, o.reason), (Verdict::Drop, Reason::Spa), "the SPA port never answers");
    assert!(matches!(o.gate, Some(GateEvent::Authorized { via: Via::Spa, mask: 1, .. })));
    let o = send(&e, at(2), syn(client(), 22));
    assert_eq!((o.verdict, o.reason), (Verdict::Accept, Reason::Authorized));
    assert_eq!(send(&e, at(2), syn(attacker(), 22)).verdict, Verdict::Drop);
    // After open_for, new connections are dropped again.
    assert_eq!(send(&e, at(40), syn(client(), 22)).verdict, Verdict::Drop);
    let c = e.stats().gate;
    assert_eq!((c.spa_authorized, c.hidden_opened, c.hidden_dropped), (1, 1, 3));
}

#[test]
fn replays_wrong_keys_stale_truncated_and_random_packets_open_nothing() {
    let e = engine();
    let good = spa_packet(client(), now_s(at(0)), 1, &KEY);
    assert!(send(&e, at(0), good.clone()).gate.is_some());
    let t = |i: u64| at(60 + 2 * i);
    let cases: Vec<(Vec<u8>, Rejection)> = vec![
        (good.clone(), Rejection::Replay),
        (spa_packet(client(), now_s(t(1)), 2, &[1; 32]), Rejection::BadHmac),
        (spa_packet(client(), now_s(t(2)) - 121, 3, &KEY), Rejection::Stale),
        (spa_packet(client(), now_s(t(3)) + 121, 4, &KEY), Rejection::Stale),
        (udp(client(), 62_201, &good[28..60]), Rejection::Malformed),
        (udp(client(), 62_201, &[0x5a; 80]), Rejection::Malformed),
    ];
    for (i, (p, why)) in cases.into_iter().enumerate() {
        let o = send(&e, t(i as u64), p);
        assert_eq!(o.gate, Some(GateEvent::Rejected(why)), "case {i}");
        assert_eq!(o.verdict, Verdict::Drop);
    }
    // Captured from the client, replayed from the attacker's address.
    let mut stolen = good;
    stolen[12..16].copy_from_slice(&[198, 18, 1, 2]);
    let fixed = Craft::udp(attacker(), server(), 50_001, 62_201).payload(&stolen[28..]).build();
    let o = send(&e, at(80), fixed);
    assert_eq!(o.gate, Some(GateEvent::Rejected(Rejection::WrongSource)));
    assert_eq!(send(&e, at(81), syn(attacker(), 22)).verdict, Verdict::Drop);
    let c = e.stats().gate;
    assert_eq!(
        (c.spa_replay, c.spa_bad_hmac, c.spa_stale, c.spa_malformed, c.spa_wrong_source),
        (1, 1, 2, 2, 1)
    );
}

#[test]
fn forged_spa_junk_from_the_client_cannot_stop_its_real_packets() {
    // 1000 forged 80-byte packets a second "from" the client, and one real
    // SPA packet every 3 s (the client's own rate is 1/s, burst 5): 40 of
    // 40 authorize, and the junk spends only the global budget of checks.
    let e = engine();
    let ms = |n: u64| Timestamp::from_micros(at(0).micros() + n * 1000);
    let mut authorized = 0;
    for i in 0..40u64 {
        for j in 0..3000u64 {
            let t = ms(3000 * i + j);
            send(&e, t, udp(client(), 62_201, &[(j % 251) as u8; 80]));
            if j == 1500 {
                let nonce = u8::try_from(i + 1).unwrap();
                let o = send(&e, t, spa_packet(client(), now_s(t), nonce, &KEY));
                authorized += usize::from(matches!(o.gate, Some(GateEvent::Authorized { .. })));
            }
        }
    }
    assert_eq!(authorized, 40);
    let c = e.stats().gate;
    assert_eq!((c.spa_malformed, c.spa_rate_limited, c.spa_over_budget), (120_000, 0, 0));
}

#[test]
fn spa_checks_are_bounded_by_a_global_budget_and_valid_packets_by_the_sources_rate() {
    let mut config = engine().config().clone().into_rules();
    config.spa.checks_per_second = 50;
    let e = Engine::new(Config::try_from(config).unwrap()).with_spa_key(KEY.to_vec());
    for i in 0..100 {
        send(&e, at(0), udp(attacker(), 62_201, &[i; 80]));
    }
    let c = e.stats().gate;
    assert_eq!((c.spa_malformed, c.spa_over_budget), (50, 50), "the budget's burst");
    // Valid packets: the source's burst (5), then its rate.
    let e = engine();
    let t = now_s(at(0));
    let valid = (1..=8u8)
        .filter(|n| {
            let o = send(&e, at(1), spa_packet(client(), t, *n, &KEY));
            matches!(o.gate, Some(GateEvent::Authorized { .. }))
        })
        .count();
    assert_eq!((valid, e.stats().gate.spa_rate_limited), (5, 3));
}

#[test]
fn an_authorization_covers_exactly_the_address_it_names() {
    let mut config = engine().config().clone().into_rules();
    config.tracking.ipv6_prefix = 64;
    let e = Engine::new(Config::try_from(config).unwrap()).with_spa_key(KEY.to_vec());
    let me: IpAddr = "fd5c:a11:5::10".parse().unwrap();
    let neighbour: IpAddr = "fd5c:a11:5::11".parse().unwrap();
    let o = send(&e, at(0), spa_packet(me, now_s(at(0)), 1, &KEY));
    assert!(matches!(o.gate, Some(GateEvent::Authorized { .. })));
    assert_eq!(send(&e, at(1), syn(me, 22)).verdict, Verdict::Accept);
    assert_eq!(send(&e, at(2), syn(neighbour, 22)).verdict, Verdict::Drop, "same /64, not named");
    // A second address of the /64 gets its own grant; the first keeps its.
    let o = send(&e, at(3), spa_packet(neighbour, now_s(at(3)), 2, &KEY));
    assert!(matches!(o.gate, Some(GateEvent::Authorized { .. })));
    assert_eq!(send(&e, at(4), syn(neighbour, 22)).verdict, Verdict::Accept);
    assert_eq!(send(&e, at(5), syn(me, 22)).verdict, Verdict::Accept);
}

#[test]
fn spa_dates_are_judged_by_the_wall_clock_offset() {
    // The caller's clock is monotonic and the wall clock was stepped an
    // hour back: a packet stamped with the wall time is fresh.
    let e = engine();
    e.set_wall_offset(-3_600_000_000);
    let wall = now_s(at(0)) - 3600;
    let o = send(&e, at(0), spa_packet(client(), wall, 1, &KEY));
    assert!(matches!(o.gate, Some(GateEvent::Authorized { .. })));
    let o = send(&e, at(10), spa_packet(client(), now_s(at(10)), 2, &KEY));
    assert_eq!(o.gate, Some(GateEvent::Rejected(Rejection::Stale)));
}

#[test]
fn an_evicted_nonce_cannot_be_replayed() {
    let mut config = engine().config().clone().into_rules();
    config.spa.nonces = 2;
    let e = Engine::new(Config::try_from(config).unwrap()).with_spa_key(KEY.to_vec());
    let t = now_s(at(0));
    for (n, dt) in [(1u8, 0), (2, 1), (3, 2)] {
        let o = send(&e, at(10 * u64::from(n)), spa_packet(client(), t + dt, n, &KEY));
        assert!(matches!(o.gate, Some(GateEvent::Authorized { .. })));
    }
    // Nonce 1 left the cache; its packet is no newer than what was evicted.
    let o = send(&e, at(40), spa_packet(client(), t, 1, &KEY));
    assert_eq!(o.gate, Some(GateEvent::Rejected(Rejection::Replay)));
}

#[test]
fn the_knock_sequence_opens_and_an_interleaved_one_does_not() {
    let e = engine();
    assert_eq!(send(&e, at(0), syn(client(), 7001)).reason, Reason::Knock);
    // A retransmitted SYN of the step just taken changes nothing.
    assert_eq!(send(&e, at(1), syn(client(), 7001)).reason, Reason::Knock);
    assert_eq!(send(&e, at(1), udp(client(), 7002, b"k")).reason, Reason::Knock);
    let o = send(&e, at(2), syn(client(), 7003));
    assert!(matches!(o.gate, Some(GateEvent::Authorized { via: Via::Knock, .. })));
    assert_eq!(send(&e, at(3), syn(client(), 22)).verdict, Verdict::Accept);

    // Another packet in between resets the sequence.
    for (t, p) in [
        (0, syn(attacker(), 7001)),
        (1, udp(attacker(), 7002, b"k")),
        (1, syn(attacker(), 80)),
        (2, syn(attacker(), 7003)),
    ] {
        assert_eq!(send(&e, at(t), p).gate, None);
    }
    assert_eq!(send(&e, at(3), syn(attacker(), 22)).verdict, Verdict::Drop);
    // Out of order, or too slow: nothing.
    for (t, port) in [(10, 7001), (11, 7003), (12, 7002)] {
        send(
            &e,
            at(t),
            if port == 7002 { udp(attacker(), port, b"k") } else { syn(attacker(), port) },
        );
    }
    for (t, port) in [(20, 7001), (31, 7002), (32, 7003)] {
        let p = if port == 7002 { udp(attacker(), port, b"k") } else { syn(attacker(), port) };
        assert_eq!(send(&e, at(t), p).gate, None);
    }
    assert_eq!(send(&e, at(33), syn(attacker(), 22)).verdict, Verdict::Drop);
    assert_eq!(e.stats().gate.knock_authorized, 1);
}

#[test]
fn gate_rules_are_checked() {
    for (text, key) in [
        ("[knock]\nsequence = [\"tcp:1\", \"tcp:2\", \"tcp:3\"]\n", "knock.sequence"),
        ("[[hidden]]\nport = 22\n[knock]\nsequence = [\"tcp:1\", \"tcp:2\"]\n", "knock.sequence"),
        (
            "[[hidden]]\nport = 22\n[knock]\nsequence = [\"tcp:1\", \"tcp:2\", \"tcp:22\"]\n",
            "knock.sequence",
        ),
        ("[[hidden]]\nport = 22\n[[hidden]]\nport = 22\n", "hidden.port"),
        ("[services]\ntcp = [22]\n[[hidden]]\nport = 22\n", "hidden.port"),
        ("[[hidden]]\nport = 22\n[spa]\nkey_file = \"k\"\nport = 0\n", "spa.port"),
        ("[knock]\nsequence = [\"icmp:1\"]\n", "knock.sequence"),
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn the_gate_keeps_state_only_for_sources_that_knock_or_send_spa_and_only_with_a_hidden_port() {
    let none = Engine::new(Config::default());
    let mut p = syn(client(), 7001);
    none.handle(at(0), Direction::Inbound, &mut p);
    let t = none.stats().tables;
    assert_eq!((t.gate_states, t.gate_capacity), (0, 0), "no hidden port: no table at all");

    let e = engine();
    for i in 0..50u8 {
        send(&e, at(0), syn(IpAddr::from([198, 18, 7, i]), 80));
    }
    let t = e.stats().tables;
    assert_eq!(t.gate_states, 0, "a packet to a service is not the gate's business");
    assert_eq!(t.gate_capacity, t.source_capacity.div_ceil(8));
    send(&e, at(1), syn(client(), 7001));
    send(&e, at(1), spa_packet(attacker(), now_s(at(1)), 1, &KEY));
    assert_eq!(e.stats().tables.gate_states, 2, "a knock and an SPA packet");
    assert!(e.stats().tables.to_string().ends_with(&format!(", gate 2/{}", t.gate_capacity)));
}

#[test]
fn a_flood_of_spoofed_knocks_erases_neither_a_knock_under_way_nor_a_grant() {
    let mut rules = engine().config().clone().into_rules();
    rules.tracking.sources = 1024;
    rules.tracking.shards = 1;
    let e = Engine::new(Config::try_from(rules).unwrap()).with_spa_key(KEY.to_vec());
    let granted = IpAddr::from([198, 18, 2, 3]);
    // Two steps of three, and a grant by SPA.
    send(&e, at(0), syn(client(), 7001));
    send(&e, at(0), udp(client(), 7002, b"k"));
    let o = send(&e, at(0), spa_packet(granted, now_s(at(0)), 1, &KEY));
    assert!(matches!(o.gate, Some(GateEvent::Authorized { .. })));
    // Ten thousand spoofed first steps, each a new source of the gate.
    let mut x = 0x2545_f491_u32;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        send(&e, at(1), syn(IpAddr::from((0x0a00_0000 | (x >> 8)).to_be_bytes()), 7001));
    }
    let t = e.stats().tables;
    assert!(t.gate_states <= t.gate_capacity, "{t:?}");
    let o = send(&e, at(2), syn(client(), 7003));
    assert!(
        matches!(o.gate, Some(GateEvent::Authorized { via: Via::Knock, .. })),
        "the knock under way survived"
    );
    assert_eq!(send(&e, at(3), syn(client(), 22)).verdict, Verdict::Accept);
    assert_eq!(send(&e, at(3), syn(granted, 22)).verdict, Verdict::Accept, "the grant survived");
}
