//! Where AWS credentials come from, in the order upstream's SDK looks: keys written in the
//! plugin's configuration, then the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
//! `default`), then the EC2 instance role from the instance metadata service.

use std::time::SystemTime;

use zeroize::Zeroizing;

/// A set of AWS credentials.
#[derive(Clone)]
pub struct Credentials {
    /// `AKIA...` / `ASIA...`.
    pub access_key_id: String,
    /// The secret key; never logged.
    pub secret_access_key: Zeroizing<String>,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
    /// When temporary credentials expire.
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Static credentials.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: Zeroizing::new(secret_access_key.to_owned()),
            session_token: session_token.filter(|t| !t.is_empty()).map(str::to_owned),
            expires_at: None,
        }
    }

    /// Whether the credentials expire within five minutes (and so are refreshed first).
    pub fn expiring(&self) -> bool {
        self.expires_at.is_some_and(|at| {
            at.duration_since(SystemTime::now())
                .map_or(true, |left| left.as_secs() < 300)
        })
    }
}

/// Credentials from the environment variables, when both keys are set.
pub fn from_env() -> Option<Credentials> {
    let id = std::env::var("AWS_ACCESS_KEY_ID")
        .ok()
        .filter(|v| !v.is_empty())?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
        .ok()
        .filter(|v| !v.is_empty())?;
    let token = std::env::var("AWS_SESSION_TOKEN").ok();
    Some(Credentials::new(&id, &secret, token.as_deref()))
}

/// Credentials from the shared credentials file, when it has the profile.
pub fn from_shared_file() -> Option<Credentials> {
    let path = match std::env::var("AWS_SHARED_CREDENTIALS_FILE") {
        Ok(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(std::env::var("HOME").ok()?)
            .join(".aws")
            .join("credentials"),
    };
    let profile = std::env::var("AWS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let text = std::fs::read_to_string(path).ok()?;
    parse_shared_file(&text, &profile)
}

/// The profile's keys in a shared credentials file's INI text.
pub fn parse_shared_file(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    Some(Credentials::new(&id?, &secret?, token.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n[other]\n\
                    aws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        let c = parse_shared_file(text, "default").unwrap();
        assert_eq!(c.access_key_id, "A");
        assert_eq!(c.secret_access_key.as_str(), "S");
        assert!(c.session_token.is_none());
        let c = parse_shared_file(text, "other").unwrap();
        assert_eq!(c.access_key_id, "B");
        assert_eq!(c.session_token.as_deref(), Some("X"));
        assert!(parse_shared_file(text, "missing").is_none());
    }
}
