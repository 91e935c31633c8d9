//! `OIDC_ALLOW`: which CI jobs may build. Rules are separated by `;`; a
//! rule is `claim=pattern` conditions separated by `,`, all of which must
//! match; `*` in a pattern matches any run of characters.
//!
//! The parser fails closed: an empty rule (a stray `;` or `,`, or a
//! template whose variables were empty) would match every token of the
//! issuer, so it is a start-up error, as is an empty claim or pattern.
//! With more than one issuer every rule names its issuer (`iss=…`): an
//! organisation of the same name on another issuer must not pass.

use serde_json::Value;

/// Claims that say which repository or project a job belongs to. A rule
/// with none of them pinned admits every repository on the issuer.
const IDENTITY_CLAIMS: &[&str] = &[
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "project_path",
    "project_id",
    "namespace_path",
    "namespace_id",
    "sub",
];

/// The parsed allow-list.
#[derive(Debug)]
pub(super) struct Rules(Vec<Rule>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule(Vec<(String, String)>);

impl Rules {
    /// Parses `allow` for `issuers`; also returns a warning for each rule
    /// that pins no identity claim.
    pub(super) fn parse(allow: &str, issuers: &[String]) -> Result<(Rules, Vec<String>), String> {
        if allow.trim().is_empty() {
            return Err("OIDC_ISSUERS is set but OIDC_ALLOW is empty: every repository on the issuer could build; list the allowed ones (e.g. repository=my-org/*)".into());
        }
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        for (n, text) in allow.split(';').enumerate() {
            let rule = parse_rule(n + 1, text)?;
            rule.check_issuer(n + 1, text.trim(), issuers)?;
            if !rule.pins_identity() {
                warnings.push(format!(
                    "OIDC_ALLOW rule {} (`{}`) pins no repository or project (one of {}): it admits every repository on its issuer that meets the rest",
                    n + 1,
                    text.trim(),
                    IDENTITY_CLAIMS.join(", ")
                ));
            }
            rules.push(rule);
        }
        Ok((Rules(rules), warnings))
    }

    /// Whether some rule admits `claims`.
    pub(super) fn admit(&self, claims: &Value) -> bool {
        self.0.iter().any(|r| r.matches(claims))
    }
}

fn parse_rule(n: usize, text: &str) -> Result<Rule, String> {
    let empty = |what: &str| {
        format!("OIDC_ALLOW rule {n} (`{}`) {what}: a rule or condition without content would admit every token; remove the stray `;` or `,` (or fill in the template variable)", text.trim())
    };
    if text.trim().is_empty() {
        return Err(empty("is empty"));
    }
    let mut conditions = Vec::new();
    for pair in text.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            return Err(empty("has an empty condition"));
        }
        let (claim, pattern) = pair
            .split_once('=')
            .ok_or_else(|| format!("OIDC_ALLOW rule {n}: `{pair}` is not claim=pattern"))?;
        let (claim, pattern) = (claim.trim(), pattern.trim());
        if claim.is_empty() || pattern.is_empty() {
            return Err(empty(&format!("has `{pair}` with an empty side")));
        }
        if pattern.starts_with('=') {
            return Err(format!(
                "OIDC_ALLOW rule {n}: `{pair}` has `==`; write `{claim}={}`",
                pattern.trim_start_matches('=')
            ));
        }
        conditions.push((claim.to_string(), pattern.to_string()));
    }
    Ok(Rule(conditions))
}

impl Rule {
    /// With several issuers the rule must name one (`iss=` exactly); with
    /// one, an `iss=` it names must be that one.
    fn check_issuer(&self, n: usize, text: &str, issuers: &[String]) -> Result<(), String> {
        let named: Vec<&str> = self
            .0
            .iter()
            .filter(|(c, _)| c == "iss")
            .map(|(_, p)| p.as_str())
            .collect();
        if named.len() > 1 {
            return Err(format!(
                "OIDC_ALLOW rule {n} (`{text}`) names `iss` {} times, and a token has one issuer: it could never match; write one rule per issuer",
                named.len()
            ));
        }
        if named.is_empty() && issuers.len() > 1 {
            return Err(format!(
                "OIDC_ALLOW rule {n} (`{text}`) names no issuer, and OIDC_ISSUERS has {}: add `iss=<issuer>` to every rule, or a repository of the same name on another issuer passes",
                issuers.len()
            ));
        }
        match named.iter().find(|p| !issuers.iter().any(|i| i == *p)) {
            Some(p) => Err(format!(
                "OIDC_ALLOW rule {n} (`{text}`): `iss={p}` is not one of OIDC_ISSUERS ({}); write the issuer exactly as listed there",
                issuers.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// Some identity claim has a pattern with a literal start: `*` alone,
    /// or `sub=repo:*`, pins nothing.
    fn pins_identity(&self) -> bool {
        self.0.iter().any(|(claim, pattern)| {
            let literal = pattern.split('*').next().unwrap_or_default();
            IDENTITY_CLAIMS.contains(&claim.as_str())
                && !literal.is_empty()
                // `sub=repo:*` / `sub=project_path:*` name the kind of
                // subject, not the repository.
                && !(claim == "sub" && literal.ends_with(':') && literal.matches(':').count() == 1)
        })
    }

    fn matches(&self, claims: &Value) -> bool {
        self.0.iter().all(|(claim, pattern)| {
            let value = match &claims[claim] {
                Value::String(s) => s.clone(),
                Value::Null | Value::Array(_) | Value::Object(_) => return false,
                other => other.to_string(),
            };
            glob(pattern, &value)
        })
    }
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(allow: &str) -> Result<(Rules, Vec<String>), String> {
        Rules::parse(allow, &["https://gh".to_string()])
    }

    #[test]
    fn globs_and_rules() {
        assert!(glob("my-org/*", "my-org/app"));
        assert!(!glob("my-org/*", "other/app"));
        assert!(glob("refs/heads/main", "refs/heads/main"));
        assert!(glob("*/release-*", "a/release-1"));
        assert!(!glob("a*b*c", "acb"));
        assert!(!glob("ab*ba", "aba"));
        let (rules, warnings) =
            one("repository=my-org/*,ref=refs/heads/main; project_path=group/*").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let gh = json!({"repository": "my-org/app", "ref": "refs/heads/main"});
        assert!(rules.admit(&gh));
        let branch = json!({"repository": "my-org/app", "ref": "refs/heads/feature"});
        assert!(!rules.admit(&branch));
        assert!(rules.admit(&json!({"project_path": "group/sub/app"})));
        assert!(!rules.admit(&json!({"project_path": ["group/x"]})));
    }

    /// Separators alone, or a template whose variables were empty, used to
    /// make a rule without conditions that admitted every token.
    #[test]
    fn empty_rules_and_conditions_are_refused() {
        for (allow, why) in [
            (",", "has an empty condition"),
            ("repository=my-org/*;,", "rule 2"),
            ("repository=my-org/*;", "rule 2 (``) is empty"),
            (" ; ", "is empty"),
            ("repository=a/*,,ref=x", "empty condition"),
            ("repository=", "empty side"),
            ("=my-org/*", "empty side"),
            ("repository", "not claim=pattern"),
            ("repository==org/*", "write `repository=org/*`"),
        ] {
            let e = one(allow).unwrap_err();
            assert!(e.contains(why), "{allow}: {e}");
        }
        assert!(one("").unwrap_err().contains("OIDC_ALLOW is empty"));
    }

    #[test]
    fn rules_that_pin_no_repository_are_warned_of() {
        for allow in ["ref=refs/heads/main", "repository=*", "sub=repo:*"] {
            let (_, warnings) = one(allow).unwrap();
            assert_eq!(warnings.len(), 1, "{allow}");
            assert!(warnings[0].contains("pins no repository"), "{warnings:?}");
        }
        for allow in [
            "repository_owner_id=123",
            "sub=repo:my-org/*",
            "sub=solo-*",
            "namespace_path=grp",
        ] {
            assert!(one(allow).unwrap().1.is_empty(), "{allow}");
        }
    }

    /// With two issuers, a rule without `iss=` let an organisation of the
    /// same name on the other issuer pass.
    #[test]
    fn with_several_issuers_every_rule_names_one() {
        let issuers = ["https://gh".to_string(), "https://ghes".to_string()];
        let e = Rules::parse("repository=my-org/*", &issuers).unwrap_err();
        assert!(e.contains("names no issuer"), "{e}");
        let e = Rules::parse("iss=https://other,repository=my-org/*", &issuers).unwrap_err();
        assert!(e.contains("not one of OIDC_ISSUERS"), "{e}");
        let e =
            Rules::parse("iss=https://gh,iss=https://ghes,repository=a/*", &issuers).unwrap_err();
        assert!(e.contains("could never match"), "{e}");
        let (rules, _) = Rules::parse(
            "iss=https://gh,repository=my-org/*;iss=https://ghes,repository=corp/*",
            &issuers,
        )
        .unwrap();
        assert!(rules.admit(&json!({"iss": "https://gh", "repository": "my-org/app"})));
        assert!(!rules.admit(&json!({"iss": "https://ghes", "repository": "my-org/app"})));
        assert!(rules.admit(&json!({"iss": "https://ghes", "repository": "corp/app"})));
    }
}
