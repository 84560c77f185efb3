//! The command line: argument definitions and the commands they run.
//!
//! `main` parses, calls [`run`], and turns the result into an exit code.
//! Exit codes: 0 success, 1 a rules file that does not pass `check`,
//! 2 any other error (unreadable input, bad arguments).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Cidr, Config, GateProto};
use crate::engine::Engine;
use crate::firewall;
use crate::runtime::control::{self, Request};
use crate::runtime::protocol::{BanList, Banned, Lifted, StatusReport};
use crate::runtime::{daemon, knock, replay};
use crate::time::{format_duration, parse_duration};

/// Where the control socket is when neither `--socket` nor a rules file says.
const DEFAULT_SOCKET: &str = "/run/portcloak.sock";

/// portcloak: hide a Linux server from port scanners.
#[derive(Debug, Parser)]
#[command(name = "portcloak", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a rules file; a problem is reported with its key and line.
    Check {
        /// The rules file.
        file: PathBuf,
    },
    /// Replay pcap or pcapng captures through the engine and summarise.
    Replay {
        /// Captures, replayed in order through one engine.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Rules file; the built-in defaults (identical to rules/default.toml) if absent.
        #[arg(short = 'c', long = "rules")]
        rules: Option<PathBuf>,
        /// The protected host's addresses or networks (repeatable);
        /// inferred from each capture when absent.
        #[arg(long = "local", value_name = "CIDR")]
        local: Vec<String>,
        /// Print one JSON line per event on stdout (drops, bans, unbans,
        /// rewrites); the summary then goes to stderr.
        #[arg(long)]
        json: bool,
        /// Never show a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Which checksums to believe: `auto` accepts the checksums a
        /// kernel leaves for the NIC (captures taken with offload on) and
        /// drops wrong ones, unless a tenth of each file's first packets
        /// are wrong; `verify` drops both; `off` checks none.
        #[arg(long, value_enum, default_value_t = replay::ChecksumMode::Auto)]
        checksums: replay::ChecksumMode,
        /// Also write a self-contained HTML page to look at: packets over
        /// time, drops by reason, and each banned source's probes over time
        /// with its ban marked.
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
        /// Threads in all: one reads and accounts, the others judge
        /// packets, each the sources of its own table shards; the output
        /// is the same as with one. Default: one per CPU. With an OS
        /// persona or hidden ports, one thread does all.
        #[arg(long, value_name = "N")]
        threads: Option<std::num::NonZeroUsize>,
    },
    /// Run inline: install the firewall objects, inspect the queues, ban
    /// scanners in the kernel. Needs root or CAP_NET_ADMIN.
    Run {
        /// Rules file; the built-in defaults (identical to rules/default.toml) if absent.
        #[arg(short = 'c', long = "rules")]
        rules: Option<PathBuf>,
        /// Install no firewall objects: the administrator's own ruleset
        /// feeds the queues and applies bans (see `portcloak firewall`).
        #[arg(long)]
        no_firewall: bool,
    },
    /// Print the exact ruleset `run` would install, without applying it.
    Firewall {
        /// Rules file; the built-in defaults if absent.
        #[arg(short = 'c', long = "rules")]
        rules: Option<PathBuf>,
    },
    /// The running daemon's counters: per worker, tables, bans, memory.
    Status {
        /// Which daemon.
        #[command(flatten)]
        target: Target,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List the active bans.
    Bans {
        /// Which daemon.
        #[command(flatten)]
        target: Target,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address (an IPv6 address bans its tracked prefix).
    Ban {
        /// The address.
        ip: std::net::IpAddr,
        /// How long, such as 90s, 30m, 2h or 1d; the rules' ban.duration if absent.
        #[arg(long = "for", value_name = "DURATION")]
        length: Option<String>,
        /// Which daemon.
        #[command(flatten)]
        target: Target,
    },
    /// Open a hidden port of HOST for this host: send one signed SPA packet
    /// (`--key-file`), or knock a sequence (`--sequence`).
    Knock {
        /// The protected host.
        host: std::net::IpAddr,
        /// The shared key (from `portcloak keygen`): send an SPA packet.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "sequence",
            required_unless_present = "sequence"
        )]
        key_file: Option<PathBuf>,
        /// The hidden port to open.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Its protocol: tcp or udp.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
        proto: String,
        /// The host's spa.port.
        #[arg(long, default_value_t = 62201)]
        spa_port: u16,
        /// The address to open the port for [default: this host's address
        /// towards HOST]; behind NAT, the public address.
        #[arg(long, value_name = "IP")]
        source: Option<std::net::IpAddr>,
        /// Knock these steps in order, as in the host's knock.sequence:
        /// tcp:7001,udp:7002,tcp:7003.
        #[arg(long, value_delimiter = ',', value_name = "STEPS")]
        sequence: Vec<crate::config::KnockStep>,
        /// Time between knocks.
        #[arg(long, default_value = "100ms")]
        gap: String,
    },
    /// Write a new SPA key to FILE (mode 0600), for the host's spa.key_file
    /// and its clients' `knock --key-file`.
    Keygen {
        /// The key file to create; it must not exist.
        file: PathBuf,
    },
    /// Lift the ban on an address, or every ban with `all`.
    Unban {
        /// The address, or `all`.
        ip: String,
        /// Which daemon.
        #[command(flatten)]
        target: Target,
    },
}

/// Which daemon a control command talks to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The control socket [default: daemon.socket of the rules file, or /run/portcloak.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The rules file the daemon runs with, to find its socket.
    #[arg(short = 'c', long = "rules")]
    rules: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.rules {
            Some(path) => Ok(Config::load(path)?.into_rules().daemon.socket),
            None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        }
    }
}

/// What a command wants the process to exit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok,
    /// The command ran and found a problem (a rules file that fails `check`).
    Failed,
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Replay {
            files,
            rules,
            local,
            json,
            no_progress,
            checksums,
            report: html,
            threads,
        } => {
            let config = load_or_default(rules.as_deref())?;
            let local = local
                .iter()
                .map(|s| s.parse::<Cidr>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("bad --local")?;
            let engine = Engine::new(config);
            let options = replay::Options {
                local,
                json,
                progress: !no_progress,
                checksums,
                trails: html.is_some(),
                threads: threads
                    .or_else(|| std::thread::available_parallelism().ok())
                    .map_or(1, std::num::NonZeroUsize::get),
            };
            let stdout = std::io::stdout();
            let mut events = stdout.lock();
            let report = replay::run(&engine, &files, &options, &mut events)?;
            events.flush()?;
            if let Some(path) = &html {
                let mut out = std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                );
                replay::write_html(&mut out, &files, &report)
                    .and_then(|()| out.flush())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                replay::write_summary(&mut std::io::stderr().lock(), &files, &report)?;
            } else {
                replay::write_summary(&mut events, &files, &report)?;
                events.flush()?;
            }
            Ok(Status::Ok)
        }
        Command::Knock { host, key_file, port, proto, spa_port, source, sequence, gap } => {
            let mut out = std::io::stdout().lock();
            if let Some(key_file) = key_file {
                let key = knock::read_key(&key_file)?;
                let proto = if proto == "udp" { GateProto::Udp } else { GateProto::Tcp };
                let ip = knock::send_spa(host, spa_port, &key, proto, port, source)?;
                writeln!(
                    out,
                    "sent an SPA packet to {host} udp/{spa_port}: open {}/{port} for {ip}",
                    proto.name()
                )?;
            } else {
                let gap = parse_duration(&gap)
                    .ok_or_else(|| anyhow::anyhow!("bad --gap `{gap}`: use 100ms, 1s, ..."))?;
                knock::send_knocks(host, &sequence, gap)?;
                writeln!(out, "knocked {} step(s) on {host}", sequence.len())?;
            }
            Ok(Status::Ok)
        }
        Command::Keygen { file } => {
            knock::keygen(&file)?;
            writeln!(
                std::io::stdout().lock(),
                "wrote a new key to {} (mode 0600)",
                file.display()
            )?;
            Ok(Status::Ok)
        }
        Command::Run { rules, no_firewall } => {
            let config = load_or_default(rules.as_deref())?;
            daemon::run(daemon::Options { config, firewall: !no_firewall })?;
            Ok(Status::Ok)
        }
        Command::Firewall { rules } => {
            let config = load_or_default(rules.as_deref())?;
            let (backend, note) = match firewall::detect() {
                Ok(b) => (b, None),
                Err(e) => (firewall::Backend::Iptables, Some(e)),
            };
            let plan = daemon::plan(&config, backend, daemon::worker_count(&config));
            let mut out = std::io::stdout().lock();
            if let Some(e) = note {
                writeln!(out, "# could not ask the kernel ({e}); assuming no nft queue")?;
            }
            out.write_all(plan.describe().as_bytes())?;
            Ok(Status::Ok)
        }
        Command::Status { target, json } => {
            let status: StatusReport = control::request(&target.socket()?, &Request::Status)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string(&status)?)?;
            } else {
                status.write_text(&mut out)?;
            }
            Ok(Status::Ok)
        }
        Command::Bans { target, json } => {
            let list: BanList = control::request(&target.socket()?, &Request::Bans)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string(&list.bans)?)?;
            } else {
                list.write_text(&mut out)?;
            }
            Ok(Status::Ok)
        }
        Command::Ban { ip, length, target } => {
            let seconds = match length {
                Some(text) => Some(
                    parse_duration(&text)
                        .filter(|d| !d.is_zero())
                        .with_context(|| format!("bad --for `{text}`: write 90s, 30m, 2h or 1d"))?
                        .as_secs()
                        .max(1),
                ),
                None => None,
            };
            let banned: Banned =
                control::request(&target.socket()?, &Request::Ban { ip, seconds })?;
            let length = format_duration(std::time::Duration::from_secs(banned.seconds));
            writeln!(std::io::stdout().lock(), "banned {} for {length}", banned.source)?;
            Ok(Status::Ok)
        }
        Command::Unban { ip, target } => {
            let ip = if ip == "all" {
                None
            } else {
                Some(ip.parse().map_err(|_| anyhow::anyhow!("`{ip}` is not an address or `all`"))?)
            };
            let answer: Lifted = control::request(&target.socket()?, &Request::Unban { ip })?;
            writeln!(std::io::stdout().lock(), "lifted {} ban(s)", answer.lifted.len())?;
            Ok(Status::Ok)
        }
    }
}

fn load_or_default(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn check(file: &std::path::Path) -> anyhow::Result<Status> {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(crate::config::ConfigError::Invalid { path, error }) => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "portcloak: {}: {error}", path.display())?;
            return Ok(Status::Failed);
        }
        Err(e) => return Err(e.into()),
    };
    // The fleet's key must be there and readable now, not at the first
    // start.
    if config.fleet.enabled()
        && let Err(e) = crate::runtime::knock::read_key(&config.fleet.key_file)
    {
        writeln!(
            std::io::stderr().lock(),
            "portcloak: {}: [fleet] key_file: {e:#}",
            file.display()
        )?;
        return Ok(Status::Failed);
    }
    let mut out = std::io::stdout().lock();
    let s = &config.services;
    writeln!(out, "{}: ok", file.display())?;
    writeln!(
        out,
        "  services   tcp {} ports, udp {} ports, sctp {} ports, learn from replies: {}",
        s.tcp.len(),
        s.udp.len(),
        s.sctp.len(),
        s.learn_from_replies
    )?;
    writeln!(
        out,
        "  scan       ban at {} closed ports in {}, or {} in {}",
        config.scan.closed_port_threshold,
        config.scan.window,
        config.scan.slow_threshold,
        config.scan.slow_window
    )?;
    writeln!(
        out,
        "  bans       {} doubling to {}; at most {} new per second on evidence, {} on one packet ({} per /24 or /48 per ban); handshake grace {}",
        config.ban.duration,
        config.ban.max_duration,
        config.ban.max_new_per_second,
        config.ban.single_packet_per_second,
        config.ban.single_packet_per_prefix,
        config.ban.handshake_grace
    )?;
    writeln!(
        out,
        "  tracking   {} sources, {} flows, {} ban records in {} shards",
        config.tracking.sources,
        config.tracking.flows,
        config.tracking.bans,
        config.tracking.shards
    )?;
    if !config.hidden.is_empty() {
        let ports: Vec<String> = config
            .hidden
            .iter()
            .map(|h| format!("{}/{} (open {})", h.proto.name(), h.port, h.open_for))
            .collect();
        let knock = match config.knock.sequence.len() {
            0 => "no knock".to_owned(),
            n => format!("knock of {n} steps within {}", config.knock.within),
        };
        let spa = if config.spa.enabled() {
            format!("spa on udp/{} with {}", config.spa.port, config.spa.key_file.display())
        } else {
            "no spa".to_owned()
        };
        writeln!(out, "  hidden     {}; {knock}; {spa}", ports.join(", "))?;
    }
    let f = &config.fleet;
    if f.enabled() {
        writeln!(
            out,
            "  fleet      {} as {} on stream {} ({} replica(s)), subject {}; sweeps across {} hosts",
            f.url,
            crate::runtime::fleet::host_name(f),
            f.stream,
            f.replicas,
            f.subject,
            f.sweep_hosts
        )?;
    }
    match config.persona() {
        None => writeln!(out, "  persona    none")?,
        Some(p) => {
            writeln!(out, "  persona    {}: {}", config.persona.name, p.description)?;
            writeln!(out, "  sysctls the persona wants (in this network namespace):")?;
            out.write_all(
                crate::runtime::sysctl::describe(&p.sysctls, config.persona.apply_sysctls)
                    .as_bytes(),
            )?;
        }
    }
    Ok(Status::Ok)
}
