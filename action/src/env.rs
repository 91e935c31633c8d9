//! The client's environment, read once: every variable the CLI reads
//! (CI systems' own, registry logins, bakery's settings) goes through
//! [`ClientEnv`], not `std::env`, so a reader can be handed a map in a test
//! and the process environment is read in one place.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::OnceLock;

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct ClientEnv {
    vars: HashMap<OsString, OsString>,
}

impl ClientEnv {
    /// The variables given (the process environment, or a test's).
    pub fn from_vars<K: Into<OsString>, V: Into<OsString>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> ClientEnv {
        ClientEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The process environment, read at the first call.
    pub fn current() -> &'static ClientEnv {
        static CURRENT: OnceLock<ClientEnv> = OnceLock::new();
        CURRENT.get_or_init(|| ClientEnv::from_vars(std::env::vars_os()))
    }

    /// A variable as text, unset when empty (CI systems export empty
    /// variables freely) or not UTF-8.
    pub fn var(&self, name: &str) -> Option<String> {
        self.var_os(name).and_then(OsStr::to_str).map(String::from)
    }

    /// A variable as the system holds it (a path need not be UTF-8),
    /// unset when empty.
    pub fn var_os(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .get(OsStr::new(name))
            .map(OsString::as_os_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether `name` is set at all, empty or not (buildx takes an empty
    /// variable as a secret's value).
    pub fn is_set(&self, name: &str) -> bool {
        self.vars.contains_key(OsStr::new(name))
    }

    /// Every variable that is text: for compose's `${VAR}` interpolation
    /// and the registry login lookups, which take a map.
    pub fn text_vars(&self) -> HashMap<String, String> {
        self.vars
            .iter()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v.to_str()?.to_string())))
            .collect()
    }

    /// INSECURE_REGISTRIES: registries reached over plain HTTP besides
    /// loopback ones.
    pub fn insecure_registries(&self) -> Vec<String> {
        bakery_protocol::registry::parse_list(&self.var("INSECURE_REGISTRIES").unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lower-case names: the `.env.example` check reads upper-case ones
    // as variables the product reads.
    #[test]
    fn empty_values_are_unset_and_paths_need_not_be_text() {
        use std::os::unix::ffi::OsStringExt;
        let env = ClientEnv::from_vars([
            (OsString::from("a"), OsString::from("1")),
            (OsString::from("empty"), OsString::new()),
            (
                OsString::from("bytes"),
                OsString::from_vec(vec![0x2f, 0xff]),
            ),
            (
                OsString::from("INSECURE_REGISTRIES"),
                OsString::from("r1:5000, r2"),
            ),
        ]);
        assert_eq!(env.var("a").as_deref(), Some("1"));
        assert_eq!(env.var("empty"), None);
        assert_eq!(env.var_os("empty"), None);
        assert!(env.is_set("empty") && !env.is_set("unset"));
        assert_eq!(env.var("bytes"), None, "not text");
        assert!(env.var_os("bytes").is_some(), "but a path");
        assert_eq!(env.var("unset"), None);
        assert_eq!(env.insecure_registries(), ["r1:5000", "r2"]);
        assert!(!env.text_vars().contains_key("bytes"));
    }
}
