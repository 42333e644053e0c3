//! Conversions between the wire types (`spire.api.types`) and the datastore records, with
//! the validation upstream applies on the way in, and the mapping of internal errors to gRPC
//! statuses. Every service shares these so that an entry or agent looks the same whichever
//! RPC returns it, and so that every field round-trips (spire-controller-manager checks).

use std::fmt;

use prost::Message as _;
use spire_core::selector::{Selector, SelectorMatch};
use spire_core::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
use spire_proto::spire::api::types;
use tonic::{Code, Status};

use crate::ca::{CaError, RefusalKind};
use crate::datastore::{self, AttestedNode, DataStoreError, RegistrationEntry};

/// The longest hint upstream accepts on an entry.
pub const HINT_MAXIMUM_LENGTH: usize = 1024;
/// The longest entry ID the datastore accepts.
pub const ENTRY_ID_MAXIMUM_LENGTH: usize = 255;

/// Why a wire value cannot become a record (or a record cannot be shown on the wire); the
/// message says which field is wrong and why, and is what the caller sees after the RPC's
/// own prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A SPIFFE ID field was absent.
    #[error("request must specify SPIFFE ID")]
    MissingId,
    /// A SPIFFE ID or trust domain that does not parse.
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
    /// The ID is in another trust domain.
    #[error("{id:?} is not a member of trust domain {trust_domain:?}")]
    NotMember {
        /// The offending ID.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The ID has no path where one is required.
    #[error("{id:?} is not {role} in trust domain {trust_domain:?}; path is empty")]
    EmptyPath {
        /// The offending ID.
        id: String,
        /// "a member", "an agent" or "a workload".
        role: &'static str,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The ID is in the reserved `/spire` namespace where a workload ID is required.
    #[error(
        "{id:?} is not a workload in trust domain {trust_domain:?}; path is in the reserved namespace"
    )]
    ReservedPath {
        /// The offending ID.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The ID is not under `/spire/agent/` where an agent ID is required.
    #[error(
        "{id:?} is not an agent in trust domain {trust_domain:?}; path is not in the agent namespace"
    )]
    NotAgent {
        /// The offending ID.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// A field-level problem, already phrased for the user (e.g. `invalid parent ID: ...`).
    #[error("{field}: {reason}")]
    Field {
        /// Which field, as upstream names it in messages (`invalid DNS name`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A whole-value problem phrased for the user (e.g. `selector list is empty`).
    #[error("{0}")]
    Invalid(String),
}

impl ConvertError {
    fn field(field: &'static str, reason: impl fmt::Display) -> Self {
        Self::Field {
            field,
            reason: reason.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Status helpers
// ---------------------------------------------------------------------------------------

/// Builds a gRPC status whose message is `msg` or `msg: err`, as upstream's `api.MakeErr`.
pub fn make_err(code: Code, msg: &str, err: Option<&dyn fmt::Display>) -> Status {
    Status::new(code, status_message(code, msg, err))
}

/// Builds a per-item `types::Status` as upstream's `api.MakeStatus` does.
pub fn make_status(code: Code, msg: &str, err: Option<&dyn fmt::Display>) -> types::Status {
    types::Status {
        code: code as i32,
        message: status_message(code, msg, err),
    }
}

/// The per-item status of a successful item: code 0, message `OK`.
pub fn ok_status() -> types::Status {
    types::Status {
        code: Code::Ok as i32,
        message: "OK".to_owned(),
    }
}

/// `msg: err`, except for NotFound, whose inner error upstream neither returns nor logs
/// (`agent not found`, `failed to update entry`): what was not found is in the request.
fn status_message(code: Code, msg: &str, err: Option<&dyn fmt::Display>) -> String {
    match err {
        Some(err) if code != Code::NotFound => format!("{msg}: {err}"),
        _ => msg.to_owned(),
    }
}

/// The answer to every WIT-SVID RPC (newer than upstream v1.13; upstream v1.15 serves them
/// behind a feature flag): not implemented here yet, said plainly rather than half done.
pub fn wit_svids_unsupported() -> Status {
    Status::unimplemented("WIT-SVIDs are not supported by this server yet")
}

/// The gRPC code upstream returns for a datastore error (its status code passes through).
pub fn datastore_code(err: &DataStoreError) -> Code {
    match err {
        DataStoreError::NotFound(_) => Code::NotFound,
        DataStoreError::AlreadyExists(_) => Code::AlreadyExists,
        DataStoreError::InvalidArgument(_) => Code::InvalidArgument,
        DataStoreError::Unavailable(_) => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// A status for a datastore failure: the datastore's code, `msg: err` as message.
pub fn datastore_status(msg: &str, err: &DataStoreError) -> Status {
    make_err(datastore_code(err), msg, Some(err))
}

/// The gRPC code for a CA failure: bad input is InvalidArgument, a CA that is not ready yet
/// is Unavailable (clients retry), everything else Internal as upstream.
pub fn ca_code(err: &CaError) -> Code {
    match err {
        CaError::InvalidArgument(_) => Code::InvalidArgument,
        CaError::NotReady(_) => Code::Unavailable,
        CaError::FailedPrecondition(_) => Code::FailedPrecondition,
        CaError::Refused { kind, .. } => match kind {
            RefusalKind::InvalidArgument => Code::InvalidArgument,
            RefusalKind::FailedPrecondition => Code::FailedPrecondition,
            RefusalKind::Internal => Code::Internal,
        },
        _ => Code::Internal,
    }
}

/// A status for a CA failure with `msg: err` as message; a refusal keeps its own words.
pub fn ca_status(msg: &str, err: &CaError) -> Status {
    match err {
        CaError::Refused { message, .. } => Status::new(ca_code(err), message.clone()),
        _ => make_err(ca_code(err), msg, Some(err)),
    }
}

/// `google.rpc.Status`, which carries typed details in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<pbjson_types::Any>,
}

/// A PermissionDenied status carrying `spire.api.types.PermissionDeniedDetails`, which
/// upstream agents read to decide whether to re-attest.
pub fn permission_denied(reason: types::permission_denied_details::Reason, msg: &str) -> Status {
    let details = types::PermissionDeniedDetails {
        reason: reason as i32,
    };
    let rpc = RpcStatus {
        code: Code::PermissionDenied as i32,
        message: msg.to_owned(),
        details: vec![pbjson_types::Any {
            type_url: "type.googleapis.com/spire.api.types.PermissionDeniedDetails".to_owned(),
            value: details.encode_to_vec().into(),
        }],
    };
    Status::with_details(
        Code::PermissionDenied,
        msg.to_owned(),
        rpc.encode_to_vec().into(),
    )
}

// ---------------------------------------------------------------------------------------
// SPIFFE IDs
// ---------------------------------------------------------------------------------------

/// Parses a wire SPIFFE ID (`{trust_domain, path}`).
pub fn id_from_proto(id: Option<&types::Spiffeid>) -> Result<SpiffeId, ConvertError> {
    let id = id.ok_or(ConvertError::MissingId)?;
    let trust_domain = TrustDomain::new(&id.trust_domain)?;
    Ok(SpiffeId::from_path(&trust_domain, &id.path)?)
}

/// The wire form of a SPIFFE ID.
pub fn proto_from_id(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: id.trust_domain_name().to_owned(),
        path: id.path().to_owned(),
    }
}

/// Parses a stored `spiffe://td/path` string into its wire form.
pub fn proto_from_id_string(id: &str) -> Result<types::Spiffeid, ConvertError> {
    Ok(proto_from_id(&SpiffeId::parse(id)?))
}

/// Whether a path is in the namespace SPIRE reserves for itself (`/spire`, `/spire/...`).
pub fn is_reserved_path(path: &str) -> bool {
    path == "/spire" || path.starts_with("/spire/")
}

/// Whether a path is an agent path (`/spire/agent/...`).
pub fn is_agent_path(path: &str) -> bool {
    path.starts_with("/spire/agent/")
}

fn check_member(
    trust_domain: &TrustDomain,
    id: &SpiffeId,
    role: &'static str,
) -> Result<(), ConvertError> {
    if !id.is_member_of(trust_domain) {
        return Err(ConvertError::NotMember {
            id: id.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    if id.path().is_empty() {
        return Err(ConvertError::EmptyPath {
            id: id.to_string(),
            role,
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(())
}

/// Checks that `id` is any non-root ID of the trust domain (what a parent ID may be).
pub fn verify_member_id(trust_domain: &TrustDomain, id: &SpiffeId) -> Result<(), ConvertError> {
    check_member(trust_domain, id, "a member")
}

/// Checks that `id` is an agent ID of the trust domain.
pub fn verify_agent_id(trust_domain: &TrustDomain, id: &SpiffeId) -> Result<(), ConvertError> {
    check_member(trust_domain, id, "an agent")?;
    if !is_agent_path(id.path()) {
        return Err(ConvertError::NotAgent {
            id: id.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(())
}

/// Checks that `id` is a workload ID of the trust domain: not root, not under `/spire`.
pub fn verify_workload_id(trust_domain: &TrustDomain, id: &SpiffeId) -> Result<(), ConvertError> {
    check_member(trust_domain, id, "a workload")?;
    if is_reserved_path(id.path()) {
        return Err(ConvertError::ReservedPath {
            id: id.to_string(),
            trust_domain: trust_domain.to_string(),
        });
    }
    Ok(())
}

/// Parses a wire ID and checks it is a member of the trust domain.
pub fn member_id_from_proto(
    trust_domain: &TrustDomain,
    id: Option<&types::Spiffeid>,
) -> Result<SpiffeId, ConvertError> {
    let id = id_from_proto(id)?;
    verify_member_id(trust_domain, &id)?;
    Ok(id)
}

/// Parses a wire ID and checks it is an agent ID of the trust domain.
pub fn agent_id_from_proto(
    trust_domain: &TrustDomain,
    id: Option<&types::Spiffeid>,
) -> Result<SpiffeId, ConvertError> {
    let id = id_from_proto(id)?;
    verify_agent_id(trust_domain, &id)?;
    Ok(id)
}

/// Parses a wire ID and checks it is a workload ID of the trust domain.
pub fn workload_id_from_proto(
    trust_domain: &TrustDomain,
    id: Option<&types::Spiffeid>,
) -> Result<SpiffeId, ConvertError> {
    let id = id_from_proto(id)?;
    verify_workload_id(trust_domain, &id)?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------

/// Validates wire selectors as upstream: a type without `:`, and a non-empty value.
pub fn selectors_from_proto(selectors: &[types::Selector]) -> Result<Vec<Selector>, ConvertError> {
    selectors
        .iter()
        .map(|s| {
            if s.r#type.is_empty() {
                return Err(ConvertError::Invalid("missing selector type".into()));
            }
            if s.r#type.contains(':') {
                return Err(ConvertError::Invalid("selector type contains ':'".into()));
            }
            if s.value.is_empty() {
                return Err(ConvertError::Invalid("missing selector value".into()));
            }
            Ok(Selector {
                kind: s.r#type.clone(),
                value: s.value.clone(),
            })
        })
        .collect()
}

/// The wire form of selectors.
pub fn proto_from_selectors(selectors: &[Selector]) -> Vec<types::Selector> {
    selectors
        .iter()
        .map(|s| types::Selector {
            r#type: s.kind.clone(),
            value: s.value.clone(),
        })
        .collect()
}

/// Maps the wire match behaviour (shared numbering of SelectorMatch and FederatesWithMatch).
pub fn match_from_proto(value: i32) -> Result<SelectorMatch, ConvertError> {
    match value {
        0 => Ok(SelectorMatch::Exact),
        1 => Ok(SelectorMatch::Subset),
        2 => Ok(SelectorMatch::Superset),
        3 => Ok(SelectorMatch::Any),
        other => Err(ConvertError::Invalid(format!(
            "unhandled match behavior {other}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// DNS names
// ---------------------------------------------------------------------------------------

/// Validates a DNS name for an X509-SVID SAN as upstream's `x509util.ValidateLabel`: an
/// optional leading `*.` wildcard, then dot-separated labels of letters, digits and inner
/// hyphens, each at most 63 bytes.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    let stars = name.matches('*').count();
    if stars > 1 {
        return Err("too many wildcards".into());
    }
    let rest = if stars == 1 {
        name.strip_prefix("*.")
            .ok_or_else(|| "wildcard must be first label".to_owned())?
    } else {
        name
    };
    if rest.trim().is_empty() {
        return Err("empty or only whitespace".into());
    }
    if rest.len() > 255 {
        return Err("length exceeded".into());
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("label is empty".into());
        }
        if label.len() > 63 {
            return Err(format!("label length exceeded: {label}"));
        }
        let bytes = label.as_bytes();
        let edges_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        let inner_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if !edges_ok || !inner_ok {
            return Err(format!("label does not match regex: {label}"));
        }
    }
    Ok(())
}

/// Fails when a wildcard name covers another name in the list (`*.a.org` with `b.a.org`), as
/// upstream's `x509util.CheckForWildcardOverlap`.
pub fn check_wildcard_overlap(names: &[String]) -> Result<(), String> {
    for name in names {
        let Some(suffix) = name.strip_prefix("*.") else {
            continue;
        };
        for other in names {
            if other == name || other.starts_with("*.") {
                continue;
            }
            if let Some((_, other_suffix)) = other.split_once('.')
                && other_suffix == suffix
            {
                return Err(format!("name {other:?} overlaps with wildcard {name:?}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------

/// Checks an entry ID as the datastore does: at most 255 bytes of `[A-Za-z0-9._-]`.
pub fn validate_entry_id(id: &str) -> Result<(), ConvertError> {
    if id.len() > ENTRY_ID_MAXIMUM_LENGTH {
        return Err(ConvertError::Invalid(
            "invalid registration entry: entry ID too long".into(),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(ConvertError::Invalid(
            "invalid registration entry: entry ID contains invalid characters".into(),
        ));
    }
    Ok(())
}

/// The wire form of a stored entry; federated trust domains are shown by name.
pub fn entry_to_proto(entry: &RegistrationEntry) -> Result<types::Entry, ConvertError> {
    // Stored IDs were validated when written (by us or by upstream), so splitting them is
    // enough here; this runs for every entry of every agent sync.
    let spiffe_id = stored_id_to_proto(&entry.spiffe_id)
        .map_err(|e| ConvertError::field("invalid SPIFFE ID", e))?;
    let parent_id = stored_id_to_proto(&entry.parent_id)
        .map_err(|e| ConvertError::field("invalid parent ID", e))?;
    let federates_with = entry
        .federates_with
        .iter()
        .map(|td| td.strip_prefix("spiffe://").unwrap_or(td).to_owned())
        .collect();
    Ok(types::Entry {
        id: entry.entry_id.clone(),
        spiffe_id: Some(spiffe_id),
        parent_id: Some(parent_id),
        selectors: proto_from_selectors(&entry.selectors),
        x509_svid_ttl: entry.x509_svid_ttl,
        federates_with,
        admin: entry.admin,
        downstream: entry.downstream,
        expires_at: entry.entry_expiry,
        dns_names: entry.dns_names.clone(),
        revision_number: entry.revision_number,
        store_svid: entry.store_svid,
        jwt_svid_ttl: entry.jwt_svid_ttl,
        hint: entry.hint.clone(),
        created_at: entry.created_at,
        additional_attributes: entry.additional_attributes.map(|a| {
            types::entry::AdditionalAttributes {
                disable_x509_svid_prefetch: a.disable_x509_svid_prefetch,
                jwt_svid_include_jti: a.jwt_svid_include_jti,
            }
        }),
    })
}

/// Splits a stored `spiffe://td/path` into its wire form without re-validating it.
fn stored_id_to_proto(id: &str) -> Result<types::Spiffeid, String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} does not start with spiffe://"))?;
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if trust_domain.is_empty() {
        return Err(format!("{id:?} has no trust domain"));
    }
    Ok(types::Spiffeid {
        trust_domain: trust_domain.to_owned(),
        path: path.to_owned(),
    })
}

/// Every field set: what "no mask" means.
pub const ALL_ENTRY_FIELDS: types::EntryMask = types::EntryMask {
    spiffe_id: true,
    parent_id: true,
    selectors: true,
    x509_svid_ttl: true,
    federates_with: true,
    admin: true,
    downstream: true,
    expires_at: true,
    dns_names: true,
    revision_number: true,
    store_svid: true,
    jwt_svid_ttl: true,
    hint: true,
    created_at: true,
    additional_attributes: true,
};

/// Converts and validates a wire entry for the datastore, as upstream's
/// `ProtoToRegistrationEntryWithMask`: only masked fields are read and validated (no mask
/// means all). The SPIFFE ID must be a workload ID of the trust domain (never under
/// `/spire`), the parent any non-root ID of it; at least one selector; TTLs not negative;
/// DNS names and federated trust domains valid; hint at most 1024 bytes.
pub fn entry_from_proto(
    trust_domain: &TrustDomain,
    entry: &types::Entry,
    mask: Option<&types::EntryMask>,
) -> Result<RegistrationEntry, ConvertError> {
    let mask = mask.unwrap_or(&ALL_ENTRY_FIELDS);
    let mut out = RegistrationEntry {
        entry_id: entry.id.clone(),
        ..RegistrationEntry::default()
    };
    if !entry.id.is_empty() {
        validate_entry_id(&entry.id)?;
    }
    if mask.additional_attributes {
        out.additional_attributes =
            entry
                .additional_attributes
                .map(|a| datastore::EntryAttributes {
                    disable_x509_svid_prefetch: a.disable_x509_svid_prefetch,
                    jwt_svid_include_jti: a.jwt_svid_include_jti,
                });
    }
    if mask.parent_id {
        out.parent_id = member_id_from_proto(trust_domain, entry.parent_id.as_ref())
            .map_err(|e| ConvertError::field("invalid parent ID", e))?
            .to_string();
    }
    if mask.spiffe_id {
        out.spiffe_id = workload_id_from_proto(trust_domain, entry.spiffe_id.as_ref())
            .map_err(|e| ConvertError::field("invalid spiffe ID", e))?
            .to_string();
    }
    if mask.admin {
        out.admin = entry.admin;
    }
    if mask.dns_names {
        for name in &entry.dns_names {
            validate_dns_name(name).map_err(|e| ConvertError::field("invalid DNS name", e))?;
        }
        out.dns_names = entry.dns_names.clone();
    }
    if mask.downstream {
        out.downstream = entry.downstream;
    }
    if mask.expires_at {
        out.entry_expiry = entry.expires_at;
    }
    if mask.federates_with {
        out.federates_with = entry
            .federates_with
            .iter()
            .map(|name| {
                TrustDomain::new(name)
                    .map(|td| td.id_string())
                    .map_err(|e| ConvertError::field("invalid federated trust domain", e))
            })
            .collect::<Result<_, _>>()?;
    }
    if mask.selectors {
        if entry.selectors.is_empty() {
            return Err(ConvertError::Invalid("selector list is empty".into()));
        }
        out.selectors = selectors_from_proto(&entry.selectors)?;
    }
    if mask.revision_number {
        out.revision_number = entry.revision_number;
    }
    if mask.store_svid {
        out.store_svid = entry.store_svid;
    }
    if mask.x509_svid_ttl {
        if entry.x509_svid_ttl < 0 {
            return Err(ConvertError::Invalid(
                "invalid registration entry: negative X509SvidTtl is not allowed".into(),
            ));
        }
        out.x509_svid_ttl = entry.x509_svid_ttl;
    }
    if mask.jwt_svid_ttl {
        if entry.jwt_svid_ttl < 0 {
            return Err(ConvertError::Invalid(
                "invalid registration entry: negative JwtSvidTtl is not allowed".into(),
            ));
        }
        out.jwt_svid_ttl = entry.jwt_svid_ttl;
    }
    if mask.hint {
        if entry.hint.len() > HINT_MAXIMUM_LENGTH {
            return Err(ConvertError::Invalid(format!(
                "hint is too long, max length is {HINT_MAXIMUM_LENGTH} characters"
            )));
        }
        out.hint = entry.hint.clone();
    }
    Ok(out)
}

/// The datastore update mask for a wire input mask (no mask: every field).
pub fn record_entry_mask(mask: Option<&types::EntryMask>) -> datastore::EntryMask {
    match mask {
        None => datastore::EntryMask::ALL,
        Some(m) => datastore::EntryMask {
            spiffe_id: m.spiffe_id,
            parent_id: m.parent_id,
            selectors: m.selectors,
            x509_svid_ttl: m.x509_svid_ttl,
            jwt_svid_ttl: m.jwt_svid_ttl,
            federates_with: m.federates_with,
            admin: m.admin,
            downstream: m.downstream,
            entry_expiry: m.expires_at,
            dns_names: m.dns_names,
            store_svid: m.store_svid,
            hint: m.hint,
            additional_attributes: m.additional_attributes,
        },
    }
}

/// Clears the fields an output mask leaves out (the ID is always kept); no mask keeps all.
pub fn apply_entry_mask(entry: &mut types::Entry, mask: Option<&types::EntryMask>) {
    let Some(mask) = mask else {
        return;
    };
    if !mask.spiffe_id {
        entry.spiffe_id = None;
    }
    if !mask.parent_id {
        entry.parent_id = None;
    }
    if !mask.selectors {
        entry.selectors.clear();
    }
    if !mask.federates_with {
        entry.federates_with.clear();
    }
    if !mask.admin {
        entry.admin = false;
    }
    if !mask.downstream {
        entry.downstream = false;
    }
    if !mask.expires_at {
        entry.expires_at = 0;
    }
    if !mask.dns_names {
        entry.dns_names.clear();
    }
    if !mask.revision_number {
        entry.revision_number = 0;
    }
    if !mask.store_svid {
        entry.store_svid = false;
    }
    if !mask.x509_svid_ttl {
        entry.x509_svid_ttl = 0;
    }
    if !mask.jwt_svid_ttl {
        entry.jwt_svid_ttl = 0;
    }
    if !mask.hint {
        entry.hint.clear();
    }
    if !mask.created_at {
        entry.created_at = 0;
    }
    if !mask.additional_attributes {
        entry.additional_attributes = None;
    }
}

// ---------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------

/// The wire form of an attested node; `banned` is derived from the cleared serials.
pub fn agent_to_proto(node: &AttestedNode) -> Result<types::Agent, ConvertError> {
    Ok(types::Agent {
        id: Some(proto_from_id_string(&node.spiffe_id)?),
        attestation_type: node.attestation_data_type.clone(),
        x509svid_serial_number: node.cert_serial_number.clone(),
        x509svid_expires_at: node.cert_not_after,
        selectors: proto_from_selectors(&node.selectors),
        banned: node.is_banned(),
        can_reattest: node.can_reattest,
        agent_version: node.agent_version.clone(),
    })
}

/// Clears the fields an output mask leaves out (the ID is always kept); no mask keeps all.
pub fn apply_agent_mask(agent: &mut types::Agent, mask: Option<&types::AgentMask>) {
    let Some(mask) = mask else {
        return;
    };
    if !mask.attestation_type {
        agent.attestation_type.clear();
    }
    if !mask.x509svid_serial_number {
        agent.x509svid_serial_number.clear();
    }
    if !mask.x509svid_expires_at {
        agent.x509svid_expires_at = 0;
    }
    if !mask.selectors {
        agent.selectors.clear();
    }
    if !mask.banned {
        agent.banned = false;
    }
    if !mask.can_reattest {
        agent.can_reattest = false;
    }
    if !mask.agent_version {
        agent.agent_version.clear();
    }
}

/// Parses upstream's `by_expires_before` filter, Go layout `2006-01-02 15:04:05 -0700 -07`
/// (the trailing zone name is optional); like upstream, a value that does not parse means
/// no filter.
pub fn parse_expires_before(value: &str) -> Option<i64> {
    let mut parts = value.split_whitespace();
    let (date, clock, offset) = (parts.next()?, parts.next()?, parts.next()?);
    let number = |s: &str| s.parse::<i64>().ok();
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (number(d.next()?)?, number(d.next()?)?, number(d.next()?)?);
    let mut c = clock.splitn(3, ':');
    let (hour, minute, second) = (number(c.next()?)?, number(c.next()?)?, number(c.next()?)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = offset.get(1..)?;
    if digits.len() != 4 {
        return None;
    }
    let offset_seconds = sign * (number(digits.get(..2)?)? * 3600 + number(digits.get(2..)?)? * 60);
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?)
            .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    let local = time::PrimitiveDateTime::new(date, clock).assume_utc();
    Some(local.unix_timestamp() - offset_seconds)
}

/// Current Unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A stored bundle as a SPIFFE bundle document model (what the bundle endpoint serves and
/// `bundle show -format spiffe` prints); taint flags have no place in the document.
pub fn bundle_to_document(
    bundle: &types::Bundle,
) -> Result<spire_core::bundle::Bundle, spire_core::bundle::BundleError> {
    let trust_domain = TrustDomain::new(&bundle.trust_domain)
        .map_err(|e| spire_core::bundle::BundleError::Json(e.to_string()))?;
    let mut document = spire_core::bundle::Bundle::new(trust_domain);
    for authority in &bundle.x509_authorities {
        document.add_x509_authority(authority.asn1.clone())?;
    }
    for key in &bundle.jwt_authorities {
        document.add_jwt_authority(spire_core::jwt::JwtAuthority {
            key_id: key.key_id.clone(),
            public_key_der: key.public_key.clone(),
            expires_at: Some(key.expires_at).filter(|e| *e != 0),
        })?;
    }
    document.sequence_number = bundle.sequence_number;
    document.refresh_hint = u64::try_from(bundle.refresh_hint)
        .ok()
        .filter(|s| *s > 0)
        .map(std::time::Duration::from_secs);
    Ok(document)
}

/// A SPIFFE bundle document (read from a file, stdin or a bundle endpoint) as the bundle to
/// store: nothing tainted, the document's sequence number and refresh hint kept.
pub fn bundle_from_document(document: spire_core::bundle::Bundle) -> types::Bundle {
    types::Bundle {
        trust_domain: document.trust_domain.name().to_owned(),
        x509_authorities: document
            .x509_authorities
            .into_iter()
            .map(|asn1| types::X509Certificate {
                asn1,
                tainted: false,
            })
            .collect(),
        jwt_authorities: document
            .jwt_authorities
            .into_iter()
            .map(|a| types::JwtKey {
                public_key: a.public_key_der,
                key_id: a.key_id,
                expires_at: a.expires_at.unwrap_or_default(),
                tainted: false,
            })
            .collect(),
        refresh_hint: document
            .refresh_hint
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or_default(),
        sequence_number: document.sequence_number,
        wit_authorities: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn wire_id(path: &str) -> Option<types::Spiffeid> {
        Some(types::Spiffeid {
            trust_domain: "example.org".into(),
            path: path.into(),
        })
    }

    fn full_entry() -> types::Entry {
        types::Entry {
            id: "entry-1".into(),
            spiffe_id: wire_id("/workload"),
            parent_id: wire_id("/spire/agent/join_token/abc"),
            selectors: vec![
                types::Selector {
                    r#type: "unix".into(),
                    value: "uid:1000".into(),
                },
                types::Selector {
                    r#type: "k8s".into(),
                    value: "pod-label:app:web".into(),
                },
            ],
            x509_svid_ttl: 3600,
            federates_with: vec!["other.org".into()],
            admin: true,
            downstream: true,
            expires_at: 1_900_000_000,
            dns_names: vec!["web.example.org".into(), "*.svc.example.org".into()],
            revision_number: 7,
            store_svid: true,
            jwt_svid_ttl: 300,
            hint: "external".into(),
            created_at: 1_700_000_000,
            additional_attributes: Some(types::entry::AdditionalAttributes {
                disable_x509_svid_prefetch: true,
                jwt_svid_include_jti: false,
            }),
        }
    }

    #[test]
    fn additional_attributes_are_kept_only_inside_the_input_mask() {
        let mut wire = full_entry();
        let attributes = types::entry::AdditionalAttributes {
            disable_x509_svid_prefetch: false,
            jwt_svid_include_jti: true,
        };
        wire.additional_attributes = Some(attributes);
        let record = entry_from_proto(&td(), &wire, None).unwrap();
        assert_eq!(
            record.additional_attributes,
            Some(datastore::EntryAttributes {
                disable_x509_svid_prefetch: false,
                jwt_svid_include_jti: true,
            })
        );
        assert_eq!(
            entry_to_proto(&record).unwrap().additional_attributes,
            Some(attributes)
        );
        let mask = types::EntryMask {
            hint: true,
            ..types::EntryMask::default()
        };
        let record = entry_from_proto(&td(), &wire, Some(&mask)).unwrap();
        assert_eq!(record.additional_attributes, None);
    }

    #[test]
    fn every_entry_field_round_trips() {
        let wire = full_entry();
        let mut record = entry_from_proto(&td(), &wire, None).unwrap();
        assert_eq!(record.spiffe_id, "spiffe://example.org/workload");
        assert_eq!(
            record.parent_id,
            "spiffe://example.org/spire/agent/join_token/abc"
        );
        assert_eq!(record.federates_with, vec!["spiffe://other.org".to_owned()]);
        assert_eq!(record.x509_svid_ttl, 3600);
        assert_eq!(record.jwt_svid_ttl, 300);
        assert!(record.store_svid);
        assert_eq!(record.hint, "external");
        // created_at is set by the datastore, never by the caller.
        assert_eq!(record.created_at, 0);
        record.created_at = wire.created_at;
        let back = entry_to_proto(&record).unwrap();
        assert_eq!(back, wire);
    }

    #[test]
    fn output_mask_fills_only_masked_fields() {
        let mut entry = full_entry();
        let mask = types::EntryMask {
            x509_svid_ttl: true,
            hint: true,
            ..types::EntryMask::default()
        };
        apply_entry_mask(&mut entry, Some(&mask));
        assert_eq!(
            entry,
            types::Entry {
                id: "entry-1".into(),
                x509_svid_ttl: 3600,
                hint: "external".into(),
                ..types::Entry::default()
            }
        );
        let mut untouched = full_entry();
        apply_entry_mask(&mut untouched, None);
        assert_eq!(untouched, full_entry());
    }

    #[test]
    fn input_mask_skips_validation_of_unmasked_fields() {
        let wire = types::Entry {
            id: "entry-1".into(),
            hint: "new".into(),
            ..types::Entry::default()
        };
        let mask = types::EntryMask {
            hint: true,
            ..types::EntryMask::default()
        };
        let record = entry_from_proto(&td(), &wire, Some(&mask)).unwrap();
        assert_eq!(record.hint, "new");
        assert!(entry_from_proto(&td(), &wire, None).is_err());
        let m = record_entry_mask(Some(&mask));
        assert!(m.hint && !m.selectors && !m.spiffe_id);
    }

    type Change = Box<dyn Fn(&mut types::Entry)>;

    #[test]
    fn invalid_entries_are_refused_with_a_reason() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|e| e.selectors[0].r#type = "unix:uid".into()),
                "selector type contains ':'",
            ),
            (
                Box::new(|e| e.selectors[0].value = String::new()),
                "missing selector value",
            ),
            (Box::new(|e| e.selectors.clear()), "selector list is empty"),
            (
                Box::new(|e| {
                    e.spiffe_id = Some(types::Spiffeid {
                        trust_domain: "evil.org".into(),
                        path: "/w".into(),
                    })
                }),
                "is not a member of trust domain",
            ),
            (
                Box::new(|e| e.spiffe_id = wire_id("/spire/agent/x")),
                "reserved namespace",
            ),
            (Box::new(|e| e.spiffe_id = wire_id("")), "path is empty"),
            (
                Box::new(|e| e.spiffe_id = None),
                "request must specify SPIFFE ID",
            ),
            (
                Box::new(|e| {
                    e.parent_id = Some(types::Spiffeid {
                        trust_domain: "evil.org".into(),
                        path: "/agent".into(),
                    })
                }),
                "invalid parent ID",
            ),
            (Box::new(|e| e.x509_svid_ttl = -1), "negative X509SvidTtl"),
            (Box::new(|e| e.jwt_svid_ttl = -1), "negative JwtSvidTtl"),
            (
                Box::new(|e| e.dns_names = vec!["bad_name.org".into()]),
                "invalid DNS name",
            ),
            (
                Box::new(|e| e.federates_with = vec!["Bad Domain".into()]),
                "invalid federated trust domain",
            ),
            (Box::new(|e| e.hint = "h".repeat(1025)), "hint is too long"),
            (Box::new(|e| e.id = "a/b".into()), "invalid characters"),
        ];
        for (change, expected) in cases {
            let mut entry = full_entry();
            change(&mut entry);
            let err = entry_from_proto(&td(), &entry, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn parent_may_be_any_member_including_spire_paths() {
        let mut entry = full_entry();
        entry.parent_id = wire_id("/spire/server");
        assert!(entry_from_proto(&td(), &entry, None).is_ok());
    }

    #[test]
    fn agent_conversion_and_mask() {
        let node = AttestedNode {
            spiffe_id: "spiffe://example.org/spire/agent/join_token/t".into(),
            attestation_data_type: "join_token".into(),
            cert_serial_number: "1234".into(),
            cert_not_after: 99,
            selectors: vec![Selector::new("a", "b").unwrap()],
            can_reattest: true,
            ..AttestedNode::default()
        };
        let mut agent = agent_to_proto(&node).unwrap();
        assert_eq!(agent.id, wire_id("/spire/agent/join_token/t"));
        assert_eq!(agent.x509svid_serial_number, "1234");
        assert_eq!(agent.x509svid_expires_at, 99);
        assert!(!agent.banned && agent.can_reattest);
        assert_eq!(agent.selectors.len(), 1);
        apply_agent_mask(
            &mut agent,
            Some(&types::AgentMask {
                banned: true,
                ..types::AgentMask::default()
            }),
        );
        assert_eq!(
            agent,
            types::Agent {
                id: wire_id("/spire/agent/join_token/t"),
                ..types::Agent::default()
            }
        );
        let banned = AttestedNode {
            cert_serial_number: String::new(),
            ..node
        };
        assert!(agent_to_proto(&banned).unwrap().banned);
    }

    #[test]
    fn agent_ids_must_be_in_the_agent_namespace() {
        assert!(agent_id_from_proto(&td(), wire_id("/spire/agent/x").as_ref()).is_ok());
        let err = agent_id_from_proto(&td(), wire_id("/workload").as_ref()).unwrap_err();
        assert!(err.to_string().contains("not in the agent namespace"));
    }

    #[test]
    fn dns_names() {
        for good in ["example.org", "*.example.org", "a-b.c1.org", "localhost"] {
            assert!(validate_dns_name(good).is_ok(), "{good}");
        }
        for bad in ["", "*", "a.*.org", "-a.org", "a..org", "a_b.org", "**.org"] {
            assert!(validate_dns_name(bad).is_err(), "{bad}");
        }
        assert!(check_wildcard_overlap(&["*.a.org".into(), "b.a.org".into()]).is_err());
        assert!(check_wildcard_overlap(&["*.a.org".into(), "b.c.a.org".into()]).is_ok());
    }

    #[test]
    fn expires_before_uses_go_layout() {
        assert_eq!(
            parse_expires_before("1970-01-01 01:00:00 +0100 +01"),
            Some(0)
        );
        assert_eq!(
            parse_expires_before("2021-01-01 00:00:00 +0000 UTC"),
            Some(1_609_459_200)
        );
        assert_eq!(parse_expires_before("yesterday"), None);
    }

    #[test]
    fn error_codes_follow_upstream() {
        assert_eq!(
            datastore_code(&DataStoreError::NotFound("x".into())),
            Code::NotFound
        );
        assert_eq!(
            datastore_code(&DataStoreError::AlreadyExists("x".into())),
            Code::AlreadyExists
        );
        assert_eq!(
            datastore_code(&DataStoreError::Internal("x".into())),
            Code::Internal
        );
        assert_eq!(ca_code(&CaError::NotReady("x".into())), Code::Unavailable);
        let status = make_err(Code::InvalidArgument, "invalid agent ID", Some(&"boom"));
        assert_eq!(status.message(), "invalid agent ID: boom");
        let denied = permission_denied(
            types::permission_denied_details::Reason::AgentMustReattest,
            "agent must reattest instead of renew",
        );
        assert_eq!(denied.code(), Code::PermissionDenied);
        let rpc = RpcStatus::decode(denied.details()).unwrap();
        let details =
            types::PermissionDeniedDetails::decode(rpc.details[0].value.as_ref()).unwrap();
        assert_eq!(
            details.reason,
            types::permission_denied_details::Reason::AgentMustReattest as i32
        );
    }
}
