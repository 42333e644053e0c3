//! `spire.api.server.debug.v1.Debug`: uptime, object counts and the server's SVID chain, for
//! `spire-server` operators over the admin socket.

use std::sync::Arc;

use spire_proto::spire::api::server::debug::v1 as pb;
use spire_proto::spire::api::server::debug::v1::debug_server::Debug;
use tonic::{Request, Response, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ApiContext;
use super::convert::datastore_status;
use crate::datastore::{ListEntriesRequest, ListNodesRequest};

/// The debug service.
pub struct DebugApi {
    ctx: Arc<ApiContext>,
}

impl DebugApi {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }
}

fn saturating_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A distinguished name as Go's `pkix.Name.String()` prints it: most specific RDN first,
/// comma-separated, e.g. `O=SPIRE,C=US`.
fn go_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in name.iter_rdn().collect::<Vec<_>>().into_iter().rev() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let key = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                    .map_or_else(|_| attribute.attr_type().to_id_string(), str::to_owned);
                let key = if key == "serialNumber" {
                    "SERIALNUMBER".to_owned()
                } else {
                    key
                };
                let value = attribute.as_str().unwrap_or_default();
                format!("{key}={value}")
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    parts.join(",")
}

/// One certificate of the chain as GetInfo reports it.
fn describe(der: &[u8]) -> Option<(pb::get_info_response::Cert, Vec<u8>, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let id = spire_core::x509::certificate_spiffe_id(der)
        .ok()
        .map(|id| super::convert::proto_from_id(&id));
    let info = pb::get_info_response::Cert {
        id,
        expires_at: cert.validity().not_after.timestamp(),
        subject: go_name(cert.subject()),
    };
    Some((
        info,
        cert.subject().as_raw().to_vec(),
        cert.issuer().as_raw().to_vec(),
    ))
}

impl DebugApi {
    /// The server's SVID chain, completed with the bundle root that issued its last
    /// certificate, as upstream shows the verified chain.
    async fn svid_chain(&self) -> Vec<pb::get_info_response::Cert> {
        let Some(identity) = self.ctx.ca.server_identity().borrow().clone() else {
            return Vec::new();
        };
        let mut chain = Vec::new();
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        for der in &identity.chain {
            if let Some((info, subject, issuer)) = describe(der) {
                chain.push(info);
                last = Some((subject, issuer));
            }
        }
        let Some((subject, issuer)) = last else {
            return chain;
        };
        if subject == issuer {
            return chain;
        }
        if let Ok(Some(bundle)) = self
            .ctx
            .datastore
            .fetch_bundle(self.ctx.trust_domain.name())
            .await
        {
            let root = bundle
                .x509_authorities
                .iter()
                .filter_map(|authority| describe(&authority.asn1))
                .find(|(_, root_subject, _)| *root_subject == issuer);
            if let Some((info, _, _)) = root {
                chain.push(info);
            }
        }
        chain
    }
}

#[tonic::async_trait]
impl Debug for DebugApi {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let datastore = &self.ctx.datastore;
        let agents = datastore
            .count_attested_nodes(&ListNodesRequest::default())
            .await
            .map_err(|e| datastore_status("failed to count agents", &e))?;
        let entries = datastore
            .count_registration_entries(&ListEntriesRequest::default())
            .await
            .map_err(|e| datastore_status("failed to count entries", &e))?;
        let bundles = datastore
            .count_bundles()
            .await
            .map_err(|e| datastore_status("failed to count bundles", &e))?;
        // The server's own bundle is not federated.
        let own = datastore
            .fetch_bundle(self.ctx.trust_domain.name())
            .await
            .map_err(|e| datastore_status("failed to fetch bundle", &e))?
            .is_some();
        let federated = bundles.saturating_sub(u64::from(own));
        let uptime = self.ctx.started_at.elapsed().as_secs();
        Ok(Response::new(pb::GetInfoResponse {
            svid_chain: self.svid_chain().await,
            uptime: saturating_i32(uptime),
            agents_count: saturating_i32(agents),
            federated_bundles_count: saturating_i32(federated),
            entries_count: saturating_i32(entries),
        }))
    }
}
