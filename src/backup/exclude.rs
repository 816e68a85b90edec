//! Exclusion rules: glob patterns and cache-directory tags.
//!
//! A pattern containing `/` is matched against the whole absolute path (`/var/onprem/tmp/**`);
//! one without is matched against the entry's name anywhere in the tree (`*.swp`). A directory
//! holding a `CACHEDIR.TAG` file with the standard signature keeps only that file when
//! cache exclusion is on (<https://bford.info/cachedir/>).

use crate::error::{Error, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

#[derive(Debug, Clone)]
pub struct Excludes {
    full: GlobSet,
    name: GlobSet,
    pub caches: bool,
}

impl Excludes {
    pub fn new(patterns: &[String], caches: bool) -> Result<Excludes> {
        let mut full = GlobSetBuilder::new();
        let mut name = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    Error::invalid(format!("exclude pattern {p:?} is not a valid glob: {e}"))
                })?;
            if p.contains('/') {
                full.add(glob);
            } else {
                name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::invalid(format!("exclude patterns: {e}")))
        };
        Ok(Excludes {
            full: build(full)?,
            name: build(name)?,
            caches,
        })
    }

    pub fn none() -> Excludes {
        Excludes::new(&[], false).expect("no patterns is valid")
    }

    /// Whether any pattern is set (cache tags aside).
    pub fn any(&self) -> bool {
        !self.name.is_empty() || !self.full.is_empty()
    }

    pub fn is_excluded(&self, path: &Path) -> bool {
        (!self.name.is_empty() && path.file_name().is_some_and(|n| self.name.is_match(n)))
            || (!self.full.is_empty() && self.full.is_match(path))
    }

    /// Whether `dir` is tagged as a cache directory (only checked when cache exclusion is on).
    pub fn is_cache_dir(&self, dir: &Path) -> bool {
        if !self.caches {
            return false;
        }
        let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
        match std::fs::File::open(dir.join(CACHEDIR_TAG)) {
            Ok(mut f) => {
                use std::io::Read;
                f.read_exact(&mut buf).is_ok() && buf == CACHEDIR_SIGNATURE
            }
            Err(_) => false,
        }
    }
}
