//! The fingerprint that lets an unchanged context skip packing: equal for
//! an unchanged tree, different for every change that changes the archive,
//! including an edit that keeps a file's size and puts its mtime back.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bakery_pack::{fingerprint, Codec, Fingerprint, PackOptions};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

/// Sets every entry's mtime an hour back, as a checkout that is not fresh:
/// the fingerprint is then settled. (ctime cannot be set back: the
/// tests that need a settled tree wait out the settle time once.)
fn age(root: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let f = fs::File::options().write(true).open(entry.path()).unwrap();
            f.set_modified(past).unwrap();
        }
    }
}

fn fp(root: &Path) -> Fingerprint {
    fingerprint(root, "Dockerfile", &PackOptions::default()).unwrap()
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /\n"),
            (".dockerignore", "*.log\n"),
            ("src/main.c", "int main(void) { return 0; }\n"),
            ("build.log", "noise\n"),
        ],
    );
    age(dir.path());
    dir
}

#[test]
fn an_unchanged_tree_has_the_same_fingerprint() {
    let dir = tree();
    assert_eq!(fp(dir.path()).digest, fp(dir.path()).digest);
}

#[test]
fn an_edit_that_keeps_size_and_mtime_changes_the_fingerprint() {
    let dir = tree();
    let file = dir.path().join("src/main.c");
    let before = fp(dir.path());
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    // Same length, other bytes, mtime put back: only ctime tells.
    fs::write(&file, "int main(void) { return 1; }\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.modified().unwrap(), mtime, "the mtime was put back");
    assert_eq!(meta.len(), 29, "the size is unchanged");
    assert_ne!(before.digest, fp(dir.path()).digest);
}

#[test]
fn what_changes_the_archive_changes_the_fingerprint() {
    let dir = tree();
    let base = fp(dir.path()).digest;
    // A new file, a new name, a mode, the ignore file, the options.
    write(dir.path(), &[("src/util.c", "")]);
    let added = fp(dir.path()).digest;
    assert_ne!(base, added);
    fs::rename(
        dir.path().join("src/util.c"),
        dir.path().join("src/helpers.c"),
    )
    .unwrap();
    let renamed = fp(dir.path()).digest;
    assert_ne!(added, renamed);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        dir.path().join("src/helpers.c"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let moded = fp(dir.path()).digest;
    assert_ne!(renamed, moded);
    let zstd = fingerprint(
        dir.path(),
        "Dockerfile",
        &PackOptions {
            codec: Codec::Zstd,
            ..PackOptions::default()
        },
    )
    .unwrap();
    assert_ne!(moded, zstd.digest);
    let excluded = fingerprint(
        dir.path(),
        "Dockerfile",
        &PackOptions {
            exclude: vec!["src/helpers.c".into()],
            ..PackOptions::default()
        },
    )
    .unwrap();
    assert_ne!(moded, excluded.digest);
}

#[test]
fn an_ignored_file_does_not_change_the_fingerprint() {
    let dir = tree();
    let before = fp(dir.path()).digest;
    write(
        dir.path(),
        &[("build.log", "more noise, longer than before\n")],
    );
    assert_eq!(before, fp(dir.path()).digest);
}

#[test]
fn a_tree_changed_within_the_settle_time_is_not_settled() {
    let dir = tree();
    // Written a moment ago: ctime is now.
    assert!(!fp(dir.path()).settled);
    std::thread::sleep(bakery_pack::SETTLE + Duration::from_secs(1));
    assert!(fp(dir.path()).settled);
    write(dir.path(), &[("src/new.c", "")]);
    assert!(!fp(dir.path()).settled);
}
