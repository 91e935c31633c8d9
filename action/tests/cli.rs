//! The `bakery` binary as CI runs it: flags, environment, exit codes, output.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn bakery(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bakery"));
    cmd.current_dir(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Dockerfile"), "FROM alpine\nRUN true\n").unwrap();
    fs::write(dir.path().join("Dockerfile.arm64"), "FROM alpine\n").unwrap();
    fs::write(
        dir.path().join("config.yaml"),
        "global:\n  kaniko-credentials:\n    - {registry: r.io, username: u, password: s3cr3t-value}\n  kaniko:\n    destination: r.io/team/app:1.0\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko:\n      dockerfile: Dockerfile.arm64\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  api:\n    image: r.io/api:${TAG:-dev}\n    build:\n      context: .\n      x-bake:\n        platforms: [linux/amd64, linux/arm64]\n  web:\n    image: r.io/web:1\n    build: .\n",
    )
    .unwrap();
    dir
}

#[test]
fn plan_prints_a_table_with_per_arch_tags_and_the_index() {
    let dir = repo();
    let out = bakery(dir.path(), &["plan"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE") && lines[0].contains("PUSH"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("amd64") && lines[1].contains("r.io/team/app:1.0_amd64"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("arm64") && lines[2].contains("Dockerfile.arm64"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app → r.io/team/app:1.0 (linux/amd64, linux/arm64)"),
        "{stdout}"
    );
    assert!(
        lines[0].ends_with("CACHE") && lines[1].ends_with(" -"),
        "{stdout}"
    );

    // With --cache, each arch shows the cache repository it will use.
    let out = bakery(
        dir.path(),
        &[
            "-t",
            "r.io/team/app:2",
            "--platform",
            "linux/amd64,linux/arm64",
            "--cache",
            "plan",
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[1].ends_with(" r.io/team/app-cache-amd64"), "{stdout}");
    assert!(lines[2].ends_with(" r.io/team/app-cache-arm64"), "{stdout}");
}

#[test]
fn plan_json_masks_secrets() {
    let dir = repo();
    let out = bakery(dir.path(), &["plan", "--json"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("s3cr3t-value") && !stderr.contains("s3cr3t-value"));
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        plan["services"][0]["builds"][0]["spec"]["credentials"][0]["password"],
        "***"
    );
    assert_eq!(plan["services"][0]["destination"], "r.io/team/app:1.0");
}

#[test]
fn flags_come_from_the_environment_too() {
    let dir = repo();
    let out = bakery(
        dir.path(),
        &["plan", "--json"],
        &[
            ("BAKERY_COMPOSE", "compose.yaml"),
            ("BAKERY_SERVICES", "api"),
            ("TAG", "ci-7"),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["services"].as_array().unwrap().len(), 1);
    assert_eq!(plan["services"][0]["destination"], "r.io/api:ci-7");
}

#[test]
fn invalid_input_exits_non_zero_with_location() {
    let dir = repo();
    fs::write(
        dir.path().join("bad.yaml"),
        "global:\n  kaniko:\n    destinaton: r.io/a:1\n",
    )
    .unwrap();
    let out = bakery(dir.path(), &["--config", "bad.yaml", "plan"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("bad.yaml:3:5: unknown key `destinaton`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `destination`?"), "{stderr}");

    let out = bakery(
        dir.path(),
        &["--compose", "compose.yaml", "--services", "nope", "plan"],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown service nope; known services: api, web"),
        "{stderr}"
    );
}

#[test]
fn pack_writes_content_addressed_archives_once_per_context() {
    let dir = repo();
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().to_str().unwrap();
    let out = bakery(dir.path(), &["pack", "--output", out_path, "--json"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // Two Dockerfiles in one context: .dockerignore resolution may differ, so two packs.
    assert_eq!(results.as_array().unwrap().len(), 2);
    let first = &results[0];
    let sha = first["packed"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    let path = first["path"].as_str().unwrap();
    // zstd by default: the agent unpacks every context itself.
    assert!(Path::new(path).is_file() && path.ends_with(&format!("sha256-{sha}.tar.zst")));
    assert_eq!(first["key"], format!("contexts/sha256-{sha}.tar.zst"));

    // Same input, same archive.
    let again = bakery(dir.path(), &["pack", "--output", out_path, "--json"], &[]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again[0]["packed"]["sha256"], first["packed"]["sha256"]);

    let out = bakery(
        dir.path(),
        &["pack", "--output", out_path, "--codec", "zstd"],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(".tar.zst"), "{stdout}");

    // Without --output, archives go outside the context (they had gone into
    // the working directory, and the next pack packed its own archive).
    let tmp = tempfile::tempdir().unwrap();
    let tmp_env = [("TMPDIR", tmp.path().to_str().unwrap())];
    let first = bakery(dir.path(), &["pack", "--json"], &tmp_env);
    let again = bakery(dir.path(), &["pack", "--json"], &tmp_env);
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(first[0]["path"]
        .as_str()
        .unwrap()
        .starts_with(tmp.path().to_str().unwrap()));
    assert_eq!(again[0]["packed"]["sha256"], first[0]["packed"]["sha256"]);
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("sha256-")));
}

#[test]
fn help_shows_examples() {
    let out = bakery(Path::new("."), &["--help"], &[]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("Examples:") && stdout.contains("bakery plan"));
    for flag in ["--config", "--compose", "--services", "--async", "--repo"] {
        assert!(stdout.contains(flag), "{flag} missing from --help");
    }
}

/// `--push` alone means true and never takes the next word as its value
/// (`--push plan` read `plan` as a boolean); `--push=false` turns it off.
#[test]
fn push_takes_its_value_only_after_an_equals_sign() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let on = bakery(
        dir.path(),
        &["-t", "r.io/app:1", "--push", "plan", "--json"],
        &[],
    );
    let (out, err) = text(&on);
    assert!(on.status.success(), "{err}");
    assert!(out.contains("r.io/app:1_"), "pushes: {out}");
    let off = bakery(
        dir.path(),
        &["-t", "r.io/app:1", "--push=false", "plan", "--json"],
        &[],
    );
    let (out, err) = text(&off);
    assert!(off.status.success(), "{err}");
    assert!(out.contains("\"no_push\": true"), "{out}");
}

/// An empty CONTROLLER_URL (a CI variable not set in this project) means
/// the embedded controller, as an unset one does; it had been taken for a
/// URL ("relative URL without a base").
#[test]
fn an_empty_controller_url_is_no_controller_url() {
    let dir = repo();
    let out = bakery(
        dir.path(),
        &["build", "--detach"],
        &[("CONTROLLER_URL", " ")],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--detach needs CONTROLLER_URL"), "{stderr}");
}

/// Services whose CI outputs share a key (`web-api`/`web.api`, and
/// `app_amd64` beside `app`'s amd64 digest) wrote one dotenv key twice, and
/// a later job could deploy the wrong image: refused before any upload.
#[test]
fn services_whose_ci_outputs_would_collide_are_refused() {
    let dir = repo();
    let service = |name: &str| {
        format!("  {name}:\n    image: r.io/{name}:1\n    build:\n      context: .\n      x-bake:\n        platforms: [linux/amd64]\n")
    };
    for (a, b, key) in [
        ("web-api", "web.api", "BAKERY_WEB_API_DIGEST"),
        ("app", "app_amd64", "BAKERY_APP_AMD64_DIGEST"),
    ] {
        let compose = format!("services:\n{}{}", service(a), service(b));
        fs::write(dir.path().join("clash.yaml"), compose).unwrap();
        let out = bakery(dir.path(), &["--compose", "clash.yaml", "plan"], &[]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{a}/{b}");
        assert!(
            stderr.contains(&format!("services `{a}` and `{b}` would both report {key}")),
            "{stderr}"
        );
    }
    // Distinct keys pass.
    let compose = format!("services:\n{}{}", service("web"), service("api"));
    fs::write(dir.path().join("fine.yaml"), compose).unwrap();
    let out = bakery(dir.path(), &["--compose", "fine.yaml", "plan"], &[]);
    assert!(out.status.success(), "{:?}", text(&out));
}

/// docs/cli.md lists every flag and variable `bakery` reads, and nothing
/// it does not: its table is checked against the binary's own help.
#[test]
fn the_cli_page_lists_exactly_the_flags_and_variables_bakery_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut help = String::new();
    for args in [&["--help"][..], &["build", "--help"]] {
        let (out, _) = text(&bakery(dir.path(), args, &[]));
        help.push_str(&out);
    }
    let flag = regex::Regex::new(r"(?m)^\s+(?:-[a-zA-Z], )?--([a-z][a-z0-9-]*)").unwrap();
    let env = regex::Regex::new(r"\[env: ([A-Z_]+)=").unwrap();
    let flags: std::collections::BTreeSet<String> = flag
        .captures_iter(&help)
        .map(|c| c[1].to_string())
        .filter(|f| f != "help" && f != "version")
        .collect();
    let vars: std::collections::BTreeSet<String> =
        env.captures_iter(&help).map(|c| c[1].to_string()).collect();
    assert!(
        flags.contains("tag") && vars.contains("BAKERY_PUSH"),
        "{help}"
    );
    let page =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md")).unwrap();
    let table = page
        .lines()
        .skip_while(|l| !l.starts_with("| flag | variable |"))
        .take_while(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let cell_flag = regex::Regex::new(r"`(?:build )?(?:-[a-zA-Z]/)?--([a-z][a-z0-9-]*)").unwrap();
    let listed: std::collections::BTreeSet<String> = cell_flag
        .captures_iter(&table)
        .map(|c| c[1].to_string())
        .collect();
    let missing: Vec<_> = flags.difference(&listed).collect();
    assert!(missing.is_empty(), "docs/cli.md lacks {missing:?}");
    let unknown: Vec<_> = listed.difference(&flags).collect();
    assert!(
        unknown.is_empty(),
        "docs/cli.md lists flags bakery has not: {unknown:?}"
    );
    for var in &vars {
        assert!(
            table.contains(&format!("`{var}`")),
            "docs/cli.md lacks {var}"
        );
    }
}

/// `bakery build api web` names services as `docker compose build` does,
/// and `bakery version` says which binary this is.
#[test]
fn positional_services_and_version() {
    let dir = repo();
    let out = bakery(
        dir.path(),
        &["--compose", "compose.yaml", "plan", "web"],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("r.io/web:1") && !stdout.contains("r.io/api"),
        "{stdout}"
    );
    let out = bakery(
        dir.path(),
        &[
            "--compose",
            "compose.yaml",
            "--services",
            "api",
            "plan",
            "web",
        ],
        &[],
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("r.io/web:1") && stdout.contains("r.io/api"),
        "{stdout}"
    );

    let out = bakery(dir.path(), &["version"], &[]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let line = stdout.trim();
    assert!(
        line.starts_with(&format!("bakery {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains("linux"), "the target: {line}");
    assert!(
        !line.contains("commit unknown"),
        "built in a git checkout: {line}"
    );
}

/// A context over 100 MiB is packed with a warning that names its biggest
/// top-level paths, biggest first, and where to leave them out.
#[test]
fn a_large_context_warns_with_its_biggest_paths() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY src /src\n",
    )
    .unwrap();
    fs::create_dir_all(dir.path().join("node_modules/pkg")).unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(dir.path().join("src/main.c"), "int main(){}\n").unwrap();
    // Sparse: 110 MiB of content that costs no disk and packs fast.
    let big = fs::File::create(dir.path().join("node_modules/pkg/blob")).unwrap();
    big.set_len(110 * 1024 * 1024).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = bakery(
        dir.path(),
        &[
            "-t",
            "r.io/big:1",
            "pack",
            "-o",
            out_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains("the context is"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(warning.contains("node_modules (110.0 MiB)"), "{warning}");
    assert!(
        warning.find("node_modules").unwrap() < warning.find("src (").unwrap(),
        "biggest first: {warning}"
    );
    assert!(warning.contains(".dockerignore"), "{warning}");

    // Under the threshold: no warning.
    fs::remove_dir_all(dir.path().join("node_modules")).unwrap();
    let out = bakery(
        dir.path(),
        &[
            "-t",
            "r.io/big:1",
            "pack",
            "-o",
            out_dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("the context is"), "{stderr}");
}

/// `logs -h` and `status -h` list the flags those commands read, not the
/// plan's (which every subcommand accepts, as they are global).
#[test]
fn subcommand_help_lists_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["logs", "status"] {
        let out = bakery(dir.path(), &[sub, "-h"], &[]);
        let (stdout, _) = text(&out);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("--controller-url"), "{sub}: {stdout}");
        for flag in [
            "--config",
            "--compose",
            "--build-arg",
            "--platform",
            "--profile",
        ] {
            assert!(!stdout.contains(flag), "{sub} -h lists {flag}: {stdout}");
        }
    }
    let out = bakery(dir.path(), &["plan", "-h"], &[]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("--config") && stdout.contains("--offline"),
        "{stdout}"
    );
}

/// Found by review: each was accepted (or refused) wrongly before.
#[test]
fn careless_flags_and_variables_read_as_a_buildx_user_means_them() {
    let dir = repo();
    // An empty name in a build arg fails here, naming the flag, not at the controller.
    let out = bakery(
        dir.path(),
        &["-t", "r.io/a:1", "--build-arg", "=x", "plan", "--offline"],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("--build-arg `=x`"),
        "{stderr}"
    );
    // Booleans from the environment as CI systems write them.
    let out = bakery(
        dir.path(),
        &["--compose", "compose.yaml", "plan", "--offline"],
        &[("BAKERY_ASYNC", "1"), ("BAKERY_NO_CACHE", "yes")],
    );
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // An empty services list (an unset CI variable) means every service.
    let out = bakery(
        dir.path(),
        &[
            "--compose",
            "compose.yaml",
            "--services",
            "",
            "plan",
            "--offline",
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("r.io/web:1") && stdout.contains("r.io/api"),
        "{stdout}"
    );
    // plan checks the flags build checks before packing.
    let out = bakery(
        dir.path(),
        &[
            "-t",
            "r.io/a:1",
            "--build-context",
            "noequals",
            "plan",
            "--offline",
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("--build-context"),
        "{stderr}"
    );
    // -V says what --version says.
    let short = bakery(dir.path(), &["-V"], &[]);
    let long = bakery(dir.path(), &["--version"], &[]);
    assert_eq!(text(&short).0, text(&long).0);
    assert!(text(&short).0.contains("(commit "), "{}", text(&short).0);
    // pack's help lists no build or controller flags.
    let out = bakery(dir.path(), &["pack", "-h"], &[]);
    let (stdout, _) = text(&out);
    for flag in ["--async", "--provenance", "--controller-url", "--no-cache"] {
        assert!(!stdout.contains(flag), "pack -h lists {flag}: {stdout}");
    }
    assert!(
        stdout.contains("--output") && stdout.contains("--config"),
        "{stdout}"
    );
}

/// Incompressible bytes, quickly: packing them takes a while.
fn noise(path: &Path, bytes: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(bytes);
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(path, out).unwrap();
}

/// Packing a big context shows progress: lines in a CI log (here every
/// 50 ms, BAKERY_HEARTBEAT shortened), a bar on a terminal (under a
/// pseudo-terminal, where no such lines are printed).
#[test]
fn packing_shows_progress_in_a_log_and_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    noise(&dir.path().join("blob.bin"), 48 << 20);
    let out_dir = tempfile::tempdir().unwrap();
    let args = [
        "-t",
        "r.io/big:1",
        "pack",
        "-o",
        out_dir.path().to_str().unwrap(),
    ];
    let out = bakery(dir.path(), &args, &[("BAKERY_HEARTBEAT", "0.05")]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Counted as the archive is written, not file by file: the one big
    // file shows as it goes.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("packing ") && l.contains(" after "))
        .collect();
    assert!(!lines.is_empty(), "no progress line: {stderr}");
    assert!(lines.iter().any(|l| l.contains(" MiB after ")), "{lines:?}");

    let command = format!(
        "{} {}",
        env!("CARGO_BIN_EXE_bakery"),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .env("BAKERY_HEARTBEAT", "0.05")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("packing "), "a bar names the step: {shown}");
    assert!(
        !shown.contains(" after "),
        "no log lines on a terminal: {shown}"
    );
}
