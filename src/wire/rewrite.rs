//! REWRITE: in-place edits of a parsed packet's header fields, each with
//! its checksums fixed incrementally (RFC 1624), so the work does not grow
//! with the payload; and the TCP reset a persona answers probes with.
//!
//! Every byte offset of these edits is here. `disguise` decides what to
//! set ([`Edits`]'s setters); [`Edits::apply`] writes it, and writes
//! nothing into a buffer that is not the one the edits were planned from.

use std::net::IpAddr;

use super::{PacketView, Transport, checksum};

/// The longest TCP option area.
pub const MAX_OPTIONS: usize = 40;

/// One TCP option of a SYN-ACK, as p0f names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpOpt {
    /// Maximum segment size.
    Mss,
    /// Window scale.
    Ws,
    /// SACK permitted.
    Sok,
    /// Timestamps.
    Ts,
}

/// Every edit of one packet, as plain values: planned from a view (which
/// borrows the buffer), applied once the view is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    v4: bool,
    l4: usize,
    /// Offset of the transport checksum, for edits of transport bytes.
    l4_checksum: Option<usize>,
    ttl: Option<u8>,
    ip_id: Option<u16>,
    df: Option<bool>,
    window: Option<u16>,
    ack: Option<u32>,
    /// ICMP type and new code.
    icmp: Option<(u8, u8)>,
    options: Option<([u8; MAX_OPTIONS], usize)>,
}

impl Edits {
    /// No edits yet, for the packet `view` shows: where its headers and
    /// checksums are.
    pub fn for_view(view: &PacketView<'_>) -> Self {
        let l4 = view.l4_offset;
        let l4_checksum = match view.transport {
            Transport::Tcp(_) => Some(l4 + 16),
            Transport::Icmp(_) => Some(l4 + 2),
            _ => None,
        };
        Self { v4: view.ip.src.is_ipv4(), l4, l4_checksum, ..Self::default() }
    }

    /// Sets the TTL (IPv6: the hop limit).
    pub const fn set_ttl(&mut self, ttl: u8) {
        self.ttl = Some(ttl);
    }

    /// Sets the IPv4 identification.
    pub const fn set_ip_id(&mut self, id: u16) {
        self.ip_id = Some(id);
    }

    /// Sets or clears IPv4's don't-fragment bit.
    pub const fn set_df(&mut self, df: bool) {
        self.df = Some(df);
    }

    /// Sets the TCP window field.
    pub const fn set_window(&mut self, window: u16) {
        self.window = Some(window);
    }

    /// Sets the TCP acknowledgement number.
    pub const fn set_ack(&mut self, ack: u32) {
        self.ack = Some(ack);
    }

    /// Sets the ICMP type and code.
    pub const fn set_icmp(&mut self, kind: u8, code: u8) {
        self.icmp = Some((kind, code));
    }

    /// Replaces the TCP option area with the first `len` bytes of
    /// `options`, which must be as long as the area it replaces.
    pub const fn set_options(&mut self, options: [u8; MAX_OPTIONS], len: usize) {
        self.options = Some((options, len));
    }

    /// True when there is anything to write.
    pub const fn changes(&self) -> bool {
        self.ttl.is_some()
            || self.ip_id.is_some()
            || self.df.is_some()
            || self.window.is_some()
            || self.ack.is_some()
            || self.icmp.is_some()
            || self.options.is_some()
    }

    /// Writes the edits into `packet`, the buffer they were planned from.
    /// `l4_partial`: the transport checksum holds only the pseudo-header
    /// sum (the NIC completes it), so transport edits leave it alone.
    /// Returns false, having written nothing, when the buffer is too short
    /// to be the one planned.
    pub fn apply(&self, packet: &mut [u8], l4_partial: bool) -> bool {
        let l4 = self.l4;
        let ends = [
            Some(if self.v4 { 20 } else { 40 }),
            self.l4_checksum.map(|s| s + 2),
            self.window.map(|_| l4 + 16),
            self.ack.map(|_| l4 + 12),
            self.icmp.map(|_| l4 + 2),
            self.options.map(|(_, n)| l4 + 20 + n),
        ];
        if ends.into_iter().flatten().any(|end| end > packet.len()) {
            return false;
        }
        let l4_sum = if l4_partial { None } else { self.l4_checksum };
        if self.v4 {
            if let Some(ttl) = self.ttl {
                let proto = packet.get(9).copied().unwrap_or(0);
                set(packet, Some(10), 8, &[ttl, proto]);
            }
            if let Some(id) = self.ip_id {
                set(packet, Some(10), 4, &id.to_be_bytes());
            }
            if let Some(df) = self.df {
                let old = match packet.get(6..8) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => 0,
                };
                let new = if df { old | 0x4000 } else { old & !0x4000 };
                set(packet, Some(10), 6, &new.to_be_bytes());
            }
        } else if let (Some(ttl), Some(hop)) = (self.ttl, packet.get_mut(7)) {
            *hop = ttl;
        }
        if let Some(w) = self.window {
            set(packet, l4_sum, l4 + 14, &w.to_be_bytes());
        }
        if let Some(ack) = self.ack {
            set(packet, l4_sum, l4 + 8, &ack.to_be_bytes());
        }
        if let Some((kind, code)) = self.icmp {
            set(packet, l4_sum, l4, &[kind, code]);
        }
        if let Some((bytes, n)) = &self.options
            && let Some(new) = bytes.get(..*n)
        {
            set(packet, l4_sum, l4 + 20, new);
        }
        true
    }
}

/// Overwrites the even-length, even-offset run at `at` with `new` and, when
/// `sum_at` is given, updates the checksum there: HC' = ~(~HC + ~m + m')
/// over each changed word (RFC 1624, eqn. 3). Every checksum portcloak
/// edits covers a region that starts at an even offset of the packet.
pub(crate) fn set(packet: &mut [u8], sum_at: Option<usize>, at: usize, new: &[u8]) {
    let Some(old) = packet.get(at..at + new.len()) else { return };
    if old == new {
        return;
    }
    if let Some(s) = sum_at
        && let Some(&[hi, lo]) = packet.get(s..s + 2)
    {
        let old_sum = u64::from(!checksum::fold(checksum::sum(0, old)));
        let acc = u64::from(!u16::from_be_bytes([hi, lo])) + old_sum;
        let updated = !checksum::fold(checksum::sum(acc, new));
        if let Some(field) = packet.get_mut(s..s + 2) {
            field.copy_from_slice(&updated.to_be_bytes());
        }
    }
    if let Some(target) = packet.get_mut(at..at + new.len()) {
        target.copy_from_slice(new);
    }
}

/// A bare TCP segment (no options, window 0, DF, TTL 64) from `src` to
/// `dst` with these ports, numbers and flags, checksums included: the
/// reset a persona answers a probe with. The bytes and their length.
pub fn tcp_reset(
    (src, dst): (IpAddr, IpAddr),
    (sport, dport): (u16, u16),
    (seq, ack): (u32, u32),
    flags: u16,
) -> Option<([u8; 60], usize)> {
    let mut bytes = [0u8; 60];
    let ip_len = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h: [u8; 20] = [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            bytes.get_mut(..20)?.copy_from_slice(&h);
            bytes.get_mut(12..16)?.copy_from_slice(&s.octets());
            bytes.get_mut(16..20)?.copy_from_slice(&d.octets());
            let c = checksum::compute(0, bytes.get(..20)?);
            bytes.get_mut(10..12)?.copy_from_slice(&c.to_be_bytes());
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.get_mut(..8)?.copy_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            bytes.get_mut(8..24)?.copy_from_slice(&s.octets());
            bytes.get_mut(24..40)?.copy_from_slice(&d.octets());
            40
        }
        _ => return None,
    };
    let tcp = bytes.get_mut(ip_len..ip_len + 20)?;
    tcp.get_mut(0..2)?.copy_from_slice(&sport.to_be_bytes());
    tcp.get_mut(2..4)?.copy_from_slice(&dport.to_be_bytes());
    tcp.get_mut(4..8)?.copy_from_slice(&seq.to_be_bytes());
    tcp.get_mut(8..12)?.copy_from_slice(&ack.to_be_bytes());
    *tcp.get_mut(12)? = 5 << 4;
    *tcp.get_mut(13)? = u8::try_from(flags).unwrap_or(0);
    let c = checksum::compute(checksum::pseudo_header(src, dst, 6, 20), tcp);
    tcp.get_mut(16..18)?.copy_from_slice(&c.to_be_bytes());
    Some((bytes, ip_len + 20))
}

/// The options of a SYN-ACK, as read.
#[derive(Clone, Copy, Debug, Default)]
struct SynAckOptions {
    mss: Option<[u8; 4]>,
    ws: Option<[u8; 3]>,
    sok: bool,
    ts: Option<[u8; 10]>,
}

impl SynAckOptions {
    /// Reads options made only of MSS, WS, SACK-permitted, timestamps,
    /// NOPs and a trailing EOL; anything else (or a repeat) is not ours to
    /// lay out, and gives `None`.
    fn read(bytes: &[u8]) -> Option<Self> {
        let mut o = Self::default();
        let mut i = 0;
        while let Some(&kind) = bytes.get(i) {
            match kind {
                0 => break,
                1 => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let len = usize::from(*bytes.get(i + 1)?);
            let opt = bytes.get(i..i + len)?;
            match (kind, len) {
                (2, 4) if o.mss.is_none() => o.mss = opt.try_into().ok(),
                (3, 3) if o.ws.is_none() => o.ws = opt.try_into().ok(),
                (4, 2) if !o.sok => o.sok = true,
                (8, 10) if o.ts.is_none() => o.ts = opt.try_into().ok(),
                _ => return None,
            }
            i += len;
        }
        Some(o)
    }

    fn has(&self, opt: TcpOpt) -> bool {
        match opt {
            TcpOpt::Mss => self.mss.is_some(),
            TcpOpt::Ws => self.ws.is_some(),
            TcpOpt::Sok => self.sok,
            TcpOpt::Ts => self.ts.is_some(),
        }
    }
}

/// The options of a SYN-ACK in `order`, each on a 4-byte boundary as BSD
/// and Windows lay them out (a last lone SACK-permitted padded with EOLs
/// after it under `eol_padding`), padded with EOL to the original length.
/// `None` when there is no order, the options are not all ones to move,
/// the layout would not fit, or nothing changes.
pub fn reorder_options(
    bytes: &[u8],
    order: &[TcpOpt],
    eol_padding: bool,
) -> Option<([u8; MAX_OPTIONS], usize)> {
    if order.is_empty() || bytes.len() > MAX_OPTIONS {
        return None;
    }
    let o = SynAckOptions::read(bytes)?;
    // Options the order leaves out keep their place after the others, so
    // none is ever lost.
    let all = [TcpOpt::Mss, TcpOpt::Ws, TcpOpt::Sok, TcpOpt::Ts];
    let mut seq = [TcpOpt::Mss; 4];
    let mut n = 0;
    for opt in order.iter().chain(all.iter().filter(|a| !order.contains(a))) {
        if o.has(*opt)
            && let Some(slot) = seq.get_mut(n)
        {
            *slot = *opt;
            n += 1;
        }
    }
    let mut out = [0u8; MAX_OPTIONS];
    let mut len = 0;
    let mut push = |part: &[u8]| -> Option<()> {
        out.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
        Some(())
    };
    let seq = seq.get(..n)?;
    let mut i = 0;
    while let Some(opt) = seq.get(i) {
        match opt {
            TcpOpt::Mss => push(&o.mss?)?,
            TcpOpt::Ws => {
                push(&[1])?;
                push(&o.ws?)?;
            }
            TcpOpt::Sok if seq.get(i + 1) == Some(&TcpOpt::Ts) => {
                push(&[4, 2])?;
                push(&o.ts?)?;
                i += 1;
            }
            TcpOpt::Sok if eol_padding && i + 1 == seq.len() => push(&[4, 2, 0, 0])?,
            TcpOpt::Sok => push(&[1, 1, 4, 2])?,
            TcpOpt::Ts => {
                push(&[1, 1])?;
                push(&o.ts?)?;
            }
        }
        i += 1;
    }
    if len > bytes.len() || out.get(..bytes.len())? == bytes {
        return None;
    }
    Some((out, bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_checksums_equal_a_full_recomputation() {
        // Edits at every even offset of a random header, against the sum
        // computed from scratch.
        let mut x: u32 = 0x9e37_79b9;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..500 {
            let mut bytes: Vec<u8> = (0..60).map(|_| rnd() as u8).collect();
            bytes[10..12].fill(0);
            let c = checksum::compute(0, &bytes);
            bytes[10..12].copy_from_slice(&c.to_be_bytes());
            let at = (rnd() as usize % 28) * 2;
            if at == 10 {
                continue;
            }
            let new: Vec<u8> = (0..2 + 2 * (rnd() as usize % 3)).map(|_| rnd() as u8).collect();
            if (10..12).any(|i| (at..at + new.len()).contains(&i)) {
                continue;
            }
            set(&mut bytes, Some(10), at, &new);
            assert!(checksum::verifies(0, &bytes), "edit at {at}");
        }
    }
}
