//! `experimental.feature_flags` of `server.conf` and `agent.conf`, checked as upstream's
//! `pkg/common/fflag` (v1.15.3) loads them: only the flags upstream defines are accepted, any
//! other fails the start with upstream's `unknown feature flag(s): [...]`. Of upstream's two
//! flags, `i_am_a_test_flag` changes nothing (upstream's neither) and `wit-svid` turns on
//! WIT-SVIDs, which this build does not have, so it is refused naming why.

use super::ConfigError;

/// Upstream's test-only flag: accepted, acts on nothing.
const TEST_FLAG: &str = "i_am_a_test_flag";
/// Upstream v1.15.3's flag for WIT-SVIDs and their APIs.
const WIT_SVID_FLAG: &str = "wit-svid";

/// Checks the `feature_flags` list at `key` (`server.experimental.feature_flags`) of `file`
/// for `binary` (`server`/`agent`, named in the refusal), pushing upstream's warning for each
/// accepted flag onto `warnings`.
pub fn check(
    file: &str,
    key: &str,
    binary: &str,
    flags: &[String],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut unknown: Vec<&str> = flags
        .iter()
        .map(String::as_str)
        .filter(|f| ![TEST_FLAG, WIT_SVID_FLAG].contains(f))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(ConfigError::invalid(
            file,
            key,
            format!(
                "error loading feature flags: unknown feature flag(s): [{}]; the flags upstream \
                 defines are {TEST_FLAG:?} and {WIT_SVID_FLAG:?}",
                unknown.join(" ")
            ),
        ));
    }
    if flags.iter().any(|f| f == WIT_SVID_FLAG) {
        return Err(ConfigError::invalid(
            file,
            key,
            format!(
                "the {WIT_SVID_FLAG:?} flag turns on WIT-SVIDs, which this {binary} does not \
                 support; remove the flag"
            ),
        ));
    }
    for flag in flags {
        warnings.push(format!("Developer feature flag {flag:?} has been enabled"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_test_flag_is_accepted_with_upstreams_warning() {
        let mut warnings = Vec::new();
        check("s.conf", "k", "server", &flags(&[TEST_FLAG]), &mut warnings).unwrap();
        assert_eq!(
            warnings,
            ["Developer feature flag \"i_am_a_test_flag\" has been enabled"]
        );
    }

    #[test]
    fn unknown_flags_are_listed_sorted_as_upstream() {
        let mut warnings = Vec::new();
        let err = check(
            "s.conf",
            "server.experimental.feature_flags",
            "server",
            &flags(&["zeta", TEST_FLAG, "alpha"]),
            &mut warnings,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "s.conf: server.experimental.feature_flags: error loading feature flags: \
                 unknown feature flag(s): [alpha zeta]"
            ),
            "{err}"
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn wit_svid_is_refused_naming_why() {
        let err = check(
            "a.conf",
            "agent.experimental.feature_flags",
            "agent",
            &flags(&[WIT_SVID_FLAG]),
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("turns on WIT-SVIDs, which this agent does not support"),
            "{err}"
        );
    }
}
