//! Golden vectors for the repository format: with a fixed master key and fixed salts, the
//! exact bytes of blob IDs, a sealed object, encrypted blobs in a pack, a pack's header and
//! trailer, an index file's plaintext, a tree encoding, and the FastCDC cut points of
//! seeded pseudo-random data with the default chunker parameters.
//!
//! Vectors live in tests/golden/*.json. A difference means the format changed and existing
//! repositories may no longer be readable. Only when that is intended, regenerate them with
//! `HOSTAGENT_REGENERATE_GOLDEN=1 cargo test --test golden` and say so in docs/FORMAT.md.
//!
//! zstd's output may change between library versions without any format change, so bytes
//! that went through zstd (a compressed blob, a sealed index file) are checked one way
//! only: the stored vector must still decode to the expected plaintext.

mod util;

use hostagent::repo::config::{self, ChunkerParams};
use hostagent::repo::crypto::Keys;
use hostagent::repo::index;
use hostagent::repo::pack::{self, BlobDecoder, BlobEncoder, HeaderEntry, PackWriter};
use hostagent::repo::snapshot::SNAPSHOT_AAD;
use hostagent::repo::tree::{Extent, Timestamp, Xattr};
use hostagent::repo::{BlobKind, Id, Node, NodeKind, Repository, Tree};
use hostagent::store::MemoryStore;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use util::fixture::{compressible, pseudo_random};

const MASTER: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const SEAL_SALT: [u8; 16] = [0xa5; 16];
const PACK_SALT: [u8; 16] = [0x11; 16];
const HEADER_SALT: [u8; 16] = [0x22; 16];
const INDEX_SALT: [u8; 16] = [0x33; 16];

fn keys() -> Keys {
    Keys::from_master(MASTER)
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn regenerating() -> bool {
    std::env::var_os("HOSTAGENT_REGENERATE_GOLDEN").is_some()
}

/// The stored vector, or (when regenerating) `computed`, written as the new vector.
fn golden(name: &str, computed: &Value) -> Value {
    let p = path(name);
    if regenerating() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut text = serde_json::to_string_pretty(computed).unwrap();
        text.push('\n');
        std::fs::write(&p, text).unwrap();
        return computed.clone();
    }
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with HOSTAGENT_REGENERATE_GOLDEN=1",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// Compares the whole computed vector with the stored one.
fn check(name: &str, computed: Value) -> Value {
    let stored = golden(name, &computed);
    assert_eq!(
        computed, stored,
        "tests/golden/{name} no longer matches: the repository format changed (see the top \
         of tests/golden.rs)"
    );
    stored
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).unwrap()
}

#[test]
fn blob_ids_and_derived_keys() {
    let k = keys();
    let big = pseudo_random(1, 100_000);
    let ids = [
        ("empty", &b""[..]),
        ("the 9 bytes \"hostagent\"", &b"hostagent"[..]),
        ("100000 xorshift64* bytes, seed 1", &big[..]),
    ]
    .map(|(what, data)| json!({"plaintext": what, "id": k.blob_id(data).to_hex()}));
    check(
        "blob_ids.json",
        json!({
            "master_key": hex::encode(MASTER),
            "chunker_seed": k.chunker_seed(),
            "blob_ids": ids,
        }),
    );
}

#[test]
fn sealed_object() {
    let k = keys();
    let plain = br#"{"example":"a sealed snapshot manifest"}"#;
    let sealed = k.seal_with_salt(&SEAL_SALT, SNAPSHOT_AAD, plain);
    let stored = check(
        "sealed_object.json",
        json!({
            "master_key": hex::encode(MASTER),
            "salt": hex::encode(SEAL_SALT),
            "aad": String::from_utf8_lossy(SNAPSHOT_AAD),
            "plaintext": String::from_utf8_lossy(plain),
            "sealed": hex::encode(&sealed),
        }),
    );
    let golden = unhex(&stored["sealed"]);
    assert_eq!(k.open(SNAPSHOT_AAD, &golden).unwrap(), plain);
    assert!(k.open(b"another object kind", &golden).is_err());
}

/// A data pack of two (raw-stored) blobs: each blob's stored bytes, then the sealed header
/// and the trailer.
#[test]
fn pack_blobs_header_and_trailer() {
    let k = keys();
    let tmp = util::tempdir();
    let plains = [pseudo_random(11, 300), pseudo_random(12, 150)];
    let mut w =
        PackWriter::create_with_salts(&k, BlobKind::Data, tmp.path(), PACK_SALT, Some(HEADER_SALT))
            .unwrap();
    let mut encoder = BlobEncoder::new(config::DEFAULT_ZSTD_LEVEL).unwrap();
    let mut scratch = Vec::new();
    for p in &plains {
        encoder.encode(p, &mut scratch);
        w.add(k.blob_id(p), p.len() as u32, &mut scratch).unwrap();
    }
    let (record, spool) = w.finish(&k).unwrap();
    let bytes = std::fs::read(&spool).unwrap();
    let blobs: Vec<Value> = record
        .blobs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let stored = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            json!({
                "plaintext": format!("{} xorshift64* bytes, seed {}", plains[i].len(), 11 + i),
                "id": e.id.to_hex(),
                "offset": e.offset,
                "raw_len": e.raw_len,
                "stored": hex::encode(stored),
            })
        })
        .collect();
    let data_end: usize = record.blobs.iter().map(|e| e.stored_len as usize).sum();
    let stored = check(
        "pack.json",
        json!({
            "master_key": hex::encode(MASTER),
            "pack_salt": hex::encode(PACK_SALT),
            "header_salt": hex::encode(HEADER_SALT),
            "kind": "data",
            "blobs": blobs,
            "header_and_trailer": hex::encode(&bytes[data_end..]),
            "pack_id": record.id.to_hex(),
        }),
    );

    // The stored bytes still read back: header, trailer, and each blob.
    let mut golden: Vec<u8> = Vec::new();
    for b in stored["blobs"].as_array().unwrap() {
        golden.extend(unhex(&b["stored"]));
    }
    golden.extend(unhex(&stored["header_and_trailer"]));
    let id = Id::from_hex(stored["pack_id"].as_str().unwrap()).unwrap();
    assert_eq!(Id::of_stored(&golden), id);
    let tail = pack::decode_tail(&k, id, &golden, golden.len() as u64).unwrap();
    assert_eq!(tail, record);
    let cipher = k.pack_cipher(&PACK_SALT);
    for (e, plain) in tail.blobs.iter().zip(&plains) {
        let mut buf = golden[e.offset as usize..(e.offset + e.stored_len) as usize].to_vec();
        cipher
            .decrypt(e.offset as u64, &e.id, BlobKind::Data as u8, &mut buf)
            .unwrap();
        let out = BlobDecoder::new()
            .decode(buf, Some(e.raw_len as usize))
            .unwrap();
        assert_eq!(&out, plain);
    }
}

/// A zstd-compressed blob, checked one way: the stored encryption still decodes.
#[test]
fn compressed_blob_still_decodes() {
    let k = keys();
    let plain = compressible(20_000);
    let id = k.blob_id(&plain);
    let mut computed = Vec::new();
    BlobEncoder::new(config::DEFAULT_ZSTD_LEVEL)
        .unwrap()
        .encode(&plain, &mut computed);
    assert_eq!(computed.last(), Some(&1), "not stored compressed");
    k.pack_cipher(&PACK_SALT)
        .encrypt(64, &id, BlobKind::Data as u8, &mut computed);
    let stored = golden(
        "compressed_blob.json",
        &json!({
            "master_key": hex::encode(MASTER),
            "pack_salt": hex::encode(PACK_SALT),
            "offset": 64,
            "plaintext": "compressible(20000) of tests/util/fixture.rs",
            "id": id.to_hex(),
            "stored": hex::encode(&computed),
        }),
    );
    assert_eq!(stored["id"], id.to_hex());
    let mut buf = unhex(&stored["stored"]);
    assert!(buf.len() < plain.len() / 4);
    k.pack_cipher(&PACK_SALT)
        .decrypt(64, &id, BlobKind::Data as u8, &mut buf)
        .unwrap();
    assert_eq!(BlobDecoder::new().decode(buf, None).unwrap(), plain);
}

fn sample_packs() -> Vec<pack::PackRecord> {
    let entry = |n: u8, offset: u32| HeaderEntry {
        id: Id([n; 32]),
        offset,
        stored_len: 1000 + n as u32,
        raw_len: 2000 + n as u32,
    };
    vec![
        pack::PackRecord {
            id: Id([0xd1; 32]),
            kind: BlobKind::Data,
            salt: PACK_SALT,
            blobs: vec![entry(1, 0), entry(2, 1001)],
            size: 2003 + 200,
        },
        pack::PackRecord {
            id: Id([0xd2; 32]),
            kind: BlobKind::Tree,
            salt: HEADER_SALT,
            blobs: vec![entry(3, 0)],
            size: 1003 + 200,
        },
    ]
}

#[test]
fn index_file() {
    let k = keys();
    let packs = sample_packs();
    let plain = index::encode_plaintext(&packs);
    let (_, sealed) = index::encode_file_with_salt(&k, &packs, &INDEX_SALT);
    let computed = json!({
        "master_key": hex::encode(MASTER),
        "salt": hex::encode(INDEX_SALT),
        "plaintext": hex::encode(&plain),
        "sealed": hex::encode(&sealed),
    });
    let stored = golden("index.json", &computed);
    assert_eq!(
        computed["plaintext"], stored["plaintext"],
        "the index layout changed (see the top of tests/golden.rs)"
    );
    let golden_sealed = unhex(&stored["sealed"]);
    let decoded = index::decode_file(&k, &Id::of_stored(&golden_sealed), &golden_sealed).unwrap();
    // Sizes are not stored: a pack's size is recomputed as the end of its last blob.
    let mut want = packs;
    for p in &mut want {
        p.size = p
            .blobs
            .iter()
            .map(|b| (b.offset + b.stored_len) as u64)
            .max()
            .unwrap();
    }
    assert_eq!(decoded, want);
}

fn sample_tree() -> Tree {
    let base = |name: &[u8], kind: NodeKind| Node {
        name: name.to_vec(),
        kind,
        mode: 0o4755,
        uid: 1000,
        gid: 2000,
        user: Some("alice".into()),
        group: None,
        size: 0,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789,
        },
        ctime: Timestamp {
            secs: -1,
            nanos: 999_999_999,
        },
        inode: 0x0123_4567_89ab,
        device: 0x803,
        links: 1,
        xattrs: Vec::new(),
    };
    let mut file = base(
        b"caf\xe9 file",
        NodeKind::File {
            extents: vec![
                Extent::Data {
                    id: Id([0x42; 32]),
                    len: 1 << 20,
                },
                Extent::Hole { len: 1 << 33 },
            ],
        },
    );
    file.size = (1 << 20) + (1 << 33);
    file.links = 3;
    file.xattrs = vec![
        Xattr {
            name: b"security.capability".to_vec(),
            value: vec![1, 0, 0, 2, 0x20, 0, 0, 0],
        },
        Xattr {
            name: b"user.note".to_vec(),
            value: Vec::new(),
        },
    ];
    Tree {
        nodes: vec![
            base(b"blk", NodeKind::BlockDevice { rdev: 0x0700 }),
            file,
            base(b"chr", NodeKind::CharDevice { rdev: 0x0103 }),
            base(b"dir", NodeKind::Dir { tree: Id([7; 32]) }),
            base(b"fifo", NodeKind::Fifo),
            base(
                b"link",
                NodeKind::Symlink {
                    target: b"../\xff/target".to_vec(),
                },
            ),
        ],
    }
}

#[test]
fn tree_encoding() {
    let tree = sample_tree();
    let encoded = tree.encode();
    let stored = check(
        "tree.json",
        json!({"tree": format!("{tree:?}"), "encoded": hex::encode(&encoded)}),
    );
    assert_eq!(Tree::decode(&unhex(&stored["encoded"])).unwrap(), tree);
}

/// Cut points of a backup of 20 MiB of seeded data into a repository with a fixed master key
/// (so a fixed chunker seed) and the default chunker parameters: through the real reader,
/// whose 8 MiB windows must not move any cut.
#[test]
fn fastcdc_cut_points() {
    let tmp = util::tempdir();
    let data = pseudo_random(2026, 20 << 20);
    let file = tmp.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let repo = Repository::init_with_master_key(
        Arc::new(MemoryStore::new()),
        util::PASSWORD,
        util::fast_init(),
        MASTER,
    )
    .unwrap();
    let c = repo.config().chunker.clone();
    assert_eq!(
        c,
        config::Config::new([0; 16]).chunker,
        "not the default parameters"
    );
    let snap = util::snapshot(&repo, &[&file]).snapshot;
    let (_, node) = util::snapshot_nodes(&repo, &snap.tree)
        .into_iter()
        .find(|(p, _)| *p == file)
        .unwrap();
    let NodeKind::File { extents } = node.kind else {
        panic!("not a file")
    };
    let mut cuts = Vec::new();
    let mut end = 0u64;
    for e in &extents {
        assert!(
            matches!(e, Extent::Data { .. }),
            "a dense file has no holes"
        );
        end += e.len();
        cuts.push(end);
    }
    let Extent::Data { id: first, .. } = &extents[0] else {
        unreachable!()
    };

    // The same cuts from one pass of FastCDC over the whole data.
    let ChunkerParams {
        min_size,
        avg_size,
        max_size,
        ..
    } = c;
    let seed = keys().chunker_seed();
    let direct: Vec<u64> = fastcdc::v2020::FastCDC::with_level_and_seed(
        &data,
        min_size as usize,
        avg_size as usize,
        max_size as usize,
        fastcdc::v2020::Normalization::Level1,
        seed,
    )
    .map(|ch| (ch.offset + ch.length) as u64)
    .collect();
    assert_eq!(cuts, direct);

    check(
        "fastcdc.json",
        json!({
            "data": "20971520 xorshift64* bytes, seed 2026 (tests/util/fixture.rs)",
            "master_key": hex::encode(MASTER),
            "chunker_seed": seed,
            "chunker": serde_json::to_value(&c).unwrap(),
            "cut_points": cuts,
            "first_blob_id": first.to_hex(),
        }),
    );
}
