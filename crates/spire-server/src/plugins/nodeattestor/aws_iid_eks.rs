//! `aws_iid`'s `validate_eks_cluster_membership` block: a node is attested only when its
//! instance belongs to an Auto Scaling group of a node group of one of `eks_cluster_names`
//! (`eks:ListNodegroups`, `eks:DescribeNodegroup`, `autoscaling:DescribeAutoScalingGroups`,
//! called with the attestor's client for the node's account and region). The instance list
//! is cached for 30 seconds; an instance missing from a fresh-enough list triggers a reload,
//! at most five times per TTL, as upstream's `eksValidator`.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use spire_common::aws::AwsClient;
use spire_common::aws::client::{AUTOSCALING, EKS};
use spire_core::config::de;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Upstream's cache lifetime and cache-miss reloads per lifetime.
const TTL: Duration = Duration::from_secs(30);
const RETRIES: u32 = 5;

/// The `validate_eks_cluster_membership` block as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EksData {
    #[serde(default, deserialize_with = "de::string_list")]
    eks_cluster_names: Vec<String>,
}

/// The validated `validate_eks_cluster_membership` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EksConfig {
    /// `eks_cluster_names`: clusters whose node groups' instances may attest.
    pub cluster_names: Vec<String>,
}

impl EksConfig {
    /// Takes the block as upstream does: an empty `eks_cluster_names` is accepted (and then
    /// no node is a member), with a warning naming `key`.
    pub fn from_data(file: &str, key: &str, data: EksData) -> Self {
        if data.eks_cluster_names.is_empty() {
            tracing::warn!(
                file,
                key,
                "validate_eks_cluster_membership has no eks_cluster_names: every aws_iid \
                 attestation will be refused; list the clusters or remove the block"
            );
        }
        Self {
            cluster_names: data.eks_cluster_names,
        }
    }
}

#[derive(Default)]
struct Cache {
    nodes: HashSet<String>,
    valid_until: Option<Instant>,
    retries: u32,
}

/// Answers whether an instance belongs to one of the configured EKS clusters, from a cached
/// instance list.
pub struct EksValidator {
    config: EksConfig,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for EksValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksValidator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EksValidator {
    /// A validator of `config` with an empty cache.
    pub fn new(config: EksConfig) -> Self {
        Self {
            config,
            cache: Mutex::new(Cache {
                retries: RETRIES,
                ..Cache::default()
            }),
        }
    }

    /// Whether `instance_id` is an instance of the clusters' node groups; `client` is the one
    /// of the attesting node's account and region.
    pub async fn is_node_in_cluster(
        &self,
        client: &AwsClient,
        instance_id: &str,
    ) -> Result<bool, String> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let stale = cache.nodes.is_empty() || cache.valid_until.is_none_or(|at| now > at);
        if stale {
            cache.nodes = self.list_nodes(client).await?;
            cache.valid_until = Some(now + TTL);
            cache.retries = RETRIES;
            return Ok(cache.nodes.contains(instance_id));
        }
        if cache.nodes.contains(instance_id) {
            return Ok(true);
        }
        // A cache miss on a fresh list: reload, a limited number of times per TTL.
        if cache.retries == 0 {
            return Ok(false);
        }
        cache.nodes = self.list_nodes(client).await?;
        cache.retries -= 1;
        Ok(cache.nodes.contains(instance_id))
    }

    /// The instances of every node group of every configured cluster.
    async fn list_nodes(&self, client: &AwsClient) -> Result<HashSet<String>, String> {
        let mut nodes = HashSet::new();
        for cluster in &self.config.cluster_names {
            let mut page = client
                .rest_json_get(
                    EKS,
                    "ListNodegroups",
                    &["clusters", cluster, "node-groups"],
                    &[],
                )
                .await
                .map_err(|e| format!("issue while getting list of EKS Nodegroups: {e}"))?;
            loop {
                for nodegroup in strings(&page["nodegroups"]) {
                    nodes.extend(nodegroup_instances(client, cluster, &nodegroup).await?);
                }
                let Some(token) = next_token(&page["nextToken"]) else {
                    break;
                };
                page = client
                    .rest_json_get(
                        EKS,
                        "ListNodegroups",
                        &["clusters", cluster, "node-groups"],
                        &[("nextToken".to_owned(), token)],
                    )
                    .await
                    .map_err(|e| {
                        format!("issue while getting list of EKS Nodegroups in pagination: {e}")
                    })?;
            }
        }
        Ok(nodes)
    }
}

/// The instances of the Auto Scaling groups of one node group.
async fn nodegroup_instances(
    client: &AwsClient,
    cluster: &str,
    nodegroup: &str,
) -> Result<Vec<String>, String> {
    let described = client
        .rest_json_get(
            EKS,
            "DescribeNodegroup",
            &["clusters", cluster, "node-groups", nodegroup],
            &[],
        )
        .await
        .map_err(|e| format!("issue while getting list of EKS Node Groups: {e}"))?;
    let mut instances = Vec::new();
    for asg in auto_scaling_group_names(&described) {
        let mut params = vec![("AutoScalingGroupNames.member.1".to_owned(), asg.clone())];
        let xml = client
            .query(AUTOSCALING, "DescribeAutoScalingGroups", &params)
            .await
            .map_err(|e| {
                format!("issue while getting list of instances in AutoScalingGroup: {e}")
            })?;
        let mut page = parse_auto_scaling_groups(&xml).map_err(|e| {
            format!("issue while getting list of instances in AutoScalingGroup: {e}")
        })?;
        loop {
            instances.append(&mut page.instance_ids);
            let Some(token) = page.next_token else {
                break;
            };
            params.truncate(1);
            params.push(("NextToken".to_owned(), token));
            let in_pagination = |e: String| {
                format!(
                    "issue while getting list of instances in AutoScalingGroup in pagination: {e}"
                )
            };
            let xml = client
                .query(AUTOSCALING, "DescribeAutoScalingGroups", &params)
                .await
                .map_err(|e| in_pagination(e.to_string()))?;
            page = parse_auto_scaling_groups(&xml).map_err(in_pagination)?;
        }
    }
    Ok(instances)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn next_token(value: &Value) -> Option<String> {
    value.as_str().filter(|t| !t.is_empty()).map(str::to_owned)
}

/// `nodegroup.resources.autoScalingGroups[].name` of a `DescribeNodegroup` answer.
fn auto_scaling_group_names(described: &Value) -> Vec<String> {
    described["nodegroup"]["resources"]["autoScalingGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(str::to_owned))
        .collect()
}

/// One page of a `DescribeAutoScalingGroups` answer: its groups' instance IDs.
#[derive(Debug, Default, PartialEq, Eq)]
struct AsgPage {
    instance_ids: Vec<String>,
    next_token: Option<String>,
}

/// The children of `node` named `name`.
fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children().filter(|n| n.has_tag_name(name)).collect()
}

fn parse_auto_scaling_groups(xml: &str) -> Result<AsgPage, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("unreadable answer: {e}"))?;
    let Some(result) = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("DescribeAutoScalingGroupsResult"))
    else {
        return Err("unreadable answer: no DescribeAutoScalingGroupsResult".into());
    };
    let mut page = AsgPage::default();
    for groups in child(result, "AutoScalingGroups") {
        for group in child(groups, "member") {
            for instances in child(group, "Instances") {
                for instance in child(instances, "member") {
                    page.instance_ids.extend(
                        child(instance, "InstanceId")
                            .into_iter()
                            .filter_map(|n| n.text())
                            .map(|t| t.trim().to_owned())
                            .filter(|t| !t.is_empty()),
                    );
                }
            }
        }
    }
    page.next_token = child(result, "NextToken")
        .into_iter()
        .find_map(|n| n.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instances_of_a_describe_auto_scaling_groups_page() {
        // Shaped as the example in the EC2 Auto Scaling API reference
        // (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DescribeAutoScalingGroups.html).
        let xml = r#"<DescribeAutoScalingGroupsResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/">
  <DescribeAutoScalingGroupsResult>
    <AutoScalingGroups>
      <member>
        <AutoScalingGroupName>eks-ng-1</AutoScalingGroupName>
        <Instances>
          <member><InstanceId>i-0598c7d356eba48d7</InstanceId><LifecycleState>InService</LifecycleState></member>
          <member><InstanceId>i-1111</InstanceId></member>
        </Instances>
        <Tags><member><Key>k</Key><Value>v</Value></member></Tags>
      </member>
    </AutoScalingGroups>
    <NextToken>page-2</NextToken>
  </DescribeAutoScalingGroupsResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</DescribeAutoScalingGroupsResponse>"#;
        assert_eq!(
            parse_auto_scaling_groups(xml).unwrap(),
            AsgPage {
                instance_ids: vec!["i-0598c7d356eba48d7".into(), "i-1111".into()],
                next_token: Some("page-2".into()),
            }
        );
        assert!(parse_auto_scaling_groups("<x/>").is_err());
    }

    #[test]
    fn group_names_of_a_describe_nodegroup_answer() {
        let answer = json!({"nodegroup": {"resources": {"autoScalingGroups": [
            {"name": "eks-a"}, {"other": 1}, {"name": "eks-b"}
        ]}}});
        assert_eq!(auto_scaling_group_names(&answer), ["eks-a", "eks-b"]);
        assert!(auto_scaling_group_names(&json!({})).is_empty());
    }

    #[test]
    fn the_block_takes_upstreams_key_only() {
        let data: EksData =
            serde_json::from_value(json!({"eks_cluster_names": ["prod", "staging"]})).unwrap();
        let config = EksConfig::from_data("server.conf", "v", data);
        assert_eq!(config.cluster_names, ["prod", "staging"]);
        assert!(serde_json::from_value::<EksData>(json!({"cluster_names": ["x"]})).is_err());
    }
}
