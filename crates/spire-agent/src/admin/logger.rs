//! `spire.api.agent.logger.v1.Logger`: read and change the agent's running log level without a
//! restart (`spire-agent logger get|set|reset`), as upstream's `pkg/agent/api/logger/v1`.

use spire_common::logging::LogLevelHandle;
use spire_proto::spire::api::agent::logger::v1 as pb;
use spire_proto::spire::api::agent::logger::v1::logger_server::Logger;
use spire_proto::spire::api::types::{self, LogLevel};
use tonic::{Request, Response, Status};

/// The logger service over the agent's running logger.
#[derive(Debug, Clone)]
pub struct LoggerService {
    level: LogLevelHandle,
}

impl LoggerService {
    /// The service over `level`; its configured level is what ResetLogLevel returns to.
    pub fn new(level: LogLevelHandle) -> Self {
        tracing::info!(launch_log_level = %level.configured(), "Logger service configured");
        Self { level }
    }

    fn logger(&self) -> types::Logger {
        types::Logger {
            current_level: level_from_name(&self.level.get()) as i32,
            launch_level: level_from_name(&self.level.configured()) as i32,
        }
    }
}

/// A level name as the logging handle reports it to the API enum.
fn level_from_name(name: &str) -> LogLevel {
    match spire_common::logging::canonical_level(name) {
        Some("panic") => LogLevel::Panic,
        Some("fatal") => LogLevel::Fatal,
        Some("error") => LogLevel::Error,
        Some("warn") => LogLevel::Warn,
        Some("info") => LogLevel::Info,
        Some("debug") => LogLevel::Debug,
        Some("trace") => LogLevel::Trace,
        _ => LogLevel::Unspecified,
    }
}

/// The API enum to the level name the logging handle takes.
fn level_name(level: LogLevel) -> Option<&'static str> {
    match level {
        LogLevel::Unspecified => None,
        LogLevel::Panic => Some("panic"),
        LogLevel::Fatal => Some("fatal"),
        LogLevel::Error => Some("error"),
        LogLevel::Warn => Some("warn"),
        LogLevel::Info => Some("info"),
        LogLevel::Debug => Some("debug"),
        LogLevel::Trace => Some("trace"),
    }
}

#[tonic::async_trait]
impl Logger for LoggerService {
    async fn get_logger(
        &self,
        _request: Request<pb::GetLoggerRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        tracing::info!("GetLogger Called");
        Ok(Response::new(self.logger()))
    }

    async fn set_log_level(
        &self,
        request: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        let requested = request.into_inner().new_level;
        let level = LogLevel::try_from(requested)
            .map_err(|_| Status::invalid_argument("unsupported log level"))?;
        let Some(name) = level_name(level) else {
            return Err(Status::invalid_argument(
                "newLevel value cannot be LogLevel_UNSPECIFIED",
            ));
        };
        tracing::info!(new_log_level = name, "SetLogLevel Called");
        self.level
            .set(name)
            .map_err(|e| Status::internal(format!("failed to set log level {name:?}: {e}")))?;
        Ok(Response::new(self.logger()))
    }

    async fn reset_log_level(
        &self,
        _request: Request<pb::ResetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        tracing::info!(launch_log_level = %self.level.configured(), "ResetLogLevel Called");
        self.level
            .reset()
            .map_err(|e| Status::internal(format!("failed to reset log level: {e}")))?;
        Ok(Response::new(self.logger()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_reset_and_bad_levels() {
        let service = LoggerService::new(LogLevelHandle::default());
        let set = |level: i32| {
            service.set_log_level(Request::new(pb::SetLogLevelRequest { new_level: level }))
        };
        let logger = set(LogLevel::Debug as i32).await.unwrap().into_inner();
        assert_eq!(logger.current_level, LogLevel::Debug as i32);
        assert_eq!(logger.launch_level, LogLevel::Info as i32);

        let err = set(LogLevel::Unspecified as i32).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "newLevel value cannot be LogLevel_UNSPECIFIED"
        );
        let err = set(99).await.unwrap_err();
        assert_eq!(err.message(), "unsupported log level");

        let logger = service
            .reset_log_level(Request::new(pb::ResetLogLevelRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(logger.current_level, LogLevel::Info as i32);
    }
}
