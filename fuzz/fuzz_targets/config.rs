//! `server.conf` / `agent.conf` in HCL or JSON: loading, resolving and building the catalog
//! never panic on any text, and HCL the loader accepts reads the same twice.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The loader picks JSON when the text starts with `{`, HCL otherwise.
    let no_env = |_: &str| None;
    if let Ok(first) = spire_core::config::parse_value("fuzz.conf", text) {
        let again = spire_core::config::parse_value("fuzz.conf", text);
        assert_eq!(again.ok(), Some(first), "parsing must be deterministic");
    }
    if let Ok(server) = spire_server::config::load_str_with_env("server.conf", text, true, no_env) {
        if server.resolve().is_ok() {
            let _ = spire_server::catalog::from_config(&server);
        }
    }
    if let Ok(agent) = spire_agent::config::load_str_with_env("agent.conf", text, true, no_env) {
        let _ = agent.resolve();
    }
    let _ = spire_core::config::expand_env_vars(text, |name| Some(name.to_owned()));
});
