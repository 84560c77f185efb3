//! The lab: re-records every fixture from the live tools, in private network
//! namespaces (`tests/fixtures/record.sh`), and runs the replay checks on
//! the fresh captures. This keeps the recording script working and proves
//! the signatures against the tools installed today, not only against the
//! committed captures.
//!
//! Needs root, `ip`, `nmap`, `masscan`, `zmap`, `hping3`, `tcpdump`,
//! `ethtool` and `python3`.
//! With `CI=true` a missing prerequisite fails the test; elsewhere the test
//! skips and prints why.

use std::path::Path;
use std::process::Command;

use crate::replay::CHECKS;
use crate::util::root;

const TOOLS: [&str; 8] =
    ["ip", "nmap", "masscan", "zmap", "hping3", "tcpdump", "ethtool", "python3"];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn missing_prerequisites() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    let mut missing = Vec::new();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        missing.push("root".to_owned());
    }
    missing.extend(TOOLS.iter().filter(|t| !on_path(t)).map(|t| (*t).to_owned()));
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[test]
fn captures_recorded_now_from_live_tools_meet_the_same_bounds() {
    if let Some(missing) = missing_prerequisites() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the lab test must run in CI, but these are missing: {missing}"
        );
        eprintln!("skipping the lab test (not in CI): missing {missing}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("portcloak-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new("bash")
        .arg(root().join("tests/fixtures/record.sh"))
        .env("PORTCLOAK_FIXTURE_DIR", &dir)
        .output()
        .expect("run record.sh");
    assert!(
        out.status.success(),
        "record.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_all(&dir);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

fn check_all(dir: &Path) {
    for (name, check) in CHECKS {
        eprintln!("lab: {name}");
        check(dir);
    }
}
