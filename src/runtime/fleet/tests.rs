use super::*;
use crate::config::Config;
use crate::track::BanKind;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn settings(name: &str) -> Settings {
    Settings { name: name.into(), url: "nats://198.18.8.9:4222".into(), ..Settings::default() }
}

fn key(ip: &str) -> SourceKey {
    SourceKey::new(ip.parse().expect("address"), 64)
}

const CLOCKS: Clocks = Clocks { offset: 0 };

/// Two hosts' nodes over one stream, modelled as the bytes one seals and
/// the other reads.
#[test]
fn a_peers_ban_is_applied_once_and_never_published_again() {
    let (sa, sb) = (settings("a"), settings("b"));
    let (stats_a, stats_b) = (Stats::default(), Stats::default());
    let window = Duration::from_secs(60);
    let mut a = Node::new(&sa, KEY.to_vec(), window, &stats_a);
    let mut b = Node::new(&sb, KEY.to_vec(), window, &stats_b);
    let engine_b = Engine::new(Config::default());
    let now = engine_now(CLOCKS);
    let scanner = key("198.18.1.2");
    let ban = Ban {
        kind: BanKind::Ban,
        reason: "signature nmap-syn".parse().expect("reason"),
        since: now,
        until: now.saturating_add(Duration::from_secs(600)),
        offences: 1,
    };
    let (subject, bytes) = a.seal_ban(scanner, &ban, CLOCKS);
    assert_eq!(subject, "portcloak.fleet.ban");
    let (applied, publish) = b.receive(&bytes, &engine_b, CLOCKS, &|_| false);
    assert_eq!(applied.len(), 1, "applied on b");
    assert!(publish.is_none(), "b never publishes what it received");
    assert_eq!(engine_b.active_ban(scanner, now).map(|b| b.kind), Some(BanKind::Ban));
    // The same bytes again: a replay.
    let (again, _) = b.receive(&bytes, &engine_b, CLOCKS, &|_| false);
    assert!(again.is_empty());
    assert_eq!(stats_b.refused[Refusal::Replayed.index()].load(Relaxed), 1);
    // Its own ban, read back: ignored.
    let engine_a = Engine::new(Config::default());
    let (own, _) = a.receive(&bytes, &engine_a, CLOCKS, &|_| false);
    assert!(own.is_empty() && engine_a.active_ban(scanner, now).is_none());
    assert_eq!(stats_a.own.load(Relaxed), 1);
    // A source proven here is quarantined.
    let (_, bytes) = a.seal_ban(key("198.18.2.2"), &ban, CLOCKS);
    let (applied, _) = b.receive(&bytes, &engine_b, CLOCKS, &|_| true);
    assert_eq!(applied.first().map(|(_, b)| b.kind), Some(BanKind::Quarantine));
    // Another key's message changes nothing.
    let mut intruder = Node::new(&sa, b"another key".to_vec(), window, &stats_a);
    let (_, bytes) = intruder.seal_ban(key("198.18.3.3"), &ban, CLOCKS);
    assert!(b.receive(&bytes, &engine_b, CLOCKS, &|_| false).0.is_empty());
    assert_eq!(stats_b.refused[Refusal::BadSignature.index()].load(Relaxed), 1);
}

/// Four hosts' summaries, each with the sweeper once: every node bans it
/// at the fourth, and only the node whose summary completed it publishes.
#[test]
fn a_sweep_over_four_hosts_is_banned_by_all_and_published_by_one() {
    let names = ["h1", "h2", "h3", "h4"];
    let all: Vec<Settings> = names.iter().map(|n| settings(n)).collect();
    let stats: Vec<Stats> = names.iter().map(|_| Stats::default()).collect();
    let window = Duration::from_secs(60);
    let mut nodes: Vec<Node<'_>> =
        all.iter().zip(&stats).map(|(s, st)| Node::new(s, KEY.to_vec(), window, st)).collect();
    let engines: Vec<Engine> = names.iter().map(|_| Engine::new(Config::default())).collect();
    let sweeper = key("198.18.8.50");
    let summaries: Vec<Vec<u8>> =
        nodes.iter_mut().map(|n| n.seal_touches(&HashMap::from([(sweeper, 1)])).1).collect();
    for (i, (node, engine)) in nodes.iter_mut().zip(&engines).enumerate() {
        for (j, bytes) in summaries.iter().enumerate() {
            let (applied, publish) = node.receive(bytes, engine, CLOCKS, &|_| false);
            let last = j == summaries.len() - 1;
            assert_eq!(applied.len(), usize::from(last), "node {i}, summary {j}");
            // h4's own summary completed the sweep: h4 alone publishes.
            assert_eq!(publish.is_some(), last && i == 3, "node {i}, summary {j}");
        }
        let ban = engine.active_ban(sweeper, engine_now(CLOCKS)).expect("banned");
        assert_eq!(ban.reason, BanReason::FleetSweep(4));
    }
}
