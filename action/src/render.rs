//! Human-readable output.

use std::fmt::Write;
use std::path::Path;

use bakery_plan::Plan;

/// The plan as an aligned table, then one line per multi-arch index.
pub fn plan_table(plan: &Plan, repo: &Path) -> String {
    let repo = std::path::absolute(repo).unwrap_or_else(|_| repo.to_path_buf());
    let mut rows = vec![[
        "SERVICE",
        "ARCH",
        "PLATFORM",
        "CONTEXT",
        "DOCKERFILE",
        "PUSH",
        "CACHE",
    ]
    .map(String::from)];
    for (service, build) in plan.builds() {
        let context = build
            .context_dir
            .strip_prefix(&repo)
            .map(|p| {
                if p.as_os_str().is_empty() {
                    ".".into()
                } else {
                    p.display().to_string()
                }
            })
            .unwrap_or_else(|_| build.context_dir.display().to_string());
        rows.push([
            service.name.clone(),
            build.arch.to_string(),
            build
                .spec
                .platform
                .map_or("(default)".into(), |p| p.to_string()),
            context,
            build.spec.dockerfile.clone(),
            build.push.clone().unwrap_or_else(|| "(no push)".into()),
            // The resolved per-arch repository: where a derived one lands is
            // the first thing to check when a registry refuses the push.
            match (&build.spec.cache.enable, &build.spec.cache.repo) {
                (Some(true), Some(repo)) => repo.clone(),
                (Some(true), None) => "(local layers only)".into(),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for service in &plan.services {
        if let Some(dest) = &service.destination {
            let platforms: Vec<&str> = service.builds.iter().map(|b| b.arch.platform()).collect();
            let _ = writeln!(
                out,
                "\n{} → {} ({})",
                service.name,
                dest,
                platforms.join(", ")
            );
        }
    }
    out
}

/// A byte count in the largest unit that keeps it above 1.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
