//! Where the contexts bucket is and how to address it.
//!
//! AWS's own S3 is reached the way the SDK reaches it: the regional
//! endpoint of the bucket's region, virtual-hosted style. A request to
//! another region's endpoint (the global `s3.amazonaws.com` for a bucket in
//! ap-northeast-2, say) is answered `301 PermanentRedirect`, which the SDK
//! does not follow, so an `S3_ENDPOINT` naming an AWS host only supplies the
//! region when none is set. Other endpoints (MinIO, moto, Ceph) are used as
//! given, path-style unless `S3_FORCE_PATH_STYLE=false`.

use bakery_protocol::api::S3Location;

/// Where contexts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket holding `contexts/sha256-….tar.gz` objects.
    pub bucket: String,
    /// A host (`minio:9000`, `s3.eu-west-1.amazonaws.com`) or a URL. Unset:
    /// AWS's own, for the region.
    pub endpoint: Option<String>,
    /// The bucket's region. Unset: `AWS_REGION`, then the SDK's own chain
    /// (profile, instance metadata), then us-east-1.
    pub region: Option<String>,
    /// Whether a host-only endpoint is reached over HTTPS.
    pub ssl: bool,
    /// Path-style addressing (`host/bucket/key`). Unset: for endpoints other
    /// than AWS's; AWS's own is always virtual-hosted.
    pub path_style: Option<bool>,
}

impl S3Settings {
    /// Reads `S3_*` from the environment; `None` without `S3_BUCKET`.
    pub fn from_env() -> Option<S3Settings> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Some(S3Settings {
            bucket: get("S3_BUCKET")?,
            endpoint: get("S3_ENDPOINT"),
            region: get("S3_REGION").or_else(|| get("AWS_REGION")),
            ssl: get("S3_SSL").is_none_or(|v| v != "false"),
            path_style: get("S3_FORCE_PATH_STYLE").map(|v| v != "false"),
        })
    }

    /// The settings a controller announced (to clients and agents).
    pub fn from_location(location: &S3Location) -> S3Settings {
        S3Settings {
            bucket: location.bucket.clone(),
            endpoint: location.endpoint.clone(),
            region: location.region.clone(),
            ssl: location.ssl,
            path_style: location.path_style,
        }
    }

    /// What a controller announces: the same, with the region it resolved.
    pub fn location(&self) -> S3Location {
        S3Location {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            ssl: self.ssl,
            path_style: self.path_style,
        }
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

    /// The endpoint to configure: `None` for AWS's own S3 (the SDK resolves
    /// the regional endpoint), the URL otherwise.
    pub fn custom_endpoint(&self) -> Option<String> {
        self.endpoint_url().filter(|url| aws_host(url).is_none())
    }

    /// The region an AWS endpoint names (`s3.eu-west-1.amazonaws.com`,
    /// `s3-eu-west-1.amazonaws.com`, `s3.dualstack.eu-west-1…`), if any.
    pub fn endpoint_region(&self) -> Option<String> {
        let host = aws_host(&self.endpoint_url()?)?;
        let labels: Vec<&str> = host.split('.').collect();
        let region = match labels.as_slice() {
            ["s3", "dualstack", region, ..] | ["s3", region, ..] if region.contains('-') => region,
            [first, ..] => first.strip_prefix("s3-")?,
            [] => return None,
        };
        Some((*region).to_string()).filter(|r| r.contains('-') && *r != "external-1")
    }

    /// Path-style addressing for this endpoint.
    pub fn use_path_style(&self) -> bool {
        self.custom_endpoint().is_some() && self.path_style.unwrap_or(true)
    }
}

/// The host of `url` when it is one of AWS's S3 endpoints.
fn aws_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':']).next()?.to_ascii_lowercase();
    let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
    (aws && (host.starts_with("s3.") || host.starts_with("s3-"))).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> S3Settings {
        S3Settings {
            bucket: "b".into(),
            endpoint: Some(endpoint.into()),
            region: None,
            ssl: true,
            path_style: None,
        }
    }

    #[test]
    fn endpoint_scheme_follows_s3_ssl() {
        let mut s = with("minio:9000");
        s.ssl = false;
        assert_eq!(s.endpoint_url().as_deref(), Some("http://minio:9000"));
        s.ssl = true;
        assert_eq!(s.endpoint_url().as_deref(), Some("https://minio:9000"));
        s.endpoint = Some("http://127.0.0.1:1234".into());
        assert_eq!(s.endpoint_url().as_deref(), Some("http://127.0.0.1:1234"));
    }

    /// The Kubernetes example had `s3.amazonaws.com` (path-style, forced)
    /// with a bucket in ap-northeast-2: 301 to every request.
    #[test]
    fn aws_endpoints_are_left_to_the_sdk_and_others_are_path_style() {
        for aws in [
            "s3.amazonaws.com",
            "https://s3.ap-northeast-2.amazonaws.com",
            "s3-eu-west-1.amazonaws.com",
            "s3.dualstack.us-west-2.amazonaws.com",
            "s3.cn-north-1.amazonaws.com.cn",
        ] {
            let s = with(aws);
            assert_eq!(s.custom_endpoint(), None, "{aws}");
            assert!(!s.use_path_style(), "{aws}");
        }
        assert_eq!(with("s3.amazonaws.com").endpoint_region(), None);
        assert_eq!(
            with("https://s3.ap-northeast-2.amazonaws.com")
                .endpoint_region()
                .as_deref(),
            Some("ap-northeast-2")
        );
        assert_eq!(
            with("s3-eu-west-1.amazonaws.com")
                .endpoint_region()
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            with("s3.dualstack.us-west-2.amazonaws.com")
                .endpoint_region()
                .as_deref(),
            Some("us-west-2")
        );
        let minio = with("minio.internal:9000");
        assert_eq!(
            minio.custom_endpoint().as_deref(),
            Some("https://minio.internal:9000")
        );
        assert!(minio.use_path_style());
        let vhost = S3Settings {
            path_style: Some(false),
            ..with("minio.internal:9000")
        };
        assert!(!vhost.use_path_style(), "S3_FORCE_PATH_STYLE=false");
        // A look-alike is not AWS.
        assert!(with("s3.amazonaws.com.evil.example")
            .custom_endpoint()
            .is_some());
    }
}
