//! The agent manager against an in-memory fake of the server: batching, matching,
//! subscriptions, rotation, failures with backoff, the JWT-SVID cache, the LRU bound and
//! federated bundles.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use spire_agent::manager::{
    Manager, ManagerError, ManagerOptions, ServerApi, WorkloadIdentities, WorkloadUpdate,
    bundle_from_proto,
};
use spire_core::jwt::{JwtSvidParams, mint_jwt_svid};
use spire_core::keys::{KeyType, PrivateKey};
use spire_core::selector::Selector;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_core::x509::{
    CaTemplate, Issuer, SvidTemplate, Validity, certificate_public_key, self_signed_ca,
    x509_svid_from_csr,
};
use spire_proto::spire::api::types;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const TD: &str = "example.org";

/// A test CA for one trust domain.
struct Ca {
    key: PrivateKey,
    cert: Vec<u8>,
}

impl Ca {
    fn new(td: &str) -> Self {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let template = CaTemplate::new(
            TrustDomain::new(td).unwrap(),
            Validity::from_now(OffsetDateTime::now_utc(), time::Duration::days(30)),
        );
        let cert = self_signed_ca(&key, &template).unwrap();
        Self { key, cert }
    }

    fn bundle(&self, td: &str) -> types::Bundle {
        types::Bundle {
            trust_domain: td.to_owned(),
            x509_authorities: vec![types::X509Certificate {
                asn1: self.cert.clone(),
                tainted: false,
            }],
            jwt_authorities: vec![types::JwtKey {
                public_key: self.key.public_key_der(),
                key_id: "kid1".to_owned(),
                expires_at: 0,
                tainted: false,
            }],
            refresh_hint: 0,
            sequence_number: 1,
            wit_authorities: Vec::new(),
        }
    }
}

/// A shared, movable clock.
#[derive(Clone)]
struct TestClock(Arc<Mutex<OffsetDateTime>>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(OffsetDateTime::now_utc())))
    }
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
    fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap();
        *now += by;
    }
}

/// The fake server: in-memory entries, a real CA, call counters and a failure switch.
struct FakeServer {
    ca: Ca,
    clock: TestClock,
    entries: Mutex<Vec<types::Entry>>,
    federated: Mutex<HashMap<String, types::Bundle>>,
    /// Extra roots added to the own bundle, to simulate a CA rotation.
    extra_roots: Mutex<Vec<Vec<u8>>>,
    svid_ttl: time::Duration,
    jwt_ttl: i64,
    failing: AtomicBool,
    entry_calls: AtomicUsize,
    batch_calls: AtomicUsize,
    csrs_signed: AtomicUsize,
    jwt_calls: AtomicUsize,
    /// Every version PostStatus reported.
    statuses: Mutex<Vec<String>>,
    /// How long NewJWTSVID takes to answer.
    jwt_delay: Mutex<Duration>,
}

impl FakeServer {
    fn new(clock: TestClock) -> Arc<Self> {
        Self::with_svid_ttl(clock, time::Duration::hours(1))
    }

    fn with_svid_ttl(clock: TestClock, svid_ttl: time::Duration) -> Arc<Self> {
        Arc::new(Self {
            ca: Ca::new(TD),
            clock,
            entries: Mutex::new(Vec::new()),
            federated: Mutex::new(HashMap::new()),
            extra_roots: Mutex::new(Vec::new()),
            svid_ttl,
            jwt_ttl: 300,
            failing: AtomicBool::new(false),
            entry_calls: AtomicUsize::new(0),
            batch_calls: AtomicUsize::new(0),
            csrs_signed: AtomicUsize::new(0),
            jwt_calls: AtomicUsize::new(0),
            statuses: Mutex::new(Vec::new()),
            jwt_delay: Mutex::new(Duration::ZERO),
        })
    }

    /// Sets an entry's `additional_attributes`.
    fn set_attributes(&self, id: &str, disable_x509_svid_prefetch: bool, include_jti: bool) {
        for entry in self.entries.lock().unwrap().iter_mut() {
            if entry.id == id {
                entry.additional_attributes = Some(types::entry::AdditionalAttributes {
                    disable_x509_svid_prefetch,
                    jwt_svid_include_jti: include_jti,
                });
            }
        }
    }

    fn add_entry(&self, id: &str, selectors: &[&str], federates_with: &[&str]) {
        self.entries
            .lock()
            .unwrap()
            .push(entry(id, selectors, federates_with));
    }

    fn remove_entry(&self, id: &str) {
        self.entries.lock().unwrap().retain(|e| e.id != id);
    }

    fn check_up(&self) -> Result<(), ManagerError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(ManagerError::Unavailable("server is down".to_owned()))
        } else {
            Ok(())
        }
    }

    fn spiffe_id_of(&self, entry_id: &str) -> Option<SpiffeId> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.id == entry_id)
            .map(|e| {
                let id = e.spiffe_id.as_ref().unwrap();
                SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path)).unwrap()
            })
    }
}

fn entry(id: &str, selectors: &[&str], federates_with: &[&str]) -> types::Entry {
    types::Entry {
        id: id.to_owned(),
        spiffe_id: Some(types::Spiffeid {
            trust_domain: TD.to_owned(),
            path: format!("/workload/{id}"),
        }),
        parent_id: Some(types::Spiffeid {
            trust_domain: TD.to_owned(),
            path: "/spire/agent/join_token/t".to_owned(),
        }),
        selectors: selectors
            .iter()
            .map(|s| {
                let sel = Selector::parse(s).unwrap();
                types::Selector {
                    r#type: sel.kind,
                    value: sel.value,
                }
            })
            .collect(),
        federates_with: federates_with.iter().map(|s| (*s).to_owned()).collect(),
        revision_number: 1,
        ..Default::default()
    }
}

#[async_trait]
impl ServerApi for FakeServer {
    async fn authorized_entries(&self) -> Result<Vec<types::Entry>, ManagerError> {
        self.entry_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        Ok(self.entries.lock().unwrap().clone())
    }

    async fn new_x509_svids(
        &self,
        csrs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Vec<Vec<u8>>, ManagerError>>, ManagerError> {
        self.check_up()?;
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        self.csrs_signed.fetch_add(csrs.len(), Ordering::SeqCst);
        let issuer = Issuer::new(&self.ca.cert, &self.ca.key).unwrap();
        Ok(csrs
            .iter()
            .map(|(entry_id, csr)| {
                let spiffe_id = self
                    .spiffe_id_of(entry_id)
                    .ok_or_else(|| ManagerError::Internal(format!("no entry {entry_id}")))?;
                let template = SvidTemplate::new(
                    spiffe_id,
                    Validity::from_now(self.clock.now(), self.svid_ttl),
                );
                let leaf = x509_svid_from_csr(&issuer, csr, &template)
                    .map_err(|e| ManagerError::Internal(e.to_string()))?;
                Ok(vec![leaf])
            })
            .collect())
    }

    async fn bundle(&self) -> Result<types::Bundle, ManagerError> {
        self.check_up()?;
        let mut bundle = self.ca.bundle(TD);
        for root in self.extra_roots.lock().unwrap().iter() {
            bundle.x509_authorities.push(types::X509Certificate {
                asn1: root.clone(),
                tainted: false,
            });
        }
        Ok(bundle)
    }

    async fn federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<types::Bundle>, ManagerError> {
        self.check_up()?;
        Ok(self.federated.lock().unwrap().get(trust_domain).cloned())
    }

    async fn new_jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        self.check_up()?;
        self.jwt_calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.jwt_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let subject = self
            .spiffe_id_of(entry_id)
            .ok_or_else(|| ManagerError::Internal(format!("no entry {entry_id}")))?;
        let now = self.clock.now().unix_timestamp();
        mint_jwt_svid(
            &self.ca.key,
            "kid1",
            &JwtSvidParams {
                subject,
                audience: audience.to_vec(),
                expires_at: now + self.jwt_ttl,
                issued_at: Some(now),
                issuer: None,
                algorithm: None,
                jwt_id: Some(spire_core::jwt::new_jwt_id().unwrap()),
            },
        )
        .map_err(|e| ManagerError::Internal(e.to_string()))
    }

    async fn post_status(&self, agent_version: &str) -> Result<(), ManagerError> {
        self.check_up()?;
        self.statuses.lock().unwrap().push(agent_version.to_owned());
        Ok(())
    }
}

fn manager_with(server: &Arc<FakeServer>, tune: impl FnOnce(&mut ManagerOptions)) -> Arc<Manager> {
    let clock = server.clock.clone();
    let mut options = ManagerOptions {
        clock: Arc::new(move || clock.now()),
        ..ManagerOptions::default()
    };
    tune(&mut options);
    let initial = bundle_from_proto(&server.ca.bundle(TD)).unwrap();
    Manager::new(
        Arc::clone(server) as Arc<dyn ServerApi>,
        TrustDomain::new(TD).unwrap(),
        initial,
        options,
    )
}

fn manager(server: &Arc<FakeServer>) -> Arc<Manager> {
    manager_with(server, |_| {})
}

fn selectors(list: &[&str]) -> Vec<Selector> {
    list.iter().map(|s| Selector::parse(s).unwrap()).collect()
}

fn ids(update: &WorkloadUpdate) -> Vec<String> {
    update
        .identities
        .iter()
        .map(|i| i.spiffe_id.to_string())
        .collect()
}

fn leaf(rx: &watch::Receiver<Arc<WorkloadUpdate>>) -> Vec<u8> {
    rx.borrow().identities[0].chain[0].clone()
}

#[tokio::test]
async fn all_missing_svids_are_minted_in_one_batch_call() {
    let server = FakeServer::new(TestClock::new());
    for i in 0..5 {
        server.add_entry(&format!("e{i}"), &[&format!("unix:uid:{i}")], &[]);
    }
    let m = manager(&server);
    m.sync_once().await.unwrap();
    assert_eq!(server.batch_calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.csrs_signed.load(Ordering::SeqCst), 5);
    assert_eq!(m.cache_stats().x509_svids, 5);

    // Nothing is due: the next sync mints nothing.
    m.sync_once().await.unwrap();
    assert_eq!(server.batch_calls.load(Ordering::SeqCst), 1);

    // The served SVID holds the key the manager generated and the entry's SPIFFE ID.
    let rx = m.subscribe(selectors(&["unix:uid:3"]));
    let update = rx.borrow().clone();
    assert_eq!(ids(&update), ["spiffe://example.org/workload/e3"]);
    let identity = &update.identities[0];
    assert_eq!(
        certificate_public_key(&identity.chain[0]).unwrap(),
        identity.key.public_key_der()
    );
}

#[tokio::test]
async fn workloads_get_entries_whose_selectors_are_a_subset_of_theirs() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    server.add_entry("b", &["unix:uid:1000", "unix:gid:1000"], &[]);
    server.add_entry("c", &["unix:uid:2000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();

    let only_uid = m.subscribe(selectors(&["unix:uid:1000"]));
    assert_eq!(ids(&only_uid.borrow()), ["spiffe://example.org/workload/a"]);
    let both = m.subscribe(selectors(&[
        "unix:uid:1000",
        "unix:gid:1000",
        "unix:user:me",
    ]));
    assert_eq!(
        ids(&both.borrow()),
        [
            "spiffe://example.org/workload/a",
            "spiffe://example.org/workload/b"
        ]
    );
    let none = m.subscribe(selectors(&[]));
    assert!(none.borrow().identities.is_empty());
    let other = m.subscribe(selectors(&["unix:uid:3000"]));
    assert!(other.borrow().identities.is_empty());
}

#[tokio::test]
async fn subscribers_see_new_and_deleted_entries() {
    let server = FakeServer::new(TestClock::new());
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let mut rx = m.subscribe(selectors(&["unix:uid:1000"]));
    assert!(rx.borrow_and_update().identities.is_empty());

    server.add_entry("a", &["unix:uid:1000"], &[]);
    m.sync_once().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        ids(&rx.borrow_and_update()),
        ["spiffe://example.org/workload/a"]
    );

    // A sync without changes does not wake the subscriber.
    m.sync_once().await.unwrap();
    assert!(!rx.has_changed().unwrap());

    server.remove_entry("a");
    m.sync_once().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().identities.is_empty());
    assert_eq!(m.cache_stats().x509_svids, 0);
}

#[tokio::test]
async fn svids_are_rotated_past_half_life_and_pushed() {
    let clock = TestClock::new();
    let server = FakeServer::new(clock.clone());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let mut rx = m.subscribe(selectors(&["unix:uid:1000"]));
    let first = leaf(&rx);
    rx.borrow_and_update();

    // Before half-life (TTL 1 h): nothing happens.
    clock.advance(time::Duration::minutes(20));
    m.sync_once().await.unwrap();
    assert_eq!(server.batch_calls.load(Ordering::SeqCst), 1);
    assert!(!rx.has_changed().unwrap());

    // Past half-life: a new SVID reaches the subscriber.
    clock.advance(time::Duration::minutes(11));
    m.sync_once().await.unwrap();
    assert_eq!(server.batch_calls.load(Ordering::SeqCst), 2);
    assert!(rx.has_changed().unwrap());
    assert_ne!(leaf(&rx), first);
}

#[tokio::test]
async fn a_changed_entry_revision_gets_a_new_svid() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let mut rx = m.subscribe(selectors(&["unix:uid:1000"]));
    let first = leaf(&rx);
    rx.borrow_and_update();
    server.entries.lock().unwrap()[0].revision_number = 2;
    m.sync_once().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_ne!(leaf(&rx), first);
}

#[tokio::test]
async fn server_failure_keeps_cached_svids_and_backs_off() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager_with(&server, |o| {
        o.sync_interval = Duration::from_millis(10);
        o.retry_base = Duration::from_millis(100);
        o.retry_max = Duration::from_millis(300);
    });
    m.sync_once().await.unwrap();
    let rx = m.subscribe(selectors(&["unix:uid:1000"]));
    let before = leaf(&rx);

    server.failing.store(true, Ordering::SeqCst);
    let err = m.sync_once().await.unwrap_err();
    assert!(matches!(err, ManagerError::Unavailable(_)), "{err}");
    // Still served, to old and new subscribers alike.
    assert_eq!(leaf(&rx), before);
    let late = m.subscribe(selectors(&["unix:uid:1000"]));
    assert_eq!(leaf(&late), before);

    // With a 10 ms interval but a failing server, the loop backs off (100 ms, 150 ms,
    // 225 ms, 300 ms, ... each ±20 %) instead of hammering: it retries, but never more
    // often than every 80 ms, where hammering would try every 10 ms (60 times in 600 ms).
    // Real time on a loaded machine: wait for the retries instead of counting them in a
    // fixed window, and bound them by the time that actually passed.
    let calls_before = server.entry_calls.load(Ordering::SeqCst);
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(Arc::clone(&m).run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let deadline = started + Duration::from_secs(10);
    let attempts = loop {
        let attempts = server.entry_calls.load(Ordering::SeqCst) - calls_before;
        if attempts >= 2 {
            break attempts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the loop retried {attempts} times in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Read after the count, so it covers every attempt counted.
    let elapsed = started.elapsed();
    let most = 2 + elapsed.as_millis() / 80;
    assert!(
        attempts as u128 <= most,
        "{attempts} attempts in {elapsed:?}: no backoff (at most {most} with it)"
    );
    assert_eq!(leaf(&rx), before);

    // The server comes back: the loop recovers and syncs at the normal pace again.
    server.failing.store(false, Ordering::SeqCst);
    let recovered_at = server.entry_calls.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.entry_calls.load(Ordering::SeqCst) < recovered_at + 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("syncs resume every 10 ms once the server answers");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn jwt_svids_are_cached_until_half_life() {
    let clock = TestClock::new();
    let server = FakeServer::new(clock.clone());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let sel = selectors(&["unix:uid:1000"]);
    let aud = vec!["b".to_owned(), "a".to_owned()];

    let first = m.fetch_jwt_svids(&sel, None, &aud).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].spiffe_id.as_str(),
        "spiffe://example.org/workload/a"
    );
    // Same audience in another order: the cached token.
    let again = m
        .fetch_jwt_svids(&sel, None, &["a".to_owned(), "b".to_owned()])
        .await
        .unwrap();
    assert_eq!(again[0].token, first[0].token);
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 1);

    // A different audience is a different token.
    m.fetch_jwt_svids(&sel, None, &["c".to_owned()])
        .await
        .unwrap();
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 2);

    // Past half of its 300 s lifetime: minted again.
    clock.advance(time::Duration::seconds(151));
    let renewed = m.fetch_jwt_svids(&sel, None, &aud).await.unwrap();
    assert_ne!(renewed[0].token, first[0].token);
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 3);

    // The server down: the still-valid cached token is served rather than an error.
    clock.advance(time::Duration::seconds(151));
    server.failing.store(true, Ordering::SeqCst);
    let fallback = m.fetch_jwt_svids(&sel, None, &aud).await.unwrap();
    assert_eq!(fallback[0].token, renewed[0].token);
}

/// `jwt_svid_include_jti`: every request goes to the server and gets a token of its own; the
/// other entry of the same workload is still cached.
#[tokio::test]
async fn jwt_svids_of_jti_entries_are_never_cached() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    server.add_entry("b", &["unix:uid:1000"], &[]);
    server.set_attributes("a", false, true);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let sel = selectors(&["unix:uid:1000"]);
    let a = SpiffeId::parse("spiffe://example.org/workload/a").unwrap();
    let b = SpiffeId::parse("spiffe://example.org/workload/b").unwrap();
    let aud = vec!["x".to_owned()];

    let first = m.fetch_jwt_svids(&sel, Some(&a), &aud).await.unwrap();
    let second = m.fetch_jwt_svids(&sel, Some(&a), &aud).await.unwrap();
    assert_ne!(first[0].token, second[0].token);
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 2);
    assert_eq!(m.cache_stats().jwt_svids, 0, "nothing of entry a cached");

    let first = m.fetch_jwt_svids(&sel, Some(&b), &aud).await.unwrap();
    let second = m.fetch_jwt_svids(&sel, Some(&b), &aud).await.unwrap();
    assert_eq!(first[0].token, second[0].token);
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 3);
}

/// `disable_x509_svid_prefetch`: the sync mints nothing for the entry until a workload asks
/// for it, then the workload gets it like any other.
#[tokio::test]
async fn prefetch_disabled_entries_are_minted_when_a_workload_asks() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("eager", &["unix:uid:1"], &[]);
    server.add_entry("lazy", &["unix:uid:2"], &[]);
    server.set_attributes("lazy", true, false);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    m.sync_once().await.unwrap();
    assert_eq!(m.cache_stats().x509_svids, 1, "only the eager entry");
    assert_eq!(server.csrs_signed.load(Ordering::SeqCst), 1);

    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&m).run(cancel.clone()));
    let rx = tokio::time::timeout(
        Duration::from_secs(10),
        m.subscribe_when_ready(selectors(&["unix:uid:2"])),
    )
    .await
    .expect("the subscriber gets its SVID");
    assert_eq!(ids(&rx.borrow()), ["spiffe://example.org/workload/lazy"]);
    assert_eq!(m.cache_stats().x509_svids, 2);
    cancel.cancel();
    task.await.unwrap();
}

/// The agent reports its version once when its manager starts, before the first sync.
#[tokio::test]
async fn the_manager_posts_the_agent_version_at_start() {
    let server = FakeServer::new(TestClock::new());
    let m = manager(&server);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&m).run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.entry_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a first sync");
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(
        *server.statuses.lock().unwrap(),
        [spire_agent::manager::sync::AGENT_VERSION]
    );
    assert!(spire_agent::manager::sync::AGENT_VERSION.ends_with("-spire-rs"));
}

#[tokio::test]
async fn jwt_requests_are_checked() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    let sel = selectors(&["unix:uid:1000"]);
    let aud = vec!["x".to_owned()];

    let err = m.fetch_jwt_svids(&sel, None, &[]).await.unwrap_err();
    assert!(matches!(err, ManagerError::InvalidArgument(_)), "{err}");
    let err = m
        .fetch_jwt_svids(&selectors(&["unix:uid:1"]), None, &aud)
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NoIdentity), "{err}");
    let other = SpiffeId::parse("spiffe://example.org/other").unwrap();
    let err = m
        .fetch_jwt_svids(&sel, Some(&other), &aud)
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NoIdentity), "{err}");
    let mine = SpiffeId::parse("spiffe://example.org/workload/a").unwrap();
    let ok = m.fetch_jwt_svids(&sel, Some(&mine), &aud).await.unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn svid_cache_is_bounded_but_subscribed_entries_are_served() {
    let server = FakeServer::new(TestClock::new());
    for i in 0..5 {
        server.add_entry(&format!("e{i}"), &[&format!("unix:uid:{i}")], &[]);
    }
    let m = manager_with(&server, |o| o.x509_svid_cache_max_size = 2);
    m.sync_once().await.unwrap();
    assert_eq!(m.cache_stats().x509_svids, 2);
    assert_eq!(m.cache_stats().entries, 5);

    // A workload for an entry outside the cache gets it on the next sync; the bound holds
    // by evicting an unused SVID.
    let rx = m.subscribe(selectors(&["unix:uid:4"]));
    assert!(rx.borrow().identities.is_empty());
    m.sync_once().await.unwrap();
    assert_eq!(ids(&rx.borrow()), ["spiffe://example.org/workload/e4"]);
    assert_eq!(m.cache_stats().x509_svids, 2);

    // Subscribed entries are kept even beyond the bound.
    let others: Vec<_> = (0..4)
        .map(|i| m.subscribe(selectors(&[&format!("unix:uid:{i}")])))
        .collect();
    m.sync_once().await.unwrap();
    assert_eq!(m.cache_stats().x509_svids, 5);
    for rx in &others {
        assert_eq!(rx.borrow().identities.len(), 1);
    }

    // Once those subscribers are gone the cache shrinks back to the bound.
    drop(others);
    m.sync_once().await.unwrap();
    assert_eq!(m.cache_stats().x509_svids, 2);
    assert_eq!(rx.borrow().identities.len(), 1);
}

#[tokio::test]
async fn a_subscriber_waiting_for_an_svid_starts_an_early_sync() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1"], &[]);
    server.add_entry("b", &["unix:uid:1000"], &[]);
    // Cache size 1: entry "b" is known but has no SVID until a workload asks for it.
    let m = manager_with(&server, |o| {
        o.x509_svid_cache_max_size = 1;
        o.sync_interval = Duration::from_secs(3600);
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&m).run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(5), async {
        while m.cache_stats().entries == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(m.cache_stats().x509_svids, 1);

    let mut rx = m.subscribe(selectors(&["unix:uid:1000"]));
    assert!(rx.borrow_and_update().identities.is_empty());
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the SVID arrives long before the hour-long sync interval")
        .unwrap();
    assert_eq!(ids(&rx.borrow()), ["spiffe://example.org/workload/b"]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn federated_bundles_go_only_to_federating_workloads() {
    let server = FakeServer::new(TestClock::new());
    let other = Ca::new("other.org");
    server
        .federated
        .lock()
        .unwrap()
        .insert("other.org".to_owned(), other.bundle("other.org"));
    server.add_entry("fed", &["unix:uid:1"], &["other.org"]);
    server.add_entry("plain", &["unix:uid:2"], &[]);
    // Federates with a trust domain the server has no bundle for: ignored.
    server.add_entry("missing", &["unix:uid:3"], &["nobundle.org"]);
    let m = manager(&server);
    let mut bundles = m.bundles();
    m.sync_once().await.unwrap();

    let fed = m.subscribe(selectors(&["unix:uid:1"]));
    let fed = fed.borrow().clone();
    assert_eq!(
        fed.federated_bundles.keys().collect::<Vec<_>>(),
        ["other.org"]
    );
    assert_eq!(
        fed.federated_bundles["other.org"].x509_authorities,
        vec![other.cert.clone()]
    );
    assert_eq!(fed.bundle.trust_domain.name(), TD);

    let plain = m.subscribe(selectors(&["unix:uid:2"]));
    assert!(plain.borrow().federated_bundles.is_empty());
    let missing = m.subscribe(selectors(&["unix:uid:3"]));
    assert_eq!(missing.borrow().identities.len(), 1);
    assert!(missing.borrow().federated_bundles.is_empty());

    assert!(bundles.has_changed().unwrap());
    let all = bundles.borrow_and_update().clone();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["example.org", "other.org"]);

    // The federating entry goes away: its federated bundle leaves the bundle set too.
    server.remove_entry("fed");
    m.sync_once().await.unwrap();
    assert!(bundles.has_changed().unwrap());
    assert_eq!(bundles.borrow().keys().collect::<Vec<_>>(), ["example.org"]);
}

#[tokio::test]
async fn bad_server_answers_do_not_poison_the_cache() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("good", &["unix:uid:1"], &[]);
    let mut bad = entry("bad", &["unix:uid:2"], &[]);
    bad.selectors[0].r#type = String::new();
    server.entries.lock().unwrap().push(bad);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    assert_eq!(m.cache_stats().entries, 1);
    assert_eq!(
        ids(&m.subscribe(selectors(&["unix:uid:1"])).borrow()),
        ["spiffe://example.org/workload/good"]
    );
}

#[tokio::test]
async fn a_bundle_change_reaches_subscribers_and_the_bundle_watch() {
    let server = FakeServer::new(TestClock::new());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager(&server);
    m.sync_once().await.unwrap();
    assert!(m.cache_stats().last_sync_success.is_some());
    let mut rx = m.subscribe(selectors(&["unix:uid:1000"]));
    rx.borrow_and_update();
    let mut bundles = m.bundles();
    bundles.borrow_and_update();

    let next_ca = Ca::new(TD);
    server
        .extra_roots
        .lock()
        .unwrap()
        .push(next_ca.cert.clone());
    m.sync_once().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().bundle.x509_authorities.len(), 2);
    assert!(bundles.has_changed().unwrap());
    assert_eq!(bundles.borrow_and_update()[TD].x509_authorities.len(), 2);
    // The SVID itself did not change.
    assert_eq!(server.batch_calls.load(Ordering::SeqCst), 1);
}

/// `availability_target`: with 72 h SVIDs and a 48 h target, an SVID is renewed once 48 h
/// are left (after 24 h), before its half-life (36 h); without the target, at half-life.
#[tokio::test]
async fn availability_target_renews_workload_svids_before_half_life() {
    for (target, renewed_after_25h) in [(None, false), (Some(48), true)] {
        let clock = TestClock::new();
        let server = FakeServer::with_svid_ttl(clock.clone(), time::Duration::hours(72));
        server.add_entry("a", &["unix:uid:1000"], &[]);
        let m = manager_with(&server, |o| {
            o.availability_target = target.map(|h| Duration::from_secs(h * 3600));
        });
        m.sync_once().await.unwrap();
        let _rx = m.subscribe(selectors(&["unix:uid:1000"]));
        clock.advance(time::Duration::hours(23));
        m.sync_once().await.unwrap();
        assert_eq!(server.batch_calls.load(Ordering::SeqCst), 1, "{target:?}");
        clock.advance(time::Duration::hours(2));
        m.sync_once().await.unwrap();
        let expected = if renewed_after_25h { 2 } else { 1 };
        assert_eq!(
            server.batch_calls.load(Ordering::SeqCst),
            expected,
            "{target:?}"
        );
        clock.advance(time::Duration::hours(12));
        m.sync_once().await.unwrap();
        assert_eq!(server.batch_calls.load(Ordering::SeqCst), 2, "{target:?}");
    }
}

/// `experimental.jwt_svid_cache_hit_timeout`: with an unexpired JWT-SVID cached, a slow
/// server gets only that long before the cached token is served.
#[tokio::test]
async fn a_slow_server_gets_the_cache_hit_timeout_then_the_cached_jwt_is_served() {
    let clock = TestClock::new();
    let server = FakeServer::new(clock.clone());
    server.add_entry("a", &["unix:uid:1000"], &[]);
    let m = manager_with(&server, |o| {
        o.jwt_svid_cache_hit_timeout = Duration::from_millis(300);
    });
    m.sync_once().await.unwrap();
    let sel = selectors(&["unix:uid:1000"]);
    let aud = vec!["a".to_owned()];
    let first = m.fetch_jwt_svids(&sel, None, &aud).await.unwrap();

    // Past half-life, not expired: a renewal is tried, but the server takes 20 s.
    clock.advance(time::Duration::seconds(151));
    *server.jwt_delay.lock().unwrap() = Duration::from_secs(20);
    let started = std::time::Instant::now();
    let served = m.fetch_jwt_svids(&sel, None, &aud).await.unwrap();
    assert_eq!(served[0].token, first[0].token);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?} instead of the 300 ms cache-hit timeout",
        started.elapsed()
    );
    assert_eq!(server.jwt_calls.load(Ordering::SeqCst), 2);
}

/// A configuration reload of `experimental.sync_interval` reaches a running sync loop at
/// once, even one waiting out a long interval.
#[tokio::test]
async fn a_new_sync_interval_applies_to_the_running_loop() {
    let server = FakeServer::new(TestClock::new());
    let m = manager_with(&server, |o| {
        o.sync_interval = Duration::from_secs(3600);
        o.follow_sync_hints = false;
    });
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&m).run(cancel.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.entry_calls.load(Ordering::SeqCst) < 1 {
        assert!(std::time::Instant::now() < deadline, "no first sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.entry_calls.load(Ordering::SeqCst),
        1,
        "hourly: one sync so far"
    );

    m.set_sync_interval(Duration::from_millis(20));
    assert_eq!(m.sync_interval(), Duration::from_millis(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.entry_calls.load(Ordering::SeqCst) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop kept the hourly interval"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops when cancelled")
        .unwrap();
}
