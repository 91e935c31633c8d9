//! The exact command lines each builder runs.

use std::path::Path;

use bakery_agent::builder::{by_name, Job};
use bakery_core::api::{AgentTask, ContextSource};
use bakery_core::plan::BuildSpec;
use bakery_core::settings::{Cache, Compression};
use bakery_core::Arch;

fn task(arch: Arch, push: Option<&str>) -> AgentTask {
    AgentTask {
        build_id: "b1".into(),
        task_id: "b1-arm64".into(),
        arch,
        push: push.map(String::from),
        context: ContextSource::Controller { key: "k".into() },
        spec: BuildSpec {
            platform: None,
            dockerfile: "docker/Dockerfile".into(),
            target: Some("runtime".into()),
            build_args: [("VERSION".to_string(), "1.2".to_string())].into(),
            labels: [("team".to_string(), "core".to_string())].into(),
            env: Default::default(),
            pre_script: None,
            post_script: None,
            credentials: vec![],
            cpu: None,
            memory: None,
            spot: false,
            cache: Cache {
                enable: Some(true),
                repo: Some("r.io/cache/app".into()),
                ttl: Some("24h".into()),
                copy_layers: Some(true),
                run_layers: Some(false),
                compressed: Some(false),
            },
            cache_from: vec![],
            snapshot_mode: Some("redo".into()),
            use_new_run: true,
            cleanup: true,
            custom_platform: arch.platform().into(),
            no_push: false,
            ignore_path: vec!["/var/cache".into()],
            extra_flags: vec!["--verbosity=debug".into()],
            compression: Some(Compression::Zstd),
            compression_level: Some(3),
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
        insecure: &["reg.lan:5000".to_string()],
    };
    let steps = by_name("kaniko").unwrap().steps(&job).unwrap();
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
        &format!("--build-arg=BUILDARCH={host}"),
        "--build-arg=BUILDOS=linux",
        &format!("--build-arg=BUILDPLATFORM=linux/{host}"),
        "--build-arg=TARGETARCH=arm64",
        "--build-arg=TARGETOS=linux",
        "--build-arg=TARGETPLATFORM=linux/arm64",
        "--build-arg=TARGETVARIANT=",
        "--build-arg=VERSION=1.2",
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
    .map(|s| s.to_string())
    .collect();
    assert_eq!(steps[0].argv, want);
    assert_eq!(steps[0].env["DOCKER_CONFIG"], "/w/docker");
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
        insecure: &[],
    };
    let argv = &by_name("kaniko").unwrap().steps(&job).unwrap()[0].argv;
    assert!(argv.contains(&"--no-push".to_string()));
    assert!(!argv.iter().any(|a| a.starts_with("--destination")));
}

#[test]
fn buildah_builds_then_pushes_with_its_own_storage() {
    let work = tempfile::tempdir().unwrap();
    let t = task(Arch::Arm64, Some("127.0.0.1:5000/app:1_arm64"));
    let insecure = ["127.0.0.1:5000".to_string()];
    let job = Job {
        task: &t,
        context_dir: Path::new("/c"),
        work_dir: work.path(),
        docker_config: Some(Path::new("/w/docker")),
        insecure: &insecure,
    };
    let steps = by_name("buildah").unwrap().steps(&job).unwrap();
    let w = work.path().display();
    assert_eq!(steps.len(), 2);
    let build = steps[0].argv.join(" ");
    assert_eq!(
        build,
        format!(
            "buildah --storage-driver=vfs --root={w}/storage --runroot={w}/run build --isolation=chroot --platform=linux/arm64 \
             --file=/c/docker/Dockerfile --tag=localhost/bakery-task:arm64 --build-arg=VERSION=1.2 --target=runtime --label=team=core \
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
    let conf = std::fs::read_to_string(&steps[0].env["CONTAINERS_REGISTRIES_CONF"]).unwrap();
    assert!(
        conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
        "{conf}"
    );
}
