//! systemd over D-Bus (zbus, blocking API).
//!
//! To wait for a job without a race, we subscribe to the manager's signals and open the
//! JobRemoved stream *before* asking for the job, then wait for the signal carrying our job's
//! path and read its result ("done", "failed", "canceled", "timeout", "dependency", ...).

use super::UnitControl;
use crate::error::{Error, Kind, Result};
use std::time::Duration;
use zbus::zvariant::OwnedObjectPath;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    gen_blocking = true,
    blocking_name = "ManagerProxy"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    gen_blocking = true,
    blocking_name = "UnitProxy"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// A connection to a systemd manager.
pub struct Systemd {
    conn: zbus::blocking::Connection,
}

fn dbus_err(what: String, e: zbus::Error) -> Error {
    Error::new(Kind::Unavailable, format!("{what}: {e}"))
}

impl Systemd {
    /// The system manager, on the system bus.
    pub fn system() -> Result<Systemd> {
        let conn = zbus::blocking::Connection::system()
            .map_err(|e| dbus_err("cannot connect to the system D-Bus".into(), e))?;
        Ok(Systemd { conn })
    }

    /// A manager on a given bus address (e.g. a container's
    /// `unix:path=/proc/PID/root/run/dbus/system_bus_socket`).
    pub fn at_address(address: &str) -> Result<Systemd> {
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.build())
            .map_err(|e| dbus_err(format!("cannot connect to D-Bus at {address}"), e))?;
        Ok(Systemd { conn })
    }

    fn manager(&self) -> Result<ManagerProxy<'_>> {
        ManagerProxy::new(&self.conn).map_err(|e| dbus_err("systemd manager".into(), e))
    }

    pub fn active_state(&self, unit: &str) -> Result<String> {
        let path = self
            .manager()?
            .load_unit(unit)
            .map_err(|e| dbus_err(format!("cannot load {unit}"), e))?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path)
            .and_then(|b| b.build())
            .map_err(|e| dbus_err(format!("cannot inspect {unit}"), e))?;
        proxy
            .active_state()
            .map_err(|e| dbus_err(format!("cannot read the state of {unit}"), e))
    }

    /// Runs a start or stop job and waits for its result.
    fn job(&self, unit: &str, verb: &str, timeout: Duration) -> Result<()> {
        let manager = self.manager()?;
        match manager.subscribe() {
            Ok(()) => {}
            // One subscription per connection is enough.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Err(e) => return Err(dbus_err("cannot subscribe to systemd signals".into(), e)),
        }
        let removed = manager
            .receive_job_removed()
            .map_err(|e| dbus_err("cannot watch systemd jobs".into(), e))?;
        let job = match verb {
            "stop" => manager.stop_unit(unit, "replace"),
            _ => manager.start_unit(unit, "replace"),
        }
        .map_err(|e| {
            let msg = match &e {
                zbus::Error::MethodError(_, Some(text), _) => text.clone(),
                other => other.to_string(),
            };
            Error::new(Kind::Unit, format!("{unit} {verb} failed: {msg}"))
        })?;
        // Wait on a thread of its own so the caller's timeout holds whatever D-Bus does.
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for signal in removed {
                if let Ok(args) = signal.args()
                    && args.job == job
                {
                    let _ = tx.send(args.result.to_string());
                    return;
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(result) if result == "done" => Ok(()),
            Ok(result) => Err(Error::new(
                Kind::Unit,
                format!("{unit} {verb} failed: job result {result:?}"),
            )),
            Err(_) => Err(Error::new(
                Kind::Unit,
                format!(
                    "{unit} {verb} failed: no result within {}s",
                    timeout.as_secs()
                ),
            )),
        }
    }
}

impl UnitControl for Systemd {
    fn is_active(&self, unit: &str) -> Result<bool> {
        let state = self.active_state(unit)?;
        Ok(matches!(
            state.as_str(),
            "active" | "activating" | "reloading"
        ))
    }

    fn stop(&self, unit: &str, timeout: Duration) -> Result<()> {
        self.job(unit, "stop", timeout)
    }

    fn start(&self, unit: &str, timeout: Duration) -> Result<()> {
        self.job(unit, "start", timeout)
    }
}
