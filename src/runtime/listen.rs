//! LISTEN: which ports the host really serves, read from
//! `/proc/net/{tcp,tcp6,udp,udp6}` and handed to the engine's port map, so
//! a service started after portcloak is not treated as closed; and the
//! host's own addresses, which are never banned.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::classify::PortProto;
use crate::config::PortList;
use crate::policy::PortMap;

/// TCP's LISTEN state in the `st` column.
const TCP_LISTEN: &str = "0A";
/// An unconnected UDP socket (TCP_CLOSE in the `st` column).
const UDP_UNCONNECTED: &str = "07";

/// Reads the listening sockets of this network namespace and sets them as
/// the engine's listening ports.
pub fn refresh(ports: &PortMap) {
    for (proto, files, state) in [
        (PortProto::Tcp, ["/proc/net/tcp", "/proc/net/tcp6"], TCP_LISTEN),
        (PortProto::Udp, ["/proc/net/udp", "/proc/net/udp6"], UDP_UNCONNECTED),
    ] {
        let mut found = BTreeSet::new();
        for file in files {
            if let Ok(text) = std::fs::read_to_string(file) {
                found.extend(listening(&text, state));
            }
        }
        ports.set_listening(proto, &PortList::from_ports(found));
    }
}

/// This namespace's own addresses: IPv4 local and broadcast addresses
/// from `/proc/net/fib_trie`, IPv6 from `/proc/net/if_inet6`.
pub fn local_addresses() -> Vec<IpAddr> {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let mut addrs = fib_trie_addresses(&read("/proc/net/fib_trie"));
    addrs.extend(if_inet6_addresses(&read("/proc/net/if_inet6")));
    addrs
}

/// The addresses the kernel's routing trie calls LOCAL or BROADCAST: each
/// `|-- ADDR` line is followed by its `/32 host LOCAL` or `/32 link
/// BROADCAST` leaf.
pub fn fib_trie_addresses(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.trim().parse().ok();
        } else if line.starts_with("/32")
            && (line.ends_with("LOCAL") || line.ends_with("BROADCAST"))
        {
            out.extend(last.map(IpAddr::V4));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The addresses of `/proc/net/if_inet6`: 32 hex digits per line.
pub fn if_inet6_addresses(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 32)?;
            Some(IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

/// Ports of sockets in `state` that are reachable from outside: sockets
/// bound to a loopback address are left out, since no remote packet can
/// reach them. UDP sockets count only while unconnected.
pub fn listening<'a>(text: &'a str, state: &'a str) -> impl Iterator<Item = u16> + 'a {
    text.lines().skip(1).filter_map(move |line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1)?;
        let remote = f.next()?;
        if f.next()? != state {
            return None;
        }
        let (addr, port) = local.split_once(':')?;
        if state == UDP_UNCONNECTED && !remote.ends_with(":0000") {
            return None;
        }
        if is_loopback(addr) {
            return None;
        }
        u16::from_str_radix(port, 16).ok()
    })
}

/// `addr` as /proc prints it: 8 hex digits (IPv4) or 32 (IPv6, four
/// words), each word a native-endian integer holding network-order bytes.
fn is_loopback(addr: &str) -> bool {
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match addr.len() {
        8 => word(0).is_some_and(|b| b[0] == 127),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                match word(i) {
                    Some(w) => chunk.copy_from_slice(&w),
                    None => return false,
                }
            }
            let ip = std::net::Ipv6Addr::from(bytes);
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 010112C6:0050 020112C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 010112C6:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:0019 00000000000000000000000000000000:0000 0A 0
";
    const UDP: &str = "   sl  local_address rem_address   st
  1: 00000000:0035 00000000:0000 07 0
  2: 0100007F:0035 00000000:0000 07 0
  3: 00000000:E000 020112C6:0035 01 0
  4: 00000000:1000 020112C6:0035 07 0
";

    #[test]
    fn own_addresses_from_the_routing_trie_and_if_inet6() {
        let trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 198.18.1.0
        /24 link UNICAST
     |-- 198.18.1.1
        /32 host LOCAL
     |-- 198.18.1.255
        /32 link BROADCAST
Local:
     |-- 198.18.1.1
        /32 host LOCAL
";
        let v4: Vec<String> = fib_trie_addresses(trie).iter().map(ToString::to_string).collect();
        assert_eq!(v4, ["198.18.1.1", "198.18.1.255"]);
        let inet6 = "fd5c0a11000100000000000000000001 03 40 00 80 pc-sa
fe80000000000000a8c1abfffe1e8d13 03 40 20 80 pc-sa
short 01 80 10 80 lo
";
        let v6: Vec<String> = if_inet6_addresses(inet6).iter().map(ToString::to_string).collect();
        assert_eq!(v6, ["fd5c:a11:1::1", "fe80::a8c1:abff:fe1e:8d13"]);
    }

    #[test]
    fn listening_sockets_reachable_from_outside() {
        assert_eq!(listening(TCP, TCP_LISTEN).collect::<Vec<_>>(), [22, 8080]);
        assert_eq!(listening(TCP6, TCP_LISTEN).collect::<Vec<_>>(), [443]);
        assert_eq!(listening(UDP, UDP_UNCONNECTED).collect::<Vec<_>>(), [53]);
    }
}
