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

/// True when this process runs as root and finds each of `tools` on the
/// PATH. Otherwise a test that needs them fails in CI (`CI=true`), where
/// they must be there, and elsewhere skips, saying why; `what` names it.
pub fn prerequisites(what: &str, tools: &[&str]) -> bool {
    let root_user =
        Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
    };
    let mut missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !root_user {
        missing.insert(0, "root");
    }
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} must run in CI, but these are missing: {missing}"
    );
    eprintln!("skipping {what} (not in CI): missing {missing}");
    false
}
