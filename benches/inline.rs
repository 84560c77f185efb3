//! The inline bench: new TCP connections per second and SYN → SYN-ACK
//! latency from a client namespace to a server namespace, for three
//! configurations measured in the same run, interleaved (a b c a b c ...):
//!
//! - (a) no filtering;
//! - (b) portcloak run (default rules, `--queue-balance` over every CPU);
//! - (c) kernel-only: xt_recent (a source that sent 10 SYNs to unserved
//!   ports within 60 s is dropped; every SYN pays the check) plus the
//!   NULL and XMAS drops.
//!
//! The client connects and closes in a loop on one thread; each
//! `connect()` returns when the SYN-ACK has arrived, so its duration,
//! taken with `Instant` (nanosecond clock), is the SYN → SYN-ACK round
//! trip as the client sees it, to the microsecond.
//!
//! With `--persona`, the configurations are instead two daemons that both
//! queue every SYN-ACK to an outbound queue:
//!
//! - (d) accept-only: `daemon.outbound = true`, persona none;
//! - (e) rewrite: persona `windows` (TTL, IP ID, window, option layout,
//!   each SYN-ACK rewritten in place with its checksums; sysctls not
//!   applied, so the kernel behaves the same in both).
//!
//! Every connection carries one SYN-ACK, so the connection rate is the
//! rate of SYN-ACKs through the outbound queue.
//!
//! Run as root: `cargo bench --bench inline` (options: `--rounds N`,
//! `--seconds S`, `--threads T`, `--persona`). Uses namespaces
//! `pcb<pid>-*`, 198.18.3.0/24 only, and removes them at the end.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 5000;
const SERVER: &str = "198.18.3.1";
const CLIENT: &str = "198.18.3.2";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => serve(),
        Some("--client") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
            let threads = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
            client(secs, threads);
        }
        _ => orchestrate(&args),
    }
}

/// Accepts and closes. The backlog is deep (with `net.core.somaxconn`
/// raised in the server's namespace), so a burst of clients that starves
/// this thread of CPU never overflows the accept queue.
fn serve() {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
    let _ = socket.set_reuse_address(true);
    let addr: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
    socket.bind(&addr.into()).unwrap_or_else(|e| panic!("bind: {e}"));
    socket.listen(65_535).unwrap_or_else(|e| panic!("listen: {e}"));
    let listener: TcpListener = socket.into();
    for conn in listener.incoming() {
        drop(conn);
    }
}

/// Connects and closes in a loop on `threads` threads for `secs` seconds;
/// prints `connections seconds p50_us p99_us failed`.
fn client(secs: f64, threads: usize) {
    let addr: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let loops: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(200_000);
                let mut failed = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    let t = Instant::now();
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(s) => {
                            lat.push(t.elapsed().as_nanos());
                            // Close with a RST: no TIME_WAIT on either side,
                            // so reused ports never meet an old connection.
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            drop(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = 0;
    for l in loops {
        let (l, f) = l.join().unwrap_or_default();
        lat.extend(l);
        failed += f;
    }
    let took = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let slow = lat.iter().filter(|&&ns| ns > 200_000_000).count();
    #[allow(clippy::print_stdout)]
    {
        println!("{} {took} {} {} {failed} {slow}", lat.len(), pct(0.50), pct(0.99));
    }
}

fn sh(cmd: &[&str]) {
    let ok = Command::new(cmd[0]).args(&cmd[1..]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "failed: {}", cmd.join(" "));
}

fn nsx<'a>(ns: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(cmd);
    v
}

/// A command run in namespace `ns`.
fn in_ns(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

struct Lab {
    server: String,
    client: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Plain,
    Portcloak,
    Kernel,
    AcceptOnly,
    Rewrite,
}

impl Config {
    const fn label(self) -> &'static str {
        match self {
            Self::Plain => "(a) no filtering",
            Self::Portcloak => "(b) portcloak",
            Self::Kernel => "(c) kernel-only xt_recent",
            Self::AcceptOnly => "(d) outbound accept-only",
            Self::Rewrite => "(e) outbound rewrite",
        }
    }
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn orchestrate(args: &[String]) {
    let opt = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = opt("--rounds", 3.0) as usize;
    let seconds = opt("--seconds", 3.0);
    let threads = opt("--threads", 1.0) as usize;
    let configs: &[Config] = if args.iter().any(|a| a == "--persona") {
        &[Config::AcceptOnly, Config::Rewrite]
    } else {
        &[Config::Plain, Config::Portcloak, Config::Kernel]
    };
    let me = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let me = me.to_string_lossy().into_owned();
    let bin = env!("CARGO_BIN_EXE_portcloak");
    let p = format!("pcb{}", std::process::id());
    let lab = Lab { server: format!("{p}-s"), client: format!("{p}-c"), children: Vec::new() };
    let mut lab = lab;
    let (s, c) = (lab.server.clone(), lab.client.clone());
    for ns in [&s, &c] {
        sh(&["ip", "netns", "add", ns]);
        sh(&nsx(ns, &["ip", "link", "set", "lo", "up"]));
    }
    let (vs, vc) = (format!("{p}-s0"), format!("{p}-c0"));
    sh(&["ip", "link", "add", &vs, "netns", &s, "type", "veth", "peer", "name", &vc, "netns", &c]);
    for (ns, dev, addr) in [(&s, &vs, SERVER), (&c, &vc, CLIENT)] {
        sh(&nsx(ns, &["ip", "link", "set", dev, "up"]));
        sh(&nsx(ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]));
    }
    // Our own namespaces only: a wide port range for the client's loops,
    // deep accept and SYN queues for the server.
    sh(&nsx(&c, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]));
    sh(&nsx(
        &s,
        &["sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535"],
    ));
    let server = in_ns(&s, &[&me, "--serve"]).spawn();
    lab.children.push(server.unwrap_or_else(|e| panic!("{e}")));
    std::thread::sleep(Duration::from_millis(300));
    let dir = std::env::temp_dir().join(&p);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let daemon_keys = format!(
        "[daemon]\nstate_file = \"{}\"\nsocket = \"{}\"\n",
        dir.join("state.json").display(),
        dir.join("sock").display()
    );
    let rules_file = |name: &str, extra: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{daemon_keys}{extra}")).unwrap_or_else(|e| panic!("{e}"));
        path.to_string_lossy().into_owned()
    };
    let rules = rules_file("rules.toml", "");
    let accept_only = rules_file("accept-only.toml", "outbound = true\n");
    let rewrite = rules_file("rewrite.toml", "[persona]\nname = \"windows\"\n");

    let mut results: Vec<(Config, f64, f64, f64)> = Vec::new();
    for round in 0..rounds {
        for &config in configs {
            let mut daemon = None;
            let rules = match config {
                Config::AcceptOnly => &accept_only,
                Config::Rewrite => &rewrite,
                _ => &rules,
            };
            match config {
                Config::Plain => {}
                Config::Portcloak | Config::AcceptOnly | Config::Rewrite => {
                    let child = in_ns(&s, &[bin, "run", "-c", rules])
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("{e}"));
                    daemon = Some(child);
                    std::thread::sleep(Duration::from_millis(1500));
                }
                Config::Kernel => {
                    let recent = format!(
                        "-A INPUT -p tcp --syn ! --dport {PORT} -m recent --name pcscan --set"
                    );
                    for rule in [
                        "-A INPUT -p tcp --tcp-flags ALL NONE -j DROP",
                        "-A INPUT -p tcp --tcp-flags ALL FIN,PSH,URG -j DROP",
                        "-A INPUT -m recent --name pcscan --rcheck --seconds 60 --hitcount 10 -j DROP",
                        &recent,
                    ] {
                        let mut cmd = vec!["iptables-nft"];
                        cmd.extend(rule.split_whitespace());
                        sh(&nsx(&s, &cmd));
                    }
                }
            }
            let (secs, threads) = (seconds.to_string(), threads.to_string());
            let out = in_ns(&c, &[&me, "--client", &secs, &threads])
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let (n, took, p50, p99, failed, slow) = (f[0], f[1], f[2], f[3], f[4], f[5]);
            let rate = n / took;
            eprintln!(
                "round {round} {config:?}: {rate:.0} conn/s, p50 {p50:.1} us, p99 {p99:.1} us, \
                 {failed} failed, {slow} over 200 ms (SYN retransmitted)"
            );
            results.push((config, rate, p50, p99));
            if let Some(mut d) = daemon {
                sh(&["kill", "-TERM", &d.id().to_string()]);
                let _ = d.wait();
            }
            if matches!(config, Config::Kernel) {
                sh(&nsx(&s, &["iptables-nft", "-F", "INPUT"]));
                sh(&nsx(&s, &["nft", "flush", "ruleset"]));
            }
        }
    }
    let median = |config: Config, pick: fn(&(Config, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = results.iter().filter(|r| r.0 == config).map(pick).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let rows: Vec<(String, f64, f64, f64)> = configs
        .iter()
        .map(|&c| {
            (c.label().to_owned(), median(c, |r| r.1), median(c, |r| r.2), median(c, |r| r.3))
        })
        .collect();
    let base = rows[0].clone();
    let first = &base.0;
    println!(
        "inline bench: medians of {rounds} interleaved rounds of {seconds} s, {threads} client thread(s)"
    );
    println!(
        "{:<28} {:>10} {:>8} {:>10} {:>10} {:>12}",
        "config",
        "conn/s",
        format!("vs {}", &first[..3]),
        "p50 us",
        "p99 us",
        "p99 added"
    );
    for (name, rate, p50, p99) in &rows {
        println!(
            "{name:<28} {rate:>10.0} {:>8.3} {p50:>10.1} {p99:>10.1} {:>+12.1}",
            rate / base.1,
            p99 - base.3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
