//! What the gate keeps per source, in a side table of its own that exists
//! only while a port is hidden: the knock sequence so far, which addresses
//! may open which hidden ports until when, and the allowance of valid SPA
//! packets.

use std::time::Duration;

use crate::time::Timestamp;
use crate::track::{Bucket, Evidence};

/// Addresses of one tracked source (an IPv6 /64 holds many) that may
/// hold an authorization at once; a newer one replaces the grant that
/// ends first.
const GRANTS: usize = 2;

/// Hidden ports one address may open, until when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Grant {
    /// The address, as the gate names it (a keyed hash: the packet's exact
    /// source address, never its network).
    host: u64,
    /// Hidden ports, as bits by `[[hidden]]` index.
    mask: u16,
    until: Timestamp,
}

/// A source's progress through the gate: its knock sequence so far, which
/// of its addresses are authorized to reach what until when, and its
/// allowance of valid SPA packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// Knock steps completed in order.
    pub knock_step: u8,
    /// When the first step arrived.
    pub knock_start: Timestamp,
    grants: [Grant; GRANTS],
    spa: Bucket,
}

impl GateState {
    /// A source the gate first hears of at `now`.
    pub const fn new(now: Timestamp) -> Self {
        Self {
            knock_step: 0,
            knock_start: Timestamp::ZERO,
            grants: [Grant { host: 0, mask: 0, until: Timestamp::ZERO }; GRANTS],
            spa: Bucket::full(now),
        }
    }

    /// Takes one valid SPA packet; false when the source is over its rate.
    pub fn take_spa(&mut self, now: Timestamp, per_second: f64, burst: u32) -> bool {
        self.spa.take(now, per_second, burst)
    }

    /// True when address `host` may open the hidden port with index
    /// `index` at `now`.
    pub fn authorized(&self, index: usize, host: u64, now: Timestamp) -> bool {
        let Some(bit) = u32::try_from(index).ok().and_then(|i| 1u16.checked_shl(i)) else {
            return false;
        };
        self.grants.iter().any(|g| g.host == host && now < g.until && g.mask & bit != 0)
    }

    /// True when any address of the source holds a grant at `now`.
    pub fn any_authorized(&self, now: Timestamp) -> bool {
        self.grants.iter().any(|g| now < g.until && g.mask != 0)
    }

    /// Opens the hidden ports in `mask` to address `host` until `until`.
    /// Ports still open to it from an earlier grant stay open with them,
    /// until the later end.
    pub fn authorize(&mut self, host: u64, mask: u16, now: Timestamp, until: Timestamp) {
        let live = |g: &Grant| now < g.until;
        let slot = self
            .grants
            .iter()
            .position(|g| live(g) && g.host == host)
            .or_else(|| self.grants.iter().position(|g| !live(g)))
            .or_else(|| {
                self.grants.iter().enumerate().min_by_key(|(_, g)| g.until).map(|(i, _)| i)
            });
        if let Some(g) = slot.and_then(|i| self.grants.get_mut(i)) {
            if !live(g) || g.host != host {
                *g = Grant { host, mask: 0, until: Timestamp::ZERO };
            }
            g.mask |= mask;
            g.until = g.until.max(until);
        }
    }
}

/// The knock steps it took, and far more for a live grant, which a flood
/// of spoofed knocks must never push out of the table.
impl Evidence for GateState {
    fn evidence(&self, now: Timestamp, _horizon: Duration) -> u32 {
        let grant = if self.any_authorized(now) { 1 << 16 } else { 0 };
        u32::from(self.knock_step) + grant
    }
}
