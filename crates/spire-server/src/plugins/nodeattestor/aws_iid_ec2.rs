//! Reading the EC2 and IAM Query-protocol answers `aws_iid` needs: the instances of
//! `DescribeInstances`, upstream's root-volume anti-tampering check, and the roles of
//! `GetInstanceProfile`.

use roxmltree::{Document, Node};

/// What the attestor reads of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// `instanceId`.
    pub instance_id: String,
    /// Tags, key and value.
    pub tags: Vec<(String, String)>,
    /// Security groups: id and name.
    pub security_groups: Vec<(String, String)>,
    /// `iamInstanceProfile.arn`.
    pub instance_profile_arn: Option<String>,
    /// `rootDeviceType` (`ebs` or `instance-store`).
    pub root_device_type: String,
    /// `rootDeviceName`.
    pub root_device_name: String,
    /// Block devices: name and attach time.
    pub block_devices: Vec<(String, Option<i64>)>,
    /// Network interfaces: device index and attach time.
    pub network_interfaces: Vec<(i64, Option<i64>)>,
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn text(node: Node<'_, '_>, name: &str) -> String {
    child(node, name)
        .and_then(|n| n.text())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn items<'a, 'i>(node: Node<'a, 'i>, set: &str) -> Vec<Node<'a, 'i>> {
    child(node, set)
        .map(|s| s.children().filter(|n| n.has_tag_name("item")).collect())
        .unwrap_or_default()
}

fn time(text: &str) -> Option<i64> {
    spire_common::aws::client::parse_time(text).and_then(|t| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
    })
}

/// The instances of a `DescribeInstances` answer.
pub fn parse_describe_instances(xml: &str) -> Result<Vec<Instance>, String> {
    let doc = Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for reservation in items(doc.root_element(), "reservationSet") {
        for item in items(reservation, "instancesSet") {
            out.push(Instance {
                instance_id: text(item, "instanceId"),
                tags: items(item, "tagSet")
                    .into_iter()
                    .map(|t| (text(t, "key"), text(t, "value")))
                    .collect(),
                security_groups: items(item, "groupSet")
                    .into_iter()
                    .map(|g| (text(g, "groupId"), text(g, "groupName")))
                    .collect(),
                instance_profile_arn: child(item, "iamInstanceProfile")
                    .map(|p| text(p, "arn"))
                    .filter(|a| !a.is_empty()),
                root_device_type: text(item, "rootDeviceType"),
                root_device_name: text(item, "rootDeviceName"),
                block_devices: items(item, "blockDeviceMapping")
                    .into_iter()
                    .map(|b| {
                        let attach = child(b, "ebs").and_then(|e| time(&text(e, "attachTime")));
                        (text(b, "deviceName"), attach)
                    })
                    .collect(),
                network_interfaces: items(item, "networkInterfaceSet")
                    .into_iter()
                    .filter_map(|n| {
                        let attachment = child(n, "attachment")?;
                        let index = text(attachment, "deviceIndex").parse().ok()?;
                        Some((index, time(&text(attachment, "attachTime"))))
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Upstream's anti-tampering check: an EBS root volume must have been attached within
/// `max_seconds` of the primary network interface (a swapped root volume is refused).
pub fn check_block_device(instance: &Instance, max_seconds: i64) -> Result<(), String> {
    let Some((_, iface_attach)) = instance.network_interfaces.iter().find(|(i, _)| *i == 0) else {
        return Err(
            "the EC2 instance network interface with device index 0 is inaccessible".into(),
        );
    };
    if instance.root_device_type == "instance-store" {
        return Ok(());
    }
    let Some((_, root_attach)) = instance
        .block_devices
        .iter()
        .find(|(name, _)| *name == instance.root_device_name)
    else {
        return Err(format!(
            "failed to locate the root device block mapping with name {:?}",
            instance.root_device_name
        ));
    };
    let disparity = iface_attach.unwrap_or(0).abs_diff(root_attach.unwrap_or(0));
    if disparity > max_seconds.unsigned_abs() {
        return Err(format!(
            "failed checking the disparity device attach times, root BlockDeviceMapping \
             and NetworkInterface[0] attach times differ by {disparity} seconds"
        ));
    }
    Ok(())
}

/// The name in `arn:<partition>:iam::<account>:instance-profile[/path]/<name>`.
pub fn instance_profile_name(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts.first() != Some(&"arn") {
        return Err(format!("failed to parse {arn:?}: not an ARN"));
    }
    let resource = parts.get(5).copied().unwrap_or_default();
    let Some(rest) = resource
        .strip_prefix("instance-profile/")
        .or_else(|| resource.strip_prefix("instance-profile:"))
    else {
        return Err("arn is not for an instance profile".into());
    };
    Ok(rest.rsplit('/').next().unwrap_or(rest).to_owned())
}

/// The role ARNs of a `GetInstanceProfile` answer.
pub fn parse_instance_profile_roles(xml: &str) -> Result<Vec<String>, String> {
    let doc = Document::parse(xml).map_err(|e| e.to_string())?;
    let Some(roles) = doc.descendants().find(|n| n.has_tag_name("Roles")) else {
        return Ok(Vec::new());
    };
    Ok(roles
        .children()
        .filter(|n| n.has_tag_name("member"))
        .map(|m| text(m, "Arn"))
        .filter(|a| !a.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_profile_names() {
        assert_eq!(
            instance_profile_name("arn:aws:iam::123456789012:instance-profile/a/b/web").unwrap(),
            "web"
        );
        assert!(instance_profile_name("arn:aws:iam::1:role/web").is_err());
        assert!(instance_profile_name("nope").is_err());
    }

    #[test]
    fn block_device_disparity() {
        let mut i = Instance {
            root_device_type: "ebs".into(),
            root_device_name: "/dev/xvda".into(),
            block_devices: vec![("/dev/xvda".into(), Some(1000))],
            network_interfaces: vec![(0, Some(1030))],
            ..Instance::default()
        };
        assert!(check_block_device(&i, 60).is_ok());
        i.block_devices = vec![("/dev/xvda".into(), Some(5000))];
        let e = check_block_device(&i, 60).unwrap_err();
        assert!(e.contains("differ by 3970 seconds"), "{e}");
        i.root_device_type = "instance-store".into();
        assert!(check_block_device(&i, 60).is_ok());
        i.network_interfaces.clear();
        assert!(check_block_device(&i, 60).is_err());
    }
}
