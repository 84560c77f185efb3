//! What the hosts of a fleet tell each other, signed with the fleet's key:
//! a ban (or quarantine) one host started, or a host's summary of the
//! closed ports sources touched there. Pure: no I/O, time passed in.
//!
//! On the wire a message is JSON `{"body": "...", "sig": "..."}`: the body
//! is itself JSON text, and `sig` the hex HMAC-SHA256 of its bytes, so
//! what is signed is exactly what is read.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::track::BanKind;

/// The message format's version.
pub const VERSION: u8 = 1;
/// Sources one summary lists at most.
pub const MAX_TOUCHES: usize = 512;
/// A summary sent longer ago than this, or this far ahead, is stale.
pub const TOUCH_AGE_MICROS: u64 = 120_000_000;
/// Origins whose last sequence number is remembered.
pub const ORIGINS: usize = 4096;

/// One message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// [`VERSION`].
    pub v: u8,
    /// The host that sent it (`[fleet] name`).
    pub origin: String,
    /// Grows with every message of its origin, across restarts (unix
    /// microseconds, or one more than the last).
    pub seq: u64,
    /// When it was sent, unix microseconds.
    pub sent: u64,
    /// What it says.
    pub what: What,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum What {
    /// The origin banned or quarantined `source`.
    Ban {
        /// A source key (`198.18.1.2`, `fd5c:a11:1::/64`).
        source: String,
        /// Ban or quarantine, at the origin.
        kind: BanKind,
        /// The reason, as `bans` prints it.
        reason: String,
        /// When it ends, unix microseconds.
        until: u64,
    },
    /// Sources not banned at the origin that touched closed ports there
    /// within `scan.window`.
    Touch {
        /// At most [`MAX_TOUCHES`].
        sources: Vec<Touched>,
    },
}

/// One source of a summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    /// Its key.
    pub source: String,
    /// Its packets to closed ports the origin dropped since its last
    /// summary.
    pub probes: u32,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: String,
    sig: String,
}

/// Why a message was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// Not JSON of a message, or another version.
    #[error("malformed")]
    Malformed,
    /// No signature.
    #[error("unsigned")]
    Unsigned,
    /// A signature the fleet key did not make.
    #[error("bad-signature")]
    BadSignature,
    /// A ban already over, or a summary too old or from the future.
    #[error("stale")]
    Stale,
    /// No newer than the last message of its origin.
    #[error("replayed")]
    Replayed,
}

impl Refusal {
    /// Every refusal, for counters.
    pub const ALL: [Self; 5] =
        [Self::Malformed, Self::Unsigned, Self::BadSignature, Self::Stale, Self::Replayed];

    /// Its index in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// HMAC takes a key of any length: `None` never happens.
fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).ok()
}

/// Signs `message` with `key`: the bytes to publish.
pub fn seal(message: &Message, key: &[u8]) -> Vec<u8> {
    let body = serde_json::to_string(message).unwrap_or_default();
    let sig = mac(key).map_or_else(String::new, |mut m| {
        m.update(body.as_bytes());
        hex(&m.finalize().into_bytes())
    });
    serde_json::to_vec(&Wire { body, sig }).unwrap_or_default()
}

/// Reads and checks a message received at `now` (unix microseconds).
/// Replays are told by [`Origins`].
pub fn open(bytes: &[u8], key: &[u8], now: u64) -> Result<Message, Refusal> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|_| Refusal::Malformed)?;
    if wire.sig.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let tag = unhex(&wire.sig).ok_or(Refusal::BadSignature)?;
    let mut m = mac(key).ok_or(Refusal::BadSignature)?;
    m.update(wire.body.as_bytes());
    m.verify_slice(&tag).map_err(|_| Refusal::BadSignature)?;
    let message: Message = serde_json::from_str(&wire.body).map_err(|_| Refusal::Malformed)?;
    if message.v != VERSION {
        return Err(Refusal::Malformed);
    }
    match &message.what {
        What::Ban { until, .. } if *until <= now => Err(Refusal::Stale),
        What::Touch { sources } if sources.len() > MAX_TOUCHES => Err(Refusal::Malformed),
        What::Touch { .. } if message.sent.abs_diff(now) > TOUCH_AGE_MICROS => Err(Refusal::Stale),
        _ => Ok(message),
    }
}

/// The last sequence number of each origin, to refuse replays: bounded,
/// the least recently heard origin forgotten first.
#[derive(Debug)]
pub struct Origins(lru::LruCache<String, u64>);

impl Default for Origins {
    fn default() -> Self {
        Self(crate::track::bounded_lru(ORIGINS))
    }
}

impl Origins {
    /// Takes `message` if it is newer than everything its origin sent
    /// before.
    pub fn admit(&mut self, message: &Message) -> Result<(), Refusal> {
        if self.0.get(&message.origin).is_some_and(|last| message.seq <= *last) {
            return Err(Refusal::Replayed);
        }
        self.0.put(message.origin.clone(), message.seq);
        Ok(())
    }
}

/// Sequence numbers for this host's messages: unix microseconds, or one
/// more than the last, so they grow across restarts.
#[derive(Debug, Default)]
pub struct Sequence(u64);

impl Sequence {
    /// The next number at `now` (unix microseconds).
    pub fn next(&mut self, now: u64) -> u64 {
        self.0 = now.max(self.0.saturating_add(1));
        self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000_000;

    fn ban(origin: &str, seq: u64, until: u64) -> Message {
        Message {
            v: VERSION,
            origin: origin.into(),
            seq,
            sent: NOW,
            what: What::Ban {
                source: "198.18.1.2".into(),
                kind: BanKind::Ban,
                reason: "signature nmap-syn".into(),
                until,
            },
        }
    }

    #[test]
    fn a_sealed_message_opens_with_its_key_only() {
        let m = ban("host1", 1, NOW + 1);
        let bytes = seal(&m, KEY);
        assert_eq!(open(&bytes, KEY, NOW), Ok(m.clone()));
        assert_eq!(open(&bytes, b"another key", NOW), Err(Refusal::BadSignature));
        assert_eq!(open(b"{\"body\":\"{}\",\"sig\":\"\"}", KEY, NOW), Err(Refusal::Unsigned));
        assert_eq!(open(b"not json", KEY, NOW), Err(Refusal::Malformed));
        // A body changed after signing.
        let text = String::from_utf8(bytes).unwrap_or_default().replace("198.18.1.2", "198.18.2.2");
        assert_eq!(open(text.as_bytes(), KEY, NOW), Err(Refusal::BadSignature));
    }

    #[test]
    fn bans_over_and_old_summaries_are_stale() {
        assert_eq!(open(&seal(&ban("h", 1, NOW), KEY), KEY, NOW), Err(Refusal::Stale));
        let touch = |sent| Message {
            v: VERSION,
            origin: "h".into(),
            seq: 1,
            sent,
            what: What::Touch { sources: vec![Touched { source: "198.18.1.2".into(), probes: 1 }] },
        };
        assert!(open(&seal(&touch(NOW - 1_000_000), KEY), KEY, NOW).is_ok());
        let old = touch(NOW - TOUCH_AGE_MICROS - 1);
        assert_eq!(open(&seal(&old, KEY), KEY, NOW), Err(Refusal::Stale));
    }

    #[test]
    fn a_message_no_newer_than_its_origins_last_is_a_replay() {
        let mut origins = Origins::default();
        assert_eq!(origins.admit(&ban("a", 5, NOW)), Ok(()));
        assert_eq!(origins.admit(&ban("a", 5, NOW)), Err(Refusal::Replayed));
        assert_eq!(origins.admit(&ban("a", 4, NOW)), Err(Refusal::Replayed));
        assert_eq!(origins.admit(&ban("b", 4, NOW)), Ok(()), "each origin its own");
        assert_eq!(origins.admit(&ban("a", 6, NOW)), Ok(()));
        let mut seq = Sequence::default();
        let (x, y) = (seq.next(NOW), seq.next(NOW - 5));
        assert!(y > x, "grows even when the clock steps back");
    }
}
