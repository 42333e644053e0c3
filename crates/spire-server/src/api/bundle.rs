//! `spire.api.server.bundle.v1.Bundle`: the server's own bundle (read by anyone, appended
//! by admins, extended with JWT keys by downstream servers) and the federated bundles of
//! other trust domains.
//!
//! Batch RPCs answer one result per input with upstream's per-item status, so one bad
//! bundle does not fail the others. Operations on federated bundles refuse the server's own
//! trust domain: that bundle belongs to the CA.

use std::sync::Arc;

use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::api::server::bundle::v1 as pb;
use spire_proto::spire::api::server::bundle::v1::bundle_server::Bundle;
use spire_proto::spire::api::types;
use tonic::{Request, Response, Status};

use super::audit::{self, AuditLog};
use super::convert::{datastore_status, ok_status};
use super::ratelimit::LimitKind;
use super::{ApiContext, Caller};
use crate::datastore::{BundleMask, DataStoreError, DeleteBundleMode};

/// The bundle service.
pub struct BundleApi {
    ctx: Arc<ApiContext>,
}

impl BundleApi {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }
}

/// The per-item status of a batch result (`spire.api.types.Status`).
pub(crate) fn item_status(status: &Status) -> types::Status {
    types::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// Clears the fields a mask leaves out; no mask means every field.
pub(crate) fn apply_bundle_mask(bundle: &mut types::Bundle, mask: Option<&types::BundleMask>) {
    let Some(mask) = mask else {
        return;
    };
    if !mask.x509_authorities {
        bundle.x509_authorities.clear();
    }
    if !mask.jwt_authorities {
        bundle.jwt_authorities.clear();
    }
    if !mask.refresh_hint {
        bundle.refresh_hint = 0;
    }
    if !mask.sequence_number {
        bundle.sequence_number = 0;
    }
}

/// Checks that every X.509 authority is one DER certificate.
pub(crate) fn validate_x509_authorities(
    authorities: &[types::X509Certificate],
) -> Result<(), String> {
    for authority in authorities {
        spire_core::x509::certificate_validity(&authority.asn1)
            .map_err(|e| format!("unable to parse X.509 authority: {e}"))?;
    }
    Ok(())
}

/// Checks that every JWT authority has a key ID and a supported PKIX public key.
pub(crate) fn validate_jwt_authorities(authorities: &[types::JwtKey]) -> Result<(), String> {
    for authority in authorities {
        if authority.key_id.is_empty() {
            return Err("missing key ID".to_owned());
        }
        spire_core::keys::public_key_type(&authority.public_key)
            .map_err(|e| format!("unable to parse public key: {e}"))?;
    }
    Ok(())
}

/// Parses a trust domain argument (`example.org` or `spiffe://example.org`).
fn parse_trust_domain(input: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(input).map_err(|e| e.to_string())
}

impl BundleApi {
    fn is_own(&self, trust_domain: &TrustDomain) -> bool {
        *trust_domain == self.ctx.trust_domain
    }

    /// Validates a federated bundle for create/update/set; `verb` names the operation in
    /// the own-trust-domain refusal.
    fn federated_input(
        &self,
        mut bundle: types::Bundle,
        verb: &str,
    ) -> Result<types::Bundle, Status> {
        let trust_domain = parse_trust_domain(&bundle.trust_domain).map_err(|e| {
            Status::invalid_argument(format!("trust domain argument is not valid: {e}"))
        })?;
        if self.is_own(&trust_domain) {
            return Err(Status::invalid_argument(format!(
                "{verb} a federated bundle for the server's own trust domain is not allowed"
            )));
        }
        validate_x509_authorities(&bundle.x509_authorities)
            .and_then(|()| validate_jwt_authorities(&bundle.jwt_authorities))
            .map_err(|e| Status::invalid_argument(format!("failed to convert bundle: {e}")))?;
        bundle.trust_domain = trust_domain.name().to_owned();
        Ok(bundle)
    }

    async fn create_federated(&self, bundle: types::Bundle) -> Result<types::Bundle, Status> {
        let bundle = self.federated_input(bundle, "creating")?;
        self.ctx
            .datastore
            .create_bundle(bundle)
            .await
            .map_err(|e| match e {
                DataStoreError::AlreadyExists(_) => Status::already_exists("bundle already exists"),
                other => datastore_status("unable to create bundle", &other),
            })
    }

    async fn update_federated(
        &self,
        bundle: types::Bundle,
        mask: BundleMask,
    ) -> Result<types::Bundle, Status> {
        let bundle = self.federated_input(bundle, "updating")?;
        self.ctx
            .datastore
            .update_bundle(bundle, mask)
            .await
            .map_err(|e| match e {
                DataStoreError::NotFound(_) => Status::not_found("bundle not found"),
                other => datastore_status("failed to update bundle", &other),
            })
    }

    async fn set_federated(&self, bundle: types::Bundle) -> Result<types::Bundle, Status> {
        let bundle = self.federated_input(bundle, "setting")?;
        self.ctx
            .datastore
            .set_bundle(bundle)
            .await
            .map_err(|e| datastore_status("failed to set bundle", &e))
    }

    async fn delete_federated(
        &self,
        trust_domain: &str,
        mode: DeleteBundleMode,
    ) -> Result<(), Status> {
        let trust_domain = parse_trust_domain(trust_domain)
            .map_err(|e| Status::invalid_argument(format!("malformed trust domain: {e}")))?;
        if self.is_own(&trust_domain) {
            return Err(Status::invalid_argument(
                "removing the bundle for the server trust domain is not allowed",
            ));
        }
        self.ctx
            .datastore
            .delete_bundle(trust_domain.name(), mode)
            .await
            .map_err(|e| match e {
                DataStoreError::NotFound(_) => Status::not_found("bundle not found"),
                other => datastore_status("failed to delete federated bundle", &other),
            })
    }
}

/// Turns a datastore-side per-item result into status + masked bundle.
fn batch_item(
    result: Result<types::Bundle, Status>,
    mask: Option<&types::BundleMask>,
) -> (types::Status, Option<types::Bundle>) {
    match result {
        Ok(mut bundle) => {
            apply_bundle_mask(&mut bundle, mask);
            (ok_status(), Some(bundle))
        }
        Err(status) => {
            tracing::warn!(
                error = status.message(),
                "federated bundle operation failed"
            );
            (item_status(&status), None)
        }
    }
}

/// Upstream's audit fields of a bundle in a batch (`FieldsFromBundleProto`, without the
/// per-authority hashes).
fn bundle_fields(bundle: &types::Bundle) -> audit::Fields {
    let mut fields = audit::field("trust_domain_id", bundle.trust_domain.as_str());
    fields.insert("refresh_hint".into(), bundle.refresh_hint.into());
    fields.insert("sequence_number".into(), bundle.sequence_number.into());
    fields
}

#[tonic::async_trait]
impl Bundle for BundleApi {
    async fn count_bundles(
        &self,
        _request: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountBundlesResponse>, Status> {
        let count = self
            .ctx
            .datastore
            .count_bundles()
            .await
            .map_err(|e| datastore_status("failed to count bundles", &e))?;
        Ok(Response::new(pb::CountBundlesResponse {
            count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }

    async fn get_bundle(
        &self,
        request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        AuditLog::of(&request).add("trust_domain_id", self.ctx.trust_domain.name());
        let request = request.into_inner();
        let mut bundle = self
            .ctx
            .datastore
            .fetch_bundle(self.ctx.trust_domain.name())
            .await
            .map_err(|e| datastore_status("failed to fetch bundle", &e))?
            .ok_or_else(|| Status::not_found("bundle not found"))?;
        apply_bundle_mask(&mut bundle, request.output_mask.as_ref());
        Ok(Response::new(bundle))
    }

    async fn append_bundle(
        &self,
        request: Request<pb::AppendBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if audit.enabled() {
            audit.add_all(audit::jwt_authorities_fields(&request.jwt_authorities));
            audit.add_all(audit::x509_authorities_fields(&request.x509_authorities));
        }
        if request.x509_authorities.is_empty() && request.jwt_authorities.is_empty() {
            return Err(Status::invalid_argument("no authorities to append"));
        }
        validate_x509_authorities(&request.x509_authorities).map_err(|e| {
            Status::invalid_argument(format!("failed to convert X.509 authority: {e}"))
        })?;
        validate_jwt_authorities(&request.jwt_authorities).map_err(|e| {
            Status::invalid_argument(format!("failed to convert JWT authority: {e}"))
        })?;
        let mut bundle = self
            .ctx
            .datastore
            .append_bundle(types::Bundle {
                trust_domain: self.ctx.trust_domain.name().to_owned(),
                x509_authorities: request.x509_authorities,
                jwt_authorities: request.jwt_authorities,
                refresh_hint: 0,
                wit_authorities: Vec::new(),
                sequence_number: 0,
            })
            .await
            .map_err(|e| datastore_status("failed to append bundle", &e))?;
        apply_bundle_mask(&mut bundle, request.output_mask.as_ref());
        Ok(Response::new(bundle))
    }

    async fn publish_jwt_authority(
        &self,
        request: Request<pb::PublishJwtAuthorityRequest>,
    ) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        let audit = AuditLog::of(&request);
        if let Some(authority) = &request.get_ref().jwt_authority {
            audit.add("jwt_authority_expires_at", authority.expires_at);
            audit.add("jwt_authority_key_id", authority.key_id.clone());
            audit.add(
                "jwt_authority_public_key_sha256",
                audit::hash_byte(&authority.public_key),
            );
        }
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default();
        self.ctx
            .rate_limits
            .limit_call(
                "/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority",
                &caller,
                LimitKind::PublishJwtKey,
                1,
            )
            .await?;
        let Some(authority) = request.into_inner().jwt_authority else {
            return Err(Status::invalid_argument("missing JWT authority"));
        };
        validate_jwt_authorities(std::slice::from_ref(&authority))
            .map_err(|e| Status::invalid_argument(format!("invalid JWT authority: {e}")))?;
        let bundle = self
            .ctx
            .datastore
            .append_bundle(types::Bundle {
                trust_domain: self.ctx.trust_domain.name().to_owned(),
                x509_authorities: Vec::new(),
                jwt_authorities: vec![authority],
                refresh_hint: 0,
                wit_authorities: Vec::new(),
                sequence_number: 0,
            })
            .await
            .map_err(|e| datastore_status("failed to publish JWT key", &e))?;
        tracing::info!(
            downstream_entry = ?caller.downstream_entry_id,
            "published a downstream JWT authority"
        );
        Ok(Response::new(pb::PublishJwtAuthorityResponse {
            jwt_authorities: bundle.jwt_authorities,
        }))
    }

    async fn list_federated_bundles(
        &self,
        request: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let request = request.into_inner();
        let pagination = u32::try_from(request.page_size)
            .ok()
            .filter(|size| *size > 0)
            .map(|page_size| crate::datastore::Pagination {
                token: request.page_token.clone(),
                page_size,
            });
        let (bundles, next_page_token) = self
            .ctx
            .datastore
            .list_bundles(pagination)
            .await
            .map_err(|e| datastore_status("failed to list bundles", &e))?;
        let own = self.ctx.trust_domain.name();
        let bundles = bundles
            .into_iter()
            .filter(|bundle| bundle.trust_domain != own)
            .map(|mut bundle| {
                apply_bundle_mask(&mut bundle, request.output_mask.as_ref());
                bundle
            })
            .collect();
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles,
            next_page_token,
        }))
    }

    async fn get_federated_bundle(
        &self,
        request: Request<pb::GetFederatedBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("trust_domain_id", request.trust_domain.as_str());
        let trust_domain = parse_trust_domain(&request.trust_domain).map_err(|_| {
            Status::invalid_argument(format!(
                "trust domain argument is not a valid SPIFFE ID: {:?}",
                request.trust_domain
            ))
        })?;
        if self.is_own(&trust_domain) {
            return Err(Status::invalid_argument(format!(
                "{:?} is this server own trust domain, use GetBundle RPC instead",
                trust_domain.name()
            )));
        }
        let mut bundle = self
            .ctx
            .datastore
            .fetch_bundle(trust_domain.name())
            .await
            .map_err(|e| datastore_status("failed to fetch bundle", &e))?
            .ok_or_else(|| {
                Status::not_found(format!("bundle for {:?} not found", request.trust_domain))
            })?;
        apply_bundle_mask(&mut bundle, request.output_mask.as_ref());
        Ok(Response::new(bundle))
    }

    async fn batch_create_federated_bundle(
        &self,
        request: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.bundle.len());
        for bundle in request.bundle {
            let fields = bundle_fields(&bundle);
            let (status, bundle) = batch_item(
                self.create_federated(bundle).await,
                request.output_mask.as_ref(),
            );
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_create_federated_bundle_response::Result {
                status: Some(status),
                bundle,
            });
        }
        Ok(Response::new(pb::BatchCreateFederatedBundleResponse {
            results,
        }))
    }

    async fn batch_update_federated_bundle(
        &self,
        request: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mask = request
            .input_mask
            .as_ref()
            .map_or(BundleMask::ALL, |mask| BundleMask {
                x509_authorities: mask.x509_authorities,
                jwt_authorities: mask.jwt_authorities,
                refresh_hint: mask.refresh_hint,
                sequence_number: mask.sequence_number,
            });
        let mut results = Vec::with_capacity(request.bundle.len());
        for bundle in request.bundle {
            let fields = bundle_fields(&bundle);
            let (status, bundle) = batch_item(
                self.update_federated(bundle, mask).await,
                request.output_mask.as_ref(),
            );
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_update_federated_bundle_response::Result {
                status: Some(status),
                bundle,
            });
        }
        Ok(Response::new(pb::BatchUpdateFederatedBundleResponse {
            results,
        }))
    }

    async fn batch_set_federated_bundle(
        &self,
        request: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.bundle.len());
        for bundle in request.bundle {
            let fields = bundle_fields(&bundle);
            let (status, bundle) = batch_item(
                self.set_federated(bundle).await,
                request.output_mask.as_ref(),
            );
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_set_federated_bundle_response::Result {
                status: Some(status),
                bundle,
            });
        }
        Ok(Response::new(pb::BatchSetFederatedBundleResponse {
            results,
        }))
    }

    async fn batch_delete_federated_bundle(
        &self,
        request: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        use pb::batch_delete_federated_bundle_request::Mode;

        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mode_name = Mode::try_from(request.mode)
            .map_or_else(|_| request.mode.to_string(), |m| m.as_str_name().to_owned());
        let mode = match Mode::try_from(request.mode) {
            Ok(Mode::Restrict) => DeleteBundleMode::Restrict,
            Ok(Mode::Delete) => DeleteBundleMode::Delete,
            Ok(Mode::Dissociate) => DeleteBundleMode::Dissociate,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown delete mode {}",
                    request.mode
                )));
            }
        };
        let mut results = Vec::with_capacity(request.trust_domains.len());
        for trust_domain in request.trust_domains {
            let status = match self.delete_federated(&trust_domain, mode).await {
                Ok(()) => ok_status(),
                Err(status) => {
                    tracing::warn!(
                        trust_domain = trust_domain.as_str(),
                        error = status.message(),
                        "failed to delete federated bundle"
                    );
                    item_status(&status)
                }
            };
            let mut fields = audit::field("trust_domain_id", trust_domain.as_str());
            fields.insert("mode".into(), mode_name.clone().into());
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_delete_federated_bundle_response::Result {
                status: Some(status),
                trust_domain,
            });
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse {
            results,
        }))
    }

    async fn publish_wit_authority(
        &self,
        _request: Request<pb::PublishWitAuthorityRequest>,
    ) -> Result<Response<pb::PublishWitAuthorityResponse>, Status> {
        Err(super::convert::wit_svids_unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_mask_keeps_only_selected_fields() {
        let full = types::Bundle {
            trust_domain: "example.org".into(),
            x509_authorities: vec![types::X509Certificate {
                asn1: vec![1],
                tainted: false,
            }],
            jwt_authorities: vec![types::JwtKey::default()],
            refresh_hint: 30,
            sequence_number: 7,
            wit_authorities: Vec::new(),
        };
        let mut unmasked = full.clone();
        apply_bundle_mask(&mut unmasked, None);
        assert_eq!(unmasked, full);

        let mut masked = full.clone();
        apply_bundle_mask(
            &mut masked,
            Some(&types::BundleMask {
                x509_authorities: false,
                jwt_authorities: true,
                refresh_hint: false,
                sequence_number: true,
                wit_authorities: false,
            }),
        );
        assert_eq!(masked.trust_domain, "example.org");
        assert!(masked.x509_authorities.is_empty());
        assert_eq!(masked.jwt_authorities.len(), 1);
        assert_eq!(masked.refresh_hint, 0);
        assert_eq!(masked.sequence_number, 7);
    }

    #[test]
    fn malformed_authorities_are_refused() {
        let bad_cert = types::X509Certificate {
            asn1: b"not DER".to_vec(),
            tainted: false,
        };
        assert!(validate_x509_authorities(&[bad_cert]).is_err());
        let no_kid = types::JwtKey {
            public_key: spire_core::keys::PrivateKey::generate(spire_core::keys::KeyType::EcP256)
                .unwrap()
                .public_key_der(),
            ..types::JwtKey::default()
        };
        assert_eq!(
            validate_jwt_authorities(std::slice::from_ref(&no_kid)).unwrap_err(),
            "missing key ID"
        );
        let bad_key = types::JwtKey {
            key_id: "kid".into(),
            public_key: b"junk".to_vec(),
            ..types::JwtKey::default()
        };
        assert!(validate_jwt_authorities(&[bad_key]).is_err());
        let good = types::JwtKey {
            key_id: "kid".into(),
            ..no_kid
        };
        assert!(validate_jwt_authorities(&[good]).is_ok());
    }
}
