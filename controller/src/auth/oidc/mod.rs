//! OpenID Connect: CI jobs authenticate with the ID token their CI system
//! issues (GitHub Actions, GitLab CI) instead of a shared secret.
//!
//! A token is accepted when its signature verifies against its issuer's
//! published keys ([`keys`]), its issuer is one of `OIDC_ISSUERS`
//! ([`urls`] says which URLs may be), its audience is `OIDC_AUDIENCE`, it
//! is within its `nbf`..`exp` window, it asks for no extension it does not
//! understand (`crit`), and its claims match a rule of `OIDC_ALLOW`
//! ([`rules`]). The verified claims become the build's [`OidcIdentity`].

mod keys;
mod rules;
mod urls;

use bakery_protocol::api::OidcIdentity;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

pub(crate) use keys::KeyError;
use keys::{shown, KeyCache};
use rules::Rules;

/// Longest token looked at: real CI ID tokens are 1–2 KiB.
const MAX_TOKEN: usize = 16 << 10;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The token is not good: 401.
    #[error("{0}")]
    Refused(String),
    /// Its issuer's keys cannot be had now: 503, try again.
    #[error("{0}")]
    Unavailable(String),
}

impl From<KeyError> for OidcError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unknown(why) => OidcError::Refused(why),
            KeyError::Unreachable(why) => OidcError::Unavailable(why),
        }
    }
}

/// The verifier; cheap to share.
pub struct Oidc {
    issuers: Vec<String>,
    audience: String,
    rules: Rules,
    keys: KeyCache,
}

impl Oidc {
    /// From `OIDC_ISSUERS`, `OIDC_AUDIENCE` and `OIDC_ALLOW`; `None` when no
    /// issuer is set. Rules that pin no repository are warned of.
    pub fn from_config(issuers: &str, audience: &str, allow: &str) -> Result<Option<Oidc>, String> {
        let issuers = bakery_protocol::registry::parse_list(issuers);
        if issuers.is_empty() {
            return Ok(None);
        }
        let parsed = issuers
            .iter()
            .map(|i| urls::check_issuer(i).map(|url| (i.clone(), url)))
            .collect::<Result<Vec<_>, _>>()?;
        if audience.trim().is_empty() {
            return Err("OIDC_AUDIENCE is empty: set the audience your CI jobs request (the action's `oidc-audience`)".into());
        }
        let (rules, warnings) = Rules::parse(allow, &issuers)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        Ok(Some(Oidc {
            keys: KeyCache::new(&parsed)?,
            issuers,
            audience: audience.to_string(),
            rules,
        }))
    }

    /// Verifies `token`; the error says why it was not accepted.
    pub async fn verify(&self, token: &str) -> Result<OidcIdentity, OidcError> {
        let refused = |why: String| OidcError::Refused(why);
        if token.len() > MAX_TOKEN {
            return Err(refused(format!(
                "the ID token is longer than {} KiB, which no CI ID token is",
                MAX_TOKEN >> 10
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("not a valid ID token: {e}")))?;
        // RFC 7515 §4.1.11: extensions the recipient does not understand
        // must be refused, and this verifier understands none.
        if let Some(crit) = &header.crit {
            let names: Vec<String> = crit.iter().take(4).map(|c| shown(c)).collect();
            return Err(refused(format!(
                "the ID token's header asks for extensions this controller does not understand (crit: {})",
                names.join(", ")
            )));
        }
        let algorithm = match header.alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384 => header.alg,
            other => return Err(refused(format!("algorithm {other:?} is not accepted"))),
        };
        let issuer = unverified_issuer(token).map_err(refused)?;
        if !self.issuers.contains(&issuer) {
            return Err(refused(format!(
                "issuer `{}` is not in OIDC_ISSUERS",
                shown(&issuer)
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let jwk = self.keys.key(&issuer, &kid).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| refused(format!("key `{}` of {issuer}: {e}", shown(&kid))))?;
        let claims = self.decode(token, &key, algorithm, &issuer)?;
        if !self.rules.admit(&claims) {
            return Err(refused(format!(
                "claims not allowed by OIDC_ALLOW: {}",
                describe(&claims)
            )));
        }
        Ok(identity(&issuer, &claims))
    }

    /// The claims of a token whose key is known: signature, audience,
    /// issuer, `exp` and `nbf` checked.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
        issuer: &str,
    ) -> Result<Value, OidcError> {
        use jsonwebtoken::errors::ErrorKind;
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| {
            OidcError::Refused(match e.kind() {
                ErrorKind::ExpiredSignature => "the ID token has expired".to_string(),
                ErrorKind::ImmatureSignature => {
                    "the ID token is not valid yet (its `nbf` is in the future)".to_string()
                }
                ErrorKind::InvalidAudience => format!(
                    "the ID token's audience is not `{}` (OIDC_AUDIENCE)",
                    self.audience
                ),
                ErrorKind::InvalidSignature => {
                    "the ID token's signature does not verify".to_string()
                }
                other => format!("the ID token is not valid: {other:?}"),
            })
        })?;
        Ok(data.claims)
    }

    /// How many times `issuer`'s keys were fetched (for tests and metrics).
    pub fn key_fetches(&self, issuer: &str) -> u64 {
        self.keys.fetches(issuer)
    }
}

/// The issuer of a token before verification, only to pick its keys.
fn unverified_issuer(token: &str) -> Result<String, String> {
    use base64::Engine;
    let invalid = || "not a valid ID token".to_string();
    let payload = token.split('.').nth(1).ok_or_else(invalid)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    claims["iss"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the ID token names no issuer (`iss`)".to_string())
}

/// Who the verified claims say the job is.
fn identity(issuer: &str, claims: &Value) -> OidcIdentity {
    let text = |k: &str| claims[k].as_str().map(str::to_string);
    OidcIdentity {
        issuer: issuer.to_string(),
        subject: text("sub").unwrap_or_default(),
        repository: text("repository"),
        project_path: text("project_path"),
    }
}

/// The claims that identify a CI job, for the refusal message.
fn describe(claims: &Value) -> String {
    ["repository", "ref", "project_path", "ref_path", "sub"]
        .iter()
        .filter_map(|k| claims[*k].as_str().map(|v| format!("{k}={}", shown(v))))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        assert!(Oidc::from_config("", "bakery", "").unwrap().is_none());
        let err = |issuers: &str, audience: &str, allow: &str| {
            Oidc::from_config(issuers, audience, allow).err().unwrap()
        };
        assert!(err("http://issuer.example.com", "bakery", "repository=a/*").contains("https"));
        let gh = "https://token.actions.githubusercontent.com";
        assert!(err(gh, "bakery", "").contains("OIDC_ALLOW is empty"));
        assert!(err(gh, "bakery", ",").contains("empty condition"));
        assert!(err(gh, " ", "repository=a/*").contains("OIDC_AUDIENCE"));
        assert!(err(
            &format!("{gh},https://ghes.example.com"),
            "b",
            "repository=a/*"
        )
        .contains("names no issuer"));
    }
}
