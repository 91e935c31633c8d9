//! examples/server/terraform is valid against the AWS provider's schema
//! (`terraform validate`), and its setups plan as documented against a
//! mocked provider (`terraform test`: Kubernetes-only without a VPC, ECS
//! agents, the controller as an ECS service). Its IAM documents, applied
//! against moto (a real state, every ARN filled in), pass parliament one by
//! one (scripts/iam-lint.py). Offline: the provider comes from a filesystem
//! mirror (`terraform init -plugin-dir`). Where terraform or the mirror is
//! absent, the test says it skipped and why.

mod checkers;

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
    terraform_with(dir, args, None)
}

fn terraform_with(dir: &Path, args: &[&str], stdout_to: Option<&Path>) -> String {
    let mut cmd = Command::new("terraform");
    if let Some(file) = stdout_to {
        cmd.stdout(std::fs::File::create(file).unwrap());
    }
    let out = cmd
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
        test.contains("6 passed, 0 failed"),
        "every setup of tests/setups.tftest.hcl ran:\n{test}"
    );
    iam_documents_pass_parliament(work.path());
    // checkov's Terraform rules: every finding fixed, or skipped in the
    // resource with a written reason (`#checkov:skip=ID:reason`).
    checkers::checkov_passes(&[
        "-d",
        example.to_str().unwrap(),
        "--framework",
        "terraform",
        "--skip-path",
        "tests",
    ]);
}

/// Applies the IAM side of the ECS setup against moto and lints each
/// document with parliament.
fn iam_documents_pass_parliament(dir: &Path) {
    let moto = Moto::start();
    let url = &moto.url;
    let network = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import boto3\nec2 = boto3.client('ec2', endpoint_url='{url}', region_name='eu-west-1', aws_access_key_id='test', aws_secret_access_key='test')\nvpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\nsubnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f'10.0.{{i}}.0/24')['Subnet']['SubnetId'] for i in (1, 2)]\nprint(vpc, ','.join(subnets))\n"
        ))
        .output()
        .unwrap();
    assert!(
        network.status.success(),
        "{}",
        String::from_utf8_lossy(&network.stderr)
    );
    let network = String::from_utf8_lossy(&network.stdout).into_owned();
    let (vpc, subnets) = network.trim().split_once(' ').unwrap();
    // Only in the test's copy: the provider talks to moto.
    let mut endpoints = String::new();
    for service in ["ec2", "ecs", "iam", "s3", "sts", "cloudwatchlogs"] {
        endpoints.push_str(&format!("    {service} = \"{url}\"\n"));
    }
    std::fs::write(
        dir.join("moto_override.tf"),
        format!(
            "provider \"aws\" {{\n  region = var.region\n  access_key = \"test\"\n  secret_key = \"test\"\n  skip_credentials_validation = true\n  skip_metadata_api_check = true\n  s3_use_path_style = true\n  endpoints {{\n{endpoints}  }}\n}}\n"
        ),
    )
    .unwrap();
    let subnet_ids = format!(
        "subnet_ids=[{}]",
        subnets
            .split(',')
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let vpc_id = format!("vpc_id={vpc}");
    let mut args = vec![
        "apply",
        "-auto-approve",
        "-input=false",
        "-var",
        "region=eu-west-1",
        "-var",
        "context_bucket=contexts",
        "-var",
        &vpc_id,
        "-var",
        &subnet_ids,
    ];
    // The documents and what they name; not the bucket's lifecycle rule,
    // which the provider waits a minute on against moto.
    for target in [
        "aws_iam_policy.server",
        "aws_iam_policy.client",
        "aws_iam_policy.read_contexts",
        "aws_iam_role_policy.agent_execution_image_secret",
        "aws_s3_bucket_policy.contexts_tls_only",
    ] {
        args.extend(["-target", target]);
    }
    terraform(dir, &args);
    let state = dir.join("state.json");
    terraform_with(dir, &["show", "-json"], Some(&state));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lint = Command::new("python3")
        .arg(root.join("scripts/iam-lint.py"))
        .arg(root.join("examples/server/terraform/parliament-allowed.txt"))
        .stdin(std::fs::File::open(&state).unwrap())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    assert!(lint.status.success(), "parliament:\n{text}");
    assert!(
        text.contains("checked aws_iam_policy.server[0]"),
        "the server policy was linted:\n{text}"
    );
}

/// A moto server on a free port, stopped on drop.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server is installed (scripts/setup)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Moto { child, url }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
