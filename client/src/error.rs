//! What a call to the controller can come to.

use reqwest::StatusCode;

/// Why a call to the controller failed. `what` names the call in the
/// words a user would use ("submitting the build").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: the connection was refused or reset, or the answer did
    /// not come in time. Worth another try.
    #[error("{what}: cannot reach the controller at {base}: {message}")]
    Unreachable {
        /// The call, in a user's words ("submitting the build").
        what: &'static str,
        /// The controller's base URL the call was sent to.
        base: String,
        /// Why the call got no answer (the transport error and its causes).
        message: String,
    },
    /// A 5xx answer (a controller restarting, a journal slow to confirm).
    /// Worth another try.
    #[error("{what}: the controller answered {status}: {message}")]
    Unavailable {
        /// The call, in a user's words.
        what: &'static str,
        /// The 5xx status the controller answered.
        status: StatusCode,
        /// The controller's own error text (`{"error": …}`), or `no details`.
        message: String,
    },
    /// A 4xx answer: the request is wrong, or not allowed. Final: sending
    /// it again cannot change the answer.
    #[error("{what}: the controller answered {status}: {message}")]
    Refused {
        /// The call, in a user's words.
        what: &'static str,
        /// The 4xx status the controller answered.
        status: StatusCode,
        /// The controller's own error text (`{"error": …}`), or `no details`.
        message: String,
    },
    /// An answer that does not parse as the protocol says it should (a
    /// proxy's error page, a controller of another version).
    #[error("{what}: the controller's answer does not parse: {message}")]
    Decode {
        /// The call, in a user's words.
        what: &'static str,
        /// Why the answer does not parse (the JSON error, or a failed read of the body).
        message: String,
    },
    /// Something on this side: a context file that cannot be read. (The
    /// cause is in the message rather than chained: binaries print chains.)
    #[error("{what}: {cause}")]
    Local {
        /// The call, in a user's words.
        what: &'static str,
        /// The error reading the local file.
        cause: std::io::Error,
    },
}

impl Error {
    /// Whether another try could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Unavailable { .. })
    }

    /// The HTTP status the controller answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Refused { status, .. } | Error::Unavailable { status, .. } => Some(*status),
            _ => None,
        }
    }
}
