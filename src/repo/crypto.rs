//! Keys and encryption.
//!
//! One random 32-byte master key per repository; everything else is derived from it with
//! BLAKE3's key derivation, so a key slot only has to protect those 32 bytes:
//!
//! - the chunk-ID key: blob IDs are `BLAKE3-keyed(chunk-ID key, plaintext)`, so the same
//!   plaintext gets different IDs in different repositories and IDs reveal nothing;
//! - the chunker seed: randomises FastCDC's gear table so boundaries depend on the key;
//! - the pack-key root: each pack has a random 16-byte salt and its own AES-256-GCM key
//!   `BLAKE3-keyed(root, salt)`; a blob's nonce is its byte offset in the pack, unique within
//!   that key. No nonce is ever drawn at random under a long-lived key, so there is no 2^32
//!   limit: each key encrypts one pack;
//! - the sealing root: small whole objects (index files, snapshot manifests, pack headers)
//!   are "sealed" with a fresh random salt each, key `BLAKE3-keyed(root, salt)`, nonce zero.

use super::id::Id;
use crate::error::{Error, Result};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const SALT_LEN: usize = 16;
pub const TAG_LEN: usize = 16;

const CTX_CHUNK_ID: &str = "hostagent 2026-11 chunk id key v1";
const CTX_CHUNKER: &str = "hostagent 2026-11 chunker seed v1";
const CTX_PACK: &str = "hostagent 2026-11 pack key root v1";
const CTX_SEAL: &str = "hostagent 2026-11 sealed object key root v1";

/// The repository master key and the keys derived from it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    master: [u8; 32],
    chunk_id: [u8; 32],
    pack_root: [u8; 32],
    seal_root: [u8; 32],
    chunker_seed: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

impl Keys {
    pub fn generate() -> Keys {
        Keys::from_master(random_bytes())
    }

    pub fn from_master(master: [u8; 32]) -> Keys {
        let seed = blake3::derive_key(CTX_CHUNKER, &master);
        Keys {
            chunk_id: blake3::derive_key(CTX_CHUNK_ID, &master),
            pack_root: blake3::derive_key(CTX_PACK, &master),
            seal_root: blake3::derive_key(CTX_SEAL, &master),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().unwrap()) | 1,
            master,
        }
    }

    pub fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The blob ID of a plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    /// The seed for FastCDC's gear table (never zero: zero means "unseeded" to fastcdc).
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    pub fn pack_cipher(&self, salt: &[u8; SALT_LEN]) -> PackCipher {
        PackCipher {
            aead: subkey_cipher(&self.pack_root, salt),
        }
    }

    /// Encrypts a whole object under a fresh salt: `salt || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_with_salt(&random_bytes(), aad, plaintext)
    }

    /// [`Keys::seal`] with a chosen salt: for golden test vectors only.
    pub fn seal_with_salt(&self, salt: &[u8; SALT_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let aead = subkey_cipher(&self.seal_root, salt);
        let mut out = Vec::with_capacity(SALT_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(salt);
        out.extend_from_slice(plaintext);
        let tag = aead
            .encrypt_inout_detached(&[0u8; 12].into(), aad, (&mut out[SALT_LEN..]).into())
            .expect("plaintext within AES-GCM limits");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts and authenticates a sealed object.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < SALT_LEN + TAG_LEN {
            return Err(Error::corrupt("sealed object is truncated"));
        }
        let salt: [u8; SALT_LEN] = sealed[..SALT_LEN].try_into().unwrap();
        let (body, tag) = sealed[SALT_LEN..].split_at(sealed.len() - SALT_LEN - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().unwrap();
        let mut plain = body.to_vec();
        subkey_cipher(&self.seal_root, &salt)
            .decrypt_inout_detached(
                &[0u8; 12].into(),
                aad,
                plain.as_mut_slice().into(),
                (&tag).into(),
            )
            .map_err(|_| Error::corrupt("authentication failed (damaged or tampered object)"))?;
        Ok(plain)
    }
}

fn subkey_cipher(root: &[u8; 32], salt: &[u8; SALT_LEN]) -> Aes256Gcm {
    let mut key = *blake3::keyed_hash(root, salt).as_bytes();
    let aead = Aes256Gcm::new(&key.into());
    key.zeroize();
    aead
}

/// The cipher of one pack. Blob nonces are their offsets in the pack.
pub struct PackCipher {
    aead: Aes256Gcm,
}

fn blob_nonce(offset: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&offset.to_le_bytes());
    n
}

fn blob_aad(id: &Id, kind: u8) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = kind;
    aad
}

impl PackCipher {
    /// Encrypts `buf` in place and appends the tag. The blob's ID and kind are bound as
    /// associated data, so a blob cannot be passed off as another.
    pub fn encrypt(&self, offset: u64, id: &Id, kind: u8, buf: &mut Vec<u8>) {
        let tag = self
            .aead
            .encrypt_inout_detached(
                &blob_nonce(offset).into(),
                &blob_aad(id, kind),
                buf.as_mut_slice().into(),
            )
            .expect("blob within AES-GCM limits");
        buf.extend_from_slice(&tag);
    }

    /// Decrypts a stored blob in place (dropping the tag).
    pub fn decrypt(&self, offset: u64, id: &Id, kind: u8, buf: &mut Vec<u8>) -> Result<()> {
        if buf.len() < TAG_LEN {
            return Err(Error::corrupt(format!("blob {} is truncated", id.short())));
        }
        let body_len = buf.len() - TAG_LEN;
        let tag: [u8; TAG_LEN] = buf[body_len..].try_into().unwrap();
        buf.truncate(body_len);
        self.aead
            .decrypt_inout_detached(
                &blob_nonce(offset).into(),
                &blob_aad(id, kind),
                buf.as_mut_slice().into(),
                (&tag).into(),
            )
            .map_err(|_| {
                Error::corrupt(format!(
                    "blob {} failed authentication (damaged pack)",
                    id.short()
                ))
            })
    }
}
