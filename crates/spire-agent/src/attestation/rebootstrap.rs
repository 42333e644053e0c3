//! The bootstrap loop (`retry_bootstrap`) and rebootstrapping (`rebootstrap_mode`,
//! `rebootstrap_delay`), as upstream v1.13.3's agent does them (`pkg/agent/agent.go`,
//! `pkg/agent/manager`):
//!
//! - at start, and after every attestation, an agent SVID the server marked as not
//!   re-attestable (join tokens; server-side plugins that cannot re-attest) makes `always`
//!   fail with upstream's message and `auto` warn and fall back to `never`;
//! - obtaining the first agent SVID is retried with [`BootstrapBackoff`] unless
//!   `retry_bootstrap = false`; a PermissionDenied answer is never retried;
//! - when the server's certificate does not chain to the agent's bundle ("unknown
//!   authority"), the agent waits `rebootstrap_delay` from the first such failure (a good
//!   connection stops that clock), then forgets its bundle and SVID and attests again from
//!   the bootstrap source (`trust_bundle_path`, `_url` or `_spiffe_workload_api`).
//!
//! Difference from upstream: where upstream's running agent exits ("shutting down for
//! rebootstrapping") and relies on its supervisor to start it again, ours ends the run with
//! [`RebootstrapNeeded`] and [`crate::agent`] starts it again in the same process.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AttestError;
use super::bootstrap_state::BootstrapState;
pub use super::retry::BootstrapBackoff;
use super::retry::random_unit;
use crate::config::RebootstrapMode;
use crate::manager::Manager;
use crate::storage::AgentStorage;

/// The words of the server certificate refusal when it does not chain to the agent's bundle
/// (spire-common's `SpiffeIdVerifier`): upstream's `x509.UnknownAuthorityError`.
pub const UNKNOWN_AUTHORITY: &str = "does not chain to the trust bundle";

/// Upstream's message when rebootstrapping was asked for but cannot work.
pub const NOT_ALLOWED: &str = "you have requested rebootstrap support but the NodeAttestor \
                               plugin or the spire server configuration is not allowing it";

/// The run ended because trust in the server is lost for good and the agent must attest
/// again from its bootstrap source.
#[derive(Debug, thiserror::Error)]
#[error("Agent needs to rebootstrap. shutting down")]
pub struct RebootstrapNeeded;

/// Whether an error (anywhere in its chain) is the server's certificate not chaining to the
/// agent's trust bundle.
pub fn is_unknown_authority(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.to_string().contains(UNKNOWN_AUTHORITY))
}

/// Whether the server refused the agent with PermissionDenied (a used join token is
/// InvalidArgument; a banned or unknown agent is PermissionDenied): never retried.
fn is_permission_denied(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<AttestError>(),
            Some(
                AttestError::PermissionDenied(_) | AttestError::Denied(_) | AttestError::Banned(_)
            )
        )
    })
}

/// The rebootstrap mode that applies given whether the agent SVID may be re-attested:
/// unchanged when it may (or rebootstrapping is off), `never` with upstream's warning under
/// `auto`, upstream's error under `always`.
pub fn mode_for(
    mode: RebootstrapMode,
    reattestable: bool,
) -> Result<RebootstrapMode, anyhow::Error> {
    match mode {
        RebootstrapMode::Never => Ok(mode),
        _ if reattestable => Ok(mode),
        RebootstrapMode::Always => Err(anyhow::anyhow!("{NOT_ALLOWED}")),
        RebootstrapMode::Auto => {
            tracing::warn!("{NOT_ALLOWED}. Disabling");
            Ok(RebootstrapMode::Never)
        }
    }
}

/// What the bootstrap loop needs from its caller.
pub struct BootstrapLoop<'a> {
    /// `retry_bootstrap`.
    pub retry: bool,
    /// The retry schedule ([`BootstrapBackoff::new`] for the mode in force).
    pub backoff: BootstrapBackoff,
    /// The rebootstrap mode in force; may fall back to `never` (`auto`).
    pub mode: &'a mut RebootstrapMode,
    /// `rebootstrap_delay`.
    pub delay: Duration,
    /// The (re)bootstrap state.
    pub state: &'a BootstrapState,
    /// `data_dir`.
    pub storage: &'a AgentStorage,
    /// Stops the retries (agent shutdown).
    pub cancel: &'a CancellationToken,
}

impl BootstrapLoop<'_> {
    /// Runs `attempt` (read the bundle, attest or load the stored SVID) until it succeeds,
    /// retrying as upstream does; `attempt` returns the result and whether the SVID may be
    /// re-attested.
    pub async fn run<T, F, Fut>(self, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<(T, bool)>>,
    {
        let mut backoff = self.backoff.clone();
        let started = tokio::time::Instant::now();
        loop {
            let error = match attempt().await {
                Ok((value, reattestable)) => {
                    self.state.succeeded();
                    *self.mode = mode_for(*self.mode, reattestable)?;
                    return Ok(value);
                }
                Err(error) => error,
            };
            if !self.retry {
                return Err(error);
            }
            if is_unknown_authority(&error) {
                self.on_unknown_authority()?;
            }
            if is_permission_denied(&error) {
                return Err(error);
            }
            let Some(wait) = backoff.next(started.elapsed(), random_unit()) else {
                return Err(error);
            };
            tracing::warn!(
                error = format!("{error:#}"),
                retry_interval = ?wait,
                "Failed to retrieve attestation result"
            );
            tokio::select! {
                () = self.cancel.cancelled() => return Err(error.context("the agent is stopping")),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The server's certificate does not chain to the bundle in use: with a bootstrap
    /// bundle the next attempt reads it again; with a stored one, once `rebootstrap_delay`
    /// has passed, the stored bundle is forgotten so the next attempt bootstraps.
    fn on_unknown_authority(&self) -> anyhow::Result<()> {
        if self.state.is_bootstrap() {
            tracing::info!("Trust Bandle and Server dont agree.... bootstrapping again");
        } else if *self.mode != RebootstrapMode::Never {
            let since = self.state.disagreeing_for();
            if since < self.delay {
                tracing::info!(
                    time_left = ?(self.delay - since),
                    "Trust Bandle and Server dont agree.... Ignoring for now."
                );
            } else {
                tracing::warn!("Trust Bandle and Server dont agree.... rebootstrapping");
                self.storage.store_bundle(&[])?;
            }
        }
        Ok(())
    }
}

/// Watches the running agent's syncs: a good one stops the delay clock; once syncs have
/// failed with an unknown authority for `delay`, forgets the agent SVID and bundle and
/// returns [`RebootstrapNeeded`]. Never returns while `mode` is `never` or until `cancel`.
pub async fn watch_server_trust(
    manager: Arc<Manager>,
    state: BootstrapState,
    storage: Arc<AgentStorage>,
    mode: RebootstrapMode,
    delay: Duration,
    cancel: CancellationToken,
) -> RebootstrapNeeded {
    if mode == RebootstrapMode::Never {
        cancel.cancelled().await;
        std::future::pending::<()>().await;
    }
    let mut seen = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => std::future::pending::<()>().await,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let attempt = manager.last_sync_attempt();
        if attempt.is_none() || attempt == seen {
            continue;
        }
        seen = attempt.clone();
        match attempt.and_then(|(_, error)| error) {
            None => state.succeeded(),
            Some(error) if error.contains(UNKNOWN_AUTHORITY) => {
                let since = state.disagreeing_for();
                if since < delay {
                    tracing::info!(
                        time_left = ?(delay - since),
                        "Trust Bandle and Server dont agree.... Ignoring for now."
                    );
                } else {
                    tracing::warn!("Trust Bandle and Server dont agree.... rebootstrapping");
                    match state.force_rebootstrap(&storage) {
                        Ok(()) => return RebootstrapNeeded,
                        Err(e) => tracing::error!(
                            error = %e,
                            "cannot forget the agent SVID and bundle to rebootstrap"
                        ),
                    }
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn always_refuses_an_agent_that_cannot_reattest_and_auto_falls_back() {
        let err = mode_for(RebootstrapMode::Always, false).unwrap_err();
        assert_eq!(err.to_string(), NOT_ALLOWED);
        assert_eq!(
            mode_for(RebootstrapMode::Auto, false).unwrap(),
            RebootstrapMode::Never
        );
        assert_eq!(
            mode_for(RebootstrapMode::Always, true).unwrap(),
            RebootstrapMode::Always
        );
        assert_eq!(
            mode_for(RebootstrapMode::Auto, true).unwrap(),
            RebootstrapMode::Auto
        );
        assert_eq!(
            mode_for(RebootstrapMode::Never, false).unwrap(),
            RebootstrapMode::Never
        );
    }

    #[test]
    fn unknown_authority_is_found_anywhere_in_the_chain() {
        let err = anyhow::anyhow!(
            "SPIRE server certificate refused: it does not chain to the trust bundle (UnknownIssuer)"
        )
        .context("cannot obtain an agent SVID");
        assert!(is_unknown_authority(&err));
        assert!(!is_unknown_authority(&anyhow::anyhow!(
            "connection refused"
        )));
    }

    #[test]
    fn permission_denied_is_not_retried_but_unavailable_is() {
        let denied = anyhow::Error::new(AttestError::PermissionDenied("no".into()));
        assert!(is_permission_denied(
            &denied.context("cannot obtain an agent SVID")
        ));
        let down = anyhow::Error::new(AttestError::Unavailable("refused".into()));
        assert!(!is_permission_denied(&down));
    }

    fn looping<'a>(
        retry: bool,
        mode: &'a mut RebootstrapMode,
        state: &'a BootstrapState,
        storage: &'a AgentStorage,
        cancel: &'a CancellationToken,
    ) -> BootstrapLoop<'a> {
        BootstrapLoop {
            retry,
            // The production schedule divided by 100: 50 ms first, giving up after 600 ms.
            backoff: BootstrapBackoff::with(Duration::from_millis(50), Duration::from_millis(600)),
            mode,
            delay: Duration::from_secs(600),
            state,
            storage,
            cancel,
        }
    }

    #[tokio::test]
    async fn failures_are_retried_until_success_unless_retry_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        let state = BootstrapState::new(false);
        let cancel = CancellationToken::new();
        let mut mode = RebootstrapMode::Never;
        let mut calls = 0;
        let value = looping(true, &mut mode, &state, &storage, &cancel)
            .run(|| {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(anyhow::Error::new(AttestError::Unavailable("down".into())))
                    } else {
                        Ok((n, true))
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(value, 3);

        let mut calls = 0;
        let err = looping(false, &mut mode, &state, &storage, &cancel)
            .run(|| {
                calls += 1;
                async { Err::<((), bool), _>(anyhow::anyhow!("down")) }
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "down");
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_loop_gives_up_after_a_minute_and_never_retries_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        let state = BootstrapState::new(false);
        let cancel = CancellationToken::new();
        let mut mode = RebootstrapMode::Never;
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        looping(true, &mut mode, &state, &storage, &cancel)
            .run(|| {
                calls += 1;
                async { Err::<((), bool), _>(anyhow::anyhow!("down")) }
            })
            .await
            .unwrap_err();
        // One attempt and four retries (waits of 50, 75, 112 and 169 ms); fewer only when
        // a loaded machine oversleeps by ~190 ms.
        assert!((3..=5).contains(&calls), "{calls} attempts");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(120), "{waited:?}");

        let mut calls = 0;
        looping(true, &mut mode, &state, &storage, &cancel)
            .run(|| {
                calls += 1;
                async {
                    Err::<((), bool), _>(anyhow::Error::new(AttestError::PermissionDenied(
                        "banned".into(),
                    )))
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn always_fails_after_attesting_an_agent_that_cannot_reattest() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AgentStorage::open(dir.path()).unwrap();
        let state = BootstrapState::new(false);
        let cancel = CancellationToken::new();
        let mut mode = RebootstrapMode::Always;
        let err = looping(true, &mut mode, &state, &storage, &cancel)
            .run(|| async { Ok(((), false)) })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), NOT_ALLOWED);
    }
}
