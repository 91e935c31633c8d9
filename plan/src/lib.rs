//! bakery-plan: what to build, from config.yaml and/or a compose file.
//!
//! Read top-down:
//!
//! * [`plan`] turns config.yaml and/or a compose file into a [`Plan`]:
//!   every (service, arch) with a fully resolved, validated build spec (the
//!   protocol's [`bakery_protocol::BuildSpec`]). Its inputs are [`settings`]
//!   (the config model and merge rules) and [`compose`] (compose import and
//!   interpolation).
//! * [`error`] holds the located errors every user-facing failure becomes;
//!   [`location`] finds the line and column of any value in a YAML file;
//!   `yaml` parses typed YAML with those errors, `scalar` reads YAML
//!   scalars as text (and checks durations), `secrets` reads build secrets
//!   as buildx names them.
//!
//! Nothing here talks to a network: the client calls it before it contacts
//! anything, so bad input fails fast and nothing is left half-uploaded.

pub mod compose;
pub mod error;
pub mod location;
pub mod plan;
mod scalar;
pub mod secrets;
pub mod settings;
mod yaml;

pub use error::{Diagnostic, Location, PlanError};
pub use plan::{
    output_key, output_keys, ArchBuild, InlineBuild, NamedSource, Overrides, Plan, PlanOptions,
    ServicePlan,
};
