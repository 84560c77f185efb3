//! PACKET IN (offline): captures. [`pcap`] reads pcap and pcapng files as a
//! stream, whose frames replay strips to the IP header with
//! [`crate::wire::link`], and writes pcap files one frame at a time. The
//! daemon's packets come from NFQUEUE instead (`runtime::queue`).

pub mod pcap;
