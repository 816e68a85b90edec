//! Deterministic test data for the benchmarks: seeded random bytes, text-like bytes that
//! compress about as well as source code and logs do, and a generated directory tree.
//!
//! Seeded so that every run measures the same bytes; no `rand` dependency because a
//! SplitMix64 generator is all that is needed and keeps the numbers reproducible across
//! crate versions.

#![allow(dead_code)] // each bench target uses a different part of this module

use std::io::Write;
use std::path::Path;

/// SplitMix64: tiny, fast, and good enough to make incompressible bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// Log-like text: timestamped lines from a few hundred message templates (a few very
/// common, most rare) with varying fields. zstd level 1 shrinks it about 4.5×, close to what
/// it does to real logs, configs and source code (C headers here: 5.3×).
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const SYLLABLES: &[&str] = &[
        "ka", "to", "ri", "men", "sa", "lo", "ver", "in", "con", "de", "pre", "al", "ex", "tion",
        "ment", "er", "ly", "ing", "ed", "un", "com", "fig", "data", "node", "pod", "err", "info",
    ];
    const UNITS: &[&str] = &["kubelet", "containerd", "etcd", "agentd"];
    let mut rng = Rng::new(seed);
    let vocab: Vec<String> = (0..4000)
        .map(|_| {
            let n = 1 + rng.below(4) as usize;
            (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
                .collect()
        })
        .collect();
    // Squaring a uniform draw favours small indices: a rough Zipf shape.
    let skewed = |rng: &mut Rng, n: usize| {
        let r = rng.below(n as u64);
        (r * r / n as u64) as usize
    };
    let templates: Vec<String> = (0..300)
        .map(|_| {
            let words = 3 + rng.below(8) as usize;
            (0..words)
                .map(|_| vocab[skewed(&mut rng, vocab.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut out = Vec::with_capacity(len + 512);
    let mut ms = 0u64;
    while out.len() < len {
        ms += 1 + rng.below(2000);
        let t = &templates[skewed(&mut rng, templates.len())];
        writeln!(
            out,
            "2026-11-21T{:02}:{:02}:{:02}.{:03}Z node-{} {}[{}]: {t} id={:08x} took={}ms",
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            rng.below(20),
            UNITS[rng.below(UNITS.len() as u64) as usize],
            1000 + rng.below(9000),
            rng.next_u64() as u32,
            rng.below(1000),
        )
        .unwrap();
    }
    out.truncate(len);
    out
}

/// Writes a tree mixing many small text files, some medium ones and a few large text and
/// random files, roughly `total` bytes; returns the bytes written.
pub fn write_tree(root: &Path, total: usize, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    let mut i = 0;
    // A quarter in files of 1–64 KiB, a quarter in 256 KiB–2 MiB, half in 8 MiB files (one in
    // three random: packages, images, compressed logs).
    let plan: [(usize, usize, usize); 3] = [
        (total / 4, 1 << 10, 64 << 10),
        (total / 4, 256 << 10, 2 << 20),
        (total / 2, 8 << 20, 8 << 20),
    ];
    for (budget, lo, hi) in plan {
        let mut used = 0;
        while used < budget {
            let size = lo + rng.below((hi - lo + 1) as u64) as usize;
            let dir = root.join(format!("d{:02}", i % 16));
            std::fs::create_dir_all(&dir).unwrap();
            let data = if size >= 8 << 20 && i % 3 == 0 {
                random_bytes(size, seed ^ i as u64)
            } else {
                text_bytes(size, seed ^ i as u64)
            };
            std::fs::write(dir.join(format!("f{i:05}")), &data).unwrap();
            used += size;
            written += size as u64;
            i += 1;
        }
    }
    written
}
