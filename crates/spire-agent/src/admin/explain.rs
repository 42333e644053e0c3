//! `spire_rs.agent.explain.v1.Explain` (beyond upstream): why a process gets, or does not
//! get, an identity. The process named by pid is attested with the agent's workload
//! attestors, as the Workload API would attest it, and its selectors are compared with those
//! of every entry in the agent's cache: entries whose selectors it has all of are the
//! identities it gets; the others are ranked by how many of their selectors it lacks.

use std::sync::Arc;

use spire_core::selector::{Selector, SelectorSet};
use spire_proto::spire_rs::agent::explain::v1::explain_server::Explain;
use spire_proto::spire_rs::agent::explain::v1::{
    EntryMatch, ExplainWorkloadRequest, ExplainWorkloadResponse, SyncStatus,
};
use tonic::{Request, Response, Status};

use crate::manager::Manager;
use crate::plugins::workloadattestor::{PeerProcess, WorkloadAttestor};
use crate::workload::attest_process;

/// How many non-matching entries are shown when the request does not say.
const DEFAULT_CLOSEST: usize = 5;

/// The Explain service of the admin socket.
pub struct ExplainService {
    manager: Arc<Manager>,
    attestors: Arc<[Arc<dyn WorkloadAttestor>]>,
}

impl std::fmt::Debug for ExplainService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainService").finish_non_exhaustive()
    }
}

impl ExplainService {
    /// Explains processes with `attestors` against `manager`'s cache.
    pub fn new(manager: Arc<Manager>, attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self {
            manager,
            attestors: attestors.into(),
        }
    }
}

fn strings(selectors: impl Iterator<Item = impl ToString>) -> Vec<String> {
    selectors.map(|s| s.to_string()).collect()
}

/// Entries the process matches, then the closest others (fewest missing selectors, then
/// most shared), at most `max_closest` of them.
fn rank(
    found: &SelectorSet,
    entries: Vec<(String, spire_core::spiffe_id::SpiffeId, SelectorSet)>,
    max_closest: usize,
) -> (Vec<EntryMatch>, Vec<EntryMatch>) {
    let mut matching = Vec::new();
    let mut others = Vec::new();
    for (id, spiffe_id, selectors) in entries {
        let missing: Vec<&Selector> = selectors.iter().filter(|s| !found.contains(s)).collect();
        let shared = selectors.len() - missing.len();
        let entry = EntryMatch {
            entry_id: id,
            spiffe_id: spiffe_id.to_string(),
            selectors: strings(selectors.iter()),
            missing_selectors: strings(missing.iter()),
        };
        if missing.is_empty() && !selectors.is_empty() {
            matching.push(entry);
        } else {
            others.push((missing.len(), shared, entry));
        }
    }
    others.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.spiffe_id.cmp(&b.2.spiffe_id))
    });
    matching.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
    let closest = others
        .into_iter()
        .take(max_closest)
        .map(|(_, _, e)| e)
        .collect();
    (matching, closest)
}

#[tonic::async_trait]
impl Explain for ExplainService {
    async fn explain_workload(
        &self,
        request: Request<ExplainWorkloadRequest>,
    ) -> Result<Response<ExplainWorkloadResponse>, Status> {
        let request = request.into_inner();
        let pid = request.pid;
        if pid <= 0 {
            return Err(Status::invalid_argument("a pid greater than 0 is required"));
        }
        let Some((uid, gid)) = super::process_ids(pid) else {
            return Err(Status::not_found(format!("no process with pid {pid}")));
        };
        let found: SelectorSet = attest_process(&self.attestors, PeerProcess { pid, uid, gid })
            .await
            .map_err(|e| {
                Status::internal(format!("workload attestation of pid {pid} failed: {e}"))
            })?
            .into_iter()
            .collect();
        let max_closest = match request.max_closest {
            0 => DEFAULT_CLOSEST,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let entries = self.manager.entry_selectors();
        let entries_total = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        let (matching, closest) = rank(&found, entries, max_closest);
        let stats = self.manager.cache_stats();
        let attempt = self.manager.last_sync_attempt();
        let sync = SyncStatus {
            attempted: attempt.is_some(),
            succeeded: attempt.as_ref().is_some_and(|(_, error)| error.is_none()),
            last_attempt_at: attempt.as_ref().map_or(0, |(at, _)| *at),
            last_success_at: stats.last_sync_success.unwrap_or(0),
            error: attempt.and_then(|(_, error)| error).unwrap_or_default(),
        };
        Ok(Response::new(ExplainWorkloadResponse {
            selectors: strings(found.iter()),
            matching,
            closest,
            sync: Some(sync),
            entries_total,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> SelectorSet {
        items
            .iter()
            .filter_map(|s| {
                let (t, v) = s.split_once(':')?;
                Selector::new(t, v).ok()
            })
            .collect()
    }

    #[test]
    fn ranks_matching_then_fewest_missing() {
        let td = |p: &str| {
            spire_core::spiffe_id::SpiffeId::parse(&format!("spiffe://example.org/{p}")).ok()
        };
        let (Some(a), Some(b), Some(c)) = (td("a"), td("b"), td("c")) else {
            panic!("test IDs parse");
        };
        let found = set(&["unix:uid:1000", "unix:gid:1000"]);
        let entries = vec![
            ("1".into(), a, set(&["unix:uid:1000"])),
            ("2".into(), b, set(&["unix:uid:1000", "unix:user:web"])),
            ("3".into(), c, set(&["unix:uid:0", "unix:user:root"])),
        ];
        let (matching, closest) = rank(&found, entries, 5);
        assert_eq!(matching.len(), 1);
        assert_eq!(matching[0].spiffe_id, "spiffe://example.org/a");
        assert_eq!(closest[0].spiffe_id, "spiffe://example.org/b");
        assert_eq!(closest[0].missing_selectors, vec!["unix:user:web"]);
        assert_eq!(closest[1].missing_selectors.len(), 2);
    }
}
