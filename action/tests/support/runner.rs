//! A GitHub Actions runner, as far as a composite action sees one: it
//! checks the action out under `_actions/OWNER/REPO/REF` (or uses it from
//! the workspace, `uses: ./`), evaluates `${{ }}` expressions in each step's
//! `env`, runs each `run:` with `bash --noprofile --norc -eo pipefail` in
//! the workspace with the runner's `GITHUB_*`/`RUNNER_*` variables, a fresh
//! `GITHUB_OUTPUT`/`GITHUB_ENV` per step, `GITHUB_PATH` applied to the
//! steps after, and the action's `outputs` evaluated at the end. An
//! expression it does not know fails the test: action.yml cannot grow one
//! this emulation silently gets wrong.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_yaml_ng::Value;

pub const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

/// The repository root (where action.yml is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One runner machine: its work directory, tool cache and workspace.
pub struct Runner {
    pub dir: tempfile::TempDir,
    /// `GITHUB_SERVER_URL`: where releases are downloaded from.
    pub server_url: String,
    /// Variables every step gets besides the runner's own.
    pub env: Vec<(String, String)>,
}

/// What one run of the action left.
pub struct Run {
    pub success: bool,
    /// Every step's stdout and stderr, in order.
    pub log: String,
    pub outputs: BTreeMap<String, String>,
    pub summary: String,
}

impl Runner {
    pub fn new(server_url: &str) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        for d in ["work/repo/repo", "tool-cache", "temp", "home"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Runner {
            dir,
            server_url: server_url.to_string(),
            env: Vec::new(),
        }
    }

    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("work/repo/repo")
    }

    /// The action's files as `actions/checkout` of `acme/bakery@REF` leaves
    /// them (what the runner downloads for `uses: acme/bakery@REF`).
    pub fn checkout(&self, reference: &str) -> PathBuf {
        let dir = self.dir.path().join("actions/acme/bakery").join(reference);
        copy_action(&dir);
        dir
    }

    /// The action inside the workspace (`uses: ./`).
    pub fn checkout_local(&self) -> PathBuf {
        let dir = self.workspace();
        copy_action(&dir);
        dir
    }

    /// Runs the action to the end.
    pub fn run(&self, action: &Path, with: &[(&str, &str)]) -> Run {
        let mut running = self.start(action, with);
        running.finish()
    }

    /// Starts the action; [`Running::finish`] runs it to the end.
    pub fn start(&self, action: &Path, with: &[(&str, &str)]) -> Running<'_> {
        let spec: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(action.join("action.yml")).unwrap())
                .unwrap();
        let mut inputs = BTreeMap::new();
        for (name, input) in spec["inputs"].as_mapping().unwrap() {
            let default = input["default"].as_str().unwrap_or("").to_string();
            inputs.insert(name.as_str().unwrap().to_string(), default);
        }
        for (k, v) in with {
            assert!(inputs.contains_key(*k), "action.yml has no input {k}");
            inputs.insert((*k).to_string(), (*v).to_string());
        }
        let mut context = Context {
            inputs,
            steps: BTreeMap::new(),
        };
        // `github.token` is the default of an input: evaluate defaults once.
        let evaluated: BTreeMap<String, String> = context
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), context.eval(v)))
            .collect();
        context.inputs = evaluated;
        Running {
            runner: self,
            action: action.to_path_buf(),
            spec,
            context,
            step: 0,
            path: Vec::new(),
            env_file: BTreeMap::new(),
            log: String::new(),
            child: None,
            ok: true,
        }
    }

    fn base_env(&self, action: &Path) -> Vec<(String, String)> {
        let p = |s: &str| self.dir.path().join(s).display().to_string();
        let repository = if action.starts_with(self.workspace()) {
            String::new()
        } else {
            "acme/bakery".to_string()
        };
        let mut env: Vec<(String, String)> = [
            ("CI", "true".to_string()),
            ("GITHUB_ACTIONS", "true".to_string()),
            ("GITHUB_ACTION_PATH", action.display().to_string()),
            ("GITHUB_ACTION_REPOSITORY", repository),
            ("GITHUB_WORKSPACE", self.workspace().display().to_string()),
            ("GITHUB_REPOSITORY", "acme/bakery".to_string()),
            ("GITHUB_SHA", SHA.to_string()),
            ("GITHUB_REF", "refs/heads/main".to_string()),
            ("GITHUB_EVENT_NAME", "push".to_string()),
            ("GITHUB_SERVER_URL", self.server_url.clone()),
            // Nothing listens there: check runs fail, which must not fail the build.
            ("GITHUB_API_URL", "http://127.0.0.1:9".to_string()),
            ("GITHUB_RUN_ID", "4242".to_string()),
            ("GITHUB_JOB", "build".to_string()),
            ("GITHUB_STEP_SUMMARY", p("temp/step_summary")),
            ("RUNNER_OS", "Linux".to_string()),
            ("RUNNER_ARCH", "X64".to_string()),
            ("RUNNER_TEMP", p("temp")),
            ("RUNNER_TOOL_CACHE", p("tool-cache")),
            ("HOME", p("home")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env
    }
}

fn copy_action(dir: &Path) {
    let root = repo_root();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    for f in ["action.yml", "Cargo.toml"] {
        std::fs::copy(root.join(f), dir.join(f)).unwrap();
    }
    for f in ["install-bakery", "action-build"] {
        std::fs::copy(root.join("scripts").join(f), dir.join("scripts").join(f)).unwrap();
    }
}

struct Context {
    inputs: BTreeMap<String, String>,
    steps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Context {
    /// Replaces every `${{ … }}` in `text`.
    fn eval(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("a closed expression") + start;
            out.push_str(&self.expression(rest[start + 3..end].trim()));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn expression(&self, expr: &str) -> String {
        if let Some((a, b)) = expr.split_once("||") {
            let a = self.expression(a.trim());
            return if a.is_empty() {
                self.expression(b.trim())
            } else {
                a
            };
        }
        let parts: Vec<&str> = expr.split('.').collect();
        match parts.as_slice() {
            ["inputs", name] => self.inputs.get(*name).cloned().unwrap_or_default(),
            ["github", "token"] => "ghs_runner_token_0123456789".into(),
            ["github", "sha"] => SHA.into(),
            ["github", "event", "pull_request", "head", "sha"] => String::new(),
            ["steps", id, "outputs", name] => self
                .steps
                .get(*id)
                .and_then(|o| o.get(*name))
                .cloned()
                .unwrap_or_default(),
            _ => panic!("the runner emulation does not know the expression `{expr}`"),
        }
    }
}

/// An action run in progress.
pub struct Running<'a> {
    runner: &'a Runner,
    action: PathBuf,
    spec: Value,
    context: Context,
    step: usize,
    path: Vec<String>,
    env_file: BTreeMap<String, String>,
    log: String,
    child: Option<(Child, PathBuf, PathBuf, PathBuf)>,
    ok: bool,
}

impl Running<'_> {
    fn steps(&self) -> Vec<Value> {
        self.spec["runs"]["steps"].as_sequence().unwrap().clone()
    }

    /// Starts the next step; false when there is none or one failed.
    pub fn start_step(&mut self) -> bool {
        let steps = self.steps();
        if !self.ok || self.step >= steps.len() {
            return false;
        }
        let step = &steps[self.step];
        assert_eq!(
            step["shell"].as_str(),
            Some("bash"),
            "every step says shell: bash"
        );
        let tmp = self.runner.dir.path().join("temp");
        let n = self.step;
        let (output, envf, log) = (
            tmp.join(format!("output_{n}")),
            tmp.join(format!("env_{n}")),
            tmp.join(format!("log_{n}")),
        );
        for f in [&output, &envf] {
            std::fs::write(f, "").unwrap();
        }
        let script = tmp.join(format!("step_{n}.sh"));
        std::fs::write(&script, step["run"].as_str().unwrap()).unwrap();
        let mut env = self.runner.base_env(&self.action);
        env.extend(self.env_file.clone());
        if let Some(vars) = step["env"].as_mapping() {
            for (k, v) in vars {
                env.push((
                    k.as_str().unwrap().to_string(),
                    self.context.eval(v.as_str().unwrap_or("")),
                ));
            }
        }
        let mut path = self.path.clone();
        path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script)
            .current_dir(self.runner.workspace())
            .env_clear()
            .envs(env)
            .env("PATH", path.join(":"))
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_ENV", &envf)
            .env("GITHUB_PATH", tmp.join("path"))
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some((child, output, envf, log));
        true
    }

    /// The running step's log so far.
    pub fn step_log(&self) -> String {
        self.child
            .as_ref()
            .and_then(|(_, _, _, log)| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// Cancels the running step as the runner does (actions/runner's
    /// ProcessInvoker): SIGINT to the process it started, SIGTERM after
    /// 7.5 s, and the whole tree killed 2.5 s later. Returns the signals
    /// that were needed.
    pub fn cancel_step(&mut self) -> Vec<&'static str> {
        let (child, ..) = self.child.as_mut().unwrap();
        let pid = child.id().to_string();
        let mut sent = Vec::new();
        for (signal, grace) in [("INT", 7_500), ("TERM", 2_500)] {
            let ok = Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status();
            assert!(ok.unwrap().success(), "SIG{signal} sent");
            sent.push(signal);
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(grace);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return sent;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        sent.push("KILL");
        sent
    }

    /// Waits for the running step and takes what it wrote.
    pub fn wait_step(&mut self) {
        let (mut child, output, envf, log) = self.child.take().unwrap();
        let status = child.wait().unwrap();
        self.log
            .push_str(&std::fs::read_to_string(&log).unwrap_or_default());
        self.ok = status.success();
        let step = &self.steps()[self.step];
        if let Some(id) = step["id"].as_str() {
            self.context
                .steps
                .insert(id.to_string(), key_values(&output));
        }
        self.env_file.extend(key_values(&envf));
        let path = self.runner.dir.path().join("temp/path");
        self.path = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .rev()
            .map(String::from)
            .collect();
        self.step += 1;
    }

    /// Runs every step left and evaluates the action's outputs.
    pub fn finish(&mut self) -> Run {
        if self.child.is_some() {
            self.wait_step();
        }
        while self.start_step() {
            self.wait_step();
        }
        let mut outputs = BTreeMap::new();
        for (name, out) in self.spec["outputs"].as_mapping().unwrap() {
            let value = self.context.eval(out["value"].as_str().unwrap());
            outputs.insert(name.as_str().unwrap().to_string(), value);
        }
        let summary = self.runner.dir.path().join("temp/step_summary");
        Run {
            success: self.ok,
            log: self.log.clone(),
            outputs,
            summary: std::fs::read_to_string(summary).unwrap_or_default(),
        }
    }
}

/// `name=value` lines and `name<<DELIMITER` blocks, as the runner reads
/// `GITHUB_OUTPUT` and `GITHUB_ENV`.
fn key_values(file: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == delimiter {
                    break;
                }
                value.push(l);
            }
            out.insert(name.to_string(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}
