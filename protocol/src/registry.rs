//! Which registries are spoken to over plain HTTP.
//!
//! A registry on the loopback interface is plain HTTP by default, as Docker
//! treats `localhost`; any other needs to be listed in `INSECURE_REGISTRIES`.

/// Whether `host` (`name[:port]`) is reached over HTTP.
pub fn is_insecure(host: &str, listed: &[String]) -> bool {
    if listed.iter().any(|l| l == host) {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

/// Parses `INSECURE_REGISTRIES` (comma-separated hosts).
pub fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_http_others_only_when_listed() {
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:41234", &[]));
        assert!(!is_insecure("registry.example.com", &[]));
        assert!(is_insecure(
            "registry.lan:5000",
            &parse_list(" registry.lan:5000 ,x")
        ));
    }
}
