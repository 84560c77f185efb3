//! The exact text portcloak feeds to nft and iptables-restore, built from
//! the rules alone so `portcloak firewall` can print it.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::time::Duration;

use super::{BanOp, CHAIN_IN, CHAIN_OUT, TABLE};
use crate::config::{Cidr, Config, FailMode, GateProto};
use crate::track::{SourceKey, prefix_mask};

/// Where the queue rules live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// nft `queue` statements in the portcloak table.
    Nft,
    /// iptables-nft `-j NFQUEUE` rules (the kernel lacks nft `queue`).
    Iptables,
}

/// A run of consecutive queue numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRange {
    /// The first queue.
    pub first: u16,
    /// How many.
    pub count: u16,
}

impl QueueRange {
    /// The queue numbers.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0..self.count).map(move |i| self.first.saturating_add(i))
    }

    fn last(self) -> u16 {
        self.first.saturating_add(self.count.saturating_sub(1))
    }
}

/// `first-last`, or `first` alone for one queue (nft's syntax).
impl std::fmt::Display for QueueRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count > 1 {
            write!(f, "{}-{}", self.first, self.last())
        } else {
            write!(f, "{}", self.first)
        }
    }
}

/// Everything the firewall objects depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where the queue rules go.
    pub backend: Backend,
    /// Inbound queues.
    pub inbound: QueueRange,
    /// Outbound queues, when `daemon.outbound` is on.
    pub outbound: Option<QueueRange>,
    /// The kernel accepts when no one listens (`--queue-bypass`).
    pub bypass: bool,
    /// IPv6 bans cover this prefix.
    pub ipv6_prefix: u8,
    /// Bytes of an inbound packet the queues copy.
    pub copy_range: u16,
    /// `lists.allow`.
    pub allow: Vec<Cidr>,
    /// `lists.deny`.
    pub deny: Vec<Cidr>,
    /// The persona's TTL for every packet the host sends, when it has one.
    pub ttl: Option<TtlRewrite>,
    /// Hidden ports: queued without the bypass, so they stay closed when
    /// no daemon answers (fail closed, whatever `fail_mode` says).
    pub hidden: Vec<(GateProto, u16)>,
}

/// The kernel-side half of a persona's TTL: packets the host sends with
/// the default TTL (IPv6: hop limit) leave with the persona's. Packets
/// whose sender chose its own (neighbour discovery's 255, multicast's 1,
/// traceroute's probes) keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlRewrite {
    /// The persona's TTL.
    pub to: u8,
    /// `net.ipv4.ip_default_ttl`.
    pub from_v4: u8,
    /// `net.ipv6.conf.default.hop_limit`.
    pub from_v6: u8,
}

impl Plan {
    /// The plan for `config` with `workers` inbound queues.
    pub fn new(config: &Config, backend: Backend, workers: u16) -> Self {
        let d = &config.daemon;
        let inbound = QueueRange { first: d.queue, count: workers };
        let persona = config.persona();
        // A persona rewrites on the outbound queues, so it turns them on.
        let outbound = (d.outbound || persona.is_some())
            .then(|| QueueRange { first: d.queue.saturating_add(workers), count: workers });
        let ttl = persona.filter(|p| p.ttl != 0).map(|p| TtlRewrite {
            to: p.ttl,
            from_v4: 64,
            from_v6: 64,
        });
        Self {
            backend,
            inbound,
            outbound,
            bypass: d.fail_mode == FailMode::Open,
            ipv6_prefix: config.tracking.ipv6_prefix,
            copy_range: d.copy_range,
            allow: config.lists.allow.clone(),
            deny: config.lists.deny.clone(),
            ttl,
            hidden: config.hidden.iter().map(|h| (h.proto, h.port)).collect(),
        }
    }

    /// The nft transaction that replaces the portcloak table, with `bans`
    /// in its sets.
    pub fn nft_script(&self, bans: &[(SourceKey, Duration)]) -> String {
        let mut s = String::new();
        // Declaring the table first makes the delete succeed when there
        // is none; both run in one transaction with the new table.
        let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}");
        let _ = writeln!(s, "table inet {TABLE} {{");
        for (name, v6, list) in [
            ("allow4", false, &self.allow),
            ("allow6", true, &self.allow),
            ("deny4", false, &self.deny),
            ("deny6", true, &self.deny),
        ] {
            let _ =
                writeln!(s, "  set {name} {{\n    type {};\n    flags interval;", addr_type(v6));
            let members: Vec<String> = list
                .iter()
                .filter(|c| c.is_ipv4() != v6)
                .map(|c| c.network().to_string())
                .collect();
            if !members.is_empty() {
                let _ =
                    writeln!(s, "    auto-merge;\n    elements = {{ {} }};", members.join(", "));
            }
            s.push_str("  }\n");
        }
        for (name, v6) in [("ban4", false), ("ban6", true)] {
            let _ = writeln!(s, "  set {name} {{\n    type {};\n    flags timeout;", addr_type(v6));
            let members: Vec<String> = bans
                .iter()
                .filter(|(k, d)| k.is_ipv6() == v6 && !d.is_zero())
                .map(|(k, d)| format!("{} timeout {}s", k.ip(), ceil_secs(*d)))
                .collect();
            if !members.is_empty() {
                let _ = writeln!(s, "    elements = {{ {} }};", members.join(", "));
            }
            s.push_str("  }\n");
        }
        let mask = Ipv6Addr::from(prefix_mask(self.ipv6_prefix));
        let _ = writeln!(
            s,
            "  chain bans {{
    type filter hook prerouting priority -350; policy accept;
    iif \"lo\" accept
    ip saddr @allow4 accept
    ip6 saddr @allow6 accept
    ip saddr @deny4 counter drop
    ip6 saddr @deny6 counter drop
    ip saddr @ban4 counter drop
    ip6 saddr & {mask} @ban6 counter drop
  }}"
        );
        if let Some(t) = self.ttl {
            let _ = writeln!(
                s,
                "  chain persona {{
    type filter hook output priority 0; policy accept;
    oif \"lo\" accept"
            );
            if t.from_v4 != t.to {
                let _ = writeln!(s, "    ip ttl {} ip ttl set {}", t.from_v4, t.to);
            }
            if t.from_v6 != t.to {
                let _ = writeln!(s, "    ip6 hoplimit {} ip6 hoplimit set {}", t.from_v6, t.to);
            }
            s.push_str("  }\n");
        }
        if self.backend == Backend::Nft {
            let q = self.nft_queue(self.inbound);
            let _ = writeln!(
                s,
                "  chain inbound {{
    type filter hook prerouting priority mangle; policy accept;
    iif \"lo\" return
    meta pkttype != host return
    icmpv6 type {{ {ND} }} return"
            );
            if self.outbound.is_some() {
                let _ = writeln!(
                    s,
                    "    meta l4proto tcp ct state established ct direction original ct original packets 2 counter {q}"
                );
            }
            let _ = writeln!(
                s,
                "    ct state established,related return
    ct state invalid meta length > {} drop",
                self.copy_range
            );
            let closed = format!("queue num {}", self.inbound);
            for (proto, port) in &self.hidden {
                let _ = writeln!(
                    s,
                    "    meta l4proto {} th dport {port} counter {closed}",
                    proto.name()
                );
            }
            let _ =
                writeln!(s, "    meta l4proto {{ tcp, udp, icmp, ipv6-icmp }} counter {q}\n  }}");
            if let Some(out) = self.outbound {
                let q = self.nft_queue(out);
                let _ = writeln!(
                    s,
                    "  chain outbound {{
    type filter hook postrouting priority mangle; policy accept;
    oif \"lo\" return
    tcp flags & (syn | ack) == syn | ack counter {q}
    tcp flags & rst == rst counter {q}
    icmp type {{ {ICMP_OUT} }} counter {q}
    icmpv6 type {{ {ICMPV6_OUT} }} counter {q}
  }}"
                );
            }
        }
        s.push_str("}\n");
        s
    }

    fn nft_queue(&self, q: QueueRange) -> String {
        let flags = if self.bypass { "flags bypass " } else { "" };
        format!("queue {flags}num {q}")
    }

    fn nfqueue_target(&self, q: QueueRange) -> String {
        let mut t = Self::nfqueue_closed(q);
        if self.bypass {
            t.push_str(" --queue-bypass");
        }
        t
    }

    /// The NFQUEUE target without the bypass.
    fn nfqueue_closed(q: QueueRange) -> String {
        if q.count > 1 {
            format!("-j NFQUEUE --queue-balance {}:{}", q.first, q.last())
        } else {
            format!("-j NFQUEUE --queue-num {}", q.first)
        }
    }

    /// The `iptables-restore --noflush` input for one family (empty for
    /// the nft backend). Naming a chain flushes it, so a stale chain is
    /// replaced.
    pub fn iptables_script(&self, v6: bool) -> String {
        if self.backend != Backend::Iptables {
            return String::new();
        }
        let q = self.nfqueue_target(self.inbound);
        let icmp = if v6 { "ipv6-icmp" } else { "icmp" };
        let mut s = format!("*mangle\n:{CHAIN_IN} - [0:0]\n");
        let mut rule = |r: &str| {
            let _ = writeln!(s, "-A {CHAIN_IN} {r}");
        };
        rule("-i lo -j RETURN");
        rule("-m pkttype ! --pkt-type unicast -j RETURN");
        if v6 {
            for t in ND_TYPES {
                rule(&format!("-p ipv6-icmp --icmpv6-type {t} -j RETURN"));
            }
        }
        if self.outbound.is_some() {
            rule(&format!(
                "-p tcp -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL -m connbytes --connbytes 2:2 --connbytes-dir original --connbytes-mode packets {q}"
            ));
        }
        rule("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN");
        // Longer than the copy range, the daemon cannot verify checksums
        // and relies on conntrack's; INVALID ones (bad checksum, no valid
        // state) are dropped here, as the host's stack would.
        rule(&format!(
            "-m conntrack --ctstate INVALID -m length --length {}:65535 -j DROP",
            u32::from(self.copy_range) + 1
        ));
        let closed = Self::nfqueue_closed(self.inbound);
        for (proto, port) in &self.hidden {
            rule(&format!("-p {} --dport {port} {closed}", proto.name()));
        }
        for proto in ["tcp", "udp", icmp] {
            rule(&format!("-p {proto} {q}"));
        }
        if let Some(out) = self.outbound {
            let q = self.nfqueue_target(out);
            let _ = writeln!(s, ":{CHAIN_OUT} - [0:0]");
            let mut rule = |r: &str| {
                let _ = writeln!(s, "-A {CHAIN_OUT} {r}");
            };
            rule("-o lo -j RETURN");
            rule(&format!("-p tcp --tcp-flags SYN,ACK SYN,ACK {q}"));
            rule(&format!("-p tcp --tcp-flags RST RST {q}"));
            let types = if v6 { ICMPV6_OUT } else { ICMP_OUT };
            for t in types.split(", ") {
                if v6 {
                    rule(&format!("-p ipv6-icmp --icmpv6-type {t} {q}"));
                } else {
                    rule(&format!("-p icmp --icmp-type {t} {q}"));
                }
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The jumps into portcloak's iptables chains: (base chain, chain).
    pub fn iptables_jumps(&self) -> Vec<(&'static str, &'static str)> {
        let mut jumps = vec![("PREROUTING", CHAIN_IN)];
        if self.outbound.is_some() {
            jumps.push(("POSTROUTING", CHAIN_OUT));
        }
        jumps
    }

    /// Everything `install` would apply, as a human reads it.
    pub fn describe(&self) -> String {
        let mut s = String::from("# nft -f - (one transaction)\n");
        s.push_str(&self.nft_script(&[]));
        if self.backend == Backend::Iptables {
            for (v6, tool) in [(false, "iptables-nft"), (true, "ip6tables-nft")] {
                let _ = writeln!(s, "\n# {tool}-restore --noflush");
                s.push_str(&self.iptables_script(v6));
                for (hook, chain) in self.iptables_jumps() {
                    let _ =
                        writeln!(s, "# {tool} -t mangle -I {hook} 1 -j {chain}   (unless present)");
                }
            }
        }
        s
    }
}

/// ICMPv6 neighbour discovery and multicast listener messages: the link
/// needs them, and they are never queued.
const ND_TYPES: [&str; 5] = [
    "router-solicitation",
    "router-advertisement",
    "neighbour-solicitation",
    "neighbour-advertisement",
    "redirect",
];
const ND: &str = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect, mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report";

/// ICMP replies and errors the outbound queues see (nft names; iptables
/// knows them by the same names).
const ICMP_OUT: &str =
    "echo-reply, destination-unreachable, time-exceeded, parameter-problem, timestamp-reply";
const ICMPV6_OUT: &str = "echo-reply, destination-unreachable, time-exceeded, parameter-problem";

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)).max(1)
}

/// One nft transaction for a batch of ban changes. Adding an element that
/// exists is not an error and deleting one that does not is, so each
/// element is first added bare, then deleted, then (for a ban) added with
/// its timeout: a re-ban gets its new timeout and an unban of an element
/// the kernel already expired succeeds.
pub(super) fn ban_ops(ops: &[BanOp]) -> String {
    let mut s = String::new();
    for op in ops {
        let key = match op {
            BanOp::Add(k, _) | BanOp::Remove(k) => k,
        };
        let set = if key.is_ipv6() { "ban6" } else { "ban4" };
        let ip = key.ip();
        let _ = writeln!(s, "add element inet {TABLE} {set} {{ {ip} }}");
        let _ = writeln!(s, "delete element inet {TABLE} {set} {{ {ip} }}");
        if let BanOp::Add(_, d) = op {
            let _ =
                writeln!(s, "add element inet {TABLE} {set} {{ {ip} timeout {}s }}", ceil_secs(*d));
        }
    }
    s
}

/// Sums the packet counters of the NFQUEUE rules in `iptables -nvxL` output.
pub(super) fn sum_iptables_counters(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("NFQUEUE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Sums `counter packets N` of the queue rules in an nft listing.
pub(super) fn sum_nft_queue_counters(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains(" queue "))
        .filter_map(|l| {
            let rest = l.split("counter packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}
