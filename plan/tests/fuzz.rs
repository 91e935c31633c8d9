//! Property tests: the plan parser takes any text without panicking.
//! Inputs are the corpus files (core/tests/corpus) mutated at random.
//! `PROPTEST_CASES` sets how many cases run (CI runs the default 256).

use std::path::Path;

use bakery_plan::{Plan, PlanOptions};
use bakery_protocol::Arch;
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// A corpus file with some bytes replaced, inserted or removed.
fn mutated() -> impl Strategy<Value = String> {
    let seeds = corpus();
    (
        0..seeds.len(),
        prop::collection::vec((any::<u16>(), 0u8..3, any::<char>()), 0..12),
    )
        .prop_map(move |(i, edits)| {
            let mut chars: Vec<char> = seeds[i].chars().collect();
            for (at, op, c) in edits {
                let at = if chars.is_empty() {
                    0
                } else {
                    at as usize % chars.len()
                };
                match op {
                    0 if !chars.is_empty() => chars[at] = c,
                    1 => chars.insert(at, c),
                    _ if !chars.is_empty() => {
                        chars.remove(at);
                    }
                    _ => {}
                }
            }
            chars.into_iter().collect()
        })
}

fn resolve(file: &str, text: &str) -> Result<Plan, bakery_plan::PlanError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(dir.path().join("Dockerfile.arm64"), "FROM scratch\n").unwrap();
    std::fs::write(dir.path().join(file), text).unwrap();
    let mut opts = PlanOptions {
        env: Default::default(),
        host_arch: Arch::Amd64,
        ..PlanOptions::new(dir.path())
    };
    if file == "compose.yaml" {
        opts.compose = Some(dir.path().join(file));
    }
    Plan::resolve(&opts)
}

proptest! {
    #[test]
    fn config_parsing_never_panics(text in mutated()) {
        // Errors are fine; a panic or a located error without a line is not.
        if let Err(e) = resolve("config.yaml", &text) {
            if let Some(d) = e.diagnostic() {
                prop_assert!(d.location.line >= 1 && d.location.column >= 1);
            }
        }
    }

    #[test]
    fn compose_parsing_never_panics(text in mutated()) {
        let _ = resolve("compose.yaml", &text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = resolve("config.yaml", &text);
        let _ = resolve("compose.yaml", &text);
    }
}

#[test]
fn the_corpus_itself_resolves() {
    for (i, text) in corpus().iter().enumerate() {
        let file = if text.contains("services:") {
            "compose.yaml"
        } else {
            "config.yaml"
        };
        let result = resolve(file, text);
        assert!(
            result.is_ok(),
            "corpus file {i}: {:?}",
            result.err().map(|e| e.to_string())
        );
    }
}
