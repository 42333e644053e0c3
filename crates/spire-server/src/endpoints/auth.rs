//! Who may call which server RPC: upstream's default policy table, the checks that find out
//! who a caller is (local, admin, agent, downstream), and the tower layer that runs them
//! before any service sees the request.
//!
//! The layer puts a [`Caller`] into the request extensions; a request only reaches a
//! service after [`authorize`] allowed it, so services read the caller instead of checking
//! certificates themselves. An RPC missing from the table is denied, so a service added
//! without a policy entry is unreachable rather than open.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::types::permission_denied_details;
use tonic::Status;
use tonic::body::Body;

use crate::api::{ApiContext, Caller, Peer};
use crate::datastore::{AttestedNodeMask, ListEntriesRequest};

/// Which kinds of caller an RPC admits; any one that matches is enough.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Everyone, with or without a client certificate.
    pub any: bool,
    /// Callers over the admin unix socket.
    pub local: bool,
    /// Callers with an SVID in `admin_ids` or of an entry with `admin = true`.
    pub admin: bool,
    /// Agents with a current, unexpired, non-banned agent SVID.
    pub agent: bool,
    /// Callers with the SVID of an entry with `downstream = true`.
    pub downstream: bool,
}

const ANY: Policy = Policy {
    any: true,
    local: false,
    admin: false,
    agent: false,
    downstream: false,
};
const LOCAL: Policy = Policy {
    any: false,
    local: true,
    admin: false,
    agent: false,
    downstream: false,
};
const LOCAL_OR_ADMIN: Policy = Policy {
    any: false,
    local: true,
    admin: true,
    agent: false,
    downstream: false,
};
const LOCAL_ADMIN_OR_AGENT: Policy = Policy {
    any: false,
    local: true,
    admin: true,
    agent: true,
    downstream: false,
};
const AGENT: Policy = Policy {
    any: false,
    local: false,
    admin: false,
    agent: true,
    downstream: false,
};
const DOWNSTREAM: Policy = Policy {
    any: false,
    local: false,
    admin: false,
    agent: false,
    downstream: true,
};

/// Upstream's default policy (`pkg/server/authpolicy/policy_data.json`), by gRPC path.
const POLICY_TABLE: &[(&str, Policy)] = &[
    (
        "/spire.api.server.svid.v1.SVID/MintX509SVID",
        LOCAL_OR_ADMIN,
    ),
    ("/spire.api.server.svid.v1.SVID/MintJWTSVID", LOCAL_OR_ADMIN),
    ("/spire.api.server.svid.v1.SVID/MintWITSVID", LOCAL_OR_ADMIN),
    ("/spire.api.server.svid.v1.SVID/BatchNewX509SVID", AGENT),
    ("/spire.api.server.svid.v1.SVID/NewJWTSVID", AGENT),
    ("/spire.api.server.svid.v1.SVID/BatchNewWITSVID", AGENT),
    (
        "/spire.api.server.svid.v1.SVID/NewDownstreamX509CA",
        DOWNSTREAM,
    ),
    ("/spire.api.server.bundle.v1.Bundle/GetBundle", ANY),
    (
        "/spire.api.server.bundle.v1.Bundle/AppendBundle",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority",
        DOWNSTREAM,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/PublishWITAuthority",
        DOWNSTREAM,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/CountBundles",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle",
        LOCAL_ADMIN_OR_AGENT,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle",
        LOCAL_OR_ADMIN,
    ),
    ("/spire.api.server.debug.v1.Debug/GetInfo", LOCAL),
    (
        "/spire.api.server.entry.v1.Entry/CountEntries",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.entry.v1.Entry/ListEntries",
        LOCAL_OR_ADMIN,
    ),
    ("/spire.api.server.entry.v1.Entry/GetEntry", LOCAL_OR_ADMIN),
    (
        "/spire.api.server.entry.v1.Entry/BatchCreateEntry",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.entry.v1.Entry/BatchUpdateEntry",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.entry.v1.Entry/BatchDeleteEntry",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries",
        AGENT,
    ),
    (
        "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries",
        AGENT,
    ),
    ("/spire.api.server.logger.v1.Logger/GetLogger", LOCAL),
    ("/spire.api.server.logger.v1.Logger/SetLogLevel", LOCAL),
    ("/spire.api.server.logger.v1.Logger/ResetLogLevel", LOCAL),
    (
        "/spire.api.server.agent.v1.Agent/CountAgents",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.agent.v1.Agent/ListAgents",
        LOCAL_OR_ADMIN,
    ),
    ("/spire.api.server.agent.v1.Agent/GetAgent", LOCAL_OR_ADMIN),
    (
        "/spire.api.server.agent.v1.Agent/DeleteAgent",
        LOCAL_OR_ADMIN,
    ),
    ("/spire.api.server.agent.v1.Agent/BanAgent", LOCAL_OR_ADMIN),
    ("/spire.api.server.agent.v1.Agent/AttestAgent", ANY),
    ("/spire.api.server.agent.v1.Agent/RenewAgent", AGENT),
    ("/spire.api.server.agent.v1.Agent/PostStatus", AGENT),
    (
        "/spire.api.server.agent.v1.Agent/CreateJoinToken",
        LOCAL_OR_ADMIN,
    ),
    ("/grpc.health.v1.Health/Check", LOCAL),
    ("/grpc.health.v1.Health/List", LOCAL),
    ("/grpc.health.v1.Health/Watch", LOCAL),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship",
        LOCAL_OR_ADMIN,
    ),
    (
        "/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle",
        LOCAL_OR_ADMIN,
    ),
    // Ours, not upstream's: sync hints for connected agents (api::notify).
    (
        "/spire_rs.agent.notify.v1.AgentNotify/WatchSyncHints",
        AGENT,
    ),
    ("/spire_rs.agent.notify.v1.AgentNotify/FetchEntries", AGENT),
    // spire-rs's live configuration reload: the private admin socket only.
    ("/spire_rs.admin.config.v1.Config/Reload", LOCAL),
];

/// The LocalAuthority RPCs: every one is local or admin.
const LOCAL_AUTHORITY_PREFIX: &str = "/spire.api.server.localauthority.v1.LocalAuthority/";
const LOCAL_AUTHORITY_METHODS: &[&str] = &[
    "GetJWTAuthorityState",
    "PrepareJWTAuthority",
    "ActivateJWTAuthority",
    "TaintJWTAuthority",
    "RevokeJWTAuthority",
    "GetX509AuthorityState",
    "PrepareX509Authority",
    "ActivateX509Authority",
    "TaintX509Authority",
    "TaintX509UpstreamAuthority",
    "RevokeX509Authority",
    "RevokeX509UpstreamAuthority",
    "GetWITAuthorityState",
    "PrepareWITAuthority",
    "ActivateWITAuthority",
    "TaintWITAuthority",
    "RevokeWITAuthority",
];

/// The policy of an RPC by its gRPC path (`/package.Service/Method`); `None` for an RPC the
/// policy does not know, which is then denied.
pub fn policy_for(path: &str) -> Option<Policy> {
    if let Some(method) = path.strip_prefix(LOCAL_AUTHORITY_PREFIX) {
        return LOCAL_AUTHORITY_METHODS
            .contains(&method)
            .then_some(LOCAL_OR_ADMIN);
    }
    POLICY_TABLE
        .iter()
        .find(|(known, _)| *known == path)
        .map(|(_, policy)| *policy)
}

/// The denial for a caller the policy does not admit, worded as upstream's.
fn denied(path: &str) -> Status {
    Status::permission_denied(format!("Authorization denied for method {path}"))
}

/// Finds who the caller is and whether the policy of `path` admits it; the returned
/// [`Caller`] is what services read. Errors are the statuses the client receives.
pub async fn authorize(ctx: &ApiContext, peer: &Peer, path: &str) -> Result<Caller, Status> {
    let Some(policy) = policy_for(path) else {
        tracing::warn!(method = path, "denied a call to an RPC without a policy");
        return Err(denied(path));
    };
    let mut caller = Caller::default();
    let mut chain: Option<&[Vec<u8>]> = None;
    match peer {
        Peer::Local { process } => {
            caller.local = true;
            caller.process = *process;
        }
        Peer::Tcp {
            addr,
            chain: presented,
            spiffe_id,
        } => {
            caller.addr = *addr;
            caller.spiffe_id = spiffe_id.clone();
            chain = presented.as_deref();
        }
    }

    if policy.any {
        caller.authorized_as = "nobody";
        return Ok(caller);
    }
    if policy.local && caller.local {
        caller.authorized_as = "local";
        caller.authorized_via = "transport";
        return Ok(caller);
    }
    if let Some(id) = caller.spiffe_id.clone() {
        if policy.admin && ctx.settings.admin_ids.contains(&id) {
            caller.admin = true;
            caller.authorized_as = "admin";
            caller.authorized_via = "config";
            return Ok(caller);
        }
        if policy.admin || policy.downstream {
            let entries = ctx
                .datastore
                .list_registration_entries(&ListEntriesRequest {
                    by_spiffe_id: Some(id.as_str().to_owned()),
                    ..ListEntriesRequest::default()
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "failed to fetch the caller's entries");
                    Status::internal(format!("failed to fetch caller entries: {e}"))
                })?
                .0;
            if policy.admin && entries.iter().any(|entry| entry.admin) {
                caller.admin = true;
                caller.authorized_as = "admin";
                caller.authorized_via = "entries";
                return Ok(caller);
            }
            if policy.downstream
                && let Some(entry) = entries.iter().find(|entry| entry.downstream)
            {
                caller.downstream_entry_id = Some(entry.entry_id.clone());
                caller.authorized_as = "downstream";
                caller.authorized_via = "entries";
                return Ok(caller);
            }
        }
    }
    if policy.agent && !caller.local {
        let Some(leaf) = chain.and_then(<[Vec<u8>]>::first) else {
            return Err(Status::permission_denied(
                "caller does not have an X509-SVID",
            ));
        };
        let Some(id) = caller.spiffe_id.clone() else {
            return Err(Status::permission_denied(
                "caller does not have a SPIFFE ID",
            ));
        };
        authorize_agent(ctx, &id, leaf).await?;
        caller.agent_id = Some(id);
        caller.authorized_as = "agent";
        caller.authorized_via = "datastore";
        return Ok(caller);
    }
    tracing::debug!(method = path, caller = ?caller.spiffe_id, "authorization denied");
    Err(denied(path))
}

/// Checks that `leaf` is the current SVID of an attested, non-banned agent `id`: its serial
/// must be the node's current serial, or the new serial RenewAgent issued, which then
/// becomes the current one (the agent has switched to it).
async fn authorize_agent(ctx: &ApiContext, id: &SpiffeId, leaf: &[u8]) -> Result<(), Status> {
    use permission_denied_details::Reason;

    let not_after = spire_core::x509::certificate_not_after(leaf)
        .map_err(|e| Status::permission_denied(format!("invalid agent SVID: {e}")))?;
    if time::OffsetDateTime::now_utc() > not_after {
        return Err(agent_denied(
            Reason::AgentExpired,
            format!("agent {:?} SVID is expired", id.as_str()),
        ));
    }
    let serial = spire_core::x509::certificate_serial_decimal(leaf)
        .map_err(|e| Status::permission_denied(format!("invalid agent SVID: {e}")))?;
    // max_attested_node_info_staleness: a serial read from the datastore recently enough
    // authorizes without reading it again, as upstream's node cache.
    if ctx.index.agent_serial_is_fresh(id.as_str(), &serial) {
        return Ok(());
    }
    let node = ctx
        .datastore
        .fetch_attested_node(id.as_str())
        .await
        .map_err(|e| Status::internal(format!("unable to look up agent information: {e}")))?;
    let Some(node) = node else {
        return Err(agent_denied(
            Reason::AgentNotAttested,
            format!("agent {:?} is not attested", id.as_str()),
        ));
    };
    ctx.index
        .remember_agent_serial(id.as_str(), &node.cert_serial_number);
    if node.cert_serial_number.is_empty() {
        return Err(agent_denied(
            Reason::AgentBanned,
            format!("agent {:?} is banned", id.as_str()),
        ));
    }
    if node.cert_serial_number == serial {
        return Ok(());
    }
    if !node.new_cert_serial_number.is_empty() && node.new_cert_serial_number == serial {
        let mut promoted = node.clone();
        promoted.cert_serial_number = node.new_cert_serial_number.clone();
        promoted.cert_not_after = node.new_cert_not_after;
        promoted.new_cert_serial_number = String::new();
        promoted.new_cert_not_after = 0;
        let mask = AttestedNodeMask {
            can_reattest: false,
            agent_version: false,
            ..AttestedNodeMask::ALL
        };
        ctx.datastore
            .update_attested_node(promoted, mask)
            .await
            .map_err(|e| {
                tracing::warn!(agent = id.as_str(), error = %e, "unable to activate the new agent SVID");
                Status::internal(format!("unable to activate the new agent SVID: {e}"))
            })?;
        ctx.index.remember_agent_serial(id.as_str(), &serial);
        return Ok(());
    }
    Err(agent_denied(
        Reason::AgentNotActive,
        format!(
            "agent {:?} expected to have serial number {:?}; has {:?}",
            id.as_str(),
            node.cert_serial_number,
            serial
        ),
    ))
}

/// PermissionDenied carrying upstream's `PermissionDeniedDetails`, which agents read to
/// decide whether to re-attest.
fn agent_denied(reason: permission_denied_details::Reason, message: String) -> Status {
    crate::api::convert::permission_denied(reason, &message)
}

/// The tower layer that authorizes every request before routing it.
#[derive(Clone)]
pub struct AuthLayer {
    ctx: Arc<ApiContext>,
}

impl AuthLayer {
    /// A layer that authorizes against `ctx`'s settings and datastore.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            ctx: self.ctx.clone(),
            inner,
        }
    }
}

/// The service [`AuthLayer`] builds: reads the [`Peer`] the endpoint attached, runs
/// [`authorize`], and forwards allowed requests with the [`Caller`] attached.
#[derive(Clone)]
pub struct AuthService<S> {
    ctx: Arc<ApiContext>,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request; the fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let Some(peer) = request.extensions().get::<Peer>().cloned() else {
                return Ok(Status::internal("connection has no peer information").into_http());
            };
            let path = request.uri().path().to_owned();
            match authorize(&ctx, &peer, &path).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use spire_proto::spire::api::types::PermissionDeniedDetails;
    use tonic::Code;

    use super::*;

    /// `google.rpc.Status`, to read the details back.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<AnyDetail>,
    }

    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct AnyDetail {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }

    fn allowed(path: &str) -> Vec<&'static str> {
        let Some(policy) = policy_for(path) else {
            return vec!["<unknown>"];
        };
        let mut kinds = Vec::new();
        if policy.any {
            kinds.push("any");
        }
        if policy.local {
            kinds.push("local");
        }
        if policy.admin {
            kinds.push("admin");
        }
        if policy.agent {
            kinds.push("agent");
        }
        if policy.downstream {
            kinds.push("downstream");
        }
        kinds
    }

    #[test]
    fn policy_table_matches_upstream() {
        let cases: &[(&str, &[&str])] = &[
            (
                "/spire.api.server.svid.v1.SVID/MintX509SVID",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.svid.v1.SVID/MintJWTSVID",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.svid.v1.SVID/MintWITSVID",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
                &["agent"],
            ),
            ("/spire.api.server.svid.v1.SVID/NewJWTSVID", &["agent"]),
            ("/spire.api.server.svid.v1.SVID/BatchNewWITSVID", &["agent"]),
            (
                "/spire.api.server.svid.v1.SVID/NewDownstreamX509CA",
                &["downstream"],
            ),
            ("/spire.api.server.bundle.v1.Bundle/GetBundle", &["any"]),
            (
                "/spire.api.server.bundle.v1.Bundle/AppendBundle",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority",
                &["downstream"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/PublishWITAuthority",
                &["downstream"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/CountBundles",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle",
                &["local", "admin", "agent"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle",
                &["local", "admin"],
            ),
            ("/spire.api.server.debug.v1.Debug/GetInfo", &["local"]),
            (
                "/spire.api.server.entry.v1.Entry/CountEntries",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/ListEntries",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/GetEntry",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/BatchCreateEntry",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/BatchUpdateEntry",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/BatchDeleteEntry",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries",
                &["agent"],
            ),
            (
                "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries",
                &["agent"],
            ),
            ("/spire.api.server.logger.v1.Logger/GetLogger", &["local"]),
            ("/spire.api.server.logger.v1.Logger/SetLogLevel", &["local"]),
            (
                "/spire.api.server.logger.v1.Logger/ResetLogLevel",
                &["local"],
            ),
            (
                "/spire.api.server.agent.v1.Agent/CountAgents",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.agent.v1.Agent/ListAgents",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.agent.v1.Agent/GetAgent",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.agent.v1.Agent/DeleteAgent",
                &["local", "admin"],
            ),
            (
                "/spire.api.server.agent.v1.Agent/BanAgent",
                &["local", "admin"],
            ),
            ("/spire.api.server.agent.v1.Agent/AttestAgent", &["any"]),
            ("/spire.api.server.agent.v1.Agent/RenewAgent", &["agent"]),
            ("/spire.api.server.agent.v1.Agent/PostStatus", &["agent"]),
            (
                "/spire.api.server.agent.v1.Agent/CreateJoinToken",
                &["local", "admin"],
            ),
            ("/grpc.health.v1.Health/Check", &["local"]),
            ("/grpc.health.v1.Health/List", &["local"]),
            ("/grpc.health.v1.Health/Watch", &["local"]),
        ];
        for (path, expected) in cases {
            assert_eq!(&allowed(path), expected, "{path}");
        }
        for method in [
            "ListFederationRelationships",
            "GetFederationRelationship",
            "BatchCreateFederationRelationship",
            "BatchUpdateFederationRelationship",
            "BatchDeleteFederationRelationship",
            "RefreshBundle",
        ] {
            let path = format!("/spire.api.server.trustdomain.v1.TrustDomain/{method}");
            assert_eq!(allowed(&path), ["local", "admin"], "{path}");
        }
        for method in LOCAL_AUTHORITY_METHODS {
            let path = format!("{LOCAL_AUTHORITY_PREFIX}{method}");
            assert_eq!(allowed(&path), ["local", "admin"], "{path}");
        }
    }

    #[test]
    fn unknown_rpcs_have_no_policy() {
        for path in [
            "/spire.api.server.entry.v1.Entry/DropDatabase",
            "/spire.api.server.localauthority.v1.LocalAuthority/Nope",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "",
            "/",
        ] {
            assert_eq!(policy_for(path), None, "{path}");
        }
    }

    #[test]
    fn agent_denials_carry_upstream_details() {
        let status = agent_denied(
            permission_denied_details::Reason::AgentBanned,
            "agent \"spiffe://td/a\" is banned".into(),
        );
        assert_eq!(status.code(), Code::PermissionDenied);
        let decoded = RpcStatus::decode(status.details()).unwrap();
        assert_eq!(decoded.code, Code::PermissionDenied as i32);
        let detail = &decoded.details[0];
        assert!(
            detail
                .type_url
                .ends_with("spire.api.types.PermissionDeniedDetails")
        );
        let reason = PermissionDeniedDetails::decode(detail.value.as_slice()).unwrap();
        assert_eq!(
            reason.reason,
            permission_denied_details::Reason::AgentBanned as i32
        );
    }
}
