//! The `aws_iid` node attestor (server side): the agent sends its EC2 instance identity
//! document with the signatures IMDS served; the server verifies the signature against AWS's
//! certificate for the document's region, looks the instance up with `ec2:DescribeInstances`
//! (and its instance profile with `iam:GetInstanceProfile`), refuses a document whose agent
//! ID already attested (trust on first use: the agent cannot re-attest), and issues
//! `spiffe://<td>/spire/agent/aws_iid/<account>/<region>/<instance>` unless
//! `agent_path_template` says otherwise. Selectors `tag:`, `sg:id:`, `sg:name:`, `iamrole:`,
//! `image:id:`, `instance:id:`, `region:`, `az:`. `verify_organization` and
//! `validate_eks_cluster_membership` restrict attestation to accounts of an AWS organization
//! and to instances of EKS clusters. Keys, defaults and messages are upstream's
//! (`doc/plugin_server_nodeattestor_aws_iid.md`); see docs/cloud.md for what differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use spire_common::aws::client::{EC2, IAM};
use spire_common::aws::iid::{IidAttestationData, InstanceIdentityDocument, PLUGIN_NAME};
use spire_common::aws::{AwsClient, AwsConfig, Credentials};
use spire_core::agent_path_template::{Template, Value};
use spire_core::aws_iid::{self as verify, SignatureKind};
use spire_core::config::de;
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use tokio::sync::Mutex;
use tonic::{Code, Status};

use super::aws_iid_ec2 as ec2;
use super::aws_iid_eks::{EksConfig, EksData, EksValidator};
use super::aws_iid_org::{OrgConfig, OrgData, OrgValidator};
use super::{Attested, Challenger, NodeAttestor, plugin_error};
use crate::config::ConfigError;
use crate::datastore::DataStore;

/// The attestor's name in configs, attestation data and selectors.
pub const NAME: &str = PLUGIN_NAME;

/// Upstream's default agent path.
pub const DEFAULT_TEMPLATE: &str =
    "/{{ .PluginName}}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}";

/// Partitions upstream accepts.
const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// Seconds the root volume and the primary network interface may be attached apart.
const MAX_SECONDS_BETWEEN_DEVICE_ATTACHMENTS: i64 = 60;

/// `plugin_data` as written in `server.conf`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    #[serde(default, deserialize_with = "de::opt_string")]
    access_key_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    secret_access_key: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    skip_block_device: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    disable_instance_profile_selectors: Option<bool>,
    #[serde(default, deserialize_with = "de::string_list")]
    account_ids_for_local_validation: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    agent_path_template: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    assume_role: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    partition: Option<String>,
    #[serde(default, deserialize_with = "de::opt_block")]
    verify_organization: Option<OrgData>,
    #[serde(default, deserialize_with = "de::opt_block")]
    validate_eks_cluster_membership: Option<EksData>,
    /// Ours: a PEM file of further certificates trusted to sign documents of any region.
    #[serde(default, deserialize_with = "de::opt_string")]
    extra_ca_cert_path: Option<String>,
}

/// The validated `plugin_data`.
#[derive(Debug, Clone)]
pub struct AwsIidConfig {
    /// `access_key_id` / `secret_access_key` (else the usual AWS credential sources).
    pub credentials: Option<(String, String)>,
    /// `skip_block_device`.
    pub skip_block_device: bool,
    /// `disable_instance_profile_selectors`.
    pub disable_instance_profile_selectors: bool,
    /// `account_ids_for_local_validation`: accounts whose block devices are not checked.
    pub local_valid_account_ids: BTreeSet<String>,
    /// The agent path template.
    pub template: Template,
    /// Its text.
    pub template_text: String,
    /// `assume_role`: a role name assumed in the instance's account.
    pub assume_role: Option<String>,
    /// `partition`.
    pub partition: String,
    /// Certificates of `extra_ca_cert_path`, DER.
    pub extra_ca_certs: Vec<Vec<u8>>,
    /// `verify_organization`: only accounts of the AWS organization attest.
    pub verify_organization: Option<OrgConfig>,
    /// `validate_eks_cluster_membership`: only instances of the EKS clusters attest.
    pub validate_eks_cluster_membership: Option<EksConfig>,
}

impl PartialEq for AwsIidConfig {
    fn eq(&self, other: &Self) -> bool {
        self.credentials == other.credentials
            && self.skip_block_device == other.skip_block_device
            && self.disable_instance_profile_selectors == other.disable_instance_profile_selectors
            && self.local_valid_account_ids == other.local_valid_account_ids
            && self.template_text == other.template_text
            && self.assume_role == other.assume_role
            && self.partition == other.partition
            && self.extra_ca_certs == other.extra_ca_certs
            && self.verify_organization == other.verify_organization
            && self.validate_eks_cluster_membership == other.validate_eks_cluster_membership
    }
}

impl Eq for AwsIidConfig {}

impl AwsIidConfig {
    /// Validates the parsed `plugin_data` of `file` at `path`.
    pub fn from_data(file: &str, path: &str, data: Data) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| {
            ConfigError::invalid(file, format!("{path}.{key}"), message)
        };
        let id = data.access_key_id.filter(|v| !v.is_empty());
        let secret = data.secret_access_key.filter(|v| !v.is_empty());
        let credentials = match (id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "secret_access_key",
                    "configuration missing secret access key, but has access key id".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "access_key_id",
                    "configuration missing access key id, but has secret access key".into(),
                ));
            }
        };
        let template_text = data
            .agent_path_template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        let template = Template::parse(&template_text).map_err(|e| {
            invalid(
                "agent_path_template",
                format!("failed to parse agent svid template: {template_text:?}: {e}"),
            )
        })?;
        let partition = data
            .partition
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "aws".to_owned());
        if !PARTITIONS.contains(&partition.as_str()) {
            return Err(invalid(
                "partition",
                format!("invalid partition {partition:?}, must be one of: {PARTITIONS:?}"),
            ));
        }
        let extra_ca_certs = match data.extra_ca_cert_path.filter(|p| !p.is_empty()) {
            None => Vec::new(),
            Some(p) => {
                let text = std::fs::read(&p).map_err(|e| {
                    invalid("extra_ca_cert_path", format!("unable to read {p:?}: {e}"))
                })?;
                spire_core::pem::decode_certificates(&text).map_err(|e| {
                    invalid(
                        "extra_ca_cert_path",
                        format!("no PEM certificates in {p:?}: {e}"),
                    )
                })?
            }
        };
        let verify_organization = data
            .verify_organization
            .map(|org| OrgConfig::from_data(file, &format!("{path}.verify_organization"), org))
            .transpose()?;
        let validate_eks_cluster_membership = data.validate_eks_cluster_membership.map(|eks| {
            EksConfig::from_data(
                file,
                &format!("{path}.validate_eks_cluster_membership"),
                eks,
            )
        });
        Ok(Self {
            credentials,
            skip_block_device: data.skip_block_device.unwrap_or(false),
            disable_instance_profile_selectors: data
                .disable_instance_profile_selectors
                .unwrap_or(false),
            local_valid_account_ids: data.account_ids_for_local_validation.into_iter().collect(),
            template,
            template_text,
            assume_role: data.assume_role.filter(|r| !r.is_empty()),
            partition,
            extra_ca_certs,
            verify_organization,
            validate_eks_cluster_membership,
        })
    }
}

/// The server's `aws_iid` attestor.
pub struct AwsIidAttestor {
    config: AwsIidConfig,
    trust_domain: TrustDomain,
    datastore: Arc<dyn DataStore>,
    /// One client per `account@region`, as upstream caches them.
    clients: Mutex<HashMap<String, AwsClient>>,
    /// The `verify_organization` check, or why its client could not be made.
    org: Option<Result<OrgValidator, String>>,
    /// The `validate_eks_cluster_membership` check.
    eks: Option<EksValidator>,
    /// Where every AWS call goes instead of AWS's endpoints (tests: an emulator).
    endpoint: Option<String>,
}

impl AwsIidAttestor {
    /// An attestor for `trust_domain`; `datastore` answers whether an agent ID attested.
    /// AWS is reached at its usual endpoints (or those of `AWS_ENDPOINT_URL[_<SERVICE>]`).
    pub fn new(
        config: AwsIidConfig,
        trust_domain: TrustDomain,
        datastore: Arc<dyn DataStore>,
    ) -> Self {
        Self::with_endpoint(config, trust_domain, datastore, None)
    }

    /// As [`Self::new`], with every AWS call (EC2, IAM, EKS, Auto Scaling, Organizations,
    /// STS) sent to `endpoint` when it is set: how tests reach an AWS emulator without
    /// changing the process environment.
    pub fn with_endpoint(
        config: AwsIidConfig,
        trust_domain: TrustDomain,
        datastore: Arc<dyn DataStore>,
        endpoint: Option<String>,
    ) -> Self {
        let org = config.verify_organization.clone().map(|org| {
            let credentials = config
                .credentials
                .as_ref()
                .map(|(id, secret)| Credentials::new(id, secret, None));
            OrgValidator::new(org, &config.partition, credentials, endpoint.clone())
                .map_err(|e| e.to_string())
        });
        let eks = config
            .validate_eks_cluster_membership
            .clone()
            .map(EksValidator::new);
        Self {
            config,
            trust_domain,
            datastore,
            clients: Mutex::new(HashMap::new()),
            org,
            eks,
            endpoint,
        }
    }

    async fn client(&self, region: &str, account_id: &str) -> Result<AwsClient, Status> {
        let key = format!("{account_id}@{region}");
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = AwsClient::new(AwsConfig {
            region: region.to_owned(),
            static_credentials: self
                .config
                .credentials
                .as_ref()
                .map(|(id, secret)| Credentials::new(id, secret, None)),
            assume_role_arn: self.config.assume_role.as_ref().map(|role| {
                format!(
                    "arn:{}:iam::{account_id}:role/{role}",
                    self.config.partition
                )
            }),
            endpoint: self.endpoint.clone(),
            sts_endpoint: self.endpoint.clone(),
        })
        .map_err(|e| err(Code::Internal, format!("failed to create client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The document, once its signature verified.
    fn verified_document(&self, payload: &[u8]) -> Result<InstanceIdentityDocument, Status> {
        let data: IidAttestationData = serde_json::from_slice(payload).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("failed to unmarshal the attestation data: {e}"),
            )
        })?;
        let doc: InstanceIdentityDocument = serde_json::from_str(&data.document).map_err(|e| {
            err(
                Code::InvalidArgument,
                format!("failed to unmarshal the IID: {e}"),
            )
        })?;
        let (signature, kind) = if data.signature_rsa2048.is_empty() {
            (&data.signature, SignatureKind::Rsa1024)
        } else {
            (&data.signature_rsa2048, SignatureKind::Rsa2048)
        };
        if signature.is_empty() {
            return Err(err(
                Code::InvalidArgument,
                "instance identity cryptographic signature is required",
            ));
        }
        let mut certs: Vec<Vec<u8>> = verify::aws_ca_certificate(&doc.region, kind)
            .into_iter()
            .collect();
        certs.extend(self.config.extra_ca_certs.iter().cloned());
        if certs.is_empty() {
            return Err(err(
                Code::Internal,
                format!(
                    "failed to load the AWS CA certificate for region {:?}: unsupported region",
                    doc.region
                ),
            ));
        }
        let checked = match kind {
            SignatureKind::Rsa1024 => verify::verify_rsa1024(&certs, &data.document, signature),
            SignatureKind::Rsa2048 => verify::verify_pkcs7(&certs, &data.document, signature),
        };
        checked.map_err(|e| {
            err(
                Code::PermissionDenied,
                format!("instance identity document refused: {e}"),
            )
        })?;
        Ok(doc)
    }

    fn agent_id(
        &self,
        doc: &InstanceIdentityDocument,
        tags: &BTreeMap<String, String>,
    ) -> Result<SpiffeId, Status> {
        let fields: BTreeMap<String, Value> = [
            ("InstanceID", Value::str(&doc.instance_id)),
            ("AccountID", Value::str(&doc.account_id)),
            ("Region", Value::str(&doc.region)),
            ("PluginName", Value::str(NAME)),
            // Upstream leaves it empty in this attestor's template data.
            ("TrustDomain", Value::str("")),
            (
                "Tags",
                Value::Map(
                    tags.iter()
                        .map(|(k, v)| (k.clone(), Value::str(v)))
                        .collect(),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let path = self
            .config
            .template
            .execute(&Value::Map(fields))
            .map_err(|e| err(Code::Internal, format!("failed to create spiffe ID: {e}")))?;
        spire_core::x509pop::agent_id_from_path(&self.trust_domain, &path)
            .map_err(|e| err(Code::Internal, format!("failed to create spiffe ID: {e}")))
    }
}

fn err(code: Code, message: impl std::fmt::Display) -> Status {
    plugin_error(NAME, code, message)
}

#[async_trait]
impl NodeAttestor for AwsIidAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attest(
        &self,
        payload: &[u8],
        _challenger: &mut dyn Challenger,
    ) -> Result<Attested, Status> {
        let doc = self.verified_document(payload)?;
        if let Some(org) = &self.org {
            let org = org
                .as_ref()
                .map_err(|e| err(Code::Internal, format!("failed to get org client: {e}")))?;
            let member = org.is_member_account(&doc.account_id).await.map_err(|e| {
                err(
                    Code::Internal,
                    format!(
                        "failed aws ec2 attestation, issue while verifying if nodes account id: \
                         {} belong to org: {e}",
                        doc.account_id
                    ),
                )
            })?;
            if !member {
                return Err(err(
                    Code::Internal,
                    format!(
                        "failed aws ec2 attestation, nodes account id: {} is not part of \
                         configured organization or doesn't have ACTIVE status",
                        doc.account_id
                    ),
                ));
            }
        }
        let client = self.client(&doc.region, &doc.account_id).await?;
        if let Some(eks) = &self.eks {
            let member = eks
                .is_node_in_cluster(&client, &doc.instance_id)
                .await
                .map_err(|e| {
                    err(
                        Code::Internal,
                        format!(
                            "failed aws eks attestation, issue while verifying if nodes id: {} \
                             belong to cluster: {e}",
                            doc.instance_id
                        ),
                    )
                })?;
            if !member {
                return Err(err(
                    Code::Internal,
                    format!(
                        "failed aws eks attestation, nodes id: {} is not part of configured EKS \
                         cluster",
                        doc.instance_id
                    ),
                ));
            }
        }
        let xml = client
            .query(
                EC2,
                "DescribeInstances",
                &[
                    ("InstanceId.1".into(), doc.instance_id.clone()),
                    ("Filter.1.Name".into(), "instance-state-name".into()),
                    ("Filter.1.Value.1".into(), "pending".into()),
                    ("Filter.1.Value.2".into(), "running".into()),
                ],
            )
            .await
            .map_err(|e| err(Code::Internal, format!("failed to describe instance: {e}")))?;
        let instances = ec2::parse_describe_instances(&xml).map_err(|e| {
            err(
                Code::Internal,
                format!("failed to describe instance: unreadable answer: {e}"),
            )
        })?;
        let in_trusted_account = self
            .config
            .local_valid_account_ids
            .contains(&doc.account_id);
        let check_block_device = !in_trusted_account && !self.config.skip_block_device;
        let mut tags = BTreeMap::new();
        if self.config.template_text.contains(".Tags") || check_block_device {
            let Some(instance) = instances.first() else {
                return Err(err(
                    Code::Internal,
                    "failed to query AWS via describe-instances: returned no instances",
                ));
            };
            tags = instance.tags.iter().cloned().collect();
            if check_block_device {
                ec2::check_block_device(instance, MAX_SECONDS_BETWEEN_DEVICE_ATTACHMENTS)
                    .map_err(|e| err(Code::Internal, format!("failed aws ec2 attestation: {e}")))?;
            }
        }
        let agent_id = self.agent_id(&doc, &tags)?;

        // Trust on first use: the document cannot be used by a second agent.
        let attested = self
            .datastore
            .fetch_attested_node(agent_id.as_str())
            .await
            .map_err(|e| err(Code::Internal, format!("failed to fetch agent: {e}")))?;
        if attested.is_some() {
            tracing::error!(
                spiffe_id = %agent_id,
                "Attestation data has already been used to attest an agent"
            );
            return Err(err(
                Code::PermissionDenied,
                "attestation data has already been used to attest an agent",
            ));
        }

        let mut selectors = BTreeSet::new();
        for instance in &instances {
            for (k, v) in &instance.tags {
                selectors.insert(format!("tag:{k}:{v}"));
            }
            for (id, name) in &instance.security_groups {
                selectors.insert(format!("sg:id:{id}"));
                selectors.insert(format!("sg:name:{name}"));
            }
            if let Some(arn) = instance
                .instance_profile_arn
                .as_deref()
                .filter(|_| !self.config.disable_instance_profile_selectors)
            {
                let name = ec2::instance_profile_name(arn).map_err(|e| err(Code::Internal, e))?;
                let xml = client
                    .query(
                        IAM,
                        "GetInstanceProfile",
                        &[("InstanceProfileName".into(), name)],
                    )
                    .await
                    .map_err(|e| {
                        err(
                            Code::Internal,
                            format!("failed to get intance profile: {e}"),
                        )
                    })?;
                for role in ec2::parse_instance_profile_roles(&xml).map_err(|e| {
                    err(
                        Code::Internal,
                        format!("failed to get intance profile: {e}"),
                    )
                })? {
                    selectors.insert(format!("iamrole:{role}"));
                }
            }
        }
        selectors.insert(format!("image:id:{}", doc.image_id));
        selectors.insert(format!("instance:id:{}", doc.instance_id));
        selectors.insert(format!("region:{}", doc.region));
        selectors.insert(format!("az:{}", doc.availability_zone));
        Ok(Attested {
            agent_id,
            selector_values: selectors.into_iter().collect(),
            can_reattest: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AwsIidConfig, ConfigError> {
        let data: Data = serde_json::from_str(json).unwrap();
        AwsIidConfig::from_data(
            "server.conf",
            "plugins.NodeAttestor.aws_iid.plugin_data",
            data,
        )
    }

    #[test]
    fn upstream_validation_and_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.template_text, DEFAULT_TEMPLATE);
        assert_eq!(c.partition, "aws");
        let e = parse(r#"{"access_key_id": "A"}"#).unwrap_err().to_string();
        assert!(e.contains("missing secret access key"), "{e}");
        let e = parse(r#"{"partition": "mars"}"#).unwrap_err().to_string();
        assert!(e.contains("invalid partition"), "{e}");
        let e = parse(r#"{"verify_organization": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify_organization"), "{e}");
        assert!(e.contains("management_account_id"), "{e}");
        let c = parse(
            r#"{"verify_organization": {"management_account_id": "1", "assume_org_role": "r"}}"#,
        )
        .unwrap();
        assert!(c.verify_organization.is_some());
        assert!(serde_json::from_str::<Data>(r#"{"unknown": 1}"#).is_err());
        let c = parse(r#"{"validate_eks_cluster_membership": {"eks_cluster_names": ["a", "b"]}}"#)
            .unwrap();
        assert_eq!(
            c.validate_eks_cluster_membership.unwrap().cluster_names,
            ["a", "b"]
        );
        // HCL's repeated-block form decodes to a list of one block.
        let c = parse(r#"{"validate_eks_cluster_membership": [{"eks_cluster_names": ["a"]}]}"#)
            .unwrap();
        assert!(c.validate_eks_cluster_membership.is_some());
        let e = parse(r#"{"agent_path_template": "/{{ nope }}"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed to parse agent svid template"), "{e}");
    }
}
