//! Which socket a client command dials, as upstream's CLI chooses it: `-socketPath` when it
//! is not the default, else `-instance` substituted for `%i` in the `..._SOCKET_TEMPLATE`
//! environment variable, else the `..._SOCKET` variable, else the default. Hosts running
//! several servers or agents (one per instance) address each by name.

use std::path::{Path, PathBuf};

use super::CliError;

/// The process whose socket is resolved; the two differ only in their error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketOwner {
    /// `spire-server` (`SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE`).
    Server,
    /// `spire-agent` (`SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE`).
    Agent,
}

/// The socket to dial. `template_env` names the template variable; the plain variable is
/// its name without `_TEMPLATE`. `lookup` reads the environment (a parameter so tests need
/// not change the process's).
pub fn resolve_socket_path(
    owner: SocketOwner,
    socket_path: &Path,
    default: &str,
    template_env: &str,
    instance: Option<&str>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, CliError> {
    let instance = instance.filter(|i| !i.is_empty());
    let template = lookup(template_env).filter(|t| !t.is_empty());
    let plain_env = template_env.trim_end_matches("_TEMPLATE");
    if instance.is_some() {
        let Some(template) = &template else {
            return Err(CliError::Invalid(match owner {
                SocketOwner::Server => {
                    format!("you must define {template_env} to use the instance flag")
                }
                SocketOwner::Agent => format!(
                    " {template_env} environment variable must be defined when using the instance flag"
                ),
            }));
        };
        if !template.contains("%i") {
            return Err(CliError::Invalid(format!(
                "failed to find %i in {template_env}"
            )));
        }
    }
    if socket_path != Path::new(default) {
        return Ok(socket_path.to_path_buf());
    }
    if let (Some(instance), Some(template)) = (instance, &template) {
        return Ok(PathBuf::from(template.replace("%i", instance)));
    }
    if let Some(plain) = lookup(plain_env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(plain));
    }
    Ok(PathBuf::from(default))
}

/// [`resolve_socket_path`] reading the process environment.
pub fn resolve_socket_path_from_env(
    owner: SocketOwner,
    socket_path: &Path,
    default: &str,
    template_env: &str,
    instance: Option<&str>,
) -> Result<PathBuf, CliError> {
    resolve_socket_path(owner, socket_path, default, template_env, instance, |k| {
        std::env::var(k).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "/tmp/spire-server/private/api.sock";
    const TEMPLATE: &str = "SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE";

    fn resolve(
        socket: &str,
        instance: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<PathBuf, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        resolve_socket_path(
            SocketOwner::Server,
            Path::new(socket),
            DEFAULT,
            TEMPLATE,
            instance,
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_choice_follows_upstreams_order() {
        let env = [
            (TEMPLATE, "/run/spire/%i/api.sock"),
            ("SPIRE_SERVER_PRIVATE_SOCKET", "/run/spire/plain.sock"),
        ];
        assert_eq!(resolve("/x.sock", Some("a"), &env), Ok("/x.sock".into()));
        assert_eq!(
            resolve(DEFAULT, Some("a"), &env),
            Ok("/run/spire/a/api.sock".into())
        );
        assert_eq!(
            resolve(DEFAULT, None, &env),
            Ok("/run/spire/plain.sock".into())
        );
        assert_eq!(resolve(DEFAULT, None, &[]), Ok(DEFAULT.into()));
    }

    #[test]
    fn an_instance_needs_a_template_with_its_placeholder() {
        assert_eq!(
            resolve(DEFAULT, Some("a"), &[]),
            Err(
                "you must define SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE to use the instance flag"
                    .into()
            )
        );
        assert_eq!(
            resolve(DEFAULT, Some("a"), &[(TEMPLATE, "/run/spire.sock")]),
            Err("failed to find %i in SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE".into())
        );
        // Checked even when -socketPath wins, as upstream.
        assert!(resolve("/x.sock", Some("a"), &[]).is_err());
    }
}
