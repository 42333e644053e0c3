//! `spire-server entry explain` (beyond upstream): which agents would receive a registration
//! entry. Uses upstream's list APIs only (ListEntries, ListAgents), so it works against any
//! server, and follows the rules the server applies when it answers an agent's sync:
//!
//! - an entry whose parent is an attested agent's SPIFFE ID goes to that agent;
//! - an entry whose parent is a node alias (an entry parented by `spiffe://<td>/spire/server`)
//!   goes to every agent having all of the alias's selectors;
//! - an entry whose parent is another entry's SPIFFE ID goes wherever that entry goes
//!   (nested workloads, downstream servers);
//! - a node alias itself makes the agents having all its selectors members of its ID.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use spire_proto::spire::api::server::agent::v1 as agentv1;
use spire_proto::spire::api::server::entry::v1 as entryv1;
use spire_proto::spire::api::types;

use super::{CliError, CliResult, Env, OutputArg, OutputFormat, SocketArg, client};

/// Flags of `entry explain`.
#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The Registration Entry ID to explain
    #[arg(long = "entryID", value_name = "string", default_value = "")]
    entry_id: String,
    /// The SPIFFE ID of the entries to explain
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    /// The SPIFFE ID of the entries' parent
    #[arg(long = "parentID", value_name = "string", default_value = "")]
    parent_id: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

fn id_string(id: Option<&types::Spiffeid>) -> String {
    id.map_or_else(String::new, |id| {
        format!("spiffe://{}{}", id.trust_domain, id.path)
    })
}

fn selector_strings(selectors: &[types::Selector]) -> BTreeSet<String> {
    selectors
        .iter()
        .map(|s| format!("{}:{}", s.r#type, s.value))
        .collect()
}

/// An agent that would receive the entry, and how.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Receiver {
    agent_id: String,
    via: String,
    banned: bool,
}

/// What the server knows, reduced to what authorization needs.
struct View {
    entries: Vec<types::Entry>,
    /// Agent SPIFFE ID -> (selectors, banned).
    agents: BTreeMap<String, (BTreeSet<String>, bool)>,
    server_id: String,
}

impl View {
    fn agents_with(&self, selectors: &BTreeSet<String>) -> Vec<(String, bool)> {
        if selectors.is_empty() {
            return Vec::new();
        }
        self.agents
            .iter()
            .filter(|(_, (have, _))| selectors.is_subset(have))
            .map(|(id, (_, banned))| (id.clone(), *banned))
            .collect()
    }

    /// The agents that receive entries parented by `parent`; `seen` stops cycles.
    fn receivers_of(&self, parent: &str, seen: &mut BTreeSet<String>) -> Vec<Receiver> {
        if !seen.insert(parent.to_owned()) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some((_, banned)) = self.agents.get(parent) {
            out.push(Receiver {
                agent_id: parent.to_owned(),
                via: "parent is this agent".into(),
                banned: *banned,
            });
        }
        for entry in &self.entries {
            if id_string(entry.spiffe_id.as_ref()) != parent {
                continue;
            }
            let grandparent = id_string(entry.parent_id.as_ref());
            if grandparent == self.server_id {
                for (agent_id, banned) in self.agents_with(&selector_strings(&entry.selectors)) {
                    out.push(Receiver {
                        agent_id,
                        via: format!("node alias {parent} (entry {})", entry.id),
                        banned,
                    });
                }
            } else {
                for mut receiver in self.receivers_of(&grandparent, seen) {
                    receiver.via = format!(
                        "nested under entry {} ({parent}), {}",
                        entry.id, receiver.via
                    );
                    out.push(receiver);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The agents that would receive `entry` (or, for a node alias, become its members).
    fn explain(&self, entry: &types::Entry) -> (bool, Vec<Receiver>) {
        let parent = id_string(entry.parent_id.as_ref());
        if parent == self.server_id {
            let members = self
                .agents_with(&selector_strings(&entry.selectors))
                .into_iter()
                .map(|(agent_id, banned)| Receiver {
                    agent_id,
                    via: "has all of the alias's selectors".into(),
                    banned,
                })
                .collect();
            return (true, members);
        }
        (false, self.receivers_of(&parent, &mut BTreeSet::new()))
    }
}

async fn load_view(socket: &SocketArg) -> Result<View, CliError> {
    let channel = client::connect(&socket.path()?).await?;
    let mut entries = Vec::new();
    let mut entry_client = entryv1::entry_client::EntryClient::new(channel.clone());
    let mut page_token = String::new();
    loop {
        let page = entry_client
            .list_entries(entryv1::ListEntriesRequest {
                filter: None,
                output_mask: None,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .map_err(CliError::rpc("error fetching entries: "))?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut agents = BTreeMap::new();
    let mut agent_client = agentv1::agent_client::AgentClient::new(channel);
    let mut page_token = String::new();
    loop {
        let page = agent_client
            .list_agents(agentv1::ListAgentsRequest {
                filter: None,
                output_mask: None,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .map_err(CliError::rpc("error fetching agents: "))?
            .into_inner();
        for agent in page.agents {
            agents.insert(
                id_string(agent.id.as_ref()),
                (selector_strings(&agent.selectors), agent.banned),
            );
        }
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(View {
        entries,
        agents,
        server_id: String::new(),
    })
}

/// Runs `entry explain`.
pub(crate) async fn run(args: ExplainArgs, env: &mut Env<'_>) -> CliResult {
    if args.entry_id.is_empty() && args.spiffe_id.is_empty() {
        return Err(CliError::Invalid(
            "an entry ID (-entryID) or a SPIFFE ID (-spiffeID) must be set".into(),
        ));
    }
    let mut view = load_view(&args.socket).await?;
    let chosen: Vec<types::Entry> = view
        .entries
        .iter()
        .filter(|e| args.entry_id.is_empty() || e.id == args.entry_id)
        .filter(|e| args.spiffe_id.is_empty() || id_string(e.spiffe_id.as_ref()) == args.spiffe_id)
        .filter(|e| args.parent_id.is_empty() || id_string(e.parent_id.as_ref()) == args.parent_id)
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(CliError::Invalid(
            "no registration entry matches the given flags".into(),
        ));
    }
    let mut results = Vec::new();
    for entry in &chosen {
        let td = entry
            .spiffe_id
            .as_ref()
            .map_or_else(String::new, |id| id.trust_domain.clone());
        view.server_id = format!("spiffe://{td}/spire/server");
        let (alias, receivers) = view.explain(entry);
        results.push((entry, alias, receivers));
    }
    match args.output.output {
        OutputFormat::Json => {
            let value = serde_json::json!({
                "entries": results.iter().map(|(entry, alias, receivers)| serde_json::json!({
                    "id": entry.id,
                    "spiffe_id": id_string(entry.spiffe_id.as_ref()),
                    "parent_id": id_string(entry.parent_id.as_ref()),
                    "selectors": selector_strings(&entry.selectors),
                    "node_alias": alias,
                    "agents": receivers.iter().map(|r| serde_json::json!({
                        "spiffe_id": r.agent_id, "via": r.via, "banned": r.banned,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            env.print(&format!("{value}\n"));
        }
        OutputFormat::Pretty => {
            let mut out = String::new();
            for (entry, alias, receivers) in &results {
                out.push_str(&format!("Entry ID         : {}\n", entry.id));
                out.push_str(&format!(
                    "SPIFFE ID        : {}\n",
                    id_string(entry.spiffe_id.as_ref())
                ));
                out.push_str(&format!(
                    "Parent ID        : {}\n",
                    id_string(entry.parent_id.as_ref())
                ));
                let what = if *alias {
                    "Member agents"
                } else {
                    "Received by"
                };
                if receivers.is_empty() {
                    out.push_str(&format!("{what:<17}: no agent\n"));
                } else {
                    out.push_str(&format!("{what:<17}: {} agent(s)\n", receivers.len()));
                    for r in receivers {
                        let banned = if r.banned { " [banned]" } else { "" };
                        out.push_str(&format!("  {}{banned}\n    via {}\n", r.agent_id, r.via));
                    }
                }
                out.push('\n');
            }
            env.print(&out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &str) -> Option<types::Spiffeid> {
        Some(types::Spiffeid {
            trust_domain: "example.org".into(),
            path: path.into(),
        })
    }

    fn sel(s: &str) -> types::Selector {
        let (t, v) = s.split_once(':').unwrap_or((s, ""));
        types::Selector {
            r#type: t.into(),
            value: v.into(),
        }
    }

    fn entry(entry_id: &str, spiffe: &str, parent: &str, selectors: &[&str]) -> types::Entry {
        types::Entry {
            id: entry_id.into(),
            spiffe_id: id(spiffe),
            parent_id: id(parent),
            selectors: selectors.iter().map(|s| sel(s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn follows_direct_alias_and_nested_parents() {
        let agent = |sels: &[&str]| (sels.iter().map(|s| (*s).to_owned()).collect(), false);
        let view = View {
            entries: vec![
                entry(
                    "alias",
                    "/cluster",
                    "/spire/server",
                    &["k8s_psat:cluster:a"],
                ),
                entry("direct", "/web", "/spire/agent/one", &["unix:uid:0"]),
                entry("viaalias", "/api", "/cluster", &["unix:uid:1"]),
                entry("nested", "/inner", "/api", &["unix:uid:2"]),
            ],
            agents: BTreeMap::from([
                (
                    "spiffe://example.org/spire/agent/one".to_owned(),
                    agent(&["k8s_psat:cluster:a", "k8s_psat:node:x"]),
                ),
                (
                    "spiffe://example.org/spire/agent/two".to_owned(),
                    agent(&["k8s_psat:cluster:b"]),
                ),
            ]),
            server_id: "spiffe://example.org/spire/server".into(),
        };
        let ids = |e: &types::Entry| -> Vec<String> {
            view.explain(e).1.into_iter().map(|r| r.agent_id).collect()
        };
        let one = vec!["spiffe://example.org/spire/agent/one".to_owned()];
        assert_eq!(ids(&view.entries[1]), one);
        assert_eq!(ids(&view.entries[2]), one);
        assert_eq!(ids(&view.entries[3]), one);
        assert!(view.explain(&view.entries[0]).0);
        assert_eq!(ids(&view.entries[0]), one);
        assert!(ids(&entry("x", "/y", "/nobody", &["a:b"])).is_empty());
    }
}
