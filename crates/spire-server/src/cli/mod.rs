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
mod config;
mod debug;
mod entry;
mod entry_explain;
mod federation;
mod healthcheck;
mod jwt;
mod localauthority;
mod logger;
pub mod run;
mod token;
mod upstreamauthority;
mod x509;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use spire_common::cli::{CliError, OutputArg, OutputFormat};
pub(crate) use spire_common::cli::{CliResult, Env, printer};
use spire_common::cli::{Failure, exit_status, parse_command};

pub use run::RunArgs;

/// Where the admin socket is unless `-socketPath` says otherwise (upstream's default).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";

/// `-socketPath` and `-instance`, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// Instance name to substitute into socket templates (env SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE).
    #[arg(verbatim_doc_comment, long = "instance", value_name = "string")]
    pub instance: Option<String>,
    /// Path to the SPIRE Server API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

impl SocketArg {
    /// The admin socket to dial: `-socketPath`, `-instance` with
    /// `SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE`, `SPIRE_SERVER_PRIVATE_SOCKET`, or the default.
    pub fn path(&self) -> Result<PathBuf, CliError> {
        spire_common::cli::socket::resolve_socket_path_from_env(
            spire_common::cli::socket::SocketOwner::Server,
            &self.socket_path,
            DEFAULT_SOCKET_PATH,
            "SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE",
            self.instance.as_deref(),
        )
    }
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
    /// Manage federation relationships
    #[command(subcommand)]
    Federation(federation::FederationCommand),
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
    /// Upstream authority commands
    #[command(subcommand)]
    Upstreamauthority(upstreamauthority::UpstreamAuthorityCommand),
    /// Logger commands
    #[command(subcommand)]
    Logger(logger::LoggerCommand),
    /// Live configuration commands (spire-rs)
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Debug commands
    #[command(subcommand)]
    Debug(debug::DebugCommand),
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
    let result = match parse_command::<Cli>("spire-server", args, &mut env) {
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
        Command::Token(c) => Ok(token::run(c, env).await?),
        Command::Entry(c) => Ok(entry::run(c, env).await?),
        Command::Bundle(c) => Ok(bundle::run(c, env).await?),
        Command::Federation(c) => Ok(federation::run(c, env).await?),
        Command::Agent(c) => Ok(agent::run(c, env).await?),
        Command::X509(c) => Ok(x509::run(c, env).await?),
        Command::Jwt(c) => Ok(jwt::run(c, env).await?),
        Command::Localauthority(c) => Ok(localauthority::run(c, env).await?),
        Command::Upstreamauthority(c) => Ok(upstreamauthority::run(c, env).await?),
        Command::Logger(c) => Ok(logger::run(c, env).await?),
        Command::Config(c) => Ok(config::run(c, env).await?),
        Command::Debug(c) => Ok(debug::run(c, env).await?),
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

    #[test]
    fn long_flags_are_known_per_command() {
        use clap::CommandFactory;
        let root = super::Cli::command();
        let path = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let is_long = |words: &[&str], name| {
            spire_common::cli::usage::is_long_flag(&root, &path(words), name)
        };
        assert!(is_long(&["entry", "create"], "spiffeID"));
        assert!(is_long(&["entry", "create"], "x509SVIDTTL"));
        assert!(!is_long(&["entry", "delete"], "spiffeID"));
        assert!(is_long(&["agent", "purge"], "expiredFor"));
        assert!(is_long(&["localauthority", "x509", "taint"], "authorityID"));
    }

    #[test]
    fn help_prints_go_usage_and_succeeds() {
        let (code, out, err) = run(&["entry", "delete", "-h"]);
        assert_eq!(code, 0);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "Usage of entry delete:\n  -entryID string\n    \tThe Registration Entry ID of the record to delete\n  -file string\n    \tPath to a file containing a JSON structure for batch deletion (optional). If set to '-', read from stdin.\n  -instance string\n    \tInstance name to substitute into socket templates (env SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE).\n  -output value\n    \tDesired output format (pretty, json); default: pretty.\n  -socketPath string\n    \tPath to the SPIRE Server API socket (default \"/tmp/spire-server/private/api.sock\")\n"
        );
        let (code, _, err) = run(&["token", "generate", "-h"]);
        assert_eq!(code, 0);
        assert!(
            err.contains("  -ttl int\n    \tToken TTL in seconds (default 600)\n"),
            "{err}"
        );
    }

    #[test]
    fn unknown_flag_is_an_error_with_usage() {
        let (code, _, err) = run(&["agent", "show", "-bogus", "x"]);
        assert_eq!(code, 1);
        assert!(err.starts_with("Error: "), "{err}");
        assert!(err.contains("Usage of agent show:"), "{err}");
    }
}
