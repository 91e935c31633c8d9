//! Cache hints for the steps after an `ARG`, which buildah before 1.29
//! never looks up in the `--cache-from` repository.
//!
//! buildah runs an `ARG` step before it knows the step's cache key, then
//! looks for the result in local storage only (buildah issue 4315, fixed
//! in 1.29; Debian 12 ships 1.28). A fresh agent's storage is empty, so
//! the step misses, and every step after it in the stage runs again: on a
//! Debian + gcc app with `ARG GREETING` before its compile, an unchanged
//! rebuild took 76 % of the cold build.
//!
//! The agent closes the gap itself. While buildah builds, it notes the
//! cache keys buildah pushes for `ARG` steps (`--> Pushing cache
//! REPO:KEY` after a `STEP n/m: ARG` line). After a successful build it
//! keeps them in the cache repository, as the label of a layer-less image
//! tagged [`HINT_TAG`]. The next build's agent pulls those images into its
//! storage before buildah starts, where buildah's local lookup finds them.
//!
//! Nothing here can make a build wrong: buildah uses a pulled image only
//! when its history and layers match the step exactly, and a hint that is
//! missing, stale or unreadable costs only the time the build would have
//! taken anyway. A newer buildah finds the same images by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::process::Command;

use crate::logs::LogSink;
use crate::process::Watcher;

/// The tag of the hint image in the cache repository (buildah's own cache
/// tags are 64 hex digits: no clash).
pub const HINT_TAG: &str = "bakery-arg-steps";

/// The label of the hint image that lists the keys, space-separated.
const LABEL: &str = "io.bakery.cache.arg-steps";

/// At most this many keys are kept: a Dockerfile with more `ARG` steps
/// than this gets the first ones.
const MAX_KEYS: usize = 64;

/// How long one buildah command of the hints may take (a pull brings the
/// layers under the step: they may be large, and buildah needs them
/// anyway, so its own pull later finds them in storage).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// All the fetching before a build, at most: past it the build starts and
/// buildah pulls what it needs itself.
const PREFETCH_BUDGET: Duration = Duration::from_secs(300);

/// Keeping the hint after a build, at most: the image is pushed already,
/// and a slow registry must not hold the result (or turn it into a
/// deadline failure).
const RECORD_BUDGET: Duration = Duration::from_secs(60);

/// The hints of one task: what buildah runs them with, and what the build
/// has shown.
pub struct ArgCache {
    /// `buildah` with the task's storage flags.
    base: Vec<String>,
    /// buildah's environment: registries.conf and the build's logins.
    env: BTreeMap<String, String>,
    /// The cache repository (`--cache-from`/`--cache-to`).
    repo: String,
    /// Keys the last build kept, as read before this one.
    read: Mutex<Vec<String>>,
    /// What this build's output has shown so far.
    seen: Arc<Mutex<Seen>>,
}

/// The state of the watch over buildah's output.
#[derive(Default)]
struct Seen {
    /// The last `STEP` line was an `ARG`.
    after_arg: bool,
    /// Keys of `ARG` steps, in build order.
    keys: Vec<String>,
}

impl Seen {
    fn line(&mut self, line: &str) {
        if let Some(instruction) = step_instruction(line) {
            self.after_arg = instruction
                .split_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case("ARG"));
            return;
        }
        if !self.after_arg {
            return;
        }
        if let Some(key) = line
            .strip_prefix("--> Pushing cache ")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(_, key)| key.trim())
            .filter(|key| is_key(key))
        {
            self.after_arg = false;
            if !self.keys.iter().any(|k| k == key) && self.keys.len() < MAX_KEYS {
                self.keys.push(key.to_string());
            }
        }
    }
}

/// The instruction of a buildah step line (`[2/3] STEP 4/5: ARG X=1`, or
/// without the stage prefix in a one-stage build).
fn step_instruction(line: &str) -> Option<&str> {
    let rest = match line.strip_prefix('[') {
        Some(r) => r.split_once("] ")?.1,
        None => line,
    };
    let rest = rest.strip_prefix("STEP ")?;
    let (counter, instruction) = rest.split_once(": ")?;
    counter
        .split_once('/')
        .filter(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())?;
    Some(instruction)
}

/// Whether `s` is a buildah cache key: 64 lowercase hex digits.
fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The keys in a hint label: cache keys only, at most [`MAX_KEYS`].
fn parse_label(label: &str) -> Vec<String> {
    label
        .split_whitespace()
        .filter(|k| is_key(k))
        .take(MAX_KEYS)
        .map(str::to_string)
        .collect()
}

impl ArgCache {
    /// Hints for a task whose buildah runs as `base` with `env`, caching in `repo`.
    pub fn new(base: Vec<String>, env: BTreeMap<String, String>, repo: String) -> ArgCache {
        ArgCache {
            base,
            env,
            repo,
            read: Mutex::new(Vec::new()),
            seen: Arc::default(),
        }
    }

    /// What the build step's output is shown to.
    pub fn watcher(&self) -> Watcher {
        let seen = Arc::clone(&self.seen);
        Arc::new(move |line: &str| {
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .line(line);
        })
    }

    /// Pulls the images the last build kept for its `ARG` steps into the
    /// task's storage, within [`PREFETCH_BUDGET`]. Says how many it
    /// fetched; a first build (no hint) says nothing.
    pub async fn prefetch(&self, log: &LogSink) {
        if tokio::time::timeout(PREFETCH_BUDGET, self.fetch(log))
            .await
            .is_err()
        {
            log.line(format!(
                "layer cache: fetching the ARG steps' images took over {}s; the build goes on without the rest",
                PREFETCH_BUDGET.as_secs()
            ));
        }
    }

    async fn fetch(&self, log: &LogSink) {
        let hint = format!("{}:{HINT_TAG}", self.repo);
        if self.run(&["pull", "-q", &hint]).await.is_err() {
            return;
        }
        let format = format!("{{{{index .OCIv1.Config.Labels \"{LABEL}\"}}}}");
        let label = self
            .run(&["inspect", "--type", "image", "--format", &format, &hint])
            .await
            .unwrap_or_default();
        let _ = self.run(&["rmi", &hint]).await;
        let keys = parse_label(&label);
        if !keys.is_empty() {
            log.line(format!(
                "layer cache: fetching the images of {} ARG steps from {}",
                keys.len(),
                self.repo
            ));
        }
        let mut fetched = 0;
        for key in &keys {
            let image = format!("{}:{key}", self.repo);
            if self.run(&["pull", "-q", &image]).await.is_ok() {
                fetched += 1;
            }
        }
        if !keys.is_empty() {
            log.line(format!(
                "layer cache: {fetched} of {} ARG steps fetched from {} before the build \
                 (buildah before 1.29 does not look them up itself)",
                keys.len(),
                self.repo
            ));
        }
        *self.read.lock().unwrap_or_else(PoisonError::into_inner) = keys;
    }

    /// After a successful build: keeps the keys of this build's `ARG` steps
    /// in the cache repository, when they differ from what was read. A
    /// failure is said and does not fail the build.
    pub async fn record(&self, log: &LogSink) {
        let keys = std::mem::take(
            &mut self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys,
        );
        if keys.is_empty() || *self.read.lock().unwrap_or_else(PoisonError::into_inner) == keys {
            return;
        }
        let written = tokio::time::timeout(RECORD_BUDGET, self.write(&keys))
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {}s", RECORD_BUDGET.as_secs())));
        if let Err(why) = written {
            log.line(format!(
                "warning: layer cache: the hint for {} ARG steps was not kept in {}: {why} \
                 (the next build runs the steps after them again)",
                keys.len(),
                self.repo
            ));
        }
    }

    async fn write(&self, keys: &[String]) -> Result<(), String> {
        let container = self.run(&["from", "scratch"]).await?;
        let container = container.trim();
        let label = format!("{LABEL}={}", keys.join(" "));
        let image = "localhost/bakery-arg-steps";
        let written = async {
            self.run(&["config", "--label", &label, container]).await?;
            self.run(&["commit", "-q", container, image]).await?;
            let dest = format!("docker://{}:{HINT_TAG}", self.repo);
            self.run(&["push", "-q", image, &dest]).await
        }
        .await;
        let _ = self.run(&["rm", container]).await;
        written.map(drop)
    }

    /// Runs `buildah <args>` with the task's storage and environment:
    /// its standard output, or the last line of its standard error.
    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.base[0]);
        cmd.args(&self.base[1..])
            .args(args)
            .envs(&self.env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        crate::step::without_agent_secrets(&mut cmd);
        let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("buildah {} gave no answer in 10 minutes", args[0]))?
            .map_err(|e| format!("running buildah: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed")
            .chars()
            .take(300)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "bdfd0b8e82fb6ce9f3d5d8c1018a1873f2aa96a5adc96036004be08b0f70ad5e";
    const KEY_B: &str = "3936e424209fef1da630713495997ed4560beb09f61693eea548617d4799a679";

    fn watch(lines: &[&str]) -> Vec<String> {
        let mut seen = Seen::default();
        for l in lines {
            seen.line(l);
        }
        seen.keys
    }

    /// The output of buildah 1.28 building a stage with an ARG before its
    /// compile: only the ARG step's key is a hint.
    #[test]
    fn the_keys_pushed_for_arg_steps_are_noted() {
        let keys = watch(&[
            "[2/3] STEP 3/5: COPY src/ ./",
            "--> Pushing cache 127.0.0.1:5000/app/ms-cache-amd64:c7d08aa2c2f86b58987e1e86bf78872243ecb2aa50984065f709b3447495f635",
            "[2/3] STEP 4/5: ARG GREETING=hello",
            "--> Using cache 83d2c540e965d2eaeec3f28117cda2a52c2aad9cc5298e3d43ebbf643e4ab858",
            &format!("--> Pushing cache 127.0.0.1:5000/app/ms-cache-amd64:{KEY_A}"),
            "--> 83d2c540e96",
            "[2/3] STEP 5/5: RUN gcc -o /hello *.c",
            &format!("--> Pushing cache 127.0.0.1:5000/app/ms-cache-amd64:{KEY_B}"),
        ]);
        assert_eq!(keys, vec![KEY_A.to_string()]);
    }

    #[test]
    fn a_one_stage_build_and_lowercase_arg_are_read_too() {
        let keys = watch(&[
            "STEP 2/3: arg N",
            &format!("--> Pushing cache reg/x-cache-amd64:{KEY_B}"),
            // A RUN that prints what looks like a push is not an ARG step.
            "STEP 3/3: RUN echo hi",
            &format!("--> Pushing cache reg/x-cache-amd64:{KEY_A}"),
        ]);
        assert_eq!(keys, vec![KEY_B.to_string()]);
    }

    #[test]
    fn lines_that_only_look_like_steps_or_keys_are_ignored() {
        let keys = watch(&[
            "STEP x/y: ARG A",
            "--> Pushing cache reg/x:notakey",
            "STEP 1/2: ARG A",
            "--> Pushing cache reg/x:ABCDEF",
        ]);
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[test]
    fn a_label_gives_only_cache_keys() {
        let label = format!("{KEY_A} ../../etc {KEY_B} latest");
        assert_eq!(parse_label(&label), vec![KEY_A, KEY_B]);
        assert!(parse_label("").is_empty());
    }
}
