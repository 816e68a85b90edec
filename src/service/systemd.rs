//! systemd over D-Bus (zbus, blocking API).
//!
//! To wait for a job without a race, we subscribe to the manager's signals and open the
//! JobRemoved stream *before* asking for the job, then wait for the signal carrying our job's
//! path and read its result ("done", "failed", "canceled", "timeout", "dependency", ...).
//!
//! A start job that is "done" does not prove the unit runs: for `Type=simple` the job ends at
//! the fork, and a process that dies at once (a bad `ExecStart`, a cgroup it cannot join)
//! turns the unit "failed" a moment later. So a start is checked again after a short settle
//! time, and a start that did not hold is tried again: a node restore promises its caller that
//! the units it stopped run again, and one transient failure must not break that promise.

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

/// How long a started unit must stay up before its start counts.
const SETTLE: Duration = Duration::from_millis(500);
/// Start attempts before a unit that does not stay up is reported.
const START_ATTEMPTS: u32 = 3;
/// The pause between two start attempts (systemd's own default `RestartSec`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

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

    /// Runs a start or stop job and waits for its result ("done", "failed", ...); an error if
    /// the job cannot be asked for or gives no result in time.
    fn job(&self, unit: &str, verb: &str, timeout: Duration) -> Result<String> {
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
        rx.recv_timeout(timeout).map_err(|_| {
            Error::new(
                Kind::Unit,
                format!(
                    "{unit} {verb} failed: no result within {}s",
                    timeout.as_secs()
                ),
            )
        })
    }

    /// One start: Ok(None) if the unit started and stayed up, Ok(Some(why)) if it did not
    /// (worth another try), Err if systemd could not be asked or gave no verdict in time.
    fn start_once(&self, unit: &str, timeout: Duration) -> Result<Option<String>> {
        let result = self.job(unit, "start", timeout)?;
        if result != "done" {
            return Ok(Some(format!("job result {result:?}")));
        }
        std::thread::sleep(SETTLE);
        let state = self.active_state(unit)?;
        Ok((!running(&state)).then(|| format!("it started, then stopped at once (now {state})")))
    }
}

/// Whether an ActiveState means the unit runs (or is on its way up, or reloading).
fn running(state: &str) -> bool {
    matches!(state, "active" | "activating" | "reloading")
}

impl UnitControl for Systemd {
    fn is_active(&self, unit: &str) -> Result<bool> {
        Ok(running(&self.active_state(unit)?))
    }

    fn stop(&self, unit: &str, timeout: Duration) -> Result<()> {
        match self.job(unit, "stop", timeout)?.as_str() {
            "done" => Ok(()),
            result => Err(Error::new(
                Kind::Unit,
                format!("{unit} stop failed: job result {result:?}"),
            )),
        }
    }

    fn start(&self, unit: &str, timeout: Duration) -> Result<()> {
        let mut why = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.start_once(unit, timeout)? {
                None => return Ok(()),
                Some(w) => why = w,
            }
            tracing::warn!(unit, attempt, problem = %why, "the unit did not start");
            if attempt < START_ATTEMPTS {
                std::thread::sleep(RETRY_PAUSE);
            }
        }
        Err(Error::new(
            Kind::Unit,
            format!(
                "{unit} start failed: {why} ({START_ATTEMPTS} attempts); see journalctl -u {unit}"
            ),
        ))
    }
}
