//! Property tests for the context extractor: any archive, however hostile,
//! either unpacks or is refused, never panics, and never writes outside the
//! work dir. `PROPTEST_CASES` sets how many cases run.

use std::path::Path;

use bakery_agent::extract::{extract, extract_compressed, Limits};
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "a",
    "b",
    "a/b",
    "..",
    "../x",
    "a/../../x",
    "/etc/x",
    ".",
    "./c",
    "a/./d",
    "sub/deep/file",
    "link",
    "link/inside",
];
const TARGETS: &[&str] = &[
    "a",
    "..",
    "../..",
    "/",
    "/etc/passwd",
    "a/b",
    "link",
    "sub",
    "../outside",
];

fn kind() -> impl Strategy<Value = tar::EntryType> {
    prop::sample::select(vec![
        tar::EntryType::Regular,
        tar::EntryType::Directory,
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Fifo,
    ])
}

/// A tar built from raw headers, so paths a tar writer would refuse get in.
fn archive() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop::sample::select(NAMES),
            kind(),
            prop::sample::select(TARGETS),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        0..12,
    )
    .prop_map(|entries| {
        let mut out = Vec::new();
        for (name, kind, target, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            let data = if kind.is_file() { data } else { Vec::new() };
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name(target).unwrap();
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&data);
            out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    })
}

/// Everything under `root` except `work/…`: must stay empty.
fn outside(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "work")
        .collect()
}

proptest! {
    #[test]
    fn hostile_archives_never_escape(bytes in archive()) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("work");
        std::fs::create_dir(&dest).unwrap();
        let _ = extract(&bytes[..], &dest, Limits { max_bytes: 1 << 20, max_entries: 100, declared: false });
        prop_assert!(outside(root.path()).is_empty(), "wrote outside: {:?}", outside(root.path()));
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), zstd in any::<bool>()) {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("work");
        std::fs::create_dir(&dest).unwrap();
        let codec = if zstd { bakery_protocol::Codec::Zstd } else { bakery_protocol::Codec::Gzip };
        let _ = extract_compressed(&bytes[..], codec, &dest, Limits::default());
        let _ = extract(&bytes[..], &dest, Limits::default());
        prop_assert!(outside(root.path()).is_empty());
    }
}
