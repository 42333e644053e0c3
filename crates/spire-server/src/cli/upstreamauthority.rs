//! `spire-server upstreamauthority taint|revoke -subjectKeyID <skid>`: taint or revoke the
//! upstream root that signed the server's old X.509 authority, as upstream's commands.

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::localauthority::v1 as lav1;

use super::localauthority::la_client;
use super::printer::print_proto;
use super::{CliError, CliResult, Env, OutputArg, SocketArg};

/// `upstreamauthority` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum UpstreamAuthorityCommand {
    /// Marks the provided X.509 upstream authority as being tainted
    Taint(UpstreamArgs),
    /// Revokes the previously active X.509 upstream authority by removing it from the bundle and propagating this update throughout the cluster
    Revoke(UpstreamArgs),
}

/// Flags of both commands.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// The X.509 Subject Key Identifier (or SKID) of the authority's CA certificate of the upstream X.509 authority
    #[arg(long = "subjectKeyID", value_name = "string", default_value = "")]
    subject_key_id: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

fn require_skid(args: &UpstreamArgs) -> CliResult {
    if args.subject_key_id.is_empty() {
        return Err(CliError::invalid(
            "the Subject Key ID of the X.509 upstream authority is required",
        ));
    }
    Ok(())
}

/// Runs an `upstreamauthority` subcommand.
pub(crate) async fn run(command: UpstreamAuthorityCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        UpstreamAuthorityCommand::Taint(args) => {
            require_skid(&args)?;
            let resp = la_client(&args.socket)
                .await?
                .taint_x509_upstream_authority(lav1::TaintX509UpstreamAuthorityRequest {
                    subject_key_id: args.subject_key_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not taint X.509 upstream authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.TaintX509UpstreamAuthorityResponse",
                |env, r| {
                    env.print(&format!(
                        "Tainted X.509 upstream authority:\n  Subject Key ID: {}\n",
                        r.upstream_authority_subject_key_id
                    ));
                    Ok(())
                },
            )
        }
        UpstreamAuthorityCommand::Revoke(args) => {
            require_skid(&args)?;
            let resp = la_client(&args.socket)
                .await?
                .revoke_x509_upstream_authority(lav1::RevokeX509UpstreamAuthorityRequest {
                    subject_key_id: args.subject_key_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not revoke X.509 upstream authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.RevokeX509UpstreamAuthorityResponse",
                |env, r| {
                    env.print(&format!(
                        "Revoked X.509 upstream authority:\n  Subject Key ID: {}\n",
                        r.upstream_authority_subject_key_id
                    ));
                    Ok(())
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::testutil::run;

    #[test]
    fn subject_key_id_is_required() {
        for command in ["taint", "revoke"] {
            let (code, _, err) = run(&["upstreamauthority", command, "-socketPath", "/x.sock"]);
            assert_eq!(
                (code, err.as_str()),
                (
                    1,
                    "Error: the Subject Key ID of the X.509 upstream authority is required\n"
                )
            );
        }
    }

    #[test]
    fn unreachable_server_names_the_socket() {
        let (code, _, err) = run(&[
            "upstreamauthority",
            "taint",
            "-subjectKeyID",
            "abc",
            "-socketPath",
            "/nonexistent/api.sock",
        ]);
        assert_eq!(code, 1);
        assert!(err.contains("/nonexistent/api.sock"), "{err}");
    }
}
