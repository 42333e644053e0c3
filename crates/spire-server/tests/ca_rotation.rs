//! CA rotation end to end with a hand-moved clock: preparation at half life, the bundle
//! carrying the next authority before it signs, activation with a sixth of the lifetime
//! left, old SVIDs verifying until their CA expires, restart with the disk key manager, the
//! disk upstream authority, JWT-SVIDs and the local authority operations.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spire_core::bundle::Bundle;
use spire_core::jwt::{JwtAuthority, validate_jwt_svid};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{self, CaTemplate, Validity, verify_x509_svid};
use spire_proto::spire::api::types;
use spire_server::ca::{CaConfig, CaError, CaManager, Clock, RefusalKind, X509SvidRequest};
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::datastore::{
    AttestedNode, AttestedNodeMask, BundleMask, CaJournal, ChangeEvent, DataStore, DataStoreError,
    DeleteBundleMode, EntryMask, JoinToken, ListEntriesRequest, ListNodesRequest, Pagination,
    RegistrationEntry, Result,
};
use spire_server::plugins::keymanager::{DiskKeyManager, KeyManager, MemoryKeyManager};
use spire_server::plugins::upstreamauthority::{
    DiskUpstreamAuthority, DiskUpstreamAuthorityConfig, UpstreamAuthority,
};
use time::OffsetDateTime;

fn skid(der: &[u8]) -> String {
    hex::encode(x509::subject_key_id(der).unwrap().unwrap())
}

/// The datastore methods the CA uses, in memory (the SQL store has its own suite).
#[derive(Default)]
struct FakeDataStore {
    bundles: Mutex<HashMap<String, types::Bundle>>,
    journals: Mutex<Vec<CaJournal>>,
}

#[async_trait]
impl DataStore for FakeDataStore {
    async fn create_bundle(&self, _bundle: types::Bundle) -> Result<types::Bundle> {
        unimplemented!("not used by the CA tests")
    }

    async fn update_bundle(
        &self,
        _bundle: types::Bundle,
        _mask: BundleMask,
    ) -> Result<types::Bundle> {
        unimplemented!("not used by the CA tests")
    }

    async fn set_refreshed_bundle(
        &self,
        _bundle: types::Bundle,
    ) -> Result<spire_server::datastore::RefreshedBundleWrite> {
        unimplemented!("not used by the CA tests")
    }
    async fn set_bundle(&self, _bundle: types::Bundle) -> Result<types::Bundle> {
        unimplemented!("not used by the CA tests")
    }

    async fn append_bundle(&self, bundle: types::Bundle) -> Result<types::Bundle> {
        let mut bundles = self.bundles.lock().unwrap();
        let stored = bundles
            .entry(bundle.trust_domain.clone())
            .or_insert_with(|| types::Bundle {
                trust_domain: bundle.trust_domain.clone(),
                ..Default::default()
            });
        let mut changed = false;
        for authority in bundle.x509_authorities {
            if !stored
                .x509_authorities
                .iter()
                .any(|a| a.asn1 == authority.asn1)
            {
                stored.x509_authorities.push(authority);
                changed = true;
            }
        }
        for key in bundle.jwt_authorities {
            if !stored
                .jwt_authorities
                .iter()
                .any(|k| k.key_id == key.key_id)
            {
                stored.jwt_authorities.push(key);
                changed = true;
            }
        }
        if changed {
            stored.sequence_number += 1;
        }
        Ok(stored.clone())
    }

    async fn delete_bundle(&self, _trust_domain: &str, _mode: DeleteBundleMode) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_bundle(&self, trust_domain: &str) -> Result<Option<types::Bundle>> {
        Ok(self.bundles.lock().unwrap().get(trust_domain).cloned())
    }

    async fn list_bundles(
        &self,
        _pagination: Option<Pagination>,
    ) -> Result<(Vec<types::Bundle>, String)> {
        unimplemented!("not used by the CA tests")
    }

    async fn count_bundles(&self) -> Result<u64> {
        unimplemented!("not used by the CA tests")
    }

    async fn prune_bundle(&self, trust_domain: &str, expires_before: i64) -> Result<bool> {
        let mut bundles = self.bundles.lock().unwrap();
        let Some(bundle) = bundles.get_mut(trust_domain) else {
            return Ok(false);
        };
        let before = bundle.x509_authorities.len() + bundle.jwt_authorities.len();
        let mut keep: Vec<_> = bundle
            .x509_authorities
            .iter()
            .filter(|a| {
                x509::certificate_not_after(&a.asn1)
                    .unwrap()
                    .unix_timestamp()
                    >= expires_before
            })
            .cloned()
            .collect();
        if keep.is_empty() {
            keep = bundle
                .x509_authorities
                .last()
                .cloned()
                .into_iter()
                .collect();
        }
        bundle.x509_authorities = keep;
        bundle
            .jwt_authorities
            .retain(|k| k.expires_at >= expires_before);
        let changed = before != bundle.x509_authorities.len() + bundle.jwt_authorities.len();
        if changed {
            bundle.sequence_number += 1;
        }
        Ok(changed)
    }

    async fn taint_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        let mut bundles = self.bundles.lock().unwrap();
        let bundle = bundles.get_mut(trust_domain).unwrap();
        let authority = bundle
            .x509_authorities
            .iter_mut()
            .find(|a| skid(&a.asn1) == subject_key_id)
            .ok_or_else(|| DataStoreError::NotFound("X.509 authority".into()))?;
        if authority.tainted {
            return Err(DataStoreError::InvalidArgument(
                "root CA is already tainted".into(),
            ));
        }
        authority.tainted = true;
        Ok(())
    }

    async fn revoke_x509_ca(&self, trust_domain: &str, subject_key_id: &str) -> Result<()> {
        let mut bundles = self.bundles.lock().unwrap();
        let bundle = bundles.get_mut(trust_domain).unwrap();
        let index = bundle
            .x509_authorities
            .iter()
            .position(|a| skid(&a.asn1) == subject_key_id)
            .ok_or_else(|| DataStoreError::NotFound("X.509 authority".into()))?;
        if !bundle.x509_authorities[index].tainted {
            return Err(DataStoreError::InvalidArgument(
                "it is not possible to revoke an untainted root CA".into(),
            ));
        }
        bundle.x509_authorities.remove(index);
        Ok(())
    }

    async fn taint_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        let mut bundles = self.bundles.lock().unwrap();
        let bundle = bundles.get_mut(trust_domain).unwrap();
        let key = bundle
            .jwt_authorities
            .iter_mut()
            .find(|k| k.key_id == key_id)
            .ok_or_else(|| DataStoreError::NotFound("JWT key".into()))?;
        key.tainted = true;
        Ok(key.public_key.clone())
    }

    async fn revoke_jwt_key(&self, trust_domain: &str, key_id: &str) -> Result<Vec<u8>> {
        let mut bundles = self.bundles.lock().unwrap();
        let bundle = bundles.get_mut(trust_domain).unwrap();
        let index = bundle
            .jwt_authorities
            .iter()
            .position(|k| k.key_id == key_id)
            .ok_or_else(|| DataStoreError::NotFound("JWT key".into()))?;
        Ok(bundle.jwt_authorities.remove(index).public_key)
    }

    async fn create_registration_entry(
        &self,
        _entry: RegistrationEntry,
    ) -> Result<RegistrationEntry> {
        unimplemented!("not used by the CA tests")
    }

    async fn create_or_return_registration_entry(
        &self,
        _entry: RegistrationEntry,
    ) -> Result<(RegistrationEntry, bool)> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_registration_entry(&self, _entry_id: &str) -> Result<Option<RegistrationEntry>> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_registration_entries(
        &self,
        _entry_ids: &[String],
    ) -> Result<Vec<RegistrationEntry>> {
        unimplemented!("not used by the CA tests")
    }

    async fn list_registration_entries(
        &self,
        _request: &ListEntriesRequest,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        unimplemented!("not used by the CA tests")
    }

    async fn count_registration_entries(&self, _request: &ListEntriesRequest) -> Result<u64> {
        unimplemented!("not used by the CA tests")
    }

    async fn update_registration_entry(
        &self,
        _entry: RegistrationEntry,
        _mask: EntryMask,
    ) -> Result<RegistrationEntry> {
        unimplemented!("not used by the CA tests")
    }

    async fn delete_registration_entry(&self, _entry_id: &str) -> Result<RegistrationEntry> {
        unimplemented!("not used by the CA tests")
    }

    async fn prune_registration_entries(&self, _expires_before: i64) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn list_registration_entry_events(&self, _after: u64) -> Result<Vec<ChangeEvent>> {
        unimplemented!("not used by the CA tests")
    }

    async fn prune_registration_entry_events(&self, _older_than: i64) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn create_attested_node(&self, _node: AttestedNode) -> Result<AttestedNode> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_attested_node(&self, _spiffe_id: &str) -> Result<Option<AttestedNode>> {
        unimplemented!("not used by the CA tests")
    }

    async fn list_attested_nodes(
        &self,
        _request: &ListNodesRequest,
    ) -> Result<(Vec<AttestedNode>, String)> {
        unimplemented!("not used by the CA tests")
    }

    async fn count_attested_nodes(&self, _request: &ListNodesRequest) -> Result<u64> {
        unimplemented!("not used by the CA tests")
    }

    async fn update_attested_node(
        &self,
        _node: AttestedNode,
        _mask: AttestedNodeMask,
    ) -> Result<AttestedNode> {
        unimplemented!("not used by the CA tests")
    }

    async fn delete_attested_node(&self, _spiffe_id: &str) -> Result<AttestedNode> {
        unimplemented!("not used by the CA tests")
    }

    async fn set_node_selectors(&self, _spiffe_id: &str, _selectors: &[Selector]) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn get_node_selectors(&self, _spiffe_id: &str) -> Result<Vec<Selector>> {
        unimplemented!("not used by the CA tests")
    }

    async fn list_attested_node_events(&self, _after: u64) -> Result<Vec<ChangeEvent>> {
        unimplemented!("not used by the CA tests")
    }

    async fn prune_attested_node_events(&self, _older_than: i64) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn create_join_token(&self, _token: JoinToken) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_join_token(&self, _token: &str) -> Result<Option<JoinToken>> {
        unimplemented!("not used by the CA tests")
    }

    async fn take_join_token(&self, _token: &str) -> Result<Option<JoinToken>> {
        unimplemented!("not used by the CA tests")
    }

    async fn prune_join_tokens(&self, _expires_before: i64) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }

    async fn set_ca_journal(&self, journal: CaJournal) -> Result<CaJournal> {
        let mut journals = self.journals.lock().unwrap();
        let mut journal = journal;
        if journal.id == 0 {
            journal.id = u32::try_from(journals.len()).unwrap() + 1;
            journals.push(journal.clone());
        } else {
            let slot = journals.iter_mut().find(|j| j.id == journal.id).unwrap();
            *slot = journal.clone();
        }
        Ok(journal)
    }

    async fn fetch_ca_journal(&self, id: u32) -> Result<Option<CaJournal>> {
        Ok(self
            .journals
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.id == id)
            .cloned())
    }

    async fn find_ca_journal(&self, active_x509_authority_id: &str) -> Result<Option<CaJournal>> {
        Ok(self
            .journals
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.active_x509_authority_id == active_x509_authority_id)
            .cloned())
    }

    async fn list_ca_journals(&self) -> Result<Vec<CaJournal>> {
        Ok(self.journals.lock().unwrap().clone())
    }

    async fn create_federation_relationship(
        &self,
        _relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        unimplemented!("not used by the CA tests")
    }

    async fn fetch_federation_relationship(
        &self,
        _trust_domain: &str,
    ) -> Result<Option<types::FederationRelationship>> {
        unimplemented!("not used by the CA tests")
    }

    async fn list_federation_relationships(
        &self,
        _pagination: Option<Pagination>,
    ) -> Result<(Vec<types::FederationRelationship>, String)> {
        unimplemented!("not used by the CA tests")
    }

    async fn update_federation_relationship(
        &self,
        _relationship: types::FederationRelationship,
    ) -> Result<types::FederationRelationship> {
        unimplemented!("not used by the CA tests")
    }

    async fn delete_federation_relationship(&self, _trust_domain: &str) -> Result<()> {
        unimplemented!("not used by the CA tests")
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(
            OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
                .unwrap(),
        )))
    }
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
    fn advance(&self, by: time::Duration) {
        *self.0.lock().unwrap() += by;
    }
    fn clock(&self) -> Clock {
        let inner = Arc::clone(&self.0);
        Arc::new(move || *inner.lock().unwrap())
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn config(clock: &ManualClock, ca_ttl: Duration) -> CaConfig {
    let mut config = CaConfig::new(td());
    config.ca_ttl = ca_ttl;
    config.default_x509_svid_ttl = Duration::from_secs(3600);
    config.clock = clock.clock();
    config
}

async fn bundle(ds: &dyn DataStore) -> types::Bundle {
    ds.fetch_bundle("example.org").await.unwrap().unwrap()
}

fn roots(bundle: &types::Bundle) -> Vec<Vec<u8>> {
    bundle
        .x509_authorities
        .iter()
        .map(|a| a.asn1.clone())
        .collect()
}

fn jwt_bundle(bundle: &types::Bundle) -> Bundle {
    let mut out = Bundle::new(td());
    for key in &bundle.jwt_authorities {
        out.add_jwt_authority(JwtAuthority {
            key_id: key.key_id.clone(),
            public_key_der: key.public_key.clone(),
            expires_at: Some(key.expires_at),
        })
        .unwrap();
    }
    out
}

async fn workload_svid(ca: &CaManager) -> (PrivateKey, Vec<Vec<u8>>) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let chain = ca
        .sign_workload_x509_svid(X509SvidRequest {
            public_key_der: key.public_key_der(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/workload").unwrap(),
            dns_names: vec![],
            ttl: None,
            subject: None,
        })
        .await
        .unwrap();
    (key, chain)
}

fn issuer_skid(leaf: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn rotation_prepares_at_half_life_and_activates_with_a_sixth_left() {
    let clock = ManualClock::new();
    let start = clock.now();
    let ds = Arc::new(FakeDataStore::default());
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::new());
    let ca = CaManager::new(
        config(&clock, Duration::from_secs(60)),
        km,
        None,
        ds.clone(),
    )
    .await
    .unwrap();

    let (active, prepared, old) = ca.x509_authority_states().await;
    let first = active.expect("an active X509 CA after start");
    assert!(prepared.is_none() && old.is_none());
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 1);
    assert_eq!(skid(&b.x509_authorities[0].asn1), first.authority_id);
    assert_eq!(b.jwt_authorities.len(), 1);
    let (jwt_active, _, _) = ca.jwt_authority_states().await;
    let first_jwt = jwt_active.unwrap();
    assert_eq!(b.jwt_authorities[0].key_id, first_jwt.authority_id);

    // Self-signed CA: the chain is the leaf alone, and it verifies against the bundle.
    let (_, early_svid) = workload_svid(&ca).await;
    assert_eq!(early_svid.len(), 1);
    verify_x509_svid(&early_svid, &roots(&b), clock.now()).unwrap();
    // The server identity is issued by the active CA.
    let identity = ca.server_identity().borrow().clone().unwrap();
    assert_eq!(
        x509::certificate_spiffe_id(&identity.chain[0])
            .unwrap()
            .as_str(),
        "spiffe://example.org/spire/server"
    );
    assert_eq!(issuer_skid(&identity.chain[0]), first.authority_id);

    // Before half life: nothing prepared.
    clock.advance(time::Duration::seconds(29));
    ca.rotate().await.unwrap();
    assert!(ca.x509_authority_states().await.1.is_none());

    // Past half life: the next CA and JWT key are prepared and already in the bundle,
    // while the current ones still sign.
    clock.advance(time::Duration::seconds(2));
    ca.rotate().await.unwrap();
    let (active, prepared, _) = ca.x509_authority_states().await;
    assert_eq!(active.unwrap().authority_id, first.authority_id);
    let next = prepared.expect("next X509 CA prepared at half life");
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 2);
    assert!(
        b.x509_authorities
            .iter()
            .any(|a| skid(&a.asn1) == next.authority_id)
    );
    let next_jwt = ca
        .jwt_authority_states()
        .await
        .1
        .expect("next JWT key prepared");
    assert!(
        b.jwt_authorities
            .iter()
            .any(|k| k.key_id == next_jwt.authority_id)
    );
    let (_, mid_svid) = workload_svid(&ca).await;
    assert_eq!(issuer_skid(&mid_svid[0]), first.authority_id);
    let mid_jwt = ca
        .sign_jwt_svid(
            &SpiffeId::parse("spiffe://example.org/workload").unwrap(),
            &["aud".to_owned()],
            None,
        )
        .await
        .unwrap();

    // With a sixth of the lifetime left (10 s of 60 s): the prepared CA takes over.
    clock.advance(time::Duration::seconds(18));
    ca.rotate().await.unwrap();
    assert_eq!(
        ca.x509_authority_states().await.0.unwrap().authority_id,
        first.authority_id
    );
    clock.advance(time::Duration::seconds(2));
    ca.rotate().await.unwrap();
    let (active, prepared, old) = ca.x509_authority_states().await;
    assert_eq!(active.unwrap().authority_id, next.authority_id);
    assert!(prepared.is_none());
    assert_eq!(old.unwrap().authority_id, first.authority_id);
    let (jwt_active, _, jwt_old) = ca.jwt_authority_states().await;
    assert_eq!(jwt_active.unwrap().authority_id, next_jwt.authority_id);
    assert_eq!(jwt_old.unwrap().authority_id, first_jwt.authority_id);

    let (_, late_svid) = workload_svid(&ca).await;
    assert_eq!(issuer_skid(&late_svid[0]), next.authority_id);
    let identity = ca.server_identity().borrow().clone().unwrap();
    assert_eq!(
        issuer_skid(&identity.chain[0]),
        next.authority_id,
        "identity renewed on activation"
    );

    // SVIDs of the old CA still verify against the bundle until it expires; their expiry
    // was capped at the old CA's.
    let b = bundle(ds.as_ref()).await;
    let now = clock.now();
    verify_x509_svid(&early_svid, &roots(&b), now).unwrap();
    verify_x509_svid(&mid_svid, &roots(&b), now).unwrap();
    verify_x509_svid(&late_svid, &roots(&b), now).unwrap();
    assert!(
        x509::certificate_not_after(&mid_svid[0]).unwrap() <= start + time::Duration::seconds(60)
    );
    let jwts = jwt_bundle(&b);
    validate_jwt_svid(&mid_jwt.token, &jwts, &["aud"], now.unix_timestamp()).unwrap();
    let late_jwt = ca
        .sign_jwt_svid(
            &SpiffeId::parse("spiffe://example.org/workload").unwrap(),
            &["aud".to_owned()],
            None,
        )
        .await
        .unwrap();
    let parsed = validate_jwt_svid(&late_jwt.token, &jwts, &["aud"], now.unix_timestamp()).unwrap();
    assert_eq!(parsed.key_id, next_jwt.authority_id);

    // A day after the first CA expired, pruning drops it and keeps the current one.
    clock.advance(time::Duration::hours(24) + time::Duration::seconds(15));
    assert!(ca.prune_bundle().await.unwrap());
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 1);
    assert_eq!(skid(&b.x509_authorities[0].asn1), next.authority_id);
    assert!(
        b.jwt_authorities
            .iter()
            .all(|k| k.key_id != first_jwt.authority_id)
    );
}

#[tokio::test]
async fn jwt_svid_is_capped_at_the_key_expiry_and_carries_the_issuer() {
    let clock = ManualClock::new();
    let ds = Arc::new(FakeDataStore::default());
    let mut config = config(&clock, Duration::from_secs(600));
    config.jwt_issuer = Some("https://oidc.example.org".into());
    let ca = CaManager::new(config, Arc::new(MemoryKeyManager::new()), None, ds.clone())
        .await
        .unwrap();
    let id = SpiffeId::parse("spiffe://example.org/workload").unwrap();
    let svid = ca
        .sign_jwt_svid(
            &id,
            &["a".into(), "b".into()],
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(
        svid.expires_at,
        (clock.now() + time::Duration::seconds(600)).unix_timestamp()
    );
    let b = jwt_bundle(&bundle(ds.as_ref()).await);
    let parsed =
        validate_jwt_svid(&svid.token, &b, &["a", "b"], clock.now().unix_timestamp()).unwrap();
    assert_eq!(parsed.claims["iss"], "https://oidc.example.org");
    // Default TTL is 5 minutes.
    let svid = ca.sign_jwt_svid(&id, &["a".into()], None).await.unwrap();
    assert_eq!(svid.expires_at - svid.issued_at, 300);

    let err = ca.sign_jwt_svid(&id, &[], None).await.unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument(_)), "{err}");
    let foreign = SpiffeId::parse("spiffe://other.org/workload").unwrap();
    let err = ca
        .sign_jwt_svid(&foreign, &["a".into()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument(_)), "{err}");
    let err = ca
        .sign_workload_x509_svid(X509SvidRequest {
            public_key_der: PrivateKey::generate(KeyType::EcP256)
                .unwrap()
                .public_key_der(),
            spiffe_id: foreign,
            dns_names: vec![],
            ttl: None,
            subject: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn restart_with_disk_key_manager_keeps_the_active_authorities() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.json");
    let ds = Arc::new(FakeDataStore::default());

    let first = CaManager::new(
        config(&clock, Duration::from_secs(3600)),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    let x509_id = first.x509_authority_states().await.0.unwrap().authority_id;
    let jwt_id = first.jwt_authority_states().await.0.unwrap().authority_id;
    drop(first);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file must be private");
    }

    clock.advance(time::Duration::seconds(60));
    let second = CaManager::new(
        config(&clock, Duration::from_secs(3600)),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        second.x509_authority_states().await.0.unwrap().authority_id,
        x509_id
    );
    assert_eq!(
        second.jwt_authority_states().await.0.unwrap().authority_id,
        jwt_id
    );
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 1, "no new CA was minted on restart");
    assert_eq!(b.jwt_authorities.len(), 1);
    let (_, svid) = workload_svid(&second).await;
    assert_eq!(issuer_skid(&svid[0]), x509_id);
    assert_eq!(ds.list_ca_journals().await.unwrap().len(), 1);

    // Restarting with a memory key manager cannot reuse the keys: a new CA is minted.
    let third = CaManager::new(
        config(&clock, Duration::from_secs(3600)),
        Arc::new(MemoryKeyManager::new()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    assert_ne!(
        third.x509_authority_states().await.0.unwrap().authority_id,
        x509_id
    );
}

#[tokio::test]
async fn restart_during_preparation_keeps_the_prepared_authority() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.json");
    let ds = Arc::new(FakeDataStore::default());
    let ttl = Duration::from_secs(60);
    let first = CaManager::new(
        config(&clock, ttl),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    clock.advance(time::Duration::seconds(35));
    first.rotate().await.unwrap();
    let (active, prepared, _) = first.x509_authority_states().await;
    let (active, prepared) = (active.unwrap(), prepared.unwrap());
    drop(first);

    let second = CaManager::new(
        config(&clock, ttl),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    let (a, p, _) = second.x509_authority_states().await;
    assert_eq!(a.unwrap().authority_id, active.authority_id);
    assert_eq!(p.unwrap().authority_id, prepared.authority_id);
    clock.advance(time::Duration::seconds(20));
    second.rotate().await.unwrap();
    assert_eq!(
        second.x509_authority_states().await.0.unwrap().authority_id,
        prepared.authority_id
    );
}

#[tokio::test]
async fn upstream_disk_authority_chain_verifies_to_the_upstream_root() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let root_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let root = x509::self_signed_ca(
        &root_key,
        &CaTemplate::new(
            TrustDomain::new("upstream.example").unwrap(),
            Validity::from_now(clock.now(), time::Duration::days(365)),
        ),
    )
    .unwrap();
    let key_file_path = dir.path().join("upstream.key");
    let cert_file_path = dir.path().join("upstream.crt");
    std::fs::write(&key_file_path, root_key.to_pem().as_bytes()).unwrap();
    std::fs::write(
        &cert_file_path,
        spire_core::pem::encode_certificates([root.as_slice()]),
    )
    .unwrap();
    let upstream: Arc<dyn UpstreamAuthority> = Arc::new(
        DiskUpstreamAuthority::with_clock(
            DiskUpstreamAuthorityConfig {
                key_file_path,
                cert_file_path,
                bundle_file_path: None,
                ttl: None,
            },
            td(),
            clock.clock(),
        )
        .unwrap(),
    );
    let ds = Arc::new(FakeDataStore::default());
    let mut ca_config = config(&clock, Duration::from_secs(3600));
    ca_config.ca_subject.organization = vec!["Acme".to_owned()];
    let ca = CaManager::new(
        ca_config,
        Arc::new(MemoryKeyManager::new()),
        Some(upstream),
        ds.clone(),
    )
    .await
    .unwrap();

    let b = bundle(ds.as_ref()).await;
    assert_eq!(
        roots(&b),
        vec![root.clone()],
        "the upstream root is the bundle"
    );
    let (_, chain) = workload_svid(&ca).await;
    assert_eq!(chain.len(), 2, "leaf and the server's intermediate");
    assert_eq!(issuer_skid(&chain[1]), skid(&root));
    let (_, intermediate) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    let subject = intermediate.subject().to_string();
    assert!(
        subject.contains("O=Acme"),
        "ca_subject reaches the upstream-signed CA: {subject}"
    );
    verify_x509_svid(&chain, &roots(&b), clock.now()).unwrap();
    let identity = ca.server_identity().borrow().clone().unwrap();
    verify_x509_svid(&identity.chain, &roots(&b), clock.now()).unwrap();

    // Rotation with an upstream authority: the next intermediate chains to the same root.
    clock.advance(time::Duration::seconds(3000 + 20));
    ca.rotate().await.unwrap();
    let (active, prepared, old) = ca.x509_authority_states().await;
    assert!(prepared.is_none());
    assert!(old.is_some());
    let (_, chain) = workload_svid(&ca).await;
    assert_eq!(issuer_skid(&chain[0]), active.unwrap().authority_id);
    verify_x509_svid(&chain, &roots(&bundle(ds.as_ref()).await), clock.now()).unwrap();

    // Local X.509 authorities cannot be tainted when an upstream authority signs them.
    let err = ca
        .taint_x509_authority(&old.unwrap().authority_id)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            RefusalKind::FailedPrecondition,
            "local authority can't be tainted if there is an upstream authority"
        )
    );
}

/// The code and upstream's words of a refused local authority request.
fn refusal(err: &CaError) -> (RefusalKind, &str) {
    match err {
        CaError::Refused { kind, message } => (*kind, message.as_str()),
        other => panic!("not a refusal in upstream's words: {other:?}"),
    }
}

#[tokio::test]
async fn local_authority_operations_follow_upstream_rules() {
    let clock = ManualClock::new();
    let ds = Arc::new(FakeDataStore::default());
    let ca = CaManager::new(
        config(&clock, Duration::from_secs(3600)),
        Arc::new(MemoryKeyManager::new()),
        None,
        ds.clone(),
    )
    .await
    .unwrap();
    let current = ca.x509_authority_states().await.0.unwrap();

    // Nothing prepared yet.
    let err = ca.activate_x509_authority("abc").await.unwrap_err();
    assert_eq!(
        refusal(&err),
        (RefusalKind::InvalidArgument, "unexpected authority ID")
    );
    let prepared = ca.prepare_x509_authority().await.unwrap();
    assert_eq!(
        roots(&bundle(ds.as_ref()).await).len(),
        2,
        "prepared CA is in the bundle"
    );
    let err = ca.activate_x509_authority("").await.unwrap_err();
    assert_eq!(
        refusal(&err),
        (RefusalKind::InvalidArgument, "no authority ID provided")
    );
    let err = ca
        .activate_x509_authority(&current.authority_id)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (RefusalKind::InvalidArgument, "unexpected authority ID")
    );
    // Only the old authority can be tainted: not the prepared one, not the current one.
    let err = ca
        .taint_x509_authority(&prepared.authority_id)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            RefusalKind::InvalidArgument,
            "only Old local authorities can be tainted: unsupported local authority status: PREPARED"
        )
    );
    let err = ca
        .taint_x509_authority(&current.authority_id)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            RefusalKind::InvalidArgument,
            "unable to taint current local authority"
        )
    );

    let activated = ca
        .activate_x509_authority(&prepared.authority_id)
        .await
        .unwrap();
    assert_eq!(activated.authority_id, prepared.authority_id);
    let (_, svid) = workload_svid(&ca).await;
    assert_eq!(issuer_skid(&svid[0]), prepared.authority_id);

    // Revoke needs a tainted authority.
    let err = ca
        .revoke_x509_authority(&current.authority_id)
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::FailedPrecondition(_)), "{err}");
    let tainted = ca
        .taint_x509_authority(&current.authority_id)
        .await
        .unwrap();
    assert_eq!(tainted.authority_id, current.authority_id);
    let b = bundle(ds.as_ref()).await;
    assert!(
        b.x509_authorities
            .iter()
            .any(|a| a.tainted && skid(&a.asn1) == current.authority_id)
    );
    ca.revoke_x509_authority(&current.authority_id)
        .await
        .unwrap();
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 1);
    assert_eq!(skid(&b.x509_authorities[0].asn1), prepared.authority_id);

    // The same for JWT keys.
    let jwt_current = ca.jwt_authority_states().await.0.unwrap();
    let jwt_prepared = ca.prepare_jwt_authority().await.unwrap();
    assert_eq!(bundle(ds.as_ref()).await.jwt_authorities.len(), 2);
    let err = ca
        .revoke_jwt_authority(&jwt_current.authority_id)
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&err),
        (
            RefusalKind::InvalidArgument,
            "invalid authority ID: unable to use current authority"
        )
    );
    ca.activate_jwt_authority(&jwt_prepared.authority_id)
        .await
        .unwrap();
    let err = ca
        .revoke_jwt_authority(&jwt_current.authority_id)
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::FailedPrecondition(_)), "{err}");
    ca.taint_jwt_authority(&jwt_current.authority_id)
        .await
        .unwrap();
    ca.revoke_jwt_authority(&jwt_current.authority_id)
        .await
        .unwrap();
    let b = bundle(ds.as_ref()).await;
    assert_eq!(b.jwt_authorities.len(), 1);
    assert_eq!(b.jwt_authorities[0].key_id, jwt_prepared.authority_id);
}

#[tokio::test]
async fn downstream_ca_and_agent_svid() {
    let clock = ManualClock::new();
    let ds = Arc::new(FakeDataStore::default());
    let mut config = config(&clock, Duration::from_secs(3600));
    config.agent_ttl = Some(Duration::from_secs(120));
    let ca = CaManager::new(config, Arc::new(MemoryKeyManager::new()), None, ds.clone())
        .await
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let agent = SpiffeId::parse("spiffe://example.org/spire/agent/join_token/abc").unwrap();
    let chain = ca
        .sign_agent_x509_svid(&key.public_key_der(), &agent)
        .await
        .unwrap();
    assert_eq!(
        x509::certificate_not_after(&chain[0]).unwrap(),
        clock.now() + time::Duration::seconds(120)
    );
    verify_x509_svid(&chain, &roots(&bundle(ds.as_ref()).await), clock.now()).unwrap();

    let downstream = ca
        .sign_downstream_x509_ca(&key.public_key_der(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(downstream.len(), 1);
    assert_eq!(
        issuer_skid(&downstream[0]),
        ca.x509_authority_states().await.0.unwrap().authority_id
    );
    assert_eq!(
        x509::certificate_not_after(&downstream[0]).unwrap(),
        clock.now() + time::Duration::seconds(600)
    );
}

#[tokio::test]
async fn sqlite_datastore_restart_keeps_the_ca_and_rotation_continues() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.json");
    let db_path = dir.path().join("datastore.sqlite3");
    let sql_config = SqlConfig::from_plugin_data(&serde_json::json!({
        "database_type": "sqlite3",
        "connection_string": db_path.to_str().unwrap(),
    }))
    .unwrap();
    let ttl = Duration::from_secs(60);

    let ds: Arc<dyn DataStore> = Arc::new(SqlDataStore::open(&sql_config).await.unwrap());
    let first = CaManager::new(
        config(&clock, ttl),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        Arc::clone(&ds),
    )
    .await
    .unwrap();
    clock.advance(time::Duration::seconds(31));
    first.rotate().await.unwrap();
    let active = first.x509_authority_states().await.0.unwrap();
    let prepared = first.x509_authority_states().await.1.unwrap();
    let jwt_active = first.jwt_authority_states().await.0.unwrap();
    drop(first);
    drop(ds);

    // A new process: a new datastore connection and key manager on the same files.
    let ds: Arc<dyn DataStore> = Arc::new(SqlDataStore::open(&sql_config).await.unwrap());
    let second = CaManager::new(
        config(&clock, ttl),
        Arc::new(DiskKeyManager::open(&keys_path).unwrap()),
        None,
        Arc::clone(&ds),
    )
    .await
    .unwrap();
    let (a, p, _) = second.x509_authority_states().await;
    assert_eq!(a.unwrap().authority_id, active.authority_id);
    assert_eq!(p.unwrap().authority_id, prepared.authority_id);
    assert_eq!(
        second.jwt_authority_states().await.0.unwrap().authority_id,
        jwt_active.authority_id
    );
    let b = bundle(ds.as_ref()).await;
    assert_eq!(roots(&b).len(), 2);

    clock.advance(time::Duration::seconds(20));
    second.rotate().await.unwrap();
    assert_eq!(
        second.x509_authority_states().await.0.unwrap().authority_id,
        prepared.authority_id
    );
    let (_, svid) = workload_svid(&second).await;
    verify_x509_svid(&svid, &roots(&bundle(ds.as_ref()).await), clock.now()).unwrap();
    let token = second
        .sign_jwt_svid(
            &SpiffeId::parse("spiffe://example.org/w").unwrap(),
            &["x".to_owned()],
            None,
        )
        .await
        .unwrap();
    let jwts = jwt_bundle(&bundle(ds.as_ref()).await);
    validate_jwt_svid(&token.token, &jwts, &["x"], clock.now().unix_timestamp()).unwrap();
}

#[tokio::test]
async fn run_stops_when_cancelled() {
    let ds = Arc::new(FakeDataStore::default());
    let ca = CaManager::new(
        CaConfig::new(td()),
        Arc::new(MemoryKeyManager::new()),
        None,
        ds,
    )
    .await
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&ca).run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns after cancel")
        .unwrap();
}

/// The `alg` in a compact JWT's header.
fn jwt_alg(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&json).unwrap();
    header["alg"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn jwt_key_type_chooses_the_jwt_signing_algorithm_apart_from_the_ca_key() {
    let id = SpiffeId::parse("spiffe://example.org/workload").unwrap();
    for (ca_key_type, jwt_key_type, alg) in [
        (KeyType::EcP256, Some(KeyType::Rsa2048), "RS256"),
        (KeyType::EcP256, Some(KeyType::EcP384), "ES384"),
        // Without jwt_key_type the JWT key follows ca_key_type, as upstream.
        (KeyType::EcP384, None, "ES384"),
        (KeyType::EcP256, None, "ES256"),
    ] {
        let clock = ManualClock::new();
        let ds = Arc::new(FakeDataStore::default());
        let mut config = config(&clock, Duration::from_secs(600));
        config.ca_key_type = ca_key_type;
        config.jwt_key_type = jwt_key_type;
        let ca = CaManager::new(config, Arc::new(MemoryKeyManager::new()), None, ds.clone())
            .await
            .unwrap();
        let svid = ca.sign_jwt_svid(&id, &["a".into()], None).await.unwrap();
        assert_eq!(
            jwt_alg(&svid.token),
            alg,
            "ca_key_type {ca_key_type:?}, jwt_key_type {jwt_key_type:?}"
        );
        // The token verifies against the bundle's JWT authority.
        let b = jwt_bundle(&bundle(ds.as_ref()).await);
        validate_jwt_svid(&svid.token, &b, &["a"], clock.now().unix_timestamp()).unwrap();
    }
}
