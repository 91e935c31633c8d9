//! OpenID Connect: CI jobs authenticate with the ID token their CI system
//! issues (GitHub Actions, GitLab CI) instead of a shared secret.
//!
//! A token is accepted when its signature verifies against its issuer's
//! published keys (JWKS, fetched through the issuer's discovery document and
//! cached), its issuer is one of `OIDC_ISSUERS`, its audience is
//! `OIDC_AUDIENCE`, it has not expired, and its claims match one rule of
//! `OIDC_ALLOW` (`repository=my-org/*,ref=refs/heads/main;project_path=group/*`:
//! rules separated by `;`, every `claim=pattern` of a rule must match, `*`
//! matches any run of characters).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// An unknown key id refetches the keys at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule(Vec<(String, String)>);

/// The verifier; cheap to share.
pub struct Oidc {
    issuers: Vec<String>,
    audience: String,
    rules: Vec<Rule>,
    http: reqwest::Client,
    keys: Mutex<HashMap<String, (JwkSet, Instant)>>,
}

impl Oidc {
    /// From `OIDC_ISSUERS`, `OIDC_AUDIENCE` and `OIDC_ALLOW`; `None` when no issuer is set.
    pub fn from_config(issuers: &str, audience: &str, allow: &str) -> Result<Option<Oidc>, String> {
        let issuers = bakery_protocol::registry::parse_list(issuers);
        if issuers.is_empty() {
            return Ok(None);
        }
        for issuer in &issuers {
            let loopback =
                issuer.starts_with("http://127.0.0.1") || issuer.starts_with("http://localhost");
            if !issuer.starts_with("https://") && !loopback {
                return Err(format!("OIDC_ISSUERS: `{issuer}` must be an https URL"));
            }
        }
        let rules = parse_rules(allow)?;
        if rules.is_empty() {
            return Err(
                "OIDC_ISSUERS is set but OIDC_ALLOW is empty: every repository on the issuer could build; list the allowed ones (e.g. repository=my-org/*)".into(),
            );
        }
        Ok(Some(Oidc {
            issuers,
            audience: audience.to_string(),
            rules,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            keys: Mutex::default(),
        }))
    }

    /// Verifies `token`; the error says why it was refused.
    pub async fn verify(&self, token: &str) -> Result<Value, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("not a valid ID token: {e}"))?;
        let unverified = unverified_claims(token)?;
        let issuer = unverified["iss"].as_str().unwrap_or_default().to_string();
        if !self.issuers.contains(&issuer) {
            return Err(format!("issuer `{issuer}` is not in OIDC_ISSUERS"));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let jwk = match self.key(&issuer, &kid, false).await? {
            Some(jwk) => jwk,
            None => self
                .key(&issuer, &kid, true)
                .await?
                .ok_or_else(|| format!("no key `{kid}` in the keys of {issuer}"))?,
        };
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|e| format!("key `{kid}` of {issuer}: {e}"))?;
        let algorithm = match header.alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384 => header.alg,
            other => return Err(format!("algorithm {other:?} is not accepted")),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "the ID token has expired".to_string()
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                format!(
                    "the ID token's audience is not `{}` (OIDC_AUDIENCE)",
                    self.audience
                )
            }
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                "the ID token's signature does not verify".to_string()
            }
            other => format!("the ID token is not valid: {other:?}"),
        })?;
        if self.rules.iter().any(|r| r.matches(&data.claims)) {
            Ok(data.claims)
        } else {
            Err(format!(
                "claims not allowed by OIDC_ALLOW: {}",
                describe(&data.claims)
            ))
        }
    }

    /// The key `kid` of `issuer`, from the cache unless stale or `refresh`.
    async fn key(
        &self,
        issuer: &str,
        kid: &str,
        refresh: bool,
    ) -> Result<Option<jsonwebtoken::jwk::Jwk>, String> {
        let mut keys = self.keys.lock().await;
        let fresh = keys.get(issuer).is_some_and(|(_, at)| {
            let age = at.elapsed();
            age < KEYS_TTL && !(refresh && age > REFETCH_AFTER)
        });
        if !fresh {
            let set = self.fetch_keys(issuer).await?;
            keys.insert(issuer.to_string(), (set, Instant::now()));
        }
        Ok(keys.get(issuer).and_then(|(set, _)| set.find(kid).cloned()))
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<JwkSet, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc: Value = self
            .get(&discovery)
            .await
            .map_err(|e| format!("reading {discovery}: {e}"))?;
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .ok_or_else(|| format!("{discovery} has no jwks_uri"))?;
        let set: Value = self
            .get(jwks_uri)
            .await
            .map_err(|e| format!("reading {jwks_uri}: {e}"))?;
        serde_json::from_value(set).map_err(|e| format!("{jwks_uri}: {e}"))
    }

    async fn get(&self, url: &str) -> Result<Value, reqwest::Error> {
        self.http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}

/// The claims of a token before verification, only to pick its issuer.
fn unverified_claims(token: &str) -> Result<Value, String> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or("not a valid ID token")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "not a valid ID token".to_string())?;
    serde_json::from_slice(&bytes).map_err(|_| "not a valid ID token".to_string())
}

fn parse_rules(allow: &str) -> Result<Vec<Rule>, String> {
    allow
        .split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|rule| {
            rule.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .ok_or_else(|| format!("OIDC_ALLOW: `{pair}` is not claim=pattern"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Rule)
        })
        .collect()
}

impl Rule {
    fn matches(&self, claims: &Value) -> bool {
        self.0.iter().all(|(claim, pattern)| {
            let value = match &claims[claim] {
                Value::String(s) => s.clone(),
                Value::Null => return false,
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
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
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

/// The claims that identify a CI job, for the refusal message.
fn describe(claims: &Value) -> String {
    ["repository", "ref", "project_path", "ref_path", "sub"]
        .iter()
        .filter_map(|k| claims[*k].as_str().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_rules() {
        assert!(glob("my-org/*", "my-org/app"));
        assert!(!glob("my-org/*", "other/app"));
        assert!(glob("refs/heads/main", "refs/heads/main"));
        assert!(glob("*/release-*", "a/release-1"));
        assert!(!glob("a*b*c", "acb"));
        let rules =
            parse_rules("repository=my-org/*,ref=refs/heads/main; project_path=group/*").unwrap();
        assert_eq!(rules.len(), 2);
        let gh = serde_json::json!({"repository": "my-org/app", "ref": "refs/heads/main"});
        assert!(rules.iter().any(|r| r.matches(&gh)));
        let branch = serde_json::json!({"repository": "my-org/app", "ref": "refs/heads/feature"});
        assert!(!rules.iter().any(|r| r.matches(&branch)));
        let gl = serde_json::json!({"project_path": "group/sub/app"});
        assert!(rules.iter().any(|r| r.matches(&gl)));
        assert!(parse_rules("repository").is_err());
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Oidc::from_config("", "bakery", "").unwrap().is_none());
        assert!(
            Oidc::from_config("http://issuer.example.com", "bakery", "repository=a/*")
                .err()
                .unwrap()
                .contains("https")
        );
        assert!(
            Oidc::from_config("https://token.actions.githubusercontent.com", "bakery", "")
                .err()
                .unwrap()
                .contains("OIDC_ALLOW is empty")
        );
    }
}
