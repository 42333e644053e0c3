//! The CA manager following an upstream authority's bundle, as a nested server follows its
//! root: new roots are appended, a root the upstream taints makes our CA rotate away from it
//! before it is marked tainted here, a tainted root the upstream drops is revoked here, and
//! new JWT keys are published upstream. The upstream is an in-process stand-in for the root
//! server (the real one is exercised in crates/spire-e2e/tests/nested.rs); everything else
//! (CA manager, SQLite datastore, in-memory keys) is real.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{self, CaTemplate, Issuer, Validity};
use spire_proto::spire::api::types;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::DataStore;
use spire_server::plugins::keymanager::MemoryKeyManager;
use spire_server::plugins::upstreamauthority::{
    MintedX509Ca, UpstreamAuthority, UpstreamAuthorityError, UpstreamBundle,
};
use time::OffsetDateTime;

const TD: &str = "example.org";

/// A root server in miniature: an active root that signs, roots with tainted bits, and the
/// JWT keys published to it.
struct FakeRoot {
    state: Mutex<RootState>,
}

struct RootState {
    signer: (PrivateKey, Vec<u8>),
    roots: Vec<types::X509Certificate>,
    jwt_keys: Vec<types::JwtKey>,
}

fn new_root() -> (PrivateKey, Vec<u8>) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let cert = x509::self_signed_ca(
        &key,
        &CaTemplate::new(
            TrustDomain::new(TD).unwrap(),
            Validity::from_now(OffsetDateTime::now_utc(), time::Duration::days(2)),
        ),
    )
    .unwrap();
    (key, cert)
}

impl FakeRoot {
    fn new() -> Self {
        let signer = new_root();
        Self {
            state: Mutex::new(RootState {
                roots: vec![types::X509Certificate {
                    asn1: signer.1.clone(),
                    tainted: false,
                }],
                signer,
                jwt_keys: Vec::new(),
            }),
        }
    }

    /// `localauthority x509 prepare` + `activate` + `taint` at the root; returns the old root.
    fn rotate_and_taint(&self) -> Vec<u8> {
        let mut state = self.state.lock().unwrap();
        let next = new_root();
        state.roots.push(types::X509Certificate {
            asn1: next.1.clone(),
            tainted: false,
        });
        let old = std::mem::replace(&mut state.signer, next).1;
        for root in &mut state.roots {
            if root.asn1 == old {
                root.tainted = true;
            }
        }
        old
    }

    /// `localauthority x509 revoke` at the root.
    fn revoke(&self, root: &[u8]) {
        self.state.lock().unwrap().roots.retain(|r| r.asn1 != root);
    }
}

#[async_trait]
impl UpstreamAuthority for FakeRoot {
    fn name(&self) -> &'static str {
        "spire"
    }

    async fn mint_x509_ca(
        &self,
        csr_der: &[u8],
        preferred_ttl: Duration,
    ) -> Result<MintedX509Ca, UpstreamAuthorityError> {
        let state = self.state.lock().unwrap();
        let public_key = x509::csr_public_key(csr_der).unwrap();
        let issuer = Issuer::new(&state.signer.1, &state.signer.0).unwrap();
        let template = CaTemplate::new(
            TrustDomain::new(TD).unwrap(),
            Validity::from_now(
                OffsetDateTime::now_utc(),
                time::Duration::try_from(preferred_ttl).unwrap(),
            ),
        );
        let ca = x509::intermediate_ca(&issuer, &public_key, &template).unwrap();
        Ok(MintedX509Ca {
            x509_ca_chain: vec![ca],
            upstream_x509_roots: state.roots.clone(),
        })
    }

    async fn publish_jwt_key(
        &self,
        key: types::JwtKey,
    ) -> Result<Option<Vec<types::JwtKey>>, UpstreamAuthorityError> {
        let mut state = self.state.lock().unwrap();
        state.jwt_keys.push(key);
        Ok(Some(state.jwt_keys.clone()))
    }

    async fn upstream_bundle(&self) -> Result<Option<UpstreamBundle>, UpstreamAuthorityError> {
        let state = self.state.lock().unwrap();
        Ok(Some(UpstreamBundle {
            x509_authorities: state.roots.clone(),
            jwt_authorities: state.jwt_keys.clone(),
        }))
    }
}

fn skid(der: &[u8]) -> String {
    x509::subject_key_id(der)
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn roots(ds: &dyn DataStore) -> Vec<(String, bool)> {
    ds.fetch_bundle(TD)
        .await
        .unwrap()
        .unwrap()
        .x509_authorities
        .iter()
        .map(|a| (skid(&a.asn1), a.tainted))
        .collect()
}

#[tokio::test]
async fn nested_ca_rotates_away_from_a_tainted_root_then_marks_and_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let ds: Arc<dyn DataStore> = Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(
            &spire_server::datastore::sql::SqlConfig {
                database_type: "sqlite3".into(),
                connection_string: dir
                    .path()
                    .join("datastore.sqlite3")
                    .to_string_lossy()
                    .into_owned(),
                max_open_conns: None,
                disable_migration: false,
            },
        )
        .await
        .unwrap(),
    );
    let root = Arc::new(FakeRoot::new());
    let ca = CaManager::new(
        CaConfig::new(TrustDomain::new(TD).unwrap()),
        Arc::new(MemoryKeyManager::new()),
        Some(root.clone()),
        ds.clone(),
    )
    .await
    .unwrap();

    // Our JWT key was published to the root, and the root's keys are in our bundle.
    let published = root.state.lock().unwrap().jwt_keys.clone();
    assert_eq!(published.len(), 1);
    let bundle = ds.fetch_bundle(TD).await.unwrap().unwrap();
    assert!(
        bundle
            .jwt_authorities
            .iter()
            .any(|k| k.key_id == published[0].key_id)
    );

    let (active, _, _) = ca.x509_authority_states().await;
    let old_root = root.state.lock().unwrap().signer.1.clone();
    assert_eq!(
        active.unwrap().upstream_authority_subject_key_id,
        skid(&old_root)
    );
    assert_eq!(roots(ds.as_ref()).await, vec![(skid(&old_root), false)]);

    // A poll with nothing new changes nothing.
    ca.poll_upstream().await.unwrap();
    assert_eq!(roots(ds.as_ref()).await, vec![(skid(&old_root), false)]);

    // The root rotates and taints its old authority: one poll rotates our CA onto the new
    // root, then marks the old root tainted here.
    let tainted = root.rotate_and_taint();
    let new_root = root.state.lock().unwrap().signer.1.clone();
    let bundle_changes = ca.bundle_changes();
    ca.poll_upstream().await.unwrap();
    let (active, _, old) = ca.x509_authority_states().await;
    assert_eq!(
        active.unwrap().upstream_authority_subject_key_id,
        skid(&new_root),
        "the CA was minted again under the new root"
    );
    assert_eq!(
        old.unwrap().upstream_authority_subject_key_id,
        skid(&tainted)
    );
    assert_eq!(
        roots(ds.as_ref()).await,
        vec![(skid(&tainted), true), (skid(&new_root), false)]
    );
    assert!(
        bundle_changes.has_changed().unwrap(),
        "notifiers hear of it"
    );
    // The server's own SVID moved to the new CA too.
    let identity = ca.server_identity().borrow().clone().unwrap();
    let chain_top = identity.chain.last().unwrap();
    let (_, top) = x509_parser::parse_x509_certificate(chain_top).unwrap();
    let (_, new_root_cert) = x509_parser::parse_x509_certificate(&new_root).unwrap();
    assert!(
        top.verify_signature(Some(new_root_cert.public_key()))
            .is_ok()
    );

    // The same taint seen again is not processed twice.
    ca.poll_upstream().await.unwrap();
    let (active_again, _, _) = ca.x509_authority_states().await;
    assert_eq!(
        active_again.unwrap().upstream_authority_subject_key_id,
        skid(&new_root)
    );

    // The root revokes the old authority: it leaves our bundle on the next poll.
    root.revoke(&tainted);
    ca.poll_upstream().await.unwrap();
    assert_eq!(roots(ds.as_ref()).await, vec![(skid(&new_root), false)]);
}
