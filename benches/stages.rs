//! Single-core throughput of each stage a byte of file data passes through on backup and
//! restore: FastCDC chunking, keyed BLAKE3, zstd level 1, AES-256-GCM.
//!
//! Each stage is measured on the repository's defaults (1 MiB average chunks, zstd level 1)
//! and on one thread, so that the sum of the per-byte costs gives the pipeline's own limit;
//! docs/BENCHMARKS.md does that arithmetic. Runs are kept short (`cargo bench` on 2 cores in
//! a few minutes), which costs a few percent of precision.

mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastcdc::v2020::{FastCDC, Normalization};
use hostagent::repo::config::{DEFAULT_AVG_CHUNK, DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK};
use hostagent::repo::crypto::SALT_LEN;
use hostagent::repo::pack::{BlobDecoder, BlobEncoder};
use hostagent::repo::{Id, Keys};
use std::hint::black_box;
use std::time::Duration;

/// Bytes per measured call: large enough that per-call overheads vanish, small enough to stay
/// in the last-level cache's neighbourhood like the pipeline's 8 MiB read window.
const INPUT: usize = 16 << 20;
/// The unit the hashing, compression and encryption stages see: one average chunk.
const CHUNK: usize = DEFAULT_AVG_CHUNK as usize;

fn keys() -> Keys {
    Keys::from_master([7u8; 32])
}

fn chunking(c: &mut Criterion) {
    let seed = keys().chunker_seed();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(INPUT as u64));
    for (name, data) in [
        ("random", common::random_bytes(INPUT, 1)),
        ("text", common::text_bytes(INPUT, 2)),
    ] {
        g.bench_with_input(
            BenchmarkId::new("fastcdc-256K-1M-4M", name),
            &data,
            |b, d| {
                b.iter(|| {
                    let cdc = FastCDC::with_level_and_seed(
                        d,
                        DEFAULT_MIN_CHUNK as usize,
                        DEFAULT_AVG_CHUNK as usize,
                        DEFAULT_MAX_CHUNK as usize,
                        Normalization::Level1,
                        seed,
                    );
                    cdc.map(|c| c.length).sum::<usize>()
                })
            },
        );
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let keys = keys();
    let data = common::random_bytes(INPUT, 3);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(INPUT as u64));
    // Blob IDs: keyed BLAKE3 over each chunk.
    g.bench_function("blake3-keyed-1MiB-chunks", |b| {
        b.iter(|| {
            data.chunks(CHUNK)
                .map(|c| keys.blob_id(c).0[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    // Pack names: plain BLAKE3 over the stored bytes, fed in write-sized pieces.
    g.bench_function("blake3-pack-stream", |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new();
            for c in data.chunks(CHUNK) {
                h.update(c);
            }
            h.finalize()
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd-1");
    g.throughput(Throughput::Bytes(INPUT as u64));
    for (name, data) in [
        ("text", common::text_bytes(INPUT, 4)),
        ("random", common::random_bytes(INPUT, 5)),
    ] {
        let mut enc = BlobEncoder::new(1).unwrap();
        let mut out = Vec::new();
        let mut encoded = Vec::new();
        let mut stored = 0usize;
        for chunk in data.chunks(CHUNK) {
            enc.encode(chunk, &mut out);
            stored += out.len();
            encoded.push(out.clone());
        }
        eprintln!(
            "zstd-1/{name}: {:.2}× smaller",
            INPUT as f64 / stored as f64
        );
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                let mut n = 0;
                for chunk in data.chunks(CHUNK) {
                    enc.encode(black_box(chunk), &mut out);
                    n += out.len();
                }
                n
            })
        });
        let mut dec = BlobDecoder::new();
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter_batched(
                || encoded.clone(),
                |blobs| {
                    let mut n = 0;
                    for e in blobs {
                        n += dec.decode(e, Some(CHUNK)).unwrap().len();
                    }
                    n
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let keys = keys();
    let cipher = keys.pack_cipher(&[9u8; SALT_LEN]);
    let id = Id([1u8; 32]);
    let mut buf = common::random_bytes(CHUNK, 6);
    let mut g = c.benchmark_group("aes-256-gcm");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("encrypt-1MiB-blob", |b| {
        b.iter(|| {
            cipher.encrypt(0, &id, 0, &mut buf);
            buf.truncate(CHUNK);
        })
    });
    let mut sealed = common::random_bytes(CHUNK, 6);
    cipher.encrypt(0, &id, 0, &mut sealed);
    g.bench_function("decrypt-1MiB-blob", |b| {
        b.iter_batched(
            || sealed.clone(),
            |mut s| {
                cipher.decrypt(0, &id, 0, &mut s).unwrap();
                s.len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = stages;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = chunking, hashing, compression, encryption
}
criterion_main!(stages);
