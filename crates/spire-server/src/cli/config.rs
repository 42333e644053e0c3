//! `spire-server config reload` (beyond upstream): asks the running server, over its private
//! admin socket, to read its configuration file again (see [`crate::reload`]).

use clap::{Args, Subcommand};

use super::{CliResult, Env, OutputArg, SocketArg, client};

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Re-reads the configuration file of the running server and applies what can change live
    Reload(ReloadArgs),
}

/// Flags of `config reload`.
#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `config` subcommand.
pub(crate) async fn run(command: ConfigCommand, env: &mut Env<'_>) -> CliResult {
    let ConfigCommand::Reload(args) = command;
    let channel = client::connect(&args.socket.path()?).await?;
    spire_common::reload::run_command(channel, args.output.output, env).await
}
