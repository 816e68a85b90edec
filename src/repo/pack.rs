//! Packs: many encrypted blobs in one object, followed by an encrypted header that lists
//! them, so the index can always be rebuilt from the packs alone.
//!
//! ```text
//! pack    = blob* sealed_header header_len:u32le "HAP1"
//! blob    = AES-256-GCM(pack key, nonce = offset, aad = id || kind, payload || encoding:u8)
//! ```
//! Packs are built in a spool file (never whole in memory) and named by the BLAKE3 hash of
//! their bytes.

use super::crypto::{Keys, PackCipher, SALT_LEN, TAG_LEN, random_bytes};
use super::id::Id;
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const PACK_MAGIC: &[u8; 4] = b"HAP1";
pub const HEADER_MAGIC: &[u8; 4] = b"HAPH";
pub const TRAILER_LEN: usize = 8;
const HEADER_AAD: &[u8] = b"hostagent pack header v1";
const HEADER_ENTRY_LEN: usize = 32 + 4 + 4 + 4;
const HEADER_FIXED_LEN: usize = 4 + 1 + 1 + SALT_LEN + 4;

/// Stored blob bytes beyond the payload: the encoding byte and the GCM tag.
pub const BLOB_OVERHEAD: u32 = 1 + TAG_LEN as u32;

/// Whether a blob holds file data or a directory tree. Stored in pack headers and bound into
/// each blob's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Result<BlobKind> {
        match b {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(Error::corrupt(format!("unknown blob kind {b}"))),
        }
    }
}

/// The largest plaintext a blob may have (chunks are at most 64 MiB; trees are split far
/// below this).
pub const MAX_BLOB_LEN: usize = 128 << 20;

const ENCODING_RAW: u8 = 0;
const ENCODING_ZSTD: u8 = 1;

/// Turns plaintexts into `payload || encoding` (the byte that is encrypted), with a reusable
/// zstd context: one per pipeline thread.
pub struct BlobEncoder {
    zstd: zstd::bulk::Compressor<'static>,
}

impl BlobEncoder {
    pub fn new(level: i32) -> Result<BlobEncoder> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::invalid(format!("zstd level {level} is not usable: {e}")))?;
        Ok(BlobEncoder { zstd })
    }

    /// Compresses into `out`, keeping the plaintext raw when zstd does not save at least 1/32
    /// of the size (random or already-compressed data then costs no decompression later).
    pub fn encode(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(plain.len()) + 1 + TAG_LEN);
        match self.zstd.compress_to_buffer(plain, out) {
            Ok(n) if n + n / 31 < plain.len() => out.push(ENCODING_ZSTD),
            _ => {
                out.clear();
                out.extend_from_slice(plain);
                out.push(ENCODING_RAW);
            }
        }
    }
}

/// Reverses [`BlobEncoder::encode`], with a reusable zstd context.
pub struct BlobDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl BlobDecoder {
    pub fn new() -> BlobDecoder {
        BlobDecoder {
            zstd: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
        }
    }

    /// Decodes `encoded` (which it may consume) and returns the plaintext: a slice of
    /// `encoded` itself for a raw blob, of `out` for a compressed one. Both buffers keep their
    /// capacity for the next blob. `raw_len` is the expected plaintext length when the caller
    /// knows it (file chunks); otherwise the zstd frame's own size field bounds the output.
    pub fn decode_into<'a>(
        &mut self,
        encoded: &'a mut Vec<u8>,
        raw_len: Option<usize>,
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let plain: &[u8] = match encoded.pop() {
            Some(ENCODING_RAW) => encoded,
            Some(ENCODING_ZSTD) => {
                let cap = match raw_len {
                    Some(n) => n,
                    None => match zstd::zstd_safe::get_frame_content_size(encoded) {
                        Ok(Some(n)) if n <= MAX_BLOB_LEN as u64 => n as usize,
                        _ => return Err(Error::corrupt("blob has no usable zstd frame size")),
                    },
                };
                out.clear();
                out.reserve(cap);
                self.zstd
                    .decompress_to_buffer(encoded.as_slice(), out)
                    .map_err(|e| Error::corrupt(format!("blob does not decompress: {e}")))?;
                out
            }
            other => return Err(Error::corrupt(format!("unknown blob encoding {other:?}"))),
        };
        match raw_len {
            Some(n) if n != plain.len() => Err(Error::corrupt(format!(
                "blob decodes to {} bytes where {n} were recorded",
                plain.len()
            ))),
            _ => Ok(plain),
        }
    }

    /// [`decode_into`](Self::decode_into) for a caller that wants the plaintext to keep.
    pub fn decode(&mut self, mut encoded: Vec<u8>, raw_len: Option<usize>) -> Result<Vec<u8>> {
        let raw = encoded.last() == Some(&ENCODING_RAW);
        let mut out = Vec::new();
        self.decode_into(&mut encoded, raw_len, &mut out)?;
        Ok(if raw { encoded } else { out })
    }
}

impl Default for BlobDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What one thread reuses from one blob read to the next: a zstd context, and buffers for
/// the stored and the decoded bytes. A restore reads tens of thousands of blobs of up to
/// 4 MiB; fresh buffers of that size are fresh mappings, every page of them faulted in and
/// zeroed by the kernel each time.
#[derive(Default)]
pub struct BlobBuffers {
    decoder: BlobDecoder,
    /// The blob as read and decrypted, its encoding byte last: filled by the reader.
    pub(crate) stored: Vec<u8>,
    plain: Vec<u8>,
}

impl BlobBuffers {
    /// Decodes what `stored` holds; see [`BlobDecoder::decode_into`].
    pub(crate) fn decode(&mut self, raw_len: Option<usize>) -> Result<&[u8]> {
        self.decoder
            .decode_into(&mut self.stored, raw_len, &mut self.plain)
    }
}

/// One blob as listed in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderEntry {
    pub id: Id,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// What the index needs to know about a finished pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRecord {
    pub id: Id,
    pub kind: BlobKind,
    pub salt: [u8; SALT_LEN],
    pub blobs: Vec<HeaderEntry>,
    pub size: u64,
}

pub fn pack_key(id: &Id) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}", &hex[..2])
}

/// Builds one pack in a spool file.
pub struct PackWriter {
    kind: BlobKind,
    salt: [u8; SALT_LEN],
    header_salt: Option<[u8; SALT_LEN]>,
    cipher: PackCipher,
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<HeaderEntry>,
}

impl PackWriter {
    pub fn create(keys: &Keys, kind: BlobKind, spool_dir: &Path) -> Result<PackWriter> {
        Self::create_with_salts(keys, kind, spool_dir, random_bytes(), None)
    }

    /// [`PackWriter::create`] with a chosen pack salt and header sealing salt: for golden
    /// test vectors only.
    #[doc(hidden)]
    pub fn create_with_salts(
        keys: &Keys,
        kind: BlobKind,
        spool_dir: &Path,
        salt: [u8; SALT_LEN],
        header_salt: Option<[u8; SALT_LEN]>,
    ) -> Result<PackWriter> {
        let path = spool_dir.join(format!("pack-{}.spool", hex::encode(random_bytes::<12>())));
        let file = File::create(&path).map_err(|e| {
            Error::io(
                format!("cannot create a pack spool file {}", path.display()),
                e,
            )
        })?;
        Ok(PackWriter {
            kind,
            cipher: keys.pack_cipher(&salt),
            salt,
            header_salt,
            path,
            // Blobs of a chunk or more bypass the buffer; it only gathers small ones.
            out: BufWriter::with_capacity(256 << 10, file),
            hasher: blake3::Hasher::new(),
            offset: 0,
            entries: Vec::new(),
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encrypts an encoded blob ([`BlobEncoder::encode`]'s output, used as scratch) and
    /// appends it.
    pub fn add(&mut self, id: Id, raw_len: u32, encoded: &mut Vec<u8>) -> Result<()> {
        self.cipher
            .encrypt(self.offset, &id, self.kind as u8, encoded);
        let len = encoded.len() as u32;
        self.write(encoded)?;
        self.entries.push(HeaderEntry {
            id,
            offset: (self.offset - len as u64) as u32,
            stored_len: len,
            raw_len,
        });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| {
            Error::io(
                format!("cannot write pack spool file {}", self.path.display()),
                e,
            )
        })?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends header and trailer and flushes; returns the record and the spool file.
    pub fn finish(mut self, keys: &Keys) -> Result<(PackRecord, PathBuf)> {
        let header = encode_header(self.kind, &self.salt, &self.entries);
        let sealed = match &self.header_salt {
            Some(salt) => keys.seal_with_salt(salt, HEADER_AAD, &header),
            None => keys.seal(HEADER_AAD, &header),
        };
        self.write(&sealed)?;
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        trailer.extend_from_slice(PACK_MAGIC);
        self.write(&trailer)?;
        self.out.flush().map_err(|e| {
            Error::io(
                format!("cannot write pack spool file {}", self.path.display()),
                e,
            )
        })?;
        let record = PackRecord {
            id: Id(*self.hasher.finalize().as_bytes()),
            kind: self.kind,
            salt: self.salt,
            blobs: self.entries,
            size: self.offset,
        };
        Ok((record, self.path))
    }

    /// Drops an unfinished pack and its spool file.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}

pub fn encode_header(kind: BlobKind, salt: &[u8; SALT_LEN], entries: &[HeaderEntry]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_FIXED_LEN + entries.len() * HEADER_ENTRY_LEN);
    h.extend_from_slice(HEADER_MAGIC);
    h.push(1);
    h.push(kind as u8);
    h.extend_from_slice(salt);
    h.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        h.extend_from_slice(&e.id.0);
        h.extend_from_slice(&e.offset.to_le_bytes());
        h.extend_from_slice(&e.stored_len.to_le_bytes());
        h.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    h
}

/// Parses a pack's tail (header and trailer) into its record. `tail` must end at the pack's
/// last byte; `pack_size` is the whole pack's size.
pub fn decode_tail(keys: &Keys, id: Id, tail: &[u8], pack_size: u64) -> Result<PackRecord> {
    let bad = |what: &str| Error::corrupt(format!("pack {}: {what}", id.short()));
    if tail.len() < TRAILER_LEN || &tail[tail.len() - 4..] != PACK_MAGIC {
        return Err(bad("no pack trailer (truncated or not a pack)"));
    }
    let hlen =
        u32::from_le_bytes(tail[tail.len() - 8..tail.len() - 4].try_into().unwrap()) as usize;
    if hlen + TRAILER_LEN > tail.len() {
        return Err(bad("header length points outside the pack"));
    }
    let sealed = &tail[tail.len() - TRAILER_LEN - hlen..tail.len() - TRAILER_LEN];
    let h = keys
        .open(HEADER_AAD, sealed)
        .map_err(|e| bad(&format!("header {e}")))?;
    if h.len() < HEADER_FIXED_LEN || &h[..4] != HEADER_MAGIC || h[4] != 1 {
        return Err(bad("header has an unknown layout"));
    }
    let kind = BlobKind::from_u8(h[5])?;
    let salt: [u8; SALT_LEN] = h[6..6 + SALT_LEN].try_into().unwrap();
    let count = u32::from_le_bytes(h[22..26].try_into().unwrap()) as usize;
    if h.len() != HEADER_FIXED_LEN + count * HEADER_ENTRY_LEN {
        return Err(bad("header length does not match its blob count"));
    }
    let data_end = pack_size - (TRAILER_LEN + hlen) as u64;
    let mut blobs = Vec::with_capacity(count);
    for chunk in h[HEADER_FIXED_LEN..].chunks_exact(HEADER_ENTRY_LEN) {
        let e = HeaderEntry {
            id: Id::from_slice(&chunk[..32]).unwrap(),
            offset: u32::from_le_bytes(chunk[32..36].try_into().unwrap()),
            stored_len: u32::from_le_bytes(chunk[36..40].try_into().unwrap()),
            raw_len: u32::from_le_bytes(chunk[40..44].try_into().unwrap()),
        };
        if e.offset as u64 + e.stored_len as u64 > data_end {
            return Err(bad("a header entry points outside the pack"));
        }
        blobs.push(e);
    }
    Ok(PackRecord {
        id,
        kind,
        salt,
        blobs,
        size: pack_size,
    })
}
