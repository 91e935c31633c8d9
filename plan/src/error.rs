//! Errors of the plan and context layers.
//!
//! Every error a user can cause carries the file, line and column it comes
//! from, plus a hint where one exists: CI logs are read by people who did not
//! write the config, so "what and where and what to do" has to fit in one
//! message.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a user's file, 1-based like every editor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as the user named it (or as it was found).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Location {
    /// The position `line`:`column` in `file`.
    pub fn new(file: &Path, line: usize, column: usize) -> Self {
        Location {
            file: file.to_path_buf(),
            line,
            column,
        }
    }
}

impl Location {
    /// A flag or variable of the command line: errors about it name the
    /// flag, with no line of a file to point at.
    pub fn command_line() -> Self {
        Location::new(Path::new(COMMAND_LINE), 0, 0)
    }
}

const COMMAND_LINE: &str = "command line";

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file == Path::new(COMMAND_LINE) {
            return f.write_str(COMMAND_LINE);
        }
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One thing wrong with the user's input, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong with the value there.
    pub message: String,
    /// What to do about it, when there is something better to say than the message does.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Why a build plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The cause is part of the message, not a chained source: binaries
    /// print chains, and a chained cause would be printed twice.
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A value in a file or a flag is wrong: located, with a hint where one helps.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// No file was named, and the repository has neither config.yaml nor a compose file.
    #[error("no build configuration found: looked for {looked_for}; pass --config or --compose")]
    NothingToBuild {
        /// The files looked for, and where.
        looked_for: String,
    },
    /// Options, flags or the environment ask for things that cannot go together (`--tag`
    /// with `--config`, two files in `COMPOSE_FILE`), or name a file that does not exist.
    #[error("{0}")]
    Conflict(String),
    /// `--services` names services the files do not define.
    #[error("unknown service{} {}; known services: {}", if .unknown.len() > 1 { "s" } else { "" }, .unknown.join(", "), .known.join(", "))]
    UnknownServices {
        /// The names asked for that are not defined.
        unknown: Vec<String>,
        /// Every service that is defined, to pick from.
        known: Vec<String>,
    },
}

impl PlanError {
    pub(crate) fn invalid(location: Location, message: impl Into<String>) -> Self {
        PlanError::Invalid(Box::new(Diagnostic {
            location,
            message: message.into(),
            hint: None,
        }))
    }

    pub(crate) fn invalid_with_hint(
        location: Location,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        PlanError::Invalid(Box::new(Diagnostic {
            location,
            message: message.into(),
            hint: Some(hint.into()),
        }))
    }

    /// The located diagnostic, when the error is about a place in a file.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            PlanError::Invalid(d) => Some(d),
            _ => None,
        }
    }
}

/// The closest candidate to a misspelt name, if it is close enough to be a
/// plausible typo rather than a different word.
pub fn did_you_mean<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(given, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
