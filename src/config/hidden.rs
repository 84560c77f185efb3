//! `[[hidden]]`, `[knock]` and `[spa]`: ports invisible until a source
//! proves itself, by a knock sequence or a single signed packet.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::types::Dur;

/// The transport of a hidden port or a knock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateProto {
    /// TCP: a SYN.
    #[default]
    Tcp,
    /// UDP: a datagram.
    Udp,
}

impl GateProto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// `tcp` or `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// `[[hidden]]`: one hidden port.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hidden {
    /// The port.
    pub port: u16,
    /// Its transport.
    #[serde(default)]
    pub proto: GateProto,
    /// How long an authorized source may start new connections to it.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
}

fn default_open_for() -> Dur {
    Dur::secs(30)
}

/// One step of a knock sequence: `"tcp:7001"` or `"udp:7002"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KnockStep {
    /// Its transport.
    pub proto: GateProto,
    /// Its port.
    pub port: u16,
}

impl fmt::Display for KnockStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto.name(), self.port)
    }
}

impl FromStr for KnockStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, port) = s.split_once(':').ok_or_else(|| format!("`{s}` is not PROTO:PORT"))?;
        let proto = match proto {
            "tcp" => GateProto::Tcp,
            "udp" => GateProto::Udp,
            other => return Err(format!("`{other}` is neither tcp nor udp")),
        };
        let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
        if port == 0 {
            return Err("port 0 cannot be knocked on".to_owned());
        }
        Ok(Self { proto, port })
    }
}

impl Serialize for KnockStep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KnockStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[knock]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knock {
    /// The ordered steps; empty turns knocking off.
    pub sequence: Vec<KnockStep>,
    /// The whole sequence must arrive within this.
    pub within: Dur,
}

impl Default for Knock {
    fn default() -> Self {
        Self { sequence: Vec::new(), within: Dur::secs(10) }
    }
}

/// `[spa]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spa {
    /// The HMAC key file (64 hex digits, readable by root only); empty turns
    /// single-packet authorization off.
    pub key_file: PathBuf,
    /// The UDP port SPA packets go to.
    pub port: u16,
    /// Oldest (and furthest in the future) a packet's timestamp may be.
    pub max_age: Dur,
    /// Nonces remembered, to reject replays.
    pub nonces: usize,
    /// Valid SPA packets per second a source may use; more are dropped.
    /// Forged ones never spend it: the HMAC is checked first.
    pub rate: f64,
    /// Valid SPA packets a source may use at once.
    pub burst: u32,
    /// HMAC checks per second over all sources: the bound on what forged
    /// packets cost. Over it, SPA packets are dropped unchecked.
    pub checks_per_second: u32,
}

impl Default for Spa {
    fn default() -> Self {
        Self {
            key_file: PathBuf::new(),
            port: 62201,
            max_age: Dur::secs(120),
            nonces: 65_536,
            rate: 1.0,
            burst: 5,
            checks_per_second: 20_000,
        }
    }
}

impl Spa {
    /// True when a key file is configured.
    pub fn enabled(&self) -> bool {
        !self.key_file.as_os_str().is_empty()
    }
}
