//! The server's `azure_imds` attestor against attested documents signed by a chain the test
//! holds (`spire_e2e::azure_imds::ImdsSigner`, trusted through `extra_ca_cert_path`), with
//! Entra ID's OpenID configuration and token endpoint, the intermediate's CA Issuers URL and
//! Azure Resource Graph / Compute served by the loopback stand-in (`FakeCloud`, hand-written
//! since Azure cannot run here; its answers have the real APIs' shapes). The production code
//! verifies the documents and resolves the selectors. Good documents give upstream's agent
//! ID and selectors; forged, wrongly-signed, expired, replayed (an earlier nonce, or TOFU),
//! wrong-SAN and foreign-issuer documents, unknown tenants and unlisted subscriptions are
//! refused with PermissionDenied naming the failed check.

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
use spire_e2e::azure_imds::{INTERMEDIATE_PATH, ImdsSigner};
use spire_e2e::cloud::{FakeCloud, unix_now};
use spire_server::datastore::{AttestedNode, DataStore};
use spire_server::plugins::nodeattestor::{Attested, Challenger, NodeAttestor, azure_imds};
use tonic::{Code, Status};

const DOMAIN: &str = "example.onmicrosoft.com";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SUBSCRIPTION: &str = "d5b40d61-272e-48da-beb9-05f295c42bd6";
const VM_ID: &str = "990878d4-068a-4ac4-9ee9-1231d2218ef2";

/// The agent's side of the challenge: an attested document for the server's nonce (or for
/// `nonce_override`), with the untrusted metadata.
struct Agent<'a> {
    signer: &'a ImdsSigner,
    vm_id: &'a str,
    subscription: &'a str,
    domain: &'a str,
    vmss: Option<&'a str>,
    nonce_override: Option<&'a str>,
    tamper: bool,
}

impl<'a> Agent<'a> {
    fn new(signer: &'a ImdsSigner) -> Self {
        Self {
            signer,
            vm_id: VM_ID,
            subscription: SUBSCRIPTION,
            domain: DOMAIN,
            vmss: None,
            nonce_override: None,
            tamper: false,
        }
    }
}

#[async_trait]
impl Challenger for Agent<'_> {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status> {
        let nonce = String::from_utf8(challenge).unwrap();
        assert_eq!(nonce.len(), 32);
        let nonce = self.nonce_override.map_or(nonce, str::to_owned);
        let mut document = self.signer.document(self.vm_id, self.subscription, &nonce);
        if self.tamper {
            // Another VM claimed under this VM's signature.
            document = claim_other_vm(&document);
        }
        Ok(serde_json::to_vec(&json!({
            "document": document,
            "metadata": {"agentDomain": self.domain, "vmssName": self.vmss},
        }))
        .unwrap())
    }
}

/// `signed`'s PKCS#7 with another vmId written into its content, so the signature no longer
/// covers the content.
fn claim_other_vm(signed: &Value) -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let a = b64.decode(signed["signature"].as_str().unwrap()).unwrap();
    let needle = VM_ID.as_bytes();
    let pos = a.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut forged = a.clone();
    forged[pos..pos + needle.len()].copy_from_slice(b"11111111-2222-3333-4444-555555555555");
    json!({"encoding": "pkcs7", "signature": b64.encode(forged)})
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

async fn record(ds: &Arc<dyn DataStore>, attested: &Attested) {
    ds.create_attested_node(AttestedNode {
        spiffe_id: attested.agent_id.to_string(),
        attestation_data_type: "azure_imds".into(),
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

/// The fake cloud serving `signer`'s intermediate, the tenant, and one VM and one scale set
/// instance in Resource Graph / Compute shapes.
fn serve(cloud: &FakeCloud, signer: &ImdsSigner) {
    let base = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/frontend/providers");
    let vm_resource = format!("{base}/Microsoft.Compute/virtualMachines/blog");
    cloud.with(|s| {
        s.ca_issuers
            .insert(INTERMEDIATE_PATH.into(), signer.intermediate_der.clone());
        s.azure_tenants.insert(DOMAIN.into(), TENANT.into());
        s.graph_vms.push(json!({
            "id": vm_resource,
            "name": "blog",
            "location": "eastus",
            "tags": {"environment": "production", "team": "web", "secret": "x"},
            "vmId": VM_ID,
            "networkProfile": {"networkInterfaces": [{"id": format!("{base}/Microsoft.Network/networkInterfaces/blog-nic")}]},
            "resourceGroup": "frontend",
        }));
        s.graph_nics.insert(
            vm_resource.to_lowercase(),
            vec![json!({
                "name": "blog-nic",
                "resourceGroup": "frontend",
                "subnets": [{"vnet": "vnet", "name": "default"}],
                "securityGroup": {"resourceGroup": "frontend", "name": "webservers"},
            })],
        );
        s.graph_scale_sets.push(json!({
            "id": format!("{base}/Microsoft.Compute/virtualMachineScaleSets/myvmss"),
            "name": "myvmss", "location": "westus2", "resourceGroup": "frontend",
            "subscriptionId": SUBSCRIPTION,
        }));
        s.arm_resources.insert(
            format!("{base}/Microsoft.Compute/virtualMachineScaleSets/myvmss/virtualMachines"),
            json!({"value": [
                {"id": format!("{base}/Microsoft.Compute/virtualMachineScaleSets/myvmss/virtualMachines/0"),
                 "name": "myvmss_0", "location": "westus2", "instanceId": "0",
                 "tags": {"environment": "staging"},
                 "properties": {"vmId": "6f0c1d9a-0000-4000-8000-000000000001"}},
                {"id": format!("{base}/Microsoft.Compute/virtualMachineScaleSets/myvmss/virtualMachines/1"),
                 "name": "myvmss_1", "location": "westus2", "instanceId": "1",
                 "tags": {"environment": "staging"},
                 "properties": {
                    "vmId": "6f0c1d9a-0000-4000-8000-000000000002",
                    "networkProfileConfiguration": {"networkInterfaceConfigurations": [{
                        "name": "myvmss-nic",
                        "properties": {
                            "primary": true,
                            "networkSecurityGroup": {"id": format!("{base}/Microsoft.Network/networkSecurityGroups/vmss-nsg")},
                            "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vmss-vnet/subnets/backend")}}}],
                        },
                    }]},
                 }},
            ]}),
        );
    });
}

fn attestor(
    cloud: &FakeCloud,
    ds: &Arc<dyn DataStore>,
    dir: &std::path::Path,
    signer: &ImdsSigner,
    tenant: &str,
) -> azure_imds::AzureImdsAttestor {
    let roots = dir.join("test-roots.pem");
    std::fs::write(&roots, &signer.root_pem).unwrap();
    let json = format!(
        r#"{{"tenants": {{"{DOMAIN}": {tenant}}},
             "authority_host": "{url}/", "resource_manager_endpoint": "{url}/",
             "ca_issuers_endpoint": "{url}", "extra_ca_cert_path": "{roots}"}}"#,
        url = cloud.url(),
        roots = roots.display()
    );
    let data: azure_imds::Data = serde_json::from_str(&json).unwrap();
    let config = azure_imds::AzureImdsConfig::from_data("server.conf", "azure_imds", data).unwrap();
    azure_imds::AzureImdsAttestor::new(
        config,
        TrustDomain::new("example.org").unwrap(),
        Arc::clone(ds),
    )
    .unwrap()
}

const SECRET_TENANT: &str = r#"{"secret_auth": {"app_id": "app", "app_secret": "secret"},
    "allowed_vm_tags": ["environment", "team"],
    "restrict_to_subscriptions": ["d5b40d61-272e-48da-beb9-05f295c42bd6"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_imds_verifies_the_document_and_resolves_vm_selectors() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = datastore(tmp.path()).await;
    let cloud = FakeCloud::start();
    let signer = ImdsSigner::new("eastus.metadata.azure.com", 24);
    serve(&cloud, &signer);
    let attestor = attestor(&cloud, &ds, tmp.path(), &signer, SECRET_TENANT);

    let attested = attestor
        .attest(b"non_empty_payload", &mut Agent::new(&signer))
        .await
        .unwrap();
    assert_eq!(
        attested.agent_id.to_string(),
        format!("spiffe://example.org/spire/agent/azure_imds/{TENANT}/{SUBSCRIPTION}/{VM_ID}")
    );
    assert!(!attested.can_reattest);
    assert_eq!(
        attested.selector_values,
        vec![
            "network-security-group:frontend:webservers".to_owned(),
            "resource-group:frontend".into(),
            format!("subscription-id:{SUBSCRIPTION}"),
            "virtual-network-subnet:vnet:default".into(),
            "virtual-network:vnet".into(),
            "vm-location:eastus".into(),
            "vm-name:blog".into(),
            "vm-tag:environment:production".into(),
            "vm-tag:team:web".into(),
        ]
    );
    // The intermediate came from the CA Issuers path, the tenant ID from Entra ID's OpenID
    // configuration, Resource Manager was asked with the app secret's token.
    assert_eq!(cloud.requests_to(INTERMEDIATE_PATH).len(), 1);
    assert_eq!(
        cloud
            .requests_to(&format!("/{DOMAIN}/.well-known/openid-configuration"))
            .len(),
        1
    );
    let token = cloud.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"));
    assert!(token[0].body.contains("client_secret=secret"), "{token:?}");
    let graph = cloud.requests_to("/providers/Microsoft.ResourceGraph/resources");
    assert_eq!(graph.len(), 2, "the VM, then its network interfaces");
    assert!(graph[0].body.contains(SUBSCRIPTION), "{graph:?}");

    // The same VM again: trust on first use.
    record(&ds, &attested).await;
    assert_refused(
        attestor.attest(b"x", &mut Agent::new(&signer)).await,
        Code::PermissionDenied,
        "attestation data has already been used to attest an agent",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_imds_refuses_every_bad_document_naming_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = datastore(tmp.path()).await;
    let cloud = FakeCloud::start();
    let signer = ImdsSigner::new("eastus.metadata.azure.com", 24);
    serve(&cloud, &signer);
    let attestor = attestor(&cloud, &ds, tmp.path(), &signer, SECRET_TENANT);

    // Replayed: a document made for an earlier nonce.
    let mut agent = Agent::new(&signer);
    agent.nonce_override = Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::PermissionDenied,
        "nonce mismatch",
    );

    // Forged: the content changed after signing.
    let mut agent = Agent::new(&signer);
    agent.tamper = true;
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::PermissionDenied,
        "failed to validate attested document: signature: signature verification failed",
    );

    // Wrongly signed: a chain to a root the server does not trust.
    let rogue = ImdsSigner::with_issuer_url(
        "eastus.metadata.azure.com",
        24,
        "http://www.microsoft.com/pkiops/certs/rogue.crt",
    );
    cloud.with(|s| {
        s.ca_issuers.insert(
            "/pkiops/certs/rogue.crt".into(),
            rogue.intermediate_der.clone(),
        )
    });
    assert_refused(
        attestor.attest(b"x", &mut Agent::new(&rogue)).await,
        Code::PermissionDenied,
        "certificate chain: certificate chain validation failed: certificate signed by unknown authority",
    );

    // Expired signing certificate (same trusted chain shape, expired an hour ago).
    let expired = ImdsSigner::new("eastus.metadata.azure.com", -1);
    let expired_attestor = attestor_for(&cloud, &ds, tmp.path(), &expired);
    assert_refused(
        expired_attestor
            .attest(b"x", &mut Agent::new(&expired))
            .await,
        Code::PermissionDenied,
        "certificate chain: certificate chain validation failed: x509: certificate has expired",
    );

    // A certificate for another domain than the allowed metadata domains.
    let other_domain = ImdsSigner::new("metadata.example.com", 24);
    let other_attestor = attestor_for(&cloud, &ds, tmp.path(), &other_domain);
    assert_refused(
        other_attestor
            .attest(b"x", &mut Agent::new(&other_domain))
            .await,
        Code::PermissionDenied,
        "certificate SAN: signing certificate validation failed",
    );

    // Back to the trusted chain's intermediate.
    cloud.with(|s| {
        s.ca_issuers
            .insert(INTERMEDIATE_PATH.into(), signer.intermediate_der.clone())
    });

    // A CA Issuers URL off www.microsoft.com is not fetched.
    let foreign = ImdsSigner::with_issuer_url(
        "eastus.metadata.azure.com",
        24,
        "http://attacker.example/ca.crt",
    );
    assert_refused(
        attestor.attest(b"x", &mut Agent::new(&foreign)).await,
        Code::PermissionDenied,
        "issuer URL: CA Issuers URL host \"attacker.example\" does not match expected value \"www.microsoft.com\"",
    );

    // An unknown tenant domain and an unlisted subscription.
    let mut agent = Agent::new(&signer);
    agent.domain = "other.onmicrosoft.com";
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::PermissionDenied,
        "tenant \"other.onmicrosoft.com\" is not authorized",
    );
    let mut agent = Agent::new(&signer);
    agent.subscription = "00000000-0000-0000-0000-000000000000";
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::PermissionDenied,
        "subscription \"00000000-0000-0000-0000-000000000000\" is not authorized",
    );

    // Garbage and a VM ID that is no UUID.
    let mut agent = Agent::new(&signer);
    agent.vm_id = "../../vm";
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::InvalidArgument,
        "invalid VM ID",
    );
    struct Garbage;
    #[async_trait]
    impl Challenger for Garbage {
        async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, Status> {
            Ok(
                br#"{"document": {"encoding": "pkcs7", "signature": "MAA="}, "metadata": {}}"#
                    .to_vec(),
            )
        }
    }
    assert_refused(
        attestor.attest(b"x", &mut Garbage).await,
        Code::PermissionDenied,
        "signature encoding",
    );
    // Nothing was attested.
    assert_eq!(
        ds.count_attested_nodes(&Default::default()).await.unwrap(),
        0
    );
}

fn attestor_for(
    cloud: &FakeCloud,
    ds: &Arc<dyn DataStore>,
    dir: &std::path::Path,
    signer: &ImdsSigner,
) -> azure_imds::AzureImdsAttestor {
    let sub = dir.join(format!("s{}", rand_suffix()));
    std::fs::create_dir_all(&sub).unwrap();
    cloud.with(|s| {
        s.ca_issuers
            .insert(INTERMEDIATE_PATH.into(), signer.intermediate_der.clone())
    });
    attestor(cloud, ds, &sub, signer, SECRET_TENANT)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_imds_scale_set_instance_with_a_token_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = datastore(tmp.path()).await;
    let cloud = FakeCloud::start();
    let signer = ImdsSigner::new("westus2.metadata.azure.com", 24);
    serve(&cloud, &signer);
    let token = tmp.path().join("azure-token");
    // A JWT (its signature is Entra ID's business, not ours).
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzcGlyZSJ9.c2lnbmF0dXJl\n",
    )
    .unwrap();
    let tenant = format!(
        r#"{{"token_auth": {{"app_id": "app", "token_path": "{}"}}, "allowed_vm_tags": ["environment"]}}"#,
        token.display()
    );
    let attestor = attestor(&cloud, &ds, tmp.path(), &signer, &tenant);
    let mut agent = Agent::new(&signer);
    agent.vm_id = "6f0c1d9a-0000-4000-8000-000000000002";
    agent.vmss = Some("myvmss");
    let attested = attestor.attest(b"x", &mut agent).await.unwrap();
    assert_eq!(
        attested.selector_values,
        vec![
            "network-security-group:frontend:vmss-nsg".to_owned(),
            "resource-group:frontend".into(),
            format!("subscription-id:{SUBSCRIPTION}"),
            "virtual-network-subnet:vmss-vnet:backend".into(),
            "virtual-network:vmss-vnet".into(),
            "vm-location:westus2".into(),
            "vm-name:myvmss_1".into(),
            "vm-tag:environment:staging".into(),
            "vmss-name:myvmss".into(),
        ]
    );
    let asked = cloud.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"));
    assert!(
        asked[0]
            .body
            .contains("client_assertion=eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"),
        "{asked:?}"
    );
    let listed = cloud.requests_to(&format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/frontend/providers/Microsoft.Compute/virtualMachineScaleSets/myvmss/virtualMachines?api-version="
    ));
    assert_eq!(listed.len(), 1, "{listed:?}");

    // A scale set name that breaks Azure's naming rules is refused before any query.
    let mut agent = Agent::new(&signer);
    agent.vm_id = "6f0c1d9a-0000-4000-8000-000000000003";
    agent.vmss = Some("bad'name");
    assert_refused(
        attestor.attest(b"x", &mut agent).await,
        Code::Internal,
        "invalid VMSS name",
    );
}
