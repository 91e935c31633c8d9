//! Build secrets as users name them: buildx's `--secret` syntax
//! (`id=ID[,src=PATH|,env=VAR]`), config.yaml's `secrets:` entries, and
//! compose's `build.secrets` with top-level `secrets:`. Reading one gives
//! the protocol's [`BuildSecret`]; a missing file or variable is an error
//! that names the id, never the value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bakery_protocol::spec::{BuildSecret, Secret};
use bakery_protocol::validate::MAX_SECRET_BYTES;
use serde::{de, Deserialize, Deserializer, Serialize};

/// Where one secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    /// The id `RUN --mount=type=secret,id=…` names.
    pub id: String,
    /// Where the value is read from.
    pub source: SecretSource,
}

/// Where a secret's value comes from: a file or a variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSource {
    /// A file, relative to the file that names it (or the working
    /// directory, on the command line).
    File(PathBuf),
    /// An environment variable of the client.
    Env(String),
}

impl SecretRef {
    /// buildx's `--secret` value: `id=ID` with `src=`/`source=` (a file),
    /// `env=` (a variable) and optionally `type=file|env`. With neither
    /// source, the variable named like the id is used when `is_set` says it
    /// is set, as buildx does, else the file named like it.
    pub fn parse(spec: &str, is_set: impl Fn(&str) -> bool) -> Result<SecretRef, String> {
        if spec.matches("id=").count() > 1 {
            return Err(format!(
                "`{spec}` holds several secrets: give one per --secret, or one per line of BAKERY_SECRETS"
            ));
        }
        let (mut id, mut src, mut var, mut kind) = (None, None, None, None);
        for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("`{part}` is not key=value (id=ID,src=PATH or id=ID,env=VAR)")
            })?;
            match k.trim() {
                "id" => id = Some(v.trim().to_string()),
                "src" | "source" => src = Some(v.to_string()),
                "env" => var = Some(v.trim().to_string()),
                "type" if v == "file" || v == "env" => kind = Some(v.to_string()),
                other => return Err(format!("unknown key `{other}` (id, src, env, type)")),
            }
        }
        let id = id.filter(|i| !i.is_empty()).ok_or("no id= given")?;
        if id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(format!(
                "secret id `{id}`: use 1 to 128 letters, digits, `_`, `-` or `.`"
            ));
        }
        let source = match (src, var, kind.as_deref()) {
            (Some(_), Some(_), _) => {
                return Err(format!("secret `{id}`: give src= or env=, not both"))
            }
            (Some(p), None, _) => SecretSource::File(p.into()),
            (None, Some(v), _) => SecretSource::Env(v),
            (None, None, Some("file")) => SecretSource::File(id.clone().into()),
            (None, None, Some(_)) => SecretSource::Env(id.clone()),
            (None, None, None) if is_set(&id) => SecretSource::Env(id.clone()),
            (None, None, None) => SecretSource::File(id.clone().into()),
        };
        Ok(SecretRef { id, source })
    }

    /// The file the value comes from, if it is one.
    pub fn file(&self, base: &Path) -> Option<PathBuf> {
        match &self.source {
            SecretSource::File(p) => Some(base.join(p)),
            SecretSource::Env(_) => None,
        }
    }

    /// The value, a file's relative to `base`. The error says what is
    /// missing and what to do, and never holds the value.
    pub fn read(&self, base: &Path, env: &HashMap<String, String>) -> Result<BuildSecret, String> {
        let value = match &self.source {
            SecretSource::Env(var) => env.get(var).cloned().ok_or_else(|| {
                format!("secret `{}`: the variable {var} is not set: set it in the job's environment (a masked CI/CD variable or a secret)", self.id)
            })?,
            SecretSource::File(path) if path == Path::new(&self.id) && !base.join(path).exists() => {
                // `id=ID` alone: the variable was not set, and no file is.
                return Err(format!(
                    "secret `{id}`: the variable {id} is not set and there is no file {}: set {id}, or give env=VAR or src=PATH",
                    base.join(path).display(),
                    id = self.id
                ));
            }
            SecretSource::File(path) => {
                let path = base.join(path);
                let cannot = |e: &dyn std::fmt::Display| {
                    format!("secret `{}`: cannot read {}: {e}", self.id, path.display())
                };
                // A FIFO would block forever and /dev/zero never end.
                let meta = std::fs::metadata(&path).map_err(|e| cannot(&e))?;
                if !meta.is_file() {
                    return Err(cannot(&"not a regular file"));
                }
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(
                        std::fs::File::open(&path).map_err(|e| cannot(&e))?,
                        MAX_SECRET_BYTES as u64 + 1,
                    ),
                    &mut bytes,
                )
                .map_err(|e| cannot(&e))?;
                String::from_utf8(bytes).map_err(|_| {
                    format!("secret `{}`: {} is not UTF-8 text", self.id, path.display())
                })?
            }
        };
        if value.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "secret `{}` is over {MAX_SECRET_BYTES} bytes: a secret is a key or a token, not data",
                self.id
            ));
        }
        Ok(BuildSecret {
            id: self.id.clone(),
            value: Secret::new(value),
        })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::File(p) => write!(f, "id={},src={}", self.id, p.display()),
            SecretSource::Env(v) => write!(f, "id={},env={v}", self.id),
        }
    }
}

/// config.yaml's entries: `{id, src}` / `{id, env}` maps, or a buildx
/// string. Without a source the id names a variable (the form CI secrets
/// take): a file must be named.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Map(MapForm),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MapForm {
            id: String,
            src: Option<String>,
            env: Option<String>,
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => SecretRef::parse(&text, |_| true).map_err(de::Error::custom),
            Raw::Map(m) => {
                let source = match (m.src, m.env) {
                    (Some(p), None) => SecretSource::File(p.into()),
                    (None, Some(v)) => SecretSource::Env(v),
                    (None, None) => SecretSource::Env(m.id.clone()),
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom(format!(
                            "secret `{}`: give src or env, not both",
                            m.id
                        )))
                    }
                };
                Ok(SecretRef { id: m.id, source })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_syntax() {
        let p = |s: &str| SecretRef::parse(s, |v| v == "TOKEN");
        assert_eq!(
            p("id=npm,src=.npmrc").unwrap().source,
            SecretSource::File(".npmrc".into())
        );
        assert_eq!(
            p("id=a,env=TOKEN").unwrap().source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            p("id=TOKEN").unwrap().source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            p("id=key").unwrap().source,
            SecretSource::File("key".into())
        );
        assert_eq!(
            p("type=env,id=x").unwrap().source,
            SecretSource::Env("x".into())
        );
        assert!(p("src=a").unwrap_err().contains("no id"));
        assert!(p("id=a,src=b,env=C").unwrap_err().contains("not both"));
        assert!(p("id=a,mode=0400").unwrap_err().contains("unknown key"));
        assert!(p("id=npm,src=npmrc id=one,env=S1")
            .unwrap_err()
            .contains("one per line"));
    }

    #[test]
    fn read_names_the_id_and_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "s3cret-value\n").unwrap();
        let env = HashMap::new();
        let parse = |s: &str| SecretRef::parse(s, |_| false).unwrap();
        let file = parse("id=tok,src=tok");
        assert_eq!(
            file.read(dir.path(), &env).unwrap().value.expose(),
            "s3cret-value\n"
        );
        let e = parse("id=TOKEN").read(dir.path(), &env).unwrap_err();
        assert!(
            e.contains("the variable TOKEN is not set and there is no file"),
            "{e}"
        );
        let missing = parse("id=gone,src=nope");
        let e = missing.read(dir.path(), &env).unwrap_err();
        assert!(e.contains("secret `gone`") && e.contains("nope"), "{e}");
        let fifo = parse("id=z,src=/dev/zero");
        assert!(fifo
            .read(dir.path(), &env)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(SecretRef::parse("id=a b", |_| false)
            .unwrap_err()
            .contains("letters, digits"));
        let var = parse("id=x,env=UNSET_VAR");
        assert!(var
            .read(dir.path(), &env)
            .unwrap_err()
            .contains("UNSET_VAR is not set"));
    }
}
