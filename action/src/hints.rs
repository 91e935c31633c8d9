//! What to do about a failed build, where the builder's words do not say:
//! a `COPY` of a file that is right there in the repository but that
//! `.dockerignore` leaves out of the context reads as "no such file".

use std::sync::LazyLock;

use bakery_pack::IgnoreRules;
use bakery_plan::ArchBuild;
use regex::Regex;

/// The path a `COPY`/`ADD` did not find, as each builder says it:
/// buildah's copier, Kaniko's build context, BuildKit's checksum.
static MISSING: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r#"copier: stat: "/?([^"]+)": no such file or directory"#,
        r"failed to get fileinfo for /kaniko/buildcontext/([^:]+): lstat",
        r#"failed to compute cache key: failed to calculate checksum of ref [^:]*::[^:]*: "/?([^"]+)": not found"#,
    ]
    .iter()
    .map(|p| Regex::new(p).expect("valid regex"))
    .collect()
});

/// A hint for `build`'s failure (its `error` and last log lines), when a
/// `COPY` missed a file that `.dockerignore` excludes: which line does.
pub fn dockerignore_hint(build: &ArchBuild, error: &str, tail: &[String]) -> Option<String> {
    let path = std::iter::once(error)
        .chain(tail.iter().map(String::as_str))
        .find_map(|text| MISSING.iter().find_map(|re| re.captures(text)))
        .map(|c| c[1].trim_end_matches('/').to_string())?;
    if !build.context_dir.join(&path).exists() {
        return None;
    }
    let (rules, file) = match &build.dockerfile_outside {
        Some(outside) => IgnoreRules::for_outside(&build.context_dir, outside),
        None => IgnoreRules::for_build(&build.context_dir, &build.spec.dockerfile),
    }
    .ok()?;
    let (line, pattern) = rules.excluded_by(&path)?;
    Some(format!(
        "`{path}` is in {} but {}:{line} (`{pattern}`) leaves it out of the context: remove that line, or add `!{path}` after it",
        build.context_dir.display(),
        file?.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_builders_missing_path_is_read() {
        let found = |text: &str| {
            MISSING
                .iter()
                .find_map(|re| re.captures(text))
                .map(|c| c[1].to_string())
        };
        assert_eq!(
            found(r#"Error: building at STEP "COPY app.env /": checking on sources under "/tmp/x/context": copier: stat: "/app.env": no such file or directory"#).as_deref(),
            Some("app.env")
        );
        assert_eq!(
            found("error building image: error building stage: failed to get filesystem from image: failed to get fileinfo for /kaniko/buildcontext/conf/app.env: lstat /kaniko/buildcontext/conf/app.env: no such file or directory").as_deref(),
            Some("conf/app.env")
        );
        assert_eq!(found("exit status 1"), None);
    }
}
