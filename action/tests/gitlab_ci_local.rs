//! The GitLab component as a GitLab user's pipeline runs it: gitlab-ci-local
//! (npm, on the Node 22 of the npm package `node`; both installed by
//! scripts/setup) with the shell executor, `include: local` with inputs as
//! GitLab interpolates them, `GITLAB_CI=true` (gitlab-ci-local sets it
//! false), a real registry and the embedded controller with buildah agents.
//! Checked: the job passes, one log section per arch, the dotenv reaches a
//! `needs:` job, and a failing build fails the job and skips what needs it.

mod support;
use support::provenance::image_entries;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

fn npm_bin() -> PathBuf {
    std::env::var("BAKERY_NPM_DIR")
        .map_or_else(
            |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/bakery/npm"),
            PathBuf::from,
        )
        .join("node_modules/.bin")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=ci@example.com", "-c", "user.name=ci"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// A GitLab project that includes the component with `inputs`, and a job
/// that needs the build and prints its dotenv.
fn project(registry: &Server, dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::copy(
        root.join("templates/bakery.yml"),
        dir.path().join("templates/bakery.yml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi\n").unwrap();
    std::fs::write(
        dir.path().join(".gitlab-ci.yml"),
        format!(
            "stages: [build, after]\n\
             include:\n  - local: templates/bakery.yml\n    inputs:\n      controller-url: \"\"\n      tags: \"{}/glci/app:1\"\n      platforms: \"linux/amd64,linux/arm64\"\n\
             read-dotenv:\n  stage: after\n  needs: [bakery-build]\n  script:\n    - test -n \"$BAKERY_DIGEST\"\n    - echo \"dotenv digest=$BAKERY_DIGEST image=$BAKERY_IMAGE\"\n",
            registry.host()
        ),
    )
    .unwrap();
    git(dir.path(), &["init", "-q", "."]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "pipeline"]);
    dir
}

fn gitlab_ci_local(project: &Path) -> (Output, String) {
    let bakery = Path::new(env!("CARGO_BIN_EXE_bakery")).parent().unwrap();
    let home = project.join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("timeout")
        .arg("300")
        .arg(npm_bin().join("gitlab-ci-local"))
        .args(["--force-shell-executor", "--shell-isolation", "--home"])
        .arg(&home)
        .args(["--variable", "GITLAB_CI=true"])
        .current_dir(project)
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
                npm_bin().display(),
                bakery.display()
            ),
        )
        .env("HOME", &home)
        .output()
        .expect("gitlab-ci-local is installed (scripts/setup)");
    let log = std::fs::read_to_string(project.join(".gitlab-ci-local/output/bakery-build.log"))
        .unwrap_or_default();
    (out, log)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_component_builds_in_gitlab_ci_local_and_its_dotenv_reaches_needs_jobs() {
    let registry = registry();
    let repo = project(&registry, "FROM scratch\nCOPY hello.txt /\n");
    let (out, log) = gitlab_ci_local(repo.path());
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{log}");
    assert!(all.contains("PASS  bakery-build"), "{all}");
    let index = raw_manifest(&format!("{}/glci/app:1", registry.host()));
    assert_eq!(Some(image_entries(&index).len()), Some(2));
    assert!(all.contains("dotenv digest=sha256:"), "{all}");
    // gitlab-ci-local renders a section as `<name>_started` … `<name> took`.
    let sections: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("bakery_") && l.ends_with("_started"))
        .collect();
    assert_eq!(
        sections.len(),
        2,
        "one section per arch: {sections:?}\n{log}"
    );

    // A failing build fails the job, and the job that needs it never runs.
    std::fs::write(
        repo.path().join("Dockerfile"),
        "FROM scratch\nCOPY missing.txt /\n",
    )
    .unwrap();
    git(repo.path(), &["commit", "-qam", "break"]);
    let (out, log) = gitlab_ci_local(repo.path());
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("FAIL  bakery-build"), "{all}");
    assert!(
        log.contains("missing.txt"),
        "the builder's error is in the job log: {log}"
    );
    assert!(!all.contains("dotenv digest="), "{all}");
}
