//! `spire-agent healthcheck`: asks the agent's gRPC health service, served on the Workload
//! API socket as upstream serves it, whether the agent is up.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use spire_proto::health::pb::HealthCheckRequest;
use spire_proto::health::pb::health_check_response::ServingStatus;
use spire_proto::health::pb::health_client::HealthClient;

use super::printer::go_bool;
use super::{DEFAULT_SOCKET_PATH, Env, Failure, client};

/// How long the check may take, as upstream's default.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `spire-agent healthcheck`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HealthcheckArgs {
    /// Perform a less stringent health check
    #[arg(long = "shallow", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    shallow: bool,
    /// Instance name to substitute into socket templates (env SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE).
    #[arg(verbatim_doc_comment, long = "instance", value_name = "string")]
    instance: Option<String>,
    /// Path to the SPIRE Agent API socket
    #[arg(long = "socketPath", value_name = "string", default_value = DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
    /// Print verbose information
    #[arg(long = "verbose", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    verbose: bool,
}

/// Runs the check; prints `Agent is healthy.` or fails with `Error: agent is unavailable`.
pub(super) async fn run(args: HealthcheckArgs, env: &mut Env<'_>) -> Result<(), Failure> {
    // Upstream accepts -shallow and checks the same way either way.
    let _ = args.shallow;
    if args.verbose {
        env.print("Checking agent health...\n");
    }
    let socket_path = match super::public_socket_path(&args.socket_path, args.instance.as_deref()) {
        Ok(path) => path,
        Err(e) => {
            env.eprint(&format!("Error: {e}\n"));
            return Err(Failure::Printed);
        }
    };
    let status = check(&socket_path).await;
    match status {
        Ok(status) if status == ServingStatus::Serving as i32 => {
            env.print("Agent is healthy.\n");
            Ok(())
        }
        Ok(status) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            env.eprint(&format!("Error: agent is unhealthy: {name}\n"));
            Err(Failure::Printed)
        }
        Err(e) => {
            if args.verbose {
                env.eprint(&format!("Failed to check health: {e}\n"));
            }
            env.eprint("Error: agent is unavailable\n");
            Err(Failure::Printed)
        }
    }
}

async fn check(socket_path: &std::path::Path) -> Result<i32, String> {
    let channel = client::connect(socket_path, "Workload API")
        .await
        .map_err(|e| e.to_string())?;
    let mut health = HealthClient::new(channel);
    let response = client::with_timeout(
        TIMEOUT,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|s| client::format_status(&s))?;
    Ok(response.into_inner().status)
}
