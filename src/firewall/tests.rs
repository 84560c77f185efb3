use std::time::Duration;

use super::*;
use crate::config::Config;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap()
}

#[test]
fn iptables_rules_queue_new_traffic_with_bypass_and_drop_long_invalid_packets() {
    let plan = Plan::new(&config(""), Backend::Iptables, 2);
    let v4 = plan.iptables_script(false);
    assert!(v4.starts_with("*mangle\n:PORTCLOAK_IN - [0:0]\n") && v4.ends_with("COMMIT\n"), "{v4}");
    for proto in ["tcp", "udp", "icmp"] {
        let rule =
            format!("-A PORTCLOAK_IN -p {proto} -j NFQUEUE --queue-balance 0:1 --queue-bypass");
        assert!(v4.contains(&rule), "{v4}");
    }
    assert!(v4.contains("-i lo -j RETURN"));
    assert!(v4.contains("--ctstate RELATED,ESTABLISHED -j RETURN"));
    assert!(v4.contains("--ctstate INVALID -m length --length 129:65535 -j DROP"));
    assert!(!v4.contains("PORTCLOAK_OUT") && !v4.contains("connbytes"));
    let v6 = plan.iptables_script(true);
    assert!(
        v6.contains("-p ipv6-icmp -j NFQUEUE") && v6.contains("neighbour-solicitation -j RETURN")
    );
    assert_eq!(plan.iptables_jumps(), vec![("PREROUTING", CHAIN_IN)]);
}

#[test]
fn one_worker_uses_queue_num_and_failing_closed_drops_the_bypass() {
    let plan =
        Plan::new(&config("[daemon]\nfail_mode = \"closed\"\nqueue = 7\n"), Backend::Iptables, 1);
    let v4 = plan.iptables_script(false);
    assert!(v4.contains("-p tcp -j NFQUEUE --queue-num 7\n"), "{v4}");
    assert!(!v4.contains("bypass"));
}

#[test]
fn outbound_adds_the_reply_chain_and_the_handshake_ack() {
    let plan = Plan::new(&config("[daemon]\noutbound = true\n"), Backend::Iptables, 2);
    assert_eq!(plan.outbound, Some(QueueRange { first: 2, count: 2 }));
    let v4 = plan.iptables_script(false);
    assert!(v4.contains(
        "-A PORTCLOAK_OUT -p tcp --tcp-flags SYN,ACK SYN,ACK -j NFQUEUE --queue-balance 2:3"
    ));
    assert!(v4.contains("--icmp-type echo-reply"));
    assert!(v4.contains("--connbytes 2:2 --connbytes-dir original --connbytes-mode packets -j NFQUEUE --queue-balance 0:1"));
    assert_eq!(plan.iptables_jumps(), vec![("PREROUTING", CHAIN_IN), ("POSTROUTING", CHAIN_OUT)]);
}

#[test]
fn the_nft_table_replaces_itself_and_carries_lists_and_bans() {
    let c = config(
        "[lists]\nallow = [\"198.18.5.9/24\", \"fd5c:a11:9::/48\"]\ndeny = [\"198.19.0.0/16\"]\n",
    );
    let plan = Plan::new(&c, Backend::Iptables, 2);
    let bans = [
        (SourceKey::new("198.18.1.2".parse().unwrap(), 64), Duration::from_millis(3_599_500)),
        (SourceKey::new("fd5c:a11:1::2".parse().unwrap(), 64), Duration::from_secs(60)),
    ];
    let s = plan.nft_script(&bans);
    assert!(
        s.starts_with("table inet portcloak\ndelete table inet portcloak\ntable inet portcloak {")
    );
    assert!(s.contains("elements = { 198.18.5.0/24 }"), "host bits cleared: {s}");
    assert!(s.contains("elements = { fd5c:a11:9::/48 }"));
    assert!(s.contains("elements = { 198.19.0.0/16 }"));
    assert!(s.contains("elements = { 198.18.1.2 timeout 3600s }"), "{s}");
    assert!(s.contains("elements = { fd5c:a11:1:: timeout 60s }"));
    assert!(s.contains("ip6 saddr & ffff:ffff:ffff:ffff:: @ban6 counter drop"));
    assert!(s.contains("priority -350"));
    assert!(!s.contains("queue"), "iptables backend: no nft queue");
}

#[test]
fn the_nft_backend_queues_in_the_table() {
    let plan = Plan::new(&config("[daemon]\noutbound = true\n"), Backend::Nft, 2);
    let s = plan.nft_script(&[]);
    assert!(
        s.contains("meta l4proto { tcp, udp, icmp, ipv6-icmp } counter queue flags bypass num 0-1"),
        "{s}"
    );
    assert!(s.contains("ct state invalid meta length > 128 drop"));
    assert!(s.contains("chain outbound") && s.contains("queue flags bypass num 2-3"));
    assert!(plan.iptables_script(false).is_empty());
}

#[test]
fn ban_batches_tolerate_present_and_absent_elements() {
    let a = SourceKey::new("198.18.1.2".parse().unwrap(), 64);
    let b = SourceKey::new("fd5c:a11:1::2".parse().unwrap(), 64);
    let text = render::ban_ops(&[BanOp::Add(a, Duration::from_secs(90)), BanOp::Remove(b)]);
    assert_eq!(
        text,
        "add element inet portcloak ban4 { 198.18.1.2 }\n\
         delete element inet portcloak ban4 { 198.18.1.2 }\n\
         add element inet portcloak ban4 { 198.18.1.2 timeout 90s }\n\
         add element inet portcloak ban6 { fd5c:a11:1:: }\n\
         delete element inet portcloak ban6 { fd5c:a11:1:: }\n"
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
    let nft = plan.nft_script(&[]);
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
    assert!(!plan.nft_script(&[]).contains("ip ttl"));
    let none = Plan::new(&config(""), Backend::Iptables, 2);
    assert_eq!((none.outbound, none.ttl), (None, None));
    assert!(!none.nft_script(&[]).contains("chain persona"));
}

#[test]
fn hidden_ports_are_queued_without_the_bypass_before_everything_else() {
    let plan = Plan::new(&config("[[hidden]]\nport = 22\n"), Backend::Iptables, 2);
    let v4 = plan.iptables_script(false);
    let hidden = v4.find("-A PORTCLOAK_IN -p tcp --dport 22 -j NFQUEUE --queue-balance 0:1\n");
    let general = v4.find("-A PORTCLOAK_IN -p tcp -j NFQUEUE --queue-balance 0:1 --queue-bypass");
    assert!(hidden.is_some() && hidden < general, "{v4}");
    let nft = Plan::new(&config("[[hidden]]\nport = 22\n"), Backend::Nft, 2).nft_script(&[]);
    assert!(nft.contains("meta l4proto tcp th dport 22 counter queue num 0-1\n"), "{nft}");
}
