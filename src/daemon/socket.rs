//! The API socket: taken from systemd (socket activation, `LISTEN_FDS`) or created here.
//!
//! When agentd creates it, no moment exists in which others can connect: the process umask
//! (0077, set at start) makes the socket 0600 as it is bound, and only then is it given to
//! the configured group and opened to it (0660). Its directory, when agentd has to create
//! it, is 0750 and belongs to the same group. A stale socket of a previous run is replaced;
//! a live one (another agentd answers on it) is left alone and startup fails.
//!
//! Under systemd the directory is the unit's `RuntimeDirectory=`, which systemd makes (and
//! at every start of the service, together with what is in it, gives back to) root:root;
//! agentd then gives it, and a socket systemd passed in, to the configured group, or the
//! group's members could not reach the socket. Only a directory systemd made for agentd
//! (listed in `$RUNTIME_DIRECTORY`) is changed, never a shared one such as /run.

use crate::error::{Error, Kind, Result};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

pub struct Listener {
    pub listener: tokio::net::UnixListener,
    /// True when systemd passed the socket in; it then owns the file, too.
    pub activated: bool,
}

/// Binds the socket, or adopts the descriptor systemd passed (see [`activated_fd`]).
pub fn listen(path: &Path, group: Option<u32>, activated: Option<i32>) -> Result<Listener> {
    if let Some(gid) = group
        && let Some(dir) = path.parent()
        && is_runtime_directory(dir)
    {
        chgrp(dir, gid)?;
    }
    if let Some(fd) = activated {
        // SAFETY: systemd passed this descriptor to us for our exclusive use.
        let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        if let Some(gid) = group
            && std
                .local_addr()
                .is_ok_and(|a| a.as_pathname() == Some(path))
            && path.parent().is_some_and(is_runtime_directory)
        {
            // systemd's start of the service gave it to root:root with the directory.
            chgrp(path, gid)?;
        }
        std.set_nonblocking(true)
            .map_err(|e| Error::io("cannot use the socket from systemd", e))?;
        let listener = tokio::net::UnixListener::from_std(std)
            .map_err(|e| Error::io("cannot use the socket from systemd", e))?;
        return Ok(Listener {
            listener,
            activated: true,
        });
    }
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        set_owner_mode(dir, group, 0o750)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    Kind::AlreadyExists,
                    format!(
                        "{}: another agentd is already listening there; stop it first",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                Error::io(
                    format!("cannot remove the stale socket {}", path.display()),
                    e,
                )
            })?;
        }
        Ok(_) => {
            return Err(Error::invalid(format!(
                "{} exists and is not a socket; remove it or choose another daemon.socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let std = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    set_owner_mode(path, group, if group.is_some() { 0o660 } else { 0o600 })?;
    std.set_nonblocking(true)
        .map_err(|e| Error::io("cannot set up the socket", e))?;
    let listener = tokio::net::UnixListener::from_std(std)
        .map_err(|e| Error::io("cannot set up the socket", e))?;
    Ok(Listener {
        listener,
        activated: false,
    })
}

/// Whether systemd made `dir` as this service's `RuntimeDirectory=`.
fn is_runtime_directory(dir: &Path) -> bool {
    std::env::var_os("RUNTIME_DIRECTORY")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| d == dir))
}

/// Gives `path` to group `gid`, keeping its owner and mode.
fn chgrp(path: &Path, gid: u32) -> Result<()> {
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
        Error::io(
            format!("cannot give {} to group {gid}", path.display()),
            std::io::Error::from(e),
        )
    })
}

fn set_owner_mode(path: &Path, group: Option<u32>, mode: u32) -> Result<()> {
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            Error::io(
                format!("cannot give {} to group {gid}", path.display()),
                std::io::Error::from(e),
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot set the mode of {}", path.display()), e))
}

/// The descriptor systemd passed (`LISTEN_FDS`, `LISTEN_PID`), if any. Reading it clears
/// those variables, so it runs before any other thread exists.
pub fn activated_fd() -> Result<Option<i32>> {
    let fds: Vec<i32> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(e) => {
            return Err(Error::invalid(format!(
                "LISTEN_FDS is set but unusable: {e}"
            )));
        }
    };
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => Ok(Some(*fd)),
        more => Err(Error::invalid(format!(
            "systemd passed {} sockets; agentd takes exactly one (one ListenStream= in \
             agentd.socket)",
            more.len()
        ))),
    }
}
