//! bakery's own images and release artifacts: `scripts/release` packages the
//! binaries, and `make bake` — bakery building itself — builds the
//! Dockerfile's three targets for both arches on the embedded local
//! controller and pushes them to a real registry.
//!
//! What this machine cannot do, and the release workflow does: compile for
//! aarch64 (no aarch64 standard library here) or for musl, and pull the
//! production base images (distroless, Alpine, the Kaniko fork). So the
//! binaries are this build's own (x86_64, glibc), the arm64 images carry the
//! same files as a stand-in, and the base images are the local busybox one.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn release_artifacts_verify_and_make_bake_builds_bakery_with_bakery() {
    let registry = registry();
    // Both arches of bakery's images are built on it: a two-arch index.
    let base = format!("{}/bakery/busybox:multi", registry.host());
    push_index_base(&base);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for file in [
        "Dockerfile",
        "compose.bake.yaml",
        "Makefile",
        ".dockerignore",
    ] {
        std::fs::copy(repo_root().join(file), repo.join(file)).unwrap();
    }

    // ---- release artifacts, from this build's binaries ----
    let bakery = sibling_binary("bakery");
    let target_dir = bakery.parent().unwrap().parent().unwrap();
    let dist = repo.join("dist");
    let host = String::from_utf8(Command::new("rustc").arg("-vV").output().unwrap().stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/release"))
        .arg("--package-only")
        .env("TARGETS", &host)
        .env("PROFILE", "dev")
        .env("DIST", &dist)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&dist)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    for bin in ["bakery", "bakery-controller", "bakery-agent"] {
        let name = format!("{bin}-{host}.tar.gz");
        assert!(String::from_utf8_lossy(&check.stdout).contains(&format!("{name}: OK")));
        let listing = Command::new("tar")
            .arg("-tzf")
            .arg(dist.join(&name))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&listing.stdout).trim(),
            bin,
            "{name} holds the binary alone"
        );
    }

    // What the GitHub Action does with a release: download, verify, install.
    let releases = work.path().join("releases");
    let version_dir = releases.join("v9.9.9");
    std::fs::create_dir_all(&version_dir).unwrap();
    let musl = format!(
        "bakery-{}-unknown-linux-musl.tar.gz",
        std::env::consts::ARCH
    );
    std::fs::copy(
        dist.join(format!("bakery-{host}.tar.gz")),
        version_dir.join(&musl),
    )
    .unwrap();
    let sum = std::fs::read_to_string(dist.join(format!("bakery-{host}.tar.gz.sha256"))).unwrap();
    std::fs::write(
        version_dir.join(format!("{musl}.sha256")),
        sum.replace(&format!("bakery-{host}"), &musl[..musl.len() - 7]),
    )
    .unwrap();
    let install = |cache: &Path| {
        Command::new("bash")
            .arg(repo_root().join("scripts/install-bakery"))
            .env("BAKERY_VERSION", "v9.9.9")
            .env("BAKERY_RELEASES", format!("file://{}", releases.display()))
            .env("RUNNER_TOOL_CACHE", cache)
            .output()
            .unwrap()
    };
    let installed = install(&work.path().join("cache1"));
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    assert!(String::from_utf8_lossy(&installed.stdout).contains("bakery"));
    // A tampered archive is refused.
    std::fs::write(version_dir.join(&musl), b"not the release").unwrap();
    let refused = install(&work.path().join("cache2"));
    assert!(!refused.status.success());

    // ---- make bake: bakery builds its own images ----
    std::fs::create_dir_all(dist.join("arm64")).unwrap();
    for bin in ["bakery", "bakery-controller", "bakery-agent"] {
        std::fs::copy(dist.join("amd64").join(bin), dist.join("arm64").join(bin)).unwrap();
    }
    let ns = format!("{}/self", registry.host());
    let out = Command::new("make")
        .arg("bake")
        .current_dir(&repo)
        .env("BAKERY", &bakery)
        .env("REGISTRY", &ns)
        .env("VERSION", "t1")
        .env("BINARIES", "prebuilt")
        .env("RUNTIME_IMAGE", &base)
        .env("CLIENT_IMAGE", &base)
        .env("KANIKO_IMAGE", &base)
        .env("LOG_FORMAT", "plain")
        .env_remove("CONTROLLER_URL")
        .env("DATA_DIR", work.path().join("controller"))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "make bake failed:\n{log}");

    for (image, path, entrypoint) in [
        (
            "bakery-controller",
            "usr/local/bin/bakery-controller",
            "/usr/local/bin/bakery-controller",
        ),
        (
            "bakery-agent",
            "kaniko/bakery-agent",
            "/kaniko/bakery-agent",
        ),
        (
            "bakery-client",
            "usr/local/bin/bakery",
            "/usr/local/bin/bakery",
        ),
    ] {
        let reference = format!("{ns}/{image}:t1");
        let index = raw_manifest(&reference);
        assert!(
            index["manifests"].is_array(),
            "{reference} is not an index: {index}"
        );
        let mut platforms: Vec<String> = support::provenance::image_entries(&index)
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .collect();
        platforms.sort();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{reference}");
        let per_arch = format!("{ns}/{image}:t1_amd64");
        let config = image_config(&per_arch);
        assert_eq!(
            config["config"]["Entrypoint"][0], entrypoint,
            "{per_arch}: {config}"
        );
        let bytes = file_bytes_in_image(&per_arch, path)
            .unwrap_or_else(|| panic!("{path} missing in {per_arch}"));
        let built = std::fs::read(
            dist.join("amd64")
                .join(Path::new(path).file_name().unwrap()),
        )
        .unwrap();
        assert!(
            bytes == built,
            "{per_arch}:{path} is not the released binary"
        );
    }
    let controller = image_config(&format!("{ns}/bakery-controller:t1_amd64"));
    assert_eq!(controller["config"]["User"], "65532:65532");
    assert!(controller["config"]["ExposedPorts"]["8080/tcp"].is_object());
    let env: Vec<String> = serde_json::from_value(controller["config"]["Env"].clone()).unwrap();
    assert!(
        env.contains(&"LISTEN_ADDR=0.0.0.0:8080".to_string()),
        "{env:?}"
    );
    let agent = image_config(&format!("{ns}/bakery-agent:t1_arm64"));
    let env: Vec<String> = serde_json::from_value(agent["config"]["Env"].clone()).unwrap();
    assert!(
        env.contains(&"BAKERY_BUILDER=kaniko".to_string()),
        "{env:?}"
    );
    assert_eq!(agent["architecture"], "arm64");
}

/// The release workflow builds what the install script downloads: a musl
/// binary per arch, natively, packaged by scripts/release, published with
/// its checksums; and its image job runs `make bake` on those binaries.
#[test]
fn the_release_workflow_publishes_what_the_action_installs() {
    let text = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml")).unwrap();
    let workflow: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let matrix = workflow["jobs"]["binaries"]["strategy"]["matrix"]["include"]
        .as_array()
        .unwrap();
    let mut pairs: Vec<(String, String)> = matrix
        .iter()
        .map(|m| {
            (
                m["runner"].as_str().unwrap().to_string(),
                m["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            (
                "ubuntu-24.04".to_string(),
                "x86_64-unknown-linux-musl".to_string()
            ),
            (
                "ubuntu-24.04-arm".to_string(),
                "aarch64-unknown-linux-musl".to_string()
            ),
        ],
        "one native runner per arch"
    );
    let install = std::fs::read_to_string(repo_root().join("scripts/install-bakery")).unwrap();
    assert!(install.contains("name=\"bakery-$arch-unknown-linux-musl\""));
    assert!(install.contains("$name.tar.gz.sha256"));
    assert!(text.contains("bash scripts/release"));
    assert!(text.contains("./*.tar.gz ./*.tar.gz.sha256 SHA256SUMS"));
    assert!(text.contains("sha256sum -c SHA256SUMS"));
    assert!(text.contains("make bake"));
    assert_eq!(
        workflow["jobs"]["publish"]["permissions"]["contents"],
        "write"
    );
}
