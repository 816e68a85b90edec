//! Key slots: list, add, remove, and change a password without touching data.
//!
//! Every slot wraps the same master key, so these operations only write or delete small
//! `keys/<id>` objects. Removing refuses the last slot (the repository would be lost) and,
//! unless forced, the slot the caller's own password opens (a typo in a script would
//! otherwise lock the caller out). Changing a password adds the new slot, checks that it
//! opens, and only then removes the old one: a crash in between leaves both passwords
//! working, never neither.

use crate::error::{Error, Kind, Result};
use crate::repo::Repository;
use crate::repo::keys::{KEYS_PREFIX, KdfParams, KeySlot};

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub id: String,
    pub label: String,
    pub created: String,
    pub params: KdfParams,
    /// Whether the password given opens this slot.
    pub current: bool,
}

fn read_slots(repo: &Repository) -> Result<Vec<(String, KeySlot)>> {
    let store = repo.store();
    let mut out = Vec::new();
    for o in store
        .list(KEYS_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list key slots"))?
    {
        let bytes = store
            .get(&o.key)
            .map_err(|e| Error::from(e).context("cannot read a key slot"))?;
        out.push((
            o.key[KEYS_PREFIX.len()..].to_string(),
            KeySlot::parse(&bytes)?,
        ));
    }
    out.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// Every slot; `password` marks the ones it opens (one Argon2id run per slot).
pub fn list(repo: &Repository, password: &[u8]) -> Result<Vec<SlotInfo>> {
    read_slots(repo)?
        .into_iter()
        .map(|(id, slot)| {
            let current = slot.open(password, &repo.config().id)?.is_some();
            Ok(SlotInfo {
                id,
                label: slot.label,
                created: slot.created,
                params: slot.params,
                current,
            })
        })
        .collect()
}

/// Adds a slot for `new_password`; returns its ID.
pub fn add(repo: &Repository, new_password: &[u8], label: &str, kdf: KdfParams) -> Result<String> {
    Ok(repo.add_password(new_password, kdf, label)?.to_hex())
}

fn resolve<'a>(slots: &'a [(String, KeySlot)], spec: &str) -> Result<&'a (String, KeySlot)> {
    let spec = spec.to_ascii_lowercase();
    let matches: Vec<_> = slots
        .iter()
        .filter(|(id, _)| spec.len() >= 4 && id.starts_with(&spec))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::not_found(format!(
            "no key slot matches {spec:?}; list them with `agentctl key list`"
        ))),
        _ => Err(Error::invalid(format!(
            "{spec:?} matches {} key slots; give more digits",
            matches.len()
        ))),
    }
}

/// Removes a slot by ID prefix (4 digits or more).
pub fn remove(repo: &Repository, password: &[u8], spec: &str, force: bool) -> Result<String> {
    let slots = read_slots(repo)?;
    let (id, slot) = resolve(&slots, spec)?;
    if slots.len() == 1 {
        return Err(Error::new(
            Kind::InvalidInput,
            format!(
                "refusing to remove key slot {}: it is the only one, and without it nobody \
                 can open the repository; add another with `agentctl key add` first",
                short(id)
            ),
        ));
    }
    if !force && slot.open(password, &repo.config().id)?.is_some() {
        return Err(Error::new(
            Kind::InvalidInput,
            format!(
                "refusing to remove key slot {}: it is the one your password opens; use \
                 `agentctl key passwd` to change your password, or --force if you hold \
                 another password",
                short(id)
            ),
        ));
    }
    repo.store()
        .delete(&format!("{KEYS_PREFIX}{id}"))
        .map_err(|e| Error::from(e).context("cannot remove the key slot"))?;
    Ok(id.clone())
}

/// Replaces the slots `old_password` opens with one for `new_password`. Returns the new
/// slot's ID and the removed ones.
pub fn change_password(
    repo: &Repository,
    old_password: &[u8],
    new_password: &[u8],
    kdf: KdfParams,
) -> Result<(String, Vec<String>)> {
    let before = read_slots(repo)?;
    let label = before
        .iter()
        .find(|(_, s)| {
            s.open(old_password, &repo.config().id)
                .ok()
                .flatten()
                .is_some()
        })
        .map(|(_, s)| s.label.clone())
        .unwrap_or_else(|| "password".to_string());
    let new_id = repo.add_password(new_password, kdf, &label)?;
    // Check the new slot before the old one goes.
    let bytes = repo
        .store()
        .get(&format!("{KEYS_PREFIX}{}", new_id.to_hex()))
        .map_err(|e| Error::from(e).context("cannot read back the new key slot"))?;
    let opened = KeySlot::parse(&bytes)?.open(new_password, &repo.config().id)?;
    if opened.is_none_or(|k| k.master() != repo.keys().master()) {
        return Err(Error::corrupt(
            "the new key slot does not open with the new password; the old password still works",
        ));
    }
    let mut removed = Vec::new();
    for (id, slot) in &before {
        if slot.open(old_password, &repo.config().id)?.is_some() {
            repo.store()
                .delete(&format!("{KEYS_PREFIX}{id}"))
                .map_err(|e| Error::from(e).context("cannot remove the old key slot"))?;
            removed.push(id.clone());
        }
    }
    Ok((new_id.to_hex(), removed))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}
