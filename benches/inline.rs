//! The inline bench: new TCP connections per second and SYN → SYN-ACK
//! latency from a client namespace to a server namespace, for five
//! configurations measured in the same run, interleaved (a b c d e a ...):
//!
//! - (a) no filtering;
//! - (a') conntrack only: one nft rule that needs conntrack (`ct state
//!   invalid drop`), as any stateful firewall has. The proof and the fast
//!   path rest on conntrack, so this is their floor;
//! - (b) portcloak run (default rules, `--queue-balance` over every CPU),
//!   the daemon started fresh: the client's first connection is queued and
//!   proves its pair, the rest take the fast path;
//! - (c) kernel-only: xt_recent (a source that sent 10 SYNs to unserved
//!   ports within 60 s is dropped; every SYN pays the check) plus the
//!   NULL and XMAS drops;
//! - (d) returning client: as (b), with the client's pair proven by one
//!   connection before the measurement;
//! - (e) first contact: as (b), every connection from a new source address
//!   (the client namespace owns 198.19.0.0/16 through a local route, 65534
//!   addresses, more than a round uses), so every SYN is queued.
//!
//! With `--capacity`, a SYN flood from random sources (`hping3 --flood
//! --rand-source`) runs against the same queues for each of two consumers,
//! interleaved: (x) a bare nfq consumer that accepts everything, and (y)
//! `portcloak run`. It reports the packets each received per second, at
//! saturation.
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
//! rate of SYN-ACKs through the outbound queue. (These two are labelled
//! (f) and (g).)
//!
//! Run as root: `cargo bench --bench inline` (options: `--rounds N`,
//! `--seconds S`, `--threads T`, `--persona`, `--capacity`). Uses
//! namespaces `pcb<pid>-*`, 198.18.3.0/24 and 198.19.0.0/16 only, and
//! removes them at the end.

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
/// The first-contact client's source addresses: 198.19.0.0/16.
const FRESH_NET: &str = "198.19.0.0/16";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => serve(),
        Some("--client") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
            let threads = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
            let fresh = args.get(3).is_some_and(|a| a == "fresh");
            client(secs, threads, fresh);
        }
        Some("--bare") => bare(&args[1..]),
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

/// A bare NFQUEUE consumer on queues `first..first+count`: accepts every
/// packet with a blocking `recv` per packet, as portcloak's workers do,
/// counts them, and prints the count and exits when SIGTERM arrives. One
/// thread per queue.
fn bare(args: &[String]) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let first: u16 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    let count: u16 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop)).unwrap();
    let total = Arc::new(AtomicU64::new(0));
    for num in first..first + count {
        let total = Arc::clone(&total);
        let mut q = nfq::Queue::open().unwrap();
        q.bind(num).unwrap();
        q.set_copy_range(num, 128).unwrap();
        q.set_queue_max_len(num, 4096).unwrap();
        q.set_fail_open(num, true).unwrap();
        std::thread::spawn(move || {
            loop {
                if let Ok(mut msg) = q.recv() {
                    msg.set_verdict(nfq::Verdict::Accept);
                    let _ = q.verdict(msg);
                    total.fetch_add(1, Relaxed);
                }
            }
        });
    }
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{}", total.load(Relaxed));
    std::process::exit(0);
}

/// Connects and closes in a loop on `threads` threads for `secs` seconds;
/// prints `connections seconds p50_us p99_us failed slow wrapped`. With
/// `fresh`, every connection binds a new source address of [`FRESH_NET`].
fn client(secs: f64, threads: usize, fresh: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    let addr: SocketAddr = format!("{SERVER}:{PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    // Host numbers 1..=65534 of 198.19.0.0/16, shared by the threads.
    let next = Arc::new(AtomicU32::new(1));
    let loops: Vec<_> = (0..threads)
        .map(|_| {
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(200_000);
                let mut failed = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    let source = fresh.then(|| {
                        let n = next.fetch_add(1, Relaxed) % 65_534 + 1;
                        std::net::Ipv4Addr::from(0xc613_0000 | n)
                    });
                    let t = Instant::now();
                    match connect(addr, source) {
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
    let wrapped = u32::from(next.load(Relaxed) > 65_534);
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    let slow = lat.iter().filter(|&&ns| ns > 200_000_000).count();
    #[allow(clippy::print_stdout)]
    {
        println!("{} {took} {} {} {failed} {slow} {wrapped}", lat.len(), pct(0.50), pct(0.99));
    }
}

/// One connection, from `source` when given (bound before connecting).
fn connect(addr: SocketAddr, source: Option<std::net::Ipv4Addr>) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let Some(ip) = source else {
        return TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    };
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(ip.into(), 0).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(socket.into())
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
    Conntrack,
    Portcloak,
    Kernel,
    Returning,
    FirstContact,
    AcceptOnly,
    Rewrite,
}

impl Config {
    const fn label(self) -> &'static str {
        match self {
            Self::Plain => "(a) no filtering",
            Self::Conntrack => "(a') conntrack only",
            Self::Portcloak => "(b) portcloak",
            Self::Kernel => "(c) kernel-only xt_recent",
            Self::Returning => "(d) returning client",
            Self::FirstContact => "(e) first contact",
            Self::AcceptOnly => "(f) outbound accept-only",
            Self::Rewrite => "(g) outbound rewrite",
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
        &[
            Config::Plain,
            Config::Conntrack,
            Config::Portcloak,
            Config::Kernel,
            Config::Returning,
            Config::FirstContact,
        ]
    };
    let capacity = args.iter().any(|a| a == "--capacity");
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
    // The first-contact client's addresses: the whole prefix is local to
    // the client (a local route), and the server reaches it through it.
    sh(&nsx(&c, &["ip", "route", "add", "local", FRESH_NET, "dev", "lo"]));
    sh(&nsx(&s, &["ip", "route", "add", FRESH_NET, "via", CLIENT]));
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
    if capacity {
        capacity_run(&s, &c, bin, &me, &rules, rounds, seconds);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

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
                Config::Conntrack => {
                    let table = "table inet pcb {\n chain c {\n  type filter hook prerouting priority -160;\n  ct state invalid drop\n }\n}\n";
                    let mut nft =
                        in_ns(&s, &["nft", "-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
                    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), table.as_bytes())
                        .unwrap();
                    assert!(nft.wait().unwrap().success(), "nft refused the conntrack-only table");
                }
                Config::Portcloak
                | Config::Returning
                | Config::FirstContact
                | Config::AcceptOnly
                | Config::Rewrite => {
                    let child = in_ns(&s, &[bin, "run", "-c", rules])
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| panic!("{e}"));
                    daemon = Some(child);
                    std::thread::sleep(Duration::from_millis(1500));
                    if config == Config::Returning {
                        // One connection proves the pair.
                        let out = in_ns(&c, &[&me, "--client", "0.05", "1"]).output();
                        assert!(out.is_ok_and(|o| o.status.success()), "warm-up failed");
                    }
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
            let fresh = if config == Config::FirstContact { "fresh" } else { "same" };
            let out = in_ns(&c, &[&me, "--client", &secs, &threads, fresh])
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let (n, took, p50, p99, failed, slow) = (f[0], f[1], f[2], f[3], f[4], f[5]);
            assert!(f[6] == 0.0, "the first-contact client ran out of fresh addresses");
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
            if config == Config::Kernel {
                sh(&nsx(&s, &["iptables-nft", "-F", "INPUT"]));
            }
            if matches!(config, Config::Kernel | Config::Conntrack) {
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

/// Packets received per second at saturation by (x) a bare nfq consumer
/// and (y) portcloak, on the same queues, interleaved, under a random-source
/// SYN flood from the client namespace.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn capacity_run(s: &str, c: &str, bin: &str, me: &str, rules: &str, rounds: usize, seconds: f64) {
    let socket = rules.replace("rules.toml", "sock");
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u16;
    let mut results: Vec<(bool, f64)> = Vec::new();
    for round in 0..rounds {
        for bare in [true, false] {
            let mut consumer = if bare {
                install_rules_of(s, bin, rules);
                let n = workers.to_string();
                in_ns(s, &[me, "--bare", "0", &n]).stdout(Stdio::piped()).spawn().unwrap()
            } else {
                in_ns(s, &[bin, "run", "-c", rules]).stderr(Stdio::null()).spawn().unwrap()
            };
            std::thread::sleep(Duration::from_millis(1500));
            let t = Instant::now();
            let port = PORT.to_string();
            let secs = format!("{}", seconds.ceil() as u64);
            let _ = in_ns(
                c,
                &[
                    "timeout",
                    &secs,
                    "hping3",
                    "--flood",
                    "--rand-source",
                    "-S",
                    "-p",
                    &port,
                    "-q",
                    SERVER,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
            let took = t.elapsed().as_secs_f64();
            // What each consumer inspected: the bare one counts every
            // verdict it sends; portcloak's status says how many packets
            // its workers inspected (shed ones excluded) since it started.
            let mut shed = 0;
            let got = if bare {
                sh(&["kill", "-TERM", &consumer.id().to_string()]);
                let out = consumer.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.lines().last().and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0)
            } else {
                let out =
                    in_ns(s, &[bin, "status", "--json", "--socket", &socket]).output().unwrap();
                let status: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                sh(&["kill", "-TERM", &consumer.id().to_string()]);
                let _ = consumer.wait();
                let workers = status["workers"].as_array().cloned().unwrap_or_default();
                shed = workers.iter().filter_map(|w| w["shed"].as_u64()).sum::<u64>();
                status["inspected"].as_u64().unwrap_or(0)
            };
            if bare {
                sh(&nsx(s, &["nft", "flush", "ruleset"]));
            }
            let rate = got as f64 / took;
            let name = if bare { "bare" } else { "portcloak" };
            eprintln!("round {round} {name}: {rate:.0} SYNs/s inspected, {shed} shed");
            results.push((bare, rate));
        }
        let _ = in_ns(s, &["conntrack", "-F"]).stderr(Stdio::null()).status();
    }
    let median = |bare: bool| {
        let mut v: Vec<f64> = results.iter().filter(|r| r.0 == bare).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (x, y) = (median(true), median(false));
    println!(
        "capacity: medians of {rounds} interleaved rounds of {seconds} s, SYN flood from random sources, {workers} queue(s)"
    );
    println!("{:<28} {:>12} {:>8}", "consumer", "SYNs/s", "vs (x)");
    println!("{:<28} {x:>12.0} {:>8.3}", "(x) bare nfq consumer", 1.0);
    println!("{:<28} {y:>12.0} {:>8.3}", "(y) portcloak", y / x);
}

/// Installs in namespace `ns` exactly the ruleset `portcloak run -c rules`
/// would (what `portcloak firewall` prints), so the bare consumer gets the
/// same packets through the same rules, conntrack and proof chains included.
fn install_rules_of(ns: &str, bin: &str, rules: &str) {
    let out = Command::new(bin).args(["firewall", "-c", rules]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut jumps = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("# ") {
            let head = head.split(" (").next().unwrap_or(head);
            if head.contains(" -I PREROUTING ") {
                jumps.push(head.to_owned());
            } else {
                sections.push((head.to_owned(), String::new()));
            }
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (head, body) in &sections {
        let cmd: Vec<&str> = head.split_whitespace().collect();
        let mut child = in_ns(ns, &cmd).stdin(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "{head} refused the rules");
    }
    for jump in &jumps {
        sh(&nsx(ns, &jump.split_whitespace().collect::<Vec<_>>()));
    }
}
