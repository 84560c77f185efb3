//! The rules: every threshold and switch. [`Rules`] is the file as written
//! (TOML, or built in code); [`Config`] is rules that passed every check,
//! and the only form the engine, the firewall plan and the daemon take.
//!
//! `Config::try_from(rules)` checks every invariant that involves more than
//! one value, whether the rules came from a file or from code, and a
//! `Config` is read-only after that: it derefs to its [`Rules`], never
//! mutably. Values are parsed into their real types while a file is read
//! (ports, CIDRs, durations, actions), so a bad value is reported by TOML
//! with its line and column; a failed check names its key, and its line
//! when the rules came from a file. Unknown keys are errors too.
//! `rules/default.toml` lists every key with its default; a test checks that
//! it equals [`Config::default`].

mod fleet;
mod hidden;
mod persona;
mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::fleet::Fleet;
pub use self::hidden::{GateProto, Hidden, Knock, KnockStep, Spa};
pub use self::persona::{
    BUILTIN_TEXT as BUILTIN_PERSONAS, EchoField, IpId, NONE as NO_PERSONA, PersonaChoice,
    PersonaSpec, RstAck, Sysctls, TcpOpt, builtin as builtin_personas,
};
pub use self::types::{Action, Cidr, ClosedPorts, Dur, PortList, Toggle};
use crate::classify::OsProbe;
use crate::track::RECENT_SLOTS;

/// A rule that fails a check: its `section.key`, and why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("key `{section}.{key}` {why}")]
pub struct Invalid {
    /// The section, e.g. `scan` or `personas.mine.sysctls`.
    pub section: String,
    /// The key within it.
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

impl Invalid {
    fn new(section: &str, key: &str, why: impl Into<String>) -> Self {
        Self { section: section.to_owned(), key: key.to_owned(), why: why.into() }
    }
}

/// Why rules in TOML text are not a [`Config`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RulesError {
    /// TOML syntax, an unknown key or a bad value, as TOML reports it,
    /// with the key and its line.
    #[error("{0}")]
    Toml(String),
    /// A failed check, with the line of its key when the text has it.
    #[error("{}{invalid}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        /// The key's line in the text.
        line: Option<usize>,
        /// The failed check.
        invalid: Invalid,
    },
}

/// Why a rules file could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read rules file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a bad value. The message names the key
    /// and its line.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        error: RulesError,
    },
}

/// Rules that passed every check; read-only, through [`Rules`].
/// Read back from a serialized form, it is checked again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Rules", into = "Rules")]
pub struct Config(Rules);

impl From<Config> for Rules {
    fn from(config: Config) -> Self {
        config.0
    }
}

impl std::ops::Deref for Config {
    type Target = Rules;

    fn deref(&self) -> &Rules {
        &self.0
    }
}

impl TryFrom<Rules> for Config {
    type Error = Invalid;

    /// Checks every rule that involves more than one value.
    fn try_from(rules: Rules) -> Result<Self, Invalid> {
        rules.check()?;
        Ok(Self(rules))
    }
}

/// The whole rules file, as written: any values, checked by turning it
/// into a [`Config`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Ports that are open, and whether to learn more from replies.
    pub services: Services,
    /// Networks never dropped or banned, and networks always dropped.
    pub lists: Lists,
    /// Scan detection thresholds.
    pub scan: Scan,
    /// Ban lengths and guards.
    pub ban: BanRules,
    /// What to do with each packet class.
    pub policy: Policy,
    /// Stealth and illegal-flag probes, and nmap's OS probes.
    pub probes: Probes,
    /// Scanner tool fingerprints.
    pub fingerprints: Fingerprints,
    /// ICMP handling.
    pub icmp: IcmpRules,
    /// Table sizes.
    pub tracking: Tracking,
    /// The inline daemon (`portcloak run`): queues, workers, fail mode, files.
    pub daemon: Daemon,
    /// The OS persona in force.
    pub persona: PersonaChoice,
    /// Personas defined by this file, besides the built-in ones.
    pub personas: std::collections::BTreeMap<String, PersonaSpec>,
    /// Ports hidden until a source knocks or sends a signed packet.
    pub hidden: Vec<Hidden>,
    /// The knock sequence that opens hidden ports.
    pub knock: Knock,
    /// Single-packet authorization.
    pub spa: Spa,
    /// Hosts that share bans.
    pub fleet: Fleet,
}

/// `[services]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Services {
    /// Open TCP ports.
    pub tcp: PortList,
    /// Open UDP ports.
    pub udp: PortList,
    /// Open SCTP ports.
    pub sctp: PortList,
    /// Treat a port as open once the host answers a SYN on it with a SYN-ACK
    /// (or a UDP datagram with a reply).
    pub learn_from_replies: bool,
}

/// `[lists]`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lists {
    /// Never dropped, never banned.
    pub allow: Vec<Cidr>,
    /// Always dropped.
    pub deny: Vec<Cidr>,
}

/// `[scan]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scan {
    /// Weighted distinct closed ports within `window` that ban a source.
    pub closed_port_threshold: u32,
    /// The short sliding window.
    pub window: Dur,
    /// Distinct closed ports within `slow_window` that ban a source.
    pub slow_threshold: u32,
    /// The long horizon.
    pub slow_window: Dur,
    /// Weight of a SYN to a closed TCP port.
    pub weight_tcp: u8,
    /// Weight of a datagram to a closed UDP port.
    pub weight_udp: u8,
    /// Weight of an SCTP packet to a closed port.
    pub weight_sctp: u8,
    /// Weight of a stealth probe that did not ban at once.
    pub weight_stealth: u8,
}

/// `[ban]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanRules {
    /// First ban length.
    pub duration: Dur,
    /// Longest ban; each repeat offence doubles the length up to this.
    pub max_duration: Dur,
    /// How long an offence is remembered after its ban ends.
    pub remember: Dur,
    /// A source that completed a TCP handshake this recently is not banned
    /// on a single-packet signature.
    pub handshake_grace: Dur,
    /// New bans per second on evidence that takes many packets (closed-port
    /// and slow-scan thresholds), over all sources.
    pub max_new_per_second: u32,
    /// New bans per second on one forgeable packet (a signature or a
    /// stealth probe from an unproven source), over all sources: a pool of
    /// its own, so forged packets cannot spend the evidence bans'.
    pub single_packet_per_second: u32,
    /// Single-packet bans each /24 (IPv4) or /48 (IPv6) may take per
    /// `duration`: what a spoofer can do to one network.
    pub single_packet_per_prefix: u32,
}

/// `[policy]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// A SYN or datagram to a closed port: drop silently, or let the kernel answer.
    pub closed_ports: ClosedPorts,
    /// Later IP fragments, which carry no transport header.
    pub fragments: Toggle,
    /// Packets that cannot be parsed.
    pub malformed: Toggle,
    /// IP protocols other than TCP, UDP, ICMP and SCTP.
    pub other_protocols: Toggle,
    /// A SYN-ACK that answers no connection of ours.
    pub unsolicited_syn_ack: Toggle,
}

/// `[probes]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Probes {
    /// No flags at all.
    pub null: Action,
    /// FIN outside a flow.
    pub fin: Action,
    /// FIN+URG(+PSH) and supersets.
    pub xmas: Action,
    /// FIN+ACK outside a flow.
    pub maimon: Action,
    /// ACK outside a flow.
    pub ack: Action,
    /// RST outside a flow.
    pub rst: Action,
    /// SYN+FIN.
    pub syn_fin: Action,
    /// SYN+RST.
    pub syn_rst: Action,
    /// PSH or URG alone outside a flow.
    pub illegal: Action,
    /// nmap's OS-detection probes.
    pub os_detection: Action,
}

/// `[fingerprints]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fingerprints {
    /// nmap's raw SYN.
    pub nmap_syn: Action,
    /// masscan.
    pub masscan: Action,
    /// zmap.
    pub zmap: Action,
    /// hping3 (non-zero ack without ACK).
    pub hping3: Action,
    /// nmap's empty ICMP echo.
    pub nmap_echo: Action,
    /// nmap's stealth probes: no SYN, window 1024, no options, no DF.
    pub nmap_stealth: Action,
}

/// `[icmp]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IcmpRules {
    /// Echo requests per second per source.
    pub echo_rate: f64,
    /// Echo requests a source may send at once.
    pub echo_burst: u32,
    /// ICMP timestamp requests.
    pub timestamp: Action,
    /// ICMP address-mask requests.
    pub address_mask: Action,
}

/// `[tracking]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tracking {
    /// Sources tracked at once.
    pub sources: usize,
    /// Connections tracked at once.
    pub flows: usize,
    /// Ban records held at once.
    pub bans: usize,
    /// Shards; a power of two.
    pub shards: usize,
    /// IPv6 sources are grouped by this prefix length.
    pub ipv6_prefix: u8,
    /// This many IPv6 sources (`ipv6_prefix` networks) of one
    /// `ipv6_escalate_prefix` network that touch closed ports within
    /// `scan.slow_window` ban that whole network; 0 turns it off.
    pub ipv6_escalate: u8,
    /// The wider IPv6 network escalation bans.
    pub ipv6_escalate_prefix: u8,
    /// A flow idle this long is forgotten.
    pub flow_idle: Dur,
}

/// `[daemon]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    /// Workers, one per inbound queue; 0 means one per CPU.
    pub workers: usize,
    /// Number of the first queue.
    pub queue: u16,
    /// Bytes of each inbound packet copied to userspace.
    pub copy_range: u16,
    /// Packets the kernel holds per queue awaiting a verdict.
    pub queue_maxlen: u32,
    /// Receive buffer of each queue's socket, in bytes.
    pub recv_buffer: usize,
    /// What happens to traffic portcloak cannot inspect.
    pub fail_mode: FailMode,
    /// A worker sheds while its queue holds more packets than this.
    pub shed_backlog: u32,
    /// A worker sheds packets that waited longer than this (when stamped).
    pub shed_age: Dur,
    /// Also queue outbound replies (SYN-ACKs, RSTs, ICMP replies and errors).
    pub outbound: bool,
    /// The lower of the two packet-mark bits the kernel rules use within
    /// the prerouting hook: this bit marks a proven pair's new connection
    /// (the fast path), the next one a proven source's queued packet.
    pub mark: u32,
    /// Memory the daemon may use, in MiB.
    pub memory_limit: u64,
    /// Where bans persist across restarts.
    pub state_file: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// A JSON-lines event file; empty for none.
    pub events: PathBuf,
    /// How often the drops-by-reason summary is logged.
    pub summary_interval: Dur,
    /// How often listening sockets are re-read.
    pub listen_interval: Dur,
    /// Where `/metrics` is served, in the Prometheus text format: an
    /// address and port, or empty for none.
    pub metrics: String,
}

impl Daemon {
    /// The address `/metrics` is served on; `None` when it is off. The
    /// check made sure a non-empty value parses.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.parse().ok()
    }
}

/// What happens to traffic that portcloak cannot inspect in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// It passes: the kernel accepts on a full queue or with no listener,
    /// and a worker that falls behind accepts without inspection.
    Open,
    /// It is dropped: availability is traded for never passing a packet
    /// unseen.
    Closed,
}

impl Rules {
    /// Bytes the tables may take at their configured sizes, with the fixed
    /// cost of buffers and threads: the source, flow, ban and network
    /// tables, and the side tables of the stages that are on (the gate's
    /// with a hidden port, the persona's per-peer counters). Per-entry
    /// figures of the main tables are measured upper bounds
    /// (benches/flood.rs fills every table), rounded up.
    pub fn table_budget(&self) -> u64 {
        const SOURCE: u64 = 448;
        const FLOW: u64 = 192;
        const BAN: u64 = 128;
        // A network record of the escalation (one per 8 sources): its LRU
        // node (key 18, `Suspects` 64, links 16 bytes, in a 112-byte
        // allocation) and its map slot, rounded up; computed, not measured.
        const NETWORK: u64 = 160;
        // The gate's state of a source (one per 8 sources): key 18,
        // `GateState` 80, links 16, in a 128-byte allocation, and its map
        // slot; computed.
        const GATE: u64 = 160;
        // A persona's peer (one per source): key 18, `Peer` 10, links 16,
        // in a 48-byte allocation, and its map slot; computed.
        const PEER: u64 = 80;
        const BASE: u64 = 32 << 20;
        let t = &self.tracking;
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let per8 = n(t.sources.div_ceil(8));
        let networks = t.escalation_prefix().map_or(0, |_| per8);
        let gates = if self.hidden.is_empty() { 0 } else { per8 };
        let peers = if self.persona().is_some() { n(t.sources) } else { 0 };
        BASE.saturating_add(n(t.sources).saturating_mul(SOURCE))
            .saturating_add(networks.saturating_mul(NETWORK))
            .saturating_add(gates.saturating_mul(GATE))
            .saturating_add(peers.saturating_mul(PEER))
            .saturating_add(n(t.flows).saturating_mul(FLOW))
            .saturating_add(n(t.bans).saturating_mul(BAN))
    }
}

impl Tracking {
    /// The wider IPv6 network escalation bans, in bits, while
    /// `ipv6_escalate` is on.
    pub const fn escalation_prefix(&self) -> Option<u8> {
        if self.ipv6_escalate == 0 { None } else { Some(self.ipv6_escalate_prefix) }
    }
}

impl Lists {
    /// True when `ip` is in an allowlisted network.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }

    /// True when `ip` is in a denylisted network.
    pub fn denies(&self, ip: std::net::IpAddr) -> bool {
        self.deny.iter().any(|c| c.contains(ip))
    }
}

impl Default for Services {
    fn default() -> Self {
        Self {
            tcp: PortList::default(),
            udp: PortList::default(),
            sctp: PortList::default(),
            learn_from_replies: true,
        }
    }
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            closed_port_threshold: 6,
            window: Dur::secs(60),
            slow_threshold: 20,
            slow_window: Dur::secs(3600),
            weight_tcp: 1,
            weight_udp: 1,
            weight_sctp: 1,
            weight_stealth: 2,
        }
    }
}

impl Default for BanRules {
    fn default() -> Self {
        Self {
            duration: Dur::secs(3600),
            max_duration: Dur::secs(86_400),
            remember: Dur::secs(86_400),
            handshake_grace: Dur::secs(600),
            max_new_per_second: 20,
            single_packet_per_second: 10,
            single_packet_per_prefix: 8,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            closed_ports: ClosedPorts::Drop,
            fragments: Toggle::Accept,
            malformed: Toggle::Drop,
            other_protocols: Toggle::Drop,
            unsolicited_syn_ack: Toggle::Drop,
        }
    }
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            null: Action::Ban,
            fin: Action::Ban,
            xmas: Action::Ban,
            maimon: Action::Ban,
            ack: Action::Ban,
            rst: Action::Drop,
            syn_fin: Action::Ban,
            syn_rst: Action::Ban,
            illegal: Action::Ban,
            os_detection: Action::Ban,
        }
    }
}

impl Default for Fingerprints {
    fn default() -> Self {
        Self {
            nmap_syn: Action::Ban,
            masscan: Action::Ban,
            zmap: Action::Ban,
            hping3: Action::Ban,
            nmap_echo: Action::Ban,
            nmap_stealth: Action::Ban,
        }
    }
}

impl Default for IcmpRules {
    fn default() -> Self {
        Self { echo_rate: 1.0, echo_burst: 4, timestamp: Action::Drop, address_mask: Action::Drop }
    }
}

impl Default for Tracking {
    fn default() -> Self {
        Self {
            sources: 131_072,
            flows: 262_144,
            bans: 65_536,
            shards: 64,
            ipv6_prefix: 64,
            ipv6_escalate: 4,
            ipv6_escalate_prefix: 48,
            flow_idle: Dur::secs(600),
        }
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            workers: 0,
            queue: 0,
            copy_range: 128,
            queue_maxlen: 4096,
            recv_buffer: 4 << 20,
            fail_mode: FailMode::Open,
            shed_backlog: 2048,
            shed_age: Dur::millis(50),
            outbound: false,
            mark: 0x1000_0000,
            memory_limit: 512,
            state_file: PathBuf::from("/var/lib/portcloak/state.json"),
            socket: PathBuf::from("/run/portcloak.sock"),
            events: PathBuf::new(),
            summary_interval: Dur::secs(60),
            listen_interval: Dur::secs(2),
            metrics: "127.0.0.1:9469".to_owned(),
        }
    }
}

impl Config {
    /// Reads and checks a rules file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        Self::from_toml(&text)
            .map_err(|error| ConfigError::Invalid { path: path.to_owned(), error })
    }

    /// Parses and checks rules from TOML text. The error names the key and its line.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let rules: Rules =
            toml::from_str(text).map_err(|e| RulesError::Toml(describe(text, &e)))?;
        Self::try_from(rules).map_err(|invalid| RulesError::Invalid {
            line: line_of(text, &invalid.section, &invalid.key),
            invalid,
        })
    }

    /// The rules, to change and check again: `Config::try_from(rules)`.
    pub fn into_rules(self) -> Rules {
        self.0
    }
}

impl Rules {
    /// The persona in force: `None` for `"none"`. One of this file's
    /// `[personas.NAME]` tables wins over a built-in one of the same name.
    pub fn persona(&self) -> Option<&PersonaSpec> {
        let name = self.persona.name.as_str();
        if name == NO_PERSONA {
            return None;
        }
        self.personas.get(name).or_else(|| builtin_personas().get(name))
    }

    /// Checks the rules that involve more than one value.
    fn check(&self) -> Result<(), Invalid> {
        let fail = |section: &str, key: &str, why: String| Err(Invalid::new(section, key, why));
        let s = &self.scan;
        if !(1..=RECENT_SLOTS as u32).contains(&s.closed_port_threshold) {
            return fail(
                "scan",
                "closed_port_threshold",
                format!("must be between 1 and {RECENT_SLOTS}"),
            );
        }
        if s.slow_threshold == 0 {
            return fail("scan", "slow_threshold", "must be at least 1".to_owned());
        }
        if s.window.get() < Duration::from_secs(1) {
            return fail("scan", "window", "must be at least 1s".to_owned());
        }
        if s.slow_window.get() < Duration::from_secs(2) {
            return fail("scan", "slow_window", "must be at least 2s".to_owned());
        }
        let b = &self.ban;
        if b.duration.get().is_zero() {
            return fail("ban", "duration", "must be longer than 0s".to_owned());
        }
        if b.max_duration.get() < b.duration.get() {
            return fail("ban", "max_duration", "must not be shorter than ban.duration".to_owned());
        }
        for (name, n) in [
            ("max_new_per_second", b.max_new_per_second),
            ("single_packet_per_second", b.single_packet_per_second),
            ("single_packet_per_prefix", b.single_packet_per_prefix),
        ] {
            if n == 0 {
                return fail("ban", name, "must be at least 1".to_owned());
            }
        }
        let i = &self.icmp;
        if !(i.echo_rate.is_finite() && i.echo_rate >= 0.0) {
            return fail("icmp", "echo_rate", "must be a non-negative number".to_owned());
        }
        let t = &self.tracking;
        for (key, value) in [("sources", t.sources), ("flows", t.flows), ("bans", t.bans)] {
            if value == 0 || value > 1 << 26 {
                return fail("tracking", key, format!("must be between 1 and {}", 1 << 26));
            }
        }
        if !t.shards.is_power_of_two() || t.shards > 4096 {
            return fail("tracking", "shards", "must be a power of two up to 4096".to_owned());
        }
        if !(1..=128).contains(&t.ipv6_prefix) {
            return fail("tracking", "ipv6_prefix", "must be between 1 and 128".to_owned());
        }
        if usize::from(t.ipv6_escalate) > crate::track::SUSPECT_SLOTS {
            let most = crate::track::SUSPECT_SLOTS;
            return fail("tracking", "ipv6_escalate", format!("must be at most {most} (0 = off)"));
        }
        if t.ipv6_escalate > 0 && !(16..t.ipv6_prefix).contains(&t.ipv6_escalate_prefix) {
            return fail(
                "tracking",
                "ipv6_escalate_prefix",
                format!("must be at least 16 and shorter than ipv6_prefix ({})", t.ipv6_prefix),
            );
        }
        let d = &self.daemon;
        if d.workers > 1024 {
            return fail("daemon", "workers", "must be at most 1024 (0 = one per CPU)".to_owned());
        }
        if d.mark.count_ones() != 1 || d.mark >= 1 << 31 {
            return fail(
                "daemon",
                "mark",
                "must be one bit below 0x80000000 (the rules use it and the bit above it)".into(),
            );
        }
        if d.copy_range < 80 {
            return fail("daemon", "copy_range", "must be at least 80 (IP and TCP headers)".into());
        }
        if d.queue_maxlen == 0 {
            return fail("daemon", "queue_maxlen", "must be at least 1".to_owned());
        }
        if d.shed_backlog == 0 || d.shed_backlog > d.queue_maxlen {
            return fail("daemon", "shed_backlog", "must be between 1 and queue_maxlen".to_owned());
        }
        if d.summary_interval.get() < Duration::from_secs(1) {
            return fail("daemon", "summary_interval", "must be at least 1s".to_owned());
        }
        if d.listen_interval.get() < Duration::from_millis(100) {
            return fail("daemon", "listen_interval", "must be at least 100ms".to_owned());
        }
        if !d.metrics.is_empty() && d.metrics.parse::<std::net::SocketAddr>().is_err() {
            let why = format!(
                "{:?} is not an address and port (\"127.0.0.1:9469\", \"[::1]:9469\"), or \"\" for none",
                d.metrics
            );
            return fail("daemon", "metrics", why);
        }
        self.check_personas()?;
        self.check_gate()?;
        if let Some((key, why)) = self.fleet.problem() {
            return fail("fleet", key, why);
        }
        let need = self.table_budget() >> 20;
        if d.memory_limit < need {
            return fail(
                "daemon",
                "memory_limit",
                format!(
                    "is below the {need} MiB the [tracking] tables can take; raise it or shrink them"
                ),
            );
        }
        Ok(())
    }
}

impl Rules {
    fn check_gate(&self) -> Result<(), Invalid> {
        let fail = |section: &str, key: &str, why: &str| Err(Invalid::new(section, key, why));
        if self.hidden.len() > 16 {
            return fail("hidden", "port", "lists more than 16 hidden ports");
        }
        let services = &self.services;
        let open = |proto: GateProto, port: u16| match proto {
            GateProto::Tcp => services.tcp.contains(port),
            GateProto::Udp => services.udp.contains(port),
        };
        for (i, h) in self.hidden.iter().enumerate() {
            if h.port == 0 {
                return fail("hidden", "port", "must not be 0");
            }
            if self.hidden.iter().take(i).any(|o| o.proto == h.proto && o.port == h.port) {
                return fail("hidden", "port", &format!("{} is hidden twice", h.port));
            }
            if open(h.proto, h.port) {
                return fail("hidden", "port", &format!("{} is also listed in [services]", h.port));
            }
            if h.open_for.get() < Duration::from_secs(1) {
                return fail("hidden", "open_for", "must be at least 1s");
            }
        }
        let k = &self.knock;
        if !k.sequence.is_empty() {
            if self.hidden.is_empty() {
                return fail("knock", "sequence", "opens nothing: there is no [[hidden]] port");
            }
            if !(3..=16).contains(&k.sequence.len()) {
                return fail("knock", "sequence", "must have between 3 and 16 steps");
            }
            for (i, step) in k.sequence.iter().enumerate() {
                if k.sequence.iter().take(i).any(|o| o == step) {
                    return fail("knock", "sequence", &format!("names {step} twice"));
                }
                let hidden =
                    self.hidden.iter().any(|h| h.proto == step.proto && h.port == step.port);
                let spa = self.spa.enabled()
                    && step.proto == GateProto::Udp
                    && step.port == self.spa.port;
                if hidden || spa || open(step.proto, step.port) {
                    return fail(
                        "knock",
                        "sequence",
                        &format!(
                            "{step} is a hidden, SPA or service port; knock ports must be unused"
                        ),
                    );
                }
            }
            if k.within.get() < Duration::from_secs(1) {
                return fail("knock", "within", "must be at least 1s");
            }
        }
        let s = &self.spa;
        if s.enabled() {
            if self.hidden.is_empty() {
                return fail("spa", "key_file", "opens nothing: there is no [[hidden]] port");
            }
            let clash = self.hidden.iter().any(|h| h.proto == GateProto::Udp && h.port == s.port);
            if s.port == 0 || clash || open(GateProto::Udp, s.port) {
                return fail("spa", "port", "must be an unused UDP port, not 0");
            }
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.max_age.get()) {
                return fail("spa", "max_age", "must be between 1s and 1h");
            }
            if !(1..=1 << 20).contains(&s.nonces) {
                return fail("spa", "nonces", &format!("must be between 1 and {}", 1 << 20));
            }
            if !(s.rate.is_finite() && s.rate > 0.0) || s.burst == 0 {
                return fail("spa", "rate", "and spa.burst must be above 0");
            }
            if s.checks_per_second == 0 {
                return fail("spa", "checks_per_second", "must be above 0");
            }
        }
        Ok(())
    }

    fn check_personas(&self) -> Result<(), Invalid> {
        let name = &self.persona.name;
        if name != NO_PERSONA && self.persona().is_none() {
            let mut known: Vec<&str> = vec![NO_PERSONA];
            known.extend(builtin_personas().keys().map(String::as_str));
            known.extend(self.personas.keys().map(String::as_str));
            return Err(Invalid::new(
                "persona",
                "name",
                format!("names no persona; known: {}", known.join(", ")),
            ));
        }
        for (pname, p) in &self.personas {
            let section = format!("personas.{pname}");
            let fail = |key: &str, why: &str| Err(Invalid::new(&section, key, why));
            if pname == NO_PERSONA {
                return fail("description", "defines `none`, which means no persona");
            }
            for probe in &p.answer {
                if matches!(probe, OsProbe::U1 | OsProbe::Ie1 | OsProbe::Ie2) {
                    return fail(
                        "answer",
                        "names a probe that is not TCP (only TCP probes get a reset)",
                    );
                }
                if p.silence.contains(probe) {
                    return fail("answer", "names a probe `silence` names too");
                }
            }
            let mut seen = 0u8;
            for opt in &p.syn_ack_options {
                let bit = 1 << (*opt as u8);
                if seen & bit != 0 {
                    return fail("syn_ack_options", "names an option twice");
                }
                seen |= bit;
            }
            let s = &p.sysctls;
            let sysctl =
                |key: &str, why: &str| Err(Invalid::new(&format!("{section}.sysctls"), key, why));
            if s.tcp_ecn.is_some_and(|v| v > 2) {
                return sysctl("tcp_ecn", "must be 0, 1 or 2");
            }
            if s.tcp_timestamps.is_some_and(|v| v > 2) {
                return sysctl("tcp_timestamps", "must be 0, 1 or 2");
            }
            if s.window_scale.is_some_and(|v| v > 14) {
                return sysctl("window_scale", "must be between 0 and 14");
            }
            if s.ip_default_ttl == Some(0) {
                return sysctl("ip_default_ttl", "must be between 1 and 255");
            }
        }
        Ok(())
    }
}

/// Turns a TOML error into one line naming the key (`section.key`, when
/// TOML points at one) and its line, plus TOML's own explanation.
fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let Some(span) = err.span() else {
        return message.to_owned();
    };
    let line = text.get(..span.start).map_or(1, |t| t.matches('\n').count() + 1);
    let section = section_of_line(text, line);
    let qualify = |key: &str| match &section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_owned(),
    };
    if message.starts_with("unknown field") {
        let key = text.get(span).unwrap_or("").trim();
        format!("line {line}: unknown key `{}`: {message}", qualify(key))
    } else {
        match key_on_line(text, line) {
            Some(key) => format!("line {line}: bad value for key `{}`: {message}", qualify(&key)),
            None => format!("line {line}: {message}"),
        }
    }
}

/// The `[section]` a line belongs to.
fn section_of_line(text: &str, line: usize) -> Option<String> {
    text.lines().take(line).filter_map(section_header).last().map(str::to_owned)
}

fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_owned())
}

/// The name in a `[section]` header line.
fn section_header(line: &str) -> Option<&str> {
    line.trim().strip_prefix('[').and_then(|r| r.strip_suffix(']')).map(str::trim)
}

/// The line `section.key` is on in `text`, if it is there.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = "";
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(name) = section_header(line) {
            current = name;
        } else if current == section && l.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(n + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests;
