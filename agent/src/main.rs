//! `bakery-agent`: started by a platform with its task in the environment.

use std::process::ExitCode;

use bakery_agent::AgentConfig;
use bakery_protocol::api::agent_env;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set; the agent is started by the bakery controller"))
}

// One thread: an agent waits on one child process and one controller
// connection (extraction runs on the blocking pool), and idle worker threads
// waking each other cost more than they give when many agents share a
// machine (bench/RESULTS.md, row 4).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = (|| -> Result<AgentConfig, String> {
        Ok(AgentConfig {
            controller_url: var(agent_env::CONTROLLER_URL)?,
            task_id: var(agent_env::TASK_ID)?,
            token: var(agent_env::TASK_TOKEN)?,
            builder: match std::env::var(agent_env::BUILDER) {
                Ok(name) => name.parse()?,
                Err(_) => agent_env::BuilderKind::Kaniko,
            },
            buildah_storage: bakery_agent::builder::Storage::from_env()?,
            work_dir: std::env::var(agent_env::WORK_DIR)
                .map_or_else(|_| std::env::temp_dir().join("bakery-agent"), Into::into),
            insecure: bakery_protocol::registry::parse_list(
                &std::env::var("INSECURE_REGISTRIES").unwrap_or_default(),
            ),
            load: match std::env::var(bakery_agent::load::ENV) {
                Ok(v) => Some(v.parse()?),
                Err(_) => None,
            },
            first_seq: match std::env::var(agent_env::FIRST_SEQ) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{} is `{v}`, not a line number", agent_env::FIRST_SEQ))?,
                Err(_) => 0,
            },
            controller_ca: std::env::var(agent_env::CONTROLLER_CA).ok(),
            deadline: match std::env::var(agent_env::DEADLINE) {
                Ok(v) => Some(std::time::Duration::from_secs(v.parse().map_err(|_| {
                    format!("{} is `{v}`, not a number of seconds", agent_env::DEADLINE)
                })?)),
                Err(_) => None,
            },
        })
    })();
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bakery-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if bakery_agent::run(config).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
