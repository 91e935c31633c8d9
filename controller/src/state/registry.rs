//! [`Registry`]: the builds a controller holds, found by build id, task id
//! or idempotency key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::secret_book::SecretBook;
use super::Build;

/// Every build this controller knows, which task belongs to which, and
/// which idempotency key to which build.
#[derive(Debug, Default)]
pub struct Registry {
    builds: Mutex<HashMap<String, Arc<Build>>>,
    tasks: Mutex<HashMap<String, (Arc<Build>, usize)>>,
    /// `Idempotency-Key` (scoped to its caller) → build id, for builds held.
    /// Taken before `builds` when both are.
    keys: Mutex<HashMap<String, String>>,
    /// The running builds' secrets, masked in every build's agent lines.
    secrets: Arc<SecretBook>,
}

/// What [`Registry::reserve`] found for an idempotency key.
pub enum Reserved {
    /// A new build, registered, under the key (if any).
    New(Arc<Build>),
    /// The build an earlier request with the key created.
    Existing(Arc<Build>),
}

impl Registry {
    /// The build an earlier create with idempotency `key` made, if it is
    /// `usable`, and not withdrawn; otherwise the build `make` makes,
    /// registered under the key. In one step: two requests with the same
    /// key at once get one build.
    pub fn reserve(
        &self,
        key: Option<&str>,
        usable: impl Fn(&Build) -> bool,
        make: impl FnOnce() -> Arc<Build>,
    ) -> Reserved {
        let keys = self.keys();
        let existing = key
            .and_then(|k| keys.get(k))
            .and_then(|id| self.get(id))
            .filter(|b| usable(b));
        if let Some(existing) = existing {
            let withdrawn = {
                let read = existing.read();
                !read.acknowledged() && read.state().is_terminal()
            };
            if !withdrawn {
                return Reserved::Existing(existing);
            }
        }
        let build = make();
        self.insert_under(keys, Arc::clone(&build));
        Reserved::New(build)
    }

    /// Frees idempotency `key` if build `id` holds it: its creation failed,
    /// and the retry makes a new build.
    pub fn release_key(&self, key: &str, id: &str) {
        let mut keys = self.keys();
        if keys.get(key).map(String::as_str) == Some(id) {
            keys.remove(key);
        }
    }

    /// The finished builds that ended before `cutoff_ms`: what
    /// BUILD_RETENTION forgets.
    pub fn finished_before(&self, cutoff_ms: u64) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|b| {
                let s = b.status();
                s.state.is_terminal() && s.finished_ms.is_some_and(|f| f < cutoff_ms)
            })
            .map(|b| b.id.clone())
            .collect()
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a build, its tasks by task id, and its idempotency key.
    pub fn insert(&self, build: Arc<Build>) {
        self.insert_under(self.keys(), build);
    }

    /// Adds `build` while `keys` is held: the key and the build appear
    /// together, so a create with the same key never finds the key and not
    /// its build.
    fn insert_under(&self, mut keys: MutexGuard<'_, HashMap<String, String>>, build: Arc<Build>) {
        if let Some(key) = build.read().idempotency_key() {
            keys.insert(key.to_string(), build.id.clone());
        }
        let (task_ids, secrets, running): (Vec<String>, Vec<String>, bool) = {
            let read = build.read();
            let ids = read.tasks().iter().map(|t| t.id().to_string()).collect();
            let secrets = read
                .requests()
                .flat_map(|t| bakery_protocol::redact::secret_forms(&t.spec))
                .collect();
            (ids, secrets, !read.state().is_terminal())
        };
        if running {
            self.secrets.add(&build.id, secrets);
        }
        let _ = build.book.set(Arc::clone(&self.secrets));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (i, id) in task_ids.into_iter().enumerate() {
            tasks.insert(id, (Arc::clone(&build), i));
        }
        drop(tasks);
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(build.id.clone(), build);
        drop(keys);
    }

    /// Forgets a finished build (its tasks, and its idempotency key).
    pub fn remove(&self, id: &str) {
        self.keys().retain(|_, build| build != id);
        let removed = self
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.secrets.remove(id);
        if let Some(build) = removed {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for t in build.read().tasks() {
                tasks.remove(t.id());
            }
        }
    }

    /// The running builds' secrets.
    pub fn secrets(&self) -> &SecretBook {
        &self.secrets
    }

    /// The build `id`, if it is held.
    pub fn get(&self, id: &str) -> Option<Arc<Build>> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The build that has the task `task_id`, and the task's position in it.
    pub fn task(&self, task_id: &str) -> Option<(Arc<Build>, usize)> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .cloned()
    }

    /// Every build held, in no particular order.
    pub fn all(&self) -> Vec<Arc<Build>> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
