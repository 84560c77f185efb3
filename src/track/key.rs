//! Keys of the tracking tables: who a source is, and which flow a packet is in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// A tracked source: an IPv4 address, or an IPv6 prefix (a /64 by default).
///
/// One IPv6 host can use a whole /64, so tracking single IPv6 addresses would
/// let it scan from a fresh address per probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// The address, masked to the prefix, as big-endian bytes; an IPv4
    /// address sits in the low four bytes. Bytes rather than a `u128` keep
    /// the key at 18 bytes with no alignment padding in the tables.
    addr: [u8; 16],
    /// Prefix length; 32 for IPv4.
    len: u8,
    v6: bool,
}

impl SourceKey {
    /// The key for `ip`, with IPv6 addresses cut to `v6_prefix` bits.
    pub fn new(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                Self { addr: u128::from(u32::from(v4)).to_be_bytes(), len: 32, v6: false }
            }
            IpAddr::V6(v6) => {
                let len = v6_prefix.min(128);
                Self { addr: (u128::from(v6) & prefix_mask(len)).to_be_bytes(), len, v6: true }
            }
        }
    }

    /// True for IPv6 keys.
    pub const fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// The network address (the IPv4 address itself).
    pub fn ip(&self) -> IpAddr {
        let addr = u128::from_be_bytes(self.addr);
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(addr))
        } else {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(addr).unwrap_or(0)))
        }
    }

    /// Prefix length: 32 for IPv4, the configured prefix for IPv6.
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The wider IPv6 network of `len` bits this key lies in; an IPv4 key,
    /// or one already as wide, is itself.
    #[must_use]
    pub fn widen(self, len: u8) -> Self {
        if !self.v6 || len >= self.len {
            return self;
        }
        Self::new(self.ip(), len)
    }

    /// A 32-bit name of this key, unique among the keys of one wider
    /// network for the usual prefixes (a /64 among the /64s of its /48
    /// differs in the low 16 bits); a collision only merges two.
    pub(crate) fn fold(&self) -> u32 {
        let addr = u128::from_be_bytes(self.addr);
        let x = ((addr >> 64) as u64) ^ (addr as u64);
        (x ^ (x >> 32)) as u32
    }
}

/// A mask with the top `len` bits of 128 set.
pub(crate) fn prefix_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v6 && self.len < 128 {
            write!(f, "{}/{}", self.ip(), self.len)
        } else {
            write!(f, "{}", self.ip())
        }
    }
}

impl Serialize for SourceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A flow as seen from this host: the remote end, the local end and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Remote address.
    pub remote: IpAddr,
    /// Local address.
    pub local: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Local port.
    pub local_port: u16,
    /// IP protocol.
    pub protocol: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_group_by_prefix() {
        let a: IpAddr = "fd5c:a11:1:2:aaaa::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let b: IpAddr = "fd5c:a11:1:2:bbbb::9".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(SourceKey::new(a, 64), SourceKey::new(b, 64));
        assert_ne!(SourceKey::new(a, 128), SourceKey::new(b, 128));
        assert_eq!(SourceKey::new(a, 64).to_string(), "fd5c:a11:1:2::/64");
        assert_eq!(SourceKey::new(a, 128).to_string(), "fd5c:a11:1:2:aaaa::1");
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        assert_eq!(SourceKey::new(v4, 64).to_string(), "198.18.0.9");
        assert_eq!(SourceKey::new(v4, 64).ip(), v4);
        assert_eq!(std::mem::size_of::<SourceKey>(), 18);
        assert_eq!(SourceKey::new(a, 64).widen(48).to_string(), "fd5c:a11:1::/48");
        assert_eq!(SourceKey::new(a, 64).widen(48), SourceKey::new(b, 48));
        assert_eq!(SourceKey::new(a, 64).widen(96), SourceKey::new(a, 64), "never narrower");
        assert_eq!(SourceKey::new(v4, 64).widen(16), SourceKey::new(v4, 64));
        let subnet =
            |i: u16| SourceKey::new(IpAddr::V6(Ipv6Addr::new(0xfd5c, 0xa11, 1, i, 0, 0, 0, 1)), 64);
        let folds: std::collections::HashSet<u32> =
            (0..=u16::MAX).map(|i| subnet(i).fold()).collect();
        assert_eq!(folds.len(), 1 << 16, "the /64s of one /48 never collide");
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(200), u128::MAX);
    }
}
