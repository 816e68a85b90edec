//! The S3 store: a repository in a bucket of any S3-compatible server (MinIO in production,
//! Garage in the tests), under a key prefix so that one bucket holds many repositories.
//!
//! The [`ObjectStore`] trait is blocking and the SDK is async, so the store owns a small tokio
//! runtime and blocks on it; each engine thread drives its own request, so several run at
//! once. Settings that matter with non-AWS servers:
//! - checksums only "when required": recent SDKs otherwise send aws-chunked CRC trailers that
//!   Garage and older MinIO reject;
//! - path-style addressing on request (`endpoint/bucket/key`);
//! - SDK retries for quick hiccups, timeouts, and stalled-stream protection that cuts a
//!   transfer only when it moves no byte for a while (slow links are not cut off).
//!
//! Objects of [`S3Config::multipart_threshold`] bytes or more (packs) go up in parts; a
//! failed multipart upload is aborted so no parts linger. A put is atomic (S3 makes an object
//! visible whole or not at all), and putting the same key with the same bytes again is
//! harmless, so a retried upload is idempotent.

mod config;
mod errors;
mod insecure;

pub use config::{S3Config, S3Credentials, S3Location};

use super::{ObjectInfo, ObjectStore, StoreError, StoreErrorKind, StoreResult};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// Objects in a bucket under a prefix.
pub struct S3Store {
    client: Client,
    runtime: Option<tokio::runtime::Runtime>,
    config: S3Config,
    cx: errors::Context,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks; an async caller may drop the store on a runtime thread.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Which object a multipart upload reads its parts from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

impl S3Store {
    /// Builds the client; makes no request (see [`S3Store::probe`] for a check).
    pub fn new(config: S3Config) -> crate::Result<S3Store> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostagent-s3")
            .enable_all()
            .build()
            .map_err(|e| crate::Error::io("cannot start the S3 client's runtime", e))?;
        let http = http_client(&config)?;
        let c = &config.credentials;
        let credentials = Credentials::new(
            &c.access_key_id,
            c.secret_access_key.as_str(),
            c.session_token.as_ref().map(|t| t.to_string()),
            None,
            "hostagent",
        );
        let sdk = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .credentials_provider(credentials)
            .http_client(http)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.sdk_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .read_timeout(config.read_timeout)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(config.stall_grace)
                    .build(),
            )
            .build();
        let cx = errors::Context {
            endpoint: config.endpoint.clone(),
            bucket: config.location.bucket.clone(),
            region: config.region.clone(),
            access_key_id: c.access_key_id.clone(),
            credentials_source: c.source.clone(),
            connect_timeout_secs: config.connect_timeout.as_secs(),
        };
        Ok(S3Store {
            client: Client::from_conf(sdk),
            runtime: Some(runtime),
            config,
            cx,
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
            .block_on(fut)
    }

    /// The bucket key of a store key.
    fn full_key(&self, key: &str) -> StoreResult<String> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !valid {
            return Err(StoreError::new(
                StoreErrorKind::Permanent,
                key,
                "invalid object key",
            ));
        }
        Ok(self.with_prefix(key))
    }

    fn with_prefix(&self, key: &str) -> String {
        match self.config.location.prefix.as_str() {
            "" => key.to_string(),
            p => format!("{p}/{key}"),
        }
    }

    fn bucket(&self) -> &str {
        &self.config.location.bucket
    }

    /// Checks that the repository location is usable: the server answers, the credentials
    /// are accepted, the bucket exists, and a test object can be written, read back and
    /// deleted. The error says which step failed and why.
    pub fn probe(&self) -> crate::Result<()> {
        let fail = |step: &str, e: StoreError| {
            crate::Error::from(StoreError::new(e.kind, "", e.message))
                .context(format!("{}: {step}", self.location()))
        };
        self.list("keys/")
            .map_err(|e| fail("cannot list the bucket", e))?;
        let key = format!(
            "probe-{}",
            hex::encode(crate::repo::crypto::random_bytes::<8>())
        );
        let data = b"hostagent write test";
        self.put(&key, data)
            .map_err(|e| fail("cannot write a test object", e))?;
        let back = self
            .get(&key)
            .map_err(|e| fail("cannot read back the test object", e))?;
        self.delete(&key)
            .map_err(|e| fail("cannot delete the test object", e))?;
        if back != data {
            return Err(crate::Error::corrupt(format!(
                "{}: the test object read back differs from what was written",
                self.location()
            )));
        }
        Ok(())
    }

    /// Keys of the multipart uploads begun under this store's prefix and neither completed
    /// nor aborted: parts the server keeps (and bills) until a lifecycle rule removes them.
    pub fn multipart_uploads(&self) -> StoreResult<Vec<String>> {
        let full = self.with_prefix("");
        let strip = full.len();
        self.block_on(async {
            let mut out = Vec::new();
            let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
            loop {
                let page = self
                    .client
                    .list_multipart_uploads()
                    .bucket(self.bucket())
                    .prefix(&full)
                    .set_key_marker(key_marker.take())
                    .set_upload_id_marker(id_marker.take())
                    .send()
                    .await
                    .map_err(|e| errors::map(e, "", &self.cx))?;
                for u in page.uploads() {
                    if let Some(k) = u.key().filter(|k| k.len() > strip) {
                        out.push(k[strip..].to_string());
                    }
                }
                if page.is_truncated() != Some(true) {
                    return Ok(out);
                }
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() {
                    return Ok(out);
                }
            }
        })
    }

    async fn put_object(
        &self,
        full: &str,
        key: &str,
        body: ByteStream,
        len: u64,
    ) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(full)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| errors::map(e, key, &self.cx))?;
        Ok(())
    }

    async fn body(source: Source<'_>, offset: u64, len: u64) -> Result<ByteStream, String> {
        match source {
            Source::Memory(data) => Ok(ByteStream::from(
                data[offset as usize..(offset + len) as usize].to_vec(),
            )),
            Source::File(path) => ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Uploads `len` bytes in parts; aborts the upload on any failure.
    async fn multipart(&self, key: &str, source: Source<'_>, len: u64) -> StoreResult<()> {
        let full = self.full_key(key)?;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(&full)
            .send()
            .await
            .map_err(|e| errors::map(e, key, &self.cx))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                key,
                "the server started a multipart upload without an upload ID",
            ));
        };
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1i32;
            while offset < len {
                let n = self.config.part_size.min(len - offset);
                let body = Self::body(source, offset, n)
                    .await
                    .map_err(|m| StoreError::new(StoreErrorKind::Permanent, key, m))?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(self.bucket())
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(n as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| errors::map(e, key, &self.cx))?;
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .part_number(number)
                        .build(),
                );
                offset += n;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(self.bucket())
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| errors::map(e, key, &self.cx))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: if the server is gone, its lifecycle rules must clean up instead.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(self.bucket())
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn collect(&self, key: &str, body: ByteStream) -> StoreResult<Vec<u8>> {
        body.collect()
            .await
            .map(|b| b.into_bytes().to_vec())
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Transient,
                    key,
                    format!("download from {} was cut short: {e}", self.cx.endpoint),
                )
            })
    }
}

fn http_client(config: &S3Config) -> crate::Result<SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
    if config.insecure {
        return Ok(insecure::client(config.connect_timeout));
    }
    let mut trust = TrustStore::default();
    if config.endpoint.starts_with("http://") {
        // No TLS: the system's roots are not needed, and a host without any (no
        // ca-certificates package) must not make the client fail.
        trust = trust.with_native_roots(false);
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            crate::Error::io(format!("cannot read the CA file {}", path.display()), e)
        })?;
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_default();
        if certs.is_empty() {
            return Err(crate::Error::invalid(format!(
                "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        trust = trust.with_pem_certificate(pem);
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| crate::Error::invalid(format!("TLS settings: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(tls)
        .build_https())
}

impl ObjectStore for S3Store {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        let full = self.full_key(key)?;
        self.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(self.bucket())
                .key(&full)
                .send()
                .await
                .map_err(|e| errors::map(e, key, &self.cx))?;
            self.collect(key, out.body).await
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let full = self.full_key(key)?;
        if len == 0 {
            self.stat(key)?;
            return Ok(Vec::new());
        }
        self.block_on(async {
            let sent = self
                .client
                .get_object()
                .bucket(self.bucket())
                .key(&full)
                .range(format!("bytes={offset}-{}", offset + len - 1))
                .send()
                .await;
            let out = match sent {
                Ok(out) => out,
                // The range starts at or past the end (or the object is empty).
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(errors::map(e, key, &self.cx)),
            };
            let mut data = self.collect(key, out.body).await?;
            // A server that ignores the Range header sends the whole object.
            if out.content_range.is_none() && data.len() as u64 > len {
                let start = (offset as usize).min(data.len());
                let end = (offset + len).min(data.len() as u64) as usize;
                data = data[start..end].to_vec();
            }
            Ok(data)
        })
    }

    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        let full = self.full_key(key)?;
        let len = data.len() as u64;
        self.block_on(async {
            if len >= self.config.multipart_threshold {
                return self.multipart(key, Source::Memory(data), len).await;
            }
            self.put_object(&full, key, ByteStream::from(data.to_vec()), len)
                .await
        })
    }

    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        let full = self.full_key(key)?;
        let len = std::fs::metadata(path)
            .map_err(|e| StoreError::from_io(key, &e))?
            .len();
        self.block_on(async {
            if len >= self.config.multipart_threshold {
                return self.multipart(key, Source::File(path), len).await;
            }
            let body = Self::body(Source::File(path), 0, len)
                .await
                .map_err(|m| StoreError::new(StoreErrorKind::Permanent, key, m))?;
            self.put_object(&full, key, body, len).await
        })?;
        // Only once stored: a failed upload leaves the file for a retry.
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    fn stat(&self, key: &str) -> StoreResult<u64> {
        let full = self.full_key(key)?;
        self.block_on(async {
            let out = self
                .client
                .head_object()
                .bucket(self.bucket())
                .key(&full)
                .send()
                .await
                .map_err(|e| errors::map(e, key, &self.cx))?;
            Ok(out.content_length.unwrap_or(0).max(0) as u64)
        })
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        let full = self.full_key(key)?;
        let result = self.block_on(async {
            self.client
                .delete_object()
                .bucket(self.bucket())
                .key(&full)
                .send()
                .await
                .map_err(|e| errors::map(e, key, &self.cx))
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let full = self.with_prefix(prefix);
        let strip = self.with_prefix("").len();
        self.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(&full)
                .into_paginator()
                .send();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| errors::map(e, prefix, &self.cx))?;
                for o in page.contents() {
                    let Some(k) = o.key() else { continue };
                    if k.len() > strip && k.starts_with(&full) {
                        out.push(ObjectInfo {
                            key: k[strip..].to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    fn parallelism(&self) -> usize {
        self.config.connections.max(1)
    }

    fn location(&self) -> String {
        format!("{} at {}", self.config.location, self.config.endpoint)
    }
}
