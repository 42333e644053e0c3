//! Go-style flag handling around clap: which words are long flags, upstream's
//! `Usage of <command>:` text, and how parse errors are reported.

use clap::error::ErrorKind;

use super::Env;

/// Follows the leading words of `path` down the subcommand tree.
fn find<'a>(root: &'a clap::Command, path: &[String]) -> Option<&'a clap::Command> {
    let mut command = root;
    for word in path {
        command = command.find_subcommand(word)?;
    }
    Some(command)
}

/// Whether `name` is a long flag of the command at `path` (for `goflags::normalize`).
/// `-help` is Go's help flag everywhere.
pub fn is_long_flag(root: &clap::Command, path: &[String], name: &str) -> bool {
    if name == "help" {
        return true;
    }
    if path.is_empty() && name == "version" {
        return true;
    }
    find(root, path).is_some_and(|command| {
        command
            .get_arguments()
            .any(|arg| arg.get_long() == Some(name))
    })
}

/// The subcommand words at the front of `args` that name real subcommands.
pub fn command_path(root: &clap::Command, args: &[String]) -> Vec<String> {
    let mut path = Vec::new();
    let mut command = root;
    for arg in args {
        match command.find_subcommand(arg) {
            Some(sub) => {
                path.push(arg.clone());
                command = sub;
            }
            None => break,
        }
    }
    path
}

/// Upstream's flag usage for a command that takes flags: `Usage of entry show:` then each flag in
/// alphabetical order with its Go type and help, defaults shown as Go shows them.
pub fn go_usage(root: &clap::Command, path: &[String]) -> Option<String> {
    let command = find(root, path)?;
    if path.is_empty() {
        return None;
    }
    let mut flags: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help"))
        .collect();
    // `api fetch` has flags of its own (it fetches X509 by default) as well as subcommands.
    if command.has_subcommands() && flags.is_empty() {
        return None;
    }
    flags.sort_by_key(|a| a.get_long().unwrap_or_default());
    let mut text = format!("Usage of {}:\n", path.join(" "));
    for flag in flags {
        let long = flag.get_long().unwrap_or_default();
        // Go-style bool flags take an optional `=value` that defaults to true.
        let is_bool = flag.get_num_args().is_some_and(|r| r.min_values() == 0);
        let kind = flag
            .get_value_names()
            .and_then(|names| names.first())
            .filter(|_| !is_bool)
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default();
        if is_bool {
            text.push_str(&format!("  -{long}\n"));
        } else {
            text.push_str(&format!("  -{long} {kind}\n"));
        }
        let help = flag.get_help().map(ToString::to_string).unwrap_or_default();
        text.push_str(&format!("    \t{help}"));
        let default = flag
            .get_default_values()
            .first()
            .filter(|_| !flag.is_hide_default_value_set())
            .map(|d| d.to_string_lossy().into_owned());
        if let Some(default) = default {
            let zero = matches!(default.as_str(), "" | "0" | "false" | "0s");
            if !zero && !is_bool {
                if kind == "string" {
                    text.push_str(&format!(" (default {default:?})"));
                } else {
                    text.push_str(&format!(" (default {default})"));
                }
            }
        }
        text.push('\n');
    }
    Some(text)
}

/// Prints what upstream prints for help, version and flag errors; returns the exit status.
pub fn report_parse_error(
    root: &clap::Command,
    path: &[String],
    error: &clap::Error,
    env: &mut Env<'_>,
) -> i32 {
    match error.kind() {
        ErrorKind::DisplayHelp => {
            match go_usage(root, path) {
                Some(usage) => env.eprint(&usage),
                None => env.eprint(&error.render().to_string()),
            }
            0
        }
        ErrorKind::DisplayVersion => {
            env.print(&error.render().to_string());
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingSubcommand
        | ErrorKind::InvalidSubcommand => {
            env.eprint(&error.render().to_string());
            1
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let message = first
                .strip_prefix("error: ")
                .unwrap_or(first)
                .replace("'--", "'-");
            env.eprint(&format!("Error: {message}\n"));
            if let Some(usage) = go_usage(root, path) {
                env.eprint(&usage);
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn root() -> Command {
        Command::new("demo").subcommand(
            Command::new("entry").subcommand(
                Command::new("show")
                    .arg(
                        Arg::new("socket")
                            .long("socketPath")
                            .value_name("string")
                            .default_value("/tmp/api.sock")
                            .help("Path to the API socket"),
                    )
                    .arg(
                        Arg::new("ttl")
                            .long("ttl")
                            .value_name("int")
                            .default_value("0")
                            .help("TTL in seconds"),
                    )
                    .arg(
                        Arg::new("verbose")
                            .long("verbose")
                            .num_args(0..=1)
                            .default_missing_value("true")
                            .action(ArgAction::Set)
                            .help("Print more"),
                    ),
            ),
        )
    }

    fn path(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn long_flags_are_known_per_command() {
        let root = root();
        assert!(is_long_flag(&root, &path(&["entry", "show"]), "socketPath"));
        assert!(is_long_flag(&root, &path(&["entry", "show"]), "help"));
        assert!(!is_long_flag(&root, &path(&["entry"]), "socketPath"));
        assert!(is_long_flag(&root, &[], "version"));
    }

    #[test]
    fn command_path_stops_at_the_first_non_command_word() {
        let words = path(&["entry", "show", "-ttl", "5"]);
        assert_eq!(command_path(&root(), &words), path(&["entry", "show"]));
    }

    #[test]
    fn usage_lists_flags_like_go() {
        let usage = go_usage(&root(), &path(&["entry", "show"]));
        assert_eq!(
            usage.as_deref(),
            Some(
                "Usage of entry show:\n  -socketPath string\n    \tPath to the API socket (default \"/tmp/api.sock\")\n  -ttl int\n    \tTTL in seconds\n  -verbose\n    \tPrint more\n"
            )
        );
        assert_eq!(go_usage(&root(), &path(&["entry"])), None);
    }
}
