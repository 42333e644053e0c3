//! `spire.api.server.agent.v1.Agent`: node attestation, agent SVID renewal, agent
//! management and join tokens, with upstream's validation, messages and status codes.

use std::pin::Pin;
use std::sync::Arc;

use spire_core::spiffe_id::SpiffeId;
use spire_proto::spire::api::server::agent::v1 as pb;
use spire_proto::spire::api::types;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};

use super::audit::{self, AuditLog};
use super::convert::{self, make_err};
use super::ratelimit::LimitKind;
use super::{ApiContext, Caller};
use crate::datastore::{
    AttestedNode, AttestedNodeMask, DataStoreError, JoinToken, ListNodesRequest, Pagination,
    RegistrationEntry,
};
use crate::plugins::nodeattestor::{Challenger, join_token};
use spire_core::selector::Selector;

/// The path of the server's own SPIFFE ID, which no agent may take.
const SERVER_ID_PATH: &str = "/spire/server";

/// The longest agent version PostStatus records (upstream's column is varchar(255)).
const MAX_AGENT_VERSION_LENGTH: usize = 255;

/// The agent service.
pub struct AgentApi {
    ctx: Arc<ApiContext>,
}

impl AgentApi {
    /// Builds the service over the shared API context.
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        Self { ctx }
    }

    /// Makes the index see a write before the next read; a failure only delays visibility
    /// until the index's own refresh, so it is logged rather than failing the RPC.
    async fn refresh_index(&self) {
        if let Err(err) = self.ctx.index.refresh().await {
            tracing::warn!(error = %err, "Failed to refresh the authorized-entry index");
        }
    }

    fn list_request(
        &self,
        by_attestation_type: &str,
        by_selector_match: Option<&types::SelectorMatch>,
        by_banned: Option<bool>,
        by_can_reattest: Option<bool>,
        by_expires_before: &str,
    ) -> Result<ListNodesRequest, Status> {
        let mut request = ListNodesRequest {
            by_banned,
            by_can_reattest,
            ..ListNodesRequest::default()
        };
        if !by_attestation_type.is_empty() {
            request.by_attestation_type = Some(by_attestation_type.to_owned());
        }
        if !by_expires_before.is_empty() {
            request.by_expires_before = convert::parse_expires_before(by_expires_before);
        }
        if let Some(matcher) = by_selector_match {
            let selectors = convert::selectors_from_proto(&matcher.selectors).map_err(|e| {
                make_err(Code::InvalidArgument, "failed to parse selectors", Some(&e))
            })?;
            let mode = convert::match_from_proto(matcher.r#match).map_err(|e| {
                make_err(Code::InvalidArgument, "failed to parse selectors", Some(&e))
            })?;
            request.by_selectors = Some((selectors, mode));
        }
        Ok(request)
    }

    /// Checks the CSR's signature and signs an agent SVID for `agent_id` with its key;
    /// returns the chain, the leaf's decimal serial and its expiry.
    async fn sign_agent_svid(
        &self,
        agent_id: &SpiffeId,
        csr: &[u8],
    ) -> Result<(Vec<Vec<u8>>, String, i64), Status> {
        let public_key = spire_core::x509::csr_public_key(csr)
            .map_err(|e| make_err(Code::InvalidArgument, "failed to parse CSR", Some(&e)))?;
        let chain = self
            .ctx
            .ca
            .sign_agent_x509_svid(&public_key, agent_id)
            .await
            .map_err(|e| convert::ca_status("failed to sign X509 SVID", &e))?;
        let leaf = chain.first().ok_or_else(|| {
            make_err(
                Code::Internal,
                "failed to sign X509 SVID: empty chain",
                None,
            )
        })?;
        let serial = spire_core::x509::certificate_serial_decimal(leaf)
            .map_err(|e| make_err(Code::Internal, "failed to sign X509 SVID", Some(&e)))?;
        let not_after = spire_core::x509::certificate_not_after(leaf)
            .map_err(|e| make_err(Code::Internal, "failed to sign X509 SVID", Some(&e)))?
            .unix_timestamp();
        Ok((chain, serial, not_after))
    }

    /// Runs one attestation from the first stream message to the final result: the
    /// attestor named by the data's type verifies it (challenging the agent through
    /// `challenger` when it needs to), then the agent gets its SVID and node selectors.
    pub async fn attest(
        &self,
        caller: &Caller,
        request: pb::AttestAgentRequest,
        challenger: &mut dyn Challenger,
    ) -> Result<pb::AttestAgentResponse, Status> {
        let params = match request.step {
            Some(pb::attest_agent_request::Step::Params(params)) => params,
            _ => {
                return Err(make_err(
                    Code::InvalidArgument,
                    "malformed param",
                    Some(&"missing params"),
                ));
            }
        };
        let malformed =
            |reason: &str| make_err(Code::InvalidArgument, "malformed param", Some(&reason));
        let Some(data) = params.data.as_ref() else {
            return Err(malformed("missing attestation data"));
        };
        let Some(svid_params) = params.params.as_ref() else {
            return Err(malformed("missing X509-SVID parameters"));
        };
        if svid_params.csr.is_empty() {
            return Err(malformed("missing CSR"));
        }
        if data.r#type.is_empty() {
            return Err(malformed("missing attestation data type"));
        }
        if data.payload.is_empty() {
            return Err(malformed("missing attestation data payload"));
        }

        let Some(attestor) = self.ctx.node_attestors.get(&data.r#type) else {
            return Err(make_err(
                Code::FailedPrecondition,
                "error getting node attestor",
                Some(&format!(
                    "could not find node attestor type {:?}",
                    data.r#type
                )),
            ));
        };
        // The attestor's own code and message reach the agent unchanged, as upstream's.
        let attested = attestor.attest(&data.payload, challenger).await?;
        let agent_id = attested.agent_id;
        if agent_id.path() == SERVER_ID_PATH {
            return Err(make_err(
                Code::Internal,
                "agent ID cannot collide with the server ID",
                None,
            ));
        }

        let existing = self
            .ctx
            .datastore
            .fetch_attested_node(agent_id.as_str())
            .await
            .map_err(|e| make_err(Code::Internal, "failed to fetch agent", Some(&e)))?;
        if existing.as_ref().is_some_and(AttestedNode::is_banned) {
            return Err(make_err(
                Code::PermissionDenied,
                "failed to attest: agent is banned",
                None,
            ));
        }

        let (chain, serial, not_after) = self.sign_agent_svid(&agent_id, &svid_params.csr).await?;

        let selectors = node_selectors(&data.r#type, &attested.selector_values)?;
        self.ctx
            .datastore
            .set_node_selectors(agent_id.as_str(), &selectors)
            .await
            .map_err(|e| make_err(Code::Internal, "failed to update selectors", Some(&e)))?;

        let can_reattest = attested.can_reattest;
        let node = AttestedNode {
            spiffe_id: agent_id.to_string(),
            attestation_data_type: data.r#type.clone(),
            cert_serial_number: serial,
            cert_not_after: not_after,
            new_cert_serial_number: String::new(),
            new_cert_not_after: 0,
            selectors: Vec::new(),
            can_reattest,
            agent_version: String::new(),
        };
        if existing.is_none() {
            self.ctx
                .datastore
                .create_attested_node(node)
                .await
                .map_err(|e| {
                    make_err(Code::Internal, "failed to create attested agent", Some(&e))
                })?;
        } else {
            self.ctx
                .datastore
                .update_attested_node(
                    node,
                    // The version stays until the re-attested agent posts its own.
                    AttestedNodeMask {
                        agent_version: false,
                        ..AttestedNodeMask::ALL
                    },
                )
                .await
                .map_err(|e| {
                    make_err(Code::Internal, "failed to update attested agent", Some(&e))
                })?;
        }
        self.refresh_index().await;

        tracing::info!(
            agent_id = %agent_id,
            node_attestor_type = %data.r#type,
            address = ?caller.addr,
            "Agent attestation request completed"
        );
        Ok(pb::AttestAgentResponse {
            step: Some(pb::attest_agent_response::Step::Result(
                pb::attest_agent_response::Result {
                    svid: Some(types::X509svid {
                        cert_chain: chain,
                        id: Some(convert::proto_from_id(&agent_id)),
                        expires_at: not_after,
                        hint: String::new(),
                    }),
                    reattestable: can_reattest,
                },
            )),
        })
    }
}

/// Upstream's audit fields of an agent list/count filter.
fn audit_filter(
    audit: &AuditLog,
    attestation_type: &str,
    banned: Option<bool>,
    can_reattest: Option<bool>,
    selector_match: Option<&types::SelectorMatch>,
) {
    if !attestation_type.is_empty() {
        audit.add("node_attestor_type", attestation_type);
    }
    if let Some(banned) = banned {
        audit.add("by_banned", banned);
    }
    if let Some(can_reattest) = can_reattest {
        audit.add("by_can_reattest", can_reattest);
    }
    if let Some(m) = selector_match {
        let name = types::selector_match::MatchBehavior::try_from(m.r#match)
            .map_or_else(|_| m.r#match.to_string(), |b| b.as_str_name().to_owned());
        audit.add("by_selector_match", name);
        audit.add("by_selectors", audit::selectors_field(&m.selectors));
    }
}

/// The caller the authorization layer found, or an anonymous one.
pub(crate) fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default()
}

/// The caller's agent ID, which the authorization layer guarantees for agent-only RPCs.
pub(crate) fn caller_agent_id(caller: &Caller) -> Result<&SpiffeId, Status> {
    caller.agent_id.as_ref().ok_or_else(|| {
        make_err(
            Code::Internal,
            "caller ID missing from request context",
            None,
        )
    })
}

/// Rate-limits a call of the RPC `rpc` (its gRPC path, for the `rateLimit_*` metrics),
/// rewording the limiter's refusal as upstream does.
pub(crate) async fn rate_limit(
    ctx: &ApiContext,
    rpc: &str,
    caller: &Caller,
    kind: LimitKind,
    count: usize,
    what: &str,
) -> Result<(), Status> {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    ctx.rate_limits
        .limit_call(rpc, caller, kind, count)
        .await
        .map_err(|status| {
            make_err(
                status.code(),
                &format!("rejecting request due to {what}"),
                Some(&status.message()),
            )
        })
}

/// Node selectors as stored: typed by the attestor, without duplicates, sorted (upstream's
/// `selector.Dedupe`).
fn node_selectors(attestor: &str, values: &[String]) -> Result<Vec<Selector>, Status> {
    let mut selectors = values
        .iter()
        .map(|v| Selector::new(attestor, v.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| make_err(Code::Internal, "invalid node selector", Some(&e)))?;
    selectors.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
    selectors.dedup();
    Ok(selectors)
}

/// The agent's end of an `AttestAgent` stream, for attestors that challenge it.
struct StreamChallenger {
    responses: tokio::sync::mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
    inbound: Streaming<pb::AttestAgentRequest>,
}

#[tonic::async_trait]
impl Challenger for StreamChallenger {
    async fn challenge(&mut self, challenge: Vec<u8>) -> Result<Vec<u8>, Status> {
        let message = pb::AttestAgentResponse {
            step: Some(pb::attest_agent_response::Step::Challenge(challenge)),
        };
        self.responses.send(Ok(message)).await.map_err(|_| {
            make_err(
                Code::Internal,
                "failed to send challenge to agent",
                Some(&"the agent closed the stream"),
            )
        })?;
        let answer = self
            .inbound
            .message()
            .await
            .map_err(|e| {
                make_err(
                    Code::Internal,
                    "failed to receive challenge from agent",
                    Some(&e.message()),
                )
            })?
            .ok_or_else(|| {
                make_err(
                    Code::Internal,
                    "failed to receive challenge from agent",
                    Some(&"EOF"),
                )
            })?;
        // Anything but a response is an empty one, as upstream reads it.
        Ok(match answer.step {
            Some(pb::attest_agent_request::Step::ChallengeResponse(response)) => response,
            _ => Vec::new(),
        })
    }
}

type AttestStream =
    Pin<Box<dyn Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentApi {
    async fn count_agents(
        &self,
        request: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if let Some(f) = request.filter.as_ref() {
            audit_filter(
                &audit,
                &f.by_attestation_type,
                f.by_banned.as_ref().map(|b| b.value),
                f.by_can_reattest.as_ref().map(|b| b.value),
                f.by_selector_match.as_ref(),
            );
        }
        let list = match request.filter.as_ref() {
            Some(f) => self.list_request(
                &f.by_attestation_type,
                f.by_selector_match.as_ref(),
                f.by_banned.as_ref().map(|b| b.value),
                f.by_can_reattest.as_ref().map(|b| b.value),
                &f.by_expires_before,
            )?,
            None => ListNodesRequest::default(),
        };
        let count = self
            .ctx
            .datastore
            .count_attested_nodes(&list)
            .await
            .map_err(|e| make_err(Code::Internal, "failed to count agents", Some(&e)))?;
        Ok(Response::new(pb::CountAgentsResponse {
            count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if let Some(f) = request.filter.as_ref() {
            audit_filter(
                &audit,
                &f.by_attestation_type,
                f.by_banned.as_ref().map(|b| b.value),
                f.by_can_reattest.as_ref().map(|b| b.value),
                f.by_selector_match.as_ref(),
            );
        }
        let mut list = match request.filter.as_ref() {
            Some(f) => self.list_request(
                &f.by_attestation_type,
                f.by_selector_match.as_ref(),
                f.by_banned.as_ref().map(|b| b.value),
                f.by_can_reattest.as_ref().map(|b| b.value),
                &f.by_expires_before,
            )?,
            None => ListNodesRequest::default(),
        };
        list.fetch_selectors = request.output_mask.as_ref().is_none_or(|m| m.selectors);
        if request.page_size > 0 {
            list.pagination = Some(Pagination {
                token: request.page_token.clone(),
                page_size: request.page_size.unsigned_abs(),
            });
        }
        let (nodes, next_page_token) = self
            .ctx
            .datastore
            .list_attested_nodes(&list)
            .await
            .map_err(|e| convert::datastore_status("failed to list agents", &e))?;
        let mut agents = Vec::new();
        for node in &nodes {
            match convert::agent_to_proto(node) {
                Ok(mut agent) => {
                    convert::apply_agent_mask(&mut agent, request.output_mask.as_ref());
                    agents.push(agent);
                }
                Err(err) => {
                    tracing::warn!(spiffe_id = %node.spiffe_id, error = %err, "Failed to parse agent");
                }
            }
        }
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<types::Agent>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let agent_id = convert::agent_id_from_proto(&self.ctx.trust_domain, request.id.as_ref())
            .map_err(|e| make_err(Code::InvalidArgument, "invalid agent ID", Some(&e)))?;
        audit.add("spiffe_id", agent_id.as_str());
        let node = self
            .ctx
            .datastore
            .fetch_attested_node(agent_id.as_str())
            .await
            .map_err(|e| make_err(Code::Internal, "failed to fetch agent", Some(&e)))?
            .ok_or_else(|| make_err(Code::NotFound, "agent not found", None))?;
        let selectors = self
            .ctx
            .datastore
            .get_node_selectors(agent_id.as_str())
            .await
            .map_err(|e| {
                make_err(
                    Code::Internal,
                    "failed to get selectors from agent",
                    Some(&e),
                )
            })?;
        let node = AttestedNode { selectors, ..node };
        let mut agent = convert::agent_to_proto(&node).map_err(|e| {
            make_err(
                Code::Internal,
                "failed to convert attested node to agent",
                Some(&e),
            )
        })?;
        convert::apply_agent_mask(&mut agent, request.output_mask.as_ref());
        Ok(Response::new(agent))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let agent_id = convert::agent_id_from_proto(&self.ctx.trust_domain, request.id.as_ref())
            .map_err(|e| make_err(Code::InvalidArgument, "invalid agent ID", Some(&e)))?;
        audit.add("spiffe_id", agent_id.as_str());
        match self
            .ctx
            .datastore
            .delete_attested_node(agent_id.as_str())
            .await
        {
            Ok(_) => {
                self.refresh_index().await;
                tracing::info!(spiffe_id = %agent_id, "Agent deleted");
                Ok(Response::new(pbjson_types::Empty {}))
            }
            Err(err @ DataStoreError::NotFound(_)) => {
                Err(make_err(Code::NotFound, "agent not found", Some(&err)))
            }
            Err(err) => Err(make_err(
                Code::Internal,
                "failed to remove agent",
                Some(&err),
            )),
        }
    }

    async fn ban_agent(
        &self,
        request: Request<pb::BanAgentRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        let agent_id = convert::agent_id_from_proto(&self.ctx.trust_domain, request.id.as_ref())
            .map_err(|e| make_err(Code::InvalidArgument, "invalid agent ID", Some(&e)))?;
        audit.add("spiffe_id", agent_id.as_str());
        // A banned agent is one whose current and new serial numbers are both cleared.
        let banned = AttestedNode {
            spiffe_id: agent_id.to_string(),
            ..AttestedNode::default()
        };
        let mask = AttestedNodeMask {
            cert_serial_number: true,
            cert_not_after: false,
            new_cert_serial_number: true,
            new_cert_not_after: false,
            can_reattest: false,
            agent_version: false,
        };
        match self.ctx.datastore.update_attested_node(banned, mask).await {
            Ok(_) => {
                self.refresh_index().await;
                tracing::info!(spiffe_id = %agent_id, "Agent banned");
                Ok(Response::new(pbjson_types::Empty {}))
            }
            Err(err @ DataStoreError::NotFound(_)) => {
                Err(make_err(Code::NotFound, "agent not found", Some(&err)))
            }
            Err(err) => Err(make_err(Code::Internal, "failed to ban agent", Some(&err))),
        }
    }

    type AttestAgentStream = AttestStream;

    async fn attest_agent(
        &self,
        request: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        let caller = caller_of(&request);
        rate_limit(
            &self.ctx,
            "/spire.api.server.agent.v1.Agent/AttestAgent",
            &caller,
            LimitKind::Attestation,
            1,
            "attest agent rate limiting",
        )
        .await?;
        let audit = AuditLog::of(&request);
        let mut inbound = request.into_inner();
        let first = match inbound.message().await {
            Ok(Some(first)) => first,
            Ok(None) => {
                return Err(make_err(
                    Code::InvalidArgument,
                    "failed to receive request from stream",
                    Some(&"EOF"),
                ));
            }
            Err(status) => {
                return Err(make_err(
                    Code::InvalidArgument,
                    "failed to receive request from stream",
                    Some(&status.message()),
                ));
            }
        };
        if let Some(pb::attest_agent_request::Step::Params(params)) = &first.step
            && let Some(data) = &params.data
        {
            audit.add("node_attestor_type", data.r#type.as_str());
        }
        // The attestation runs beside the response stream, so that an attestor can send
        // challenges on it and read the answers from `inbound`.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let api = Self {
            ctx: Arc::clone(&self.ctx),
        };
        tokio::spawn(async move {
            let mut challenger = StreamChallenger {
                responses: tx.clone(),
                inbound,
            };
            let result = tokio::select! {
                result = api.attest(&caller, first, &mut challenger) => result,
                // The agent went away: stop, with nothing signed or stored for it.
                () = tx.closed() => return,
            };
            if let Ok(response) = &result
                && let Some(pb::attest_agent_response::Step::Result(result)) = &response.step
                && let Ok(id) =
                    convert::id_from_proto(result.svid.as_ref().and_then(|svid| svid.id.as_ref()))
            {
                audit.add("agent_id", id.as_str());
            }
            let _ = tx.send(result).await;
        });
        // A refusal before any challenge is the call's status (trailers only), as
        // upstream's handler returning early gives; otherwise the first message (a
        // challenge or the result) leads the stream.
        let mut responses = tokio_stream::wrappers::ReceiverStream::new(rx);
        match responses.next().await {
            Some(Ok(first)) => {
                let stream: AttestStream = Box::pin(tokio_stream::once(Ok(first)).chain(responses));
                Ok(Response::new(stream))
            }
            Some(Err(status)) => Err(status),
            None => Err(make_err(
                Code::Internal,
                "attestation ended without a result",
                None,
            )),
        }
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let caller = caller_of(&request);
        rate_limit(
            &self.ctx,
            "/spire.api.server.agent.v1.Agent/RenewAgent",
            &caller,
            LimitKind::Signing,
            1,
            "renew agent rate limiting",
        )
        .await?;
        let agent_id = caller_agent_id(&caller)?.clone();
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        if let Some(params) = &request.params {
            audit.add("csr", audit::sha256_hex(&params.csr));
        }
        let node = self
            .ctx
            .datastore
            .fetch_attested_node(agent_id.as_str())
            .await
            .map_err(|e| make_err(Code::Internal, "failed to fetch agent", Some(&e)))?
            .ok_or_else(|| make_err(Code::NotFound, "agent not found", None))?;
        if node.can_reattest {
            return Err(convert::permission_denied(
                types::permission_denied_details::Reason::AgentMustReattest,
                "agent must reattest instead of renew",
            ));
        }
        tracing::info!(agent_id = %agent_id, "Renewing agent SVID");
        let Some(params) = request.params else {
            return Err(make_err(
                Code::InvalidArgument,
                "params cannot be nil",
                None,
            ));
        };
        if params.csr.is_empty() {
            return Err(make_err(Code::InvalidArgument, "missing CSR", None));
        }
        let (chain, serial, not_after) = self.sign_agent_svid(&agent_id, &params.csr).await?;
        let update = AttestedNode {
            spiffe_id: agent_id.to_string(),
            new_cert_serial_number: serial,
            new_cert_not_after: not_after,
            ..AttestedNode::default()
        };
        let mask = AttestedNodeMask {
            cert_serial_number: false,
            cert_not_after: false,
            new_cert_serial_number: true,
            new_cert_not_after: true,
            can_reattest: false,
            agent_version: false,
        };
        match self.ctx.datastore.update_attested_node(update, mask).await {
            Ok(_) => {}
            Err(err @ DataStoreError::NotFound(_)) => {
                return Err(make_err(Code::NotFound, "agent not found", Some(&err)));
            }
            Err(err) => {
                return Err(make_err(
                    Code::Internal,
                    "failed to update agent",
                    Some(&err),
                ));
            }
        }
        self.refresh_index().await;
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(types::X509svid {
                cert_chain: chain,
                id: Some(convert::proto_from_id(&agent_id)),
                expires_at: not_after,
                hint: String::new(),
            }),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<types::JoinToken>, Status> {
        let audit = AuditLog::of(&request);
        let request = request.into_inner();
        audit.add("ttl", request.ttl);
        if request.ttl < 1 {
            return Err(make_err(
                Code::InvalidArgument,
                "ttl is required, you must provide one",
                None,
            ));
        }
        // Check the optional alias ID before creating anything, so a bad request leaves no
        // token behind.
        let alias = match request.agent_id.as_ref() {
            Some(id) => Some(
                convert::workload_id_from_proto(&self.ctx.trust_domain, Some(id))
                    .map_err(|e| make_err(Code::InvalidArgument, "invalid agent ID", Some(&e)))?,
            ),
            None => None,
        };
        if let Some(alias) = &alias {
            audit.add("spiffe_id", alias.as_str());
        }
        let token = if request.token.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            request.token
        };
        let expiry = convert::now_unix().saturating_add(i64::from(request.ttl));
        self.ctx
            .datastore
            .create_join_token(JoinToken {
                token: token.clone(),
                expiry,
            })
            .await
            .map_err(|e| make_err(Code::Internal, "failed to create token", Some(&e)))?;

        if let Some(alias) = alias {
            // The alias entry maps the agent that will attest with this token to the given
            // ID, selected by the agent's own SPIFFE ID.
            let create = async {
                let parent = join_token::agent_id(&self.ctx.trust_domain, &token)
                    .map_err(|e| format!("failed to create join token ID: {e}"))?;
                let entry = RegistrationEntry {
                    spiffe_id: alias.to_string(),
                    parent_id: parent.to_string(),
                    selectors: vec![spire_core::selector::Selector {
                        kind: "spiffe_id".to_owned(),
                        value: parent.to_string(),
                    }],
                    ..RegistrationEntry::default()
                };
                self.ctx
                    .datastore
                    .create_registration_entry(entry)
                    .await
                    .map_err(|e| e.to_string())
            };
            create.await.map_err(|e| {
                make_err(
                    Code::Internal,
                    "failed to create join token registration entry",
                    Some(&e),
                )
            })?;
            self.refresh_index().await;
        }
        Ok(Response::new(types::JoinToken {
            value: token,
            expires_at: expiry,
        }))
    }

    async fn post_status(
        &self,
        request: Request<pb::PostStatusRequest>,
    ) -> Result<Response<pb::PostStatusResponse>, Status> {
        let caller = caller_of(&request);
        rate_limit(
            &self.ctx,
            "/spire.api.server.agent.v1.Agent/PostStatus",
            &caller,
            LimitKind::PostStatus,
            1,
            "post status rate limiting",
        )
        .await?;
        let agent_id = caller_agent_id(&caller)?.clone();
        AuditLog::of(&request).add("spiffe_id", agent_id.as_str());
        let agent_version = request.into_inner().agent_version;
        // An empty version is a status with nothing to record, as upstream treats it.
        if agent_version.is_empty() {
            return Ok(Response::new(pb::PostStatusResponse {}));
        }
        if agent_version.len() > MAX_AGENT_VERSION_LENGTH {
            return Err(make_err(
                Code::InvalidArgument,
                "agent version is too long (max 255 characters)",
                None,
            ));
        }
        let update = AttestedNode {
            spiffe_id: agent_id.to_string(),
            agent_version,
            ..AttestedNode::default()
        };
        let mask = AttestedNodeMask {
            agent_version: true,
            ..AttestedNodeMask::NONE
        };
        match self.ctx.datastore.update_attested_node(update, mask).await {
            Ok(node) => {
                tracing::debug!(spiffe_id = %agent_id, agent_version = %node.agent_version, "Agent status updated");
                Ok(Response::new(pb::PostStatusResponse {}))
            }
            Err(err @ DataStoreError::NotFound(_)) => {
                Err(make_err(Code::NotFound, "agent not found", Some(&err)))
            }
            Err(err) => Err(make_err(
                Code::Internal,
                "failed to update agent",
                Some(&err),
            )),
        }
    }
}
