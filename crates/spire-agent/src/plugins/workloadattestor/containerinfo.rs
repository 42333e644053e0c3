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
    match super::read_proc_file(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContainerInfoError::Unreadable(format!(
            "unable to read {}: {e}",
            path.display()
        ))),
    }
}

/// The path field of each `/proc/<pid>/cgroup` line (`hierarchy:controllers:path`).
pub(crate) fn cgroup_paths(text: &str) -> Result<Vec<String>, ContainerInfoError> {
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

/// The legacy locator (`use_new_container_locator = false`, deprecated upstream): only
/// `/proc/<pid>/cgroup`, each path matched whole against upstream's two patterns (a pod
/// cgroup ending in a container ID, or a CRI-O container without a pod); paths matching
/// neither or both are skipped, the first match wins and a different one is an error.
pub mod legacy {
    use std::sync::LazyLock;

    use regex::Regex;

    use super::{ContainerInfo, ContainerInfoError, cgroup_paths, read_optional};

    static POD_CONTAINER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"[[:punct:]]pod(?P<poduid>[[:xdigit:]]{8}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{12})[[:punct:]](?:[[:^punct:]]+[[:punct:]])*(?P<containerid>[[:xdigit:]]{64})$",
        )
        .unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
    });

    static CRIO_CONTAINER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?P<mustnotmatch>pod[[:xdigit:]]{8}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{4}[[:punct:]]?[[:xdigit:]]{12}[[:punct:]])?(?:[[:^punct:]]*/*)*crio[[:punct:]](?P<containerid>[[:xdigit:]]{64})$",
        )
        .unwrap_or_else(|e| unreachable!("constant pattern: {e}"))
    });

    /// The pod and container one cgroup path names, if it matches exactly one pattern.
    pub(super) fn match_path(path: &str) -> Option<ContainerInfo> {
        let path = path.strip_suffix(".scope").unwrap_or(path);
        let pod = POD_CONTAINER.captures(path).map(|c| ContainerInfo {
            pod_uid: c["poduid"]
                .chars()
                .map(|ch| if ch.is_ascii_punctuation() { '-' } else { ch })
                .collect(),
            container_id: c["containerid"].to_owned(),
        });
        let crio = CRIO_CONTAINER
            .captures(path)
            .filter(|c| c.name("mustnotmatch").is_none())
            .map(|c| ContainerInfo {
                pod_uid: String::new(),
                container_id: c["containerid"].to_owned(),
            });
        match (pod, crio) {
            (Some(found), None) | (None, Some(found)) => Some(found),
            (Some(_), Some(_)) => {
                tracing::warn!(cgroup = path, "More than one regex matches for cgroup");
                None
            }
            (None, None) => None,
        }
    }

    /// The pod and container of `pid` under `proc_root`, from its cgroup file alone.
    pub fn locate(
        proc_root: &std::path::Path,
        pid: i32,
    ) -> Result<ContainerInfo, ContainerInfoError> {
        let path = proc_root.join(pid.to_string()).join("cgroup");
        let text = read_optional(&path)?.ok_or_else(|| {
            ContainerInfoError::Unreadable(format!(
                "unable to obtain cgroups: {} does not exist",
                path.display()
            ))
        })?;
        let mut found: Option<ContainerInfo> = None;
        for cgroup in cgroup_paths(&text)? {
            let Some(next) = match_path(&cgroup) else {
                continue;
            };
            match &found {
                None => found = Some(next),
                Some(first) if first.container_id != next.container_id => {
                    return Err(ContainerInfoError::MultipleContainers(
                        first.container_id.clone(),
                        next.container_id,
                    ));
                }
                Some(first) if first.pod_uid != next.pod_uid => {
                    return Err(ContainerInfoError::MultiplePods(
                        first.pod_uid.clone(),
                        next.pod_uid,
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(found.unwrap_or_default())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Upstream's `TestGetPodUIDAndContainerIDFromCGroupPath` vectors.
        #[test]
        fn upstreams_legacy_vectors() {
            let c1 = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
            let c2 = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6";
            let cases: Vec<(String, Option<(&str, String)>)> = vec![
                (format!("/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/{c1}"), Some(("2c48913c-b29f-11e7-9350-020968147796", c1.to_owned()))),
                (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c-b29f-11e7-9350-020968147796.slice/docker-{c1}.scope"), Some(("2c48913c-b29f-11e7-9350-020968147796", c1.to_owned()))),
                (format!("/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80/{c2}"), Some(("a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80", c2.to_owned()))),
                ("/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2".to_owned(), Some(("72f7f152-440c-66ac-9084-e0fc1d8a910c", "b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2".to_owned()))),
                ("/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope".to_owned(), Some(("", "45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814".to_owned()))),
                ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod561fd272_d131_47ef_a01b_46a997a778f3.slice/crio-030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198.scope".to_owned(), Some(("561fd272-d131-47ef-a01b-46a997a778f3", "030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198".to_owned()))),
                (format!("/{c2}"), None),
                ("/kubepods/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80".to_owned(), None),
                (format!("/kubepods/{c2}"), None),
                ("/kubepods/pod2732ca68f6358eba7703fb6f82a25c94".to_owned(), None),
            ];
            for (path, want) in cases {
                let got = match_path(&path).map(|i| (i.pod_uid, i.container_id));
                let want = want.map(|(p, c)| (p.to_owned(), c));
                assert_eq!(got, want, "{path}");
            }
        }

        #[test]
        fn conflicting_paths_are_errors() {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("1")).unwrap();
            let write = |text: &str| std::fs::write(root.path().join("1/cgroup"), text).unwrap();
            write(
                "1:x:/user.slice\n2:y:/kubepods/pod2c48913c_b29f_11e7_9350_020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961\n",
            );
            assert_eq!(
                locate(root.path(), 1).unwrap().pod_uid,
                "2c48913c-b29f-11e7-9350-020968147796"
            );
            write(
                "1:x:/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961\n2:y:/kubepods/pod2c48913c-b29f-11e7-9350-020968147796/a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38\n",
            );
            let err = locate(root.path(), 1).unwrap_err().to_string();
            assert!(err.contains("multiple container IDs found"), "{err}");
            assert!(
                locate(root.path(), 2).is_err(),
                "a missing cgroup file is an error"
            );
        }
    }
}
