//! portcloak: an NFQUEUE inline inspection engine that hides a Linux server
//! from port scanners, and replays captures through the very same engine.
//!
//! # Life of a packet
//!
//! ```text
//! io (NFQUEUE or pcap) ─ RawPacket { ts, direction, bytes from the IP header }
//!   └─ Engine::handle(now, direction, &mut bytes)          engine.rs
//!        ├─ wire::parse       bytes → PacketView, checksums verified  wire/
//!        ├─ track: lock the source's shard; ban check; flow lookup    track/
//!        ├─ classify          PacketView + in-flow → Probe            classify.rs
//!        ├─ track             SourceState: seen, closed ports, echo   track/
//!        └─ policy::inbound   Probe + state + rules → Decision, ban?  policy/
//!   ← Outcome { verdict, reason, kind, signature, ban, rewritten }
//! runtime (replay summary / JSON events; the daemon's verdicts)       runtime/, event.rs
//! Engine::sweep(now) on a timer: idle flows and sources go, ended bans are reported
//! ```
//!
//! The engine does no I/O and reads no clock: `now` comes from the capture
//! in replay and from `CLOCK_MONOTONIC` inline. Nothing from `wire` to
//! `policy` panics on packet bytes or allocates, except a new table entry
//! while its table is below its cap.
//!
//! # Modules, in data-flow order
//! - [`io`]: packet sources; today the pcap/pcapng reader.
//! - [`wire`]: parsing, checksums, link layers, and a packet crafter for tests.
//! - [`classify`]: probe kinds and scanner signatures.
//! - [`track`]: sharded, bounded tables of sources, flows and bans.
//! - [`policy`]: verdicts, bans and their guards, open ports.
//! - [`engine`]: the per-packet call that ties them together.
//! - [`event`]: the events a run reports.
//! - [`runtime`]: drivers of the engine; today offline replay.
//! - [`config`] and [`time`]: the rules and the engine's notion of time.

pub mod classify;
pub mod cli;
pub mod config;
pub mod engine;
pub mod event;
pub mod firewall;
pub mod io;
pub mod policy;
pub mod runtime;
pub mod time;
pub mod track;
pub mod wire;

pub use crate::config::Config;
pub use crate::engine::{Direction, Engine, Meta, Outcome};
pub use crate::policy::{Reason, Verdict};
pub use crate::time::Timestamp;
