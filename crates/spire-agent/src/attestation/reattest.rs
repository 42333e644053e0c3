//! Keeping the agent SVID accepted, as upstream's manager and rotator do: renew it at
//! half-life ([`run_rotation`]), and when the server stops accepting the agent — the SVID
//! expired, the agent was evicted (`spire-server agent evict`), its SVID is no longer the
//! current one, or it is banned — react as upstream:
//!
//! - must re-attest, and the server marked the agent re-attestable: attest again with the
//!   node attestor and carry on with the new SVID;
//! - must re-attest, but the attestor cannot (join tokens are single-use), or re-attestation
//!   fails: remove the SVID from `data_dir` (so the next start attests instead of reusing
//!   it) and stop the agent with an error saying what to do;
//! - banned: remove the SVID and stop.
//!
//! The denial is seen by whichever server call meets it first: the manager's sync (every
//! few seconds) or the renewal; both record it on the [`ServerClient`].

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AttestError, RotationConfig, attest, run_rotation};
use crate::client::{AgentDenied, AgentIdentity, DenialKind};
use crate::plugins::keymanager::{AGENT_SVID_KEY_TYPE, next_agent_svid_key_id};
use crate::plugins::nodeattestor::NodeAttestor;

use super::AgentSvid;

/// Runs the agent SVID's rotation and handles the server's denials (see the module
/// documentation) until `cancel` fires (`Ok`), or until the agent must stop: then the
/// error says why ([`AttestError::CannotReattest`], [`AttestError::ReattestFailed`],
/// [`AttestError::Banned`], or a renewal failure that cannot be retried).
pub async fn keep_agent_svid(
    mut config: RotationConfig,
    attestor: Arc<dyn NodeAttestor>,
    mut current: AgentSvid,
    cancel: CancellationToken,
) -> Result<(), AttestError> {
    let mut denials = config.client.denials();
    loop {
        let rotation_cancel = cancel.child_token();
        let rotation = run_rotation(config.clone(), current.clone(), rotation_cancel.clone());
        tokio::pin!(rotation);
        let denial = tokio::select! {
            result = &mut rotation => match result {
                Ok(()) => return Ok(()),
                Err(AttestError::ReattestDue) => {
                    // Due, not denied: a failure is retried while the SVID is valid, as
                    // upstream's rotator retries.
                    match reattest_until_expiry(&config, attestor.as_ref(), &current, &cancel).await {
                        Ok(Some((next, reattestable))) => {
                            tracing::info!("agent re-attested");
                            current = next;
                            config.reattestable = reattestable;
                            continue;
                        }
                        Ok(None) => return Ok(()),
                        Err(at) => AgentDenied {
                            kind: DenialKind::MustReattest,
                            message: format!("the agent SVID expired at {at}"),
                        },
                    }
                }
                Err(AttestError::Denied(denial)) => denial,
                Err(AttestError::Expired(at)) => AgentDenied {
                    kind: DenialKind::MustReattest,
                    message: format!("the agent SVID expired at {at}"),
                },
                Err(other) => return Err(other),
            },
            denial = next_denial(&mut denials) => {
                // Let a renewal already under way finish before attesting again.
                rotation_cancel.cancel();
                let _ = rotation.await;
                denial
            }
        };
        if cancel.is_cancelled() {
            return Ok(());
        }
        match denial.kind {
            DenialKind::Banned => {
                tracing::error!(error = %denial, "agent is banned: removing the agent SVID and shutting down");
                forget_svid(&config);
                return Err(AttestError::Banned(denial.message));
            }
            DenialKind::MustReattest if !config.reattestable => {
                tracing::error!(
                    error = %denial,
                    attestor = attestor.name(),
                    "agent needs to re-attest but its node attestor cannot; removing the agent SVID and shutting down"
                );
                forget_svid(&config);
                return Err(AttestError::CannotReattest {
                    attestor: attestor.name().to_owned(),
                    reason: denial.message,
                });
            }
            DenialKind::MustReattest => {
                tracing::warn!(error = %denial, "agent needs to re-attest; attempting to re-attest");
                let started = std::time::Instant::now();
                let reattested = reattest(&config, attestor.as_ref(), &current).await;
                spire_common::telemetry::agent::node_reattested(reattested.is_ok(), started);
                match reattested {
                    Ok((next, reattestable)) => {
                        tracing::info!("agent re-attested");
                        current = next;
                        config.reattestable = reattestable;
                        config.client.clear_denial();
                        denials.mark_unchanged();
                    }
                    Err(error) => {
                        tracing::error!(error = %error, "agent failed re-attestation; removing the agent SVID and shutting down");
                        forget_svid(&config);
                        return Err(AttestError::ReattestFailed {
                            reason: denial.message,
                            error: Box::new(error),
                        });
                    }
                }
            }
        }
    }
}

/// Re-attests at half-life, retrying failures with backoff (5 s, ×1.5, at most 4 min)
/// while the current SVID is valid. `Ok(None)` when cancelled; `Err(not_after)` once the
/// SVID expired without a successful re-attestation.
async fn reattest_until_expiry(
    config: &RotationConfig,
    attestor: &dyn NodeAttestor,
    current: &AgentSvid,
    cancel: &CancellationToken,
) -> Result<Option<(AgentSvid, bool)>, time::OffsetDateTime> {
    let not_after = current
        .chain
        .first()
        .and_then(|leaf| spire_core::x509::certificate_not_after(leaf).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let mut backoff = std::time::Duration::from_secs(5);
    loop {
        match reattest(config, attestor, current).await {
            Ok(next) => return Ok(Some(next)),
            Err(error) => {
                if time::OffsetDateTime::now_utc() >= not_after {
                    return Err(not_after);
                }
                tracing::warn!(error = %error, retry_in = ?backoff, "agent re-attestation failed");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff
            .mul_f64(1.5)
            .min(std::time::Duration::from_secs(240));
    }
}

/// Waits until a denial is recorded (one already recorded is returned at once).
async fn next_denial(denials: &mut watch::Receiver<Option<AgentDenied>>) -> AgentDenied {
    loop {
        if let Some(denial) = denials.borrow_and_update().clone() {
            return denial;
        }
        if denials.changed().await.is_err() {
            // The client is gone, so no denial can come; the rotation decides.
            std::future::pending::<()>().await;
        }
    }
}

/// Attests again with a new key in the other KeyManager slot over a connection that
/// presents no SVID, stores the result and switches the client to it.
async fn reattest(
    config: &RotationConfig,
    attestor: &dyn NodeAttestor,
    current: &AgentSvid,
) -> Result<(AgentSvid, bool), AttestError> {
    let key_id = next_agent_svid_key_id(Some(&current.key_id));
    let key = config
        .key_manager
        .generate_key(key_id, AGENT_SVID_KEY_TYPE)
        .await?;
    let fresh = config.client.without_identity()?;
    let attested = attest(&fresh, attestor, &key).await?;
    config
        .storage
        .store_svid(&attested.svid_chain, attested.reattestable)?;
    config
        .client
        .set_identity(attested.svid_chain.clone(), key.clone())?;
    if let Some(updates) = &config.updates {
        updates.send_replace(AgentIdentity {
            chain: attested.svid_chain.clone(),
            key: key.clone(),
        });
    }
    Ok((
        AgentSvid {
            chain: attested.svid_chain,
            key,
            key_id: key_id.to_owned(),
        },
        attested.reattestable,
    ))
}

/// Removes the agent SVID from `data_dir`, as upstream's `deleteSVID`; a failure is logged
/// (the agent is stopping anyway, and the server denies the stale SVID again after the
/// next start, which then retries the removal).
fn forget_svid(config: &RotationConfig) {
    if let Err(e) = config.storage.delete_svid() {
        tracing::error!(error = %e, "failed to remove the agent SVID from data_dir");
    }
}
