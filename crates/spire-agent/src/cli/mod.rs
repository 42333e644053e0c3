//! The `spire-agent` command line: every command upstream's binary has, with the same
//! Go-style flags (`-socketPath`, `-audience`, `-output json`) and the same output.
//!
//! `api ...` and `healthcheck` are clients of the Workload API socket (`-socketPath`, default
//! `/tmp/spire-agent/public/api.sock`); `logger ...` and `debug ...` talk to the admin socket.
//! Failures print `Error: <message>` on stderr and exit with status 1, as upstream does.

mod api;
pub(crate) mod client;
mod config;
mod debug;
mod explain;
mod healthcheck;
mod logger;
pub mod run;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use spire_common::cli::{CliError, OutputArg, OutputFormat};
pub(crate) use spire_common::cli::{CliResult, Env, printer};
use spire_common::cli::{Failure, exit_status, parse_command};

pub use run::{RunArgs, ValidateArgs};

/// Where the Workload API socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_SOCKET_PATH: &str = crate::config::DEFAULT_SOCKET_PATH;
/// Where the admin socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/spire-agent/private/admin.sock";

/// `-socketPath` and `-instance` of the Workload API commands.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// Instance name to substitute into socket templates (env SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE).
    #[arg(verbatim_doc_comment, long = "instance", value_name = "string")]
    pub instance: Option<String>,
    /// Path to the SPIRE Agent API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

impl SocketArg {
    /// The Workload API socket to dial: `-socketPath`, `-instance` with
    /// `SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE`, `SPIRE_AGENT_PUBLIC_SOCKET`, or the default.
    pub fn path(&self) -> Result<PathBuf, CliError> {
        public_socket_path(&self.socket_path, self.instance.as_deref())
    }
}

/// The Workload API socket a client command dials (see [`SocketArg::path`]).
pub(crate) fn public_socket_path(
    socket_path: &std::path::Path,
    instance: Option<&str>,
) -> Result<PathBuf, CliError> {
    spire_common::cli::socket::resolve_socket_path_from_env(
        spire_common::cli::socket::SocketOwner::Agent,
        socket_path,
        DEFAULT_SOCKET_PATH,
        "SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE",
        instance,
    )
}

/// `-socketPath` of the admin commands.
#[derive(Debug, Clone, Args)]
pub struct AdminSocketArg {
    /// Path to the SPIRE Agent admin API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_ADMIN_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

#[derive(Debug, Parser)]
#[command(
    name = "spire-agent",
    version,
    about = "SPIRE Agent: attests workloads and serves their SPIFFE identities",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the agent
    Run(RunArgs),
    /// Validates a SPIRE agent configuration file
    Validate(ValidateArgs),
    /// Determines agent health status
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Workload API commands
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// Debug commands (admin API)
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Logger commands (admin API)
    #[command(subcommand)]
    Logger(logger::LoggerCommand),
    /// Live configuration commands (spire-rs)
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// Runs `spire-agent` with `args` (without the program name) and returns the exit status.
/// Used by `main` and by tests that drive a live agent.
pub async fn run_cli(args: Vec<String>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let mut env = Env {
        out: stdout,
        err: stderr,
        stdin: &mut stdin,
    };
    let result = match parse_command::<Cli>("spire-agent", args, &mut env) {
        Ok(cli) => dispatch(cli.command, &mut env).await,
        Err(code) => return code,
    };
    exit_status(result, &mut env)
}

async fn dispatch(command: Command, env: &mut Env<'_>) -> Result<(), Failure> {
    match command {
        Command::Run(args) => run::execute(args).await.map_err(|e| {
            env.eprint(&format!("Error: {e:#}\n"));
            Failure::Printed
        }),
        Command::Validate(args) => run::validate_command(&args, env),
        Command::Healthcheck(args) => healthcheck::run(args, env).await,
        Command::Api(c) => Ok(api::run(c, env).await?),
        Command::Debug(c) => Ok(debug::run(c, env).await?),
        Command::Logger(c) => Ok(logger::run(c, env).await?),
        Command::Config(c) => Ok(config::run(c, env).await?),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Runs the CLI in-process against buffers.

    /// Runs `args` and returns (exit status, stdout, stderr).
    pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = runtime.block_on(super::run_cli(
            args.iter().map(|s| (*s).to_owned()).collect(),
            &mut out,
            &mut err,
        ));
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::run;

    #[test]
    fn missing_socket_names_the_path_and_the_flag() {
        let (code, out, err) = run(&[
            "api",
            "fetch",
            "x509",
            "-socketPath",
            "/nonexistent/spire/api.sock",
        ]);
        assert_eq!(code, 1);
        assert_eq!(out, "");
        assert!(
            err.starts_with("Error: connection error: dial unix /nonexistent/spire/api.sock"),
            "{err}"
        );
        assert!(err.contains("-socketPath"), "{err}");
    }

    #[test]
    fn bad_output_format_is_a_usage_error() {
        let (code, _, err) = run(&["api", "fetch", "-output", "yaml"]);
        assert_eq!(code, 1);
        assert!(err.contains("invalid format"), "{err}");
    }

    #[test]
    fn go_style_equals_form_is_accepted() {
        let (code, _, err) = run(&["logger", "get", "-socketPath=/nonexistent.sock"]);
        assert_eq!(code, 1);
        assert!(err.contains("dial unix /nonexistent.sock"), "{err}");
    }

    #[test]
    fn long_flags_are_known_per_command() {
        use clap::CommandFactory;
        let root = super::Cli::command();
        let path = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let is_long = |words: &[&str], name| {
            spire_common::cli::usage::is_long_flag(&root, &path(words), name)
        };
        assert!(is_long(&["api", "fetch", "jwt"], "audience"));
        assert!(is_long(&["api", "fetch"], "write"));
        assert!(!is_long(&["api", "watch"], "audience"));
        assert!(is_long(&["run"], "joinToken"));
    }

    #[test]
    fn help_prints_go_usage_and_succeeds() {
        let (code, out, err) = run(&["api", "watch", "-h"]);
        assert_eq!(code, 0);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "Usage of api watch:\n  -instance string\n    \tInstance name to substitute into socket templates (env SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE).\n  -socketPath string\n    \tPath to the SPIRE Agent API socket (default \"/tmp/spire-agent/public/api.sock\")\n"
        );
        let (code, _, err) = run(&["api", "fetch", "x509", "-h"]);
        assert_eq!(code, 0);
        assert!(
            err.contains("  -timeout value\n    \tTime to wait for a response (default 1s)\n"),
            "{err}"
        );
    }

    #[test]
    fn unknown_flag_is_an_error_with_usage() {
        let (code, _, err) = run(&["api", "watch", "-bogus", "x"]);
        assert_eq!(code, 1);
        assert!(err.starts_with("Error: "), "{err}");
        assert!(err.contains("Usage of api watch:"), "{err}");
    }
}
