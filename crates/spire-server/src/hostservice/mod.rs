//! Host services the server offers to external plugins, as upstream's server catalog does:
//! `IdentityProvider`, `AgentStore` and `Metrics`. Plugins load before the CA exists, so the
//! services that need it are bound late ([`ServerHostServices::bind_ca`]); until then they
//! answer `FailedPrecondition` as upstream's do before `SetDeps`.

pub mod agentstore;
pub mod identityprovider;

use std::sync::Arc;

use spire_common::plugin_host::HostServices;
use spire_common::plugin_host::hostservice::metrics::MetricsHostService;
use spire_common::telemetry::Metrics;
use spire_core::spiffe_id::TrustDomain;

use crate::ca::CaManager;
use crate::datastore::DataStore;

/// The server's host services, shared by every external plugin it loads.
#[derive(Debug, Clone)]
pub struct ServerHostServices {
    agent_store: agentstore::AgentStore,
    identity_provider: identityprovider::IdentityProvider,
    metrics: Metrics,
}

impl ServerHostServices {
    /// Services over `datastore` and `metrics`; `IdentityProvider` waits for
    /// [`Self::bind_ca`].
    pub fn new(trust_domain: TrustDomain, datastore: Arc<dyn DataStore>, metrics: Metrics) -> Self {
        Self {
            agent_store: agentstore::AgentStore::new(Arc::clone(&datastore)),
            identity_provider: identityprovider::IdentityProvider::new(trust_domain, datastore),
            metrics,
        }
    }

    /// Gives `IdentityProvider` the server's identity once the CA runs.
    pub fn bind_ca(&self, ca: &Arc<CaManager>) {
        self.identity_provider.bind(ca.server_identity());
    }

    /// The set offered in `Init`, in upstream's order.
    pub fn host_services(&self) -> HostServices {
        HostServices::none()
            .with(self.identity_provider.clone().server())
            .with(self.agent_store.clone().server())
            .with(MetricsHostService::new(self.metrics.clone()).server())
    }
}
