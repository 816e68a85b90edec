//! Who may use the API: root, and members of the configured group.
//!
//! Identity comes from the kernel, captured when the connection is accepted: uid and gid
//! from SO_PEERCRED, supplementary groups from SO_PEERGROUPS. Both describe the process as
//! it was at connect(), so nothing can be raced by reusing a PID afterwards, and groups
//! given to a process (systemd's SupplementaryGroups=, a pod's supplementalGroups) count
//! the way the kernel counts them for file access.
//!
//! The socket's file mode keeps others out already when agentd creates it; this check also
//! holds when the socket comes from systemd with a wider SocketMode.

use super::status_map::ApiError;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// The peer of one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
}

/// Which callers are allowed.
#[derive(Debug, Clone)]
pub struct Policy {
    pub group: Option<(String, u32)>,
}

impl Policy {
    pub fn check(&self, peer: Option<&Peer>) -> Result<(), ApiError> {
        let Some(peer) = peer else {
            return Err(ApiError::PermissionDenied(
                "the caller's credentials are unknown; connect over the agent's Unix socket".into(),
            ));
        };
        if peer.uid == 0 {
            return Ok(());
        }
        if let Some((_, gid)) = &self.group
            && (peer.gid == *gid || peer.groups.contains(gid))
        {
            return Ok(());
        }
        let allowed = match &self.group {
            Some((name, _)) => format!("root and members of group {name:?}"),
            None => "root only (no daemon.group is configured)".to_string(),
        };
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused a caller");
        Err(ApiError::PermissionDenied(format!(
            "uid {} may not use agentd: the API is open to {allowed}",
            peer.uid
        )))
    }
}

/// An accepted connection that carries its peer's identity into every request.
pub struct PeerStream {
    inner: UnixStream,
    peer: Option<Peer>,
}

impl PeerStream {
    pub fn new(inner: UnixStream) -> PeerStream {
        let peer = inner.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
            groups: peer_groups(inner.as_raw_fd()).unwrap_or_default(),
        });
        PeerStream { inner, peer }
    }
}

/// The peer's supplementary groups at connect time (Linux 4.13+).
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes long and outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<u32>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && groups.len() < 65536 {
            // `len` now holds the size needed.
            let needed = (len as usize / std::mem::size_of::<u32>()).max(groups.len() * 2);
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Option<Peer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The interceptor every call passes: refuses callers the policy does not allow.
pub fn interceptor(
    policy: Policy,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        let peer = req.extensions().get::<Option<Peer>>().cloned().flatten();
        policy.check(peer.as_ref())?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_group_members_pass_others_do_not() {
        let p = Policy {
            group: Some(("hostagent".into(), 990)),
        };
        assert!(p.check(Some(&peer(0, 0, &[]))).is_ok());
        assert!(p.check(Some(&peer(1000, 990, &[]))).is_ok());
        assert!(p.check(Some(&peer(1000, 1000, &[4, 990]))).is_ok());
        let e = p.check(Some(&peer(1000, 1000, &[4]))).unwrap_err();
        assert!(e.to_string().contains("uid 1000"), "{e}");
        assert!(p.check(None).is_err());
        let root_only = Policy { group: None };
        assert!(root_only.check(Some(&peer(1000, 990, &[990]))).is_err());
    }
}
