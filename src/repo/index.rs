//! The index: which pack holds each blob, where.
//!
//! On the store, immutable index files (`index/<id>`), each written by one backup for the
//! packs it made, sealed and zstd-compressed (layout in docs/FORMAT.md). In memory, one
//! sorted array of 44-byte entries plus a table of packs, searched by binary search from a
//! 64 Ki-bucket offset table: 44 bytes per blob (+49 per pack, +256 KiB fixed).

use super::crypto::{Keys, SALT_LEN, random_bytes};
use super::id::Id;
use super::pack::{BlobKind, HeaderEntry, PackRecord};
use crate::error::{Error, Result};

pub const INDEX_PREFIX: &str = "index/";
pub const INDEX_MAGIC: &[u8; 4] = b"HAIX";
const INDEX_AAD: &[u8] = b"hostagent index v1";
const PACK_FIXED_LEN: usize = 32 + 1 + SALT_LEN + 4;
const BLOB_LEN: usize = 32 + 4 + 4 + 4;

pub fn index_key(id: &Id) -> String {
    format!("{INDEX_PREFIX}{}", id.to_hex())
}

/// Encodes packs into a sealed index file; returns its ID and bytes.
pub fn encode_file(keys: &Keys, packs: &[PackRecord]) -> (Id, Vec<u8>) {
    encode_file_with_salt(keys, packs, &random_bytes())
}

/// [`encode_file`] with a chosen sealing salt: for golden test vectors only.
#[doc(hidden)]
pub fn encode_file_with_salt(
    keys: &Keys,
    packs: &[PackRecord],
    salt: &[u8; SALT_LEN],
) -> (Id, Vec<u8>) {
    let plain = encode_plaintext(packs);
    let compressed = zstd::bulk::compress(&plain, 3).expect("zstd compresses in memory");
    let sealed = keys.seal_with_salt(salt, INDEX_AAD, &compressed);
    (Id::of_stored(&sealed), sealed)
}

/// The index file's bytes before compression and sealing.
#[doc(hidden)]
pub fn encode_plaintext(packs: &[PackRecord]) -> Vec<u8> {
    let blobs: usize = packs.iter().map(|p| p.blobs.len()).sum();
    let mut plain = Vec::with_capacity(9 + packs.len() * PACK_FIXED_LEN + blobs * BLOB_LEN);
    plain.extend_from_slice(INDEX_MAGIC);
    plain.push(1);
    plain.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        plain.extend_from_slice(&p.id.0);
        plain.push(p.kind as u8);
        plain.extend_from_slice(&p.salt);
        plain.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            plain.extend_from_slice(&b.id.0);
            plain.extend_from_slice(&b.offset.to_le_bytes());
            plain.extend_from_slice(&b.stored_len.to_le_bytes());
            plain.extend_from_slice(&b.raw_len.to_le_bytes());
        }
    }
    plain
}

/// Decodes a sealed index file into pack records.
pub fn decode_file(keys: &Keys, id: &Id, sealed: &[u8]) -> Result<Vec<PackRecord>> {
    let bad = |what: String| Error::corrupt(format!("index file {}: {what}", id.short()));
    if Id::of_stored(sealed) != *id {
        return Err(bad("contents do not match its name".into()));
    }
    let compressed = keys
        .open(INDEX_AAD, sealed)
        .map_err(|e| bad(e.to_string()))?;
    let plain = zstd::bulk::decompress(&compressed, 1 << 30).map_err(|e| bad(e.to_string()))?;
    if plain.len() < 9 || &plain[..4] != INDEX_MAGIC || plain[4] != 1 {
        return Err(bad("unknown layout".into()));
    }
    let mut r = Reader {
        buf: &plain,
        pos: 9,
    };
    let count = u32::from_le_bytes(plain[5..9].try_into().unwrap());
    let mut packs = Vec::new();
    for _ in 0..count {
        let pid = Id::from_slice(r.take(32).ok_or_else(|| bad("truncated".into()))?).unwrap();
        let kind = BlobKind::from_u8(r.take(1).ok_or_else(|| bad("truncated".into()))?[0])?;
        let salt: [u8; SALT_LEN] = r
            .take(SALT_LEN)
            .ok_or_else(|| bad("truncated".into()))?
            .try_into()
            .unwrap();
        let n = r.u32().ok_or_else(|| bad("truncated".into()))?;
        let mut blobs = Vec::with_capacity((n as usize).min(1 << 20));
        for _ in 0..n {
            let e = r.take(BLOB_LEN).ok_or_else(|| bad("truncated".into()))?;
            blobs.push(HeaderEntry {
                id: Id::from_slice(&e[..32]).unwrap(),
                offset: u32::from_le_bytes(e[32..36].try_into().unwrap()),
                stored_len: u32::from_le_bytes(e[36..40].try_into().unwrap()),
                raw_len: u32::from_le_bytes(e[40..44].try_into().unwrap()),
            });
        }
        let size = blobs
            .iter()
            .map(|b| b.offset as u64 + b.stored_len as u64)
            .max()
            .unwrap_or(0);
        packs.push(PackRecord {
            id: pid,
            kind,
            salt,
            blobs,
            size,
        });
    }
    if r.pos != plain.len() {
        return Err(bad("trailing bytes".into()));
    }
    Ok(packs)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// A pack as the in-memory index knows it.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub id: Id,
    pub kind: BlobKind,
    pub salt: [u8; SALT_LEN],
}

/// One blob's location: 44 bytes, 4-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Entry {
    id: [u8; 32],
    pack: u32,
    offset: u32,
    stored_len: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 44);

/// Where a blob is stored.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub pack: &'a PackInfo,
    pub offset: u32,
    pub stored_len: u32,
}

/// The in-memory index of every blob in the loaded index files.
#[derive(Debug, Default, Clone)]
pub struct Index {
    packs: Vec<PackInfo>,
    entries: Vec<Entry>,
    /// `buckets[b]` is the first entry whose ID starts with a 16-bit prefix >= b.
    buckets: Vec<u32>,
    sorted: bool,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    pub fn add_pack(&mut self, rec: &PackRecord) {
        let pack = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id: rec.id,
            kind: rec.kind,
            salt: rec.salt,
        });
        self.entries.extend(rec.blobs.iter().map(|b| Entry {
            id: b.id.0,
            pack,
            offset: b.offset,
            stored_len: b.stored_len,
        }));
        self.sorted = false;
    }

    /// Sorts and builds the bucket table; call once after loading, before lookups.
    pub fn finalize(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.id);
        self.entries.shrink_to_fit();
        let mut buckets = vec![0u32; 65537];
        let mut i = 0usize;
        for (b, slot) in buckets.iter_mut().enumerate().take(65536) {
            while i < self.entries.len() && (prefix16(&self.entries[i].id) as usize) < b {
                i += 1;
            }
            *slot = i as u32;
        }
        buckets[65536] = self.entries.len() as u32;
        self.buckets = buckets;
        self.sorted = true;
    }

    fn find(&self, id: &Id) -> Option<&Entry> {
        debug_assert!(self.sorted, "index used before finalize()");
        if !self.sorted {
            return self.entries.iter().find(|e| e.id == id.0);
        }
        let b = prefix16(&id.0) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let slice = &self.entries[lo..hi];
        slice
            .binary_search_by(|e| e.id.cmp(&id.0))
            .ok()
            .map(|i| &slice[i])
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    pub fn locate(&self, id: &Id) -> Option<Location<'_>> {
        self.find(id).map(|e| Location {
            pack: &self.packs[e.pack as usize],
            offset: e.offset,
            stored_len: e.stored_len,
        })
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes held by the index (for the memory figures in the docs).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.packs.capacity() * std::mem::size_of::<PackInfo>()
            + self.buckets.capacity() * 4
    }
}

fn prefix16(id: &[u8; 32]) -> u16 {
    u16::from_be_bytes([id[0], id[1]])
}
