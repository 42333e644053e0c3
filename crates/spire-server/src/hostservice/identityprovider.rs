//! The `IdentityProvider` host service (`spire.hostservice.server.identityprovider.v1`):
//! gives a plugin the server's own X509-SVID and key with the trust domain's bundle (e.g. an
//! UpstreamAuthority or Notifier that calls another service as the server).

use std::sync::{Arc, RwLock};

use spire_core::spiffe_id::TrustDomain;
use spire_proto::spire::hostservice::server::identityprovider::v1::identity_provider_server::{
    IdentityProvider as IdentityProviderService, IdentityProviderServer,
};
use spire_proto::spire::hostservice::server::identityprovider::v1::{
    FetchX509IdentityRequest, FetchX509IdentityResponse, X509Identity,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::ca::ServerIdentity;
use crate::datastore::DataStore;

/// Answers `FetchX509Identity` with the server's current identity and the bundle.
#[derive(Clone)]
pub struct IdentityProvider {
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
    identity: Arc<RwLock<Option<watch::Receiver<Option<ServerIdentity>>>>>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("trust_domain", &self.trust_domain.name())
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// The service for `trust_domain`; it has no identity to give until [`Self::bind`].
    pub fn new(trust_domain: TrustDomain, datastore: Arc<dyn DataStore>) -> Self {
        Self {
            trust_domain,
            datastore,
            identity: Arc::new(RwLock::new(None)),
        }
    }

    /// Follows the server's identity (renewed by the CA) from now on.
    pub fn bind(&self, identity: watch::Receiver<Option<ServerIdentity>>) {
        let mut slot = self
            .identity
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(identity);
    }

    /// The gRPC server.
    pub fn server(self) -> IdentityProviderServer<Self> {
        IdentityProviderServer::new(self)
    }

    fn current(&self) -> Result<ServerIdentity, Status> {
        let slot = self
            .identity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(receiver) = slot.as_ref() else {
            return Err(Status::failed_precondition(
                "IdentityProvider host service has not been initialized",
            ));
        };
        let identity = receiver.borrow().clone();
        identity.ok_or_else(|| Status::unavailable("the server has no X509-SVID yet"))
    }
}

#[tonic::async_trait]
impl IdentityProviderService for IdentityProvider {
    async fn fetch_x509_identity(
        &self,
        _request: Request<FetchX509IdentityRequest>,
    ) -> Result<Response<FetchX509IdentityResponse>, Status> {
        let identity = self.current()?;
        let bundle = self
            .datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .map_err(|e| Status::unknown(e.to_string()))?
            .ok_or_else(|| Status::internal("the trust domain bundle is missing"))?;
        Ok(Response::new(FetchX509IdentityResponse {
            identity: Some(X509Identity {
                cert_chain: identity.chain.clone(),
                private_key: identity.key.pkcs8_der().to_vec(),
            }),
            bundle: Some(crate::plugins::sdk_types::to_plugin_bundle(&bundle)),
        }))
    }
}
