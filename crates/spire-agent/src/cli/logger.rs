//! `spire-agent logger get|set|reset`: the agent's live log level, over the admin socket.

use clap::{Args, Subcommand};
use spire_proto::spire::api::agent::logger::v1 as loggerv1;
use spire_proto::spire::api::types;

use super::printer::print_proto;
use super::{AdminSocketArg, CliError, CliResult, Env, OutputArg, client};

type LoggerClient = loggerv1::logger_client::LoggerClient<tonic::transport::Channel>;

/// `logger` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LoggerCommand {
    /// Gets the logger details
    Get(CommonArgs),
    /// Sets the logger details
    Set(SetArgs),
    /// Reset the logger details to launch level
    Reset(CommonArgs),
}

/// Flags of `logger get` and `logger reset`.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    #[command(flatten)]
    socket: AdminSocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `logger set` flags.
#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// The new log level, one of (panic, fatal, error, warn, info, debug, trace)
    #[arg(long = "level", value_name = "string", default_value = "")]
    level: String,
    #[command(flatten)]
    socket: AdminSocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `logger` subcommand.
pub(crate) async fn run(command: LoggerCommand, env: &mut Env<'_>) -> CliResult {
    let (logger, output) = match command {
        LoggerCommand::Get(args) => {
            let logger = logger_client(&args.socket)
                .await?
                .get_logger(loggerv1::GetLoggerRequest {})
                .await
                .map_err(CliError::rpc("error fetching logger: "))?
                .into_inner();
            (logger, args.output.output)
        }
        LoggerCommand::Set(args) => {
            if args.level.is_empty() {
                return Err(CliError::invalid("a value (-level) must be set"));
            }
            let level = parse_level(&args.level).ok_or_else(|| {
                CliError::invalid(format!("the value {:?} is not a valid setting", args.level))
            })?;
            let logger = logger_client(&args.socket)
                .await?
                .set_log_level(loggerv1::SetLogLevelRequest {
                    new_level: level as i32,
                })
                .await
                .map_err(CliError::rpc("failed to set log level: "))?
                .into_inner();
            (logger, args.output.output)
        }
        LoggerCommand::Reset(args) => {
            let logger = logger_client(&args.socket)
                .await?
                .reset_log_level(loggerv1::ResetLogLevelRequest {})
                .await
                .map_err(CliError::rpc("failed to reset logger: "))?
                .into_inner();
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

async fn logger_client(socket: &AdminSocketArg) -> Result<LoggerClient, CliError> {
    Ok(LoggerClient::new(
        client::connect(&socket.socket_path, "admin").await?,
    ))
}

/// logrus's level names, which upstream accepts (`warn` and `warning` alike).
fn parse_level(input: &str) -> Option<types::LogLevel> {
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
fn level_name(level: i32) -> Option<&'static str> {
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
    use crate::cli::testutil::run;

    #[test]
    fn logger_layout() {
        let logger = types::Logger {
            current_level: types::LogLevel::Warn as i32,
            launch_level: types::LogLevel::Info as i32,
        };
        assert_eq!(
            format_logger(&logger).unwrap(),
            "Logger Level : warning\nLaunch Level : info\n\n"
        );
    }

    #[test]
    fn set_checks_the_level_first() {
        let (code, _, err) = run(&["logger", "set", "-socketPath", "/x.sock"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: a value (-level) must be set\n")
        );
        let (code, _, err) = run(&["logger", "set", "-level", "loud"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: the value \"loud\" is not a valid setting\n")
        );
        assert_eq!(parse_level("WARNING"), Some(types::LogLevel::Warn));
    }

    /// A logger service that reports WARN now and INFO at launch.
    struct FakeLogger;

    #[tonic::async_trait]
    impl loggerv1::logger_server::Logger for FakeLogger {
        async fn get_logger(
            &self,
            _: tonic::Request<loggerv1::GetLoggerRequest>,
        ) -> Result<tonic::Response<types::Logger>, tonic::Status> {
            Ok(tonic::Response::new(types::Logger {
                current_level: types::LogLevel::Warn as i32,
                launch_level: types::LogLevel::Info as i32,
            }))
        }
        async fn set_log_level(
            &self,
            _: tonic::Request<loggerv1::SetLogLevelRequest>,
        ) -> Result<tonic::Response<types::Logger>, tonic::Status> {
            Err(tonic::Status::permission_denied("not allowed"))
        }
        async fn reset_log_level(
            &self,
            _: tonic::Request<loggerv1::ResetLogLevelRequest>,
        ) -> Result<tonic::Response<types::Logger>, tonic::Status> {
            Err(tonic::Status::unimplemented("no"))
        }
    }

    #[test]
    fn talks_to_a_server_over_the_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let socket_str = socket.to_str().unwrap().to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(loggerv1::logger_server::LoggerServer::new(FakeLogger))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let (code, out, err) = run(&["logger", "get", "-socketPath", &socket_str]);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(out, "Logger Level : warning\nLaunch Level : info\n\n");
        let (code, out, _) = run(&[
            "logger",
            "get",
            "-socketPath",
            &socket_str,
            "-output",
            "json",
        ]);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "{\"current_level\":\"WARN\",\"launch_level\":\"INFO\"}\n"
        );
        let (code, out, err) = run(&[
            "logger",
            "set",
            "-level",
            "debug",
            "-socketPath",
            &socket_str,
        ]);
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "Error: failed to set log level: rpc error: code = PermissionDenied desc = not allowed\n"
        );
        runtime.shutdown_background();
    }
}
