//! `spire-agent debug getinfo`: the agent's debug service (`spire.agent.debug.v1`) on the
//! admin socket: uptime, cached SVID count, last successful sync and the agent's SVID chain.

use clap::{Args, Subcommand};
use spire_proto::spire::agent::debug::v1 as debugv1;

use super::printer::{go_time_utc, id_string, print_proto};
use super::{AdminSocketArg, CliError, CliResult, Env, OutputArg, client};

/// `debug` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Prints the agent's debug information
    Getinfo(GetInfoArgs),
}

/// Flags of `debug getinfo`.
#[derive(Debug, Args)]
pub(crate) struct GetInfoArgs {
    #[command(flatten)]
    socket: AdminSocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `debug` subcommand.
pub(crate) async fn run(command: DebugCommand, env: &mut Env<'_>) -> CliResult {
    let DebugCommand::Getinfo(args) = command;
    let channel = client::connect(&args.socket.socket_path, "admin").await?;
    let info = debugv1::debug_client::DebugClient::new(channel)
        .get_info(debugv1::GetInfoRequest {})
        .await
        .map_err(CliError::rpc("failed to get info: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &info,
        "spire.agent.debug.v1.GetInfoResponse",
        |env, info| {
            env.print(&format_info(info));
            Ok(())
        },
    )
}

fn format_info(info: &debugv1::GetInfoResponse) -> String {
    let mut text = format!(
        "Uptime:\t\t\t{}s\nSVIDs:\t\t\t{}\nLast sync success:\t{}\n",
        info.uptime,
        info.svids_count,
        go_time_utc(info.last_sync_success)
    );
    for (i, cert) in info.svid_chain.iter().enumerate() {
        text.push_str(&format!(
            "Chain #{}:\t\t{} (expires {})\n",
            i + 1,
            if cert.id.is_some() {
                id_string(cert.id.as_ref())
            } else {
                cert.subject.clone()
            },
            go_time_utc(cert.expires_at)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_layout_names_each_chain_member() {
        let info = debugv1::GetInfoResponse {
            svid_chain: vec![debugv1::get_info_response::Cert {
                id: Some(spire_proto::spire::api::types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: "/spire/agent/join_token/t".into(),
                }),
                expires_at: 0,
                subject: String::new(),
            }],
            uptime: 12,
            svids_count: 3,
            last_sync_success: 0,
            cached_x509_svids_count: 0,
            cached_svidstore_x509_svids_count: 0,
            cached_jwt_svids_count: 0,
        };
        let text = format_info(&info);
        assert!(
            text.starts_with("Uptime:\t\t\t12s\nSVIDs:\t\t\t3\n"),
            "{text}"
        );
        assert!(
            text.contains("Chain #1:\t\tspiffe://example.org/spire/agent/join_token/t"),
            "{text}"
        );
    }
}
