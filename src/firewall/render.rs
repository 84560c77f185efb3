//! The exact text portcloak feeds to nft and iptables-restore, built from
//! the rules alone so `portcloak firewall` can print it.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::time::Duration;

use super::{BanOp, CHAIN_IN, CHAIN_OUT, Entry, KernelCounters, Pair, Proof, TABLE};
use crate::classify::PortProto;
use crate::config::{Cidr, Config, FailMode, GateProto};
use crate::track::{BanKind, SourceKey, prefix_mask};

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
    /// The wider IPv6 networks escalation bans (`tracking.ipv6_escalate`),
    /// when it is on: their set drops every source in them but proven ones.
    pub ipv6_network: Option<u8>,
    /// Bytes of an inbound packet the queues copy.
    pub copy_range: u16,
    /// `lists.allow`.
    pub allow: Vec<Cidr>,
    /// `lists.deny`.
    pub deny: Vec<Cidr>,
    /// The persona's TTL for every packet the host sends, when it has one.
    pub ttl: Option<TtlRewrite>,
    /// Hidden ports: queued without the bypass, so they stay closed when
    /// no daemon answers (fail closed, whatever `fail_mode` says). They
    /// never take the fast path.
    pub hidden: Vec<(GateProto, u16)>,
    /// The queue of the hidden ports, when there are any: their own, after
    /// the inbound and outbound ranges, without the bypass and without the
    /// kernel's fail-open, served by a worker that never sheds. A flood on
    /// the other queues never opens them.
    pub hidden_queue: Option<u16>,
    /// How long a proof lasts (`ban.handshake_grace`).
    pub grace: Duration,
    /// The fast-path mark bit; the bit above it marks a proven source.
    pub mark: u32,
    /// Other IP protocols are queued (`policy.other_protocols = "drop"`);
    /// otherwise the kernel passes them.
    pub queue_other: bool,
}

/// The smallest SYN window the fast path takes. Clients' stacks offer
/// 14600 or more; scanners' crafted SYNs far less.
pub const MIN_FAST_WINDOW: u16 = 2048;

/// Capacity of each dynamic set of proofs: the kernel stops adding when
/// one is full (proofs then wait for older ones to expire; nothing breaks).
pub const PROOF_SET_SIZE: u32 = 65_536;

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
            ipv6_network: config.tracking.escalation_prefix(),
            copy_range: d.copy_range,
            allow: config.lists.allow.clone(),
            deny: config.lists.deny.clone(),
            ttl,
            hidden: config.hidden.iter().map(|h| (h.proto, h.port)).collect(),
            hidden_queue: (!config.hidden.is_empty())
                .then(|| d.queue.saturating_add(workers.saturating_mul(2))),
            grace: config.ban.handshake_grace.get(),
            mark: d.mark,
            queue_other: config.policy.other_protocols == crate::config::Toggle::Drop,
        }
    }

    /// The mark bit of a proven source's queued packets.
    pub const fn proven_mark(&self) -> u32 {
        self.mark << 1
    }

    /// The nft transaction that replaces the portcloak table, with `bans`
    /// and `proofs` (from the table it replaces, or the state file) in its
    /// sets.
    pub fn nft_script(&self, bans: &[Entry], proofs: &[Proof]) -> String {
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
        for v6 in [false, true] {
            let n = if v6 { 6 } else { 4 };
            let (ty, pair_ty) =
                (addr_type(v6), format!("{} . inet_proto . inet_service", addr_type(v6)));
            let live = |kind| {
                bans.iter().filter(move |e| {
                    e.key.is_ipv6() == v6
                        && !is_network(e.key, self.ipv6_prefix)
                        && e.kind == kind
                        && !e.remaining.is_zero()
                })
            };
            let of = |kind| {
                live(kind)
                    .map(|e| format!("{} timeout {}s", e.key.ip(), ceil_secs(e.remaining)))
                    .collect::<Vec<_>>()
            };
            let keep: Vec<String> = live(BanKind::Quarantine)
                .flat_map(|e| {
                    e.keep.iter().map(move |p| {
                        format!("{} timeout {}s", pair_element(e.key, *p), ceil_secs(e.remaining))
                    })
                })
                .collect();
            let networks: Vec<String> = bans
                .iter()
                .filter(|e| e.key.is_ipv6() == v6 && is_network(e.key, self.ipv6_prefix))
                .filter(|e| !e.remaining.is_zero())
                .map(|e| format!("{} timeout {}s", e.key.ip(), ceil_secs(e.remaining)))
                .collect();
            let mut sets = vec![
                ("ban", ty.to_owned(), of(BanKind::Ban)),
                ("quarantine", ty.to_owned(), of(BanKind::Quarantine)),
                ("keep", pair_ty, keep),
            ];
            if v6 && self.ipv6_network.is_some() {
                sets.push(("wide", ty.to_owned(), networks));
            }
            for (name, ty, members) in sets {
                let _ = writeln!(s, "  set {name}{n} {{\n    type {ty};\n    flags timeout;");
                if !members.is_empty() {
                    let _ = writeln!(s, "    elements = {{ {} }};", members.join(", "));
                }
                s.push_str("  }\n");
            }
        }
        self.proof_sets(&mut s, proofs);
        let mask = Ipv6Addr::from(prefix_mask(self.ipv6_prefix));
        // A banned network drops its sources but those that proved their
        // address: the proof chain's `peers6` (handshakes, flows this host
        // answered or opened), and connections conntrack already follows,
        // which only a proven source can have (they outlive a restart,
        // which empties `peers6`).
        let wide = self.ipv6_network.map_or_else(String::new, |len| {
            let wide = Ipv6Addr::from(prefix_mask(len));
            format!(
                "\n    ip6 saddr & {wide} @wide6 ct state new,invalid,untracked ip6 saddr & {mask} != @peers6 counter drop comment \"banned6\""
            )
        });
        // After conntrack (-200), so that a flow this host opened is never
        // cut off by a ban on its peer; before every filter.
        let _ = writeln!(
            s,
            "  chain bans {{
    type filter hook prerouting priority -190; policy accept;
    iif \"lo\" accept
    meta nfproto vmap {{ ipv4 : goto bans4, ipv6 : goto bans6 }}
  }}
  chain bans4 {{
    ip saddr @allow4 accept
    ip saddr @deny4 counter drop comment \"denied4\"
    ct direction reply accept
    ip saddr @ban4 counter drop comment \"banned4\"
  }}
  chain bans6 {{
    ip6 saddr @allow6 accept
    ip6 saddr @deny6 counter drop comment \"denied6\"
    ct direction reply accept
    ip6 saddr & {mask} @ban6 counter drop comment \"banned6\"{wide}
  }}"
        );
        self.proof_chains(&mut s);
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
    ct state established,related return
    meta mark & {fast:#x} == {fast:#x} return
    meta pkttype != host return
    icmpv6 type {{ {ND} }} return",
                fast = self.mark
            );
            let _ = writeln!(s, "    ct state invalid meta length > {} drop", self.copy_range);
            let closed = format!("queue num {}", self.hidden_queue.unwrap_or(self.inbound.first));
            for (proto, port) in &self.hidden {
                let _ = writeln!(
                    s,
                    "    meta l4proto {} th dport {port} counter {closed}",
                    proto.name()
                );
            }
            if self.queue_other {
                let _ = writeln!(s, "    counter {q}\n  }}");
            } else {
                let _ = writeln!(
                    s,
                    "    meta l4proto {{ tcp, udp, icmp, ipv6-icmp, sctp }} counter {q}\n  }}"
                );
            }
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

    /// The sets of proofs, holding `proofs` (each for what it has left,
    /// at most the grace).
    fn proof_sets(&self, s: &mut String, proofs: &[Proof]) {
        let grace = ceil_secs(self.grace);
        for v6 in [false, true] {
            let (n, addr) = (if v6 { 6 } else { 4 }, addr_type(v6));
            for (name, ty, pairs) in [
                ("proven", format!("{addr} . inet_proto . inet_service"), true),
                ("peers", addr.to_owned(), false),
            ] {
                let members: Vec<String> = proofs
                    .iter()
                    .filter(|p| p.source.is_ipv6() == v6 && p.pair.is_some() == pairs)
                    .filter(|p| !p.left.is_zero())
                    .take(PROOF_SET_SIZE as usize)
                    .map(|p| {
                        let element = match p.pair {
                            Some((proto, port)) => {
                                format!("{} . {} . {port}", p.source, proto.name())
                            }
                            None => p.source.to_string(),
                        };
                        let left = ceil_secs(p.left).min(grace);
                        format!("{element} timeout {grace}s expires {left}s")
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "  set {name}{n} {{
    type {ty};
    flags dynamic,timeout;
    timeout {grace}s;
    size {PROOF_SET_SIZE};"
                );
                if !members.is_empty() {
                    let _ = writeln!(s, "    elements = {{ {} }};", members.join(", "));
                }
                s.push_str("  }\n");
            }
        }
    }

    /// `proof` records proven pairs and sources, drops a quarantined
    /// source's other new connections, and marks packets for the queue
    /// rules: a proven pair's new connection passes (the fast path), a
    /// proven source's queued packet says so to the worker. `answers`
    /// records the pairs this host answered and the peers it opened flows
    /// to. `unmark` clears both bits at the end of prerouting.
    fn proof_chains(&self, s: &mut String) {
        let mask = Ipv6Addr::from(prefix_mask(self.ipv6_prefix));
        let (fast, proven) = (self.mark, self.proven_mark());
        let both = fast | proven;
        let src = |v6: bool| if v6 { format!("ip6 saddr & {mask}") } else { "ip saddr".to_owned() };
        let dst = |v6: bool| if v6 { format!("ip6 daddr & {mask}") } else { "ip daddr".to_owned() };
        // One base chain that sorts packets by family and state into short
        // regular chains: most packets (established traffic) meet two rules.
        let _ = writeln!(
            s,
            "  chain proof {{
    type filter hook prerouting priority -160; policy accept;
    iif \"lo\" return
    ct state established,related meta nfproto vmap {{ ipv4 : goto proved4, ipv6 : goto proved6 }}
    meta nfproto vmap {{ ipv4 : goto new4, ipv6 : goto new6 }}
  }}"
        );
        let hidden: Vec<String> =
            self.hidden.iter().map(|(p, port)| format!("{} . {port}", p.name())).collect();
        for v6 in [false, true] {
            let (n, a) = (if v6 { 6 } else { 4 }, src(v6));
            let allow = if v6 { "ip6 saddr @allow6" } else { "ip saddr @allow4" };
            // Conntrack sets ASSURED on the ACK that completes a handshake
            // it validated (sequence and window tracking).
            let _ = writeln!(
                s,
                "  chain proved{n} {{
    meta l4proto tcp ct direction original ct status assured ct original packets 2-4 update @proven{n} {{ {a} . meta l4proto . th dport }} update @peers{n} {{ {a} }}
  }}
  chain new{n} {{
    {allow} return
    {a} @quarantine{n} {a} . meta l4proto . th dport != @proven{n} {a} . meta l4proto . th dport != @keep{n} counter drop comment \"quarantined{n}\"
    {a} @peers{n} meta mark set meta mark | {proven:#x}"
            );
            if !hidden.is_empty() {
                let _ =
                    writeln!(s, "    meta l4proto . th dport {{ {} }} return", hidden.join(", "));
            }
            for set in ["proven", "keep"] {
                // Only a plain SYN with a client's window: scanners' crafted
                // SYNs (nmap 1024, masscan 1024/1025, hping3 64, nmap's OS
                // probes 1 to 512) still meet the engine.
                let _ = writeln!(
                    s,
                    "    ct state new tcp flags & (fin | syn | rst | ack) == syn tcp window >= {MIN_FAST_WINDOW} {a} . meta l4proto . th dport @{set}{n} counter meta mark set meta mark | {fast:#x} return comment \"fast{n}\""
                );
                let _ = writeln!(
                    s,
                    "    ct state new meta l4proto udp {a} . meta l4proto . th dport @{set}{n} counter meta mark set meta mark | {fast:#x} return comment \"fast{n}\""
                );
                // A segment of a connection conntrack lost (flushed, or
                // after a restart) and picks up mid-stream: it belongs to
                // a pair that proved itself, and the engine never saw the
                // connection start.
                let _ = writeln!(
                    s,
                    "    ct state new tcp flags & (syn | rst | ack) == ack {a} . meta l4proto . th dport @{set}{n} counter meta mark set meta mark | {fast:#x} return comment \"fast{n}\""
                );
            }
            s.push_str("  }\n");
        }
        s.push_str(
            "  chain answers {\n    type filter hook output priority -160; policy accept;\n    oif \"lo\" return\n    meta l4proto tcp ct direction reply return\n",
        );
        for v6 in [false, true] {
            let (n, a) = (if v6 { 6 } else { 4 }, dst(v6));
            let _ = writeln!(
                s,
                "    meta l4proto udp ct direction reply ct reply packets 1 update @proven{n} {{ {a} . meta l4proto . th sport }} update @peers{n} {{ {a} }}"
            );
            let _ =
                writeln!(s, "    ct direction original ct state new update @peers{n} {{ {a} }}");
        }
        let _ = writeln!(
            s,
            "  }}
  chain unmark {{
    type filter hook prerouting priority 300; policy accept;
    meta mark & {both:#x} != 0 meta mark set meta mark & {:#x}
  }}",
            !both
        );
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
        // Established traffic, nearly every packet, leaves at the second rule.
        rule("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN");
        // The proof chain of `inet portcloak` marked a proven pair's new
        // connection: it passes in the kernel, never queued.
        rule(&format!("-m mark --mark {m:#x}/{m:#x} -j RETURN", m = self.mark));
        rule("-m pkttype ! --pkt-type unicast -j RETURN");
        if v6 {
            for t in ND_TYPES {
                rule(&format!("-p ipv6-icmp --icmpv6-type {t} -j RETURN"));
            }
        }
        // Longer than the copy range, the daemon cannot verify checksums
        // and relies on conntrack's; INVALID ones (bad checksum, no valid
        // state) are dropped here, as the host's stack would.
        rule(&format!(
            "-m conntrack --ctstate INVALID -m length --length {}:65535 -j DROP",
            u32::from(self.copy_range) + 1
        ));
        let own = QueueRange { first: self.hidden_queue.unwrap_or(self.inbound.first), count: 1 };
        let closed = Self::nfqueue_closed(own);
        for (proto, port) in &self.hidden {
            rule(&format!("-p {} --dport {port} {closed}", proto.name()));
        }
        if self.queue_other {
            rule(&q);
        } else {
            for proto in ["tcp", "udp", icmp, "sctp"] {
                rule(&format!("-p {proto} {q}"));
            }
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
        s.push_str(&self.nft_script(&[], &[]));
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

/// True for the key of a wider IPv6 network (escalation's `wide6` set),
/// not a tracked source.
fn is_network(key: SourceKey, ipv6_prefix: u8) -> bool {
    key.is_ipv6() && key.prefix_len() < ipv6_prefix
}

/// `198.18.2.2 . tcp . 80`: an element of a pair set.
fn pair_element(key: SourceKey, (proto, port): Pair) -> String {
    format!("{} . {} . {port}", key.ip(), proto.name())
}

/// One nft transaction for a batch of ban changes. Adding an element that
/// exists is not an error and deleting one that does not is, so each
/// element is first added bare, then deleted, then (for a ban) added with
/// its timeout: a re-ban gets its new timeout and an unban of an element
/// the kernel already expired succeeds. IPv6 keys wider than
/// `ipv6_prefix` are networks, in the `wide6` set.
pub(super) fn ban_ops(ops: &[BanOp], ipv6_prefix: u8) -> String {
    let mut s = String::new();
    let mut element = |set: &str, elem: &str, timeout: Option<Duration>| {
        let _ = writeln!(s, "add element inet {TABLE} {set} {{ {elem} }}");
        let _ = writeln!(s, "delete element inet {TABLE} {set} {{ {elem} }}");
        if let Some(d) = timeout {
            let _ = writeln!(
                s,
                "add element inet {TABLE} {set} {{ {elem} timeout {}s }}",
                ceil_secs(d)
            );
        }
    };
    for op in ops {
        let (key, keep) = match op {
            BanOp::Add(e) => (e.key, &e.keep),
            BanOp::Remove(k, keep) => (*k, keep),
        };
        let n = if key.is_ipv6() { 6 } else { 4 };
        let ip = key.ip().to_string();
        let kind = match op {
            BanOp::Add(e) => Some((e.kind, e.remaining)),
            BanOp::Remove(..) => None,
        };
        if is_network(key, ipv6_prefix) {
            element("wide6", &ip, kind.map(|(_, d)| d));
            continue;
        }
        for (set, k) in [("ban", BanKind::Ban), ("quarantine", BanKind::Quarantine)] {
            let timeout = kind.filter(|(kind, _)| *kind == k).map(|(_, d)| d);
            element(&format!("{set}{n}"), &ip, timeout);
        }
        for pair in keep {
            let timeout = kind.map(|(_, d)| d);
            element(&format!("keep{n}"), &pair_element(key, *pair), timeout);
        }
    }
    s
}

/// The counters of the rules named by their comments, in an nft listing.
pub(super) fn kernel_counters(text: &str) -> KernelCounters {
    let mut c = KernelCounters::default();
    for line in text.lines() {
        let Some(comment) = line.split("comment \"").nth(1).and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let Some(packets) = counter_packets(line) else { continue };
        let bytes = counter_bytes(line).unwrap_or(0);
        let (slot, bytes_slot) = match comment {
            "fast4" | "fast6" => (&mut c.fast_path, None),
            "quarantined4" | "quarantined6" => (&mut c.quarantined, None),
            "banned4" => (&mut c.banned4, Some(&mut c.banned4_bytes)),
            "banned6" => (&mut c.banned6, Some(&mut c.banned6_bytes)),
            "denied4" => (&mut c.denied4, Some(&mut c.denied4_bytes)),
            "denied6" => (&mut c.denied6, Some(&mut c.denied6_bytes)),
            _ => continue,
        };
        *slot = slot.saturating_add(packets);
        if let Some(b) = bytes_slot {
            *b = b.saturating_add(bytes);
        }
    }
    c
}

/// The pairs of `key` among the elements of an nft set listing
/// (`198.18.2.2 . tcp . 80 expires 9m58s`).
pub(super) fn pairs_of(text: &str, key: SourceKey) -> Vec<Pair> {
    let ip = key.ip().to_string();
    let Some(body) = text.split("elements = {").nth(1) else { return Vec::new() };
    let body = body.split('}').next().unwrap_or("");
    body.split(',')
        .filter_map(|element| {
            let mut parts = element.split(" . ").map(str::trim);
            if parts.next()? != ip {
                return None;
            }
            let proto = proto_of(parts.next()?)?;
            let port = parts.next()?.split_whitespace().next()?.parse().ok()?;
            Some((proto, port))
        })
        .collect()
}

/// The elements of a proof set in `nft -j list set` output, each with the
/// time it has left; elements it cannot read are left out.
pub(super) fn proofs_of(json: &str) -> Vec<Proof> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let sets = doc.get("nftables").and_then(|v| v.as_array()).into_iter().flatten();
    let elements = sets
        .filter_map(|v| v.get("set")?.get("elem")?.as_array())
        .flatten()
        .filter_map(|e| e.get("elem"));
    elements
        .filter_map(|e| {
            let left = Duration::from_secs(e.get("expires")?.as_u64()?);
            let val = e.get("val")?;
            let (source, pair) = match val.get("concat").and_then(|c| c.as_array()) {
                Some(parts) => {
                    let [addr, proto, port] = parts.as_slice() else { return None };
                    let proto = match proto {
                        serde_json::Value::Number(n) => proto_of(&n.to_string())?,
                        other => proto_of(other.as_str()?)?,
                    };
                    let port = u16::try_from(port.as_u64()?).ok()?;
                    (addr.as_str()?.parse().ok()?, Some((proto, port)))
                }
                None => (val.as_str()?.parse().ok()?, None),
            };
            Some(Proof { source, pair, left })
        })
        .collect()
}

/// A transport protocol as nft prints it: a name, or its number.
fn proto_of(text: &str) -> Option<PortProto> {
    match text {
        "6" => Some(PortProto::Tcp),
        "17" => Some(PortProto::Udp),
        "132" => Some(PortProto::Sctp),
        name => PortProto::from_name(name).filter(|p| *p != PortProto::Ip),
    }
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
    text.lines().filter(|l| l.contains(" queue ")).filter_map(counter_packets).sum()
}

/// The `counter packets N` of one rule in an nft listing.
fn counter_packets(line: &str) -> Option<u64> {
    line.split("counter packets ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// The `bytes N` of one rule's counter in an nft listing.
fn counter_bytes(line: &str) -> Option<u64> {
    let after = line.split("counter packets ").nth(1)?;
    after.split(" bytes ").nth(1)?.split_whitespace().next()?.parse().ok()
}
