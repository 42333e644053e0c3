//! Go-style command lines for a clap-based CLI.
//!
//! Upstream's CLI uses Go's `flag` package: long flags take one dash (`-spiffeID`,
//! `-socketPath`), values follow as `-flag value` or `-flag=value`, and `--flag` works too.
//! clap only knows `--long`, so arguments are rewritten before clap sees them: `-name[=v]`
//! becomes `--name[=v]` when `name` is a long flag of the command being run. Everything else
//! (values, positional arguments, clap's own short flags) passes through untouched.

/// Rewrites Go-style single-dash long flags to clap's double-dash form.
///
/// `args` excludes the program name. `is_long_flag(path, name)` says whether `name` is a long
/// flag of the subcommand at `path` (the leading non-flag words, e.g. `["entry", "create"]`).
/// Rewriting stops after a bare `--`, as Go's flag parsing does.
pub fn normalize<I, S, F>(args: I, is_long_flag: F) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
    F: Fn(&[String], &str) -> bool,
{
    let mut path: Vec<String> = Vec::new();
    let mut seen_flag = false;
    let mut done = false;
    let mut out = Vec::new();
    for arg in args {
        let arg: String = arg.into();
        if done {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            done = true;
            out.push(arg);
            continue;
        }
        if let Some(body) = arg.strip_prefix('-').filter(|b| !b.is_empty()) {
            seen_flag = true;
            if !body.starts_with('-') {
                let name = body.split_once('=').map_or(body, |(n, _)| n);
                if is_long_flag(&path, name) {
                    out.push(format!("-{arg}"));
                    continue;
                }
            }
            out.push(arg);
            continue;
        }
        if !seen_flag {
            path.push(arg.clone());
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny model of `spire-server`: `entry create` and `entry show` with some flags.
    fn spire_server_flags(path: &[String], name: &str) -> bool {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let flags: &[&str] = match path.as_slice() {
            ["entry", "create"] => &[
                "spiffeID",
                "parentID",
                "selector",
                "socketPath",
                "x509SVIDTTL",
                "output",
                "node",
            ],
            ["entry", "show"] => &["entryID", "output"],
            ["run"] => &["config", "expandEnv"],
            _ => &[],
        };
        flags.contains(&name)
    }

    fn norm(args: &[&str]) -> Vec<String> {
        normalize(args.iter().copied(), spire_server_flags)
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://td/w",
                "-parentID=spiffe://td/a",
                "-selector",
                "unix:uid:1000",
                "-selector",
                "unix:gid:0",
                "-node"
            ]),
            [
                "entry",
                "create",
                "--spiffeID",
                "spiffe://td/w",
                "--parentID=spiffe://td/a",
                "--selector",
                "unix:uid:1000",
                "--selector",
                "unix:gid:0",
                "--node"
            ]
        );
    }

    #[test]
    fn double_dash_and_unknown_flags_pass_through() {
        assert_eq!(
            norm(&["entry", "show", "--entryID", "x"]),
            ["entry", "show", "--entryID", "x"]
        );
        // Unknown to this command: left for clap to reject with its own message.
        assert_eq!(
            norm(&["entry", "show", "-spiffeID", "x"]),
            ["entry", "show", "-spiffeID", "x"]
        );
        assert_eq!(norm(&["run", "-h"]), ["run", "-h"]);
    }

    #[test]
    fn values_that_look_like_subcommands_do_not_extend_the_path() {
        // "create" after a flag is a value, so -output still belongs to `entry show`.
        assert_eq!(
            norm(&["entry", "show", "-entryID", "create", "-output", "json"]),
            ["entry", "show", "--entryID", "create", "--output", "json"]
        );
    }

    #[test]
    fn nothing_is_rewritten_after_a_bare_double_dash() {
        assert_eq!(
            norm(&["run", "-config", "a.conf", "--", "-expandEnv"]),
            ["run", "--config", "a.conf", "--", "-expandEnv"]
        );
        assert_eq!(norm(&["run", "-"]), ["run", "-"]);
    }
}
