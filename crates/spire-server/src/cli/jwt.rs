//! `spire-server jwt mint`: mints a JWT-SVID for any SPIFFE ID (admin/local only).

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::svid::v1 as svidv1;

use super::printer::{go_duration, id_proto, print_proto};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client, printer};

/// `jwt` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum JwtCommand {
    /// Mints a JWT-SVID
    Mint(MintArgs),
}

/// `jwt mint` flags.
#[derive(Debug, Args)]
pub(crate) struct MintArgs {
    /// SPIFFE ID of the JWT-SVID
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// TTL of the JWT-SVID
    #[arg(long = "ttl", value_name = "duration", default_value = "0s", value_parser = go_duration)]
    ttl: Duration,
    /// Audience claim that will be included in the SVID. Can be used more than once.
    #[arg(verbatim_doc_comment, long = "audience", value_name = "value")]
    audience: Vec<String>,
    /// File to write token to instead of stdout
    #[arg(long = "write", value_name = "string", default_value = "")]
    write: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `jwt` subcommand.
pub(crate) async fn run(command: JwtCommand, env: &mut Env<'_>) -> CliResult {
    let JwtCommand::Mint(args) = command;
    if args.spiffe_id.is_empty() {
        return Err(CliError::invalid("spiffeID must be specified"));
    }
    if args.audience.is_empty() {
        return Err(CliError::invalid("at least one audience must be specified"));
    }
    let id = id_proto(&args.spiffe_id)?;
    let channel = client::connect(&args.socket.path()?).await?;
    let resp = svidv1::svid_client::SvidClient::new(channel)
        .mint_jwtsvid(svidv1::MintJwtsvidRequest {
            id: Some(id),
            audience: args.audience.clone(),
            ttl: i32::try_from(args.ttl.as_secs()).unwrap_or(i32::MAX),
        })
        .await
        .map_err(CliError::rpc("unable to mint SVID: "))?
        .into_inner();
    let (token, expires_at) = resp
        .svid
        .as_ref()
        .map(|s| (s.token.clone(), s.expires_at))
        .filter(|(token, _)| !token.is_empty())
        .ok_or_else(|| CliError::invalid("server response missing token"))?;
    // The response's expires_at is the token's `exp` claim, which upstream reads.
    if printer::lifetime_capped(expires_at, args.ttl) {
        env.eprint(&format!(
            "JWT-SVID lifetime was capped shorter than specified ttl; expires {:?}\n",
            printer::rfc3339_utc(expires_at)
        ));
    }
    if !args.write.is_empty() {
        write_token(&args.write, &token)?;
        env.print(&format!("JWT-SVID written to {}\n", args.write));
        return Ok(());
    }
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.svid.v1.MintJWTSVIDResponse",
        |env, _| {
            env.print(&format!("{token}\n"));
            Ok(())
        },
    )
}

fn write_token(path: &str, token: &str) -> CliResult {
    spire_common::fs::write_with_mode(Path::new(path), token.as_bytes(), 0o600).map_err(|source| {
        CliError::Io {
            path: path.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::testutil::run;

    #[test]
    fn id_and_audience_are_required() {
        let (code, _, err) = run(&["jwt", "mint", "-socketPath", "/x.sock"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: spiffeID must be specified\n")
        );
        let (code, _, err) = run(&["jwt", "mint", "-spiffeID", "spiffe://td/w"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: at least one audience must be specified\n")
        );
    }
}
