//! CONTROL: the daemon's Unix socket. One JSON request per connection,
//! one JSON answer: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
//!
//! No client can stall it: a request is at most [`MAX_REQUEST`] bytes and
//! must arrive within [`REQUEST_DEADLINE`] in all; each connection is
//! served on a thread of its own, at most [`MAX_CONNECTIONS`] at once, so
//! a slow client never delays the next. The socket appears at its path
//! with mode 0600 already set: it is bound in a private directory first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// How long either side waits on the other.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request the daemon reads.
pub const MAX_REQUEST: usize = 64 << 10;
/// How long a client has to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; one more is refused at once.
pub const MAX_CONNECTIONS: usize = 16;

/// A request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Counters of every worker, the tables and the bans.
    Status,
    /// Every active ban.
    Bans,
    /// Ban an address by hand.
    Ban {
        /// Who.
        ip: IpAddr,
        /// For how long, in seconds; the rules' `ban.duration` when absent.
        seconds: Option<u64>,
    },
    /// Lift one ban, or every ban.
    Unban {
        /// Who; `None` for all.
        ip: Option<IpAddr>,
    },
}

/// Why a control request failed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// Nothing listens on the socket.
    #[error(
        "no portcloak daemon is running (nothing listens on {0}); start one with `portcloak run`"
    )]
    NotRunning(PathBuf),
    /// The socket exists but may not be used.
    #[error("permission denied on {0}: the control socket is root's (mode 0600)")]
    Denied(PathBuf),
    /// Talking to the daemon failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
    /// The answer is not what this portcloak expects.
    #[error("the daemon's answer does not parse ({0}); is it another portcloak version?")]
    Answer(String),
}

/// Sends `request` to the daemon at `path` and returns its answer, read
/// as `T` (one of [`super::protocol`]'s answers).
pub fn request<T: serde::de::DeserializeOwned>(
    path: &Path,
    request: &Request,
) -> Result<T, ControlError> {
    let io = |source| ControlError::Io { path: path.to_owned(), source };
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning(path.to_owned())
        }
        std::io::ErrorKind::PermissionDenied => ControlError::Denied(path.to_owned()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| io(e.into()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let value: Value = serde_json::from_str(&answer).map_err(|e| io(e.into()))?;
    if value.get("ok").and_then(Value::as_bool) == Some(true) {
        serde_json::from_value(value).map_err(|e| ControlError::Answer(e.to_string()))
    } else {
        let why = value.get("error").and_then(Value::as_str).unwrap_or("unknown error");
        Err(ControlError::Refused(why.to_owned()))
    }
}

/// Binds the control socket, mode 0600. A socket left by a crashed daemon
/// is replaced; one a live daemon answers on is an error. The socket is
/// bound in a new directory of mode 0700 beside `path`, given its mode,
/// and renamed into place, so no one can connect before the mode holds.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("another portcloak daemon is running (it answers on {})", path.display());
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot replace {}: {e}", path.display())),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let private = dir.join(format!(".portcloak-socket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", private.display()))?;
    let staged = private.join("sock");
    let bound = UnixListener::bind(&staged)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path).map_err(|e| {
                anyhow::anyhow!("cannot move the socket to {}: {e}", path.display())
            })?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `listener` until `stop` is set: each connection on a thread of
/// its own, at most [`MAX_CONNECTIONS`] at once (one more is told to retry
/// and closed).
pub fn serve<F, A, E>(listener: &UnixListener, stop: &AtomicBool, handle: F)
where
    F: Fn(Request) -> Result<A, E> + Sync,
    A: Serialize,
    E: std::fmt::Display,
{
    let active = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                        active.fetch_sub(1, Ordering::AcqRel);
                        refuse(&stream, "too many control connections at once; try again");
                        continue;
                    }
                    let (active, handle) = (&active, &handle);
                    let spawned = std::thread::Builder::new()
                        .name("control-conn".into())
                        .spawn_scoped(scope, move || {
                            answer(stream, handle);
                            active.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    super::log(&format!("error: control socket: {e}"));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
}

/// The answer to a refused request.
#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: &'a str,
}

impl Failure<'_> {
    fn value(why: &str) -> Value {
        serde_json::to_value(Failure { ok: false, error: why }).unwrap_or(Value::Null)
    }
}

fn refuse(stream: &UnixStream, why: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    write_line(stream, &Failure::value(why));
}

/// Writes `value` as one JSON line; a client that went away is no error.
fn write_line(stream: &UnixStream, value: &Value) {
    let mut text = value.to_string();
    text.push('\n');
    let _ = (&*stream).write_all(text.as_bytes());
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, all of it
/// within [`REQUEST_DEADLINE`].
fn read_request(stream: &UnixStream) -> Result<String, String> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("the request did not arrive in time".into());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A receive timeout: the deadline has passed.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("the request did not arrive in time".into());
            }
            Err(e) => return Err(format!("cannot read request: {e}")),
        };
        let got = chunk.get(..n).unwrap_or_default();
        let end = got.iter().position(|&b| b == b'\n');
        buf.extend_from_slice(got.get(..end.unwrap_or(n)).unwrap_or_default());
        if buf.len() > MAX_REQUEST {
            return Err(format!("request larger than {} KiB", MAX_REQUEST >> 10));
        }
        if end.is_some() {
            break;
        }
    }
    String::from_utf8(buf).map_err(|_| "the request is not UTF-8".into())
}

/// Answers one connection with `handle`.
pub fn answer<A: Serialize, E: std::fmt::Display>(
    stream: UnixStream,
    handle: impl FnOnce(Request) -> Result<A, E>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let reply =
        read_request(&stream).and_then(|line| match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req)
                .map_err(|e| e.to_string())
                .and_then(|a| serde_json::to_value(a).map_err(|e| e.to_string())),
            Err(e) => Err(format!("bad request: {e}")),
        });
    let value = match reply {
        Ok(mut v) => {
            if let Value::Object(map) = &mut v {
                map.insert("ok".to_owned(), Value::Bool(true));
            }
            v
        }
        Err(e) => Failure::value(&e),
    };
    write_line(&stream, &value);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portcloak-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_socket_appears_with_its_final_mode_and_nothing_left_beside_it() {
        let d = dir("mode");
        let path = d.join("ctl.sock");
        let _listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ctl.sock"], "the private directory is gone");
        assert!(bind(&path).is_err(), "a live socket is not replaced");
    }

    #[test]
    fn a_huge_request_and_a_slow_client_stall_nothing() {
        let d = dir("stall");
        let path = d.join("ctl.sock");
        let listener = bind(&path).unwrap();
        let stop = AtomicBool::new(false);
        /// Stops the server however the test ends, so the scope can end.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|scope| {
            scope.spawn(|| {
                serve(&listener, &stop, |_| Ok::<_, String>(serde_json::json!({ "pong": 1 })));
            });
            let _stop = Stop(&stop);
            // A slow client that never finishes its request.
            let slow = UnixStream::connect(&path).unwrap();
            (&slow).write_all(b"{\"cmd\":").unwrap();
            // A client that sends 100 MB without a newline.
            let huge = scope.spawn(|| {
                let s = UnixStream::connect(&path).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let block = vec![b'x'; 1 << 20];
                let mut sent = 0usize;
                while sent < 100 << 20 {
                    if (&s).write_all(&block).is_err() {
                        break;
                    }
                    sent += block.len();
                }
                let mut answer = String::new();
                let _ = BufReader::new(&s).read_line(&mut answer);
                (sent, answer)
            });
            let started = Instant::now();
            let answer: Value = request(&path, &Request::Status).unwrap();
            assert_eq!(answer["pong"], 1);
            assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
            let (sent, answer) = huge.join().unwrap();
            assert!(sent < 100 << 20, "the daemon stopped reading the huge request");
            assert!(answer.contains("larger than 64 KiB"), "{answer}");
            // The slow client is cut off at the deadline.
            let mut line = String::new();
            slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            BufReader::new(&slow).read_line(&mut line).unwrap();
            assert!(line.contains("did not arrive in time"), "{line}");
        });
    }
}
