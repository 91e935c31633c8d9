//! Joining per-arch images into one multi-arch index.
//!
//! The index pins the exact digests the agents reported (the original tool
//! re-pulled the per-arch tags, which a concurrent push could have moved).
//! Its type follows the per-arch manifests: an OCI image index over OCI
//! manifests, a Docker manifest list over Docker v2 manifests. Each entry's
//! `platform` is what the image's own config says, read back and checked
//! against the arch asked for ([`crate::verify`]): never assumed. The body
//! is built and hashed here, so the digest we report is the one we pushed.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bakery_protocol::spec::Credential;
use bakery_protocol::Arch;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::provenance::Attestation;
use crate::replicate::repository;

/// Why the multi-arch index (or a copy of the per-arch images) could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A destination or tag is not an image reference: the reference, and why.
    #[error("`{0}` is not an image reference: {1}")]
    Reference(String, String),
    /// A per-arch manifest could not be read back from the registry.
    #[error("reading the {arch} manifest {digest} from {repo}: {message}")]
    Read {
        /// The arch whose image it is.
        arch: Arch,
        /// The manifest digest the agent reported.
        digest: String,
        /// The repository it was read from.
        repo: String,
        /// The registry client's error.
        message: String,
    },
    /// A per-arch manifest is of a type an index cannot list
    /// (neither an OCI nor a Docker v2 image manifest).
    #[error(
        "the {arch} manifest {digest} has media type `{media_type}`, which cannot go in an index"
    )]
    MediaType {
        /// The arch whose image it is.
        arch: Arch,
        /// The manifest digest the agent reported.
        digest: String,
        /// The media type the registry gave.
        media_type: String,
    },
    /// The index could not be pushed to a tag.
    #[error("pushing the index to {dest}: {message}")]
    Push {
        /// The tag it was pushed to.
        dest: String,
        /// The registry client's error.
        message: String,
    },
    /// Copying a per-arch image into another repository the build is
    /// tagged in.
    #[error("copying the {arch} image {digest} to {to}: {message}")]
    Copy {
        /// The arch whose image it is.
        arch: Arch,
        /// The manifest digest.
        digest: String,
        /// The repository it was being copied to.
        to: String,
        /// The registry client's error.
        message: String,
    },
    /// A per-arch image's config (which holds its platform) could not be read.
    #[error("reading the config of the {arch} image {digest}: {message}")]
    Config {
        /// The arch whose image it is.
        arch: Arch,
        /// The manifest digest.
        digest: String,
        /// The registry client's error, or why the config does not parse.
        message: String,
    },
    /// The image is not of the architecture it was built for.
    #[error("the image is {found}")]
    WrongPlatform {
        /// The arch it was built for.
        arch: Arch,
        /// The platform its config states (`linux/amd64`).
        found: String,
    },
    /// The registry client for the index could not be set up.
    #[error("preparing the registry client for the index: {0}")]
    Client(String),
}

/// How registry requests are retried: transient failures only (no answer,
/// 5xx, 429), with exponential backoff and jitter, and no new try once
/// `patience` has passed since the first began. So one registry operation
/// gives up within `patience` plus one try (at most REGISTRY_TIMEOUT to
/// connect and between reads): a registry that never answers costs about
/// that, not `attempts` × REGISTRY_TIMEOUT (6.5 minutes before).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: usize,
    /// The wait before the first retry; each later one waits longer, with jitter.
    pub first_delay: Duration,
    /// No try starts later than this after the first.
    pub patience: Duration,
}

impl Default for RetryPolicy {
    /// About 30 s of patience: a registry restarting or a load balancer
    /// failing over comes back within that; a registry that is down stays down.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            patience: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
    }
}

/// The client that writes one build's index: plain HTTP to the insecure
/// registries (the destination's own included when it is local).
///
/// Blocking, and slow enough to matter: oci-client builds two HTTP clients,
/// each reading and parsing the system's CA certificates (~50 ms of CPU on
/// the bench machine). The supervisor makes it on a blocking thread while
/// the agents build, so it is ready when the last arch has pushed.
///
/// Every request has `timeout` to connect and, once connected, to go quiet:
/// a registry that accepts connections and never answers is a failed try
/// (retried like any other), not a build stuck writing its index.
pub fn registry_client(destination: &str, insecure: &[String], timeout: Duration) -> Client {
    let mut http_hosts = insecure.to_vec();
    if let Ok(reference) = destination.parse::<Reference>() {
        if bakery_protocol::registry::is_insecure(reference.registry(), insecure) {
            http_hosts.push(reference.registry().to_string());
        }
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(http_hosts),
        connect_timeout: Some(timeout),
        read_timeout: Some(timeout),
        ..ClientConfig::default()
    })
}

/// The login for `registry` among `credentials`, or none.
pub fn auth_for(credentials: &[Credential], registry: &str) -> RegistryAuth {
    credentials
        .iter()
        .find(|c| {
            c.registry == registry || (registry == "docker.io" && c.registry.contains("docker.io"))
        })
        .map_or(RegistryAuth::Anonymous, |c| {
            RegistryAuth::Basic(c.username.clone(), c.password.expose().to_string())
        })
}

/// The manifest `digest` in `repo`'s repository.
pub(crate) fn at_digest(repo: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        repo.registry().to_string(),
        repo.repository().to_string(),
        digest.to_string(),
    )
}

/// The destination as a reference.
pub fn parse_reference(destination: &str) -> Result<Reference, IndexError> {
    destination.parse().map_err(|e: oci_client::ParseError| {
        IndexError::Reference(destination.into(), e.to_string())
    })
}

/// Checks `entries` (arch, manifest digest) with [`crate::verify::check`]
/// and writes the index over them: [`write_checked`]. `client` is
/// [`registry_client`]'s for `destination`.
pub async fn write_index(
    client: &Client,
    destination: &str,
    extra_tags: &[String],
    entries: &[(Arch, String)],
    credentials: &[Credential],
    policy: RetryPolicy,
) -> Result<String, IndexError> {
    let reference = parse_reference(destination)?;
    let auth = auth_for(credentials, reference.registry());
    let mut checked = Vec::new();
    for (arch, digest) in entries {
        checked.push(crate::verify::check(client, &reference, *arch, digest, &auth, policy).await?);
    }
    write_checked(
        client,
        destination,
        extra_tags,
        &checked,
        &Extras::default(),
        credentials,
        policy,
    )
    .await
}

/// Writes the index at `destination` and at each of `extra_tags` over
/// manifests whose platform was checked, each entry's `platform` as its
/// image's config says, and returns its digest. A tag in another
/// repository gets the per-arch images copied there first
/// ([`crate::replicate`]), so the index is the same bytes everywhere. Each
/// of `extras`' attestations is pushed into every repository the index is,
/// and listed after the images (which makes the index an OCI index).
pub async fn write_checked(
    client: &Client,
    destination: &str,
    extra_tags: &[String],
    checked: &[crate::verify::Checked],
    extras: &Extras,
    credentials: &[Credential],
    policy: RetryPolicy,
) -> Result<String, IndexError> {
    let reference = parse_reference(destination)?;
    let auth = &auth_for(credentials, reference.registry());
    let (index_type, body) = index_document(checked, extras);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let content_type = index_type
        .parse()
        .expect("media types are valid header values");
    client
        .store_auth_if_needed(reference.registry(), auth)
        .await;
    let mut targets = vec![(reference.clone(), destination.to_string())];
    for tag in extra_tags {
        targets.push((parse_reference(tag)?, tag.clone()));
    }
    let mut holding = vec![repository(&reference)];
    for (target, name) in &targets {
        if !holding.contains(&repository(target)) {
            let to_auth = auth_for(credentials, target.registry());
            let copy = crate::replicate::Copy {
                client,
                from: &reference,
                from_auth: auth,
                to: target,
                to_auth: &to_auth,
                policy,
            };
            for image in checked {
                copy.image(image).await?;
            }
            holding.push(repository(target));
            push_attestations(client, target, &extras.attestations, policy).await?;
        } else if target == &reference {
            push_attestations(client, target, &extras.attestations, policy).await?;
        }
        retry(policy, || {
            client.push_manifest_raw(target, body.clone(), Clone::clone(&content_type))
        })
        .await
        .map_err(|e| IndexError::Push {
            dest: name.clone(),
            message: e,
        })?;
    }
    Ok(digest)
}

/// The index itself: its media type and JSON, listing `checked`'s images
/// (with their annotations) and the attestations. A Docker manifest list
/// unless OCI's annotations or attestations need an OCI index.
fn index_document(checked: &[crate::verify::Checked], extras: &Extras) -> (&'static str, Vec<u8>) {
    let attestations = &extras.attestations;
    let mut manifests: Vec<serde_json::Value> = checked
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut entry = json!({
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.size,
                "platform": c.platform.to_json(),
            });
            if let Some(a) = extras
                .descriptor_annotations
                .get(i)
                .filter(|a| !a.is_empty())
            {
                entry["annotations"] = json!(a);
            }
            entry
        })
        .collect();
    manifests.extend(attestations.iter().map(Attestation::index_entry));
    let index_type = if attestations.is_empty()
        && extras.index_annotations.is_empty()
        && extras.descriptor_annotations.iter().all(BTreeMap::is_empty)
        && checked
            .iter()
            .all(|c| c.media_type == IMAGE_MANIFEST_MEDIA_TYPE)
    {
        IMAGE_MANIFEST_LIST_MEDIA_TYPE
    } else {
        OCI_IMAGE_INDEX_MEDIA_TYPE
    };
    let mut index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests});
    if !extras.index_annotations.is_empty() {
        index["annotations"] = json!(extras.index_annotations);
    }
    let body = serde_json::to_vec(&index).expect("json values serialise");
    (index_type, body)
}

/// What an index holds besides its images.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Provenance attestations, one per image.
    pub attestations: Vec<Attestation>,
    /// Annotations on the index itself.
    pub index_annotations: BTreeMap<String, String>,
    /// Annotations on each image's entry, in the order of the images.
    pub descriptor_annotations: Vec<BTreeMap<String, String>>,
}

/// Pushes each attestation's blobs and manifest (by digest) into `target`'s repository.
async fn push_attestations(
    client: &Client,
    target: &Reference,
    attestations: &[Attestation],
    policy: RetryPolicy,
) -> Result<(), IndexError> {
    let failed = |e: String| IndexError::Push {
        dest: format!("{} (provenance attestation)", repository(target)),
        message: e,
    };
    let content_type = OCI_IMAGE_MEDIA_TYPE
        .parse()
        .expect("media types are valid header values");
    for a in attestations {
        for blob in &a.blobs {
            retry(policy, || {
                client.push_blob(target, blob.bytes.clone(), &blob.digest)
            })
            .await
            .map_err(failed)?;
        }
        let at = at_digest(target, &a.manifest.digest);
        retry(policy, || {
            client.push_manifest_raw(&at, a.manifest.bytes.clone(), Clone::clone(&content_type))
        })
        .await
        .map_err(failed)?;
    }
    Ok(())
}

/// Runs `call` under `policy`; the error, when it comes, says how many
/// tries it took and what the last one answered.
pub(crate) async fn retry<T, F, Fut>(policy: RetryPolicy, call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut tries = 1;
    let started = std::time::Instant::now();
    call.retry(policy.backoff())
        .when(|e| is_transient(e) && started.elapsed() < policy.patience)
        .notify(|e, pause| {
            tries += 1;
            tracing::warn!("registry request failed, retrying in {pause:?}: {e}");
        })
        .await
        .map_err(|e| {
            let transient = is_transient(&e);
            let e = describe(&e);
            if transient {
                format!(
                    "{e} (gave up after {tries} attempt{} in {}s)",
                    if tries == 1 { "" } else { "s" },
                    started.elapsed().as_secs()
                )
            } else {
                e
            }
        })
}

/// Worth another try: no answer at all, a server error, or "too many requests".
fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// reqwest's own message ("error sending request") hides the cause
/// ("Connection refused"): walk the chain.
fn describe(e: &OciDistributionError) -> String {
    bakery_protocol::error_chain::flatten(e)
}
