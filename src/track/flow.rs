//! Flows: the connections and datagram exchanges the engine saw start, and
//! the TCP handshake's transitions, which prove that a remote end owns its
//! address (it acknowledged this host's SYN-ACK).
//!
//! The flow table sits in each shard beside the sources (`Shard::flow`);
//! this module holds what a flow is and how a packet moves it on.

use std::time::Duration;

use super::{FlowKey, Shard};
use crate::time::Timestamp;
use crate::wire::{PacketView, TcpFlags, Transport};

/// Where a tracked connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// The opening SYN was accepted.
    SynSeen,
    /// The SYN-ACK went back.
    SynAckSeen,
    /// The handshake completed, or the flow is not TCP.
    Established,
}

/// A connection the engine saw start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Handshake progress.
    pub state: FlowState,
    /// True when the remote end opened it.
    pub inbound: bool,
    /// This host's initial sequence number, from its SYN-ACK: the remote end
    /// proves it owns its address by acknowledging `isn + 1`.
    pub isn: u32,
    /// Latest packet.
    pub last: Timestamp,
}

impl Flow {
    /// True unless the flow has been idle for longer than `idle`.
    pub fn is_fresh(&self, now: Timestamp, idle: Duration) -> bool {
        now.saturating_since(self.last) <= idle
    }
}

impl FlowKey {
    /// The flow of an inbound TCP, UDP or SCTP packet: the remote end is
    /// its source.
    pub fn inbound(view: &PacketView<'_>) -> Option<Self> {
        let (sport, dport) = ports(view)?;
        Some(Self {
            remote: view.ip.src,
            local: view.ip.dst,
            remote_port: sport,
            local_port: dport,
            protocol: view.ip.protocol,
        })
    }

    /// The flow of an outbound TCP, UDP or SCTP packet: the remote end is
    /// its destination.
    pub fn outbound(view: &PacketView<'_>) -> Option<Self> {
        let (sport, dport) = ports(view)?;
        Some(Self {
            remote: view.ip.dst,
            local: view.ip.src,
            remote_port: dport,
            local_port: sport,
            protocol: view.ip.protocol,
        })
    }
}

fn ports(view: &PacketView<'_>) -> Option<(u16, u16)> {
    match view.transport {
        Transport::Tcp(t) => Some((t.src_port, t.dst_port)),
        Transport::Udp(u) => Some((u.src_port, u.dst_port)),
        Transport::Sctp { src_port, dst_port } => Some((src_port, dst_port)),
        _ => None,
    }
}

/// An inbound packet's relation to the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowMatch {
    /// Belongs to no known flow.
    None,
    /// Belongs to a known flow.
    Known,
    /// The ACK that completes a handshake the remote end started.
    Handshake,
}

/// What an outbound packet did to its flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answered {
    /// A datagram to a remote end that sent one first: this host answered
    /// it, which proves the pair.
    pub datagram: bool,
}

impl Shard {
    /// Looks an inbound packet's flow up, refreshes it and advances its
    /// handshake.
    pub fn follow_inbound(
        &mut self,
        fk: FlowKey,
        view: &PacketView<'_>,
        now: Timestamp,
        idle: Duration,
    ) -> FlowMatch {
        let Some(flow) = self.flow(&fk, now, idle) else {
            return FlowMatch::None;
        };
        flow.last = now;
        let Transport::Tcp(t) = view.transport else {
            return FlowMatch::Known;
        };
        let f = t.flags.classic();
        // A new SYN on a remembered 4-tuple is a new connection, not part of the old one.
        if f == TcpFlags::SYN && flow.state != FlowState::SynSeen {
            return FlowMatch::None;
        }
        let pure_ack =
            f & (TcpFlags::SYN | TcpFlags::RST | TcpFlags::FIN) == 0 && f & TcpFlags::ACK != 0;
        // Only the real owner of the address saw the SYN-ACK and can acknowledge it.
        let proves = t.ack == flow.isn.wrapping_add(1);
        if pure_ack && proves && flow.inbound && flow.state == FlowState::SynAckSeen {
            flow.state = FlowState::Established;
            return FlowMatch::Handshake;
        }
        FlowMatch::Known
    }

    /// Starts tracking the flow an accepted inbound SYN or datagram opens.
    pub fn open_inbound(&mut self, fk: Option<FlowKey>, view: &PacketView<'_>, now: Timestamp) {
        let Some(fk) = fk else { return };
        let state = match view.transport {
            Transport::Tcp(t) if t.flags.classic() == TcpFlags::SYN => FlowState::SynSeen,
            Transport::Tcp(_) => return,
            _ => FlowState::Established,
        };
        self.insert_flow(fk, Flow { state, inbound: true, isn: 0, last: now });
    }

    /// Follows a connection or datagram flow this host answers or starts:
    /// a SYN-ACK records this host's ISN, a SYN or a first datagram opens
    /// an outbound flow.
    pub fn follow_outbound(
        &mut self,
        fk: FlowKey,
        view: &PacketView<'_>,
        now: Timestamp,
        idle: Duration,
    ) -> Answered {
        let (syn, ack) = match view.transport {
            Transport::Tcp(t) => (t.flags.has(TcpFlags::SYN), t.flags.has(TcpFlags::ACK)),
            Transport::Udp(_) => (false, false),
            _ => return Answered::default(),
        };
        let tcp = matches!(view.transport, Transport::Tcp(_));
        match self.flow(&fk, now, idle) {
            Some(flow) => {
                flow.last = now;
                if let Transport::Tcp(t) = view.transport {
                    if syn && ack && flow.state == FlowState::SynSeen {
                        flow.state = FlowState::SynAckSeen;
                        flow.isn = t.seq;
                    }
                    Answered::default()
                } else {
                    Answered { datagram: flow.inbound }
                }
            }
            None if !tcp || (syn && !ack) => {
                let state = if tcp { FlowState::SynSeen } else { FlowState::Established };
                self.insert_flow(fk, Flow { state, inbound: false, isn: 0, last: now });
                Answered::default()
            }
            None => Answered::default(),
        }
    }
}
