//! EVENTS: what a run reports beyond plain accepts, as JSON lines.
//!
//! One event per dropped packet (with its reason), per ban (a source's, or
//! its network's), per lifted ban, and per packet an OS persona rewrote
//! (`Outcome::rewritten`).

use std::net::IpAddr;

use serde::Serialize;

use crate::classify::{PortProto, ProbeKind, Signature};
use crate::engine::{Direction, Outcome};
use crate::policy::{Reason, Verdict};
use crate::time::Timestamp;
use crate::track::{Ban, BanKind, BanReason, SourceKey};

/// A reportable event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A packet was dropped.
    Drop {
        /// Time, serialised in seconds.
        ts: Timestamp,
        /// Direction.
        direction: Direction,
        /// Packet source address.
        src: Option<IpAddr>,
        /// Packet destination address.
        dst: Option<IpAddr>,
        /// Tracked source (the remote party).
        source: Option<SourceKey>,
        /// Why.
        reason: Reason,
        /// Probe kind.
        kind: Option<ProbeKind>,
        /// Signature.
        signature: Option<Signature>,
        /// Protocol of `port`.
        proto: Option<PortProto>,
        /// Destination port.
        port: Option<u16>,
    },
    /// A source was banned.
    Ban {
        /// Time, serialised in seconds.
        ts: Timestamp,
        /// Who.
        source: SourceKey,
        /// Why.
        reason: BanReason,
        /// Ban length in seconds.
        seconds: u64,
        /// Offence count, this one included.
        offences: u16,
    },
    /// A proven source was quarantined: its proven pairs keep working,
    /// every other new connection from it is dropped.
    Quarantine {
        /// Time, serialised in seconds.
        ts: Timestamp,
        /// Who.
        source: SourceKey,
        /// Why.
        reason: BanReason,
        /// Quarantine length in seconds.
        seconds: u64,
        /// Offence count, this one included.
        offences: u16,
    },
    /// A ban or quarantine ended.
    Unban {
        /// Time, serialised in seconds.
        ts: Timestamp,
        /// Who.
        source: SourceKey,
    },
    /// A packet was rewritten in place.
    Rewrite {
        /// Time, serialised in seconds.
        ts: Timestamp,
        /// Direction.
        direction: Direction,
        /// Packet destination address.
        dst: Option<IpAddr>,
    },
}

impl Event {
    /// The events one outcome gives rise to, in order: drop or rewrite, then ban.
    pub fn from_outcome(
        now: Timestamp,
        direction: Direction,
        addrs: Option<(IpAddr, IpAddr)>,
        outcome: &Outcome,
    ) -> impl Iterator<Item = Self> {
        let ts = now;
        let first = if outcome.verdict == Verdict::Drop {
            Some(Self::Drop {
                ts,
                direction,
                src: addrs.map(|a| a.0),
                dst: addrs.map(|a| a.1),
                source: outcome.source,
                reason: outcome.reason,
                kind: outcome.kind,
                signature: outcome.signature,
                proto: outcome.port.map(|p| p.0),
                port: outcome.port.map(|p| p.1),
            })
        } else if outcome.rewritten {
            Some(Self::Rewrite { ts, direction, dst: addrs.map(|a| a.1) })
        } else {
            None
        };
        let ban = outcome.ban.zip(outcome.source).map(|(ban, source)| Self::ban(source, &ban));
        let network = outcome.escalated.map(|(network, ban)| Self::ban(network, &ban));
        first.into_iter().chain(ban).chain(network)
    }

    /// The event for a ban or a quarantine.
    pub fn ban(source: SourceKey, ban: &Ban) -> Self {
        let (ts, reason, offences) = (ban.since, ban.reason, ban.offences);
        let seconds = ban.until.saturating_since(ban.since).as_secs();
        match ban.kind {
            BanKind::Ban => Self::Ban { ts, source, reason, seconds, offences },
            BanKind::Quarantine => Self::Quarantine { ts, source, reason, seconds, offences },
        }
    }

    /// The event for a lifted ban.
    pub fn unban(now: Timestamp, source: SourceKey) -> Self {
        Self::Unban { ts: now, source }
    }

    /// The same event with its time moved by `micros`: the daemon writes
    /// wall time, its engine runs on a monotonic clock.
    #[must_use]
    pub fn shifted(mut self, micros: i64) -> Self {
        let (Self::Drop { ts, .. }
        | Self::Ban { ts, .. }
        | Self::Quarantine { ts, .. }
        | Self::Unban { ts, .. }
        | Self::Rewrite { ts, .. }) = &mut self;
        *ts = ts.shifted(micros);
        self
    }
}
