//! The GitHub Action and the GitLab component: every input is declared with a
//! description, used, and reaches bakery as the variable bakery reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// Every `BAKERY_*` / `CONTROLLER_URL` / `LOG_FORMAT` variable that `bakery build --help` lists.
fn variables_bakery_reads() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .args(["build", "--help"])
        .output()
        .unwrap();
    // Help text wraps `[env: NAME=]` across lines; join it back.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn action_yml_declares_uses_and_passes_every_input() {
    let text = std::fs::read_to_string(root().join("action.yml")).unwrap();
    let action = yaml(&text);
    let runs = serde_json::to_string(&action["runs"]).unwrap();
    assert_eq!(action["runs"]["using"], "composite");
    for (name, input) in action["inputs"].as_object().unwrap() {
        assert!(
            !input["description"].as_str().unwrap_or("").is_empty(),
            "input {name} has no description"
        );
        assert!(
            runs.contains(&format!("inputs.{name} "))
                || runs.contains(&format!("inputs.{name} ||"))
                || runs.contains(&format!("inputs.{name}}}")),
            "input {name} is never used: {runs}"
        );
    }
    for (name, output) in action["outputs"].as_object().unwrap() {
        assert_eq!(
            output["value"],
            format!("${{{{ steps.build.outputs.{name} }}}}")
        );
        assert!(!output["description"].as_str().unwrap().is_empty());
    }
    // Inputs named as docker/build-push-action names them.
    for name in [
        "context",
        "file",
        "tags",
        "platforms",
        "build-args",
        "labels",
        "target",
    ] {
        assert!(action["inputs"].get(name).is_some(), "{name}");
    }
    let help = variables_bakery_reads();
    for var in [
        "CONTROLLER_URL",
        "BAKERY_CONFIG",
        "BAKERY_COMPOSE",
        "BAKERY_SERVICES",
        "BAKERY_ASYNC",
        "BAKERY_TAGS",
        "BAKERY_PLATFORMS",
        "BAKERY_BUILD_ARGS",
        "BAKERY_LABELS",
        "BAKERY_CONTEXT",
        "BAKERY_FILE",
        "BAKERY_TARGET",
        "LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("env: {var}")),
            "bakery does not read {var}"
        );
    }
}

#[test]
fn the_action_build_step_maps_inputs_to_bakery() {
    let stub = tempfile::tempdir().unwrap();
    let dump = stub.path().join("dump");
    std::fs::write(
        stub.path().join("bakery"),
        format!(
            "#!/bin/sh\n{{ echo \"args=$*\"; for v in BAKERY_TAGS BAKERY_PLATFORMS BAKERY_BUILD_ARGS BAKERY_ASYNC BAKERY_CONFIG BAKERY_CONTEXT; do [ -n \"$(printenv $v)\" ] && printf '%s=%s\\n' $v \"$(printenv $v)\"; done; }} > {}\n",
            dump.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(stub.path().join("bakery"))
        .status()
        .unwrap();
    let status = Command::new("bash")
        .arg(root().join("scripts/action-build"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
        .env("CONTROLLER_URL", "https://bakery.example.com")
        .env("INPUT_CONFIG", "")
        .env("INPUT_TAGS", "r.io/app:1\nr.io/app:latest\n")
        .env("INPUT_PLATFORMS", "linux/amd64,linux/arm64")
        .env("INPUT_BUILD_ARGS", "A=1\n\nB=two words\n")
        .env("INPUT_ASYNC", "true")
        .env("INPUT_CONTEXT", ".")
        .status()
        .unwrap();
    assert!(status.success());
    let dumped = std::fs::read_to_string(dump).unwrap();
    assert!(dumped.contains("args=build\n"), "{dumped}");
    assert!(
        dumped.contains("BAKERY_TAGS=r.io/app:1,r.io/app:latest\n"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_PLATFORMS=linux/amd64,linux/arm64\n"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_BUILD_ARGS=A=1\nB=two words\n"),
        "{dumped}"
    );
    assert!(dumped.contains("BAKERY_ASYNC=true\n"), "{dumped}");
    assert!(
        !dumped.contains("BAKERY_CONFIG"),
        "empty inputs stay unset: {dumped}"
    );
}

#[test]
fn gitlab_component_declares_typed_documented_inputs_and_uses_them() {
    let text = std::fs::read_to_string(root().join("templates/bakery.yml")).unwrap();
    let (spec_text, job_text) = text.split_once("\n---\n").expect("spec and job documents");
    let spec = yaml(spec_text);
    let help = variables_bakery_reads();
    for (name, input) in spec["spec"]["inputs"].as_object().unwrap() {
        assert!(
            !input["description"].as_str().unwrap_or("").is_empty(),
            "{name}"
        );
        let ty = input["type"].as_str().unwrap_or("string");
        assert!(
            ["string", "boolean", "number", "array"].contains(&ty),
            "{name}: {ty}"
        );
        assert!(
            job_text.contains(&format!("$[[ inputs.{name} ]]")),
            "input {name} is never used"
        );
    }
    let job = yaml(
        &job_text
            .replace("$[[", "\"$[[")
            .replace("]]", "]]\"")
            .replace("\"\"$[[", "\"$[[")
            .replace("]]\"\"", "]]\""),
    );
    let job = job.as_object().unwrap().values().next().unwrap().clone();
    assert!(job["script"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "bakery build"));
    assert_eq!(
        job["artifacts"]["reports"]["dotenv"],
        "$[[ inputs.dotenv ]]"
    );
    for var in job["variables"].as_object().unwrap().keys() {
        if var != "BAKERY_DOTENV" {
            assert!(
                help.contains(&format!("env: {var}")),
                "bakery does not read {var}"
            );
        }
    }
}
