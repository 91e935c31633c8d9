//! bakery-protocol: what the client, the controller and the agent say to
//! each other, and nothing else (no YAML, compose, archives or cloud).
//!
//! Read top-down:
//!
//! * [`api`]: the controller's HTTP API, as types every party compiles
//!   against, so a change breaks a build rather than a run.
//! * [`spec`]: [`BuildSpec`], what one agent builds, as the protocol
//!   defines it (the client's planner converts its YAML model into it).
//! * [`context_key`]: build contexts by content address ([`ContextKey`],
//!   [`Codec`]).
//! * [`arch`], [`resources`]: architectures, platforms, CPU and memory.
//! * [`reference`], [`registry`], [`image_platform`]: image references,
//!   which registries are plain HTTP, and an image's platform.
//! * [`annotations`]: OCI annotations by level (manifest, index, descriptor).
//! * [`provenance`]: the SLSA provenance a build asks for, and its source.
//! * [`validate`]: what the controller checks of requests and reports.
//! * [`object`]: JSON objects only where a struct crosses the wire (serde
//!   would also read an array).
//! * [`redact`]: keeping secrets out of logs.
//! * [`error_chain`]: an error and its causes on one line, for messages.
//! * [`dockerfile`]: which images a Dockerfile pulls: the client checks
//!   them before a build, the agent reports them after.
//! * [`process_group`]: whether a process group still has a process, for
//!   the agent and the local platform that kill them.

pub mod annotations;
pub mod api;
pub mod arch;
pub mod context_key;
pub mod dockerfile;
pub mod error_chain;
pub mod image_platform;
pub mod object;
pub mod process_group;
pub mod provenance;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod resources;
pub mod spec;
pub mod validate;

pub use arch::{Arch, Platform};
pub use context_key::{Codec, ContextKey};
pub use spec::{BuildSpec, Cache, Compression, Credential, Secret, SnapshotMode};
