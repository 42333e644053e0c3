//! Host services both spire-server and spire-agent offer to external plugins (upstream's
//! `pkg/common/hostservice`). The server's own (`AgentStore`, `IdentityProvider`) live in
//! spire-server.

pub mod metrics;
