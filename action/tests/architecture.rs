//! Truthful images, end to end with a real registry and buildah: an arch
//! whose image would hold another architecture's files fails (before
//! anything is built when the client can see it coming, and after the push
//! when only the registry can tell), and no index is written over it; a
//! multi-arch base builds both arches; a base on a second loopback registry
//! is reached over plain HTTP like the destination.

mod support;
use support::provenance::image_entries;

use std::process::{Command, Output};

use support::*;

fn bakery(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONTROLLER_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A COPY-only project on `base` for `arches`, pushing to `dest`.
fn copy_only(base: &str, dest: &str, arches: &[&str]) -> tempfile::TempDir {
    let bake: String = arches
        .iter()
        .flat_map(|a| ["  - arch: ", a, "\n"])
        .collect();
    project(&[
        ("Dockerfile", "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\n"),
        ("hello.txt", "hello\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  kaniko:\n    destination: {dest}\n    build-args:\n      BASE: {base}\nbake:\n{bake}"
            ),
        ),
    ])
}

fn exists(reference: &str) -> bool {
    Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

/// The client reads every base image the build pulls before anything is
/// uploaded: an amd64-only base asked for arm64 fails at its Dockerfile
/// line, every problem at once, and nothing is built or pushed.
#[test]
fn an_arm64_build_on_an_amd64_only_base_fails_before_anything_is_built() {
    let registry = registry();
    let base = push_base_image(&registry);
    let dest = format!("{}/arch/early:1", registry.host());
    let repo = copy_only(&base, &dest, &["amd64", "arm64"]);
    let out = bakery(repo.path(), &["build"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let dockerfile = repo.path().join("Dockerfile");
    assert!(
        all.contains(&format!(
            "error: {}:2:1: base image {base} has no linux/arm64 variant (it is a single linux/amd64 image)",
            dockerfile.display()
        )),
        "{all}"
    );
    assert!(all.contains("nothing was uploaded or built"), "{all}");
    assert!(
        !all.contains("context "),
        "no context was packed or uploaded: {all}"
    );
    assert!(!exists(&dest), "no index");
    assert!(!exists(&format!("{dest}_amd64")), "nothing was built");
}

/// A base that is an index with both arches builds both, and each index
/// entry's platform is what the pushed image's config says.
#[test]
fn a_multi_arch_base_builds_both_arches() {
    let registry = registry();
    let base = format!("{}/arch/base:multi", registry.host());
    push_index_base(&base);
    let dest = format!("{}/arch/multi:1", registry.host());
    let repo = copy_only(&base, &dest, &["amd64", "arm64"]);
    let out = bakery(repo.path(), &["build"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let index = raw_manifest(&dest);
    let mut platforms: Vec<String> = image_entries(&index)
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let variant = p["variant"]
                .as_str()
                .map(|v| format!("/{v}"))
                .unwrap_or_default();
            format!(
                "{}/{}{variant}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    for m in index["manifests"].as_array().unwrap() {
        let by_digest = format!(
            "{}/arch/multi@{}",
            registry.host(),
            m["digest"].as_str().unwrap()
        );
        let config = image_config(&by_digest);
        assert_eq!(config["architecture"], m["platform"]["architecture"]);
    }
}

/// A base image on a second loopback registry is plain HTTP too (it was
/// refused with "HTTP response to HTTPS client").
#[test]
fn a_base_on_a_second_loopback_registry_builds() {
    let registry = registry();
    let other = support::registry();
    let base = format!("{}/elsewhere/base:multi", other.host());
    push_index_base(&base);
    let dest = format!("{}/arch/second:1", registry.host());
    let repo = copy_only(&base, &dest, &["amd64", "arm64"]);
    let out = bakery(repo.path(), &["build"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(image_entries(&raw_manifest(&dest)).len(), 2);
}

/// Past the client (any token holder can submit without it): buildah, asked
/// for linux/arm64 on an amd64-only base, builds it and writes `arm64` in
/// the config it pushes. The controller reads the base back and fails the
/// arch, naming it; no index is written over the amd64 files.
#[test]
fn the_controller_fails_an_arch_whose_image_is_built_on_another_architecture() {
    let registry = registry();
    let base = push_base_image(&registry);
    let dest = format!("{}/arch/late:1", registry.host());
    let repo = copy_only(&base, &dest, &["arm64"]);
    let controller = controller(&[]);
    let plan: serde_json::Value =
        serde_json::from_slice(&bakery(repo.path(), &["plan", "--json", "--offline"], &[]).stdout)
            .unwrap();
    let packs = tempfile::tempdir().unwrap();
    let out = bakery(
        repo.path(),
        &["pack", "--output", packs.path().to_str().unwrap(), "--json"],
        &[],
    );
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, path) = (
        packed[0]["key"].as_str().unwrap(),
        packed[0]["path"].as_str().unwrap(),
    );
    let put = Command::new("curl")
        .args([
            "-fsS",
            "-T",
            path,
            &format!("{}/v1/contexts/{key}", controller.url()),
        ])
        .status()
        .unwrap();
    assert!(put.success());
    let service = &plan["services"][0];
    let build = &service["builds"][0];
    let request = serde_json::json!({
        "service": service["name"], "destination": service["destination"], "tags": [],
        "tasks": [{"arch": "arm64", "push": build["push"], "context_key": key,
                   "context_bytes": packed[0]["packed"]["content_bytes"], "spec": build["spec"]}]
    });
    let created = Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "content-type: application/json",
            "-d",
            &request.to_string(),
        ])
        .arg(format!("{}/v1/builds", controller.url()))
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created));
    let id = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = loop {
        let out = Command::new("curl")
            .args(["-fsS", &format!("{}/v1/builds/{id}", controller.url())])
            .output()
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&s["state"].as_str().unwrap()) {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["tasks"][0]["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!("the image is linux/amd64: base image {base} has no linux/arm64 variant (it is a single linux/amd64 image)"),
        "{status}"
    );
    assert!(status["error"]
        .as_str()
        .unwrap()
        .starts_with("arm64 build failed: the image is linux/amd64"));
    // The builder did push (what its config claims is beside the point)...
    let pushed = image_config(&format!("{dest}_arm64"));
    assert_eq!(
        pushed["architecture"], "arm64",
        "buildah wrote the arch it was asked for"
    );
    // ...but nothing is published under the multi-arch tag.
    assert!(!exists(&dest), "no index over it");
}

/// On the local platform an arm64 build runs on this amd64 machine: a RUN
/// step needs emulation, and without it the build fails before the builder
/// starts, saying what to do (it failed mid-build with `exec format error`).
/// Where this machine runs arm64 programs (scripts/emulation, which the demo
/// runs, registered qemu), the same build runs its RUN step instead. (The
/// refusal itself is also checked against a binfmt directory of the test's
/// own: agent/src/sources.rs.)
#[test]
fn an_arm64_run_step_without_emulation_fails_before_the_build_with_a_hint() {
    let emulated = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .is_ok_and(|s| s.starts_with("enabled"));
    if bakery_protocol::Arch::host() != bakery_protocol::Arch::Amd64 || emulated {
        return an_arm64_run_step_runs_where_it_can();
    }
    let registry = registry();
    let base = format!("{}/arch/base:multi", registry.host());
    push_index_base(&base);
    let dest = format!("{}/arch/run:1", registry.host());
    let repo = project(&[
        ("Dockerfile", "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n"),
        ("hello.txt", "hello\n"),
        (
            "config.yaml",
            &format!("global:\n  arch: arm64\n  kaniko:\n    destination: {dest}\n    build-args:\n      BASE: {base}\n"),
        ),
    ]);
    let out = bakery(repo.path(), &["build"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("Dockerfile:4 runs a program for linux/arm64"),
        "{all}"
    );
    assert!(all.contains("qemu-user-static"), "{all}");
    assert!(
        !all.contains("exec format error"),
        "stopped before the builder: {all}"
    );
    assert!(!exists(&dest));
}

/// The arm64 RUN step, run: through qemu here (or natively on arm64).
fn an_arm64_run_step_runs_where_it_can() {
    let registry = registry();
    let base = format!("{}/arch/base:multi", registry.host());
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/base-image"
        ))
        .args([base.as_str(), "--multi-arch"])
        .status()
        .unwrap();
    assert!(status.success(), "the two-arch busybox base");
    let dest = format!("{}/arch/run:1", registry.host());
    let repo = project(&[
        ("Dockerfile", "ARG BASE\nFROM ${BASE}\nRUN uname -m > /arch.txt\n"),
        (
            "config.yaml",
            &format!("global:\n  arch: arm64\n  kaniko:\n    destination: {dest}\n    build-args:\n      BASE: {base}\n"),
        ),
    ]);
    let out = bakery(repo.path(), &["build"], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let index = raw_manifest(&dest);
    let entry = &image_entries(&index)[0];
    let image = format!(
        "{}/arch/run@{}",
        registry.host(),
        entry["digest"].as_str().unwrap()
    );
    assert_eq!(
        file_in_image(&image, "/arch.txt").as_deref(),
        Some("aarch64\n")
    );
}

/// `bakery plan` checks the base images as `build` does: one its registry
/// does not have is an error at its FROM line (`--offline` skips the
/// check), so plan never passes what build refuses.
#[test]
fn plan_refuses_a_base_image_its_registry_does_not_have() {
    let registry = registry();
    let missing = format!("{}/arch/no-such-base:1", registry.host());
    let dest = format!("{}/arch/app:1", registry.host());
    let repo = copy_only(&missing, &dest, &["amd64"]);
    let out = bakery(repo.path(), &["plan"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Dockerfile:2:1: base image"), "{all}");
    assert!(all.contains("does not exist"), "{all}");
    let offline = bakery(repo.path(), &["plan", "--offline"], &[]);
    assert!(offline.status.success(), "{}", text(&offline));
}
