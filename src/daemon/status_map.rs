//! The one place where failures become API outcomes: [`ApiError`] (an engine error or a
//! refusal of the agent's own) to a gRPC status, and an engine error to the failure reason
//! recorded in an operation.
//!
//! Codes: NOT_FOUND for unknown snapshots and operations; INVALID_ARGUMENT naming the
//! field; FAILED_PRECONDITION when another operation runs or the repository is not usable
//! as configured (missing, wrong password, newer format); PERMISSION_DENIED for callers
//! outside root and the configured group; UNAVAILABLE when the storage cannot be reached;
//! DATA_LOSS for data that fails verification; CANCELLED for canceled work.

use super::record::{FailureReason, OpKind};
use crate::error::{Error, Kind};
use tonic::{Code, Status};

/// Everything an API call can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// The engine failed; its [`Kind`] decides the code.
    Engine(Error),
    /// A mutating operation is already running.
    Busy {
        running: String,
        kind: OpKind,
    },
    UnknownOperation(String),
    /// A request field is unusable: which one and why.
    Invalid {
        field: &'static str,
        problem: String,
    },
    PermissionDenied(String),
    /// The agent is shutting down.
    Stopping,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Engine(e)
    }
}

pub fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Engine(e) => write!(f, "{e}"),
            ApiError::Busy { running, kind } => write!(
                f,
                "operation {running} ({}) is running; wait for it to finish or cancel it",
                kind.as_str()
            ),
            ApiError::UnknownOperation(id) => write!(
                f,
                "no operation {id:?} on this agent; list them with ListOperations \
                 (`agentctl operations`)"
            ),
            ApiError::Invalid { field, problem } => write!(f, "{field}: {problem}"),
            ApiError::PermissionDenied(m) => f.write_str(m),
            ApiError::Stopping => f.write_str("agentd is shutting down; try again once it is back"),
        }
    }
}

fn engine_code(kind: Kind) -> Code {
    match kind {
        Kind::NotFound => Code::NotFound,
        Kind::InvalidInput => Code::InvalidArgument,
        Kind::WrongPassword | Kind::NoRepository | Kind::Unsupported | Kind::Hostile => {
            Code::FailedPrecondition
        }
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::Corrupt => Code::DataLoss,
        Kind::Unavailable => Code::Unavailable,
        Kind::Io => Code::Internal,
        Kind::Cancelled => Code::Cancelled,
        Kind::Unit => Code::FailedPrecondition,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::Engine(err) => engine_code(err.kind()),
            ApiError::Busy { .. } => Code::FailedPrecondition,
            ApiError::UnknownOperation(_) => Code::NotFound,
            ApiError::Invalid { .. } => Code::InvalidArgument,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Stopping => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

/// The failure reason an operation records when the engine fails with `err`.
pub fn failure_reason(err: &Error) -> FailureReason {
    match err.kind() {
        Kind::NotFound => FailureReason::NotFound,
        Kind::InvalidInput => FailureReason::InvalidInput,
        Kind::WrongPassword | Kind::NoRepository | Kind::AlreadyExists => {
            FailureReason::RepositoryUnusable
        }
        Kind::Corrupt | Kind::Hostile => FailureReason::RepositoryCorrupt,
        Kind::Unsupported => FailureReason::Unsupported,
        Kind::Unavailable => FailureReason::StorageUnavailable,
        Kind::Io => FailureReason::LocalIo,
        Kind::Cancelled => FailureReason::CanceledByUser,
        Kind::Unit => FailureReason::UnitControl,
    }
}

/// The failure reason of a maintenance task that failed with `err`. A maintenance lock held
/// by another prune or repair is the one error of that kind a maintenance meets.
pub fn maintenance_failure_reason(err: &Error) -> FailureReason {
    match err.kind() {
        Kind::AlreadyExists => FailureReason::RepositoryBusy,
        _ => failure_reason(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_documented_table() {
        let cases = [
            (ApiError::Engine(Error::not_found("x")), Code::NotFound),
            (
                ApiError::Engine(Error::new(Kind::Unavailable, "s3 down")),
                Code::Unavailable,
            ),
            (
                ApiError::Engine(Error::new(Kind::WrongPassword, "pw")),
                Code::FailedPrecondition,
            ),
            (ApiError::Engine(Error::cancelled()), Code::Cancelled),
            (
                ApiError::Busy {
                    running: "snapshot-1".into(),
                    kind: OpKind::Snapshot,
                },
                Code::FailedPrecondition,
            ),
            (invalid("target", "must be absolute"), Code::InvalidArgument),
            (
                ApiError::PermissionDenied("no".into()),
                Code::PermissionDenied,
            ),
            (ApiError::UnknownOperation("x".into()), Code::NotFound),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
        let s = Status::from(invalid("target", "must be absolute"));
        assert_eq!(s.message(), "target: must be absolute");
    }

    #[test]
    fn a_maintenance_lock_held_elsewhere_is_repository_busy() {
        let held = Error::new(Kind::AlreadyExists, "another maintenance holds it");
        assert_eq!(
            maintenance_failure_reason(&held),
            FailureReason::RepositoryBusy
        );
        let down = Error::new(Kind::Unavailable, "s3 down");
        assert_eq!(
            maintenance_failure_reason(&down),
            FailureReason::StorageUnavailable
        );
        assert_eq!(
            maintenance_failure_reason(&Error::corrupt("bad pack")),
            FailureReason::RepositoryCorrupt
        );
    }
}
