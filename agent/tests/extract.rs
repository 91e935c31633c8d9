//! Hostile archives: nothing may be written outside the work dir.

use std::path::Path;

use bakery_agent::extract::{extract, ExtractError, Limits};

/// Builds a tar with raw headers, so paths the `tar` crate would refuse to
/// write can still be tested.
struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Tar {
        Tar(Vec::new())
    }

    fn entry(mut self, path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Tar {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: set_path() refuses `..` and absolute paths.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Tar {
        self.entry(path, tar::EntryType::Regular, None, data)
    }

    fn run(
        mut self,
        dest: &Path,
        limits: Limits,
    ) -> Result<bakery_agent::extract::Extracted, ExtractError> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        extract(&self.0[..], dest, limits)
    }
}

fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("work");
    std::fs::create_dir(&dest).unwrap();
    (root, dest)
}

fn refused(result: Result<bakery_agent::extract::Extracted, ExtractError>, fragment: &str) {
    match result {
        Err(ExtractError::Refused { entry, why }) => assert!(
            format!("{entry}: {why}").contains(fragment),
            "{entry}: {why}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_normal_archive_unpacks() {
    let (_root, dest) = sandbox();
    let done = Tar::new()
        .entry("src/", tar::EntryType::Directory, None, b"")
        .file("src/main.rs", b"fn main() {}")
        .entry("link", tar::EntryType::Symlink, Some("src/main.rs"), b"")
        .entry("hard", tar::EntryType::Link, Some("src/main.rs"), b"")
        .run(&dest, Limits::default())
        .unwrap();
    assert_eq!(done.entries, 4);
    assert_eq!(
        std::fs::read_to_string(dest.join("hard")).unwrap(),
        "fn main() {}"
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("src/main.rs")
    );
}

#[test]
fn parent_and_absolute_paths_are_refused() {
    let (root, dest) = sandbox();
    refused(
        Tar::new()
            .file("../escape.txt", b"x")
            .run(&dest, Limits::default()),
        "`..`",
    );
    refused(
        Tar::new()
            .file("a/../../escape.txt", b"x")
            .run(&dest, Limits::default()),
        "`..`",
    );
    refused(
        Tar::new()
            .file("/tmp/abs.txt", b"x")
            .run(&dest, Limits::default()),
        "absolute",
    );
    assert!(!root.path().join("escape.txt").exists());
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    let (root, dest) = sandbox();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let result = Tar::new()
        .entry(
            "evil",
            tar::EntryType::Symlink,
            Some(outside.to_str().unwrap()),
            b"",
        )
        .file("evil/pwned.txt", b"x")
        .run(&dest, Limits::default());
    refused(result, "is a symlink");
    assert!(!outside.join("pwned.txt").exists());

    // A file entry named like an existing link replaces the link, never follows it.
    let (root, dest) = sandbox();
    let target = root.path().join("target.txt");
    std::fs::write(&target, "original").unwrap();
    Tar::new()
        .entry(
            "f",
            tar::EntryType::Symlink,
            Some(target.to_str().unwrap()),
            b"",
        )
        .file("f", b"replaced")
        .run(&dest, Limits::default())
        .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
    assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "replaced");
}

#[test]
fn hard_links_out_of_the_context_are_refused() {
    let (_root, dest) = sandbox();
    refused(
        Tar::new()
            .entry("h", tar::EntryType::Link, Some("/etc/passwd"), b"")
            .run(&dest, Limits::default()),
        "outside",
    );
    refused(
        Tar::new()
            .entry("h", tar::EntryType::Link, Some("../../etc/passwd"), b"")
            .run(&dest, Limits::default()),
        "outside",
    );
}

#[test]
fn device_files_are_refused() {
    let (_root, dest) = sandbox();
    refused(
        Tar::new()
            .entry("null", tar::EntryType::Char, None, b"")
            .run(&dest, Limits::default()),
        "device",
    );
    refused(
        Tar::new()
            .entry("fifo", tar::EntryType::Fifo, None, b"")
            .run(&dest, Limits::default()),
        "device",
    );
}

#[test]
fn size_and_entry_limits_stop_bombs() {
    let (_root, dest) = sandbox();
    let limits = Limits {
        max_bytes: 10,
        max_entries: 100,
        declared: false,
    };
    assert!(matches!(
        Tar::new().file("big", &[0u8; 11]).run(&dest, limits),
        Err(ExtractError::TooLarge(10))
    ));
    // A cap that is what the client said it packed names the archive as
    // not what was packed (a decompression bomb, or tampering).
    let declared = Limits {
        declared: true,
        ..limits
    };
    let e = Tar::new()
        .file("big", &[0u8; 11])
        .run(&dest, declared)
        .unwrap_err();
    assert!(matches!(e, ExtractError::LargerThanPacked(10)), "{e}");
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 3,
        declared: false,
    };
    let mut t = Tar::new();
    for i in 0..5 {
        t = t.file(&format!("f{i}"), b"x");
    }
    assert!(matches!(
        t.run(&dest, limits),
        Err(ExtractError::TooManyEntries(3))
    ));
}

/// A context whose Dockerfile is a symlink out of it (the archive may
/// hold one: links are data) is refused before any builder reads it, and
/// the refusal quotes nothing of the file it points at.
#[test]
fn a_dockerfile_leading_out_of_the_context_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("context");
    std::fs::create_dir_all(ctx.join("real")).unwrap();
    std::fs::write(ctx.join("real/Dockerfile"), "FROM scratch\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", ctx.join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink("/etc", ctx.join("etc")).unwrap();
    std::os::unix::fs::symlink("real/Dockerfile", ctx.join("Inside")).unwrap();
    for bad in [
        "Dockerfile",
        "etc/hostname",
        "../context/Dockerfile",
        "/etc/hostname",
    ] {
        let e = bakery_agent::check_dockerfile(&ctx, bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad), "{e}");
        let secret = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        assert!(
            secret.trim().is_empty() || !e.contains(secret.trim()),
            "{e}"
        );
    }
    bakery_agent::check_dockerfile(&ctx, "real/Dockerfile").unwrap();
    bakery_agent::check_dockerfile(&ctx, "Inside").unwrap();
}
