//! Copying the per-arch images into the other repositories a build is
//! tagged in.
//!
//! An index can only reference manifests in its own repository, and
//! metadata-action with several `images:` tags one build in several (GHCR
//! and Docker Hub, say). Each per-arch manifest is copied byte for byte, so
//! its digest, and the index's, are the same in every repository. A blob the
//! target already has is not sent again; one in another repository of the
//! same registry is mounted (no bytes move); otherwise it is streamed from
//! the source to the target, never held in memory.

use futures_util::TryStreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::index::{at_digest, retry, IndexError, RetryPolicy};
use crate::verify::Checked;

#[derive(Deserialize)]
struct Manifest {
    config: Blob,
    #[serde(default)]
    layers: Vec<Blob>,
}

#[derive(Deserialize)]
struct Blob {
    digest: String,
    size: u64,
}

/// Where an image is read from and written to, with each side's login.
pub struct Copy<'a> {
    /// The registry client both sides go through.
    pub client: &'a Client,
    /// The repository the image is in now.
    pub from: &'a Reference,
    /// The login for reading `from`.
    pub from_auth: &'a RegistryAuth,
    /// The repository it is copied to.
    pub to: &'a Reference,
    /// The login for writing `to`.
    pub to_auth: &'a RegistryAuth,
    /// How each registry request is retried.
    pub policy: RetryPolicy,
}

impl Copy<'_> {
    /// Copies the manifest `image.digest` and every blob it names.
    pub async fn image(&self, image: &Checked) -> Result<(), IndexError> {
        let failed = |message: String| IndexError::Copy {
            arch: image.arch,
            digest: image.digest.clone(),
            to: repository(self.to),
            message,
        };
        let source = at_digest(self.from, &image.digest);
        let (body, _) = retry(self.policy, || {
            self.client.pull_manifest_raw(
                &source,
                self.from_auth,
                &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
            )
        })
        .await
        .map_err(&failed)?;
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("the manifest does not parse: {e}")))?;
        self.client
            .store_auth_if_needed(self.to.registry(), self.to_auth)
            .await;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.blob(blob).await.map_err(&failed)?;
        }
        let target = at_digest(self.to, &image.digest);
        let content_type = image
            .media_type
            .parse()
            .map_err(|_| failed(format!("media type `{}`", image.media_type)))?;
        retry(self.policy, || {
            self.client
                .push_manifest_raw(&target, body.clone(), Clone::clone(&content_type))
        })
        .await
        .map_err(&failed)?;
        Ok(())
    }

    /// One blob into the target: skipped when there, mounted when the
    /// registry is the same, streamed otherwise.
    async fn blob(&self, blob: &Blob) -> Result<(), String> {
        let digest = blob.digest.as_str();
        if retry(self.policy, || self.client.blob_exists(self.to, digest)).await? {
            return Ok(());
        }
        if self.from.registry() == self.to.registry()
            && self
                .client
                .mount_blob(self.to, self.from, digest)
                .await
                .is_ok()
            && retry(self.policy, || self.client.blob_exists(self.to, digest)).await?
        {
            return Ok(());
        }
        retry(self.policy, || async {
            let source = self.client.pull_blob_stream(self.from, digest).await?;
            let stream = source.stream.map_err(OciDistributionError::IoError);
            self.client
                .push_blob_stream(self.to, stream, digest, Some(blob.size))
                .await
        })
        .await
        .map(drop)
    }
}

/// `registry/repository`, as messages name it.
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}
