//! The survey: one pass over a capture before replay, to find the host's
//! own addresses and the ports it answered on.

use std::collections::HashMap;

use lru::DefaultHasher;
use std::net::IpAddr;
use std::path::Path;

use lru::LruCache;

use super::checksums::Sample;
use super::{ReplayError, ip_bytes};
use crate::classify::PortProto;
use crate::config::Cidr;
use crate::engine::Engine;
use crate::io::pcap::PcapReader;
use crate::wire::{self, TcpFlags, Transport};

/// Addresses the survey remembers of each kind (SYN-ACK senders, UDP
/// answerers, destinations).
pub const SURVEY_HOSTS: usize = 256;
/// Datagrams the survey remembers, to find the ones answered.
pub(super) const DATAGRAMS: usize = 1 << 16;

/// What one pass over a capture, before replaying it, learns. Each map
/// remembers the first [`SURVEY_HOSTS`] addresses.
#[derive(Debug, Default)]
pub(super) struct Survey {
    /// Senders of SYN-ACKs, with the ports they sent them from.
    syn_ack: HashMap<IpAddr, PortBits, DefaultHasher>,
    /// Senders of UDP datagrams that answered one, with their ports.
    udp_answers: HashMap<IpAddr, PortBits, DefaultHasher>,
    /// Distinct TCP and UDP ports each address was sent to.
    ports_to: HashMap<IpAddr, [PortBits; 2], DefaultHasher>,
    /// Packets each address received.
    received: HashMap<IpAddr, u64, DefaultHasher>,
    /// The checksums of the first TCP and UDP packets.
    pub(super) checksums: Sample,
    /// Recent datagrams, to find the ones answered.
    datagrams: Datagrams,
}

/// The last [`DATAGRAMS`] datagrams: (source, port, destination, port).
#[derive(Debug)]
struct Datagrams(LruCache<(IpAddr, u16, IpAddr, u16), ()>);

impl Default for Datagrams {
    fn default() -> Self {
        Self(crate::track::bounded_lru(DATAGRAMS))
    }
}

impl Datagrams {
    /// Records a datagram; true when it answers one seen before, the same
    /// pair of ends the other way round.
    fn answers(&mut self, (src, sport): (IpAddr, u16), (dst, dport): (IpAddr, u16)) -> bool {
        let answered = self.0.contains(&(dst, dport, src, sport));
        self.0.put((src, sport, dst, dport), ());
        answered
    }
}

/// A set of ports: a short list while it holds at most [`FEW_PORTS`], then
/// 8 KiB of bits. Most addresses of a capture see a few ports, and the
/// pages of a bitmap each would cost more than the survey's reading.
#[derive(Clone, Debug)]
pub(super) enum PortBits {
    Few(Vec<u16>),
    Many(Box<[u64; 1024]>),
}

/// Ports a set lists before it turns to bits.
const FEW_PORTS: usize = 32;

impl Default for PortBits {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl PortBits {
    fn insert(&mut self, port: u16) {
        match self {
            Self::Few(ports) if ports.contains(&port) => {}
            Self::Few(ports) if ports.len() < FEW_PORTS => ports.push(port),
            Self::Few(ports) => {
                let mut bits = Box::new([0u64; 1024]);
                for p in ports.iter().copied().chain([port]) {
                    set(&mut bits, p);
                }
                *self = Self::Many(bits);
            }
            Self::Many(bits) => set(bits, port),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Few(ports) => ports.len(),
            Self::Many(bits) => bits.iter().map(|w| w.count_ones() as usize).sum(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        let (few, many) = match self {
            Self::Few(ports) => (Some(ports.iter().copied()), None),
            Self::Many(bits) => (None, Some(bits)),
        };
        let bits = many.into_iter().flat_map(|bits| {
            (0..=u16::MAX)
                .filter(|p| bits.get(usize::from(p >> 6)).is_some_and(|w| w >> (p & 63) & 1 == 1))
        });
        few.into_iter().flatten().chain(bits)
    }
}

fn set(bits: &mut [u64; 1024], port: u16) {
    if let Some(word) = bits.get_mut(usize::from(port >> 6)) {
        *word |= 1 << (port & 63);
    }
}

/// The entry for `key` in `map`, unless `map` is full and lacks it.
pub(super) fn bounded<V: Default>(
    map: &mut HashMap<IpAddr, V, DefaultHasher>,
    key: IpAddr,
) -> Option<&mut V> {
    if map.len() >= SURVEY_HOSTS && !map.contains_key(&key) {
        return None;
    }
    Some(map.entry(key).or_default())
}

impl Survey {
    /// Surveys the capture at `path`, one pass over the whole file.
    pub(super) fn of(path: &Path) -> Result<Self, ReplayError> {
        let mut survey = Self::default();
        let mut reader = PcapReader::open(path)?;
        while let Some(frame) = reader.next_frame()? {
            survey.add(frame.linktype, frame.data);
        }
        Ok(survey)
    }

    /// Takes one frame into account.
    pub(super) fn add(&mut self, linktype: u32, frame: &[u8]) {
        // Checksums are summed only for the sample.
        let parse = if self.checksums.full() { wire::parse_headers } else { wire::parse };
        let Some(view) = ip_bytes(linktype, frame).and_then(|b| parse(b).ok()) else {
            return;
        };
        self.checksums.add(&view);
        let (src, dst) = (view.ip.src, view.ip.dst);
        if let Some(n) = bounded(&mut self.received, dst) {
            *n += 1;
        }
        match view.transport {
            Transport::Tcp(t) if t.flags.classic() == TcpFlags::SYN | TcpFlags::ACK => {
                if let Some(ports) = bounded(&mut self.syn_ack, src) {
                    ports.insert(t.src_port);
                }
            }
            Transport::Tcp(t) => {
                if let Some([tcp, _]) = bounded(&mut self.ports_to, dst) {
                    tcp.insert(t.dst_port);
                }
            }
            Transport::Udp(u) => {
                if let Some([_, udp]) = bounded(&mut self.ports_to, dst) {
                    udp.insert(u.dst_port);
                }
                if self.datagrams.answers((src, u.src_port), (dst, u.dst_port)) {
                    if let Some(ports) = bounded(&mut self.udp_answers, src) {
                        ports.insert(u.src_port);
                    }
                }
            }
            _ => {}
        }
    }

    /// The capturing host's own addresses: the senders of SYN-ACKs; else
    /// the address sent to the most distinct ports (a scan target); else
    /// the busiest destination.
    pub(super) fn local(&self) -> Vec<Cidr> {
        let most = |counts: Vec<(IpAddr, usize)>| {
            counts.into_iter().max_by_key(|(ip, n)| (*n, *ip)).map(|(ip, _)| ip)
        };
        let chosen: Vec<IpAddr> = if !self.syn_ack.is_empty() {
            self.syn_ack.keys().copied().collect()
        } else if let Some(ip) = most(
            self.ports_to.iter().map(|(ip, [tcp, udp])| (*ip, tcp.len() + udp.len())).collect(),
        ) {
            vec![ip]
        } else {
            most(self.received.iter().map(|(ip, n)| (*ip, *n as usize)).collect())
                .into_iter()
                .collect()
        };
        chosen.into_iter().filter_map(|ip| ip.to_string().parse().ok()).collect()
    }

    /// Marks the ports the local host answered on as open in `engine`.
    pub(super) fn learn_ports(&self, engine: &Engine, local: &[Cidr]) {
        let is_local = |ip: &IpAddr| local.iter().any(|c| c.contains(*ip));
        for (proto, answers) in
            [(PortProto::Tcp, &self.syn_ack), (PortProto::Udp, &self.udp_answers)]
        {
            for port in answers.iter().filter(|(ip, _)| is_local(ip)).flat_map(|(_, p)| p.iter()) {
                engine.ports().learn(proto, port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_set_lists_few_ports_and_turns_to_bits_for_many() {
        let mut set = PortBits::default();
        for p in [80, 443, 80] {
            set.insert(p);
        }
        assert!(matches!(set, PortBits::Few(_)));
        assert_eq!((set.len(), set.iter().collect::<Vec<_>>()), (2, vec![80, 443]));
        let many: Vec<u16> = (0..1000).map(|i| i * 65).collect();
        for p in many.iter().chain(&many) {
            set.insert(*p);
        }
        assert!(matches!(set, PortBits::Many(_)));
        let mut want: Vec<u16> = many.into_iter().chain([80, 443]).collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(set.len(), want.len());
        assert_eq!(set.iter().collect::<Vec<_>>(), want);
    }
}
