//! `spire-server localauthority x509|jwt show|prepare|activate|taint|revoke`: manual CA
//! rotation and revocation (upstream authorities: `upstreamauthority`, in its own module).

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::localauthority::v1 as lav1;

use super::printer::{go_time_utc, print_proto};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client};

pub(crate) type LocalAuthorityClient =
    lav1::local_authority_client::LocalAuthorityClient<tonic::transport::Channel>;

/// `localauthority` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LocalAuthorityCommand {
    /// Manage the X.509 authorities
    #[command(subcommand)]
    X509(X509Command),
    /// Manage the JWT authorities
    #[command(subcommand)]
    Jwt(JwtCommand),
}

/// `localauthority x509` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum X509Command {
    /// Shows the local X.509 authorities
    Show(CommonArgs),
    /// Prepares a new X.509 authority for use by generating a new key and injecting the resulting CA certificate into the bundle
    Prepare(CommonArgs),
    /// Activates a prepared X.509 authority for use, which will cause it to be used for all X.509 signing operations serviced by this server going forward
    Activate(AuthorityArgs),
    /// Marks the previously active X.509 authority as being tainted
    Taint(AuthorityArgs),
    /// Revokes the previously active X.509 authority by removing it from the bundle and propagating this update throughout the cluster
    Revoke(AuthorityArgs),
}

/// `localauthority jwt` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum JwtCommand {
    /// Shows the local JWT authorities
    Show(CommonArgs),
    /// Prepares a new JWT authority for use by generating a new key and injecting it into the bundle
    Prepare(CommonArgs),
    /// Activates a prepared JWT authority for use, which will cause it to be used for all JWT signing operations serviced by this server going forward
    Activate(AuthorityArgs),
    /// Marks the previously active JWT authority as being tainted
    Taint(AuthorityArgs),
    /// Revokes the previously active JWT authority by removing it from the bundle and propagating this update throughout the cluster
    Revoke(AuthorityArgs),
}

/// Flags of `show` and `prepare`.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Flags of the commands that act on one authority.
#[derive(Debug, Args)]
pub(crate) struct AuthorityArgs {
    /// The authority ID of the authority to act on
    #[arg(long = "authorityID", value_name = "string", default_value = "")]
    authority_id: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `localauthority` subcommand.
pub(crate) async fn run(command: LocalAuthorityCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        LocalAuthorityCommand::X509(c) => run_x509(c, env).await,
        LocalAuthorityCommand::Jwt(c) => run_jwt(c, env).await,
    }
}

pub(crate) async fn la_client(socket: &SocketArg) -> Result<LocalAuthorityClient, CliError> {
    Ok(LocalAuthorityClient::new(
        client::connect(&socket.path()?).await?,
    ))
}

fn require_id(id: &str) -> CliResult {
    if id.is_empty() {
        return Err(CliError::invalid("an authority ID is required"));
    }
    Ok(())
}

/// `  Authority ID: ...` and `  Expires at: ...`; an X.509 authority also names its upstream
/// authority (or says there is none), as upstream's `authoritycommon` prints it.
fn format_state(state: &lav1::AuthorityState, kind: &str) -> String {
    let mut text = format!(
        "  Authority ID: {}\n  Expires at: {}\n",
        state.authority_id,
        go_time_utc(state.expires_at)
    );
    if kind == "X.509" {
        if state.upstream_authority_subject_key_id.is_empty() {
            text.push_str("  Upstream authority ID: No upstream authority\n");
        } else {
            text.push_str(&format!(
                "  Upstream authority Subject Key ID: {}\n",
                state.upstream_authority_subject_key_id
            ));
        }
    }
    text
}

/// The three slots (active, prepared, old) as `show` prints them.
fn format_slots(
    kind: &str,
    active: Option<&lav1::AuthorityState>,
    prepared: Option<&lav1::AuthorityState>,
    old: Option<&lav1::AuthorityState>,
) -> String {
    let mut text = String::new();
    for (i, (slot, lower, state)) in [
        ("Active", "active", active),
        ("Prepared", "prepared", prepared),
        ("Old", "old", old),
    ]
    .into_iter()
    .enumerate()
    {
        if i != 0 {
            text.push('\n');
        }
        text.push_str(&format!("{slot} {kind} authority:\n"));
        match state {
            Some(state) => text.push_str(&format_state(state, kind)),
            None => text.push_str(&format!("  No {lower} {kind} authority found\n")),
        }
    }
    text
}

/// `<Verb> <kind> authority:` followed by the authority, for prepare/activate/taint/revoke.
fn format_action(
    verb: &str,
    kind: &str,
    state: Option<&lav1::AuthorityState>,
) -> Result<String, CliError> {
    let state = state.ok_or_else(|| {
        CliError::invalid(format!(
            "internal error: expected to have {} {kind} authority information",
            verb.to_lowercase()
        ))
    })?;
    Ok(format!(
        "{verb} {kind} authority:\n{}",
        format_state(state, kind)
    ))
}

async fn run_x509(command: X509Command, env: &mut Env<'_>) -> CliResult {
    const KIND: &str = "X.509";
    match command {
        X509Command::Show(args) => {
            let resp = la_client(&args.socket)
                .await?
                .get_x509_authority_state(lav1::GetX509AuthorityStateRequest {})
                .await
                .map_err(CliError::rpc("could not get X.509 authorities: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.GetX509AuthorityStateResponse",
                |env, r| {
                    env.print(&format_slots(
                        KIND,
                        r.active.as_ref(),
                        r.prepared.as_ref(),
                        r.old.as_ref(),
                    ));
                    Ok(())
                },
            )
        }
        X509Command::Prepare(args) => {
            let resp = la_client(&args.socket)
                .await?
                .prepare_x509_authority(lav1::PrepareX509AuthorityRequest {})
                .await
                .map_err(CliError::rpc("could not prepare X.509 authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.PrepareX509AuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Prepared",
                        KIND,
                        r.prepared_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        X509Command::Activate(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .activate_x509_authority(lav1::ActivateX509AuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not activate X.509 authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.ActivateX509AuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Activated",
                        KIND,
                        r.activated_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        X509Command::Taint(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .taint_x509_authority(lav1::TaintX509AuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not taint X.509 authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.TaintX509AuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Tainted",
                        KIND,
                        r.tainted_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        X509Command::Revoke(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .revoke_x509_authority(lav1::RevokeX509AuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not revoke X.509 authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.RevokeX509AuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Revoked",
                        KIND,
                        r.revoked_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
    }
}

async fn run_jwt(command: JwtCommand, env: &mut Env<'_>) -> CliResult {
    const KIND: &str = "JWT";
    match command {
        JwtCommand::Show(args) => {
            let resp = la_client(&args.socket)
                .await?
                .get_jwt_authority_state(lav1::GetJwtAuthorityStateRequest {})
                .await
                .map_err(CliError::rpc("could not get JWT authorities: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.GetJWTAuthorityStateResponse",
                |env, r| {
                    env.print(&format_slots(
                        KIND,
                        r.active.as_ref(),
                        r.prepared.as_ref(),
                        r.old.as_ref(),
                    ));
                    Ok(())
                },
            )
        }
        JwtCommand::Prepare(args) => {
            let resp = la_client(&args.socket)
                .await?
                .prepare_jwt_authority(lav1::PrepareJwtAuthorityRequest {})
                .await
                .map_err(CliError::rpc("could not prepare JWT authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.PrepareJWTAuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Prepared",
                        KIND,
                        r.prepared_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        JwtCommand::Activate(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .activate_jwt_authority(lav1::ActivateJwtAuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not activate JWT authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.ActivateJWTAuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Activated",
                        KIND,
                        r.activated_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        JwtCommand::Taint(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .taint_jwt_authority(lav1::TaintJwtAuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not taint JWT authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.TaintJWTAuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Tainted",
                        KIND,
                        r.tainted_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
        JwtCommand::Revoke(args) => {
            require_id(&args.authority_id)?;
            let resp = la_client(&args.socket)
                .await?
                .revoke_jwt_authority(lav1::RevokeJwtAuthorityRequest {
                    authority_id: args.authority_id.clone(),
                })
                .await
                .map_err(CliError::rpc("could not revoke JWT authority: "))?
                .into_inner();
            print_proto(
                env,
                args.output.output,
                &resp,
                "spire.api.server.localauthority.v1.RevokeJWTAuthorityResponse",
                |env, r| {
                    env.print(&format_action(
                        "Revoked",
                        KIND,
                        r.revoked_authority.as_ref(),
                    )?);
                    Ok(())
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::run;

    #[test]
    fn show_layout_matches_upstream() {
        let active = lav1::AuthorityState {
            authority_id: "abc".into(),
            expires_at: 1_552_410_266,
            upstream_authority_subject_key_id: String::new(),
        };
        assert_eq!(
            format_slots("X.509", Some(&active), None, None),
            "Active X.509 authority:\n  Authority ID: abc\n  Expires at: 2019-03-12 17:04:26 +0000 UTC\n  \
             Upstream authority ID: No upstream authority\n\n\
             Prepared X.509 authority:\n  No prepared X.509 authority found\n\n\
             Old X.509 authority:\n  No old X.509 authority found\n"
        );
        assert_eq!(
            format_action("Tainted", "JWT", Some(&active)).unwrap(),
            "Tainted JWT authority:\n  Authority ID: abc\n  Expires at: 2019-03-12 17:04:26 +0000 UTC\n"
        );
    }

    #[test]
    fn authority_id_is_required() {
        let (code, _, err) = run(&["localauthority", "x509", "taint", "-socketPath", "/x.sock"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: an authority ID is required\n")
        );
        let (code, _, err) = run(&["localauthority", "jwt", "revoke"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: an authority ID is required\n")
        );
    }
}
