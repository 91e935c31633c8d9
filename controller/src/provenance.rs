//! SLSA v1 provenance attestations, attached the way BuildKit attaches
//! them, so that tools that read BuildKit's provenance (`docker buildx
//! imagetools inspect --format '{{json .Provenance}}'`, policy engines) find
//! ours: per pushed image, an OCI manifest whose one layer is an in-toto
//! statement (`application/vnd.in-toto+json`), listed in the multi-arch index
//! as `unknown/unknown` with `vnd.docker.reference.type:
//! attestation-manifest` and `vnd.docker.reference.digest: <the image>`.
//!
//! The statement is built here, not by the agent: the controller is the
//! party the build's own code cannot write to, and it knows the builder,
//! the bases (resolved by the platform check), the digests and the times.
//! It never holds a build-arg value or a secret: build args by name only.

use bakery_protocol::provenance::{Provenance, ProvenanceMode};
use bakery_protocol::spec::BuildSpec;
use bakery_protocol::{ContextKey, Platform};
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::verify::ResolvedBase;

/// The in-toto statement type (v1).
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What `buildDefinition.buildType` names: the page that says what our
/// external and internal parameters mean.
pub const BUILD_TYPE: &str = "https://github.com/example/bakery/blob/main/docs/provenance.md";
/// The statement layer's media type, as BuildKit writes it.
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// The annotation that marks an index entry as an attestation.
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The annotation that names the image an attestation is about.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Everything one image's statement records.
pub struct Facts<'a> {
    /// The build's id: the run's invocation id.
    pub build_id: &'a str,
    /// What the client asked for (mode and source).
    pub provenance: &'a Provenance,
    /// The image's repository (`registry/name`), its manifest digest and platform.
    pub repository: &'a str,
    /// The manifest digest (`sha256:…`).
    pub digest: &'a str,
    /// `linux/amd64`.
    pub platform: &'a str,
    /// What the agent built.
    pub spec: &'a BuildSpec,
    /// The context archive, by content.
    pub context: &'a ContextKey,
    /// Where the agent ran: says which builder built it.
    pub agent_platform: Platform,
    /// The images it was built on, resolved where the registry answered.
    pub bases: &'a [ResolvedBase],
    /// The build's start and end, Unix milliseconds.
    pub started_ms: u64,
    /// See `started_ms`.
    pub finished_ms: u64,
}

/// The builder an agent on `platform` runs, by name.
fn builder_kind(platform: Platform) -> &'static str {
    crate::platform::builder_of(platform).as_str()
}

/// The in-toto statement for one image.
pub fn statement(f: &Facts) -> Value {
    let hex = f.digest.strip_prefix("sha256:").unwrap_or(f.digest);
    let subject = json!({
        "name": format!("pkg:docker/{}?platform={}", f.repository, f.platform.replace('/', "%2F")),
        "digest": {"sha256": hex},
    });
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [subject],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external_parameters(f),
                "internalParameters": {
                    "builder": builder_kind(f.agent_platform),
                    "agentPlatform": f.agent_platform.as_str(),
                },
                "resolvedDependencies": dependencies(f),
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://github.com/example/bakery/controller@v{}", env!("CARGO_PKG_VERSION")),
                    "version": {
                        "bakery": env!("CARGO_PKG_VERSION"),
                        "builder": builder_kind(f.agent_platform),
                    },
                },
                "metadata": {
                    "invocationId": f.build_id,
                    "startedOn": rfc3339(f.started_ms),
                    "finishedOn": rfc3339(f.finished_ms),
                },
            },
        },
    })
}

/// What the build was asked to do: source, platform, build-arg names; with
/// `mode=max` also the Dockerfile, target and labels (public in the image
/// anyway).
fn external_parameters(f: &Facts) -> Value {
    let mut source = Map::new();
    for (name, value) in f.provenance.source.fields() {
        if let Some(value) = value {
            source.insert(name.into(), value.into());
        }
    }
    let mut out = Map::new();
    out.insert("source".into(), Value::Object(source));
    out.insert("platform".into(), f.spec.custom_platform.clone().into());
    out.insert(
        "buildArgs".into(),
        f.spec.build_args.keys().cloned().collect::<Vec<_>>().into(),
    );
    out.insert(
        "secrets".into(),
        f.spec
            .secrets
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>()
            .into(),
    );
    if f.provenance.mode == ProvenanceMode::Max {
        out.insert("dockerfile".into(), f.spec.dockerfile.clone().into());
        if let Some(target) = &f.spec.target {
            out.insert("target".into(), target.clone().into());
        }
        out.insert("labels".into(), json!(f.spec.labels));
    }
    Value::Object(out)
}

/// The source commit, the context archive and each base image.
fn dependencies(f: &Facts) -> Vec<Value> {
    let mut out = Vec::new();
    let source = &f.provenance.source;
    if let (Some(repository), Some(commit)) = (&source.repository, &source.commit) {
        out.push(json!({"uri": format!("git+{repository}"), "digest": {"gitCommit": commit}}));
    }
    out.push(json!({
        "name": "context",
        "uri": f.context.file_name(),
        "digest": {"sha256": f.context.sha256()},
    }));
    for base in f.bases {
        let mut entry = json!({"uri": format!("pkg:docker/{}", base.image)});
        if let Some(hex) = base
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
        {
            entry["digest"] = json!({"sha256": hex});
        }
        out.push(entry);
    }
    out
}

fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A blob to push: its digest and bytes.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:…`.
    pub digest: String,
    /// The content.
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&bytes),
            bytes,
        }
    }
}

/// One image's attestation manifest, ready to push.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The image it is about.
    pub for_digest: String,
    /// The config and statement blobs.
    pub blobs: Vec<Blob>,
    /// The manifest's bytes and digest.
    pub manifest: Blob,
}

impl Attestation {
    /// The attestation manifest over `statement`, about the image `for_digest`.
    pub fn new(statement: &Value, for_digest: &str) -> Attestation {
        let layer = Blob::new(serde_json::to_vec(statement).expect("json values serialise"));
        // As BuildKit: an image config with no platform, whose one diff id is
        // the statement (it is not compressed).
        let config = Blob::new(
            serde_json::to_vec(&json!({
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }))
            .expect("json values serialise"),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.bytes.len(),
            },
            "layers": [{
                "mediaType": IN_TOTO_MEDIA_TYPE,
                "digest": layer.digest,
                "size": layer.bytes.len(),
                "annotations": {"in-toto.io/predicate-type": PREDICATE_TYPE},
            }],
        });
        Attestation {
            for_digest: for_digest.to_string(),
            blobs: vec![config, layer],
            manifest: Blob::new(serde_json::to_vec(&manifest).expect("json values serialise")),
        }
    }

    /// Its entry in the multi-arch index.
    pub fn index_entry(&self) -> Value {
        json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": self.manifest.digest,
            "size": self.manifest.bytes.len(),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {
                REFERENCE_DIGEST: self.for_digest,
                REFERENCE_TYPE: "attestation-manifest",
            },
        })
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakery_protocol::provenance::Source;

    fn spec() -> BuildSpec {
        serde_json::from_value(json!({
            "platform": null, "dockerfile": "docker/Dockerfile", "target": "app",
            "build_args": {"NPM_TOKEN": "s3cret-value", "MODE": "prod"},
            "labels": {"team": "a"}, "env": {}, "pre_script": null, "post_script": null,
            "credentials": [], "cpu": null, "memory": null, "spot": false, "cache": {},
            "cache_from": [], "snapshot_mode": null, "use_new_run": false, "cleanup": false,
            "custom_platform": "linux/arm64", "no_push": false, "ignore_path": [],
            "extra_flags": []
        }))
        .unwrap()
    }

    #[test]
    fn a_statement_names_builder_source_bases_and_context_and_no_arg_value() {
        let provenance = Provenance {
            mode: ProvenanceMode::Min,
            source: Source {
                repository: Some("https://github.com/acme/app".into()),
                commit: Some("a".repeat(40)),
                config: None,
                run: None,
            },
        };
        let key: ContextKey = format!("contexts/sha256-{}.tar.gz", "c".repeat(64))
            .parse()
            .unwrap();
        let spec = spec();
        let bases = [ResolvedBase {
            image: "docker.io/library/alpine:3.20".into(),
            digest: Some(format!("sha256:{}", "b".repeat(64))),
        }];
        let facts = Facts {
            build_id: "b0123456789ab",
            provenance: &provenance,
            repository: "r.example/app",
            digest: &format!("sha256:{}", "d".repeat(64)),
            platform: "linux/arm64",
            spec: &spec,
            context: &key,
            agent_platform: Platform::Ecs,
            bases: &bases,
            started_ms: 0,
            finished_ms: 61_000,
        };
        let s = statement(&facts);
        let text = s.to_string();
        assert!(
            !text.contains("s3cret-value") && !text.contains("prod"),
            "{text}"
        );
        assert!(
            !text.contains("docker/Dockerfile"),
            "min leaves the definition out: {text}"
        );
        let p = &s["predicate"];
        assert_eq!(p["runDetails"]["builder"]["version"]["builder"], "kaniko");
        assert_eq!(
            p["runDetails"]["metadata"]["finishedOn"],
            "1970-01-01T00:01:01Z"
        );
        let deps = p["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(deps[0]["digest"]["gitCommit"], "a".repeat(40));
        assert_eq!(deps[1]["digest"]["sha256"], "c".repeat(64));
        assert_eq!(deps[2]["digest"]["sha256"], "b".repeat(64));
        assert_eq!(s["subject"][0]["digest"]["sha256"], "d".repeat(64));
        let max = Provenance {
            mode: ProvenanceMode::Max,
            ..provenance.clone()
        };
        let s = statement(&Facts {
            provenance: &max,
            ..facts
        });
        assert_eq!(
            s["predicate"]["buildDefinition"]["externalParameters"]["target"],
            "app"
        );
        assert!(!s.to_string().contains("s3cret-value"));
    }

    #[test]
    fn an_attestation_manifest_is_listed_as_buildkit_lists_it() {
        let a = Attestation::new(&json!({"_type": STATEMENT_TYPE}), "sha256:abc");
        let entry = a.index_entry();
        assert_eq!(entry["annotations"][REFERENCE_TYPE], "attestation-manifest");
        assert_eq!(entry["annotations"][REFERENCE_DIGEST], "sha256:abc");
        assert_eq!(entry["platform"]["os"], "unknown");
        let manifest: Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], a.blobs[1].digest.as_str());
        assert_eq!(manifest["config"]["digest"], a.blobs[0].digest.as_str());
    }
}
