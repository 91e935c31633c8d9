//! Which URLs keys may come from. An issuer is `https`, or plain `http` on
//! an exact loopback host (a test issuer on this machine); no URL carries
//! credentials. These are parsed, never compared as strings: a prefix test
//! took `http://localhost.example.com` and `http://localhost@127.0.0.2`
//! for loopback.

use url::{Host, Url};

/// An issuer URL as `OIDC_ISSUERS` gives it, checked.
pub(super) fn check_issuer(given: &str) -> Result<Url, String> {
    // Messages never repeat a password written into the URL.
    let issuer = bakery_protocol::redact::without_userinfo(given);
    let url =
        Url::parse(given).map_err(|e| format!("OIDC_ISSUERS: `{issuer}` is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "OIDC_ISSUERS: `{issuer}` has a query or fragment, which an issuer URL never has"
        ));
    }
    if has_userinfo(&url) {
        return Err(format!(
            "OIDC_ISSUERS: `{issuer}` carries a user name or password (`user@`); write the issuer's URL as its tokens' `iss` claim says"
        ));
    }
    if url.scheme() == "https" || is_plain_loopback(&url) {
        Ok(url)
    } else {
        Err(format!(
            "OIDC_ISSUERS: `{issuer}` must be an https URL (plain http only on 127.0.0.1, [::1] or localhost)"
        ))
    }
}

/// Whether keys of an issuer at `issuer` may be fetched from `url` (its
/// discovery document's `jwks_uri`, or where a fetch is redirected): https,
/// or loopback http for a loopback http issuer; never with credentials.
pub(super) fn may_fetch(issuer: &Url, url: &Url) -> bool {
    !has_userinfo(url)
        && (url.scheme() == "https" || (is_plain_loopback(issuer) && is_plain_loopback(url)))
}

fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Plain http to an exact loopback host, without userinfo.
fn is_plain_loopback(url: &Url) -> bool {
    url.scheme() == "http"
        && !has_userinfo(url)
        && match url.host() {
            Some(Host::Domain(d)) => d == "localhost",
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_an_exact_loopback_host() {
        for ok in [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.example.com/",
            "http://127.0.0.1:8080",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(check_issuer(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://issuer.example.com", "must be an https URL"),
            ("http://localhost.example.com", "must be an https URL"),
            ("http://localhost@127.0.0.2:8080", "user name"),
            ("http://127.0.0.1:80@203.0.113.7", "user name"),
            ("https://user:pw@issuer.example.com", "user name"),
            (
                "https://user:secretpw@issuer.example.com",
                "https://***@issuer",
            ),
            ("http://10.0.0.1", "must be an https URL"),
            ("https://issuer.example.com/?x=1", "query"),
            ("issuer.example.com", "not a URL"),
        ] {
            let e = check_issuer(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secretpw"), "{e}");
        }
    }

    #[test]
    fn keys_of_an_https_issuer_come_over_https() {
        let https = Url::parse("https://issuer.example.com").unwrap();
        let local = Url::parse("http://127.0.0.1:8080").unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(may_fetch(&https, &url("https://keys.example.com/jwks")));
        assert!(!may_fetch(&https, &url("http://keys.example.com/jwks")));
        assert!(!may_fetch(&https, &url("http://127.0.0.1:8080/jwks")));
        assert!(may_fetch(&local, &url("http://127.0.0.1:8080/jwks")));
        assert!(!may_fetch(&local, &url("http://203.0.113.7/jwks")));
        assert!(!may_fetch(
            &https,
            &url("https://a:b@keys.example.com/jwks")
        ));
    }
}
