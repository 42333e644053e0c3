//! Agent SVID rotation: at half of its lifetime the agent generates a key in the other
//! KeyManager slot (`agent-svid-A` / `agent-svid-B`), renews with `RenewAgent`, stores the
//! new chain in `data_dir`, and presents it on later connections.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AttestError, renew};
use crate::client::{AgentIdentity, ServerClient};
use crate::plugins::keymanager::{
    AGENT_SVID_KEY_TYPE, AgentKey, KeyManager, next_agent_svid_key_id,
};
use crate::storage::AgentStorage;

/// First wait after a failed renewal; grows ×1.5 per failure up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between renewal attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(240);

/// The agent's current SVID, its key, and the KeyManager slot the key lives in.
#[derive(Debug, Clone)]
pub struct AgentSvid {
    /// The SVID chain, leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The SVID's private key (in process or in a KeyManager plugin).
    pub key: AgentKey,
    /// The KeyManager ID of `key` (`agent-svid-A` or `agent-svid-B`).
    pub key_id: String,
}

/// What the rotation task works with.
#[derive(Debug, Clone)]
pub struct RotationConfig {
    /// The server client; its identity is swapped after every renewal.
    pub client: ServerClient,
    /// Where new agent SVID keys are generated.
    pub key_manager: Arc<dyn KeyManager>,
    /// Where the new chain is stored.
    pub storage: Arc<AgentStorage>,
    /// Stored beside the SVID (upstream's flag); join-token agents are not re-attestable.
    pub reattestable: bool,
    /// Told of every new agent SVID, e.g. by the manager.
    pub updates: Option<watch::Sender<AgentIdentity>>,
    /// The X.509 authorities the server marked tainted (from the manager's syncs): an SVID
    /// signed under one is renewed at once instead of at its half-life.
    pub tainted_roots: Option<watch::Receiver<Vec<Vec<u8>>>>,
    /// `availability_target`: renew once only this much lifetime is left, when that comes
    /// before the half-life (see [`crate::rotation_strategy`]).
    pub availability_target: Option<std::time::Duration>,
}

/// When the SVID whose leaf is `leaf_der` should be renewed: half-way between its
/// not-before and not-after, or earlier as `availability_target` asks, as upstream.
pub fn renewal_due(
    leaf_der: &[u8],
    availability_target: Option<std::time::Duration>,
) -> Result<OffsetDateTime, AttestError> {
    let validity = spire_core::x509::certificate_validity(leaf_der)
        .map_err(|e| AttestError::Protocol(format!("the agent SVID cannot be read: {e}")))?;
    let due = crate::rotation_strategy::renewal_due(
        validity.not_before.unix_timestamp(),
        validity.not_after.unix_timestamp(),
        availability_target,
    );
    OffsetDateTime::from_unix_timestamp(due)
        .map_err(|e| AttestError::Protocol(format!("the agent SVID cannot be read: {e}")))
}

/// Renews the agent SVID at every half-life until `cancel` fires (then `Ok`); a
/// re-attestable agent is told to attest again instead ([`AttestError::ReattestDue`]). Failed
/// renewals are retried with backoff (5 s, ×1.5, at most 4 min) while the SVID is valid;
/// returns an error when the SVID expired ([`AttestError::Expired`]) or the server denies
/// the agent itself ([`AttestError::Denied`]: evicted, not current, banned), so the caller
/// can attest again or stop (see [`super::keep_agent_svid`]).
pub async fn run_rotation(
    config: RotationConfig,
    mut current: AgentSvid,
    cancel: CancellationToken,
) -> Result<(), AttestError> {
    let mut backoff = BASE_BACKOFF;
    loop {
        let leaf = current
            .chain
            .first()
            .ok_or_else(|| AttestError::Protocol("the agent SVID chain is empty".into()))?;
        let due = renewal_due(leaf, config.availability_target)?;
        let not_after = spire_core::x509::certificate_not_after(leaf)
            .map_err(|e| AttestError::Protocol(format!("the agent SVID cannot be read: {e}")))?;
        spire_common::telemetry::agent::svid_expiration(not_after.into());
        let mut tainted = config.tainted_roots.clone();
        tokio::select! {
            woke = sleep_until(due, &cancel) => {
                if !woke {
                    return Ok(());
                }
            }
            () = until_tainted(tainted.as_mut(), &current.chain) => {
                tracing::info!("the agent SVID is signed by a tainted authority; renewing it now");
            }
        }
        if config.reattestable {
            // As upstream's rotator: a re-attestable agent attests again (with fresh
            // attestation data, e.g. a new projected token) instead of calling RenewAgent,
            // which the server refuses for it.
            return Err(AttestError::ReattestDue);
        }
        let started = std::time::Instant::now();
        let rotated = rotate_once(&config, &current).await;
        spire_common::telemetry::agent::svid_rotated(rotated.is_ok(), started);
        match rotated {
            Ok(next) => {
                tracing::info!(
                    key_id = %next.key_id,
                    "agent SVID renewed"
                );
                current = next;
                backoff = BASE_BACKOFF;
            }
            Err(err @ AttestError::Denied(_)) => return Err(err),
            Err(err) => {
                if OffsetDateTime::now_utc() >= not_after {
                    return Err(AttestError::Expired(not_after));
                }
                tracing::warn!(error = %err, retry_in = ?backoff, "agent SVID renewal failed");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = backoff.mul_f64(1.5).min(MAX_BACKOFF);
            }
        }
    }
}

/// One renewal: new key in the other slot, RenewAgent, store, switch the client.
pub async fn rotate_once(
    config: &RotationConfig,
    current: &AgentSvid,
) -> Result<AgentSvid, AttestError> {
    let key_id = next_agent_svid_key_id(Some(&current.key_id));
    let key = config
        .key_manager
        .generate_key(key_id, AGENT_SVID_KEY_TYPE)
        .await?;
    let chain = renew(&config.client, &key).await?;
    config.storage.store_svid(&chain, config.reattestable)?;
    config.client.set_identity(chain.clone(), key.clone())?;
    if let Some(updates) = &config.updates {
        updates.send_replace(AgentIdentity {
            chain: chain.clone(),
            key: key.clone(),
        });
    }
    Ok(AgentSvid {
        chain,
        key,
        key_id: key_id.to_owned(),
    })
}

/// Returns once `tainted` names a root `chain` is signed under; never without a receiver.
async fn until_tainted(tainted: Option<&mut watch::Receiver<Vec<Vec<u8>>>>, chain: &[Vec<u8>]) {
    let Some(tainted) = tainted else {
        return std::future::pending().await;
    };
    loop {
        let hit = crate::manager::chain_is_under(chain, &tainted.borrow_and_update());
        if hit {
            return;
        }
        if tainted.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Sleeps until `when`; `false` when cancelled first.
async fn sleep_until(when: OffsetDateTime, cancel: &CancellationToken) -> bool {
    let wait = (when - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use spire_core::keys::{KeyType, PrivateKey};
    use spire_core::spiffe_id::TrustDomain;
    use spire_core::x509::{CaTemplate, Validity, self_signed_ca};

    use super::*;

    /// 2026-01-01 00:00 UTC.
    const START: i64 = 1_767_225_600;
    const HOUR: i64 = 3600;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    /// A certificate valid for 72 hours from [`START`], as the agent SVID's leaf.
    fn leaf_valid_72h() -> Vec<u8> {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let validity = Validity {
            not_before: at(START),
            not_after: at(START + 72 * HOUR),
        };
        let template = CaTemplate::new(TrustDomain::new("example.org").unwrap(), validity);
        self_signed_ca(&key, &template).unwrap()
    }

    #[test]
    fn availability_target_moves_the_agent_svid_renewal_before_its_half_life() {
        let leaf = leaf_valid_72h();
        // Without availability_target: at half-life, 36 h in.
        assert_eq!(renewal_due(&leaf, None).unwrap(), at(START + 36 * HOUR));
        // With 48 h: once only 48 h are left, 24 h in.
        assert_eq!(
            renewal_due(&leaf, Some(Duration::from_secs(48 * 3600))).unwrap(),
            at(START + 24 * HOUR)
        );
        // A target the lifetime cannot carry (72 h of 72 h) falls back to half-life.
        assert_eq!(
            renewal_due(&leaf, Some(Duration::from_secs(72 * 3600))).unwrap(),
            at(START + 36 * HOUR)
        );
    }
}
