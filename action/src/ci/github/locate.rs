//! Which Dockerfile line a builder's failure is about, for the annotation
//! GitHub shows at that line.
//!
//! Builders name the failing instruction in different ways: BuildKit and
//! Kaniko's parser give a line number; buildah quotes the instruction in
//! its error (`building at STEP "RUN echo "x" && exit 3": …`, quotes
//! unescaped); Kaniko's run errors name nothing, but its log says
//! `INFO[0003] RUN …` just before. Instructions are compared with every
//! blank removed, after joining `\` continuations, so a multi-line or
//! exec-form `RUN` matches however the builder spaced it.

use std::sync::LazyLock;

use regex::Regex;

static LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:dockerfile(?: parse error)?[: ]+line |Dockerfile:)(\d+)")
        .expect("valid regex")
});
/// An instruction as builders log it: Kaniko's `INFO[0003] RUN …`,
/// buildah's `STEP 2/3: RUN …`.
static LOGGED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:INFO\[[^\]]*\]\s+|STEP \d+/\d+: )((?i:RUN|COPY|ADD|WORKDIR|USER|ENV|ARG|FROM)\s.*)$",
    )
    .expect("valid regex")
});

/// The 1-based line of the instruction `error` (or, failing that, the
/// last instruction the log `tail` shows) is about, in `dockerfile`.
pub fn locate(dockerfile: &str, error: &str, tail: &[String]) -> Option<usize> {
    if let Some(n) = LINE.captures(error).and_then(|c| c[1].parse().ok()) {
        return Some(n);
    }
    let instructions = instructions(dockerfile);
    let find = |text: &str| {
        let want = key(text);
        instructions
            .iter()
            .find(|(_, k)| *k == want)
            .map(|(l, _)| *l)
    };
    if let Some(line) = quoted_steps(error).into_iter().find_map(|s| find(&s)) {
        return Some(line);
    }
    tail.iter()
        .rev()
        .filter_map(|l| LOGGED.captures(l.trim_end()))
        .find_map(|c| find(&c[1]))
}

/// The Dockerfile and line an arch of a planned service failed at, when
/// [`locate`] finds it: for the annotation and the summary alike.
pub fn failed_line(
    plan: &bakery_plan::Plan,
    service: &str,
    arch: bakery_protocol::Arch,
    error: &str,
    tail: &[String],
) -> Option<(std::path::PathBuf, usize)> {
    let dockerfile = plan.build(service, arch)?.dockerfile_path();
    let text = std::fs::read_to_string(&dockerfile).ok()?;
    let line = locate(&text, error, tail)?;
    Some((dockerfile, line))
}

/// Whether a log line is a builder announcing an instruction.
pub fn is_instruction(line: &str) -> bool {
    // Both of LOGGED's prefixes, looked for first: the regex, anchored at
    // the end, scans every line backwards, and most lines are neither
    // (it was a tenth of `bakery logs`' instructions).
    (line.contains("STEP ") || line.contains("INFO[")) && LOGGED.is_match(line.trim_end())
}

/// Every way of reading buildah's `STEP "…"` (the instruction may hold
/// quotes itself): each prefix up to a later `"`, shortest first.
fn quoted_steps(error: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in error.match_indices("STEP \"") {
        let rest = &error[at + "STEP \"".len()..];
        for (end, _) in rest.match_indices('"') {
            out.push(rest[..end].replace("\\\"", "\""));
        }
    }
    out
}

/// Each instruction's first line and its comparison key, continuations
/// joined.
fn instructions(dockerfile: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in dockerfile.lines().enumerate() {
        let trimmed = line.trim();
        if open.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if open.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut text) = open.take().unwrap_or((i + 1, String::new()));
        if let Some(part) = trimmed.strip_suffix('\\') {
            text.push_str(part);
            open = Some((start, text));
        } else {
            text.push_str(trimmed);
            out.push((start, key(&text)));
        }
    }
    if let Some((start, text)) = open {
        out.push((start, key(&text)));
    }
    out
}

/// The text with every blank removed and quotes unescaped.
fn key(text: &str) -> String {
    text.replace("\\\"", "\"")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = "FROM busybox\n\n# build\nRUN echo \"x\" && exit 3\nRUN apt-get update && \\\n    apt-get install -y \\\n      curl\nRUN [\"sh\", \"-c\", \"exit 4\"]\nCOPY  no-such-file.txt /\n";

    #[test]
    fn line_numbers_win() {
        assert_eq!(
            locate(
                DOCKERFILE,
                "Dockerfile parse error line 4: unknown instruction",
                &[]
            ),
            Some(4)
        );
        assert_eq!(locate(DOCKERFILE, "Dockerfile:2 something", &[]), Some(2));
    }

    #[test]
    fn buildah_steps_with_quotes_continuations_and_exec_form() {
        let quoted =
            r#"building at STEP "RUN echo "x" && exit 3": while running runtime: exit status 3"#;
        assert_eq!(locate(DOCKERFILE, quoted, &[]), Some(4));
        let joined = r#"building at STEP "RUN apt-get update &&     apt-get install -y       curl": exit status 100"#;
        assert_eq!(locate(DOCKERFILE, joined, &[]), Some(5));
        let exec = r#"building at STEP "RUN ["sh","-c","exit 4"]": exit status 4"#;
        assert_eq!(locate(DOCKERFILE, exec, &[]), Some(8));
        let copy = r#"error building at STEP "COPY no-such-file.txt /": checking on sources"#;
        assert_eq!(locate(DOCKERFILE, copy, &[]), Some(9));
        assert_eq!(locate(DOCKERFILE, "no hint at all", &[]), None);
    }

    #[test]
    fn kaniko_errors_are_placed_by_the_last_instruction_it_logged() {
        let tail = [
            "INFO[0001] RUN echo \"x\" && exit 3".to_string(),
            "INFO[0001] Running: [/bin/sh -c echo \"x\" && exit 3]".to_string(),
            "x".to_string(),
        ];
        let error = "error building image: error building stage: failed to execute command: waiting for process to exit: exit status 3";
        assert_eq!(locate(DOCKERFILE, error, &tail), Some(4));
        let buildah_log = ["STEP 3/4: RUN [\"sh\", \"-c\", \"exit 4\"]".to_string()];
        assert_eq!(locate(DOCKERFILE, "exit status 4", &buildah_log), Some(8));
    }
}
