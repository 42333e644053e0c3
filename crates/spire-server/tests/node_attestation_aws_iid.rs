//! The server's `aws_iid` attestor against moto (the AWS API emulator, real signed requests
//! over loopback), one key at a time, each checked by what an operator sees — the agent ID,
//! the selectors, the refusal — and by the AWS calls moto recorded:
//! `validate_eks_cluster_membership` (an EKS cluster whose managed node group's Auto Scaling
//! group holds the attesting instance), `assume_role`, `skip_block_device`,
//! `account_ids_for_local_validation`, `disable_instance_profile_selectors` and
//! `agent_path_template`. The documents are signed by the fixture's test CA
//! (`extra_ca_cert_path`); every AWS endpoint, STS's included, is moto's through
//! `AwsIidAttestor::with_endpoint`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use spire_common::aws::client::{AUTOSCALING, EC2};
use spire_common::aws::{AwsClient, AwsConfig, Credentials};
use spire_core::spiffe_id::TrustDomain;
use spire_e2e::aws::{AwsCall, Moto};
use spire_e2e::subdir as dir;
use spire_server::datastore::DataStore;
use spire_server::datastore::sql::{SqlConfig, SqlDataStore};
use spire_server::plugins::nodeattestor::aws_iid::{AwsIidAttestor, AwsIidConfig, Data};
use spire_server::plugins::nodeattestor::{Attested, Challenger, NodeAttestor};
use tonic::{Code, Status};

/// The server's own keys (moto maps any unknown key to its default account).
const SERVER_KEY_ID: &str = "AKIDSPIRESERVER";

struct NoChallenges;

#[async_trait]
impl Challenger for NoChallenges {
    async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, Status> {
        Err(Status::internal("no challenges expected"))
    }
}

async fn datastore(dir: &std::path::Path) -> Arc<dyn DataStore> {
    let config = SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: dir.join("ds.sqlite3").to_string_lossy().into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    Arc::new(SqlDataStore::open(&config).await.unwrap())
}

/// Moto with the EC2/IAM fixture (`aws_setup.py`), and a datastore.
struct Setup {
    _tmp: tempfile::TempDir,
    moto: Moto,
    fixture: Value,
    ds: Arc<dyn DataStore>,
}

impl Setup {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let moto = Moto::start(tmp.path());
        let fixture = moto.setup(&dir(tmp.path(), "fixture"));
        let ds = datastore(tmp.path()).await;
        Self {
            _tmp: tmp,
            moto,
            fixture,
            ds,
        }
    }

    /// An attestor whose `plugin_data` is the test CA, the server's keys and `extra`.
    fn attestor(&self, extra: Value) -> AwsIidAttestor {
        let mut data = json!({
            "extra_ca_cert_path": self.fixture["ca_path"],
            "access_key_id": SERVER_KEY_ID,
            "secret_access_key": "server-secret",
        });
        for (k, v) in extra.as_object().unwrap() {
            data[k] = v.clone();
        }
        let data: Data = serde_json::from_value(data).unwrap();
        let config = AwsIidConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.aws_iid.plugin_data",
            data,
        )
        .unwrap();
        AwsIidAttestor::with_endpoint(
            config,
            TrustDomain::new("example.org").unwrap(),
            Arc::clone(&self.ds),
            Some(self.moto.endpoint.clone()),
        )
    }

    async fn attest(&self, attestor: &AwsIidAttestor, doc: &str) -> Result<Attested, Status> {
        let payload = self.fixture["docs"][doc].to_string();
        attestor.attest(payload.as_bytes(), &mut NoChallenges).await
    }

    fn s(&self, pointer: &str) -> String {
        self.fixture
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {pointer} in the fixture"))
            .to_owned()
    }

    fn default_agent_id(&self, instance: usize) -> String {
        format!(
            "spiffe://example.org/spire/agent/aws_iid/{}/us-east-1/{}",
            self.s("/account"),
            self.s(&format!("/instances/{instance}"))
        )
    }

    fn calls(&self) -> Vec<AwsCall> {
        self.moto.recorded_calls()
    }
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

fn has_iamrole(attested: &Attested) -> bool {
    attested
        .selector_values
        .iter()
        .any(|s| s.starts_with("iamrole:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_cluster_membership_admits_only_instances_of_the_clusters_node_groups() {
    let setup = Setup::start().await;
    let member = setup.s("/instances/0");
    let outsider = setup.s("/instances/1");
    let eks = setup
        .moto
        .setup_eks(&dir(setup._tmp.path(), "eks"), "prod", &[&member]);
    assert_eq!(eks["asg_instances"], json!([member]), "{eks}");

    let attestor = setup.attestor(json!({
        "validate_eks_cluster_membership": {"eks_cluster_names": ["prod"]}
    }));
    setup.moto.start_recording();
    let attested = setup.attest(&attestor, "valid").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(0));
    assert!(
        attested
            .selector_values
            .contains(&format!("instance:id:{member}"))
    );
    // The node groups of the cluster, each one's Auto Scaling group.
    let calls = setup.calls();
    let ops: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.service.as_str(), c.operation.as_str()))
        .collect();
    assert!(
        ops.contains(&("eks", "/clusters/prod/node-groups")),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("eks", "/clusters/prod/node-groups/prod-ng")),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("eks", "/clusters/prod/node-groups/prod-empty")),
        "{ops:?}"
    );
    let asg_calls: Vec<&AwsCall> = calls
        .iter()
        .filter(|c| c.operation == "DescribeAutoScalingGroups")
        .collect();
    assert_eq!(asg_calls.len(), 2, "{calls:?}");
    let asg = eks["asg"].as_str().unwrap();
    assert!(
        asg_calls.iter().any(|c| c
            .body
            .contains(&format!("AutoScalingGroupNames.member.1={asg}"))),
        "{asg_calls:?}"
    );

    // An instance of the account that is in no node group of the cluster.
    assert_refused(
        setup.attest(&attestor, "second").await,
        Code::Internal,
        &format!(
            "failed aws eks attestation, nodes id: {outsider} is not part of configured EKS cluster"
        ),
    );

    // The outsider joins the node group: its next attestation, well within the 30 s the
    // instance list is cached, reloads the list on the miss and is admitted.
    moto_client(&setup)
        .query(
            AUTOSCALING,
            "AttachInstances",
            &[
                ("AutoScalingGroupName".into(), asg.to_owned()),
                ("InstanceIds.member.1".into(), outsider.clone()),
            ],
        )
        .await
        .unwrap();
    let attested = setup.attest(&attestor, "second").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(1));

    // A cluster EKS does not know (moto 5.2.0 answers ListNodegroups of an unknown cluster
    // with an HTTP 500 instead of ResourceNotFoundException).
    let unknown = setup.attestor(json!({
        "validate_eks_cluster_membership": {"eks_cluster_names": ["staging"]}
    }));
    assert_refused(
        setup.attest(&unknown, "valid").await,
        Code::Internal,
        &format!(
            "failed aws eks attestation, issue while verifying if nodes id: {member} belong to \
             cluster: issue while getting list of EKS Nodegroups: eks ListNodegroups"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_signs_every_aws_call_with_the_roles_credentials() {
    let setup = Setup::start().await;
    let attestor = setup.attestor(json!({"assume_role": "spire-server-delegate"}));
    setup.moto.start_recording();
    let attested = setup.attest(&attestor, "valid").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(0));
    assert!(has_iamrole(&attested), "{:?}", attested.selector_values);

    let calls = setup.calls();
    // The role of the document's account is assumed with the configured keys...
    let sts: Vec<&AwsCall> = calls.iter().filter(|c| c.service == "sts").collect();
    assert_eq!(sts.len(), 1, "{calls:?}");
    assert_eq!(sts[0].operation, "AssumeRole");
    assert_eq!(sts[0].key_id, SERVER_KEY_ID);
    assert!(
        sts[0].body.contains(&format!(
            "RoleArn=arn%3Aaws%3Aiam%3A%3A{}%3Arole%2Fspire-server-delegate",
            setup.s("/account")
        )),
        "{}",
        sts[0].body
    );
    // ...and EC2 and IAM are called with the role's temporary credentials, not those keys.
    for (service, operation) in [("ec2", "DescribeInstances"), ("iam", "GetInstanceProfile")] {
        let call = calls
            .iter()
            .find(|c| c.service == service && c.operation == operation)
            .unwrap_or_else(|| panic!("no {operation} in {calls:?}"));
        assert_ne!(call.key_id, SERVER_KEY_ID, "{call:?}");
        assert!(call.key_id.starts_with("ASIA"), "{call:?}");
        assert!(call.session_token, "{call:?}");
    }

    // Without assume_role, the configured keys sign the calls and STS is not called.
    setup.moto.start_recording();
    let plain = setup.attestor(json!({}));
    setup.attest(&plain, "valid").await.unwrap();
    let calls = setup.calls();
    assert!(calls.iter().all(|c| c.service != "sts"), "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.key_id == SERVER_KEY_ID && !c.session_token),
        "{calls:?}"
    );
}

/// A client of moto with the test's own keys, for changing the fixture.
fn moto_client(setup: &Setup) -> AwsClient {
    AwsClient::new(AwsConfig {
        region: "us-east-1".into(),
        static_credentials: Some(Credentials::new("AKIDTEST", "test-secret", None)),
        endpoint: Some(setup.moto.endpoint.clone()),
        ..AwsConfig::default()
    })
    .unwrap()
}

/// Detaches the root volume of `instance` in moto: the tampering upstream's block device
/// check exists to catch (the root volume no longer belongs to the instance it booted).
async fn detach_root_volume(setup: &Setup, instance: &str) {
    let client = moto_client(setup);
    let xml = client
        .query(
            EC2,
            "DescribeInstances",
            &[("InstanceId.1".into(), instance.to_owned())],
        )
        .await
        .unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let volume = doc
        .descendants()
        .find(|n| n.has_tag_name("volumeId"))
        .and_then(|n| n.text())
        .unwrap_or_else(|| panic!("no root volume in {xml}"))
        .to_owned();
    client
        .query(
            EC2,
            "DetachVolume",
            &[
                ("VolumeId".into(), volume),
                ("InstanceId".into(), instance.to_owned()),
                ("Device".into(), "/dev/sda1".into()),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_block_device_and_local_validation_accounts_skip_the_root_volume_check() {
    let setup = Setup::start().await;
    let tampered = setup.s("/instances/2");
    detach_root_volume(&setup, &tampered).await;

    // By default the missing root volume refuses the node.
    let default = setup.attestor(json!({}));
    assert_refused(
        setup.attest(&default, "legacy_only").await,
        Code::Internal,
        "failed aws ec2 attestation: failed to locate the root device block mapping with name \
         \"/dev/sda1\"",
    );
    // An untampered instance still attests under the same configuration.
    setup.attest(&default, "valid").await.unwrap();

    // skip_block_device: the check is not made.
    let skip = setup.attestor(json!({"skip_block_device": true}));
    let attested = setup.attest(&skip, "legacy_only").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(2));

    // account_ids_for_local_validation: not made for the listed accounts only.
    let listed = setup.attestor(json!({
        "account_ids_for_local_validation": [setup.s("/account")]
    }));
    let attested = setup.attest(&listed, "legacy_only").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(2));
    assert!(
        attested
            .selector_values
            .contains(&"tag:Name:web-3".to_owned()),
        "the instance is still described: {:?}",
        attested.selector_values
    );
    let other = setup.attestor(json!({"account_ids_for_local_validation": ["999999999999"]}));
    assert_refused(
        setup.attest(&other, "legacy_only").await,
        Code::Internal,
        "failed to locate the root device block mapping",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_profile_selectors_and_agent_path_template() {
    let setup = Setup::start().await;
    let role = setup.s("/role_arn");

    setup.moto.start_recording();
    let default = setup.attestor(json!({}));
    let attested = setup.attest(&default, "valid").await.unwrap();
    assert!(
        attested
            .selector_values
            .contains(&format!("iamrole:{role}")),
        "{:?}",
        attested.selector_values
    );
    assert!(
        setup
            .calls()
            .iter()
            .any(|c| c.operation == "GetInstanceProfile")
    );

    // disable_instance_profile_selectors: no iamrole selector, and IAM is never called.
    setup.moto.start_recording();
    let disabled = setup.attestor(json!({"disable_instance_profile_selectors": true}));
    let without = setup.attest(&disabled, "valid").await.unwrap();
    assert!(!has_iamrole(&without), "{:?}", without.selector_values);
    let calls = setup.calls();
    assert!(calls.iter().all(|c| c.service != "iam"), "{calls:?}");
    let mut expected = attested.selector_values.clone();
    expected.retain(|s| !s.starts_with("iamrole:"));
    assert_eq!(without.selector_values, expected);

    // agent_path_template: the agent ID from the document's fields and the instance's tags.
    let templated = setup.attestor(json!({
        "agent_path_template":
            "/{{ .PluginName }}/{{ .Region }}/{{ .Tags.role }}/{{ .Tags.Name }}/{{ .InstanceID }}"
    }));
    let attested = setup.attest(&templated, "second").await.unwrap();
    assert_eq!(
        attested.agent_id.to_string(),
        format!(
            "spiffe://example.org/spire/agent/aws_iid/us-east-1/frontend/web-2/{}",
            setup.s("/instances/1")
        )
    );
    // The template decides the TOFU key too: the templated ID, once attested, is refused.
    setup
        .ds
        .create_attested_node(spire_server::datastore::AttestedNode {
            spiffe_id: attested.agent_id.to_string(),
            attestation_data_type: "aws_iid".into(),
            cert_serial_number: "1".into(),
            cert_not_after: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_refused(
        setup.attest(&templated, "second").await,
        Code::PermissionDenied,
        "attestation data has already been used to attest an agent",
    );
    // The default template gives this instance another ID, which has not attested.
    let attested = setup.attest(&default, "second").await.unwrap();
    assert_eq!(attested.agent_id.to_string(), setup.default_agent_id(1));
}

/// `server.conf` with `NodeAttestor "aws_iid"` whose `plugin_data` is `body`.
fn server_conf(body: &str) -> String {
    format!(
        r#"
server {{
    trust_domain = "example.org"
    data_dir = "./.data"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{ plugin_data {{}} }}
    NodeAttestor "aws_iid" {{
        plugin_data {{
{body}
        }}
    }}
}}
"#
    )
}

fn eks_clusters(text: &str) -> Option<Vec<String>> {
    use spire_server::catalog::{self, NodeAttestorChoice};
    let config = spire_server::config::load_str("server.conf", text, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let catalog = catalog::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    catalog.node_attestors.iter().find_map(|a| match a {
        NodeAttestorChoice::AwsIid(c) => Some(
            c.validate_eks_cluster_membership
                .as_ref()
                .map(|e| e.cluster_names.clone())
                .unwrap_or_default(),
        ),
        _ => None,
    })
}

#[test]
fn upstreams_eks_block_loads_from_server_conf_in_both_hcl_forms() {
    // The block form of upstream's server_full.conf, and the attribute form of its doc.
    let block = server_conf(
        r#"            validate_eks_cluster_membership {
                eks_cluster_names = ["production-cluster", "staging-cluster"]
            }"#,
    );
    assert_eq!(
        eks_clusters(&block).unwrap(),
        ["production-cluster", "staging-cluster"]
    );
    let attribute = server_conf(
        r#"            validate_eks_cluster_membership = {
                eks_cluster_names = ["production-cluster"]
            }"#,
    );
    assert_eq!(eks_clusters(&attribute).unwrap(), ["production-cluster"]);
    // A key upstream does not have is refused, naming it.
    let unknown = server_conf(
        r#"            validate_eks_cluster_membership {
                cluster_names = ["x"]
            }"#,
    );
    let err = spire_server::config::load_str("server.conf", &unknown, false)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            spire_server::catalog::from_config(&c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_err();
    assert!(err.contains("cluster_names"), "{err}");
}
