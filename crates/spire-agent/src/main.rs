//! `spire-agent`: the SPIRE agent binary. Everything lives in the library; this only builds
//! the runtime and hands the command line to [`spire_agent::cli::run_cli`].

/// jemalloc rather than glibc's malloc: it hands memory freed after a burst of work back to
/// the system (glibc kept ~45 MiB of a 100k-entry creation) and costs less per Workload API
/// call; measured in docs/benchmarks.md ("Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Another provider may already be installed; either way one is in place.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Not `stdout().lock()`: `run` logs to stdout from every runtime thread, and a lock held
    // here for the whole process would block them all.
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let code = runtime.block_on(spire_agent::cli::run_cli(args, &mut stdout, &mut stderr));
    // `exit` skips the drops that end external plugin processes: end them here.
    spire_common::plugin_host::kill_all();
    std::process::exit(code);
}
