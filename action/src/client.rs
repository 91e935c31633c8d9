//! Connecting to the controller: its URL, checked, and the client token
//! from the environment. The calls themselves are `bakery-client`'s.

use anyhow::{bail, Context, Result};
pub use bakery_client::{Controller, Event};

/// CONTROLLER_TOKEN, or the content of CONTROLLER_TOKEN_FILE.
fn client_token() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("CONTROLLER_TOKEN").or_else(|| {
        var("CONTROLLER_TOKEN_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string())
    })
}

/// A controller's URL that bakery will talk to: `https://`, or plain
/// `http://` to a loopback address. Plain HTTP elsewhere would carry the
/// client token, registry logins and build secrets in clear, so it takes
/// `--insecure` (BAKERY_INSECURE=true).
#[derive(Debug, Clone)]
pub struct Remote(String);

impl Remote {
    /// Checks `url` (`insecure`: plain HTTP to any host is allowed).
    pub fn new(url: &str, insecure: bool) -> Result<Remote> {
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
        Ok(Remote(url.to_string()))
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.0
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
    Controller::new(remote.url(), client_token().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_insecure() {
        for ok in [
            "https://bakery.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(Remote::new(ok, false).is_ok(), "{ok}");
        }
        let e = Remote::new("http://bakery.example.com", false).unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert!(Remote::new("http://bakery.example.com", true).is_ok());
        assert!(Remote::new("http://localhost.example.com", false).is_err());
        assert!(Remote::new("ftp://x", true).is_err());
        assert!(Remote::new("https://u:p@x", false).is_err());
        assert!(Remote::new("bakery.example.com", false).is_err());
        for url in ["htp://user:hunter2@x", "http://x:hunter2@[::1"] {
            let e = Remote::new(url, false).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
