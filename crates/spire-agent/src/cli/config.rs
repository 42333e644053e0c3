//! `spire-agent config reload` (beyond upstream): asks the running agent, over its admin
//! socket (`admin_socket_path`), to read its configuration file again (see
//! [`crate::reload`]).

use clap::{Args, Subcommand};

use super::{AdminSocketArg, CliResult, Env, OutputArg, client};

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Re-reads the configuration file of the running agent and applies what can change live
    Reload(ReloadArgs),
}

/// Flags of `config reload`.
#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    socket: AdminSocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `config` subcommand.
pub(crate) async fn run(command: ConfigCommand, env: &mut Env<'_>) -> CliResult {
    let ConfigCommand::Reload(args) = command;
    let channel = client::connect(&args.socket.socket_path, "admin").await?;
    spire_common::reload::run_command(channel, args.output.output, env).await
}
