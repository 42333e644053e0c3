//! `spire-agent logger get|set|reset`: the agent's live log level, over the admin socket.

use spire_common::cli::logger::LoggerApi;
use spire_proto::spire::api::agent::logger::v1 as loggerv1;
use spire_proto::spire::api::types;
use tonic::transport::Channel;

use super::{AdminSocketArg, CliResult, Env, client};

/// `logger` subcommands.
pub(crate) type LoggerCommand = spire_common::cli::logger::LoggerCommand<AdminSocketArg>;

/// The agent's Logger service over the admin socket.
struct AgentLogger(loggerv1::logger_client::LoggerClient<Channel>);

impl LoggerApi for AgentLogger {
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
    spire_common::cli::logger::run(command, env, |socket: &AdminSocketArg| {
        let path = socket.socket_path.clone();
        async move {
            let channel = client::connect(&path, "admin").await?;
            Ok(AgentLogger(loggerv1::logger_client::LoggerClient::new(
                channel,
            )))
        }
    })
    .await
}
