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
            serde_yaml_ng::from_str(text).map_err(|e| to_plan_error(file, &e))?;
        value.apply_merge().map_err(|e| to_plan_error(file, &e))?;
        return serde_yaml_ng::from_value(value).map_err(|e| to_plan_error(file, &e));
    }
    serde_yaml_ng::from_str(text).map_err(|e| to_plan_error(file, &e))
}

fn to_plan_error(file: &Path, e: &serde_yaml_ng::Error) -> PlanError {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    let full = e.to_string();
    let message = AT_LINE.replace_all(&full, "").into_owned();
    let location = Location::new(file, line, column);
    let Some(caps) = UNKNOWN.captures(&message) else {
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
    let hint = match did_you_mean(given, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("expected one of: {}", candidates.join(", ")),
    };
    PlanError::invalid_with_hint(location, message, hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

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
