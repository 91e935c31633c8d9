//! bakery-store: build contexts in S3.
//!
//! Keys are content addresses (`contexts/sha256-….tar.gz`), so an object that
//! exists is the right one: [`S3Store::upload_if_absent`] asks first and
//! sends nothing for an unchanged context. Downloads are streams, so the
//! agent unpacks while it downloads.
//!
//! Configuration is the original tool's: `S3_ENDPOINT` (host, or URL),
//! `S3_REGION`, `S3_BUCKET`, `S3_SSL`, and `S3_FORCE_PATH_STYLE`
//! ([`settings`] says how AWS's own endpoints differ from others');
//! credentials come from the standard AWS chain (environment, profile, ECS
//! task role, instance profile).

mod settings;

use std::path::Path;

pub use settings::S3Settings;

use bakery_protocol::ContextKey;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

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

/// How close to its lifecycle expiry an object is uploaded again.
pub const EXPIRY_MARGIN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether S3's `x-amz-expiration` (`expiry-date="Fri, 23 Dec 2012 00:00:00
/// GMT", rule-id="…"`) is within [`EXPIRY_MARGIN`] of `now`. A header that
/// does not parse says nothing: the object is used.
pub fn expires_soon(header: &str, now: std::time::SystemTime) -> bool {
    let Some(date) = header
        .split("expiry-date=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
    else {
        return false;
    };
    let Ok(at) = aws_sdk_s3::primitives::DateTime::from_str(
        date,
        aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
    ) else {
        return false;
    };
    let Ok(at) = std::time::SystemTime::try_from(at) else {
        return false;
    };
    at.duration_since(now)
        .map_or(true, |left| left < EXPIRY_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn an_object_about_to_expire_is_uploaded_again() {
        // Fri, 23 Dec 2012 00:00:00 GMT
        let expiry = UNIX_EPOCH + Duration::from_secs(1_356_220_800);
        let header = r#"expiry-date="Fri, 23 Dec 2012 00:00:00 GMT", rule-id="expire-contexts""#;
        assert!(expires_soon(header, expiry - Duration::from_secs(3600)));
        assert!(
            expires_soon(header, expiry + Duration::from_secs(1)),
            "past"
        );
        assert!(!expires_soon(
            header,
            expiry - Duration::from_secs(3 * 24 * 3600)
        ));
        assert!(
            !expires_soon("rule-id=\"x\"", SystemTime::now()),
            "no date: used"
        );
        assert!(!expires_soon("expiry-date=\"soon\"", SystemTime::now()));
    }
}

/// An S3 client bound to the contexts bucket.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// The bucket and endpoint this client is bound to, with the region
    /// it resolved.
    settings: S3Settings,
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
        let mut settings = settings;
        let region = settings
            .region
            .clone()
            .or_else(|| settings.endpoint_region());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let shared = loader.load().await;
        // The SDK's chain (AWS_REGION, profile, instance metadata) when none
        // was given; us-east-1, S3's default, when it finds none either.
        let region = shared
            .region()
            .map_or_else(|| "us-east-1".to_string(), ToString::to_string);
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .region(aws_config::Region::new(region.clone()));
        settings.region = Some(region);
        if let Some(url) = settings.custom_endpoint() {
            config = config
                .endpoint_url(url)
                .force_path_style(settings.use_path_style());
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings,
        }
    }

    /// Where this store is, with the region it resolved: what agents and
    /// clients are told, so that they need no region of their own.
    pub fn location(&self) -> bakery_protocol::api::S3Location {
        self.settings.location()
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

    /// Whether the object `key` is in the bucket (a `HeadObject`; a 404 is
    /// `false`, not an error). An object the bucket's lifecycle rule expires
    /// within [`EXPIRY_MARGIN`] counts as absent: uploading it again resets
    /// its age, where skipping the upload would have a build's agents find
    /// it gone.
    pub async fn exists(&self, key: &ContextKey) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key.to_string())
            .send()
            .await
        {
            Ok(out) => Ok(!out
                .expiration()
                .is_some_and(|e| expires_soon(e, std::time::SystemTime::now()))),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(false),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            // A policy that allows only s3:PutObject (the original tool's)
            // answers HeadObject with 403: upload, as that tool did, and say
            // what the check would save.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                eprintln!(
                    "warning: s3://{}/{key}: HeadObject is refused (403), so unchanged contexts are uploaded again; allow s3:GetObject and s3:ListBucket on the bucket to skip them",
                    self.settings.bucket
                );
                Ok(false)
            }
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
