//! Each issuer's signing keys (its JWKS), fetched through its discovery
//! document and cached.
//!
//! One slow or dead issuer must not hold up the others, nor be asked once
//! per request: each issuer has its own state (a lock never held across
//! I/O) and its own single-flight fetch; a failed fetch is remembered and
//! not tried again before its backoff ends; the keys last fetched are kept,
//! up to [`KEEP_STALE`], while the issuer cannot be reached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde_json::Value;
use url::Url;

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// A token with a key id the cached keys lack refetches them at most this
/// often (an issuer rotating its keys), and a failed fetch is not retried
/// sooner.
const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Longest wait between fetches of an issuer that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Keys fetched once stay usable this long while their issuer is down.
const KEEP_STALE: Duration = Duration::from_secs(24 * 3600);
/// Largest discovery document or key set read: real ones are a few KiB.
const MAX_DOCUMENT: usize = 256 << 10;
/// Most keys kept of one issuer.
const MAX_KEYS: usize = 64;

/// Why no key was found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The issuer answered and has no such key: the token is refused.
    #[error("{0}")]
    Unknown(String),
    /// The issuer's keys cannot be had now: try again later (503).
    #[error("{0}")]
    Unreachable(String),
}

/// The keys of every configured issuer.
pub(super) struct KeyCache {
    http: reqwest::Client,
    issuers: HashMap<String, IssuerKeys>,
}

struct IssuerKeys {
    /// As configured: what its discovery document must call it.
    name: String,
    url: Url,
    state: Mutex<State>,
    /// Held by the one request fetching; others wait for its outcome.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    keys: Option<(JwkSet, Instant)>,
    last_attempt: Option<Instant>,
    /// Fetches failed in a row, and why the last did.
    failures: u32,
    last_error: String,
    /// Fetches sent, for the tests' count.
    fetches: u64,
}

/// What the cached state allows without a fetch.
enum Lookup {
    Found(Jwk),
    Fetch,
    Missing(KeyError),
}

impl KeyCache {
    pub(super) fn new(issuers: &[(String, Url)]) -> Result<KeyCache, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let issuers = issuers
            .iter()
            .map(|(name, url)| {
                let keys = IssuerKeys {
                    name: name.clone(),
                    url: url.clone(),
                    state: Mutex::default(),
                    fetching: tokio::sync::Mutex::new(()),
                };
                (name.clone(), keys)
            })
            .collect();
        Ok(KeyCache { http, issuers })
    }

    /// The key `kid` of `issuer` (one of those configured).
    pub(super) async fn key(&self, issuer: &str, kid: &str) -> Result<Jwk, KeyError> {
        let Some(entry) = self.issuers.get(issuer) else {
            return Err(KeyError::Unknown(format!(
                "issuer `{issuer}` is not configured"
            )));
        };
        let asked = Instant::now();
        match entry.lookup(kid, asked) {
            Lookup::Found(jwk) => return Ok(jwk),
            Lookup::Missing(e) => return Err(e),
            Lookup::Fetch => {}
        }
        let _one = entry.fetching.lock().await;
        // Whoever held the lock fetched for us too.
        let fetched_meanwhile = entry.lock().last_attempt.is_some_and(|at| at >= asked);
        if !fetched_meanwhile {
            entry.lock().fetches += 1;
            let result = fetch(&self.http, &entry.name, &entry.url).await;
            entry.store(result);
        }
        entry.after_fetch(kid)
    }

    /// How many times `issuer`'s keys were fetched (tests).
    pub(super) fn fetches(&self, issuer: &str) -> u64 {
        self.issuers.get(issuer).map_or(0, |e| e.lock().fetches)
    }
}

impl IssuerKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let state = self.lock();
        if state.is_fresh(now) {
            if let Some(jwk) = state.find(kid, KEYS_TTL) {
                return Lookup::Found(jwk.clone());
            }
        }
        if state.may_fetch(now) {
            return Lookup::Fetch;
        }
        // The issuer was tried too recently: the keys kept, if any.
        match state.find(kid, KEEP_STALE) {
            Some(jwk) => Lookup::Found(jwk.clone()),
            None => Lookup::Missing(state.missing(kid, &self.name)),
        }
    }

    fn store(&self, result: Result<JwkSet, String>) {
        let mut state = self.lock();
        let now = Instant::now();
        state.last_attempt = Some(now);
        match result {
            Ok(mut set) => {
                set.keys.truncate(MAX_KEYS);
                state.keys = Some((set, now));
                state.failures = 0;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, "fetching the OIDC issuer's keys: {e}");
                state.failures += 1;
                state.last_error = e;
            }
        }
    }

    fn after_fetch(&self, kid: &str) -> Result<Jwk, KeyError> {
        let state = self.lock();
        match state.find(kid, KEEP_STALE) {
            Some(jwk) => Ok(jwk.clone()),
            None => Err(state.missing(kid, &self.name)),
        }
    }
}

impl State {
    /// Key `kid` from keys fetched within `age`.
    fn find(&self, kid: &str, age: Duration) -> Option<&Jwk> {
        self.keys
            .as_ref()
            .filter(|(_, at)| at.elapsed() < age)
            .and_then(|(set, _)| set.find(kid))
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) < KEYS_TTL)
    }

    /// Whether a fetch may go out now (the key wanted is not among fresh
    /// keys): for fresh keys not twice within [`REFETCH_AFTER`], after
    /// failures only once the backoff ends.
    fn may_fetch(&self, now: Instant) -> bool {
        let Some(last) = self.last_attempt else {
            return true;
        };
        let since = now.duration_since(last);
        if self.failures > 0 {
            return since >= backoff(self.failures);
        }
        !self.is_fresh(now) || since >= REFETCH_AFTER
    }

    fn missing(&self, kid: &str, issuer: &str) -> KeyError {
        if self.failures > 0 {
            KeyError::Unreachable(format!(
                "the keys of {issuer} cannot be fetched ({}); try again later",
                self.last_error
            ))
        } else {
            KeyError::Unknown(format!("no key `{}` in the keys of {issuer}", shown(kid)))
        }
    }
}

/// 30 s after the first failure, doubling up to [`MAX_BACKOFF`]. (A
/// formula, not a retry loop: nothing waits on it, so backon has no place.)
fn backoff(failures: u32) -> Duration {
    REFETCH_AFTER
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_BACKOFF)
}

/// A value from a token, cut for messages: a 200 KB `kid` is not echoed.
pub(super) fn shown(value: &str) -> String {
    let mut s: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if value.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// The issuer's discovery document, checked, then its key set.
async fn fetch(http: &reqwest::Client, name: &str, issuer: &Url) -> Result<JwkSet, String> {
    let discovery = Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        name.trim_end_matches('/')
    ))
    .map_err(|e| e.to_string())?;
    let doc = get(http, issuer, &discovery).await?;
    // The document must be the issuer's own (OpenID Connect Discovery §4.3).
    let said = doc["issuer"].as_str().unwrap_or_default();
    if said != name {
        return Err(format!(
            "{discovery} names issuer `{}`, not `{name}`",
            shown(said)
        ));
    }
    let jwks_uri = doc["jwks_uri"]
        .as_str()
        .ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
    let jwks = Url::parse(jwks_uri).map_err(|e| format!("{discovery}: jwks_uri: {e}"))?;
    let set = get(http, issuer, &jwks).await?;
    serde_json::from_value(set).map_err(|e| format!("{jwks}: not a key set: {e}"))
}

/// A JSON document of at most [`MAX_DOCUMENT`] bytes, from a URL the
/// issuer's keys may come from. Redirects are not followed.
async fn get(http: &reqwest::Client, issuer: &Url, url: &Url) -> Result<Value, String> {
    if !super::urls::may_fetch(issuer, url) {
        return Err(format!(
            "{url} is not https (the keys of an https issuer are fetched over https only)"
        ));
    }
    let mut resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("reading {url}: HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("{url} is larger than {} KiB", MAX_DOCUMENT >> 10));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(4), Duration::from_secs(240));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn long_values_are_cut_for_messages() {
        let kid = "k".repeat(200_000);
        assert_eq!(shown(&kid).chars().count(), 65);
        assert_eq!(shown("a\nb"), "a\\nb");
    }

    #[test]
    fn a_failed_fetch_is_not_repeated_within_its_backoff() {
        let t0 = Instant::now();
        let mut s = State::default();
        assert!(s.may_fetch(t0));
        s.last_attempt = Some(t0);
        s.failures = 1;
        assert!(!s.may_fetch(t0 + Duration::from_secs(29)));
        assert!(s.may_fetch(t0 + Duration::from_secs(30)));
        s.failures = 0;
        s.keys = Some((JwkSet { keys: vec![] }, t0));
        assert!(
            !s.may_fetch(t0 + Duration::from_secs(10)),
            "unknown kid, too soon"
        );
        assert!(s.may_fetch(t0 + REFETCH_AFTER));
        assert!(s.may_fetch(t0 + KEYS_TTL), "stale keys");
    }
}
