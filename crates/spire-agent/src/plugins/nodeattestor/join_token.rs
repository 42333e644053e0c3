//! The `join_token` node attestor: the payload is the token from `join_token`,
//! `join_token_file` or `-joinToken`. Tokens are single-use, so the server never marks these
//! agents re-attestable.

use async_trait::async_trait;

use super::{NodeAttestor, PluginError};

/// The attestor's name and attestation data type.
pub const NAME: &str = "join_token";

/// Presents a join token.
#[derive(Clone)]
pub struct JoinTokenAttestor {
    token: Option<String>,
}

impl JoinTokenAttestor {
    /// An attestor presenting `token`; without one, attesting fails saying how to give one
    /// (an agent with a stored SVID needs none).
    pub fn new(token: Option<String>) -> Self {
        Self { token }
    }
}

impl std::fmt::Debug for JoinTokenAttestor {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenAttestor").finish_non_exhaustive()
    }
}

#[async_trait]
impl NodeAttestor for JoinTokenAttestor {
    fn name(&self) -> &str {
        NAME
    }

    async fn attestation_data(&self) -> Result<Vec<u8>, PluginError> {
        self.token
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .ok_or_else(|| {
                PluginError::new(
                    NAME,
                    "no valid agent SVID in data_dir and no join token: pass -joinToken or set \
                     agent.join_token",
                )
            })
    }

    async fn challenge_response(&self, _challenge: &[u8]) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::new(NAME, "server issued unexpected challenge"))
    }
}
