//! Sweeps across hosts: a source that touches closed ports on
//! `[fleet] sweep_hosts` hosts within `scan.window` is banned fleet-wide,
//! though no host alone saw more than a probe. Every host reads every
//! summary, its own included, and decides alone; they all see the same
//! stream, so they agree. Pure: time passed in, bounded.

use std::time::Duration;

use crate::time::Timestamp;
use crate::track::SourceKey;

/// Sources followed at most; the least recently touched is forgotten first.
pub const SOURCES: usize = 1 << 16;
/// Hosts remembered per source: enough for any `sweep_hosts` (a `u8`).
const HOSTS: usize = 255;

/// Which hosts each source touched closed ports on, and when.
#[derive(Debug)]
pub struct Sweeps {
    sources: lru::LruCache<SourceKey, Vec<(String, Timestamp)>>,
    threshold: usize,
    window: Duration,
}

impl Sweeps {
    /// Sweeps of `threshold` hosts within `window`.
    pub fn new(threshold: u8, window: Duration) -> Self {
        Self {
            sources: crate::track::bounded_lru(SOURCES),
            threshold: usize::from(threshold).max(2),
            window,
        }
    }

    /// Notes that `source` touched closed ports on `host` at `now`; returns
    /// the number of hosts when this touch makes it a sweep.
    pub fn touch(&mut self, source: SourceKey, host: &str, now: Timestamp) -> Option<u32> {
        let window = self.window;
        let hosts = self.sources.get_or_insert_mut(source, Vec::new);
        hosts.retain(|(_, at)| now.saturating_since(*at) <= window);
        let before = hosts.len();
        if let Some(entry) = hosts.iter_mut().find(|(h, _)| h == host) {
            entry.1 = now;
        } else if hosts.len() < HOSTS {
            hosts.push((host.to_owned(), now));
        }
        let after = hosts.len();
        (before < self.threshold && after >= self.threshold)
            .then(|| u32::try_from(after).unwrap_or(u32::MAX))
    }

    /// Forgets `source` (banned now).
    pub fn forget(&mut self, source: &SourceKey) {
        self.sources.pop(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_ports_on_enough_hosts_within_the_window_make_a_sweep() {
        let key = SourceKey::new(
            "198.18.1.2".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            64,
        );
        let mut s = Sweeps::new(4, Duration::from_secs(60));
        let t = |secs| Timestamp::from_secs(secs);
        assert_eq!(s.touch(key, "a", t(1)), None);
        assert_eq!(s.touch(key, "a", t(2)), None, "the same host twice is one host");
        assert_eq!(s.touch(key, "b", t(3)), None);
        assert_eq!(s.touch(key, "c", t(4)), None);
        assert_eq!(s.touch(key, "d", t(5)), Some(4));
        assert_eq!(s.touch(key, "e", t(6)), None, "a sweep is told once");
        // Touches older than the window do not count.
        let other = SourceKey::new(std::net::Ipv4Addr::new(198, 18, 1, 3).into(), 64);
        for (i, h) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(s.touch(other, h, t(10 + i as u64)), None);
        }
        assert_eq!(s.touch(other, "d", t(200)), None);
        s.forget(&key);
        assert_eq!(s.touch(key, "a", t(7)), None);
    }
}
