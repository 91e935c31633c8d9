//! Controller configuration, from environment variables as the original
//! README names them.

use std::path::PathBuf;
use std::time::Duration;

use bakery_protocol::resources::{Cpu, Memory};
use bakery_protocol::Platform;
use serde::{Deserialize, Deserializer};

/// Everything the controller reads from its environment.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// The URL agents use to reach the controller. Default: derived from the
    /// listen address (right for the local platform only).
    pub controller_url: Option<String>,
    /// The platform for builds that name none.
    #[serde(default = "default_platform")]
    pub default_platform: Platform,
    /// How long an agent may take to start and check in.
    #[serde(default = "ten_minutes", deserialize_with = "duration")]
    pub build_task_timeout: Duration,
    /// How long a checked-in agent may take to report its result.
    #[serde(default = "ten_minutes", deserialize_with = "duration")]
    pub build_result_timeout: Duration,
    /// How long a task may wait for an agent slot (MAX_CONCURRENT_AGENTS),
    /// from when it joins the queue, before it fails: no queue waits
    /// forever. Its time is not counted against BUILD_TASK_TIMEOUT.
    #[serde(default = "thirty_minutes", deserialize_with = "duration")]
    pub build_queue_timeout: Duration,
    /// Most log bytes one build may send; past it the build fails, named.
    #[serde(default = "default_log_limit", deserialize_with = "byte_size")]
    pub build_log_limit: u64,
    /// How long a request that must be saved (a new build, a check-in, a
    /// cancel, a result) waits for the journal before it is answered 503.
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub journal_timeout: Duration,
    /// How long one registry request (the index's reads and pushes) may
    /// take to connect, and to go without an answer, before it is retried.
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub registry_timeout: Duration,
    /// DEFAULT_BUILD_CPU: the CPU of a build that asks for none (default half a vCPU).
    #[serde(default = "default_cpu")]
    pub default_build_cpu: Cpu,
    /// DEFAULT_BUILD_MEMORY: the memory of a build that asks for none (default 2 GiB).
    #[serde(default = "default_memory")]
    pub default_build_memory: Memory,
    /// DEFAULT_BUILD_DISK: the scratch disk of a build that asks for none;
    /// unset: the platform's (Fargate 20 GiB, a node's ephemeral storage).
    pub default_build_disk: Option<bakery_protocol::resources::Disk>,
    /// S3 bucket for build contexts. Unset: contexts are stored in DATA_DIR
    /// and uploaded to the controller itself.
    pub s3_bucket: Option<String>,
    /// S3_ENDPOINT: a host or URL for an S3-compatible store; unset, AWS's own S3.
    pub s3_endpoint: Option<String>,
    /// S3_REGION: the bucket's region; unset: AWS_REGION, then the SDK's chain.
    pub s3_region: Option<String>,
    /// S3_SSL: whether a host-only S3_ENDPOINT is reached over HTTPS (default true).
    pub s3_ssl: Option<bool>,
    /// Path-style addressing for a custom S3_ENDPOINT (default true; AWS's
    /// own endpoints are always virtual-hosted).
    pub s3_force_path_style: Option<bool>,
    /// Where the controller keeps contexts (without S3) and agent work dirs.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// DATABASE_URL: `postgres://USER:PASSWORD@HOST:PORT/DATABASE` keeps
    /// builds and logs in PostgreSQL instead of the journal file in
    /// DATA_DIR (docs/state.md). A secret: it may hold a password.
    pub database_url: Option<bakery_protocol::spec::Secret>,
    /// STANDBY: with DATABASE_URL, wait for as long as it takes for the
    /// controller that holds the database to stop, then take over its
    /// builds (docs/state.md). Meanwhile `/healthz` answers 200 and
    /// everything else 503.
    #[serde(default)]
    pub standby: bool,
    /// REPLICA_URL: where other controllers reach this one
    /// (`http://$(POD_IP):8080`). The one holding the database publishes
    /// it, and standbys forward every request there instead of answering
    /// 503 (docs/state.md).
    pub replica_url: Option<String>,
    /// DATABASE_CA_FILE: the PEM CA that signed the database server's
    /// certificate, for `sslmode=require` (default: the system's roots).
    pub database_ca_file: Option<PathBuf>,
    /// STATE_KEY: 32 random bytes, base64 (`openssl rand -base64 32`), that
    /// seal unfinished builds' registry passwords and build secrets into
    /// the database (DATABASE_URL) instead of files in DATA_DIR.
    pub state_key: Option<bakery_protocol::spec::Secret>,
    /// How long finished builds (status and log) are kept, in memory and in
    /// the journal in DATA_DIR, for `bakery logs` / `status` to read.
    #[serde(default = "one_day", deserialize_with = "duration_or_zero")]
    pub build_retention: Duration,
    /// The agent executable for the local platform. Default: `bakery-agent`
    /// next to the running executable, then on PATH.
    pub agent_binary: Option<PathBuf>,
    /// Registries reached over plain HTTP besides loopback ones, comma-separated.
    #[serde(default)]
    pub insecure_registries: String,

    /// Most agents running at once on each platform; more wait in a queue.
    /// Default: 4 on the local platform (one machine), 100 elsewhere.
    pub max_concurrent_agents: Option<usize>,
    /// Token clients must present (`Authorization: Bearer …`).
    pub controller_token: Option<bakery_protocol::spec::Secret>,
    /// A file holding that token (a mounted Kubernetes Secret, say).
    pub controller_token_file: Option<PathBuf>,
    /// TLS_CERT_FILE: a PEM certificate chain; with TLS_KEY_FILE the
    /// controller serves HTTPS (re-reading both when they change).
    pub tls_cert_file: Option<PathBuf>,
    /// TLS_KEY_FILE: the PEM private key of TLS_CERT_FILE.
    pub tls_key_file: Option<PathBuf>,
    /// AGENT_CA_FILE: PEM CA certificates the agents trust for the
    /// controller's HTTPS (a private CA), given to each agent.
    pub agent_ca_file: Option<PathBuf>,
    /// MAX_CONNECTIONS: most client, agent and follower connections open
    /// at once. Default: the open-file limit (raised to its hard limit at
    /// start-up) less 256, at most 16,384.
    pub max_connections: Option<usize>,
    /// Issuers whose OpenID Connect ID tokens are accepted, comma-separated.
    #[serde(default)]
    pub oidc_issuers: String,
    /// The audience those tokens must carry.
    #[serde(default = "default_audience")]
    pub oidc_audience: String,
    /// Which jobs may build: `claim=pattern,…` rules separated by `;`.
    #[serde(default)]
    pub oidc_allow: String,
    /// LOCAL_AGENT_ISOLATION: `auto` (namespaces where the host allows them),
    /// `namespaces` (required), or `none`.
    #[serde(default)]
    pub local_agent_isolation: crate::platform::local::Isolation,
    /// LOCAL_PLATFORM_SHARED: accept that builds on the local platform of
    /// different CI identities share one trust domain (their scripts run on
    /// this host as the controller's user). Without it, a controller with
    /// the local platform and OIDC_ISSUERS does not start.
    #[serde(default)]
    pub local_platform_shared: bool,

    // ---- ECS (DEFAULT_PLATFORM=ecs) ----
    /// AWS_REGION: the region of the ECS cluster (and of the Secrets Manager
    /// secret and the agents' log group); unset, the standard AWS chain decides.
    pub aws_region: Option<String>,
    /// ECS_CLUSTER: the cluster agents run in; setting it enables the ECS platform.
    pub ecs_cluster: Option<String>,
    /// Comma-separated subnet ids for the agents' awsvpc network.
    #[serde(default)]
    pub ecs_subnets: String,
    /// Comma-separated security group ids.
    #[serde(default)]
    pub ecs_security_groups: String,
    /// ECS_EXEC_ROLE_ARN: the agents' task execution role (pulls
    /// the agent image, writes its logs); required for ECS.
    pub ecs_exec_role_arn: Option<String>,
    /// ECS_TASK_ROLE_ARN: the agents' task role, their own
    /// AWS identity (reads contexts from S3, pushes to ECR).
    pub ecs_task_role_arn: Option<String>,
    /// The agent container image (Kaniko executor plus bakery-agent).
    pub agent_image: Option<String>,
    /// Secrets Manager secret with the agent image registry login.
    pub agent_image_secret_arn: Option<String>,
    /// A registry login to store in Secrets Manager when no secret ARN is given.
    pub agent_image_username: Option<String>,
    /// AGENT_IMAGE_PASSWORD: the password for AGENT_IMAGE_USERNAME.
    pub agent_image_password: Option<bakery_protocol::spec::Secret>,
    /// CloudWatch Logs group for the agents' own output.
    pub ecs_log_group: Option<String>,
    /// Deregister this controller's stale task definitions at start-up.
    #[serde(default)]
    pub cleanup_ecs_task_definitions: bool,
    /// Give agents a public IP (subnets without a NAT gateway).
    #[serde(default)]
    pub ecs_assign_public_ip: bool,
    /// Run tasks with this launch type instead of a capacity provider
    /// strategy (clusters without capacity providers; Spot needs providers).
    pub ecs_launch_type: Option<String>,
    /// How often running agent tasks are described.
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    pub ecs_poll_interval: Duration,
    // ---- Kubernetes ----
    /// Namespace of the agent pods; setting it enables the k8s platform.
    pub k8s_namespace: Option<String>,
    /// YAML file with the agent pods' settings (service account, node
    /// selectors, tolerations, image pull secrets).
    pub k8s_agent_config: Option<PathBuf>,
    /// The URL agent pods reach the controller at, when it differs from
    /// CONTROLLER_URL: in-cluster, the Service (no trip out through the
    /// Ingress and back), while ECS agents use the public URL.
    pub k8s_controller_url: Option<String>,

    /// Names and tags what this controller owns in ECS, so two controllers in
    /// one account never clean up each other's task definitions.
    #[serde(default = "default_owner")]
    pub bakery_owner: String,
}

fn default_audience() -> String {
    "bakery".into()
}
fn one_day() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn default_owner() -> String {
    "bakery".into()
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_platform() -> Platform {
    Platform::Local
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn thirty_minutes() -> Duration {
    Duration::from_secs(1800)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
/// 256 MiB: a million lines of a chatty build fit with room to spare;
/// BuildKit keeps 2 MiB per step by default and GitLab 4 MiB per job log.
fn default_log_limit() -> u64 {
    256 << 20
}
fn default_cpu() -> Cpu {
    Cpu::from_millis(500)
}
fn default_memory() -> Memory {
    Memory::from_mib(2048)
}
fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join("bakery-controller")
}

/// A timeout or interval: zero would fail every build at once (or spin),
/// so it is refused rather than taken literally.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    match humantime::parse_duration(text.trim()) {
        Ok(value) if value.is_zero() => Err(serde::de::Error::custom(format!(
            "`{text}` is zero, which would fail or spin at once; give a positive duration like 10m or 90s"
        ))),
        Ok(value) => Ok(value),
        Err(e) => Err(serde::de::Error::custom(format!(
            "`{text}` is not a duration like 10m or 90s: {e}"
        ))),
    }
}

fn duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!("`{text}` is not a duration like 10m or 90s: {e}"))
    })
}

/// `256Mi`, `256MiB`, `1G`, `1GiB`, `500K` or a number of bytes; `K`, `M`
/// and `G` are binary units, as for memory.
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_bytes(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not a size like 256Mi, 1G or 500000 (bytes)"
        ))
    })
}

fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let scale: u64 = match unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
    {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    number
        .parse::<u64>()
        .ok()?
        .checked_mul(scale)
        .filter(|n| *n > 0)
}

/// A configuration variable that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("controller configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// A configuration error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

/// The shortest client token accepted, from either variable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A token too short to resist guessing, or an example's placeholder that
/// a deployment kept, is refused: either would leave the controller open.
fn check_token(what: &str, token: &str) -> Result<(), ConfigError> {
    let placeholder = ["change-me", "changeme", "replace-me", "example"]
        .iter()
        .any(|p| token.to_ascii_lowercase().contains(p));
    if placeholder {
        return Err(ConfigError(format!(
            "{what} an example's placeholder, not a token; generate one (openssl rand -hex 32)"
        )));
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Err(ConfigError(format!(
            "{what} fewer than {MIN_TOKEN_CHARS} characters; use a long random token (openssl rand -hex 32)"
        )));
    }
    Ok(())
}

/// How envy names a field in its errors (`missing value for field x`);
/// [`Config::from_vars`] names the variable instead. Pinned by a test.
const ENVY_FIELD: &str = r"field `?([a-z0-9_]+)`?";

impl Config {
    /// How many agents may run at once on `platform`: MAX_CONCURRENT_AGENTS,
    /// or 4 on the local platform (one machine) and 100 on a cloud one.
    pub fn agent_slots(&self, platform: Platform) -> usize {
        self.max_concurrent_agents
            .unwrap_or(if platform == Platform::Local { 4 } else { 100 })
            .max(1)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads configuration from `vars` (the environment, or a test's map).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Empty values mean unset, as in most .env files.
        let vars: Vec<(String, String)> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        envy::from_iter::<_, Config>(vars.iter().cloned()).map_err(|e| {
            // envy names fields in lowercase; users set them in uppercase.
            let text = e.to_string();
            // Our own parsers (durations, sizes) quote the value but cannot
            // know the variable: name every variable holding that value.
            if let Some(quoted) = text.split('`').nth(1).filter(|_| !text.contains("field")) {
                let names: Vec<&str> = vars
                    .iter()
                    .filter(|(k, v)| v == quoted && Self::read_by_our_parsers(k))
                    .map(|(k, _)| k.as_str())
                    .collect();
                if !names.is_empty() {
                    return ConfigError(format!("{}: {text}", names.join(" or ")));
                }
            }
            let upper = regex::Regex::new(ENVY_FIELD)
                .map(|re| {
                    re.replace_all(&text, |c: &regex::Captures| {
                        format!("variable {}", c[1].to_uppercase())
                    })
                    .into_owned()
                })
                .unwrap_or(text);
            ConfigError(upper)
        })
    }

    /// Whether `name` is read by this module's own duration and size parsers.
    fn read_by_our_parsers(name: &str) -> bool {
        const FIELDS: &[&str] = &[
            "BUILD_TASK_TIMEOUT",
            "BUILD_RESULT_TIMEOUT",
            "BUILD_QUEUE_TIMEOUT",
            "BUILD_LOG_LIMIT",
            "JOURNAL_TIMEOUT",
            "REGISTRY_TIMEOUT",
            "BUILD_RETENTION",
            "ECS_POLL_INTERVAL",
        ];
        FIELDS.contains(&name)
    }

    /// The client token, from CONTROLLER_TOKEN or CONTROLLER_TOKEN_FILE.
    pub fn client_token(&self) -> Result<Option<bakery_protocol::spec::Secret>, ConfigError> {
        if let Some(t) = &self.controller_token {
            let token = t.expose().trim();
            check_token("CONTROLLER_TOKEN has", token)?;
            return Ok(Some(bakery_protocol::spec::Secret::new(token)));
        }
        let Some(path) = &self.controller_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("CONTROLLER_TOKEN_FILE {}: {e}", path.display())))?;
        let token = text.trim();
        check_token(
            &format!("CONTROLLER_TOKEN_FILE {} holds", path.display()),
            token,
        )?;
        Ok(Some(bakery_protocol::spec::Secret::new(token)))
    }

    /// The contexts bucket, when S3 is configured.
    pub fn s3(&self) -> Option<bakery_protocol::api::S3Location> {
        self.s3_bucket
            .as_ref()
            .map(|bucket| bakery_protocol::api::S3Location {
                bucket: bucket.clone(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone().or_else(|| self.aws_region.clone()),
                ssl: self.s3_ssl.unwrap_or(true),
                path_style: self.s3_force_path_style,
            })
    }

    /// INSECURE_REGISTRIES as a list of hosts.
    pub fn insecure_registries(&self) -> Vec<String> {
        bakery_protocol::registry::parse_list(&self.insecure_registries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_match_the_reference_readme() {
        let c = config(&[]).unwrap();
        assert_eq!(c.build_task_timeout, Duration::from_secs(600));
        assert_eq!(c.build_result_timeout, Duration::from_secs(600));
        assert_eq!(c.default_build_cpu.millis(), 500);
        assert_eq!(c.default_build_memory.mib(), 2048);
        assert_eq!(c.default_platform, Platform::Local);
    }

    #[test]
    fn reads_the_documented_variables() {
        let c = config(&[
            ("BUILD_TASK_TIMEOUT", "90s"),
            ("BUILD_RESULT_TIMEOUT", "1h"),
            ("DEFAULT_BUILD_CPU", "2"),
            ("DEFAULT_BUILD_MEMORY", "4G"),
            ("DEFAULT_PLATFORM", "ecs"),
            ("S3_BUCKET", "b"),
            ("S3_SSL", "false"),
            ("CONTROLLER_URL", ""),
        ])
        .unwrap();
        assert_eq!(c.build_task_timeout, Duration::from_secs(90));
        assert_eq!(c.build_result_timeout, Duration::from_secs(3600));
        assert_eq!(c.default_build_cpu.millis(), 2000);
        assert_eq!(c.default_build_memory.mib(), 4096);
        assert_eq!(c.default_platform, Platform::Ecs);
        assert_eq!(c.s3_bucket.as_deref(), Some("b"));
        assert_eq!(c.s3_ssl, Some(false));
        assert_eq!(c.controller_url, None, "empty means unset");
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("256Mi"), Some(256 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
        let c = config(&[("BUILD_LOG_LIMIT", "1Mi")]).unwrap();
        assert_eq!(c.build_log_limit, 1 << 20);
        assert_eq!(config(&[]).unwrap().build_log_limit, 256 << 20);
    }

    #[test]
    fn a_short_controller_token_is_refused() {
        let c = config(&[("CONTROLLER_TOKEN", "short")]).unwrap();
        let e = c.client_token().unwrap_err().to_string();
        assert!(e.contains("CONTROLLER_TOKEN") && e.contains("16"), "{e}");
        let c = config(&[("CONTROLLER_TOKEN", "0123456789abcdef")]).unwrap();
        assert!(c.client_token().unwrap().is_some());
        // The Kubernetes example's placeholder is long enough, and refused.
        let example = include_str!("../../examples/server/k8s/.env");
        let placeholder = example
            .lines()
            .find_map(|l| l.strip_prefix("CONTROLLER_TOKEN="))
            .unwrap();
        let c = config(&[("CONTROLLER_TOKEN", placeholder)]).unwrap();
        let e = c.client_token().unwrap_err().to_string();
        assert!(e.contains("placeholder"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "CHANGE-ME-please-0123456789\n").unwrap();
        let c = config(&[("CONTROLLER_TOKEN_FILE", file.to_str().unwrap())]).unwrap();
        let e = c.client_token().unwrap_err().to_string();
        assert!(
            e.contains("CONTROLLER_TOKEN_FILE") && e.contains("placeholder"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = config(&[("BUILD_TASK_TIMEOUT", "ten minutes")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ten minutes") && e.contains("BUILD_TASK_TIMEOUT"),
            "{e}"
        );
        let e = config(&[("DEFAULT_BUILD_MEMORY", "2048")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no unit"), "{e}");
        for var in ["JOURNAL_TIMEOUT", "REGISTRY_TIMEOUT", "BUILD_QUEUE_TIMEOUT"] {
            let e = config(&[(var, "0s")]).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("zero"), "{e}");
        }
        assert!(config(&[("BUILD_RETENTION", "0s")]).is_ok());
    }

    /// [`Config::from_vars`] reads envy's words: a parse error names the
    /// variable itself, a missing one is `field x`, rewritten to name the
    /// variable. An envy upgrade that changes them fails here, by name,
    /// instead of leaving users a lowercase field name.
    #[test]
    fn the_envy_words_read_are_pinned() {
        let raw = envy::from_iter::<_, Config>([(
            "MAX_CONCURRENT_AGENTS".to_string(),
            "many".to_string(),
        )])
        .unwrap_err()
        .to_string();
        assert_eq!(
            raw,
            "invalid digit found in string while parsing value 'many' provided by MAX_CONCURRENT_AGENTS"
        );
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Needs {
            needed_value: String,
        }
        let missing = envy::from_iter::<_, Needs>(std::iter::empty::<(String, String)>())
            .unwrap_err()
            .to_string();
        assert_eq!(missing, "missing value for field needed_value");
        let rewritten = regex::Regex::new(ENVY_FIELD).unwrap();
        assert!(rewritten.is_match(&missing));
    }
}
