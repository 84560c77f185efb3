//! Internet checksums (RFC 1071) over borrowed bytes.
//!
//! Verification sums the received bytes, checksum field included; a correct
//! packet folds to `0xffff`. Nothing here allocates or panics.

use std::net::IpAddr;

/// Adds `bytes` as big-endian 16-bit words to a running sum.
///
/// An odd trailing byte is padded with zero, as RFC 1071 says. The bulk is
/// summed as 32-bit words: the one's-complement sum is the same after
/// folding (RFC 1071 §2), and it takes half the additions.
pub(crate) fn sum(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_be_bytes(w);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for pair in &mut pairs {
        if let [hi, lo] = pair {
            acc += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum into 16 bits.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 16 bits.
    u16::try_from(acc).unwrap_or(u16::MAX)
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    let acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(sum(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(sum(0, &s.octets()), &d.octets()),
        // Mixed families cannot come out of one IP header.
        _ => 0,
    };
    acc + u64::from(proto) + (len & 0xffff) + (len >> 16)
}

/// Where the checksum field of a TCP (6) or UDP (17) header lies, from the
/// header's start.
pub(crate) const fn tcp_udp_field(protocol: u8) -> Option<usize> {
    match protocol {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    }
}

/// True when `bytes` (checksum field included) sum to `0xffff`.
pub(crate) fn verifies(initial: u64, bytes: &[u8]) -> bool {
    fold(sum(initial, bytes)) == 0xffff
}

/// The checksum to store for `bytes` whose checksum field is zero.
pub(crate) fn compute(initial: u64, bytes: &[u8]) -> u16 {
    !fold(sum(initial, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to 0xddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &bytes)), 0xddf2);
        assert_eq!(fold(sum(0, &bytes[..6])), fold(sum(sum(0, &bytes[..2]), &bytes[2..6])));
    }

    /// The 32-bit bulk sum folds to the same value as plain 16-bit words.
    #[test]
    fn matches_the_plain_definition() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let plain: u64 = bytes
                .chunks(2)
                .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
                .sum();
            assert_eq!(fold(sum(0, &bytes)), fold(plain), "length {len}");
        }
    }

    #[test]
    fn odd_length_and_round_trip() {
        let mut bytes =
            vec![0x45, 0x00, 0x00, 0x1c, 0, 0, 0x40, 0x00, 0x40, 0x01, 0, 0, 10, 0, 0, 1];
        bytes.extend_from_slice(&[10, 0, 0, 2]);
        let c = compute(0, &bytes);
        bytes[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(0, &bytes));
        bytes[19] ^= 1;
        assert!(!verifies(0, &bytes));
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
    }
}
