//! The GitHub Action and the GitLab component: every input is declared with a
//! description, used, and reaches bakery as the variable bakery reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Writes `text` to `path` and makes it executable: the stand-ins (bakery,
/// gh, cargo) the action's scripts run.
fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let chmod = Command::new("chmod").arg("+x").arg(path).status().unwrap();
    assert!(chmod.success(), "chmod +x {}", path.display());
}

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
        "BAKERY_CACHE",
        "BAKERY_CACHE_REPO",
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
    executable(&stub.path().join("bakery"), &format!(
            "#!/bin/sh\n{{ echo \"args=$*\"; for v in BAKERY_TAGS BAKERY_PLATFORMS BAKERY_BUILD_ARGS BAKERY_ASYNC BAKERY_CONFIG BAKERY_CONTEXT BAKERY_CACHE BAKERY_CACHE_REPO; do [ -n \"$(printenv $v)\" ] && printf '%s=%s\\n' $v \"$(printenv $v)\" || true; done; }} > {}\n",
            dump.display()
        ));
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
        .env("INPUT_CACHE", "true")
        .env("INPUT_CACHE_REPO", "")
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
    assert!(dumped.contains("BAKERY_CACHE=true\n"), "{dumped}");
    assert!(!dumped.contains("BAKERY_CACHE_REPO"), "{dumped}");
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
    // The default client image is this component version's release.
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a workspace version");
    assert_eq!(
        spec["spec"]["inputs"]["image"]["default"],
        format!("ghcr.io/example/bakery-client:{version}"),
        "the release job in .gitlab-ci.yml refuses a tag whose default image differs"
    );
    // Each `regex:` (GitLab's RE2, no slashes) takes its own default and
    // what the description promises; push may name a CI/CD variable.
    for (name, input) in spec["spec"]["inputs"].as_object().unwrap() {
        let Some(pattern) = input["regex"].as_str() else {
            continue;
        };
        assert!(
            !pattern.starts_with('/'),
            "{name}: GitLab's regex takes no slashes"
        );
        let re = regex::Regex::new(pattern).unwrap();
        let default = match &input["default"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert!(
            re.is_match(&default),
            "{name}: default {default:?} fails {pattern}"
        );
    }
    let push =
        regex::Regex::new(spec["spec"]["inputs"]["push"]["regex"].as_str().unwrap()).unwrap();
    assert!(push.is_match("$PUSH_IMAGES") && push.is_match("false") && !push.is_match("no"));
    let token = regex::Regex::new(
        spec["spec"]["inputs"]["status-token-variable"]["regex"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(token.is_match("") && token.is_match("MY_TOKEN") && !token.is_match("X; rm -rf /"));
    // The repository's own pipeline runs the component at its commit, with
    // inputs the component declares, and releases with a pinned image.
    let own = yaml(&std::fs::read_to_string(root().join(".gitlab-ci.yml")).unwrap());
    let include = &own["include"][0];
    assert_eq!(
        include["component"],
        "$CI_SERVER_FQDN/$CI_PROJECT_PATH/bakery@$CI_COMMIT_SHA"
    );
    for name in include["inputs"].as_object().unwrap().keys() {
        assert!(
            spec["spec"]["inputs"].get(name).is_some(),
            ".gitlab-ci.yml passes {name}, which the component does not declare"
        );
    }
    let image = own["release-component"]["image"].as_str().unwrap();
    assert!(
        !image.ends_with(":latest") && image.contains(':'),
        "pinned: {image}"
    );
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
        // Read by the CI reporters from the environment, as GitLab sets them.
        if !["BAKERY_DOTENV", "BAKERY_CHECK_NAME"].contains(&var.as_str()) {
            assert!(
                help.contains(&format!("env: {var}")),
                "bakery does not read {var}"
            );
        }
    }
}

/// The runner's arch as release assets name it.
fn release_arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "aarch64"
    } else {
        "x86_64"
    }
}

/// A release's assets for this arch in `dir`, as the release workflow
/// publishes them: a tarball whose `bakery` (a stand-in: the install script
/// only runs `--version`) says `version`, and its `.sha256`. Returns the
/// asset name without `.tar.gz`.
fn release_assets(dir: &Path, version: &str) -> String {
    let name = format!("bakery-{}-unknown-linux-musl", release_arch());
    std::fs::create_dir_all(dir).unwrap();
    let bin = tempfile::tempdir().unwrap();
    let script = format!("#!/bin/sh\necho \"bakery {version}\"\n");
    executable(&bin.path().join("bakery"), &script);
    let tarball = dir.join(format!("{name}.tar.gz"));
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .args(["-C", bin.path().to_str().unwrap(), "bakery"])
        .status();
    assert!(tar.unwrap().success());
    let sum = Command::new("sha256sum").arg(&tarball).output().unwrap();
    let digest = String::from_utf8_lossy(&sum.stdout);
    let digest = digest.split_whitespace().next().unwrap();
    let line = format!("{digest}  {name}.tar.gz\n");
    std::fs::write(dir.join(format!("{name}.tar.gz.sha256")), line).unwrap();
    name
}

/// A static file server on a random loopback port, serving `dir`; with
/// `status` set, every request is answered with that status instead.
struct Releases {
    server: std::process::Child,
    port: u16,
}

impl Releases {
    fn serve(dir: &Path, status: Option<u16>) -> Releases {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let code = format!(
            "import functools, http.server as h\n\
             class H(h.SimpleHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       if {status}: self.send_error({status}); return\n\
             \x20       super().do_GET()\n\
             h.ThreadingHTTPServer(('127.0.0.1', {port}), functools.partial(H, directory='{dir}')).serve_forever()\n",
            status = status.unwrap_or(0),
            dir = dir.display(),
        );
        let server = Command::new("python3")
            .args(["-c", &code])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Releases { server, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Releases {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// The tool cache is shared by every job on a runner: the action verifies
/// the release archive before each use (a swapped cached archive is
/// replaced, not run), runs its own unpacked copy, keys the cache by where
/// the release comes from, checks the attestation with gh where gh can run
/// (and says when it cannot), and never builds from source on a server error.
#[test]
fn the_action_installs_a_release_binary_verified_before_each_use() {
    let releases = tempfile::tempdir().unwrap();
    let version_dir = releases.path().join("v9.9.9");
    let name = release_assets(&version_dir, "9.9.9");
    let server = Releases::serve(releases.path(), None);
    let runner = tempfile::tempdir().unwrap();
    let cache = runner.path().join("tool-cache");
    let temp = runner.path().join("temp");
    std::fs::create_dir_all(&temp).unwrap();
    let github_path = runner.path().join("GITHUB_PATH");
    let install = |version: &str, releases_url: &str, extra: &[(&str, &str)]| {
        let mut command = Command::new("bash");
        command
            .arg(root().join("scripts/install-bakery"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", runner.path())
            .env("BAKERY_VERSION", version)
            .env("BAKERY_RELEASES", releases_url)
            .env("GITHUB_ACTION_REPOSITORY", "acme/bakery")
            .env("RUNNER_TOOL_CACHE", &cache)
            .env("RUNNER_TEMP", &temp)
            .env("GITHUB_PATH", &github_path);
        for (k, v) in extra {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = install("v9.9.9", &server.url(), &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("bakery 9.9.9"),
        "it runs the installed binary: {text}"
    );
    assert!(
        text.contains("::warning::gh attestation verify cannot run here"),
        "{text}"
    );
    // The job runs its own copy, not the shared cache's.
    let path_line = std::fs::read_to_string(&github_path).unwrap();
    let job_dir = PathBuf::from(path_line.trim());
    assert!(job_dir.starts_with(&temp), "{}", job_dir.display());
    assert!(job_dir.join("bakery").is_file());

    // Someone swaps the cached archive: the next job notices and downloads
    // the release again.
    let cached: Vec<PathBuf> = walk(&cache)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == format!("{name}.tar.gz").as_str())
        })
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let evil = tempfile::tempdir().unwrap();
    release_assets(&evil.path().join("v9.9.9"), "666-evil");
    std::fs::copy(
        evil.path().join(format!("v9.9.9/{name}.tar.gz")),
        &cached[0],
    )
    .unwrap();
    let (ok, text) = install("v9.9.9", &server.url(), &[]);
    assert!(ok && text.contains("bakery 9.9.9"), "{text}");
    assert!(!text.contains("evil"), "{text}");

    // Another source of releases gets its own cache slot.
    let evil_server = Releases::serve(evil.path(), None);
    let (ok, text) = install("v9.9.9", &evil_server.url(), &[]);
    assert!(ok && text.contains("666-evil"), "{text}");
    let (ok, text) = install("v9.9.9", &server.url(), &[]);
    assert!(ok && text.contains("bakery 9.9.9"), "{text}");

    // With gh and a token, the attestation decides.
    let gh = tempfile::tempdir().unwrap();
    let gh_log = gh.path().join("args");
    let fake_gh = |exit: i32| {
        executable(&gh.path().join("gh"), &format!(
                "#!/bin/sh\necho \"$*\" >> {}\necho 'verification failed: no attestation' >&2\nexit {exit}\n",
                gh_log.display()
            ));
    };
    let with_gh = format!("{}:/usr/bin:/bin", gh.path().display());
    fake_gh(0);
    let (ok, text) = install(
        "v9.9.9",
        &server.url(),
        &[("PATH", &with_gh), ("GH_TOKEN", "t")],
    );
    assert!(ok, "{text}");
    assert!(!text.contains("::warning::"), "{text}");
    let args = std::fs::read_to_string(&gh_log).unwrap();
    assert!(
        args.contains("attestation verify ")
            && args.trim_end().ends_with(
                "--repo acme/bakery --signer-workflow acme/bakery/.github/workflows/release.yml --source-ref refs/tags/v9.9.9"
            ),
        "the release workflow of that tag, not any workflow of the repository: {args}"
    );
    fake_gh(1);
    let (ok, text) = install(
        "v9.9.9",
        &server.url(),
        &[("PATH", &with_gh), ("GH_TOKEN", "t")],
    );
    assert!(!ok, "an unattested archive must not be installed: {text}");
    assert!(
        text.contains("is not attested by acme/bakery's release workflow for v9.9.9")
            && text.contains("no attestation"),
        "{text}"
    );

    // A tampered release is refused.
    std::fs::write(
        version_dir.join(format!("{name}.tar.gz.sha256")),
        format!("{}  {name}.tar.gz\n", "0".repeat(64)),
    )
    .unwrap();
    std::fs::rename(&version_dir, releases.path().join("v9.9.8")).unwrap();
    let (ok, text) = install("v9.9.8", &server.url(), &[]);
    assert!(!ok, "a checksum mismatch must fail: {text}");
    assert!(
        text.contains("does not match its published SHA-256"),
        "{text}"
    );

    // A failing release host is retried, then an error: never a source
    // build, even with cargo on the runner (a stand-in that says if run).
    let cargo = tempfile::tempdir().unwrap();
    executable(
        &cargo.path().join("cargo"),
        "#!/bin/sh\necho CARGO-RAN\nexit 1\n",
    );
    let failing = Releases::serve(releases.path(), Some(503));
    let with_cargo = format!("{}:/usr/bin:/bin", cargo.path().display());
    let (ok, text) = install("v9.9.7", &failing.url(), &[("PATH", &with_cargo)]);
    assert!(!ok);
    assert!(
        text.contains("HTTP 503") && text.contains("after retries"),
        "{text}"
    );
    assert!(!text.contains("CARGO-RAN"), "{text}");
    // A release that does not exist (404) is a source build, announced.
    let (ok, text) = install("v9.9.7", &server.url(), &[("PATH", &with_cargo)]);
    assert!(!ok);
    assert!(
        text.contains("::warning::bakery v9.9.7 has no release")
            && text.contains("CARGO-RAN")
            && text.contains("::error::building bakery from"),
        "{text}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The action's `secrets`, `secret-files` and `secret-envs` inputs become
/// `--secret` specs (build-push-action's semantics); an inline value goes
/// through a variable of its own, masked first, never onto a command line.
#[test]
fn the_action_maps_secret_inputs_to_secret_specs_without_putting_values_in_argv() {
    let stub = tempfile::tempdir().unwrap();
    let dump = stub.path().join("dump");
    executable(&stub.path().join("bakery"), &format!(
            "#!/bin/sh\n{{ echo \"args=$*\"; printf 'SECRETS=%s\\n' \"$BAKERY_SECRETS\"; printf 'V1=%s\\n' \"$BAKERY_SECRET_VALUE_1\"; }} > {}\n",
            dump.display()
        ));
    let run = |secrets: &str| {
        Command::new("bash")
            .arg(root().join("scripts/action-build"))
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
            .env("INPUT_SECRETS", secrets)
            .env("INPUT_SECRET_FILES", "npmrc=.npmrc\n")
            .env("INPUT_SECRET_ENVS", "gh=GITHUB_TOKEN\n")
            .output()
            .unwrap()
    };
    let out = run("token=inline=value-with-equals\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("::add-mask::inline=value-with-equals"),
        "{stdout}"
    );
    let dumped = std::fs::read_to_string(&dump).unwrap();
    assert!(dumped.contains("args=build\n"), "{dumped}");
    assert!(
        dumped.contains("SECRETS=id=token,env=BAKERY_SECRET_VALUE_1\nid=npmrc,src=.npmrc\nid=gh,env=GITHUB_TOKEN\n"),
        "{dumped}"
    );
    assert!(dumped.contains("V1=inline=value-with-equals\n"), "{dumped}");
    // A line without `=` is refused by number, its text (maybe a pasted
    // secret) not repeated.
    let out = run("oops-a-bare-s3cret\n");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("::error::secrets: line 1 is not id=value"),
        "{stdout}"
    );
    assert!(!stdout.contains("oops-a-bare-s3cret"), "{stdout}");
}

/// The action installs the release its own files name, wherever it is used
/// from: pinned by commit SHA (the checkout's path names the repository, not
/// a tag), inside another composite action (whose `GITHUB_ACTION_REPOSITORY`
/// is the outer one's); a version with no release and a local checkout
/// without cargo are errors that say what to do, not a bare curl 404.
#[test]
fn the_action_installs_the_version_its_own_files_name_however_it_is_pinned() {
    let server_root = tempfile::tempdir().unwrap();
    release_assets(
        &server_root
            .path()
            .join("acme/bakery/releases/download/v9.9.7"),
        "9.9.7",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(server_root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // An action checkout as the runner makes one, with the action's files.
    let runner = tempfile::tempdir().unwrap();
    let checkout = |dir: &Path, version: &str| {
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::copy(
            root().join("scripts/install-bakery"),
            dir.join("scripts/install-bakery"),
        )
        .unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"{version}\"\nedition = \"2021\"\n"),
        )
        .unwrap();
    };
    let install = |action: &Path, repository: &str| {
        let cache = runner.path().join("tool-cache");
        Command::new("bash")
            .arg(action.join("scripts/install-bakery"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", runner.path())
            .env("GITHUB_ACTION_PATH", action)
            .env("GITHUB_ACTION_REPOSITORY", repository)
            .env("GITHUB_SERVER_URL", format!("http://127.0.0.1:{port}"))
            .env("RUNNER_TOOL_CACHE", &cache)
            .output()
            .unwrap()
    };
    let both = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // Pinned by SHA, used from another composite action.
    let sha = runner
        .path()
        .join("_actions/acme/bakery/0123456789abcdef0123456789abcdef01234567");
    checkout(&sha, "9.9.7");
    let out = install(&sha, "outer/wrapper");
    assert!(out.status.success(), "{}", both(&out));
    assert!(both(&out).contains("bakery 9.9.7"), "{}", both(&out));
    // A commit whose version has no release yet.
    let main = runner.path().join("_actions/acme/bakery/main");
    checkout(&main, "9.9.6");
    let out = install(&main, "acme/bakery");
    assert!(!out.status.success());
    let text = both(&out);
    assert!(
        text.contains("bakery v9.9.6 has no release at http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("HTTP 404") && text.contains("set the input 'version'"),
        "{text}"
    );
    // `uses: ./`: a local checkout, no repository to download from.
    let local = runner.path().join("work/repo");
    checkout(&local, "9.9.5");
    let out = install(&local, "");
    assert!(!out.status.success());
    assert!(
        both(&out).contains("local checkout (uses: ./)"),
        "{}",
        both(&out)
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The component's job as a runner runs it: its inputs filled in (as
/// GitLab interpolates `$[[ inputs.… ]]`), its variables exported, its
/// `script:` lines run by `sh` with a stand-in `bakery`. An empty
/// `status-token-variable` had broken the job (`${:-}: bad substitution`),
/// and the client image's `bakery` entrypoint the Docker executor.
#[test]
fn the_gitlab_component_job_runs_with_its_inputs_filled_in() {
    let text = std::fs::read_to_string(root().join("templates/bakery.yml")).unwrap();
    let (spec_text, job_text) = text.split_once("\n---\n").unwrap();
    let spec = yaml(spec_text);
    let run = |given: &[(&str, &str)]| {
        let mut job = job_text.to_string();
        for (name, input) in spec["spec"]["inputs"].as_object().unwrap() {
            let value = given
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| match &input["default"] {
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .unwrap_or_else(|| "https://bakery.example.com".into());
            // GitLab fills inputs in after parsing the YAML; a value with a
            // line break goes in here as a YAML string.
            let value = if value.contains('\n') {
                serde_json::to_string(&value).unwrap()
            } else {
                value
            };
            job = job.replace(&format!("$[[ inputs.{name} ]]"), &value);
        }
        let job = yaml(&job);
        let job = job.as_object().unwrap().values().next().unwrap().clone();
        assert_eq!(
            job["image"]["entrypoint"],
            serde_json::json!([""]),
            "the entrypoint is emptied"
        );
        let stub = tempfile::tempdir().unwrap();
        let dump = stub.path().join("dump");
        executable(&stub.path().join("bakery"), &format!(
                "#!/bin/sh\n{{ env | grep -E '^(BAKERY_|CONTROLLER_)' | sort; printf 'SECRETS=%s\\n' \"$BAKERY_SECRETS\"; }} > {}\n",
                dump.display()
            ));
        let mut script = String::from("set -e\n");
        for (k, v) in job["variables"].as_object().unwrap() {
            let v = match v {
                Value::String(s) => s.clone(),
                // An empty input leaves `VAR:` with no value: GitLab's "".
                Value::Null => String::new(),
                other => other.to_string(),
            };
            script.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
        for line in job["script"].as_array().unwrap() {
            script.push_str(line.as_str().unwrap());
            script.push('\n');
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
            .env("MY_STATUS_TOKEN", "glpat-status")
            .output()
            .unwrap();
        let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
        (out, dumped)
    };
    let (out, dumped) = run(&[("status-token-variable", "")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dumped.contains("BAKERY_GITLAB_TOKEN"), "{dumped}");
    assert!(dumped.contains("BAKERY_PUSH=true"), "{dumped}");
    assert!(
        !dumped.contains("BAKERY_CONFIG"),
        "empty inputs are unset: {dumped}"
    );
    let (out, dumped) = run(&[
        ("status-token-variable", "MY_STATUS_TOKEN"),
        ("secrets", "id=npm,env=NPM_TOKEN id=netrc,src=/tmp/netrc"),
        ("push", "false"),
        ("target", "runtime"),
        ("tags", "r.io/app:1\nr.io/app:latest"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dumped.contains("BAKERY_GITLAB_TOKEN=glpat-status"),
        "{dumped}"
    );
    assert!(
        dumped.contains("SECRETS=id=npm,env=NPM_TOKEN\nid=netrc,src=/tmp/netrc\n"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_PUSH=false") && dumped.contains("BAKERY_TARGET=runtime"),
        "{dumped}"
    );
    // Newline-separated tags, as the action takes them, become bakery's list.
    assert!(
        dumped.contains("BAKERY_TAGS=r.io/app:1,r.io/app:latest"),
        "{dumped}"
    );
}

/// What GitHub and GitLab users run of ours, judged by the tools they (and
/// their security teams) use: zizmor and actionlint on action.yml, the
/// release workflow and the example workflow (zizmor.yml holds the one
/// written exception), and check-jsonschema's vendored schemas on each file
/// they apply to. scripts/setup installs all three.
#[test]
fn zizmor_actionlint_and_the_published_schemas_find_nothing() {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| panic!("{program} is installed (scripts/setup): {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}:\n{text}");
        text
    };
    let workflows = [
        ".github/workflows/release.yml",
        "examples/client/.github-actions.yml",
    ];
    let zizmor = run(
        "zizmor",
        &[
            "--offline",
            "--pedantic",
            "--config",
            "zizmor.yml",
            "action.yml",
            workflows[0],
            workflows[1],
        ],
    );
    assert!(zizmor.contains("No findings"), "{zizmor}");
    let mut lint = vec!["-no-color"];
    lint.extend(workflows);
    run("actionlint", &lint);
    let schema = |name: &str, files: &[&str]| {
        let mut args = vec!["--builtin-schema", name];
        args.extend(files);
        run("check-jsonschema", &args)
    };
    schema("vendor.github-workflows", &workflows);
    schema("vendor.github-actions", &["action.yml"]);
    schema(
        "vendor.gitlab-ci",
        &["examples/client/.gitlab.yml", ".gitlab-ci.yml"],
    );
}

/// Boolean inputs read as @actions/core's getBooleanInput does: `push:
/// False` had pushed (only `false` was seen); anything else fails the step
/// naming the input. And secret-envs takes build-push-action's comma form.
/// build-push-action's cache-from/cache-to (buildx syntax), annotations,
/// provenance, attests, build-contexts and ssh map to bakery's cache
/// repository, annotations, provenance, named contexts and SSH keys; what bakery cannot do fails the step naming the input and the
/// type, never silently dropped.
#[test]
fn cache_annotations_and_provenance_inputs_map_as_buildx_reads_them() {
    let stub = tempfile::tempdir().unwrap();
    let dump = stub.path().join("dump");
    executable(&stub.path().join("bakery"), &format!(
            "#!/bin/sh\n{{ for v in BAKERY_CACHE_REPO BAKERY_ANNOTATIONS BAKERY_PROVENANCE BAKERY_BUILD_CONTEXTS BAKERY_SSH BAKERY_NO_CACHE COMPOSE_PROFILES; do printf '%s=%s|\\n' $v \"$(printenv $v)\"; done; }} > {}\n",
            dump.display()
        ));
    let run = |inputs: &[(&str, &str)]| {
        let mut command = Command::new("bash");
        command
            .arg(root().join("scripts/action-build"))
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
            .env("CONTROLLER_URL", "https://bakery.example.com");
        for (k, v) in inputs {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
        let _ = std::fs::remove_file(&dump);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            dumped,
        )
    };
    let cache = "type=registry,ref=ghcr.io/acme/app:buildcache,mode=max";
    let (ok, stdout, dumped) = run(&[
        ("INPUT_CACHE_FROM", cache),
        ("INPUT_CACHE_TO", cache),
        (
            "INPUT_ANNOTATIONS",
            "manifest:org.opencontainers.image.title=app\nindex:org.opencontainers.image.description=An app\n",
        ),
        ("INPUT_PROVENANCE", "mode=max"),
        ("INPUT_BUILD_CONTEXTS", "shared=../shared\nbase=docker-image://alpine:3.20\n"),
        ("INPUT_SSH", "default=/home/runner/.ssh/id_ed25519\n"),
    ]);
    assert!(ok, "{stdout}");
    assert!(
        dumped.contains("BAKERY_BUILD_CONTEXTS=shared=../shared\nbase=docker-image://alpine:3.20|"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_SSH=default=/home/runner/.ssh/id_ed25519|"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_CACHE_REPO=ghcr.io/acme/app-buildcache|"),
        "{dumped}"
    );
    assert!(
        dumped.contains("BAKERY_ANNOTATIONS=manifest:org.opencontainers.image.title=app\nindex:org.opencontainers.image.description=An app|"),
        "{dumped}"
    );
    assert!(dumped.contains("BAKERY_PROVENANCE=mode=max|"), "{dumped}");
    // A bare ref is a registry cache; cache-from alone warns that it is written too.
    let (ok, stdout, dumped) = run(&[("INPUT_CACHE_FROM", "r.io/app/cache")]);
    assert!(
        ok && dumped.contains("BAKERY_CACHE_REPO=r.io/app/cache|"),
        "{dumped}"
    );
    assert!(
        stdout.contains("::warning::input 'cache-from' without 'cache-to'"),
        "{stdout}"
    );
    // attests: provenance sets it; an SBOM is refused by name.
    let (ok, _, dumped) = run(&[("INPUT_ATTESTS", "type=provenance,mode=max")]);
    assert!(
        ok && dumped.contains("BAKERY_PROVENANCE=mode=max|"),
        "{dumped}"
    );
    for (input, value, says) in [
        (
            "INPUT_CACHE_TO",
            "type=gha,mode=max",
            "'cache-to' type=gha is not supported",
        ),
        (
            "INPUT_CACHE_FROM",
            "type=local,src=/tmp/c",
            "'cache-from' type=local is not supported",
        ),
        ("INPUT_CACHE_TO", "type=registry,mode=max", "names no ref="),
        ("INPUT_ATTESTS", "type=sbom", "'attests' 'type=sbom'"),
        ("INPUT_SBOM", "true", "'sbom' is not supported"),
    ] {
        let (ok, stdout, dumped) = run(&[(input, value)]);
        assert!(
            !ok && dumped.is_empty(),
            "{input}={value} must fail: {dumped}"
        );
        assert!(stdout.contains(says), "{input}={value}: {stdout}");
    }
    let (ok, stdout, _) = run(&[
        ("INPUT_CACHE_FROM", "type=registry,ref=r.io/a"),
        ("INPUT_CACHE_TO", "type=registry,ref=r.io/b"),
    ]);
    assert!(
        !ok && stdout.contains("bakery reads and writes one layer cache repository"),
        "{stdout}"
    );
    // no-cache: bakery's --no-cache, refused beside a cache it would not use;
    // profiles: COMPOSE_PROFILES.
    let (ok, stdout, dumped) = run(&[
        ("INPUT_NO_CACHE", "true"),
        ("INPUT_PROFILES", "debug\ndocs"),
    ]);
    assert!(ok, "{stdout}");
    assert!(dumped.contains("BAKERY_NO_CACHE=true|"), "{dumped}");
    assert!(dumped.contains("COMPOSE_PROFILES=debug,docs|"), "{dumped}");
    let (ok, stdout, _) = run(&[
        ("INPUT_NO_CACHE", "true"),
        ("INPUT_CACHE_TO", "r.io/app/cache"),
    ]);
    assert!(!ok && stdout.contains("'no-cache'"), "{stdout}");
}

#[test]
fn boolean_inputs_and_comma_secret_envs_read_as_build_push_action_reads_them() {
    let stub = tempfile::tempdir().unwrap();
    let dump = stub.path().join("dump");
    executable(&stub.path().join("bakery"), &format!(
            "#!/bin/sh\n{{ printf 'push=%s\\nsecrets=%s\\n' \"$BAKERY_PUSH\" \"$BAKERY_SECRETS\"; }} > {}\n",
            dump.display()
        ));
    let run = |push: &str, secret_envs: &str| {
        let out = Command::new("bash")
            .arg(root().join("scripts/action-build"))
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
            .env("CONTROLLER_URL", "https://bakery.example.com")
            .env("INPUT_PUSH", push)
            .env("INPUT_SECRET_ENVS", secret_envs)
            .output()
            .unwrap();
        let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
        let _ = std::fs::remove_file(&dump);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            dumped,
        )
    };
    for no in ["false", "False", "FALSE"] {
        let (ok, _, dumped) = run(no, "");
        assert!(ok && dumped.contains("push=false\n"), "{no}: {dumped}");
    }
    for yes in ["true", "True", "TRUE", ""] {
        let (ok, _, dumped) = run(yes, "");
        assert!(ok && dumped.contains("push=\n"), "{yes:?}: {dumped}");
    }
    let (ok, stdout, dumped) = run("no", "");
    assert!(!ok && dumped.is_empty(), "not run: {dumped}");
    assert!(
        stdout.contains("::error::input 'push' is 'no', not a boolean"),
        "{stdout}"
    );
    let (ok, _, dumped) = run("true", "A=ENV_A,B=ENV_B");
    assert!(ok, "{dumped}");
    assert!(
        dumped.contains("id=A,env=ENV_A\nid=B,env=ENV_B"),
        "{dumped}"
    );
}

/// Every docker/build-push-action v6 input, as a workflow that changed only
/// its `uses:` line passes them: actionlint (which checks a local action's
/// inputs against its action.yml) finds nothing undefined; it had reported
/// 21 inputs the runner then ignored with a mere warning.
#[test]
fn a_workflow_swapping_build_push_action_for_bakery_lints_clean() {
    const BUILD_PUSH_ACTION_V6: [&str; 33] = [
        "add-hosts",
        "allow",
        "annotations",
        "attests",
        "build-args",
        "build-contexts",
        "builder",
        "cache-from",
        "cache-to",
        "call",
        "cgroup-parent",
        "context",
        "file",
        "github-token",
        "labels",
        "load",
        "network",
        "no-cache",
        "no-cache-filters",
        "outputs",
        "platforms",
        "provenance",
        "pull",
        "push",
        "sbom",
        "secrets",
        "secret-envs",
        "secret-files",
        "shm-size",
        "ssh",
        "tags",
        "target",
        "ulimit",
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("action.yml"), dir.path().join("action.yml")).unwrap();
    // actionlint finds `uses: ./` from the repository's root.
    assert!(Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success());
    let workflows = dir.path().join(".github/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let with = |names: &[&str]| -> String {
        names
            .iter()
            .fold(String::new(), |out, n| out + "          " + n + ": \"x\"\n")
    };
    let workflow = |extra: &[&str]| {
        format!(
            "on: push\npermissions: {{}}\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: ./\n        with:\n          controller-url: https://bakery.example.com\n{}{}",
            with(&BUILD_PUSH_ACTION_V6),
            with(extra)
        )
    };
    let lint = |file: &str, text: String| {
        std::fs::write(workflows.join(file), text).unwrap();
        let out = Command::new("actionlint")
            .args(["-no-color", &format!(".github/workflows/{file}")])
            .current_dir(dir.path())
            .output()
            .expect("actionlint is installed (scripts/setup)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (clean, report) = lint("swap.yml", workflow(&[]));
    assert!(clean, "{report}");
    // The check itself: an input bakery does not declare is reported.
    let (clean, report) = lint("unknown.yml", workflow(&["no-such-input"]));
    assert!(!clean && report.contains("no-such-input"), "{report}");
}
