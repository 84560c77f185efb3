//! STATE: bans that outlive the process. Written after every batch of ban
//! changes by write-then-rename, so a crash leaves either the old file or
//! the new one; read once at start, keeping only bans still running.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::classify::PortProto;
use crate::firewall::{Pair, Proof};
use crate::time::Timestamp;
use crate::track::{Ban, BanKind, SourceKey};

/// One ban or quarantine as saved: the pairs a quarantine keeps come with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The source.
    pub key: SourceKey,
    /// The ban or quarantine.
    pub ban: Ban,
    /// For a quarantine, the pairs it proved before, which keep working.
    pub keep: Vec<Pair>,
}

/// `tcp/80`.
pub fn pair_name((proto, port): Pair) -> String {
    format!("{}/{port}", proto.name())
}

/// Reads what [`pair_name`] wrote.
pub fn parse_pair(text: &str) -> Option<Pair> {
    let (proto, port) = text.split_once('/')?;
    Some((PortProto::from_name(proto).filter(|p| *p != PortProto::Ip)?, port.parse().ok()?))
}

const VERSION: u32 = 1;

/// Why the state file could not be read.
#[derive(Debug, Error)]
pub enum StateError {
    /// It exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not a portcloak state file, or is damaged.
    #[error("{path} is damaged: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// When it was written, in Unix seconds.
    saved: u64,
    bans: Vec<SavedBan>,
    /// The kernel's proof sets at a clean stop, which removes them.
    proofs: Vec<SavedProof>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedProof {
    source: String,
    /// The proven pair, as `tcp/80`; none for a proven source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pair: Option<String>,
    /// Unix microseconds.
    until: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBan {
    source: String,
    /// `ban` or `quarantine`; files written before quarantines hold bans.
    #[serde(default)]
    kind: BanKind,
    /// A quarantine's kept pairs, as `tcp/80`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keep: Vec<String>,
    reason: String,
    /// Unix microseconds.
    since: u64,
    /// Unix microseconds.
    until: u64,
    offences: u16,
}

/// Writes `bans` and `proofs` to `path` through a temporary file and a
/// rename, creating the directory (mode 0700) when needed. The file holds
/// wall time: engine times are moved by `offset` (wall minus engine, in
/// microseconds; see `runtime::clock`).
pub fn save(
    path: &Path,
    now: Timestamp,
    offset: i64,
    bans: &[Saved],
    proofs: &[Proof],
) -> std::io::Result<()> {
    let file = StateFile {
        version: VERSION,
        saved: now.shifted(offset).secs(),
        bans: bans
            .iter()
            .map(|Saved { key: k, ban: b, keep }| SavedBan {
                source: k.to_string(),
                kind: b.kind,
                keep: keep.iter().map(|p| pair_name(*p)).collect(),
                reason: b.reason.to_string(),
                since: b.since.shifted(offset).micros(),
                until: b.until.shifted(offset).micros(),
                offences: b.offences,
            })
            .collect(),
        proofs: proofs
            .iter()
            .map(|p| SavedProof {
                source: p.source.to_string(),
                pair: p.pair.map(pair_name),
                until: now.saturating_add(p.left).shifted(offset).micros(),
            })
            .collect(),
    };
    write_atomic(path, &encode(&file)?)
}

/// The file as JSON with one ban per line: compact (8.5 MB at 65 536
/// bans, `cargo bench --bench state`), and still read with `grep`.
fn encode(file: &StateFile) -> serde_json::Result<Vec<u8>> {
    let mut out =
        format!("{{\"version\":{},\"saved\":{},\"bans\":[", file.version, file.saved).into_bytes();
    for (i, ban) in file.bans.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, ban)?;
    }
    out.extend_from_slice(b"\n]");
    if !file.proofs.is_empty() {
        out.extend_from_slice(b",\"proofs\":[");
        for (i, proof) in file.proofs.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            serde_json::to_writer(&mut out, proof)?;
        }
        out.extend_from_slice(b"\n]");
    }
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one, never a part; creates the
/// directory (mode 0700) when needed.
///
/// The temporary file has a name no other writer uses (`path.tmp.PID.N`),
/// is created exclusively (an existing file or symlink of that name is an
/// error, never followed), with mode 0600; it is removed again when any
/// step fails (a full disk among them). The directory is synced after the
/// rename, so the new name survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let tmp = std::path::PathBuf::from(tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = out
        .write_all(bytes)
        .and_then(|()| out.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    drop(out);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// What [`load`] read: the bans still running, and a warning for each
/// entry it had to leave out.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Bans and quarantines still running.
    pub bans: Vec<Saved>,
    /// Proofs saved at a clean stop, with the time they have left.
    pub proofs: Vec<Proof>,
    /// One line per damaged entry, dropped alone.
    pub skipped: Vec<String>,
}

/// Reads the bans still running at engine time `now`, moving the file's
/// wall times by `-offset` (wall minus engine). A missing file is an empty
/// start; a file that is not a state file at all is an error the caller
/// reports and then ignores; a damaged entry is left out alone, with a
/// warning, and every other ban is kept.
pub fn load(path: &Path, now: Timestamp, offset: i64, v6_prefix: u8) -> Result<Loaded, StateError> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => return Err(StateError::Io { path: name, source }),
    };
    let corrupt = |why: String| StateError::Corrupt { path: name.clone(), why };
    let file: StateFileIn = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.version != VERSION {
        return Err(corrupt(format!("version {} (this portcloak reads {VERSION})", file.version)));
    }
    let mut loaded = Loaded {
        bans: Vec::with_capacity(file.bans.len()),
        proofs: Vec::with_capacity(file.proofs.len()),
        skipped: Vec::new(),
    };
    for (i, entry) in file.bans.into_iter().enumerate() {
        match entry_of(entry, v6_prefix, offset) {
            Ok(saved) if saved.ban.is_active(now) => loaded.bans.push(saved),
            Ok(_) => {}
            Err(why) => loaded.skipped.push(format!("{name}: entry {i} left out: {why}")),
        }
    }
    for (i, entry) in file.proofs.into_iter().enumerate() {
        match proof_of(entry, now, offset) {
            Ok(Some(proof)) => loaded.proofs.push(proof),
            Ok(None) => {}
            Err(why) => loaded.skipped.push(format!("{name}: proof {i} left out: {why}")),
        }
    }
    Ok(loaded)
}

/// The state file as read: entries stay raw until each is checked alone.
#[derive(Debug, Deserialize)]
struct StateFileIn {
    version: u32,
    bans: Vec<serde_json::Value>,
    #[serde(default)]
    proofs: Vec<serde_json::Value>,
}

/// One saved proof, checked: `None` once it has expired.
fn proof_of(
    entry: serde_json::Value,
    now: Timestamp,
    offset: i64,
) -> Result<Option<Proof>, String> {
    let saved: SavedProof = serde_json::from_value(entry).map_err(|e| e.to_string())?;
    let source = saved.source.parse().map_err(|_| format!("bad source `{}`", saved.source))?;
    let pair = match &saved.pair {
        Some(p) => Some(parse_pair(p).ok_or_else(|| format!("bad pair `{p}`"))?),
        None => None,
    };
    let until = Timestamp::from_micros(saved.until).shifted(offset.saturating_neg());
    let left = until.saturating_since(now);
    Ok((!left.is_zero()).then_some(Proof { source, pair, left }))
}

/// One saved entry, checked.
fn entry_of(entry: serde_json::Value, v6_prefix: u8, offset: i64) -> Result<Saved, String> {
    let saved: SavedBan = serde_json::from_value(entry).map_err(|e| e.to_string())?;
    let (addr, len) = match saved.source.split_once('/') {
        Some((a, l)) => {
            (a, Some(l.parse::<u8>().map_err(|_| format!("bad prefix in `{}`", saved.source))?))
        }
        None => (saved.source.as_str(), None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("bad source `{}`", saved.source))?;
    let key = SourceKey::new(ip, len.unwrap_or(v6_prefix));
    let reason = saved.reason.parse().map_err(|e: crate::track::ReasonError| e.to_string())?;
    let ban = Ban {
        kind: saved.kind,
        reason,
        since: Timestamp::from_micros(saved.since).shifted(offset.saturating_neg()),
        until: Timestamp::from_micros(saved.until).shifted(offset.saturating_neg()),
        offences: saved.offences,
    };
    let keep = saved
        .keep
        .iter()
        .map(|p| parse_pair(p).ok_or_else(|| format!("bad kept pair `{p}`")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Saved { key, ban, keep })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::track::BanReason;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("portcloak-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn bans_survive_a_round_trip_and_expired_ones_are_dropped() {
        let path = dir("round").join("sub/state.json");
        let now = Timestamp::from_secs(1_000_000);
        let ban = |secs: u64, reason| Ban {
            kind: BanKind::Ban,
            reason,
            since: now,
            until: now.saturating_add(Duration::from_secs(secs)),
            offences: 2,
        };
        let v4 = SourceKey::new("198.18.1.2".parse().unwrap(), 64);
        let v6 = SourceKey::new("fd5c:a11:1::2".parse().unwrap(), 64);
        let short = SourceKey::new("198.18.1.3".parse().unwrap(), 64);
        let quarantine = Ban { kind: BanKind::Quarantine, ..ban(600, BanReason::ClosedPorts(7)) };
        let client = SourceKey::new("198.18.2.2".parse().unwrap(), 64);
        let network = SourceKey::new("fd5c:a11:5:7::2".parse().unwrap(), 48);
        let saved = |key, ban, keep| Saved { key, ban, keep };
        let bans = vec![
            saved(v4, ban(3600, BanReason::ClosedPorts(6)), vec![]),
            saved(v6, ban(60, BanReason::Manual), vec![]),
            saved(client, quarantine, vec![(PortProto::Tcp, 80), (PortProto::Udp, 53)]),
            saved(network, ban(3600, BanReason::SpreadScan(4)), vec![]),
            saved(short, ban(5, BanReason::Manual), vec![]),
        ];
        let proof = |source: &str, pair, secs| Proof {
            source: source.parse().unwrap(),
            pair,
            left: Duration::from_secs(secs),
        };
        let proofs = [
            proof("198.18.2.2", Some((PortProto::Tcp, 80)), 600),
            proof("fd5c:a11:5:ffff::", None, 300),
            proof("198.18.2.3", None, 5),
        ];
        save(&path, now, 0, &bans, &proofs).unwrap();
        let later = now.saturating_add(Duration::from_secs(10));
        let loaded = load(&path, later, 0, 64).unwrap();
        let back = loaded.bans;
        assert_eq!(back, bans[..4].to_vec());
        // Proofs come back with what they have left; an expired one does not.
        let left = |p: &Proof| Proof { left: p.left - Duration::from_secs(10), ..*p };
        assert_eq!(loaded.proofs, vec![left(&proofs[0]), left(&proofs[1])]);
        assert_eq!(back[1].key.to_string(), "fd5c:a11:1::/64");
        // A network keeps its own prefix, whatever `ipv6_prefix` says.
        assert_eq!(
            (back[3].key.to_string(), back[3].key.prefix_len()),
            ("fd5c:a11:5::/48".into(), 48)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"quarantine\"") && text.contains("\"udp/53\""), "{text}");
        // A file written before quarantines existed holds plain bans.
        let old = r#"{"version":1,"saved":0,"bans":[{"source":"198.18.1.2","reason":"manual","since":0,"until":99000000000000,"offences":1}]}"#;
        std::fs::write(&path, old).unwrap();
        assert_eq!(load(&path, later, 0, 64).unwrap().bans[0].ban.kind, BanKind::Ban);
    }

    #[test]
    fn the_file_holds_wall_time_whatever_the_engine_clock_reads() {
        // The wall clock was stepped back an hour after the daemon started:
        // wall = engine - 1 h. The file says when, by the wall, a ban ends;
        // a daemon started afterwards (a new anchor, offset 0) reads the
        // same remaining time.
        let path = dir("offset").join("state.json");
        let now = Timestamp::from_secs(2_000_000);
        let ban = Ban {
            kind: BanKind::Ban,
            reason: BanReason::Manual,
            since: now,
            until: now.saturating_add(Duration::from_secs(600)),
            offences: 1,
        };
        let key = SourceKey::new("198.18.1.2".parse().unwrap(), 64);
        let hour = 3_600_000_000;
        save(&path, now, -hour, &[Saved { key, ban, keep: vec![] }], &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("\"until\":{}", ban.until.micros() - 3_600_000_000)));
        let restart = now.shifted(-hour);
        let back = load(&path, restart, 0, 64).unwrap().bans;
        assert_eq!(back[0].ban.until.saturating_since(restart), Duration::from_secs(600));
        let same = load(&path, now, -hour, 64).unwrap().bans;
        assert_eq!(same[0].ban, ban, "read back with the offset it was written with");
    }

    #[test]
    fn a_bad_entry_is_left_out_alone() {
        let d = dir("entry");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("state.json");
        let good = |ip: &str| {
            format!(
                r#"{{"source":"{ip}","reason":"manual","since":0,"until":99000000000000,"offences":1}}"#
            )
        };
        let text = format!(
            r#"{{"version":1,"saved":0,"bans":[{},{{"source":"not an address","reason":"manual","since":0,"until":1,"offences":1}},{{"source":"198.18.1.4","since":"x"}},{},{}]}}"#,
            good("198.18.1.2"),
            good("198.18.1.3"),
            r#"{"source":"198.18.1.5","reason":"no such reason","since":0,"until":99000000000000,"offences":1}"#
        );
        std::fs::write(&p, text).unwrap();
        let loaded = load(&p, Timestamp::from_secs(1), 0, 64).unwrap();
        let kept: Vec<String> = loaded.bans.iter().map(|s| s.key.to_string()).collect();
        assert_eq!(kept, ["198.18.1.2", "198.18.1.3"]);
        assert_eq!(loaded.skipped.len(), 3, "{:?}", loaded.skipped);
        assert!(loaded.skipped[0].contains("entry 1") && loaded.skipped[0].contains("bad source"));
    }

    /// Set in the child the full-disk test runs in its own mount namespace.
    const FULL_DISK_CHILD: &str = "PORTCLOAK_FULL_DISK_CHILD";

    #[test]
    fn a_full_disk_fails_the_write_keeps_the_old_file_and_leaves_nothing_behind() {
        // A 32 KiB tmpfs, in a private mount namespace so nothing outside
        // sees it: the test binary runs this test again inside `unshare`.
        if let Ok(mount) = std::env::var(FULL_DISK_CHILD) {
            let path = Path::new(&mount).join("state.json");
            write_atomic(&path, b"the old bans").unwrap();
            let big = vec![b'x'; 64 << 10];
            let e = write_atomic(&path, &big).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), b"the old bans");
            let names: Vec<_> =
                std::fs::read_dir(&mount).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["state.json"], "no temporary file left on the full disk");
            write_atomic(&path, b"fits again").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"fits again");
            return;
        }
        let root = std::process::Command::new("id").arg("-u").output().ok();
        let root = root.is_some_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs this test as root");
            eprintln!("skipping the full-disk test: it mounts a tmpfs, and needs root");
            return;
        }
        let mount = dir("full");
        std::fs::create_dir_all(&mount).unwrap();
        let name = "runtime::state::tests::a_full_disk_fails_the_write_keeps_the_old_file_and_leaves_nothing_behind";
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=32k portcloak-test \"$1\" && shift && exec \"$@\"")
            .arg("sh")
            .arg(&mount)
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1"])
            .env(FULL_DISK_CHILD, &mount)
            .output()
            .expect("unshare runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&mount);
    }

    #[test]
    fn the_temporary_file_never_follows_a_link_and_never_stays_behind() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("atomic");
        let path = d.join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"], "no temporary file left");
        // The old fixed temporary name, planted as a link, is never used.
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("state.json.tmp")).unwrap();
        write_atomic(&path, b"three").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        // A failed rename (the target is a directory) leaves no temporary file.
        let blocked = d.join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_atomic(&blocked, b"four").is_err());
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_missing_file_is_empty_and_a_damaged_one_is_an_error() {
        let d = dir("bad");
        assert!(load(&d.join("none.json"), Timestamp::ZERO, 0, 64).unwrap().bans.is_empty());
        std::fs::create_dir_all(&d).unwrap();
        for text in ["{", "[]", "{\"version\":9,\"saved\":0,\"bans\":[]}"] {
            let p = d.join("state.json");
            std::fs::write(&p, text).unwrap();
            assert!(
                matches!(load(&p, Timestamp::ZERO, 0, 64), Err(StateError::Corrupt { .. })),
                "{text}"
            );
        }
    }
}
