//! Server-side NodeAttestor plugins, behind one trait: the agent API drives the
//! `AttestAgent` stream (first message, challenges, result) and asks the attestor named by
//! the attestation data's type to verify the payload. Each implementation is a file here,
//! chosen by name in `catalog/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use spire_core::spiffe_id::SpiffeId;
use tonic::{Code, Status};

pub mod aws_iid;
pub mod aws_iid_ec2;
pub mod aws_iid_eks;
pub mod aws_iid_org;
pub mod azure_imds;
pub mod azure_imds_resolve;
pub mod azure_msi;
pub mod azure_resolve;
pub mod external;
pub mod gcp_credentials;
pub mod gcp_iit;
pub mod join_token;
pub mod k8s_psat;
pub mod sshpop;
pub mod tofu;
pub mod x509pop;

/// What a successful attestation proves about the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The agent's SPIFFE ID (`spiffe://<td>/spire/agent/<attestor>/...`).
    pub agent_id: SpiffeId,
    /// Node selector values; the agent API gives them the attestor's name as their type.
    pub selector_values: Vec<String>,
    /// Whether the agent re-attests instead of renewing its SVID.
    pub can_reattest: bool,
}

/// The agent's end of the stream, for attestors that challenge it (proof of possession).
#[async_trait]
pub trait Challenger: Send {
    /// Sends `challenge` to the agent and waits for its response.
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status>;
}

/// A server-side node attestor.
///
/// Errors are gRPC statuses with upstream's codes, since they go to the agent as they are;
/// plugins word them with [`plugin_error`] so that the message starts with
/// `nodeattestor(<name>): `, as upstream's plugin host prefixes them.
#[async_trait]
pub trait NodeAttestor: Send + Sync {
    /// The attestor's name: the attestation data type it answers, and its selectors' type.
    fn name(&self) -> &str;

    /// Verifies `payload` (the agent's attestation data), challenging the agent through
    /// `challenger` as often as the attestor needs.
    async fn attest(
        &self,
        payload: &[u8],
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status>;
}

/// A plugin's refusal, with upstream's `nodeattestor(<name>): ` prefix.
pub fn plugin_error(name: &str, code: Code, message: impl std::fmt::Display) -> Status {
    Status::new(code, format!("nodeattestor({name}): {message}"))
}

/// The server's node attestors by name. A configuration reload may replace them all at once
/// ([`NodeAttestors::replace_with`]); attestations already running keep the attestor they
/// started with.
#[derive(Default)]
pub struct NodeAttestors {
    by_name: std::sync::RwLock<BTreeMap<String, Arc<dyn NodeAttestor>>>,
}

impl Clone for NodeAttestors {
    fn clone(&self) -> Self {
        Self {
            by_name: std::sync::RwLock::new(self.read().clone()),
        }
    }
}

impl NodeAttestors {
    /// The attestors the catalog chose, for agents of `trust_domain`.
    pub fn from_catalog(
        choices: &[crate::catalog::NodeAttestorChoice],
        datastore: Arc<dyn crate::datastore::DataStore>,
        trust_domain: &spire_core::spiffe_id::TrustDomain,
    ) -> Self {
        use crate::catalog::NodeAttestorChoice as C;
        let mut out = Self::default();
        for choice in choices {
            let attestor: Arc<dyn NodeAttestor> = match choice {
                // Loaded asynchronously by `load_external`.
                C::External(_) => continue,
                C::JoinToken => Arc::new(join_token::JoinTokenAttestor::new(
                    Arc::clone(&datastore),
                    trust_domain.clone(),
                )),
                C::K8sPsat(config) => Arc::new(k8s_psat::K8sPsatAttestor::new(
                    config.clone(),
                    trust_domain.clone(),
                )),
                C::X509Pop(config) => Arc::new(x509pop::X509PopAttestor::new(
                    config.clone(),
                    trust_domain.clone(),
                    Arc::clone(&datastore),
                )),
                C::GcpIit(config) => {
                    match gcp_iit::GcpIitAttestor::new(
                        config.clone(),
                        trust_domain.clone(),
                        Arc::clone(&datastore),
                    ) {
                        Ok(attestor) => Arc::new(attestor),
                        Err(e) => {
                            // Validated when the catalog was built; cannot happen.
                            tracing::error!(error = %e, "gcp_iit node attestor not started");
                            continue;
                        }
                    }
                }
                C::AzureMsi(config) => {
                    match azure_msi::AzureMsiAttestor::new(
                        config.clone(),
                        trust_domain.clone(),
                        Arc::clone(&datastore),
                    ) {
                        Ok(attestor) => Arc::new(attestor),
                        Err(e) => {
                            // Validated when the catalog was built; cannot happen.
                            tracing::error!(error = %e, "azure_msi node attestor not started");
                            continue;
                        }
                    }
                }
                C::AzureImds(config) => {
                    match azure_imds::AzureImdsAttestor::new(
                        config.clone(),
                        trust_domain.clone(),
                        Arc::clone(&datastore),
                    ) {
                        Ok(attestor) => Arc::new(attestor),
                        Err(e) => {
                            // Validated when the catalog was built; cannot happen.
                            tracing::error!(error = %e, "azure_imds node attestor not started");
                            continue;
                        }
                    }
                }
                C::AwsIid(config) => Arc::new(aws_iid::AwsIidAttestor::new(
                    config.clone(),
                    trust_domain.clone(),
                    Arc::clone(&datastore),
                )),
                C::SshPop(config) => {
                    match sshpop::SshPopAttestor::new(config, trust_domain) {
                        Ok(attestor) => Arc::new(attestor),
                        Err(e) => {
                            // Validated when the catalog was built; cannot happen.
                            tracing::error!(error = %e, "sshpop node attestor not started");
                            continue;
                        }
                    }
                }
            };
            out.insert(attestor);
        }
        out
    }

    /// Starts, initializes and configures the external attestors the catalog chose and adds
    /// them; a plugin that fails stops start-up with its name and the reason. The loaded
    /// plugins are returned so the caller keeps their processes for the server's lifetime.
    pub async fn load_external(
        &mut self,
        choices: &[crate::catalog::NodeAttestorChoice],
        trust_domain: &spire_core::spiffe_id::TrustDomain,
        host_services: &spire_common::plugin_host::HostServices,
    ) -> Result<
        Vec<Arc<spire_common::plugin_host::LoadedPlugin>>,
        spire_common::plugin_host::PluginLoadError,
    > {
        let mut plugins = Vec::new();
        for choice in choices {
            if let crate::catalog::NodeAttestorChoice::External(plugin) = choice {
                let loaded = spire_common::plugin_host::LoadedPlugin::load(
                    plugin,
                    external::SERVICE,
                    trust_domain.name(),
                    host_services,
                )
                .await?;
                let loaded = Arc::new(loaded);
                plugins.push(Arc::clone(&loaded));
                self.insert(Arc::new(external::ExternalNodeAttestor::new(loaded)));
            }
        }
        Ok(plugins)
    }

    /// Only `join_token`: what most tests and the quickstart use.
    pub fn join_token_only(
        datastore: Arc<dyn crate::datastore::DataStore>,
        trust_domain: &spire_core::spiffe_id::TrustDomain,
    ) -> Self {
        Self::from_catalog(
            &[crate::catalog::NodeAttestorChoice::JoinToken],
            datastore,
            trust_domain,
        )
    }

    /// Adds `attestor` under its name.
    pub fn insert(&mut self, attestor: Arc<dyn NodeAttestor>) {
        self.by_name
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(attestor.name().to_owned(), attestor);
    }

    /// The attestor for an attestation data type.
    pub fn get(&self, name: &str) -> Option<Arc<dyn NodeAttestor>> {
        self.read().get(name).cloned()
    }

    /// The attestors' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Uses `other`'s attestors for attestations from now on (a configuration reload changed
    /// their `plugin_data`, e.g. k8s_psat `clusters`). Attestors `other` lacks stay: external
    /// plugins are not rebuilt by a reload (SIGUSR1 reconfigures them from their data file).
    pub fn replace_with(&self, other: Self) {
        let fresh = other
            .by_name
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.by_name
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(fresh);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn NodeAttestor>>> {
        self.by_name
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for NodeAttestors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.read().keys()).finish()
    }
}
