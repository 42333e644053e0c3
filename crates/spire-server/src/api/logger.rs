//! `spire.api.server.logger.v1.Logger`: read and change the running log level without a
//! restart (`spire-server logger get|set|reset`).

use std::sync::Arc;

use spire_proto::spire::api::server::logger::v1 as pb;
use spire_proto::spire::api::server::logger::v1::logger_server::Logger;
use spire_proto::spire::api::types::{self, LogLevel};
use tonic::{Request, Response, Status};

use super::ApiContext;

/// The logger service.
pub struct LoggerApi {
    ctx: Arc<ApiContext>,
}

impl LoggerApi {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }

    fn logger(&self) -> types::Logger {
        types::Logger {
            current_level: level_from_name(&self.ctx.log_level.get()) as i32,
            launch_level: level_from_name(&self.ctx.log_level.configured()) as i32,
        }
    }
}

/// A level name as the logging handle reports it (any case) to the API enum.
fn level_from_name(name: &str) -> LogLevel {
    match name.trim().to_ascii_lowercase().as_str() {
        "panic" => LogLevel::Panic,
        "fatal" => LogLevel::Fatal,
        "error" => LogLevel::Error,
        "warn" | "warning" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => LogLevel::Unspecified,
    }
}

/// The API enum to the level name `log_level` uses.
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
impl Logger for LoggerApi {
    async fn get_logger(
        &self,
        _request: Request<pb::GetLoggerRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        Ok(Response::new(self.logger()))
    }

    async fn set_log_level(
        &self,
        request: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        let audit = super::audit::AuditLog::of(&request);
        let requested = request.into_inner().new_level;
        let level = LogLevel::try_from(requested).map_err(|_| {
            Status::invalid_argument(format!("invalid log level value {requested}"))
        })?;
        let Some(name) = level_name(level) else {
            return Err(Status::invalid_argument(
                "newLevel value cannot be LogLevel_UNSPECIFIED",
            ));
        };
        audit.add("new_log_level", name);
        self.ctx.log_level.set(name).map_err(|e| {
            Status::invalid_argument(format!("failed to set log level {name:?}: {e}"))
        })?;
        tracing::info!(new_level = name, "log level changed");
        Ok(Response::new(self.logger()))
    }

    async fn reset_log_level(
        &self,
        _request: Request<pb::ResetLogLevelRequest>,
    ) -> Result<Response<types::Logger>, Status> {
        self.ctx
            .log_level
            .reset()
            .map_err(|e| Status::internal(format!("failed to reset log level: {e}")))?;
        tracing::info!("log level reset to the launch level");
        Ok(Response::new(self.logger()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_round_trip() {
        for level in [
            LogLevel::Panic,
            LogLevel::Fatal,
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            let name = level_name(level).unwrap();
            assert_eq!(level_from_name(name), level);
            assert_eq!(level_from_name(&name.to_uppercase()), level);
        }
        assert_eq!(level_from_name("warning"), LogLevel::Warn);
        assert_eq!(level_from_name("loud"), LogLevel::Unspecified);
        assert_eq!(level_name(LogLevel::Unspecified), None);
    }
}
