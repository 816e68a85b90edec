//! Who is writing: writer markers and the maintenance lock, and how a dead holder is told
//! from a live one without comparing clocks.
//!
//! A writer (backup, repair) puts a sealed marker under `writers/<token>` before it reads
//! the index, and deletes it when its snapshot is written. Prune (see [`super::prune`])
//! deletes a batch of candidate packs only after every marker that existed when the batch
//! was announced is gone, so no writer that could have reused those packs is still running.
//! Prune and repair also take a lock under `locks/<token>` so that two of them never
//! rewrite the index at once; backups never wait for it.
//!
//! A marker or lock whose process died would block deletion forever, so each holds the
//! host name, the kernel boot ID, the PID namespace, the process ID and its start time: on
//! the same host a holder is stale when the boot ID changed or, in the same PID namespace,
//! the process is gone (a reused PID has another start time). Within one process a registry of live tokens answers exactly. Holders on
//! other hosts are never judged from here: that host's next writer removes its own stale
//! markers, and an operator can remove a marker of a host that is gone for good.

use super::pending;
use crate::error::{Error, Kind, Result};
use crate::repo::index::{self, INDEX_PREFIX};
use crate::repo::{Id, Index, Repository, crypto};
use crate::store::{ObjectStore, StoreErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

pub const WRITERS_PREFIX: &str = "writers/";
pub const LOCKS_PREFIX: &str = "locks/";
const HOLDER_AAD: &[u8] = b"hostagent holder v1";

/// What a marker or lock says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub version: u32,
    /// "backup", "repair", "prune"...
    pub purpose: String,
    pub hostname: String,
    pub boot_id: String,
    pub pid: u32,
    /// The process start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
    /// The PID namespace (`/proc/self/ns/pid`): PIDs mean nothing across namespaces.
    pub pid_ns: String,
    /// For the operator only; never compared.
    pub created: String,
}

/// Whether a holder still runs, as far as this host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// On another host: only that host can tell.
    Unknown,
}

fn live_tokens() -> &'static Mutex<HashSet<String>> {
    static TOKENS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

impl Holder {
    pub fn current(purpose: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            version: 1,
            purpose: purpose.to_string(),
            hostname: crate::backup::hostname(),
            boot_id: boot_id(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            pid_ns: pid_ns(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// Judges the holder of `token` from this host. Anything this host cannot observe
    /// (another host, another PID namespace, no /proc) is Unknown, never Dead: a wrong
    /// "dead" could let a prune delete what a running writer is about to use.
    pub fn liveness(&self, token: &str) -> Liveness {
        let my_boot = boot_id();
        if self.hostname != crate::backup::hostname()
            || self.boot_id.is_empty()
            || my_boot.is_empty()
        {
            return Liveness::Unknown;
        }
        if self.boot_id != my_boot {
            return Liveness::Dead;
        }
        if self.start_ticks == 0 || self.pid_ns.is_empty() || self.pid_ns != pid_ns() {
            return Liveness::Unknown;
        }
        match start_ticks(self.pid) {
            Some(t) if t != self.start_ticks => return Liveness::Dead,
            // Without root, /proc may hide other users' processes (hidepid).
            None if !nix::unistd::geteuid().is_root() => return Liveness::Unknown,
            None => return Liveness::Dead,
            Some(_) => {}
        }
        if self.pid == std::process::id() {
            return if live_tokens().lock().unwrap().contains(token) {
                Liveness::Alive
            } else {
                Liveness::Dead
            };
        }
        Liveness::Alive
    }

    pub fn describe(&self) -> String {
        format!(
            "{} on host {} (pid {}, since {})",
            self.purpose, self.hostname, self.pid, self.created
        )
    }
}

fn put_holder(store: &dyn ObjectStore, repo: &Repository, key: &str, h: &Holder) -> Result<()> {
    let sealed = repo.keys().seal(
        HOLDER_AAD,
        &serde_json::to_vec(h).expect("holder serializes"),
    );
    store
        .put(key, &sealed)
        .map_err(|e| Error::from(e).context("cannot write a writer marker or lock"))
}

/// Reads every holder under `prefix`: (key, token, holder). A holder that vanished while
/// listing is skipped; one that does not open is reported with `None`.
pub fn list_holders(
    repo: &Repository,
    prefix: &str,
) -> Result<Vec<(String, String, Option<Holder>)>> {
    let store = repo.store();
    let mut out = Vec::new();
    for o in store
        .list(prefix)
        .map_err(|e| Error::from(e).context("cannot list writer markers"))?
    {
        let token = o.key[prefix.len()..].to_string();
        let bytes = match store.get(&o.key) {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e).context("cannot read a writer marker")),
        };
        let holder = repo
            .keys()
            .open(HOLDER_AAD, &bytes)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok());
        out.push((o.key, token, holder));
    }
    Ok(out)
}

/// Deletes the holders under `prefix` that this host can prove dead; returns how many.
pub fn remove_stale(repo: &Repository, prefix: &str) -> Result<usize> {
    let mut n = 0;
    for (key, token, holder) in list_holders(repo, prefix)? {
        if holder.is_some_and(|h| h.liveness(&token) == Liveness::Dead) {
            repo.store()
                .delete(&key)
                .map_err(|e| Error::from(e).context("cannot remove a stale writer marker"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// A registered holder; removes its object when dropped (best effort: a crash leaves it for
/// the stale check above).
pub struct Registration {
    store: Arc<dyn ObjectStore>,
    key: String,
    token: String,
    released: bool,
}

impl Registration {
    fn create(repo: &Repository, prefix: &str, purpose: &str) -> Result<Registration> {
        let token = hex::encode(crypto::random_bytes::<16>());
        let key = format!("{prefix}{token}");
        live_tokens().lock().unwrap().insert(token.clone());
        let reg = Registration {
            store: repo.store().clone(),
            key,
            token,
            released: false,
        };
        put_holder(
            repo.store().as_ref(),
            repo,
            &reg.key,
            &Holder::current(purpose),
        )?;
        Ok(reg)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the object now, reporting failure.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        live_tokens().lock().unwrap().remove(&self.token);
        self.store
            .delete(&self.key)
            .map_err(|e| Error::from(e).context("cannot remove the writer marker"))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.released {
            live_tokens().lock().unwrap().remove(&self.token);
            let _ = self.store.delete(&self.key);
        }
    }
}

/// A writer's session: its marker, and an index that hides packs pending deletion.
///
/// Every operation that writes snapshots must run inside one: begin it before the backup
/// reads anything from the repository, finish it after the snapshot is written.
pub struct WriteSession {
    marker: Registration,
    /// Packs this writer must not reuse.
    pub hidden_packs: usize,
}

impl WriteSession {
    /// Writes the marker, then reads the pending deletions, then loads the index without
    /// their packs, in that order (docs/FORMAT.md, "Garbage collection" says why).
    pub fn begin(repo: &mut Repository, purpose: &str) -> Result<WriteSession> {
        // This host's dead writers would otherwise hold up deletion.
        remove_stale(repo, WRITERS_PREFIX)?;
        let marker = Registration::create(repo, WRITERS_PREFIX, purpose)?;
        let hidden = pending::all_candidates(repo)?;
        let index = load_index_without(repo, &hidden)?;
        repo.replace_index(index);
        Ok(WriteSession {
            marker,
            hidden_packs: hidden.len(),
        })
    }

    /// Ends the session: call after the snapshot is written (or the writer gave up).
    pub fn finish(self) -> Result<()> {
        self.marker.release()
    }
}

/// Loads every index file into an index that omits `hidden` packs.
pub fn load_index_without(repo: &Repository, hidden: &HashSet<Id>) -> Result<Index> {
    let store = repo.store();
    let files = store
        .list(INDEX_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list index files"))?;
    let mut idx = Index::new();
    for f in files {
        let id = Id::from_hex(&f.key[INDEX_PREFIX.len()..])
            .map_err(|_| Error::corrupt(format!("unexpected object {} in index/", f.key)))?;
        let bytes = match store.get(&f.key) {
            Ok(b) => b,
            // Consolidated away by a prune since the listing; its packs are in the new file.
            Err(e) if e.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e).context("cannot read an index file")),
        };
        for pack in index::decode_file(repo.keys(), &id, &bytes)? {
            if !hidden.contains(&pack.id) {
                idx.add_pack(&pack);
            }
        }
    }
    idx.finalize();
    Ok(idx)
}

/// The maintenance lock: one prune or repair at a time. Taken by writing a lock and then
/// listing; if another live (or unknown) lock is there, ours is withdrawn and the caller is
/// told who holds it. Two racing takers may both withdraw: safe, and the next try wins.
pub struct MaintenanceLock {
    reg: Registration,
}

impl MaintenanceLock {
    pub fn acquire(repo: &Repository, purpose: &str) -> Result<MaintenanceLock> {
        remove_stale(repo, LOCKS_PREFIX)?;
        let reg = Registration::create(repo, LOCKS_PREFIX, purpose)?;
        for (key, _token, holder) in list_holders(repo, LOCKS_PREFIX)? {
            if key == reg.key {
                continue;
            }
            let who = holder
                .map(|h| h.describe())
                .unwrap_or_else(|| "an unreadable lock".to_string());
            drop(reg);
            return Err(Error::new(
                Kind::AlreadyExists,
                format!(
                    "another maintenance operation holds the repository: {who} ({key}); wait \
                     for it, or if that host is gone for good remove the lock with \
                     `agentctl unlock {}`",
                    &key[LOCKS_PREFIX.len()..]
                ),
            ));
        }
        Ok(MaintenanceLock { reg })
    }

    pub fn release(self) -> Result<()> {
        self.reg.release()
    }
}
