//! The workspace's own rules for a reader, checked rather than promised:
//! every crate's `lib.rs` map names each of its modules, no source file is
//! over 600 lines and no function over 80 (outside tests), as
//! docs/development.md says, and docs/testing.md lists every test file.
//! (In `bakery-protocol` because every crate depends on it: it is the
//! workspace's root, not because it is about the protocol.)

use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const FILE_LINES: usize = 600;
/// Longest function, in lines (signature to closing brace).
const FUNCTION_LINES: usize = 80;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under each crate's `src`, relative to the workspace.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = workspace();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&root).unwrap().flatten() {
        let src = krate.path().join("src");
        if krate.path().join("Cargo.toml").exists() && src.is_dir() {
            walk(&src, &mut files);
        }
    }
    let mut files: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

/// Test code: a `tests.rs` module, or everything after `#[cfg(test)] mod`.
fn is_test_file(file: &str) -> bool {
    file.ends_with("/tests.rs") || file.contains("/tests/") || file.ends_with("_tests.rs")
}

fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// `(name, first line, length)` of each function with a body, as rustfmt
/// lays them out (the body closes at the signature's indentation).
fn functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = &line[..line.len() - line.trim_start().len()];
        let rest = line.trim_start();
        let signature = [
            "pub ",
            "pub(crate) ",
            "pub(super) ",
            "async ",
            "const ",
            "unsafe ",
        ]
        .iter()
        .fold(rest, |r, p| r.strip_prefix(p).unwrap_or(r));
        let signature = signature.strip_prefix("async ").unwrap_or(signature);
        let Some(name) = signature.strip_prefix("fn ") else {
            i += 1;
            continue;
        };
        let name: String = name
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let mut open = i;
        while open < lines.len() && !lines[open].trim_end().ends_with('{') {
            if lines[open].trim_end().ends_with(';') {
                break;
            }
            open += 1;
        }
        if open >= lines.len() || !lines[open].trim_end().ends_with('{') {
            i = open + 1;
            continue;
        }
        let close = (open + 1..lines.len())
            .find(|&k| lines[k] == format!("{indent}}}"))
            .unwrap_or(lines.len() - 1);
        out.push((name, i + 1, close - i + 1));
        i = close + 1;
    }
    out
}

#[test]
fn every_lib_rs_map_names_each_module() {
    let mut missing = Vec::new();
    for file in sources().iter().filter(|f| f.ends_with("src/lib.rs")) {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        let doc: String = text
            .lines()
            .filter(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for line in text.lines().filter(|l| !l.starts_with("//")) {
            let declared = ["pub mod ", "pub(crate) mod ", "mod "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
                .and_then(|r| r.strip_suffix(';'));
            if let Some(module) = declared {
                if !doc.contains(&format!("`{module}`")) {
                    missing.push(format!("{file}: {module}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules the crate's map (the `//!` comment of lib.rs) does not name: {missing:?}"
    );
}

#[test]
fn files_and_functions_stay_short_as_the_docs_say() {
    let mut long_files = Vec::new();
    let mut long_functions = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(workspace().join(&file)).unwrap();
        if is_test_file(&file) {
            continue;
        }
        if text.lines().count() > FILE_LINES {
            long_files.push(format!("{file}: {} lines", text.lines().count()));
        }
        for (name, line, length) in functions(&code_lines(&text)) {
            if length > FUNCTION_LINES {
                long_functions.push(format!("{file}:{line}: fn {name}, {length} lines"));
            }
        }
    }
    assert!(
        long_files.is_empty() && long_functions.is_empty(),
        "over {FILE_LINES} lines: {long_files:?}; functions over {FUNCTION_LINES} lines (split them into named steps): {long_functions:?}"
    );
    let development = std::fs::read_to_string(workspace().join("docs/development.md")).unwrap();
    let figure = format!(
        "| files over {FILE_LINES} lines / functions over {FUNCTION_LINES} lines (outside tests) | 7 / 18 | 0 / 0 |"
    );
    assert!(
        development.contains(&figure),
        "docs/development.md should say: {figure}"
    );
}

#[test]
fn every_test_file_is_in_the_testing_map() {
    let map = std::fs::read_to_string(workspace().join("docs/testing.md")).unwrap();
    let mut missing = Vec::new();
    for krate in std::fs::read_dir(workspace()).unwrap().flatten() {
        let Ok(tests) = std::fs::read_dir(krate.path().join("tests")) else {
            continue;
        };
        for test in tests.flatten() {
            let path = test.path();
            if path.extension().is_some_and(|e| e == "rs") {
                let file = path
                    .strip_prefix(workspace())
                    .unwrap()
                    .display()
                    .to_string();
                if !map.contains(&format!("[`{file}`]")) {
                    missing.push(file);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "test files docs/testing.md does not list: {missing:?}"
    );
}

#[test]
fn the_function_finder_measures_from_signature_to_closing_brace() {
    let text = "fn a() {\n    x();\n}\n\n    pub(crate) async fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\nfn c();\n";
    let found = functions(&text.lines().collect::<Vec<_>>());
    assert_eq!(found, [("a".to_string(), 1, 3), ("b".to_string(), 5, 5)]);
}
