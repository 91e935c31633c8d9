//! Compose across files, as `docker compose` reads them: `extends` (same
//! file and other files, chains, cycles), top-level `include` (short and
//! long form, `project_directory`, `env_file`), and `profiles`. Our own
//! cases, written from the compose specification's extends, include,
//! merge and profiles pages.

use bakery_plan::{Plan, PlanError};
use bakery_protocol::Arch;
use support::Repo;

mod support;

const DOCKERFILE: &str = "FROM scratch\n";

fn service<'p>(plan: &'p Plan, name: &str) -> &'p bakery_plan::ServicePlan {
    plan.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in the plan"))
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.services.iter().map(|s| s.name.as_str()).collect()
}

fn error(result: Result<Plan, PlanError>) -> String {
    match result {
        Ok(_) => panic!("planned, but an error was expected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn extends_from_another_file_takes_its_context_dockerfile_args_and_platforms() {
    let repo = Repo::new(&[
        ("common/Dockerfile.base", DOCKERFILE),
        (
            "common/base.yaml",
            "services:\n  base:\n    build:\n      context: .\n      dockerfile: Dockerfile.base\n      args: [A=1, B=1]\n      x-bake:\n        platforms: [linux/amd64, linux/arm64]\n",
        ),
        (
            "compose.yaml",
            "services:\n  api:\n    extends:\n      file: common/base.yaml\n      service: base\n    image: r.io/api:1\n    build:\n      args: {B: '2', C: '3'}\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    let api = service(&plan, "api");
    let arches: Vec<Arch> = api.builds.iter().map(|b| b.arch).collect();
    assert_eq!(
        arches,
        [Arch::Amd64, Arch::Arm64],
        "the base's x-bake.platforms"
    );
    for b in &api.builds {
        assert_eq!(
            b.context_dir.canonicalize().unwrap(),
            repo.path("common").canonicalize().unwrap(),
            "the base's context, relative to the base's file"
        );
        assert_eq!(b.spec.dockerfile, "Dockerfile.base");
        let args: Vec<(&str, &str)> = b
            .spec
            .build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(args, [("A", "1"), ("B", "2"), ("C", "3")]);
        assert_eq!(
            b.push.as_deref(),
            Some(format!("r.io/api:1_{}", b.arch).as_str())
        );
    }
}

#[test]
fn the_extending_services_own_context_is_relative_to_its_own_file() {
    let repo = Repo::new(&[
        ("common/base.yaml", "services:\n  base:\n    build: {dockerfile: app.Dockerfile, target: prod}\n"),
        ("app/app.Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "services:\n  app:\n    extends: {file: common/base.yaml, service: base}\n    build: ./app\n    image: r.io/app:1\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    let b = &service(&plan, "app").builds[0];
    assert_eq!(b.context_dir, repo.path("app"));
    assert_eq!(b.spec.dockerfile, "app.Dockerfile");
    assert_eq!(b.spec.target.as_deref(), Some("prod"));
}

#[test]
fn a_chain_in_one_file_merges_each_level() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "x-base: &x 1\nservices:\n  root:\n    build: {context: ., target: a, labels: [team=core]}\n    platform: linux/arm64\n  mid:\n    extends: root\n    build: {target: b}\n  leaf:\n    extends: {service: mid}\n    image: r.io/leaf:1\n    build: {labels: {tier: web}}\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &["leaf"]).unwrap();
    let b = &service(&plan, "leaf").builds[0];
    assert_eq!(b.arch, Arch::Arm64);
    assert_eq!(b.spec.target.as_deref(), Some("b"));
    assert_eq!(b.spec.labels.get("team").map(String::as_str), Some("core"));
    assert_eq!(b.spec.labels.get("tier").map(String::as_str), Some("web"));
}

#[test]
fn a_cycle_is_refused_at_both_extends() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "services:\n  a:\n    extends: b\n    build: .\n  b:\n    extends: a\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("cycle"), "{text}");
    assert!(
        text.contains("compose.yaml:3:"),
        "the first extends: {text}"
    );
    assert!(
        text.contains("compose.yaml:6:"),
        "the second extends: {text}"
    );

    let repo = Repo::new(&[(
        "compose.yaml",
        "services:\n  a:\n    extends: a\n    build: .\n",
    )]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("cycle") && text.contains("compose.yaml:3:"),
        "{text}"
    );
}

#[test]
fn a_cycle_across_files_is_refused() {
    let repo = Repo::new(&[
        (
            "compose.yaml",
            "services:\n  a:\n    extends: {file: other.yaml, service: b}\n    build: .\n",
        ),
        (
            "other.yaml",
            "services:\n  b:\n    extends: {file: compose.yaml, service: a}\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("cycle"), "{text}");
    assert!(
        text.contains("compose.yaml:3:") && text.contains("other.yaml:3:"),
        "{text}"
    );
}

#[test]
fn extends_of_a_missing_service_or_file_says_where() {
    let repo = Repo::new(&[(
        "compose.yaml",
        "services:\n  base:\n    build: .\n  api:\n    extends: bsae\n",
    )]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("compose.yaml:5:"), "{text}");
    assert!(text.contains("did you mean `base`?"), "{text}");

    let repo = Repo::new(&[(
        "compose.yaml",
        "services:\n  api:\n    extends: {file: nope.yaml, service: base}\n",
    )]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("compose.yaml:3:") && text.contains("nope.yaml"),
        "{text}"
    );
}

#[test]
fn include_short_and_long_form_with_project_directory_and_env_file() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        ("worker/Dockerfile", DOCKERFILE),
        ("worker/compose.yaml", "services:\n  worker:\n    build: .\n    image: r.io/worker:1\n"),
        ("proj/Dockerfile", DOCKERFILE),
        ("jobs/vars.env", "JOB_TAG=7\n"),
        (
            "jobs/compose.yaml",
            "services:\n  job:\n    build: .\n    image: r.io/job:${JOB_TAG}\n",
        ),
        (
            "compose.yaml",
            "include:\n  - worker/compose.yaml\n  - path: jobs/compose.yaml\n    project_directory: proj\n    env_file: jobs/vars.env\nservices:\n  api:\n    build: .\n    image: r.io/api:1\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(names(&plan), ["api", "worker", "job"]);
    assert_eq!(
        service(&plan, "worker").builds[0].context_dir,
        repo.path("worker")
    );
    let job = service(&plan, "job");
    assert_eq!(
        job.builds[0].context_dir,
        repo.path("proj"),
        "project_directory"
    );
    assert_eq!(job.destination.as_deref(), Some("r.io/job:7"), "env_file");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    let one = repo.compose("compose.yaml", &["worker"]).unwrap();
    assert_eq!(
        names(&one),
        ["worker"],
        "an included service is selected by name"
    );
}

#[test]
fn an_included_files_unset_variable_warns_at_its_own_line() {
    let repo = Repo::new(&[
        ("sub/Dockerfile", DOCKERFILE),
        (
            "sub/compose.yaml",
            "services:\n  s:\n    build: .\n    image: r.io/s:1${SUFFIX}\n",
        ),
        ("compose.yaml", "include: [sub/compose.yaml]\n"),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("sub/compose.yaml:4:") && w.contains("SUFFIX")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn include_conflicts_cycles_and_missing_files_are_refused() {
    let repo = Repo::new(&[
        ("sub/compose.yaml", "services:\n  api:\n    build: .\n"),
        (
            "compose.yaml",
            "include: [sub/compose.yaml]\nservices:\n  api:\n    build: .\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("`api` is defined twice"), "{text}");
    assert!(
        text.contains("compose.yaml:3:") && text.contains("sub/compose.yaml:2:"),
        "{text}"
    );

    let repo = Repo::new(&[
        (
            "a/compose.yaml",
            "include: [../compose.yaml]\nservices:\n  x:\n    build: .\n",
        ),
        (
            "compose.yaml",
            "include: [a/compose.yaml]\nservices:\n  y:\n    build: .\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("includes itself"), "{text}");
    assert!(text.contains("a/compose.yaml:1:"), "{text}");

    let repo = Repo::new(&[(
        "compose.yaml",
        "include:\n  - missing.yaml\nservices:\n  y:\n    build: .\n",
    )]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("compose.yaml:2:") && text.contains("missing.yaml"),
        "{text}"
    );
}

#[test]
fn profiles_select_as_compose_does() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "services:\n  app:\n    build: .\n    image: r.io/app:1\n  debug:\n    build: .\n    image: r.io/debug:1\n    profiles: [debug]\n  docs:\n    build: .\n    image: r.io/docs:1\n    profiles: [docs, debug]\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(
        names(&plan),
        ["app"],
        "no profile active: only services without one"
    );

    let mut opts = repo.opts();
    opts.compose = Some(repo.path("compose.yaml"));
    opts.profiles = vec!["docs".into()];
    assert_eq!(names(&Plan::resolve(&opts).unwrap()), ["app", "docs"]);
    opts.profiles = vec!["*".into()];
    assert_eq!(
        names(&Plan::resolve(&opts).unwrap()),
        ["app", "debug", "docs"]
    );

    let named = repo.compose("compose.yaml", &["debug"]).unwrap();
    assert_eq!(
        names(&named),
        ["debug"],
        "a named service is built whatever its profiles"
    );

    let only = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "services:\n  t:\n    build: .\n    profiles: [test]\n",
        ),
    ]);
    let text = error(only.compose("compose.yaml", &[]));
    assert!(
        text.contains("--profile") && text.contains("test"),
        "{text}"
    );
}

#[test]
fn a_valueless_arg_of_a_base_is_taken_from_the_environment() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        (
            "compose.yaml",
            "services:\n  base:\n    build: {context: ., args: [TOKEN_NAME, UNSET_ONE]}\n  app:\n    extends: base\n    image: r.io/app:1\n    build: {args: {OTHER: null}}\n",
        ),
    ]);
    let plan = repo
        .compose_env(
            "compose.yaml",
            &["app"],
            &[("TOKEN_NAME", "from-env"), ("OTHER", "o")],
        )
        .unwrap();
    let args = &service(&plan, "app").builds[0].spec.build_args;
    assert_eq!(args.get("TOKEN_NAME").map(String::as_str), Some("from-env"));
    assert_eq!(args.get("OTHER").map(String::as_str), Some("o"));
    assert!(
        !args.contains_key("UNSET_ONE"),
        "unset: left out, as compose does"
    );
}

/// Found by review: each case failed or passed silently before.
#[test]
fn a_relative_compose_path_rebases_a_bases_context_once() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        ("sub/Dockerfile", DOCKERFILE),
        ("compose.yaml", "include: [sub/compose.yaml]\n"),
        (
            "sub/compose.yaml",
            "services:\n  api:\n    image: r.io/api:1\n    extends: {file: base.yaml, service: base}\n",
        ),
        ("sub/base.yaml", "services:\n  base:\n    build: .\n"),
    ]);
    let mut opts = repo.opts();
    // As the action passes it: relative to the working directory.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&repo.path("compose.yaml"), &cwd);
    opts.compose = Some(relative);
    let plan = Plan::resolve(&opts).unwrap();
    assert_eq!(
        std::path::absolute(&service(&plan, "api").builds[0].context_dir).unwrap(),
        repo.path("sub")
    );
}

/// `path` relative to `base` (both absolute), through `..` as needed.
fn pathdiff(path: &std::path::Path, base: &std::path::Path) -> std::path::PathBuf {
    let common = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = base.components().count() - common;
    let mut out = std::path::PathBuf::new();
    for _ in 0..ups {
        out.push("..");
    }
    out.extend(path.components().skip(common));
    out
}

#[test]
fn an_included_file_sees_the_projects_variables_first() {
    let repo = Repo::new(&[
        (".env", "TAG=fromroot\n"),
        ("sub/.env", "TAG=fromsub\nONLY_SUB=s\n"),
        ("sub/Dockerfile", DOCKERFILE),
        (
            "sub/compose.yaml",
            "services:\n  api:\n    build: .\n    image: r.io/api:${TAG}-${ONLY_SUB}\n",
        ),
        ("compose.yaml", "include: [sub/compose.yaml]\n"),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(
        service(&plan, "api").destination.as_deref(),
        Some("r.io/api:fromroot-s")
    );
}

#[test]
fn a_file_included_twice_is_taken_once() {
    let repo = Repo::new(&[
        ("common/Dockerfile", DOCKERFILE),
        (
            "common/compose.yaml",
            "services:\n  common:\n    build: .\n    image: r.io/c:1\n",
        ),
        ("a/compose.yaml", "include: [../common/compose.yaml]\n"),
        ("b/compose.yaml", "include: [../common/compose.yaml]\n"),
        (
            "compose.yaml",
            "include: [a/compose.yaml, b/compose.yaml]\ninclude_null: 1\n",
        ),
    ]);
    // (A misspelt top-level key is still an error.)
    assert!(error(repo.compose("compose.yaml", &[])).contains("include_null"));
    std::fs::write(
        repo.path("compose.yaml"),
        "include: [a/compose.yaml, b/compose.yaml]\n",
    )
    .unwrap();
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    assert_eq!(names(&plan), ["common"]);
}

#[test]
fn misspelt_include_and_extends_keys_and_missing_env_files_are_errors() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        ("common/base.yaml", "services:\n  base:\n    build: .\n"),
        (
            "compose.yaml",
            "services:\n  base:\n    build: .\n  web:\n    image: r.io/w:1\n    extends: {service: base, files: common/base.yaml}\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("compose.yaml:6:") && text.contains("`file`"),
        "{text}"
    );

    let repo = Repo::new(&[
        ("sub/Dockerfile", DOCKERFILE),
        (
            "sub/compose.yaml",
            "services:\n  s:\n    build: .\n    image: r.io/s:1\n",
        ),
        (
            "compose.yaml",
            "include:\n  - path: sub/compose.yaml\n    env-file: x.env\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("compose.yaml:2:") && text.contains("did you mean `env_file`?"),
        "{text}"
    );

    std::fs::write(
        repo.path("compose.yaml"),
        "include:\n  - path: sub/compose.yaml\n    env_file: nope.env\n",
    )
    .unwrap();
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("nope.env") && text.contains("does not exist"),
        "{text}"
    );

    std::fs::write(
        repo.path("compose.yaml"),
        "include:\nservices:\n  x:\n    build: sub\n    image: r.io/x:1\n",
    )
    .unwrap();
    assert_eq!(
        names(&repo.compose("compose.yaml", &[]).unwrap()),
        ["x"],
        "include: null is none"
    );
}

#[test]
fn a_chain_deeper_than_the_limit_is_refused_not_a_stack_overflow() {
    let mut text = String::from("services:\n  s0:\n    build: .\n    image: r.io/s:1\n");
    for i in 1..=100 {
        text.push_str(&format!("  s{i}:\n    extends: s{}\n", i - 1));
    }
    let repo = Repo::new(&[("Dockerfile", DOCKERFILE), ("compose.yaml", &text)]);
    let text = error(repo.compose("compose.yaml", &["s100"]));
    assert!(text.contains("more than 64 services deep"), "{text}");
}

#[test]
fn additional_contexts_resolve_from_the_compose_file_and_refuse_what_cannot_build() {
    let repo = Repo::new(&[
        ("Dockerfile", DOCKERFILE),
        ("lib/x.txt", "x\n"),
        (
            "compose.yaml",
            "services:\n  a:\n    image: r.io/a:1\n    build:\n      context: .\n      additional_contexts:\n        lib: ./lib\n        base: docker-image://alpine:3.20\n",
        ),
    ]);
    let plan = repo.compose("compose.yaml", &[]).unwrap();
    let named = &service(&plan, "a").builds[0].named_contexts;
    assert_eq!(
        named.get("lib"),
        Some(&bakery_plan::NamedSource::Dir(repo.path("lib")))
    );
    assert_eq!(
        named.get("base"),
        Some(&bakery_plan::NamedSource::Image("alpine:3.20".into()))
    );
    assert!(
        plan.warnings.is_empty(),
        "applied, not ignored: {:?}",
        plan.warnings
    );

    for (value, says) in [
        ("service:base", "is not supported"),
        ("https://example.com/ctx.tar", "is not supported"),
        ("./missing", "is not a directory"),
    ] {
        std::fs::write(
            repo.path("compose.yaml"),
            format!("services:\n  a:\n    image: r.io/a:1\n    build:\n      context: .\n      additional_contexts:\n        lib: {value}\n"),
        )
        .unwrap();
        let text = error(repo.compose("compose.yaml", &[]));
        assert!(
            text.contains("compose.yaml:7:") && text.contains(says),
            "{value}: {text}"
        );
    }
}

/// A wrong value the service inherits is reported in the base's file, at
/// its line, not at the extending service.
#[test]
fn an_error_in_an_inherited_value_points_into_the_base_file() {
    let repo = Repo::new(&[
        ("common/Dockerfile", DOCKERFILE),
        (
            "common/base.yaml",
            "services:\n  base:\n    build:\n      context: .\n      x-bake:\n        platforms: [linux/s390x]\n      dockerfil: D\n",
        ),
        (
            "compose.yaml",
            "services:\n  web:\n    image: r.io/w:1\n    extends: {file: common/base.yaml, service: base}\n",
        ),
    ]);
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(
        text.contains("common/base.yaml:7:"),
        "the misspelt key: {text}"
    );
    std::fs::write(
        repo.path("common/base.yaml"),
        "services:\n  base:\n    build:\n      context: .\n      x-bake:\n        platforms: [linux/s390x]\n",
    )
    .unwrap();
    let text = error(repo.compose("compose.yaml", &[]));
    assert!(text.contains("common/base.yaml:6:"), "the platform: {text}");
}
