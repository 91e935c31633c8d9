//! What the controller accepts and refuses, case by case.

use super::*;

#[test]
fn digests_must_be_sha256_hex() {
    assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
    for bad in [
        "sha256:0\nX=1",
        "sha256:0",
        "sha512:abc",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha256:{}\n", "a".repeat(64)),
    ] {
        let e = check_digest(bad).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn errors_lose_control_characters_and_length() {
    assert_eq!(clean_error("a\nb\rc\u{1b}[1m"), "a b c [1m");
    let long = "x".repeat(MAX_ERROR_CHARS * 2);
    assert!(clean_error(&long).len() < MAX_ERROR_CHARS + 10);
    assert_eq!(clean_line("one\ntwo"), "one two");
    assert_eq!(clean_line("\u{1b}[32mgreen\r"), "\u{1b}[32mgreen\r");
}

#[test]
fn relative_paths_stay_inside() {
    for ok in ["Dockerfile", "docker/Dockerfile.prod", "./Dockerfile"] {
        assert!(check_relative_path("f", ok).is_ok(), "{ok}");
    }
    for bad in [
        "/etc/passwd",
        "../../../etc/passwd",
        "a/../../b",
        "",
        "a\nb",
    ] {
        assert!(check_relative_path("f", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn secrets_have_plain_unique_ids_and_bounded_values() {
    let spec = BuildSpec {
        secrets: vec![crate::spec::BuildSecret {
            id: "npm.rc_1-x".into(),
            value: crate::spec::Secret::new("v"),
        }],
        ..BuildSpec::new("Dockerfile", crate::Arch::Amd64)
    };
    assert!(check_secrets(&spec.secrets, "s").is_ok());
    let with = |id: &str, value: String| {
        let mut s = spec.clone();
        s.secrets.push(crate::spec::BuildSecret {
            id: id.into(),
            value: crate::spec::Secret::new(value),
        });
        check_secrets(&s.secrets, "s").map_err(|e| e.message)
    };
    assert!(with("npm.rc_1-x", "w".into())
        .unwrap_err()
        .contains("given twice"));
    assert!(with("a=b", "w".into()).is_err());
    assert!(with("", "w".into()).is_err());
    let e = with("big", "x".repeat(MAX_SECRET_BYTES + 1)).unwrap_err();
    assert!(e.contains("`big`") && !e.contains("xxxx"), "{e}");
}

#[test]
fn named_contexts_have_plain_names_and_real_images() {
    use crate::spec::NamedContext;
    let spec = BuildSpec {
        build_contexts: [
            ("shared".to_string(), NamedContext::Archive(0)),
            (
                "docker.io/library/alpine:3.20".to_string(),
                NamedContext::DockerImage("r.io/alpine:3.20".into()),
            ),
        ]
        .into(),
        ..BuildSpec::new("Dockerfile", crate::Arch::Amd64)
    };
    assert!(check_contexts(&spec, "s").is_ok());
    let with = |name: &str, c: NamedContext| {
        let mut s = spec.clone();
        s.build_contexts.insert(name.into(), c);
        check_contexts(&s, "s").map_err(|e| e.to_string())
    };
    assert!(with("../x", NamedContext::Archive(0)).is_err());
    assert!(with("a b", NamedContext::Archive(0)).is_err());
    assert!(with("x", NamedContext::Archive(9)).is_err());
    assert!(with("x", NamedContext::DockerImage("not an image".into())).is_err());
}
