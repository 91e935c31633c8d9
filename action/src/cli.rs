//! Command-line interface. Every flag can also come from an environment
//! variable, because CI systems pass configuration that way.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Build config.yaml's images on this machine (no CONTROLLER_URL: embedded controller)
  bakery build

  # Build two compose services at once through a remote controller
  CONTROLLER_URL=https://bakery.example.com bakery --compose compose.yaml --services api,worker --async build

  # Show what would be built from config.yaml in the current directory
  bakery plan

  # Plan the api and worker services of a compose file, as JSON
  bakery --compose compose.yaml --services api,worker plan --json

  # config.yaml as the base, compose services merged on top
  bakery --config config.yaml --compose compose.yaml plan

  # No config file: flags like docker buildx build
  bakery --tag registry.example.com/app:1.0 --platform linux/amd64,linux/arm64 --build-arg VERSION=1.0 build

  # Pack each build context into ./dist as a content-addressed tar.gz
  bakery pack --output dist
";

/// On-demand native multi-arch container image builds.
#[derive(Debug, Parser)]
#[command(name = "bakery", version = LONG_VERSION, long_version = LONG_VERSION, after_help = EXAMPLES)]
pub struct Cli {
    /// Where the build plan comes from.
    #[command(flatten)]
    pub input: Input,

    /// Output style of logs: simple (message only), plain (no colour), json (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,

    /// How build output shows, as docker buildx's --progress: auto (the default), plain (no colour, no bars), tty (colour even without a terminal), json or rawjson (as --log-format json), quiet (no build log: the summary and errors only). --log-format, when given, wins.
    #[arg(long, env = "BAKERY_PROGRESS", value_enum, global = true)]
    pub progress: Option<ProgressMode>,

    /// The controller's URL. Unset or empty: an embedded controller runs
    /// the build on this machine (local platform).
    #[arg(long, env = "CONTROLLER_URL", global = true)]
    pub controller_url: Option<String>,

    /// Talk plain HTTP to a CONTROLLER_URL that is not loopback (the token,
    /// logins and secrets cross the network in clear): only on a private network.
    #[arg(long, env = "BAKERY_INSECURE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,

    /// What to do; `None` means `build`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where the build plan comes from (the original client's flags).
#[derive(Debug, Args)]
pub struct Input {
    /// Build config file (default: config.yaml in --repo when no --compose is given).
    #[arg(long, env = "BAKERY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// docker-compose file; services with a `build` section are built.
    #[arg(long, env = "BAKERY_COMPOSE", global = true)]
    pub compose: Option<PathBuf>,

    /// Services to build, comma-separated (default: all); `bakery build api web` names them too.
    #[arg(long, env = "BAKERY_SERVICES", value_delimiter = ',', global = true)]
    pub services: Vec<String>,

    /// Compose profiles to activate (repeat or comma-separate; `*` for all): a service with `profiles:` is built only when one of them is active or when it is named.
    #[arg(
        long = "profile",
        env = "COMPOSE_PROFILES",
        value_delimiter = ',',
        global = true
    )]
    pub profiles: Vec<String>,

    /// Build all selected services at once instead of one after another.
    #[arg(long = "async", env = "BAKERY_ASYNC", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub async_mode: bool,

    /// Source code path: config.yaml context paths are relative to it.
    #[arg(long, env = "BAKERY_REPO", default_value = ".", global = true)]
    pub repo: PathBuf,

    /// Image to build and push, without a config file (repeat or comma-separate for more tags of the same image).
    #[arg(
        long = "tag",
        short = 't',
        env = "BAKERY_TAGS",
        value_delimiter = ',',
        global = true
    )]
    pub tags: Vec<String>,

    /// Build context for --tag builds, relative to --repo (default: .).
    #[arg(long, env = "BAKERY_CONTEXT", global = true)]
    pub context: Option<String>,

    /// Dockerfile for --tag builds: a path from --repo that exists wins (as in docker/build-push-action), else relative to the context; it may lie outside the context.
    #[arg(long, short = 'f', env = "BAKERY_FILE", global = true)]
    pub file: Option<String>,

    /// Platforms to build: linux/amd64, linux/arm64 (comma-separated); with a config or compose file, every selected service's.
    #[arg(
        long = "platform",
        env = "BAKERY_PLATFORMS",
        value_delimiter = ',',
        global = true
    )]
    pub platforms: Vec<String>,

    /// Build arguments (KEY=VALUE; repeat for more); with a config or compose file, merged over every selected service's.
    #[arg(
        long = "build-arg",
        env = "BAKERY_BUILD_ARGS",
        value_delimiter = '\n',
        global = true
    )]
    pub build_args: Vec<String>,

    /// Image labels (KEY=VALUE; repeat for more); with a config or compose file, merged over every selected service's.
    #[arg(
        long = "label",
        env = "BAKERY_LABELS",
        value_delimiter = '\n',
        global = true
    )]
    pub labels: Vec<String>,

    /// Build secret for RUN --mount=type=secret (buildx syntax: id=ID,src=PATH or id=ID,env=VAR; repeat for more); added to every selected service's. The value is never stored by the controller.
    #[arg(
        long = "secret",
        env = "BAKERY_SECRETS",
        value_delimiter = '\n',
        global = true
    )]
    pub secrets: Vec<String>,

    /// Dockerfile stage to build; with a config or compose file, for every selected service.
    #[arg(long, env = "BAKERY_TARGET", global = true)]
    pub target: Option<String>,

    /// Registry layer cache, per arch in <destination>-cache-<arch> unless --cache-repo names one; with a config or compose file, for every selected service.
    #[arg(long, env = "BAKERY_CACHE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub cache: bool,

    /// Push the images and the multi-arch index (the default); `--push=false` builds every arch and checks it without pushing (pull requests from forks), for every selected service.
    #[arg(
        long,
        env = "BAKERY_PUSH",
        global = true,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        // `--push build` must not read `build` as the value.
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub push: bool,

    /// Push each arch as `<tag>_<arch>` too (the default); `--arch-tags=false` pushes each arch to one rolling `bakery-staging-<arch>` tag per repository instead, so a repository gains no tags per build besides the index's (the index keeps each image by digest).
    #[arg(
        long,
        env = "BAKERY_ARCH_TAGS",
        global = true,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub arch_tags: bool,

    /// Scratch disk of every agent (`50G`): Fargate's ephemeral storage (21 to 200 GiB), a pod's ephemeral-storage; for every selected service, replacing the files'.
    #[arg(long, env = "BAKERY_DISK", global = true)]
    pub disk: Option<bakery_protocol::resources::Disk>,

    /// OCI annotation (buildx syntax: [manifest:|index:|manifest-descriptor:]KEY=VALUE, as docker/metadata-action's annotations output; repeat for more); for every selected service. Kaniko cannot annotate manifests: on its images, manifest annotations go on the image's index entry.
    #[arg(
        long = "annotation",
        env = "BAKERY_ANNOTATIONS",
        value_delimiter = '\n',
        global = true
    )]
    pub annotations: Vec<String>,

    /// Named build context (buildx syntax: NAME=DIR or NAME=docker-image://IMAGE; repeat for more), for `FROM NAME` and `COPY --from=NAME`; needs the buildah builder (the local platform): Kaniko has none, and the controller refuses it there.
    #[arg(
        long = "build-context",
        env = "BAKERY_BUILD_CONTEXTS",
        value_delimiter = '\n',
        global = true
    )]
    pub build_contexts: Vec<String>,

    /// SSH key for RUN --mount=type=ssh (ID=KEYFILE, e.g. default=$HOME/.ssh/id_ed25519; repeat for more): sent as a build secret is; the build's agent cannot reach this machine's ssh-agent. Needs the buildah builder (the local platform).
    #[arg(
        long = "ssh",
        env = "BAKERY_SSH",
        value_delimiter = '\n',
        global = true
    )]
    pub ssh: Vec<String>,

    /// SLSA provenance attestation on each pushed image, attached as BuildKit attaches it: true or mode=min (the default, as docker buildx), mode=max (adds the Dockerfile, target and labels), false. Never a build-arg value or secret.
    #[arg(
        long,
        env = "BAKERY_PROVENANCE",
        global = true,
        default_value = "mode=min",
        value_name = "MODE"
    )]
    pub provenance: bakery_protocol::provenance::ProvenanceSetting,

    /// Build with no layer cache (as docker buildx's --no-cache): the registry cache is neither read nor written, whatever the files set, for every selected service.
    #[arg(
        long,
        env = "BAKERY_NO_CACHE",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        conflicts_with_all = ["cache", "cache_repo"]
    )]
    pub no_cache: bool,

    /// Always pull base images (docker buildx's --pull): what every bakery build does, since each agent starts with empty storage; accepted so that scripts written for buildx run unchanged.
    #[arg(long, env = "BAKERY_PULL", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub pull: bool,

    /// Layer cache repository (implies --cache); each arch uses <repo>-<arch>.
    #[arg(long, env = "BAKERY_CACHE_REPO", global = true)]
    pub cache_repo: Option<String>,
}

/// The subcommands: `build` (the default), `logs`, `status`, `plan`, `pack`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build and push every planned image (the default command).
    Build {
        /// Services to build (as `docker compose build api web`); added to --services.
        // Not `services`: that id is the global --services flag's, and clap
        // would merge the two.
        #[arg(value_name = "SERVICE")]
        named: Vec<String>,
        /// Submit, print the build ids, and return without following.
        #[arg(long, env = "BAKERY_DETACH", value_parser = clap::builder::BoolishValueParser::new())]
        detach: bool,
        /// Context archive codec: zstd (the default: the agent unpacks every context itself) or gzip.
        #[arg(long, env = "BAKERY_CODEC", default_value = "zstd")]
        codec: bakery_pack::Codec,
    },
    /// Follow the log of a submitted build (needs CONTROLLER_URL).
    Logs {
        /// The build id, as `bakery build --detach` prints it.
        id: String,
    },
    /// Show the state of a submitted build (needs CONTROLLER_URL).
    Status {
        /// The build id, as `bakery build --detach` prints it.
        id: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resolve config and compose into the list of builds, and check it.
    Plan {
        /// Services to plan; added to --services.
        // Not `services`: that id is the global --services flag's, and clap
        // would merge the two.
        #[arg(value_name = "SERVICE")]
        named: Vec<String>,
        /// Print the plan as JSON (secrets masked).
        #[arg(long)]
        json: bool,
        /// Skip what needs the network: the check that every base image has
        /// each planned platform, which `build` runs too.
        #[arg(long, env = "BAKERY_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
        offline: bool,
    },
    /// Pack each build context as a content-addressed archive.
    Pack {
        /// Services to pack; added to --services.
        #[arg(value_name = "SERVICE")]
        named: Vec<String>,
        /// Directory the archives are written to (default: bakery-pack in the temporary directory, outside every context: an archive written into the context would be packed by the next run).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// zstd (the default; what bakery's agent reads fastest) or gzip (for tools that read only gzip).
        #[arg(long, env = "BAKERY_CODEC", default_value = "zstd")]
        codec: bakery_pack::Codec,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print bakery's version, the commit it was built from, and its target.
    Version,
}

impl Cli {
    /// Parses the command line. Every subcommand accepts every global
    /// flag, but its `--help` lists only those it reads: `logs` and
    /// `status` none of the plan's, `plan` and `pack` none of a build's
    /// or a controller's.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let input: Vec<String> = Input::augment_args(clap::Command::new("input"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut command = Cli::command();
        command.build();
        let remote = ["controller_url", "insecure"];
        let building = [
            "async_mode",
            "push",
            "arch_tags",
            "provenance",
            "annotations",
            "disk",
            "cache",
            "cache_repo",
            "no_cache",
            "pull",
        ];
        let hidden: [(&str, Vec<&str>); 5] = [
            ("logs", input.iter().map(String::as_str).collect()),
            (
                "status",
                input
                    .iter()
                    .map(String::as_str)
                    .chain(["log_format"])
                    .collect(),
            ),
            (
                "version",
                input
                    .iter()
                    .map(String::as_str)
                    .chain(remote)
                    .chain(["log_format"])
                    .collect(),
            ),
            (
                "plan",
                remote.into_iter().chain(["async_mode", "pull"]).collect(),
            ),
            ("pack", remote.into_iter().chain(building).collect()),
        ];
        for (name, ids) in hidden {
            command = command.mut_subcommand(name, |sub| {
                sub.mut_args(|arg| {
                    if ids.contains(&arg.get_id().as_str()) {
                        arg.hide(true)
                    } else {
                        arg
                    }
                })
            });
        }
        let matches = command.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// `bakery --version` and `bakery version`: the commit and target tell a
/// bug report which binary it is about.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BAKERY_VERSION_COMMIT"),
    ", ",
    env!("BAKERY_VERSION_TARGET"),
    ")"
);

/// `--progress`, as docker buildx takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Colour and bars on a terminal, plain lines elsewhere.
    Auto,
    /// No colour, no bars: lines.
    Plain,
    /// Colour even without a terminal (bars need one).
    Tty,
    /// One JSON object per line, as `--log-format json`.
    Json,
    /// As `json`.
    Rawjson,
    /// No build log and no progress: the summary and errors only.
    Quiet,
}

impl Cli {
    /// `--progress` applied: the log format it implies when `--log-format`
    /// is not given, and the process-wide display settings.
    #[must_use]
    pub fn with_progress(mut self) -> Cli {
        match self.progress {
            Some(ProgressMode::Plain) => {
                self.log_format.get_or_insert(LogFormat::Plain);
                crate::progress::set_display(crate::progress::Display::Lines);
            }
            Some(ProgressMode::Json | ProgressMode::Rawjson) => {
                self.log_format.get_or_insert(LogFormat::Json);
            }
            Some(ProgressMode::Tty) => {
                crate::progress::set_display(crate::progress::Display::Colour);
            }
            Some(ProgressMode::Quiet) => {
                crate::progress::set_display(crate::progress::Display::Quiet);
            }
            Some(ProgressMode::Auto) | None => {}
        }
        self
    }
}

/// How log lines print (`--log-format`, `LOG_FORMAT`);
/// unset, for a person reading a terminal or a CI log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// The message only: no prefix, time or level.
    Simple,
    /// No colour.
    Plain,
    /// One JSON object per line.
    Json,
}
