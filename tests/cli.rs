//! The `portcloak` binary as a user runs it.

use std::process::Command;

use crate::util::{fixture, portcloak, prerequisites, root, text};

#[test]
fn check_accepts_the_default_rules() {
    let out = portcloak(&["check", "rules/default.toml"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("rules/default.toml: ok"), "{stdout}");
}

#[test]
fn check_names_a_misspelt_key_and_its_line() {
    let dir = std::env::temp_dir().join(format!("portcloak-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("typo.toml");
    std::fs::write(&file, "[scan]\nwindow = \"60s\"\nclosed_port_treshold = 6\n").expect("write");
    let out = portcloak(&["check", file.to_str().expect("utf-8 path")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("scan.closed_port_treshold"), "{stderr}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn check_of_a_missing_file_is_exit_2() {
    let out = portcloak(&["check", "/nonexistent/rules.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.starts_with("portcloak: cannot read rules file /nonexistent/rules.toml"),
        "{stderr}"
    );
}

#[test]
fn replay_names_scanner_kind_and_ban() {
    let out = portcloak(&["replay", fixture("nmap-sS").to_str().expect("path")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for want in [
        "198.18.1.2  banned at",
        "for 1h, offence 1: signature nmap-syn",
        "scanner    nmap (signatures: nmap-syn)",
        "scan kinds tcp-syn 202",
        "0 answered",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn replay_json_prints_one_event_per_line() {
    let out = portcloak(&["replay", "--json", fixture("nmap-sF").to_str().expect("path")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let bans: Vec<_> = events.iter().filter(|e| e["event"] == "ban").collect();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0]["source"], "198.18.1.2");
    assert_eq!(bans[0]["reason"]["type"], "probe");
    assert_eq!(bans[0]["reason"]["detail"], "tcp-fin");
    assert_eq!(bans[0]["seconds"], 3600);
    let drops = events.iter().filter(|e| e["event"] == "drop").count();
    assert!(drops >= 100, "{drops}");
    assert_eq!(events[0]["event"], "checksums", "the file's checksum decision comes first");
    assert_eq!(events[0]["decided"], "offload");
    assert!(events[1..].iter().all(|e| e["event"] == "drop" || e["event"] == "ban"));
    // The human summary moves to stderr.
    assert!(stderr.contains("bans       1"), "{stderr}");
}

/// `tcpdump -w - | portcloak replay -`: a capture on standard input,
/// streamed, replays as the same file does.
#[test]
fn replay_reads_a_capture_from_standard_input() {
    use std::io::Write;
    use std::process::Stdio;
    let replay_stdin = |bytes: Vec<u8>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcloak"))
            .args(["replay", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        // Written from a thread, a little at a time, as a live tcpdump does.
        let writer = std::thread::spawn(move || {
            for chunk in bytes.chunks(1000) {
                stdin.write_all(chunk).expect("write");
            }
        });
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer");
        out
    };
    for name in ["nmap-sT", "legit-burst"] {
        let path = fixture(name);
        let file = portcloak(&["replay", path.to_str().expect("path")]);
        let piped = replay_stdin(std::fs::read(&path).expect("read fixture"));
        let (want, _) = text(&file);
        let (got, stderr) = text(&piped);
        assert!(piped.status.success(), "{stderr}");
        // All but the first line, which names the input, and the memory line.
        let body = |s: &str| {
            s.lines()
                .skip(1)
                .filter(|l| !l.starts_with("memory") && !l.starts_with("checksums"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(body(&got), body(&want), "{name}");
        assert!(got.starts_with("replay     -\n"), "{got}");
    }
    let empty = replay_stdin(Vec::new());
    assert_eq!(empty.status.code(), Some(2));
    let (_, stderr) = text(&empty);
    assert!(stderr.contains("standard input"), "{stderr}");
}

/// `replay --threads N` prints what `--threads 1` prints, JSON events and
/// summary alike, for several captures replayed in a row; the default (one
/// thread per CPU) too.
#[test]
fn replay_with_threads_prints_what_one_thread_prints() {
    let files = ["legit-burst", "nmap-sS", "nmap-sU", "nmap6-sS", "masscan"].map(fixture);
    let files: Vec<&str> = files.iter().map(|p| p.to_str().expect("path")).collect();
    let replay = |threads: Option<&str>| {
        let mut args = vec!["replay", "--json"];
        args.extend(threads.map(|n| ["--threads", n]).into_iter().flatten());
        args.extend(&files);
        let out = portcloak(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let summary = stderr.lines().filter(|l| !l.starts_with("memory")).collect::<Vec<_>>();
        (stdout, summary.join("\n"))
    };
    let one = replay(Some("1"));
    assert!(one.0.lines().count() > 100, "{}", one.0);
    for threads in [Some("2"), Some("4"), None] {
        assert!(replay(threads) == one, "--threads {threads:?}");
    }
}

#[test]
fn replay_of_unreadable_input_is_exit_2() {
    let out = portcloak(&["replay", "/nonexistent/x.pcap"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.starts_with("portcloak: cannot read /nonexistent/x.pcap: No such file"),
        "{stderr}"
    );
    let out = portcloak(&["replay", "Cargo.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("not a pcap or pcapng file"), "{stderr}");
}

#[test]
fn replay_takes_the_local_addresses_from_the_command_line() {
    let path = fixture("nmap-sU");
    let path = path.to_str().expect("path");
    let out = portcloak(&["replay", "--local", "198.18.1.1/32", path]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("local      198.18.1.1/32\n"), "{stdout}");
    assert!(stdout.contains("offence 1: closed-ports 6"), "{stdout}");
    // Naming the scanner as local turns the capture around: nothing is banned.
    let out = portcloak(&["replay", "--local", "198.18.1.2", path]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("bans       0"), "{stdout}");
    let out = portcloak(&["replay", "--local", "not-an-address", path]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("bad --local"), "{stderr}");
}

#[test]
fn control_commands_say_clearly_when_no_daemon_runs() {
    let socket = std::env::temp_dir().join(format!("portcloak-none-{}.sock", std::process::id()));
    let socket = socket.to_str().expect("utf-8 path");
    for args in [
        vec!["status", "--socket", socket],
        vec!["bans", "--socket", socket],
        vec!["ban", "198.18.1.2", "--socket", socket],
        vec!["unban", "all", "--socket", socket],
    ] {
        let out = portcloak(&args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("no portcloak daemon is running"), "{args:?}: {stderr}");
    }
}

#[test]
fn control_commands_reject_bad_arguments_before_connecting() {
    let out = portcloak(&["unban", "not-an-address", "--socket", "/nonexistent.sock"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("`not-an-address` is not an address or `all`"));
    let out = portcloak(&["ban", "198.18.1.2", "--for", "soon", "--socket", "/nonexistent.sock"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("bad --for `soon`"));
}

#[test]
fn firewall_prints_the_ruleset_without_applying_it() {
    let out = portcloak(&["firewall", "-c", "rules/default.toml"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("table inet portcloak {"), "{stdout}");
    assert!(stdout.contains("set ban4") && stdout.contains("set ban6"), "{stdout}");
    assert!(stdout.contains("NFQUEUE") || stdout.contains("queue flags bypass"), "{stdout}");
}

#[test]
fn run_refuses_tables_that_do_not_fit_the_memory_limit() {
    let dir = std::env::temp_dir().join(format!("portcloak-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("big.toml");
    std::fs::write(&file, "[tracking]\nsources = 4000000\n[daemon]\nmemory_limit = 64\n")
        .expect("write");
    let out = portcloak(&["run", "-c", file.to_str().expect("utf-8 path")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("daemon.memory_limit"), "{stderr}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn keygen_writes_a_private_key_once_and_check_shows_hidden_ports_and_persona_sysctls() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("portcloak-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("spa.key");
    let key_path = key.to_str().expect("utf-8 path");
    let out = portcloak(&["keygen", key_path]);
    assert!(out.status.success(), "{}", text(&out).1);
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let hex = std::fs::read_to_string(&key).expect("read key");
    assert!(hex.trim().len() == 64 && hex.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let again = portcloak(&["keygen", key_path]);
    assert!(!again.status.success(), "a second keygen must not overwrite the key");
    assert_eq!(std::fs::read_to_string(&key).expect("read key"), hex);

    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[[hidden]]\nport = 22\n[knock]\nsequence = [\"tcp:7001\", \"udp:7002\", \"tcp:7003\"]\n\
             [spa]\nkey_file = \"{key_path}\"\n[persona]\nname = \"windows\"\n"
        ),
    )
    .expect("write rules");
    let out = portcloak(&["check", rules.to_str().expect("utf-8 path")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "hidden     tcp/22 (open 30s); knock of 3 steps within 10s; spa on udp/62201"
        )
    );
    assert!(stdout.contains("persona    windows"), "{stdout}");
    assert!(stdout.contains("net.ipv4.tcp_ecn") && stdout.contains("wants 0"), "{stdout}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

/// The capabilities a systemd unit file's `CapabilityBoundingSet=` lines
/// keep, as `setpriv` names them (`+net_admin,+net_raw`).
fn unit_capabilities(path: &str) -> String {
    let text = std::fs::read_to_string(root().join(path)).expect("read unit");
    let caps: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "{path} keeps no capability");
    caps.join(",")
}

#[test]
fn under_the_units_capabilities_a_persona_that_answers_needs_the_drop_in_and_says_so() {
    if !prerequisites("the capability test", &["setpriv"]) {
        return;
    }
    let unit = unit_capabilities("dist/portcloak.service");
    let drop_in = unit_capabilities("dist/portcloak.service.d/net-raw.conf");
    assert!(!unit.contains("net_raw") && drop_in.contains("+net_raw"), "{unit} / {drop_in}");

    let dir = std::env::temp_dir().join(format!("portcloak-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[persona]\nname = \"windows-1709\"\n[daemon]\nsocket = \"{0}/ctl.sock\"\n\
             state_file = \"{0}/state\"\n",
            dir.display()
        ),
    )
    .expect("write rules");
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", &format!("--bounding-set=-all,{unit}"), "--"])
        .arg(env!("CARGO_BIN_EXE_portcloak"))
        .args(["run", "--no-firewall", "-c"])
        .arg(&rules)
        .output()
        .expect("run setpriv");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "started without CAP_NET_RAW: {stderr}");
    assert!(
        stderr.contains("CAP_NET_RAW") && stderr.contains("dist/portcloak.service.d/net-raw.conf"),
        "{stderr}"
    );
    assert!(!dir.join("ctl.sock").exists(), "it must refuse before it binds anything");
    std::fs::remove_dir_all(dir).expect("clean up");
}

/// `check` validates `[fleet]`: the URL's form, and the key file, read now
/// rather than at the first start.
#[test]
fn check_validates_the_fleet_and_reads_its_key() {
    let dir = std::env::temp_dir().join(format!("portcloak-fleet-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("fleet.key");
    let out = portcloak(&["keygen", key.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out).1);
    let rules = |url: &str, key: &std::path::Path| {
        let path = dir.join("rules.toml");
        std::fs::write(
            &path,
            format!("[fleet]\nurl = \"{url}\"\nkey_file = \"{}\"\nname = \"h1\"\n", key.display()),
        )
        .expect("write");
        portcloak(&["check", path.to_str().expect("path")])
    };
    let ok = rules("nats://198.18.8.9:4222,nats://198.18.8.10:4222", &key);
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "  fleet      nats://198.18.8.9:4222,nats://198.18.8.10:4222 as h1 on stream PORTCLOAK"
        ),
        "{stdout}"
    );
    let missing = rules("nats://198.18.8.9:4222", &dir.join("none"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).1.contains("[fleet] key_file"), "{}", text(&missing).1);
    let bad = rules("http://198.18.8.9", &key);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("fleet.url"), "{}", text(&bad).1);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
