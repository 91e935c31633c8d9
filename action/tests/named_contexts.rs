//! Named build contexts (`--build-context`) and SSH keys (`--ssh`) on the
//! local platform's buildah, against a real registry: a directory from
//! outside the context, an image standing in for a `FROM` name, and a
//! `RUN --mount=type=ssh` that sees an agent socket holding the key.

mod support;

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

#[test]
fn named_contexts_and_ssh_keys_reach_a_buildah_build() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[(
        "Dockerfile",
        "FROM base\nCOPY --from=shared data.txt /data.txt\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo ssh-ok > /ssh.txt\n",
    )]);
    // A directory outside the context, with its own .dockerignore.
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("data.txt"), "shared data\n").unwrap();
    std::fs::write(shared.path().join("private.txt"), "not sent\n").unwrap();
    std::fs::write(shared.path().join(".dockerignore"), "private.txt\n").unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen (scripts/setup installs it)");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let body = key_text.lines().nth(1).unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let tag = format!("{}/ctx/app:1", registry.host());
    let shared_arg = format!("shared={}", shared.path().display());
    let base_arg = format!("base=docker-image://{base}");
    let ssh_arg = format!("default={}", key.display());
    let out = bakery(
        repo.path(),
        &[
            "build",
            "--tag",
            &tag,
            "--platform",
            "linux/amd64",
            "--build-context",
            &shared_arg,
            "--build-context",
            &base_arg,
            "--ssh",
            &ssh_arg,
        ],
        &[("DATA_DIR", data.path().to_str().unwrap())],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(&body), "the key never reaches a log: {all}");
    let amd64 = format!("{tag}_amd64");
    assert_eq!(
        file_in_image(&amd64, "/data.txt").as_deref(),
        Some("shared data\n")
    );
    assert_eq!(
        file_in_image(&amd64, "/ssh.txt").as_deref(),
        Some("ssh-ok\n")
    );
    // busybox, pulled through the named image context.
    assert!(file_bytes_in_image(&amd64, "/bin/busybox").is_some());

    // What cannot work is refused before anything is uploaded, naming the flag.
    for (flag, value, says) in [
        ("--ssh", "default", "cannot reach this machine's ssh-agent"),
        (
            "--build-context",
            "x=https://example.com/x.git",
            "`https://` contexts are not supported",
        ),
        (
            "--build-context",
            "x=/does/not/exist",
            "--build-context x: /does/not/exist",
        ),
    ] {
        let out = bakery(
            repo.path(),
            &[
                "build",
                "--tag",
                &tag,
                "--platform",
                "linux/amd64",
                flag,
                value,
            ],
            &[("DATA_DIR", data.path().to_str().unwrap())],
        );
        assert!(!out.status.success(), "{flag} {value}");
        let all = text(&out);
        assert!(all.contains(says), "{flag} {value}: {all}");
    }
}

/// Compose's `additional_contexts` (a directory beside the service and an
/// image) reach the build as `--build-context` does; two services with
/// different contexts of the same name each get their own.
#[test]
fn compose_additional_contexts_reach_each_services_build() {
    let registry = registry();
    let base = push_base_image(&registry);
    let host = registry.host();
    let repo = project(&[
        ("app/Dockerfile", "FROM base\nCOPY --from=assets a.txt /a.txt\n"),
        ("assets-one/a.txt", "one\n"),
        ("assets-two/a.txt", "two\n"),
        (
            "compose.yaml",
            &format!(
                "services:\n  one:\n    image: {host}/ac/one:1\n    build:\n      context: app\n      additional_contexts:\n        assets: ./assets-one\n        base: docker-image://{base}\n  two:\n    image: {host}/ac/two:1\n    build:\n      context: app\n      additional_contexts: [assets=./assets-two, base=docker-image://{base}]\n"
            ),
        ),
    ]);
    let data = tempfile::tempdir().unwrap();
    let out = bakery(
        repo.path(),
        &["build"],
        &[("DATA_DIR", data.path().to_str().unwrap())],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for (service, want) in [("one", "one\n"), ("two", "two\n")] {
        let image = format!("{host}/ac/{service}:1_amd64");
        assert_eq!(
            file_in_image(&image, "/a.txt").as_deref(),
            Some(want),
            "{service}"
        );
    }
}
