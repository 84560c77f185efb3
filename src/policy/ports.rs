//! Which ports are open: the seam where every source of that knowledge meets.
//!
//! Three layers, any of which can open a port:
//! - `configured`: `[services]` in the rules, fixed at start;
//! - `learned`: ports the host was seen answering (a SYN-ACK, a UDP reply),
//!   from replay's pre-pass or from outbound packets;
//! - `listening`: replaced wholesale by whoever reads the live sockets (the
//!   daemon, from `/proc/net/*`), so a closed socket closes its port again.
//!
//! Reads are lock-free: one relaxed atomic load per layer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::classify::PortProto;
use crate::config::{PortList, Services};

const WORDS: usize = 1024;
const PROTOS: usize = 3;

/// A 65536-bit set per protocol.
#[derive(Debug)]
struct Bitmap([Box<[AtomicU64]>; PROTOS]);

impl Bitmap {
    fn new() -> Self {
        Self(std::array::from_fn(|_| (0..WORDS).map(|_| AtomicU64::new(0)).collect()))
    }

    fn word(&self, proto: PortProto, port: u16) -> Option<&AtomicU64> {
        self.0.get(proto.index())?.get(usize::from(port / 64))
    }

    fn contains(&self, proto: PortProto, port: u16) -> bool {
        self.word(proto, port).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (port % 64)) != 0)
    }

    fn insert(&self, proto: PortProto, port: u16) {
        if let Some(w) = self.word(proto, port) {
            w.fetch_or(1 << (port % 64), Ordering::Relaxed);
        }
    }

    fn replace(&self, proto: PortProto, ports: &PortList) {
        if let Some(words) = self.0.get(proto.index()) {
            for (slot, value) in words.iter().zip(ports.words()) {
                slot.store(value, Ordering::Relaxed);
            }
        }
    }
}

/// Open ports per protocol.
#[derive(Debug)]
pub struct PortMap {
    configured: Bitmap,
    learned: Bitmap,
    listening: Bitmap,
    learn: bool,
}

impl PortMap {
    /// The map for `[services]`.
    pub fn new(services: &Services) -> Self {
        let configured = Bitmap::new();
        configured.replace(PortProto::Tcp, &services.tcp);
        configured.replace(PortProto::Udp, &services.udp);
        configured.replace(PortProto::Sctp, &services.sctp);
        Self {
            configured,
            learned: Bitmap::new(),
            listening: Bitmap::new(),
            learn: services.learn_from_replies,
        }
    }

    /// True when any layer has `port` open.
    pub fn is_open(&self, proto: PortProto, port: u16) -> bool {
        self.configured.contains(proto, port)
            || self.listening.contains(proto, port)
            || self.learned.contains(proto, port)
    }

    /// True when the map learns ports from replies
    /// (`services.learn_from_replies`).
    pub const fn learns(&self) -> bool {
        self.learn
    }

    /// Records that the host answered on `port`, if learning is switched on.
    pub fn learn(&self, proto: PortProto, port: u16) {
        if self.learn {
            self.learned.insert(proto, port);
        }
    }

    /// Replaces the set of listening ports for `proto`.
    pub fn set_listening(&self, proto: PortProto, ports: &PortList) {
        self.listening.replace(proto, ports);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_combine() {
        let services = Services { tcp: PortList::from_ports([22]), ..Services::default() };
        let map = PortMap::new(&services);
        assert!(map.is_open(PortProto::Tcp, 22));
        assert!(!map.is_open(PortProto::Udp, 22));
        map.learn(PortProto::Udp, 53);
        assert!(map.is_open(PortProto::Udp, 53));
        map.set_listening(PortProto::Tcp, &PortList::from_ports([8080]));
        assert!(map.is_open(PortProto::Tcp, 8080));
        map.set_listening(PortProto::Tcp, &PortList::default());
        assert!(!map.is_open(PortProto::Tcp, 8080), "a closed socket closes its port");
        let no_learn = PortMap::new(&Services { learn_from_replies: false, ..Services::default() });
        no_learn.learn(PortProto::Tcp, 80);
        assert!(!no_learn.is_open(PortProto::Tcp, 80));
    }
}
