//! Registry logins from wherever the runner has them, and build secrets,
//! end to end: a real registry that requires a login (docker-registry with
//! an htpasswd file), a controller with local buildah agents, the client.
//! Every test also checks the password or secret appears in no output and
//! nowhere in the controller's data dir once the build is over.

mod support;
use support::provenance::image_entries;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use sha2::Digest;
use support::*;

const USER: &str = "ci-user";
const PASSWORD: &str = "htpasswd-Login-Pw-4411";

fn bakery(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(dir)
        .args(args)
        // The runner's own logins must not leak into what is tested.
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("CI_REGISTRY")
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", dir.join("no-runtime-dir"))
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

/// `skopeo inspect --raw` with the test login.
fn manifest_with_login(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A Docker config dir whose `auths` holds the test login for `host`.
fn docker_config(dir: &Path, host: &str) -> std::path::PathBuf {
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("config.json"), auths(host, PASSWORD)).unwrap();
    config
}

/// `USER:password` as a Docker config's `auth` holds it.
fn basic(password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
}

/// A Docker config (or containers auth.json) with one login for `host`.
fn auths(host: &str, password: &str) -> String {
    format!(
        r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
        basic(password)
    )
}

/// Every file under `dir`, concatenated (the journal is binary: lossy).
fn all_files(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The build's two arch images and the index are pushed, the index over
/// both arches: no path where the arch images push and the index cannot.
fn assert_pushed(reference: &str) {
    let index = manifest_with_login(reference);
    assert_eq!(Some(image_entries(&index).len()), Some(2), "{index}");
}

fn assert_nowhere(secret: &str, out: &Output, controller: &Server) {
    assert!(
        !text(out).contains(secret),
        "`{secret}` leaked:\n{}",
        text(out)
    );
    let files = files_holding(controller.dir.path(), secret);
    assert!(files.is_empty(), "`{secret}` is in {files:?}");
    let all = all_files(controller.dir.path());
    assert!(
        all.contains("controller listening"),
        "the controller log was read"
    );
}

fn files_holding(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

const COPY_ONLY: &str = "FROM scratch\nCOPY hello.txt /\n";

#[test]
fn a_docker_login_on_the_runner_reaches_the_agents_and_the_index() {
    let registry = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let config = docker_config(repo.path(), &registry.host());
    let tag = format!("{}/logins/docker:1", registry.host());
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "build",
        ],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_pushed(&tag);
    assert_nowhere(PASSWORD, &out, &controller);
}

#[test]
fn without_a_login_the_build_fails_before_anything_is_uploaded() {
    let registry = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let tag = format!("{}/logins/none:1", registry.host());
    let url = controller.url();
    let out = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[("CONTROLLER_URL", &url)],
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "no login for {}: run docker login {}",
            registry.host(),
            registry.host()
        )),
        "{all}"
    );
    assert!(all.contains("nothing was uploaded or built"), "{all}");
    // A wrong password is refused as early, naming where it came from.
    let wrong = repo.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(
        wrong.join("config.json"),
        auths(&registry.host(), "not-the-password"),
    )
    .unwrap();
    let out = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[
            ("CONTROLLER_URL", &url),
            ("DOCKER_CONFIG", wrong.to_str().unwrap()),
        ],
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("refused the login from") && all.contains("config.json"),
        "{all}"
    );
    assert!(!all.contains("not-the-password"), "{all}");
    let builds = all_files(&controller.dir.path().join("data"));
    assert!(!builds.contains("logins/none"), "no build was created");
}

#[test]
fn compose_with_a_containers_auth_file() {
    let registry = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let tag = format!("{}/logins/compose:1", registry.host());
    let repo = project(&[
        ("Dockerfile", COPY_ONLY),
        ("hello.txt", "hi\n"),
        (
            "compose.yaml",
            &format!("services:\n  app:\n    image: {tag}\n    build:\n      context: .\n      platforms: [linux/amd64, linux/arm64]\n"),
        ),
    ]);
    let auth_file = repo.path().join("auth.json");
    std::fs::write(&auth_file, auths(&registry.host(), PASSWORD)).unwrap();
    let out = bakery(
        repo.path(),
        &["--compose", "compose.yaml", "build"],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_pushed(&tag);
    assert_nowhere(PASSWORD, &out, &controller);
}

#[test]
fn a_credential_helper_as_docker_runs_it() {
    let registry = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let bin = repo.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = repo.path().join("asked");
    let helper = bin.join("docker-credential-bakerytest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\necho \"$server\" >> {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            asked.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["755", helper.to_str().unwrap()])
        .status()
        .unwrap();
    let config = repo.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(
            r#"{{"credHelpers": {{"{}": "bakerytest"}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let tag = format!("{}/logins/helper:1", registry.host());
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "build",
        ],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
            ("PATH", &path),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap().trim(),
        registry.host(),
        "the helper was asked for the registry"
    );
    assert_pushed(&tag);
    assert_nowhere(PASSWORD, &out, &controller);
}

#[test]
fn gitlab_registry_variables_and_config_yaml_variables() {
    let registry = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let tag = format!("{}/logins/gitlab:1", registry.host());
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "build",
        ],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("CI_REGISTRY", &registry.host()),
            ("CI_REGISTRY_USER", USER),
            ("CI_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_pushed(&tag);
    assert_nowhere(PASSWORD, &out, &controller);

    let tag = format!("{}/logins/config:1", registry.host());
    let config = format!(
        "global:\n  kaniko-credentials:\n    - {{registry: {}, username: {USER}, password: '${{REG_PW}}'}}\n  kaniko:\n    destination: {tag}\nbake:\n  - arch: amd64\n  - arch: arm64\n",
        registry.host()
    );
    std::fs::write(repo.path().join("config.yaml"), config).unwrap();
    let out = bakery(
        repo.path(),
        &["--config", "config.yaml", "build"],
        &[("CONTROLLER_URL", &controller.url()), ("REG_PW", PASSWORD)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_pushed(&tag);
    assert_nowhere(PASSWORD, &out, &controller);
}

/// A secret from a file and one from a variable reach `RUN
/// --mount=type=secret`: the image holds their hashes, never the secrets,
/// and no output or file of the controller holds them either.
#[test]
fn build_secrets_reach_run_mounts_and_nothing_else() {
    const FILE_SECRET: &str = "file-Secret-Value-9137";
    const ENV_SECRET: &str = "env-Secret-Value-5520";
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let dockerfile = format!(
        "FROM {base}\n\
         RUN --mount=type=secret,id=npmrc sha256sum /run/secrets/npmrc | cut -d' ' -f1 > /npmrc.sha\n\
         RUN --mount=type=secret,id=token,target=/tmp/token sha256sum /tmp/token | cut -d' ' -f1 > /token.sha && cat /tmp/token && echo\n"
    );
    let repo = project(&[("Dockerfile", &dockerfile), ("npmrc", FILE_SECRET)]);
    let tag = format!("{}/secrets/app:1", registry.host());
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--secret",
            "id=npmrc,src=npmrc",
            "--secret",
            "id=token,env=MY_TOKEN",
            "build",
        ],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("MY_TOKEN", ENV_SECRET),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let hex = |s: &str| format!("{:x}", sha2::Sha256::digest(s.as_bytes()));
    let arch = bakery_protocol::Arch::host();
    let image = format!("{tag}_{}", arch.as_str());
    assert_eq!(
        file_in_image(&image, "npmrc.sha").unwrap().trim(),
        hex(FILE_SECRET)
    );
    assert_eq!(
        file_in_image(&image, "token.sha").unwrap().trim(),
        hex(ENV_SECRET)
    );
    // buildah 1.28 leaves the mount point behind, empty.
    for mount in ["run/secrets/npmrc", "tmp/token"] {
        assert_eq!(
            file_in_image(&image, mount).unwrap_or_default(),
            "",
            "{mount}"
        );
    }
    assert!(all.contains("***"), "the echoed secret is masked: {all}");
    for secret in [FILE_SECRET, ENV_SECRET] {
        assert!(!image_holds(&image, secret), "`{secret}` is in the image");
    }
    assert!(
        image_holds(&image, &hex(FILE_SECRET)),
        "the scan reads the layers"
    );
    for secret in [FILE_SECRET, ENV_SECRET] {
        assert_nowhere(secret, &out, &controller);
    }
    // A secret that is not there fails the plan, by id, before anything.
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--secret",
            "id=gone,src=missing.txt",
            "build",
        ],
        &[("CONTROLLER_URL", &controller.url())],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("secret `gone`"), "{}", text(&out));
}

/// A credential helper that is not installed (a `credsStore` left by Docker
/// Desktop) is a warning naming it, not a failed build, when the registry
/// needs no login.
#[test]
fn a_missing_credential_helper_is_a_warning() {
    let registry = registry();
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let config = repo.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        r#"{"credsStore": "nosuchhelper"}"#,
    )
    .unwrap();
    let tag = format!("{}/logins/open:1", registry.host());
    let out = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: docker-credential-nosuchhelper get"),
        "{all}"
    );
}

/// A secret's file inside the build context, and a Docker config there, are
/// left out of the uploaded context (which the controller keeps, or S3, long
/// after the build), with a warning; the secret still reaches the build.
#[test]
fn secret_and_login_files_inside_the_context_are_not_uploaded() {
    const SECRET: &str = "in-Context-Secret-8841";
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let repo = project(&[
        (
            "Dockerfile",
            &format!("FROM {base}\nCOPY . /ctx\nRUN --mount=type=secret,id=netrc sha256sum /run/secrets/netrc | cut -d' ' -f1 > /netrc.sha\n"),
        ),
        ("ci/netrc", SECRET),
    ]);
    let config = docker_config(repo.path(), &registry.host());
    let tag = format!("{}/logins/ctx:1", registry.host());
    let out = bakery(
        repo.path(),
        &["--tag", &tag, "--secret", "id=netrc,src=ci/netrc", "build"],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("ci/netrc: left out of the context"), "{all}");
    assert!(
        all.contains("docker-config/config.json: left out of the context"),
        "{all}"
    );
    let image = format!("{tag}_{}", bakery_protocol::Arch::host().as_str());
    assert!(
        file_in_image(&image, "ctx/ci/netrc").is_none(),
        "not copied in"
    );
    assert!(
        file_in_image(&image, "ctx/Dockerfile").is_some(),
        "the rest is"
    );
    assert!(!image_holds(&image, SECRET));
    let hex = format!("{:x}", sha2::Sha256::digest(SECRET.as_bytes()));
    assert_eq!(file_in_image(&image, "netrc.sha").unwrap().trim(), hex);
    assert_nowhere(SECRET, &out, &controller);
    let login = basic(PASSWORD);
    assert!(
        files_holding(controller.dir.path(), &login).is_empty(),
        "no login in a stored context"
    );
}

/// A credential helper that fails is reported without what it printed
/// (which can be the secret, on stderr or as JSON with a failing exit).
#[test]
fn a_failing_credential_helper_is_not_echoed() {
    let registry = registry();
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let bin = repo.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-leaky");
    std::fs::write(
        &helper,
        "#!/bin/sh\necho 'error: token Helper-Leak-Pw-3131 expired' >&2\nprintf '{\"Username\":\"u\",\"Secret\":\"Helper-Out-Pw-6262\"}'\nexit 3\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755", helper.to_str().unwrap()])
        .status()
        .unwrap();
    let config = repo.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("config.json"), r#"{"credsStore": "leaky"}"#).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let tag = format!("{}/logins/leaky:1", registry.host());
    let out = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
            ("PATH", &path),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("docker-credential-leaky get") && all.contains("its output is not shown"),
        "{all}"
    );
    assert!(
        !all.contains("Helper-Leak-Pw-3131") && !all.contains("Helper-Out-Pw-6262"),
        "{all}"
    );
}

/// Tags in several repositories (metadata-action with two `images:`): the
/// index is written in each, over the same per-arch digests, copied into a
/// registry that needs a login (streamed) and into another repository of
/// the destination's registry (mounted). `images` lists every tag.
#[test]
fn tags_in_several_repositories_get_the_same_index_in_each() {
    let open = registry();
    let locked = registry_with_login(USER, PASSWORD);
    let controller = controller(&[]);
    let repo = project(&[("Dockerfile", COPY_ONLY), ("hello.txt", "hi\n")]);
    let config = docker_config(repo.path(), &locked.host());
    let tags = [
        format!("{}/ghcr/app:1", open.host()),
        format!("{}/hub/app:1", locked.host()),
        format!("{}/hub/app:latest", locked.host()),
        format!("{}/mirror/app:1", open.host()),
    ];
    let outputs = repo.path().join("github-output");
    std::fs::write(&outputs, "").unwrap();
    let mut args = vec!["--platform", "linux/amd64,linux/arm64"];
    for t in &tags {
        args.extend(["--tag", t.as_str()]);
    }
    args.push("build");
    // A tag's registry without a login is caught before anything is built.
    let out = bakery(repo.path(), &args, &[("CONTROLLER_URL", &controller.url())]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("no login for {}", locked.host())),
        "{}",
        text(&out)
    );
    let out = bakery(
        repo.path(),
        &args,
        &[
            ("CONTROLLER_URL", &controller.url()),
            ("DOCKER_CONFIG", config.to_str().unwrap()),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", outputs.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let index = raw_manifest(&tags[0]);
    assert_eq!(Some(image_entries(&index).len()), Some(2));
    assert_eq!(raw_manifest(&tags[3]), index, "mounted copy");
    for t in &tags[1..3] {
        assert_eq!(manifest_with_login(t), index, "{t}");
    }
    for m in index["manifests"].as_array().unwrap() {
        let digest = m["digest"].as_str().unwrap();
        let copy = manifest_with_login(&format!("{}/hub/app@{digest}", locked.host()));
        assert_eq!(copy["layers"].as_array().map(Vec::len), Some(1), "{copy}");
    }
    assert_eq!(
        file_in_image(&tags[3], "hello.txt").as_deref(),
        Some("hi\n"),
        "the mounted blobs are readable"
    );
    let written = std::fs::read_to_string(&outputs).unwrap();
    for t in &tags {
        assert!(
            written.contains(t.as_str()),
            "{t} in the outputs: {written}"
        );
    }
    assert_nowhere(PASSWORD, &out, &controller);
}
