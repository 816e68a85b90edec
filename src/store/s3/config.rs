//! What an S3 store needs to know: where (endpoint, region, bucket, prefix), how to connect
//! (addressing, TLS, timeouts, parallelism) and as whom (credentials).
//!
//! Credentials come from an AWS-format file (the shape of Velero's `cloud-credentials`
//! secret) or the standard `AWS_*` environment variables, never from the command line.

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Where the repository lives in a bucket: parsed from `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<S3Location> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::invalid(format!(
                "{url}: an S3 repository is written s3://BUCKET/PREFIX"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(Error::invalid(format!(
                "{url}: {bucket:?} is not a valid bucket name (3 to 63 lowercase letters, digits, \
                 '-' and '.')"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.contains("//") || prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(Error::invalid(format!(
                "{url}: the prefix {prefix:?} must be plain path components"
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An access key pair. The secret is wiped from memory on drop and never printed.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    /// Where they came from, for error messages ("the credentials file /etc/...").
    pub source: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    pub fn new(access_key_id: &str, secret_access_key: &str, source: &str) -> S3Credentials {
        S3Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: Zeroizing::new(secret_access_key.to_string()),
            session_token: None,
            source: source.to_string(),
        }
    }

    /// Reads profile `profile` of an AWS-format credentials file:
    ///
    /// ```text
    /// [default]
    /// aws_access_key_id=...
    /// aws_secret_access_key=...
    /// ```
    pub fn from_file(path: &Path, profile: &str) -> Result<S3Credentials> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                format!("cannot read the S3 credentials file {}", path.display()),
                e,
            )
        })?);
        let source = format!("the credentials file {}", path.display());
        let mut section = None::<String>;
        let mut found_profile = false;
        let (mut id, mut secret, mut token) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                let name = name.strip_prefix("profile ").unwrap_or(name).trim();
                found_profile |= name == profile;
                section = Some(name.to_string());
                continue;
            }
            if section.as_deref() != Some(profile) {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(Zeroizing::new(v)),
                "aws_session_token" => token = Some(Zeroizing::new(v)),
                _ => {}
            }
        }
        if !found_profile {
            return Err(Error::invalid(format!(
                "{source} has no [{profile}] section; it should hold [{profile}] with \
                 aws_access_key_id=... and aws_secret_access_key=..."
            )));
        }
        match (id, secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: token,
                source,
            }),
            _ => Err(Error::invalid(format!(
                "{source}: the [{profile}] section needs both aws_access_key_id and \
                 aws_secret_access_key"
            ))),
        }
    }

    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), if set.
    pub fn from_env() -> Option<S3Credentials> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = Zeroizing::new(std::env::var("AWS_SECRET_ACCESS_KEY").ok()?);
        if id.is_empty() || secret.is_empty() {
            return None;
        }
        Some(S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Zeroizing::new),
            source: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string(),
        })
    }

    /// The usual search: an explicit file, then the environment variables, then
    /// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`. The profile is `AWS_PROFILE` or
    /// `default`.
    pub fn discover(file: Option<&Path>) -> Result<S3Credentials> {
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
        if let Some(path) = file {
            return Self::from_file(path, &profile);
        }
        if let Some(c) = Self::from_env() {
            return Ok(c);
        }
        let shared = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
        if let Some(path) = shared.filter(|p| p.exists()) {
            return Self::from_file(&path, &profile);
        }
        Err(Error::invalid(
            "no S3 credentials: pass --s3-credentials-file FILE (an AWS credentials file with \
             [default] aws_access_key_id=... aws_secret_access_key=...), or set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ))
    }
}

/// Everything needed to open an S3 store.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    pub region: String,
    pub location: S3Location,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`: what MinIO and Garage expect
    /// unless they are set up with a wildcard domain. Off by default, as on AWS.
    pub path_style: bool,
    /// Extra PEM certificate(s) to trust, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For test setups only: it allows interception.
    pub insecure: bool,
    pub credentials: S3Credentials,
    /// Requests in flight at once for the engine's parallel stages (pack uploads, index
    /// loading).
    pub connections: usize,
    /// Attempts per request inside the SDK (1 = no SDK retries). Longer outages are the
    /// business of [`crate::store::RetryStore`].
    pub sdk_attempts: u32,
    pub connect_timeout: Duration,
    /// From sending a request to the first byte of its response, including the upload of
    /// its body: generous, as a 16 MiB part on a slow link takes a while.
    pub read_timeout: Duration,
    /// A transfer that moves no byte for this long is cut and retried.
    pub stall_grace: Duration,
    /// Objects at least this large go up in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
}

impl S3Config {
    pub const DEFAULT_REGION: &'static str = "us-east-1";

    pub fn new(endpoint: &str, location: S3Location, credentials: S3Credentials) -> S3Config {
        S3Config {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: Self::DEFAULT_REGION.to_string(),
            location,
            path_style: false,
            ca_file: None,
            insecure: false,
            credentials,
            connections: 4,
            sdk_attempts: 3,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            stall_grace: Duration::from_secs(60),
            multipart_threshold: 16 << 20,
            part_size: 16 << 20,
        }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<()> {
        let scheme_ok =
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
        if !scheme_ok {
            return Err(Error::invalid(format!(
                "S3 endpoint {:?}: give a URL such as https://minio.example:9000",
                self.endpoint
            )));
        }
        if self.endpoint.starts_with("http://") && (self.ca_file.is_some() || self.insecure) {
            return Err(Error::invalid(format!(
                "S3 endpoint {}: --s3-ca-file and --s3-insecure need an https:// endpoint",
                self.endpoint
            )));
        }
        if self.region.is_empty() {
            return Err(Error::invalid("the S3 region is empty"));
        }
        if self.part_size < 5 << 20 {
            return Err(Error::invalid("S3 parts must be at least 5 MiB"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("s3://backups/cluster-a/node-1/").unwrap();
        assert_eq!(l.bucket, "backups");
        assert_eq!(l.prefix, "cluster-a/node-1");
        assert_eq!(l.to_string(), "s3://backups/cluster-a/node-1");
        assert_eq!(S3Location::parse("s3://backups").unwrap().prefix, "");
        for bad in ["s3://", "s3://B", "s3://a/../b", "s3://ab/x//y", "/tmp/x"] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud");
        std::fs::write(
            &path,
            "# velero\n[other]\naws_access_key_id=X\naws_secret_access_key=Y\n\n[default]\n\
             aws_access_key_id = GK123\naws_secret_access_key=s3cr3t\n",
        )
        .unwrap();
        let c = S3Credentials::from_file(&path, "default").unwrap();
        assert_eq!(c.access_key_id, "GK123");
        assert_eq!(c.secret_access_key.as_str(), "s3cr3t");
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug hides the secret"
        );
        let err = S3Credentials::from_file(&path, "prod").unwrap_err();
        assert!(err.to_string().contains("no [prod] section"), "{err}");
        std::fs::write(&path, "[default]\naws_access_key_id=GK\n").unwrap();
        let err = S3Credentials::from_file(&path, "default").unwrap_err();
        assert!(err.to_string().contains("aws_secret_access_key"), "{err}");
    }
}
