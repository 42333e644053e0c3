//! `spire-server agent list|show|count|evict|ban|purge`.

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde::Serialize;
use spire_proto::spire::api::server::agent::v1 as agentv1;
use spire_proto::spire::api::types;

use super::printer::{
    go_duration, go_time_utc, id_proto, id_string, pluralize, print_proto, print_struct,
    selector_proto,
};
use super::{CliError, CliResult, Env, OutputArg, SocketArg, client};

type AgentClient = agentv1::agent_client::AgentClient<tonic::transport::Channel>;

/// `agent` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Lists attested agents and their SPIFFE IDs
    List(ListArgs),
    /// Shows the details of an attested agent given its SPIFFE ID
    Show(IdArgs),
    /// Count attested agents
    Count(CountArgs),
    /// Evicts an attested agent given its SPIFFE ID
    Evict(IdArgs),
    /// Ban an attested agent given its SPIFFE ID
    Ban(IdArgs),
    /// Delete expired agents that attested using a non-TOFU security model based on a given time
    Purge(PurgeArgs),
}

/// Filters shared by `agent list` and `agent count`.
#[derive(Debug, Args)]
pub(crate) struct AgentFilters {
    /// A colon-delimited type:value selector. Can be used more than once
    #[arg(long = "selector", value_name = "value")]
    selectors: Vec<String>,
    /// The match mode used when filtering by selectors. Options: exact, any, superset and subset
    #[arg(
        long = "matchSelectorsOn",
        value_name = "string",
        default_value = "superset"
    )]
    match_selectors_on: String,
    /// Filter by attestation type, like join_token or x509pop.
    #[arg(
        verbatim_doc_comment,
        long = "attestationType",
        value_name = "string",
        default_value = ""
    )]
    attestation_type: String,
    /// Filter based on string received, 'true': banned agents, 'false': not banned agents, other value will return all.
    #[arg(
        verbatim_doc_comment,
        long = "banned",
        value_name = "value",
        default_value = ""
    )]
    banned: String,
    /// Filter based on string received, 'true': agents that can reattest, 'false': agents that can't reattest, other value will return all.
    #[arg(
        verbatim_doc_comment,
        long = "canReattest",
        value_name = "value",
        default_value = ""
    )]
    can_reattest: String,
    /// Filter by expiration time (format: "2006-01-02")
    #[arg(long = "expiresBefore", value_name = "string", default_value = "")]
    expires_before: String,
}

/// `agent list` flags.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    filters: AgentFilters,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `agent count` flags.
#[derive(Debug, Args)]
pub(crate) struct CountArgs {
    #[command(flatten)]
    filters: AgentFilters,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Flags of the commands that act on one agent.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The SPIFFE ID of the agent (agent identity)
    #[arg(long = "spiffeID", value_name = "string", default_value = "")]
    spiffe_id: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// `agent purge` flags.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Amount of time that has passed since the agent's SVID has expired. It is used to determine which agents to purge.
    #[arg(verbatim_doc_comment, long = "expiredFor", value_name = "duration", default_value = "720h0m0s", value_parser = go_duration)]
    expired_for: Duration,
    /// Indicates that the command will not perform any action, but will print the agents that would be purged.
    #[arg(verbatim_doc_comment, long = "dryRun", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = super::printer::go_bool)]
    dry_run: bool,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs an `agent` subcommand.
pub(crate) async fn run(command: AgentCommand, env: &mut Env<'_>) -> CliResult {
    match command {
        AgentCommand::List(args) => list(args, env).await,
        AgentCommand::Show(args) => show(args, env).await,
        AgentCommand::Count(args) => count(args, env).await,
        AgentCommand::Evict(args) => evict(args, env).await,
        AgentCommand::Ban(args) => ban(args, env).await,
        AgentCommand::Purge(args) => purge(args, env).await,
    }
}

async fn agent_client(socket: &SocketArg) -> Result<AgentClient, CliError> {
    Ok(AgentClient::new(client::connect(&socket.path()?).await?))
}

fn tristate(value: &str) -> Option<pbjson_types::BoolValue> {
    match value {
        "true" => Some(pbjson_types::BoolValue { value: true }),
        "false" => Some(pbjson_types::BoolValue { value: false }),
        _ => None,
    }
}

fn validate_date(value: &str) -> Result<(), CliError> {
    if value.len() < 10 {
        return Err(CliError::invalid("date is too short"));
    }
    if value.len() > 10 {
        return Err(CliError::invalid("date is too long"));
    }
    let bad = || CliError::invalid(format!("parsing time {value:?}: expected YYYY-MM-DD"));
    let mut parts = value.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let day: u8 = d.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    time::Date::from_calendar_date(year, month, day)
        .map(|_| ())
        .map_err(|_| bad())
}

fn list_filter(f: &AgentFilters) -> Result<agentv1::list_agents_request::Filter, CliError> {
    let mut filter = agentv1::list_agents_request::Filter {
        by_attestation_type: f.attestation_type.clone(),
        by_banned: tristate(&f.banned),
        by_can_reattest: tristate(&f.can_reattest),
        ..Default::default()
    };
    if !f.selectors.is_empty() {
        let mode = match f.match_selectors_on.as_str() {
            "exact" => 0,
            "subset" => 1,
            "superset" => 2,
            "any" => 3,
            other => {
                return Err(CliError::invalid(format!(
                    "match behavior {other:?} unknown"
                )));
            }
        };
        filter.by_selector_match = Some(types::SelectorMatch {
            selectors: f
                .selectors
                .iter()
                .map(|s| selector_proto(s))
                .collect::<Result<_, _>>()?,
            r#match: mode,
        });
    }
    if !f.expires_before.is_empty() {
        validate_date(&f.expires_before)?;
        filter.by_expires_before = f.expires_before.clone();
    }
    Ok(filter)
}

async fn list(args: ListArgs, env: &mut Env<'_>) -> CliResult {
    let filter = list_filter(&args.filters)?;
    let mut client = agent_client(&args.socket).await?;
    let mut resp = agentv1::ListAgentsResponse::default();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_agents(agentv1::ListAgentsRequest {
                filter: Some(filter.clone()),
                output_mask: None,
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await
            .map_err(CliError::rpc(""))?
            .into_inner();
        resp.agents.extend(page.agents);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.agent.v1.ListAgentsResponse",
        |env, resp| {
            env.print(&format_agents(&resp.agents));
            Ok(())
        },
    )
}

/// `Found N attested agents:` and each agent, as `agent list` prints them (upstream's
/// `No attested agents found` when there are none).
pub(crate) fn format_agents(agents: &[types::Agent]) -> String {
    if agents.is_empty() {
        return "No attested agents found\n".to_owned();
    }
    let mut text = pluralize(
        &format!("Found {} attested ", agents.len()),
        "agent",
        "agents",
        agents.len(),
    );
    text.push_str(":\n\n");
    for agent in agents {
        text.push_str(&format_agent(agent));
    }
    text
}

fn format_agent(agent: &types::Agent) -> String {
    let mut text = format!(
        "SPIFFE ID         : {}\n\
         Attestation type  : {}\n\
         Expiration time   : {}\n",
        id_string(agent.id.as_ref()),
        agent.attestation_type,
        go_time_utc(agent.x509svid_expires_at),
    );
    // A banned agent has no serial number; upstream says it is banned instead.
    if agent.banned {
        text.push_str("Banned            : true\n");
    } else {
        text.push_str(&format!(
            "Serial number     : {}\n",
            agent.x509svid_serial_number
        ));
    }
    text.push_str(&format!("Can re-attest     : {}\n", agent.can_reattest));
    // Upstream 1.15's line; agents before 1.15 report no version and get none.
    if !agent.agent_version.is_empty() {
        text.push_str(&format!("Agent version     : {}\n", agent.agent_version));
    }
    text.push('\n');
    text
}

fn required_id(args: &IdArgs) -> Result<types::Spiffeid, CliError> {
    if args.spiffe_id.is_empty() {
        return Err(CliError::invalid("a SPIFFE ID is required"));
    }
    id_proto(&args.spiffe_id)
}

async fn show(args: IdArgs, env: &mut Env<'_>) -> CliResult {
    let id = required_id(&args)?;
    let agent = agent_client(&args.socket)
        .await?
        .get_agent(agentv1::GetAgentRequest {
            id: Some(id),
            output_mask: None,
        })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &agent,
        "spire.api.types.Agent",
        |env, agent| {
            env.print(&format_agent_show(agent));
            Ok(())
        },
    )
}

/// `agent show`'s layout: the agent, then its selectors.
pub(crate) fn format_agent_show(agent: &types::Agent) -> String {
    let mut text = String::from("Found an attested agent given its SPIFFE ID\n\n");
    text.push_str(&format_agent(agent));
    for s in &agent.selectors {
        text.push_str(&format!("Selectors         : {}:{}\n", s.r#type, s.value));
    }
    text
}

async fn count(args: CountArgs, env: &mut Env<'_>) -> CliResult {
    let f = list_filter(&args.filters)?;
    let filter = agentv1::count_agents_request::Filter {
        by_attestation_type: f.by_attestation_type,
        by_selector_match: f.by_selector_match,
        by_banned: f.by_banned,
        by_can_reattest: f.by_can_reattest,
        by_expires_before: f.by_expires_before,
    };
    let resp = agent_client(&args.socket)
        .await?
        .count_agents(agentv1::CountAgentsRequest {
            filter: Some(filter),
        })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "spire.api.server.agent.v1.CountAgentsResponse",
        |env, resp| {
            let count = usize::try_from(resp.count).unwrap_or_default();
            env.print(&pluralize(
                &format!("{count} attested "),
                "agent",
                "agents",
                count,
            ));
            env.print("\n");
            Ok(())
        },
    )
}

async fn evict(args: IdArgs, env: &mut Env<'_>) -> CliResult {
    let id = required_id(&args)?;
    let resp = agent_client(&args.socket)
        .await?
        .delete_agent(agentv1::DeleteAgentRequest { id: Some(id) })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "google.protobuf.Empty",
        |env, _| {
            env.print("Agent evicted successfully\n");
            Ok(())
        },
    )
}

async fn ban(args: IdArgs, env: &mut Env<'_>) -> CliResult {
    let id = required_id(&args)?;
    let resp = agent_client(&args.socket)
        .await?
        .ban_agent(agentv1::BanAgentRequest { id: Some(id) })
        .await
        .map_err(CliError::rpc(""))?
        .into_inner();
    print_proto(
        env,
        args.output.output,
        &resp,
        "google.protobuf.Empty",
        |env, _| {
            env.print("Agent banned successfully\n");
            Ok(())
        },
    )
}

/// `agent purge`'s result, in upstream's JSON shape.
#[derive(Debug, Serialize)]
struct ExpiredAgents {
    expired_agents: Vec<ExpiredAgent>,
}

#[derive(Debug, Serialize)]
struct ExpiredAgent {
    agent_id: String,
    deleted: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

async fn purge(args: PurgeArgs, env: &mut Env<'_>) -> CliResult {
    let mut client = agent_client(&args.socket).await?;
    let resp = client
        .list_agents(agentv1::ListAgentsRequest {
            filter: Some(agentv1::list_agents_request::Filter {
                by_can_reattest: Some(pbjson_types::BoolValue { value: true }),
                ..Default::default()
            }),
            output_mask: Some(types::AgentMask {
                x509svid_expires_at: true,
                ..Default::default()
            }),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .map_err(CliError::rpc("failed to list agents: "))?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let threshold = i64::try_from(args.expired_for.as_secs()).unwrap_or(i64::MAX);
    let mut result = ExpiredAgents {
        expired_agents: Vec::new(),
    };
    for agent in resp.agents {
        if now.saturating_sub(agent.x509svid_expires_at) <= threshold {
            continue;
        }
        let mut expired = ExpiredAgent {
            agent_id: id_string(agent.id.as_ref()),
            deleted: false,
            error: String::new(),
        };
        if !args.dry_run {
            match client
                .delete_agent(agentv1::DeleteAgentRequest { id: agent.id })
                .await
            {
                Ok(_) => expired.deleted = true,
                Err(status) => expired.error = client::format_status(&status),
            }
        }
        result.expired_agents.push(expired);
    }
    let dry_run = args.dry_run;
    print_struct(env, args.output.output, &result, |env, result| {
        env.print(&format_purge(result, dry_run));
        Ok(())
    })
}

fn format_purge(result: &ExpiredAgents, dry_run: bool) -> String {
    let agents = &result.expired_agents;
    if agents.is_empty() {
        return "No agents to purge.\n".to_owned();
    }
    let mut text = pluralize(
        &format!("Found {} expired ", agents.len()),
        "agent",
        "agents",
        agents.len(),
    );
    text.push_str("\n\n");
    if dry_run {
        text.push_str("\nAgents that can be purged:\n");
        for a in agents {
            text.push_str(&format!("SPIFFE ID         : {}\n", a.agent_id));
        }
        return text;
    }
    let purged: Vec<_> = agents.iter().filter(|a| a.deleted).collect();
    let not_purged: Vec<_> = agents.iter().filter(|a| !a.deleted).collect();
    if !purged.is_empty() {
        text.push_str("Agents purged:\n");
        for a in purged {
            text.push_str(&format!("SPIFFE ID         : {}\n", a.agent_id));
        }
    }
    if !not_purged.is_empty() {
        text.push_str("Agents not purged:\n");
        for a in not_purged {
            text.push_str(&format!("SPIFFE ID         : {}\n", a.agent_id));
            if !a.error.is_empty() {
                text.push_str(&format!("Error             : {}\n", a.error));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testutil::run;

    fn agent() -> types::Agent {
        types::Agent {
            id: Some(types::Spiffeid {
                trust_domain: "example.org".into(),
                path: "/spire/agent/join_token/abc".into(),
            }),
            attestation_type: "join_token".into(),
            x509svid_serial_number: "12345".into(),
            x509svid_expires_at: 1_552_410_266,
            selectors: vec![types::Selector {
                r#type: "join_token".into(),
                value: "abc".into(),
            }],
            banned: false,
            can_reattest: false,
            agent_version: String::new(),
        }
    }

    #[test]
    fn list_and_show_layouts() {
        let expected_agent = "SPIFFE ID         : spiffe://example.org/spire/agent/join_token/abc\n\
                              Attestation type  : join_token\n\
                              Expiration time   : 2019-03-12 17:04:26 +0000 UTC\n\
                              Serial number     : 12345\n\
                              Can re-attest     : false\n\n";
        assert_eq!(
            format_agents(&[agent()]),
            format!("Found 1 attested agent:\n\n{expected_agent}")
        );
        assert_eq!(format_agents(&[]), "No attested agents found\n");
        assert_eq!(
            format_agent_show(&agent()),
            format!(
                "Found an attested agent given its SPIFFE ID\n\n{expected_agent}Selectors         : join_token:abc\n"
            )
        );
    }

    #[test]
    fn purge_layouts() {
        let result = ExpiredAgents {
            expired_agents: vec![
                ExpiredAgent {
                    agent_id: "spiffe://td/a".into(),
                    deleted: true,
                    error: String::new(),
                },
                ExpiredAgent {
                    agent_id: "spiffe://td/b".into(),
                    deleted: false,
                    error: "boom".into(),
                },
            ],
        };
        assert_eq!(
            format_purge(&result, false),
            "Found 2 expired agents\n\nAgents purged:\nSPIFFE ID         : spiffe://td/a\nAgents not purged:\nSPIFFE ID         : spiffe://td/b\nError             : boom\n"
        );
        assert_eq!(
            serde_json::to_string(&result).unwrap(),
            r#"{"expired_agents":[{"agent_id":"spiffe://td/a","deleted":true},{"agent_id":"spiffe://td/b","deleted":false,"error":"boom"}]}"#
        );
        let empty = ExpiredAgents {
            expired_agents: vec![],
        };
        assert_eq!(format_purge(&empty, true), "No agents to purge.\n");
    }

    #[test]
    fn commands_on_one_agent_need_its_id() {
        for sub in ["show", "evict", "ban"] {
            let (code, _, err) = run(&["agent", sub, "-socketPath", "/x.sock"]);
            assert_eq!(code, 1);
            assert_eq!(err, "Error: a SPIFFE ID is required\n");
        }
    }

    #[test]
    fn list_filters_are_checked() {
        let (code, _, err) = run(&["agent", "list", "-expiresBefore", "2024-1-1"]);
        assert_eq!((code, err.as_str()), (1, "Error: date is too short\n"));
        let (code, _, err) = run(&["agent", "list", "-selector", "nocolon"]);
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "Error: selector \"nocolon\" must be formatted as type:value\n"
        );
    }
}
