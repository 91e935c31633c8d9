//! Docker's `config.json` and the containers `auth.json` (the same `auths`
//! shape): stored logins and which credential helper holds the others.

use std::collections::BTreeMap;
use std::path::Path;

use bakery_protocol::spec::Secret;
use base64::Engine;
use serde::Deserialize;

use super::{helper, normalise_host, Login, LoginError, Source};

/// The parts of the file logins come from; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// An OAuth refresh token (`docker login` to a registry that issues
    /// them, e.g. Azure): sent as Docker does, user `<token>`.
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Reads `path`; a file that is not JSON is an error that names it.
pub(super) fn read(path: &Path) -> Result<DockerConfig, LoginError> {
    let error = |cause: String| LoginError::Config {
        path: path.display().to_string(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(DockerConfig::default());
    }
    // serde_json's messages can quote the input (`invalid type: string
    // "dXNlcjpwdw=="`), which here is a password: only where and what kind.
    serde_json::from_str(&text).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            _ => "not the shape of a Docker config (auths, credHelpers, credsStore)",
        };
        error(format!("line {} column {}: {kind}", e.line(), e.column()))
    })
}

impl DockerConfig {
    /// The login for `host` as Docker resolves it: a `credHelpers` entry,
    /// else `credsStore`, else what `auths` stores.
    /// A helper in `broken` (it failed earlier in this run) is not asked.
    pub(super) async fn login(
        &self,
        host: &str,
        path: &Path,
        broken: &mut std::collections::HashSet<String>,
    ) -> Result<Option<Login>, LoginError> {
        let helper = self
            .cred_helpers
            .iter()
            .find(|(k, _)| normalise_host(k) == host)
            .map(|(_, h)| h)
            .or(self.creds_store.as_ref());
        if let Some(helper) = helper.filter(|h| !h.is_empty() && !broken.contains(*h)) {
            match helper::get(helper, &self.server_url(host)).await {
                Ok(Some(login)) => return Ok(Some(login)),
                Ok(None) => {}
                Err(e) => {
                    broken.insert(helper.clone());
                    return Err(e);
                }
            }
        }
        self.stored(host, path)
    }

    /// The key Docker would have stored `host`'s login under.
    fn server_url(&self, host: &str) -> String {
        self.auths
            .keys()
            .chain(self.cred_helpers.keys())
            .find(|k| normalise_host(k) == host)
            .cloned()
            .unwrap_or_else(|| match host {
                "docker.io" => "https://index.docker.io/v1/".into(),
                h => h.into(),
            })
    }

    /// The login `auths` holds for `host`, if any.
    pub(super) fn stored(&self, host: &str, path: &Path) -> Result<Option<Login>, LoginError> {
        let Some(entry) = self
            .auths
            .iter()
            .find(|(k, _)| normalise_host(k) == host)
            .map(|(_, e)| e)
        else {
            return Ok(None);
        };
        let error = |cause: &str| LoginError::Config {
            path: path.display().to_string(),
            cause: format!("auths[{host}]: {cause}"),
        };
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Login {
                username: "<token>".into(),
                password: Secret::new(token.clone()),
                source: Source::DockerConfig(path.to_path_buf()),
            }));
        }
        let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| error("`auth` is not base64"))?;
                let text = String::from_utf8(bytes).map_err(|_| error("`auth` is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| error("`auth` is not user:password"))?;
                (u.to_string(), p.to_string())
            }
            (_, Some(u), Some(p)) => (u.clone(), p.clone()),
            _ => return Ok(None),
        };
        Ok(Some(Login {
            username,
            password: Secret::new(password),
            source: Source::DockerConfig(path.to_path_buf()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, std::path::PathBuf, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        let c = read(&path).unwrap();
        (dir, path, c)
    }

    #[test]
    fn stored_logins_decode_every_shape() {
        let (_d, path, c) = config(
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpodW50ZXIy"},
                "r.example:5000": {"username": "ci", "password": "pw"},
                "az.example": {"identitytoken": "refresh"},
                "empty.example": {}}}"#,
        );
        let hub = c.stored("docker.io", &path).unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.expose()),
            ("u", "hunter2")
        );
        let r = c.stored("r.example:5000", &path).unwrap().unwrap();
        assert_eq!((r.username.as_str(), r.password.expose()), ("ci", "pw"));
        let az = c.stored("az.example", &path).unwrap().unwrap();
        assert_eq!(
            (az.username.as_str(), az.password.expose()),
            ("<token>", "refresh")
        );
        assert!(c.stored("empty.example", &path).unwrap().is_none());
        assert!(c.stored("other.example", &path).unwrap().is_none());
    }

    #[test]
    fn a_broken_file_is_named_and_its_content_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"auths\": {\"r\": {\"auth\": \"s3cret-broken").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        // A value of the wrong type: serde would quote it.
        for wrong in [
            r#"{"auths": {"r": "dXNlcjpzM2NyZXQtdHlwZQ=="}}"#,
            r#"{"auths": {"r": {"password": 12345678}}}"#,
        ] {
            std::fs::write(&path, wrong).unwrap();
            let e = read(&path).unwrap_err().to_string();
            assert!(
                !e.contains("dXNlcjpzM2NyZXQtdHlwZQ") && !e.contains("12345678"),
                "{e}"
            );
            assert!(e.contains("line 1 column"), "{e}");
        }
        let (_d, path, c) = config(r#"{"auths": {"r.example": {"auth": "!!notbase64-s3cret"}}}"#);
        let e = c.stored("r.example", &path).unwrap_err().to_string();
        assert!(
            e.contains("auths[r.example]") && !e.contains("s3cret"),
            "{e}"
        );
    }
}
