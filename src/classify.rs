//! CLASSIFY: one parsed packet, plus whether it belongs to a known flow,
//! becomes a [`Probe`]: what kind of packet it is and which scanner
//! signature, if any, it carries.
//!
//! Classification looks at one packet only. It knows nothing of sources,
//! ports or time; that is `track` and `policy`. The signatures come from
//! each tool's source: nmap 7.93 (`tcpip.cc`, `nmap.h`, and `osscan2.cc` for
//! the OS probes), masscan 1.3.2 (`templ-pkt.c`), zmap 2.1.1 to 4.1
//! (`packet.c`, `module_tcp_synscan.c`) and hping3 (`sendtcp.c`). Each is
//! checked against captures of the real tool in `tests/fixtures/`, except
//! zmap 4.1's layout, which only unit tests cover (Debian ships 2.1.1).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::wire::{Icmp, PacketView, Tcp, TcpFlags, Transport};

/// What a single packet is, as far as scan detection cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// A SYN: a new TCP connection.
    TcpSyn,
    /// A TCP segment of a known flow.
    TcpFlow,
    /// No flags at all (nmap -sN).
    TcpNull,
    /// FIN alone, outside a flow (nmap -sF).
    TcpFin,
    /// FIN+URG and any superset, such as FIN+PSH+URG (nmap -sX).
    TcpXmas,
    /// FIN+ACK outside a flow (nmap -sM).
    TcpMaimon,
    /// ACK outside a flow (nmap -sA and -sW).
    TcpAck,
    /// RST outside a flow.
    TcpRst,
    /// SYN+FIN: illegal.
    TcpSynFin,
    /// SYN+RST: illegal.
    TcpSynRst,
    /// SYN+ACK that answers nothing we sent: backscatter or a probe.
    TcpSynAck,
    /// Other flag sets outside a flow (PSH or URG alone): illegal.
    TcpIllegal,
    /// A UDP datagram to a port.
    Udp,
    /// A UDP datagram of a known flow.
    UdpFlow,
    /// ICMP or ICMPv6 echo request.
    IcmpEcho,
    /// ICMP timestamp request.
    IcmpTimestamp,
    /// ICMP address-mask request.
    IcmpAddressMask,
    /// Any other ICMP message: replies, errors, neighbour discovery.
    IcmpOther,
    /// SCTP.
    Sctp,
    /// A later IP fragment: no transport header.
    Fragment,
    /// Any other IP protocol.
    OtherProtocol,
}

impl ProbeKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 21] = [
        Self::TcpSyn,
        Self::TcpFlow,
        Self::TcpNull,
        Self::TcpFin,
        Self::TcpXmas,
        Self::TcpMaimon,
        Self::TcpAck,
        Self::TcpRst,
        Self::TcpSynFin,
        Self::TcpSynRst,
        Self::TcpSynAck,
        Self::TcpIllegal,
        Self::Udp,
        Self::UdpFlow,
        Self::IcmpEcho,
        Self::IcmpTimestamp,
        Self::IcmpAddressMask,
        Self::IcmpOther,
        Self::Sctp,
        Self::Fragment,
        Self::OtherProtocol,
    ];

    /// A short stable name, used in logs, JSON and summaries.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpSyn => "tcp-syn",
            Self::TcpFlow => "tcp-flow",
            Self::TcpNull => "tcp-null",
            Self::TcpFin => "tcp-fin",
            Self::TcpXmas => "tcp-xmas",
            Self::TcpMaimon => "tcp-maimon",
            Self::TcpAck => "tcp-ack",
            Self::TcpRst => "tcp-rst",
            Self::TcpSynFin => "tcp-syn-fin",
            Self::TcpSynRst => "tcp-syn-rst",
            Self::TcpSynAck => "tcp-syn-ack",
            Self::TcpIllegal => "tcp-illegal",
            Self::Udp => "udp",
            Self::UdpFlow => "udp-flow",
            Self::IcmpEcho => "icmp-echo",
            Self::IcmpTimestamp => "icmp-timestamp",
            Self::IcmpAddressMask => "icmp-address-mask",
            Self::IcmpOther => "icmp-other",
            Self::Sctp => "sctp",
            Self::Fragment => "fragment",
            Self::OtherProtocol => "other-protocol",
        }
    }

    /// Bit used in per-source "kinds seen" masks.
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Kinds that no real stack sends outside a connection (stealth scans
    /// and illegal flag sets).
    pub const fn is_stealth(self) -> bool {
        matches!(
            self,
            Self::TcpNull
                | Self::TcpFin
                | Self::TcpXmas
                | Self::TcpMaimon
                | Self::TcpAck
                | Self::TcpRst
                | Self::TcpSynFin
                | Self::TcpSynRst
                | Self::TcpIllegal
        )
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scanner tool recognised from one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fingerprint {
    /// nmap's raw SYN: window 1024, options exactly MSS 1460, no DF.
    NmapSyn,
    /// masscan: window 1024/1025 and IP ID = (dst ^ dport ^ seq), or no options at all.
    Masscan,
    /// zmap: IP ID 54321 or, since 4.1, Windows-style options without DF; window 65535.
    Zmap,
    /// hping3 and other crafters: a non-zero ack without the ACK flag.
    Hping3,
    /// nmap's ICMP echo: no payload at all.
    NmapEcho,
    /// nmap's stealth probes (-sF, -sN, -sX, -sM, -sA, -sW): outside a flow,
    /// no SYN, window 1024, no options, no DF, and seq 0 when ACK is set.
    NmapStealth,
}

impl Fingerprint {
    /// Every fingerprint.
    pub const ALL: [Self; 6] =
        [Self::NmapSyn, Self::Masscan, Self::Zmap, Self::Hping3, Self::NmapEcho, Self::NmapStealth];

    /// The rule name, as in `[fingerprints]` of the rules file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NmapSyn => "nmap-syn",
            Self::Masscan => "masscan",
            Self::Zmap => "zmap",
            Self::Hping3 => "hping3",
            Self::NmapEcho => "nmap-echo",
            Self::NmapStealth => "nmap-stealth",
        }
    }

    /// The tool a human would name.
    pub const fn tool(self) -> &'static str {
        match self {
            Self::NmapSyn | Self::NmapEcho | Self::NmapStealth => "nmap",
            Self::Masscan => "masscan",
            Self::Zmap => "zmap",
            Self::Hping3 => "hping3",
        }
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of nmap's OS-detection probes (`osscan2.cc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsProbe {
    /// SEQ #1, which is also T1.
    Seq1,
    /// SEQ #2.
    Seq2,
    /// SEQ #3.
    Seq3,
    /// SEQ #4.
    Seq4,
    /// SEQ #5.
    Seq5,
    /// SEQ #6.
    Seq6,
    /// The ECN probe.
    Ecn,
    /// T2: no flags, DF, to an open port.
    T2,
    /// T3: SYN+FIN+PSH+URG to an open port.
    T3,
    /// T4: ACK with DF to an open port.
    T4,
    /// T5: SYN to a closed port.
    T5,
    /// T6: ACK with DF to a closed port.
    T6,
    /// T7: FIN+PSH+URG to a closed port.
    T7,
    /// U1: 300 × 'C' to a closed UDP port.
    U1,
    /// IE1: echo with code 9.
    Ie1,
    /// IE2: echo with TOS 4.
    Ie2,
}

impl OsProbe {
    /// Every probe, in the order nmap sends them.
    pub const ALL: [Self; 16] = [
        Self::Seq1,
        Self::Seq2,
        Self::Seq3,
        Self::Seq4,
        Self::Seq5,
        Self::Seq6,
        Self::Ecn,
        Self::T2,
        Self::T3,
        Self::T4,
        Self::T5,
        Self::T6,
        Self::T7,
        Self::U1,
        Self::Ie1,
        Self::Ie2,
    ];

    /// A short stable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seq1 => "seq1",
            Self::Seq2 => "seq2",
            Self::Seq3 => "seq3",
            Self::Seq4 => "seq4",
            Self::Seq5 => "seq5",
            Self::Seq6 => "seq6",
            Self::Ecn => "ecn",
            Self::T2 => "t2",
            Self::T3 => "t3",
            Self::T4 => "t4",
            Self::T5 => "t5",
            Self::T6 => "t6",
            Self::T7 => "t7",
            Self::U1 => "u1",
            Self::Ie1 => "ie1",
            Self::Ie2 => "ie2",
        }
    }

    /// The bit of this probe in a probe mask.
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A signature: a tool fingerprint or an nmap OS probe. Serialised as its
/// name (`nmap-syn`, `nmap-os-t2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signature {
    /// A scanner fingerprint.
    Tool(Fingerprint),
    /// An nmap OS-detection probe.
    OsProbe(OsProbe),
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tool(t) => f.write_str(t.name()),
            Self::OsProbe(p) => write!(f, "nmap-os-{}", p.name()),
        }
    }
}

/// The transport protocols port sets are kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Another IP protocol: the "port" is the protocol number (`nmap -sO`).
    Ip,
}

impl PortProto {
    /// Index into per-protocol arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Ip => "ip",
        }
    }

    /// The protocol [`PortProto::name`] calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Tcp, Self::Udp, Self::Sctp, Self::Ip].into_iter().find(|p| p.name() == name)
    }
}

/// A classified packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Its kind.
    pub kind: ProbeKind,
    /// A scanner signature, if one matched.
    pub signature: Option<Signature>,
    /// Destination port and protocol, for TCP, UDP and SCTP.
    pub port: Option<(PortProto, u16)>,
}

/// Classifies an inbound packet. `in_flow` says whether its 4-tuple belongs
/// to a flow the engine saw start.
pub fn classify(view: &PacketView<'_>, in_flow: bool) -> Probe {
    match &view.transport {
        Transport::Tcp(tcp) => {
            let kind = tcp_kind(tcp.flags, in_flow);
            let signature =
                os_probe_tcp(tcp).map(Signature::OsProbe).or_else(|| tcp_tool(view, tcp, kind));
            Probe { kind, signature, port: Some((PortProto::Tcp, tcp.dst_port)) }
        }
        Transport::Udp(udp) => {
            let kind = if in_flow { ProbeKind::UdpFlow } else { ProbeKind::Udp };
            let is_u1 = view.ip.id == 0x1042
                && udp.payload.len() == 300
                && udp.payload.iter().all(|&b| b == b'C');
            let signature = is_u1.then_some(Signature::OsProbe(OsProbe::U1));
            Probe { kind, signature, port: Some((PortProto::Udp, udp.dst_port)) }
        }
        Transport::Icmp(icmp) => {
            let (kind, signature) = icmp_kind(view, icmp);
            Probe { kind, signature, port: None }
        }
        Transport::Sctp { dst_port, .. } => Probe {
            kind: ProbeKind::Sctp,
            signature: None,
            port: Some((PortProto::Sctp, *dst_port)),
        },
        Transport::Fragment => Probe { kind: ProbeKind::Fragment, signature: None, port: None },
        Transport::Other(protocol) => Probe {
            kind: ProbeKind::OtherProtocol,
            signature: None,
            port: Some((PortProto::Ip, u16::from(*protocol))),
        },
    }
}

/// The kind of a TCP segment from its flags.
pub fn tcp_kind(flags: TcpFlags, in_flow: bool) -> ProbeKind {
    const SYN: u16 = TcpFlags::SYN;
    const FIN: u16 = TcpFlags::FIN;
    const RST: u16 = TcpFlags::RST;
    const ACK: u16 = TcpFlags::ACK;
    const URG: u16 = TcpFlags::URG;
    let f = flags.classic();
    let has = |mask: u16| f & mask == mask;
    // Illegal everywhere, in a flow or not.
    if has(SYN | FIN) {
        return ProbeKind::TcpSynFin;
    }
    if has(SYN | RST) {
        return ProbeKind::TcpSynRst;
    }
    if f == 0 {
        return ProbeKind::TcpNull;
    }
    if has(FIN | URG) {
        return ProbeKind::TcpXmas;
    }
    if has(SYN) && !has(ACK) {
        return ProbeKind::TcpSyn;
    }
    if in_flow {
        return ProbeKind::TcpFlow;
    }
    if has(SYN) {
        ProbeKind::TcpSynAck
    } else if has(RST) {
        ProbeKind::TcpRst
    } else if has(FIN | ACK) {
        ProbeKind::TcpMaimon
    } else if has(FIN) {
        ProbeKind::TcpFin
    } else if has(ACK) {
        ProbeKind::TcpAck
    } else {
        ProbeKind::TcpIllegal
    }
}

/// Concatenates byte slices at compile time.
// Only ever evaluated in `const` items: an index out of bounds fails the build.
#[allow(clippy::indexing_slicing)]
const fn cat<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    out
}

/// nmap's TCP timestamp option in OS probes: TSval 0xFFFFFFFF, TSecr 0.
const TS: [u8; 10] = [0x08, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00];
const SEQ1_OPTS: [u8; 20] =
    cat(&[&[0x03, 0x03, 0x0a, 0x01, 0x02, 0x04, 0x05, 0xb4], &TS, &[0x04, 0x02]]);
const SEQ2_OPTS: [u8; 20] =
    cat(&[&[0x02, 0x04, 0x05, 0x78, 0x03, 0x03, 0x00, 0x04, 0x02], &TS, &[0x00]]);
const SEQ3_OPTS: [u8; 20] =
    cat(&[&TS, &[0x01, 0x01, 0x03, 0x03, 0x05, 0x01, 0x02, 0x04, 0x02, 0x80]]);
const SEQ4_OPTS: [u8; 16] = cat(&[&[0x04, 0x02], &TS, &[0x03, 0x03, 0x0a, 0x00]]);
const SEQ5_OPTS: [u8; 20] =
    cat(&[&[0x02, 0x04, 0x02, 0x18, 0x04, 0x02], &TS, &[0x03, 0x03, 0x0a, 0x00]]);
const SEQ6_OPTS: [u8; 16] = cat(&[&[0x02, 0x04, 0x01, 0x09, 0x04, 0x02], &TS]);
const ECN_OPTS: [u8; 12] = [0x03, 0x03, 0x0a, 0x01, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x01, 0x01];
const T2_OPTS: [u8; 20] =
    cat(&[&[0x03, 0x03, 0x0a, 0x01, 0x02, 0x04, 0x01, 0x09], &TS, &[0x04, 0x02]]);
const T7_OPTS: [u8; 20] =
    cat(&[&[0x03, 0x03, 0x0f, 0x01, 0x02, 0x04, 0x01, 0x09], &TS, &[0x04, 0x02]]);

/// Exact flags (classic six plus ECE/CWR), window and options of each TCP OS probe.
const OS_TCP_PROBES: [(OsProbe, u16, u16, &[u8]); 13] = {
    use TcpFlags as F;
    [
        (OsProbe::Seq1, F::SYN, 1, &SEQ1_OPTS),
        (OsProbe::Seq2, F::SYN, 63, &SEQ2_OPTS),
        (OsProbe::Seq3, F::SYN, 4, &SEQ3_OPTS),
        (OsProbe::Seq4, F::SYN, 4, &SEQ4_OPTS),
        (OsProbe::Seq5, F::SYN, 16, &SEQ5_OPTS),
        (OsProbe::Seq6, F::SYN, 512, &SEQ6_OPTS),
        (OsProbe::Ecn, F::SYN | F::ECE | F::CWR, 3, &ECN_OPTS),
        (OsProbe::T2, 0, 128, &T2_OPTS),
        (OsProbe::T3, F::SYN | F::FIN | F::PSH | F::URG, 256, &T2_OPTS),
        (OsProbe::T4, F::ACK, 1024, &T2_OPTS),
        (OsProbe::T5, F::SYN, 31337, &T2_OPTS),
        (OsProbe::T6, F::ACK, 32768, &T2_OPTS),
        (OsProbe::T7, F::FIN | F::PSH | F::URG, 65535, &T7_OPTS),
    ]
};

/// True when `options` is `want` followed only by zero padding.
fn options_are(options: &[u8], want: &[u8]) -> bool {
    options.strip_prefix(want).is_some_and(|pad| pad.iter().all(|&b| b == 0))
}

fn os_probe_tcp(tcp: &Tcp<'_>) -> Option<OsProbe> {
    let flags = tcp.flags.0 & (TcpFlags::CLASSIC | TcpFlags::ECE | TcpFlags::CWR);
    OS_TCP_PROBES
        .iter()
        .find(|(_, f, w, opts)| *f == flags && *w == tcp.window && options_are(tcp.options, opts))
        .map(|(probe, ..)| *probe)
}

const NMAP_SYN_OPTS: [u8; 4] = [0x02, 0x04, 0x05, 0xb4];
const ZMAP_41_OPTS: [u8; 12] =
    [0x02, 0x04, 0x05, 0xb4, 0x01, 0x03, 0x03, 0x08, 0x01, 0x01, 0x04, 0x02];

fn tcp_tool(view: &PacketView<'_>, tcp: &Tcp<'_>, kind: ProbeKind) -> Option<Signature> {
    let f = tcp.flags.classic();
    let ack_flag = f & TcpFlags::ACK != 0;
    let bare_syn = f == TcpFlags::SYN;
    if bare_syn && tcp.window == 1024 && tcp.options == NMAP_SYN_OPTS && !view.ip.df {
        return Some(Signature::Tool(Fingerprint::NmapSyn));
    }
    if bare_syn && (tcp.window == 1024 || tcp.window == 1025) {
        let ip_id_matches = match view.ip.dst {
            IpAddr::V4(dst) => {
                let x = u32::from(dst) ^ u32::from(tcp.dst_port) ^ tcp.seq;
                view.ip.id == (x & 0xffff) as u16
            }
            IpAddr::V6(_) => false,
        };
        if ip_id_matches || tcp.options.is_empty() {
            return Some(Signature::Tool(Fingerprint::Masscan));
        }
    }
    if bare_syn
        && tcp.window == 65535
        && (view.ip.id == 54321
            || (view.ip.src.is_ipv4() && !view.ip.df && tcp.options == ZMAP_41_OPTS))
    {
        return Some(Signature::Tool(Fingerprint::Zmap));
    }
    if kind.is_stealth()
        && kind != ProbeKind::TcpRst
        && tcp.window == 1024
        && tcp.options.is_empty()
        && !view.ip.df
        && (!ack_flag || tcp.seq == 0)
    {
        return Some(Signature::Tool(Fingerprint::NmapStealth));
    }
    if tcp.ack != 0 && !ack_flag && f & TcpFlags::RST == 0 {
        return Some(Signature::Tool(Fingerprint::Hping3));
    }
    None
}

fn icmp_kind(view: &PacketView<'_>, icmp: &Icmp<'_>) -> (ProbeKind, Option<Signature>) {
    let echo = if icmp.v6 { 128 } else { 8 };
    if icmp.kind == echo {
        let zeros = |n: usize| icmp.payload.len() == n && icmp.payload.iter().all(|&b| b == 0);
        let signature = if !icmp.v6 && icmp.code == 9 && icmp.sequence() == 295 && zeros(120) {
            Some(Signature::OsProbe(OsProbe::Ie1))
        } else if !icmp.v6 && view.ip.tos == 4 && icmp.sequence() == 296 && zeros(150) {
            Some(Signature::OsProbe(OsProbe::Ie2))
        } else if icmp.payload.is_empty() {
            Some(Signature::Tool(Fingerprint::NmapEcho))
        } else {
            None
        };
        return (ProbeKind::IcmpEcho, signature);
    }
    let kind = match (icmp.v6, icmp.kind) {
        (false, 13) => ProbeKind::IcmpTimestamp,
        (false, 17) => ProbeKind::IcmpAddressMask,
        _ => ProbeKind::IcmpOther,
    };
    (kind, None)
}

#[cfg(test)]
mod tests;
