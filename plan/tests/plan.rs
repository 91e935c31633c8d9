//! Plan resolution from real files: the reference README's example, compose
//! forms, the config + compose merge, and every validation error with its
//! location.

use std::fs;
use std::path::Path;

use bakery_plan::{Plan, PlanError, PlanOptions};
use support::Repo;

mod support;
use bakery_protocol::{Arch, Platform};

/// The config.yaml of the original README, verbatim.
const README_CONFIG: &str = r"global:
  # Execution platform: ecs or k8s
  platform: ecs
  # Default architecture
  arch: amd64
  # Environment variables passed to the Agent container
  env:
    FOO: bar
  # Script to run before Kaniko execution
  pre-script: |
    echo 'setting up...'
  # Script to run after successful Kaniko build
  post-script: |
    echo 'done'
  # Private registry credentials
  kaniko-credentials:
    - registry: registry.example.com
      username: user
      password: pass
  # Kaniko build options
  kaniko:
    context-path: .
    dockerfile: Dockerfile
    destination: registry.example.com/myapp:latest
    build-args:
      BASE_IMAGE: alpine:latest
    cache:
      enable: true
      repo: cache.example.com
      ttl: 24h

# Per-architecture build config (inherits from global, same keys override)
bake:
  - arch: amd64
    kaniko:
      build-args:
        BUILD_PLATFORM: amd64
  - arch: arm64
    kaniko:
      dockerfile: Dockerfile.arm64
      build-args:
        BUILD_PLATFORM: arm64
";

fn with_dockerfiles<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut files = vec![
        ("Dockerfile", "FROM alpine\n"),
        ("Dockerfile.arm64", "FROM alpine\n"),
    ];
    files.extend_from_slice(extra);
    files
}

/// Asserts a located error: file name, line, and a fragment of the message.
fn assert_located(
    err: PlanError,
    file: &str,
    line: usize,
    fragment: &str,
) -> bakery_plan::Diagnostic {
    let d = err
        .diagnostic()
        .unwrap_or_else(|| panic!("not located: {err}"))
        .clone();
    assert_eq!(d.location.file.file_name().unwrap(), file, "{d}");
    assert_eq!(d.location.line, line, "{d}");
    assert!(d.to_string().contains(fragment), "`{fragment}` not in: {d}");
    d
}

#[test]
fn reference_readme_example() {
    let repo = Repo::new(&with_dockerfiles(&[("config.yaml", README_CONFIG)]));
    let plan = repo.config().unwrap();
    assert_eq!(plan.services.len(), 1);
    let service = &plan.services[0];
    assert_eq!(service.name, "myapp");
    assert_eq!(
        service.destination.as_deref(),
        Some("registry.example.com/myapp:latest")
    );
    let [amd, arm] = &service.builds[..] else {
        panic!("two arches")
    };

    assert_eq!((amd.arch, arm.arch), (Arch::Amd64, Arch::Arm64));
    assert_eq!(
        amd.push.as_deref(),
        Some("registry.example.com/myapp:latest_amd64")
    );
    assert_eq!(
        arm.push.as_deref(),
        Some("registry.example.com/myapp:latest_arm64")
    );
    // maps merge: global BASE_IMAGE + the entry's BUILD_PLATFORM
    assert_eq!(amd.spec.build_args["BASE_IMAGE"], "alpine:latest");
    assert_eq!(amd.spec.build_args["BUILD_PLATFORM"], "amd64");
    assert_eq!(arm.spec.build_args["BUILD_PLATFORM"], "arm64");
    // other values: replaced where the entry sets them, inherited where not
    assert_eq!(amd.spec.dockerfile, "Dockerfile");
    assert_eq!(arm.spec.dockerfile, "Dockerfile.arm64");
    for b in [amd, arm] {
        assert_eq!(b.spec.platform, Some(Platform::Ecs));
        assert_eq!(b.spec.env["FOO"], "bar");
        assert_eq!(b.spec.pre_script.as_deref(), Some("echo 'setting up...'\n"));
        assert_eq!(b.spec.post_script.as_deref(), Some("echo 'done'\n"));
        assert_eq!(b.spec.cache.enable, Some(true));
        // A bare registry host: the per-arch repositories go there.
        assert_eq!(
            b.spec.cache.repo.as_deref(),
            Some(format!("cache.example.com/myapp-cache-{}", b.arch).as_str())
        );
        assert_eq!(b.spec.cache.ttl.as_deref(), Some("24h"));
        assert_eq!(b.spec.credentials[0].password.expose(), "pass");
    }
    assert_eq!(amd.spec.custom_platform, "linux/amd64");
    assert_eq!(arm.spec.custom_platform, "linux/arm64");
}

#[test]
fn redacted_plan_has_no_password() {
    let repo = Repo::new(&with_dockerfiles(&[("config.yaml", README_CONFIG)]));
    let plan = repo.config().unwrap().redacted();
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("\"pass\""), "{json}");
    assert!(json.contains("\"***\""));
    assert!(!format!("{plan:?}").contains("\"pass\""));
}

#[test]
fn config_without_bake_builds_global_arch_and_default_dockerfile() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  arch: arm64\n  cpu: 1\n  memory: 2G\n  kaniko:\n    destination: r.io/app:v1\n"),
    ]);
    let plan = repo.config().unwrap();
    let b = &plan.services[0].builds[0];
    assert_eq!(plan.services[0].builds.len(), 1);
    assert_eq!(b.arch, Arch::Arm64);
    assert_eq!(b.spec.dockerfile, "Dockerfile");
    assert_eq!(b.spec.cpu.unwrap().millis(), 1000);
    assert_eq!(b.spec.memory.unwrap().mib(), 2048);
    assert_eq!(b.push.as_deref(), Some("r.io/app:v1_arm64"));
    assert_eq!(plan.services[0].destination.as_deref(), Some("r.io/app:v1"));
}

#[test]
fn bake_entry_with_own_destination_pushes_there() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko:\n      destination: r.io/app:arm-special\n",
        ),
    ]);
    let plan = repo.config().unwrap();
    let builds = &plan.services[0].builds;
    assert_eq!(builds[0].push.as_deref(), Some("r.io/app:v1_amd64"));
    assert_eq!(builds[1].push.as_deref(), Some("r.io/app:arm-special"));
    assert_eq!(plan.services[0].destination.as_deref(), Some("r.io/app:v1"));
}

#[test]
fn bake_destination_in_another_repository_is_refused() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\nbake:\n  - arch: amd64\n    kaniko:\n      destination: r.io/other:v1\n",
        ),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        7,
        "not in the repository",
    );
    assert!(d.hint.unwrap().contains("r.io/app:<tag>"));
}

#[test]
fn no_config_and_no_compose_is_a_clear_error() {
    let repo = Repo::new(&[("Dockerfile", "FROM alpine\n")]);
    let err = repo.config().unwrap_err();
    assert!(matches!(err, PlanError::NothingToBuild { .. }));
    assert!(
        err.to_string().contains("config.yaml") && err.to_string().contains("--compose"),
        "{err}"
    );
}

const COMPOSE: &str = r#"services:
  web:
    build: ./web
    image: r.io/web:${TAG:-dev}
  api:
    image: r.io/api:1.0.0
    build:
      context: api
      dockerfile: build/Dockerfile
      target: runtime
      args:
        VERSION: "1.0.0"
        COMMIT:
      labels:
        - org.opencontainers.image.source=https://example.com/api
      cache_from:
        - r.io/api:cache
      x-bake:
        platforms:
          - linux/amd64
          - linux/arm64
  worker:
    image: r.io/worker:${TAG}
    build:
      context: .
      dockerfile: worker.Dockerfile
      args:
        - MODE=batch
        - REGION
    platform: linux/arm64
  db:
    image: postgres:16
"#;

fn compose_repo() -> Repo {
    Repo::new(&[
        ("compose.yaml", COMPOSE),
        ("web/Dockerfile", "FROM alpine\n"),
        ("api/build/Dockerfile", "FROM alpine\n"),
        ("worker.Dockerfile", "FROM alpine\n"),
        (".env", "TAG=from-dotenv\nREGION=eu\n"),
    ])
}

#[test]
fn compose_string_and_object_forms() {
    let repo = compose_repo();
    let plan = repo
        .compose_env("compose.yaml", &[], &[("COMMIT", "abc123")])
        .unwrap();
    let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["web", "api", "worker"],
        "file order, services without build skipped"
    );

    let web = &plan.services[0];
    assert_eq!(web.builds.len(), 1);
    assert_eq!(
        web.builds[0].arch,
        Arch::Amd64,
        "no platforms: the client's arch"
    );
    assert_eq!(web.builds[0].context_dir, repo.path("web"));
    assert_eq!(
        web.destination.as_deref(),
        Some("r.io/web:from-dotenv"),
        ".env fills interpolation"
    );

    let api = &plan.services[1];
    let arches: Vec<Arch> = api.builds.iter().map(|b| b.arch).collect();
    assert_eq!(arches, [Arch::Amd64, Arch::Arm64]);
    let spec = &api.builds[0].spec;
    assert_eq!(spec.dockerfile, "build/Dockerfile");
    assert_eq!(spec.target.as_deref(), Some("runtime"));
    assert_eq!(spec.build_args["VERSION"], "1.0.0");
    assert_eq!(
        spec.build_args["COMMIT"], "abc123",
        "valueless arg comes from the environment"
    );
    assert_eq!(
        spec.labels["org.opencontainers.image.source"],
        "https://example.com/api"
    );
    assert_eq!(spec.cache_from, ["r.io/api:cache"]);
    assert_eq!(api.builds[1].push.as_deref(), Some("r.io/api:1.0.0_arm64"));
    assert_eq!(api.destination.as_deref(), Some("r.io/api:1.0.0"));

    let worker = &plan.services[2];
    assert_eq!(worker.builds[0].arch, Arch::Arm64, "service-level platform");
    assert_eq!(worker.builds[0].spec.build_args["MODE"], "batch");
    assert_eq!(
        worker.builds[0].spec.build_args["REGION"], "eu",
        "list form, valueless, from .env"
    );
}

#[test]
fn process_environment_beats_dotenv() {
    let repo = compose_repo();
    let plan = repo
        .compose_env("compose.yaml", &["web"], &[("TAG", "ci-42")])
        .unwrap();
    assert_eq!(
        plan.services[0].destination.as_deref(),
        Some("r.io/web:ci-42")
    );
}

#[test]
fn services_filter_and_unknown_service() {
    let repo = compose_repo();
    let plan = repo.compose("compose.yaml", &["worker", "api"]).unwrap();
    let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "worker"]);

    let err = repo.compose("compose.yaml", &["api", "wrker"]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("wrker") && text.contains("web, api, worker"),
        "{text}"
    );
    assert!(
        !text.contains("db"),
        "only buildable services are listed: {text}"
    );
}

#[test]
fn config_global_is_the_base_and_compose_merges_on_top() {
    let repo = Repo::new(&[
        ("app/Dockerfile", "FROM alpine\n"),
        ("app/Dockerfile.arm64", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  platform: k8s\n  cpu: 2\n  env: {A: global}\n  kaniko:\n    build-args: {BASE: alpine, VERSION: old}\n    cache: {enable: true}\nbake:\n  - arch: arm64\n    memory: 4G\n    kaniko:\n      dockerfile: Dockerfile.arm64\n",
        ),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/app:2\n    build:\n      context: app\n      args: {VERSION: new}\n      x-bake:\n        platforms: [linux/amd64, linux/arm64]\n",
        ),
    ]);
    let mut opts = repo.opts();
    opts.config = Some(repo.path("config.yaml"));
    opts.compose = Some(repo.path("compose.yaml"));
    let plan = Plan::resolve(&opts).unwrap();
    let [amd, arm] = &plan.services[0].builds[..] else {
        panic!()
    };
    for b in [amd, arm] {
        assert_eq!(b.spec.platform, Some(Platform::K8s), "from global");
        assert_eq!(b.spec.build_args["BASE"], "alpine", "global map key kept");
        assert_eq!(b.spec.build_args["VERSION"], "new", "compose wins per key");
        assert_eq!(b.spec.env["A"], "global");
        assert_eq!(b.spec.cache.enable, Some(true));
    }
    assert_eq!(amd.spec.dockerfile, "Dockerfile");
    assert_eq!(
        arm.spec.dockerfile, "Dockerfile.arm64",
        "bake entry applies per arch"
    );
    assert_eq!(arm.spec.memory.unwrap().mib(), 4096);
    assert!(amd.spec.memory.is_none());
}

// ---- validation: every error names file and line ----

#[test]
fn unknown_key_suggests_the_right_one() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/a:1\n    bulid-args: {A: b}\n",
        ),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        4,
        "unknown key `bulid-args`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `build-args`?"));
    assert_eq!(d.location.column, 5);
}

#[test]
fn unknown_top_level_and_bake_keys() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "globl:\n  arch: amd64\n"),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        1,
        "unknown key `globl`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `global`?"));

    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  kaniko: {destination: r.io/a:1}\nbake:\n  - arch: amd64\n    pre-scirpt: echo\n"),
    ]);
    let d = assert_located(repo.config().unwrap_err(), "config.yaml", 5, "pre-scirpt");
    assert_eq!(d.hint.as_deref(), Some("did you mean `pre-script`?"));
}

#[test]
fn wrong_types_are_located() {
    let cases = [
        ("global:\n  env: [A, B]\n", 2, "env"),
        (
            "global:\n  kaniko:\n    cache:\n      enable: maybe\n",
            4,
            "enable",
        ),
        ("global:\n  cpu: lots\n", 2, "cpu `lots`"),
        ("global:\n  memory: 2048\n", 2, "no unit"),
        ("bake: {arch: amd64}\n", 1, "bake"),
    ];
    for (text, line, fragment) in cases {
        let repo = Repo::new(&[("Dockerfile", "FROM alpine\n"), ("config.yaml", text)]);
        assert_located(repo.config().unwrap_err(), "config.yaml", line, fragment);
    }
}

#[test]
fn unsupported_arch_in_config_and_compose() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko: {destination: r.io/a:1}\nbake:\n  - arch: arm\n",
        ),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        4,
        "unknown value `arm`",
    );
    assert!(d.hint.unwrap().contains("arm64"));

    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      x-bake:\n        platforms:\n          - linux/amd64\n          - linux/arm/v7\n",
        ),
    ]);
    let err = repo.compose("compose.yaml", &[]).unwrap_err();
    let d = assert_located(err, "compose.yaml", 9, "linux/arm/v7");
    assert_eq!(d.location.column, 13);
}

#[test]
fn missing_destination_points_at_the_block() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  arch: amd64\n"),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        1,
        "no destination",
    );
    assert!(d.hint.unwrap().contains("kaniko.destination"));

    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  app:\n    build: .\n"),
    ]);
    let d = assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        2,
        "no destination",
    );
    assert!(d.hint.unwrap().contains("image:"));
}

#[test]
fn invalid_destination_is_located() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/App@sha256:00\n",
        ),
    ]);
    assert_located(repo.config().unwrap_err(), "config.yaml", 3, "digest");
}

#[test]
fn dockerfile_not_found_points_where_it_was_set() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/a:1\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko:\n      dockerfile: Dockerfile.arm\n",
        ),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        8,
        "`Dockerfile.arm` not found",
    );
    assert!(
        d.hint.unwrap().contains("Dockerfile"),
        "lists what the context has"
    );

    // Default Dockerfile missing: reported at the entry that should set it.
    let repo = Repo::new(&[
        ("Containerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/a:1\n",
        ),
    ]);
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        1,
        "`Dockerfile` not found",
    );

    // Outside the repository: never read, whatever the config names.
    let repo = Repo::new(&[
        ("sub/x", ""),
        ("config.yaml", "global:\n  kaniko:\n    context-path: sub\n    dockerfile: /etc/hostname\n    destination: r.io/a:1\n"),
    ]);
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        4,
        "outside the repository",
    );

    // A Dockerfile in the context that is a symlink leading out of the
    // repository: a pull request must not make the runner send its files.
    let repo = Repo::new(&[
        ("sub/x", ""),
        (
            "config.yaml",
            "global:\n  kaniko:\n    context-path: sub\n    destination: r.io/a:1\n",
        ),
    ]);
    std::os::unix::fs::symlink("/etc/hostname", repo.path("sub/Dockerfile")).unwrap();
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        1,
        "is /etc/hostname, outside the repository",
    );

    // Compose: at build.dockerfile.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      dockerfile: Nope\n"),
    ]);
    assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        6,
        "`Nope` not found",
    );
}

#[test]
fn missing_context_directory() {
    let repo = Repo::new(&[(
        "compose.yaml",
        "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: nowhere\n",
    )]);
    assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        5,
        "not a directory",
    );
}

#[test]
fn bake_entries_need_distinct_arches() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko: {destination: r.io/a:1}\nbake:\n  - arch: amd64\n  - arch: amd64\n",
        ),
    ]);
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        5,
        "two bake entries",
    );
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko: {destination: r.io/a:1}\nbake:\n  - env: {A: b}\n",
        ),
    ]);
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        4,
        "has no `arch`",
    );
}

#[test]
fn compose_build_keys() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      dockerfil: Dockerfile\n"),
    ]);
    let d = assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        6,
        "unknown key `dockerfil`",
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `dockerfile`?"));

    // Real compose keys bakery does not apply are warnings, not errors.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  app:\n    image: r.io/a:1\n    ports: ['80:80']\n    build:\n      context: .\n      ssh: [default]\n      x-custom: 1\n"),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("services.app.build.ssh")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn compose_interpolation_errors_and_warnings() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:${TAG:?set TAG to the release}\n    build: .\n",
        ),
    ]);
    let d = assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        3,
        "set TAG to the release",
    );
    assert_eq!(d.location.column, 19);

    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:1${SUFFIX}\n    build: .\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("`SUFFIX` is not set")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn yaml_syntax_error_is_located() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  arch: amd64\n   bad: indent\n"),
    ]);
    let err = repo.config().unwrap_err();
    let d = err.diagnostic().expect("located");
    assert_eq!(d.location.file.file_name().unwrap(), "config.yaml");
    assert!(d.location.line >= 2, "{d}");
}

#[test]
fn unreadable_file_names_the_path() {
    let repo = Repo::new(&[("Dockerfile", "FROM alpine\n")]);
    let mut opts = repo.opts();
    opts.config = Some(repo.path("missing.yaml"));
    let err = Plan::resolve(&opts).unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");
    let _: &Path = repo.dir.path();
}

#[test]
fn flags_describe_a_build_without_a_file() {
    let repo = Repo::new(&[("docker/Dockerfile", "FROM alpine\n")]);
    let mut opts = repo.opts();
    opts.inline = Some(bakery_plan::InlineBuild {
        context: "docker".into(),
        tags: vec!["r.io/team/app:1.2".into(), "r.io/team/app:latest".into()],
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        build_args: [("V".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    let plan = Plan::resolve(&opts).unwrap();
    let s = &plan.services[0];
    assert_eq!(s.name, "app");
    assert_eq!(s.destination.as_deref(), Some("r.io/team/app:1.2"));
    assert_eq!(s.tags, ["r.io/team/app:latest"]);
    assert_eq!(s.builds.len(), 2);
    assert_eq!(s.builds[1].push.as_deref(), Some("r.io/team/app:1.2_arm64"));
    assert_eq!(s.builds[0].spec.build_args["V"], "1");
    assert_eq!(s.builds[0].spec.cache.enable, None, "no cache unless asked");

    // --cache: per-arch repositories beside the destination; --cache-repo
    // names the base.
    opts.inline.as_mut().unwrap().cache = true;
    let plan = Plan::resolve(&opts).unwrap();
    let caches: Vec<_> = plan.services[0]
        .builds
        .iter()
        .map(|b| (b.spec.cache.enable, b.spec.cache.repo.clone().unwrap()))
        .collect();
    assert_eq!(
        caches,
        [
            (Some(true), "r.io/team/app-cache-amd64".to_string()),
            (Some(true), "r.io/team/app-cache-arm64".to_string())
        ]
    );
    let inline = opts.inline.as_mut().unwrap();
    inline.cache = false;
    inline.cache_repo = Some("cache.io/team/layers".into());
    let plan = Plan::resolve(&opts).unwrap();
    assert_eq!(
        plan.services[0].builds[1].spec.cache.repo.as_deref(),
        Some("cache.io/team/layers-arm64")
    );
    assert_eq!(plan.services[0].builds[1].spec.cache.enable, Some(true));

    // A tag in another repository (metadata-action with two `images:`)
    // tags the same index there; a digest is still no tag.
    opts.inline
        .as_mut()
        .unwrap()
        .tags
        .push("docker.io/team/app:1.2".into());
    let plan = Plan::resolve(&opts).unwrap();
    assert_eq!(
        plan.services[0].tags.last().unwrap(),
        "docker.io/team/app:1.2"
    );
    opts.inline
        .as_mut()
        .unwrap()
        .tags
        .push(format!("r.io/other@sha256:{}", "a".repeat(64)));
    let err = Plan::resolve(&opts).unwrap_err().to_string();
    assert!(err.contains("command line"), "{err}");
    opts.inline.as_mut().unwrap().tags.pop();

    // Flags and files do not mix.
    opts.config = Some(repo.path("config.yaml"));
    assert!(Plan::resolve(&opts)
        .unwrap_err()
        .to_string()
        .contains("cannot be combined"));
}

#[test]
fn compose_build_tags_tag_the_same_index() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/app:1\n    build:\n      context: .\n      tags: [r.io/app:stable, 'r.io/elsewhere:1', 'r.io/x@sha256:0']\n",
        ),
    ]);
    let err = repo.compose("compose.yaml", &[]).unwrap_err();
    assert_located(err, "compose.yaml", 6, "r.io/x@sha256:0");
    std::fs::write(
        repo.path("compose.yaml"),
        "services:\n  app:\n    image: r.io/app:1\n    build:\n      context: .\n      tags: [r.io/app:stable, 'r.io/elsewhere:1']\n",
    )
    .unwrap();
    assert_eq!(
        repo.compose("compose.yaml", &[]).unwrap().services[0].tags,
        ["r.io/app:stable", "r.io/elsewhere:1"],
        "another repository gets the index too"
    );
    std::fs::write(
        repo.path("compose.yaml"),
        "services:\n  app:\n    image: r.io/app:1\n    build:\n      context: .\n      tags: [r.io/app:stable]\n",
    )
    .unwrap();
    assert_eq!(
        repo.compose("compose.yaml", &[]).unwrap().services[0].tags,
        ["r.io/app:stable"]
    );
}

#[test]
fn compose_merge_keys_are_resolved() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "x-build: &build\n  context: .\n  args: {SHARED: yes}\nservices:\n  a:\n    image: r.io/a:1\n    build:\n      <<: *build\n      target: a\n  b:\n    image: r.io/b:1\n    build:\n      <<: *build\n      args: {OWN: x}\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(plan.services[0].builds[0].spec.target.as_deref(), Some("a"));
    assert_eq!(plan.services[0].builds[0].spec.build_args["SHARED"], "yes");
    // A local key replaces the merged one, as YAML merge keys define.
    assert_eq!(
        plan.services[1].builds[0].spec.build_args.get("SHARED"),
        None
    );
    assert_eq!(plan.services[1].builds[0].spec.build_args["OWN"], "x");
}

#[test]
fn each_arch_gets_its_own_cache_repository() {
    let config = |cache: &str| {
        format!(
            "global:\n  kaniko:\n    destination: r.io/team/app:v1\n    cache:\n{cache}\nbake:\n  - arch: amd64\n  - arch: arm64\n"
        )
    };
    let repos = |cache: &str| -> Vec<Option<String>> {
        let repo = Repo::new(&[
            ("Dockerfile", "FROM alpine\n"),
            ("config.yaml", &config(cache)),
        ]);
        repo.config().unwrap().services[0]
            .builds
            .iter()
            .map(|b| b.spec.cache.repo.clone())
            .collect()
    };
    // Enabled without a repository: derived from the destination.
    assert_eq!(
        repos("      enable: true"),
        [
            Some("r.io/team/app-cache-amd64".into()),
            Some("r.io/team/app-cache-arm64".into())
        ]
    );
    // A repository given: one per arch beside it.
    assert_eq!(
        repos("      enable: true\n      repo: cache.r.io/app-cache"),
        [
            Some("cache.r.io/app-cache-amd64".into()),
            Some("cache.r.io/app-cache-arm64".into())
        ]
    );
    // Off: nothing derived, nothing changed.
    assert_eq!(
        repos("      enable: false\n      repo: cache.r.io/x"),
        [Some("cache.r.io/x".into()), Some("cache.r.io/x".into())]
    );
    assert_eq!(repos("      ttl: 1h"), [None, None]);
}

#[test]
fn layer_compression_merges_and_its_level_is_checked() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\n    compression: zstd\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko:\n      compression-level: 19\n",
        ),
    ]);
    let plan = repo.config().unwrap();
    let got: Vec<_> = plan.services[0]
        .builds
        .iter()
        .map(|b| (b.spec.compression, b.spec.compression_level))
        .collect();
    assert_eq!(
        got,
        [
            (Some(bakery_protocol::spec::Compression::Zstd), None),
            (Some(bakery_protocol::spec::Compression::Zstd), Some(19))
        ]
    );

    // 19 is a zstd level, not a gzip one: the error points at the level.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\n    compression: gzip\nbake:\n  - arch: amd64\n    kaniko:\n      compression-level: 19\n",
        ),
    ]);
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        8,
        "out of range for gzip",
    );
    assert!(d.hint.unwrap().contains("1 to 9"));

    // An unknown codec names the ones there are.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\n    compression: lz4\n",
        ),
    ]);
    let err = repo.config().unwrap_err().to_string();
    assert!(
        err.contains("config.yaml:4") && err.contains("zstd"),
        "{err}"
    );
}

/// Misspelt keys anywhere bakery reads are errors with a suggestion: a
/// misspelt `x-bake.platforms` had silently dropped an arch.
#[test]
fn misspelt_compose_keys_are_located_errors_with_a_suggestion() {
    let cases = [
        ("service:\n  app:\n    build: .\n", 1, "unknown key `service`", "`services`"),
        ("services:\n  app:\n    imgae: r.io/a:1\n    build: .\n", 3, "unknown key `imgae` in `services.app`", "`image`"),
        (
            "services:\n  app:\n    image: r.io/a:1\n    build: .\n    x-bake:\n      platfroms: [linux/amd64, linux/arm64]\n",
            6,
            "unknown key `platfroms` in `services.app.x-bake`",
            "`platforms`",
        ),
        (
            "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      x-bake:\n        platfrom: [linux/arm64]\n",
            7,
            "unknown key `platfrom` in `services.app.build.x-bake`",
            "`platforms`",
        ),
    ];
    for (compose, line, message, suggestion) in cases {
        let repo = Repo::new(&[("Dockerfile", "FROM alpine\n"), ("compose.yaml", compose)]);
        let d = assert_located(
            repo.compose("compose.yaml", &[]).unwrap_err(),
            "compose.yaml",
            line,
            message,
        );
        assert!(d.hint.as_deref().unwrap_or("").contains(suggestion), "{d}");
    }
    // compose's own keys, and x- keys, are fine.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "name: p\nx-anchors: {}\nvolumes: {}\nservices:\n  app:\n    image: r.io/a:1\n    build: .\n    restart: always\n    healthcheck: {test: [CMD, true]}\n    x-mine: 1\n"),
    ]);
    repo.compose("compose.yaml", &[]).unwrap();
}

/// Keys compose (or bake) knows and bakery does not apply are warnings, in
/// the errors' `file:line:col:` style.
#[test]
fn keys_bakery_does_not_apply_are_located_warnings() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      ssh: [default]\n    x-bake:\n      tags: [r.io/a:2]\n"),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    let file = repo.path("compose.yaml");
    let want = [
        format!(
            "{}:6:7: `services.app.build.ssh` is not applied by bakery",
            file.display()
        ),
        format!(
            "{}:8:7: `services.app.x-bake.tags` is not applied by bakery",
            file.display()
        ),
    ];
    for w in want {
        assert!(
            plan.warnings.iter().any(|p| p.starts_with(&w)),
            "{w}\n{:?}",
            plan.warnings
        );
    }
}

/// `image: r.io/app:${TAGG}` with TAGG unset: the error names the variable,
/// at its place, not a YAML or tag error at a column of the substituted text.
#[test]
fn an_unset_variable_that_breaks_a_value_is_named_at_its_place() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/app:${TAGG}\n    build: .\n",
        ),
    ]);
    let d = assert_located(
        repo.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        3,
        "`TAGG` is not set",
    );
    assert_eq!(d.location.column, 21);
    assert!(d.hint.as_deref().unwrap().contains("${TAGG:-value}"), "{d}");
}

#[test]
fn a_service_without_build_is_named_as_such() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:1\n    build: .\n  redis:\n    image: redis:7\n",
        ),
    ]);
    let d = assert_located(
        repo.compose("compose.yaml", &["redis"]).unwrap_err(),
        "compose.yaml",
        5,
        "service `redis` has no `build` section (compose runs it from `redis:7`)",
    );
    assert!(d.hint.as_deref().unwrap().contains("(app)"), "{d}");
}

/// With neither --config nor --compose and no config.yaml, the compose file
/// is found as `docker compose` finds it.
#[test]
fn compose_files_are_found_as_docker_compose_finds_them() {
    let compose = "services:\n  app:\n    image: r.io/a:1\n    build: .\n";
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("docker-compose.yml", compose),
        ("compose.yml", compose),
    ]);
    let plan = repo.config().unwrap();
    assert_eq!(plan.discovered, Some(repo.path("compose.yml")));
    assert_eq!(plan.services[0].name, "app");
    let mut opts = repo.opts();
    opts.env
        .insert("COMPOSE_FILE".into(), "docker-compose.yml".into());
    assert_eq!(
        Plan::resolve(&opts).unwrap().discovered,
        Some(repo.path("docker-compose.yml"))
    );
    opts.env.insert(
        "COMPOSE_FILE".into(),
        "compose.yml:docker-compose.yml".into(),
    );
    let e = Plan::resolve(&opts).unwrap_err().to_string();
    assert!(e.contains("bakery reads one compose file"), "{e}");
    let empty = Repo::new(&[("Dockerfile", "FROM alpine\n")]);
    let e = empty.config().unwrap_err().to_string();
    assert!(
        e.contains("compose.yaml, compose.yml, docker-compose.yaml"),
        "{e}"
    );
}

/// `--platform`, `--build-arg`, `--label`, `--target`, `--cache` with a
/// config or compose file apply to every selected service, as `docker
/// buildx bake --set` does.
#[test]
fn flags_apply_to_every_selected_service_of_a_file() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("compose.yaml", "services:\n  a:\n    image: r.io/a:1\n    build:\n      context: .\n      args: {KEEP: k, OVER: file}\n  b:\n    image: r.io/b:1\n    build: .\n"),
    ]);
    let mut opts = repo.opts();
    opts.compose = Some(repo.path("compose.yaml"));
    opts.overrides = bakery_plan::Overrides {
        platforms: vec!["linux/arm64".into()],
        build_args: [("OVER".to_string(), "flag".to_string())].into(),
        labels: [("team".to_string(), "core".to_string())].into(),
        target: Some("runtime".into()),
        cache: true,
        cache_repo: None,
        secrets: vec![],
        no_push: false,
        disk: Some("60G".parse().unwrap()),
        no_cache: false,
    };
    let plan = Plan::resolve(&opts).unwrap();
    assert_eq!(plan.services.len(), 2);
    for (_, build) in plan.builds() {
        assert_eq!(
            build.spec.disk.map(|d| d.gib()),
            Some(60),
            "--disk for every service"
        );
    }
    for (service, build) in plan.builds() {
        assert_eq!(build.arch, Arch::Arm64, "{}", service.name);
        assert_eq!(
            build.spec.build_args.get("OVER").map(String::as_str),
            Some("flag")
        );
        assert_eq!(
            build.spec.labels.get("team").map(String::as_str),
            Some("core")
        );
        assert_eq!(build.spec.target.as_deref(), Some("runtime"));
        assert_eq!(build.spec.cache.enable, Some(true));
        assert!(
            build
                .spec
                .cache
                .repo
                .as_deref()
                .unwrap()
                .ends_with("-cache-arm64"),
            "{:?}",
            build.spec.cache
        );
    }
    let a = &plan.services.iter().find(|s| s.name == "a").unwrap().builds[0];
    assert_eq!(
        a.spec.build_args.get("KEEP").map(String::as_str),
        Some("k"),
        "merged, not replaced"
    );
}

/// kaniko-credentials read the environment, so no password is committed;
/// an unset variable is an error at its line that names it, not an empty
/// password that fails at the push.
#[test]
fn kaniko_credentials_read_the_environment() {
    let config = "global:\n  kaniko-credentials:\n    - registry: ${REG_HOST:-r.io}\n      username: ci\n      password: ${REG_PW}\n  kaniko:\n    destination: r.io/app:v1\n";
    let repo = Repo::new(&[("Dockerfile", "FROM alpine\n"), ("config.yaml", config)]);
    let mut opts = repo.opts();
    opts.env.insert("REG_PW".into(), "pa$$word-from-env".into());
    let plan = Plan::resolve(&opts).unwrap();
    let c = &plan.services[0].builds[0].spec.credentials[0];
    assert_eq!(c.registry, "r.io");
    assert_eq!(c.password.expose(), "pa$$word-from-env");
    let d = assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        5,
        "${REG_PW} is not set",
    );
    assert!(d.to_string().contains("masked CI/CD variable"), "{d}");
    let literal = config.replace("${REG_PW}", "'a$$b'");
    let repo = Repo::new(&[("Dockerfile", "FROM alpine\n"), ("config.yaml", &literal)]);
    let plan = repo.config().unwrap();
    assert_eq!(
        plan.services[0].builds[0].spec.credentials[0]
            .password
            .expose(),
        "a$b"
    );
}

/// Secrets from config.yaml (a variable, a file relative to the
/// repository), compose (top-level `secrets:` with `file:` and
/// `environment:`, `target` as the id) and `--secret`, which wins on an id.
#[test]
fn build_secrets_from_every_file_and_the_flag() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("tok.txt", "file-secret-1\n"),
        ("config.yaml", "global:\n  secrets:\n    - id=NPM_TOKEN\n    - {id: tok, src: tok.txt}\n  kaniko:\n    destination: r.io/app:v1\n"),
        ("app/Dockerfile", "FROM alpine\n"),
        ("app/key.pem", "compose-file-secret\n"),
        ("app/compose.yaml", "services:\n  api:\n    image: r.io/api:1\n    build:\n      context: .\n      secrets:\n        - key\n        - source: token\n          target: npm\nsecrets:\n  key:\n    file: ./key.pem\n  token:\n    environment: API_TOKEN\n"),
    ]);
    let mut opts = repo.opts();
    opts.env.insert("NPM_TOKEN".into(), "env-secret-2".into());
    opts.env
        .insert("API_TOKEN".into(), "compose-env-secret".into());
    let plan = Plan::resolve(&opts).unwrap();
    let values = |p: &Plan| -> Vec<(String, String)> {
        p.services[0].builds[0]
            .spec
            .secrets
            .iter()
            .map(|s| (s.id.clone(), s.value.expose().to_string()))
            .collect()
    };
    assert_eq!(
        values(&plan),
        [
            ("NPM_TOKEN".into(), "env-secret-2".into()),
            ("tok".into(), "file-secret-1\n".into())
        ]
    );
    let shown = serde_json::to_string(&plan.redacted()).unwrap();
    assert!(
        !shown.contains("env-secret-2") && !shown.contains("file-secret-1"),
        "{shown}"
    );

    let compose = Plan::resolve(&PlanOptions {
        compose: Some(repo.path("app/compose.yaml")),
        ..opts.clone()
    })
    .unwrap();
    assert_eq!(
        values(&compose),
        [
            ("key".into(), "compose-file-secret\n".into()),
            ("npm".into(), "compose-env-secret".into())
        ]
    );
    opts.overrides.secrets =
        vec![bakery_plan::secrets::SecretRef::parse("id=tok,env=API_TOKEN", |_| false).unwrap()];
    let flagged = Plan::resolve(&opts).unwrap();
    assert!(values(&flagged).contains(&("tok".into(), "compose-env-secret".into())));
}

/// A secret that cannot be read fails the plan where it was named, with
/// its id; a compose service naming an undefined secret too.
#[test]
fn missing_secrets_are_located_by_id() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  kaniko:\n    destination: r.io/app:v1\nbake:\n  - arch: amd64\n    secrets:\n      - {id: gone, src: missing.txt}\n"),
        ("compose.yaml", "services:\n  api:\n    image: r.io/api:1\n    build:\n      context: .\n      secrets: [nope]\n"),
    ]);
    assert_located(
        repo.config().unwrap_err(),
        "config.yaml",
        7,
        "secret `gone`",
    );
    // With config.yaml present it is the plan; compose alone:
    std::fs::remove_file(repo.path("config.yaml")).unwrap();
    let e = repo.compose("compose.yaml", &[]).unwrap_err();
    assert_located(
        e,
        "compose.yaml",
        6,
        "`nope` is not defined under the top-level `secrets:`",
    );
}

/// `bakery plan` shows every password and secret as `***`, however short
/// (the log redactor leaves values under 4 characters alone), and one id
/// named twice in one place is an error there.
#[test]
fn short_secrets_are_masked_in_the_plan_and_ids_are_named_once() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        ("config.yaml", "global:\n  kaniko-credentials:\n    - {registry: r.io, username: u, password: pw1}\n  secrets:\n    - id=S\n  kaniko:\n    destination: r.io/app:v1\n"),
    ]);
    let mut opts = repo.opts();
    opts.env.insert("S".into(), "abc".into());
    let shown = serde_json::to_string(&Plan::resolve(&opts).unwrap().redacted()).unwrap();
    assert!(
        !shown.contains("\"pw1\"") && !shown.contains("\"abc\""),
        "{shown}"
    );
    std::fs::write(repo.path("config.yaml"), "global:\n  secrets:\n    - id=S\n    - {id: S, env: S}\n  kaniko:\n    destination: r.io/app:v1\n").unwrap();
    assert_located(
        Plan::resolve(&opts).unwrap_err(),
        "config.yaml",
        4,
        "secret `S` is named twice here",
    );
}

/// A Dockerfile outside the context (compose and buildx allow it) is sent
/// beside the context; `--file` from the repository wins over one relative
/// to the context, as in docker/build-push-action.
#[test]
fn a_dockerfile_outside_the_context_is_sent_beside_it() {
    let repo = Repo::new(&[
        ("docker/app.Dockerfile", "FROM alpine\n"),
        ("app/main.go", ""),
        ("app/Dockerfile", "FROM busybox\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: app\n      dockerfile: ../docker/app.Dockerfile\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    let b = &plan.services[0].builds[0];
    assert_eq!(b.spec.dockerfile, ".bakery-dockerfile/app.Dockerfile");
    assert!(b.spec.dockerfile_beside);
    assert_eq!(
        b.dockerfile_outside.as_deref(),
        Some(
            repo.path("docker/app.Dockerfile")
                .canonicalize()
                .unwrap()
                .as_path()
        )
    );
    assert_eq!(b.dockerfile_path(), b.dockerfile_outside.clone().unwrap());

    // `..` that comes back into the context is in it.
    let text = "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: app\n      dockerfile: ../app/Dockerfile\n";
    fs::write(repo.path("compose.yaml"), text).unwrap();
    let b = &repo.compose("compose.yaml", &[]).unwrap().services[0].builds[0];
    assert_eq!(
        (b.spec.dockerfile.as_str(), b.spec.dockerfile_beside),
        ("Dockerfile", false)
    );
    assert_eq!(b.dockerfile_outside, None);

    // A symlink in the context to a Dockerfile elsewhere in the repository.
    std::os::unix::fs::symlink("../docker/app.Dockerfile", repo.path("app/Linked")).unwrap();
    let text = "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: app\n      dockerfile: Linked\n";
    fs::write(repo.path("compose.yaml"), text).unwrap();
    let b = &repo.compose("compose.yaml", &[]).unwrap().services[0].builds[0];
    assert_eq!(b.spec.dockerfile, ".bakery-dockerfile/app.Dockerfile");

    // --file: from the repository when that exists, else from the context.
    let mut opts = repo.opts();
    let inline = |file: &str| bakery_plan::InlineBuild {
        context: "app".into(),
        dockerfile: Some(file.into()),
        tags: vec!["r.io/team/app:1".into()],
        ..Default::default()
    };
    let resolve = |opts: &mut PlanOptions, file: &str| {
        opts.inline = Some(inline(file));
        Plan::resolve(opts).map(|p| p.services[0].builds[0].clone())
    };
    let b = resolve(&mut opts, "docker/app.Dockerfile").unwrap();
    assert!(b.spec.dockerfile_beside, "{b:?}");
    let b = resolve(&mut opts, "app/Dockerfile").unwrap();
    assert_eq!(
        (b.spec.dockerfile.as_str(), b.spec.dockerfile_beside),
        ("Dockerfile", false)
    );
    let b = resolve(&mut opts, "Dockerfile").unwrap();
    assert_eq!(
        (b.spec.dockerfile.as_str(), b.spec.dockerfile_beside),
        ("Dockerfile", false)
    );
    let err = resolve(&mut opts, "nope/Dockerfile")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`nope/Dockerfile` not found"), "{err}");
}

/// `disk` in config.yaml (global and per bake entry) and in compose's
/// x-bake; a size without a unit is an error at its line.
#[test]
fn disk_is_read_from_config_and_compose() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  disk: 40G\n  kaniko:\n    destination: r.io/a:1\nbake:\n  - arch: amd64\n  - arch: arm64\n    disk: 100G\n",
        ),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/a:1\n    build:\n      context: .\n      x-bake:\n        disk: 80G\n",
        ),
    ]);
    let plan = repo.config().unwrap();
    let disks: Vec<_> = plan
        .builds()
        .map(|(_, b)| b.spec.disk.unwrap().gib())
        .collect();
    assert_eq!(disks, [40, 100]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(plan.services[0].builds[0].spec.disk.unwrap().gib(), 80);
    fs::write(
        repo.path("config.yaml"),
        "global:\n  disk: 40\n  kaniko:\n    destination: r.io/a:1\n",
    )
    .unwrap();
    assert_located(repo.config().unwrap_err(), "config.yaml", 2, "no unit");
}

/// `--no-cache` turns off a layer cache the files turn on, for every
/// service, as docker buildx's flag does.
#[test]
fn no_cache_turns_off_the_files_cache() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:1\n    cache: {enable: true, repo: cache.example.com}\n",
        ),
    ]);
    let cached = repo.config().unwrap();
    assert_eq!(cached.services[0].builds[0].spec.cache.enable, Some(true));
    let mut opts = repo.opts();
    opts.overrides.no_cache = true;
    let plan = Plan::resolve(&opts).unwrap();
    assert_eq!(plan.services[0].builds[0].spec.cache.enable, Some(false));
}

/// A cache TTL the builders would refuse fails `bakery plan`, at its line,
/// not the build inside the agent after the upload.
#[test]
fn a_cache_ttl_that_is_not_a_duration_fails_at_its_line() {
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\n    cache:\n      enable: true\n      ttl: one day please\nbake:\n  - arch: amd64\n",
        ),
    ]);
    let err = repo.config().unwrap_err().to_string();
    assert!(
        err.contains("config.yaml:6") && err.contains("`one day please` is not a duration"),
        "{err}"
    );
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.io/app:v1\n    cache:\n      enable: true\n      ttl: 1h30m\nbake:\n  - arch: amd64\n",
        ),
    ]);
    assert!(repo.config().is_ok());
}

/// What the controller refuses, `bakery plan` refuses with the file and
/// line (#39 item 5): the same rules, run on the spec the plan would send.
#[test]
fn values_the_controller_refuses_are_refused_where_they_are_written() {
    let config = |yaml: &str| {
        Repo::new(&[("Dockerfile", "FROM alpine\n"), ("config.yaml", yaml)])
            .config()
            .unwrap_err()
    };
    let base = "global:\n  kaniko:\n    destination: r.io/app:v1\n";
    assert_located(
        config(&format!("{base}    build-args:\n      \"BAD NAME\": x\n")),
        "config.yaml",
        5,
        "build-args.BAD NAME: a name must be",
    );
    assert_located(
        config(&format!(
            "{base}bake:\n  - arch: amd64\n    kaniko:\n      labels:\n        org.example.ok: y\n        \"a=b\": x\n"
        )),
        "config.yaml",
        9,
        "labels.a=b",
    );
    assert_located(
        config(&format!("{base}    target: \"a\\tb\"\n")),
        "config.yaml",
        4,
        "target: `a\\tb` has control characters",
    );
    assert_located(
        config(&format!("{base}    extra-flags: [\"--a\\nb\"]\n")),
        "config.yaml",
        4,
        "extra-flags",
    );
    let compose = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "compose.yaml",
            "services:\n  app:\n    image: r.io/app:v1\n    build:\n      context: .\n      args:\n        \"NO SPACES\": x\n",
        ),
    ]);
    assert_located(
        compose.compose("compose.yaml", &[]).unwrap_err(),
        "compose.yaml",
        7,
        "build.args.NO SPACES",
    );
    // Maps merge key by key: the layer that wrote the bad key is named,
    // not the more specific one that has the block too.
    assert_located(
        config(&format!(
            "{base}    build-args:\n      \"BAD NAME\": x\nbake:\n  - arch: amd64\n    kaniko:\n      build-args:\n        OK: y\n"
        )),
        "config.yaml",
        5,
        "kaniko.build-args.BAD NAME",
    );
    // A flag's value is the command line's, not the file's.
    let repo = Repo::new(&[
        ("Dockerfile", "FROM alpine\n"),
        (
            "config.yaml",
            &format!("{base}    build-args:\n      OK: y\n"),
        ),
    ]);
    let mut opts = repo.opts();
    opts.overrides.build_args = [("A B".to_string(), "1".to_string())].into();
    let err = bakery_plan::Plan::resolve(&opts).unwrap_err();
    let d = err.diagnostic().unwrap();
    assert_eq!(d.location, bakery_plan::Location::command_line(), "{d}");
    assert!(d.to_string().contains("build-args.A B"), "{d}");
}
