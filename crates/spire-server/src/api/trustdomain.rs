//! `spire.api.server.trustdomain.v1.TrustDomain`: federation relationships (which foreign
//! trust domains we federate with, where their bundle endpoint is and how to authenticate
//! it), stored in the datastore. Every change wakes the federation refresher, which fetches
//! the bundles; `RefreshBundle` asks it for one fetch now.

use std::sync::Arc;

use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::api::server::trustdomain::v1 as pb;
use spire_proto::spire::api::server::trustdomain::v1::trust_domain_server;
use spire_proto::spire::api::types::{
    self, FederationRelationship, FederationRelationshipMask,
    federation_relationship::BundleEndpointProfile,
};
use tonic::{Request, Response, Status};

use super::ApiContext;
use super::audit::{self, AuditLog};
use super::bundle::{item_status, validate_jwt_authorities, validate_x509_authorities};
use super::convert::{datastore_status, ok_status};
use crate::datastore::{DataStoreError, Pagination};

/// The trust domain (federation relationship) service.
pub struct TrustDomainApi {
    ctx: Arc<ApiContext>,
}

impl TrustDomainApi {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }
}

fn parse_trust_domain(input: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(input)
        .map_err(|e| Status::invalid_argument(format!("failed to parse trust domain: {e}")))
}

/// Clears the fields a mask leaves out; no mask means every field.
fn apply_mask(
    relationship: &mut FederationRelationship,
    mask: Option<&FederationRelationshipMask>,
) {
    let Some(mask) = mask else {
        return;
    };
    if !mask.bundle_endpoint_url {
        relationship.bundle_endpoint_url.clear();
    }
    if !mask.bundle_endpoint_profile {
        relationship.bundle_endpoint_profile = None;
    }
    if !mask.trust_domain_bundle {
        relationship.trust_domain_bundle = None;
    }
}

/// Checks every field of a relationship and normalizes its trust domain names.
fn validate(mut relationship: FederationRelationship) -> Result<FederationRelationship, String> {
    let trust_domain = TrustDomain::new(&relationship.trust_domain)
        .map_err(|e| format!("failed to parse trust domain: {e}"))?;
    relationship.trust_domain = trust_domain.name().to_owned();

    let url: http::Uri = relationship
        .bundle_endpoint_url
        .parse()
        .map_err(|e| format!("failed to parse bundle endpoint URL: {e}"))?;
    if url.scheme_str() != Some("https") {
        return Err("bundle endpoint URL must use the https scheme".to_owned());
    }
    if url.host().is_none_or(str::is_empty) {
        return Err("bundle endpoint URL must specify the host".to_owned());
    }
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("bundle endpoint URL must not contain user info".to_owned());
    }

    match &relationship.bundle_endpoint_profile {
        Some(BundleEndpointProfile::HttpsWeb(_)) => {}
        Some(BundleEndpointProfile::HttpsSpiffe(profile)) => {
            SpiffeId::parse(&profile.endpoint_spiffe_id)
                .map_err(|e| format!("failed to parse endpoint SPIFFE ID: {e}"))?;
        }
        None => return Err("bundle endpoint profile is required".to_owned()),
    }

    if let Some(bundle) = relationship.trust_domain_bundle.as_mut() {
        let bundle_domain = TrustDomain::new(&bundle.trust_domain)
            .map_err(|e| format!("failed to parse bundle trust domain: {e}"))?;
        if bundle_domain != trust_domain {
            return Err(format!(
                "trust domain bundle ({:?}) must match the trust domain of the federation relationship ({:?})",
                bundle_domain.name(),
                trust_domain.name()
            ));
        }
        bundle.trust_domain = bundle_domain.name().to_owned();
        validate_x509_authorities(&bundle.x509_authorities)?;
        validate_jwt_authorities(&bundle.jwt_authorities)?;
    }
    Ok(relationship)
}

impl TrustDomainApi {
    fn validated(
        &self,
        relationship: FederationRelationship,
    ) -> Result<FederationRelationship, Status> {
        validate(relationship).map_err(|e| {
            Status::invalid_argument(format!("failed to convert federation relationship: {e}"))
        })
    }

    async fn create(
        &self,
        relationship: FederationRelationship,
    ) -> Result<FederationRelationship, Status> {
        let relationship = self.validated(relationship)?;
        if relationship.trust_domain == self.ctx.trust_domain.name() {
            return Err(Status::invalid_argument(
                "unable to create federation relationship for server trust domain",
            ));
        }
        // Upstream answers every datastore failure here (a duplicate included) as Internal.
        self.ctx
            .datastore
            .create_federation_relationship(relationship)
            .await
            .map_err(|e| Status::internal(format!("failed to create federation relationship: {e}")))
    }

    async fn update(
        &self,
        input: FederationRelationship,
        mask: FederationRelationshipMask,
    ) -> Result<FederationRelationship, Status> {
        let trust_domain = parse_trust_domain(&input.trust_domain)?;
        let existing = self
            .ctx
            .datastore
            .fetch_federation_relationship(trust_domain.name())
            .await
            .map_err(|e| datastore_status("failed to fetch federation relationship", &e))?
            .ok_or_else(|| {
                Status::internal(
                    "failed to update federation relationship: unable to fetch federation \
                     relationship: record not found",
                )
            })?;
        let mut merged = existing;
        if mask.bundle_endpoint_url {
            merged.bundle_endpoint_url = input.bundle_endpoint_url;
        }
        if mask.bundle_endpoint_profile {
            merged.bundle_endpoint_profile = input.bundle_endpoint_profile;
        }
        if mask.trust_domain_bundle {
            merged.trust_domain_bundle = input.trust_domain_bundle;
        }
        let merged = self.validated(merged)?;
        self.ctx
            .datastore
            .update_federation_relationship(merged)
            .await
            .map_err(|e| datastore_status("failed to update federation relationship", &e))
    }

    async fn delete(&self, trust_domain: &str) -> Result<(), Status> {
        if trust_domain.is_empty() {
            return Err(Status::invalid_argument("missing trust domain"));
        }
        let trust_domain = parse_trust_domain(trust_domain)?;
        self.ctx
            .datastore
            .delete_federation_relationship(trust_domain.name())
            .await
            .map_err(|e| match e {
                DataStoreError::NotFound(_) => {
                    Status::not_found("federation relationship not found")
                }
                other => datastore_status("failed to delete federation relationship", &other),
            })
    }
}

/// A per-item result: status and the masked relationship on success.
fn batch_item(
    result: Result<FederationRelationship, Status>,
    mask: Option<&FederationRelationshipMask>,
) -> (types::Status, Option<FederationRelationship>) {
    match result {
        Ok(mut relationship) => {
            apply_mask(&mut relationship, mask);
            (ok_status(), Some(relationship))
        }
        Err(status) => {
            tracing::warn!(
                error = status.message(),
                "federation relationship operation failed"
            );
            (item_status(&status), None)
        }
    }
}

/// Upstream's audit fields of a federation relationship in a batch.
fn relationship_fields(relationship: &FederationRelationship) -> audit::Fields {
    let mut fields = audit::field("trust_domain_id", relationship.trust_domain.as_str());
    fields.insert(
        "bundle_endpoint_url".into(),
        relationship.bundle_endpoint_url.as_str().into(),
    );
    fields
}

#[tonic::async_trait]
impl trust_domain_server::TrustDomain for TrustDomainApi {
    async fn list_federation_relationships(
        &self,
        request: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let request = request.into_inner();
        let pagination = u32::try_from(request.page_size)
            .ok()
            .filter(|size| *size > 0)
            .map(|page_size| Pagination {
                token: request.page_token.clone(),
                page_size,
            });
        let (relationships, next_page_token) = self
            .ctx
            .datastore
            .list_federation_relationships(pagination)
            .await
            .map_err(|e| datastore_status("failed to list federation relationships", &e))?;
        let federation_relationships = relationships
            .into_iter()
            .map(|mut relationship| {
                apply_mask(&mut relationship, request.output_mask.as_ref());
                relationship
            })
            .collect();
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            federation_relationships,
            next_page_token,
        }))
    }

    async fn get_federation_relationship(
        &self,
        request: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<FederationRelationship>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("trust_domain_id", request.trust_domain.as_str());
        let trust_domain = parse_trust_domain(&request.trust_domain)?;
        let mut relationship = self
            .ctx
            .datastore
            .fetch_federation_relationship(trust_domain.name())
            .await
            .map_err(|e| datastore_status("failed to fetch federation relationship", &e))?
            .ok_or_else(|| Status::not_found("federation relationship does not exist"))?;
        apply_mask(&mut relationship, request.output_mask.as_ref());
        Ok(Response::new(relationship))
    }

    async fn batch_create_federation_relationship(
        &self,
        request: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.federation_relationships.len());
        for relationship in request.federation_relationships {
            let fields = relationship_fields(&relationship);
            let (status, federation_relationship) = batch_item(
                self.create(relationship).await,
                request.output_mask.as_ref(),
            );
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_create_federation_relationship_response::Result {
                status: Some(status),
                federation_relationship,
            });
        }
        self.ctx.bundle_refresher.trigger_reload();
        Ok(Response::new(
            pb::BatchCreateFederationRelationshipResponse { results },
        ))
    }

    async fn batch_update_federation_relationship(
        &self,
        request: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mask = request.input_mask.unwrap_or(FederationRelationshipMask {
            bundle_endpoint_url: true,
            bundle_endpoint_profile: true,
            trust_domain_bundle: true,
        });
        let mut results = Vec::with_capacity(request.federation_relationships.len());
        for relationship in request.federation_relationships {
            let fields = relationship_fields(&relationship);
            let (status, federation_relationship) = batch_item(
                self.update(relationship, mask).await,
                request.output_mask.as_ref(),
            );
            audit.item(status.code, &status.message, fields);
            results.push(pb::batch_update_federation_relationship_response::Result {
                status: Some(status),
                federation_relationship,
            });
        }
        self.ctx.bundle_refresher.trigger_reload();
        Ok(Response::new(
            pb::BatchUpdateFederationRelationshipResponse { results },
        ))
    }

    async fn batch_delete_federation_relationship(
        &self,
        request: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let mut results = Vec::with_capacity(request.trust_domains.len());
        for trust_domain in request.trust_domains {
            let status = match self.delete(&trust_domain).await {
                Ok(()) => ok_status(),
                Err(status) => item_status(&status),
            };
            let fields = audit::field("trust_domain_id", trust_domain.as_str());
            audit.item(status.code, &status.message, fields);
            // Echoed by name when it parses, as upstream does.
            let trust_domain =
                TrustDomain::new(&trust_domain).map_or(trust_domain, |td| td.name().to_owned());
            results.push(pb::batch_delete_federation_relationship_response::Result {
                status: Some(status),
                trust_domain,
            });
        }
        self.ctx.bundle_refresher.trigger_reload();
        Ok(Response::new(
            pb::BatchDeleteFederationRelationshipResponse { results },
        ))
    }

    async fn refresh_bundle(
        &self,
        request: Request<pb::RefreshBundleRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("trust_domain_id", request.trust_domain.as_str());
        let trust_domain = parse_trust_domain(&request.trust_domain)?;
        match self
            .ctx
            .bundle_refresher
            .refresh_bundle_for(&trust_domain)
            .await
        {
            None => Err(Status::not_found(format!(
                "no relationship with trust domain {:?}",
                trust_domain.name()
            ))),
            Some(Err(e)) => Err(Status::internal(format!("failed to refresh bundle: {e}"))),
            Some(Ok(_)) => {
                tracing::debug!(trust_domain = trust_domain.name(), "Bundle refreshed");
                Ok(Response::new(pbjson_types::Empty {}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use spire_proto::spire::api::types::{HttpsWebProfile, HttpsspiffeProfile};

    use super::*;

    fn relationship(trust_domain: &str, url: &str) -> FederationRelationship {
        FederationRelationship {
            trust_domain: trust_domain.into(),
            bundle_endpoint_url: url.into(),
            bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsWeb(HttpsWebProfile {})),
            trust_domain_bundle: None,
        }
    }

    #[test]
    fn a_valid_relationship_is_normalized() {
        let valid = validate(relationship(
            "spiffe://other.org",
            "https://other.org/bundle",
        ))
        .unwrap();
        assert_eq!(valid.trust_domain, "other.org");
    }

    #[test]
    fn invalid_relationships_say_what_is_wrong() {
        let cases = [
            (
                relationship("Bad Domain", "https://x/b"),
                "failed to parse trust domain",
            ),
            (
                relationship("other.org", "http://x/b"),
                "must use the https scheme",
            ),
            (
                relationship("other.org", "not a url"),
                "failed to parse bundle endpoint URL",
            ),
            (
                FederationRelationship {
                    bundle_endpoint_profile: None,
                    ..relationship("other.org", "https://x/b")
                },
                "profile is required",
            ),
            (
                FederationRelationship {
                    bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsSpiffe(
                        HttpsspiffeProfile {
                            endpoint_spiffe_id: "not-an-id".into(),
                        },
                    )),
                    ..relationship("other.org", "https://x/b")
                },
                "endpoint SPIFFE ID",
            ),
            (
                FederationRelationship {
                    trust_domain_bundle: Some(types::Bundle {
                        trust_domain: "third.org".into(),
                        ..types::Bundle::default()
                    }),
                    ..relationship("other.org", "https://x/b")
                },
                "must match",
            ),
        ];
        for (input, expected) in cases {
            let err = validate(input.clone()).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn output_masks_clear_unselected_fields() {
        let mut value = relationship("other.org", "https://x/b");
        apply_mask(&mut value, Some(&FederationRelationshipMask::default()));
        assert_eq!(value.trust_domain, "other.org");
        assert!(value.bundle_endpoint_url.is_empty());
        assert!(value.bundle_endpoint_profile.is_none());
    }
}
