//! The images a Dockerfile builds on, as BuildKit and Kaniko read them.
//!
//! Only what decides which images are pulled is read: parser directives
//! (`# escape=`), line continuations, global `ARG`s (before the first
//! `FROM`) with their defaults, each stage's `FROM [--platform=…] image [AS
//! name]`, and `COPY --from=` / `RUN --mount=…,from=` references, so that
//! the stages a `--target` needs can be told from those it skips. `FROM`
//! lines may use global args and the platform args every builder defines
//! (`TARGETARCH`, `BUILDPLATFORM`, …), substituted as the Dockerfile
//! reference describes (`$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:+word}`).
//!
//! Used twice: by the client, to check before anything is built that every
//! base image has the platforms asked for; and by the agent, to know which
//! registries it pulls from (loopback ones are plain HTTP) and which base
//! to name when a built image turns out to be of another architecture.

use std::collections::{BTreeMap, BTreeSet};

/// What a stage is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: nothing is pulled.
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference, as written after substitution.
    Image(String),
}

/// One `FROM` and what its stage copies from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// 1-based line of the `FROM` instruction.
    pub line: usize,
    /// What the `FROM` names: `scratch`, an earlier stage, or an image.
    pub base: Base,
    /// The `--platform` flag, substituted, if the `FROM` has one.
    pub platform: Option<String>,
    /// The `AS` name, lowercased.
    pub name: Option<String>,
    /// Stages (by index) and images this stage copies from or mounts,
    /// with the line that names them.
    pub uses: Vec<(usize, Base)>,
    /// The line of the stage's first `RUN` step, if it has one: its
    /// programs execute on the build machine, for the stage's platform.
    pub runs: Option<usize>,
}

/// An image the build pulls, where it is named, and for which platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pull {
    /// The image reference, as written after substitution
    /// (not normalised: `alpine` stays `alpine`).
    pub image: String,
    /// 1-based line that names it.
    pub line: usize,
    /// `None`: the platform being built.
    pub platform: Option<String>,
}

/// Why a Dockerfile cannot be read for its stages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DockerfileError {
    /// 1-based line of the instruction that cannot be read.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// A Dockerfile's stages, with `args` (build args, and the platform args
/// the builder defines) substituted in `FROM` lines.
pub fn stages(text: &str, args: &BTreeMap<String, String>) -> Result<Vec<Stage>, DockerfileError> {
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (line, instruction, rest) in instructions(text) {
        match instruction.as_str() {
            "ARG" if stages.is_empty() => {
                for (name, default) in arg_declarations(&rest) {
                    let value = args.get(&name).cloned().or(default).unwrap_or_default();
                    global.insert(name, value);
                }
            }
            "FROM" => stages.push(from(line, &rest, &global, args, &stages)?),
            "COPY" | "ADD" | "RUN" => {
                if let Some(stage) = stages.last_mut() {
                    let named = from_flags(&rest)
                        .into_iter()
                        .map(|r| (line, Base::Image(r)));
                    stage.uses.extend(named);
                    if instruction == "RUN" && stage.runs.is_none() {
                        stage.runs = Some(line);
                    }
                }
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        return Err(DockerfileError {
            line: 1,
            message: "no FROM instruction".into(),
        });
    }
    resolve_uses(&mut stages);
    Ok(stages)
}

/// `COPY --from=x` and `--mount=…,from=x` name a stage when an earlier
/// stage has that name (or index), an image otherwise.
fn resolve_uses(stages: &mut [Stage]) {
    for i in 0..stages.len() {
        let uses = std::mem::take(&mut stages[i].uses);
        let resolved = uses
            .into_iter()
            .map(|(line, base)| {
                let Base::Image(name) = &base else {
                    return (line, base);
                };
                let lower = name.to_ascii_lowercase();
                let by_name = stages[..i]
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()));
                let by_index = name.parse::<usize>().ok().filter(|n| *n < i);
                match by_name.or(by_index) {
                    Some(s) => (line, Base::Stage(s)),
                    None if lower == "scratch" => (line, Base::Scratch),
                    None => (line, base),
                }
            })
            .collect();
        stages[i].uses = resolved;
    }
}

/// The images the build pulls to build `target` (the last stage without
/// one), following `FROM`, `COPY --from` and mounts through the stages it
/// needs: a stage nothing needs is skipped, as BuildKit and Kaniko's
/// `--skip-unused-stages` skip it. `None` when `target` names no stage.
pub fn pulls(stages: &[Stage], target: Option<&str>) -> Option<Vec<Pull>> {
    let mut pulls = BTreeSet::new();
    for i in needed(stages, target)? {
        let stage = &stages[i];
        if let Base::Image(image) = &stage.base {
            pulls.insert(Pull {
                image: image.clone(),
                line: stage.line,
                platform: stage.platform.clone(),
            });
        }
        for (line, used) in &stage.uses {
            if let Base::Image(image) = used {
                pulls.insert(Pull {
                    image: image.clone(),
                    line: *line,
                    platform: None,
                });
            }
        }
    }
    Some(pulls.into_iter().collect())
}

/// The stages building `target` (the last stage without one) needs, by
/// index. `None` when `target` names no stage.
pub fn needed(stages: &[Stage], target: Option<&str>) -> Option<BTreeSet<usize>> {
    let start = match target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))?,
        None => stages.len().checked_sub(1)?,
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        let stage = &stages[i];
        if let Base::Stage(s) = &stage.base {
            todo.push(*s);
        }
        todo.extend(stage.uses.iter().filter_map(|(_, b)| match b {
            Base::Stage(s) => Some(*s),
            _ => None,
        }));
    }
    Some(seen)
}

/// The image the final stage (or `target`) is built on, following stages:
/// what decides the built image's architecture. `None` for `scratch`.
pub fn root_base(stages: &[Stage], target: Option<&str>) -> Option<String> {
    let mut i = match target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_ascii_lowercase().as_str()))?,
        None => stages.len().checked_sub(1)?,
    };
    for _ in 0..stages.len() {
        match &stages[i].base {
            Base::Stage(s) => i = *s,
            Base::Image(image) => return Some(image.clone()),
            Base::Scratch => return None,
        }
    }
    None
}

/// The platform args every builder defines, for a build of `platform`
/// (`linux/arm64`) on a machine of `build_platform`.
pub fn platform_args(platform: &str, build_platform: &str) -> BTreeMap<String, String> {
    let split = |p: &str| {
        let mut parts = p.splitn(3, '/');
        (
            parts.next().unwrap_or("linux").to_string(),
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        )
    };
    let (os, arch, variant) = split(platform);
    let (build_os, build_arch, build_variant) = split(build_platform);
    BTreeMap::from([
        ("TARGETPLATFORM".to_string(), platform.to_string()),
        ("TARGETOS".to_string(), os),
        ("TARGETARCH".to_string(), arch),
        ("TARGETVARIANT".to_string(), variant),
        ("BUILDPLATFORM".to_string(), build_platform.to_string()),
        ("BUILDOS".to_string(), build_os),
        ("BUILDARCH".to_string(), build_arch),
        ("BUILDVARIANT".to_string(), build_variant),
    ])
}

/// Logical lines: `(line of the instruction, INSTRUCTION, the rest)`, with
/// continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(usize, String, String)> {
    let escape = escape_char(text);
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let is_comment = line.starts_with('#');
        if current.is_none() && (line.is_empty() || is_comment) {
            continue;
        }
        if current.is_some() && is_comment {
            continue; // comments inside a continuation are dropped
        }
        let (start, mut joined) = current.take().unwrap_or((n + 1, String::new()));
        let continues = line.ends_with(escape);
        joined.push_str(line.strip_suffix(escape).unwrap_or(line));
        if continues {
            joined.push(' ');
            current = Some((start, joined));
        } else {
            push_instruction(&mut out, start, &joined);
        }
    }
    if let Some((start, joined)) = current {
        push_instruction(&mut out, start, &joined);
    }
    out
}

fn push_instruction(out: &mut Vec<(usize, String, String)>, line: usize, text: &str) {
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    out.push((line, word.to_ascii_uppercase(), rest.trim().to_string()));
}

/// The `# escape=` parser directive, if the file starts with one.
fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        if let Some((key, value)) = directive.split_once('=') {
            if key.trim().eq_ignore_ascii_case("escape") {
                if let Some(c) = value.trim().chars().next() {
                    return c;
                }
            }
            continue; // another directive (syntax=…)
        }
        break;
    }
    '\\'
}

/// `ARG A=1 B="two" C` → `[(A, Some(1)), (B, Some(two)), (C, None)]`.
fn arg_declarations(rest: &str) -> Vec<(String, Option<String>)> {
    words(rest)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(unquote(v))),
            None => (w, None),
        })
        .collect()
}

fn from(
    line: usize,
    rest: &str,
    global: &BTreeMap<String, String>,
    args: &BTreeMap<String, String>,
    earlier: &[Stage],
) -> Result<Stage, DockerfileError> {
    // FROM sees the global args, and the platform args without a declaration.
    let mut vars = args
        .iter()
        .filter(|(k, _)| k.starts_with("TARGET") || k.starts_with("BUILD"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    vars.extend(global.iter().map(|(k, v)| (k.clone(), v.clone())));
    let words = words(rest);
    let mut platform = None;
    let mut positional = Vec::new();
    for w in &words {
        if let Some(p) = w.strip_prefix("--platform=") {
            platform = Some(substitute(p, &vars));
        } else if !w.starts_with("--") {
            positional.push(w.as_str());
        }
    }
    let bad = |message: String| DockerfileError { line, message };
    let (image, name) = match positional.as_slice() {
        [image] => (*image, None),
        [image, r#as, name] if r#as.eq_ignore_ascii_case("as") => {
            (*image, Some(name.to_ascii_lowercase()))
        }
        _ => return Err(bad(format!("cannot read `FROM {rest}`"))),
    };
    let image = substitute(image, &vars);
    if image.is_empty() {
        return Err(bad(format!(
            "`FROM {rest}` names no image once its variables are substituted; is a build arg missing?"
        )));
    }
    let lower = image.to_ascii_lowercase();
    let base = if lower == "scratch" {
        Base::Scratch
    } else if let Some(s) = earlier
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        Base::Stage(s)
    } else {
        Base::Image(image)
    };
    Ok(Stage {
        line,
        base,
        platform,
        name,
        uses: Vec::new(),
        runs: None,
    })
}

/// The values of `--from=` flags (COPY, ADD) and `from=` in `--mount=`.
fn from_flags(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in words(rest) {
        if !w.starts_with("--") {
            break; // flags come first
        }
        if let Some(v) = w.strip_prefix("--from=") {
            out.push(unquote(v));
        } else if let Some(mount) = w.strip_prefix("--mount=") {
            for part in mount.split(',') {
                if let Some(v) = part.strip_prefix("from=") {
                    out.push(unquote(v));
                }
            }
        }
    }
    out
}

/// Splits on whitespace, keeping quoted runs together.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                current.push(c);
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                current.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            (_, c) => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// Dockerfile variable substitution: `$VAR`, `${VAR}`, `${VAR:-word}`,
/// `${VAR:+word}` (and `-`/`+` without the colon), `\$` for a literal `$`.
/// An unset variable is empty, as in the builders.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let text = unquote(text);
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let Some(len) = chars[i + 2..].iter().position(|c| *c == '}') else {
                    out.extend(&chars[i..]);
                    break;
                };
                let inner: String = chars[i + 2..i + 2 + len].iter().collect();
                out.push_str(&braced(&inner, vars));
                i += len + 3;
            }
            '$' => {
                let name: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                if name.is_empty() {
                    out.push('$');
                    i += 1;
                } else {
                    out.push_str(vars.get(&name).map_or("", String::as_str));
                    i += 1 + name.chars().count();
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn braced(inner: &str, vars: &BTreeMap<String, String>) -> String {
    let end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(end);
    let value = vars.get(name).filter(|v| !v.is_empty());
    let set = vars.contains_key(name);
    let word = |w: &str| substitute(w, vars);
    if let Some(w) = rest.strip_prefix(":-") {
        value.cloned().unwrap_or_else(|| word(w))
    } else if let Some(w) = rest.strip_prefix(":+") {
        value.map(|_| word(w)).unwrap_or_default()
    } else if let Some(w) = rest.strip_prefix('-') {
        if set {
            vars[name].clone()
        } else {
            word(w)
        }
    } else if let Some(w) = rest.strip_prefix('+') {
        if set {
            word(w)
        } else {
            String::new()
        }
    } else {
        vars.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut a = platform_args("linux/arm64", "linux/arm64");
        a.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        a
    }

    fn images(
        text: &str,
        pairs: &[(&str, &str)],
        target: Option<&str>,
    ) -> Vec<(String, usize, Option<String>)> {
        let s = stages(text, &args(pairs)).unwrap();
        pulls(&s, target)
            .unwrap()
            .into_iter()
            .map(|p| (p.image, p.line, p.platform))
            .collect()
    }

    #[test]
    fn build_args_substitute_into_from() {
        let text = "ARG BASE=alpine\nARG TAG\nFROM ${BASE}:${TAG:-3.20}\nRUN true\n";
        assert_eq!(
            images(text, &[], None),
            [("alpine:3.20".to_string(), 3, None)]
        );
        assert_eq!(
            images(text, &[("BASE", "r.io/base"), ("TAG", "1")], None),
            [("r.io/base:1".to_string(), 3, None)]
        );
        // The platform args need no declaration.
        assert_eq!(
            images("FROM r.io/tools-$TARGETARCH\n", &[], None),
            [("r.io/tools-arm64".to_string(), 1, None)]
        );
    }

    #[test]
    fn stages_scratch_and_targets() {
        let text = "\
# syntax=docker/dockerfile:1
FROM --platform=$BUILDPLATFORM golang:1.23 AS Build
RUN go build
FROM alpine:3 AS runtime
COPY --from=build /out /app
COPY --from=busybox:1 /bin/busybox /bin/
FROM scratch AS minimal
COPY --from=build /out /app
FROM debian:12 AS unused
";
        // The last stage is `unused`: only debian.
        assert_eq!(
            images(text, &[], None),
            [("debian:12".to_string(), 9, None)]
        );
        assert_eq!(
            images(text, &[], Some("runtime")),
            [
                ("alpine:3".to_string(), 4, None),
                ("busybox:1".to_string(), 6, None),
                (
                    "golang:1.23".to_string(),
                    2,
                    Some("linux/arm64".to_string())
                ),
            ]
        );
        assert_eq!(
            images(text, &[], Some("minimal")),
            [(
                "golang:1.23".to_string(),
                2,
                Some("linux/arm64".to_string())
            )]
        );
        let s = stages(text, &args(&[])).unwrap();
        assert_eq!(root_base(&s, Some("runtime")).as_deref(), Some("alpine:3"));
        assert_eq!(root_base(&s, Some("minimal")), None);
        assert!(pulls(&s, Some("nope")).is_none());
    }

    #[test]
    fn continuations_escape_directive_mounts_and_errors() {
        let text = "FROM \\\n  alpine \\\n  AS base\nRUN --mount=type=cache,from=r.io/cache:1,target=/c \\\n  # a comment\n  true\n";
        assert_eq!(
            images(text, &[], None),
            [
                ("alpine".to_string(), 1, None),
                ("r.io/cache:1".to_string(), 4, None)
            ]
        );
        let windows = "# escape=`\nFROM `\n  alpine\n";
        assert_eq!(
            images(windows, &[], None),
            [("alpine".to_string(), 2, None)]
        );
        let e = stages("ARG BASE\nFROM $BASE\n", &args(&[])).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("build arg"), "{e}");
        assert!(stages("RUN true\n", &args(&[])).is_err());
    }
}
