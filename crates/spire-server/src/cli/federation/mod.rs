//! `spire-server federation create|list|show|update|delete|refresh`: the dynamic federation
//! relationships of the trust domain API (which foreign trust domains this server federates
//! with, where their bundle endpoints are and how to authenticate them).

mod relationship;

use clap::{Args, Subcommand};
use spire_proto::spire::api::server::trustdomain::v1 as trustdomainv1;
use spire_proto::spire::api::types::{
    self, FederationRelationship, federation_relationship::BundleEndpointProfile,
};

use super::printer::{pluralize, print_proto};
use super::{CliError, CliResult, Env, OutputArg, OutputFormat, SocketArg, client};
use relationship::{FORMAT_PEM, RelationshipConfig, open_error, parse_data};

type TrustDomainClient =
    trustdomainv1::trust_domain_client::TrustDomainClient<tonic::transport::Channel>;

/// Upstream's printer error when a response does not fit the request.
const INTERNAL_PRINTER_ERROR: &str = "internal error: cli printer; please report this bug";

/// `federation` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum FederationCommand {
    /// Creates a dynamic federation relationship with a foreign trust domain
    Create(RelationshipArgs),
    /// Lists all dynamic federation relationships
    List(ListArgs),
    /// Shows a dynamic federation relationship
    Show(ShowArgs),
    /// Updates a dynamic federation relationship with a foreign trust domain
    Update(RelationshipArgs),
    /// Deletes a dynamic federation relationship
    Delete(IdArgs),
    /// Refreshes the bundle from the specified federated trust domain
    Refresh(IdArgs),
}

/// `federation create` and `federation update` flags.
#[derive(Debug, Args)]
pub(crate) struct RelationshipArgs {
    /// Path to a file containing federation relationships in JSON format (optional). If set to '-', read the JSON from stdin.
    #[arg(
        verbatim_doc_comment,
        long = "data",
        value_name = "string",
        default_value = ""
    )]
    data: String,
    /// Name of the trust domain to federate with (e.g., example.org)
    #[arg(long = "trustDomain", value_name = "string", default_value = "")]
    trust_domain: String,
    /// URL of the SPIFFE bundle endpoint that provides the trust bundle (must use the HTTPS protocol)
    #[arg(long = "bundleEndpointURL", value_name = "string", default_value = "")]
    bundle_endpoint_url: String,
    /// Endpoint profile type (either "https_web" or "https_spiffe")
    #[arg(
        long = "bundleEndpointProfile",
        value_name = "string",
        default_value = ""
    )]
    bundle_endpoint_profile: String,
    /// SPIFFE ID of the SPIFFE bundle endpoint server. Only used for 'spiffe' profile.
    #[arg(
        verbatim_doc_comment,
        long = "endpointSpiffeID",
        value_name = "string",
        default_value = ""
    )]
    endpoint_spiffe_id: String,
    /// Path to the trust domain bundle data (optional).
    #[arg(
        verbatim_doc_comment,
        long = "trustDomainBundlePath",
        value_name = "string",
        default_value = ""
    )]
    trust_domain_bundle_path: String,
    /// The format of the bundle data (optional). Either "pem" or "spiffe".
    #[arg(
        verbatim_doc_comment,
        long = "trustDomainBundleFormat",
        value_name = "string",
        default_value = FORMAT_PEM
    )]
    trust_domain_bundle_format: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

impl RelationshipArgs {
    /// The relationship the flags describe.
    fn config(&self) -> RelationshipConfig {
        RelationshipConfig {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: self.bundle_endpoint_profile.clone(),
            endpoint_spiffe_id: self.endpoint_spiffe_id.clone(),
            trust_domain_bundle: None,
            trust_domain_bundle_format: self.trust_domain_bundle_format.clone(),
            trust_domain_bundle_path: self.trust_domain_bundle_path.clone(),
        }
    }

    /// The relationships to send: the `-data` document's, or the one the flags describe.
    fn relationships(&self, env: &mut Env<'_>) -> Result<Vec<FederationRelationship>, CliError> {
        let config = self.config();
        if self.data.is_empty() {
            return Ok(vec![config.to_proto()?]);
        }
        if !config.is_empty() {
            return Err(CliError::invalid(
                "cannot use other flags to specify relationship fields when 'data' flag is set",
            ));
        }
        let data = if self.data == "-" {
            env.read_stdin()?
        } else {
            std::fs::read(&self.data).map_err(|e| CliError::invalid(open_error(&self.data, &e)))?
        };
        parse_data(&data)
    }
}

/// `federation list` flags.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `federation show` flags.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The trust domain name of the federation relationship to show
    #[arg(long = "trustDomain", value_name = "string", default_value = "")]
    trust_domain: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `federation delete` and `federation refresh` flags.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// SPIFFE ID of the trust domain
    #[arg(long = "id", value_name = "string", default_value = "")]
    id: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs a `federation` subcommand.
pub(crate) async fn run(command: FederationCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        FederationCommand::Create(args) => create(args, env).await,
        FederationCommand::List(args) => list(args, env).await,
        FederationCommand::Show(args) => show(args, env).await,
        FederationCommand::Update(args) => update(args, env).await,
        FederationCommand::Delete(args) => delete(args, env).await,
        FederationCommand::Refresh(args) => refresh(args, env).await,
    }
}

async fn trust_domain_client(socket: &SocketArg) -> Result<TrustDomainClient, CliError> {
    Ok(TrustDomainClient::new(
        client::connect(&socket.path()?).await?,
    ))
}

async fn create(args: RelationshipArgs, env: &mut Env<'_>) -> CliResult {
    let relationships = args.relationships(env)?;
    let resp = trust_domain_client(&args.socket)
        .await?
        .batch_create_federation_relationship(
            trustdomainv1::BatchCreateFederationRelationshipRequest {
                federation_relationships: relationships.clone(),
                output_mask: None,
            },
        )
        .await
        .map_err(CliError::rpc("request failed: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.trustdomain.v1.BatchCreateFederationRelationshipResponse",
        |env, resp| {
            let results: Vec<_> = resp
                .results
                .iter()
                .map(|r| (r.status.as_ref(), r.federation_relationship.as_ref()))
                .collect();
            print_batch(env, &results, &relationships, "create")
        },
    )
}

async fn update(args: RelationshipArgs, env: &mut Env<'_>) -> CliResult {
    let relationships = args.relationships(env)?;
    let resp = trust_domain_client(&args.socket)
        .await?
        .batch_update_federation_relationship(
            trustdomainv1::BatchUpdateFederationRelationshipRequest {
                federation_relationships: relationships.clone(),
                input_mask: None,
                output_mask: None,
            },
        )
        .await
        .map_err(CliError::rpc("request failed: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.trustdomain.v1.BatchUpdateFederationRelationshipResponse",
        |env, resp| {
            let results: Vec<_> = resp
                .results
                .iter()
                .map(|r| (r.status.as_ref(), r.federation_relationship.as_ref()))
                .collect();
            print_batch(env, &results, &relationships, "update")
        },
    )
}

/// The pretty output of `create` and `update`, as upstream's: each relationship that
/// succeeded on stdout, then each that failed on stderr with the server's reason (shown as it
/// was asked for, since the API leaves failed ones out of its results), each one preceded by
/// an empty line on stdout.
fn print_batch(
    env: &mut Env<'_>,
    results: &[(Option<&types::Status>, Option<&FederationRelationship>)],
    requested: &[FederationRelationship],
    verb: &str,
) -> CliResult {
    if requested.len() < results.len() {
        return Err(CliError::Failed(INTERNAL_PRINTER_ERROR.to_owned()));
    }
    let failed = |status: &Option<&types::Status>| status.is_some_and(|s| s.code != 0);
    for (_, relationship) in results.iter().filter(|(s, _)| !failed(s)) {
        env.print("\n");
        if let Some(relationship) = relationship {
            env.print(&format_relationship(relationship));
        }
    }
    let mut any_failed = false;
    for ((status, _), relationship) in results
        .iter()
        .zip(requested)
        .filter(|((s, _), _)| failed(s))
    {
        any_failed = true;
        let (code, message) = status.map_or((0, ""), |s| (s.code, s.message.as_str()));
        env.print("\n");
        env.eprint(&format!(
            "Failed to {verb} the following federation relationship (code: {}, msg: {message:?}):\n",
            client::code_name_i32(code)
        ));
        env.eprint(&format_relationship(relationship));
    }
    if any_failed {
        return Err(CliError::Failed(format!(
            "failed to {verb} one or more federation relationships"
        )));
    }
    Ok(())
}

async fn list(args: ListArgs, env: &mut Env<'_>) -> CliResult {
    // One call without a page size, as upstream's: the server answers with every relationship.
    let resp = trust_domain_client(&args.socket)
        .await?
        .list_federation_relationships(trustdomainv1::ListFederationRelationshipsRequest::default())
        .await
        .map_err(CliError::rpc("error listing federation relationship: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.trustdomain.v1.ListFederationRelationshipsResponse",
        |env, resp| {
            env.print(&format_list(&resp.federation_relationships));
            Ok(())
        },
    )
}

async fn show(args: ShowArgs, env: &mut Env<'_>) -> CliResult {
    if args.trust_domain.is_empty() {
        return Err(CliError::invalid("a trust domain name is required"));
    }
    let relationship = trust_domain_client(&args.socket)
        .await?
        .get_federation_relationship(trustdomainv1::GetFederationRelationshipRequest {
            trust_domain: args.trust_domain.clone(),
            output_mask: None,
        })
        .await
        .map_err(CliError::rpc("error showing federation relationship: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &relationship,
        "spire.api.types.FederationRelationship",
        |env, relationship| {
            env.print(&format_show(&args.trust_domain, relationship));
            Ok(())
        },
    )
}

async fn delete(args: IdArgs, env: &mut Env<'_>) -> CliResult {
    if args.id.is_empty() {
        return Err(CliError::invalid("id is required"));
    }
    let resp = trust_domain_client(&args.socket)
        .await?
        .batch_delete_federation_relationship(
            trustdomainv1::BatchDeleteFederationRelationshipRequest {
                trust_domains: vec![args.id.clone()],
            },
        )
        .await
        .map_err(CliError::rpc("failed to delete federation relationship: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.trustdomain.v1.BatchDeleteFederationRelationshipResponse",
        print_deleted,
    )
}

/// `delete`'s pretty output: a line when the relationship is gone, else the server's reason.
fn print_deleted(
    env: &mut Env<'_>,
    resp: &trustdomainv1::BatchDeleteFederationRelationshipResponse,
) -> CliResult {
    let result = resp
        .results
        .first()
        .ok_or_else(|| CliError::Failed(INTERNAL_PRINTER_ERROR.to_owned()))?;
    match result.status.as_ref().filter(|s| s.code != 0) {
        None => {
            env.print("federation relationship deleted.\n");
            Ok(())
        }
        Some(status) => Err(CliError::Failed(format!(
            "failed to delete federation relationship {:?}: {}",
            result.trust_domain, status.message
        ))),
    }
}

async fn refresh(args: IdArgs, env: &mut Env<'_>) -> CliResult {
    if args.id.is_empty() {
        return Err(CliError::invalid("id is required"));
    }
    let answer = trust_domain_client(&args.socket)
        .await?
        .refresh_bundle(trustdomainv1::RefreshBundleRequest {
            trust_domain: args.id.clone(),
        })
        .await;
    match answer {
        Ok(_) => print_refreshed(env, args.output.output),
        Err(status) if status.code() == tonic::Code::NotFound => Err(CliError::Failed(format!(
            "there is no federation relationship with trust domain {:?}",
            args.id
        ))),
        Err(status) => Err(CliError::rpc("failed to refresh bundle: ")(status)),
    }
}

/// What `refresh` prints once the server has refreshed the bundle: upstream prints an OK
/// status, which is what `-output json` shows.
fn print_refreshed(env: &mut Env<'_>, output: OutputFormat) -> CliResult {
    let ok = types::Status {
        code: 0,
        message: "OK".to_owned(),
    };
    print_proto(env, output, &ok, "spire.api.types.Status", |env, _| {
        env.print("Bundle refreshed\n");
        Ok(())
    })
}

/// `Found N federation relationships`, then each relationship after an empty line.
fn format_list(relationships: &[FederationRelationship]) -> String {
    let mut text = pluralize(
        &format!("Found {} ", relationships.len()),
        "federation relationship",
        "federation relationships",
        relationships.len(),
    );
    text.push('\n');
    for relationship in relationships {
        text.push('\n');
        text.push_str(&format_relationship(relationship));
    }
    text
}

/// `show`'s pretty output, naming the trust domain as it was asked for.
fn format_show(trust_domain: &str, relationship: &FederationRelationship) -> String {
    format!(
        "Found a federation relationship with trust domain {trust_domain}:\n\n{}",
        format_relationship(relationship)
    )
}

/// One relationship in upstream's layout.
fn format_relationship(fr: &FederationRelationship) -> String {
    let mut text = format!(
        "Trust domain              : {}\nBundle endpoint URL       : {}\n",
        fr.trust_domain, fr.bundle_endpoint_url
    );
    match &fr.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => {
            text.push_str("Bundle endpoint profile   : https_web\n");
        }
        Some(BundleEndpointProfile::HttpsSpiffe(profile)) => {
            text.push_str("Bundle endpoint profile   : https_spiffe\n");
            text.push_str(&format!(
                "Endpoint SPIFFE ID        : {}\n",
                profile.endpoint_spiffe_id
            ));
        }
        None => {}
    }
    text
}

#[cfg(test)]
mod tests;
