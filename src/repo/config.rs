//! The repository config object: format version and the parameters every writer must share.
//!
//! Stored in plain JSON under the key `config`, so that a reader can refuse a newer format
//! before it tries a password. It holds nothing secret: chunk boundaries also depend on a
//! seed derived from the master key, and tampering with these numbers can only cost dedup
//! efficiency, never correctness (blob IDs are hashes of content, whatever the cut points).

use crate::error::{Error, Kind, Result};
use serde::{Deserialize, Serialize};

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
pub const FORMAT_NAME: &str = "hostagent-repository";
pub const CONFIG_KEY: &str = "config";

/// Chunk sizes chosen by measurement (see docs/FORMAT.md, "Choosing the parameters").
pub const DEFAULT_MIN_CHUNK: u32 = 256 << 10;
pub const DEFAULT_AVG_CHUNK: u32 = 1 << 20;
pub const DEFAULT_MAX_CHUNK: u32 = 4 << 20;
pub const DEFAULT_PACK_SIZE: u32 = 32 << 20;
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    pub normalization: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub version: u32,
    /// 16 random bytes in hex: tells repositories apart and binds key slots to this one.
    pub id: String,
    pub chunker: ChunkerParams,
    pub pack_target_size: u32,
    pub compression: Compression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl Config {
    pub fn new(id: [u8; 16]) -> Config {
        Config {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            id: hex::encode(id),
            chunker: ChunkerParams {
                algorithm: "fastcdc-v2020".to_string(),
                min_size: DEFAULT_MIN_CHUNK,
                avg_size: DEFAULT_AVG_CHUNK,
                max_size: DEFAULT_MAX_CHUNK,
                normalization: 1,
            },
            pack_target_size: DEFAULT_PACK_SIZE,
            compression: Compression {
                algorithm: "zstd".to_string(),
                level: DEFAULT_ZSTD_LEVEL,
            },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("config serializes");
        out.push(b'\n');
        out
    }

    /// Parses and validates a config, refusing versions newer than this build.
    pub fn parse(bytes: &[u8], location: &str) -> Result<Config> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                Kind::Corrupt,
                format!("{location}: the repository config is not valid: {e}"),
            )
        })?;
        if head.format != FORMAT_NAME {
            return Err(Error::new(
                Kind::NoRepository,
                format!(
                    "{location}: not a hostagent repository (format {:?})",
                    head.format
                ),
            ));
        }
        if head.version > FORMAT_VERSION {
            return Err(Error::new(
                Kind::Unsupported,
                format!(
                    "{location}: repository format version {} is newer than this build supports \
                     (version {FORMAT_VERSION}); upgrade hostagent to use it",
                    head.version
                ),
            ));
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(format!(
                "{location}: the repository config is not valid: {e}"
            ))
        })?;
        let c = &config.chunker;
        let sane = c.algorithm == "fastcdc-v2020"
            && 64 <= c.min_size
            && c.min_size <= c.avg_size
            && c.avg_size <= c.max_size
            && c.max_size <= 64 << 20
            && c.normalization <= 3
            && (1 << 20..=1 << 30).contains(&config.pack_target_size)
            && config.compression.algorithm == "zstd"
            && (-7..=22).contains(&config.compression.level);
        if !sane {
            return Err(Error::corrupt(format!(
                "{location}: the repository config has parameters out of range"
            )));
        }
        Ok(config)
    }
}
