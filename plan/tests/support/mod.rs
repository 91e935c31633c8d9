//! A repository of files in a temporary directory, and plans of it.
// Each test file uses the part it needs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use bakery_plan::{Plan, PlanError, PlanOptions};
use bakery_protocol::Arch;

pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        Repo { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn opts(&self) -> PlanOptions {
        PlanOptions {
            env: HashMap::new(),
            host_arch: Arch::Amd64,
            ..PlanOptions::new(self.dir.path())
        }
    }

    pub fn config(&self) -> Result<Plan, PlanError> {
        Plan::resolve(&self.opts())
    }

    pub fn compose(&self, file: &str, services: &[&str]) -> Result<Plan, PlanError> {
        self.compose_env(file, services, &[])
    }

    pub fn compose_env(
        &self,
        file: &str,
        services: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Plan, PlanError> {
        let mut opts = self.opts();
        opts.compose = Some(self.path(file));
        opts.services = services
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        opts.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plan::resolve(&opts)
    }
}
