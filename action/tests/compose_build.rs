//! A real build of a compose project spread over files: a service that
//! extends another file's service gets that service's context, Dockerfile
//! and `x-bake.platforms` (both arches pushed, the base's files in the
//! image), and an included file's service is built from its own directory.

mod support;
use support::provenance::image_entries;
use support::*;

use std::process::Command;

#[test]
fn extends_and_include_build_the_right_context_and_platforms() {
    let registry = registry();
    let host = registry.host();
    let repo = project(&[
        // The base: its own context directory and Dockerfile, two platforms.
        ("common/base.Dockerfile", "FROM scratch\nARG ROLE\nCOPY from-common.txt /from-common.txt\n"),
        ("common/from-common.txt", "the base's context\n"),
        (
            "common/base.yaml",
            "services:\n  base:\n    build:\n      context: .\n      dockerfile: base.Dockerfile\n      x-bake:\n        platforms: [linux/amd64, linux/arm64]\n",
        ),
        ("worker/Dockerfile", "FROM scratch\nCOPY worker.txt /worker.txt\n"),
        ("worker/worker.txt", "the worker's own context\n"),
        (
            "worker/compose.yaml",
            &format!("services:\n  worker:\n    build: .\n    image: {host}/compose/worker:1\n"),
        ),
        (
            "compose.yaml",
            &format!(
                "include: [worker/compose.yaml]\nservices:\n  api:\n    extends: {{file: common/base.yaml, service: base}}\n    image: {host}/compose/api:1\n"
            ),
        ),
    ]);
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .args(["build"])
        .env_remove("CONTROLLER_URL")
        .env("DATA_DIR", data.path())
        .output()
        .unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");

    let index = raw_manifest(&format!("{host}/compose/api:1"));
    let mut arches: Vec<String> = image_entries(&index)
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    arches.sort();
    assert_eq!(arches, ["amd64", "arm64"], "the base's x-bake.platforms");
    for m in image_entries(&index) {
        let image = format!("{host}/compose/api@{}", m["digest"].as_str().unwrap());
        assert_eq!(
            file_in_image(&image, "/from-common.txt").as_deref(),
            Some("the base's context\n"),
            "built from the base's context with its Dockerfile"
        );
    }
    let worker = raw_manifest(&format!("{host}/compose/worker:1"));
    let entry = &image_entries(&worker)[0];
    let image = format!(
        "{host}/compose/worker@{}",
        entry["digest"].as_str().unwrap()
    );
    assert_eq!(
        file_in_image(&image, "/worker.txt").as_deref(),
        Some("the worker's own context\n"),
        "the included service, from its own directory"
    );
}
