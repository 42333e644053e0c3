//! The server's `gcp_iit` and `azure_msi` attestors against tokens signed by keys the test
//! holds, published through a loopback stand-in for Google and Microsoft (`FakeCloud`): the
//! production verification code fetches the keys and the Compute Engine / Resource Manager
//! objects over HTTP exactly as it would from the real endpoints. Good tokens give upstream's
//! agent IDs and selectors; forged, wrongly-signed, expired, replayed (TOFU), wrong-audience,
//! unlisted-project and unknown-tenant tokens are refused with PermissionDenied naming the
//! failed check.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use spire_core::spiffe_id::TrustDomain;
use spire_e2e::cloud::{
    EntraSigner, FakeCloud, GoogleSigner, azure_vm_resources, gce_claims, gce_instance, msi_claims,
    unix_now,
};
use spire_server::datastore::{AttestedNode, DataStore};
use spire_server::plugins::nodeattestor::{Attested, Challenger, NodeAttestor, azure_msi, gcp_iit};
use tonic::{Code, Status};

struct NoChallenges;

#[async_trait]
impl Challenger for NoChallenges {
    async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, Status> {
        Err(Status::internal("no challenges expected"))
    }
}

async fn datastore(dir: &std::path::Path) -> Arc<dyn DataStore> {
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir.join("ds.sqlite3").to_string_lossy().into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    Arc::new(
        spire_server::datastore::sql::SqlDataStore::open(&config)
            .await
            .unwrap(),
    )
}

/// Records `attested` as the agent API does after a successful attestation.
async fn record(ds: &Arc<dyn DataStore>, attested: &Attested, data_type: &str) {
    ds.create_attested_node(AttestedNode {
        spiffe_id: attested.agent_id.to_string(),
        attestation_data_type: data_type.into(),
        cert_serial_number: "1".into(),
        cert_not_after: unix_now() + 3600,
        ..AttestedNode::default()
    })
    .await
    .unwrap();
}

fn assert_refused(result: Result<Attested, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the attestation should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{:?} should contain {needle:?}",
        status.message()
    );
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn gcp_attestor(
    cloud: &FakeCloud,
    ds: &Arc<dyn DataStore>,
    extra: &str,
) -> gcp_iit::GcpIitAttestor {
    let json = format!(
        r#"{{"projectid_allow_list": ["proj-a"],
             "google_certs_url": "{url}/oauth2/v1/certs",
             "compute_endpoint": "{url}/compute/v1/"{extra}}}"#,
        url = cloud.url()
    );
    let data: gcp_iit::Data = serde_json::from_str(&json).unwrap();
    let config = gcp_iit::GcpIitConfig::from_data("server.conf", "gcp_iit", data).unwrap();
    gcp_iit::GcpIitAttestor::new(config, td(), Arc::clone(ds)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_iit_verifies_googles_signature_and_refuses_every_bad_token() {
    let dir = tempfile::tempdir().unwrap();
    let ds = datastore(dir.path()).await;
    let cloud = FakeCloud::start();
    let google = GoogleSigner::new("google-key-1");
    cloud.with(|s| s.google_certs = google.certs());

    // A service account key file whose token_uri is the loopback token endpoint.
    let key_file = dir.path().join("sa.json");
    std::fs::write(
        &key_file,
        json!({
            "type": "service_account", "project_id": "proj-a",
            "private_key_id": "sa-key", "private_key": google.private_key_pem(),
            "client_email": "attestor@proj-a.iam.gserviceaccount.com",
            "token_uri": format!("{}/google/token", cloud.url()),
        })
        .to_string(),
    )
    .unwrap();
    let attestor = gcp_attestor(
        &cloud,
        &ds,
        &format!(
            r#", "use_instance_metadata": true, "allowed_label_keys": ["env"],
               "allowed_metadata_keys": ["role", "big"], "service_account_file": "{}""#,
            key_file.display()
        ),
    );
    cloud.with(|s| {
        s.gce_instances.insert(
            "projects/proj-a/zones/us-west1-b/instances/vm-1".into(),
            gce_instance(
                "vm-1",
                "us-west1-b",
                &["web", "prod"],
                json!({"env": "prod", "secret": "x"}),
                json!([{"key": "role", "value": "db"}, {"key": "other", "value": "y"}]),
            ),
        );
    });

    let token = google.sign(&gce_claims("proj-a", "us-west1-b", "1111", "vm-1"));
    let attested = attestor
        .attest(token.as_bytes(), &mut NoChallenges)
        .await
        .unwrap();
    assert_eq!(
        attested.agent_id.to_string(),
        "spiffe://example.org/spire/agent/gcp_iit/proj-a/1111"
    );
    assert!(!attested.can_reattest);
    assert_eq!(
        attested.selector_values,
        [
            "project-id:proj-a",
            "zone:us-west1-b",
            "instance-name:vm-1",
            "tag:web",
            "tag:prod",
            "sa:agent@p.iam.gserviceaccount.com",
            "label:env:prod",
            "metadata:role:db",
        ]
    );
    // The Compute API was called with the token the service account key was exchanged for.
    let token_requests = cloud.requests_to("/google/token");
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    let compute = cloud.requests_to("/compute/v1/");
    assert_eq!(
        compute[0].authorization.as_deref(),
        Some(format!("Bearer {}", spire_e2e::cloud::GOOGLE_ACCESS_TOKEN).as_str())
    );

    // The same token again: the agent exists, so it is a replay (TOFU).
    record(&ds, &attested, "gcp_iit").await;
    assert_refused(
        attestor.attest(token.as_bytes(), &mut NoChallenges).await,
        Code::PermissionDenied,
        "attestation data has already been used to attest an agent",
    );

    // A metadata value over max_metadata_value_size fails the attestation.
    cloud.with(|s| {
        s.gce_instances.insert(
            "projects/proj-a/zones/us-west1-b/instances/vm-big".into(),
            gce_instance(
                "vm-big",
                "us-west1-b",
                &[],
                json!({}),
                json!([{"key": "big", "value": "x".repeat(200)}]),
            ),
        );
    });
    let big = google.sign(&gce_claims("proj-a", "us-west1-b", "3333", "vm-big"));
    assert_refused(
        attestor.attest(big.as_bytes(), &mut NoChallenges).await,
        Code::Internal,
        "exceeded value limit (200 > 128)",
    );

    // Forged: claims changed under Google's signature.
    let fresh = google.sign(&gce_claims("proj-a", "us-west1-b", "2222", "vm-2"));
    let mut parts: Vec<String> = fresh.split('.').map(str::to_owned).collect();
    let other = google.sign(&gce_claims("proj-a", "us-west1-b", "9999", "vm-9"));
    parts[1] = other.split('.').nth(1).unwrap().to_owned();
    assert_refused(
        attestor
            .attest(parts.join(".").as_bytes(), &mut NoChallenges)
            .await,
        Code::PermissionDenied,
        "failed to validate the identity token signature: signature does not verify",
    );
    // Signed by a key that is not Google's, under Google's key ID.
    let impostor = GoogleSigner::new("google-key-1");
    let wrong = impostor.sign(&gce_claims("proj-a", "us-west1-b", "2222", "vm-2"));
    assert_refused(
        attestor.attest(wrong.as_bytes(), &mut NoChallenges).await,
        Code::PermissionDenied,
        "signature does not verify with key \"google-key-1\"",
    );
    // Signed by an unknown key: the certificates are fetched again, and still no match.
    let before = cloud.requests_to("/oauth2/v1/certs").len();
    let unknown = GoogleSigner::new("other-key").sign(&gce_claims("proj-a", "z", "2222", "vm-2"));
    assert_refused(
        attestor.attest(unknown.as_bytes(), &mut NoChallenges).await,
        Code::PermissionDenied,
        "key id \"other-key\" not found",
    );
    assert_eq!(cloud.requests_to("/oauth2/v1/certs").len(), before + 1);
    // Expired.
    let mut claims = gce_claims("proj-a", "us-west1-b", "2222", "vm-2");
    claims["exp"] = json!(unix_now() - 600);
    claims["iat"] = json!(unix_now() - 4200);
    assert_refused(
        attestor
            .attest(google.sign(&claims).as_bytes(), &mut NoChallenges)
            .await,
        Code::PermissionDenied,
        "failed to validate the identity token claims: token is expired",
    );
    // Wrong audience.
    let mut claims = gce_claims("proj-a", "us-west1-b", "2222", "vm-2");
    claims["aud"] = json!("https://example.com");
    assert_refused(
        attestor
            .attest(google.sign(&claims).as_bytes(), &mut NoChallenges)
            .await,
        Code::PermissionDenied,
        "invalid audience claim",
    );
    // Project not in the allow list.
    let token = google.sign(&gce_claims("proj-b", "us-west1-b", "2222", "vm-2"));
    assert_refused(
        attestor.attest(token.as_bytes(), &mut NoChallenges).await,
        Code::PermissionDenied,
        "identity token project ID \"proj-b\" is not in the allow list",
    );
    // Not a token at all.
    assert_refused(
        attestor.attest(b"garbage", &mut NoChallenges).await,
        Code::InvalidArgument,
        "unable to parse the identity token",
    );
    // Nothing above created an agent: only vm-1 exists.
    let nodes = ds
        .fetch_attested_node("spiffe://example.org/spire/agent/gcp_iit/proj-a/2222")
        .await
        .unwrap();
    assert!(nodes.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_iit_agent_path_template_and_no_instance_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let ds = datastore(dir.path()).await;
    let cloud = FakeCloud::start();
    let google = GoogleSigner::new("k");
    cloud.with(|s| s.google_certs = google.certs());
    let attestor = gcp_attestor(
        &cloud,
        &ds,
        r#", "agent_path_template": "/gcp/{{ .Zone }}/{{ .InstanceName }}/{{ .ProjectNumber }}""#,
    );
    let token = google.sign(&gce_claims("proj-a", "europe-west1-c", "77", "db-0"));
    let attested = attestor
        .attest(token.as_bytes(), &mut NoChallenges)
        .await
        .unwrap();
    assert_eq!(
        attested.agent_id.to_string(),
        "spiffe://example.org/spire/agent/gcp/europe-west1-c/db-0/424242"
    );
    assert_eq!(
        attested.selector_values,
        [
            "project-id:proj-a",
            "zone:europe-west1-c",
            "instance-name:db-0"
        ]
    );
    assert!(cloud.requests_to("/compute/").is_empty());
}

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const PRINCIPAL: &str = "99999999-8888-7777-6666-555555555555";
const SUBSCRIPTION: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

fn azure_attestor(
    cloud: &FakeCloud,
    ds: &Arc<dyn DataStore>,
    tenants: &str,
) -> azure_msi::AzureMsiAttestor {
    let json = format!(
        r#"{{"tenants": {tenants},
             "authority_host": "{url}/",
             "resource_manager_endpoint": "{url}/",
             "imds_endpoint": "{url}"}}"#,
        url = cloud.url()
    );
    let data: azure_msi::Data = serde_json::from_str(&json).unwrap();
    let config = azure_msi::AzureMsiConfig::from_data("server.conf", "azure_msi", data).unwrap();
    azure_msi::AzureMsiAttestor::new(config, td(), Arc::clone(ds)).unwrap()
}

fn serve_vm(cloud: &FakeCloud, entra: &EntraSigner) {
    let (vm_id, resources) =
        azure_vm_resources(SUBSCRIPTION, "rg-1", "vm-1", "nsg-1", "vnet-1", "subnet-1");
    cloud.with(|s| {
        s.azure_jwks = entra.jwks();
        s.arm_resources.extend(resources);
        s.vms_by_principal.insert(PRINCIPAL.into(), vm_id);
        s.azure_instance = json!({"compute": {"name": "server-vm", "subscriptionId": SUBSCRIPTION, "resourceGroupName": "rg-srv"}});
    });
}

fn payload(token: &str) -> Vec<u8> {
    json!({ "token": token }).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_msi_verifies_entra_signature_and_refuses_every_bad_token() {
    let dir = tempfile::tempdir().unwrap();
    let ds = datastore(dir.path()).await;
    let cloud = FakeCloud::start();
    let entra = EntraSigner::new("entra-1");
    serve_vm(&cloud, &entra);
    let attestor = azure_attestor(
        &cloud,
        &ds,
        &format!(
            r#"{{"{TENANT}": {{"resource_id": "api://spire-server", "subscription_id": "{SUBSCRIPTION}",
                 "app_id": "app", "app_secret": "secret"}}}}"#
        ),
    );
    let token = entra.sign(&msi_claims(TENANT, PRINCIPAL, "api://spire-server"));
    let attested = attestor
        .attest(&payload(&token), &mut NoChallenges)
        .await
        .unwrap();
    assert_eq!(
        attested.agent_id.to_string(),
        format!("spiffe://example.org/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}")
    );
    assert!(!attested.can_reattest);
    assert_eq!(
        attested.selector_values,
        [
            "network-security-group:rg-1:nsg-1".to_owned(),
            format!("subscription-id:{SUBSCRIPTION}"),
            "virtual-network-subnet:rg-1:vnet-1:subnet-1".to_owned(),
            "virtual-network:rg-1:vnet-1".to_owned(),
            "vm-name:rg-1:vm-1".to_owned(),
        ]
    );
    // The app registration's secret was exchanged at the tenant's token endpoint.
    let grants = cloud.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(grants.len(), 1);
    assert!(grants[0].body.contains("client_id=app"), "{:?}", grants[0]);

    // Replayed (TOFU).
    record(&ds, &attested, "azure_msi").await;
    assert_refused(
        attestor.attest(&payload(&token), &mut NoChallenges).await,
        Code::PermissionDenied,
        "attestation data has already been used to attest an agent",
    );

    let other = "00000000-0000-0000-0000-000000000001";
    // Forged: claims of another principal under a valid signature.
    let good = entra.sign(&msi_claims(TENANT, other, "api://spire-server"));
    let forged_claims = entra.sign(&msi_claims(TENANT, "evil", "api://spire-server"));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = forged_claims.split('.').nth(1).unwrap();
    assert_refused(
        attestor
            .attest(&payload(&parts.join(".")), &mut NoChallenges)
            .await,
        Code::PermissionDenied,
        "unable to verify token: signature does not verify",
    );
    // Wrongly signed: another key under Entra's key ID.
    let impostor = EntraSigner::new("entra-1");
    assert_refused(
        attestor
            .attest(
                &payload(&impostor.sign(&msi_claims(TENANT, other, "api://spire-server"))),
                &mut NoChallenges,
            )
            .await,
        Code::PermissionDenied,
        "signature does not verify with key \"entra-1\"",
    );
    // Expired beyond the five minutes of leeway.
    let mut claims = msi_claims(TENANT, other, "api://spire-server");
    claims["exp"] = json!(unix_now() - 400);
    assert_refused(
        attestor
            .attest(&payload(&entra.sign(&claims)), &mut NoChallenges)
            .await,
        Code::PermissionDenied,
        "unable to validate token claims: token is expired",
    );
    // Wrong audience (the default resource instead of the tenant's).
    assert_refused(
        attestor
            .attest(
                &payload(&entra.sign(&msi_claims(TENANT, other, "https://management.azure.com/"))),
                &mut NoChallenges,
            )
            .await,
        Code::PermissionDenied,
        "invalid audience claim",
    );
    // Unknown tenant.
    assert_refused(
        attestor
            .attest(
                &payload(&entra.sign(&msi_claims("other-tenant", other, "api://spire-server"))),
                &mut NoChallenges,
            )
            .await,
        Code::PermissionDenied,
        "tenant \"other-tenant\" is not authorized",
    );
    // A VM Resource Manager does not know.
    assert_refused(
        attestor
            .attest(
                &payload(&entra.sign(&msi_claims(TENANT, other, "api://spire-server"))),
                &mut NoChallenges,
            )
            .await,
        Code::Internal,
        "principal \"00000000-0000-0000-0000-000000000001\" not found",
    );
    // Unreadable payloads.
    assert_refused(
        attestor.attest(b"{}", &mut NoChallenges).await,
        Code::InvalidArgument,
        "missing token from attestation data",
    );
    assert_refused(
        attestor.attest(&payload("a.b"), &mut NoChallenges).await,
        Code::InvalidArgument,
        "unable to parse token",
    );
}

/// Without app credentials the server uses its own managed identity: the subscription from
/// IMDS and a Resource Manager token from IMDS (upstream's `DefaultAzureCredential` on a VM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_msi_default_credentials_come_from_the_servers_imds() {
    let dir = tempfile::tempdir().unwrap();
    let ds = datastore(dir.path()).await;
    let cloud = FakeCloud::start();
    let entra = EntraSigner::new("entra-1");
    serve_vm(&cloud, &entra);
    let attestor = azure_attestor(&cloud, &ds, &format!(r#"{{"{TENANT}": {{}}}}"#));
    let token = entra.sign(&msi_claims(
        TENANT,
        PRINCIPAL,
        "https://management.azure.com/",
    ));
    let attested = attestor
        .attest(&payload(&token), &mut NoChallenges)
        .await
        .unwrap();
    assert!(
        attested
            .selector_values
            .contains(&format!("subscription-id:{SUBSCRIPTION}"))
    );
    assert_eq!(cloud.requests_to("/metadata/instance").len(), 1);
    let value: Value = json!(cloud.requests_to("/metadata/identity/oauth2/token").len());
    assert_eq!(value, json!(1));
}
