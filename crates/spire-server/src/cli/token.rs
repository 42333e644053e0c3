//! `spire-server token generate`: creates a join token (and, with `-spiffeID`, an alias
//! entry the server makes for it).

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::agent::v1 as agentv1;

use super::printer::{id_proto, print_proto};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client};

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Generates a join token
    Generate(GenerateArgs),
}

/// `token generate` flags.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Additional SPIFFE ID to assign the token owner (optional)
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// Token TTL in seconds
    #[arg(
        long = "ttl",
        value_name = "int",
        default_value_t = 600,
        allow_negative_numbers = true
    )]
    ttl: i32,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `token` subcommand.
pub(crate) async fn run(command: TokenCommand, env: &mut Env<'_>) -> CliResult {
    let TokenCommand::Generate(args) = command;
    let agent_id = if args.spiffe_id.is_empty() {
        None
    } else {
        Some(id_proto(&args.spiffe_id)?)
    };
    let channel = client::connect(&args.socket.path()?).await?;
    let token = agentv1::agent_client::AgentClient::new(channel)
        .create_join_token(agentv1::CreateJoinTokenRequest {
            ttl: args.ttl,
            token: String::new(),
            agent_id,
        })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &token,
        "spire.api.types.JoinToken",
        |env, token| {
            env.print(&format!("Token: {}\n", token.value));
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use crate::cli::testutil::run;

    #[test]
    fn bad_spiffe_id_is_reported_before_connecting() {
        let (code, _, err) = run(&[
            "token",
            "generate",
            "-spiffeID",
            "not-an-id",
            "-socketPath",
            "/x.sock",
        ]);
        assert_eq!(code, 1);
        assert!(err.starts_with("Error: "), "{err}");
        assert!(!err.contains("dial unix"), "{err}");
    }
}
