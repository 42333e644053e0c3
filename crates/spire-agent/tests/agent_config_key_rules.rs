//! Keys of `agent { }` that upstream reads only under another key, or that this agent
//! refuses: each with upstream's rule and the exact message an operator gets.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use spire_agent::config::{self, ConfigError, ResolvedAgentConfig};

/// A minimal agent config with `lines` added to the `agent` block, resolved.
fn resolve_with(lines: &str) -> Result<ResolvedAgentConfig, ConfigError> {
    let text = format!(
        "agent {{\n    trust_domain = \"example.org\"\n    server_address = \"127.0.0.1\"\n    \
         insecure_bootstrap = true\n{lines}}}\nplugins {{\n    NodeAttestor \"join_token\" {{ \
         plugin_data {{}} }}\n    KeyManager \"memory\" {{ plugin_data {{}} }}\n    \
         WorkloadAttestor \"unix\" {{ plugin_data {{}} }}\n}}\n"
    );
    config::load_str("agent.conf", &text, false)?.resolve()
}

#[test]
fn profiling_port_freq_and_names_count_only_with_profiling_enabled_which_is_refused() {
    let profiling = "    profiling_port = 6060\n    profiling_freq = 10\n    \
                     profiling_names = [\"cpu\", \"heap\"]\n";
    // Upstream starts its pprof listener and writers only when profiling_enabled is true;
    // this agent has none, so the key that would start them is refused, naming the others.
    let err = resolve_with(&format!("    profiling_enabled = true\n{profiling}"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "agent.conf: agent.profiling_enabled: Go pprof profiling is not available in this \
         agent; remove profiling_enabled (profiling_port, profiling_freq and profiling_names \
         are only read when it is true)"
    );
    // Without it they load and start nothing, as upstream's.
    for lines in [
        profiling.to_owned(),
        format!("    profiling_enabled = false\n{profiling}"),
    ] {
        let c = resolve_with(&lines).unwrap();
        assert!(!c.profiling_enabled);
        assert_eq!(
            (
                c.profiling_port,
                c.profiling_freq,
                c.profiling_names.clone()
            ),
            (6060, 10, vec!["cpu".to_owned(), "heap".to_owned()])
        );
    }
}
