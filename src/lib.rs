//! portcloak: an NFQUEUE inline inspection engine that hides a Linux server
//! from port scanners, and replays captures through the very same engine.
//!
//! # Life of a packet
//!
//! ```text
//! kernel: conntrack proves handshakes; inet portcloak drops banned sources,
//!         records proven pairs, passes their new connections (the fast path),
//!         marks proven sources; the queue rules feed the rest             firewall/
//! io (an NFQUEUE worker, or a pcap frame) ─ { now, direction, bytes from the IP header }
//!   └─ Engine::handle(now, direction, &mut bytes)          engine.rs
//!        ├─ wire::parse       bytes → PacketView, checksums verified  wire/
//!        ├─ track: lock the source's shard; ban/quarantine            track/
//!        ├─ track::flow       the connection it belongs to, handshakes  track/flow.rs
//!        ├─ classify          PacketView + in-flow → Probe            classify.rs
//!        ├─ track             SourceState: seen, closed ports, echo   track/
//!        ├─ gate              hidden ports, knocks, SPA → Gated       gate/
//!        ├─ policy::inbound   Probe + state + proven? → Decision, ban?   policy/
//!        ├─ disguise          an OS probe the persona ignores → drop  disguise.rs
//!        └─ outbound: disguise  a persona's edits, in place            disguise.rs
//!   ← Outcome { verdict, reason, kind, signature, ban, rewritten, reply, gate }
//! runtime (replay summary / JSON events; the daemon's verdicts)       runtime/, event.rs
//! daemon: a ban goes to the kernel set within 50 ms and to the state file  runtime/daemon/keeper.rs
//!         and, with [fleet], to the other hosts through JetStream         runtime/fleet/
//! Engine::sweep(now) on a timer: idle flows and sources go, ended bans are reported
//! ```
//!
//! The engine does no I/O and reads no clock: `now` comes from the capture
//! in replay and, inline, from the monotonic clock anchored at the wall
//! clock (`runtime::clock`), so a wall step moves no rate limit and ban ends
//! saved in the state file mean the same after a restart. Nothing from `wire` to
//! `policy` panics on packet bytes or allocates, except a new table entry
//! while its table is below its cap.
//!
//! # Modules, in data-flow order
//! - [`io`]: capture files: the pcap/pcapng reader (the NFQUEUE source is
//!   `runtime::queue`).
//! - [`wire`]: parsing, checksums, link layers, in-place rewrites with
//!   incremental checksums (`wire::rewrite`), and a packet crafter for
//!   tests (the `craft` feature).
//! - [`classify`]: probe kinds and scanner signatures.
//! - [`track`]: sharded, bounded tables of sources, flows (and the
//!   handshake's transitions), bans and the IPv6 networks escalation
//!   watches; the segmented LRU they and the stages' side tables use.
//! - [`policy`]: verdicts, bans and their guards, open ports.
//! - [`disguise`]: what an OS persona changes in the host's replies
//!   (`wire::rewrite` writes it), its answers to probes, and its side table
//!   of peers.
//! - [`gate`]: hidden services: knock sequences and single-packet
//!   authorization, with the gate's side table of per-source state.
//! - [`engine`]: the per-packet call that ties them together.
//! - [`event`]: the events a run reports.
//! - [`runtime`]: drivers of the engine: offline replay (`replay/`: driver,
//!   survey, judging threads, report), and the inline daemon (`daemon/`:
//!   start-up and shutdown, ban keeper, housekeeping, control requests,
//!   events) with its queues, workers, state file, control socket and typed
//!   protocol, `/metrics` (`metrics`), and the fleet (`fleet/`: signed
//!   messages, sweeps across hosts, the NATS JetStream thread).
//! - [`firewall`]: the nft table and queue rules the daemon owns.
//! - [`config`] and [`time`]: the rules (as written, [`config::Rules`], and
//!   as checked, [`Config`]) and the engine's notion of time.

pub mod classify;
pub mod cli;
pub mod config;
pub mod disguise;
pub mod engine;
pub mod event;
pub mod firewall;
pub mod gate;
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
