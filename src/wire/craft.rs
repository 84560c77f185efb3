//! Builds packets byte by byte, for unit tests, benches and the no-panic sweep.
//!
//! Every field a probe signature looks at can be set (TTL, IP ID, DF, TOS,
//! window, urgent pointer, raw option bytes), and checksums come out right
//! unless [`Craft::bad_checksum`] asks otherwise. Nothing here runs on the
//! per-packet path.

use std::net::IpAddr;

use super::checksum;

/// What goes above the IP header.
#[derive(Clone, Debug)]
enum Upper {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u16,
        window: u16,
        urgent: u16,
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
    Raw {
        protocol: u8,
    },
}

/// A packet under construction.
#[derive(Clone, Debug)]
pub struct Craft {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    id: u16,
    df: bool,
    tos: u8,
    upper: Upper,
    payload: Vec<u8>,
    bad_checksum: bool,
    partial_checksum: bool,
}

impl Craft {
    fn new(src: IpAddr, dst: IpAddr, upper: Upper) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            id: 1,
            df: true,
            tos: 0,
            upper,
            payload: Vec::new(),
            bad_checksum: false,
            partial_checksum: false,
        }
    }

    /// A TCP segment with the given flags (see [`super::TcpFlags`]).
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u16) -> Self {
        let upper = Upper::Tcp {
            sport,
            dport,
            seq: 1,
            ack: 0,
            flags,
            window: 64_240,
            urgent: 0,
            options: Vec::new(),
        };
        Self::new(src, dst, upper)
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, Upper::Udp { sport, dport })
    }

    /// An ICMP (IPv4 source) or ICMPv6 (IPv6 source) message.
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8) -> Self {
        Self::new(src, dst, Upper::Icmp { kind, code, rest: [0, 1, 0, 1] })
    }

    /// A bare IP packet of another protocol.
    pub fn raw(src: IpAddr, dst: IpAddr, protocol: u8) -> Self {
        Self::new(src, dst, Upper::Raw { protocol })
    }

    /// Sets the TTL or hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the IPv4 identification.
    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// Sets or clears IPv4 don't-fragment.
    pub fn df(mut self, df: bool) -> Self {
        self.df = df;
        self
    }

    /// Sets TOS / traffic class.
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets TCP seq and ack.
    pub fn seq_ack(mut self, seq_v: u32, ack_v: u32) -> Self {
        if let Upper::Tcp { seq, ack, .. } = &mut self.upper {
            *seq = seq_v;
            *ack = ack_v;
        }
        self
    }

    /// Sets the TCP window.
    pub fn window(mut self, w: u16) -> Self {
        if let Upper::Tcp { window, .. } = &mut self.upper {
            *window = w;
        }
        self
    }

    /// Sets the TCP urgent pointer.
    pub fn urgent(mut self, u: u16) -> Self {
        if let Upper::Tcp { urgent, .. } = &mut self.upper {
            *urgent = u;
        }
        self
    }

    /// Sets raw TCP option bytes; they are zero-padded to a multiple of four.
    pub fn options(mut self, bytes: &[u8]) -> Self {
        if let Upper::Tcp { options, .. } = &mut self.upper {
            *options = bytes.to_vec();
            while options.len() % 4 != 0 {
                options.push(0);
            }
        }
        self
    }

    /// Sets the ICMP bytes 4..8 (identifier and sequence for echo).
    pub fn icmp_rest(mut self, bytes: [u8; 4]) -> Self {
        if let Upper::Icmp { rest, .. } = &mut self.upper {
            *rest = bytes;
        }
        self
    }

    /// Corrupts the transport checksum (or the IP one, for raw packets).
    pub fn bad_checksum(mut self) -> Self {
        self.bad_checksum = true;
        self
    }

    /// Leaves the TCP or UDP checksum as a kernel with checksum offload
    /// hands it to the NIC: the pseudo-header's sum alone.
    pub fn partial_checksum(mut self) -> Self {
        self.partial_checksum = true;
        self
    }

    /// Serialises the packet, starting at the IP header.
    pub fn build(&self) -> Vec<u8> {
        let (protocol, mut l4) = self.upper_bytes();
        l4.extend_from_slice(&self.payload);
        let csum_at = match self.upper {
            Upper::Tcp { .. } => Some(16),
            Upper::Udp { .. } | Upper::Icmp { .. } => {
                Some(if matches!(self.upper, Upper::Udp { .. }) { 6 } else { 2 })
            }
            Upper::Raw { .. } => None,
        };
        if let Some(at) = csum_at {
            let icmp_v4 = matches!(self.upper, Upper::Icmp { .. }) && self.src.is_ipv4();
            let initial = if icmp_v4 {
                0
            } else {
                checksum::pseudo_header(self.src, self.dst, protocol, l4.len())
            };
            let mut c = checksum::compute(initial, &l4);
            if matches!(self.upper, Upper::Udp { .. }) && c == 0 {
                c = 0xffff;
            }
            if self.bad_checksum {
                c ^= 0x5a5a;
            }
            if self.partial_checksum && !icmp_v4 {
                c = checksum::fold(initial);
            }
            if let Some(field) = l4.get_mut(at..at + 2) {
                field.copy_from_slice(&c.to_be_bytes());
            }
        }
        let mut out = self.ip_header(protocol, l4.len());
        if csum_at.is_none() && self.bad_checksum {
            if let Some(b) = out.get_mut(10) {
                *b ^= 0x5a;
            }
        }
        out.extend_from_slice(&l4);
        out
    }

    fn upper_bytes(&self) -> (u8, Vec<u8>) {
        match &self.upper {
            Upper::Tcp { sport, dport, seq, ack, flags, window, urgent, options } => {
                let mut b = Vec::with_capacity(20 + options.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                let offset = u16::try_from((20 + options.len()) / 4).unwrap_or(15).min(15);
                b.extend_from_slice(&((offset << 12) | (flags & 0x1ff)).to_be_bytes());
                b.extend_from_slice(&window.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&urgent.to_be_bytes());
                b.extend_from_slice(options);
                (6, b)
            }
            Upper::Udp { sport, dport } => {
                let len = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                (17, b)
            }
            Upper::Icmp { kind, code, rest } => {
                let mut b = vec![*kind, *code, 0, 0];
                b.extend_from_slice(rest);
                (if self.src.is_ipv4() { 1 } else { 58 }, b)
            }
            Upper::Raw { protocol } => (*protocol, Vec::new()),
        }
    }

    fn ip_header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut h = Vec::with_capacity(40);
                let tc = u32::from(self.tos);
                h.extend_from_slice(&((6u32 << 28) | (tc << 20)).to_be_bytes());
                h.extend_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
                h.push(protocol);
                h.push(self.ttl);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h
            }
            (s, d) => {
                let (s, d) = match (s, d) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets(), d.octets()),
                    _ => ([0; 4], [0; 4]),
                };
                let total = u16::try_from(20 + l4_len).unwrap_or(u16::MAX);
                let mut h = vec![0x45, self.tos];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&self.id.to_be_bytes());
                h.extend_from_slice(&(if self.df { 0x4000u16 } else { 0 }).to_be_bytes());
                h.extend_from_slice(&[self.ttl, protocol, 0, 0]);
                h.extend_from_slice(&s);
                h.extend_from_slice(&d);
                let c = checksum::compute(0, &h);
                if let Some(field) = h.get_mut(10..12) {
                    field.copy_from_slice(&c.to_be_bytes());
                }
                h
            }
        }
    }
}

/// Sets the TCP or UDP checksum of an IP packet, whose buffer ends where
/// its IP length says, to what a kernel with checksum offload leaves for
/// the NIC, the pseudo-header's sum alone, as a capture taken before the
/// NIC shows it. Other packets are left alone.
pub fn leave_checksum_for_nic(packet: &mut [u8]) {
    let Some((at, view)) = checksum_field(packet) else { return };
    let len = packet.len().saturating_sub(view.l4_offset);
    let sum = checksum::pseudo_header(view.ip.src, view.ip.dst, view.ip.protocol, len);
    if let Some(field) = packet.get_mut(at..at + 2) {
        field.copy_from_slice(&checksum::fold(sum).to_be_bytes());
    }
}

/// Makes the TCP or UDP checksum of an IP packet wrong, as nmap's
/// `--badsum` does. Other packets are left alone.
pub fn spoil_checksum(packet: &mut [u8]) {
    let Some((at, _)) = checksum_field(packet) else { return };
    if let Some(b) = packet.get_mut(at) {
        *b ^= 0x5a;
    }
}

/// Where the TCP or UDP checksum of an IP packet is, and what the packet's
/// headers say (its checksums unsummed).
fn checksum_field(packet: &[u8]) -> Option<(usize, super::PacketView<'_>)> {
    let view = super::parse_headers(packet).ok()?;
    let whole = matches!(view.transport, super::Transport::Tcp(_) | super::Transport::Udp(_));
    let at = checksum::tcp_udp_field(view.ip.protocol).filter(|_| whole)?;
    Some((view.l4_offset + at, view))
}
