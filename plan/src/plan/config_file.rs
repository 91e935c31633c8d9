//! config.yaml: its two sections and the checks that need the whole file.

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
    pub(super) fn load(path: &Path) -> Result<ConfigFile, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let raw: RawConfig = crate::yaml::parse(path, &text)?;
        let file = ConfigFile {
            path: path.to_path_buf(),
            locations: Locations::index(&text),
            global: raw.global,
            bake: raw.bake,
        };
        file.check_bake_arches()?;
        Ok(file)
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
        }
    }
}
