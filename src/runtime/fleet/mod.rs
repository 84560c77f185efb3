//! FLEET: hosts that share bans and catch sweeps across hosts through NATS
//! JetStream (`[fleet]`).
//!
//! - Workers hand this host's bans and closed-port touches to the
//!   [`Link`]'s bounded outbox and never wait: the per-packet path stays
//!   synchronous. One thread of its own ([`run`]) runs the async NATS
//!   client on a single-threaded tokio runtime.
//! - It publishes each ban and quarantine, and once a second a summary of
//!   the closed ports sources touched here (`message`), signed with the
//!   fleet key, to the stream; what it cannot publish (the broker away)
//!   waits in a bounded queue, the oldest dropped and counted when full.
//! - It reads the stream through a durable consumer named after the host:
//!   peers' bans go to the engine ([`Engine::peer_ban`]: local guards win)
//!   and the kernel sets; every summary, its own included, feeds the sweep
//!   detector (`sweep`), in stream order, so every host decides alike. The
//!   host whose summary completes a sweep publishes its ban. A message it
//!   received is never published again.
//! - At start, [`catch_up`] applies the stream's pending bans before the
//!   queues open.

pub mod message;
pub mod sweep;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use crossbeam::channel::{Receiver, Sender};
use futures::StreamExt;

use self::message::{Message, Origins, Refusal, Sequence, Touched, What};
use self::sweep::Sweeps;
use crate::config::Fleet as Settings;
use crate::engine::Engine;
use crate::time::Timestamp;
use crate::track::{Ban, BanReason, SourceKey};

/// Messages the outbox holds for the fleet thread; more are dropped,
/// counted.
pub const OUTBOX: usize = 4096;
/// Messages read from the stream at a time.
const BATCH: usize = 256;
/// The longest wait on the broker for one request.
const WAIT: Duration = Duration::from_secs(2);

/// Up to [`BATCH`] messages of the consumer, waiting at most [`POLL`] for
/// the first.
async fn fetch(
    c: &consumer::Consumer<consumer::pull::Config>,
) -> Result<Vec<jetstream::Message>, FleetError> {
    let mut batch = c.fetch().max_messages(BATCH).expires(POLL).messages().await.map_err(nats)?;
    let mut out = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m);
    }
    Ok(out)
}
/// How long a read waits for messages: the pace of the thread's loop.
const POLL: Duration = Duration::from_millis(100);

/// What a worker hands to the fleet thread.
#[derive(Clone, Copy, Debug)]
pub enum Out {
    /// This host banned or quarantined a source (engine time).
    Ban(SourceKey, Ban),
    /// A source not banned here touched a closed port.
    Touch(SourceKey),
}

/// The daemon's side of the fleet: the outbox and the counters.
#[derive(Debug)]
pub struct Link {
    outbox: Sender<Out>,
    /// Counters and state, for `status`.
    pub stats: Stats,
}

impl Link {
    /// A link and the receiving end of its outbox.
    pub fn new() -> (Self, Receiver<Out>) {
        let (outbox, rx) = crossbeam::channel::bounded(OUTBOX);
        (Self { outbox, stats: Stats::default() }, rx)
    }

    /// Hands `out` on, never waiting; counted when the outbox is full.
    pub fn send(&self, out: Out) {
        if self.outbox.try_send(out).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The fleet's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connected to a broker, with the stream and consumer ready.
    pub connected: AtomicBool,
    /// Messages published (acknowledged by the stream).
    pub sent: AtomicU64,
    /// Messages read from the stream.
    pub received: AtomicU64,
    /// Peers' bans applied here (sweeps included).
    pub applied: AtomicU64,
    /// This host's own messages read back (ignored, or fed to sweeps).
    pub own: AtomicU64,
    /// Messages to publish dropped: outbox or queue full.
    pub dropped: AtomicU64,
    /// Messages waiting to be published.
    pub pending: AtomicU64,
    /// Age of the oldest message waiting, in milliseconds.
    pub lag_ms: AtomicU64,
    /// Peers' bans the local guards refused (allowlisted, unbannable, ...).
    pub guarded: AtomicU64,
    /// Sweeps across hosts banned here.
    pub sweeps: AtomicU64,
    /// Refused messages, by [`Refusal::ALL`] index.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// The last broker error.
    pub error: Mutex<String>,
}

impl Stats {
    /// Keeps `e` as the last broker error.
    fn failed(&self, e: &FleetError) {
        *self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
    }

    /// The counters as `status` shows them.
    pub fn report(&self, name: String) -> crate::runtime::protocol::FleetStatus {
        crate::runtime::protocol::FleetStatus {
            name,
            connected: self.connected.load(Relaxed),
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            applied: self.applied.load(Relaxed),
            own: self.own.load(Relaxed),
            sweeps: self.sweeps.load(Relaxed),
            guarded: self.guarded.load(Relaxed),
            pending: self.pending.load(Relaxed),
            lag_ms: self.lag_ms.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            refused: Refusal::ALL
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (r.to_string(), n.load(Relaxed)))
                .collect(),
            error: self.error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// Now, in unix microseconds.
fn unix_micros() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The host's name: `[fleet] name`, else the kernel's hostname.
pub fn host_name(settings: &Settings) -> String {
    if !settings.name.is_empty() {
        return settings.name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "portcloak".to_owned())
}

/// A source key as a message writes it.
fn parse_key(text: &str, v6_prefix: u8) -> Option<SourceKey> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (text, v6_prefix),
    };
    Some(SourceKey::new(addr.parse().ok()?, len))
}

/// What the engine's clock and the wall clock are to each other: wall
/// microseconds minus engine microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    /// [`crate::runtime::clock::Clock::wall_offset`].
    pub offset: i64,
}

impl Clocks {
    fn to_wall(self, t: Timestamp) -> u64 {
        t.shifted(self.offset).micros()
    }

    fn to_engine(self, wall: u64) -> Timestamp {
        Timestamp::from_micros(wall).shifted(self.offset.saturating_neg())
    }
}

/// A ban or quarantine for the kernel (and the log, the state file).
pub type Applied = (SourceKey, Ban);

/// One host's view of the fleet: its name and key, the origins heard, the
/// sweeps followed.
struct Node<'a> {
    settings: &'a Settings,
    key: Vec<u8>,
    name: String,
    origins: Origins,
    sweeps: Sweeps,
    seq: Sequence,
    stats: &'a Stats,
}

impl<'a> Node<'a> {
    fn new(settings: &'a Settings, key: Vec<u8>, window: Duration, stats: &'a Stats) -> Self {
        Self {
            settings,
            key,
            name: host_name(settings),
            origins: Origins::default(),
            sweeps: Sweeps::new(settings.sweep_hosts, window),
            seq: Sequence::default(),
            stats,
        }
    }

    fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.settings.subject)
    }

    /// This host's ban, sealed.
    fn seal_ban(&mut self, key: SourceKey, ban: &Ban, clocks: Clocks) -> (String, Vec<u8>) {
        let what = What::Ban {
            source: key.to_string(),
            kind: ban.kind,
            reason: ban.reason.to_string(),
            until: clocks.to_wall(ban.until),
        };
        (self.subject("ban"), self.seal(what))
    }

    /// This host's summary of touched closed ports, sealed.
    fn seal_touches(&mut self, touched: &HashMap<SourceKey, u32>) -> (String, Vec<u8>) {
        let mut sources: Vec<Touched> =
            touched.iter().map(|(k, n)| Touched { source: k.to_string(), probes: *n }).collect();
        sources.sort_by(|a, b| b.probes.cmp(&a.probes).then_with(|| a.source.cmp(&b.source)));
        sources.truncate(message::MAX_TOUCHES);
        (self.subject("touch"), self.seal(What::Touch { sources }))
    }

    /// `what`, from this host, numbered and signed.
    fn seal(&mut self, what: What) -> Vec<u8> {
        let now = unix_micros();
        let m = Message {
            v: message::VERSION,
            origin: self.name.clone(),
            seq: self.seq.next(now),
            sent: now,
            what,
        };
        message::seal(&m, &self.key)
    }

    /// Reads one message from the stream: returns the bans to apply in the
    /// kernel, and a sweep ban this host must publish.
    fn receive(
        &mut self,
        bytes: &[u8],
        engine: &Engine,
        clocks: Clocks,
        proven: &dyn Fn(SourceKey) -> bool,
    ) -> (Vec<Applied>, Option<Applied>) {
        self.stats.received.fetch_add(1, Relaxed);
        let message = match message::open(bytes, &self.key, unix_micros())
            .and_then(|m| self.origins.admit(&m).map(|()| m))
        {
            Ok(m) => m,
            Err(refusal) => {
                self.refuse(refusal);
                return (Vec::new(), None);
            }
        };
        let own = message.origin == self.name;
        if own {
            self.stats.own.fetch_add(1, Relaxed);
        }
        let v6 = engine.config().tracking.ipv6_prefix;
        let now = engine_now(clocks);
        match message.what {
            // Never applied twice, never published again.
            What::Ban { .. } if own => (Vec::new(), None),
            What::Ban { source, reason, until, .. } => {
                let parsed = parse_key(&source, v6).zip(reason.parse::<BanReason>().ok());
                let Some((key, reason)) = parsed else {
                    self.refuse(Refusal::Malformed);
                    return (Vec::new(), None);
                };
                self.sweeps.forget(&key);
                let applied = self.apply(
                    engine.peer_ban(now, key, reason, clocks.to_engine(until), proven(key)),
                    key,
                );
                (applied.into_iter().collect(), None)
            }
            What::Touch { sources } => {
                let mut out = Vec::new();
                let mut publish = None;
                for t in sources {
                    let Some(key) = parse_key(&t.source, v6) else { continue };
                    if engine.active_ban(key, now).is_some() {
                        continue;
                    }
                    let Some(hosts) = self.sweeps.touch(key, &message.origin, now) else {
                        continue;
                    };
                    self.sweeps.forget(&key);
                    if let Some(applied) =
                        self.apply(engine.sweep_ban(now, key, hosts, proven(key)), key)
                    {
                        self.stats.sweeps.fetch_add(1, Relaxed);
                        if own {
                            publish = Some(applied);
                        }
                        out.push(applied);
                    }
                }
                (out, publish)
            }
        }
    }

    fn apply(
        &self,
        result: Result<Option<Ban>, crate::engine::Refused>,
        key: SourceKey,
    ) -> Option<Applied> {
        match result {
            Ok(Some(ban)) => {
                self.stats.applied.fetch_add(1, Relaxed);
                Some((key, ban))
            }
            Ok(None) => None,
            Err(_) => {
                self.stats.guarded.fetch_add(1, Relaxed);
                None
            }
        }
    }

    fn refuse(&self, refusal: Refusal) {
        if let Some(c) = self.stats.refused.get(refusal.index()) {
            c.fetch_add(1, Relaxed);
        }
    }
}

fn engine_now(clocks: Clocks) -> Timestamp {
    clocks.to_engine(unix_micros())
}

/// Why the fleet could not do something.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No broker answered, or it refused.
    #[error("NATS: {0}")]
    Nats(String),
}

fn nats<E: std::fmt::Display>(e: E) -> FleetError {
    FleetError::Nats(e.to_string())
}

/// Connects to the broker with the settings' credentials.
async fn connect(
    settings: &Settings,
    name: &str,
    retry: bool,
) -> Result<async_nats::Client, FleetError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("portcloak {name}"))
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None::<usize>);
    if retry {
        options = options.retry_on_initial_connect();
    }
    if !settings.user.is_empty() {
        options = options.user_and_password(settings.user.clone(), settings.password.clone());
    }
    if !settings.creds_file.as_os_str().is_empty() {
        options = options.credentials_file(&settings.creds_file).await.map_err(nats)?;
    }
    if !settings.nkey_file.as_os_str().is_empty() {
        let seed = std::fs::read_to_string(&settings.nkey_file).map_err(nats)?;
        options = options.nkey(seed.trim().to_owned());
    }
    if !settings.tls_ca_file.as_os_str().is_empty() {
        options = options.add_root_certificates(settings.tls_ca_file.clone()).require_tls(true);
    }
    let urls: Vec<String> = settings.url.split(',').map(|u| u.trim().to_owned()).collect();
    options.connect(urls).await.map_err(nats)
}

/// The stream (made if missing) and this host's durable consumer.
async fn ready(
    js: &jetstream::Context,
    settings: &Settings,
    name: &str,
    max_age: Duration,
) -> Result<consumer::Consumer<consumer::pull::Config>, FleetError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject)],
            max_age,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let durable = format!("portcloak-{}", name.replace('.', "-"));
    stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)
}

/// The age a stream keeps messages: the longest ban, and a day more.
pub fn max_age(engine: &Engine) -> Duration {
    engine.config().ban.max_duration.get() + Duration::from_secs(86_400)
}

/// What [`catch_up`] did.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Peers' bans applied.
    pub applied: Vec<Applied>,
    /// Messages read.
    pub read: u64,
}

/// Before the queues open: reads every message the stream holds for this
/// host's consumer, until none is pending or `deadline`, and applies the
/// peers' bans to `engine` (their kernel set elements come with the
/// firewall's install).
pub fn catch_up(
    settings: &Settings,
    key: Vec<u8>,
    engine: &Engine,
    clocks: Clocks,
    proven: &dyn Fn(SourceKey) -> bool,
    deadline: Duration,
) -> Result<CatchUp, FleetError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(nats)?;
    let stats = Stats::default();
    let window = engine.config().scan.window.get();
    let mut node = Node::new(settings, key, window, &stats);
    let mut done = CatchUp::default();
    let reading = async {
        let client = connect(settings, &node.name, false).await?;
        let js = jetstream::new(client);
        let mut consumer = ready(&js, settings, &node.name.clone(), max_age(engine)).await?;
        loop {
            let messages = fetch(&consumer).await?;
            let got = messages.len();
            for m in messages {
                done.read += 1;
                let (applied, _) = node.receive(&m.payload, engine, clocks, proven);
                done.applied.extend(applied);
                let _ = m.ack().await;
            }
            let pending = consumer.info().await.map(|i| i.num_pending).unwrap_or(0);
            if got == 0 && pending == 0 {
                return Ok::<(), FleetError>(());
            }
        }
    };
    // What was applied before the deadline stays applied.
    let outcome = rt.block_on(async { tokio::time::timeout(deadline, reading).await });
    match outcome {
        Ok(Ok(())) => Ok(done),
        Ok(Err(e)) if done.read == 0 => Err(e),
        Err(_) if done.read == 0 => Err(FleetError::Nats("no answer before the deadline".into())),
        _ => Ok(done),
    }
}

/// What the fleet thread needs of the daemon.
pub struct Daemon<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// Wall against engine time.
    pub clocks: Clocks,
    /// Set to stop.
    pub stop: &'a AtomicBool,
    /// Applies a ban in the kernel (the ban keeper).
    pub kernel: &'a dyn Fn(Applied),
    /// True when the kernel's proof sets hold a pair of the source.
    pub proven: &'a dyn Fn(SourceKey) -> bool,
    /// Logs a line.
    pub log: &'a dyn Fn(String),
}

/// The fleet thread: until `stop`, publishes what the outbox brings and
/// applies what the stream holds; reconnects whenever the broker goes.
pub fn run(settings: &Settings, key: Vec<u8>, link: &Link, outbox: &Receiver<Out>, d: &Daemon<'_>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        (d.log)("error: fleet: cannot start its runtime".into());
        return;
    };
    let window = d.engine.config().scan.window.get();
    let mut node = Node::new(settings, key, window, &link.stats);
    let stats = &link.stats;
    let cap = settings.queue;
    rt.block_on(async {
        let client = match connect(settings, &node.name.clone(), true).await {
            Ok(c) => c,
            Err(e) => {
                // Bad credentials: this host protects itself alone, and
                // says so, until it is stopped.
                (d.log)(format!("error: fleet: {e}; running without the fleet"));
                stats.failed(&e);
                while !d.stop.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let name = node.name.clone();
        let mut consumer = None;
        let mut queue: VecDeque<(Instant, String, Vec<u8>)> = VecDeque::new();
        let mut touched: HashMap<SourceKey, u32> = HashMap::new();
        let mut last_summary = Instant::now();
        let mut was_connected = false;
        while !d.stop.load(Relaxed) {
            // This host's bans and touches, from the workers.
            while let Ok(out) = outbox.try_recv() {
                match out {
                    Out::Ban(k, ban) => queue.push_back({
                        let (s, b) = node.seal_ban(k, &ban, d.clocks);
                        (Instant::now(), s, b)
                    }),
                    Out::Touch(k) => {
                        if touched.len() < message::MAX_TOUCHES || touched.contains_key(&k) {
                            *touched.entry(k).or_default() += 1;
                        }
                    }
                }
            }
            if last_summary.elapsed() >= Duration::from_secs(1) {
                last_summary = Instant::now();
                if !touched.is_empty() {
                    let (s, b) = node.seal_touches(&touched);
                    queue.push_back((Instant::now(), s, b));
                    touched.clear();
                }
            }
            while queue.len() > cap {
                queue.pop_front();
                stats.dropped.fetch_add(1, Relaxed);
            }
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            if !connected {
                consumer = None;
            }
            if connected && consumer.is_none() {
                let made = ready(&js, settings, &name, max_age(d.engine));
                match tokio::time::timeout(WAIT, made).await.map_err(nats).and_then(|r| r) {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        stats.failed(&e);
                    }
                }
            }
            let up = consumer.is_some();
            stats.connected.store(up, Relaxed);
            if up != was_connected {
                (d.log)(if up {
                    "fleet: connected".to_owned()
                } else {
                    "fleet: broker away; bans wait in the queue".to_owned()
                });
                was_connected = up;
            }
            // Publish in order, a batch at a time so that reading goes on
            // while a long queue drains; stop at the first failure.
            if up {
                let mut budget = BATCH;
                while let Some((_, subject, bytes)) = queue.front().filter(|_| budget > 0) {
                    budget -= 1;
                    let publish = async {
                        let ack = js.publish(subject.clone(), bytes.clone().into()).await;
                        ack.map_err(nats)?.await.map_err(nats)
                    };
                    let sent =
                        tokio::time::timeout(WAIT, publish).await.map_err(nats).and_then(|r| r);
                    match sent {
                        Ok(_) => {
                            stats.sent.fetch_add(1, Relaxed);
                            queue.pop_front();
                        }
                        Err(e) => {
                            stats.failed(&e);
                            consumer = None;
                            break;
                        }
                    }
                }
            }
            stats.pending.store(queue.len() as u64, Relaxed);
            let lag = queue.front().map_or(0, |(at, _, _)| at.elapsed().as_millis());
            stats.lag_ms.store(u64::try_from(lag).unwrap_or(u64::MAX), Relaxed);
            // Read what the fleet said.
            let Some(c) = &consumer else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // Every wait on the broker is bounded: a broker that went
            // away mid-read must not hold the thread.
            let fetched = tokio::time::timeout(WAIT, fetch(c)).await;
            let messages = match fetched.map_err(nats).and_then(|r| r) {
                Ok(m) => m,
                Err(e) => {
                    stats.failed(&e);
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            for m in messages {
                let (applied, publish) = node.receive(&m.payload, d.engine, d.clocks, d.proven);
                for a in applied {
                    (d.kernel)(a);
                }
                if let Some((k, ban)) = publish {
                    let (s, b) = node.seal_ban(k, &ban, d.clocks);
                    queue.push_back((Instant::now(), s, b));
                }
                // One not acknowledged comes again after the consumer's ack
                // wait, and is then refused as a replay.
                let _ = tokio::time::timeout(WAIT, m.ack()).await;
            }
        }
    });
}

#[cfg(test)]
mod tests;
