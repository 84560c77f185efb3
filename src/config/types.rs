//! Value types of the rules file, each parsed (not merely validated) while
//! the file is read.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::time::{format_duration, parse_duration};
use crate::track::SourceKey;

/// What a probe rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop the packet and ban the source at once.
    Ban,
    /// Drop the packet; count it towards the closed-port threshold.
    Drop,
    /// The rule is switched off: the packet is handled like any other.
    Off,
}

/// What to do with a SYN or datagram to a closed port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedPorts {
    /// Drop silently: nmap reads "filtered".
    Drop,
    /// Accept, so the kernel answers with RST or ICMP port unreachable.
    Reject,
}

/// Accept or drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
}

/// A duration written as `250ms`, `90s`, `10m`, `1h` or `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(Duration);

impl Dur {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Self).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid duration `{text}`: write a number and a unit: ms, s, m, h or d"
            ))
        })
    }
}

/// An address block, such as `198.18.0.0/15` or `fd5c:a11::/32`. A bare
/// address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// True when `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V6(_)) => {
                SourceKey::new(self.addr, self.len) == SourceKey::new(ip, self.len)
            }
            _ => false,
        }
    }
}

impl Cidr {
    /// True for an IPv4 block.
    pub const fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The block with its host bits cleared, as firewalls want it written.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(v4) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(_) => SourceKey::new(self.addr, self.len).ip(),
        };
        Self { addr, len: self.len }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr =
            addr.trim().parse().map_err(|_| format!("invalid address in `{text}`"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max),
            None => Some(max),
        };
        let len = len.ok_or_else(|| format!("invalid prefix length in `{text}`: at most {max}"))?;
        Ok(Self { addr, len })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A set of ports, written as a list of numbers and `"low-high"` ranges.
#[derive(Clone, Default)]
pub struct PortList {
    /// Empty, or 1024 words.
    bits: Box<[u64]>,
}

impl PartialEq for PortList {
    fn eq(&self, other: &Self) -> bool {
        self.words().eq(other.words())
    }
}

impl Eq for PortList {}

impl PortList {
    /// True when `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.bits.get(usize::from(port / 64)).is_some_and(|w| w & (1 << (port % 64)) != 0)
    }

    /// The set as 1024 64-bit words, bit `p % 64` of word `p / 64` for port `p`.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        (0..1024).map(|i| self.bits.get(i).copied().unwrap_or(0))
    }

    /// Number of ports in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds a set from ports.
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut bits = vec![0u64; 1024].into_boxed_slice();
        for p in ports {
            if let Some(w) = bits.get_mut(usize::from(p / 64)) {
                *w |= 1 << (p % 64);
            }
        }
        Self { bits }
    }
}

impl fmt::Debug for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<u16> = (0..=u16::MAX).filter(|p| self.contains(*p)).take(32).collect();
        write!(f, "PortList({ports:?}{})", if self.len() > 32 { "…" } else { "" })
    }
}

impl Serialize for PortList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..=u16::MAX).filter(|p| self.contains(*p)))
    }
}

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            One(i64),
            Range(String),
        }
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = PortList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ports (1-65535) and \"low-high\" ranges")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PortList, A::Error> {
                let mut ports = Vec::new();
                while let Some(item) = seq.next_element::<Item>()? {
                    match item {
                        Item::One(p) => ports.push(port(p).map_err(de::Error::custom)?),
                        Item::Range(r) => {
                            let (lo, hi) = r.split_once('-').ok_or_else(|| {
                                de::Error::custom(format!("invalid port range `{r}`"))
                            })?;
                            let parse = |s: &str| {
                                s.trim()
                                    .parse::<i64>()
                                    .map_err(|_| format!("invalid port range `{r}`"))
                            };
                            let lo = port(parse(lo).map_err(de::Error::custom)?)
                                .map_err(de::Error::custom)?;
                            let hi = port(parse(hi).map_err(de::Error::custom)?)
                                .map_err(de::Error::custom)?;
                            if lo > hi {
                                return Err(de::Error::custom(format!(
                                    "port range `{r}` runs backwards"
                                )));
                            }
                            ports.extend(lo..=hi);
                        }
                    }
                }
                Ok(PortList::from_ports(ports))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

fn port(p: i64) -> Result<u16, String> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {p} is outside 1-65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contains("198.19.255.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!c.contains("198.20.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        let v6: Cidr = "fd5c:a11::/32".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains("fd5c:a11:9::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!v6.contains("198.18.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        let all: Cidr = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains("8.8.8.8".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn port_lists() {
        let p = PortList::from_ports([22, 80, 65535]);
        assert!(p.contains(22) && p.contains(65535) && !p.contains(23));
        assert_eq!(p.len(), 3);
        assert_eq!(port(0), Err("port 0 is outside 1-65535".to_owned()));
    }
}
