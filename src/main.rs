//! The `portcloak` binary: parse arguments, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use portcloak::cli::{Cli, Status, run};

// mimalloc: the daemon's workers allocate nothing per packet, but replay,
// sweeps and table growth do; mimalloc keeps those fast and its per-thread
// heaps keep workers from contending on one allocator lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Failed) => ExitCode::from(1),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("portcloak: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
