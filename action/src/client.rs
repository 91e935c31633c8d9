//! Connecting to the controller: its URL, checked, and the client token
//! from the environment. The calls themselves are `bakery-client`'s.

use anyhow::{bail, Context, Result};
pub use bakery_client::{Controller, Event};

use crate::env::ClientEnv;

/// CONTROLLER_TOKEN, or the content of CONTROLLER_TOKEN_FILE.
fn client_token(env: &ClientEnv) -> Result<Option<String>> {
    token_from(
        env.var("CONTROLLER_TOKEN"),
        env.var("CONTROLLER_TOKEN_FILE").as_deref(),
    )
}

/// The token given (`token`), else the one in the file named (`file`). A
/// file that cannot be read is an error naming it: ignored, it left the
/// user told to set CONTROLLER_TOKEN, which they thought they had.
fn token_from(token: Option<String>, file: Option<&str>) -> Result<Option<String>> {
    if token.is_some() {
        return Ok(token);
    }
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("CONTROLLER_TOKEN_FILE {file} cannot be read"))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("CONTROLLER_TOKEN_FILE {file} is empty: write the controller's client token in it");
    }
    Ok(Some(token.to_string()))
}

/// A controller's URL that bakery will talk to: `https://`, or plain
/// `http://` to a loopback address. Plain HTTP elsewhere would carry the
/// client token, registry logins and build secrets in clear, so it takes
/// `--insecure` (BAKERY_INSECURE=true).
#[derive(Clone)]
pub struct Remote {
    url: String,
    /// The client token (CONTROLLER_TOKEN or CONTROLLER_TOKEN_FILE), read
    /// once, with the URL: a token file that is missing fails here.
    token: Option<String>,
}

/// The URL only: the token is never printed.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &bakery_protocol::redact::without_userinfo(&self.url))
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Checks `url` (`insecure`: plain HTTP to any host is allowed) and
    /// reads the client token from `env`.
    pub fn new(url: &str, insecure: bool, env: &ClientEnv) -> Result<Remote> {
        // Messages never repeat a password written into the URL.
        let shown = bakery_protocol::redact::without_userinfo(url);
        let parsed = url::Url::parse(url).with_context(|| {
            format!("CONTROLLER_URL `{shown}` is not a URL; write it as https://host[:port]")
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if insecure || is_loopback(&parsed) => {}
            "http" => bail!(
                "refusing to talk plain HTTP to {}: the controller token, registry logins and build secrets would cross the network in clear. Use an https:// CONTROLLER_URL (the controller's TLS_CERT_FILE/TLS_KEY_FILE, or a TLS proxy in front; see docs/tls.md), or pass --insecure (BAKERY_INSECURE=true) if this network is private",
                parsed.host_str().unwrap_or(&shown)
            ),
            other => bail!("CONTROLLER_URL `{shown}` has scheme `{other}`; use https:// (or http:// on loopback)"),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            bail!("CONTROLLER_URL carries a user name or password; put the token in CONTROLLER_TOKEN instead");
        }
        Ok(Remote {
            url: url.to_string(),
            token: client_token(env)?,
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The controller at `remote`, with the client token when one is set.
pub fn connect(remote: &Remote) -> Controller {
    Controller::new(remote.url(), remote.token.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_that_cannot_be_read_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("token");
        let missing = missing.to_str().unwrap();
        let e = format!("{:#}", token_from(None, Some(missing)).unwrap_err());
        assert!(e.contains(missing) && e.contains("cannot be read"), "{e}");
        std::fs::write(dir.path().join("token"), "  \n").unwrap();
        let e = format!("{:#}", token_from(None, Some(missing)).unwrap_err());
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
        assert_eq!(
            token_from(None, Some(missing)).unwrap().as_deref(),
            Some("s3cret-token")
        );
        // The variable wins, and the file is then not read at all.
        assert_eq!(
            token_from(Some("t".into()), Some("/nonexistent"))
                .unwrap()
                .as_deref(),
            Some("t")
        );
        assert_eq!(token_from(None, None).unwrap(), None);
    }

    /// The token comes from the environment given, not the process's: a
    /// token file that cannot be read fails with its name.
    #[test]
    fn the_token_is_read_from_the_environment_given() {
        let url = "https://bakery.example.com";
        let env = ClientEnv::from_vars([("CONTROLLER_TOKEN", "tok-from-the-map")]);
        let remote = Remote::new(url, false, &env).unwrap();
        assert_eq!(remote.token.as_deref(), Some("tok-from-the-map"));
        let missing = "/nonexistent/bakery-token";
        let env = ClientEnv::from_vars([("CONTROLLER_TOKEN_FILE", missing)]);
        let e = format!("{:#}", Remote::new(url, false, &env).unwrap_err());
        assert!(e.contains(missing) && e.contains("cannot be read"), "{e}");
        let none = Remote::new(url, false, &ClientEnv::default()).unwrap();
        assert_eq!(none.token, None);
    }

    #[test]
    fn plain_http_only_to_loopback_unless_insecure() {
        for ok in [
            "https://bakery.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(
                Remote::new(ok, false, &ClientEnv::default()).is_ok(),
                "{ok}"
            );
        }
        let e = Remote::new("http://bakery.example.com", false, &ClientEnv::default()).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(Remote::new("http://bakery.example.com", true, &ClientEnv::default()).is_ok());
        assert!(Remote::new("http://localhost.example.com", false, &ClientEnv::default()).is_err());
        assert!(Remote::new("ftp://x", true, &ClientEnv::default()).is_err());
        assert!(Remote::new("https://u:p@x", false, &ClientEnv::default()).is_err());
        assert!(Remote::new("bakery.example.com", false, &ClientEnv::default()).is_err());
        for url in ["htp://user:hunter2@x", "http://x:hunter2@[::1"] {
            let e = Remote::new(url, false, &ClientEnv::default())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
