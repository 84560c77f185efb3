//! `[fleet]`: hosts that share bans and catch sweeps through NATS
//! JetStream.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[fleet]`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fleet {
    /// The NATS server, or several of a cluster separated by commas
    /// (`nats://198.18.9.1:4222,nats://198.18.9.2:4222`); empty: no fleet.
    pub url: String,
    /// This host's name in the fleet; empty: the hostname.
    pub name: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject the stream holds; bans go to `SUBJECT.ban`, sweep
    /// summaries to `SUBJECT.touch`.
    pub subject: String,
    /// The fleet's shared HMAC-SHA256 key (64 hex digits, mode 0600, from
    /// `portcloak keygen`).
    pub key_file: PathBuf,
    /// A source that touches closed ports on this many hosts within
    /// `scan.window` is banned fleet-wide.
    pub sweep_hosts: u8,
    /// Messages to publish held while the broker is away; older ones are
    /// dropped, counted, when it is full.
    pub queue: usize,
    /// NATS user and password (both or neither).
    pub user: String,
    /// See `user`.
    pub password: String,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds_file: PathBuf,
    /// An nkey seed file.
    pub nkey_file: PathBuf,
    /// A CA certificate (PEM) to verify the server's TLS certificate;
    /// setting it requires TLS.
    pub tls_ca_file: PathBuf,
    /// The stream's replicas (1 for a single server, 3 for a cluster).
    pub replicas: usize,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            url: String::new(),
            name: String::new(),
            stream: "PORTCLOAK".to_owned(),
            subject: "portcloak.fleet".to_owned(),
            key_file: PathBuf::new(),
            sweep_hosts: 4,
            queue: 65_536,
            user: String::new(),
            password: String::new(),
            creds_file: PathBuf::new(),
            nkey_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            replicas: 1,
        }
    }
}

impl Fleet {
    /// True when this host is part of a fleet.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// What is wrong with these settings, as (key, why).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !self.enabled() {
            return None;
        }
        for url in self.url.split(',') {
            let url = url.trim();
            let rest = url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Some((
                    "url",
                    format!("`{url}` is not nats://HOST:PORT or tls://HOST:PORT"),
                ));
            }
        }
        if self.key_file.as_os_str().is_empty() {
            return Some((
                "key_file",
                "a fleet needs its shared key (portcloak keygen FILE)".into(),
            ));
        }
        let token = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.stream) {
            return Some(("stream", "letters, digits, - and _ only".into()));
        }
        if !self.subject.split('.').all(token) {
            return Some(("subject", "dot-separated tokens of letters, digits, - and _".into()));
        }
        if !self.name.is_empty() && !token(&self.name.replace('.', "-")) {
            return Some(("name", "letters, digits, ., - and _ only".into()));
        }
        if self.sweep_hosts < 2 {
            return Some(("sweep_hosts", "must be at least 2".into()));
        }
        if self.queue == 0 || self.queue > 1 << 20 {
            return Some(("queue", "must be between 1 and 1048576".into()));
        }
        if self.user.is_empty() != self.password.is_empty() {
            return Some(("password", "user and password go together".into()));
        }
        if !(1..=5).contains(&self.replicas) {
            return Some(("replicas", "must be between 1 and 5".into()));
        }
        None
    }
}
