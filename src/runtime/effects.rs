//! EFFECTS: what a packet source does with the engine's [`Outcome`]: one
//! order for every source. The NFQUEUE worker (`worker.rs`) and replay
//! (`replay/`) each implement [`Effects`], and [`deliver`] calls them, so
//! the two cannot drift apart: a new source (AF_XDP, AF_PACKET) is a file
//! beside `queue.rs` that reads packets, calls the engine, and implements
//! this.

use crate::disguise::Reply;
use crate::engine::Outcome;
use crate::gate::GateEvent;
use crate::track::{Ban, SourceKey};

/// A packet source's side of an outcome.
pub trait Effects {
    /// Counts the outcome: verdicts, drops by reason, what it says of its
    /// source.
    fn count(&mut self, out: &Outcome);
    /// A ban the packet caused: of its source, or of its network.
    fn ban(&mut self, key: SourceKey, ban: Ban);
    /// What the gate of hidden services has to tell.
    fn gate(&mut self, event: GateEvent);
    /// The persona's answer to the dropped probe, to send in the host's name.
    fn reply(&mut self, reply: Reply);
}

/// Hands every effect of `out` to `effects`: the count, the gate's event,
/// the persona's answer, then each ban.
pub fn deliver(effects: &mut impl Effects, out: &Outcome) {
    effects.count(out);
    if let Some(event) = out.gate {
        effects.gate(event);
    }
    if let Some(reply) = out.reply {
        effects.reply(reply);
    }
    for (key, ban) in out.bans() {
        effects.ban(key, ban);
    }
}
