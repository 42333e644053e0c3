//! Handler-level tests of agent.v1, entry.v1 and svid.v1 against a real SQLite datastore, a
//! real CA manager (in-memory keys) and the real authorized-entry index. Unary RPCs are
//! called through the service traits with a `Caller` extension, as the auth layer leaves it;
//! streaming RPCs go through a loopback gRPC server so real `Streaming` bodies are used.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use spire_core::keys::{KeyType, PrivateKey};
use spire_core::spiffe_id::{SpiffeId, TrustDomain};
use spire_proto::spire::api::server::agent::v1 as agentpb;
use spire_proto::spire::api::server::agent::v1::agent_server::{Agent, AgentServer};
use spire_proto::spire::api::server::entry::v1 as entrypb;
use spire_proto::spire::api::server::entry::v1::entry_server::{Entry, EntryServer};
use spire_proto::spire::api::server::svid::v1 as svidpb;
use spire_proto::spire::api::server::svid::v1::svid_server::Svid;
use spire_proto::spire::api::types;
use spire_server::api::agent::AgentApi;
use spire_server::api::entry::EntryApi;
use spire_server::api::svid::SvidApi;
use spire_server::api::{ApiContext, ApiSettings, Caller};
use spire_server::authorized::AuthorizedIndex;
use spire_server::ca::{CaConfig, CaManager};
use spire_server::datastore::{DataStore, JoinToken};
use spire_server::plugins::keymanager::memory::MemoryKeyManager;
use spire_server::plugins::nodeattestor::{Challenger, NodeAttestors};
use tonic::{Code, Request};

const TD: &str = "example.org";

struct Harness {
    ctx: Arc<ApiContext>,
    agent: AgentApi,
    entry: EntryApi,
    svid: SvidApi,
    _dir: tempfile::TempDir,
}

async fn open_datastore(dir: &tempfile::TempDir) -> Arc<dyn DataStore> {
    let path = dir.path().join("datastore.sqlite3");
    let config = spire_server::datastore::sql::SqlConfig {
        database_type: "sqlite3".into(),
        connection_string: path.to_string_lossy().into_owned(),
        max_open_conns: None,
        disable_migration: false,
    };
    let store = spire_server::datastore::sql::SqlDataStore::open(&config)
        .await
        .expect("open sqlite datastore");
    Arc::new(store)
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let datastore = open_datastore(&dir).await;
    let trust_domain = TrustDomain::new(TD).unwrap();
    let ca = CaManager::new(
        CaConfig::new(trust_domain.clone()),
        Arc::new(MemoryKeyManager::new()),
        None,
        datastore.clone(),
    )
    .await
    .expect("CA manager");
    let index = AuthorizedIndex::load(datastore.clone())
        .await
        .expect("index");
    let node_attestors = NodeAttestors::join_token_only(datastore.clone(), &trust_domain);
    let bundle_refresher = spire_server::federation::refresher::BundleRefresher::new(
        datastore.clone(),
        trust_domain.clone(),
        &Default::default(),
        Default::default(),
    );
    let ctx = Arc::new(ApiContext {
        trust_domain,
        datastore,
        ca,
        index,
        settings: ApiSettings::default(),
        log_level: Default::default(),
        started_at: Instant::now(),
        rate_limits: Default::default(),
        node_attestors,
        bundle_refresher,
    });
    Harness {
        agent: AgentApi::new(ctx.clone()),
        entry: EntryApi::new(ctx.clone()),
        svid: SvidApi::new(ctx.clone()),
        ctx,
        _dir: dir,
    }
}

fn local() -> Caller {
    Caller {
        local: true,
        ..Caller::default()
    }
}

fn agent_caller(id: &SpiffeId) -> Caller {
    Caller {
        agent_id: Some(id.clone()),
        spiffe_id: Some(id.clone()),
        ..Caller::default()
    }
}

fn req<T>(caller: Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(caller);
    request
}

fn id(path: &str) -> Option<types::Spiffeid> {
    Some(types::Spiffeid {
        trust_domain: TD.into(),
        path: path.into(),
    })
}

fn selector(t: &str, v: &str) -> types::Selector {
    types::Selector {
        r#type: t.into(),
        value: v.into(),
    }
}

fn entry(path: &str, parent: &str, selectors: Vec<types::Selector>) -> types::Entry {
    types::Entry {
        spiffe_id: id(path),
        parent_id: id(parent),
        selectors,
        ..types::Entry::default()
    }
}

fn csr() -> Vec<u8> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    spire_core::x509::csr_der(&key).unwrap()
}

async fn create_entries(
    h: &Harness,
    entries: Vec<types::Entry>,
) -> Vec<entrypb::batch_create_entry_response::Result> {
    h.entry
        .batch_create_entry(req(
            local(),
            entrypb::BatchCreateEntryRequest {
                entries,
                output_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .results
}

async fn create_token(h: &Harness, token: &str) {
    h.agent
        .create_join_token(req(
            local(),
            agentpb::CreateJoinTokenRequest {
                ttl: 600,
                token: token.into(),
                agent_id: None,
            },
        ))
        .await
        .unwrap();
}

fn attest_request(token: &str) -> agentpb::AttestAgentRequest {
    agentpb::AttestAgentRequest {
        step: Some(agentpb::attest_agent_request::Step::Params(
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: "join_token".into(),
                    payload: token.as_bytes().to_vec(),
                }),
                params: Some(agentpb::AgentX509svidParams { csr: csr() }),
            },
        )),
    }
}

/// Attests an agent with a fresh join token and returns its ID.
async fn attest_agent(h: &Harness, token: &str) -> SpiffeId {
    create_token(h, token).await;
    let response = h
        .agent
        .attest(&Caller::default(), attest_request(token), &mut NoChallenges)
        .await
        .unwrap();
    let Some(agentpb::attest_agent_response::Step::Result(result)) = response.step else {
        panic!("no result");
    };
    let svid = result.svid.unwrap();
    let agent_id = spire_core::x509::certificate_spiffe_id(&svid.cert_chain[0]).unwrap();
    assert_eq!(
        agent_id.as_str(),
        format!("spiffe://{TD}/spire/agent/join_token/{token}")
    );
    agent_id
}

/// Stores a bundle for `other.org`, which entries must exist before federating with it.
async fn add_federated_bundle(h: &Harness) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let validity = spire_core::x509::Validity::from_now(
        time::OffsetDateTime::now_utc(),
        time::Duration::hours(1),
    );
    let template =
        spire_core::x509::CaTemplate::new(TrustDomain::new("other.org").unwrap(), validity);
    let ca = spire_core::x509::self_signed_ca(&key, &template).unwrap();
    h.ctx
        .datastore
        .create_bundle(types::Bundle {
            trust_domain: "other.org".into(),
            x509_authorities: vec![types::X509Certificate {
                asn1: ca,
                tainted: false,
            }],
            ..types::Bundle::default()
        })
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// entry.v1
// ---------------------------------------------------------------------------------------

/// A stream end for attestations that need no challenge (join tokens).
struct NoChallenges;

#[async_trait::async_trait]
impl Challenger for NoChallenges {
    async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        Err(tonic::Status::internal("join_token never challenges"))
    }
}

#[tokio::test]
async fn every_entry_field_round_trips_through_create_and_get() {
    let h = harness().await;
    let wire = types::Entry {
        id: "probe-entry".into(),
        spiffe_id: id("/probe"),
        parent_id: id("/spire/server"),
        // One selector type: with store_svid, upstream refuses mixed types.
        selectors: vec![selector("k8s", "ns:probe"), selector("k8s", "sa:probe")],
        x509_svid_ttl: 1234,
        federates_with: vec!["other.org".into()],
        admin: true,
        downstream: true,
        expires_at: 4_000_000_000,
        dns_names: vec!["probe.example.org".into()],
        revision_number: 0,
        store_svid: true,
        jwt_svid_ttl: 567,
        hint: "probe-hint".into(),
        created_at: 0,
        additional_attributes: None,
    };
    add_federated_bundle(&h).await;
    let results = create_entries(&h, vec![wire.clone()]).await;
    assert_eq!(results[0].status.as_ref().unwrap().code, 0, "{results:?}");
    let created = results[0].entry.clone().unwrap();
    let fetched = h
        .entry
        .get_entry(req(
            local(),
            entrypb::GetEntryRequest {
                id: "probe-entry".into(),
                output_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, created);
    assert!(fetched.created_at > 0);
    let expected = types::Entry {
        created_at: fetched.created_at,
        revision_number: fetched.revision_number,
        ..wire
    };
    assert_eq!(fetched, expected);
}

#[tokio::test]
async fn invalid_entries_get_invalid_argument_per_item() {
    let h = harness().await;
    let good = entry("/web", "/spire/server", vec![selector("unix", "uid:1")]);
    let mut colon = good.clone();
    colon.selectors = vec![selector("unix:uid", "1")];
    let mut outside = good.clone();
    outside.spiffe_id = Some(types::Spiffeid {
        trust_domain: "evil.org".into(),
        path: "/web".into(),
    });
    let mut reserved = good.clone();
    reserved.spiffe_id = id("/spire/agent/foo");
    let mut no_selectors = good.clone();
    no_selectors.selectors.clear();
    let results = create_entries(&h, vec![colon, outside, reserved, no_selectors, good]).await;
    let codes: Vec<i32> = results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(codes, vec![invalid, invalid, invalid, invalid, 0]);
    let messages: Vec<&str> = results
        .iter()
        .map(|r| r.status.as_ref().unwrap().message.as_str())
        .collect();
    assert!(
        messages[0].contains("selector type contains ':'"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("is not a member of trust domain"),
        "{messages:?}"
    );
    assert!(messages[2].contains("reserved namespace"), "{messages:?}");
    assert!(
        messages[3].contains("selector list is empty"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn similar_entry_returns_already_exists_with_the_existing_entry() {
    let h = harness().await;
    let e = entry("/web", "/spire/server", vec![selector("unix", "uid:1")]);
    let first = create_entries(&h, vec![e.clone()]).await;
    let second = create_entries(&h, vec![e]).await;
    assert_eq!(
        second[0].status.as_ref().unwrap().code,
        Code::AlreadyExists as i32
    );
    assert_eq!(
        second[0].status.as_ref().unwrap().message,
        "similar entry already exists"
    );
    assert_eq!(second[0].entry, first[0].entry);
}

#[tokio::test]
async fn unknown_entry_ids_are_not_found() {
    let h = harness().await;
    let err = h
        .entry
        .get_entry(req(
            local(),
            entrypb::GetEntryRequest {
                id: "nope".into(),
                output_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let deleted = h
        .entry
        .batch_delete_entry(req(
            local(),
            entrypb::BatchDeleteEntryRequest {
                ids: vec!["nope".into(), String::new()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deleted.results[0].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
    assert_eq!(deleted.results[0].id, "nope");
    assert_eq!(
        deleted.results[1].status.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    let mut update = entry("/web", "/spire/server", vec![selector("unix", "uid:1")]);
    update.id = "nope".into();
    let updated = h
        .entry
        .batch_update_entry(req(
            local(),
            entrypb::BatchUpdateEntryRequest {
                entries: vec![update],
                input_mask: None,
                output_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.results[0].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
}

#[tokio::test]
async fn update_with_input_mask_changes_only_masked_fields_and_bumps_revision() {
    let h = harness().await;
    let mut e = entry("/web", "/spire/server", vec![selector("unix", "uid:1")]);
    e.x509_svid_ttl = 60;
    let created = create_entries(&h, vec![e]).await[0].entry.clone().unwrap();
    let update = types::Entry {
        id: created.id.clone(),
        hint: "new-hint".into(),
        x509_svid_ttl: 999,
        ..types::Entry::default()
    };
    let result = h
        .entry
        .batch_update_entry(req(
            local(),
            entrypb::BatchUpdateEntryRequest {
                entries: vec![update],
                input_mask: Some(types::EntryMask {
                    hint: true,
                    ..types::EntryMask::default()
                }),
                output_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        result.results[0].status.as_ref().unwrap().code,
        0,
        "{result:?}"
    );
    let updated = result.results[0].entry.clone().unwrap();
    assert_eq!(updated.hint, "new-hint");
    assert_eq!(updated.x509_svid_ttl, 60);
    assert_eq!(updated.selectors, created.selectors);
    assert!(updated.revision_number > created.revision_number);
}

#[tokio::test]
async fn list_and_count_entries_with_filters_and_pages() {
    let h = harness().await;
    let mut entries = Vec::new();
    for i in 0..5 {
        let mut e = entry(
            &format!("/w{i}"),
            if i < 3 { "/parent-a" } else { "/parent-b" },
            vec![
                selector("unix", &format!("uid:{i}")),
                selector("unix", "gid:0"),
            ],
        );
        e.hint = if i % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        };
        e.downstream = i == 4;
        if i == 1 {
            e.federates_with = vec!["other.org".into()];
        }
        entries.push(e);
    }
    add_federated_bundle(&h).await;
    let results = create_entries(&h, entries).await;
    assert!(
        results.iter().all(|r| r.status.as_ref().unwrap().code == 0),
        "{results:?}"
    );

    let list = |filter: entrypb::list_entries_request::Filter| {
        let h = &h;
        async move {
            h.entry
                .list_entries(req(
                    local(),
                    entrypb::ListEntriesRequest {
                        filter: Some(filter),
                        output_mask: None,
                        page_size: 0,
                        page_token: String::new(),
                    },
                ))
                .await
                .map(|r| r.into_inner().entries.len())
        }
    };
    use entrypb::list_entries_request::Filter;
    assert_eq!(
        list(Filter {
            by_parent_id: id("/parent-a"),
            ..Filter::default()
        })
        .await
        .unwrap(),
        3
    );
    assert_eq!(
        list(Filter {
            by_spiffe_id: id("/w4"),
            ..Filter::default()
        })
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        list(Filter {
            by_hint: Some(pbjson_types::StringValue {
                value: "even".into()
            }),
            ..Filter::default()
        })
        .await
        .unwrap(),
        3
    );
    assert_eq!(
        list(Filter {
            by_downstream: Some(pbjson_types::BoolValue { value: true }),
            ..Filter::default()
        })
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        list(Filter {
            by_selectors: Some(types::SelectorMatch {
                selectors: vec![selector("unix", "gid:0")],
                r#match: types::selector_match::MatchBehavior::MatchSuperset as i32,
            }),
            ..Filter::default()
        })
        .await
        .unwrap(),
        5
    );
    assert_eq!(
        list(Filter {
            by_selectors: Some(types::SelectorMatch {
                selectors: vec![selector("unix", "uid:2"), selector("unix", "gid:0")],
                r#match: types::selector_match::MatchBehavior::MatchExact as i32,
            }),
            ..Filter::default()
        })
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        list(Filter {
            by_federates_with: Some(types::FederatesWithMatch {
                trust_domains: vec!["other.org".into()],
                r#match: types::federates_with_match::MatchBehavior::MatchAny as i32,
            }),
            ..Filter::default()
        })
        .await
        .unwrap(),
        1
    );
    let err = list(Filter {
        by_spiffe_id: id("/spire/x"),
        ..Filter::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("malformed SPIFFE ID filter"));

    // Pages of two, then the rest, with an output mask.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = h
            .entry
            .list_entries(req(
                local(),
                entrypb::ListEntriesRequest {
                    filter: None,
                    output_mask: Some(types::EntryMask {
                        spiffe_id: true,
                        ..types::EntryMask::default()
                    }),
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        for e in &page.entries {
            assert!(e.selectors.is_empty() && e.parent_id.is_none() && e.hint.is_empty());
            seen.push(e.spiffe_id.clone().unwrap().path);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, vec!["/w0", "/w1", "/w2", "/w3", "/w4"]);

    let count = h
        .entry
        .count_entries(req(
            local(),
            entrypb::CountEntriesRequest {
                filter: Some(entrypb::count_entries_request::Filter {
                    by_parent_id: id("/parent-b"),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 2);
}

// ---------------------------------------------------------------------------------------
// agent.v1
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn join_token_is_single_use_under_concurrency() {
    let h = Arc::new(harness().await);
    create_token(&h, "race-token").await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.agent
                .attest(
                    &Caller::default(),
                    attest_request("race-token"),
                    &mut NoChallenges,
                )
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument);
                assert!(
                    status
                        .message()
                        .contains("does not exist or has already been used")
                );
            }
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn expired_join_token_is_refused_and_consumed() {
    let h = harness().await;
    h.ctx
        .datastore
        .create_join_token(JoinToken {
            token: "old".into(),
            expiry: 1,
        })
        .await
        .unwrap();
    let err = h
        .agent
        .attest(&Caller::default(), attest_request("old"), &mut NoChallenges)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "join token expired");
    let again = h
        .agent
        .attest(&Caller::default(), attest_request("old"), &mut NoChallenges)
        .await
        .unwrap_err();
    assert!(again.message().contains("has already been used"));
}

#[tokio::test]
async fn attestation_validates_params_and_attestor_type() {
    let h = harness().await;
    let mut no_csr = attest_request("t");
    if let Some(agentpb::attest_agent_request::Step::Params(p)) = no_csr.step.as_mut() {
        p.params = Some(agentpb::AgentX509svidParams { csr: Vec::new() });
    }
    let err = h
        .agent
        .attest(&Caller::default(), no_csr, &mut NoChallenges)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "malformed param: missing CSR");

    let mut unknown = attest_request("t");
    if let Some(agentpb::attest_agent_request::Step::Params(p)) = unknown.step.as_mut() {
        p.data.as_mut().unwrap().r#type = "aws_iid".into();
    }
    let err = h
        .agent
        .attest(&Caller::default(), unknown, &mut NoChallenges)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn attested_agent_is_listed_renewed_banned_and_refused() {
    let h = harness().await;
    let agent_id = attest_agent(&h, "tok-1").await;
    let get = |mask: Option<types::AgentMask>| {
        let h = &h;
        async move {
            h.agent
                .get_agent(req(
                    local(),
                    agentpb::GetAgentRequest {
                        id: id("/spire/agent/join_token/tok-1"),
                        output_mask: mask,
                    },
                ))
                .await
        }
    };
    let agent = get(None).await.unwrap().into_inner();
    assert_eq!(agent.attestation_type, "join_token");
    assert!(!agent.banned && !agent.x509svid_serial_number.is_empty());
    let original_serial = agent.x509svid_serial_number.clone();

    let masked = get(Some(types::AgentMask {
        banned: true,
        ..types::AgentMask::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert!(masked.attestation_type.is_empty() && masked.x509svid_serial_number.is_empty());

    // Renew: the new serial is recorded as the pending one; the current stays until used.
    let renewed = h
        .agent
        .renew_agent(req(
            agent_caller(&agent_id),
            agentpb::RenewAgentRequest {
                params: Some(agentpb::AgentX509svidParams { csr: csr() }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let svid = renewed.svid.unwrap();
    let new_serial = spire_core::x509::certificate_serial_decimal(&svid.cert_chain[0]).unwrap();
    let node = h
        .ctx
        .datastore
        .fetch_attested_node(agent_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.new_cert_serial_number, new_serial);
    assert_eq!(node.cert_serial_number, original_serial);

    let listed = |filter: agentpb::list_agents_request::Filter| {
        let h = &h;
        async move {
            h.agent
                .list_agents(req(
                    local(),
                    agentpb::ListAgentsRequest {
                        filter: Some(filter),
                        output_mask: None,
                        page_size: 0,
                        page_token: String::new(),
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .agents
                .len()
        }
    };
    use agentpb::list_agents_request::Filter;
    assert_eq!(
        listed(Filter {
            by_attestation_type: "join_token".into(),
            ..Filter::default()
        })
        .await,
        1
    );
    assert_eq!(
        listed(Filter {
            by_attestation_type: "x509pop".into(),
            ..Filter::default()
        })
        .await,
        0
    );
    assert_eq!(
        listed(Filter {
            by_banned: Some(pbjson_types::BoolValue { value: true }),
            ..Filter::default()
        })
        .await,
        0
    );

    h.agent
        .ban_agent(req(
            local(),
            agentpb::BanAgentRequest {
                id: id("/spire/agent/join_token/tok-1"),
            },
        ))
        .await
        .unwrap();
    assert!(get(None).await.unwrap().into_inner().banned);
    assert_eq!(
        listed(Filter {
            by_banned: Some(pbjson_types::BoolValue { value: true }),
            ..Filter::default()
        })
        .await,
        1
    );
    let count = h
        .agent
        .count_agents(req(
            local(),
            agentpb::CountAgentsRequest {
                filter: Some(agentpb::count_agents_request::Filter {
                    by_banned: Some(pbjson_types::BoolValue { value: false }),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 0);

    // The same token value again yields the same agent ID, which is banned.
    create_token(&h, "tok-1").await;
    let err = h
        .agent
        .attest(
            &Caller::default(),
            attest_request("tok-1"),
            &mut NoChallenges,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "failed to attest: agent is banned");

    h.agent
        .delete_agent(req(
            local(),
            agentpb::DeleteAgentRequest {
                id: id("/spire/agent/join_token/tok-1"),
            },
        ))
        .await
        .unwrap();
    assert_eq!(get(None).await.unwrap_err().code(), Code::NotFound);
    let err = h
        .agent
        .delete_agent(req(
            local(),
            agentpb::DeleteAgentRequest {
                id: id("/workload"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn join_token_with_agent_id_creates_alias_entry() {
    let h = harness().await;
    let err = h
        .agent
        .create_join_token(req(local(), agentpb::CreateJoinTokenRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "ttl is required, you must provide one");

    let token = h
        .agent
        .create_join_token(req(
            local(),
            agentpb::CreateJoinTokenRequest {
                ttl: 60,
                token: String::new(),
                agent_id: id("/node/a"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(uuid::Uuid::parse_str(&token.value).is_ok());
    let parent = format!("/spire/agent/join_token/{}", token.value);
    let listed = h
        .entry
        .list_entries(req(
            local(),
            entrypb::ListEntriesRequest {
                filter: Some(entrypb::list_entries_request::Filter {
                    by_parent_id: id(&parent),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let alias = &listed.entries[0];
    assert_eq!(alias.spiffe_id, id("/node/a"));
    assert_eq!(
        alias.selectors,
        vec![selector("spiffe_id", &format!("spiffe://{TD}{parent}"))]
    );
}

// ---------------------------------------------------------------------------------------
// svid.v1 and authorized entries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn agents_get_svids_only_for_authorized_entries_with_the_entry_id() {
    let h = harness().await;
    let agent_id = attest_agent(&h, "svid-agent").await;
    let mut workload = entry(
        "/workload",
        agent_id.path(),
        vec![selector("unix", "uid:1")],
    );
    workload.dns_names = vec!["w.example.org".into()];
    workload.x509_svid_ttl = 120;
    workload.jwt_svid_ttl = 60;
    let other = entry(
        "/other",
        "/spire/agent/join_token/someone-else",
        vec![selector("unix", "uid:2")],
    );
    let created = create_entries(&h, vec![workload, other]).await;
    let workload_id = created[0].entry.as_ref().unwrap().id.clone();
    let other_id = created[1].entry.as_ref().unwrap().id.clone();

    let authorized = h
        .entry
        .get_authorized_entries(req(
            agent_caller(&agent_id),
            entrypb::GetAuthorizedEntriesRequest { output_mask: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authorized.entries.len(), 1);
    assert_eq!(authorized.entries[0].id, workload_id);

    let response = h
        .svid
        .batch_new_x509svid(req(
            agent_caller(&agent_id),
            svidpb::BatchNewX509svidRequest {
                params: vec![
                    svidpb::NewX509svidParams {
                        entry_id: workload_id.clone(),
                        csr: csr(),
                    },
                    svidpb::NewX509svidParams {
                        entry_id: other_id,
                        csr: csr(),
                    },
                    svidpb::NewX509svidParams {
                        entry_id: workload_id.clone(),
                        csr: b"not a csr".to_vec(),
                    },
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response
        .results
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        vec![0, Code::NotFound as i32, Code::InvalidArgument as i32]
    );
    let svid = response.results[0].svid.as_ref().unwrap();
    let leaf = &svid.cert_chain[0];
    assert_eq!(
        spire_core::x509::certificate_spiffe_id(leaf)
            .unwrap()
            .as_str(),
        format!("spiffe://{TD}/workload")
    );
    let validity = spire_core::x509::certificate_validity(leaf).unwrap();
    let lifetime = (validity.not_after - validity.not_before).whole_seconds();
    assert!(
        lifetime <= 120 + 60,
        "TTL comes from the entry, got {lifetime}s"
    );

    let err = h
        .svid
        .batch_new_x509svid(req(
            agent_caller(&agent_id),
            svidpb::BatchNewX509svidRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let jwt = h
        .svid
        .new_jwtsvid(req(
            agent_caller(&agent_id),
            svidpb::NewJwtsvidRequest {
                entry_id: workload_id.clone(),
                audience: vec!["aud".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(jwt.id, id("/workload"));
    assert!(jwt.expires_at - jwt.issued_at <= 60);
    let err = h
        .svid
        .new_jwtsvid(req(
            agent_caller(&agent_id),
            svidpb::NewJwtsvidRequest {
                entry_id: workload_id,
                audience: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn mint_calls_validate_their_input() {
    let h = harness().await;
    let err = h
        .svid
        .mint_x509svid(req(
            local(),
            svidpb::MintX509svidRequest {
                csr: Vec::new(),
                ttl: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "missing CSR")
    );
    let err = h
        .svid
        .mint_x509svid(req(
            local(),
            svidpb::MintX509svidRequest { csr: csr(), ttl: 0 },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "CSR URI SAN is required")
    );

    let err = h
        .svid
        .mint_jwtsvid(req(
            local(),
            svidpb::MintJwtsvidRequest {
                id: id("/spire/server"),
                audience: vec!["a".into()],
                ttl: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let minted = h
        .svid
        .mint_jwtsvid(req(
            local(),
            svidpb::MintJwtsvidRequest {
                id: id("/w"),
                audience: vec!["a".into()],
                ttl: 30,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert!(minted.token.split('.').count() == 3);
    assert!(minted.expires_at - minted.issued_at <= 30);
}

#[tokio::test]
async fn downstream_ca_requires_a_downstream_caller() {
    let h = harness().await;
    let err = h
        .svid
        .new_downstream_x509ca(req(
            Caller::default(),
            svidpb::NewDownstreamX509caRequest {
                csr: csr(),
                preferred_ttl: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let caller = Caller {
        downstream_entry_id: Some("downstream".into()),
        ..Caller::default()
    };
    let response = h
        .svid
        .new_downstream_x509ca(req(
            caller,
            svidpb::NewDownstreamX509caRequest {
                csr: csr(),
                preferred_ttl: 600,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.ca_cert_chain.is_empty());
    assert!(!response.x509_authorities.is_empty());
    // Upstream's rules: the preferred TTL, the parent's subject with OU DOWNSTREAM-<n> (a
    // self-signed parent is a chain of one), a CA for the trust domain, signed by the root.
    let ca = &response.ca_cert_chain[0];
    let (_, cert) = x509_parser::parse_x509_certificate(ca).unwrap();
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!((600..=610).contains(&lifetime), "lifetime {lifetime}");
    let subject = cert.subject().to_string();
    assert!(subject.contains("OU=DOWNSTREAM-1"), "{subject}");
    assert!(cert.is_ca());
    assert_eq!(
        spire_core::x509::certificate_spiffe_id(ca)
            .unwrap()
            .as_str(),
        "spiffe://example.org"
    );
    let root = &response.x509_authorities[0];
    let (_, root) = x509_parser::parse_x509_certificate(root).unwrap();
    assert!(cert.verify_signature(Some(root.public_key())).is_ok());
}

/// `(not_before, not_after, path length constraint)` of a DER certificate, in Unix seconds.
fn ca_validity(der: &[u8]) -> (i64, i64, Option<Option<u32>>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let path_len = cert
        .basic_constraints()
        .unwrap()
        .map(|bc| bc.value.path_len_constraint);
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        path_len,
    )
}

#[tokio::test]
async fn downstream_ca_ttl_defaults_to_ca_ttl_and_is_capped_at_the_signing_ca() {
    let h = harness().await;
    let caller = Caller {
        downstream_entry_id: Some("downstream".into()),
        ..Caller::default()
    };
    let mint = |preferred_ttl: i32| {
        let svid = &h.svid;
        let caller = caller.clone();
        async move {
            svid.new_downstream_x509ca(req(
                caller,
                svidpb::NewDownstreamX509caRequest {
                    csr: csr(),
                    preferred_ttl,
                },
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let ca_ttl = i64::try_from(
        CaConfig::new(TrustDomain::new(TD).unwrap())
            .ca_ttl
            .as_secs(),
    )
    .unwrap();
    let default_ttl = mint(0).await;
    // The signing CA is self-signed here: its expiry is the root's.
    let (_, signing_not_after, _) = ca_validity(&default_ttl.x509_authorities[0]);
    let (not_before, not_after, path_len) = ca_validity(&default_ttl.ca_cert_chain[0]);
    // preferred_ttl 0 asks for the server's ca_ttl (24h by default), which reaches the
    // signing CA's own expiry (minted moments earlier with the same TTL): capped there.
    assert!(
        not_after <= signing_not_after,
        "a downstream CA never outlives its signer: {not_after} > {signing_not_after}"
    );
    let lifetime = not_after - not_before;
    assert!(
        (ca_ttl - 120..=ca_ttl + 30).contains(&lifetime),
        "preferred_ttl 0 gives ca_ttl ({ca_ttl} s): lifetime {lifetime}"
    );
    // Upstream sets no path length constraint on a downstream CA (a nested server may nest
    // further): basic constraints CA:TRUE without pathlen.
    assert_eq!(path_len, Some(None), "CA:TRUE with no pathlen");

    // A preferred TTL beyond the signing CA's expiry is capped at that expiry.
    let long = mint(i32::try_from(10 * ca_ttl).unwrap()).await;
    let (_, not_after, path_len) = ca_validity(&long.ca_cert_chain[0]);
    assert_eq!(
        not_after, signing_not_after,
        "capped at the signing CA's not_after"
    );
    assert_eq!(path_len, Some(None));

    // A short preferred TTL is honoured as asked.
    let short = mint(300).await;
    let (not_before, not_after, _) = ca_validity(&short.ca_cert_chain[0]);
    assert!(
        (300..=300 + 30).contains(&(not_after - not_before)),
        "preferred_ttl 300: {}",
        not_after - not_before
    );
}

// ---------------------------------------------------------------------------------------
// Streaming RPCs over a loopback server
// ---------------------------------------------------------------------------------------

async fn serve(h: &Harness, caller: Caller, entry_page_size: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inject = move |mut request: Request<()>| {
        request.extensions_mut().insert(caller.clone());
        Ok(request)
    };
    let agent = AgentServer::with_interceptor(AgentApi::new(h.ctx.clone()), inject.clone());
    let entry = EntryServer::with_interceptor(
        EntryApi::new(h.ctx.clone()).with_entry_page_size(entry_page_size),
        inject,
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(agent)
            .add_service(entry)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn attest_agent_over_grpc_stream() {
    let h = harness().await;
    create_token(&h, "grpc-token").await;
    let addr = serve(&h, Caller::default(), 500).await;
    let mut client = agentpb::agent_client::AgentClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut responses = client
        .attest_agent(tokio_stream::iter(vec![attest_request("grpc-token")]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(agentpb::attest_agent_response::Step::Result(result)) = first.step else {
        panic!("expected a result");
    };
    assert_eq!(
        result.svid.unwrap().id,
        id("/spire/agent/join_token/grpc-token")
    );
    assert!(!result.reattestable);

    let err = client
        .attest_agent(tokio_stream::iter(vec![attest_request("grpc-token")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn sync_authorized_entries_pages_revisions_then_entries() {
    let h = harness().await;
    let agent_id = attest_agent(&h, "sync-agent").await;
    let entries = (0..5)
        .map(|i| {
            entry(
                &format!("/s{i}"),
                agent_id.path(),
                vec![selector("unix", &format!("uid:{i}"))],
            )
        })
        .collect();
    create_entries(&h, entries).await;
    let addr = serve(&h, agent_caller(&agent_id), 2).await;
    let mut client = entrypb::entry_client::EntryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(entrypb::SyncAuthorizedEntriesRequest::default())
        .await
        .unwrap();
    let mut responses = client
        .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut revisions = Vec::new();
    let mut mores = Vec::new();
    loop {
        let page = responses.message().await.unwrap().unwrap();
        assert!(page.entries.is_empty());
        assert!(page.entry_revisions.len() <= 2);
        revisions.extend(page.entry_revisions);
        mores.push(page.more);
        if !page.more {
            break;
        }
    }
    assert_eq!(mores, vec![true, true, false]);
    assert_eq!(revisions.len(), 5);

    let mut wanted: Vec<String> = revisions.iter().map(|r| r.id.clone()).collect();
    wanted.push("unknown-id".into());
    tx.send(entrypb::SyncAuthorizedEntriesRequest {
        output_mask: None,
        ids: wanted,
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    loop {
        let page = responses.message().await.unwrap().unwrap();
        assert!(page.entries.len() <= 2);
        got.extend(page.entries);
        if !page.more {
            break;
        }
    }
    assert_eq!(got.len(), 5);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());

    // Few entries: one response with everything; masked revisions are refused.
    let addr = serve(&h, agent_caller(&agent_id), 500).await;
    let mut client = entrypb::entry_client::EntryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut responses = client
        .sync_authorized_entries(tokio_stream::iter(vec![
            entrypb::SyncAuthorizedEntriesRequest::default(),
        ]))
        .await
        .unwrap()
        .into_inner();
    let all = responses.message().await.unwrap().unwrap();
    assert_eq!(all.entries.len(), 5);
    assert!(!all.more);
    let err = client
        .sync_authorized_entries(tokio_stream::iter(vec![
            entrypb::SyncAuthorizedEntriesRequest {
                output_mask: Some(types::EntryMask::default()),
                ids: Vec::new(),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
