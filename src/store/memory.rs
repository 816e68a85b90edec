//! An in-memory store, for tests and for measuring the engine without disk or network.

use super::{ObjectInfo, ObjectStore, StoreError, StoreResult};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes behind the engine's back (for damage tests).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut map = self.objects.lock().unwrap();
        if let Some(obj) = map.get_mut(key) {
            let mut bytes = obj.as_ref().clone();
            f(&mut bytes);
            *obj = Arc::new(bytes);
        }
    }
}

impl ObjectStore for MemoryStore {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        let map = self.objects.lock().unwrap();
        map.get(key)
            .map(|v| v.as_ref().clone())
            .ok_or_else(|| StoreError::not_found(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let obj = {
            let map = self.objects.lock().unwrap();
            map.get(key)
                .cloned()
                .ok_or_else(|| StoreError::not_found(key))?
        };
        let start = (offset as usize).min(obj.len());
        let end = (offset.saturating_add(len) as usize).min(obj.len());
        Ok(obj[start..end].to_vec())
    }

    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        let mut map = self.objects.lock().unwrap();
        map.insert(key.to_string(), Arc::new(data.to_vec()));
        Ok(())
    }

    fn stat(&self, key: &str) -> StoreResult<u64> {
        let map = self.objects.lock().unwrap();
        map.get(key)
            .map(|v| v.len() as u64)
            .ok_or_else(|| StoreError::not_found(key))
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let map = self.objects.lock().unwrap();
        Ok(map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}
