//! Compose's merge rules, for `extends`: a service is its base with its own
//! keys merged over it.
//!
//! The rules are the specification's (merge.md): mappings merge key by key,
//! sequences append (an entry already present is not repeated), anything
//! else is replaced. Two forms are normalised first so that they merge as
//! compose merges them: `build: ./dir` is `build: {context: ./dir}`, and
//! `args` / `labels` written as `KEY=value` lists are mappings (a list entry
//! and a mapping key of the same name are the same argument).

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

/// `over` merged onto `base` (both services, as written).
pub(super) fn merge_services(base: Value, over: Value) -> Value {
    merge(normalise(base), normalise(over))
}

fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) => {
            for (key, value) in over {
                let merged = match base.remove(&key) {
                    Some(old) => merge(old, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Mapping(base)
        }
        (Value::Sequence(mut base), Value::Sequence(over)) => {
            for item in over {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
            Value::Sequence(base)
        }
        (_, over) => over,
    }
}

/// The forms that merge differently from how they are written.
fn normalise(mut service: Value) -> Value {
    let Some(map) = service.as_mapping_mut() else {
        return service;
    };
    if let Some(Value::String(context)) = map.get("build").cloned() {
        let mut build = Mapping::new();
        build.insert("context".into(), Value::String(context));
        map.insert("build".into(), Value::Mapping(build));
    }
    if let Some(build) = map.get_mut("build").and_then(Value::as_mapping_mut) {
        for key in ["args", "labels"] {
            if let Some(list) = build.get(key).and_then(Value::as_sequence).cloned() {
                build.insert(key.into(), Value::Mapping(list_to_mapping(&list)));
            }
        }
    }
    service
}

/// `["A=1", "B"]` as `{A: "1", B: null}`, as compose reads such a list.
fn list_to_mapping(list: &[Value]) -> Mapping {
    let mut out = Mapping::new();
    for item in list {
        let text = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        match text.split_once('=') {
            Some((k, v)) => out.insert(k.into(), Value::String(v.into())),
            None => out.insert(text.into(), Value::Null),
        };
    }
    out
}

/// A base service from another file, with its relative paths made
/// absolute from `dir` (that file's directory), as compose resolves them:
/// the build context and the directories of `additional_contexts`. The
/// Dockerfile stays relative to the context it belongs to.
pub(super) fn rebase(service: &mut Value, dir: &Path) {
    let Some(map) = service.as_mapping_mut() else {
        return;
    };
    let absolute = |p: &str| dir.join(p).to_string_lossy().into_owned();
    match map.get_mut("build") {
        Some(Value::String(context)) => *context = absolute(context),
        Some(Value::Mapping(build)) => {
            let context = build
                .get("context")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_string();
            build.insert("context".into(), Value::String(absolute(&context)));
            rebase_contexts(build, dir);
        }
        _ => {}
    }
}

/// `additional_contexts` values that are directories (not `docker-image://`,
/// `service:` or another scheme), made absolute from `dir`.
fn rebase_contexts(build: &mut Mapping, dir: &Path) {
    let is_dir = |v: &str| !v.contains("://") && !v.starts_with("service:");
    match build.get_mut("additional_contexts") {
        Some(Value::Mapping(named)) => {
            for (_, value) in named.iter_mut() {
                if let Value::String(v) = value {
                    if is_dir(v) {
                        *v = dir.join(&*v).to_string_lossy().into_owned();
                    }
                }
            }
        }
        Some(Value::Sequence(list)) => {
            for item in list.iter_mut() {
                if let Value::String(entry) = item {
                    if let Some((name, v)) = entry.split_once('=') {
                        if is_dir(v) {
                            *entry = format!("{name}={}", dir.join(v).display());
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn mappings_merge_sequences_append_scalars_replace() {
        let base = yaml(
            "build: {context: ./base, args: [A=1, B=2], target: prod}\nimage: r/base\nx-bake: {platforms: [linux/amd64, linux/arm64]}",
        );
        let over = yaml(
            "build: {args: {B: '3', C: '4'}, target: dev}\nx-bake: {platforms: [linux/amd64]}",
        );
        let merged = merge_services(base, over);
        assert_eq!(
            merged,
            yaml(
                "build: {context: ./base, args: {A: '1', B: '3', C: '4'}, target: dev}\nimage: r/base\nx-bake: {platforms: [linux/amd64, linux/arm64]}"
            )
        );
    }

    #[test]
    fn a_short_build_merges_as_its_context() {
        let merged = merge_services(yaml("build: ./base"), yaml("build: {dockerfile: D}"));
        assert_eq!(merged, yaml("build: {context: ./base, dockerfile: D}"));
        let merged = merge_services(yaml("build: {dockerfile: D}"), yaml("build: ./own"));
        assert_eq!(merged, yaml("build: {context: ./own, dockerfile: D}"));
    }

    #[test]
    fn a_valueless_list_arg_stays_valueless() {
        let merged = merge_services(yaml("build: {args: [TOKEN]}"), yaml("image: x"));
        assert_eq!(merged, yaml("build: {args: {TOKEN: null}}\nimage: x"));
    }

    #[test]
    fn rebase_makes_contexts_absolute_and_leaves_images() {
        let mut s = yaml(
            "build: {dockerfile: D, additional_contexts: {a: ./lib, b: 'docker-image://alpine', c: 'service:base'}}",
        );
        rebase(&mut s, Path::new("/repo/common"));
        assert_eq!(
            s,
            yaml("build: {context: /repo/common/., dockerfile: D, additional_contexts: {a: /repo/common/./lib, b: 'docker-image://alpine', c: 'service:base'}}")
        );
        let mut s = yaml("build: ../app");
        rebase(&mut s, Path::new("/repo/common"));
        assert_eq!(s, yaml("build: /repo/common/../app"));
        let mut s = yaml("build: {additional_contexts: [lib=./lib, img=docker-image://x]}");
        rebase(&mut s, Path::new("/r"));
        assert_eq!(
            s,
            yaml(
                "build: {context: /r/., additional_contexts: [lib=/r/./lib, img=docker-image://x]}"
            )
        );
    }
}
