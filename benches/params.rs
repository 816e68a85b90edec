//! Chunk and pack sizes measured on real data: for each setting, the dedup it buys, the
//! objects and index entries it costs, and the speed of the real backup pipeline.
//!
//! Data: `/usr/share/doc` (thousands of small text files, many gzipped) and one large file
//! assembled from the executables in `/usr/bin`, backed up four times in versions that a node
//! produces every day: as is; after 16 scattered 4 KiB in-place writes (a database's pages);
//! after 8 small insertions and 8 deletions (an edited archive or text); after 4 MiB appended
//! (a log). Each setting gets a fresh repository in a `MemoryStore`, so disk speed does not
//! enter; speeds are of the engine on this machine's cores.
//!
//! Run: `cargo bench --bench params` (a plain program, no criterion). The data sources can be
//! changed with `PARAMS_TREE` (a directory) and `PARAMS_BIG_FROM` (a directory whose files are
//! concatenated into the large file).

mod common;

use fastcdc::v2020::{FastCDC, Normalization};
use hostagent::backup::{BackupOptions, ParentChoice, backup};
use hostagent::repo::config::ChunkerParams;
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::store::{MemoryStore, ObjectStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BIG_LEN: usize = 128 << 20;
const MIB: f64 = (1 << 20) as f64;
/// Index memory per blob, from the index's layout (see src/repo/index.rs).
const INDEX_BYTES_PER_BLOB: f64 = 44.0;

struct Setting {
    min: u32,
    avg: u32,
    max: u32,
    pack: u32,
}

fn label(n: u32) -> String {
    if n >= 1 << 20 {
        format!("{}M", n >> 20)
    } else {
        format!("{}K", n >> 10)
    }
}

/// Concatenates the regular files of `dir` (name order) up to `len` bytes.
fn big_file_source(dir: &Path, len: usize) -> Vec<u8> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(len);
    for p in names {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&p) {
            out.extend_from_slice(&bytes);
        }
        if out.len() >= len {
            break;
        }
    }
    out.truncate(len);
    out
}

/// The four versions of the large file.
fn versions(base: Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = common::Rng::new(0x5eed);
    let mut v = base.clone();
    let mut out = vec![("as is", base)];
    for _ in 0..16 {
        let page = rng.below((v.len() / 4096) as u64) as usize * 4096;
        rng.fill(&mut v[page..page + 4096]);
    }
    out.push(("16 pages rewritten", v.clone()));
    for _ in 0..8 {
        let at = rng.below(v.len() as u64) as usize;
        let n = 1 + rng.below(1000) as usize;
        let mut ins = vec![0u8; n];
        rng.fill(&mut ins);
        v.splice(at..at, ins);
        let at = rng.below((v.len() - 1000) as u64) as usize;
        let n = 1 + rng.below(1000) as usize;
        v.drain(at..at + n);
    }
    out.push(("8 inserts, 8 deletes", v.clone()));
    let mut tail = common::text_bytes(4 << 20, 9);
    v.append(&mut tail);
    out.push(("4 MiB appended", v));
    out
}

struct Outcome {
    first_mbs: f64,
    later_mbs: f64,
    logical: u64,
    stored: u64,
    blobs: usize,
    packs: usize,
    objects: usize,
    per_version_new: Vec<u64>,
}

fn run(s: &Setting, tree: &Path, big: &Path, data: &[(&str, Vec<u8>)]) -> Outcome {
    let store = Arc::new(MemoryStore::new());
    let repo = Repository::init(
        store.clone() as Arc<dyn ObjectStore>,
        b"params",
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker: Some(ChunkerParams {
                algorithm: "fastcdc-v2020".into(),
                min_size: s.min,
                avg_size: s.avg,
                max_size: s.max,
                normalization: 1,
            }),
            pack_target_size: Some(s.pack),
            compression_level: None,
        },
    )
    .unwrap();
    let mut o = Outcome {
        first_mbs: 0.0,
        later_mbs: 0.0,
        logical: 0,
        stored: 0,
        blobs: 0,
        packs: 0,
        objects: 0,
        per_version_new: Vec::new(),
    };
    let (mut later_bytes, mut later_secs) = (0u64, 0f64);
    for (i, (_, bytes)) in data.iter().enumerate() {
        std::fs::write(big, bytes).unwrap();
        let mut opts = BackupOptions::new(vec![tree.to_path_buf(), big.to_path_buf()]);
        opts.parent = ParentChoice::Auto;
        let t = Instant::now();
        let r = backup(&repo, &opts).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let st = &r.snapshot.stats;
        if i == 0 {
            o.first_mbs = st.bytes_read as f64 / MIB / secs;
        } else {
            later_bytes += st.bytes_read;
            later_secs += secs;
        }
        o.logical += st.total_bytes;
        o.stored += st.bytes_stored;
        o.packs += st.packs_written as usize;
        o.per_version_new.push(st.bytes_new);
        repo.reload_index().unwrap();
    }
    o.later_mbs = later_bytes as f64 / MIB / later_secs;
    o.blobs = repo.index().blob_count();
    o.objects = store.list("").unwrap().len();
    o
}

/// New bytes per edited version of the large file, chunked directly with FastCDC (no
/// pipeline), for one seed: the seed comes from each repository's key, so one repository is
/// one draw and the spread over seeds is part of the answer.
fn new_bytes_per_version(s: &Setting, data: &[(&str, Vec<u8>)], seed: u64) -> (Vec<u64>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut first_chunks = 0;
    for (i, (_, bytes)) in data.iter().enumerate() {
        let mut new = 0u64;
        let cdc = FastCDC::with_level_and_seed(
            bytes,
            s.min as usize,
            s.avg as usize,
            s.max as usize,
            Normalization::Level1,
            seed,
        );
        for c in cdc {
            if i == 0 {
                first_chunks += 1;
            }
            let piece = &bytes[c.offset..c.offset + c.length];
            if seen.insert(*blake3::hash(piece).as_bytes()) {
                new += c.length as u64;
            }
        }
        out.push(new);
    }
    (out, first_chunks)
}

const SEEDS: u64 = 8;

fn dedup_table(settings: &[(u32, u32, u32)], data: &[(&str, Vec<u8>)]) {
    println!("Dedup of the large file's edited versions, {SEEDS} chunker seeds each:");
    println!();
    println!(
        "| chunks min/avg/max | mean chunk | index MiB per TiB | chunk+hash MB/s (1 core) | \
         new MiB per edited version: mean (min–max over seeds) |"
    );
    println!("|---|---|---|---|---|");
    for &(min, avg, max) in settings {
        let s = Setting {
            min,
            avg,
            max,
            pack: 0,
        };
        let mut per_version: Vec<Vec<u64>> = vec![Vec::new(); data.len()];
        let mut chunks = 0;
        let t = Instant::now();
        for k in 0..SEEDS {
            let (v, n) = new_bytes_per_version(&s, data, 0x9e37_79b9 * (2 * k + 1));
            chunks += n;
            for (i, b) in v.into_iter().enumerate() {
                per_version[i].push(b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let total: usize = data.iter().map(|d| d.1.len()).sum();
        let mean_chunk = data[0].1.len() as f64 * SEEDS as f64 / chunks as f64;
        let cells: Vec<String> = per_version[1..]
            .iter()
            .map(|v| {
                let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / MIB;
                let lo = *v.iter().min().unwrap() as f64 / MIB;
                let hi = *v.iter().max().unwrap() as f64 / MIB;
                format!("{mean:.1} ({lo:.1}–{hi:.1})")
            })
            .collect();
        println!(
            "| {}/{}/{} | {:.0} KiB | {:.0} | {:.0} | {} |",
            label(min),
            label(avg),
            label(max),
            mean_chunk / 1024.0,
            (1u64 << 40) as f64 / mean_chunk * INDEX_BYTES_PER_BLOB / MIB,
            (total as f64 * SEEDS as f64) / MIB / secs,
            cells.join(" / "),
        );
    }
    println!();
}

fn main() {
    let tree = PathBuf::from(std::env::var("PARAMS_TREE").unwrap_or("/usr/share/doc".into()));
    let from = PathBuf::from(std::env::var("PARAMS_BIG_FROM").unwrap_or("/usr/bin".into()));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.img");
    let data = versions(big_file_source(&from, BIG_LEN));
    // Warm the page cache so the first setting is not charged for cold reads.
    let _ = std::process::Command::new("tar")
        .args(["cf", "/dev/null"])
        .arg(&tree)
        .status();

    println!(
        "data: {} + a {:.0} MiB file from {} in {} versions ({})",
        tree.display(),
        data[0].1.len() as f64 / MIB,
        from.display(),
        data.len(),
        data.iter().map(|d| d.0).collect::<Vec<_>>().join(", ")
    );
    println!();
    let k = 1u32 << 10;
    let m = 1u32 << 20;
    let chunkings = [
        (64 * k, 256 * k, m),
        (128 * k, 512 * k, 2 * m),
        (256 * k, m, 4 * m),
        (512 * k, 2 * m, 8 * m),
    ];
    dedup_table(&chunkings, &data);

    println!("The backup pipeline, one repository (one seed) per setting, 4 backups:");
    println!();
    println!(
        "| chunks min/avg/max | pack | first backup MB/s | later backups MB/s | \
         stored ratio (dedup+zstd) | new MiB per backup | blobs | packs | objects |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut settings: Vec<(u32, u32, u32, u32)> = chunkings
        .iter()
        .map(|&(a, b, c)| (a, b, c, 32 * m))
        .collect();
    settings.extend([8 * m, 16 * m, 64 * m].map(|p| (256 * k, m, 4 * m, p)));
    for (min, avg, max, pack) in settings {
        let s = Setting {
            min,
            avg,
            max,
            pack,
        };
        let o = run(&s, &tree, &big, &data);
        println!(
            "| {}/{}/{} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
            label(min),
            label(avg),
            label(max),
            label(pack),
            o.first_mbs,
            o.later_mbs,
            o.logical as f64 / o.stored as f64,
            o.per_version_new
                .iter()
                .map(|b| format!("{:.1}", *b as f64 / MIB))
                .collect::<Vec<_>>()
                .join(" / "),
            o.blobs,
            o.packs,
            o.objects,
        );
    }
}
