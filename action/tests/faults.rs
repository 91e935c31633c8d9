//! Registries that go away: the multi-arch index write rides out a registry
//! restart and names the cause when the registry stays down.

mod support;

use std::process::Command;
use std::time::Duration;

use bakery_controller::index::{registry_client, write_index, RetryPolicy};
use bakery_protocol::Arch;
use support::*;

fn digest_of(reference: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_write_rides_out_a_registry_restart() {
    let storage = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = registry_with_storage(port, storage.path());
    let base = push_base_image(&first);
    let digest = digest_of(&base);
    drop(first);
    let root = storage.path().to_path_buf();
    let restarted = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        registry_with_storage(port, &root)
    });
    let destination = format!("127.0.0.1:{port}/bakery/busybox:multi");
    let result = write_index(
        &registry_client(&destination, &[], std::time::Duration::from_secs(30)),
        &destination,
        &[],
        &[(Arch::Amd64, digest.clone())],
        &[],
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(300),
            ..RetryPolicy::default()
        },
    )
    .await;
    let _second = restarted.join().unwrap();
    result.unwrap();
    let index = raw_manifest(&destination);
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

#[tokio::test]
async fn a_registry_that_stays_down_fails_the_index_with_the_cause() {
    let port = free_port();
    let error = write_index(
        &registry_client(
            &format!("127.0.0.1:{port}/app/x:1"),
            &[],
            std::time::Duration::from_secs(30),
        ),
        &format!("127.0.0.1:{port}/app/x:1"),
        &[],
        &[(Arch::Amd64, format!("sha256:{}", "a".repeat(64)))],
        &[],
        RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(
        error.to_lowercase().contains("connection refused"),
        "{error}"
    );
    assert!(error.contains("gave up after 3 attempts"), "{error}");
}

/// A registry that accepts connections and never answers: each try ends
/// at REGISTRY_TIMEOUT, and no try starts once the policy's patience has
/// passed, so the index gives up after about patience + one timeout (with
/// 6 tries of 30 s each it had taken 6.5 minutes), naming the registry.
#[tokio::test]
async fn a_registry_that_never_answers_is_given_up_on_within_the_patience() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    // Accepts (the kernel does) and never answers.
    let destination = format!("{addr}/app/x:1");
    let started = std::time::Instant::now();
    let error = write_index(
        &registry_client(&destination, &[], Duration::from_secs(1)),
        &destination,
        &[],
        &[(Arch::Amd64, format!("sha256:{}", "a".repeat(64)))],
        &[],
        RetryPolicy {
            patience: Duration::from_secs(3),
            ..RetryPolicy::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    let took = started.elapsed();
    assert!(error.contains(&addr.to_string()), "{error}");
    assert!(error.contains("gave up after"), "{error}");
    // The fault: several tries each timed out, not one refused connection.
    assert!(!error.to_lowercase().contains("refused"), "{error}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}: {error}"
    );
    drop(silent);
}

#[tokio::test]
async fn a_missing_manifest_is_not_retried() {
    let registry = registry();
    let error = write_index(
        &registry_client(
            &format!("{}/app/x:1", registry.host()),
            &[],
            std::time::Duration::from_secs(30),
        ),
        &format!("{}/app/x:1", registry.host()),
        &[],
        &[(Arch::Arm64, format!("sha256:{}", "b".repeat(64)))],
        &[],
        RetryPolicy::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("arm64 manifest sha256:bbbb"), "{error}");
    assert!(!error.contains("gave up"), "{error}");
}

/// A context key made of one repeated hex digit.
fn key(digit: char) -> bakery_protocol::ContextKey {
    bakery_protocol::ContextKey::new(&digit.to_string().repeat(64), bakery_protocol::Codec::Gzip)
        .unwrap()
}

fn s3_through(proxy: &Server) -> bakery_store::S3Settings {
    bakery_store::S3Settings {
        bucket: "contexts".into(),
        endpoint: Some(proxy.url()),
        region: Some("us-east-1".into()),
        ssl: false,
        path_style: None,
    }
}

fn with_aws_test_credentials() {
    // moto accepts any; set once for every test in this binary.
    // SAFETY (test only): every test sets the same two values before it
    // builds an SDK client, the only reader of these variables.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
}

/// S3 answering 503 SlowDown twice: the upload is retried and lands.
#[tokio::test]
async fn a_brief_s3_outage_is_retried() {
    with_aws_test_credentials();
    let moto = s3("contexts");
    let proxy = moto_proxy_with(&moto, &[("FAIL_S3", "2")]);
    let store = bakery_store::S3Store::connect(s3_through(&proxy)).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"context").unwrap();
    assert!(store
        .upload_if_absent(&key('a'), file.path())
        .await
        .unwrap());
    assert!(store.exists(&key('a')).await.unwrap());
}

/// S3 down for good: the error names the object, the endpoint and S3's answer.
#[tokio::test]
async fn a_persistent_s3_outage_names_the_endpoint_and_the_answer() {
    with_aws_test_credentials();
    let moto = s3("contexts");
    let proxy = moto_proxy_with(&moto, &[("FAIL_S3", "1000")]);
    let store = bakery_store::S3Store::connect(s3_through(&proxy)).await;
    let error = store.exists(&key('b')).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("s3://contexts/{}", key('b'))),
        "{error}"
    );
    assert!(error.contains(&proxy.url()), "{error}");
    assert!(
        error.contains("503") || error.contains("SlowDown"),
        "{error}"
    );
}

/// A client allowed only s3:PutObject (the original tool's policy): S3
/// answers HeadObject 403. The context is uploaded anyway (it had failed
/// the build), with a warning; the 403 was really answered.
#[tokio::test]
async fn a_put_only_s3_policy_uploads_without_asking() {
    with_aws_test_credentials();
    let moto = s3("contexts");
    let proxy = moto_proxy_with(&moto, &[("FORBID_HEAD", "1")]);
    let store = bakery_store::S3Store::connect(s3_through(&proxy)).await;
    let head = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
        .arg(format!("{}/contexts/{}", proxy.url(), key('c')))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&head.stdout),
        "403",
        "the fault is injected"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"context").unwrap();
    assert!(store
        .upload_if_absent(&key('c'), file.path())
        .await
        .unwrap());
    // Without the check, every upload sends it again.
    assert!(store
        .upload_if_absent(&key('c'), file.path())
        .await
        .unwrap());
}
