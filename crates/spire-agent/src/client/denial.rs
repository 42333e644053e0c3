//! Reading the server's verdict on the agent itself: a PermissionDenied status that carries
//! `spire.api.types.PermissionDeniedDetails` (in the `grpc-status-details-bin` trailer) says
//! the agent must attest again (expired, not active, not attested or evicted, must
//! re-attest) or is banned, as upstream's `nodeutil.ShouldAgentReattest` and
//! `ShouldAgentShutdown` read it. A PermissionDenied without those details is about the
//! request, not the agent, and is not a denial.

use prost::Message as _;
use spire_proto::spire::api::types::PermissionDeniedDetails;
use spire_proto::spire::api::types::permission_denied_details::Reason;
use tonic::{Code, Status};

/// What the server's denial asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// The agent's SVID is no longer accepted (expired, not current, the agent was evicted
    /// or must re-attest): attest again, or stop when the attestor cannot.
    MustReattest,
    /// The agent is banned: stop, forgetting the SVID.
    Banned,
}

/// The server refused the agent as a whole; see [`DenialKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDenied {
    /// What to do about it.
    pub kind: DenialKind,
    /// The server's message, e.g. `agent "spiffe://..." is not attested`.
    pub message: String,
}

impl std::fmt::Display for AgentDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The `google.rpc.Status` message tonic carries in [`Status::details`].
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<pbjson_types::Any>,
}

const DETAILS_TYPE: &str = "spire.api.types.PermissionDeniedDetails";

/// Classifies `status`: `Some` when it is PermissionDenied with a reason that concerns the
/// agent itself, `None` otherwise (including details that cannot be decoded).
pub fn classify_denial(status: &Status) -> Option<AgentDenied> {
    if status.code() != Code::PermissionDenied || status.details().is_empty() {
        return None;
    }
    let rpc = RpcStatus::decode(status.details()).ok()?;
    rpc.details
        .iter()
        .filter(|any| any.type_url.rsplit('/').next() == Some(DETAILS_TYPE))
        .filter_map(|any| PermissionDeniedDetails::decode(any.value.as_ref()).ok())
        .find_map(|details| {
            let kind = match Reason::try_from(details.reason).ok()? {
                Reason::AgentExpired
                | Reason::AgentNotActive
                | Reason::AgentNotAttested
                | Reason::AgentMustReattest => DenialKind::MustReattest,
                Reason::AgentBanned => DenialKind::Banned,
                _ => return None,
            };
            Some(AgentDenied {
                kind,
                message: status.message().to_owned(),
            })
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn denied(reason: Reason) -> Status {
        let rpc = RpcStatus {
            code: Code::PermissionDenied as i32,
            message: "agent is not attested".into(),
            details: vec![pbjson_types::Any {
                type_url: format!("type.googleapis.com/{DETAILS_TYPE}"),
                value: PermissionDeniedDetails {
                    reason: reason as i32,
                }
                .encode_to_vec()
                .into(),
            }],
        };
        Status::with_details(
            Code::PermissionDenied,
            "agent is not attested",
            rpc.encode_to_vec().into(),
        )
    }

    #[test]
    fn reasons_map_as_upstreams_nodeutil() {
        for reason in [
            Reason::AgentExpired,
            Reason::AgentNotActive,
            Reason::AgentNotAttested,
            Reason::AgentMustReattest,
        ] {
            assert_eq!(
                classify_denial(&denied(reason)).unwrap().kind,
                DenialKind::MustReattest,
                "{reason:?}"
            );
        }
        assert_eq!(
            classify_denial(&denied(Reason::AgentBanned)).unwrap().kind,
            DenialKind::Banned
        );
    }

    #[test]
    fn other_statuses_are_not_denials_of_the_agent() {
        assert_eq!(classify_denial(&Status::permission_denied("no")), None);
        assert_eq!(classify_denial(&Status::unavailable("down")), None);
        let garbage = Status::with_details(Code::PermissionDenied, "x", vec![0xff, 0x01].into());
        assert_eq!(classify_denial(&garbage), None);
    }
}
