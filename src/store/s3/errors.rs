//! From SDK errors to [`StoreError`]s an operator can act on.
//!
//! The kind decides what the engine does: `NotFound` only for an object that is not there
//! (never for a missing bucket), `Transient` for what may pass (5xx, throttling, timeouts,
//! refused or reset connections, unresolvable names during an outage), `Permanent` for what
//! will not (bad credentials, denied access, wrong region, TLS trust failures). The message
//! says what is wrong in the operator's terms and what to check.

use crate::store::{StoreError, StoreErrorKind};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::error::Error as StdError;

/// What a message needs to name the setting at fault.
#[derive(Debug, Clone)]
pub(super) struct Context {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub credentials_source: String,
    pub connect_timeout_secs: u64,
}

/// Maps a failed request on `key` (relative to the store; empty for bucket-level requests).
pub(super) fn map<E>(err: SdkError<E, HttpResponse>, key: &str, cx: &Context) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or_default();
            let text = err.message().unwrap_or_default();
            from_status(status, code, text, cx)
        }
        SdkError::TimeoutError(_) => (
            StoreErrorKind::Transient,
            format!("{} did not answer in time", cx.endpoint),
        ),
        SdkError::DispatchFailure(failure) => {
            let timeout = failure.is_timeout();
            let user = failure.is_user();
            connection(&err, timeout, user, cx)
        }
        SdkError::ResponseError(_) => (
            StoreErrorKind::Transient,
            format!(
                "the response from {} was cut short or unreadable: {}",
                cx.endpoint,
                DisplayErrorContext(&err)
            ),
        ),
        _ => (
            StoreErrorKind::Permanent,
            format!("request could not be made: {}", DisplayErrorContext(&err)),
        ),
    };
    StoreError::new(kind, key, message)
}

/// An HTTP error status (with the S3 error code when the response had a body).
pub(super) fn from_status(
    status: u16,
    code: &str,
    text: &str,
    cx: &Context,
) -> (StoreErrorKind, String) {
    use StoreErrorKind::*;
    let said = if text.is_empty() {
        String::new()
    } else {
        format!(" (server: {text})")
    };
    let b = &cx.bucket;
    // Servers differ in codes: Garage answers 403 AccessDenied with "Invalid signature" or
    // "No such key" where AWS and MinIO use the specific codes.
    let lower = text.to_ascii_lowercase();
    let code = match (status, code) {
        (403, "AccessDenied" | "") if lower.contains("signature") => "SignatureDoesNotMatch",
        (403, "AccessDenied" | "") if lower.contains("no such key") => "InvalidAccessKeyId",
        _ => code,
    };
    match (status, code) {
        (_, "NoSuchBucket") => (
            Permanent,
            format!(
                "bucket {b:?} does not exist at {}: create it, or fix the bucket name in the \
                 repository URL",
                cx.endpoint
            ),
        ),
        (404, _) => (NotFound, "object not found".to_string()),
        (_, "InvalidAccessKeyId") => (
            Permanent,
            format!(
                "bad credentials: the server does not know access key {:?} from {}",
                cx.access_key_id, cx.credentials_source
            ),
        ),
        (_, "SignatureDoesNotMatch") => (
            Permanent,
            format!(
                "bad credentials: the secret key from {} does not match access key {:?}{said}",
                cx.credentials_source, cx.access_key_id
            ),
        ),
        (_, "AuthorizationHeaderMalformed") | (301, _) | (_, "PermanentRedirect") => (
            Permanent,
            format!(
                "wrong region: the request was signed for region {:?}, which the server \
                 rejects{said}; pass the bucket's region with --s3-region",
                cx.region
            ),
        ),
        (403, _) => (
            Permanent,
            format!(
                "access denied: key {:?} lacks permission for this request on bucket {b:?}{said}",
                cx.access_key_id
            ),
        ),
        (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")
        | (408 | 429, _)
        | (500..=599, _) => (
            Transient,
            format!(
                "the server is unavailable or overloaded: HTTP {status} {code}{said}; retry later"
            ),
        ),
        (400, _) if text.to_ascii_lowercase().contains("region") => (
            Permanent,
            format!(
                "wrong region: the server rejects region {:?}{said}; pass the bucket's region \
                 with --s3-region",
                cx.region
            ),
        ),
        _ => (
            Permanent,
            format!("the server refused the request: HTTP {status} {code}{said}"),
        ),
    }
}

/// A request that got no HTTP response: say whether the name, the port, TLS or the network
/// is at fault.
fn connection(
    err: &(dyn StdError + 'static),
    timeout: bool,
    user: bool,
    cx: &Context,
) -> (StoreErrorKind, String) {
    use StoreErrorKind::*;
    // Match on the whole chain; quote only its innermost error, which says what happened.
    let lower = DisplayErrorContext(err).to_string().to_ascii_lowercase();
    let e = &cx.endpoint;
    let chain = chain(err);
    let detail = chain.last().map(|s| s.to_string()).unwrap_or_default();
    let io_kind = chain
        .iter()
        .find_map(|s| s.downcast_ref::<std::io::Error>().map(|io| io.kind()));
    let tls = chain.iter().any(|s| s.is::<rustls::Error>())
        || lower.contains("certificate")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message");
    if tls {
        let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
            "the server does not speak TLS on this port: use http:// or the server's TLS port"
        } else {
            "trust the server's CA with --s3-ca-file FILE (or, for a test setup only, \
             --s3-insecure)"
        };
        return (
            Permanent,
            format!("TLS handshake with {e} failed: {hint} ({detail})"),
        );
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        return (
            Transient,
            format!("cannot resolve the host name of {e}: check the endpoint URL and DNS"),
        );
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            return (
                Transient,
                format!(
                    "connection refused by {e}: is the S3 server running, and is the port right?"
                ),
            );
        }
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
            return (Transient, format!("connection to {e} was reset ({detail})"));
        }
        _ => {}
    }
    if timeout {
        return (
            Transient,
            format!(
                "no answer from {e} (connect timeout {} s): check the address and the network",
                cx.connect_timeout_secs
            ),
        );
    }
    if user {
        return (Permanent, format!("request to {e} is invalid: {detail}"));
    }
    (Transient, format!("cannot reach {e}: {detail}"))
}

/// The error and its sources; an `io::Error`'s payload counts as its next source.
fn chain<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
        if out.len() > 32 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            endpoint: "http://s3.test:9000".into(),
            bucket: "backups".into(),
            region: "garage".into(),
            access_key_id: "GK1".into(),
            credentials_source: "the credentials file /etc/creds".into(),
            connect_timeout_secs: 10,
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        use StoreErrorKind::*;
        let kind = |s, c| from_status(s, c, "", &cx()).0;
        assert_eq!(kind(404, "NoSuchKey"), NotFound);
        assert_eq!(kind(404, "NotFound"), NotFound);
        assert_eq!(
            kind(404, "NoSuchBucket"),
            Permanent,
            "a missing bucket is no missing object"
        );
        assert_eq!(kind(403, "AccessDenied"), Permanent);
        assert_eq!(kind(403, "InvalidAccessKeyId"), Permanent);
        assert_eq!(kind(503, "SlowDown"), Transient);
        assert_eq!(kind(500, ""), Transient);
        assert_eq!(kind(429, ""), Transient);
        assert_eq!(kind(400, "RequestTimeout"), Transient);
        assert_eq!(kind(400, "InvalidArgument"), Permanent);
        let (_, msg) = from_status(403, "SignatureDoesNotMatch", "", &cx());
        assert!(
            msg.contains("secret key") && msg.contains("/etc/creds"),
            "{msg}"
        );
        let (_, msg) = from_status(403, "AccessDenied", "Forbidden: Invalid signature", &cx());
        assert!(msg.starts_with("bad credentials: the secret key"), "{msg}");
        let (_, msg) = from_status(404, "NoSuchBucket", "", &cx());
        assert!(msg.contains("\"backups\" does not exist"), "{msg}");
    }
}
