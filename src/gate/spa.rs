//! The single-packet authorization format, shared by the engine (which
//! opens packets) and `portcloak knock` (which seals them).
//!
//! One UDP payload of 80 bytes:
//!
//! ```text
//!  0..4   "PCK1"
//!  4..12  timestamp, Unix seconds, big-endian
//! 12..28  nonce, 16 random bytes
//! 28..30  requested port, big-endian
//! 30      its IP protocol (6 TCP, 17 UDP)
//! 31      address family of the client's IP (4 or 6)
//! 32..48  the client's IP (IPv4 in the first 4 bytes, the rest zero)
//! 48..80  HMAC-SHA256 over bytes 0..48, with the shared key
//! ```
//!
//! The HMAC is compared in constant time (`hmac::Mac::verify_slice`).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The packet's length.
pub const LEN: usize = 80;
const MAGIC: &[u8; 4] = b"PCK1";
const SIGNED: usize = 48;

/// What an SPA packet asks for, once its HMAC holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Unix seconds at the client.
    pub timestamp: u64,
    /// Random, once per packet.
    pub nonce: [u8; 16],
    /// The hidden port to open.
    pub port: u16,
    /// Its IP protocol.
    pub protocol: u8,
    /// The address to open it for.
    pub ip: IpAddr,
}

/// Why a packet was not a valid SPA packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not 80 bytes, or not our magic or layout.
    Malformed,
    /// The HMAC does not match: another key, or altered bytes.
    BadHmac,
}

/// An HMAC-SHA256 keyed with `key`. HMAC takes keys of any length, so
/// this never fails; the `Option` only spares an `unwrap`.
fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).ok()
}

/// Seals `request` with `key`.
pub fn seal(key: &[u8], request: &Request) -> [u8; LEN] {
    let mut head = [0u8; SIGNED];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = head.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, MAGIC);
    put(4, &request.timestamp.to_be_bytes());
    put(12, &request.nonce);
    put(28, &request.port.to_be_bytes());
    put(30, &[request.protocol]);
    match request.ip {
        IpAddr::V4(a) => {
            put(31, &[4]);
            put(32, &a.octets());
        }
        IpAddr::V6(a) => {
            put(31, &[6]);
            put(32, &a.octets());
        }
    }
    let mut p = [0u8; LEN];
    let (h, tag) = p.split_at_mut(SIGNED);
    h.copy_from_slice(&head);
    if let Some(mut m) = mac(key) {
        m.update(&head);
        tag.copy_from_slice(&m.finalize().into_bytes());
    }
    p
}

/// Checks `bytes` against `key` and reads the request. Nothing is read
/// before the HMAC holds, but the layout needed to find it.
pub fn open(key: &[u8], bytes: &[u8]) -> Result<Request, OpenError> {
    let (Some(head), Some(tag)) = (bytes.get(..SIGNED), bytes.get(SIGNED..)) else {
        return Err(OpenError::Malformed);
    };
    if bytes.len() != LEN || head.get(..4) != Some(MAGIC.as_slice()) {
        return Err(OpenError::Malformed);
    }
    let mut m = mac(key).ok_or(OpenError::BadHmac)?;
    m.update(head);
    m.verify_slice(tag).map_err(|_| OpenError::BadHmac)?;
    let arr = |range: std::ops::Range<usize>| head.get(range).unwrap_or_default();
    let timestamp = u64::from_be_bytes(arr(4..12).try_into().map_err(|_| OpenError::Malformed)?);
    let nonce: [u8; 16] = arr(12..28).try_into().map_err(|_| OpenError::Malformed)?;
    let port = u16::from_be_bytes(arr(28..30).try_into().map_err(|_| OpenError::Malformed)?);
    let protocol = *head.get(30).ok_or(OpenError::Malformed)?;
    let ip = match head.get(31) {
        Some(4) => {
            let a: [u8; 4] = arr(32..36).try_into().map_err(|_| OpenError::Malformed)?;
            IpAddr::from(a)
        }
        Some(6) => {
            let a: [u8; 16] = arr(32..48).try_into().map_err(|_| OpenError::Malformed)?;
            IpAddr::from(a)
        }
        _ => return Err(OpenError::Malformed),
    };
    Ok(Request { timestamp, nonce, port, protocol, ip })
}

/// Why a key file's text is not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 characters once trimmed.
    #[error("expected 64 hex digits, found {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("not hexadecimal")]
    NotHex,
}

/// Reads a key file's text: 64 hex digits (32 bytes), whitespace around
/// them ignored.
pub fn parse_key(text: &str) -> Result<Vec<u8>, KeyError> {
    let hex = text.trim();
    if hex.len() != 64 {
        return Err(KeyError::Length(hex.len()));
    }
    (0..32)
        .map(|i| {
            hex.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(KeyError::NotHex)
        })
        .collect()
}

/// A key's file text.
pub fn key_text(key: &[u8]) -> String {
    let mut s: String = key.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            timestamp: 1_800_000_000,
            nonce: [7; 16],
            port: 22,
            protocol: 6,
            ip: "198.18.2.2".parse().unwrap(),
        }
    }

    #[test]
    fn sealed_packets_open_with_the_key_only() {
        let key = [1u8; 32];
        let p = seal(&key, &request());
        assert_eq!(open(&key, &p), Ok(request()));
        assert_eq!(open(&[2u8; 32], &p), Err(OpenError::BadHmac));
        let v6 = Request { ip: "fd5c:a11:2::2".parse().unwrap(), ..request() };
        assert_eq!(open(&key, &seal(&key, &v6)), Ok(v6));
    }

    #[test]
    fn every_altered_byte_and_every_cut_is_refused() {
        let key = [1u8; 32];
        let p = seal(&key, &request());
        for i in 0..LEN {
            let mut q = p;
            q[i] ^= 0x40;
            assert!(open(&key, &q).is_err(), "byte {i}");
        }
        for n in 0..LEN {
            assert_eq!(open(&key, &p[..n]), Err(OpenError::Malformed), "{n} bytes");
        }
        let mut long = p.to_vec();
        long.push(0);
        assert_eq!(open(&key, &long), Err(OpenError::Malformed));
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let key: Vec<u8> = (0..32).collect();
        assert_eq!(parse_key(&key_text(&key)), Ok(key));
        assert_eq!(parse_key("abc"), Err(KeyError::Length(3)));
        assert_eq!(parse_key(&"zz".repeat(32)), Err(KeyError::NotHex));
    }
}
