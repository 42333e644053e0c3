//! Upstream's audit log (`audit_log_enabled`): one Info entry "API accessed" with
//! `type=audit` per authorized call, carrying who called, which RPC, how it ended and what
//! was asked. The endpoint layer ([`crate::endpoints::audit`]) opens an [`AuditLog`] for each
//! authorized call and writes the entry when the call ends; the services add the request
//! fields upstream adds (`spiffe_id`, `entry_id`, ...) and, for batch RPCs, write one entry
//! per item instead, as upstream's `AuditRPCWithTypesStatus` does.
//!
//! Calls the authorization layer refuses get no entry, as upstream's audit middleware runs
//! after authorization.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tonic::{Code, Request};

/// The message of every audit entry, as upstream writes it.
pub const MESSAGE: &str = "API accessed";

/// Fields of one entry, by name; values keep their JSON type (logrus writes booleans and
/// numbers unquoted in JSON).
pub type Fields = BTreeMap<String, Value>;

/// The audit state of one call; a disabled log (audit off, or a request built by a test
/// without the endpoint layer) records nothing.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    inner: Option<Arc<Mutex<State>>>,
}

#[derive(Debug, Default)]
struct State {
    /// Who called and which RPC: in every entry, item entries included.
    base: Fields,
    /// What the handler added for the whole request.
    fields: Fields,
    /// The handler wrote per-item entries, so a successful call writes no entry of its own.
    items_written: bool,
}

impl AuditLog {
    /// A log for one call whose entries carry `base` (caller and RPC fields).
    pub fn new(base: Fields) -> Self {
        Self {
            inner: Some(Arc::new(Mutex::new(State {
                base,
                ..State::default()
            }))),
        }
    }

    /// The log the endpoint layer attached to `request`, or a disabled one.
    pub fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<AuditLog>()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether entries are written at all; handlers skip computing fields when not.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Adds request fields to the call's entry (upstream's `AddFields`).
    pub fn add<V: Into<Value>>(&self, name: &str, value: V) {
        if let Some(inner) = &self.inner {
            lock(inner).fields.insert(name.to_owned(), value.into());
        }
    }

    /// Adds several request fields (upstream's `AddRPCAuditFields` with a map).
    pub fn add_all(&self, fields: Fields) {
        if let Some(inner) = &self.inner {
            lock(inner).fields.extend(fields);
        }
    }

    /// Writes one entry for a batch item with its own status and fields, without the
    /// request fields (upstream's `AuditRPCWithTypesStatus`).
    pub fn item(&self, code: i32, message: &str, fields: Fields) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut state = lock(inner);
        state.items_written = true;
        let mut entry = state.base.clone();
        entry.extend(fields);
        entry.extend(status_fields(Code::from_i32(code), message));
        write(&entry);
    }

    /// Writes the call's entry once it ended with `code`: errors always, successes unless
    /// per-item entries were written.
    pub fn finish(&self, code: Code, message: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let state = lock(inner);
        if code == Code::Ok && state.items_written {
            return;
        }
        let mut entry = state.base.clone();
        entry.extend(state.fields.clone());
        entry.extend(status_fields(code, message));
        write(&entry);
    }
}

fn lock(inner: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `status=success`, or `status=error` with upstream's `status_code` (the gRPC code name)
/// and `status_message`.
fn status_fields(code: Code, message: &str) -> Fields {
    let mut fields = Fields::new();
    if code == Code::Ok {
        fields.insert("status".into(), "success".into());
    } else {
        fields.insert("status".into(), "error".into());
        fields.insert(
            "status_code".into(),
            spire_common::cli::client::code_name_i32(code as i32).into(),
        );
        fields.insert("status_message".into(), message.into());
    }
    fields
}

/// Writes one entry through the logger, which spreads the fields at the top level.
fn write(entry: &Fields) {
    let mut fields = entry.clone();
    fields.insert("type".into(), "audit".into());
    let json = serde_json::to_string(&fields).unwrap_or_default();
    tracing::info!(
        { spire_common::logging::DYNAMIC_FIELDS } = json.as_str(),
        "{MESSAGE}"
    );
}

/// Upstream's `by_selectors`/`selectors` rendering: `type:value` joined with `,`.
pub fn selectors_field(selectors: &[spire_proto::spire::api::types::Selector]) -> String {
    selectors
        .iter()
        .map(|s| format!("{}:{}", s.r#type, s.value))
        .collect::<Vec<_>>()
        .join(",")
}

/// Hex SHA-256 of `bytes`, as upstream logs CSRs and keys.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Upstream's `api.HashByte`: [`sha256_hex`], or empty for no bytes.
pub fn hash_byte(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        String::new()
    } else {
        sha256_hex(bytes)
    }
}

/// Upstream's `FieldsFromJwtAuthoritiesProto`: `jwt_authority_expires_at.<i>`,
/// `jwt_authority_key_id.<i>` and `jwt_authority_public_key_sha256.<i>` per authority.
pub fn jwt_authorities_fields(authorities: &[spire_proto::spire::api::types::JwtKey]) -> Fields {
    let mut fields = Fields::new();
    for (i, authority) in authorities.iter().enumerate() {
        fields.insert(
            format!("jwt_authority_expires_at.{i}"),
            authority.expires_at.into(),
        );
        fields.insert(
            format!("jwt_authority_key_id.{i}"),
            authority.key_id.clone().into(),
        );
        fields.insert(
            format!("jwt_authority_public_key_sha256.{i}"),
            hash_byte(&authority.public_key).into(),
        );
    }
    fields
}

/// Upstream's `FieldsFromX509AuthoritiesProto`: `x509_authorities_asn1_sha256.<i>` per
/// authority.
pub fn x509_authorities_fields(
    authorities: &[spire_proto::spire::api::types::X509Certificate],
) -> Fields {
    authorities
        .iter()
        .enumerate()
        .map(|(i, authority)| {
            (
                format!("x509_authorities_asn1_sha256.{i}"),
                hash_byte(&authority.asn1).into(),
            )
        })
        .collect()
}

/// The fields upstream logs for an entry of a batch create or update
/// (`fieldsFromEntryProto`); with an input mask, only the fields it selects.
pub fn entry_fields(
    entry: &spire_proto::spire::api::types::Entry,
    mask: Option<&spire_proto::spire::api::types::EntryMask>,
) -> Fields {
    let mut fields = Fields::new();
    let wanted =
        |pick: fn(&spire_proto::spire::api::types::EntryMask) -> bool| mask.is_none_or(pick);
    if !entry.id.is_empty() {
        fields.insert("entry_id".into(), entry.id.clone().into());
    }
    if wanted(|m| m.spiffe_id)
        && let Ok(id) = super::convert::id_from_proto(entry.spiffe_id.as_ref())
    {
        fields.insert("spiffe_id".into(), id.as_str().into());
    }
    if wanted(|m| m.parent_id)
        && let Ok(id) = super::convert::id_from_proto(entry.parent_id.as_ref())
    {
        fields.insert("parent_id".into(), id.as_str().into());
    }
    if wanted(|m| m.selectors) && !entry.selectors.is_empty() {
        fields.insert("selectors".into(), selectors_field(&entry.selectors).into());
    }
    if wanted(|m| m.x509_svid_ttl) {
        fields.insert("x509_svid_ttl".into(), entry.x509_svid_ttl.into());
    }
    if wanted(|m| m.jwt_svid_ttl) {
        fields.insert("jwt_svid_ttl".into(), entry.jwt_svid_ttl.into());
    }
    if wanted(|m| m.federates_with) && !entry.federates_with.is_empty() {
        fields.insert(
            "federates_with".into(),
            entry.federates_with.join(",").into(),
        );
    }
    if wanted(|m| m.admin) {
        fields.insert("admin".into(), entry.admin.into());
    }
    if wanted(|m| m.downstream) {
        fields.insert("downstream".into(), entry.downstream.into());
    }
    if wanted(|m| m.expires_at) {
        fields.insert("expires_at".into(), entry.expires_at.into());
    }
    if wanted(|m| m.dns_names) && !entry.dns_names.is_empty() {
        fields.insert("dns_name".into(), entry.dns_names.join(",").into());
    }
    if wanted(|m| m.revision_number) {
        fields.insert("revision_number".into(), entry.revision_number.into());
    }
    if wanted(|m| m.store_svid) {
        fields.insert("store_svid".into(), entry.store_svid.into());
    }
    if wanted(|m| m.hint) {
        fields.insert("hint".into(), entry.hint.clone().into());
    }
    if wanted(|m| m.created_at) {
        fields.insert("created_at".into(), entry.created_at.into());
    }
    fields
}

/// One field, as a map, for [`AuditLog::item`].
pub fn field<V: Into<Value>>(name: &str, value: V) -> Fields {
    let mut fields = Fields::new();
    fields.insert(name.to_owned(), value.into());
    fields
}

/// The code and message of a batch item's status (`None` is success).
pub fn item_status(status: Option<&spire_proto::spire::api::types::Status>) -> (i32, &str) {
    status.map_or((0, ""), |s| (s.code, s.message.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_code_name_and_message() {
        let fields = status_fields(Code::PermissionDenied, "no");
        assert_eq!(fields["status"], "error");
        assert_eq!(fields["status_code"], "PermissionDenied");
        assert_eq!(fields["status_message"], "no");
        assert_eq!(status_fields(Code::Ok, "")["status"], "success");
    }

    #[test]
    fn a_request_without_the_layer_records_nothing() {
        let log = AuditLog::of(&Request::new(()));
        assert!(!log.enabled());
        log.add("spiffe_id", "x");
        log.finish(Code::Ok, "");
    }
}
