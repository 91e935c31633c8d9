//! bakery-core: what every part of bakery agrees on.
//!
//! Read top-down:
//!
//! * [`plan`] turns config.yaml and/or a compose file into a [`plan::Plan`]:
//!   every (service, arch) with a fully resolved, validated build spec.
//!   Its inputs are [`settings`] (the config model and merge rules) and
//!   [`compose`] (compose import and interpolation).
//! * [`context`] packs a build context as a deterministic archive that
//!   honours `.dockerignore`, so its SHA-256 can name it in object storage.
//! * [`error`] holds the located errors every user-facing failure becomes.
//!
//! Nothing here talks to a network: the client calls it before it contacts
//! anything, so bad input fails fast and nothing is left half-uploaded.

pub mod api;
pub mod arch;
pub mod compose;
pub mod context;
pub mod dockerfile;
pub mod error;
pub mod image_platform;
pub mod location;
pub mod plan;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod resources;
mod scalar;
pub mod settings;
pub mod validate;
mod yaml;

pub use arch::{Arch, Platform};
pub use error::{Diagnostic, Location, PlanError};
pub use plan::{ArchBuild, BuildSpec, InlineBuild, Plan, PlanOptions, ServicePlan};
