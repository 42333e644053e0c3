//! `spire.api.server.svid.v1.SVID`: minting SVIDs for admins, signing SVIDs for the entries
//! an agent is authorized for, and downstream CAs.
//!
//! For agent calls the SPIFFE ID, DNS names and TTL always come from the authorized entry;
//! the CSR contributes only its public key, after its signature is checked
//! (CVE-2021-27098).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spire_core::spiffe_id::SpiffeId;
use spire_core::x509::{Subject, X509Error};
use spire_proto::spire::api::server::svid::v1 as pb;
use spire_proto::spire::api::types;
use tonic::{Code, Request, Response, Status};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::X509Name;

use super::ApiContext;
use super::agent::{caller_agent_id, caller_of, rate_limit};
use super::audit::{self, AuditLog};
use super::convert::{self, make_err, make_status};
use super::ratelimit::LimitKind;
use crate::ca::X509SvidRequest;
use crate::datastore::RegistrationEntry;

/// The SVID service.
pub struct SvidApi {
    ctx: Arc<ApiContext>,
}

/// What MintX509SVID reads from a CSR: the checked public key and the requested names.
struct MintCsr {
    public_key: Vec<u8>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    subject: Subject,
}

/// Checks a CSR's signature and returns its public key, with upstream's messages.
fn csr_key(csr: &[u8]) -> Result<Vec<u8>, (Code, String)> {
    spire_core::x509::csr_public_key(csr).map_err(|err| match err {
        X509Error::CsrSignature(_) => (
            Code::InvalidArgument,
            format!("invalid CSR signature: {err}"),
        ),
        other => (Code::InvalidArgument, format!("malformed CSR: {other}")),
    })
}

fn attribute_strings<'a, 'b: 'a>(
    attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
) -> Vec<String> {
    attrs
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect()
}

/// The CSR subject as the CA's subject model (MintX509SVID lets admins choose it).
fn subject_from_name(name: &X509Name<'_>) -> Subject {
    let serial = x509_parser::oid_registry::OID_X509_SERIALNUMBER;
    Subject {
        country: attribute_strings(name.iter_country()),
        province: attribute_strings(name.iter_state_or_province()),
        locality: attribute_strings(name.iter_locality()),
        organization: attribute_strings(name.iter_organization()),
        organizational_unit: attribute_strings(name.iter_organizational_unit()),
        common_name: attribute_strings(name.iter_common_name())
            .into_iter()
            .next(),
        serial_number: attribute_strings(name.iter_by_oid(&serial))
            .into_iter()
            .next(),
        x500_unique_identifier: None,
    }
}

fn parse_mint_csr(der: &[u8]) -> Result<MintCsr, Status> {
    let public_key = csr_key(der).map_err(|(code, msg)| Status::new(code, msg))?;
    let csr = match X509CertificationRequest::from_der(der) {
        Ok((_, csr)) => csr,
        Err(err) => return Err(make_err(Code::InvalidArgument, "malformed CSR", Some(&err))),
    };
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for extension in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = extension {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                        GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                        _ => {}
                    }
                }
            }
        }
    }
    let subject = subject_from_name(&csr.certification_request_info.subject);
    Ok(MintCsr {
        public_key,
        uris,
        dns_names,
        subject,
    })
}

/// A positive TTL in seconds, or `None` for the server default.
fn ttl_seconds(ttl: i32) -> Option<Duration> {
    u64::try_from(ttl)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

impl SvidApi {
    /// Builds the service over the shared API context.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }

    /// Upstream's refusal of every JWT RPC under `disable_jwt_svids`.
    fn check_jwt_enabled(&self) -> Result<(), Status> {
        if self.ctx.settings.disable_jwt_svids {
            return Err(make_err(
                Code::Unimplemented,
                "JWT functionality is disabled",
                None,
            ));
        }
        Ok(())
    }

    /// Signs a JWT-SVID for a workload ID of this trust domain (with a `jti` claim when
    /// `include_jti`).
    async fn mint_jwt(
        &self,
        id: Option<&types::Spiffeid>,
        audience: &[String],
        ttl: i32,
        include_jti: bool,
    ) -> Result<types::Jwtsvid, Status> {
        let id = convert::workload_id_from_proto(&self.ctx.trust_domain, id)
            .map_err(|e| make_err(Code::InvalidArgument, "invalid SPIFFE ID", Some(&e)))?;
        if audience.is_empty() {
            return Err(make_err(
                Code::InvalidArgument,
                "at least one audience is required",
                None,
            ));
        }
        let signed = self
            .ctx
            .ca
            .sign_jwt_svid_with_jti(&id, audience, ttl_seconds(ttl), include_jti)
            .await
            .map_err(|e| convert::ca_status("failed to sign JWT-SVID", &e))?;
        Ok(types::Jwtsvid {
            token: signed.token,
            id: Some(convert::proto_from_id(&id)),
            expires_at: signed.expires_at,
            issued_at: signed.issued_at,
            hint: String::new(),
        })
    }

    /// The caller agent's authorized entries among `wanted`, by ID.
    async fn find_entries(
        &self,
        agent_id: &SpiffeId,
        wanted: &[&str],
    ) -> HashMap<String, Arc<RegistrationEntry>> {
        self.ctx
            .index
            .authorized_entries_among(agent_id.as_str(), wanted)
            .await
            .into_iter()
            .map(|e| (e.entry_id.clone(), e))
            .collect()
    }

    /// Signs one X509-SVID for an authorized entry with the CSR's key.
    async fn new_x509_svid(
        &self,
        param: &pb::NewX509svidParams,
        entries: &HashMap<String, Arc<RegistrationEntry>>,
    ) -> pb::batch_new_x509svid_response::Result {
        let failed = |status| pb::batch_new_x509svid_response::Result {
            status: Some(status),
            svid: None,
        };
        if param.entry_id.is_empty() {
            return failed(make_status(Code::InvalidArgument, "missing entry ID", None));
        }
        if param.csr.is_empty() {
            return failed(make_status(Code::InvalidArgument, "missing CSR", None));
        }
        let Some(entry) = entries.get(&param.entry_id) else {
            return failed(make_status(
                Code::NotFound,
                "entry not found or not authorized",
                None,
            ));
        };
        let public_key = match csr_key(&param.csr) {
            Ok(key) => key,
            Err((code, msg)) => return failed(make_status(code, &msg, None)),
        };
        let spiffe_id = match SpiffeId::parse(&entry.spiffe_id)
            .map_err(convert::ConvertError::from)
            .and_then(|id| convert::verify_member_id(&self.ctx.trust_domain, &id).map(|()| id))
        {
            Ok(id) => id,
            Err(err) => {
                return failed(make_status(
                    Code::Internal,
                    "entry has malformed SPIFFE ID",
                    Some(&err),
                ));
            }
        };
        let request = X509SvidRequest {
            public_key_der: public_key,
            spiffe_id: spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            ttl: ttl_seconds(entry.x509_svid_ttl),
            subject: None,
        };
        let chain = match self.ctx.ca.sign_workload_x509_svid(request).await {
            Ok(chain) => chain,
            Err(err) => {
                return failed(make_status(
                    convert::ca_code(&err),
                    "failed to sign X509-SVID",
                    Some(&err),
                ));
            }
        };
        let expires_at = match chain
            .first()
            .map(|leaf| spire_core::x509::certificate_not_after(leaf))
        {
            Some(Ok(not_after)) => not_after.unix_timestamp(),
            Some(Err(err)) => {
                return failed(make_status(
                    Code::Internal,
                    "failed to sign X509-SVID",
                    Some(&err),
                ));
            }
            None => {
                return failed(make_status(
                    Code::Internal,
                    "failed to sign X509-SVID",
                    Some(&"empty chain"),
                ));
            }
        };
        tracing::debug!(
            entry_id = %entry.entry_id,
            spiffe_id = %spiffe_id,
            revision_number = entry.revision_number,
            "Signed X509 SVID"
        );
        pb::batch_new_x509svid_response::Result {
            status: Some(convert::ok_status()),
            svid: Some(types::X509svid {
                cert_chain: chain,
                id: Some(convert::proto_from_id(&spiffe_id)),
                expires_at,
                hint: String::new(),
            }),
        }
    }
}

#[tonic::async_trait]
impl pb::svid_server::Svid for SvidApi {
    async fn mint_x509svid(
        &self,
        request: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("csr", audit::sha256_hex(&request.csr));
        audit.add("ttl", request.ttl);
        if request.csr.is_empty() {
            return Err(make_err(Code::InvalidArgument, "missing CSR", None));
        }
        let csr = parse_mint_csr(&request.csr)?;
        let uri = match csr.uris.as_slice() {
            [] => {
                return Err(make_err(
                    Code::InvalidArgument,
                    "CSR URI SAN is required",
                    None,
                ));
            }
            [uri] => uri,
            _ => {
                return Err(make_err(
                    Code::InvalidArgument,
                    "only one URI SAN is expected",
                    None,
                ));
            }
        };
        let id = SpiffeId::parse(uri)
            .map_err(convert::ConvertError::from)
            .and_then(|id| convert::verify_workload_id(&self.ctx.trust_domain, &id).map(|()| id))
            .map_err(|e| make_err(Code::InvalidArgument, "CSR URI SAN is invalid", Some(&e)))?;
        for name in &csr.dns_names {
            convert::validate_dns_name(name).map_err(|e| {
                make_err(Code::InvalidArgument, "CSR DNS name is invalid", Some(&e))
            })?;
        }
        convert::check_wildcard_overlap(&csr.dns_names).map_err(|e| {
            make_err(
                Code::InvalidArgument,
                "CSR DNS name contains a wildcard that covers another non-wildcard name",
                Some(&e),
            )
        })?;
        audit.add("spiffe_id", id.as_str());
        if !csr.dns_names.is_empty() {
            audit.add("dns_name", csr.dns_names.join(","));
        }
        let subject = (!csr.subject.is_empty()).then_some(csr.subject);
        let chain = self
            .ctx
            .ca
            .sign_workload_x509_svid(X509SvidRequest {
                public_key_der: csr.public_key,
                spiffe_id: id.clone(),
                dns_names: csr.dns_names,
                ttl: ttl_seconds(request.ttl),
                subject,
            })
            .await
            .map_err(|e| convert::ca_status("failed to sign X509-SVID", &e))?;
        let leaf = chain.first().ok_or_else(|| {
            make_err(
                Code::Internal,
                "failed to sign X509-SVID: empty chain",
                None,
            )
        })?;
        let expires_at = spire_core::x509::certificate_not_after(leaf)
            .map_err(|e| make_err(Code::Internal, "failed to sign X509-SVID", Some(&e)))?
            .unix_timestamp();
        audit.add("expires_at", expires_at);
        Ok(Response::new(pb::MintX509svidResponse {
            svid: Some(types::X509svid {
                cert_chain: chain,
                id: Some(convert::proto_from_id(&id)),
                expires_at,
                hint: String::new(),
            }),
        }))
    }

    async fn mint_jwtsvid(
        &self,
        request: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        self.check_jwt_enabled()?;
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("ttl", request.ttl);
        audit.add("audience", request.audience.join(","));
        if let Ok(id) = convert::id_from_proto(request.id.as_ref()) {
            audit.add("spiffe_id", id.as_str());
        }
        let svid = self
            .mint_jwt(request.id.as_ref(), &request.audience, request.ttl, false)
            .await?;
        Ok(Response::new(pb::MintJwtsvidResponse { svid: Some(svid) }))
    }

    async fn batch_new_x509svid(
        &self,
        request: Request<pb::BatchNewX509svidRequest>,
    ) -> Result<Response<pb::BatchNewX509svidResponse>, Status> {
        let caller = caller_of(&request);
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if request.params.is_empty() {
            return Err(make_err(Code::InvalidArgument, "missing parameters", None));
        }
        rate_limit(
            &self.ctx,
            "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
            &caller,
            LimitKind::Signing,
            request.params.len(),
            "certificate signing rate limiting",
        )
        .await?;
        let agent_id = caller_agent_id(&caller)?;
        let wanted: Vec<&str> = request.params.iter().map(|p| p.entry_id.as_str()).collect();
        let entries = self.find_entries(agent_id, &wanted).await;
        let mut results = Vec::with_capacity(entries.len());
        for param in &request.params {
            let result = self.new_x509_svid(param, &entries).await;
            if audit.enabled() {
                let mut fields = audit::field("entry_id", param.entry_id.as_str());
                fields.insert("csr".into(), audit::sha256_hex(&param.csr).into());
                if let Some(svid) = &result.svid {
                    if let Ok(id) = convert::id_from_proto(svid.id.as_ref()) {
                        fields.insert("spiffe_id".into(), id.as_str().into());
                    }
                    fields.insert("expires_at".into(), svid.expires_at.into());
                }
                let (code, message) = audit::item_status(result.status.as_ref());
                audit.item(code, message, fields);
            }
            results.push(result);
        }
        Ok(Response::new(pb::BatchNewX509svidResponse { results }))
    }

    async fn new_jwtsvid(
        &self,
        request: Request<pb::NewJwtsvidRequest>,
    ) -> Result<Response<pb::NewJwtsvidResponse>, Status> {
        self.check_jwt_enabled()?;
        let caller = caller_of(&request);
        let audit = AuditLog::of(&request);
        rate_limit(
            &self.ctx,
            "/spire.api.server.svid.v1.SVID/NewJWTSVID",
            &caller,
            LimitKind::Signing,
            1,
            "JWT signing request rate limiting",
        )
        .await?;
        let agent_id = caller_agent_id(&caller)?;
        let request = request.into_inner();
        audit.add("entry_id", request.entry_id.as_str());
        audit.add("audience", request.audience.join(","));
        let entries = self
            .find_entries(agent_id, &[request.entry_id.as_str()])
            .await;
        let Some(entry) = entries.get(&request.entry_id) else {
            return Err(make_err(
                Code::NotFound,
                "entry not found or not authorized",
                None,
            ));
        };
        let id = convert::proto_from_id_string(&entry.spiffe_id)
            .map_err(|e| make_err(Code::Internal, "entry has malformed SPIFFE ID", Some(&e)))?;
        let include_jti = entry
            .additional_attributes
            .is_some_and(|a| a.jwt_svid_include_jti);
        let svid = self
            .mint_jwt(
                Some(&id),
                &request.audience,
                entry.jwt_svid_ttl,
                include_jti,
            )
            .await?;
        Ok(Response::new(pb::NewJwtsvidResponse { svid: Some(svid) }))
    }

    async fn new_downstream_x509ca(
        &self,
        request: Request<pb::NewDownstreamX509caRequest>,
    ) -> Result<Response<pb::NewDownstreamX509caResponse>, Status> {
        let audit = AuditLog::of(&request);
        audit.add("csr", audit::hash_byte(&request.get_ref().csr));
        audit.add("trust_domain_id", self.ctx.trust_domain.id_string());
        let caller = caller_of(&request);
        rate_limit(
            &self.ctx,
            "/spire.api.server.svid.v1.SVID/NewDownstreamX509CA",
            &caller,
            LimitKind::DownstreamCa,
            1,
            "downstream CA signing rate limit",
        )
        .await?;
        if caller.downstream_entry_id.is_none() {
            return Err(make_err(
                Code::Internal,
                "caller is not a downstream workload",
                None,
            ));
        }
        let request = request.into_inner();
        let public_key = csr_key(&request.csr).map_err(|(code, msg)| Status::new(code, msg))?;
        let chain = self
            .ctx
            .ca
            .sign_downstream_x509_ca(&public_key, ttl_seconds(request.preferred_ttl))
            .await
            .map_err(|e| convert::ca_status("failed to sign downstream X.509 CA", &e))?;
        let bundle = self
            .ctx
            .datastore
            .fetch_bundle(self.ctx.trust_domain.name())
            .await
            .map_err(|e| make_err(Code::Internal, "failed to fetch bundle", Some(&e)))?
            .ok_or_else(|| make_err(Code::NotFound, "bundle not found", None))?;
        // Upstream adds the CA's expiry (Unix seconds) to the success entry only.
        if let Some(not_after) = chain
            .first()
            .and_then(|leaf| spire_core::x509::certificate_not_after(leaf).ok())
        {
            audit.add("expires_at", not_after.unix_timestamp());
        }
        Ok(Response::new(pb::NewDownstreamX509caResponse {
            ca_cert_chain: chain,
            x509_authorities: bundle
                .x509_authorities
                .into_iter()
                .map(|authority| authority.asn1)
                .collect(),
        }))
    }

    async fn mint_witsvid(
        &self,
        _request: Request<pb::MintWitsvidRequest>,
    ) -> Result<Response<pb::MintWitsvidResponse>, Status> {
        Err(convert::wit_svids_unsupported())
    }

    async fn batch_new_witsvid(
        &self,
        _request: Request<pb::BatchNewWitsvidRequest>,
    ) -> Result<Response<pb::BatchNewWitsvidResponse>, Status> {
        Err(convert::wit_svids_unsupported())
    }
}
