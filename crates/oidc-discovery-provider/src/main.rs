//! `oidc-discovery-provider`: see the library's documentation and `docs/oidc-discovery.md`.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match oidc_discovery_provider::cli::parse(&args) {
        Ok(oidc_discovery_provider::cli::Parsed::Run(options)) => options,
        Ok(oidc_discovery_provider::cli::Parsed::Exit { text, code }) => {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            return ExitCode::from(code);
        }
        Err(text) => {
            eprint!("{text}");
            return ExitCode::from(2);
        }
    };
    let config = match oidc_discovery_provider::config::load(&options.config, options.expand_env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = spire_common::logging::init(
        &config.log_level,
        &config.log_format,
        config.log_path.as_deref(),
    ) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(stop_on_signal(cancel.clone()));
        oidc_discovery_provider::run(config, cancel).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "oidc-discovery-provider stopped");
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM.
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for SIGINT and SIGTERM; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("Stopping");
    cancel.cancel();
}
