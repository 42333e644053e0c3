//! `logger get|set|reset`, which both binaries have: the live log level of the process
//! behind a socket (the server's admin socket, the agent's admin socket), printed as
//! upstream prints it.

use std::future::Future;

use clap::{Args, Subcommand};
use spire_proto::spire::api::types;

use super::printer::print_proto;
use super::{CliError, CliResult, Env, OutputArg};

/// The three Logger RPCs, which the server's and the agent's Logger services share in shape.
pub trait LoggerApi {
    /// GetLogger.
    fn get_logger(&mut self) -> impl Future<Output = Result<types::Logger, tonic::Status>>;
    /// SetLogLevel.
    fn set_log_level(
        &mut self,
        level: types::LogLevel,
    ) -> impl Future<Output = Result<types::Logger, tonic::Status>>;
    /// ResetLogLevel.
    fn reset_log_level(&mut self) -> impl Future<Output = Result<types::Logger, tonic::Status>>;
}

/// `logger` subcommands; `S` is the binary's `-socketPath` flag.
#[derive(Debug, Subcommand)]
pub enum LoggerCommand<S: Args> {
    /// Gets the logger details
    Get(CommonArgs<S>),
    /// Sets the logger details
    Set(SetArgs<S>),
    /// Reset the logger details to launch level
    Reset(CommonArgs<S>),
}

/// Flags of `logger get` and `logger reset`.
#[derive(Debug, Args)]
pub struct CommonArgs<S: Args> {
    #[command(flatten)]
    socket: S,
    #[command(flatten)]
    output: OutputArg,
}

/// `logger set` flags.
#[derive(Debug, Args)]
pub struct SetArgs<S: Args> {
    /// The new log level, one of (panic, fatal, error, warn, info, debug, trace)
    #[arg(long = "level", value_name = "string", default_value = "")]
    level: String,
    #[command(flatten)]
    socket: S,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `logger` subcommand against the client `connect` opens for the socket flag.
pub async fn run<S, C, Fut>(
    command: LoggerCommand<S>,
    env: &mut Env<'_>,
    connect: impl FnOnce(&S) -> Fut,
) -> CliResult
where
    S: Args,
    C: LoggerApi,
    Fut: Future<Output = Result<C, CliError>>,
{
    let (logger, output) = match command {
        LoggerCommand::Get(args) => {
            let logger = connect(&args.socket)
                .await?
                .get_logger()
                .await
                .map_err(CliError::rpc("error fetching logger: "))?;
            (logger, args.output.output)
        }
        LoggerCommand::Set(args) => {
            if args.level.is_empty() {
                return Err(CliError::invalid("a value (-level) must be set"));
            }
            let level = parse_level(&args.level).ok_or_else(|| {
                CliError::invalid(format!("the value {:?} is not a valid setting", args.level))
            })?;
            let logger = connect(&args.socket)
                .await?
                .set_log_level(level)
                .await
                .map_err(CliError::rpc("failed to set log level: "))?;
            (logger, args.output.output)
        }
        LoggerCommand::Reset(args) => {
            let logger = connect(&args.socket)
                .await?
                .reset_log_level()
                .await
                .map_err(CliError::rpc("failed to reset logger: "))?;
            (logger, args.output.output)
        }
    };
    print_proto(
        env,
        output,
        &logger,
        "spire.api.types.Logger",
        |env, logger| {
            env.print(&format_logger(logger)?);
            Ok(())
        },
    )
}

/// logrus's level names, which upstream accepts (`warn` and `warning` alike).
pub fn parse_level(input: &str) -> Option<types::LogLevel> {
    match input.to_ascii_lowercase().as_str() {
        "panic" => Some(types::LogLevel::Panic),
        "fatal" => Some(types::LogLevel::Fatal),
        "error" => Some(types::LogLevel::Error),
        "warn" | "warning" => Some(types::LogLevel::Warn),
        "info" => Some(types::LogLevel::Info),
        "debug" => Some(types::LogLevel::Debug),
        "trace" => Some(types::LogLevel::Trace),
        _ => None,
    }
}

/// logrus's name for an API level, as upstream prints it.
pub fn level_name(level: i32) -> Option<&'static str> {
    match types::LogLevel::try_from(level).ok()? {
        types::LogLevel::Panic => Some("panic"),
        types::LogLevel::Fatal => Some("fatal"),
        types::LogLevel::Error => Some("error"),
        types::LogLevel::Warn => Some("warning"),
        types::LogLevel::Info => Some("info"),
        types::LogLevel::Debug => Some("debug"),
        types::LogLevel::Trace => Some("trace"),
        types::LogLevel::Unspecified => None,
    }
}

fn format_logger(logger: &types::Logger) -> Result<String, CliError> {
    let current = level_name(logger.current_level).ok_or_else(|| {
        CliError::invalid(
            "internal error: returned current log level is undefined; please report this as a bug",
        )
    })?;
    let launch = level_name(logger.launch_level).ok_or_else(|| {
        CliError::invalid(
            "internal error: returned launch log level is undefined; please report this as a bug",
        )
    })?;
    Ok(format!(
        "Logger Level : {current}\nLaunch Level : {launch}\n\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_layout() {
        let logger = types::Logger {
            current_level: types::LogLevel::Warn as i32,
            launch_level: types::LogLevel::Info as i32,
        };
        assert_eq!(
            format_logger(&logger).ok().as_deref(),
            Some("Logger Level : warning\nLaunch Level : info\n\n")
        );
    }

    #[test]
    fn levels_are_logrus_names() {
        assert_eq!(parse_level("WARNING"), Some(types::LogLevel::Warn));
        assert_eq!(parse_level("warn"), Some(types::LogLevel::Warn));
        assert_eq!(parse_level("loud"), None);
        assert_eq!(level_name(types::LogLevel::Warn as i32), Some("warning"));
        assert_eq!(level_name(types::LogLevel::Unspecified as i32), None);
    }
}
