//! Compose variable interpolation and the `.env` file beside it.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Location, PlanError};

/// Reads a `.env` file; a missing file is an empty one.
pub(super) fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, PlanError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HashMap::new())
        }
        Err(e) => return Err(dotenv_error(path, e)),
    };
    iter.map(|item| item.map_err(|e| dotenv_error(path, e)))
        .collect()
}

fn dotenv_error(path: &Path, e: dotenvy::Error) -> PlanError {
    let line = match &e {
        dotenvy::Error::LineParse(_, index) => *index + 1,
        _ => 1,
    };
    PlanError::invalid(Location::new(path, line, 1), format!("cannot parse: {e}"))
}

/// Compose variable interpolation on text: `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
/// `${VAR+alt}`, and `$$` for a literal `$`. Defaults may nest.
///
/// Hand-written: the shell-expansion crates do not implement compose's
/// `?`/`+` forms or its `$$` escape. Errors are `(line, column, message)`.
pub fn interpolate(
    text: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
) -> Result<String, (usize, usize, String)> {
    interpolate_at(text, vars, unset, None)
}

/// [`interpolate`], with the position of the outer reference when `text`
/// is a default nested in one (so unset variables are reported there).
fn interpolate_at(
    text: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    outer: Option<(usize, usize)>,
) -> Result<String, (usize, usize, String)> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'$' {
            let ch = text[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8().max(1);
            continue;
        }
        let (line, column) = outer.unwrap_or_else(|| line_col(text, i));
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = matching_brace(text, i + 1).ok_or((
                    line,
                    column,
                    "unterminated `${` in variable reference".to_string(),
                ))?;
                let inner = &text[i + 2..end];
                let expanded = expand_braced(inner, vars, unset, (line, column))
                    .map_err(|m| (line, column, m))?;
                out.push_str(&expanded);
                i = end + 1;
            }
            Some(&b) if b == b'_' || b.is_ascii_alphabetic() => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && (bytes[j] == b'_' || bytes[j].is_ascii_alphanumeric()) {
                    j += 1;
                }
                out.push_str(&lookup(&text[start..j], vars, unset, (line, column)));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn lookup(
    name: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    (line, column): (usize, usize),
) -> String {
    if let Some(v) = vars.get(name) {
        v.clone()
    } else {
        if !unset.iter().any(|u| u.0 == name) {
            unset.push((name.to_string(), line, column));
        }
        String::new()
    }
}

fn expand_braced(
    inner: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    at: (usize, usize),
) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("invalid variable reference `${{{inner}}}`"));
    }
    let value = vars.get(name);
    let nested = |s: &str, unset: &mut Vec<(String, usize, usize)>| {
        interpolate_at(s, vars, unset, Some(at)).map_err(|(_, _, m)| m)
    };
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = rest.strip_prefix('+') {
        ("+", a)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(format!("invalid variable reference `${{{inner}}}`"));
    };
    let empty = value.is_none_or(std::string::String::is_empty);
    Ok(match op {
        "" => lookup(name, vars, unset, at),
        ":-" if empty => nested(arg, unset)?,
        "-" if value.is_none() => nested(arg, unset)?,
        ":?" if empty => return Err(required(name, arg)),
        "?" if value.is_none() => return Err(required(name, arg)),
        ":+" => {
            if empty {
                String::new()
            } else {
                nested(arg, unset)?
            }
        }
        "+" => {
            if value.is_none() {
                String::new()
            } else {
                nested(arg, unset)?
            }
        }
        _ => value.cloned().unwrap_or_default(),
    })
}

fn required(name: &str, message: &str) -> String {
    if message.is_empty() {
        format!("required variable `{name}` is not set")
    } else {
        format!("required variable `{name}` is not set: {message}")
    }
}

/// Index of the `}` closing the `{` at `open`, counting nested braces.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in text.bytes().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'\n' => return None,
            _ => {}
        }
    }
    None
}

fn line_col(text: &str, index: usize) -> (usize, usize) {
    let before = &text[..index];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("REG", "r.io")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn interp(s: &str) -> Result<String, String> {
        interpolate(s, &vars(), &mut Vec::new()).map_err(|e| e.2)
    }

    #[test]
    fn interpolation_follows_compose() {
        let rows = [
            ("image: $REG/app:${TAG}", "image: r.io/app:1.2"),
            ("${MISSING:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${MISSING-d}", "d"),
            ("${TAG:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${MISSING:-${REG}/x}", "r.io/x"),
            ("cost: $$5 and $", "cost: $5 and $"),
            ("naïve ${TAG}", "naïve 1.2"),
        ];
        for (input, want) in rows {
            assert_eq!(interp(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn required_and_malformed_references_fail_with_position() {
        let e = interpolate(
            "a: 1\nb: ${NEED:?set NEED first}\n",
            &vars(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!((e.0, e.1), (2, 4));
        assert!(
            e.2.contains("NEED") && e.2.contains("set NEED first"),
            "{}",
            e.2
        );
        assert!(interp("${TAG").unwrap_err().contains("unterminated"));
        assert!(interp("${1bad}").is_err());
    }

    #[test]
    fn unset_variables_are_reported_once() {
        let mut unset = Vec::new();
        interpolate("$A ${A}\n  $B", &vars(), &mut unset).unwrap();
        let names: Vec<_> = unset.iter().map(|u| (u.0.as_str(), u.1, u.2)).collect();
        assert_eq!(names, [("A", 1, 1), ("B", 2, 3)]);
    }
}
