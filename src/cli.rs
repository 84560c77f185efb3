//! The command line: argument definitions and the commands they run.
//!
//! `main` parses, calls [`run`], and turns the result into an exit code.
//! Exit codes: 0 success, 1 a rules file that does not pass `check`,
//! 2 any other error (unreadable input, bad arguments).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Cidr, Config};
use crate::engine::Engine;
use crate::runtime::replay;

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
    },
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
        Command::Replay { files, rules, local, json, no_progress } => {
            let config = match &rules {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let local = local
                .iter()
                .map(|s| s.parse::<Cidr>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("bad --local")?;
            let engine = Engine::new(config);
            let options = replay::Options { local, json, progress: !no_progress };
            let stdout = std::io::stdout();
            let mut events = stdout.lock();
            let report = replay::run(&engine, &files, &options, &mut events)?;
            events.flush()?;
            if json {
                replay::write_summary(&mut std::io::stderr().lock(), &files, &report)?;
            } else {
                replay::write_summary(&mut events, &files, &report)?;
                events.flush()?;
            }
            Ok(Status::Ok)
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<Status> {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(crate::config::ConfigError::Invalid { path, message }) => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "portcloak: {}: {message}", path.display())?;
            return Ok(Status::Failed);
        }
        Err(e) => return Err(e.into()),
    };
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
        "  bans       {} doubling to {}; at most {} new per second; handshake grace {}",
        config.ban.duration,
        config.ban.max_duration,
        config.ban.max_new_per_second,
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
    Ok(Status::Ok)
}
