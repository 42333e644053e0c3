//! `spire-server logger get|set|reset`: the server's live log level.

use spire_common::cli::logger::LoggerApi;
use spire_proto::spire::api::server::logger::v1 as loggerv1;
use spire_proto::spire::api::types;
use tonic::transport::Channel;

use super::{CliResult, Env, SocketArg, client};

/// `logger` subcommands.
pub(crate) type LoggerCommand = spire_common::cli::logger::LoggerCommand<SocketArg>;

/// The server's Logger service over the admin socket.
struct ServerLogger(loggerv1::logger_client::LoggerClient<Channel>);

impl LoggerApi for ServerLogger {
    async fn get_logger(&mut self) -> Result<types::Logger, tonic::Status> {
        Ok(self
            .0
            .get_logger(loggerv1::GetLoggerRequest {})
            .await?
            .into_inner())
    }

    async fn set_log_level(
        &mut self,
        level: types::LogLevel,
    ) -> Result<types::Logger, tonic::Status> {
        let request = loggerv1::SetLogLevelRequest {
            new_level: level as i32,
        };
        Ok(self.0.set_log_level(request).await?.into_inner())
    }

    async fn reset_log_level(&mut self) -> Result<types::Logger, tonic::Status> {
        Ok(self
            .0
            .reset_log_level(loggerv1::ResetLogLevelRequest {})
            .await?
            .into_inner())
    }
}

/// Runs a `logger` subcommand.
pub(crate) async fn run(command: LoggerCommand, env: &mut Env<'_>) -> CliResult {
    spire_common::cli::logger::run(command, env, |socket: &SocketArg| {
        let path = socket.path();
        async move {
            let channel = client::connect(&path?).await?;
            Ok(ServerLogger(loggerv1::logger_client::LoggerClient::new(
                channel,
            )))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::run;

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
