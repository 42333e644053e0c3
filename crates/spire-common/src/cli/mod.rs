//! The command-line toolkit both binaries are built on, so `spire-server` and `spire-agent`
//! behave alike where upstream's do: Go-style flags parsed with clap ([`usage`]), `Error: ...`
//! on stderr with exit status 1, grpc-go's rendering of statuses ([`client`]), and
//! `-output json` as Go's protojson prints it ([`printer`]).

pub mod client;
pub mod logger;
pub mod printer;
pub mod socket;
pub mod usage;

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args, Parser};

/// Why a command failed; printed as `Error: <message>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag is missing, malformed or combined with one it excludes; the message is
    /// upstream's.
    #[error("{0}")]
    Invalid(String),
    /// A unix socket could not be dialled.
    #[error(
        "connection error: dial unix {}: connect: {source} (is {program} running? point -socketPath at its {what} socket)",
        path.display()
    )]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// The process expected behind it (`spire-server`, `spire-agent`).
        program: &'static str,
        /// Which of its sockets: `admin`, `Workload API`.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The process answered a call with an error status.
    #[error("{context}{}", client::format_status(status))]
    Rpc {
        /// What the command was doing, ending in `": "`, or empty.
        context: String,
        /// The status that came back.
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
    /// Some items of a batch failed; their errors are already printed.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// A validation failure with upstream's wording.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// Wraps a status that came back, prefixed with what was being done.
    pub fn rpc(context: &str) -> impl FnOnce(tonic::Status) -> Self + '_ {
        move |status| Self::Rpc {
            context: context.to_owned(),
            status,
        }
    }
}

/// Result of one command.
pub type CliResult = Result<(), CliError>;

/// The streams a command reads and writes; tests pass buffers.
pub struct Env<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
    /// Standard input (`-data -`, `bundle set` without `-path`).
    pub stdin: &'a mut dyn Read,
}

impl Env<'_> {
    /// Writes to stdout; a closed stdout is not worth failing the command for.
    pub fn print(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// Writes to stderr.
    pub fn eprint(&mut self, text: &str) {
        let _ = self.err.write_all(text.as_bytes());
    }

    /// Reads all of stdin.
    pub fn read_stdin(&mut self) -> Result<Vec<u8>, CliError> {
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
    pub fn read_path_or_stdin(&mut self, path: &str) -> Result<Vec<u8>, CliError> {
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

/// Parses an `-output` value (`pretty` or `json`).
pub fn parse_output(value: &str) -> Result<OutputFormat, String> {
    match value.to_ascii_lowercase().as_str() {
        "pretty" => Ok(OutputFormat::Pretty),
        "json" => Ok(OutputFormat::Json),
        _ => Err(format!(
            "invalid format: {value:?}; expected pretty or json"
        )),
    }
}

/// `-output`, shared by the commands upstream gives it to.
#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// Desired output format (pretty, json); default: pretty.
    #[arg(verbatim_doc_comment, long = "output", value_name = "value", default_value = "pretty", hide_default_value = true, value_parser = parse_output)]
    pub output: OutputFormat,
}

/// How a command failed: with an error still to print, or with its message already out.
#[derive(Debug)]
pub enum Failure {
    /// Print `Error: <error>`.
    Error(CliError),
    /// The command already printed why it failed.
    Printed,
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Self::Error(e)
    }
}

/// Normalizes Go-style flags (`-socketPath x`, `-output=json`) and parses them into `T`; on
/// help, usage errors or `-version`, prints what upstream prints and returns the exit status.
pub fn parse_command<T: Parser>(
    program: &str,
    args: Vec<String>,
    env: &mut Env<'_>,
) -> Result<T, i32> {
    let command = T::command();
    let normalized = spire_core::goflags::normalize(args.clone(), |path, name| {
        usage::is_long_flag(&command, path, name)
    });
    let path = usage::command_path(&command, &args);
    let matches = command
        .clone()
        .try_get_matches_from(std::iter::once(program.to_owned()).chain(normalized));
    match matches.and_then(|m| T::from_arg_matches(&m)) {
        Ok(parsed) => Ok(parsed),
        Err(e) => Err(usage::report_parse_error(&command, &path, &e, env)),
    }
}

/// The exit status of a finished command, printing `Error: ...` first when there is one.
pub fn exit_status(result: Result<(), Failure>, env: &mut Env<'_>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(Failure::Error(e)) => {
            env.eprint(&format!("Error: {e}\n"));
            1
        }
        Err(Failure::Printed) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[command(flatten)]
        output: OutputArg,
    }

    fn parse(args: &[&str]) -> (Result<Demo, i32>, String) {
        let (mut out, mut err, mut stdin) = (Vec::new(), Vec::new(), &b""[..]);
        let mut env = Env {
            out: &mut out,
            err: &mut err,
            stdin: &mut stdin,
        };
        let parsed = parse_command::<Demo>(
            "demo",
            args.iter().map(|a| (*a).to_owned()).collect(),
            &mut env,
        );
        (parsed, String::from_utf8_lossy(&err).into_owned())
    }

    #[test]
    fn go_style_output_flag_is_parsed() {
        let (parsed, _) = parse(&["-output", "json"]);
        assert_eq!(parsed.map(|d| d.output.output), Ok(OutputFormat::Json));
        let (parsed, _) = parse(&["-output=PRETTY"]);
        assert_eq!(parsed.map(|d| d.output.output), Ok(OutputFormat::Pretty));
    }

    #[test]
    fn unknown_output_format_is_an_error_with_status_1() {
        let (parsed, err) = parse(&["-output", "yaml"]);
        assert_eq!(parsed.err(), Some(1));
        assert!(err.starts_with("Error: "), "{err}");
        assert!(err.contains("expected pretty or json"), "{err}");
    }

    #[test]
    fn errors_print_and_exit_1() {
        let (mut out, mut err, mut stdin) = (Vec::new(), Vec::new(), &b""[..]);
        let mut env = Env {
            out: &mut out,
            err: &mut err,
            stdin: &mut stdin,
        };
        let code = exit_status(
            Err(CliError::invalid("a spiffe ID is required").into()),
            &mut env,
        );
        assert_eq!(code, 1);
        assert_eq!(exit_status(Ok(()), &mut env), 0);
        assert_eq!(
            String::from_utf8_lossy(&err),
            "Error: a spiffe ID is required\n"
        );
    }
}
