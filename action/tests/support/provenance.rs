//! Reading a multi-arch index as a user's tools would: its images, and the
//! SLSA provenance attestations BuildKit-style beside them, each statement
//! checked with the in-toto attestation framework's own Python bindings
//! (PyPI `in-toto-attestation`: the Statement and SLSA Provenance v1 protos,
//! parsed strictly, then the framework's own `validate()`).

use std::process::Command;

use serde_json::Value;

/// The index's image entries (attestations left out).
pub fn image_entries(index: &Value) -> Vec<Value> {
    entries(index, false)
}

/// The index's attestation entries.
pub fn attestation_entries(index: &Value) -> Vec<Value> {
    entries(index, true)
}

fn entries(index: &Value, attestations: bool) -> Vec<Value> {
    index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .filter(|m| {
            (m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
                == attestations
        })
        .cloned()
        .collect()
}

/// Each image of the index at `repository` (`host/name`, plain HTTP) has
/// one provenance attestation, valid by the in-toto framework; returns the
/// statements, in the order of the images.
pub fn provenance_statements(repository: &str, index: &Value) -> Vec<Value> {
    let images = image_entries(index);
    let attestations = attestation_entries(index);
    assert_eq!(
        images.len(),
        attestations.len(),
        "one attestation per image: {index}"
    );
    let (host, name) = repository.split_once('/').expect("host/name");
    images
        .iter()
        .map(|image| {
            let entry = attestations
                .iter()
                .find(|a| a["annotations"]["vnd.docker.reference.digest"] == image["digest"])
                .unwrap_or_else(|| panic!("no attestation for {image}: {index}"));
            assert_eq!(entry["platform"]["os"], "unknown");
            let manifest = super::raw_manifest(&format!(
                "{repository}@{}",
                entry["digest"].as_str().unwrap()
            ));
            let layer = &manifest["layers"][0];
            assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
            assert_eq!(
                layer["annotations"]["in-toto.io/predicate-type"],
                "https://slsa.dev/provenance/v1"
            );
            let url = format!(
                "http://{host}/v2/{name}/blobs/{}",
                layer["digest"].as_str().unwrap()
            );
            let blob = Command::new("curl")
                .args(["-fsS", "--max-time", "20", &url])
                .output()
                .unwrap();
            assert!(blob.status.success(), "{url}");
            let statement: Value = serde_json::from_slice(&blob.stdout).unwrap();
            validate(&blob.stdout);
            assert_eq!(
                format!(
                    "sha256:{}",
                    statement["subject"][0]["digest"]["sha256"]
                        .as_str()
                        .unwrap()
                ),
                image["digest"].as_str().unwrap(),
                "the statement's subject is the image"
            );
            statement
        })
        .collect()
}

const VALIDATE: &str = r#"
import json, sys
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
doc = json.load(sys.stdin)
statement = json_format.ParseDict(doc, statement_pb2.Statement())
Statement.copy_from_pb(statement).validate()
assert doc["predicateType"] == "https://slsa.dev/provenance/v1", doc["predicateType"]
provenance = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
assert provenance.build_definition.build_type, "buildType"
assert provenance.run_details.builder.id, "builder.id"
for dep in provenance.build_definition.resolved_dependencies:
    assert dep.name or dep.uri or dep.digest, dep
print("valid")
"#;

fn validate(statement: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", VALIDATE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(statement).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "in-toto-attestation refuses the statement: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(statement)
    );
}
