//! The repository format: what the engine writes to an object store and how it reads it back.
//!
//! Objects (byte layouts in docs/FORMAT.md):
//! - `config`: plain JSON, format version and shared parameters ([`config`]);
//! - `keys/<id>`: key slots wrapping the master key ([`keys`]);
//! - `packs/<xx>/<id>`: encrypted blobs with an encrypted header ([`pack`]);
//! - `index/<id>`: sealed lists of packs and their blobs ([`index`]);
//! - `snapshots/<id>`: sealed manifests pointing at a root tree ([`snapshot`], [`tree`]).
//!
//! Every object but `config` and key slots is named by the hash of its bytes and never
//! rewritten. Writers add packs, then the index that lists them, then the snapshot that
//! refers to them, so a crash at any point leaves a valid repository (at worst with
//! unreferenced packs that garbage collection removes).

pub mod config;
pub mod crypto;
pub mod id;
pub mod index;
pub mod keys;
pub mod pack;
pub mod snapshot;
pub mod tree;

pub use config::Config;
pub use crypto::Keys;
pub use id::Id;
pub use index::Index;
pub use keys::{KdfParams, KeySlot};
pub use pack::{BlobBuffers, BlobDecoder, BlobKind, PackRecord};

pub use snapshot::{Snapshot, SnapshotEntry, SnapshotStatus};
pub use tree::{Node, NodeKind, Tree};

use crate::error::{Error, Kind, Result};
use crate::store::{ObjectStore, StoreErrorKind};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Options for creating a repository; `None` takes the measured defaults.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: Option<config::ChunkerParams>,
    pub pack_target_size: Option<u32>,
    pub compression_level: Option<i32>,
}

/// An open repository: store, config, keys and the loaded index.
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    config: Config,
    keys: Keys,
    /// Replaced whole when it grows (after a backup, a reload); readers keep the Arc they
    /// took, so lookups never wait on a writer.
    index: RwLock<Arc<Index>>,
    spool_dir: PathBuf,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.store.location())
            .field("id", &self.config.id)
            .finish()
    }
}

fn store_err(e: crate::store::StoreError, what: &str) -> Error {
    Error::from(e).context(what)
}

impl Repository {
    /// Creates a repository in an empty store location.
    pub fn init(
        store: Arc<dyn ObjectStore>,
        password: &[u8],
        opts: InitOptions,
    ) -> Result<Repository> {
        Self::init_with_keys(store, password, opts, Keys::generate())
    }

    /// [`Repository::init`] with a chosen master key: for golden test vectors only.
    #[doc(hidden)]
    pub fn init_with_master_key(
        store: Arc<dyn ObjectStore>,
        password: &[u8],
        opts: InitOptions,
        master: [u8; 32],
    ) -> Result<Repository> {
        Self::init_with_keys(store, password, opts, Keys::from_master(master))
    }

    fn init_with_keys(
        store: Arc<dyn ObjectStore>,
        password: &[u8],
        opts: InitOptions,
        keys: Keys,
    ) -> Result<Repository> {
        match store.get(config::CONFIG_KEY) {
            Ok(_) => {
                return Err(Error::new(
                    Kind::AlreadyExists,
                    format!(
                        "{}: a repository already exists here; use it, or choose another location",
                        store.location()
                    ),
                ));
            }
            Err(e) if e.kind == StoreErrorKind::NotFound => {}
            Err(e) => return Err(store_err(e, "cannot check the repository location")),
        }
        let mut config = Config::new(crypto::random_bytes());
        if let Some(c) = opts.chunker {
            config.chunker = c;
        }
        if let Some(p) = opts.pack_target_size {
            config.pack_target_size = p;
        }
        if let Some(l) = opts.compression_level {
            config.compression.level = l;
        }
        // Validate what we are about to write with the same checks a reader applies.
        Config::parse(&config.to_bytes(), &store.location())?;
        let slot = KeySlot::create(&keys, password, opts.kdf, &config.id, "initial")?;
        let slot_id = Id::of_stored(&slot.to_bytes());
        store
            .put(
                &format!("{}{}", keys::KEYS_PREFIX, slot_id.to_hex()),
                &slot.to_bytes(),
            )
            .map_err(|e| store_err(e, "cannot write the key slot"))?;
        store
            .put(config::CONFIG_KEY, &config.to_bytes())
            .map_err(|e| store_err(e, "cannot write the repository config"))?;
        // A new repository has no index files to load.
        Ok(Self::assemble(store, config, keys))
    }

    /// Opens a repository with a password and loads its index.
    pub fn open(store: Arc<dyn ObjectStore>, password: &[u8]) -> Result<Repository> {
        let repo = Self::open_unindexed(store, password)?;
        repo.reload_index()?;
        Ok(repo)
    }

    /// Opens a repository with a password, its index left empty: for a writer, whose
    /// [`WriteSession`](crate::maintenance::WriteSession) loads the index itself after
    /// writing its marker (the order garbage collection relies on), so that the index is
    /// not read twice. Nothing may read blobs before the index is loaded.
    pub fn open_unindexed(store: Arc<dyn ObjectStore>, password: &[u8]) -> Result<Repository> {
        let location = store.location();
        let config = match store.get(config::CONFIG_KEY) {
            Ok(bytes) => Config::parse(&bytes, &location)?,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(Error::new(
                    Kind::NoRepository,
                    format!(
                        "{location}: there is no repository here; create one with `agentctl repo init`"
                    ),
                ));
            }
            Err(e) => return Err(store_err(e, "cannot read the repository config")),
        };
        let slots = store
            .list(keys::KEYS_PREFIX)
            .map_err(|e| store_err(e, "cannot list key slots"))?;
        let mut keys = None;
        for slot in &slots {
            let bytes = store
                .get(&slot.key)
                .map_err(|e| store_err(e, "cannot read a key slot"))?;
            if let Some(k) = KeySlot::parse(&bytes)?.open(password, &config.id)? {
                keys = Some(k);
                break;
            }
        }
        let Some(keys) = keys else {
            return Err(Error::new(
                Kind::WrongPassword,
                format!(
                    "wrong repository password: none of the {} key slots of {location} opened with it",
                    slots.len()
                ),
            ));
        };
        Ok(Self::assemble(store, config, keys))
    }

    fn assemble(store: Arc<dyn ObjectStore>, config: Config, keys: Keys) -> Repository {
        let spool_dir = store.spool_dir().unwrap_or_else(std::env::temp_dir);
        // Empty until loaded, but usable: a new repository has nothing more.
        let mut index = Index::new();
        index.finalize();
        Repository {
            store,
            config,
            keys,
            index: RwLock::new(Arc::new(index)),
            spool_dir,
        }
    }

    /// Reads every index file again (after other writers added some). Files are fetched and
    /// decoded by as many threads as the store wants requests in flight.
    pub fn reload_index(&self) -> Result<()> {
        let files = self
            .store
            .list(index::INDEX_PREFIX)
            .map_err(|e| store_err(e, "cannot list index files"))?;
        let mut ids = Vec::with_capacity(files.len());
        for f in &files {
            ids.push(
                Id::from_hex(&f.key[index::INDEX_PREFIX.len()..]).map_err(|_| {
                    Error::corrupt(format!("unexpected object {} in index/", f.key))
                })?,
            );
        }
        let load = |i: usize| -> Result<Vec<PackRecord>> {
            let bytes = self
                .store
                .get(&files[i].key)
                .map_err(|e| store_err(e, "cannot read an index file"))?;
            index::decode_file(&self.keys, &ids[i], &bytes)
        };
        let threads = self
            .store
            .parallelism()
            .clamp(1, 16)
            .min(files.len().max(1));
        let mut loaded: Vec<Option<Result<Vec<PackRecord>>>> = Vec::new();
        if threads == 1 {
            loaded.extend((0..files.len()).map(|i| Some(load(i))));
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let slots = std::sync::Mutex::new((0..files.len()).map(|_| None).collect::<Vec<_>>());
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= files.len() {
                                break;
                            }
                            let result = load(i);
                            let failed = result.is_err();
                            slots.lock().unwrap()[i] = Some(result);
                            if failed {
                                // Stop the other threads early: one error fails the load.
                                next.store(files.len(), std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            loaded = slots.into_inner().unwrap();
        }
        let mut idx = Index::new();
        for packs in loaded.into_iter().flatten() {
            for pack in packs? {
                idx.add_pack(&pack);
            }
        }
        idx.finalize();
        *self.index.write().unwrap() = Arc::new(idx);
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The index as loaded now; it does not change under the caller.
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap().clone()
    }

    /// Adds packs this process wrote (and indexed on the store) to the in-memory index.
    pub fn add_to_index(&self, packs: &[PackRecord]) {
        if packs.is_empty() {
            return;
        }
        let mut guard = self.index.write().unwrap();
        let mut idx = Index::clone(&guard);
        for p in packs {
            idx.add_pack(p);
        }
        idx.finalize();
        *guard = Arc::new(idx);
    }

    /// Swaps in an index built elsewhere: maintenance gives writers a view that hides packs
    /// pending deletion, so they store those blobs again instead of reusing them.
    pub fn replace_index(&self, index: Index) {
        *self.index.write().unwrap() = Arc::new(index);
    }

    /// Where packs are built before upload.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    pub fn set_spool_dir(&mut self, dir: PathBuf) {
        self.spool_dir = dir;
    }

    /// Reads, decrypts, decompresses and verifies one blob against its ID; the plaintext is
    /// in `bufs` until the next read.
    pub fn read_blob<'b>(
        &self,
        id: &Id,
        raw_len: Option<usize>,
        bufs: &'b mut BlobBuffers,
    ) -> Result<&'b [u8]> {
        let index = self.index();
        let loc = index.locate(id).ok_or_else(|| {
            Error::not_found(format!(
                "blob {} is not in the index (lost data; run a check)",
                id.short()
            ))
        })?;
        let key = pack::pack_key(&loc.pack.id);
        let (offset, len) = (loc.offset as u64, loc.stored_len as u64);
        // Trees are read on every listing and incremental backup: let a cache keep them.
        let read = if loc.pack.kind == BlobKind::Tree {
            self.store
                .get_range_cacheable(&key, offset, len)
                .map(|data| bufs.stored = data)
        } else {
            self.store
                .get_range_into(&key, offset, len, &mut bufs.stored)
        };
        read.map_err(|e| {
            let what = if e.kind == StoreErrorKind::NotFound {
                format!("pack {} is missing", loc.pack.id.short())
            } else {
                format!("cannot read pack {}", loc.pack.id.short())
            };
            Error::from(e).context(what)
        })?;
        if bufs.stored.len() != loc.stored_len as usize {
            return Err(Error::corrupt(format!(
                "pack {} is truncated (blob {} cut short)",
                loc.pack.id.short(),
                id.short()
            )));
        }
        self.keys.pack_cipher(&loc.pack.salt).decrypt(
            loc.offset as u64,
            id,
            loc.pack.kind as u8,
            &mut bufs.stored,
        )?;
        let plain = bufs.decode(raw_len)?;
        if self.keys.blob_id(plain) != *id {
            return Err(Error::corrupt(format!(
                "blob {} in pack {} does not match its ID",
                id.short(),
                loc.pack.id.short()
            )));
        }
        Ok(plain)
    }

    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        // Buffers and a zstd context per thread: creating a context costs more than decoding
        // a small tree (it probes the CPU with `cpuid`, which traps in a virtual machine), and
        // walks and restores read one tree per directory.
        thread_local! {
            static BUFFERS: std::cell::RefCell<BlobBuffers> =
                std::cell::RefCell::new(BlobBuffers::default());
        }
        BUFFERS.with_borrow_mut(|bufs| {
            let bytes = self.read_blob(id, None, bufs)?;
            Tree::decode(bytes).map_err(|e| e.context(format!("tree {}", id.short())))
        })
    }

    /// Uploads a finished pack from its spool file (consumed). The blobs of a tree pack are
    /// offered to a caching store: this host reads them again as the next backup's parent.
    pub fn put_pack(&self, rec: &PackRecord, path: &std::path::Path) -> Result<()> {
        let key = pack::pack_key(&rec.id);
        let stored = if rec.kind == BlobKind::Tree {
            let ranges: Vec<(u64, u64)> = rec
                .blobs
                .iter()
                .map(|b| (b.offset as u64, b.stored_len as u64))
                .collect();
            self.store.put_file_cacheable(&key, path, &ranges)
        } else {
            self.store.put_file(&key, path)
        };
        stored.map_err(|e| Error::from(e).context("cannot upload a pack"))
    }

    /// Writes an index file listing `packs`.
    pub fn write_index(&self, packs: &[PackRecord]) -> Result<Id> {
        let (id, bytes) = index::encode_file(&self.keys, packs);
        self.store
            .put(&index::index_key(&id), &bytes)
            .map_err(|e| store_err(e, "cannot write an index file"))?;
        Ok(id)
    }

    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let sealed = self.keys.seal(snapshot::SNAPSHOT_AAD, &snap.encode());
        let id = Id::of_stored(&sealed);
        self.store
            .put(&snapshot::snapshot_key(&id), &sealed)
            .map_err(|e| store_err(e, "cannot write the snapshot manifest"))?;
        Ok(id)
    }

    pub fn read_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let sealed = self.store.get(&snapshot::snapshot_key(id)).map_err(|e| {
            if e.kind == StoreErrorKind::NotFound {
                Error::not_found(format!("snapshot {} does not exist", id.short()))
            } else {
                store_err(e, "cannot read a snapshot manifest")
            }
        })?;
        if Id::of_stored(&sealed) != *id {
            return Err(Error::corrupt(format!(
                "snapshot {}: manifest does not match its name (damaged)",
                id.short()
            )));
        }
        let plain = self
            .keys
            .open(snapshot::SNAPSHOT_AAD, &sealed)
            .map_err(|e| e.context(format!("snapshot {}", id.short())))?;
        Snapshot::decode(&plain, id)
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let objects = self
            .store
            .list(snapshot::SNAPSHOTS_PREFIX)
            .map_err(|e| store_err(e, "cannot list snapshots"))?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let id = Id::from_hex(&o.key[snapshot::SNAPSHOTS_PREFIX.len()..]).map_err(|_| {
                Error::corrupt(format!("unexpected object {} in snapshots/", o.key))
            })?;
            // Forgotten by another node since the listing: not an error.
            let snapshot = match self.read_snapshot(&id) {
                Err(e) if e.kind() == Kind::NotFound => continue,
                other => other?,
            };
            out.push(SnapshotEntry { id, snapshot });
        }
        out.sort_by(|a, b| {
            (a.snapshot.time(), &a.snapshot.time).cmp(&(b.snapshot.time(), &b.snapshot.time))
        });
        Ok(out)
    }

    /// The latest snapshot of `host`, not counting safety snapshots (tag
    /// [`snapshot::SAFETY_TAG`]); with `completed_only`, not counting PartiallyFailed ones
    /// either. What `latest` means to a restore: many hosts may share a repository.
    pub fn latest_of_host(&self, host: &str, completed_only: bool) -> Result<SnapshotEntry> {
        self.list_snapshots()?
            .into_iter()
            .rev()
            .find(|s| {
                s.snapshot.hostname == host
                    && (!completed_only || s.snapshot.status == SnapshotStatus::Completed)
                    && !s.snapshot.tags.iter().any(|t| t == snapshot::SAFETY_TAG)
            })
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no {}snapshot of host {host:?} (safety snapshots, tagged {}, are not \
                     counted: name one by its ID to restore it; `agentctl snapshots` lists \
                     every host's)",
                    if completed_only { "Completed " } else { "" },
                    snapshot::SAFETY_TAG
                ))
            })
    }

    /// [`Repository::resolve_snapshot`], except that `latest` is the latest snapshot of `host`
    /// ([`Repository::latest_of_host`]), as restores read it.
    pub fn resolve_for_host(&self, spec: &str, host: &str) -> Result<SnapshotEntry> {
        if spec == "latest" {
            self.latest_of_host(host, false)
        } else {
            self.resolve_snapshot(spec)
        }
    }

    /// Finds a snapshot by `latest`, a unique hex prefix of its ID (4 digits or more), or its
    /// name.
    pub fn resolve_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        let all = self.list_snapshots()?;
        if spec == "latest" {
            return all.into_iter().next_back().ok_or_else(|| {
                Error::not_found(
                    "the repository has no snapshots yet; take one with `agentctl snapshot`",
                )
            });
        }
        let spec_lc = spec.to_ascii_lowercase();
        let matches: Vec<_> = all
            .into_iter()
            .filter(|s| {
                (spec.len() >= 4 && s.id.to_hex().starts_with(&spec_lc))
                    || s.snapshot.name.as_deref() == Some(spec)
            })
            .collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().unwrap()),
            0 => Err(Error::not_found(format!(
                "no snapshot matches {spec:?}; list them with `agentctl snapshots`"
            ))),
            n => Err(Error::invalid(format!(
                "{spec:?} matches {n} snapshots; give more digits of the ID"
            ))),
        }
    }

    /// Adds a key slot for another password.
    pub fn add_password(&self, password: &[u8], kdf: KdfParams, label: &str) -> Result<Id> {
        let slot = KeySlot::create(&self.keys, password, kdf, &self.config.id, label)?;
        let bytes = slot.to_bytes();
        let id = Id::of_stored(&bytes);
        self.store
            .put(&format!("{}{}", keys::KEYS_PREFIX, id.to_hex()), &bytes)
            .map_err(|e| store_err(e, "cannot write the key slot"))?;
        Ok(id)
    }
}
