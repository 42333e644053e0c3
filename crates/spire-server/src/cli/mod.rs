//! The `spire-server` command line: every command upstream's binary has, with the same
//! Go-style flags (`-spiffeID`, `-socketPath`, `-output json`), the same pretty output and the
//! same `-output json` (protobuf JSON with proto field names, unpopulated fields included).
//!
//! Every command except `run` and `validate` is a client of the server's admin unix socket
//! (`-socketPath`, default `/tmp/spire-server/private/api.sock`). Failures print
//! `Error: <message>` on stderr and exit with status 1, as upstream does.

mod agent;
mod bundle;
mod client;
mod entry;
mod healthcheck;
mod jwt;
mod localauthority;
mod logger;
mod printer;
pub mod run;
mod token;
mod usage;
mod x509;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use run::RunArgs;

/// Where the admin socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";

/// Why a command failed; printed as `Error: <message>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag is missing, malformed or combined with one it excludes; the message is
    /// upstream's.
    #[error("{0}")]
    Invalid(String),
    /// The admin socket could not be dialled.
    #[error(
        "connection error: dial unix {}: connect: {source} (is spire-server running? point -socketPath at its admin socket)",
        path.display()
    )]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The server answered a call with an error status.
    #[error("{context}{}", client::format_status(status))]
    Rpc {
        /// What the command was doing, ending in `": "`, or empty.
        context: String,
        /// The status the server returned.
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
    /// The server reported that some items of a batch failed (already printed).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// A validation failure with upstream's wording.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// Wraps a status the server returned, prefixed with what was being done.
    pub(crate) fn rpc(context: &str) -> impl FnOnce(tonic::Status) -> Self + '_ {
        move |status| Self::Rpc {
            context: context.to_owned(),
            status,
        }
    }
}

/// Result of one command.
pub(crate) type CliResult = Result<(), CliError>;

/// The streams a command reads and writes; tests pass buffers.
pub(crate) struct Env<'a> {
    /// Standard output.
    pub(crate) out: &'a mut dyn Write,
    /// Standard error.
    pub(crate) err: &'a mut dyn Write,
    /// Standard input (`-data -`, `bundle set` without `-path`).
    pub(crate) stdin: &'a mut dyn Read,
}

impl Env<'_> {
    /// Writes to stdout; a closed stdout is not worth failing the command for.
    pub(crate) fn print(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
    }

    /// Writes to stderr.
    pub(crate) fn eprint(&mut self, text: &str) {
        let _ = self.err.write_all(text.as_bytes());
    }

    /// Reads all of stdin.
    pub(crate) fn read_stdin(&mut self) -> Result<Vec<u8>, CliError> {
        let mut data = Vec::new();
        self.stdin
            .read_to_end(&mut data)
            .map_err(|source| CliError::Io {
                path: PathBuf::from("stdin"),
                source,
            })?;
        Ok(data)
    }

    /// Reads a file, or stdin when `path` is `-`.
    pub(crate) fn read_path_or_stdin(&mut self, path: &str) -> Result<Vec<u8>, CliError> {
        if path == "-" {
            return self.read_stdin();
        }
        std::fs::read(path).map_err(|source| CliError::Io {
            path: PathBuf::from(path),
            source,
        })
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

/// `-socketPath`, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// Path to the SPIRE Server API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_SOCKET_PATH)]
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
    name = "spire-server",
    version,
    about = "SPIRE Server: issues SPIFFE identities to agents and workloads",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server
    Run(RunArgs),
    /// Validates a SPIRE server configuration file
    Validate(run::ValidateArgs),
    /// Determines server health status
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Join token commands
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Registration entry commands
    #[command(subcommand)]
    Entry(entry::EntryCommand),
    /// Trust bundle commands
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Attested agent commands
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// X509-SVID commands
    #[command(subcommand)]
    X509(x509::X509Command),
    /// JWT-SVID commands
    #[command(subcommand)]
    Jwt(jwt::JwtCommand),
    /// Local authority commands
    #[command(subcommand)]
    Localauthority(localauthority::LocalAuthorityCommand),
    /// Logger commands
    #[command(subcommand)]
    Logger(logger::LoggerCommand),
}

/// Runs `spire-server` with `args` (without the program name) and returns the exit status;
/// stdin is the process's. Used by `main` and by tests that drive a live server.
pub async fn run_cli(args: Vec<String>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    run_cli_with_stdin(args, &mut stdin, stdout, stderr).await
}

/// [`run_cli`] with an explicit stdin, for tests of `-data -` and `bundle set`.
pub async fn run_cli_with_stdin(
    args: Vec<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let mut env = Env {
        out: stdout,
        err: stderr,
        stdin,
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
        .try_get_matches_from(std::iter::once("spire-server".to_owned()).chain(normalized));
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
        Command::Token(c) => Ok(token::run(c, env).await?),
        Command::Entry(c) => Ok(entry::run(c, env).await?),
        Command::Bundle(c) => Ok(bundle::run(c, env).await?),
        Command::Agent(c) => Ok(agent::run(c, env).await?),
        Command::X509(c) => Ok(x509::run(c, env).await?),
        Command::Jwt(c) => Ok(jwt::run(c, env).await?),
        Command::Localauthority(c) => Ok(localauthority::run(c, env).await?),
        Command::Logger(c) => Ok(logger::run(c, env).await?),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Runs the CLI in-process against buffers.

    /// Runs `args` and returns (exit status, stdout, stderr).
    pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
        run_with_stdin(args, b"")
    }

    /// Runs `args` with `stdin` and returns (exit status, stdout, stderr).
    pub(crate) fn run_with_stdin(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut input = stdin;
        let code = runtime.block_on(super::run_cli_with_stdin(
            args.iter().map(|s| (*s).to_owned()).collect(),
            &mut input,
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
            "agent",
            "list",
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
        let (code, _, err) = run(&["entry", "show", "-output", "yaml"]);
        assert_eq!(code, 1);
        assert!(err.contains("invalid format"), "{err}");
    }

    #[test]
    fn go_style_equals_form_is_accepted() {
        let (code, _, err) = run(&[
            "entry",
            "show",
            "-socketPath=/nonexistent.sock",
            "-output=json",
        ]);
        assert_eq!(code, 1);
        assert!(err.contains("dial unix /nonexistent.sock"), "{err}");
    }
}
