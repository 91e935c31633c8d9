//! bakery-store: build contexts in S3.
//!
//! Keys are content addresses (`contexts/sha256-….tar.gz`), so an object that
//! exists is the right one: [`S3Store::upload_if_absent`] asks first and
//! sends nothing for an unchanged context. Downloads are streams, so the
//! agent unpacks while it downloads.
//!
//! Configuration is the original tool's: `S3_ENDPOINT` (host, or URL),
//! `S3_REGION`, `S3_BUCKET`, `S3_SSL`; credentials come from the standard AWS
//! chain (environment, profile, ECS task role, instance profile).

use std::path::Path;

use bakery_protocol::ContextKey;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

/// Where contexts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket (`S3_BUCKET`); contexts are stored under `contexts/` in it.
    pub bucket: String,
    /// A host (`s3.amazonaws.com`, `minio:9000`) or a URL. Unset: AWS's own.
    pub endpoint: Option<String>,
    /// `S3_REGION` (else `AWS_REGION`); unset, the client uses us-east-1.
    pub region: Option<String>,
    /// Whether a host-only endpoint is reached over HTTPS.
    pub ssl: bool,
}

impl S3Settings {
    /// Reads `S3_*` from the environment; `None` without `S3_BUCKET`.
    pub fn from_env() -> Option<S3Settings> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(S3Settings {
            bucket: get("S3_BUCKET")?,
            endpoint: get("S3_ENDPOINT"),
            region: get("S3_REGION").or_else(|| get("AWS_REGION")),
            ssl: get("S3_SSL").is_none_or(|v| v != "false"),
        })
    }

    /// The endpoint as a URL, scheme from `S3_SSL` unless given.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_ref().map(|e| {
            if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("{}://{e}", if self.ssl { "https" } else { "http" })
            }
        })
    }
}

/// Why a context could not be stored, checked or fetched.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// S3 (or the S3-compatible store) refused the request
    /// or could not be reached, after the SDK's retries.
    #[error("s3://{bucket}/{key} (at {endpoint}): {message}")]
    S3 {
        /// The bucket the request was for.
        bucket: String,
        /// The object's key, `contexts/sha256-<hex>.<ext>`.
        key: String,
        /// The endpoint URL, or `AWS S3` for AWS's own.
        endpoint: String,
        /// The SDK's error, with its causes.
        message: String,
    },
    /// The archive to upload could not be read.
    #[error("reading {path}: {message}")]
    File {
        /// The archive's path on this machine.
        path: String,
        /// The read error.
        message: String,
    },
}

/// An S3 client bound to the contexts bucket.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// The bucket and endpoint this client is bound to.
    pub settings: S3Settings,
}

impl S3Store {
    /// A client for `settings`, with the standard AWS credential chain, five tries per request
    /// with backoff, and bounded connect and read times; no request is sent to S3 here.
    pub async fn connect(settings: S3Settings) -> S3Store {
        // Five tries with exponential backoff (the SDK's standard mode):
        // rides out a restarting S3-compatible server or throttling.
        // Every attempt has 10 s to connect and 60 s to the first byte of
        // the answer; a body that stalls mid-transfer is cut by the SDK's
        // stalled-stream protection (on by default): an S3 endpoint that
        // accepts connections and never answers fails, it does not hang.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        } else {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(url) = settings.endpoint_url() {
            // Custom endpoints (MinIO, moto, s3s) rarely serve virtual-host buckets.
            config = config.endpoint_url(url).force_path_style(true);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings,
        }
    }

    fn error<E>(&self, key: &ContextKey, e: SdkError<E>) -> StoreError
    where
        E: std::error::Error + 'static,
    {
        StoreError::S3 {
            bucket: self.settings.bucket.clone(),
            key: key.to_string(),
            endpoint: self
                .settings
                .endpoint_url()
                .unwrap_or_else(|| "AWS S3".to_string()),
            message: DisplayErrorContext(&e).to_string(),
        }
    }

    /// Whether the object `key` is in the bucket (a `HeadObject`; a 404 is `false`, not an error).
    pub async fn exists(&self, key: &ContextKey) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key.to_string())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Uploads `file` under `key` unless it is there already. Returns whether
    /// anything was sent.
    pub async fn upload_if_absent(
        &self,
        key: &ContextKey,
        file: &Path,
    ) -> Result<bool, StoreError> {
        if self.exists(key).await? {
            return Ok(false);
        }
        let body = ByteStream::from_path(file)
            .await
            .map_err(|e| StoreError::File {
                path: file.display().to_string(),
                message: e.to_string(),
            })?;
        self.client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(true)
    }

    /// The object's bytes as an async reader.
    pub async fn download(
        &self,
        key: &ContextKey,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key.to_string())
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(out.body.into_async_read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_scheme_follows_s3_ssl() {
        let mut s = S3Settings {
            bucket: "b".into(),
            endpoint: Some("minio:9000".into()),
            region: None,
            ssl: false,
        };
        assert_eq!(s.endpoint_url().as_deref(), Some("http://minio:9000"));
        s.ssl = true;
        assert_eq!(s.endpoint_url().as_deref(), Some("https://minio:9000"));
        s.endpoint = Some("http://127.0.0.1:1234".into());
        assert_eq!(s.endpoint_url().as_deref(), Some("http://127.0.0.1:1234"));
    }
}
