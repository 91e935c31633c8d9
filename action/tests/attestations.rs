//! What a build attaches beside its images, read back from a real registry
//! as a user's tools read it: SLSA provenance attestations (validated with
//! the in-toto framework's own bindings, see support/provenance.rs) and OCI
//! annotations at each buildx level.

mod support;

use std::process::{Command, Output};

use support::provenance::{attestation_entries, image_entries, provenance_statements};
use support::*;

fn bakery(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONTROLLER_URL")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITLAB_CI")
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

fn app(base: &str) -> tempfile::TempDir {
    project(&[
        (
            "Dockerfile",
            &format!("FROM {base}\nARG NOTE\nCOPY hello.txt /hello.txt\n"),
        ),
        ("hello.txt", "hello\n"),
    ])
}

/// A GitLab job's build (its source in the environment), with annotations
/// at every level and `--provenance mode=max`: the index, each manifest and
/// each attestation hold what buildx would put there, and no build-arg
/// value reaches the attestation.
#[test]
fn annotations_and_provenance_land_where_buildx_puts_them() {
    let registry = registry();
    let base = format!("{}/bakery/two-arch:1", registry.host());
    push_index_base(&base);
    let repo = app(&base);
    let data = tempfile::tempdir().unwrap();
    let tag = format!("{}/att/app:1", registry.host());
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let out = bakery(
        repo.path(),
        &[
            "build",
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            "NOTE=arg-value-never-recorded",
            "--annotation",
            "manifest:org.opencontainers.image.title=app",
            "--annotation",
            "index:org.opencontainers.image.description=An app: built twice",
            "--annotation",
            "manifest-descriptor:team=core",
            "--provenance",
            "mode=max",
        ],
        &[
            ("DATA_DIR", data.path().to_str().unwrap()),
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_URL", "https://gitlab.example.com/acme/app"),
            ("CI_COMMIT_SHA", sha),
            ("CI_JOB_URL", "https://gitlab.example.com/acme/app/-/jobs/7"),
            ("CI_CONFIG_PATH", ".gitlab-ci.yml"),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("attaching 2 SLSA provenance attestations"),
        "{all}"
    );
    let index = raw_manifest(&tag);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.description"],
        "An app: built twice"
    );
    let images = image_entries(&index);
    assert_eq!(images.len(), 2, "{index}");
    for image in &images {
        assert_eq!(image["annotations"]["team"], "core", "{image}");
        let manifest = raw_manifest(&format!(
            "{}/att/app@{}",
            registry.host(),
            image["digest"].as_str().unwrap()
        ));
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"], "app",
            "buildah writes manifest annotations: {manifest}"
        );
    }
    let statements = provenance_statements(&format!("{}/att/app", registry.host()), &index);
    for statement in &statements {
        let text = statement.to_string();
        assert!(!text.contains("arg-value-never-recorded"), "{text}");
        let definition = &statement["predicate"]["buildDefinition"];
        let params = &definition["externalParameters"];
        assert_eq!(params["buildArgs"], serde_json::json!(["NOTE"]));
        assert_eq!(params["dockerfile"], "Dockerfile", "mode=max: {text}");
        assert_eq!(params["source"]["commit"], sha);
        assert_eq!(
            params["source"]["run"],
            "https://gitlab.example.com/acme/app/-/jobs/7"
        );
        let deps = definition["resolvedDependencies"].as_array().unwrap();
        assert_eq!(deps[0]["uri"], "git+https://gitlab.example.com/acme/app");
        assert_eq!(deps[0]["digest"]["gitCommit"], sha);
    }
}

/// `--provenance false` attaches nothing, and the index stays the type its
/// images call for; a wrong annotation or provenance setting is refused
/// before anything is uploaded, saying what is wrong.
#[test]
fn provenance_can_be_turned_off_and_bad_settings_are_refused_up_front() {
    let registry = registry();
    let base = format!("{}/bakery/two-arch:1", registry.host());
    push_index_base(&base);
    let repo = app(&base);
    let data = tempfile::tempdir().unwrap();
    let tag = format!("{}/att/plain:1", registry.host());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "build",
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
        ];
        args.extend_from_slice(extra);
        bakery(
            repo.path(),
            &args,
            &[("DATA_DIR", data.path().to_str().unwrap())],
        )
    };
    let out = run(&["--provenance", "false"]);
    assert!(out.status.success(), "{}", text(&out));
    let index = raw_manifest(&tag);
    assert!(attestation_entries(&index).is_empty(), "{index}");
    assert_eq!(image_entries(&index).len(), 2);

    for (flag, value, says) in [
        (
            "--annotation",
            "index-descriptor:k=v",
            "index-descriptor` is not supported",
        ),
        (
            "--annotation",
            "manifest[linux/amd64]:k=v",
            "a platform filter is not supported",
        ),
        (
            "--provenance",
            "mode=max,builder-id=x",
            "is not a provenance setting",
        ),
    ] {
        let out = run(&[flag, value]);
        assert!(!out.status.success(), "{flag} {value}");
        let all = text(&out);
        assert!(all.contains(says), "{flag} {value}: {all}");
        assert!(
            !all.contains("uploading"),
            "refused before any upload: {all}"
        );
    }
}

/// `--arch-tags=false`: the repository gains no `<tag>_<arch>` tags; each
/// arch goes to one rolling staging tag, and the index pins both images
/// by digest, so a second build's pushes take nothing from the first index.
#[test]
fn without_arch_tags_a_repository_keeps_only_the_index_tags() {
    let registry = registry();
    let base = format!("{}/bakery/two-arch:1", registry.host());
    push_index_base(&base);
    let repo = app(&base);
    let data = tempfile::tempdir().unwrap();
    let build = |tag: &str| {
        let tag = format!("{}/att/lean:{tag}", registry.host());
        let out = bakery(
            repo.path(),
            &[
                "build",
                "--tag",
                &tag,
                "--platform",
                "linux/amd64,linux/arm64",
                "--arch-tags=false",
                "--build-arg",
                &format!("NOTE={tag}"),
            ],
            &[("DATA_DIR", data.path().to_str().unwrap())],
        );
        assert!(out.status.success(), "{}", text(&out));
        raw_manifest(&tag)
    };
    let first = build("1");
    let second = build("2");
    let list = Command::new("curl")
        .args([
            "-fsS",
            &format!("http://{}/v2/att/lean/tags/list", registry.host()),
        ])
        .output()
        .unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        ["1", "2", "bakery-staging-amd64", "bakery-staging-arm64"]
    );
    // The first index still names images of its own arches, by digest.
    for image in image_entries(&first) {
        let arch = image["platform"]["architecture"].as_str().unwrap();
        let config = image_config(&format!(
            "{}/att/lean@{}",
            registry.host(),
            image["digest"].as_str().unwrap()
        ));
        assert_eq!(config["architecture"], arch);
    }
    assert_ne!(image_entries(&first), image_entries(&second));
}
