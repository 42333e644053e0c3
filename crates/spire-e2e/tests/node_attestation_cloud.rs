//! `gcp_iit`, `azure_msi` and `azure_imds` node attestation end to end: the real spire-server and
//! spire-agent binaries against a loopback stand-in for the GCP metadata server, Google's
//! certificates and Compute Engine API, and Azure IMDS, Entra ID and Resource Manager
//! (`spire_e2e::cloud::FakeCloud`), serving tokens the test signs with its own keys. The agent
//! gets upstream's agent ID and selectors; a replayed token (TOFU) and a token of an unknown
//! tenant are refused with PermissionDenied naming the check. Upstream v1.13.3's agent,
//! whose `identity_token_host` is configurable, attests against our server with the same
//! result (wire compatibility); upstream's server and Azure agent hard-code Google's and
//! Azure's hosts, so they cannot be pointed at the loopback stand-in.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spire_e2e::azure_imds::{INTERMEDIATE_PATH, ImdsSigner};
use spire_e2e::cloud::{
    AzureImdsVm, EntraSigner, FakeCloud, GoogleSigner, azure_vm_resources, gce_claims,
    gce_instance, msi_claims,
};
use spire_e2e::subdir as dir;
use spire_e2e::{
    AgentProcess, ServerPaths, ServerProcess, binary, interop_program, run_to_failure,
    selector_strings, server_config,
};

const TD: &str = "example.org";

/// How our agent words a PermissionDenied answer to its attestation.
const DENIED: &str = "the SPIRE server denied the agent: nodeattestor(";

const JOIN_TOKEN_BLOCK: &str = "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

fn start_server(dir: &Path, attestors: &str) -> ServerProcess {
    let socket = dir.join("api.sock");
    let data_dir = dir.join("data");
    let config_path = dir.join("server.conf");
    ServerProcess::start_program_on_free_port(&binary("spire-server"), dir, |port| {
        let connection_string = format!("{}/datastore.sqlite3", data_dir.display());
        let config = server_config(&ServerPaths {
            port,
            socket: &socket,
            data_dir: &data_dir,
            keys: &data_dir.join("keys.json"),
            database_type: "sqlite3",
            connection_string: &connection_string,
            extra_server_keys: "",
        });
        assert!(config.contains(JOIN_TOKEN_BLOCK), "{config}");
        let config = config.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{attestors}"));
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        (config_path.clone(), socket.clone())
    })
}

fn agent_config(dir: &Path, server: &ServerProcess, attestor: &str) -> (PathBuf, PathBuf) {
    let (config_path, socket) = AgentProcess::write_config(dir, server.port, "");
    let text = std::fs::read_to_string(&config_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains(JOIN_TOKEN_BLOCK), "{text}");
    std::fs::write(&config_path, text.replace(JOIN_TOKEN_BLOCK, attestor))
        .unwrap_or_else(|e| panic!("{e}"));
    (config_path, socket)
}

fn start_agent(program: &Path, dir: &Path, server: &ServerProcess, attestor: &str) -> AgentProcess {
    let (config, socket) = agent_config(dir, server, attestor);
    AgentProcess::start_program_with_config(program, dir, &config, socket, None)
}

fn agent_refused(dir: &Path, server: &ServerProcess, attestor: &str) -> String {
    let (config, _) = agent_config(dir, server, attestor);
    let mut command = Command::new(binary("spire-agent"));
    // A refusal ends the agent at once instead of retrying for a minute (retry_bootstrap).
    command
        .args(["run", "-config"])
        .arg(&config)
        .arg("-retryBootstrap=false");
    run_to_failure(
        command,
        &dir.join("agent.log"),
        Duration::from_secs(90),
        "the agent kept running although its attestation should be refused",
    )
}

fn shown_selectors(server: &ServerProcess, agent_id: &str) -> (serde_json::Value, Vec<String>) {
    let shown = server.cli_json(&["agent", "show", "-spiffeID", agent_id]);
    let mut selectors = selector_strings(&shown["selectors"]);
    selectors.sort();
    (shown, selectors)
}

/// The GCP stand-in with one instance, and the server block verifying against it.
fn gcp_setup(tmp: &Path) -> (FakeCloud, GoogleSigner, String) {
    let cloud = FakeCloud::start();
    let google = GoogleSigner::new("f3b7d6c8a1e2");
    let key_file = tmp.join("compute-sa.json");
    std::fs::write(
        &key_file,
        json!({
            "type": "service_account", "project_id": "proj-a", "private_key_id": "sa-1",
            "private_key": google.private_key_pem(),
            "client_email": "spire-server@proj-a.iam.gserviceaccount.com",
            "token_uri": format!("{}/google/token", cloud.url()),
        })
        .to_string(),
    )
    .unwrap();
    cloud.with(|s| {
        s.google_certs = google.certs();
        s.gcp_identity_token = google.sign(&gce_claims("proj-a", "us-west1-b", "4455", "web-1"));
        s.gce_instances.insert(
            "projects/proj-a/zones/us-west1-b/instances/web-1".into(),
            gce_instance(
                "web-1",
                "us-west1-b",
                &["http-server"],
                json!({"team": "payments"}),
                json!([{"key": "role", "value": "frontend"}]),
            ),
        );
    });
    let block = format!(
        r#"    NodeAttestor "gcp_iit" {{
        plugin_data {{
            projectid_allow_list = ["proj-a"]
            use_instance_metadata = true
            allowed_label_keys = ["team"]
            allowed_metadata_keys = ["role"]
            service_account_file = "{key}"
            google_certs_url = "{url}/oauth2/v1/certs"
            compute_endpoint = "{url}/compute/v1/"
        }}
    }}
"#,
        key = key_file.display(),
        url = cloud.url()
    );
    (cloud, google, block)
}

fn gcp_agent_block(cloud: &FakeCloud) -> String {
    format!(
        "    NodeAttestor \"gcp_iit\" {{\n        plugin_data {{\n            identity_token_host = \"{}\"\n        }}\n    }}\n",
        cloud.host()
    )
}

const GCP_AGENT_ID: &str = "spiffe://example.org/spire/agent/gcp_iit/proj-a/4455";

fn gcp_expected_selectors() -> Vec<String> {
    let mut v: Vec<String> = [
        "gcp_iit:project-id:proj-a",
        "gcp_iit:zone:us-west1-b",
        "gcp_iit:instance-name:web-1",
        "gcp_iit:tag:http-server",
        "gcp_iit:sa:agent@p.iam.gserviceaccount.com",
        "gcp_iit:label:team:payments",
        "gcp_iit:metadata:role:frontend",
    ]
    .map(String::from)
    .to_vec();
    v.sort();
    v
}

#[test]
fn gcp_iit_agent_attests_with_its_identity_token_and_a_replay_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, _google, block) = gcp_setup(tmp.path());
    let server = start_server(&dir(tmp.path(), "server"), &block);
    let agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent"),
        &server,
        &gcp_agent_block(&cloud),
    );
    let (shown, selectors) = shown_selectors(&server, GCP_AGENT_ID);
    assert_eq!(shown["attestation_type"], "gcp_iit", "{shown}");
    assert_eq!(shown["can_reattest"], false, "{shown}");
    assert_eq!(selectors, gcp_expected_selectors());
    // The agent asked the metadata server as upstream's does.
    let asked = cloud.requests_to("/computeMetadata/v1/instance/service-accounts/default/identity");
    assert_eq!(asked.len(), 1, "{asked:?}");
    drop(agent);

    // Another agent presenting the same token (a copied token, or the same VM after losing
    // its agent data) is refused: the agent ID already exists.
    let out = agent_refused(
        &dir(tmp.path(), "replay"),
        &server,
        &gcp_agent_block(&cloud),
    );
    assert!(
        out.contains(DENIED)
            && out.contains("attestation data has already been used to attest an agent"),
        "{out}"
    );
    // After the operator evicts the agent, the VM may attest again.
    server.cli_ok(&["agent", "evict", "-spiffeID", GCP_AGENT_ID]);
    let _again = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "again"),
        &server,
        &gcp_agent_block(&cloud),
    );
    let (_, selectors) = shown_selectors(&server, GCP_AGENT_ID);
    assert_eq!(selectors, gcp_expected_selectors());
}

/// Upstream v1.13.3's agent fetches the token from the same loopback metadata server
/// (`identity_token_host`) and our server gives it the same agent ID and selectors.
#[test]
fn gcp_iit_upstream_agent_attests_against_our_server_with_the_same_identity() {
    let upstream_agent = interop_program("SPIRE_UPSTREAM_AGENT");
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, _google, block) = gcp_setup(tmp.path());
    let server = start_server(&dir(tmp.path(), "server"), &block);
    let _agent = start_agent(
        &upstream_agent,
        &dir(tmp.path(), "agent"),
        &server,
        &gcp_agent_block(&cloud),
    );
    let (shown, selectors) = shown_selectors(&server, GCP_AGENT_ID);
    assert_eq!(shown["attestation_type"], "gcp_iit", "{shown}");
    assert_eq!(selectors, gcp_expected_selectors());
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const PRINCIPAL: &str = "5c1f0a2e-3b4d-4e6f-8a9b-0c1d2e3f4a5b";
const SUBSCRIPTION: &str = "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e";
const RESOURCE: &str = "api://spire-server-app";

fn azure_setup() -> (FakeCloud, EntraSigner) {
    let cloud = FakeCloud::start();
    let entra = EntraSigner::new("nOo3ZDrODXEK1jKWhXslHR_KXEg");
    let (vm_id, resources) = azure_vm_resources(
        SUBSCRIPTION,
        "agents",
        "agent-vm",
        "agents-nsg",
        "prod-vnet",
        "default",
    );
    cloud.with(|s| {
        s.azure_jwks = entra.jwks();
        s.arm_resources.extend(resources);
        s.vms_by_principal.insert(PRINCIPAL.into(), vm_id);
        s.azure_msi_tokens.insert(
            RESOURCE.into(),
            entra.sign(&msi_claims(TENANT, PRINCIPAL, RESOURCE)),
        );
    });
    (cloud, entra)
}

fn azure_server_block(cloud: &FakeCloud, tenant: &str) -> String {
    format!(
        r#"    NodeAttestor "azure_msi" {{
        plugin_data {{
            tenants = {{
                "{tenant}" = {{
                    resource_id = "{RESOURCE}"
                    subscription_id = "{SUBSCRIPTION}"
                    app_id = "spire-server-app-id"
                    app_secret = "app-secret"
                }}
            }}
            authority_host = "{url}/"
            resource_manager_endpoint = "{url}/"
        }}
    }}
"#,
        url = cloud.url()
    )
}

fn azure_agent_block(cloud: &FakeCloud) -> String {
    format!(
        "    NodeAttestor \"azure_msi\" {{\n        plugin_data {{\n            resource_id = \"{RESOURCE}\"\n            imds_endpoint = \"{}\"\n        }}\n    }}\n",
        cloud.url()
    )
}

#[test]
fn azure_msi_agent_attests_with_its_msi_token_and_vm_selectors() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, _entra) = azure_setup();
    let server = start_server(
        &dir(tmp.path(), "server"),
        &azure_server_block(&cloud, TENANT),
    );
    let _agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent"),
        &server,
        &azure_agent_block(&cloud),
    );
    let agent_id = format!("spiffe://{TD}/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}");
    let (shown, selectors) = shown_selectors(&server, &agent_id);
    assert_eq!(shown["attestation_type"], "azure_msi", "{shown}");
    assert_eq!(shown["can_reattest"], false, "{shown}");
    let mut expected = vec![
        format!("azure_msi:subscription-id:{SUBSCRIPTION}"),
        "azure_msi:vm-name:agents:agent-vm".to_owned(),
        "azure_msi:network-security-group:agents:agents-nsg".to_owned(),
        "azure_msi:virtual-network:agents:prod-vnet".to_owned(),
        "azure_msi:virtual-network-subnet:agents:prod-vnet:default".to_owned(),
    ];
    expected.sort();
    assert_eq!(selectors, expected);
    let asked = cloud.requests_to("/metadata/identity/oauth2/token");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0]
            .uri
            .contains("resource=api%3A%2F%2Fspire-server-app"),
        "{asked:?}"
    );
}

#[test]
fn azure_msi_token_of_an_unknown_tenant_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, _entra) = azure_setup();
    let server = start_server(
        &dir(tmp.path(), "server"),
        &azure_server_block(&cloud, "00000000-0000-0000-0000-000000000000"),
    );
    let out = agent_refused(
        &dir(tmp.path(), "agent"),
        &server,
        &azure_agent_block(&cloud),
    );
    assert!(
        out.contains(DENIED) && out.contains(&format!("tenant \"{TENANT}\" is not authorized")),
        "{out}"
    );
    assert!(server.agent_ids().is_empty(), "no agent was created");
}

const IMDS_DOMAIN: &str = "example.onmicrosoft.com";
const IMDS_VM_ID: &str = "990878d4-068a-4ac4-9ee9-1231d2218ef2";

/// The Azure stand-in for `azure_imds`: IMDS signing documents with the test's chain, the
/// intermediate at its CA Issuers path, the tenant's OpenID configuration, and the VM and its
/// network interface in Resource Graph.
fn azure_imds_setup(tmp: &Path) -> (FakeCloud, Arc<ImdsSigner>, PathBuf) {
    let cloud = FakeCloud::start();
    let signer = Arc::new(ImdsSigner::new("eastus.metadata.azure.com", 24));
    let roots = tmp.join("azure-test-root.pem");
    std::fs::write(&roots, &signer.root_pem).unwrap();
    let base = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/agents/providers");
    let vm = format!("{base}/Microsoft.Compute/virtualMachines/agent-vm");
    cloud.with(|s| {
        s.azure_imds_vm = Some(AzureImdsVm {
            signer: Arc::clone(&signer),
            vm_id: IMDS_VM_ID.into(),
            subscription: SUBSCRIPTION.into(),
            fixed_answer: None,
        });
        s.azure_instance = json!({"compute": {"name": "agent-vm", "subscriptionId": SUBSCRIPTION, "resourceGroupName": "agents", "vmScaleSetName": "", "location": "eastus", "vmId": IMDS_VM_ID}});
        s.ca_issuers
            .insert(INTERMEDIATE_PATH.into(), signer.intermediate_der.clone());
        s.azure_tenants.insert(IMDS_DOMAIN.into(), TENANT.into());
        s.graph_vms.push(json!({
            "id": vm, "name": "agent-vm", "location": "eastus",
            "tags": {"role": "agent"}, "vmId": IMDS_VM_ID, "resourceGroup": "agents",
            "networkProfile": {"networkInterfaces": [{"id": format!("{base}/Microsoft.Network/networkInterfaces/agent-vm-nic")}]},
        }));
        s.graph_nics.insert(
            vm.to_lowercase(),
            vec![json!({"name": "agent-vm-nic", "resourceGroup": "agents",
                "subnets": [{"vnet": "prod-vnet", "name": "default"}],
                "securityGroup": {"resourceGroup": "agents", "name": "agents-nsg"}})],
        );
    });
    (cloud, signer, roots)
}

fn azure_imds_server_block(cloud: &FakeCloud, roots: &Path) -> String {
    format!(
        r#"    NodeAttestor "azure_imds" {{
        plugin_data {{
            tenants = {{
                "{IMDS_DOMAIN}" = {{
                    secret_auth = {{
                        app_id = "spire-server-app-id"
                        app_secret = "app-secret"
                    }}
                    restrict_to_subscriptions = ["{SUBSCRIPTION}"]
                    allowed_vm_tags = ["role"]
                }}
            }}
            authority_host = "{url}/"
            resource_manager_endpoint = "{url}/"
            ca_issuers_endpoint = "{url}"
            extra_ca_cert_path = "{roots}"
        }}
    }}
"#,
        url = cloud.url(),
        roots = roots.display()
    )
}

fn azure_imds_agent_block(cloud: &FakeCloud) -> String {
    format!(
        "    NodeAttestor \"azure_imds\" {{\n        plugin_data {{\n            tenant_domain = \"{IMDS_DOMAIN}\"\n            imds_endpoint = \"{}\"\n        }}\n    }}\n",
        cloud.url()
    )
}

#[test]
fn azure_imds_agent_attests_with_an_attested_document_and_a_workload_gets_an_svid() {
    let tmp = tempfile::tempdir().unwrap();
    let (cloud, signer, roots) = azure_imds_setup(tmp.path());
    let server = start_server(
        &dir(tmp.path(), "server"),
        &azure_imds_server_block(&cloud, &roots),
    );
    let mut agent = start_agent(
        &binary("spire-agent"),
        &dir(tmp.path(), "agent"),
        &server,
        &azure_imds_agent_block(&cloud),
    );
    // Upstream's documented agent ID and selectors for this VM.
    let agent_id =
        format!("spiffe://{TD}/spire/agent/azure_imds/{TENANT}/{SUBSCRIPTION}/{IMDS_VM_ID}");
    let (shown, selectors) = shown_selectors(&server, &agent_id);
    assert_eq!(shown["attestation_type"], "azure_imds", "{shown}");
    assert_eq!(shown["can_reattest"], false, "{shown}");
    let mut expected = vec![
        format!("azure_imds:subscription-id:{SUBSCRIPTION}"),
        "azure_imds:vm-name:agent-vm".to_owned(),
        "azure_imds:vm-location:eastus".to_owned(),
        "azure_imds:resource-group:agents".to_owned(),
        "azure_imds:vm-tag:role:agent".to_owned(),
        "azure_imds:network-security-group:agents:agents-nsg".to_owned(),
        "azure_imds:virtual-network:prod-vnet".to_owned(),
        "azure_imds:virtual-network-subnet:prod-vnet:default".to_owned(),
    ];
    expected.sort();
    assert_eq!(selectors, expected);
    // The document was asked for the server's 32-character nonce.
    let asked = cloud.requests_to("/metadata/attested/document");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].uri.contains("api-version=2025-04-07&nonce="),
        "{asked:?}"
    );

    // A workload on the attested node gets its SVID.
    let uid = spire_e2e::current_uid();
    server.create_uid_entry(
        &agent_id,
        &format!("spiffe://{TD}/azure-workload"),
        uid,
        &[],
    );
    let fetched = agent.cli_eventually(&["api", "fetch", "x509"], Duration::from_secs(90));
    assert!(
        fetched.contains(&format!("spiffe://{TD}/azure-workload")),
        "{fetched}"
    );
    agent.stop();

    // The same VM from a fresh agent (its data lost, or a copy): trust on first use.
    let out = agent_refused(
        &dir(tmp.path(), "again"),
        &server,
        &azure_imds_agent_block(&cloud),
    );
    assert!(
        out.contains(DENIED)
            && out.contains("attestation data has already been used to attest an agent"),
        "{out}"
    );

    // A document replayed from earlier (an old nonce) is refused.
    let old = signer.document(IMDS_VM_ID, SUBSCRIPTION, "0123456789abcdef0123456789abcdef");
    cloud.with(|s| {
        if let Some(vm) = s.azure_imds_vm.as_mut() {
            vm.fixed_answer = Some(old);
        }
    });
    let out = agent_refused(
        &dir(tmp.path(), "replayed"),
        &server,
        &azure_imds_agent_block(&cloud),
    );
    assert!(
        out.contains(DENIED) && out.contains("nonce mismatch"),
        "{out}"
    );
}
