//! config.yaml: its two sections and the checks that need the whole file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use bakery_protocol::Arch;

use super::layer::{Layer, LayerKind};
use crate::error::{Location, PlanError};
use crate::location::Locations;
use crate::settings::Settings;

/// config.yaml as read from disk.
pub(super) struct ConfigFile {
    pub(super) path: PathBuf,
    pub(super) locations: Locations,
    pub(super) global: Settings,
    pub(super) bake: Vec<Settings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: Settings,
    #[serde(default)]
    bake: Vec<Settings>,
}

impl ConfigFile {
    /// Reads config.yaml; `env` fills `${VAR}` in `kaniko-credentials`.
    pub(super) fn load(
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<ConfigFile, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let raw: RawConfig = crate::yaml::parse(path, &text)?;
        let mut file = ConfigFile {
            path: path.to_path_buf(),
            locations: Locations::index(&text),
            global: raw.global,
            bake: raw.bake,
        };
        file.check_bake_arches()?;
        file.interpolate_credentials(env)?;
        Ok(file)
    }

    /// `${VAR}` (compose's syntax, `$$` for a literal `$`) in every
    /// `kaniko-credentials` value, so that a password is a CI variable
    /// rather than text in the repository. An unset variable is an error
    /// at its place: an empty password would only fail at the push.
    fn interpolate_credentials(&mut self, env: &HashMap<String, String>) -> Result<(), PlanError> {
        let mut sections: Vec<(String, &mut Settings)> = vec![("global".into(), &mut self.global)];
        sections.extend(
            self.bake
                .iter_mut()
                .enumerate()
                .map(|(i, s)| (format!("bake[{i}]"), s)),
        );
        for (prefix, settings) in sections {
            let Some(credentials) = settings.kaniko_credentials.as_mut() else {
                continue;
            };
            for (i, c) in credentials.iter_mut().enumerate() {
                let at = |field: &str| {
                    let pos = self
                        .locations
                        .nearest(&format!("{prefix}.kaniko-credentials[{i}].{field}"));
                    Location::new(&self.path, pos.line, pos.column)
                };
                c.registry = expand(&c.registry, env, || at("registry"))?;
                c.username = expand(&c.username, env, || at("username"))?;
                let password = expand(c.password.expose(), env, || at("password"))?;
                c.password = bakery_protocol::spec::Secret::new(password);
            }
        }
        Ok(())
    }

    fn location_of(&self, path: &str) -> Location {
        let pos = self.locations.nearest(path);
        Location::new(&self.path, pos.line, pos.column)
    }

    /// Each bake entry names one arch, and no arch twice.
    fn check_bake_arches(&self) -> Result<(), PlanError> {
        let mut seen: Vec<Arch> = Vec::new();
        for (i, entry) in self.bake.iter().enumerate() {
            let Some(arch) = entry.arch else {
                return Err(PlanError::invalid_with_hint(
                    self.location_of(&format!("bake[{i}]")),
                    format!("bake entry {} has no `arch`", i + 1),
                    "add `arch: amd64` or `arch: arm64` to the entry",
                ));
            };
            if seen.contains(&arch) {
                return Err(PlanError::invalid_with_hint(
                    self.location_of(&format!("bake[{i}].arch")),
                    format!("arch `{arch}` has two bake entries"),
                    "merge them into one entry",
                ));
            }
            seen.push(arch);
        }
        Ok(())
    }

    pub(super) fn bake_for(&self, arch: Arch) -> Option<(usize, &Settings)> {
        self.bake
            .iter()
            .enumerate()
            .find(|(_, b)| b.arch == Some(arch))
    }

    pub(super) fn layer(&self, settings: &Settings, prefix: String) -> Layer<'_> {
        Layer {
            settings: settings.clone(),
            file: &self.path,
            locations: &self.locations,
            prefix,
            kind: LayerKind::Config,
            flags: false,
        }
    }
}

/// One interpolated value; errors name the variable, never the value.
fn expand(
    value: &str,
    env: &HashMap<String, String>,
    at: impl Fn() -> Location,
) -> Result<String, PlanError> {
    if !value.contains('$') {
        return Ok(value.to_string());
    }
    let mut unset = Vec::new();
    let out = crate::compose::interpolate(value, env, &mut unset).map_err(|(_, _, message)| {
        PlanError::invalid(at(), format!("kaniko-credentials: {message}"))
    })?;
    if let Some((name, _, _)) = unset.first() {
        return Err(PlanError::invalid_with_hint(
            at(),
            format!("kaniko-credentials: ${{{name}}} is not set"),
            "set it in the job's environment (a masked CI/CD variable or a secret), or write $$ for a literal $",
        ));
    }
    Ok(out)
}
