//! Local agents in their own namespaces, so that one build cannot read or
//! disturb another (or the controller) on a shared host.
//!
//! An agent, its scripts and its builder run:
//!
//! * in a **mount namespace** where `DATA_DIR` is an empty tmpfs with only
//!   the task's own work directory bound back in: no journal (agent
//!   tokens), no secrets files (other builds' registry logins and build
//!   secrets), no other work directory, no stored context; and where the
//!   host's `/var/lib/containers` is a directory of its own work dir;
//! * in a **user namespace** as root, mapped to an unprivileged range of
//!   host ids (root's subordinate ids in `/etc/subuid`): the controller's
//!   own files (mode 0600/0700, owned by host root) are out of reach, and
//!   the mounts above are locked, so they cannot be undone from inside;
//! * in a **PID namespace** with its own `/proc`: no other agent's or the
//!   controller's processes, environment or open files are visible.
//!
//! Rootless buildah (`--isolation chroot`, vfs storage in the work dir)
//! builds there as it does in a rootless container. This needs the
//! controller to run as root, util-linux's `unshare` (2.38+, with
//! `--map-users`) and `newuidmap`/`newgidmap` (Debian's `uidmap`), and a
//! subordinate id range for root of at least 65,536 ids. Without them the
//! local platform runs agents as before, as the controller's user: one
//! trust domain, which the controller says at start-up.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// How many ids the agents' user namespace maps.
const IDS: u32 = 65_536;

/// LOCAL_AGENT_ISOLATION: whether local agents run in namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces where the host allows them (root, unshare, subordinate
    /// ids); else shared, said at start-up.
    #[default]
    Auto,
    /// Namespaces, or the controller does not start.
    Namespaces,
    /// No isolation: agents run as the controller's user.
    None,
}

/// How local agents are confined.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The directory hidden from agents (DATA_DIR).
    hidden: PathBuf,
    /// The first host id of the range agents' root maps to.
    base: u32,
}

impl Sandbox {
    /// The sandbox the host allows for `mode`, hiding `data_dir`: `Ok(None)`
    /// for shared agents (asked for, or `auto` on a host without what it
    /// takes, with the reason logged); an error for `namespaces` on such a
    /// host, naming what is missing.
    pub async fn detect(mode: Isolation, data_dir: &Path) -> Result<Option<Sandbox>, String> {
        if mode == Isolation::None {
            return Ok(None);
        }
        let found = Sandbox::probe(data_dir).await;
        match (found, mode) {
            (Ok(sandbox), _) => Ok(Some(sandbox)),
            (Err(why), Isolation::Namespaces) => Err(format!(
                "LOCAL_AGENT_ISOLATION=namespaces, but local agents cannot be isolated here: {why}"
            )),
            (Err(why), _) => {
                tracing::info!("local agents run as the controller's user and share one trust domain: {why} (see SECURITY.md, \"Isolation between builds\")");
                Ok(None)
            }
        }
    }

    /// What the host has, tried for real: a sandboxed `true`.
    async fn probe(data_dir: &Path) -> Result<Sandbox, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the controller does not run as root".into());
        }
        let uid = subordinate("/etc/subuid")?;
        let gid = subordinate("/etc/subgid")?;
        if uid != gid {
            return Err(format!(
                "root's subordinate uid range starts at {uid} and its gid range at {gid}; give root the same range in /etc/subuid and /etc/subgid"
            ));
        }
        let sandbox = Sandbox {
            hidden: data_dir.to_path_buf(),
            base: uid,
        };
        let work = data_dir.join("work").join(".sandbox-probe");
        sandbox
            .prepare(&work)
            .map_err(|e| format!("preparing {}: {e}", work.display()))?;
        let out = sandbox
            .command(Path::new("/bin/true"), &work)
            .output()
            .await
            .map_err(|e| format!("running unshare: {e}"));
        let _ = std::fs::remove_dir_all(&work);
        let out = out?;
        if out.status.success() {
            Ok(sandbox)
        } else {
            Err(format!(
                "a sandboxed `true` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Makes the task's work directory, owned by the agents' mapped root.
    pub fn prepare(&self, work: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(work)?;
        std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(work, Some(self.base), Some(self.base))
    }

    /// `agent` run in the sandbox, with `work` its only view of DATA_DIR.
    /// The caller adds the environment and output; the agent's own home,
    /// runtime and temporary directories are in `work`.
    pub fn command(&self, agent: &Path, work: &Path) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-ec",
        ])
        .arg(SCRIPT)
        .arg("bakery-sandbox")
        .arg(&self.hidden)
        .arg(work)
        .arg(self.base.to_string())
        .arg(IDS.to_string())
        .arg(agent);
        cmd
    }

    /// The environment the agent needs in the sandbox: a home, runtime and
    /// temporary directory of its own (the controller's are not its), and
    /// buildah's overlay storage: the agent's mount namespace ends with it,
    /// so no overlay mount can outlive a killed agent and pin its work dir
    /// (outside the sandbox buildah keeps vfs, whose layers are plain
    /// directories).
    pub fn env(work: &Path) -> [(&'static str, PathBuf); 4] {
        [
            ("HOME", work.join("home")),
            ("XDG_RUNTIME_DIR", work.join("xdg")),
            ("TMPDIR", work.join("tmp")),
            (
                bakery_protocol::api::agent_env::BUILDAH_STORAGE,
                PathBuf::from("overlay"),
            ),
        ]
    }
}

/// Run by `sh` in the new mount namespace, as host root. It keeps handles
/// on the work dir and on the agent executable (which may sit where the
/// mapped ids cannot look, like root's home); hides DATA_DIR under an empty
/// tmpfs; binds the work dir back at its own path (`--no-canonicalize`, or
/// mount would resolve the handle to the now hidden path), and the
/// executable into it as `bin/bakery-agent` (what `ps` shows); puts a
/// directory of the work dir over the host's `/var/lib/containers` (a
/// builder that believes it is root keeps its blob-info cache there: the
/// build step records which base layers the registry has, so the push
/// step reuses them instead of compressing them again; and the host's own
/// container storage stays out of sight); then enters the user and PID
/// namespaces as their root and runs the agent. The mounts are locked once
/// the user namespace exists: nothing inside can unmount them. The agent is
/// the PID namespace's init, which ignores a SIGTERM it has no handler for:
/// `--kill-child` has it killed when `unshare` (the process the platform
/// signals) ends, so a stop ends it as it ends an agent outside.
const SCRIPT: &str = r#"hidden=$1 work=$2 base=$3 ids=$4 agent=$5
exec 3<"$work" 4<"$agent"
mount -t tmpfs -o mode=0755,size=64k bakery-hidden "$hidden"
mkdir -p "$work"
mount --no-canonicalize --bind /proc/self/fd/3 "$work"
exec 3<&-
mkdir -p "$work/home" "$work/xdg" "$work/tmp" "$work/bin" "$work/containers"
chown "$base:$base" "$work/home" "$work/xdg" "$work/tmp" "$work/containers"
mkdir -p /var/lib/containers
mount --bind "$work/containers" /var/lib/containers
chmod 0700 "$work/xdg"
: > "$work/bin/bakery-agent"
mount --no-canonicalize --bind /proc/self/fd/4 "$work/bin/bakery-agent"
exec 4<&-
exec unshare --user --map-users="$base,0,$ids" --map-groups="$base,0,$ids" \
  --setuid 0 --setgid 0 --pid --fork --kill-child --mount-proc --propagation private \
  -- "$work/bin/bakery-agent""#;

/// The start of root's first subordinate id range of at least [`IDS`] in
/// `file` (`root:START:COUNT` or `0:START:COUNT`).
fn subordinate(file: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
            (matches!(who, "root" | "0") && count >= IDS).then_some(start)
        })
        .ok_or_else(|| {
            format!("{file} gives root no range of {IDS} ids; add one, e.g. `usermod --add-subuids 400000-465535 --add-subgids 400000-465535 root`")
        })
}
