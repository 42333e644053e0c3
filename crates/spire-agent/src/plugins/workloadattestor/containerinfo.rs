//! Which pod and container a process runs in, from its cgroups: upstream's
//! `pkg/common/containerinfo` locator, as SPIRE 1.15 runs it. `/proc/<pid>/cgroup` is read
//! first (a container cannot forge it), and the cgroup mounts of `/proc/<pid>/mountinfo`
//! only when the cgroup file names no container. Works for cgroup v1 and v2, and for the
//! layouts of containerd, CRI-O and Docker, with cgroupfs or systemd slices.
//!
//! Each cgroup path is read backwards: the last segment holding a 64-hex-digit container
//! ID gives the container, and the nearest `pod<UID>` at or before it gives the pod (the UID
//! may use `_` for `-`, as systemd slice names do).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

static POD_UID: LazyLock<Regex> = LazyLock::new(|| {
    // Go's `\b` is ASCII-only, hence `(?-u:\b)`; `_` is a word character, so `…_pod…`
    // does not match, as upstream.
    Regex::new(
        r"(?-u:\b)pod([[:xdigit:]]{8}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{12})(?-u:\b)",
    )
    .unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
});

static CONTAINER_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)([[:xdigit:]]{64})(?-u:\b)")
        .unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
});

/// Where a process runs; both empty when it is in no container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The pod's UID (with dashes), empty when the cgroups name none.
    pub pod_uid: String,
    /// The 64-hex-digit container ID, empty when not in a container.
    pub container_id: String,
}

/// Why the cgroups could not be read, or named two pods or containers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerInfoError {
    /// Two cgroups name different pods (upstream: FailedPrecondition).
    #[error("multiple pod UIDs found ({0:?}, {1:?})")]
    MultiplePods(String, String),
    /// Two cgroups name different containers (upstream: FailedPrecondition).
    #[error("multiple container IDs found ({0:?}, {1:?})")]
    MultipleContainers(String, String),
    /// A file could not be read or parsed (upstream: Internal).
    #[error("{0}")]
    Unreadable(String),
}

/// Reads `/proc/<pid>/...` under `proc_root` (normally `/proc`; tests point it elsewhere).
#[derive(Debug, Clone)]
pub struct Locator {
    proc_root: PathBuf,
}

impl Locator {
    /// A locator reading `<proc_root>/<pid>/cgroup` and `mountinfo`.
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
        }
    }

    /// The pod and container of `pid`; both empty when it is in none (or the files are
    /// gone).
    pub fn locate(&self, pid: i32) -> Result<ContainerInfo, ContainerInfoError> {
        let dir = self.proc_root.join(pid.to_string());
        let from_cgroup = read_optional(&dir.join("cgroup"))?
            .map(|text| cgroup_paths(&text))
            .transpose()?
            .map(|paths| extract_all(paths.iter().map(String::as_str)))
            .transpose()?
            .unwrap_or_default();
        if !from_cgroup.container_id.is_empty() {
            return Ok(from_cgroup);
        }
        let from_mounts = read_optional(&dir.join("mountinfo"))?
            .map(|text| cgroup_mount_roots(&text))
            .transpose()?
            .map(|roots| extract_all(roots.iter().map(String::as_str)))
            .transpose()?
            .unwrap_or_default();
        Ok(if from_mounts.container_id.is_empty() {
            from_cgroup
        } else {
            from_mounts
        })
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ContainerInfoError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContainerInfoError::Unreadable(format!(
            "unable to read {}: {e}",
            path.display()
        ))),
    }
}

/// The path field of each `/proc/<pid>/cgroup` line (`hierarchy:controllers:path`).
fn cgroup_paths(text: &str) -> Result<Vec<String>, ContainerInfoError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.splitn(3, ':').collect();
            match fields.as_slice() {
                [_, _, path] => Ok((*path).to_owned()),
                _ => Err(ContainerInfoError::Unreadable(format!(
                    "unable to obtain cgroups: invalid cgroup entry, contains {} colon \
                     separated fields but expected at least 3: {line:?}",
                    fields.len()
                ))),
            }
        })
        .collect()
}

/// The root field of every `cgroup`/`cgroup2` mount in `/proc/<pid>/mountinfo`, except `/`
/// (which names nothing, and which upstream 1.15 skips).
fn cgroup_mount_roots(text: &str) -> Result<Vec<String>, ContainerInfoError> {
    let mut roots = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            return Err(ContainerInfoError::Unreadable(format!(
                "failed to parse mount info: missing separator in {line:?}"
            )));
        };
        if separator < 6 {
            return Err(ContainerInfoError::Unreadable(format!(
                "failed to parse mount info: expected at least 6 fields before separator in \
                 {line:?}"
            )));
        }
        let Some(fs_type) = fields.get(separator + 1) else {
            return Err(ContainerInfoError::Unreadable(format!(
                "failed to parse mount info: missing filesystem type in {line:?}"
            )));
        };
        let root = fields[3];
        if matches!(*fs_type, "cgroup" | "cgroup2") && root != "/" {
            roots.push(root.to_owned());
        }
    }
    Ok(roots)
}

/// Combines the paths as upstream does: once a pod is known, paths naming no pod are
/// ignored; otherwise a different pod or container is an error.
fn extract_all<'a>(
    paths: impl Iterator<Item = &'a str>,
) -> Result<ContainerInfo, ContainerInfoError> {
    let mut found = ContainerInfo::default();
    for path in paths {
        let next = extract(path);
        if next.pod_uid.is_empty() && !found.pod_uid.is_empty() {
            continue;
        }
        // A first pod overrides what pod-less paths found; anything else must agree.
        let first_pod = found.pod_uid.is_empty() && !next.pod_uid.is_empty();
        if !first_pod {
            if !next.pod_uid.is_empty() && next.pod_uid != found.pod_uid {
                return Err(ContainerInfoError::MultiplePods(
                    found.pod_uid,
                    next.pod_uid,
                ));
            }
            if !found.container_id.is_empty() && next.container_id != found.container_id {
                return Err(ContainerInfoError::MultipleContainers(
                    found.container_id,
                    next.container_id,
                ));
            }
        }
        found = next;
    }
    Ok(found)
}

/// One cgroup path: the container in its last segment holding one, and the pod at or
/// before it.
fn extract(path: &str) -> ContainerInfo {
    let segments: Vec<&str> = path.split('/').collect();
    for (index, segment) in segments.iter().enumerate().rev() {
        let Some(found) = CONTAINER_ID.captures(segment).and_then(|c| c.get(1)) else {
            continue;
        };
        let before = &segment[..found.start()];
        let pod_uid = std::iter::once(before)
            .chain(segments[..index].iter().rev().copied())
            .find_map(|s| POD_UID.captures(s).and_then(|c| c.get(1)))
            .map(|m| m.as_str().replace('_', "-"))
            .unwrap_or_default();
        return ContainerInfo {
            pod_uid,
            container_id: found.as_str().to_owned(),
        };
    }
    ContainerInfo::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "00000000-1111-2222-3333-444444444444";
    const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn info(pod: &str, container: &str) -> ContainerInfo {
        ContainerInfo {
            pod_uid: pod.to_owned(),
            container_id: container.to_owned(),
        }
    }

    /// Lines of upstream's plugin fixtures (`pkg/agent/plugin/workloadattestor/k8s/testdata`).
    #[test]
    fn upstreams_cgroup_layouts() {
        let cases = [
            (
                "11:hugetlb:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
                info(
                    "2c48913c-b29f-11e7-9350-020968147796",
                    "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
                ),
            ),
            (
                "13:name=systemd:/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80/09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6\n0::/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/system.slice/containerd.service",
                info(
                    "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80",
                    "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6",
                ),
            ),
            (
                "0::/../crio-09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6.scope",
                info(
                    "",
                    "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6",
                ),
            ),
            (
                "11:hugetlb:/\n10:devices:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope",
                info("", ""),
            ),
            (
                "4:cpu:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c-b29f-11e7-9350-020968147796.slice/docker-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope",
                info(
                    "2c48913c-b29f-11e7-9350-020968147796",
                    "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
                ),
            ),
            (
                "12:hugetlb:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda2830d0d_b0f0_4ff0_81b5_0ee4e299cf80.slice/crio-09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6.scope\n3:rdma:/\n0::/system.slice/crio.service",
                info(
                    "a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80",
                    "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6",
                ),
            ),
            (
                &format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{CONTAINER}.scope"
                ),
                info(POD, CONTAINER),
            ),
        ];
        for (text, want) in cases {
            let paths = cgroup_paths(text).unwrap();
            assert_eq!(
                extract_all(paths.iter().map(String::as_str)).unwrap(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn conflicts_are_errors_and_a_known_pod_wins() {
        let other_pod = "76543210_89ab_cdef_0123_456789abcdef";
        let v2 = |pod: &str, c: &str| {
            format!("/kubepods-besteffort-pod{pod}.slice/cri-containerd-{c}.scope")
        };
        let pods = [
            v2("00000000_1111_2222_3333_444444444444", CONTAINER),
            v2(other_pod, CONTAINER),
        ];
        assert!(matches!(
            extract_all(pods.iter().map(String::as_str)),
            Err(ContainerInfoError::MultiplePods(..))
        ));
        let other_container = "7654321089abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let containers = [
            v2("00000000_1111_2222_3333_444444444444", CONTAINER),
            v2("00000000_1111_2222_3333_444444444444", other_container),
        ];
        let err = extract_all(containers.iter().map(String::as_str)).unwrap_err();
        assert!(
            err.to_string().contains("multiple container IDs found"),
            "{err}"
        );
        // A path without a pod after one with a pod is ignored.
        let override_paths = [
            v2("00000000_1111_2222_3333_444444444444", CONTAINER),
            format!("/fake/cri-containerd-{other_container}.scope"),
        ];
        assert_eq!(
            extract_all(override_paths.iter().map(String::as_str)).unwrap(),
            info(POD, CONTAINER)
        );
        // Without a pod, a later path naming no container conflicts (upstream's quirk).
        let docker = [format!("/docker/{CONTAINER}"), "/".to_owned()];
        assert!(extract_all(docker.iter().map(String::as_str)).is_err());
    }

    #[test]
    fn locate_reads_cgroup_first_then_mountinfo() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("123");
        std::fs::create_dir(&dir).unwrap();
        let locator = Locator::new(root.path());
        assert_eq!(
            locator.locate(123).unwrap(),
            info("", ""),
            "no files: not in a container"
        );
        assert_eq!(locator.locate(999).unwrap(), info("", ""));

        let mount = |root: &str, fs: &str| {
            format!("30 25 0:26 {root} /sys/fs/cgroup rw,nosuid shared:4 - {fs} cgroup rw\n")
        };
        let pod_root = format!(
            "/../../kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod00000000_1111_2222_3333_444444444444.slice/cri-containerd-{CONTAINER}.scope"
        );
        std::fs::write(dir.join("cgroup"), "0::/\n").unwrap();
        std::fs::write(dir.join("mountinfo"), mount(&pod_root, "cgroup2")).unwrap();
        assert_eq!(
            locator.locate(123).unwrap(),
            info(POD, CONTAINER),
            "mountinfo fallback"
        );

        // The cgroup file wins over a mountinfo that names another pod (impersonation).
        std::fs::write(dir.join("cgroup"), format!("0::/../{CONTAINER}\n")).unwrap();
        let other = pod_root.replace("00000000_1111", "ffffffff_1111");
        std::fs::write(dir.join("mountinfo"), mount(&other, "cgroup2")).unwrap();
        assert_eq!(locator.locate(123).unwrap(), info("", CONTAINER));

        // Mounts of other file systems, and cgroup mounts at `/`, name nothing.
        std::fs::write(dir.join("cgroup"), "0::/\n").unwrap();
        std::fs::write(
            dir.join("mountinfo"),
            format!("{}{}", mount(&pod_root, "tmpfs"), mount("/", "cgroup2")),
        )
        .unwrap();
        assert_eq!(locator.locate(123).unwrap(), info("", ""));

        std::fs::write(dir.join("cgroup"), "garbage\n").unwrap();
        let err = locator.locate(123).unwrap_err().to_string();
        assert!(err.contains("invalid cgroup entry"), "{err}");
        std::fs::write(dir.join("cgroup"), "0::/\n").unwrap();
        std::fs::write(dir.join("mountinfo"), "no separator here\n").unwrap();
        let err = locator.locate(123).unwrap_err().to_string();
        assert!(err.contains("missing separator"), "{err}");
    }
}
