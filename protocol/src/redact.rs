//! Keeping secrets out of logs.
//!
//! Builders print what they are given: a registry password passed as a build
//! arg, a token echoed by a pre-script. Every line on its way to a log goes
//! through a [`Redactor`] that knows the build's secrets.

use crate::spec::REDACTED;

/// Replaces each known secret value with `***`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Values shorter than 4 characters are not redacted: masking every `a`
    /// or `1` in a log would hide more than it protects.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| s.len() >= 4)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// The secrets of a build spec: registry passwords.
    pub fn for_spec(spec: &crate::spec::BuildSpec) -> Self {
        Redactor::new(spec.credentials.iter().map(|c| c.password.expose()))
    }

    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["hunter2", "hunter2-extended", "ab"]);
        assert_eq!(
            r.redact("pw=hunter2-extended and hunter2"),
            "pw=*** and ***"
        );
        assert_eq!(r.redact("ab stays"), "ab stays");
    }
}
