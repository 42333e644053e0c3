//! `spire-agent api explain -pid N` (beyond upstream): why a process gets no identity. Asks
//! the agent's admin socket (`spire_rs.agent.explain.v1.Explain`) for the selectors its
//! workload attestors find for the process, the entries it matches, the closest entries it
//! does not match with the selectors each lacks, and how the agent's last sync went.

use clap::Args;
use spire_proto::spire_rs::agent::explain::v1 as explainv1;

use super::printer::go_time_utc;
use super::{AdminSocketArg, CliError, CliResult, Env, OutputArg, OutputFormat, client};

/// Flags of `api explain`.
#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The process to explain
    #[arg(long = "pid", value_name = "int")]
    pid: Option<i32>,
    /// How many non-matching entries to show, closest first
    #[arg(long = "closest", value_name = "int", default_value = "5")]
    closest: u32,
    #[command(flatten)]
    socket: AdminSocketArg,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs `api explain`.
pub(crate) async fn run(args: ExplainArgs, env: &mut Env<'_>) -> CliResult {
    let pid = args
        .pid
        .filter(|p| *p > 0)
        .ok_or_else(|| CliError::Invalid("a process ID (-pid) must be set".into()))?;
    let channel = client::connect(&args.socket.socket_path, "admin").await?;
    let response = explainv1::explain_client::ExplainClient::new(channel)
        .explain_workload(explainv1::ExplainWorkloadRequest {
            pid,
            max_closest: args.closest,
        })
        .await
        .map_err(CliError::rpc("failed to explain the workload: "))?
        .into_inner();
    match args.output.output {
        OutputFormat::Json => env.print(&format!("{}\n", to_json(pid, &response))),
        OutputFormat::Pretty => env.print(&render(pid, &response)),
    }
    Ok(())
}

fn time_of(unix: i64) -> String {
    go_time_utc(unix)
}

fn entry_json(e: &explainv1::EntryMatch) -> serde_json::Value {
    serde_json::json!({
        "entry_id": e.entry_id,
        "spiffe_id": e.spiffe_id,
        "selectors": e.selectors,
        "missing_selectors": e.missing_selectors,
    })
}

fn to_json(pid: i32, r: &explainv1::ExplainWorkloadResponse) -> serde_json::Value {
    let sync = r.sync.clone().unwrap_or_default();
    serde_json::json!({
        "pid": pid,
        "selectors": r.selectors,
        "matching": r.matching.iter().map(entry_json).collect::<Vec<_>>(),
        "closest": r.closest.iter().map(entry_json).collect::<Vec<_>>(),
        "entries_total": r.entries_total,
        "sync": {
            "attempted": sync.attempted,
            "succeeded": sync.succeeded,
            "last_attempt_at": sync.last_attempt_at,
            "last_success_at": sync.last_success_at,
            "error": sync.error,
        },
    })
}

fn render(pid: i32, r: &explainv1::ExplainWorkloadResponse) -> String {
    let mut out = format!("Process {pid}\n");
    out.push_str(&format!("Selectors found ({}):\n", r.selectors.len()));
    for s in &r.selectors {
        out.push_str(&format!("  {s}\n"));
    }
    if r.matching.is_empty() {
        out.push_str(&format!(
            "No identity: none of the {} entries the agent holds matches these selectors.\n",
            r.entries_total
        ));
    } else {
        out.push_str(&format!("Identities ({}):\n", r.matching.len()));
        for e in &r.matching {
            out.push_str(&format!("  {} (entry {})\n", e.spiffe_id, e.entry_id));
        }
    }
    if !r.closest.is_empty() {
        out.push_str("Closest entries not matched:\n");
        for e in &r.closest {
            out.push_str(&format!("  {} (entry {})\n", e.spiffe_id, e.entry_id));
            out.push_str(&format!("    selectors: {}\n", e.selectors.join(", ")));
            out.push_str(&format!(
                "    missing:   {}\n",
                e.missing_selectors.join(", ")
            ));
        }
    }
    let sync = r.sync.clone().unwrap_or_default();
    if !sync.attempted {
        out.push_str("Last sync: not attempted yet\n");
    } else if sync.succeeded {
        out.push_str(&format!(
            "Last sync: succeeded at {}\n",
            time_of(sync.last_attempt_at)
        ));
    } else {
        out.push_str(&format!(
            "Last sync: FAILED at {}: {}\n",
            time_of(sync.last_attempt_at),
            sync.error
        ));
        if sync.last_success_at > 0 {
            out.push_str(&format!(
                "Last successful sync: {}\n",
                time_of(sync.last_success_at)
            ));
        }
    }
    out
}
