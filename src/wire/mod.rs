//! PARSE: bytes that start at an IP header, turned into a borrowed [`PacketView`].
//!
//! This module reads header layouts. It uses etherparse for IPv4 (with
//! options and fragments), IPv6 (with extension headers), TCP, UDP and
//! ICMP; SCTP is recognised by its common header. [`rewrite`] edits them in
//! place for the persona, and builds its resets; `craft` builds packets
//! for tests, benches and doc examples (the `craft` feature; not in the
//! shipped binary).
//! `etherparse` types stop here: the rest of the engine sees only our views.
//!
//! The contract, as in smoltcp's `wire`: [`parse`] accepts any byte slice and
//! returns a view or an [`Error`]; it never panics and never allocates.
//! Checksums are verified where the packet is whole; a packet cut short (by a
//! snap length or NFQUEUE's copy range) reports [`Checksum::Unverified`].

pub(crate) mod checksum;
#[cfg(any(test, feature = "craft"))]
pub mod craft;
pub mod link;
pub mod rewrite;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpNumber, Ipv6ExtensionSlice, LaxIpSlice, TcpSlice};

pub use self::link::LinkType;

/// Why a packet could not be parsed. Small and `Copy`: it is built per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// Not an IPv4 or IPv6 header, or one too short or inconsistent to read.
    Ip,
    /// An IPv6 extension header chain that could not be walked.
    Ipv6Extension,
    /// A TCP header shorter than its data offset, or with a bad data offset.
    Tcp,
    /// A UDP header shorter than 8 bytes.
    Udp,
    /// An ICMP or ICMPv6 header shorter than 8 bytes.
    Icmp,
    /// An SCTP common header shorter than 12 bytes.
    Sctp,
}

impl Error {
    /// A short stable name, used in logs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ip => "malformed-ip",
            Self::Ipv6Extension => "malformed-ipv6-ext",
            Self::Tcp => "malformed-tcp",
            Self::Udp => "malformed-udp",
            Self::Icmp => "malformed-icmp",
            Self::Sctp => "malformed-sctp",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Error {}

/// Result of checksum verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Every checksum the packet carries is correct.
    Valid,
    /// The IP header checksum or the L4 checksum is wrong.
    Bad,
    /// The TCP or UDP checksum holds only the pseudo-header's sum: the
    /// sending kernel left it for the NIC to complete (checksum offload,
    /// `CHECKSUM_PARTIAL`), and a capture taken before the NIC, on the
    /// sending host or across a veth, shows it so. Any other wrong value is
    /// [`Checksum::Bad`]. The IP header checksum, if any, was correct.
    Partial,
    /// The packet is cut short or fragmented, so the L4 checksum cannot be
    /// computed. The IP header checksum, if any, was correct.
    Unverified,
}

/// Where a packet sits in a fragment train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset zero with more fragments to come: the L4 header is here.
    First,
    /// Any later fragment: there is no L4 header.
    Later,
}

/// TCP flag bits, as in the header's low 9 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// FIN.
    pub const FIN: u16 = 0x001;
    /// SYN.
    pub const SYN: u16 = 0x002;
    /// RST.
    pub const RST: u16 = 0x004;
    /// PSH.
    pub const PSH: u16 = 0x008;
    /// ACK.
    pub const ACK: u16 = 0x010;
    /// URG.
    pub const URG: u16 = 0x020;
    /// ECE.
    pub const ECE: u16 = 0x040;
    /// CWR.
    pub const CWR: u16 = 0x080;
    /// The six classic flags: FIN SYN RST PSH ACK URG.
    pub const CLASSIC: u16 = 0x03f;

    /// True when every bit of `mask` is set.
    pub const fn has(self, mask: u16) -> bool {
        self.0 & mask == mask
    }

    /// The classic six flags only, without ECE/CWR/NS.
    pub const fn classic(self) -> u16 {
        self.0 & Self::CLASSIC
    }
}

/// A TCP header, copied out of the packet (the options stay borrowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, whether or not ACK is set.
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Window field, unscaled.
    pub window: u16,
    /// Urgent pointer, whether or not URG is set.
    pub urgent: u16,
    /// Raw option bytes, padding included.
    pub options: &'a [u8],
    /// Bytes of payload present in the buffer.
    pub payload_len: usize,
}

/// A UDP header and its payload as present in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload bytes present in the buffer.
    pub payload: &'a [u8],
}

/// An ICMP (v4 or v6) message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp<'a> {
    /// True for ICMPv6.
    pub v6: bool,
    /// Type.
    pub kind: u8,
    /// Code.
    pub code: u8,
    /// Bytes 4..8 of the header: identifier and sequence for echo.
    pub rest: [u8; 4],
    /// Everything after the 8-byte header.
    pub payload: &'a [u8],
}

impl Icmp<'_> {
    /// Identifier of an echo, timestamp or address-mask message.
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.rest[0], self.rest[1]])
    }

    /// Sequence number of an echo message.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.rest[2], self.rest[3]])
    }
}

/// The transport layer of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport<'a> {
    /// TCP.
    Tcp(Tcp<'a>),
    /// UDP.
    Udp(Udp<'a>),
    /// ICMP or ICMPv6.
    Icmp(Icmp<'a>),
    /// SCTP, recognised by its ports only.
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// A later fragment: no transport header in this packet.
    Fragment,
    /// Any other IP protocol, by number.
    Other(u8),
}

/// The IP-level fields the engine looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL, or the IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification; zero for IPv6.
    pub id: u16,
    /// IPv4 don't-fragment bit; false for IPv6.
    pub df: bool,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// Transport protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// Fragment position.
    pub fragment: Fragment,
}

/// One parsed packet, borrowing its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// IP layer.
    pub ip: Ip,
    /// Transport layer.
    pub transport: Transport<'a>,
    /// Checksum verdict.
    pub checksum: Checksum,
    /// True when the buffer holds less than the IP length says.
    pub truncated: bool,
    /// Where the transport header starts in the buffer (after IPv4
    /// options or IPv6 extension headers).
    pub l4_offset: usize,
}

/// Parses a packet that starts at its IP header.
pub fn parse(bytes: &[u8]) -> Result<PacketView<'_>, Error> {
    parse_with(bytes, true)
}

/// [`parse`] without summing anything: the view's checksum is
/// [`Checksum::Unverified`]. For a first look at a packet whose checksums
/// do not matter (replay's survey of a capture).
pub fn parse_headers(bytes: &[u8]) -> Result<PacketView<'_>, Error> {
    parse_with(bytes, false)
}

fn parse_with(bytes: &[u8], verify: bool) -> Result<PacketView<'_>, Error> {
    let (ip_slice, ext_err) = LaxIpSlice::from_slice(bytes).map_err(|_| Error::Ip)?;
    let payload = ip_slice.payload();
    let protocol = payload.ip_number;
    let l4 = payload.payload;
    let truncated = payload.incomplete;
    // `l4` is a sub-slice of `bytes`: the difference of their starts is
    // the transport header's offset.
    let l4_offset = (l4.as_ptr() as usize).saturating_sub(bytes.as_ptr() as usize);
    let (ip, header_ok) = match &ip_slice {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            let fragment = fragment_of(h.fragments_offset().value(), h.more_fragments());
            let ip = Ip {
                src: IpAddr::V4(Ipv4Addr::from(h.source())),
                dst: IpAddr::V4(Ipv4Addr::from(h.destination())),
                ttl: h.ttl(),
                id: h.identification(),
                df: h.dont_fragment(),
                tos: (h.dcp().value() << 2) | h.ecn().value(),
                protocol: protocol.0,
                fragment,
            };
            (ip, !verify || checksum::verifies(0, h.slice()))
        }
        LaxIpSlice::Ipv6(v6) => {
            if ext_err.is_some() {
                return Err(Error::Ipv6Extension);
            }
            let h = v6.header();
            let mut fragment = Fragment::Whole;
            for ext in v6.extensions().clone() {
                if let Ipv6ExtensionSlice::Fragment(f) = ext {
                    fragment = fragment_of(f.fragment_offset().value(), f.more_fragments());
                }
            }
            let ip = Ip {
                src: IpAddr::V6(Ipv6Addr::from(h.source())),
                dst: IpAddr::V6(Ipv6Addr::from(h.destination())),
                ttl: h.hop_limit(),
                id: 0,
                df: false,
                tos: h.traffic_class(),
                protocol: protocol.0,
                fragment,
            };
            (ip, true)
        }
    };
    let transport =
        if ip.fragment == Fragment::Later { Transport::Fragment } else { transport(protocol, l4)? };
    let checksum = if !header_ok {
        Checksum::Bad
    } else if !verify || truncated || ip.fragment != Fragment::Whole {
        Checksum::Unverified
    } else if l4_checksum_ok(&ip, protocol, l4) {
        Checksum::Valid
    } else if l4_checksum_partial(&ip, protocol, l4) {
        Checksum::Partial
    } else {
        Checksum::Bad
    };
    Ok(PacketView { ip, transport, checksum, truncated, l4_offset })
}

fn fragment_of(offset: u16, more: bool) -> Fragment {
    match (offset, more) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    }
}

fn transport(protocol: IpNumber, l4: &[u8]) -> Result<Transport<'_>, Error> {
    Ok(match protocol {
        IpNumber::TCP => {
            let tcp = TcpSlice::from_slice(l4).map_err(|_| Error::Tcp)?;
            let raw = tcp.header_slice();
            let flags = match raw.get(12..14) {
                Some(&[hi, lo]) => u16::from_be_bytes([hi & 0x01, lo]),
                _ => 0,
            };
            Transport::Tcp(Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                flags: TcpFlags(flags),
                window: tcp.window_size(),
                urgent: tcp.urgent_pointer(),
                options: raw.get(20..).unwrap_or_default(),
                payload_len: tcp.payload().len(),
            })
        }
        IpNumber::UDP => {
            let (src_port, dst_port) = ports(l4).ok_or(Error::Udp)?;
            let payload = l4.get(8..).ok_or(Error::Udp)?;
            Transport::Udp(Udp { src_port, dst_port, payload })
        }
        IpNumber::ICMP | IpNumber::IPV6_ICMP => {
            let header: [u8; 8] = l4.get(..8).and_then(|h| h.try_into().ok()).ok_or(Error::Icmp)?;
            Transport::Icmp(Icmp {
                v6: protocol == IpNumber::IPV6_ICMP,
                kind: header[0],
                code: header[1],
                rest: [header[4], header[5], header[6], header[7]],
                payload: l4.get(8..).unwrap_or_default(),
            })
        }
        IpNumber::SCTP => {
            if l4.len() < 12 {
                return Err(Error::Sctp);
            }
            let (src_port, dst_port) = ports(l4).ok_or(Error::Sctp)?;
            Transport::Sctp { src_port, dst_port }
        }
        other => Transport::Other(other.0),
    })
}

fn ports(l4: &[u8]) -> Option<(u16, u16)> {
    match l4.get(..8)? {
        [a, b, c, d, ..] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

fn l4_checksum_ok(ip: &Ip, protocol: IpNumber, l4: &[u8]) -> bool {
    let pseudo = || checksum::pseudo_header(ip.src, ip.dst, protocol.0, l4.len());
    match protocol {
        IpNumber::TCP | IpNumber::IPV6_ICMP => checksum::verifies(pseudo(), l4),
        IpNumber::UDP => {
            let zero = l4.get(6..8) == Some(&[0, 0]);
            // A zero UDP checksum means "none" over IPv4, and is illegal over IPv6.
            if zero { ip.src.is_ipv4() } else { checksum::verifies(pseudo(), l4) }
        }
        IpNumber::ICMP => checksum::verifies(0, l4),
        // SCTP uses CRC32c, which portcloak does not check; others carry none we know.
        _ => true,
    }
}

/// True when a TCP or UDP checksum field holds the folded sum of the
/// pseudo-header alone, as Linux leaves it for the NIC under checksum
/// offload (`~csum_tcpudp_magic(..., 0)`). One's complement has two zeros,
/// so 0 and 0xffff are the same value here.
fn l4_checksum_partial(ip: &Ip, protocol: IpNumber, l4: &[u8]) -> bool {
    let Some(at) = checksum::tcp_udp_field(protocol.0) else { return false };
    let Some(&[hi, lo]) = l4.get(at..at + 2) else { return false };
    let field = u16::from_be_bytes([hi, lo]);
    let partial = checksum::fold(checksum::pseudo_header(ip.src, ip.dst, protocol.0, l4.len()));
    let norm = |v: u16| if v == 0xffff { 0 } else { v };
    norm(field) == norm(partial)
}

/// The 4-tuple of the packet an ICMP error quotes, as the quoted packet saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quoted {
    /// Source of the quoted packet (our host, for errors we send).
    pub src: IpAddr,
    /// Destination of the quoted packet.
    pub dst: IpAddr,
    /// IP protocol of the quoted packet.
    pub protocol: u8,
    /// Source port, or the ICMP identifier.
    pub src_port: u16,
    /// Destination port, or zero.
    pub dst_port: u16,
}

/// Reads the header quoted inside an ICMP error message (type 3, 11 or 12 for
/// ICMPv4; 1 to 4 for ICMPv6), if it is there.
pub fn quoted(icmp: &Icmp<'_>) -> Option<Quoted> {
    let is_error =
        if icmp.v6 { (1..=4).contains(&icmp.kind) } else { matches!(icmp.kind, 3 | 11 | 12) };
    if !is_error {
        return None;
    }
    let (inner, _) = LaxIpSlice::from_slice(icmp.payload).ok()?;
    let (src, dst) = (inner.source_addr(), inner.destination_addr());
    let payload = inner.payload();
    let (src_port, dst_port) = match payload.ip_number {
        IpNumber::TCP | IpNumber::UDP | IpNumber::SCTP => ports_prefix(payload.payload)?,
        _ => (0, 0),
    };
    Some(Quoted { src, dst, protocol: payload.ip_number.0, src_port, dst_port })
}

fn ports_prefix(l4: &[u8]) -> Option<(u16, u16)> {
    match l4.get(..4)? {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

/// Source and destination of an IP packet, read straight from the header
/// without a full parse (for callers that must pick a direction first).
pub fn addresses(bytes: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match bytes.first()? >> 4 {
        4 => {
            let s: [u8; 4] = bytes.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 => {
            let s: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = bytes.get(24..40)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
