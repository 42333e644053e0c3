//! Upstream's command line (Go's `flag` package): `-config <path>` (default
//! `oidc-discovery-provider.conf`), `-expandEnv`, `-version`; flags take one or two dashes and
//! values as `-flag value` or `-flag=value`.

use std::path::PathBuf;

/// The default `-config`.
const DEFAULT_CONFIG: &str = "oidc-discovery-provider.conf";

/// What to run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-config`.
    pub config: PathBuf,
    /// `-expandEnv`.
    pub expand_env: bool,
}

/// The outcome of parsing the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Start the provider.
    Run(Options),
    /// Print `text` and exit with `code` (`-version`, `-help`, stray arguments).
    Exit {
        /// What to print (standard output when `code` is 0, standard error otherwise).
        text: String,
        /// The exit code.
        code: u8,
    },
}

/// Go's `flag.PrintDefaults` for our flags.
pub fn usage() -> String {
    format!(
        "Usage of oidc-discovery-provider:\n  -config string\n    \tconfiguration file (default \
         \"{DEFAULT_CONFIG}\")\n  -expandEnv\n    \texpand environment variables in config \
         file\n  -version\n    \tprint version\n"
    )
}

/// Parses `args` (without the program name); `Err` carries the text for a flag error (exit 2).
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut options = Options {
        config: PathBuf::from(DEFAULT_CONFIG),
        expand_env: false,
    };
    let mut version = false;
    let mut index = 0;
    while let Some(arg) = args.get(index) {
        if arg == "--" {
            index += 1;
            break;
        }
        let Some(body) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|b| !b.is_empty())
        else {
            break;
        };
        index += 1;
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        match name {
            "config" => {
                let value = match value {
                    Some(v) => v,
                    None => {
                        let Some(next) = args.get(index) else {
                            return Err(format!("flag needs an argument: -config\n{}", usage()));
                        };
                        index += 1;
                        next.clone()
                    }
                };
                options.config = PathBuf::from(value);
            }
            "expandEnv" => options.expand_env = bool_value(name, value.as_deref())?,
            "version" => version = bool_value(name, value.as_deref())?,
            "h" | "help" => {
                return Ok(Parsed::Exit {
                    text: usage(),
                    code: 0,
                });
            }
            other => {
                return Err(format!(
                    "flag provided but not defined: -{other}\n{}",
                    usage()
                ));
            }
        }
    }
    let rest = args.get(index..).unwrap_or_default();
    if version {
        return Ok(Parsed::Exit {
            text: format!("{}\n", env!("CARGO_PKG_VERSION")),
            code: 0,
        });
    }
    if !rest.is_empty() {
        return Ok(Parsed::Exit {
            text: format!("Error: unexpected arguments: {rest:?}\n{}", usage()),
            code: 1,
        });
    }
    Ok(Parsed::Run(options))
}

fn bool_value(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some(v) => match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(format!(
                "invalid boolean value {v:?} for -{name}: parse error\n{}",
                usage()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_as_go_reads_them() {
        assert_eq!(
            parse(&args(&[])).unwrap(),
            Parsed::Run(Options {
                config: PathBuf::from(DEFAULT_CONFIG),
                expand_env: false
            })
        );
        assert_eq!(
            parse(&args(&["-config", "a.conf", "--expandEnv"])).unwrap(),
            Parsed::Run(Options {
                config: PathBuf::from("a.conf"),
                expand_env: true
            })
        );
        assert_eq!(
            parse(&args(&["--config=b.conf", "-expandEnv=false"])).unwrap(),
            Parsed::Run(Options {
                config: PathBuf::from("b.conf"),
                expand_env: false
            })
        );
        assert!(matches!(
            parse(&args(&["-version"])).unwrap(),
            Parsed::Exit { code: 0, .. }
        ));
        let error = parse(&args(&["-bogus"])).unwrap_err();
        assert!(
            error.starts_with("flag provided but not defined: -bogus"),
            "{error}"
        );
        assert!(parse(&args(&["-config"])).is_err());
        match parse(&args(&["-config", "c", "extra"])).unwrap() {
            Parsed::Exit { text, code } => {
                assert_eq!(code, 1);
                assert!(text.contains("unexpected arguments: [\"extra\"]"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
