//! The server's subsystems of the `health_checks { }` listener (`spire_common::health`), as
//! upstream reports them, so probes and dashboards written for upstream read the same body:
//!
//! | subsystem | passes when | details key on failure |
//! |---|---|---|
//! | `catalog.datastore` | the datastore answers a bundle query | `list_bundle_err` |
//! | `server` | the server's own admin socket answers `GetBundle` | `get_bundle_err` |
//! | `server.ca` | the CA signs a throw-away X509-SVID | `sign_x509_svid_err` |
//! | `server.ca.rotator` | CA rotation has not failed more than 10 times in a row | `rotation_err` |
//!
//! Each sets live and ready alike. A healthy server answers
//! `{"catalog.datastore":{},"server":{},"server.ca":{},"server.ca.rotator":{}}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use spire_common::health::{self, HealthCheck, HealthConfig, HealthError, HealthState};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::server::bundle::v1 as bundlev1;
use tokio_util::sync::CancellationToken;

use crate::api::ApiContext;
use crate::ca::X509SvidRequest;

/// How long one check may take before it counts as failed (upstream's datastore check
/// allows a minute).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Consecutive failed rotations after which `server.ca.rotator` fails, as upstream.
const ROTATION_FAILURE_THRESHOLD: u32 = 10;

/// Path of the throw-away SVID `server.ca` signs, as upstream's.
const HEALTH_SVID_PATH: &str = "/for/health/check/only";

/// The `health_checks` block (shared with the agent).
pub type HealthChecksConfig = HealthConfig;

/// A check outcome with the same verdict and details for live and ready.
fn outcome(error_key: &str, error: Option<String>) -> HealthState {
    let details = match &error {
        Some(e) => json!({ error_key: e }),
        None => json!({}),
    };
    HealthState {
        live: error.is_none(),
        ready: error.is_none(),
        live_details: details.clone(),
        ready_details: details,
    }
}

/// Runs `check` with [`CHECK_TIMEOUT`]; a timeout is a failure.
async fn timed<F>(check: F) -> Option<String>
where
    F: std::future::Future<Output = Option<String>>,
{
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| {
            Some(format!(
                "no answer within {} seconds",
                CHECK_TIMEOUT.as_secs()
            ))
        })
}

/// `catalog.datastore`.
struct DatastoreCheck(Arc<ApiContext>);

#[async_trait]
impl HealthCheck for DatastoreCheck {
    fn name(&self) -> &str {
        "catalog.datastore"
    }

    async fn check(&self) -> HealthState {
        let error = timed(async {
            self.0
                .datastore
                .count_bundles()
                .await
                .err()
                .map(|e| e.to_string())
        })
        .await;
        outcome("list_bundle_err", error)
    }
}

/// `server`: the admin socket serves.
struct AdminSocketCheck {
    socket_path: PathBuf,
}

#[async_trait]
impl HealthCheck for AdminSocketCheck {
    fn name(&self) -> &str {
        "server"
    }

    async fn check(&self) -> HealthState {
        let error = timed(async {
            let channel = match spire_common::cli::client::connect(
                &self.socket_path,
                "spire-server",
                "admin",
            )
            .await
            {
                Ok(channel) => channel,
                Err(e) => return Some(e.to_string()),
            };
            bundlev1::bundle_client::BundleClient::new(channel)
                .get_bundle(bundlev1::GetBundleRequest::default())
                .await
                .err()
                .map(|status| status.message().to_owned())
        })
        .await;
        outcome("get_bundle_err", error)
    }
}

/// `server.ca`: the active X509 authority signs.
struct CaCheck {
    ctx: Arc<ApiContext>,
    /// The throw-away key whose certificate is signed on every check.
    key: Option<PrivateKey>,
}

#[async_trait]
impl HealthCheck for CaCheck {
    fn name(&self) -> &str {
        "server.ca"
    }

    async fn check(&self) -> HealthState {
        let error = timed(async {
            let key = match &self.key {
                Some(key) => key,
                None => return Some("no key to sign a test SVID for".to_owned()),
            };
            let spiffe_id = match SpiffeId::from_path(&self.ctx.trust_domain, HEALTH_SVID_PATH) {
                Ok(id) => id,
                Err(e) => return Some(e.to_string()),
            };
            self.ctx
                .ca
                .sign_workload_x509_svid(X509SvidRequest {
                    public_key_der: key.public_key_der(),
                    spiffe_id,
                    dns_names: Vec::new(),
                    ttl: None,
                    subject: None,
                })
                .await
                .err()
                .map(|e| e.to_string())
        })
        .await;
        outcome("sign_x509_svid_err", error)
    }
}

/// `server.ca.rotator`.
struct RotatorCheck(Arc<ApiContext>);

#[async_trait]
impl HealthCheck for RotatorCheck {
    fn name(&self) -> &str {
        "server.ca.rotator"
    }

    async fn check(&self) -> HealthState {
        let error = (self.0.ca.failed_rotations() > ROTATION_FAILURE_THRESHOLD)
            .then(|| "rotations exceed the threshold number of failures".to_owned());
        outcome("rotation_err", error)
    }
}

/// The server's four subsystems; `socket_path` is the admin socket the `server` check calls.
pub fn server_checks(ctx: Arc<ApiContext>, socket_path: PathBuf) -> Vec<Arc<dyn HealthCheck>> {
    let key = PrivateKey::generate(KeyType::EcP256)
        .inspect_err(|e| tracing::error!(error = %e, "cannot make the health check's test key"))
        .ok();
    vec![
        Arc::new(DatastoreCheck(ctx.clone())),
        Arc::new(AdminSocketCheck { socket_path }),
        Arc::new(CaCheck {
            ctx: ctx.clone(),
            key,
        }),
        Arc::new(RotatorCheck(ctx)),
    ]
}

/// Checks the subsystems until `cancel` fires, as upstream does whether or not the listener
/// is enabled (a failing check is logged), and serves the listener when it is.
pub async fn serve_health(
    config: HealthChecksConfig,
    checks: Vec<Arc<dyn HealthCheck>>,
    cancel: CancellationToken,
) -> Result<(), HealthError> {
    let listener = if config.listener_enabled {
        Some(health::bind(&config).await?)
    } else {
        None
    };
    serve_on(listener, config, checks, cancel).await
}

/// Like [`serve_health`] on an already bound listener (`None`: checks only).
pub async fn serve_on(
    listener: Option<tokio::net::TcpListener>,
    config: HealthChecksConfig,
    checks: Vec<Arc<dyn HealthCheck>>,
    cancel: CancellationToken,
) -> Result<(), HealthError> {
    let checks_cancel = cancel.child_token();
    let (state, task) = health::spawn_checks(checks, checks_cancel.clone());
    let served = match listener {
        Some(listener) => {
            tracing::info!(
                address = %format!("{}:{}", config.bind_address, config.bind_port),
                "Serving health checks"
            );
            health::serve(listener, &config, state, cancel.clone()).await
        }
        None => {
            cancel.cancelled().await;
            Ok(())
        }
    };
    checks_cancel.cancel();
    let _ = task.await;
    served
}
