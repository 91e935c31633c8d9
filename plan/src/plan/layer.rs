//! Settings layers, each remembering the file and YAML path it came from,
//! so that an error about a merged value points at the layer that set it.

use std::path::Path;

use crate::error::Location;
use crate::location::Locations;
use crate::settings::Settings;

/// The fields whose origin an error may need to point at.
#[derive(Clone, Copy)]
pub(super) enum Field {
    ContextPath,
    Dockerfile,
    Destination,
    CompressionLevel,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum LayerKind {
    Config,
    Compose,
}

/// One layer of settings and the place in a file it came from.
pub(super) struct Layer<'a> {
    pub(super) settings: Settings,
    pub(super) file: &'a Path,
    pub(super) locations: &'a Locations,
    pub(super) prefix: String,
    pub(super) kind: LayerKind,
    /// The command line's flags, not a file: errors about the values they
    /// set point at the command line.
    pub(super) flags: bool,
}

impl Layer<'_> {
    pub(super) fn has(&self, field: Field) -> bool {
        let k = self.settings.kaniko.as_ref();
        match field {
            Field::ContextPath => k.and_then(|k| k.context_path.as_ref()).is_some(),
            Field::Dockerfile => k.and_then(|k| k.dockerfile.as_ref()).is_some(),
            Field::Destination => k.and_then(|k| k.destination.as_ref()).is_some(),
            Field::CompressionLevel => k.and_then(|k| k.compression_level).is_some(),
        }
    }

    pub(super) fn yaml_path(&self, field: Field) -> String {
        let suffix = match (self.kind, field) {
            (LayerKind::Config, Field::ContextPath) => "kaniko.context-path",
            (LayerKind::Config, Field::Dockerfile) => "kaniko.dockerfile",
            (LayerKind::Config, Field::Destination) => "kaniko.destination",
            (LayerKind::Compose, Field::ContextPath) => "build.context",
            (LayerKind::Compose, Field::Dockerfile) => "build.dockerfile",
            (LayerKind::Compose, Field::Destination) => "image",
            (_, Field::CompressionLevel) => "kaniko.compression-level",
        };
        format!("{}.{suffix}", self.prefix)
    }

    /// The YAML path of this layer's `i`th secret.
    pub(super) fn secret_path(&self, i: usize) -> String {
        match self.kind {
            LayerKind::Config => format!("{}.secrets[{i}]", self.prefix),
            LayerKind::Compose => format!("{}.build.secrets[{i}]", self.prefix),
        }
    }

    pub(super) fn is_bake(&self) -> bool {
        self.kind == LayerKind::Config && self.prefix.starts_with("bake[")
    }

    pub(super) fn location(&self, path: &str) -> Location {
        let pos = self.locations.nearest(path);
        Location::new(self.file, pos.line, pos.column)
    }
}

/// Where a merged value came from: the most specific layer that set it, or
/// (when none did) the most specific layer, where it should be added.
pub(super) fn origin(layers: &[Layer], field: Field) -> Location {
    if let Some(layer) = layers.iter().rev().find(|l| l.has(field)) {
        layer.location(&layer.yaml_path(field))
    } else {
        let top = layers.last().expect("at least one layer");
        top.location(&top.prefix)
    }
}
