//! Link layers a capture may carry, stripped before the engine sees a packet.
//!
//! NFQUEUE hands over bare IP, so only replay needs this. Each function
//! returns the offset of the IP header, or `None` when the frame carries no
//! IP packet (ARP, LLDP, a truncated frame).

/// The link types portcloak can replay, by their pcap `LINKTYPE_*` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// BSD loopback/null: a 4-byte address family in host byte order (0).
    Null,
    /// Ethernet II, with any number of 802.1Q/802.1ad tags (1).
    Ethernet,
    /// Raw IPv4 or IPv6 (101, 228, 229).
    Raw,
    /// OpenBSD loopback: a 4-byte address family in network order (108).
    Loop,
    /// Linux cooked capture v1 (113).
    LinuxSll,
    /// Linux cooked capture v2 (276).
    LinuxSll2,
}

impl LinkType {
    /// Maps a pcap link-type number, or `None` for one portcloak cannot read.
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        Some(match linktype {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 | 228 | 229 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const VLAN_TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// Tags beyond this many are treated as garbage rather than looped over.
const MAX_VLAN_TAGS: usize = 4;

/// Offset of the IP header inside `frame`, or `None` if it holds no IP packet.
pub fn ip_offset(link: LinkType, frame: &[u8]) -> Option<usize> {
    let offset = match link {
        LinkType::Raw => 0,
        LinkType::Ethernet => ethernet(frame)?,
        LinkType::LinuxSll => ip_ethertype(be16(frame, 14)?).then_some(16)?,
        LinkType::LinuxSll2 => ip_ethertype(be16(frame, 0)?).then_some(20)?,
        LinkType::Null => {
            let raw: [u8; 4] = frame.get(..4)?.try_into().ok()?;
            // The family is in the capturing host's byte order: accept both.
            let family = u32::from_le_bytes(raw).min(u32::from_be_bytes(raw));
            bsd_family_is_ip(family).then_some(4)?
        }
        LinkType::Loop => {
            let raw: [u8; 4] = frame.get(..4)?.try_into().ok()?;
            bsd_family_is_ip(u32::from_be_bytes(raw)).then_some(4)?
        }
    };
    (frame.len() > offset).then_some(offset)
}

fn ethernet(frame: &[u8]) -> Option<usize> {
    let mut offset = 12;
    for _ in 0..=MAX_VLAN_TAGS {
        let ethertype = be16(frame, offset)?;
        if VLAN_TAGS.contains(&ethertype) {
            offset += 4;
            continue;
        }
        return ip_ethertype(ethertype).then_some(offset + 2);
    }
    None
}

fn ip_ethertype(ethertype: u16) -> bool {
    ethertype == ETHERTYPE_IPV4 || ethertype == ETHERTYPE_IPV6
}

/// AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD/OpenBSD),
/// 28 (FreeBSD) or 30 (macOS).
fn bsd_family_is_ip(family: u32) -> bool {
    matches!(family, 2 | 10 | 24 | 28 | 30)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*pair.first()?, *pair.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ether(tags: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for tag in tags {
            f.extend_from_slice(&tag.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.push(0x45);
        f
    }

    #[test]
    fn ethernet_with_vlans() {
        assert_eq!(ip_offset(LinkType::Ethernet, &ether(&[], 0x0800)), Some(14));
        assert_eq!(ip_offset(LinkType::Ethernet, &ether(&[0x8100], 0x86dd)), Some(18));
        assert_eq!(ip_offset(LinkType::Ethernet, &ether(&[0x88a8, 0x8100], 0x0800)), Some(22));
        assert_eq!(ip_offset(LinkType::Ethernet, &ether(&[], 0x0806)), None);
        assert_eq!(ip_offset(LinkType::Ethernet, &ether(&[0x8100; 9], 0x0800)), None);
        assert_eq!(ip_offset(LinkType::Ethernet, &[0u8; 13]), None);
    }

    #[test]
    fn cooked_and_null() {
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00, 0x45]);
        assert_eq!(ip_offset(LinkType::LinuxSll, &sll), Some(16));
        let mut sll2 = vec![0x86, 0xdd];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.push(0x60);
        assert_eq!(ip_offset(LinkType::LinuxSll2, &sll2), Some(20));
        assert_eq!(ip_offset(LinkType::Null, &[2, 0, 0, 0, 0x45]), Some(4));
        assert_eq!(ip_offset(LinkType::Null, &[0, 0, 0, 30, 0x60]), Some(4));
        assert_eq!(ip_offset(LinkType::Loop, &[0, 0, 0, 2, 0x45]), Some(4));
        assert_eq!(ip_offset(LinkType::Null, &[7, 0, 0, 0, 0x45]), None);
        assert_eq!(ip_offset(LinkType::Raw, &[]), None);
        assert_eq!(LinkType::from_pcap(147), None);
    }
}
