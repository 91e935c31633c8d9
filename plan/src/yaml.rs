//! Typed YAML parsing whose errors name file, line, column and a fix.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::de::DeserializeOwned;

use crate::error::{did_you_mean, Location, PlanError};

static UNKNOWN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"unknown (field|variant) `([^`]*)`, expected (.*)").unwrap());
static BACKTICKED: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"`([^`]*)`").unwrap());
static AT_LINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r" at line \d+ column \d+").unwrap());

/// Parses `text` (the contents of `file`) into `T`.
pub(crate) fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, PlanError> {
    if text.trim().is_empty() {
        return Err(PlanError::invalid(
            Location::new(file, 1, 1),
            "the file is empty",
        ));
    }
    if text.contains("<<") {
        // Merge keys (`<<: *defaults`) must be resolved before typed parsing.
        // Positions are lost on this path, so errors name the key path instead.
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| to_plan_error(file, text, &e))?;
        value
            .apply_merge()
            .map_err(|e| to_plan_error(file, text, &e))?;
        return serde_yaml_ng::from_value(value).map_err(|e| to_plan_error(file, text, &e));
    }
    serde_yaml_ng::from_str(text).map_err(|e| to_plan_error(file, text, &e))
}

/// Other names people write for the two arches, and what bakery calls them.
const ARCH_ALIASES: [(&str, &str); 5] = [
    ("x86_64", "amd64"),
    ("x86-64", "amd64"),
    ("x64", "amd64"),
    ("aarch64", "arm64"),
    ("arm64v8", "arm64"),
];

fn to_plan_error(file: &Path, text: &str, e: &serde_yaml_ng::Error) -> PlanError {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    let full = e.to_string();
    let message = AT_LINE.replace_all(&full, "").into_owned();
    let location = Location::new(file, line, column);
    let Some(caps) = UNKNOWN.captures(&message) else {
        // A tab where YAML wants indentation: the scanner's own words do
        // not say so.
        let tabbed = text
            .lines()
            .nth(line.saturating_sub(1))
            .is_some_and(|l| l.starts_with('\t') || l.trim_start_matches(' ').starts_with('\t'));
        if tabbed {
            return PlanError::invalid_with_hint(
                location,
                message,
                "tabs are not allowed for indentation in YAML; indent with spaces",
            );
        }
        return PlanError::invalid(location, message);
    };
    let given = &caps[2];
    let candidates: Vec<&str> = BACKTICKED
        .captures_iter(caps.get(3).map_or("", |m| m.as_str()))
        .map(|c| c.get(1).map_or("", |m| m.as_str()))
        .collect();
    let what = if &caps[1] == "field" { "key" } else { "value" };
    let (prefix, _) = message.split_at(caps.get(0).map_or(0, |m| m.start()));
    let context = prefix.trim_end_matches(": ").trim();
    let message = if context.is_empty() {
        format!("unknown {what} `{given}`")
    } else {
        format!("unknown {what} `{given}` in `{context}`")
    };
    let alias = ARCH_ALIASES
        .iter()
        .find(|(other, ours)| *other == given && candidates.contains(ours));
    let hint = match (alias, did_you_mean(given, candidates.iter().copied())) {
        (Some((_, ours)), _) => format!("did you mean `{ours}`? (OCI platforms call it {ours})"),
        (None, Some(best)) => format!("did you mean `{best}`?"),
        (None, None) => format!("expected one of: {}", candidates.join(", ")),
    };
    PlanError::invalid_with_hint(location, message, hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[test]
    fn tabs_and_arch_aliases_get_a_hint() {
        let d = err("kaniko:\n\tdestination: r/a:1\n");
        assert_eq!(d.location.line, 2);
        assert!(
            d.hint.as_deref().unwrap().contains("tabs are not allowed"),
            "{d:?}"
        );
        let d = err("arch: x86_64\n");
        assert_eq!(
            d.hint.as_deref(),
            Some("did you mean `amd64`? (OCI platforms call it amd64)")
        );
        let d = err("arch: aarch64\n");
        assert!(d.hint.as_deref().unwrap().contains("`arm64`"), "{d:?}");
    }

    /// This module reads serde's and serde_yaml_ng's own words (the
    /// `UNKNOWN` and `AT_LINE` patterns): an upgrade that changes them
    /// fails here, by name, rather than turning located errors with a
    /// suggestion into bare ones.
    #[test]
    fn the_third_party_words_this_module_reads_are_pinned() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Known {
            known: Option<u8>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Known,
        }
        let top = serde_yaml_ng::from_str::<Known>("other: 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(top, "unknown field `other`, expected `known`");
        let text = serde_yaml_ng::from_str::<Outer>("inner:\n  other: 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "inner: unknown field `other`, expected `known` at line 2 column 3"
        );
        assert!(UNKNOWN.is_match(&AT_LINE.replace_all(&text, "")));
    }

    fn err(text: &str) -> crate::error::Diagnostic {
        let e = parse::<Settings>(Path::new("c.yaml"), text).unwrap_err();
        e.diagnostic().expect("located").clone()
    }

    #[test]
    fn unknown_key_is_located_and_gets_a_suggestion() {
        let d = err("platform: ecs\nkaniko:\n  dockerfle: D\n");
        assert_eq!((d.location.line, d.location.column), (3, 3), "{d}");
        assert!(d.message.contains("unknown key `dockerfle`"), "{d}");
        assert_eq!(d.hint.as_deref(), Some("did you mean `dockerfile`?"));
    }

    #[test]
    fn unknown_variant_is_a_value_error() {
        let d = err("platform: ecss\n");
        assert!(d.message.contains("unknown value `ecss`"), "{d}");
        assert_eq!(d.hint.as_deref(), Some("did you mean `ecs`?"));
        assert_eq!(d.location.line, 1);
    }

    #[test]
    fn wrong_type_is_located() {
        let d = err("kaniko:\n  build-args: [a, b]\n");
        assert_eq!(d.location.line, 2, "{d}");
        assert!(d.message.contains("build-args"), "{d}");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(err("  \n").message.contains("empty"));
    }
}
