//! Real components for end-to-end tests, each on a random port in its own
//! temporary directory, stopped when dropped: a Debian `docker-registry`,
//! `moto_server` for S3, and controllers as separate processes.

#![allow(dead_code)]

pub mod load;
pub mod provenance;
pub mod runner;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A binary built next to the test's own executable (`cargo build --workspace --bins`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not become ready");
}

fn http_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", url])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `url` answers with any HTTP status.
fn http_answers(url: &str) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout != b"000")
}

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A real OCI registry (Debian's docker-registry) with filesystem storage.
pub fn registry() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    start_registry(free_port(), &storage, dir)
}

/// A registry on `port` over `storage`: stop it and start another on the
/// same two, and it is the same registry restarted.
pub fn registry_with_storage(port: u16, storage: &Path) -> Server {
    start_registry(port, storage, tempfile::tempdir().unwrap())
}

fn start_registry(port: u16, storage: &Path, dir: tempfile::TempDir) -> Server {
    start_registry_with(port, storage, dir, "")
}

/// A real registry that requires `user`'s login (an htpasswd file, bcrypt,
/// as `docker-registry` wants it; apache2-utils' `htpasswd` writes it).
pub fn registry_with_login(user: &str, password: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc", htpasswd.to_str().unwrap(), user, password])
        .output()
        .expect("htpasswd is installed (scripts/setup: apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let storage = dir.path().join("data");
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: bakery-test\n    path: {}\n",
        htpasswd.display()
    );
    start_registry_with(free_port(), &storage, dir, &auth)
}

fn start_registry_with(port: u16, storage: &Path, dir: tempfile::TempDir, extra: &str) -> Server {
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            storage.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry is installed (scripts/setup)");
    let server = Server { child, dir, port };
    wait_for("the registry", || {
        http_answers(&format!("{}/v2/", server.url()))
    });
    server
}

/// Pushes the busybox base image the examples build on, with the project's script.
pub fn push_base_image(registry: &Server) -> String {
    let reference = format!("{}/bakery/busybox:latest", registry.host());
    base_image(&[&reference]);
    reference
}

/// Pushes a two-arch base image index (scripts/base-image --index:
/// linux/amd64 busybox, and linux/arm64/v8 with files only, for COPY-only
/// builds) to `reference`.
pub fn push_index_base(reference: &str) {
    base_image(&[reference, "--index"]);
}

/// Runs scripts/base-image. buildah's re-exec, with several buildah
/// processes starting at once (tests run in parallel), sometimes fails
/// with `sealing memfd copy: Device or resource busy` before doing
/// anything: that, and only that, is tried again.
fn base_image(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/base-image");
    let mut stderr = String::new();
    for _ in 0..3 {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.contains("sealing memfd") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("base image: {stderr}");
}

/// moto_server as the S3 stand-in, with `bucket` created.
pub fn s3(bucket: &str) -> Server {
    let server = moto();
    let status = Command::new("curl")
        .args(["-fsS", "-X", "PUT", &format!("{}/{bucket}", server.url())])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "creating the bucket");
    server
}

/// moto_server (S3, ECS, EC2, IAM, Secrets Manager) on a random port.
pub fn moto() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("moto_server is installed (scripts/setup)");
    let server = Server { child, dir, port };
    wait_for("moto_server", || {
        http_ok(&format!("{}/moto-api/", server.url()))
    });
    server
}

/// The project's type-fixing proxy in front of moto (see scripts/moto-compat-proxy.py).
pub fn moto_proxy(moto: &Server) -> Server {
    moto_proxy_with(moto, &[])
}

/// The proxy with fault injection (`FAIL_RUNTASK`, see the script).
pub fn moto_proxy_with(moto: &Server, env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto-compat-proxy.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(moto.url())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, dir, port };
    wait_for("the moto proxy", || {
        http_ok(&format!("{}/moto-api/", server.url()))
    });
    server
}

/// Runs scripts/moto-ecs-fixture.py and parses its JSON output.
pub fn ecs_fixture(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ecs_fixture_text(args)).unwrap_or(serde_json::Value::Null)
}

/// The same, its output as text (an ARN, a secret's value).
pub fn ecs_fixture_text(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/moto-ecs-fixture.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fixture {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `bakery-controller` as its own process.
pub fn controller(env: &[(&str, &str)]) -> Server {
    controller_on(free_port(), env)
}

/// `bakery-controller` on a given port (when its URL must be known before it starts).
pub fn controller_on(port: u16, env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let child = Command::new(sibling_binary("bakery-controller"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", dir.path().join("data"))
        .env("BAKERY_LOG", "info,bakery_controller=debug")
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Server { child, dir, port };
    // Any HTTP answer will do (/v1/info may rightly be 401 behind a token),
    // but it must be an answer: the socket is bound before start-up work
    // (orphan cleanup, say) is done.
    wait_for("the controller", || {
        http_answers(&format!("{}/v1/info", server.url()))
    });
    server
}

/// Processes whose command line mentions `needle` (a test's own temp dir).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", needle])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(String::from)
        .collect()
}

/// Processes whose environment mentions `needle` (agents carry their work
/// dir there, not on their command line).
pub fn processes_with_env_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{name} {}", cmd.replace('\0', " ")));
        }
    }
    found
}

/// `skopeo inspect --raw` of a reference, as JSON.
pub fn raw_manifest(reference: &str) -> serde_json::Value {
    skopeo_inspect("--raw", reference)
}

/// `skopeo inspect --config` of a reference, as JSON.
pub fn image_config(reference: &str) -> serde_json::Value {
    skopeo_inspect("--config", reference)
}

fn skopeo_inspect(what: &str, reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            what,
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

/// The content of `path` inside an image's layers (the last layer that has it).
pub fn file_in_image(reference: &str, path: &str) -> Option<String> {
    file_bytes_in_image(reference, path).map(|b| String::from_utf8(b).unwrap())
}

/// `reference` copied out of the registry as a skopeo `dir:`, and its
/// manifest.
fn copy_image(reference: &str) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("dir:{}", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    (dir, manifest)
}

/// Whether the config or any layer of `reference` holds `needle` (layers
/// decompressed): a secret must be in none.
pub fn image_holds(reference: &str, needle: &str) -> bool {
    let (dir, manifest) = copy_image(reference);
    let blob = |digest: &str| {
        std::fs::read(dir.path().join(digest.trim_start_matches("sha256:"))).unwrap()
    };
    let mut blobs = vec![blob(manifest["config"]["digest"].as_str().unwrap())];
    for layer in manifest["layers"].as_array().unwrap() {
        let raw = blob(layer["digest"].as_str().unwrap());
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(raw.as_slice()),
            &mut plain,
        )
        .unwrap();
        blobs.push(plain);
    }
    blobs
        .iter()
        .any(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// The same, as bytes.
pub fn file_bytes_in_image(reference: &str, path: &str) -> Option<Vec<u8>> {
    let (dir, manifest) = copy_image(reference);
    let mut found = None;
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let file = std::fs::File::open(dir.path().join(digest)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if name == path.trim_start_matches('/') {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                found = Some(bytes);
            }
        }
    }
    found
}

/// Writes files into a new temporary directory.
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Two COPY-only compose services under `<registry>/<ns>/`: `good` for both
/// arches, and `bad`, whose Dockerfile copies a file that does not exist.
pub fn two_services(registry: &Server, ns: &str) -> tempfile::TempDir {
    let compose = format!(
        "services:\n  bad:\n    image: {r}/{ns}/bad:1\n    build:\n      context: bad\n  good:\n    image: {r}/{ns}/good:1\n    build:\n      context: good\n      x-bake:\n        platforms: [linux/amd64, linux/arm64]\n",
        r = registry.host()
    );
    project(&[
        ("compose.yaml", &compose),
        ("bad/Dockerfile", "FROM scratch\nCOPY no-such-file.txt /\n"),
        ("good/Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
        ("good/hello.txt", "hi\n"),
    ])
}

/// `bakery build --detach` in `repo` against `controller_url`; the build id.
pub fn submit_detached(repo: &Path, controller_url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo)
        .args(["build", "--detach"])
        .env("CONTROLLER_URL", controller_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("service<TAB>id")
        .to_string();
    // People are told how to follow it; stdout stays for scripts.
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(told.contains(&format!("bakery logs {id}")), "{told}");
    id
}
