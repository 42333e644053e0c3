//! The `spire-agent` command line: every command upstream's binary has, with the same
//! Go-style flags (`-socketPath`, `-audience`, `-output json`) and the same output.
//!
//! `api ...` and `healthcheck` are clients of the Workload API socket (`-socketPath`, default
//! `/tmp/spire-agent/public/api.sock`); `logger ...` and `debug ...` talk to the admin socket.
//! Failures print `Error: <message>` on stderr and exit with status 1, as upstream does.

mod api;
mod client;
mod debug;
mod healthcheck;
mod logger;
mod printer;
pub mod run;
mod usage;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use run::{RunArgs, ValidateArgs};

/// Where the Workload API socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_SOCKET_PATH: &str = crate::config::DEFAULT_SOCKET_PATH;
/// Where the admin socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/spire-agent/private/admin.sock";

/// Why a command failed; printed as `Error: <message>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag is missing, malformed or combined with one it excludes; the message is
    /// upstream's.
    #[error("{0}")]
    Invalid(String),
    /// The socket could not be dialled.
    #[error(
        "connection error: dial unix {}: connect: {source} (is spire-agent running? point -socketPath at its {what} socket)",
        path.display()
    )]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// Which socket: `Workload API` or `admin`.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The agent answered a call with an error status.
    #[error("{context}{}", client::format_status(status))]
    Rpc {
        /// What the command was doing, ending in `": "`, or empty.
        context: String,
        /// The status the agent returned.
        status: tonic::Status,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl CliError {
    /// A validation failure with upstream's wording.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// Wraps a status the agent returned, prefixed with what was being done.
    pub(crate) fn rpc(context: &str) -> impl FnOnce(tonic::Status) -> Self + '_ {
        move |status| Self::Rpc {
            context: context.to_owned(),
            status,
        }
    }
}

/// Result of one command.
pub(crate) type CliResult = Result<(), CliError>;

/// The streams a command writes; tests pass buffers.
pub(crate) struct Env<'a> {
    /// Standard output.
    pub(crate) out: &'a mut dyn Write,
    /// Standard error.
    pub(crate) err: &'a mut dyn Write,
}

impl Env<'_> {
    /// Writes to stdout; a closed stdout is not worth failing the command for.
    pub(crate) fn print(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Writes to stderr.
    pub(crate) fn eprint(&mut self, text: &str) {
        let _ = self.err.write_all(text.as_bytes());
    }
}

/// `-output pretty|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Upstream's human-readable layout.
    #[default]
    Pretty,
    /// The response message in protobuf JSON.
    Json,
}

fn parse_output(value: &str) -> Result<OutputFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "pretty" => Ok(OutputFormat::Pretty),
        "json" => Ok(OutputFormat::Json),
        _ => Err(format!(
            "invalid format: {value:?}; expected pretty or json"
        )),
    }
}

/// `-socketPath` of the Workload API commands.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// Path to the SPIRE Agent API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

/// `-socketPath` of the admin commands.
#[derive(Debug, Clone, Args)]
pub struct AdminSocketArg {
    /// Path to the SPIRE Agent admin API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_ADMIN_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

/// `-output`, shared by the commands upstream gives it to.
#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// Desired output format (pretty, json); default: pretty.
    #[arg(verbatim_doc_comment, long = "output", value_name = "value", default_value = "pretty", hide_default_value = true, value_parser = parse_output)]
    pub output: OutputFormat,
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
}

/// Runs `spire-agent` with `args` (without the program name) and returns the exit status.
/// Used by `main` and by tests that drive a live agent.
pub async fn run_cli(args: Vec<String>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let mut env = Env {
        out: stdout,
        err: stderr,
    };
    let command = match parse(args, &mut env) {
        Ok(command) => command,
        Err(code) => return code,
    };
    match dispatch(command, &mut env).await {
        Ok(()) => 0,
        Err(Failure::Error(e)) => {
            env.eprint(&format!("Error: {e}\n"));
            1
        }
        Err(Failure::Printed) => 1,
    }
}

/// How a command failed: with an error still to print, or with its message already out.
enum Failure {
    Error(CliError),
    Printed,
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Self::Error(e)
    }
}

/// Normalizes Go-style flags and parses; on help, usage errors or version, prints what
/// upstream prints and returns the exit status.
fn parse(args: Vec<String>, env: &mut Env<'_>) -> Result<Command, i32> {
    let command = Cli::command();
    let normalized = spire_core::goflags::normalize(args.clone(), |path, name| {
        usage::is_long_flag(&command, path, name)
    });
    let path = usage::command_path(&command, &args);
    let matches = command
        .clone()
        .try_get_matches_from(std::iter::once("spire-agent".to_owned()).chain(normalized));
    let parsed = matches.and_then(|m| Cli::from_arg_matches(&m));
    match parsed {
        Ok(cli) => Ok(cli.command),
        Err(e) => Err(usage::report_parse_error(&command, &path, &e, env)),
    }
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
}
