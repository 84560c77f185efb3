//! `[persona]` and `[personas.NAME]`: the operating system this host
//! pretends to be to nmap's OS detection and to p0f.
//!
//! A persona is data: one `[personas.NAME]` table of rewrites and sysctls.
//! The built-in ones live in `rules/personas.toml`, compiled in; a rules
//! file may add its own or replace a built-in one under the same name.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::classify::OsProbe;

/// `[persona]`: which persona is in force.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonaChoice {
    /// `"none"`, a built-in persona or a `[personas.NAME]` of the rules.
    pub name: String,
    /// Whether `portcloak run` sets the sysctls the persona lists, in its
    /// network namespace, and restores them when it stops.
    pub apply_sysctls: bool,
}

impl Default for PersonaChoice {
    fn default() -> Self {
        Self { name: NONE.to_owned(), apply_sysctls: false }
    }
}

/// The persona name that rewrites nothing.
pub const NONE: &str = "none";

/// How the IPv4 identification of a reply is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpId {
    /// The kernel's value.
    #[default]
    Keep,
    /// One counter per destination, +1 per packet (nmap class `I`).
    Counter,
    /// One counter per destination, stepping by a random 1001 to 20000
    /// (nmap class `RI`).
    RandomIncrements,
}

pub use crate::wire::rewrite::TcpOpt;

/// What a persona does to an echo reply's field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EchoField {
    /// Leave the kernel's value (Linux echoes the request's code and sends
    /// no DF).
    #[default]
    Keep,
    /// Code 0 (`echo_code`); no meaning for `echo_df`.
    Zero,
    /// DF as the request had it (`echo_df`); no meaning for `echo_code`.
    Copy,
}

/// The sysctls a persona needs because the kernel believes it negotiated
/// what they set. Each is left alone when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sysctls {
    /// `net.ipv4.tcp_ecn` (0 = never, 1 = always, 2 = when asked).
    pub tcp_ecn: Option<u8>,
    /// `net.ipv4.tcp_timestamps` (0 = off, 1 = on, 2 = on without offsets).
    pub tcp_timestamps: Option<u8>,
    /// The window scale, set through the `net.ipv4.tcp_rmem` maximum:
    /// 2^(15 + scale) bytes.
    pub window_scale: Option<u8>,
    /// `net.ipv4.ip_default_ttl`.
    pub ip_default_ttl: Option<u8>,
}

/// `[personas.NAME]`: every rewrite of one persona.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonaSpec {
    /// What it imitates, for people.
    pub description: String,
    /// Initial TTL (IPv6: hop limit) of every packet the host sends; 0 keeps the kernel's.
    pub ttl: u8,
    /// IPv4 ID of SYN-ACKs, RSTs, UDP and ICMP errors.
    pub ip_id: IpId,
    /// IPv4 ID of ICMP echo replies. A counter here shares the one of `ip_id`.
    pub echo_ip_id: IpId,
    /// Window field of SYN-ACKs; 0 keeps the kernel's.
    pub syn_ack_window: u16,
    /// Order of the SYN-ACK's options, each laid out on a 4-byte boundary
    /// as BSD and Windows do (a NOP before the window scale; SACK-permitted
    /// and timestamps together, or each after two NOPs); empty keeps the
    /// kernel's. Never changes which options or values the kernel chose.
    pub syn_ack_options: Vec<TcpOpt>,
    /// A SACK-permitted that ends the options and has no timestamps to
    /// pair with is padded with two EOLs after it, as BSD pads, rather than
    /// two NOPs before it, as Windows does.
    pub syn_ack_eol_padding: bool,
    /// `"nonzero"`: an RST without the ACK flag carries a non-zero ack
    /// number, as Windows' do; `"keep"`: Linux's zero.
    pub rst_ack: RstAck,
    /// ICMP echo-reply code: `"keep"` (Linux echoes the request's) or `"zero"`.
    pub echo_code: EchoField,
    /// DF of ICMP echo replies: `"keep"` (Linux: never) or `"copy"` (as the request).
    pub echo_df: EchoField,
    /// nmap OS probes dropped, because the imitated OS does not answer them.
    pub silence: Vec<OsProbe>,
    /// nmap's TCP OS probes the imitated OS answers with a reset where
    /// Linux stays silent or differs: the probe is dropped and portcloak
    /// answers RST+ACK, sequence 0, acknowledging the probe's sequence
    /// space (RFC 9293 §3.10.7.1), window 0, DF.
    pub answer: Vec<OsProbe>,
    /// Sysctls the persona needs.
    pub sysctls: Sysctls,
}

/// The ack number of RSTs without the ACK flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RstAck {
    /// Linux: zero.
    #[default]
    Keep,
    /// Non-zero (the RST's own sequence number, or 1).
    Nonzero,
}

/// The built-in personas, from `rules/personas.toml`.
pub fn builtin() -> &'static BTreeMap<String, PersonaSpec> {
    static BUILTIN: LazyLock<BTreeMap<String, PersonaSpec>> = LazyLock::new(|| {
        #[derive(Deserialize)]
        struct File {
            personas: BTreeMap<String, PersonaSpec>,
        }
        // A test parses the same text and fails on any error.
        toml::from_str::<File>(BUILTIN_TEXT).map(|f| f.personas).unwrap_or_default()
    });
    &BUILTIN
}

/// The text of `rules/personas.toml`.
pub const BUILTIN_TEXT: &str = include_str!("../../rules/personas.toml");
