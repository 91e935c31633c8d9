//! Keeping secrets out of logs.
//!
//! Builders print what they are given: a registry password passed as a build
//! arg, a token echoed by a pre-script. Every line on its way to a log goes
//! through a [`Redactor`] that knows the build's secrets.

use crate::spec::REDACTED;

/// Replaces each known secret value with `***`.
///
/// Every line of every build passes through one (in the agent and again in
/// the controller): the secrets are one automaton, built once, that a line
/// is scanned with once, not one search per secret per line. Secrets too
/// large for a small automaton (key files, certificates: an automaton
/// takes tens of bytes per byte of pattern) are searched one by one.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Leftmost-longest, so a secret containing another is masked whole;
    /// `None` without secrets, or when they are searched one by one.
    matcher: Option<aho_corasick::AhoCorasick>,
    /// Longest first, when there is no automaton.
    secrets: Vec<String>,
}

/// The most secret bytes put in one automaton.
const AUTOMATON_BYTES: usize = 64 << 10;

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
        let small = secrets.iter().map(String::len).sum::<usize>() <= AUTOMATON_BYTES;
        let matcher = (small && !secrets.is_empty())
            .then(|| {
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&secrets)
                    .ok()
            })
            .flatten();
        if matcher.is_some() {
            secrets.clear();
        }
        Redactor { matcher, secrets }
    }

    /// The secrets of a build spec, in every form [`secret_forms`] lists.
    pub fn for_spec(spec: &crate::spec::BuildSpec) -> Self {
        Redactor::new(secret_forms(spec))
    }

    /// The line with every known secret replaced by [`crate::spec::REDACTED`].
    pub fn redact(&self, line: &str) -> String {
        if let Some(m) = &self.matcher {
            if !m.is_match(line) {
                return line.to_string();
            }
            let mut out = String::with_capacity(line.len());
            m.replace_all_with(line, &mut out, |_, _, out| {
                out.push_str(REDACTED);
                true
            });
            return out;
        }
        let mut out = line.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Every form in which a spec's secrets may show up in a log: registry
/// passwords, each login as the `auth` of a Docker config (base64 of
/// `user:password`), which a script that prints the config would show, and
/// build secrets and SSH keys, whole and line by line.
pub fn secret_forms(spec: &crate::spec::BuildSpec) -> Vec<String> {
    let logins = spec.credentials.iter().flat_map(|c| {
        let auth = base64(format!("{}:{}", c.username, c.password.expose()).as_bytes());
        [c.password.expose().to_string(), auth]
    });
    // A multi-line secret (a key file) is masked line by line too: logs
    // arrive a line at a time.
    let secrets = spec.secrets.iter().chain(&spec.ssh).flat_map(|s| {
        let value = s.value.expose();
        std::iter::once(value.to_string())
            .chain(value.lines().map(str::to_string))
            .collect::<Vec<_>>()
    });
    logins.chain(secrets).collect()
}

/// `url` with any `user:password@` before its host replaced by `***@`, for
/// messages about a URL that is wrong: a URL with a password in it is still
/// the user's password, even when it does not parse.
pub fn without_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

/// Standard base64 with padding, as Docker's config.json `auth` is.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked_even_in_urls_that_do_not_parse() {
        assert_eq!(without_userinfo("htp://user:hunter2@x"), "htp://***@x");
        assert_eq!(without_userinfo("http://x:hunter2@[::1"), "http://***@[::1");
        assert_eq!(without_userinfo("https://h/p@q"), "https://h/p@q");
        assert_eq!(without_userinfo("no scheme"), "no scheme");
    }

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["hunter2", "hunter2-extended", "ab"]);
        assert_eq!(
            r.redact("pw=hunter2-extended and hunter2"),
            "pw=*** and ***"
        );
        assert_eq!(r.redact("ab stays"), "ab stays");
    }

    /// Small secrets are one automaton; secrets too large for one are
    /// searched one by one; both mask the same.
    #[test]
    fn large_secrets_are_masked_without_an_automaton() {
        let small = Redactor::new(["hunter2", "hunter2-extended"]);
        assert!(small.matcher.is_some() && small.secrets.is_empty());
        let key = "k".repeat(AUTOMATON_BYTES + 1);
        let large = Redactor::new(["hunter2", "hunter2-extended", key.as_str()]);
        assert!(large.matcher.is_none() && large.secrets.len() == 3);
        for r in [&small, &large] {
            assert_eq!(
                r.redact("pw=hunter2-extended and hunter2 and hunter"),
                "pw=*** and *** and hunter"
            );
        }
        assert_eq!(large.redact(&format!("[{key}]")), "[***]");
        assert_eq!(Redactor::default().redact("hunter2"), "hunter2");
    }

    #[test]
    fn docker_config_auth_is_masked_too() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        use crate::spec::{BuildSecret, BuildSpec, Credential, Secret};
        let spec = BuildSpec {
            credentials: vec![Credential {
                registry: "r.io".into(),
                username: "ci".into(),
                password: Secret::new("hunter2-pw"),
            }],
            ssh: vec![BuildSecret {
                id: "default".into(),
                value: Secret::new(
                    "-----BEGIN KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END KEY-----\n",
                ),
            }],
            ..BuildSpec::new("Dockerfile", crate::Arch::Amd64)
        };
        let r = Redactor::for_spec(&spec);
        // An SSH key's lines, each: a script that cats the key file logs
        // them one at a time.
        assert_eq!(r.redact("c2VjcmV0LWtleS1ib2R5"), "***");
        let auth = base64(b"ci:hunter2-pw");
        assert_eq!(
            r.redact(&format!(
                "{{\"auths\":{{\"r.io\":{{\"auth\":\"{auth}\"}}}}}} hunter2-pw"
            )),
            "{\"auths\":{\"r.io\":{\"auth\":\"***\"}}} ***"
        );
    }
}
