//! Service control: stopping and starting systemd units around a node restore.
//!
//! [`UnitControl`] is what the node restore needs; [`Systemd`] implements it over systemd's
//! D-Bus API.

mod systemd;

pub use systemd::Systemd;

use crate::error::Result;
use std::time::Duration;

/// Stop and start units, waiting for systemd's verdict.
pub trait UnitControl: Send + Sync {
    /// Whether the unit is active (or activating/reloading): only such units are stopped.
    fn is_active(&self, unit: &str) -> Result<bool>;
    /// Stops the unit and waits until its stop job ends; fails unless the job's result is
    /// "done".
    fn stop(&self, unit: &str, timeout: Duration) -> Result<()>;
    /// Starts the unit and waits likewise.
    fn start(&self, unit: &str, timeout: Duration) -> Result<()>;
}
