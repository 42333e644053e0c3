//! `spire-server run` and `spire-server validate`: the flags, and the seam where the server
//! and the config loader plug in.

use std::path::PathBuf;

use clap::Args;

use super::printer::go_bool;
use super::{Env, Failure};

/// Flags of `spire-server run`; values given here override the config file's.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Path to a SPIRE config file
    #[arg(
        long = "config",
        value_name = "string",
        default_value = "conf/server/server.conf"
    )]
    pub config: PathBuf,
    /// Expand environment variables in SPIRE config file
    #[arg(long = "expandEnv", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub expand_env: bool,
    /// IP address or DNS name of the SPIRE server
    #[arg(long = "bindAddress", value_name = "string")]
    pub bind_address: Option<String>,
    /// Port number of the SPIRE server
    #[arg(long = "serverPort", value_name = "int")]
    pub server_port: Option<u16>,
    /// Path to bind the SPIRE Server API socket to
    #[arg(long = "socketPath", value_name = "string")]
    pub socket_path: Option<PathBuf>,
    /// The trust domain that this server belongs to
    #[arg(long = "trustDomain", value_name = "string")]
    pub trust_domain: Option<String>,
    /// 'debug', 'info', 'warn', or 'error'
    #[arg(long = "logLevel", value_name = "string")]
    pub log_level: Option<String>,
    /// 'text' or 'json'
    #[arg(long = "logFormat", value_name = "string")]
    pub log_format: Option<String>,
    /// File to write logs to
    #[arg(long = "logFile", value_name = "string")]
    pub log_file: Option<PathBuf>,
    /// Include source file, line number and function name in log lines
    #[arg(long = "logSourceLocation", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub log_source_location: bool,
    /// Directory to store runtime data to
    #[arg(long = "dataDir", value_name = "string")]
    pub data_dir: Option<PathBuf>,
}

/// Flags of `spire-server validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Path to a SPIRE config file
    #[arg(
        long = "config",
        value_name = "string",
        default_value = "conf/server/server.conf"
    )]
    pub config: PathBuf,
    /// Expand environment variables in SPIRE config file
    #[arg(long = "expandEnv", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub expand_env: bool,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn execute(args: RunArgs) -> anyhow::Result<()> {
    crate::server::run_command(args).await
}

/// Loads and checks the config file and its plugins without starting anything.
pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    crate::server::validate_file(&args.config, args.expand_env)
}

/// `spire-server validate`: prints whether the config file is valid.
pub(super) fn validate_command(args: &ValidateArgs, env: &mut Env<'_>) -> Result<(), Failure> {
    match validate(args) {
        Ok(()) => {
            env.print("SPIRE server configuration file is valid.\n");
            Ok(())
        }
        Err(e) => {
            env.eprint(&format!(
                "SPIRE server configuration file is invalid: {e:#}\n"
            ));
            Err(Failure::Printed)
        }
    }
}
