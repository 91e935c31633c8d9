//! A typed client for the bakery controller's HTTP API.
//!
//! Three programs talk to the controller: the `bakery` CI client, the
//! agent, and the load generator. They share this crate, so the paths, the
//! event names, the error shapes and the retry policies are written once,
//! and a change to the protocol breaks their compile rather than a run.
//!
//! - [`Controller`]: the endpoints a CI client uses (info, contexts,
//!   builds, their logs), with the client token.
//! - [`AgentApi`]: the endpoints one agent uses for its task (spec,
//!   context, logs, result), with the task's own token.
//! - [`Error`]: what went wrong, typed: a refusal (4xx, final) is told apart
//!   from an unreachable or unavailable controller (worth retrying)
//!   without reading message text.
//!
//! Every call has a deadline; nothing here can wait forever on a
//! controller that accepts a connection and never answers.
//!
//! Modules: `builds` and `agent` hold those two clients, over `http` (the
//! deadlines, base URL and retries they share); `events` and `sse` decode a
//! log stream; `error` is [`Error`].

mod agent;
mod builds;
mod error;
mod events;
mod http;
mod sse;

pub use agent::{AgentApi, StreamOpen};
pub use builds::{Controller, FOLLOW_PATIENCE};
pub use error::Error;
pub use events::Event;
