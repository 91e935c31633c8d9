//! Architecture truth: a pushed per-arch image is the architecture it was
//! built for, or its arch fails.
//!
//! A builder asked for linux/arm64 on a base image that has no arm64
//! variant falls back to the one it has, prints a warning in the middle of
//! the log, and pushes amd64 binaries; an index over it would publish them
//! under `linux/arm64`. So before the index is written, each pushed image's
//! config is read back from the registry and its `os`, `architecture` (and
//! `variant`, for arm64, where the config has one) checked against the arch
//! asked for; the index's entries take their `platform` from what was
//! read, never from what was asked. The check reads the registry, not the
//! builder's output, so Kaniko and buildah go through the same one.

use bakery_protocol::image_platform::ImagePlatform;
use bakery_protocol::Arch;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::index::{retry, IndexError, RetryPolicy};

/// A per-arch manifest that was read back and is of its arch.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The arch it was built for, and is.
    pub arch: Arch,
    /// The manifest digest.
    pub digest: String,
    /// The manifest's media type, for the index entry.
    pub media_type: String,
    /// The manifest's length in bytes, for the index entry.
    pub size: usize,
    /// The platform the image's config states, for the index entry.
    pub platform: ImagePlatform,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// Reads the manifest `digest` in `repo`'s repository and its config, and
/// checks the image is linux/`arch`.
pub async fn check(
    client: &Client,
    repo: &Reference,
    arch: Arch,
    digest: &str,
    auth: &RegistryAuth,
    policy: RetryPolicy,
) -> Result<Checked, IndexError> {
    let by_digest = crate::index::at_digest(repo, digest);
    let (body, _) = retry(policy, || {
        client.pull_manifest_raw(
            &by_digest,
            auth,
            &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
        )
    })
    .await
    .map_err(|e| IndexError::Read {
        arch,
        digest: digest.to_string(),
        repo: format!("{}/{}", repo.registry(), repo.repository()),
        message: e,
    })?;
    let config_error = |message: String| IndexError::Config {
        arch,
        digest: digest.to_string(),
        message,
    };
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| config_error(format!("the manifest does not parse: {e}")))?;
    let media_type = manifest
        .media_type
        .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
    if media_type != OCI_IMAGE_MEDIA_TYPE && media_type != IMAGE_MANIFEST_MEDIA_TYPE {
        return Err(IndexError::MediaType {
            arch,
            digest: digest.to_string(),
            media_type,
        });
    }
    let config = retry(policy, || async {
        let mut out = Vec::new();
        client
            .pull_blob(&by_digest, manifest.config.digest.as_str(), &mut out)
            .await
            .map(|()| out)
    })
    .await
    .map_err(config_error)?;
    let platform: ImagePlatform = serde_json::from_slice(&config)
        .map_err(|e| config_error(format!("the config does not parse: {e}")))?;
    if !platform.is(arch) {
        return Err(IndexError::WrongPlatform {
            arch,
            found: platform.to_string(),
        });
    }
    Ok(Checked {
        arch,
        digest: digest.to_string(),
        media_type,
        size: body.len(),
        platform,
    })
}

/// What an image offers: its platforms, and whether it is an index.
#[derive(Debug, Clone)]
pub struct Found {
    /// Whether the image is an index (a list of platforms) rather than one image.
    pub index: bool,
    /// The platforms it offers: an index's entries, or a single image's own.
    pub platforms: Vec<ImagePlatform>,
    /// The digest of the manifest (or index) the reference resolved to.
    pub digest: String,
}

impl Found {
    /// Whether a build for `wanted` gets an image of that platform from it.
    pub fn serves(&self, wanted: &ImagePlatform) -> bool {
        self.platforms.iter().any(|p| p.satisfies(wanted))
    }

    /// Why a build for `wanted` would get another platform from `image`.
    pub fn shortfall(&self, image: &str, wanted: &ImagePlatform) -> String {
        let have: Vec<String> = self.platforms.iter().map(ToString::to_string).collect();
        if self.index {
            format!(
                "base image {image} has no {wanted} variant (it has {})",
                have.join(", ")
            )
        } else {
            format!(
                "base image {image} has no {wanted} variant (it is a single {} image)",
                have.join(", ")
            )
        }
    }
}

/// The platforms `image` (a tag or digest reference) has: an index's
/// entries (attestations left out), or a single image's config.
pub async fn platforms_of(
    client: &Client,
    image: &str,
    auth: &RegistryAuth,
) -> Result<Found, String> {
    let reference: Reference = image.parse().map_err(|e| format!("{image}: {e}"))?;
    let accepted = [
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
    ];
    let (body, _) = client
        .pull_manifest_raw(&reference, auth, &accepted)
        .await
        .map_err(|e| format!("{image}: {e}"))?;
    let resolved = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{image}: {e}"))?;
    if let Some(entries) = value.get("manifests").and_then(|m| m.as_array()) {
        let mut platforms: Vec<ImagePlatform> = Vec::new();
        for entry in entries {
            let Some(p) = entry.get("platform") else {
                continue;
            };
            let Ok(p) = serde_json::from_value::<ImagePlatform>(p.clone()) else {
                continue;
            };
            // Attestation manifests are listed as unknown/unknown.
            if p.os != "unknown" && !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        return Ok(Found {
            index: true,
            platforms,
            digest: resolved,
        });
    }
    let digest = value
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(|d| d.as_str())
        .ok_or_else(|| format!("{image}: a manifest without a config"))?
        .to_string();
    let mut config = Vec::new();
    client
        .pull_blob(&reference, digest.as_str(), &mut config)
        .await
        .map_err(|e| format!("{image}: {e}"))?;
    let platform: ImagePlatform =
        serde_json::from_slice(&config).map_err(|e| format!("{image}: {e}"))?;
    Ok(Found {
        index: false,
        platforms: vec![platform],
        digest: resolved,
    })
}

/// A base image as the check found it: its reference and, when the
/// registry answered, the digest the reference resolved to (for the
/// provenance attestation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBase {
    /// The reference the Dockerfile names.
    pub image: String,
    /// `sha256:…` of what it resolved to; `None` when it could not be read.
    pub digest: Option<String>,
}

/// Checks the images a build says it was built on (`bases`, the final
/// stage's first) serve linux/`arch`: a builder that falls back to another
/// platform's base may still write `arch` into the config it pushes (buildah
/// does), so the config alone does not tell. A base that cannot be read is
/// passed over. Each base as resolved, or the first one that falls short,
/// and why.
pub async fn check_bases(
    client: &Client,
    bases: &[String],
    arch: Arch,
    auth: impl Fn(&str) -> RegistryAuth,
) -> Result<Vec<ResolvedBase>, (String, String)> {
    let wanted = ImagePlatform::parse(arch.platform());
    let mut resolved = Vec::new();
    for base in bases {
        let host = bakery_protocol::reference::registry_of(base);
        let digest = match platforms_of(client, base, &auth(host)).await {
            Ok(found) if !found.serves(&wanted) => {
                let first = found
                    .platforms
                    .first()
                    .map_or_else(|| "another platform".into(), ToString::to_string);
                return Err((first, found.shortfall(base, &wanted)));
            }
            Ok(found) => Some(found.digest),
            Err(e) => {
                tracing::debug!("cannot check base image {e}");
                None
            }
        };
        resolved.push(ResolvedBase {
            image: base.clone(),
            digest,
        });
    }
    Ok(resolved)
}
