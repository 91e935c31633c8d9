//! Every running build's secrets, masked in every build's log.
//!
//! A build's own redactor masks its own registry passwords and build
//! secrets. A build can also print another's (one it read where it should
//! not, or a password two teams share), so the lines agents send are also
//! masked against the secrets of every build still running: one pass per
//! line with an Aho-Corasick automaton, rebuilt when a build starts or ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use bakery_protocol::api::AgentLine;
use bakery_protocol::spec::REDACTED;

/// Secrets shorter than this are not masked (as the per-build redactor).
const SHORTEST: usize = 4;

/// The secrets of the running builds, by build id.
#[derive(Default, Debug)]
pub struct SecretBook {
    state: RwLock<Book>,
}

#[derive(Default, Debug)]
struct Book {
    by_build: HashMap<String, Vec<String>>,
    matcher: Option<Arc<AhoCorasick>>,
}

impl SecretBook {
    /// Adds (or replaces) `build`'s secrets.
    pub fn add(&self, build: &str, secrets: Vec<String>) {
        let secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= SHORTEST)
            .collect();
        let mut book = self.state.write().unwrap_or_else(|p| p.into_inner());
        if secrets.is_empty() && !book.by_build.contains_key(build) {
            return;
        }
        book.by_build.insert(build.to_string(), secrets);
        book.rebuild();
    }

    /// Forgets `build`'s secrets (it ended, or was forgotten).
    pub fn remove(&self, build: &str) {
        let mut book = self.state.write().unwrap_or_else(|p| p.into_inner());
        if book.by_build.remove(build).is_some() {
            book.rebuild();
        }
    }

    /// How many builds' secrets are held (for tests).
    pub fn builds(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_build
            .len()
    }

    /// `lines` with every known secret masked; borrowed when none holds one.
    pub fn mask<'a>(&self, lines: &'a [AgentLine]) -> std::borrow::Cow<'a, [AgentLine]> {
        let matcher = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matcher
            .clone();
        let Some(matcher) = matcher else {
            return std::borrow::Cow::Borrowed(lines);
        };
        if !lines.iter().any(|l| matcher.is_match(&l.line)) {
            return std::borrow::Cow::Borrowed(lines);
        }
        std::borrow::Cow::Owned(
            lines
                .iter()
                .map(|l| {
                    let mut line = String::with_capacity(l.line.len());
                    matcher.replace_all_with(&l.line, &mut line, |_, _, out| {
                        out.push_str(REDACTED);
                        true
                    });
                    AgentLine { seq: l.seq, line }
                })
                .collect(),
        )
    }
}

impl Book {
    fn rebuild(&mut self) {
        let mut all: Vec<&String> = self.by_build.values().flatten().collect();
        all.sort();
        all.dedup();
        self.matcher = if all.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(all)
                .ok()
                .map(Arc::new)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> AgentLine {
        AgentLine {
            seq: 1,
            line: text.into(),
        }
    }

    #[test]
    fn every_running_builds_secrets_are_masked_until_it_ends() {
        let book = SecretBook::default();
        book.add("a", vec!["alpha-secret".into(), "abc".into()]);
        book.add("b", vec!["beta-secret-longer".into(), "beta-secret".into()]);
        let lines = [
            line("x alpha-secret beta-secret-longer abc y"),
            line("clean"),
        ];
        let masked = book.mask(&lines);
        assert_eq!(masked[0].line, "x *** *** abc y", "short values stay");
        assert_eq!(masked[1].line, "clean");
        assert!(matches!(
            book.mask(&[line("clean")]),
            std::borrow::Cow::Borrowed(_)
        ));
        book.remove("a");
        assert_eq!(book.mask(&lines)[0].line, "x alpha-secret *** abc y");
        book.remove("b");
        assert_eq!(book.builds(), 0);
        assert!(matches!(book.mask(&lines), std::borrow::Cow::Borrowed(_)));
    }
}
