//! What the controller checks of what crosses the wire.
//!
//! The client checks a plan before it sends it, but any holder of a client
//! token can send a build request without the client, and the build's own
//! code (a pre-script, a RUN step) can read its agent's task token and
//! report anything. So the controller checks both again: a build request
//! before anything is saved or started ([`check_create`]), and every value
//! an agent reports before it reaches a status, a log or a CI report
//! ([`check_digest`], [`clean_error`], [`clean_line`]).

use std::path::{Component, Path};
use std::sync::LazyLock;

use regex::Regex;

use crate::api::CreateBuild;
use crate::reference::ImageRef;
use crate::spec::BuildSpec;
use crate::spec::Compression;

/// Largest `POST /v1/builds` body accepted (413 beyond): a build request is
/// a few KiB; a large one would only stall the journal that saves it.
pub const MAX_CREATE_BYTES: usize = 1 << 20;

/// Longest service name: it becomes log prefixes, status names and file
/// names in CI.
pub const MAX_SERVICE_NAME: usize = 128;

/// Longest error text an agent may report; longer text is cut.
pub const MAX_ERROR_CHARS: usize = 4096;

/// Longest pre- or post-script.
pub const MAX_SCRIPT_BYTES: usize = 64 << 10;

/// Longest build-arg, label or env value: the kernel refuses a single
/// environment string past 128 KiB (`MAX_ARG_STRLEN`), and build args
/// reach the builder through its environment.
pub const MAX_VALUE_BYTES: usize = 128 << 10;

/// Longest build-arg, label or env name.
pub const MAX_NAME_BYTES: usize = 256;

static SERVICE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]*$").expect("valid regex"));
static DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sha256:[0-9a-f]{64}$").expect("valid regex"));
static PLATFORM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]{1,16}/[a-z0-9_]{1,16}(/[a-z0-9]{1,8})?$").expect("valid regex")
});

/// A request field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Where in the request, e.g. `tasks[1].spec.dockerfile`.
    pub field: String,
    /// Why the value is refused, in words meant for the person who wrote it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a build request as the controller receives it.
pub fn check_create(request: &CreateBuild) -> Result<(), Invalid> {
    check_service(&request.service)?;
    if let Some(provenance) = &request.provenance {
        check_provenance(provenance)?;
    }
    check_annotations(&request.index_annotations, "index_annotations")?;
    check_annotations(&request.descriptor_annotations, "descriptor_annotations")?;
    if request.tasks.is_empty() {
        return Err(invalid("tasks", "a build needs at least one task"));
    }
    let destination = match &request.destination {
        Some(d) => Some(tag_reference("destination", d)?),
        None => None,
    };
    for (i, tag) in request.tags.iter().enumerate() {
        let field = format!("tags[{i}]");
        // A tag may be in another repository: the controller copies the
        // per-arch images there before writing the index.
        tag_reference(&field, tag)?;
        if destination.is_none() {
            return Err(invalid(field, "extra tags need a destination"));
        }
    }
    for (i, task) in request.tasks.iter().enumerate() {
        let at = |f: &str| format!("tasks[{i}].{f}");
        if request.tasks[..i].iter().any(|o| o.arch == task.arch) {
            return Err(invalid(
                at("arch"),
                format!("arch {} appears twice", task.arch),
            ));
        }
        match &task.push {
            Some(push) => {
                tag_reference(&at("push"), push)?;
            }
            None if !task.spec.no_push => {
                return Err(invalid(
                    at("push"),
                    format!("the {} task has no push destination", task.arch),
                ))
            }
            None => {}
        }
        check_spec(&task.spec, &at("spec"))?;
        let platform = &task.spec.custom_platform;
        if platform
            .split('/')
            .take(2)
            .ne(task.arch.platform().split('/'))
        {
            return Err(invalid(
                at("spec.custom_platform"),
                format!(
                    "`{}` is not a platform of the {} task: use {} (or a variant of it)",
                    shown(platform),
                    task.arch,
                    task.arch.platform()
                ),
            ));
        }
    }
    Ok(())
}

/// Longest field of a provenance request's source (a URL or a workflow ref).
pub const MAX_SOURCE_CHARS: usize = 2048;

/// The source fields end up in an attestation that tools parse: short,
/// printable, one line.
fn check_provenance(provenance: &crate::provenance::Provenance) -> Result<(), Invalid> {
    for (name, value) in provenance.source.fields() {
        let Some(value) = value else { continue };
        if value.is_empty()
            || value.chars().count() > MAX_SOURCE_CHARS
            || value.chars().any(char::is_control)
        {
            return Err(invalid(
                format!("provenance.source.{name}"),
                format!(
                    "`{}` is not a source description: 1 to {MAX_SOURCE_CHARS} printable characters",
                    shown(value)
                ),
            ));
        }
    }
    Ok(())
}

fn check_service(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.chars().count() > MAX_SERVICE_NAME || !SERVICE.is_match(name) {
        return Err(invalid(
            "service",
            format!(
                "`{}` is not a service name: 1 to {MAX_SERVICE_NAME} letters, digits, `.`, `_` or `-`, starting with a letter or digit",
                shown(name)
            ),
        ));
    }
    Ok(())
}

/// A tag reference (never a digest), as it will be pushed to.
fn tag_reference(field: &str, text: &str) -> Result<ImageRef, Invalid> {
    if text.trim() != text || text.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("`{}` has spaces or control characters", shown(text)),
        ));
    }
    ImageRef::parse(text).map_err(|e| invalid(field, e))
}

/// Checks one task's spec; `at` prefixes the field names (`spec` gives
/// `spec.build_args.X`). The planner runs it too, so that `bakery plan`
/// refuses, with the file and line, what the controller would.
pub fn check_spec(spec: &BuildSpec, at: &str) -> Result<(), Invalid> {
    let f = |name: &str| format!("{at}.{name}");
    check_relative_path(&f("dockerfile"), &spec.dockerfile)?;
    if spec.dockerfile_beside {
        let parts: Vec<&str> = spec.dockerfile.split('/').collect();
        if parts.len() != 2 || parts[0] != crate::spec::DOCKERFILE_BESIDE {
            return Err(invalid(
                f("dockerfile"),
                format!(
                    "`{}`: a Dockerfile sent beside the context is `{}/<name>`",
                    shown(&spec.dockerfile),
                    crate::spec::DOCKERFILE_BESIDE
                ),
            ));
        }
    }
    if !PLATFORM.is_match(&spec.custom_platform) {
        return Err(invalid(
            f("custom_platform"),
            format!(
                "`{}` is not a platform like linux/amd64 or linux/arm64/v8",
                shown(&spec.custom_platform)
            ),
        ));
    }
    if let Some(level) = spec.compression_level {
        let codec = spec.compression.unwrap_or(Compression::Gzip);
        if level == 0 || level > codec.max_level() {
            return Err(invalid(
                f("compression_level"),
                format!(
                    "{level} is out of range for {codec}: 1 to {}",
                    codec.max_level()
                ),
            ));
        }
    }
    for (name, script) in [
        ("pre_script", &spec.pre_script),
        ("post_script", &spec.post_script),
    ] {
        if let Some(s) = script {
            if s.len() > MAX_SCRIPT_BYTES || s.contains('\0') {
                return Err(invalid(
                    f(name),
                    format!("a script must be under {MAX_SCRIPT_BYTES} bytes, without NUL"),
                ));
            }
        }
    }
    check_maps(spec, at)?;
    for (i, c) in spec.credentials.iter().enumerate() {
        let field = format!("{}[{i}]", f("credentials"));
        if c.registry.is_empty() || !one_line(&c.registry) || !one_line(&c.username) {
            return Err(invalid(
                field,
                "registry and username are single lines of text",
            ));
        }
        if c.password.expose().contains('\0') {
            return Err(invalid(field, "a password cannot contain NUL"));
        }
    }
    check_secrets(&spec.secrets, &format!("{at}.secrets"))?;
    check_secrets(&spec.ssh, &format!("{at}.ssh"))?;
    check_contexts(spec, at)?;
    check_words(spec, at)
}

/// Named build contexts: names a Dockerfile can say (`FROM <name>`), and
/// images that parse as references.
fn check_contexts(spec: &BuildSpec, at: &str) -> Result<(), Invalid> {
    if spec.build_contexts.len() > MAX_SECRETS {
        return Err(invalid(
            format!("{at}.build_contexts"),
            format!("at most {MAX_SECRETS} build contexts"),
        ));
    }
    for (name, context) in &spec.build_contexts {
        let field = format!("{at}.build_contexts.{}", shown(name));
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            return Err(invalid(
                field,
                "a build context name is 1 to 128 letters, digits, `_`, `-`, `.`, `/` or `:`, starting with a letter or digit",
            ));
        }
        match context {
            crate::spec::NamedContext::DockerImage(image) => {
                if !one_line(image) || ImageRef::parse(image).is_err() {
                    return Err(invalid(
                        field,
                        format!("`{}` is not an image reference", shown(image)),
                    ));
                }
            }
            crate::spec::NamedContext::Archive(n) => {
                if *n as usize >= spec.build_contexts.len() {
                    return Err(invalid(field, "no such directory in the archive"));
                }
            }
        }
    }
    Ok(())
}

/// Largest build secret: Docker's limit for a secret (a key or a token
/// file, not a data set).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Most secrets one build takes.
pub const MAX_SECRETS: usize = 128;

/// Secret (and SSH key) ids are what `RUN --mount=type=secret,id=…` and
/// the builders' `--secret id=…` accept; each once. `at` names the list.
fn check_secrets(secrets: &[crate::spec::BuildSecret], at: &str) -> Result<(), Invalid> {
    if secrets.len() > MAX_SECRETS {
        return Err(invalid(at, format!("at most {MAX_SECRETS} secrets")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in secrets.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let id_ok = !s.id.is_empty()
            && s.id.len() <= 128
            && s.id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !id_ok {
            return Err(invalid(
                field,
                "a secret id is 1 to 128 letters, digits, `_`, `-` or `.`",
            ));
        }
        if !seen.insert(s.id.as_str()) {
            return Err(invalid(field, format!("secret `{}` is given twice", s.id)));
        }
        if s.value.expose().len() > MAX_SECRET_BYTES {
            return Err(invalid(
                field,
                format!("secret `{}` is over {MAX_SECRET_BYTES} bytes", s.id),
            ));
        }
    }
    Ok(())
}

/// Build args, labels, annotations and env: names a shell and a Dockerfile accept,
/// values of bounded size without NUL.
fn check_maps(spec: &BuildSpec, at: &str) -> Result<(), Invalid> {
    for (name, map) in [
        ("build_args", &spec.build_args),
        ("labels", &spec.labels),
        ("env", &spec.env),
    ] {
        check_map(map, &format!("{at}.{name}"))?;
    }
    check_annotations(&spec.annotations, &format!("{at}.annotations"))
}

/// Annotations: a map as [`check_map`] wants it, one-line values, and none
/// of the keys by which tools tell an attestation from an image
/// (`vnd.docker.reference.*`): an image annotated as one would be hidden.
fn check_annotations(
    map: &std::collections::BTreeMap<String, String>,
    at: &str,
) -> Result<(), Invalid> {
    check_map(map, at)?;
    for (k, v) in map {
        if k.starts_with(crate::annotations::RESERVED_PREFIX) {
            return Err(invalid(
                format!("{at}.{}", shown(k)),
                "`vnd.docker.reference.*` annotations are the attestations' own",
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(invalid(
                format!("{at}.{}", shown(k)),
                "an annotation value is one line without control characters",
            ));
        }
    }
    Ok(())
}

/// One map of names and values (see [`check_maps`]); `at` names it.
fn check_map(map: &std::collections::BTreeMap<String, String>, at: &str) -> Result<(), Invalid> {
    for (k, v) in map {
        if k.is_empty()
            || k.len() > MAX_NAME_BYTES
            || k.contains('=')
            || k.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                format!("{at}.{}", shown(k)),
                format!("a name must be 1 to {MAX_NAME_BYTES} bytes, without `=`, spaces or control characters"),
            ));
        }
        if v.contains('\0') || v.len() > MAX_VALUE_BYTES {
            return Err(invalid(
                format!("{at}.{k}"),
                format!("a value must be under {MAX_VALUE_BYTES} bytes, without NUL"),
            ));
        }
    }
    Ok(())
}

/// Values that end up as one argument or one line: no control characters.
fn check_words(spec: &BuildSpec, at: &str) -> Result<(), Invalid> {
    let f = |name: &str| format!("{at}.{name}");
    let words = spec
        .target
        .iter()
        .map(|t| ("target", t))
        .chain(spec.cache.repo.iter().map(|r| ("cache.repo", r)))
        .chain(spec.cache.ttl.iter().map(|t| ("cache.ttl", t)))
        .chain(spec.cache_from.iter().map(|c| ("cache_from", c)))
        .chain(spec.ignore_path.iter().map(|p| ("ignore_path", p)))
        .chain(spec.extra_flags.iter().map(|x| ("extra_flags", x)));
    for (name, value) in words {
        if !one_line(value) {
            return Err(invalid(
                f(name),
                format!("`{}` has control characters", shown(value)),
            ));
        }
    }
    Ok(())
}

/// A path inside the context: relative, without `..`, and plain text.
/// The agent checks again after extraction that it does not lead out of
/// the context through a symlink.
pub fn check_relative_path(field: &str, path: &str) -> Result<(), Invalid> {
    let p = Path::new(path);
    let bad = path.is_empty()
        || path.len() > 4096
        || path.chars().any(char::is_control)
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if bad {
        return Err(invalid(
            field,
            format!(
                "`{}` must be a path relative to the build context, without `..`",
                shown(path)
            ),
        ));
    }
    Ok(())
}

/// Plain single-line text: no control characters, and none of the Unicode
/// line and paragraph separators that some log viewers break lines at.
fn one_line(s: &str) -> bool {
    s.len() <= 4096
        && !s
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Checks a digest an agent reports as pushed.
pub fn check_digest(digest: &str) -> Result<(), String> {
    if DIGEST.is_match(digest) {
        Ok(())
    } else {
        Err(format!(
            "the agent reported `{}`, which is not a sha256 digest",
            shown(digest)
        ))
    }
}

/// Base image references an agent reports: at most 32, each one line of at
/// most 512 characters; others are dropped.
pub fn clean_bases(bases: &[String]) -> Vec<String> {
    bases
        .iter()
        .filter(|b| !b.is_empty() && b.len() <= 512 && !b.chars().any(char::is_control))
        .take(32)
        .cloned()
        .collect()
}

/// An error text an agent reports, made safe to show: control characters
/// become spaces (a newline could forge a log line or a CI variable) and
/// the text is cut at [`MAX_ERROR_CHARS`].
pub fn clean_error(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ERROR_CHARS)
        .map(|c| match c {
            '\u{2028}' | '\u{2029}' => ' ',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if text.chars().count() > MAX_ERROR_CHARS {
        out.push_str(" [cut]");
    }
    out
}

/// A log line an agent sends: one line. An embedded line break (which the
/// agent's own line splitting never produces) becomes a space, so that no
/// reader sees a line the agent did not print as one; other control
/// characters (colours, tabs, carriage returns) are the builder's and stay.
pub fn clean_line(line: &str) -> std::borrow::Cow<'_, str> {
    // Every character replaced starts with one of these bytes (U+0085 with
    // 0xC2, U+2028 and U+2029 with 0xE2): a line without them, nearly every
    // line, is passed at memchr's speed instead of decoded char by char.
    let bytes = line.as_bytes();
    if memchr::memchr3(b'\n', 0, 0xC2, bytes).is_none() && memchr::memchr(0xE2, bytes).is_none() {
        return std::borrow::Cow::Borrowed(line);
    }
    if line.contains(['\n', '\u{0085}', '\u{2028}', '\u{2029}', '\0']) {
        std::borrow::Cow::Owned(
            line.chars()
                .map(|c| match c {
                    '\n' | '\u{0085}' | '\u{2028}' | '\u{2029}' | '\0' => ' ',
                    c => c,
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

/// At most 80 characters of `text`, control characters escaped, for an
/// error message that quotes what it refuses.
fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
