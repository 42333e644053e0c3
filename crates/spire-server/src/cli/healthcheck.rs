//! `spire-server healthcheck`: asks `grpc.health.v1.Health/Check` over the admin socket.

use clap::Args;
use spire_proto::health::pb::HealthCheckRequest;
use spire_proto::health::pb::health_check_response::ServingStatus;
use spire_proto::health::pb::health_client::HealthClient;

use super::printer::go_bool;
use super::{Env, Failure, SocketArg, client};

/// `healthcheck` flags (upstream gives it no `-output`).
#[derive(Debug, Args)]
pub(crate) struct HealthcheckArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Perform a less stringent health check
    #[arg(long = "shallow", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    shallow: bool,
    /// Print verbose information
    #[arg(long = "verbose", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    verbose: bool,
}

/// Prints `Server is healthy.` or `Server is unhealthy: <why>` (exit status 1).
pub(crate) async fn run(args: HealthcheckArgs, env: &mut Env<'_>) -> Result<(), Failure> {
    match check(&args, env).await {
        Ok(()) => {
            env.print("Server is healthy.\n");
            Ok(())
        }
        Err(why) => {
            env.eprint(&format!("Server is unhealthy: {why}\n"));
            Err(Failure::Printed)
        }
    }
}

async fn check(args: &HealthcheckArgs, env: &mut Env<'_>) -> Result<(), String> {
    // -shallow only matters to the server's own checks; the call is the same.
    let _ = args.shallow;
    if args.verbose {
        env.print("Checking server health...\n");
    }
    let socket_path = args.socket.path().map_err(|e| e.to_string())?;
    let channel = match client::connect(&socket_path).await {
        Ok(channel) => channel,
        Err(e) => {
            if args.verbose {
                env.eprint(&format!("Failed to check health: {e}\n"));
            }
            return Err("unable to determine health".to_owned());
        }
    };
    let resp = match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            if args.verbose {
                env.eprint(&format!(
                    "Failed to check health: {}\n",
                    client::format_status(&status)
                ));
            }
            return Err("unable to determine health".to_owned());
        }
    };
    if resp.status != ServingStatus::Serving as i32 {
        let name = ServingStatus::try_from(resp.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        return Err(format!("server returned status {name:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::testutil::run;

    #[test]
    fn missing_socket_is_unhealthy() {
        let (code, out, err) = run(&["healthcheck", "-socketPath", "/nonexistent.sock"]);
        assert_eq!(code, 1);
        assert_eq!(out, "");
        assert_eq!(err, "Server is unhealthy: unable to determine health\n");
    }

    #[test]
    fn verbose_says_why() {
        let (code, out, err) = run(&[
            "healthcheck",
            "-socketPath",
            "/nonexistent.sock",
            "-verbose",
        ]);
        assert_eq!(code, 1);
        assert_eq!(out, "Checking server health...\n");
        assert!(err.contains("dial unix /nonexistent.sock"), "{err}");
    }
}
