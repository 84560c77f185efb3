//! CONTROL: the daemon's Unix socket. One JSON request per connection,
//! one JSON answer: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// How long either side waits on the other.
const TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// Sends `request` to the daemon at `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Value, ControlError> {
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
        Ok(value)
    } else {
        let why = value.get("error").and_then(Value::as_str).unwrap_or("unknown error");
        Err(ControlError::Refused(why.to_owned()))
    }
}

/// Binds the control socket, mode 0600. A socket left by a crashed daemon
/// is replaced; one a live daemon answers on is an error.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("another portcloak daemon is running (it answers on {})", path.display());
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot replace {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers one connection with `handle`.
pub fn answer(stream: UnixStream, handle: impl FnOnce(Request) -> Result<Value, String>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut line = String::new();
    let reply = match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => Err(format!("bad request: {e}")),
        },
        Err(e) => Err(format!("cannot read request: {e}")),
    };
    let value = match reply {
        Ok(mut v) => {
            if let Value::Object(map) = &mut v {
                map.insert("ok".to_owned(), Value::Bool(true));
            }
            v
        }
        Err(e) => serde_json::json!({ "ok": false, "error": e }),
    };
    let mut text = value.to_string();
    text.push('\n');
    let _ = (&stream).write_all(text.as_bytes());
}
