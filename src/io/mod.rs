//! PACKET IN: where packets come from. The only code that reads files (and,
//! with the daemon, talks to the kernel).
//!
//! Today: [`pcap`], a streaming reader of pcap and pcapng captures, whose
//! frames replay strips to the IP header with [`crate::wire::link`].

pub mod pcap;
