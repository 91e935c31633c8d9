//! `.env.example` lists every environment variable bakery reads, each with a
//! comment: the variables the code reads (found in the sources), the
//! controller's configuration (its `Config` fields, read by envy), and those
//! the README's tables document.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_var_name(s: &str) -> bool {
    s.len() > 2
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Names read by the product's code (tests and benchmarks excluded):
/// `var("X")`-style reads, clap's `env = "X"`, the agent's `agent_env`
/// constants, and the controller's `Config` fields.
fn read_by_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in [
        "protocol",
        "client",
        "plan",
        "pack",
        "action",
        "controller",
        "agent",
        "store",
    ] {
        rust_sources(&root().join(krate).join("src"), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for opener in [
            "var(\"",
            "var_os(\"",
            "get(\"",
            "try_from_env(\"",
            "env = \"",
            "&str = \"",
        ] {
            for rest in text.split(opener).skip(1) {
                let name = rest.split('"').next().unwrap();
                // PATH is the operating system's, read as every program
                // reads it (to find the agent executable), not a setting.
                let ours = name != "PATH";
                if ours
                    && is_var_name(name)
                    && (opener != "&str = \"" || name.starts_with("BAKERY_"))
                {
                    names.insert(name.to_string());
                }
            }
        }
    }
    let config = std::fs::read_to_string(root().join("controller/src/config.rs")).unwrap();
    let body = config
        .split("pub struct Config {")
        .nth(1)
        .unwrap()
        .split("\n}")
        .next()
        .unwrap();
    for line in body.lines() {
        if let Some(field) = line.trim().strip_prefix("pub ") {
            let field = field.split(':').next().unwrap();
            names.insert(field.to_ascii_uppercase());
        }
    }
    names
}

/// First cells of the rows of tables headed `| variable |` in the README
/// and every page of docs/ (the environment variable tables; `make`
/// variables have their own header).
fn in_readme() -> BTreeSet<String> {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            pages.push(entry.path());
        }
    }
    let readme: String = pages
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap() + "\n")
        .collect();
    let mut names = BTreeSet::new();
    let mut in_variable_table = false;
    for line in readme.lines() {
        if !line.starts_with('|') {
            in_variable_table = false;
            continue;
        }
        if line.starts_with("| variable |") {
            in_variable_table = true;
        }
        let Some(cell) = line.strip_prefix("| `").filter(|_| in_variable_table) else {
            continue;
        };
        let cell = cell.split(" |").next().unwrap();
        for part in cell.split(',') {
            let name = part.trim().trim_matches('`');
            if is_var_name(name) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// `NAME=` and `# NAME=` lines, each with the line before it.
fn in_env_example() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut vars = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let bare = line.trim_start_matches('#').trim();
        let Some((name, _)) = bare.split_once('=') else {
            continue;
        };
        if is_var_name(name) {
            let before = if i > 0 { lines[i - 1] } else { "" };
            vars.push((name.to_string(), before.to_string()));
        }
    }
    vars
}

#[test]
fn env_example_covers_every_variable_the_code_reads_and_the_readme_names() {
    let listed: BTreeSet<String> = in_env_example().into_iter().map(|(n, _)| n).collect();
    let code = read_by_code();
    // Sanity: the scan finds what it should, or the test proves nothing.
    for known in [
        "S3_BUCKET",
        "BAKERY_TASK_TOKEN",
        "BAKERY_COMPOSE",
        "ECS_CLUSTER",
        "BAKERY_LOG",
    ] {
        assert!(code.contains(known), "the source scan missed {known}");
    }
    let missing: Vec<_> = code.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "read by the code, missing from .env.example: {missing:?}"
    );
    let undocumented: Vec<_> = in_readme()
        .into_iter()
        .filter(|n| !listed.contains(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "in the README, missing from .env.example: {undocumented:?}"
    );
    let stale: Vec<_> = listed.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "in .env.example, read by nothing: {stale:?}"
    );
}

#[test]
fn every_variable_in_env_example_has_a_comment() {
    for (name, before) in in_env_example() {
        let comment = before.trim_start_matches('#').trim();
        let is_comment = before.starts_with('#')
            && !comment.is_empty()
            && !comment.split_once('=').is_some_and(|(n, _)| is_var_name(n));
        // A group of CI-provided names shares one comment line.
        let in_group = before.starts_with("# ")
            && comment
                .split_once('=')
                .is_some_and(|(n, v)| is_var_name(n) && (v.is_empty() || v == "true"));
        assert!(
            is_comment || in_group,
            "{name} has no comment above it (line before: {before:?})"
        );
    }
}
