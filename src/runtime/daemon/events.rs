//! The event file writer: one JSON line per event, in wall time.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};

use crate::event::Event;
use crate::runtime::clock::Clock;
use crate::runtime::log;

/// Appends events to `path`, one JSON line each, in wall time.
pub(super) fn write_events(path: &Path, rx: &Receiver<Event>, clock: Clock) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
    let mut out = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            log(&format!("error: cannot open event file {}: {e}", path.display()));
            return;
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => {
                let event = event.shifted(clock.wall_offset());
                if serde_json::to_writer(&mut out, &event).is_ok() {
                    let _ = out.write_all(b"\n");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = out.flush();
}
