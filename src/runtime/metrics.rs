//! METRICS: `/metrics` in the Prometheus text format (0.0.4), for
//! `[daemon] metrics`.
//!
//! [`render`] turns the typed status, the one `portcloak status` prints,
//! into metrics, so the two never disagree. [`serve`] answers scrapes from
//! one thread: its sockets are non-blocking and each connection has
//! [`TIMEOUT`] to send its request (at most [`MAX_REQUEST`] bytes) and
//! take its answer, and at most [`MAX_OPEN`] are open at once (a new one
//! closes the oldest), so no client, slow or hostile or many, holds a
//! scrape back longer than its timeout or grows the daemon's memory.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::protocol::StatusReport;
use crate::policy::Reason;

/// What a connection may take to send its request and take the answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request read; a longer one is refused.
pub const MAX_REQUEST: usize = 8 << 10;
/// Connections open at once; a new one closes the oldest.
pub const MAX_OPEN: usize = 64;
/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A metric family's label set from pairs.
fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn gauge(v: impl TryInto<i64>) -> Gauge {
    let g = Gauge::default();
    g.set(v.try_into().unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn counters(rows: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    f
}

fn gauges(rows: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    f
}

/// Every metric of `status`, in the Prometheus text format. Counters count
/// since the daemon started; labels are bounded (queues, reasons, kinds,
/// families, tables), never an address.
pub fn render(status: &StatusReport) -> String {
    let mut r = Registry::with_prefix("portcloak");
    let version = env!("CARGO_PKG_VERSION");
    r.register(
        "build_info",
        "The running build: always 1, with its version as a label",
        gauges([(labels([("version", version)]), 1)]),
    );
    r.register_with_unit(
        "uptime",
        "Time since the daemon started",
        Unit::Seconds,
        gauge(status.uptime),
    );

    // Packets, per queue.
    let queue = |w: &super::protocol::WorkerStatus| w.queue.to_string();
    r.register(
        "packets",
        "Packets judged by the workers, by queue and verdict",
        counters(status.workers.iter().flat_map(|w| {
            [
                (labels([("queue", &queue(w)), ("verdict", "accept")]), w.accepted),
                (labels([("queue", &queue(w)), ("verdict", "drop")]), w.dropped),
            ]
        })),
    );
    r.register(
        "shed_packets",
        "Packets a worker accepted uninspected because it was behind, by queue",
        counters(status.workers.iter().map(|w| (labels([("queue", &queue(w))]), w.shed))),
    );
    if let Some(n) = status.uninspected {
        r.register(
            "uninspected_packets",
            "Packets the kernel's queue rules passed that no worker judged (bypass, full queue)",
            counter(n),
        );
    }
    r.register(
        "lost_messages",
        "Bans, log lines and events a worker could not hand on (a full channel), by queue",
        counters(status.workers.iter().map(|w| (labels([("queue", &queue(w))]), w.lost))),
    );
    r.register(
        "queue_waiting_packets",
        "Packets waiting in the kernel's queue for a verdict, by queue",
        gauges(
            status
                .workers
                .iter()
                .map(|w| (labels([("queue", &queue(w))]), u64::from(w.kernel.waiting))),
        ),
    );
    r.register(
        "queue_kernel_dropped_packets",
        "Packets the kernel dropped or passed because the queue was full (queue_dropped), by queue",
        counters(
            status.workers.iter().map(|w| (labels([("queue", &queue(w))]), w.kernel.queue_dropped)),
        ),
    );
    r.register(
        "queue_user_dropped_packets",
        "Packets the kernel could not hand to the socket (user_dropped), by queue",
        counters(
            status.workers.iter().map(|w| (labels([("queue", &queue(w))]), w.kernel.user_dropped)),
        ),
    );

    // Decisions.
    r.register(
        "drops",
        "Packets dropped by the engine, by reason",
        counters(Reason::ALL.iter().map(|reason| {
            let n = status.drops.get(reason.name()).copied().unwrap_or(0);
            (labels([("reason", reason.name())]), n)
        })),
    );
    r.register(
        "bans_started",
        "Bans and quarantines started, by kind of reason and kind",
        counters(
            status
                .bans_started
                .iter()
                .map(|b| (labels([("reason", &b.reason), ("kind", &b.kind)]), b.count)),
        ),
    );
    let a = &status.active;
    r.register(
        "active_bans",
        "Bans and quarantines in force, by kind and address family",
        gauges([
            (labels([("kind", "ban"), ("family", "ipv4")]), a.ipv4_bans as u64),
            (labels([("kind", "ban"), ("family", "ipv6")]), a.ipv6_bans as u64),
            (labels([("kind", "quarantine"), ("family", "ipv4")]), a.ipv4_quarantines as u64),
            (labels([("kind", "quarantine"), ("family", "ipv6")]), a.ipv6_quarantines as u64),
        ]),
    );
    let g = &status.guards;
    r.register(
        "bans_held_back",
        "Bans the guards did not start, by guard",
        counters([
            (labels([("guard", "handshake_grace")]), g.handshake_grace),
            (labels([("guard", "unbannable")]), g.unbannable),
            (labels([("guard", "rate_capped")]), g.rate_capped),
            (labels([("guard", "table_full")]), g.table_full),
        ]),
    );

    // The kernel's own drops and passes.
    if let Some(k) = &status.kernel_counters {
        r.register(
            "kernel_fast_path_packets",
            "New connections of proven pairs the kernel passed without a queue trip",
            counter(k.fast_path),
        );
        r.register(
            "kernel_quarantine_dropped_packets",
            "New connections of quarantined sources the kernel dropped",
            counter(k.quarantined),
        );
        r.register(
            "kernel_dropped_packets",
            "Packets of banned and denied sources the kernel dropped (what they still send), by list and family",
            counters([
                (labels([("list", "banned"), ("family", "ipv4")]), k.banned4),
                (labels([("list", "banned"), ("family", "ipv6")]), k.banned6),
                (labels([("list", "denied"), ("family", "ipv4")]), k.denied4),
                (labels([("list", "denied"), ("family", "ipv6")]), k.denied6),
            ]),
        );
        r.register_with_unit(
            "kernel_dropped",
            "Bytes of the packets kernel_dropped_packets counts, by list and family",
            Unit::Bytes,
            counters([
                (labels([("list", "banned"), ("family", "ipv4")]), k.banned4_bytes),
                (labels([("list", "banned"), ("family", "ipv6")]), k.banned6_bytes),
                (labels([("list", "denied"), ("family", "ipv4")]), k.denied4_bytes),
                (labels([("list", "denied"), ("family", "ipv6")]), k.denied6_bytes),
            ]),
        );
    }

    // Tables.
    let t = &status.tables;
    let tables = [
        ("sources", t.sources, t.source_capacity, t.source_evictions),
        ("flows", t.flows, t.flow_capacity, t.flow_evictions),
        ("networks", t.networks, t.network_capacity, t.network_evictions),
        ("gate", t.gate_states, t.gate_capacity, 0),
        ("peers", t.peers, t.peer_capacity, 0),
    ];
    r.register(
        "table_entries",
        "Entries held, by table (ban_records: bans and the memory of past ones)",
        gauges(
            tables
                .iter()
                .map(|(name, n, _, _)| (labels([("table", name)]), *n as u64))
                .chain([(labels([("table", "ban_records")]), t.ban_records as u64)]),
        ),
    );
    r.register(
        "table_capacity",
        "Entries a table may hold, by table",
        gauges(tables.iter().map(|(name, _, cap, _)| (labels([("table", name)]), *cap as u64))),
    );
    r.register(
        "table_evictions",
        "Entries pushed out of a full table, by table",
        counters(tables.iter().take(3).map(|(name, _, _, ev)| (labels([("table", name)]), *ev))),
    );

    // Hidden services and the persona.
    let gate = &status.gate;
    r.register(
        "spa_packets",
        "Single-packet authorization packets, by outcome",
        counters([
            (labels([("outcome", "authorized")]), gate.spa_authorized),
            (labels([("outcome", "malformed")]), gate.spa_malformed),
            (labels([("outcome", "bad_hmac")]), gate.spa_bad_hmac),
            (labels([("outcome", "stale")]), gate.spa_stale),
            (labels([("outcome", "wrong_source")]), gate.spa_wrong_source),
            (labels([("outcome", "replay")]), gate.spa_replay),
            (labels([("outcome", "not_hidden")]), gate.spa_not_hidden),
            (labels([("outcome", "rate_limited")]), gate.spa_rate_limited),
            (labels([("outcome", "over_budget")]), gate.spa_over_budget),
        ]),
    );
    r.register(
        "knock_authorizations",
        "Hidden ports opened by a completed knock sequence",
        counter(gate.knock_authorized),
    );
    r.register(
        "hidden_connections",
        "New connections to hidden ports, by verdict",
        counters([
            (labels([("verdict", "opened")]), gate.hidden_opened),
            (labels([("verdict", "dropped")]), gate.hidden_dropped),
        ]),
    );
    r.register(
        "persona_rewritten_packets",
        "Outbound packets the OS persona rewrote",
        counter(status.rewritten),
    );
    r.register(
        "persona_answered_probes",
        "Probes the OS persona answered in the host's name",
        counter(status.answered),
    );

    // The fleet.
    if let Some(f) = &status.fleet {
        r.register(
            "fleet_connected",
            "1 while the broker, stream and consumer are ready",
            gauge(u64::from(f.connected)),
        );
        r.register(
            "fleet_messages",
            "Fleet messages published and read, by direction",
            counters([
                (labels([("direction", "sent")]), f.sent),
                (labels([("direction", "received")]), f.received),
            ]),
        );
        r.register(
            "fleet_applied_bans",
            "Peers' bans and fleet sweeps applied here",
            counter(f.applied),
        );
        r.register("fleet_sweeps", "Sweeps across hosts banned here", counter(f.sweeps));
        r.register(
            "fleet_guarded_bans",
            "Peers' bans the local guards refused",
            counter(f.guarded),
        );
        r.register(
            "fleet_refused_messages",
            "Fleet messages ignored, by reason",
            counters(f.refused.iter().map(|(reason, n)| (labels([("reason", reason)]), *n))),
        );
        r.register("fleet_pending_messages", "Messages waiting for the broker", gauge(f.pending));
        let lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        lag.set(f.lag_ms as f64 / 1000.0);
        r.register_with_unit("fleet_lag", "Age of the oldest message waiting", Unit::Seconds, lag);
        r.register(
            "fleet_dropped_messages",
            "Messages to publish dropped: queue full",
            counter(f.dropped),
        );
    }

    // Memory.
    let m = &status.memory;
    r.register_with_unit(
        "resident_memory",
        "Resident memory of the daemon",
        Unit::Bytes,
        gauge(m.rss),
    );
    r.register_with_unit(
        "resident_memory_peak",
        "Peak resident memory of the daemon",
        Unit::Bytes,
        gauge(m.peak),
    );
    r.register_with_unit(
        "memory_limit",
        "The memory the daemon may use (daemon.memory_limit)",
        Unit::Bytes,
        gauge(m.limit),
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &r);
    out
}

/// Binds the metrics listener, non-blocking.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// One connection: reading its request, then writing its answer.
struct Conn {
    stream: TcpStream,
    since: Instant,
    request: Vec<u8>,
    /// The answer and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
}

/// Answers scrapes on `listener` until `stop` is set; `scrape` gives the
/// metrics text.
pub fn serve(listener: &TcpListener, stop: &AtomicBool, scrape: &dyn Fn() -> String) {
    let mut open: Vec<Conn> = Vec::new();
    while !stop.load(Relaxed) {
        let mut busy = false;
        while let Ok((stream, _)) = listener.accept() {
            busy = true;
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if open.len() >= MAX_OPEN {
                open.remove(0);
            }
            open.push(Conn { stream, since: Instant::now(), request: Vec::new(), answer: None });
        }
        open.retain_mut(|c| {
            if c.since.elapsed() > TIMEOUT {
                return false;
            }
            match step(c, scrape) {
                Step::Wait => true,
                Step::Progress => {
                    busy = true;
                    true
                }
                Step::Done => {
                    busy = true;
                    false
                }
            }
        });
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

enum Step {
    /// Nothing to do until the client moves.
    Wait,
    /// Read or wrote something.
    Progress,
    /// Answered, or gone: close it.
    Done,
}

/// Moves one connection on as far as it goes without waiting.
fn step(c: &mut Conn, scrape: &dyn Fn() -> String) -> Step {
    let mut moved = false;
    if c.answer.is_none() {
        let mut chunk = [0u8; 2048];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return Step::Done,
                Ok(n) => {
                    moved = true;
                    c.request.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if c.request.len() > MAX_REQUEST {
                        c.answer = Some((response(431, "request too large\n"), 0));
                        break;
                    }
                    if let Some(head) = request_head(&c.request) {
                        c.answer = Some((answer(head, scrape), 0));
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Step::Done,
            }
        }
    }
    let Some((bytes, written)) = &mut c.answer else {
        return if moved { Step::Progress } else { Step::Wait };
    };
    loop {
        let rest = bytes.get(*written..).unwrap_or_default();
        if rest.is_empty() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            return Step::Done;
        }
        match c.stream.write(rest) {
            Ok(0) => return Step::Done,
            Ok(n) => {
                moved = true;
                *written += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return if moved { Step::Progress } else { Step::Wait };
            }
            Err(_) => return Step::Done,
        }
    }
}

/// The request line and headers, once they are all in.
fn request_head(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    bytes.get(..end)
}

/// The answer to a request whose head is `head`.
fn answer(head: &[u8], scrape: &dyn Fn() -> String) -> Vec<u8> {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = scrape();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body.as_bytes());
            out
        }
        (b"GET" | b"HEAD", _) => response(404, "not found: metrics are at /metrics\n"),
        _ => response(405, "only GET\n"),
    }
}

fn response(code: u16, body: &str) -> Vec<u8> {
    let reason = match code {
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
