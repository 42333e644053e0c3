//! The CA manager's side of an UpstreamAuthority, as upstream's `bundleUpdater` and
//! `processTaintedUpstreamAuthorities`:
//!
//! - the upstream roots (from every mint, and from polling a `spire` upstream's bundle) are
//!   synced into our bundle: new roots are appended, a root the upstream tainted is queued
//!   as tainted, and a root we hold tainted that the upstream no longer has is revoked;
//! - a queued taint first rotates our X509 CA away from the tainted root (prepare through the
//!   upstream again, then activate), and only then marks the root tainted in our bundle, so
//!   agents and downstream servers never rotate onto a CA that is about to go away;
//! - `TaintX509UpstreamAuthority` / `RevokeX509UpstreamAuthority` taint or remove the
//!   upstream root that signed our old (no longer active) CA.

use std::collections::{BTreeMap, HashSet};

use spire_proto::spire::api::types;

use super::{
    CaError, CaManager, RefusalKind, Status, X509Ca, certificate_authority_id, datastore_error,
};
use crate::plugins::upstreamauthority::UpstreamBundle;

/// What the manager remembers between upstream polls.
#[derive(Default)]
pub(super) struct UpstreamTracker {
    /// Subject key IDs of upstream roots whose taint was already queued.
    processed: HashSet<String>,
    /// Tainted upstream roots (DER) waiting for our CA to rotate away from them.
    pending: Vec<Vec<u8>>,
    /// The upstream bundle as last synced, so an unchanged poll costs nothing.
    last_bundle: Option<UpstreamBundle>,
}

/// Whether `ca` (its certificate or an upstream intermediate) is signed by `root`.
fn chains_to(ca: &X509Ca, root: &[u8]) -> bool {
    std::iter::once(&ca.certificate)
        .chain(ca.upstream_chain.iter())
        .any(|cert| cert.as_slice() == root || signed_by(cert, root))
}

/// Whether `child` names `parent` as issuer and carries its valid signature.
fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (Ok((_, child)), Ok((_, parent))) = (
        x509_parser::certificate::X509Certificate::from_der(child),
        x509_parser::certificate::X509Certificate::from_der(parent),
    ) else {
        return false;
    };
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

fn refused(kind: RefusalKind, message: String) -> CaError {
    CaError::refused(kind, message)
}

impl CaManager {
    fn tracker(&self) -> std::sync::MutexGuard<'_, UpstreamTracker> {
        self.upstream_tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Syncs the upstream roots into our bundle (upstream's `SyncX509Roots`); newly tainted
    /// roots are queued for [`CaManager::poll_upstream`], which rotates away from them.
    pub(super) async fn sync_x509_roots(
        &self,
        roots: Vec<types::X509Certificate>,
    ) -> Result<(), CaError> {
        let local: BTreeMap<String, types::X509Certificate> = self
            .datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .map_err(|e| datastore_error("failed to fetch bundle", e))?
            .map(|b| b.x509_authorities)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| certificate_authority_id(&a.asn1).ok().map(|id| (id, a)))
            .collect();
        let mut upstream_ids = HashSet::new();
        let mut append = Vec::new();
        let mut newly_tainted = Vec::new();
        for root in roots {
            let Ok(skid) = certificate_authority_id(&root.asn1) else {
                tracing::warn!("ignoring an unparsable upstream root");
                continue;
            };
            upstream_ids.insert(skid.clone());
            if root.tainted
                && let Some(found) = local.get(&skid)
                && !found.tainted
            {
                if self.tracker().processed.insert(skid.clone()) {
                    tracing::info!(subject_key_id = %skid, "X.509 authority tainted");
                    newly_tainted.push(found.asn1.clone());
                }
                // Marked tainted in the datastore once our CA has rotated away from it.
                continue;
            }
            append.push(root);
        }
        for (skid, authority) in &local {
            if authority.tainted && !upstream_ids.contains(skid) {
                self.datastore
                    .revoke_x509_ca(self.trust_domain.name(), skid)
                    .await
                    .map_err(|e| {
                        CaError::Internal(format!("failed to revoke a tainted key {skid:?}: {e}"))
                    })?;
                tracing::info!(subject_key_id = %skid, "X.509 authority revoked");
                self.bundle_updated();
            }
        }
        if !append.is_empty() {
            self.append_to_bundle(types::Bundle {
                x509_authorities: append,
                ..Default::default()
            })
            .await?;
        }
        self.tracker().pending.extend(newly_tainted);
        Ok(())
    }

    /// Appends upstream JWT keys to our bundle (upstream's `AppendJWTKeys`).
    pub(super) async fn append_upstream_jwt_keys(
        &self,
        keys: Vec<types::JwtKey>,
    ) -> Result<(), CaError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.append_to_bundle(types::Bundle {
            jwt_authorities: keys,
            ..Default::default()
        })
        .await
    }

    /// Appends `extra`'s authorities to our trust domain's bundle and tells the bundle
    /// watchers when that changed it (an authority already present changes nothing).
    async fn append_to_bundle(&self, extra: types::Bundle) -> Result<(), CaError> {
        let before = self
            .datastore
            .fetch_bundle(self.trust_domain.name())
            .await
            .ok()
            .flatten()
            .map(|b| b.sequence_number);
        let after = self
            .datastore
            .append_bundle(types::Bundle {
                trust_domain: self.trust_domain.name().to_owned(),
                ..extra
            })
            .await
            .map_err(|e| datastore_error("unable to append to the trust bundle", e))?;
        if before != Some(after.sequence_number) {
            self.bundle_updated();
        }
        Ok(())
    }

    /// Publishes a new JWT key through the upstream authority and takes the upstream's keys
    /// into our bundle; a plugin that does not publish leaves the key to the local bundle
    /// (upstream's one-time warning on Unimplemented). Tells whether it was published.
    pub(super) async fn publish_jwt_key(&self, key: &types::JwtKey) -> Result<bool, CaError> {
        let Some(upstream) = &self.upstream else {
            return Ok(false);
        };
        match upstream.publish_jwt_key(key.clone()).await {
            Ok(Some(keys)) => {
                self.append_upstream_jwt_keys(keys).await?;
                Ok(true)
            }
            Ok(None) => {
                if !self
                    .jwt_unimplemented_warned
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        plugin_name = upstream.name(),
                        "UpstreamAuthority plugin does not support JWT-SVIDs. Workloads managed \
                         by this server may have trouble communicating with workloads outside \
                         this cluster when using JWT-SVIDs."
                    );
                }
                Ok(false)
            }
            Err(e) => Err(CaError::Internal(format!(
                "failed to publish the JWT key upstream: {e}"
            ))),
        }
    }

    /// One poll of the upstream bundle (every `upstream_poll_interval` from
    /// [`CaManager::run`]): syncs new and tainted roots and JWT keys when the upstream bundle
    /// changed, then rotates away from any tainted root still queued. Tests call it directly.
    pub async fn poll_upstream(&self) -> Result<(), CaError> {
        let Some(upstream) = &self.upstream else {
            return Ok(());
        };
        let fetched = upstream
            .upstream_bundle()
            .await
            .map_err(|e| CaError::Internal(format!("failed to fetch the upstream bundle: {e}")));
        match fetched {
            Ok(Some(bundle)) => {
                let changed = self.tracker().last_bundle.as_ref() != Some(&bundle);
                if changed {
                    self.sync_x509_roots(bundle.x509_authorities.clone())
                        .await?;
                    self.append_upstream_jwt_keys(bundle.jwt_authorities.clone())
                        .await?;
                    self.tracker().last_bundle = Some(bundle);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "Failed to fetch bundle while polling"),
        }
        let pending = std::mem::take(&mut self.tracker().pending);
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.process_tainted(&pending).await {
            tracing::warn!(error = %e, "Failed to process tainted keys on upstream authority");
            let mut tracker = self.tracker();
            let mut retry = pending;
            retry.append(&mut tracker.pending);
            tracker.pending = retry;
            return Err(e);
        }
        Ok(())
    }

    /// Rotates our X509 CA away from `tainted` roots when it chains to one, then marks them
    /// tainted in our bundle so agents and downstream servers rotate too (upstream's
    /// `processTaintedUpstreamAuthorities`).
    async fn process_tainted(&self, tainted: &[Vec<u8>]) -> Result<(), CaError> {
        let now = self.now();
        let mut state = self.state.lock().await;
        let current_tainted = state
            .current_x509
            .authority
            .as_ref()
            .is_some_and(|ca| tainted.iter().any(|root| chains_to(ca, root)));
        if current_tainted {
            tracing::info!(
                "Current root CA is signed by a tainted upstream authority, preparing rotation"
            );
            let next = &state.next_x509;
            let prepare = next.is_empty()
                || (next.status == Status::Prepared
                    && next
                        .authority
                        .as_ref()
                        .is_some_and(|ca| tainted.iter().any(|root| chains_to(ca, root))));
            if prepare {
                self.prepare_x509(&mut state, now).await.map_err(|e| {
                    CaError::Internal(format!("failed to prepare x509 authority: {e}"))
                })?;
            }
            if !state.next_x509.is_empty() {
                self.rotate_x509_slots(&mut state).await;
            }
        }
        for root in tainted {
            let skid = certificate_authority_id(root)?;
            match self
                .datastore
                .taint_x509_ca(self.trust_domain.name(), &skid)
                .await
            {
                Ok(()) => {}
                // Already tainted (e.g. by an operator here): nothing left to do.
                Err(crate::datastore::DataStoreError::InvalidArgument(m))
                    if m.contains("already tainted") => {}
                Err(e) => {
                    return Err(CaError::Internal(format!(
                        "could not taint X509 CA in datastore: {e}"
                    )));
                }
            }
            tracing::info!(subject_key_id = %skid, "Upstream X.509 authority tainted in the local bundle");
        }
        self.bundle_updated();
        // The server's own SVID follows the new CA at once.
        if let Err(e) = self.renew_identity(&mut state, now).await {
            tracing::error!(error = %e, "Unable to renew the server identity");
        }
        Ok(())
    }

    /// Checks a subject key ID for the upstream-authority RPCs, as upstream's
    /// `validateUpstreamAuthoritySubjectKey`: it must name the upstream authority of our old
    /// CA, never the one signing the current CA.
    async fn check_upstream_skid(&self, skid: &str) -> Result<(), String> {
        if skid.is_empty() {
            return Err("no subject key ID provided".into());
        }
        let state = self.state.lock().await;
        if skid == state.current_x509.upstream_authority_id {
            return Err("unable to use upstream authority singing current authority".into());
        }
        if skid != state.next_x509.upstream_authority_id {
            return Err("upstream authority didn't sign the old local authority".into());
        }
        if state.next_x509.status == Status::Prepared {
            return Err("only upstream authorities signing an old authority can be used".into());
        }
        Ok(())
    }

    fn require_upstream(&self) -> Result<(), CaError> {
        if self.upstream.is_none() {
            return Err(refused(
                RefusalKind::FailedPrecondition,
                "upstream authority is not configured".into(),
            ));
        }
        Ok(())
    }

    /// Taints the upstream root that signed our old X509 CA (`TaintX509UpstreamAuthority`);
    /// returns the normalized subject key ID.
    pub async fn taint_x509_upstream_authority(&self, skid: &str) -> Result<String, CaError> {
        self.require_upstream()?;
        let skid = skid.to_ascii_lowercase();
        self.check_upstream_skid(&skid).await.map_err(|e| {
            refused(
                RefusalKind::InvalidArgument,
                format!("provided subject key id is not valid: {e}"),
            )
        })?;
        self.datastore
            .taint_x509_ca(self.trust_domain.name(), &skid)
            .await
            .map_err(|e| {
                refused(
                    RefusalKind::Internal,
                    format!("failed to taint upstream authority: {e}"),
                )
            })?;
        self.bundle_updated();
        // Upstream's NotifyTaintedX509Authority: the tainted root must now be in the bundle.
        let bundle = self.fetch_bundle().await?;
        let found = bundle
            .x509_authorities
            .iter()
            .any(|a| a.tainted && certificate_authority_id(&a.asn1).is_ok_and(|id| id == skid));
        if !found {
            return Err(refused(
                RefusalKind::Internal,
                format!(
                    "failed to notify tainted authority: no tainted root CA found with authority ID: {skid:?}"
                ),
            ));
        }
        {
            let mut state = self.state.lock().await;
            state.identity_renew_at = None;
        }
        tracing::info!(subject_key_id = %skid, "X.509 upstream authority tainted successfully");
        Ok(skid)
    }

    /// Removes the tainted upstream root that signed our old X509 CA from the bundle
    /// (`RevokeX509UpstreamAuthority`); returns the normalized subject key ID.
    pub async fn revoke_x509_upstream_authority(&self, skid: &str) -> Result<String, CaError> {
        self.require_upstream()?;
        let skid = skid.to_ascii_lowercase();
        self.check_upstream_skid(&skid).await.map_err(|e| {
            refused(
                RefusalKind::InvalidArgument,
                format!("invalid subject key ID: {e}"),
            )
        })?;
        self.datastore
            .revoke_x509_ca(self.trust_domain.name(), &skid)
            .await
            .map_err(|e| {
                refused(
                    RefusalKind::Internal,
                    format!("failed to revoke X.509 upstream authority: {e}"),
                )
            })?;
        self.bundle_updated();
        tracing::info!(subject_key_id = %skid, "X.509 upstream authority successfully revoked");
        Ok(skid)
    }
}
