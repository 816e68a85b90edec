//! Key slots: the master key, wrapped by keys derived from passwords.
//!
//! Each slot is a JSON object under `keys/<slot id>` holding Argon2id parameters and salt and
//! the master key encrypted with AES-256-GCM under the Argon2id output. Adding, changing or
//! removing a password only writes or deletes a slot; data is never re-encrypted.

use super::crypto::{Keys, random_bytes};
use crate::error::{Error, Kind, Result};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

pub const KEYS_PREFIX: &str = "keys/";

/// Argon2id cost parameters, recorded in every slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 32 MiB, 3 passes, 1 lane: about 0.1 s on one core of a current server, and more
    /// than twice the memory × passes of OWASP's minimum for Argon2id (19 MiB, 2 passes).
    /// Every agentctl run pays it once, and its memory is the run's peak: 64 MiB would
    /// double both for every command (docs/FORMAT.md, "Key slots").
    fn default() -> Self {
        KdfParams {
            m_cost: 32 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Small parameters for tests only; never the default.
    pub fn insecure_fast() -> Self {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    /// nonce (12 bytes) || encrypted master key (32) || tag (16), hex.
    pub wrapped_key: String,
    pub created: String,
    pub label: String,
}

fn kek(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32]> {
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| Error::corrupt(format!("key slot has invalid Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| Error::invalid(format!("password cannot be used: {e}")))?;
    Ok(out)
}

fn aad(repo_id: &str) -> Vec<u8> {
    format!("hostagent key slot v1 {repo_id}").into_bytes()
}

impl KeySlot {
    pub fn create(
        keys: &Keys,
        password: &[u8],
        params: KdfParams,
        repo_id: &str,
        label: &str,
    ) -> Result<KeySlot> {
        if password.is_empty() {
            return Err(Error::invalid("the repository password is empty"));
        }
        let salt: [u8; 16] = random_bytes();
        let nonce: [u8; 12] = random_bytes();
        let mut k = kek(password, &salt, params)?;
        let aead = Aes256Gcm::new(&k.into());
        k.zeroize();
        let mut buf = keys.master().to_vec();
        let tag = aead
            .encrypt_inout_detached(&nonce.into(), &aad(repo_id), buf.as_mut_slice().into())
            .expect("32 bytes encrypt");
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&buf);
        wrapped.extend_from_slice(&tag);
        Ok(KeySlot {
            version: 1,
            kdf: "argon2id".to_string(),
            params,
            salt: hex::encode(salt),
            wrapped_key: hex::encode(wrapped),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            label: label.to_string(),
        })
    }

    /// Unwraps the master key; `Ok(None)` when the password does not fit this slot.
    pub fn open(&self, password: &[u8], repo_id: &str) -> Result<Option<Keys>> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(Error::new(
                Kind::Unsupported,
                format!(
                    "key slot uses {} version {}, which this build does not know",
                    self.kdf, self.version
                ),
            ));
        }
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot salt is not hex"))?;
        let wrapped = hex::decode(&self.wrapped_key)
            .map_err(|_| Error::corrupt("key slot wrapped key is not hex"))?;
        if wrapped.len() != 12 + 32 + 16 {
            return Err(Error::corrupt("key slot wrapped key has the wrong length"));
        }
        let mut k = kek(password, &salt, self.params)?;
        let aead = Aes256Gcm::new(&k.into());
        k.zeroize();
        let nonce: [u8; 12] = wrapped[..12].try_into().unwrap();
        let tag: [u8; 16] = wrapped[44..].try_into().unwrap();
        let mut master = [0u8; 32];
        master.copy_from_slice(&wrapped[12..44]);
        let ok = aead
            .decrypt_inout_detached(
                &nonce.into(),
                &aad(repo_id),
                master.as_mut_slice().into(),
                (&tag).into(),
            )
            .is_ok();
        let keys = ok.then(|| Keys::from_master(master));
        master.zeroize();
        Ok(keys)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("slot serializes");
        out.push(b'\n');
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<KeySlot> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("key slot is not valid: {e}")))
    }
}
