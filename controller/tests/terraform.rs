//! examples/server/terraform is valid against the AWS provider's schema
//! (`terraform validate`), and its setups plan as documented against a
//! mocked provider (`terraform test`: Kubernetes-only without a VPC, ECS
//! agents, the controller as an ECS service). Offline: the provider comes
//! from a filesystem mirror (`terraform init -plugin-dir`). Where terraform
//! or the mirror is absent, the test says it skipped and why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The mirror holding `registry.terraform.io/hashicorp/aws`: where this
/// machine kind ships it, or Terraform's own implied local mirrors.
fn plugin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [
        PathBuf::from("/opt/tf-plugins"),
        home.join(".terraform.d/plugins"),
        PathBuf::from("/usr/local/share/terraform/plugins"),
        PathBuf::from("/usr/share/terraform/plugins"),
    ]
    .into_iter()
    .find(|d| d.join("registry.terraform.io/hashicorp/aws").is_dir())
}

fn terraform(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("terraform")
        .args(args)
        .arg("-no-color")
        .current_dir(dir)
        // No user configuration: the mirror is named on the command line.
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("TF_IN_AUTOMATION", "1")
        .output()
        .expect("terraform runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "terraform {args:?}:\n{text}");
    text
}

#[test]
fn the_terraform_example_validates_and_plans_each_setup() {
    if Command::new("terraform").arg("version").output().is_err() {
        eprintln!("skipped: terraform is not installed");
        return;
    }
    let Some(mirror) = plugin_dir() else {
        eprintln!(
            "skipped: no provider mirror with registry.terraform.io/hashicorp/aws (in /opt/tf-plugins or Terraform's local mirror directories); providers cannot be downloaded here"
        );
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/server/terraform");
    let work = tempfile::tempdir().unwrap();
    for entry in walk(&example) {
        let to = work.path().join(entry.strip_prefix(&example).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let plugin_dir = format!("-plugin-dir={}", mirror.display());
    terraform(
        work.path(),
        &["init", "-backend=false", "-input=false", &plugin_dir],
    );
    let validate = terraform(work.path(), &["validate"]);
    assert!(validate.contains("Success!"), "{validate}");
    let test = terraform(work.path(), &["test"]);
    assert!(
        test.contains("5 passed, 0 failed"),
        "every setup of tests/setups.tftest.hcl ran:\n{test}"
    );
}

/// The example's `.tf` and `.tftest.hcl` files (no state, no `.terraform`).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            out.extend(walk(&path));
        } else if [".tf", ".tftest.hcl"].iter().any(|ext| {
            // Terraform reads these names exactly, in this case.
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            name.ends_with(ext)
        }) {
            out.push(path);
        }
    }
    out
}
