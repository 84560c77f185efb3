use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::track::BanKind;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

#[test]
fn iptables_rules_queue_new_traffic_with_bypass_and_drop_long_invalid_packets() {
    let plan = Plan::new(&config(""), Backend::Iptables, 2);
    let v4 = plan.iptables_script(false);
    assert!(v4.starts_with("*mangle\n:PORTCLOAK_IN - [0:0]\n") && v4.ends_with("COMMIT\n"), "{v4}");
    // Every protocol meets the rules (`policy.other_protocols = "drop"`).
    assert!(v4.contains("-A PORTCLOAK_IN -j NFQUEUE --queue-balance 0:1 --queue-bypass\n"), "{v4}");
    assert!(v4.contains("-i lo -j RETURN"));
    let fast = v4.find("-m mark --mark 0x10000000/0x10000000 -j RETURN");
    assert!(fast.is_some() && fast < v4.find("NFQUEUE"), "the fast path skips the queue: {v4}");
    assert!(v4.contains("--ctstate RELATED,ESTABLISHED -j RETURN"));
    assert!(v4.contains("--ctstate INVALID -m length --length 129:65535 -j DROP"));
    assert!(!v4.contains("PORTCLOAK_OUT") && !v4.contains("connbytes"));
    let v6 = plan.iptables_script(true);
    assert!(v6.contains("-j NFQUEUE") && v6.contains("neighbour-solicitation -j RETURN"));
    assert_eq!(plan.iptables_jumps(), vec![("PREROUTING", CHAIN_IN)]);
    // With other protocols accepted, the kernel passes them unqueued.
    let accept =
        Plan::new(&config("[policy]\nother_protocols = \"accept\"\n"), Backend::Iptables, 2);
    let v4 = accept.iptables_script(false);
    for proto in ["tcp", "udp", "icmp", "sctp"] {
        let rule =
            format!("-A PORTCLOAK_IN -p {proto} -j NFQUEUE --queue-balance 0:1 --queue-bypass");
        assert!(v4.contains(&rule), "{v4}");
    }
    assert!(!v4.contains("-A PORTCLOAK_IN -j NFQUEUE"), "{v4}");
}

#[test]
fn the_kernel_proves_pairs_and_sources_and_marks_the_fast_path() {
    let plan = Plan::new(
        &config("[[hidden]]\nport = 22\n[ban]\nhandshake_grace = \"5m\"\n"),
        Backend::Iptables,
        2,
    );
    let s = plan.nft_script(&[], &[]);
    for set in ["proven4", "proven6"] {
        let decl = format!(
            "set {set} {{\n    type {} . inet_proto . inet_service;\n    flags dynamic,timeout;\n    timeout 300s;",
            if set.ends_with('4') { "ipv4_addr" } else { "ipv6_addr" }
        );
        assert!(s.contains(&decl), "{s}");
    }
    // Proof: the ACK conntrack validated, and UDP this host answered.
    assert!(s.contains("ct direction original ct status assured ct original packets 2-4 update @proven4 { ip saddr . meta l4proto . th dport } update @peers4 { ip saddr }"), "{s}");
    assert!(
        s.contains(
            "update @proven6 { ip6 saddr & ffff:ffff:ffff:ffff:: . meta l4proto . th dport }"
        ),
        "IPv6 keyed as the ban sets: {s}"
    );
    assert!(s.contains("meta l4proto udp ct direction reply ct reply packets 1 update @proven4 { ip daddr . meta l4proto . th sport }"), "{s}");
    assert!(
        s.contains("ct direction original ct state new update @peers4 { ip daddr }"),
        "peers this host opened flows to: {s}"
    );
    // `proof` sends established traffic to `proved4/6`, the rest to
    // `new4/6`, where the order is: allowlist, quarantine, the proven
    // mark, the hidden ports, then the fast path.
    let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing: {s}"));
    assert!(s.contains("ct state established,related meta nfproto vmap { ipv4 : goto proved4, ipv6 : goto proved6 }\n    meta nfproto vmap { ipv4 : goto new4, ipv6 : goto new6 }"), "{s}");
    let order = [
        "chain new4 {",
        "ip saddr @allow4 return",
        "ip saddr @quarantine4 ip saddr . meta l4proto . th dport != @proven4 ip saddr . meta l4proto . th dport != @keep4 counter drop",
        "ip saddr @peers4 meta mark set meta mark | 0x20000000",
        "meta l4proto . th dport { tcp . 22 } return",
        "ct state new tcp flags & (fin | syn | rst | ack) == syn tcp window >= 2048 ip saddr . meta l4proto . th dport @proven4 counter meta mark set meta mark | 0x10000000 return",
    ];
    let places: Vec<usize> = order.iter().map(|n| at(n)).collect();
    assert!(places.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(s.contains("ct state new meta l4proto udp ip saddr . meta l4proto . th dport @keep4 counter meta mark set"), "{s}");
    assert!(s.contains("ct state new tcp flags & (syn | rst | ack) == ack ip saddr . meta l4proto . th dport @proven4 counter"), "mid-stream pickups of a proven pair pass: {s}");
    assert!(s.contains("meta mark & 0x30000000 != 0 meta mark set meta mark & 0xcfffffff"), "{s}");
    // Bans come after conntrack, and a flow this host opened passes.
    let bans = at("chain bans");
    assert!(
        s[bans..].contains("priority -190")
            && at("ct direction reply accept") < at("@ban4 counter drop"),
        "{s}"
    );
}

#[test]
fn kernel_counters_and_proven_pairs_are_read_from_nft_listings() {
    let chain = "    ip saddr @ban4 counter packets 9 bytes 540 drop comment \"banned4\"\n\
                 ip6 saddr & ffff:ffff:ffff:ffff:: @ban6 counter packets 2 bytes 1 drop comment \"banned6\"\n\
                 ... counter packets 3 bytes 180 meta mark set meta mark | 0x10000000 return comment \"fast4\"\n\
                 ... counter packets 4 bytes 180 meta mark set meta mark | 0x10000000 return comment \"fast6\"\n\
                 ... counter packets 5 bytes 1 drop comment \"quarantined4\"\n\
                 ip6 saddr & ffff:ffff:ffff:: @wide6 ct state new counter packets 3 bytes 240 drop comment \"banned6\"\n\
                 ip saddr @deny4 counter packets 1 bytes 60 drop comment \"denied4\"\n";
    let c = render::kernel_counters(chain);
    assert_eq!(
        c,
        KernelCounters {
            fast_path: 7,
            quarantined: 5,
            banned4: 9,
            banned6: 5,
            denied4: 1,
            banned4_bytes: 540,
            banned6_bytes: 241,
            denied4_bytes: 60,
            ..KernelCounters::default()
        }
    );
    let set = "table inet portcloak {\n\tset proven4 {\n\t\telements = { 198.18.2.2 . udp . 53 expires 9m59s944ms,\n\t\t\t     198.18.2.22 . tcp . 80 expires 9m,\n\t\t\t     198.18.2.2 . tcp . 443 expires 9m55s176ms }\n\t}\n}\n";
    let key = SourceKey::new("198.18.2.2".parse().unwrap(), 64);
    assert_eq!(render::pairs_of(set, key), vec![(PortProto::Udp, 53), (PortProto::Tcp, 443)]);
    assert!(render::pairs_of("set proven4 {\n}\n", key).is_empty());
}

#[test]
fn one_worker_uses_queue_num_and_failing_closed_drops_the_bypass() {
    let plan =
        Plan::new(&config("[daemon]\nfail_mode = \"closed\"\nqueue = 7\n"), Backend::Iptables, 1);
    let v4 = plan.iptables_script(false);
    assert!(v4.contains("-A PORTCLOAK_IN -j NFQUEUE --queue-num 7\n"), "{v4}");
    assert!(!v4.contains("bypass"));
}

#[test]
fn outbound_adds_the_reply_chain() {
    let plan = Plan::new(&config("[daemon]\noutbound = true\n"), Backend::Iptables, 2);
    assert_eq!(plan.outbound, Some(QueueRange { first: 2, count: 2 }));
    let v4 = plan.iptables_script(false);
    assert!(v4.contains(
        "-A PORTCLOAK_OUT -p tcp --tcp-flags SYN,ACK SYN,ACK -j NFQUEUE --queue-balance 2:3"
    ));
    assert!(v4.contains("--icmp-type echo-reply"));
    assert!(!v4.contains("connbytes"), "the kernel proves handshakes itself: {v4}");
    assert_eq!(plan.iptables_jumps(), vec![("PREROUTING", CHAIN_IN), ("POSTROUTING", CHAIN_OUT)]);
}

#[test]
fn the_nft_table_replaces_itself_and_carries_lists_and_bans() {
    let c = config(
        "[lists]\nallow = [\"198.18.5.9/24\", \"fd5c:a11:9::/48\"]\ndeny = [\"198.19.0.0/16\"]\n",
    );
    let plan = Plan::new(&c, Backend::Iptables, 2);
    let entry = |ip: &str, remaining, kind, keep| Entry {
        key: SourceKey::new(ip.parse().unwrap(), 64),
        remaining,
        kind,
        keep,
    };
    let bans = [
        entry("198.18.1.2", Duration::from_millis(3_599_500), BanKind::Ban, vec![]),
        entry("fd5c:a11:1::2", Duration::from_secs(60), BanKind::Ban, vec![]),
        entry(
            "198.18.2.2",
            Duration::from_secs(600),
            BanKind::Quarantine,
            vec![(PortProto::Tcp, 80)],
        ),
    ];
    let s = plan.nft_script(&bans, &[]);
    assert!(
        s.starts_with("table inet portcloak\ndelete table inet portcloak\ntable inet portcloak {")
    );
    assert!(s.contains("elements = { 198.18.5.0/24 }"), "host bits cleared: {s}");
    assert!(s.contains("elements = { fd5c:a11:9::/48 }"));
    assert!(s.contains("elements = { 198.19.0.0/16 }"));
    assert!(s.contains("elements = { 198.18.1.2 timeout 3600s }"), "{s}");
    assert!(s.contains("elements = { fd5c:a11:1:: timeout 60s }"));
    assert!(s.contains("ip6 saddr & ffff:ffff:ffff:ffff:: @ban6 counter drop"));
    let quarantine = s.find("set quarantine4").unwrap();
    assert!(s[quarantine..].starts_with("set quarantine4 {\n    type ipv4_addr;\n    flags timeout;\n    elements = { 198.18.2.2 timeout 600s };"), "{s}");
    assert!(s.contains("elements = { 198.18.2.2 . tcp . 80 timeout 600s }"), "the kept pair: {s}");
    assert!(!s.contains("queue"), "iptables backend: no nft queue");
}

#[test]
fn the_nft_backend_queues_in_the_table() {
    let plan = Plan::new(&config("[daemon]\noutbound = true\n"), Backend::Nft, 2);
    let s = plan.nft_script(&[], &[]);
    assert!(s.contains("    counter queue flags bypass num 0-1\n  }"), "{s}");
    assert!(s.contains("meta mark & 0x10000000 == 0x10000000 return"), "{s}");
    assert!(s.contains("ct state invalid meta length > 128 drop"));
    assert!(s.contains("chain outbound") && s.contains("queue flags bypass num 2-3"));
    assert!(plan.iptables_script(false).is_empty());
}

#[test]
fn ban_batches_tolerate_present_and_absent_elements() {
    let a = SourceKey::new("198.18.1.2".parse().unwrap(), 64);
    let b = SourceKey::new("fd5c:a11:1::2".parse().unwrap(), 64);
    let ban =
        Entry { key: a, remaining: Duration::from_secs(90), kind: BanKind::Ban, keep: vec![] };
    let text = render::ban_ops(&[BanOp::Add(ban), BanOp::Remove(b, vec![])], 64);
    assert_eq!(
        text,
        "add element inet portcloak ban4 { 198.18.1.2 }\n\
         delete element inet portcloak ban4 { 198.18.1.2 }\n\
         add element inet portcloak ban4 { 198.18.1.2 timeout 90s }\n\
         add element inet portcloak quarantine4 { 198.18.1.2 }\n\
         delete element inet portcloak quarantine4 { 198.18.1.2 }\n\
         add element inet portcloak ban6 { fd5c:a11:1:: }\n\
         delete element inet portcloak ban6 { fd5c:a11:1:: }\n\
         add element inet portcloak quarantine6 { fd5c:a11:1:: }\n\
         delete element inet portcloak quarantine6 { fd5c:a11:1:: }\n"
    );
    let keep = vec![(PortProto::Tcp, 80)];
    let q = Entry {
        key: a,
        remaining: Duration::from_secs(60),
        kind: BanKind::Quarantine,
        keep: keep.clone(),
    };
    let text = render::ban_ops(&[BanOp::Add(q)], 64);
    assert!(
        text.contains("add element inet portcloak quarantine4 { 198.18.1.2 timeout 60s }\n"),
        "{text}"
    );
    assert!(!text.contains("ban4 { 198.18.1.2 timeout"), "a quarantine is no ban: {text}");
    assert!(
        text.contains("add element inet portcloak keep4 { 198.18.1.2 . tcp . 80 timeout 60s }\n"),
        "{text}"
    );
    let text = render::ban_ops(&[BanOp::Remove(a, keep)], 64);
    assert!(
        text.ends_with("delete element inet portcloak keep4 { 198.18.1.2 . tcp . 80 }\n"),
        "{text}"
    );
}

#[test]
fn queue_rule_counters_are_summed() {
    let ipt = "Chain PORTCLOAK_IN (1 references)\n    pkts      bytes target     prot opt in     out     source               destination\n       3      180 RETURN     0    --  lo     *       0.0.0.0/0            0.0.0.0/0\n     120     7200 NFQUEUE    6    --  *      *       0.0.0.0/0            0.0.0.0/0            NFQUEUE balance 0:1 bypass\n       5      300 NFQUEUE    17   --  *      *       0.0.0.0/0            0.0.0.0/0            NFQUEUE balance 0:1 bypass\n";
    assert_eq!(render::sum_iptables_counters(ipt), 125);
    let nft = "    meta l4proto { tcp, udp } counter packets 42 bytes 100 queue flags bypass num 0-1\n    ip saddr @ban4 counter packets 9 bytes 1 drop\n";
    assert_eq!(render::sum_nft_queue_counters(nft), 42);
}

#[test]
fn a_persona_turns_on_the_outbound_queues_and_sets_the_default_ttl_only() {
    let mut plan = Plan::new(&config("[persona]\nname = \"windows\"\n"), Backend::Iptables, 2);
    assert_eq!(plan.outbound, Some(QueueRange { first: 2, count: 2 }));
    let ttl = plan.ttl.as_mut().unwrap();
    assert_eq!(*ttl, TtlRewrite { to: 128, from_v4: 64, from_v6: 64 });
    let nft = plan.nft_script(&[], &[]);
    assert!(nft.contains("type filter hook output priority 0;"), "{nft}");
    assert!(nft.contains("ip ttl 64 ip ttl set 128\n"), "{nft}");
    assert!(nft.contains("ip6 hoplimit 64 ip6 hoplimit set 128\n"), "{nft}");
    let v4 = plan.iptables_script(false);
    assert!(
        v4.contains("-p icmp --icmp-type time-exceeded -j NFQUEUE --queue-balance 2:3"),
        "{v4}"
    );
    let v6 = plan.iptables_script(true);
    assert!(v6.contains("-p ipv6-icmp --icmpv6-type echo-reply -j NFQUEUE"), "{v6}");
    // A kernel already at the persona's TTL needs no IPv4 rule.
    plan.ttl = Some(TtlRewrite { to: 128, from_v4: 128, from_v6: 64 });
    assert!(!plan.nft_script(&[], &[]).contains("ip ttl"));
    let none = Plan::new(&config(""), Backend::Iptables, 2);
    assert_eq!((none.outbound, none.ttl), (None, None));
    assert!(!none.nft_script(&[], &[]).contains("chain persona"));
}

#[test]
fn hidden_ports_are_queued_on_their_own_queue_without_the_bypass_before_everything_else() {
    let plan = Plan::new(&config("[[hidden]]\nport = 22\n"), Backend::Iptables, 2);
    assert_eq!(plan.hidden_queue, Some(4), "after the inbound and outbound ranges");
    let v4 = plan.iptables_script(false);
    let hidden = v4.find("-A PORTCLOAK_IN -p tcp --dport 22 -j NFQUEUE --queue-num 4\n");
    let general = v4.find("-A PORTCLOAK_IN -j NFQUEUE --queue-balance 0:1 --queue-bypass");
    assert!(hidden.is_some() && hidden < general, "{v4}");
    let nft = Plan::new(&config("[[hidden]]\nport = 22\n"), Backend::Nft, 2).nft_script(&[], &[]);
    assert!(nft.contains("meta l4proto tcp th dport 22 counter queue num 4\n"), "{nft}");
    assert_eq!(Plan::new(&config(""), Backend::Iptables, 2).hidden_queue, None);
}

#[test]
fn a_banned_network_drops_all_but_its_proven_sources() {
    let plan = Plan::new(&config(""), Backend::Iptables, 1);
    let network = SourceKey::new("fd5c:a11:2::7".parse().unwrap(), 48);
    let own = SourceKey::new("fd5c:a11:2:5::7".parse().unwrap(), 64);
    let ban =
        |key| Entry { key, remaining: Duration::from_secs(60), kind: BanKind::Ban, keep: vec![] };
    let s = plan.nft_script(&[ban(network), ban(own)], &[]);
    let wide = s.find("set wide6 {").expect("the set of networks");
    assert!(
        s[wide..].starts_with("set wide6 {\n    type ipv6_addr;\n    flags timeout;\n    elements = { fd5c:a11:2:: timeout 60s };"),
        "{s}"
    );
    assert!(s.contains("set ban6 {\n    type ipv6_addr;\n    flags timeout;\n    elements = { fd5c:a11:2:5:: timeout 60s };"), "the /64 alone: {s}");
    let rule = "ip6 saddr & ffff:ffff:ffff:: @wide6 ct state new,invalid,untracked ip6 saddr & ffff:ffff:ffff:ffff:: != @peers6 counter drop comment \"banned6\"";
    let bans6 = s.find("chain bans6").unwrap();
    let after = s[bans6..].find(rule).expect("the network rule in bans6");
    assert!(
        s[bans6..].find("ct direction reply accept") < Some(after),
        "after the flows this host opened: {s}"
    );
    assert!(!s.contains("wide4"));
    // Batches put networks in their own set and nowhere else.
    let text = render::ban_ops(&[BanOp::Add(ban(network)), BanOp::Remove(network, vec![])], 64);
    assert!(
        text.contains("add element inet portcloak wide6 { fd5c:a11:2:: timeout 60s }\n"),
        "{text}"
    );
    assert!(text.ends_with("delete element inet portcloak wide6 { fd5c:a11:2:: }\n"), "{text}");
    assert!(!text.contains("ban6") && !text.contains("quarantine6"), "{text}");
    // Off, there is no such set or rule.
    let off = Plan::new(&config("[tracking]\nipv6_escalate = 0\n"), Backend::Iptables, 1);
    assert!(!off.nft_script(&[], &[]).contains("wide6"));
}

#[test]
fn proofs_are_read_from_the_kernel_and_carried_into_the_new_table() {
    // `nft -j list set` output of nft 1.0.6, one set per listing.
    let proven = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "proven4", "table": "portcloak", "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"], "timeout": 600, "elem": [{"elem": {"val": {"concat": ["198.18.2.2", "tcp", 80]}, "expires": 99}}, {"elem": {"val": {"concat": ["198.18.2.3", 17, 53]}, "expires": 7}}]}}]}"#;
    let peers = r#"{"nftables": [{"set": {"name": "peers6", "elem": [{"elem": {"val": "fd5c:a11:5:ffff::", "expires": 299}}, {"elem": {"val": "nonsense", "expires": 1}}]}}]}"#;
    let empty = r#"{"nftables": [{"set": {"name": "peers4", "type": "ipv4_addr"}}]}"#;
    let mut proofs = render::proofs_of(proven);
    proofs.extend(render::proofs_of(peers));
    assert!(render::proofs_of(empty).is_empty() && render::proofs_of("not json").is_empty());
    let proof = |source: &str, pair, secs| Proof {
        source: source.parse().unwrap(),
        pair,
        left: Duration::from_secs(secs),
    };
    assert_eq!(
        proofs,
        vec![
            proof("198.18.2.2", Some((PortProto::Tcp, 80)), 99),
            proof("198.18.2.3", Some((PortProto::Udp, 53)), 7),
            proof("fd5c:a11:5:ffff::", None, 299),
        ]
    );
    let plan = Plan::new(&config("[ban]\nhandshake_grace = \"5m\"\n"), Backend::Iptables, 1);
    let mut long = proofs.clone();
    long.push(proof("198.18.2.4", None, 9999));
    let s = plan.nft_script(&[], &long);
    assert!(s.contains("set proven4 {\n    type ipv4_addr . inet_proto . inet_service;\n    flags dynamic,timeout;\n    timeout 300s;\n    size 65536;\n    elements = { 198.18.2.2 . tcp . 80 timeout 300s expires 99s, 198.18.2.3 . udp . 53 timeout 300s expires 7s };"), "{s}");
    assert!(s.contains("elements = { fd5c:a11:5:ffff:: timeout 300s expires 299s };"), "{s}");
    assert!(
        s.contains("elements = { 198.18.2.4 timeout 300s expires 300s };"),
        "at most the grace: {s}"
    );
}
