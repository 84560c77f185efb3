//! SYSCTLS: the kernel settings a persona needs, because the kernel
//! believes it negotiated what they set (window scale, ECN, timestamps) and
//! a rewrite would lie to it. They are applied only with `[persona]
//! apply_sysctls = true`, in the daemon's network namespace (every
//! `net.ipv4` key here is per namespace), and restored when it stops.
//!
//! Nothing is lost on a crash: the original values are saved beside the
//! state file before the first write, and a later start restores from that
//! file rather than reading back the persona's own values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::log;
use crate::config::Sysctls;

/// A sysctl that could not be read or written.
#[derive(Debug, Error)]
pub enum SysctlError {
    /// Reading or writing one key.
    #[error("sysctl {name}: {source}")]
    Key {
        /// The key, dotted.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// The file of saved originals.
    #[error("{}: {source}", path.display())]
    Saved {
        /// The file.
        path: PathBuf,
        /// The OS or format error.
        source: io::Error,
    },
}

/// One setting a persona wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The dotted key.
    pub name: &'static str,
    /// The value to write.
    pub want: String,
    /// Its value now.
    pub now: String,
}

const TCP_RMEM: &str = "net.ipv4.tcp_rmem";
const RMEM_MAX: &str = "net.core.rmem_max";

fn proc_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// Reads a sysctl, with runs of whitespace made one space.
pub fn read(name: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(proc_path(name))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .map_err(|source| SysctlError::Key { name: name.to_owned(), source })
}

fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(proc_path(name), value)
        .map_err(|source| SysctlError::Key { name: name.to_owned(), source })
}

/// The settings `s` asks for, with their values now. The window scale
/// becomes a `tcp_rmem` whose maximum is 2^(15 + scale), its minimum and
/// default kept (lowered to fit under the new maximum).
pub fn wanted(s: &Sysctls) -> Result<Vec<Setting>, SysctlError> {
    let mut out = Vec::new();
    let mut plain = |name: &'static str, v: Option<u8>| -> Result<(), SysctlError> {
        if let Some(v) = v {
            out.push(Setting { name, want: v.to_string(), now: read(name)? });
        }
        Ok(())
    };
    plain("net.ipv4.tcp_ecn", s.tcp_ecn)?;
    plain("net.ipv4.tcp_timestamps", s.tcp_timestamps)?;
    plain("net.ipv4.ip_default_ttl", s.ip_default_ttl)?;
    if let Some(scale) = s.window_scale {
        let now = read(TCP_RMEM)?;
        let max = 1u64 << (15 + u32::from(scale.min(14)));
        let mut v: Vec<u64> = now.split(' ').filter_map(|x| x.parse().ok()).collect();
        if let [min, default, old_max] = v.as_mut_slice() {
            *old_max = max;
            *default = (*default).min(max);
            *min = (*min).min(*default);
        }
        let want = v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        out.push(Setting { name: TCP_RMEM, want, now });
    }
    Ok(out)
}

/// The window scale Linux offers now: from the larger of the `tcp_rmem`
/// maximum and the global `net.core.rmem_max`.
pub fn window_scale_now() -> Result<(u8, u64), SysctlError> {
    let rmem = read(TCP_RMEM)?;
    let max = rmem.rsplit(' ').next().and_then(|m| m.parse::<u64>().ok()).unwrap_or(0);
    let core: u64 = read(RMEM_MAX)?.parse().unwrap_or(0);
    Ok((scale_of(max.max(core)), core))
}

/// `tcp_select_initial_window`: ilog2(space) − 15, within 0 to 14.
pub fn scale_of(space: u64) -> u8 {
    let log = space.checked_ilog2().unwrap_or(0);
    u8::try_from(log.saturating_sub(15).min(14)).unwrap_or(14)
}

/// What `portcloak check` prints about a persona's sysctls.
pub fn describe(s: &Sysctls, apply: bool) -> String {
    let mut text = String::new();
    let settings = match wanted(s) {
        Ok(v) => v,
        Err(e) => return format!("    cannot read them: {e}\n"),
    };
    if settings.is_empty() {
        return "    none\n".to_owned();
    }
    for set in &settings {
        let mark = if set.want == set.now { "ok" } else { "differs" };
        let _ =
            writeln!(text, "    {:<24} wants {:<24} now {} ({mark})", set.name, set.want, set.now);
    }
    if let (Some(scale), Ok((now, core))) = (s.window_scale, window_scale_now()) {
        let _ = writeln!(text, "    window scale             wants {scale:<24} now {now}");
        let floor = scale_of(core);
        if floor > scale {
            let _ = writeln!(
                text,
                "    note: {RMEM_MAX} = {core} is global to the host and keeps the scale at {floor} or more; portcloak does not change it"
            );
        }
    }
    let _ = writeln!(
        text,
        "    {}",
        if apply {
            "applied by `portcloak run` (persona.apply_sysctls = true) and restored when it stops"
        } else {
            "not applied: set persona.apply_sysctls = true, or set them yourself"
        }
    );
    text
}

/// Sysctls the daemon changed, to put back.
#[derive(Debug)]
pub struct Applied {
    saved: PathBuf,
    originals: BTreeMap<String, String>,
}

/// The file of original values beside `state_file`.
pub fn saved_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.file_name().unwrap_or_default().to_os_string();
    name.push(".sysctls");
    state_file.with_file_name(name)
}

/// Applies `settings`, first saving the originals to `saved` (or, when a
/// run that did not stop cleanly left that file, keeping the originals it
/// holds). On an error, what was written is put back.
pub fn apply(settings: &[Setting], saved: &Path) -> Result<Applied, SysctlError> {
    let saved_err = |source| SysctlError::Saved { path: saved.to_owned(), source };
    let mut originals: BTreeMap<String, String> = match std::fs::read(saved) {
        Ok(bytes) => {
            log(&format!(
                "sysctls: {} is left from a run that did not stop cleanly; its values are the originals",
                saved.display()
            ));
            serde_json::from_slice(&bytes).map_err(|e| saved_err(io::Error::other(e)))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(saved_err(e)),
    };
    for s in settings {
        originals.entry(s.name.to_owned()).or_insert_with(|| s.now.clone());
    }
    let json = serde_json::to_vec_pretty(&originals).map_err(|e| saved_err(io::Error::other(e)))?;
    super::state::write_atomic(saved, &json).map_err(saved_err)?;
    let applied = Applied { saved: saved.to_owned(), originals };
    for s in settings {
        if let Err(e) = write(s.name, &s.want) {
            applied.restore();
            return Err(e);
        }
        log(&format!("sysctl {} = {} (was {})", s.name, s.want, s.now));
    }
    Ok(applied)
}

impl Applied {
    /// The originals a run that did not stop cleanly left in `saved`, to
    /// put back now that no persona wants them changed.
    pub fn left_over(saved: &Path) -> Option<Self> {
        let bytes = std::fs::read(saved).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(originals) => Some(Self { saved: saved.to_owned(), originals }),
            Err(e) => {
                log(&format!("warning: {}: {e}; not restoring from it", saved.display()));
                None
            }
        }
    }

    /// Puts every original value back; forgets the saved file once all are.
    pub fn restore(&self) {
        let mut ok = true;
        for (name, value) in &self.originals {
            match write(name, value) {
                Ok(()) => log(&format!("sysctl {name} = {value} (restored)")),
                Err(e) => {
                    ok = false;
                    log(&format!(
                        "error: restoring {e}; the original stays in {}",
                        self.saved.display()
                    ));
                }
            }
        }
        if ok {
            let _ = std::fs::remove_file(&self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_scale_follows_the_kernels_formula() {
        assert_eq!(scale_of(8 << 20), 8);
        assert_eq!(scale_of((16 << 20) - 1), 8);
        assert_eq!(scale_of(2 << 20), 6);
        assert_eq!(scale_of(4 << 20), 7);
        assert_eq!(scale_of(32 << 20), 10);
        assert_eq!(scale_of(1000), 0);
        assert_eq!(scale_of(u64::MAX), 14);
    }

    #[test]
    fn saved_originals_sit_beside_the_state_file() {
        let p = saved_path(Path::new("/var/lib/portcloak/state.json"));
        assert_eq!(p, Path::new("/var/lib/portcloak/state.json.sysctls"));
    }
}
