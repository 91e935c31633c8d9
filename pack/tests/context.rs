//! Packing real directory trees.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use bakery_pack::{open_archive, pack, pack_to_dir, Codec, PackOptions};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

/// Archive entries as path → (kind, content or link target).
fn entries(archive: &Path) -> BTreeMap<String, (char, String)> {
    let mut out = BTreeMap::new();
    let mut ar = open_archive(archive).unwrap();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let header = e.header().clone();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Regular => 'f',
            other => panic!("unexpected entry type {other:?}"),
        };
        let body = if kind == 'l' {
            e.link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        } else {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        out.insert(path, (kind, body));
    }
    out
}

fn pack_dir(
    root: &Path,
    dockerfile: &str,
    codec: Codec,
) -> (std::path::PathBuf, bakery_pack::Packed, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let opts = PackOptions {
        codec,
        ..PackOptions::default()
    };
    let (path, packed) = pack_to_dir(root, dockerfile, out.path(), &opts).unwrap();
    (path, packed, out)
}

#[test]
fn same_tree_same_bytes_whatever_the_mtimes_and_location() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files = [
        ("Dockerfile", "FROM x\n"),
        ("src/main.rs", "fn main() {}\n"),
        ("src/lib/a.txt", "a"),
        ("z", "z"),
    ];
    write(a.path(), &files);
    // Written in another order and with other times: still the same archive.
    let mut reversed = files;
    reversed.reverse();
    write(b.path(), &reversed);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(b.path().join("z"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    for codec in [Codec::Gzip, Codec::Zstd] {
        let (pa, ka, _t1) = pack_dir(a.path(), "Dockerfile", codec);
        let (pb, kb, _t2) = pack_dir(b.path(), "Dockerfile", codec);
        let (pa2, ka2, _t3) = pack_dir(a.path(), "Dockerfile", codec);
        assert_eq!(ka.sha256, kb.sha256, "{codec:?}");
        assert_eq!(ka.sha256, ka2.sha256, "{codec:?}: pack twice, same hash");
        assert_eq!(fs::read(&pa).unwrap(), fs::read(&pa2).unwrap());
        assert!(pa
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(&ka.sha256));
        assert_eq!(fs::read(&pb).unwrap().len() as u64, kb.size);
        assert!(ka.key().to_string().starts_with("contexts/sha256-"));
        assert_eq!(ka.key().codec(), codec);
    }

    // A changed byte changes the hash.
    let (_, before, _t) = pack_dir(a.path(), "Dockerfile", Codec::Gzip);
    write(a.path(), &[("src/lib/a.txt", "b")]);
    let (_, after, _t2) = pack_dir(a.path(), "Dockerfile", Codec::Gzip);
    assert_ne!(before.sha256, after.sha256);
}

#[test]
fn sha256_is_of_the_archive_bytes() {
    use sha2::Digest;
    let a = tempfile::tempdir().unwrap();
    write(a.path(), &[("Dockerfile", "FROM x\n")]);
    let (path, packed, _t) = pack_dir(a.path(), "Dockerfile", Codec::Gzip);
    let digest = hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()));
    assert_eq!(digest, packed.sha256);
}

#[test]
fn dockerignore_is_honoured_and_build_files_always_sent() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[
            ("Dockerfile", "FROM x\n"),
            (".dockerignore", "# build junk\nnode_modules\n*.log\n**/*.tmp\nDockerfile\n.dockerignore\ndocs\n!docs/keep.md\n"),
            ("node_modules/a/index.js", "x"),
            ("app.log", "x"),
            ("src/deep/x.tmp", "x"),
            ("src/main.js", "main"),
            ("docs/drop.md", "x"),
            ("docs/keep.md", "keep"),
        ],
    );
    let (path, packed, _t) = pack_dir(root.path(), "Dockerfile", Codec::Gzip);
    let names: Vec<String> = entries(&path).into_keys().collect();
    assert_eq!(
        names,
        [
            ".dockerignore",
            "Dockerfile",
            "docs/keep.md",
            "src",
            "src/deep",
            "src/main.js"
        ],
        "excluded: node_modules, *.log, **/*.tmp, docs except keep.md"
    );
    assert!(packed.excluded >= 4);
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[
            ("build/app.Dockerfile", "FROM x\n"),
            ("build/app.Dockerfile.dockerignore", "secret.txt\n"),
            (".dockerignore", "public.txt\n"),
            ("secret.txt", "s"),
            ("public.txt", "p"),
        ],
    );
    let (path, _, _t) = pack_dir(root.path(), "build/app.Dockerfile", Codec::Gzip);
    let names = entries(&path);
    assert!(!names.contains_key("secret.txt"));
    assert!(
        names.contains_key("public.txt"),
        "the root .dockerignore does not apply"
    );
    assert!(names.contains_key("build/app.Dockerfile"));
}

#[cfg(unix)]
#[test]
fn symlinks_stay_links_and_special_files_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[("Dockerfile", "FROM x\n"), ("real/file.txt", "content")],
    );
    std::os::unix::fs::symlink("real/file.txt", root.path().join("link.txt")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("outside")).unwrap();
    let fifo = root.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());

    let out = tempfile::tempdir().unwrap();
    let (path, packed) = pack_to_dir(
        root.path(),
        "Dockerfile",
        out.path(),
        &PackOptions::default(),
    )
    .unwrap();
    let e = entries(&path);
    assert_eq!(e["link.txt"], ('l', "real/file.txt".to_string()));
    assert_eq!(
        e["outside"],
        ('l', "/etc/passwd".to_string()),
        "stored, never followed"
    );
    assert_eq!(e["real/file.txt"], ('f', "content".to_string()));
    assert!(!e.contains_key("pipe"));
    assert_eq!(packed.warnings.len(), 1);
    assert!(packed.warnings[0].contains("pipe"), "{:?}", packed.warnings);
}

#[cfg(unix)]
#[test]
fn executable_bit_survives_normalisation() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[("Dockerfile", "FROM x\n"), ("run.sh", "#!/bin/sh\n")],
    );
    fs::set_permissions(
        root.path().join("run.sh"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let (path, _, _t) = pack_dir(root.path(), "Dockerfile", Codec::Gzip);
    let mut ar = open_archive(&path).unwrap();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        match name.as_str() {
            "run.sh" => assert_eq!(mode, 0o755),
            "Dockerfile" => assert_eq!(mode, 0o644),
            _ => {}
        }
    }
}

#[test]
fn fifty_thousand_files_stream_through() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[("Dockerfile", "FROM x\n"), (".dockerignore", "skip\n")],
    );
    for d in 0..100 {
        let dir = root.path().join(format!("d{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..500 {
            fs::write(dir.join(format!("f{f:03}.txt")), format!("{d}/{f}")).unwrap();
        }
    }
    let skip = root.path().join("skip");
    fs::create_dir(&skip).unwrap();
    for f in 0..1000 {
        fs::write(skip.join(f.to_string()), "x").unwrap();
    }
    // Count into a sink: the archive is streamed, never built in memory.
    let packed = pack(
        root.path(),
        "Dockerfile",
        std::io::sink(),
        &PackOptions::default(),
    )
    .unwrap();
    assert_eq!(packed.entries, 2 + 100 + 50_000);
    assert_eq!(packed.excluded, 1, "an excluded directory is skipped whole");
    assert!(packed.size > 0);
}

#[test]
fn bad_dockerignore_is_located() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[
            ("Dockerfile", "FROM x\n"),
            (".dockerignore", "ok\n[broken\n"),
        ],
    );
    let err = pack(
        root.path(),
        "Dockerfile",
        std::io::sink(),
        &PackOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(".dockerignore:2"), "{text}");
}

#[test]
fn no_partial_archive_is_left_on_failure() {
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        &[("Dockerfile", "FROM x\n"), (".dockerignore", "[broken\n")],
    );
    let out = tempfile::tempdir().unwrap();
    assert!(pack_to_dir(
        root.path(),
        "Dockerfile",
        out.path(),
        &PackOptions::default()
    )
    .is_err());
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

/// A Dockerfile from outside the context travels in the reserved
/// directory, its `.dockerignore` beside it applies, and a context that
/// already has that name is refused rather than overwritten.
#[test]
fn a_dockerfile_outside_the_context_is_packed_beside_it() {
    let repo = tempfile::tempdir().unwrap();
    write(
        repo.path(),
        &[
            ("docker/app.Dockerfile", "FROM outside\n"),
            ("docker/app.Dockerfile.dockerignore", "*.log\n"),
            ("app/main.go", "package main\n"),
            ("app/debug.log", "noise"),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let opts = PackOptions {
        dockerfile_beside: Some(repo.path().join("docker/app.Dockerfile")),
        ..PackOptions::default()
    };
    let context = repo.path().join("app");
    let entry = ".bakery-dockerfile/app.Dockerfile";
    let (path, packed) = pack_to_dir(&context, entry, out.path(), &opts).unwrap();
    let got = entries(&path);
    assert_eq!(got[entry], ('f', "FROM outside\n".to_string()));
    assert_eq!(got[".bakery-dockerfile"].0, 'd');
    assert!(got.contains_key("main.go"));
    assert!(
        !got.contains_key("debug.log"),
        "the Dockerfile's own ignore file: {got:?}"
    );
    assert_eq!(packed.entries, got.len() as u64);
    // Same inputs, same bytes.
    let (_, again) = pack_to_dir(&context, entry, out.path(), &opts).unwrap();
    assert_eq!(again.sha256, packed.sha256);

    let err = pack_to_dir(&context, "Dockerfile", out.path(), &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("stored as `.bakery-dockerfile/<name>`"),
        "{err}"
    );
    fs::create_dir(context.join(".bakery-dockerfile")).unwrap();
    let err = pack_to_dir(&context, entry, out.path(), &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("has an entry named `.bakery-dockerfile`"),
        "{err}"
    );
}

/// Named build contexts travel in the archive as `.bakery-contexts/<n>/`
/// (never by their name, which is the user's text), each with its own
/// `.dockerignore` and excluded files; a context that has an entry of that
/// name is refused rather than mixed up with them.
#[test]
fn named_directories_are_packed_beside_the_context_by_number() {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), &[("Dockerfile", "FROM x\n")]);
    let shared = tempfile::tempdir().unwrap();
    write(
        shared.path(),
        &[
            ("data.txt", "d"),
            ("private.txt", "p"),
            ("key", "k"),
            (".dockerignore", "private.txt\n"),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let opts = PackOptions {
        named: vec![bakery_pack::NamedDir {
            dir: shared.path().to_path_buf(),
            exclude: vec!["key".into()],
        }],
        ..PackOptions::default()
    };
    let (path, _) = pack_to_dir(ctx.path(), "Dockerfile", out.path(), &opts).unwrap();
    let got = entries(&path);
    assert_eq!(got[".bakery-contexts/0/data.txt"], ('f', "d".into()));
    assert!(
        !got.contains_key(".bakery-contexts/0/private.txt"),
        "{got:?}"
    );
    assert!(!got.contains_key(".bakery-contexts/0/key"), "{got:?}");
    assert!(got.contains_key("Dockerfile"));

    write(ctx.path(), &[(".bakery-contexts/x", "mine")]);
    let e = pack_to_dir(ctx.path(), "Dockerfile", out.path(), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("where bakery puts named build contexts"), "{e}");
}
