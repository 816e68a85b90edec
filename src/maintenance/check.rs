//! Checking a repository: structure, and optionally the data itself.
//!
//! Structure: every index file decodes; every indexed pack exists with the size its header
//! entries imply; every snapshot manifest reads; every tree of every snapshot reads and every
//! data blob it names is indexed in a present pack. Data: a chosen share of the packs is
//! read whole, its hash compared with its name, its header with the index, and every blob
//! decrypted, decompressed and hashed against its ID.
//!
//! Partial data checks rotate through the packs in ID order from a cursor kept in a small
//! state file per repository, so repeated checks cover everything: pack IDs are uniform
//! hashes, so a pack added later falls at a random place in the order and is reached within
//! one more rotation. A lost state file only restarts the rotation.
//!
//! Every problem is reported with the snapshots and paths it touches.

use super::walk::{self, Damage, Inspector};
use super::{expected_pack_size, list_packs, read_index_files};
use crate::error::{Error, Result};
use crate::repo::pack::{BlobDecoder, PackRecord, decode_tail, pack_key};
use crate::repo::{BlobKind, Id, Index, Repository};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// How much pack data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataSubset {
    /// A share of the repository's pack bytes (0.0..=1.0).
    Fraction(f64),
    /// About this many bytes (at least one pack).
    Bytes(u64),
}

impl DataSubset {
    /// Parses "10%", "all", "500MiB", "2GB", "1048576".
    pub fn parse(s: &str) -> Result<DataSubset> {
        let bad = || {
            Error::invalid(format!(
                "--read-data-subset {s:?}: give a percentage (10%), a size (500MiB, 2GB) or all"
            ))
        };
        let t = s.trim();
        if t == "all" {
            return Ok(DataSubset::Fraction(1.0));
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(bad());
            }
            return Ok(DataSubset::Fraction(v / 100.0));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000u64.pow(4),
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(bad());
        }
        Ok(DataSubset::Bytes(n.saturating_mul(mult)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Read pack data too; None checks structure only.
    pub read_data: Option<DataSubset>,
    /// Where the rotation cursor is kept; None reads from the start and keeps nothing.
    pub state_dir: Option<PathBuf>,
}

/// The damage found in one snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotDamage {
    pub id: Id,
    pub time: String,
    pub hostname: String,
    /// Absolute paths in the snapshot and what is wrong with each.
    pub damage: Vec<Damage>,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub snapshots: usize,
    /// Problems of the repository's objects (missing or damaged packs, index files...).
    pub errors: Vec<String>,
    /// Things that are not damage but deserve a look (packs no index lists).
    pub warnings: Vec<String>,
    pub unreadable_snapshots: Vec<(Id, String)>,
    pub damaged_snapshots: Vec<SnapshotDamage>,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Whether the data read this time completed a pass over all packs.
    pub rotation_wrapped: bool,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
            && self.unreadable_snapshots.is_empty()
            && self.damaged_snapshots.is_empty()
    }
}

pub fn check(repo: &mut Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let (files, bad_files) = read_index_files(repo)?;
    for (key, e) in &bad_files {
        report
            .errors
            .push(format!("index file {key} cannot be used: {e}"));
    }
    report.index_files = files.len() + bad_files.len();
    let mut packs: BTreeMap<Id, PackRecord> = BTreeMap::new();
    let mut index = Index::new();
    for f in &files {
        for p in &f.packs {
            if let std::collections::btree_map::Entry::Vacant(v) = packs.entry(p.id) {
                index.add_pack(p);
                v.insert(p.clone());
            }
        }
    }
    index.finalize();
    report.blobs = index.blob_count();
    repo.replace_index(index);
    let sizes = list_packs(repo)?;
    report.packs = sizes.len();

    let mut missing_packs: HashMap<Id, ()> = HashMap::new();
    for (id, rec) in &packs {
        match sizes.get(id) {
            None => {
                missing_packs.insert(*id, ());
                report.errors.push(format!(
                    "pack {} is missing ({} blobs indexed in it)",
                    id.short(),
                    rec.blobs.len()
                ));
            }
            Some(&size) => {
                // At least: the index may omit blobs that the header still lists.
                let want = expected_pack_size(rec);
                if size < want {
                    report.errors.push(format!(
                        "pack {} is {size} bytes where its index entries need {want} (truncated)",
                        id.short()
                    ));
                }
            }
        }
    }
    let mut unindexed: Vec<&Id> = sizes.keys().filter(|id| !packs.contains_key(id)).collect();
    unindexed.sort();
    for id in unindexed {
        report.warnings.push(format!(
            "pack {} is in no index: `agentctl repair index` adds it, a prune removes it if \
             no snapshot needs it",
            id.short()
        ));
    }

    // Data.
    // Blob -> (pack holding the corrupt copy, why). Another, intact copy elsewhere is fine.
    let mut corrupt: HashMap<Id, (Id, String)> = HashMap::new();
    if let Some(subset) = opts.read_data {
        let present: Vec<(Id, u64)> = packs
            .keys()
            .filter_map(|id| sizes.get(id).map(|s| (*id, *s)))
            .collect();
        let cursor_file = opts
            .state_dir
            .as_ref()
            .map(|d| d.join(&repo.config().id).join("check-cursor"));
        let cursor = cursor_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| Id::from_hex(s.trim()).ok());
        let (chosen, wrapped) = choose_packs(&present, cursor, subset);
        report.rotation_wrapped = wrapped;
        let mut decoder = BlobDecoder::new();
        for (id, size) in &chosen {
            report.packs_read += 1;
            report.bytes_read += size;
            verify_pack(repo, &packs[id], &mut decoder, &mut report, &mut corrupt)?;
        }
        if let (Some(file), Some((last, _))) = (&cursor_file, chosen.last()) {
            let saved = file
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(file, format!("{}\n", last.to_hex())));
            if let Err(e) = saved {
                report.warnings.push(format!(
                    "cannot save the data check position in {}: {e}; the next check starts \
                     over",
                    file.display()
                ));
            }
        }
    }

    // Snapshots and their trees.
    let (snaps, bad) = walk::read_snapshots(repo)?;
    report.snapshots = snaps.len() + bad.len();
    for (id, e) in bad {
        report.unreadable_snapshots.push((id, e.to_string()));
    }
    let problem = |id: &Id| -> Option<String> {
        match repo.index().locate(id) {
            None => Some("is in no index".to_string()),
            Some(loc) if corrupt.get(id).is_some_and(|(p, _)| *p == loc.pack.id) => {
                corrupt.get(id).map(|(_, why)| why.clone())
            }
            Some(loc) if missing_packs.contains_key(&loc.pack.id) => {
                Some(format!("is in missing pack {}", loc.pack.id.short()))
            }
            Some(_) => None,
        }
    };
    // Trees whose blob failed data verification must count as lost too; read_tree re-reads
    // them and fails on its own, so only data blobs need the table.
    let mut inspector = Inspector::new(repo, &problem);
    for s in &snaps {
        let damage = inspector.tree(&s.snapshot.tree);
        if !damage.is_empty() {
            report.damaged_snapshots.push(SnapshotDamage {
                id: s.id,
                time: s.snapshot.time.clone(),
                hostname: s.snapshot.hostname.clone(),
                damage: damage
                    .iter()
                    .map(|d| Damage {
                        path: walk::display_path(&d.path),
                        reason: d.reason.clone(),
                    })
                    .collect(),
            });
        }
    }
    Ok(report)
}

/// Picks packs in ID order after `cursor`, wrapping around, until the budget is spent.
fn choose_packs(
    present: &[(Id, u64)],
    cursor: Option<Id>,
    subset: DataSubset,
) -> (Vec<(Id, u64)>, bool) {
    if present.is_empty() {
        return (Vec::new(), true);
    }
    let total: u64 = present.iter().map(|(_, s)| s).sum();
    let budget = match subset {
        DataSubset::Fraction(f) if f >= 1.0 => u64::MAX,
        DataSubset::Fraction(f) => (total as f64 * f).ceil() as u64,
        DataSubset::Bytes(b) => b,
    };
    let start = cursor.map_or(0, |c| present.partition_point(|(id, _)| *id <= c));
    let mut out = Vec::new();
    let mut spent = 0u64;
    let mut wrapped = false;
    for i in 0..present.len() {
        let idx = (start + i) % present.len();
        if out.is_empty() || spent < budget {
            out.push(present[idx]);
            spent += present[idx].1;
            if idx == present.len() - 1 {
                wrapped = true;
            }
        } else {
            break;
        }
    }
    (out, wrapped)
}

/// Reads one pack whole and verifies it; records corrupt blobs.
fn verify_pack(
    repo: &Repository,
    rec: &PackRecord,
    decoder: &mut BlobDecoder,
    report: &mut CheckReport,
    corrupt: &mut HashMap<Id, (Id, String)>,
) -> Result<()> {
    let id = rec.id;
    let bytes = match repo.store().get(&pack_key(&id)) {
        Ok(b) => b,
        Err(e) if e.kind == crate::store::StoreErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::from(e).context(format!("cannot read pack {}", id.short()))),
    };
    if Id::of_stored(&bytes) != id {
        report.errors.push(format!(
            "pack {} does not match its name: its bytes changed (damaged)",
            id.short()
        ));
    }
    match decode_tail(repo.keys(), id, &bytes, bytes.len() as u64) {
        Ok(header) => {
            // The index may omit blobs (repair drops corrupt ones), never add or move any.
            let agrees = header.kind == rec.kind
                && header.salt == rec.salt
                && rec.blobs.iter().all(|b| header.blobs.contains(b));
            if !agrees {
                report.errors.push(format!(
                    "pack {}: its header and the index disagree (`agentctl repair index` \
                     rebuilds the index from headers)",
                    id.short()
                ));
            }
        }
        Err(e) => report.errors.push(format!("{e}")),
    }
    let cipher = repo.keys().pack_cipher(&rec.salt);
    for b in &rec.blobs {
        let range = b.offset as usize..b.offset as usize + b.stored_len as usize;
        let result = match bytes.get(range) {
            None => Err(Error::corrupt("cut short (pack truncated)")),
            Some(slice) => {
                let mut buf = slice.to_vec();
                cipher
                    .decrypt(b.offset as u64, &b.id, rec.kind as u8, &mut buf)
                    .and_then(|_| {
                        let raw = (rec.kind == BlobKind::Data).then_some(b.raw_len as usize);
                        decoder.decode(buf, raw)
                    })
                    .and_then(|plain| {
                        if repo.keys().blob_id(&plain) == b.id {
                            Ok(())
                        } else {
                            Err(Error::corrupt("does not match its ID"))
                        }
                    })
            }
        };
        if let Err(e) = result {
            let why = format!("is corrupt in pack {}: {e}", id.short());
            report.errors.push(format!("blob {} {why}", b.id.short()));
            corrupt.insert(b.id, (id, why));
        }
    }
    Ok(())
}
