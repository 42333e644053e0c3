//! `spire-server entry create|update|delete|show|count`.

use clap::{Args, Subcommand};
use serde::Deserialize;
use spire_proto::spire::api::server::entry::v1 as entryv1;
use spire_proto::spire::api::types;

use super::client;
use super::printer::{
    go_bool, go_time_utc, id_proto, id_string, pluralize, print_proto, selector_proto,
};
use super::{CliError, CliResult, Env, OutputArg, SocketArg};

type EntryClient = entryv1::entry_client::EntryClient<tonic::transport::Channel>;

/// `entry` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum EntryCommand {
    /// Creates registration entries
    Create(CreateArgs),
    /// Updates registration entries
    Update(UpdateArgs),
    /// Deletes registration entries
    Delete(DeleteArgs),
    /// Displays configured registration entries
    Show(ShowArgs),
    /// Count registration entries
    Count(CountArgs),
    /// Shows which agents would receive registration entries (spire-rs)
    Explain(super::entry_explain::ExplainArgs),
}

/// Flags shared by `entry create` and `entry update`.
#[derive(Debug, Args)]
pub(crate) struct EntryFields {
    /// The SPIFFE ID of this record's parent
    #[arg(long = "parentID", value_name = "string", default_value = "")]
    parent_id: String,
    /// The SPIFFE ID that this record represents
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// The lifetime, in seconds, for x509-SVIDs issued based on this registration entry.
    #[arg(
        verbatim_doc_comment,
        long = "x509SVIDTTL",
        value_name = "int",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    x509_svid_ttl: i32,
    /// The lifetime, in seconds, for JWT-SVIDs issued based on this registration entry.
    #[arg(
        verbatim_doc_comment,
        long = "jwtSVIDTTL",
        value_name = "int",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    jwt_svid_ttl: i32,
    /// Path to a file containing registration JSON (optional). If set to '-', read the JSON from stdin.
    #[arg(
        verbatim_doc_comment,
        long = "data",
        value_name = "string",
        default_value = ""
    )]
    data: String,
    /// A colon-delimited type:value selector. Can be used more than once
    #[arg(long = "selector", value_name = "value")]
    selectors: Vec<String>,
    /// SPIFFE ID of a trust domain to federate with. Can be used more than once
    #[arg(long = "federatesWith", value_name = "value")]
    federates_with: Vec<String>,
    /// If set, the SPIFFE ID in this entry will be granted access to the SPIRE Server's management APIs
    #[arg(long = "admin", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    admin: bool,
    /// A boolean value that, when set, indicates that the resulting issued SVID from this entry must be stored through an SVIDStore plugin
    #[arg(long = "storeSVID", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    store_svid: bool,
    /// A boolean value that, when set, indicates that the entry describes a downstream SPIRE server
    #[arg(long = "downstream", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    downstream: bool,
    /// An expiry, from epoch in seconds, for the resulting registration entry to be pruned
    #[arg(
        long = "entryExpiry",
        value_name = "int",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    entry_expiry: i64,
    /// A DNS name that will be included in SVIDs issued based on this entry, where appropriate. Can be used more than once
    #[arg(long = "dns", value_name = "value")]
    dns_names: Vec<String>,
    /// The entry hint, used to disambiguate entries with the same SPIFFE ID
    #[arg(long = "hint", value_name = "string", default_value = "")]
    hint: String,
    /// A boolean value that, when set, disables prefetching X509 SVID for this entry
    #[arg(long = "disableX509SVIDPrefetch", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    disable_x509_svid_prefetch: Option<bool>,
    /// A boolean value that, when set, includes a unique 'jti' claim in JWT-SVIDs issued for this entry and bypasses the agent JWT-SVID cache
    #[arg(long = "jwtSVIDIncludeJTI", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    jwt_svid_include_jti: Option<bool>,
}

impl EntryFields {
    /// Whether either attribute flag was given (`entry update` then merges them into the
    /// stored attributes).
    fn attribute_flags_given(&self) -> bool {
        self.disable_x509_svid_prefetch.is_some() || self.jwt_svid_include_jti.is_some()
    }

    /// The attributes the flags ask for, as upstream's create sends them: none unless one
    /// of them is true.
    fn additional_attributes(&self) -> Option<types::entry::AdditionalAttributes> {
        let attributes = types::entry::AdditionalAttributes {
            disable_x509_svid_prefetch: self.disable_x509_svid_prefetch.unwrap_or(false),
            jwt_svid_include_jti: self.jwt_svid_include_jti.unwrap_or(false),
        };
        (attributes.disable_x509_svid_prefetch || attributes.jwt_svid_include_jti)
            .then_some(attributes)
    }

    /// `entry update`'s merge: the stored attributes with only the flags given replaced,
    /// so one flag never clears the other attribute (upstream's `mergeAdditionalAttributes`).
    fn merged_attributes(
        &self,
        stored: Option<types::entry::AdditionalAttributes>,
    ) -> types::entry::AdditionalAttributes {
        let mut merged = stored.unwrap_or_default();
        if let Some(value) = self.disable_x509_svid_prefetch {
            merged.disable_x509_svid_prefetch = value;
        }
        if let Some(value) = self.jwt_svid_include_jti {
            merged.jwt_svid_include_jti = value;
        }
        merged
    }
}

/// `entry create` flags.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A custom ID for this registration entry (optional). If not set, a new entry ID will be generated
    #[arg(long = "entryID", value_name = "string", default_value = "")]
    entry_id: String,
    /// If set, this entry will be applied to matching nodes rather than workloads
    #[arg(long = "node", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    node: bool,
    #[command(flatten)]
    fields: EntryFields,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `entry update` flags.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The Registration Entry ID of the record to update
    #[arg(long = "entryID", value_name = "string", default_value = "")]
    entry_id: String,
    #[command(flatten)]
    fields: EntryFields,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `entry delete` flags.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The Registration Entry ID of the record to delete
    #[arg(long = "entryID", value_name = "string", default_value = "")]
    entry_id: String,
    /// Path to a file containing a JSON structure for batch deletion (optional). If set to '-', read from stdin.
    #[arg(
        verbatim_doc_comment,
        long = "file",
        value_name = "string",
        default_value = ""
    )]
    file: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Filters shared by `entry show` and `entry count`.
#[derive(Debug, Args)]
pub(crate) struct EntryFilters {
    /// The Parent ID of the records to show
    #[arg(long = "parentID", value_name = "string", default_value = "")]
    parent_id: String,
    /// The SPIFFE ID of the records to show
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// A colon-delimited type:value selector. Can be used more than once
    #[arg(long = "selector", value_name = "value")]
    selectors: Vec<String>,
    /// SPIFFE ID of a trust domain an entry is federate with. Can be used more than once
    #[arg(long = "federatesWith", value_name = "value")]
    federates_with: Vec<String>,
    /// The match mode used when filtering by selectors. Options: exact, any, superset and subset
    #[arg(
        long = "matchSelectorsOn",
        value_name = "string",
        default_value = "superset"
    )]
    match_selectors_on: String,
    /// The match mode used when filtering by federates with. Options: exact, any, superset and subset
    #[arg(
        long = "matchFederatesWithOn",
        value_name = "string",
        default_value = "superset"
    )]
    match_federates_with_on: String,
    /// A boolean value that, when set, indicates that the entry describes a downstream SPIRE server
    #[arg(long = "downstream", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    downstream: bool,
    /// The Hint of the records to show (optional)
    #[arg(long = "hint", value_name = "string", default_value = "")]
    hint: String,
}

/// `entry show` flags.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The Entry ID of the records to show
    #[arg(long = "entryID", value_name = "string", default_value = "")]
    entry_id: String,
    #[command(flatten)]
    filters: EntryFilters,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `entry count` flags.
#[derive(Debug, Args)]
pub(crate) struct CountArgs {
    #[command(flatten)]
    filters: EntryFilters,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs an `entry` subcommand.
pub(crate) async fn run(command: EntryCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        EntryCommand::Create(args) => create(args, env).await,
        EntryCommand::Update(args) => update(args, env).await,
        EntryCommand::Delete(args) => delete(args, env).await,
        EntryCommand::Show(args) => show(args, env).await,
        EntryCommand::Count(args) => count(args, env).await,
        EntryCommand::Explain(args) => super::entry_explain::run(args, env).await,
    }
}

async fn entry_client(socket: &SocketArg) -> Result<EntryClient, CliError> {
    Ok(EntryClient::new(client::connect(&socket.path()?).await?))
}

// === create ===

fn validate_fields(fields: &EntryFields) -> CliResult {
    if fields.x509_svid_ttl < 0 {
        return Err(CliError::invalid("a positive x509-SVID TTL is required"));
    }
    if fields.jwt_svid_ttl < 0 {
        return Err(CliError::invalid("a positive JWT-SVID TTL is required"));
    }
    Ok(())
}

fn selectors(flags: &[String]) -> Result<Vec<types::Selector>, CliError> {
    flags.iter().map(|s| selector_proto(s)).collect()
}

fn entry_from_fields(
    id: &str,
    fields: &EntryFields,
    parent_id: types::Spiffeid,
    spiffe_id: types::Spiffeid,
) -> Result<types::Entry, CliError> {
    Ok(types::Entry {
        id: id.to_owned(),
        spiffe_id: Some(spiffe_id),
        parent_id: Some(parent_id),
        selectors: selectors(&fields.selectors)?,
        x509_svid_ttl: fields.x509_svid_ttl,
        jwt_svid_ttl: fields.jwt_svid_ttl,
        federates_with: fields.federates_with.clone(),
        admin: fields.admin,
        downstream: fields.downstream,
        expires_at: fields.entry_expiry,
        dns_names: fields.dns_names.clone(),
        store_svid: fields.store_svid,
        hint: fields.hint.clone(),
        additional_attributes: fields.additional_attributes(),
        ..Default::default()
    })
}

fn create_entry_from_flags(args: &CreateArgs) -> Result<types::Entry, CliError> {
    let fields = &args.fields;
    if fields.selectors.is_empty() {
        return Err(CliError::invalid("at least one selector is required"));
    }
    if args.node && !fields.federates_with.is_empty() {
        return Err(CliError::invalid("node entries can not federate"));
    }
    if fields.parent_id.is_empty() && !args.node {
        return Err(CliError::invalid(
            "a parent ID is required if the node flag is not set",
        ));
    }
    if fields.spiffe_id.is_empty() {
        return Err(CliError::invalid("a SPIFFE ID is required"));
    }
    validate_fields(fields)?;
    let spiffe_id = id_proto(&fields.spiffe_id)?;
    let parent_id = if args.node {
        types::Spiffeid {
            trust_domain: spiffe_id.trust_domain.clone(),
            path: "/spire/server".to_owned(),
        }
    } else {
        id_proto(&fields.parent_id)?
    };
    entry_from_fields(&args.entry_id, fields, parent_id, spiffe_id)
}

async fn create(args: CreateArgs, env: &mut Env<'_>) -> CliResult {
    let entries = if args.fields.data.is_empty() {
        vec![create_entry_from_flags(&args)?]
    } else {
        let data = env.read_path_or_stdin(&args.fields.data)?;
        parse_data(&data)?
    };
    let mut client = entry_client(&args.socket).await?;
    let mut resp = client
        .batch_create_entry(entryv1::BatchCreateEntryRequest {
            entries: entries.clone(),
            output_mask: None,
        })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    // The API leaves failed entries out of the results; show what was asked for.
    for (result, requested) in resp.results.iter_mut().zip(&entries) {
        if result.status.as_ref().is_some_and(|s| s.code != 0) {
            result.entry = Some(requested.clone());
        }
    }
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.entry.v1.BatchCreateEntryResponse",
        |env, resp| {
            let results: Vec<_> = resp
                .results
                .iter()
                .map(|r| (r.status.as_ref(), r.entry.as_ref()))
                .collect();
            print_batch(env, &results, "create", "created")
        },
    )
}

/// Prints succeeded entries on stdout and failed ones on stderr, as upstream's create and
/// update do.
fn print_batch(
    env: &mut Env<'_>,
    results: &[(Option<&types::Status>, Option<&types::Entry>)],
    verb: &str,
    _past: &str,
) -> CliResult {
    let ok = |s: &Option<&types::Status>| s.is_none_or(|s| s.code == 0);
    for (status, entry) in results.iter().filter(|(s, _)| ok(s)) {
        let _ = status;
        if let Some(entry) = entry {
            env.print(&format_entry(entry));
        }
    }
    let mut failed = false;
    for (status, entry) in results.iter().filter(|(s, _)| !ok(s)) {
        failed = true;
        let (code, message) = status.map_or((0, ""), |s| (s.code, s.message.as_str()));
        env.eprint(&format!(
            "Failed to {verb} the following entry (code: {}, msg: {message:?}):\n",
            client::code_name_i32(code)
        ));
        if let Some(entry) = entry {
            env.eprint(&format_entry(entry));
        }
    }
    if failed {
        return Err(CliError::Failed(format!(
            "failed to {verb} one or more entries"
        )));
    }
    Ok(())
}

// === update ===

async fn update(args: UpdateArgs, env: &mut Env<'_>) -> CliResult {
    let entries = if args.fields.data.is_empty() {
        let fields = &args.fields;
        if args.entry_id.is_empty() {
            return Err(CliError::invalid("entry ID is required"));
        }
        if fields.selectors.is_empty() {
            return Err(CliError::invalid("at least one selector is required"));
        }
        if fields.parent_id.is_empty() {
            return Err(CliError::invalid("a parent ID is required"));
        }
        if fields.spiffe_id.is_empty() {
            return Err(CliError::invalid("a SPIFFE ID is required"));
        }
        validate_fields(fields)?;
        let parent_id = id_proto(&fields.parent_id)?;
        let spiffe_id = id_proto(&fields.spiffe_id)?;
        vec![entry_from_fields(
            &args.entry_id,
            fields,
            parent_id,
            spiffe_id,
        )?]
    } else {
        let data = env.read_path_or_stdin(&args.fields.data)?;
        parse_data(&data)?
    };
    let mut client = entry_client(&args.socket).await?;
    let mut entries = entries;
    if args.fields.data.is_empty() && args.fields.attribute_flags_given() {
        let stored = client
            .get_entry(entryv1::GetEntryRequest {
                id: args.entry_id.clone(),
                output_mask: None,
            })
            .await
            .map_err(CliError::rpc(
                "failed to fetch existing entry to merge additional attributes: ",
            ))?
            .into_inner();
        for entry in &mut entries {
            entry.additional_attributes =
                Some(args.fields.merged_attributes(stored.additional_attributes));
        }
    }
    let mut resp = client
        .batch_update_entry(entryv1::BatchUpdateEntryRequest {
            entries: entries.clone(),
            input_mask: None,
            output_mask: None,
        })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    for (result, requested) in resp.results.iter_mut().zip(&entries) {
        if result.status.as_ref().is_some_and(|s| s.code != 0) {
            result.entry = Some(requested.clone());
        }
    }
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.entry.v1.BatchUpdateEntryResponse",
        |env, resp| {
            let results: Vec<_> = resp
                .results
                .iter()
                .map(|r| (r.status.as_ref(), r.entry.as_ref()))
                .collect();
            print_batch(env, &results, "update", "updated")
        },
    )
}

// === -data files ===

/// The `-data` document: upstream reads it with Go's encoding/json into its legacy
/// `RegistrationEntries` type, so IDs are strings and names are snake_case.
#[derive(Debug, Deserialize)]
struct DataFile {
    #[serde(default)]
    entries: Vec<DataEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataEntry {
    selectors: Vec<DataSelector>,
    parent_id: String,
    spiffe_id: String,
    x509_svid_ttl: i32,
    jwt_svid_ttl: i32,
    federates_with: Vec<String>,
    entry_id: String,
    admin: bool,
    downstream: bool,
    #[serde(alias = "entry_expiry")]
    #[serde(rename = "entryExpiry")]
    entry_expiry: i64,
    dns_names: Vec<String>,
    revision_number: i64,
    store_svid: bool,
    hint: String,
    additional_attributes: Option<DataAttributes>,
}

/// `additional_attributes` of a `-data` entry (upstream SPIRE 1.15).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataAttributes {
    disable_x509_svid_prefetch: bool,
    jwt_svid_include_jti: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataSelector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

fn optional_id(input: &str) -> Result<Option<types::Spiffeid>, CliError> {
    if input.is_empty() {
        Ok(None)
    } else {
        id_proto(input).map(Some)
    }
}

/// Parses a `-data` document into API entries.
fn parse_data(data: &[u8]) -> Result<Vec<types::Entry>, CliError> {
    let file: DataFile = serde_json::from_slice(data)
        .map_err(|e| CliError::invalid(format!("cannot parse the -data JSON: {e}")))?;
    file.entries
        .into_iter()
        .map(|e| {
            Ok(types::Entry {
                id: e.entry_id,
                spiffe_id: optional_id(&e.spiffe_id)?,
                parent_id: optional_id(&e.parent_id)?,
                selectors: e
                    .selectors
                    .into_iter()
                    .map(|s| types::Selector {
                        r#type: s.kind,
                        value: s.value,
                    })
                    .collect(),
                x509_svid_ttl: e.x509_svid_ttl,
                jwt_svid_ttl: e.jwt_svid_ttl,
                federates_with: e.federates_with,
                admin: e.admin,
                downstream: e.downstream,
                expires_at: e.entry_expiry,
                dns_names: e.dns_names,
                revision_number: e.revision_number,
                store_svid: e.store_svid,
                hint: e.hint,
                created_at: 0,
                additional_attributes: e.additional_attributes.map(|a| {
                    types::entry::AdditionalAttributes {
                        disable_x509_svid_prefetch: a.disable_x509_svid_prefetch,
                        jwt_svid_include_jti: a.jwt_svid_include_jti,
                    }
                }),
            })
        })
        .collect()
}

// === delete ===

async fn delete(args: DeleteArgs, env: &mut Env<'_>) -> CliResult {
    let ids = match (args.entry_id.is_empty(), args.file.is_empty()) {
        (true, true) => {
            return Err(CliError::invalid("either -entryID or -file must be set"));
        }
        (false, false) => {
            return Err(CliError::invalid(
                "the -entryID and -file flags can't be combined",
            ));
        }
        (false, true) => vec![args.entry_id.clone()],
        (true, false) => {
            let data = env.read_path_or_stdin(&args.file)?;
            let req: entryv1::BatchDeleteEntryRequest = serde_json::from_slice(&data)
                .map_err(|e| CliError::invalid(format!("cannot parse the -file JSON: {e}")))?;
            req.ids
        }
    };
    let mut client = entry_client(&args.socket).await?;
    let resp = client
        .batch_delete_entry(entryv1::BatchDeleteEntryRequest { ids })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.entry.v1.BatchDeleteEntryResponse",
        |env, resp| {
            let (failed, succeeded): (Vec<_>, Vec<_>) = resp
                .results
                .iter()
                .partition(|r| r.status.as_ref().is_some_and(|s| s.code != 0));
            for r in &succeeded {
                env.print(&format!("Deleted entry with ID: {}\n", r.id));
            }
            if !succeeded.is_empty() {
                env.print("\n\n");
            }
            for r in &failed {
                let (code, message) = r
                    .status
                    .as_ref()
                    .map(|s| (s.code, s.message.as_str()))
                    .unwrap_or_default();
                env.eprint(&format!(
                    "Failed to delete entry with ID {} (code: {}, msg: {:?})\n",
                    r.id,
                    client::code_name_i32(code),
                    message
                ));
            }
            if failed.is_empty() {
                env.print(&format!("Deleted {} entries successfully", succeeded.len()));
                return Ok(());
            }
            env.print("\n\n");
            if succeeded.is_empty() {
                env.print(&format!("Failed to delete {} entries", failed.len()));
            } else {
                env.print(&format!(
                    "Deleted {} entries successfully, but failed to delete {} entries",
                    succeeded.len(),
                    failed.len()
                ));
            }
            Err(CliError::Failed(
                "failed to delete one or more entries".to_owned(),
            ))
        },
    )
}

// === show / count ===

fn match_behavior(mode: &str) -> Result<i32, CliError> {
    match mode {
        "exact" => Ok(0),
        "subset" => Ok(1),
        "superset" => Ok(2),
        "any" => Ok(3),
        _ => Err(CliError::invalid(format!(
            "match behavior {mode:?} unknown"
        ))),
    }
}

/// The API filter for the show/count flags.
fn list_filter(f: &EntryFilters) -> Result<entryv1::list_entries_request::Filter, CliError> {
    let mut filter = entryv1::list_entries_request::Filter::default();
    if !f.spiffe_id.is_empty() {
        filter.by_spiffe_id = Some(id_proto(&f.spiffe_id)?);
    }
    if !f.parent_id.is_empty() {
        filter.by_parent_id = Some(id_proto(&f.parent_id)?);
    }
    if !f.selectors.is_empty() {
        filter.by_selectors = Some(types::SelectorMatch {
            selectors: selectors(&f.selectors)
                .map_err(|e| CliError::invalid(format!("error parsing selectors: {e}")))?,
            r#match: match_behavior(&f.match_selectors_on)?,
        });
    }
    if !f.federates_with.is_empty() {
        filter.by_federates_with = Some(types::FederatesWithMatch {
            trust_domains: f.federates_with.clone(),
            r#match: match_behavior(&f.match_federates_with_on)?,
        });
    }
    // Upstream's CLI always sends it; false means "no filter" to the server.
    filter.by_downstream = Some(pbjson_types::BoolValue {
        value: f.downstream,
    });
    if !f.hint.is_empty() {
        filter.by_hint = Some(pbjson_types::StringValue {
            value: f.hint.clone(),
        });
    }
    Ok(filter)
}

async fn show(args: ShowArgs, env: &mut Env<'_>) -> CliResult {
    let f = &args.filters;
    if !args.entry_id.is_empty()
        && (!f.parent_id.is_empty() || !f.spiffe_id.is_empty() || !f.selectors.is_empty())
    {
        return Err(CliError::invalid(
            "the -entryID flag can't be combined with others",
        ));
    }
    let filter = list_filter(f)?;
    let mut client = entry_client(&args.socket).await?;
    let mut resp = entryv1::ListEntriesResponse::default();
    if args.entry_id.is_empty() {
        let mut page_token = String::new();
        loop {
            let page = client
                .list_entries(entryv1::ListEntriesRequest {
                    filter: Some(filter.clone()),
                    output_mask: None,
                    page_size: 0,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(CliError::rpc("error fetching entries: "))?
                .into_inner();
            resp.entries.extend(page.entries);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                break;
            }
            page_token = page.next_page_token;
        }
    } else {
        let entry = client
            .get_entry(entryv1::GetEntryRequest {
                id: args.entry_id.clone(),
                output_mask: None,
            })
            .await
            .map_err(CliError::rpc(&format!(
                "error fetching entry ID {}: ",
                args.entry_id
            )))?
            .into_inner();
        resp.entries.push(entry);
    }
    sort_entries(&mut resp.entries);
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.entry.v1.ListEntriesResponse",
        |env, resp| {
            env.print(&format_entries(&resp.entries));
            Ok(())
        },
    )
}

/// Upstream's `SortTypesEntries`: each entry's selectors by type then value, then the entries
/// by SPIFFE ID (trust domain, path), parent ID, X.509 TTL, JWT TTL and selectors (fewer
/// first, then one by one), so both outputs list entries in upstream's order.
fn sort_entries(entries: &mut [types::Entry]) {
    fn id(id: Option<&types::Spiffeid>) -> (&str, &str) {
        id.map_or(("", ""), |i| (i.trust_domain.as_str(), i.path.as_str()))
    }
    fn selectors(entry: &types::Entry) -> (usize, Vec<(&str, &str)>) {
        let pairs = entry
            .selectors
            .iter()
            .map(|s| (s.r#type.as_str(), s.value.as_str()))
            .collect();
        (entry.selectors.len(), pairs)
    }
    for entry in entries.iter_mut() {
        entry
            .selectors
            .sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    }
    entries.sort_by(|a, b| {
        id(a.spiffe_id.as_ref())
            .cmp(&id(b.spiffe_id.as_ref()))
            .then_with(|| id(a.parent_id.as_ref()).cmp(&id(b.parent_id.as_ref())))
            .then_with(|| a.x509_svid_ttl.cmp(&b.x509_svid_ttl))
            .then_with(|| a.jwt_svid_ttl.cmp(&b.jwt_svid_ttl))
            .then_with(|| selectors(a).cmp(&selectors(b)))
    });
}

async fn count(args: CountArgs, env: &mut Env<'_>) -> CliResult {
    let f = list_filter(&args.filters)?;
    let filter = entryv1::count_entries_request::Filter {
        by_spiffe_id: f.by_spiffe_id,
        by_parent_id: f.by_parent_id,
        by_selectors: f.by_selectors,
        by_federates_with: f.by_federates_with,
        by_hint: f.by_hint,
        by_downstream: f.by_downstream,
    };
    let mut client = entry_client(&args.socket).await?;
    let resp = client
        .count_entries(entryv1::CountEntriesRequest {
            filter: Some(filter),
        })
        .await
        .map_err(CliError::rpc("error counting entries: "))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.entry.v1.CountEntriesResponse",
        |env, resp| {
            let count = usize::try_from(resp.count).unwrap_or_default();
            env.print(&pluralize(
                &format!("{count} "),
                "registration entry",
                "registration entries",
                count,
            ));
            env.print("\n");
            Ok(())
        },
    )
}

// === printing ===

/// `Found N entries` followed by each entry.
pub(crate) fn format_entries(entries: &[types::Entry]) -> String {
    let mut text = pluralize(
        &format!("Found {} ", entries.len()),
        "entry",
        "entries",
        entries.len(),
    );
    text.push('\n');
    for entry in entries {
        text.push_str(&format_entry(entry));
    }
    text
}

/// One entry in upstream's layout, followed by a blank line.
pub(crate) fn format_entry(e: &types::Entry) -> String {
    let mut t = String::new();
    let id = if e.id.is_empty() { "(none)" } else { &e.id };
    t.push_str(&format!("Entry ID         : {id}\n"));
    t.push_str(&format!(
        "SPIFFE ID        : {}\n",
        id_string(e.spiffe_id.as_ref())
    ));
    t.push_str(&format!(
        "Parent ID        : {}\n",
        id_string(e.parent_id.as_ref())
    ));
    t.push_str(&format!("Revision         : {}\n", e.revision_number));
    if e.downstream {
        t.push_str("Downstream       : true\n");
    }
    if e.x509_svid_ttl == 0 {
        t.push_str("X509-SVID TTL    : default\n");
    } else {
        t.push_str(&format!("X509-SVID TTL    : {}\n", e.x509_svid_ttl));
    }
    if e.jwt_svid_ttl == 0 {
        t.push_str("JWT-SVID TTL     : default\n");
    } else {
        t.push_str(&format!("JWT-SVID TTL     : {}\n", e.jwt_svid_ttl));
    }
    if e.expires_at != 0 {
        t.push_str(&format!(
            "Expiration time  : {}\n",
            go_time_utc(e.expires_at)
        ));
    }
    for s in &e.selectors {
        t.push_str(&format!("Selector         : {}:{}\n", s.r#type, s.value));
    }
    for id in &e.federates_with {
        t.push_str(&format!("FederatesWith    : {id}\n"));
    }
    for dns in &e.dns_names {
        t.push_str(&format!("DNS name         : {dns}\n"));
    }
    if e.admin {
        t.push_str("Admin            : true\n");
    }
    if e.store_svid {
        t.push_str("StoreSvid        : true\n");
    }
    if !e.hint.is_empty() {
        t.push_str(&format!("Hint             : {}\n", e.hint));
    }
    // Upstream 1.15 prints these two lines (and widens every label to fit them); we keep
    // 1.13's label width so scripts written for it read the other lines unchanged.
    if let Some(a) = e.additional_attributes {
        if a.disable_x509_svid_prefetch {
            t.push_str("DisableX509SvidPrefetch : true\n");
        }
        if a.jwt_svid_include_jti {
            t.push_str("JwtSvidIncludeJti       : true\n");
        }
    }
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::{run, run_with_stdin};

    fn id(td: &str, path: &str) -> Option<types::Spiffeid> {
        Some(types::Spiffeid {
            trust_domain: td.into(),
            path: path.into(),
        })
    }

    #[test]
    fn entry_layout_matches_upstream() {
        let e = types::Entry {
            id: "00000000-0000-0000-0000-000000000003".into(),
            spiffe_id: id("example.org", "/son"),
            parent_id: id("example.org", "/mother"),
            selectors: vec![types::Selector {
                r#type: "baz".into(),
                value: "bat".into(),
            }],
            expires_at: 1_552_410_266,
            federates_with: vec!["spiffe://domain.test".into()],
            dns_names: vec!["a.example".into()],
            admin: true,
            downstream: true,
            x509_svid_ttl: 60,
            store_svid: true,
            hint: "external".into(),
            ..Default::default()
        };
        assert_eq!(
            format_entries(&[e]),
            "Found 1 entry\n\
             Entry ID         : 00000000-0000-0000-0000-000000000003\n\
             SPIFFE ID        : spiffe://example.org/son\n\
             Parent ID        : spiffe://example.org/mother\n\
             Revision         : 0\n\
             Downstream       : true\n\
             X509-SVID TTL    : 60\n\
             JWT-SVID TTL     : default\n\
             Expiration time  : 2019-03-12 17:04:26 +0000 UTC\n\
             Selector         : baz:bat\n\
             FederatesWith    : spiffe://domain.test\n\
             DNS name         : a.example\n\
             Admin            : true\n\
             StoreSvid        : true\n\
             Hint             : external\n\n"
        );
        assert_eq!(format_entries(&[]), "Found 0 entries\n");
    }

    #[test]
    fn create_validates_before_connecting() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-spiffeID", "spiffe://td/w"],
                "at least one selector is required",
            ),
            (
                &["-spiffeID", "spiffe://td/w", "-selector", "unix:uid:1"],
                "a parent ID is required if the node flag is not set",
            ),
            (
                &["-parentID", "spiffe://td/a", "-selector", "unix:uid:1"],
                "a SPIFFE ID is required",
            ),
            (
                &[
                    "-node",
                    "-spiffeID",
                    "spiffe://td/n",
                    "-selector",
                    "a:b",
                    "-federatesWith",
                    "spiffe://x",
                ],
                "node entries can not federate",
            ),
            (
                &[
                    "-parentID",
                    "spiffe://td/a",
                    "-spiffeID",
                    "spiffe://td/w",
                    "-selector",
                    "unix",
                ],
                "selector \"unix\" must be formatted as type:value",
            ),
            (
                &[
                    "-parentID",
                    "spiffe://td/a",
                    "-spiffeID",
                    "spiffe://td/w",
                    "-selector",
                    "a:b",
                    "-x509SVIDTTL",
                    "-1",
                ],
                "a positive x509-SVID TTL is required",
            ),
        ];
        for (flags, message) in cases {
            let mut args = vec!["entry", "create", "-socketPath", "/nonexistent.sock"];
            args.extend_from_slice(flags);
            let (code, out, err) = run(&args);
            assert_eq!(code, 1, "{args:?}");
            assert_eq!(out, "");
            assert_eq!(err, format!("Error: {message}\n"), "{args:?}");
        }
    }

    #[test]
    fn node_entries_get_the_server_as_parent() {
        let args = CreateArgs {
            entry_id: String::new(),
            node: true,
            fields: EntryFields {
                parent_id: String::new(),
                spiffe_id: "spiffe://example.org/nodes".into(),
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                data: String::new(),
                selectors: vec!["k8s_psat:cluster:demo".into()],
                federates_with: vec![],
                admin: false,
                store_svid: false,
                downstream: false,
                entry_expiry: 0,
                dns_names: vec![],
                hint: String::new(),
                disable_x509_svid_prefetch: None,
                jwt_svid_include_jti: None,
            },
            socket: SocketArg {
                instance: None,
                socket_path: "/x".into(),
            },
            output: OutputArg {
                output: crate::cli::OutputFormat::Pretty,
            },
        };
        let e = create_entry_from_flags(&args).unwrap();
        assert_eq!(
            id_string(e.parent_id.as_ref()),
            "spiffe://example.org/spire/server"
        );
        assert_eq!(e.selectors[0].value, "cluster:demo");
    }

    #[test]
    fn data_documents_use_upstream_names() {
        let entries = parse_data(
            br#"{"entries":[{"selectors":[{"type":"unix","value":"uid:1111"}],
                "spiffe_id":"spiffe://example.org/Blog",
                "parent_id":"spiffe://example.org/spire/agent/join_token/TokenBlog",
                "x509_svid_ttl":200,"jwt_svid_ttl":30,"admin":true,"entryExpiry":5,
                "dns_names":["blog"],"federates_with":["spiffe://other.org"],"hint":"h"}]}"#,
        )
        .unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(id_string(e.spiffe_id.as_ref()), "spiffe://example.org/Blog");
        assert_eq!(
            (e.x509_svid_ttl, e.jwt_svid_ttl, e.expires_at),
            (200, 30, 5)
        );
        assert!(e.admin);
        assert_eq!(e.selectors[0].value, "uid:1111");
    }

    #[test]
    fn data_from_stdin_is_parsed_before_connecting() {
        let (code, _, err) = run_with_stdin(
            &[
                "entry",
                "create",
                "-data",
                "-",
                "-socketPath",
                "/nonexistent.sock",
            ],
            b"{not json",
        );
        assert_eq!(code, 1);
        assert!(
            err.starts_with("Error: cannot parse the -data JSON"),
            "{err}"
        );
    }

    #[test]
    fn show_rejects_entry_id_with_filters_and_bad_match_modes() {
        let (code, _, err) = run(&[
            "entry",
            "show",
            "-entryID",
            "x",
            "-spiffeID",
            "spiffe://td/a",
        ]);
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "Error: the -entryID flag can't be combined with others\n"
        );
        let (code, _, err) = run(&[
            "entry",
            "show",
            "-selector",
            "a:b",
            "-matchSelectorsOn",
            "most",
        ]);
        assert_eq!(code, 1);
        assert_eq!(err, "Error: match behavior \"most\" unknown\n");
    }

    #[test]
    fn update_requires_an_entry_id() {
        let (code, _, err) = run(&["entry", "update", "-spiffeID", "spiffe://td/a"]);
        assert_eq!(code, 1);
        assert_eq!(err, "Error: entry ID is required\n");
    }

    #[test]
    fn delete_requires_an_id_or_a_file() {
        let (code, _, err) = run(&["entry", "delete"]);
        assert_eq!(code, 1);
        assert_eq!(err, "Error: either -entryID or -file must be set\n");
    }
}
