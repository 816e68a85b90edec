//! The persisted list of units a node restore stopped, written before it stops them, so that
//! an agent that dies mid-restore starts them again at its next start.

use crate::error::{Error, Result};
use crate::service::UnitControl;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const STATE_FILE: &str = "node-restore-units.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedUnits {
    /// In the order they are stopped; started again in reverse.
    pub units: Vec<String>,
    /// Staging directories a restore may have left behind.
    #[serde(default)]
    pub staging: Vec<PathBuf>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Writes the list atomically (temp file, fsync, rename).
pub fn save(state_dir: &Path, units: &StoppedUnits) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        Error::io(
            format!("cannot create the state directory {}", state_dir.display()),
            e,
        )
    })?;
    let dest = path(state_dir);
    let tmp = dest.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(units).expect("serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| {
        Error::io(
            format!("cannot record stopped units in {}", dest.display()),
            e,
        )
    })
}

pub fn clear(state_dir: &Path) -> Result<()> {
    match std::fs::remove_file(path(state_dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove the stopped-units record", e)),
    }
}

/// At agent start: starts the units a previous, interrupted node restore stopped. Returns the
/// units started; the record is removed once all have started.
pub fn recover(
    state_dir: &Path,
    control: &dyn UnitControl,
    timeout: Duration,
) -> Result<Vec<String>> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", p.display()), e)),
    };
    let record: StoppedUnits = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(format!("{} is not valid: {e}", p.display())))?;
    for dir in &record.staging {
        let _ = std::fs::remove_dir_all(dir);
    }
    let mut started = Vec::new();
    let mut first_error = None;
    for unit in record.units.iter().rev() {
        match control.start(unit, timeout) {
            Ok(()) => started.push(unit.clone()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            clear(state_dir)?;
            Ok(started)
        }
    }
}
