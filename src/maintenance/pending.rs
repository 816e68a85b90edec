//! Pending deletions: the sealed objects through which prune announces packs it means to
//! delete, and the witnesses that record which writers were running when it did.
//!
//! `pending/<id>` lists candidate packs and the snapshots prune had seen; it is named by the
//! hash of its sealed bytes and never changed. `witness/<pending id>` lists the writer
//! markers present after the pending object was written. A later prune deletes the packs
//! once every witnessed marker is gone (the argument is in docs/FORMAT.md).

use super::session::{WRITERS_PREFIX, list_holders};
use crate::error::{Error, Result};
use crate::repo::{Id, Repository};
use crate::store::StoreErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const PENDING_PREFIX: &str = "pending/";
pub const WITNESS_PREFIX: &str = "witness/";
const PENDING_AAD: &[u8] = b"hostagent pending deletion v1";
const WITNESS_AAD: &[u8] = b"hostagent deletion witness v1";

/// Why a pack is a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// No snapshot refers to any of its blobs.
    Unused,
    /// Its live blobs were copied into new packs.
    Repacked,
    /// No index lists it (left by an interrupted backup).
    Unindexed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub pack: Id,
    pub size: u64,
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub version: u32,
    pub candidates: Vec<Candidate>,
    /// Snapshots the announcing prune had seen (for the operator and for checks).
    pub observed_snapshots: Vec<Id>,
    /// For the operator only; never compared.
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Witness {
    pub version: u32,
    /// Tokens of the writer markers present after the pending object was written.
    pub writers: Vec<String>,
}

pub fn pending_key(id: &Id) -> String {
    format!("{PENDING_PREFIX}{}", id.to_hex())
}

pub fn witness_key(id: &Id) -> String {
    format!("{WITNESS_PREFIX}{}", id.to_hex())
}

pub fn write_pending(repo: &Repository, p: &Pending) -> Result<Id> {
    let sealed = repo
        .keys()
        .seal(PENDING_AAD, &serde_json::to_vec(p).expect("serializes"));
    let id = Id::of_stored(&sealed);
    repo.store()
        .put(&pending_key(&id), &sealed)
        .map_err(|e| Error::from(e).context("cannot write the pending deletion list"))?;
    Ok(id)
}

/// Lists the writer markers present now and records them as the witness of `id`. Any time
/// after the pending object is durable is a valid moment to do this.
pub fn write_witness(repo: &Repository, id: &Id) -> Result<Witness> {
    let writers = list_holders(repo, WRITERS_PREFIX)?
        .into_iter()
        .map(|(_, token, _)| token)
        .collect();
    let w = Witness {
        version: 1,
        writers,
    };
    let sealed = repo
        .keys()
        .seal(WITNESS_AAD, &serde_json::to_vec(&w).expect("serializes"));
    repo.store()
        .put(&witness_key(id), &sealed)
        .map_err(|e| Error::from(e).context("cannot write the deletion witness"))?;
    Ok(w)
}

/// Every pending object with its witness (None when the announcing prune died before
/// writing it).
pub fn read_all(repo: &Repository) -> Result<BTreeMap<Id, (Pending, Option<Witness>)>> {
    let store = repo.store();
    let mut out = BTreeMap::new();
    let list = store
        .list(PENDING_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list pending deletions"))?;
    for o in list {
        let id = Id::from_hex(&o.key[PENDING_PREFIX.len()..])
            .map_err(|_| Error::corrupt(format!("unexpected object {} in pending/", o.key)))?;
        let bytes = match store.get(&o.key) {
            Ok(b) => b,
            // Completed by a prune since the listing.
            Err(e) if e.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e).context("cannot read a pending deletion list")),
        };
        if Id::of_stored(&bytes) != id {
            return Err(Error::corrupt(format!(
                "pending deletion list {} does not match its name (damaged)",
                id.short()
            )));
        }
        let p: Pending = repo
            .keys()
            .open(PENDING_AAD, &bytes)
            .and_then(|plain| {
                serde_json::from_slice(&plain).map_err(|e| Error::corrupt(e.to_string()))
            })
            .map_err(|e| e.context(format!("pending deletion list {}", id.short())))?;
        let witness = match store.get(&witness_key(&id)) {
            Ok(b) => Some(
                repo.keys()
                    .open(WITNESS_AAD, &b)
                    .and_then(|plain| {
                        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(e.to_string()))
                    })
                    .map_err(|e| e.context(format!("deletion witness {}", id.short())))?,
            ),
            Err(e) if e.kind == StoreErrorKind::NotFound => None,
            Err(e) => return Err(Error::from(e).context("cannot read a deletion witness")),
        };
        out.insert(id, (p, witness));
    }
    Ok(out)
}

/// The packs of every pending object: what writers must not reuse.
pub fn all_candidates(repo: &Repository) -> Result<HashSet<Id>> {
    Ok(read_all(repo)?
        .values()
        .flat_map(|(p, _)| p.candidates.iter().map(|c| c.pack))
        .collect())
}

/// Removes a completed pending object: the witness first, so that a crash in between
/// leaves a pending object without witness, which the next prune simply witnesses again.
pub fn remove(repo: &Repository, id: &Id) -> Result<()> {
    let store = repo.store();
    store
        .delete(&witness_key(id))
        .and_then(|_| store.delete(&pending_key(id)))
        .map_err(|e| Error::from(e).context("cannot remove a completed pending deletion"))
}
