//! The ban keeper: batches ban changes into one nft transaction per 50 ms,
//! logs them, sends their events and saves the state file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use super::BATCH;
use crate::event::Event;
use crate::firewall::{self, BanOp, Entry, Pair};
use crate::runtime::state::Saved;
use crate::runtime::worker::{KernelMsg, Shared};
use crate::runtime::{log, state};
use crate::time::format_duration;
use crate::track::{BanKind, SourceKey};

/// The ban keeper: batches ban changes, applies them to the kernel sets,
/// logs them, and saves the state file. It alone knows which proven pairs
/// each quarantine keeps.
pub(super) struct Keeper<'a> {
    shared: &'a Shared,
    manage: bool,
    path: &'a Path,
    kept: BTreeMap<SourceKey, Vec<Pair>>,
    /// The kernel's proof sets, read at a clean stop (which removes them).
    proofs: Vec<firewall::Proof>,
    /// Bans changed since the state file was last written.
    dirty: bool,
    /// When it was last written.
    saved_at: Option<Instant>,
}

/// The state file is rewritten at most this often: the first change after
/// a quiet spell at once, later ones together.
const SAVE_EVERY: Duration = Duration::from_secs(1);

impl<'a> Keeper<'a> {
    /// The keeper of `shared`'s bans, saving to `path`; `kept` holds the
    /// pairs of the quarantines restored at start.
    pub(super) const fn new(
        shared: &'a Shared,
        manage: bool,
        path: &'a Path,
        kept: BTreeMap<SourceKey, Vec<Pair>>,
    ) -> Self {
        Self { shared, manage, path, kept, proofs: Vec::new(), dirty: false, saved_at: None }
    }

    pub(super) fn run(&mut self, rx: &Receiver<KernelMsg>, events: Option<&Sender<Event>>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Relaxed) {
                        break;
                    }
                    self.flush();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let deadline = Instant::now() + BATCH;
            let mut batch = vec![first];
            while let Ok(m) = rx.recv_deadline(deadline) {
                batch.push(m);
            }
            self.apply(&batch, events);
        }
        self.save();
    }

    fn apply(&mut self, batch: &[KernelMsg], events: Option<&Sender<Event>>) {
        let now = self.shared.clock.now();
        let mut ops = Vec::with_capacity(batch.len());
        for msg in batch {
            match *msg {
                KernelMsg::Ban(key, ban) => {
                    let length = ban.until.saturating_since(ban.since);
                    let keep = match ban.kind {
                        BanKind::Ban => Vec::new(),
                        BanKind::Quarantine => self.proven_pairs(key),
                    };
                    let kept = if keep.is_empty() {
                        String::new()
                    } else {
                        let names: Vec<String> =
                            keep.iter().map(|p| state::pair_name(*p)).collect();
                        format!(" keeps {}", names.join(", "))
                    };
                    log(&format!(
                        "{} {key} for {} reason \"{}\" offences {}{kept}",
                        ban.kind.name(),
                        format_duration(length),
                        ban.reason,
                        ban.offences
                    ));
                    if let Some(ev) = events {
                        let _ = ev.try_send(Event::ban(key, &ban));
                    }
                    if keep.is_empty() {
                        self.kept.remove(&key);
                    } else {
                        self.kept.insert(key, keep.clone());
                    }
                    let remaining = ban.until.saturating_since(now);
                    ops.push(BanOp::Add(Entry { key, remaining, kind: ban.kind, keep }));
                }
                KernelMsg::Proofs(ref proofs) => {
                    self.proofs.clone_from(proofs);
                    self.dirty = true;
                }
                KernelMsg::Unban(key) => {
                    log(&format!("unban {key} reason \"manual\""));
                    if let Some(ev) = events {
                        let _ = ev.try_send(Event::unban(now, key));
                    }
                    ops.push(BanOp::Remove(key, self.kept.remove(&key).unwrap_or_default()));
                }
            }
        }
        // After a clean stop has removed the table, the state file alone
        // carries the last bans.
        if self.manage
            && !self.shared.stop.load(Relaxed)
            && let Err(e) = firewall::apply(&ops, self.shared.engine.config().tracking.ipv6_prefix)
        {
            log(&format!(
                "error: kernel ban update failed ({e}); the engine still drops these sources"
            ));
        }
        self.dirty = true;
        self.flush();
    }

    /// Writes the state file when bans changed and the last write is at
    /// least [`SAVE_EVERY`] old.
    fn flush(&mut self) {
        if self.dirty && self.saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            self.save();
        }
    }

    /// The pairs the kernel saw `key` prove, which its quarantine keeps.
    fn proven_pairs(&self, key: SourceKey) -> Vec<Pair> {
        if !self.manage {
            return Vec::new();
        }
        match firewall::proven_pairs(key) {
            Ok(pairs) => pairs,
            Err(e) => {
                log(&format!("error: reading the proven pairs of {key}: {e}"));
                Vec::new()
            }
        }
    }

    /// Saves the state file, and forgets the kept pairs of quarantines
    /// that have ended.
    fn save(&mut self) {
        let now = self.shared.clock.now();
        let bans = self.shared.engine.bans(now);
        self.kept.retain(|key, _| bans.binary_search_by(|(k, _)| k.cmp(key)).is_ok());
        let saved: Vec<Saved> = bans
            .into_iter()
            .map(|(key, ban)| Saved {
                key,
                ban,
                keep: self.kept.get(&key).cloned().unwrap_or_default(),
            })
            .collect();
        self.saved_at = Some(Instant::now());
        let offset = self.shared.clock.wall_offset();
        match state::save(self.path, now, offset, &saved, &self.proofs) {
            Ok(()) => self.dirty = false,
            Err(e) => log(&format!("error: cannot save {}: {e}", self.path.display())),
        }
    }
}
