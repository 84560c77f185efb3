//! Shared helpers: fixture paths and the binary under test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture capture by name, without the `.pcap` suffix.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(format!("{name}.pcap"))
}

/// Every fixture capture.
pub fn all_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .expect("fixtures directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    v.sort();
    v
}

/// Runs the `portcloak` binary.
pub fn portcloak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcloak"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run portcloak")
}

/// Stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
