//! `TaintX509UpstreamAuthority` and `RevokeX509UpstreamAuthority` with the `disk`
//! UpstreamAuthority, on the model of upstream's `force-rotation-upstream-authority` suite:
//! the operator replaces the upstream CA files, prepares and activates a local authority
//! signed by the new upstream root, then taints and revokes the old upstream root. The
//! LocalAuthority service is called as the admin CLI calls it, against a real SQLite
//! datastore and CA manager.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::TrustDomain;
use spire_core::x509::{self, CaTemplate, Validity};
use spire_proto::spire::api::server::localauthority::v1 as pb;
use spire_proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthority;
use spire_server::api::localauthority::LocalAuthorityApi;
use spire_server::api::{ApiContext, ApiSettings};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::DataStore;
use spire_server::plugins::keymanager::MemoryKeyManager;
use spire_server::plugins::nodeattestor::NodeAttestors;
use spire_server::plugins::upstreamauthority::{
    DiskUpstreamAuthority, DiskUpstreamAuthorityConfig, UpstreamAuthority,
};
use time::OffsetDateTime;
use tonic::{Code, Request};

const TD: &str = "example.org";

/// Writes a new self-signed upstream root into the disk plugin's files; returns its DER.
fn write_upstream_root(dir: &Path) -> Vec<u8> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let root = x509::self_signed_ca(
        &key,
        &CaTemplate::new(
            TrustDomain::new("upstream.example").unwrap(),
            Validity::from_now(OffsetDateTime::now_utc(), time::Duration::days(365)),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("upstream.key"), key.to_pem().as_bytes()).unwrap();
    std::fs::write(
        dir.join("upstream.crt"),
        spire_core::pem::encode_certificates([root.as_slice()]),
    )
    .unwrap();
    root
}

fn skid(der: &[u8]) -> String {
    hex(&x509::subject_key_id(der).unwrap().unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn api(
    dir: &Path,
    upstream: Option<Arc<dyn UpstreamAuthority>>,
) -> (LocalAuthorityApi, Arc<ApiContext>) {
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir.join("datastore.sqlite3").to_string_lossy().into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    let datastore: Arc<dyn DataStore> = Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(&config)
            .await
            .unwrap(),
    );
    let trust_domain = TrustDomain::new(TD).unwrap();
    let ca = CaManager::new(
        CaConfig::new(trust_domain.clone()),
        Arc::new(MemoryKeyManager::new()),
        upstream,
        datastore.clone(),
    )
    .await
    .unwrap();
    let index = AuthorizedIndex::load(datastore.clone()).await.unwrap();
    let node_attestors = NodeAttestors::join_token_only(datastore.clone(), &trust_domain);
    let bundle_refresher = spire_server::federation::refresher::BundleRefresher::new(
        datastore.clone(),
        trust_domain.clone(),
        &Default::default(),
        Default::default(),
    );
    let ctx = Arc::new(ApiContext {
        trust_domain,
        datastore,
        ca,
        index,
        settings: ApiSettings::default(),
        log_level: Default::default(),
        started_at: Instant::now(),
        rate_limits: Default::default(),
        node_attestors,
        bundle_refresher,
    });
    (LocalAuthorityApi::new(ctx.clone()), ctx)
}

/// `(subject key ID, tainted)` of the X.509 authorities in the stored bundle.
async fn stored_roots(ctx: &ApiContext) -> Vec<(String, bool)> {
    ctx.datastore
        .fetch_bundle(TD)
        .await
        .unwrap()
        .unwrap()
        .x509_authorities
        .iter()
        .map(|a| (skid(&a.asn1), a.tainted))
        .collect()
}

async fn taint(api: &LocalAuthorityApi, skid: &str) -> Result<String, tonic::Status> {
    api.taint_x509_upstream_authority(Request::new(pb::TaintX509UpstreamAuthorityRequest {
        subject_key_id: skid.to_owned(),
    }))
    .await
    .map(|r| r.into_inner().upstream_authority_subject_key_id)
}

async fn revoke(api: &LocalAuthorityApi, skid: &str) -> Result<String, tonic::Status> {
    api.revoke_x509_upstream_authority(Request::new(pb::RevokeX509UpstreamAuthorityRequest {
        subject_key_id: skid.to_owned(),
    }))
    .await
    .map(|r| r.into_inner().upstream_authority_subject_key_id)
}

fn refused(result: Result<String, tonic::Status>) -> (Code, String) {
    let status = result.unwrap_err();
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn disk_upstream_root_is_tainted_and_revoked_after_rotating_away_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let old_root = write_upstream_root(dir.path());
    let upstream = DiskUpstreamAuthority::new(
        DiskUpstreamAuthorityConfig {
            key_file_path: dir.path().join("upstream.key"),
            cert_file_path: dir.path().join("upstream.crt"),
            bundle_file_path: None,
            ttl: None,
        },
        TrustDomain::new(TD).unwrap(),
    )
    .unwrap();
    let (api, ctx) = api(dir.path(), Some(Arc::new(upstream))).await;
    let old_skid = skid(&old_root);

    // The active authority names the root that signed it.
    let state = api
        .get_x509_authority_state(Request::new(pb::GetX509AuthorityStateRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.active.unwrap().upstream_authority_subject_key_id,
        old_skid
    );
    // The upstream authority of the current authority cannot be tainted.
    assert_eq!(
        refused(taint(&api, &old_skid).await),
        (
            Code::InvalidArgument,
            "provided subject key id is not valid: unable to use upstream authority singing current authority".to_owned()
        )
    );

    // The operator swaps the upstream CA files, then prepares an authority signed by them.
    let new_root = write_upstream_root(dir.path());
    let new_skid = skid(&new_root);
    let prepared = api
        .prepare_x509_authority(Request::new(pb::PrepareX509AuthorityRequest {}))
        .await
        .unwrap()
        .into_inner()
        .prepared_authority
        .unwrap();
    assert_eq!(prepared.upstream_authority_subject_key_id, new_skid);
    assert_eq!(
        stored_roots(&ctx).await,
        vec![(old_skid.clone(), false), (new_skid.clone(), false)],
        "both roots are trusted while the new authority is only prepared"
    );
    assert_eq!(
        refused(taint(&api, &new_skid).await),
        (
            Code::InvalidArgument,
            "provided subject key id is not valid: only upstream authorities signing an old authority can be used".to_owned()
        )
    );
    // Revoking before tainting is refused by the datastore.
    api.activate_x509_authority(Request::new(pb::ActivateX509AuthorityRequest {
        authority_id: prepared.authority_id.clone(),
    }))
    .await
    .unwrap();
    let (code, message) = refused(revoke(&api, &old_skid).await);
    assert_eq!(code, Code::Internal, "{message}");
    assert!(
        message.starts_with("failed to revoke X.509 upstream authority: "),
        "{message}"
    );
    assert_eq!(
        refused(taint(&api, "0123456789abcdef").await),
        (
            Code::InvalidArgument,
            "provided subject key id is not valid: upstream authority didn't sign the old local authority".to_owned()
        )
    );
    assert_eq!(
        refused(taint(&api, "").await),
        (
            Code::InvalidArgument,
            "provided subject key id is not valid: no subject key ID provided".to_owned()
        )
    );

    // Taint (upper case is normalized as upstream does), then revoke.
    assert_eq!(
        taint(&api, &old_skid.to_uppercase()).await.unwrap(),
        old_skid
    );
    assert_eq!(
        stored_roots(&ctx).await,
        vec![(old_skid.clone(), true), (new_skid.clone(), false)]
    );
    let (code, _) = refused(taint(&api, &old_skid).await);
    assert_eq!(
        code,
        Code::Internal,
        "tainting twice fails in the datastore"
    );
    assert_eq!(revoke(&api, &old_skid).await.unwrap(), old_skid);
    assert_eq!(stored_roots(&ctx).await, vec![(new_skid, false)]);
}

#[tokio::test]
async fn upstream_authority_rpcs_need_an_upstream_authority() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _ctx) = api(dir.path(), None).await;
    for result in [taint(&api, "abcd").await, revoke(&api, "abcd").await] {
        assert_eq!(
            refused(result),
            (
                Code::FailedPrecondition,
                "upstream authority is not configured".to_owned()
            )
        );
    }
}
