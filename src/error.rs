//! The engine's error type and the policy behind it.
//!
//! Rules:
//! - Public functions of the engine return [`Error`]: a [`Kind`] a caller can branch on, a
//!   message written for the operator (what went wrong, where, and what to do), and the
//!   underlying cause when there is one.
//! - [`Error::is_transient`] says whether retrying the same call can help (a storage outage, a
//!   timeout). Everything else is permanent: retrying a wrong password or a corrupt pack only
//!   repeats the failure.
//! - The object stores have their own small error ([`crate::store::StoreError`]); it converts
//!   into this one, keeping the NotFound / transient distinction.
//! - Mapping to exit codes (the CLI) and to gRPC status codes (the daemon) happens in one place
//!   each, from [`Kind`] alone.

use std::fmt;

/// What kind of failure this is: the part of an error a program branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A named thing (snapshot, object, path in a snapshot) does not exist.
    NotFound,
    /// The caller passed something unusable: a bad path, an unknown option value.
    InvalidInput,
    /// No key slot opened with the given password.
    WrongPassword,
    /// There is no repository at the given location.
    NoRepository,
    /// A repository already exists where one was to be created.
    AlreadyExists,
    /// Stored data failed verification: a MAC mismatch, a truncated or malformed object.
    Corrupt,
    /// A repository written by a newer format version, or a feature this build lacks.
    Unsupported,
    /// The repository refers to something unsafe: a path escaping the target, and the like.
    Hostile,
    /// The object store could not be reached or failed in a way worth retrying.
    Unavailable,
    /// A local file-system operation failed (permissions, full disk, ...).
    Io,
    /// The operation was cancelled on request.
    Cancelled,
    /// A systemd unit could not be stopped or started, or a post-restore step failed.
    Unit,
}

/// The engine's error: a kind, an operator-facing message, an optional cause.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    transient: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            transient: kind == Kind::Unavailable,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An I/O error on a local path, worded for the operator.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        let hint = match err.raw_os_error() {
            Some(libc::ENOSPC) => "; the file system is full: free space and try again",
            Some(libc::EACCES) | Some(libc::EPERM) => {
                "; check permissions (restores of owners and devices need root)"
            }
            Some(libc::EROFS) => "; the file system is read-only",
            _ => "",
        };
        Error::new(Kind::Io, format!("{what}: {err}{hint}")).with_source(err)
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Error::new(Kind::Corrupt, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(Kind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(Kind::NotFound, message)
    }

    pub fn hostile(message: impl Into<String>) -> Self {
        Error::new(Kind::Hostile, message)
    }

    pub fn cancelled() -> Self {
        Error::new(Kind::Cancelled, "operation cancelled")
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether repeating the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Prefixes the message with context, keeping kind and cause.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreErrorKind as S;
        let (kind, transient) = match err.kind {
            S::NotFound => (Kind::NotFound, false),
            S::AlreadyExists => (Kind::AlreadyExists, false),
            S::Transient => (Kind::Unavailable, true),
            S::Permanent => (Kind::Unavailable, false),
        };
        Error {
            kind,
            transient,
            message: err.to_string(),
            source: None,
        }
    }
}
