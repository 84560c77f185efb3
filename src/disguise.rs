//! DISGUISE: rewrites the host's own replies in place, so that every field
//! nmap's OS detection and p0f score tells the story of one persona's OS.
//!
//! What is rewritten, and why each is safe for real connections, is in the
//! README's "OS personas". In short: the TTL (IPv6: hop limit), the IPv4 ID
//! (one counter per destination), the SYN-ACK's window field and option
//! layout, the ack number of RSTs without ACK, and the code and DF of echo
//! replies. Never an option's value, a scaled window, or anything the
//! kernel believes it negotiated.
//!
//! Two halves, because a parsed view borrows the buffer: [`Persona::plan`]
//! reads the view and decides every edit as plain values ([`Edits`], whose
//! offsets are `wire::rewrite`'s), and [`Edits::apply`] writes them and
//! fixes each checksum incrementally (RFC 1624), so the work does not grow
//! with the payload. A packet cut short by the
//! copy range, or a fragment, is never planned: it passes unmodified.
//!
//! [`Disguise`] is a persona at work in the engine: the persona, and the
//! side table of what it keeps per peer ([`Peer`]), made only when the
//! persona needs it.

use std::net::IpAddr;

use std::time::Duration;

use crate::classify::{OsProbe, Signature};
use crate::config::{EchoField, IpId, PersonaSpec, RstAck, TcpOpt, Tracking};
use crate::time::Timestamp;
use crate::track::{Evidence, SideTable, SourceKey};
use crate::wire::rewrite;
pub use crate::wire::rewrite::Edits;
use crate::wire::{Fragment, PacketView, TcpFlags, Transport};

/// What an OS persona keeps about one peer: the IP ID counter of the
/// replies it gets, and its latest echo request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The last IP ID sent to it; meaningful once `ip_id_started`.
    pub ip_id: u16,
    /// Whether the counter has been seeded.
    pub ip_id_started: bool,
    /// Its latest echo request had DF set.
    pub echo_df: bool,
    /// Identifier and sequence of its latest echo request, when it sent one.
    pub echo: Option<(u16, u16)>,
}

/// A peer's counters are no evidence: the table is a plain LRU, and a
/// peer pushed out starts a new counter from a new unpredictable value.
impl Evidence for Peer {
    fn evidence(&self, _now: Timestamp, _horizon: Duration) -> u32 {
        0
    }
}

/// What a persona does with an inbound packet the policy accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing: the packet goes on.
    Pass,
    /// An OS probe the persona's OS never answers, or answers with a reset
    /// of its own: dropped, with the reset to send, if any.
    Drop(Option<Reply>),
}

/// A persona at work: its rules, and what it keeps per peer.
#[derive(Debug)]
pub struct Disguise {
    persona: Persona,
    /// Per-peer IP ID counters and echo requests; `None` when the persona
    /// keeps neither.
    peers: Option<SideTable<Peer>>,
    /// Seeds each destination's first IP ID.
    seed: u64,
}

impl Disguise {
    /// The persona `spec` describes, with a peer table as large as the
    /// source table of `tracking` when it needs one.
    pub fn new(spec: &PersonaSpec, tracking: &Tracking) -> Self {
        let persona = Persona::new(spec);
        let peers =
            persona.needs_peer().then(|| SideTable::plain(tracking.sources, tracking.shards));
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0x5eed_u64);
        Self { persona, peers, seed }
    }

    /// Entries of the peer table and its capacity; (0, 0) without one.
    pub fn table(&self) -> (usize, usize) {
        self.peers.as_ref().map_or((0, 0), SideTable::fill)
    }

    /// The persona's say on an inbound packet from `peer` that the policy
    /// accepted: an OS probe its OS never answers is dropped, or answered
    /// with its own reset; the DF of an echo request is remembered when
    /// the persona copies it into the reply.
    pub fn inbound(
        &self,
        view: &PacketView<'_>,
        signature: Option<Signature>,
        peer: SourceKey,
    ) -> Answer {
        let p = &self.persona;
        let os_probe = match signature {
            Some(Signature::OsProbe(probe)) => Some(probe),
            _ => None,
        };
        if let Some(probe) = os_probe.filter(|x| p.silences(*x) || p.answers(*x)) {
            let reply = if p.answers(probe) {
                self.with_peer(peer, |state| p.reset(view, state, self.seed))
            } else {
                None
            };
            return Answer::Drop(reply);
        }
        if let Transport::Icmp(icmp) = view.transport
            && p.copies_echo_df()
            && !icmp.v6
            && icmp.kind == 8
        {
            self.with_peer(peer, |state| {
                if let Some(state) = state {
                    state.echo = Some((icmp.ident(), icmp.sequence()));
                    state.echo_df = view.ip.df;
                }
            });
        }
        Answer::Pass
    }

    /// The edits for a packet this host sends to `peer`; a forwarded
    /// packet (its TTL was the sender's to set) is never edited.
    pub fn outbound(
        &self,
        view: &PacketView<'_>,
        peer: SourceKey,
        forwarded: bool,
    ) -> Option<Edits> {
        if forwarded {
            return None;
        }
        // Only IPv4 replies carry what a persona keeps per peer (the IP ID;
        // the DF of echo requests).
        if view.ip.dst.is_ipv4() {
            self.with_peer(peer, |state| self.persona.plan(view, state, self.seed))
        } else {
            self.persona.plan(view, None, self.seed)
        }
    }

    /// Runs `f` on the state of `peer`, made if new, when the persona
    /// keeps any; on `None` otherwise.
    fn with_peer<R>(&self, peer: SourceKey, f: impl FnOnce(Option<&mut Peer>) -> R) -> R {
        match &self.peers {
            Some(table) => {
                let mut shard = table.lock(&peer);
                f(Some(shard.get_or_insert(peer, Peer::default)))
            }
            None => f(None),
        }
    }
}

/// A persona, resolved from its rules for use per packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persona {
    ttl: Option<u8>,
    ip_id: IpId,
    echo_ip_id: IpId,
    window: Option<u16>,
    options: Vec<TcpOpt>,
    eol_padding: bool,
    rst_ack: bool,
    echo_code_zero: bool,
    echo_df_copy: bool,
    silence: u32,
    answer: u32,
}

impl Persona {
    /// The persona `spec` describes.
    pub fn new(spec: &PersonaSpec) -> Self {
        Self {
            ttl: (spec.ttl != 0).then_some(spec.ttl),
            ip_id: spec.ip_id,
            echo_ip_id: spec.echo_ip_id,
            window: (spec.syn_ack_window != 0).then_some(spec.syn_ack_window),
            options: spec.syn_ack_options.clone(),
            eol_padding: spec.syn_ack_eol_padding,
            rst_ack: spec.rst_ack == RstAck::Nonzero,
            echo_code_zero: spec.echo_code == EchoField::Zero,
            echo_df_copy: spec.echo_df == EchoField::Copy,
            silence: spec.silence.iter().fold(0, |m, p| m | p.bit()),
            answer: spec.answer.iter().fold(0, |m, p| m | p.bit()),
        }
    }

    /// True when the persona drops `probe`, because its OS never answers it.
    pub const fn silences(&self, probe: OsProbe) -> bool {
        self.silence & probe.bit() != 0
    }

    /// True when the persona answers `probe` with a reset of its own.
    pub const fn answers(&self, probe: OsProbe) -> bool {
        self.answer & probe.bit() != 0
    }

    /// The reset the persona's OS answers an inbound TCP segment with
    /// (RFC 9293 §3.10.7.1): to a segment with ACK, `<SEQ=SEG.ACK><RST>`;
    /// otherwise `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><RST,ACK>`; window 0, DF,
    /// with the persona's edits applied as to any reply.
    pub fn reset(
        &self,
        view: &PacketView<'_>,
        peer: Option<&mut Peer>,
        seed: u64,
    ) -> Option<Reply> {
        let Transport::Tcp(t) = view.transport else { return None };
        let (flags, seq, ack) = if t.flags.has(TcpFlags::ACK) {
            (TcpFlags::RST, t.ack, 0)
        } else {
            let len = u32::try_from(t.payload_len).unwrap_or(0)
                + u32::from(t.flags.has(TcpFlags::SYN))
                + u32::from(t.flags.has(TcpFlags::FIN));
            (TcpFlags::RST | TcpFlags::ACK, 0, t.seq.wrapping_add(len))
        };
        let (src, dst) = (view.ip.dst, view.ip.src);
        let (bytes, len) =
            rewrite::tcp_reset((src, dst), (t.dst_port, t.src_port), (seq, ack), flags)?;
        let mut r = Reply { bytes, len: u8::try_from(len).unwrap_or(0), dst };
        let len = usize::from(r.len);
        let edits = {
            let view = crate::wire::parse(r.bytes.get(..len)?).ok()?;
            self.plan(&view, peer, seed)
        };
        if let Some(e) = edits {
            e.apply(r.bytes.get_mut(..len)?, false);
        }
        Some(r)
    }

    /// True when replies need the peer's state: an IP ID counter, or the
    /// DF of its echo requests.
    pub fn needs_peer(&self) -> bool {
        self.ip_id != IpId::Keep || self.echo_ip_id != IpId::Keep || self.echo_df_copy
    }

    /// True when the DF of inbound echo requests must be remembered.
    pub const fn copies_echo_df(&self) -> bool {
        self.echo_df_copy
    }

    /// Decides the edits for one packet this host sends. `peer` is the
    /// destination's state, when [`Persona::needs_peer`]; `seed` keeps each
    /// destination's first IP ID unpredictable. `None`: nothing to change.
    pub fn plan(&self, view: &PacketView<'_>, peer: Option<&mut Peer>, seed: u64) -> Option<Edits> {
        if view.truncated || view.ip.fragment != Fragment::Whole || !is_reply(view) {
            return None;
        }
        let v4 = view.ip.src.is_ipv4();
        let mut e = Edits::for_view(view);
        if let Some(ttl) = self.ttl.filter(|t| *t != view.ip.ttl) {
            e.set_ttl(ttl);
        }
        let mut id_mode = self.ip_id;
        match view.transport {
            Transport::Tcp(tcp) => {
                let f = tcp.flags;
                if f.has(TcpFlags::SYN | TcpFlags::ACK) && !f.has(TcpFlags::RST) {
                    if let Some(w) = self.window.filter(|w| *w != tcp.window) {
                        e.set_window(w);
                    }
                    if let Some((options, len)) =
                        rewrite::reorder_options(tcp.options, &self.options, self.eol_padding)
                    {
                        e.set_options(options, len);
                    }
                } else if f.has(TcpFlags::RST)
                    && !f.has(TcpFlags::ACK)
                    && self.rst_ack
                    && tcp.ack == 0
                {
                    e.set_ack(if tcp.seq == 0 { 1 } else { tcp.seq });
                }
            }
            Transport::Icmp(icmp) if icmp.kind == if icmp.v6 { 129 } else { 0 } => {
                id_mode = self.echo_ip_id;
                if self.echo_code_zero && icmp.code != 0 {
                    e.set_icmp(icmp.kind, 0);
                }
                if self.echo_df_copy
                    && v4
                    && let Some(p) = peer.as_deref()
                    && p.echo == Some((icmp.ident(), icmp.sequence()))
                    && p.echo_df != view.ip.df
                {
                    e.set_df(p.echo_df);
                }
            }
            _ => {}
        }
        if v4
            && let Some(p) = peer
            && let Some(id) = next_id(id_mode, p, view.ip.dst, seed)
        {
            e.set_ip_id(id);
        }
        e.changes().then_some(e)
    }
}

/// A packet portcloak sends in the host's name: a persona's answer to a
/// probe, whole and with its checksums, for a raw socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    bytes: [u8; 60],
    len: u8,
    /// Where it goes.
    pub dst: IpAddr,
}

impl Reply {
    /// The packet, from its IP header.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// TCP, UDP and SCTP, and the ICMP messages a host sends in reply (echo,
/// timestamp and mask replies, errors). Not neighbour discovery, router
/// or multicast messages, whose hop limits the protocols fix.
fn is_reply(view: &PacketView<'_>) -> bool {
    match view.transport {
        Transport::Tcp(_) | Transport::Udp(_) | Transport::Sctp { .. } => true,
        Transport::Icmp(i) if i.v6 => matches!(i.kind, 1..=4 | 129),
        Transport::Icmp(i) => matches!(i.kind, 0 | 3 | 11 | 12 | 14 | 18),
        _ => false,
    }
}

/// The next IP ID for `dst` under `mode`, advancing its counter.
fn next_id(mode: IpId, peer: &mut Peer, dst: IpAddr, seed: u64) -> Option<u16> {
    if mode == IpId::Keep {
        return None;
    }
    if !peer.ip_id_started {
        let d = match dst {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            IpAddr::V6(a) => {
                let b = a.to_bits();
                (b as u64) ^ ((b >> 64) as u64)
            }
        };
        peer.ip_id = (mix(seed ^ d) >> 48) as u16;
        peer.ip_id_started = true;
    }
    let step = match mode {
        IpId::RandomIncrements => {
            // nmap's class RI: steps above 1000 that are not multiples of
            // 256, none above 20000.
            let s = 1001 + (mix(seed ^ u64::from(peer.ip_id)) % 19_000) as u16;
            if s % 256 == 0 { s + 1 } else { s }
        }
        _ => 1,
    };
    peer.ip_id = peer.ip_id.wrapping_add(step);
    Some(peer.ip_id)
}

/// splitmix64's finaliser: a cheap, well-spread hash of one word.
const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
