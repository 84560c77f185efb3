//! portcloak's integration tests: one binary, one module per area.
//!
//! - `replay`: every fixture in `tests/fixtures/`, through the same engine
//!   the daemon uses, against the bounds the README documents.
//! - `lab`: the fixtures re-recorded from the live tools, same checks.
//! - `cli`: the `portcloak` binary as a user runs it.
//! - `formats`: one capture in every link layer and file format, alike.
//! - `rules`: every file under `rules/` loads.
//! - `robustness`: every prefix and corruption of every fixture packet.
//! - `report`: the HTML report in a real browser, and with 10 000 sources.
//! - `scale`: replay of two million sources within a stated memory bound.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    unreachable_pub
)]

mod cli;
mod formats;
mod lab;
mod replay;
mod report;
mod robustness;
mod rules;
mod scale;
mod util;
