//! Logging setup (`log_level`, `log_format`, `log_file`) and the handle logger.v1 uses to
//! change the level at run time.

/// Changes and resets the running log level.
#[derive(Clone, Default)]
pub struct LogLevelHandle {
    _private: (),
}
