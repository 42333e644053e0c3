//! `spire-server debug getinfo` (upstream v1.15): the server's uptime, counts and SVID chain
//! from `spire.api.server.debug.v1.Debug/GetInfo` on the admin socket.

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::debug::v1 as debugv1;

use super::printer::{id_string, print_proto, rfc3339_utc};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client};

/// `debug` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Prints debug information about the server
    Getinfo(GetInfoArgs),
}

/// `debug getinfo` flags.
#[derive(Debug, Args)]
pub(crate) struct GetInfoArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `debug` subcommand.
pub(crate) async fn run(command: DebugCommand, env: &mut Env<'_>) -> CliResult {
    let DebugCommand::Getinfo(args) = command;
    let channel = client::connect(&args.socket.path()?).await?;
    let resp = debugv1::debug_client::DebugClient::new(channel)
        .get_info(debugv1::GetInfoRequest {})
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.debug.v1.GetInfoResponse",
        |env, resp| {
            env.print(&pretty(resp));
            Ok(())
        },
    )
}

/// Upstream's pretty layout (`cmd/spire-server/cli/debug/debug.go`).
fn pretty(resp: &debugv1::GetInfoResponse) -> String {
    let uptime = std::time::Duration::from_secs(u64::try_from(resp.uptime).unwrap_or_default());
    let mut text = format!(
        "Server Debug Info:\n  Uptime:                  {}\n  Registered Agents:       {}\n  \
         Registration Entries:    {}\n  Federated Bundles:       {}\n",
        spire_core::duration::format(uptime),
        resp.agents_count,
        resp.entries_count,
        resp.federated_bundles_count,
    );
    if !resp.svid_chain.is_empty() {
        text.push_str("  SVID Chain:\n");
        for (i, cert) in resp.svid_chain.iter().enumerate() {
            let id = match &cert.id {
                Some(id) => id_string(Some(id)),
                None => "(none)".to_owned(),
            };
            text.push_str(&format!(
                "    [{i}] SPIFFE ID:  {id}\n        Subject:    {}\n        Expires At: {}\n",
                cert.subject,
                rfc3339_utc(cert.expires_at)
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use spire_proto::spire::api::types;

    #[test]
    fn pretty_output_is_upstreams() {
        let resp = debugv1::GetInfoResponse {
            svid_chain: vec![debugv1::get_info_response::Cert {
                id: Some(types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: "/spire/server".into(),
                }),
                expires_at: 1_700_000_000,
                subject: "O=SPIRE,C=US".into(),
            }],
            uptime: 3725,
            agents_count: 2,
            federated_bundles_count: 1,
            entries_count: 7,
        };
        assert_eq!(
            pretty(&resp),
            "Server Debug Info:\n  Uptime:                  1h2m5s\n  Registered Agents:       2\n  \
             Registration Entries:    7\n  Federated Bundles:       1\n  SVID Chain:\n    \
             [0] SPIFFE ID:  spiffe://example.org/spire/server\n        Subject:    O=SPIRE,C=US\n        \
             Expires At: 2023-11-14T22:13:20Z\n"
        );
    }
}
