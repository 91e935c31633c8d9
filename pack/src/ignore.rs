//! `.dockerignore` with Docker's own semantics.
//!
//! Patterns are Go's `filepath.Match` plus `**`, cleaned like `filepath.Clean`
//! with the leading `/` dropped, anchored at the context root (unlike
//! `.gitignore`); a pattern also excludes everything below a directory it
//! matches; the last matching line wins, so `!` lines re-include.
//!
//! Hand-written, because no maintained crate implements these rules (the
//! `ignore` crate is gitignore, which differs in anchoring and `!`): this
//! follows moby's patternmatcher, which also compiles each pattern to a regex.

use std::path::{Path, PathBuf};

use regex::Regex;

/// Why a `.dockerignore` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct IgnoreError {
    /// The `.dockerignore` file the bad line is in.
    pub file: PathBuf,
    /// 1-based line of the pattern that does not compile.
    pub line: usize,
    /// What is wrong with the pattern.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    exception: bool,
    /// 1-based line in its file, and the pattern as written: to say which
    /// line left a file out.
    line: usize,
    pattern: String,
}

/// The rules of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Parses `.dockerignore` text; `file` only names errors.
    pub fn parse(text: &str, file: &Path) -> Result<IgnoreRules, IgnoreError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| IgnoreError {
                file: file.to_path_buf(),
                line: i + 1,
                message,
            };
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(err(
                        "illegal exclusion pattern: `!` needs a pattern after it".into(),
                    ));
                }
            }
            let cleaned = clean(pattern);
            let cleaned = match cleaned.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => rest.to_string(),
                _ => cleaned,
            };
            let regex =
                compile(&cleaned).map_err(|m| err(format!("bad pattern `{pattern}`: {m}")))?;
            rules.push(Rule {
                regex,
                exception,
                line: i + 1,
                pattern: raw.trim().to_string(),
            });
        }
        Ok(IgnoreRules { rules })
    }

    /// Reads the rules that apply to a build: `<Dockerfile>.dockerignore`
    /// beside the Dockerfile wins over the context's `.dockerignore`, as in
    /// BuildKit. Returns the rules and the file they came from.
    pub fn for_build(
        context: &Path,
        dockerfile: &str,
    ) -> Result<(IgnoreRules, Option<PathBuf>), IgnoreError> {
        let specific = context.join(format!("{dockerfile}.dockerignore"));
        Self::first_of([specific, context.join(".dockerignore")])
    }

    /// The rules of the first of `paths` that exists; none when none does.
    fn first_of(paths: [PathBuf; 2]) -> Result<(IgnoreRules, Option<PathBuf>), IgnoreError> {
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok((IgnoreRules::parse(&text, &path)?, Some(path))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(IgnoreError {
                        file: path,
                        line: 0,
                        message: format!("cannot read: {e}"),
                    })
                }
            }
        }
        Ok((IgnoreRules::default(), None))
    }

    /// The rules for a Dockerfile outside the context: `<Dockerfile>.dockerignore`
    /// beside it, as buildx reads it, then the context's `.dockerignore`.
    pub fn for_outside(
        context: &Path,
        dockerfile: &Path,
    ) -> Result<(IgnoreRules, Option<PathBuf>), IgnoreError> {
        let mut specific = dockerfile.as_os_str().to_owned();
        specific.push(".dockerignore");
        Self::first_of([PathBuf::from(specific), context.join(".dockerignore")])
    }

    /// Whether there are no rules (no `.dockerignore`,
    /// or one without patterns): nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule re-includes (`!`). Without one, an excluded directory
    /// can be skipped whole instead of walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        self.excluded_by(path).is_some()
    }

    /// The line (1-based) and pattern that leave `path` out, if it is
    /// excluded: for the error of a COPY that finds nothing.
    pub fn excluded_by(&self, path: &str) -> Option<(usize, &str)> {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => {
                let parent = &path[..i];
                (0..parent.len())
                    .filter(|&j| parent.as_bytes()[j] == b'/')
                    .map(|j| &parent[..j])
                    .chain(std::iter::once(parent))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut by: Option<&Rule> = None;
        for rule in &self.rules {
            // An exclusion only matters while included, an exception only while excluded.
            if rule.exception != by.is_some() {
                continue;
            }
            let hit = rule.regex.is_match(path) || parents.iter().any(|p| rule.regex.is_match(p));
            if hit {
                by = (!rule.exception).then_some(rule);
            }
        }
        by.map(|r| (r.line, r.pattern.as_str()))
    }
}

/// Go's `filepath.Clean` on a `/`-separated pattern.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Translates a pattern into an anchored regex, as moby's patternmatcher does.
fn compile(pattern: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if in_class {
            match ch {
                ']' => {
                    in_class = false;
                    re.push(']');
                }
                '\\' => {
                    if let Some(&next) = chars.get(i) {
                        i += 1;
                        re.push_str(&regex::escape(&next.to_string()));
                    }
                }
                // Set operators and nesting in Rust's regex classes; literal in Go's.
                '[' | '&' | '~' => {
                    re.push('\\');
                    re.push(ch);
                }
                _ => re.push(ch),
            }
            continue;
        }
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    re.push_str(&regex::escape(&next.to_string()));
                }
                None => re.push_str(r"\\"),
            },
            '[' => {
                in_class = true;
                re.push('[');
                if chars.get(i) == Some(&'^') {
                    i += 1;
                    re.push('^');
                }
                if chars.get(i) == Some(&']') {
                    return Err("empty character class".into());
                }
            }
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    if in_class {
        return Err("unterminated character class `[`".into());
    }
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text, Path::new(".dockerignore")).unwrap()
    }

    /// The example .dockerignore of Docker's documentation, and what it says
    /// each line does.
    #[test]
    fn docker_documentation_example() {
        let r = rules("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(r.excludes("somedir/temporary.txt"));
        assert!(r.excludes("somedir/temp"));
        assert!(r.excludes("somedir/subdir/temporary.txt"));
        assert!(r.excludes("tempa"));
        assert!(r.excludes("tempb"));
        assert!(!r.excludes("temp"), "temp? needs exactly one more char");
        assert!(
            !r.excludes("temporary.txt"),
            "*/temp* does not match at the root"
        );
        assert!(!r.excludes("a/b/c/temp"), "*/*/temp* is two levels only");
    }

    #[test]
    fn double_star_matches_any_number_of_directories() {
        let r = rules("**/*.go\n");
        assert!(r.excludes("main.go"));
        assert!(r.excludes("a/b/c/x.go"));
        assert!(!r.excludes("a/b/c/x.rs"));
        let r = rules("docs/**\n");
        assert!(r.excludes("docs/a/b"));
        assert!(!r.excludes("docsx"));
        let r = rules("a/**/b\n");
        assert!(r.excludes("a/b"));
        assert!(r.excludes("a/x/y/b"));
    }

    /// Docker's documented exception example: `*.md`, `!README*.md`,
    /// `README-secret.md` keeps every README except the secret one.
    #[test]
    fn exceptions_and_last_match_wins() {
        let r = rules("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(r.excludes("CHANGES.md"));
        assert!(!r.excludes("README.md"));
        assert!(r.excludes("README-secret.md"));
        let r = rules("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!r.excludes("README-secret.md"), "a later ! re-includes");
    }

    #[test]
    fn directory_patterns_exclude_their_contents() {
        let r = rules("node_modules\n/build/\n./dist\n");
        assert!(r.excludes("node_modules"));
        assert!(r.excludes("node_modules/x/y.js"));
        assert!(r.excludes("build/out.bin"));
        assert!(r.excludes("dist/app.js"));
        assert!(
            !r.excludes("src/node_modules"),
            "anchored at the root, unlike .gitignore"
        );
        let r = rules("build\n!build/keep.txt\n");
        assert!(r.excludes("build/drop.txt"));
        assert!(!r.excludes("build/keep.txt"));
        assert!(r.has_exceptions());
    }

    #[test]
    fn character_classes_and_escapes() {
        let r = rules("file[0-9].txt\n[^a]bc\nliteral\\*\n");
        assert!(r.excludes("file7.txt"));
        assert!(!r.excludes("filex.txt"));
        assert!(r.excludes("xbc"));
        assert!(!r.excludes("abc"));
        assert!(r.excludes("literal*"));
        assert!(!r.excludes("literally"));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        let r = rules("a+b.(c)|{d}$\n");
        assert!(r.excludes("a+b.(c)|{d}$"));
        assert!(!r.excludes("aab.(c)|{d}$"));
    }

    #[test]
    fn the_excluding_line_is_named() {
        let rules = IgnoreRules::parse(
            "# c\n*.log\n!keep.log\nbuild/\n",
            Path::new(".dockerignore"),
        )
        .unwrap();
        assert_eq!(rules.excluded_by("a.log"), Some((2, "*.log")));
        assert_eq!(rules.excluded_by("keep.log"), None);
        assert_eq!(rules.excluded_by("build/out/x"), Some((4, "build/")));
        assert_eq!(rules.excluded_by("src/main.rs"), None);
    }

    #[test]
    fn invalid_lines_are_located() {
        let e = IgnoreRules::parse("ok\n!\n", Path::new("x/.dockerignore")).unwrap_err();
        assert_eq!(e.line, 2);
        let e = IgnoreRules::parse("[abc\n", Path::new(".dockerignore")).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("a/./b/", "a/b"),
            ("/a/../b", "/b"),
            ("../x", "../x"),
            ("./", "."),
            ("a//b", "a/b"),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }
}
