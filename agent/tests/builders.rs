//! The exact command lines each builder runs.

use std::path::{Path, PathBuf};

use bakery_agent::builder::{of_kind, Job};
use bakery_protocol::api::agent_env::BuilderKind;
use bakery_protocol::api::{AgentTask, ContextSource};
use bakery_protocol::spec::{Cache, Compression};
use bakery_protocol::Arch;
use bakery_protocol::BuildSpec;

fn task(arch: Arch, push: Option<&str>) -> AgentTask {
    AgentTask {
        build_id: "b1".into(),
        service: "app".into(),
        task_id: "b1-arm64".into(),
        arch,
        push: push.map(String::from),
        context: ContextSource::Controller {
            key: format!("contexts/sha256-{}.tar.gz", "0".repeat(64))
                .parse()
                .unwrap(),
        },
        context_bytes: None,
        spec: BuildSpec {
            target: Some("runtime".into()),
            build_args: [("VERSION".to_string(), "1.2".to_string())].into(),
            labels: [("team".to_string(), "core".to_string())].into(),
            annotations: [(
                "org.opencontainers.image.title".to_string(),
                "app".to_string(),
            )]
            .into(),
            cache: Cache {
                enable: Some(true),
                repo: Some("r.io/cache/app".into()),
                ttl: Some("24h".into()),
                copy_layers: Some(true),
                run_layers: Some(false),
                compressed: Some(false),
            },
            cache_from: vec![],
            snapshot_mode: Some(bakery_protocol::SnapshotMode::Redo),
            use_new_run: true,
            cleanup: true,
            ignore_path: vec!["/var/cache".into()],
            extra_flags: vec!["--verbosity=debug".into()],
            compression: Some(Compression::Zstd),
            compression_level: Some(3),
            ..BuildSpec::new("docker/Dockerfile", arch)
        },
    }
}

#[test]
fn kaniko_command_line() {
    let t = task(Arch::Arm64, Some("r.io/app:1_arm64"));
    let job = Job {
        task: &t,
        context_dir: Path::new("/w/context"),
        work_dir: Path::new("/w"),
        docker_config: Some(Path::new("/w/docker")),
        secret_files: &[],
        ssh_files: &[],
        insecure: &["reg.lan:5000".to_string()],
    };
    let steps = of_kind(BuilderKind::Kaniko).steps(&job).unwrap();
    assert_eq!(steps.len(), 1);
    let host = Arch::host();
    let want: Vec<String> = [
        "/kaniko/executor",
        "--context=dir:///w/context",
        "--dockerfile=/w/context/docker/Dockerfile",
        "--destination=r.io/app:1_arm64",
        "--digest-file=/w/digest",
        "--custom-platform=linux/arm64",
        "--skip-unused-stages",
        // Names only: the values are in the executor's environment.
        "--build-arg=BUILDARCH",
        "--build-arg=BUILDOS",
        "--build-arg=BUILDPLATFORM",
        "--build-arg=TARGETARCH",
        "--build-arg=TARGETOS",
        "--build-arg=TARGETPLATFORM",
        "--build-arg=TARGETVARIANT",
        "--build-arg=VERSION",
        "--target=runtime",
        "--label=team=core",
        "--cache=true",
        "--cache-repo=r.io/cache/app",
        "--cache-ttl=24h",
        "--cache-copy-layers",
        "--cache-run-layers=false",
        "--compressed-caching=false",
        "--compression=zstd",
        "--compression-level=3",
        "--snapshot-mode=redo",
        "--use-new-run",
        "--cleanup",
        "--ignore-path=/var/cache",
        "--ignore-path=/w",
        "--insecure-registry=reg.lan:5000",
        "--verbosity=debug",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    assert_eq!(steps[0].argv, want);
    let env = &steps[0].env;
    assert_eq!(env["DOCKER_CONFIG"], "/w/docker");
    assert_eq!(env["BUILDARCH"], host.as_str());
    assert_eq!(env["TARGETPLATFORM"], "linux/arm64");
    assert_eq!(env["TARGETVARIANT"], "");
    assert_eq!(env["VERSION"], "1.2");
}

/// A build arg's value is never on a builder's command line (every user of
/// the machine sees those in `ps`), but for names the builder reads itself.
#[test]
fn build_arg_values_stay_off_the_command_line() {
    let mut t = task(Arch::Amd64, Some("r.io/app:1_amd64"));
    t.spec.build_args = [
        ("DB_PASSWORD".to_string(), "hunter2-in-argv".to_string()),
        ("PATH".to_string(), "/opt/bin".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "aws-key".to_string()),
    ]
    .into();
    let work = tempfile::tempdir().unwrap();
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: None,
        secret_files: &[],
        ssh_files: &[],
        insecure: &[],
    };
    for builder in [BuilderKind::Kaniko, BuilderKind::Buildah] {
        let steps = of_kind(builder).steps(&job).unwrap();
        let argv = steps[0].argv.join(" ");
        assert!(!argv.contains("hunter2-in-argv"), "{builder}: {argv}");
        assert!(
            argv.contains("--build-arg=DB_PASSWORD "),
            "{builder}: {argv}"
        );
        assert_eq!(steps[0].env["DB_PASSWORD"], "hunter2-in-argv", "{builder}");
        // The builder's own PATH and cloud login are not overridden.
        assert!(
            argv.contains("--build-arg=PATH=/opt/bin"),
            "{builder}: {argv}"
        );
        assert!(!steps[0].env.contains_key("PATH"), "{builder}");
        assert!(
            !steps[0].env.contains_key("AWS_SECRET_ACCESS_KEY"),
            "{builder}"
        );
        for step in &steps[1..] {
            assert!(
                !step.env.contains_key("DB_PASSWORD"),
                "{builder}: only the build step"
            );
        }
    }
}

#[test]
fn kaniko_without_push() {
    let mut t = task(Arch::Amd64, None);
    t.spec.no_push = true;
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: Path::new("/w"),
        docker_config: None,
        secret_files: &[],
        ssh_files: &[],
        insecure: &[],
    };
    let argv = &of_kind(BuilderKind::Kaniko).steps(&job).unwrap()[0].argv;
    assert!(argv.contains(&"--no-push".to_string()));
    assert!(!argv.iter().any(|a| a.starts_with("--destination")));
}

#[test]
fn buildah_builds_then_pushes_with_its_own_storage() {
    let work = tempfile::tempdir().unwrap();
    let t = task(Arch::Arm64, Some("127.0.0.1:5000/app:1_arm64"));
    let insecure = ["127.0.0.1:5000".to_string()];
    let secrets = [("npmrc".to_string(), PathBuf::from("/w/secrets/0"))];
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: Some(Path::new("/w/docker")),
        secret_files: &secrets,
        ssh_files: &[],
        insecure: &insecure,
    };
    let steps = of_kind(BuilderKind::Buildah).steps(&job).unwrap();
    let w = work.path().display();
    assert_eq!(steps.len(), 2);
    let build = steps[0].argv.join(" ");
    assert_eq!(
        build,
        format!(
            "buildah --storage-driver=vfs --root={w}/storage --runroot={w}/run build --isolation=chroot --platform=linux/arm64 \
             --file=/c/docker/Dockerfile --tag=localhost/bakery-task:arm64 --build-arg=VERSION --secret=id=npmrc,src=/w/secrets/0 --target=runtime --label=team=core --annotation=org.opencontainers.image.title=app \
             --layers --cache-from=r.io/cache/app --cache-to=r.io/cache/app --cache-ttl=24h --verbosity=debug /c"
        )
    );
    let push = steps[1].argv.join(" ");
    assert_eq!(
        push,
        format!(
            "buildah --storage-driver=vfs --root={w}/storage --runroot={w}/run push --digestfile={w}/digest \
             --compression-format=zstd --compression-level=3 localhost/bakery-task:arm64 docker://127.0.0.1:5000/app:1_arm64"
        )
    );
    assert_eq!(steps[0].env["REGISTRY_AUTH_FILE"], "/w/docker/config.json");
    assert_eq!(steps[0].env["VERSION"], "1.2");
    let conf = std::fs::read_to_string(&steps[0].env["CONTAINERS_REGISTRIES_CONF"]).unwrap();
    assert!(
        conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
        "{conf}"
    );
}

/// A build without logins must not use a login file the agent's own
/// environment points at (a local agent inherits the runner's
/// REGISTRY_AUTH_FILE): the arch images would push with a login the index
/// writer lacks.
#[test]
fn buildah_without_logins_reads_no_ambient_login_file() {
    let work = tempfile::tempdir().unwrap();
    let t = task(Arch::Amd64, Some("r.io/app:1_amd64"));
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: None,
        secret_files: &[],
        ssh_files: &[],
        insecure: &[],
    };
    let steps = of_kind(BuilderKind::Buildah).steps(&job).unwrap();
    let file = PathBuf::from(&steps[0].env["REGISTRY_AUTH_FILE"]);
    assert!(file.starts_with(work.path()), "{}", file.display());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{\"auths\":{}}");
    assert!(steps
        .iter()
        .all(|s| s.env["REGISTRY_AUTH_FILE"] == steps[0].env["REGISTRY_AUTH_FILE"]));
}

/// Build secrets reach both builders as `--secret id=…,src=<file>` (the
/// Kaniko fork takes buildx's syntax): a path, never the value.
#[test]
fn both_builders_take_secrets_as_files() {
    let work = tempfile::tempdir().unwrap();
    let mut t = task(Arch::Amd64, Some("r.io/app:1_amd64"));
    t.spec.secrets.push(bakery_protocol::spec::BuildSecret {
        id: "npmrc".into(),
        value: bakery_protocol::spec::Secret::new("never-in-argv-77"),
    });
    let files = [("npmrc".to_string(), work.path().join("secrets/0"))];
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: None,
        secret_files: &files,
        ssh_files: &[],
        insecure: &[],
    };
    let flag = format!("--secret=id=npmrc,src={}", files[0].1.display());
    for builder in [BuilderKind::Kaniko, BuilderKind::Buildah] {
        let steps = of_kind(builder).steps(&job).unwrap();
        assert!(
            steps[0].argv.contains(&flag),
            "{builder}: {:?}",
            steps[0].argv
        );
        for step in &steps {
            let all = format!("{:?}{:?}", step.argv, step.env);
            assert!(!all.contains("never-in-argv-77"), "{builder}: {all}");
        }
    }
}

/// Named build contexts and SSH keys: buildah's `--build-context` (a
/// directory sent with the context, or an image) and `--ssh id=file`;
/// Kaniko, which has neither, refuses the task instead of building without.
#[test]
fn buildah_takes_named_contexts_and_ssh_keys_and_kaniko_refuses_them() {
    use bakery_protocol::spec::NamedContext;
    let work = tempfile::tempdir().unwrap();
    let mut t = task(Arch::Amd64, Some("r.io/app:1_amd64"));
    t.spec.build_contexts = [
        ("shared".to_string(), NamedContext::Archive(0)),
        (
            "alpine".to_string(),
            NamedContext::DockerImage("r.io/mirror/alpine:3.20".into()),
        ),
    ]
    .into();
    let keys = [("default".to_string(), PathBuf::from("/w/ssh/0"))];
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: None,
        secret_files: &[],
        ssh_files: &keys,
        insecure: &[],
    };
    let steps = of_kind(BuilderKind::Buildah).steps(&job).unwrap();
    let argv = &steps[0].argv;
    assert!(
        argv.contains(&"--ssh=default=/w/ssh/0".to_string()),
        "{argv:?}"
    );
    assert!(
        argv.contains(&"--build-context=alpine=docker-image://r.io/mirror/alpine:3.20".to_string()),
        "{argv:?}"
    );
    assert!(
        argv.contains(&format!(
            "--build-context=shared={}/contexts/0",
            work.path().display()
        )),
        "{argv:?}"
    );
    let refused = of_kind(BuilderKind::Kaniko).steps(&job).unwrap_err();
    assert!(refused
        .to_string()
        .contains("Kaniko has no named build contexts"));
}
