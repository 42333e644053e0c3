//! `spire-agent run`: loads the config, obtains the agent SVID (the one stored in `data_dir`
//! when it is still valid, otherwise by node attestation), starts the manager's sync loop,
//! the agent SVID's keeper (rotation, re-attestation) and the Workload API, and stops them
//! all on SIGINT or SIGTERM, or when the server no longer accepts the agent and it cannot
//! attest again (then `run` returns that error).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use spire_common::logging::LogLevelHandle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminOptions};
use crate::attestation::bootstrap_state::BootstrapState;
use crate::attestation::rebootstrap::{self, RebootstrapNeeded};
use crate::attestation::{self, AgentSvid, RotationConfig};
use crate::cli::RunArgs;
use crate::client::{AgentIdentity, ServerAddress, ServerClient, ServerTrust};
use crate::config::{
    self, KeyManagerChoice, NodeAttestorChoice, RebootstrapMode, ResolvedAgentConfig,
    WorkloadAttestorChoice,
};
use crate::health::AgentHealth;
use crate::manager::server_api::bundle_from_proto;
use crate::manager::{Manager, ManagerOptions, WorkloadIdentities};
use crate::plugins::keymanager::disk::DiskKeyManager;
use crate::plugins::keymanager::memory::MemoryKeyManager;
use crate::plugins::keymanager::{
    AGENT_SVID_KEY_TYPE, KeyManager, find_agent_svid_key, next_agent_svid_key_id,
};
use crate::plugins::nodeattestor::NodeAttestor;
use crate::plugins::nodeattestor::join_token::JoinTokenAttestor;
use crate::plugins::nodeattestor::k8s_psat::K8sPsatAttestor;
use crate::plugins::workloadattestor::WorkloadAttestor;
use crate::plugins::workloadattestor::docker::DockerAttestor;
use crate::plugins::workloadattestor::k8s::K8sAttestor;
use crate::plugins::workloadattestor::unix::{UnixAttestor, UnixAttestorConfig};
use crate::storage::AgentStorage;
use crate::workload::{self, WorkloadApiOptions};
use spire_common::health;
use spire_common::telemetry::live::LiveTelemetry;
use spire_common::telemetry::{self, TelemetryConfig};

/// Loads the config named by the `run` flags and runs the agent until a signal stops it.
pub async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    // Before anything is created, as upstream: nothing is group-writable or open to others.
    let loose_umask = spire_common::fs::set_minimum_umask();
    let overrides = args.overrides();
    let config = config::load_and_resolve(&overrides)?;
    let log_level = crate::logging::init_with_source_location(
        &config.log_level,
        config.log_format.as_str(),
        config.log_file.as_deref(),
        config.log_source_location,
    )?;
    if let Some(previous) = loose_umask {
        tracing::warn!("{}", spire_common::fs::umask_warning(previous));
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    run_with_reload(config, log_level, shutdown_signal(), Some(overrides)).await
}

/// Creates `data_dir` (0750), or narrows an existing one that is more open, unless the
/// Workload API socket lives inside it: then others must keep reaching the socket, and the
/// folder is left as the operator made it (`agent-data.json` and the keys are 0600 anyway).
fn prepare_data_dir(config: &ResolvedAgentConfig) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let result = if absolute(&config.socket_path).starts_with(absolute(data_dir)) {
        spire_common::fs::create_dir(data_dir, spire_common::fs::DATA_DIR_MODE)
    } else {
        spire_common::fs::ensure_private_dir(data_dir, spire_common::fs::DATA_DIR_MODE)
    };
    result.with_context(|| {
        format!(
            "cannot create data_dir {}; set agent.data_dir to a writable directory",
            data_dir.display()
        )
    })
}

/// The `telemetry` block, refused with its name when this build cannot honour it.
pub(crate) fn telemetry_config(config: &ResolvedAgentConfig) -> anyhow::Result<TelemetryConfig> {
    TelemetryConfig::from_section(&config.telemetry, "spire_agent", config.trust_domain.name())
        .context("the telemetry block cannot be used")
}

/// Runs an agent with a resolved config until `shutdown` completes; `log_level` is the
/// running logger, which the admin API's Logger service changes.
pub async fn run(
    config: ResolvedAgentConfig,
    log_level: LogLevelHandle,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_reload(config, log_level, shutdown, None).await
}

/// Like [`run`]; with `reload` (the `run` flags), SIGHUP and `spire-agent config reload`
/// read the same file again and apply what can change live ([`crate::reload`]).
/// When trust in the server is lost for good under `rebootstrap_mode`, the run ends and
/// starts again from the bootstrap trust source in the same process.
pub async fn run_with_reload(
    config: ResolvedAgentConfig,
    log_level: LogLevelHandle,
    shutdown: impl std::future::Future<Output = ()>,
    reload: Option<config::Overrides>,
) -> anyhow::Result<()> {
    let rate_limiter = Arc::new(crate::workload::ratelimit::WorkloadRateLimiter::new(
        &config.ratelimit,
    ));
    let started_at = Instant::now();
    // Before any connection to the server: attestation, sync and rotation all follow it.
    spire_common::tls::require_pq_kem(config.experimental.require_pq_kem);
    let telemetry = telemetry_config(&config)?;
    // Telemetry (and its Prometheus listener) stops when this function returns, however.
    let telemetry_stop = CancellationToken::new();
    let _telemetry_guard = telemetry_stop.clone().drop_guard();
    let live_telemetry = LiveTelemetry::start(telemetry, telemetry_stop).await?;
    prepare_data_dir(&config)?;
    tracing::info!(
        trust_domain = config.trust_domain.name(),
        data_dir = %config.data_dir.display(),
        "starting spire-agent"
    );
    let storage = Arc::new(AgentStorage::open(&config.data_dir)?);
    // The KeyManager plugin process lives as long as the agent, across rebootstraps.
    let mut key_manager_plugin = Vec::new();
    let key_manager: Arc<dyn KeyManager> = match &config.plugins.key_manager {
        KeyManagerChoice::Memory => Arc::new(MemoryKeyManager::new()),
        KeyManagerChoice::Disk { directory } => Arc::new(
            DiskKeyManager::open(directory)
                .context("cannot open plugins.KeyManager \"disk\" directory")?,
        ),
        KeyManagerChoice::External(plugin) => {
            use crate::plugins::keymanager::external::{ExternalKeyManager, SERVICE};
            Arc::new(ExternalKeyManager::new(
                load_external(plugin, SERVICE, &config, &mut key_manager_plugin).await?,
            ))
        }
    };
    let key_manager: Arc<dyn KeyManager> = Arc::new(
        crate::plugins::keymanager::metered::MeteredKeyManager::new(key_manager),
    );
    let bootstrap_state = BootstrapState::new(storage.load_bundle().is_some());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let reloader = match &reload {
            Some(overrides) => {
                let reloader = crate::reload::Reloader::new(
                    overrides.clone(),
                    config.clone(),
                    log_level.clone(),
                    Arc::clone(&rate_limiter),
                )
                .context("cannot read the configuration file again for live reload")?;
                reloader.attach_telemetry(live_telemetry.clone());
                Some(reloader)
            }
            None => None,
        };
        let run = RunContext {
            config: &config,
            log_level: log_level.clone(),
            reloader,
            rate_limiter: Arc::clone(&rate_limiter),
            metrics: live_telemetry.metrics(),
            started_at,
            storage: Arc::clone(&storage),
            key_manager: Arc::clone(&key_manager),
            bootstrap_state: bootstrap_state.clone(),
        };
        match run_once(run, shutdown.as_mut()).await {
            Err(e) if e.chain().any(|c| c.is::<RebootstrapNeeded>()) => {
                tracing::warn!("{e:#}; attesting again from the bootstrap trust bundle");
            }
            other => return other,
        }
    }
}

/// What one run of the agent (until shutdown or a rebootstrap) works with.
struct RunContext<'a> {
    config: &'a ResolvedAgentConfig,
    log_level: LogLevelHandle,
    reloader: Option<Arc<crate::reload::Reloader>>,
    rate_limiter: Arc<crate::workload::ratelimit::WorkloadRateLimiter>,
    metrics: telemetry::Metrics,
    started_at: Instant,
    storage: Arc<AgentStorage>,
    key_manager: Arc<dyn KeyManager>,
    bootstrap_state: BootstrapState,
}

/// Obtains the agent SVID (retrying as `retry_bootstrap` says), then serves until
/// `shutdown` completes or trust in the server is lost for good ([`RebootstrapNeeded`]).
async fn run_once(
    run: RunContext<'_>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let RunContext {
        config,
        log_level,
        reloader,
        rate_limiter,
        metrics,
        started_at,
        storage,
        key_manager,
        bootstrap_state,
    } = run;
    let mut rebootstrap_mode = config.rebootstrap_mode;
    if rebootstrap_mode != RebootstrapMode::Never
        && let Some((_, reattestable)) = storage.load_svid()
    {
        rebootstrap_mode = rebootstrap::mode_for(rebootstrap_mode, reattestable)?;
    }
    let address = ServerAddress {
        server_address: config.server_address.clone(),
        server_port: config.server_port,
        trust_domain: config.trust_domain.clone(),
    };

    let mut external_plugins = Vec::new();
    let attestor = node_attestor(config, &mut external_plugins).await?;
    // Plugins and listeners whose settings can be wrong are set up before attesting, so a
    // bad kubelet CA path or a taken health port never costs a single-use join token.
    let attestors = workload_attestors(config, &mut external_plugins).await?;
    let svid_stores = svid_stores(config, &mut external_plugins).await?;
    let health_listener = if config.health_checks.listener_enabled {
        Some(health::bind(&config.health_checks).await?)
    } else {
        None
    };
    let attempt = || {
        bootstrap_attempt(
            config,
            &address,
            &bootstrap_state,
            &storage,
            attestor.as_ref(),
            key_manager.as_ref(),
        )
    };
    let never_stops = CancellationToken::new();
    let bootstrapped = rebootstrap::BootstrapLoop {
        retry: config.retry_bootstrap,
        backoff: rebootstrap::BootstrapBackoff::new(rebootstrap_mode != RebootstrapMode::Never),
        mode: &mut rebootstrap_mode,
        delay: config.rebootstrap_delay,
        state: &bootstrap_state,
        storage: &storage,
        cancel: &never_stops,
    }
    .run(attempt);
    let (client, svid, reattestable) = tokio::select! {
        () = shutdown.as_mut() => {
            tracing::info!("stopping spire-agent");
            return Ok(());
        }
        bootstrapped = bootstrapped => bootstrapped?,
    };
    // As upstream's manager does at start: the bundle in use goes to data_dir, so later
    // starts trust it rather than the bootstrap source (trust_bundle_path or _url).
    if let Some(roots) = client.bundle()
        && storage.load_bundle().as_ref() != Some(&roots)
    {
        storage.store_bundle(&roots)?;
    }
    client.set_identity(svid.chain.clone(), svid.key.clone())?;
    let (svid_updates, agent_identity) = watch::channel(AgentIdentity {
        chain: svid.chain.clone(),
        key: svid.key.clone(),
    });

    let bundle = bundle_from_proto(&spire_proto::spire::api::types::Bundle {
        trust_domain: config.trust_domain.name().to_owned(),
        x509_authorities: client
            .bundle()
            .unwrap_or_default()
            .into_iter()
            .map(|asn1| spire_proto::spire::api::types::X509Certificate {
                asn1,
                tainted: false,
            })
            .collect(),
        ..Default::default()
    })?;
    let manager = Manager::new(
        Arc::new(client.clone()),
        config.trust_domain.clone(),
        bundle,
        ManagerOptions {
            sync_interval: config.experimental.sync_interval,
            x509_svid_cache_max_size: config.x509_svid_cache_max_size,
            jwt_svid_cache_max_size: config.jwt_svid_cache_max_size,
            svid_key_type: config.workload_x509_svid_key_type,
            use_sync_authorized_entries: config.experimental.use_sync_authorized_entries,
            availability_target: config.availability_target,
            jwt_svid_cache_hit_timeout: config.experimental.jwt_svid_cache_hit_timeout,
            ..ManagerOptions::default()
        },
    );
    if let Some(reloader) = &reloader {
        reloader.attach_manager(Arc::clone(&manager)).await;
    }

    let cancel = CancellationToken::new();
    let trust_watch = tokio::spawn(rebootstrap::watch_server_trust(
        manager.clone(),
        bootstrap_state.clone(),
        storage.clone(),
        rebootstrap_mode,
        config.rebootstrap_delay,
        cancel.clone(),
    ));
    let mut tasks = JoinSet::new();
    tasks.spawn(manager.clone().run(cancel.clone()));
    if !svid_stores.is_empty() {
        tasks.spawn(
            crate::svid_store::SvidStoreService::new(svid_stores)
                .run(manager.clone(), cancel.clone()),
        );
    }
    tasks.spawn(spire_common::plugin_host::reconfigure_on_signal(
        external_plugins,
        cancel.child_token(),
    ));
    if let Some(reloader) = &reloader {
        tasks.spawn(spire_common::reload::reload_on_sighup(
            Arc::clone(reloader),
            cancel.clone(),
        ));
    }
    tasks.spawn(telemetry::report_process_gauges(
        metrics.clone(),
        env!("CARGO_PKG_VERSION"),
        config.trust_domain.name().to_owned(),
        cancel.clone(),
    ));
    tasks.spawn(crate::logging::reopen_log_file_on_sigusr2(
        log_level.clone(),
        cancel.clone(),
    ));
    tasks.spawn(keep_bundle(
        manager.clone(),
        client.clone(),
        storage.clone(),
        config.trust_domain.name().to_owned(),
        cancel.clone(),
    ));
    let rotation = RotationConfig {
        client: client.clone(),
        key_manager: key_manager.clone(),
        storage: storage.clone(),
        reattestable,
        updates: Some(svid_updates),
        tainted_roots: Some(manager.tainted_roots()),
        availability_target: config.availability_target,
    };
    let svid_keeper = tokio::spawn(attestation::keep_agent_svid(
        rotation,
        attestor,
        svid,
        cancel.clone(),
    ));

    if let Some(listener) = health_listener {
        // With both public APIs disabled no socket is served, and upstream's check then
        // answers from the agent having started alone.
        let public_socket = (!(config.disable_workload_api && config.disable_sds_api))
            .then(|| config.socket_path.clone());
        let check = Arc::new(AgentHealth::new(public_socket, agent_identity.clone()));
        let (state, checks) = health::spawn_checks(vec![check], cancel.clone());
        let health_config = config.health_checks.clone();
        let health_cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = health::serve(listener, &health_config, state, health_cancel).await {
                tracing::error!(error = %e, "health check listener stopped");
            }
            let _ = checks.await;
        });
    }
    if let Some(path) = config.admin_socket_path.clone() {
        let options = AdminOptions {
            trust_domain: config.trust_domain.clone(),
            authorized_delegates: config.authorized_delegates.clone(),
            log_level,
            started_at,
            metrics: metrics.clone(),
        };
        let admin = admin::serve_with_reloader(
            options,
            manager.clone(),
            attestors.clone(),
            agent_identity,
            path,
            cancel.clone(),
            reloader,
        );
        tasks.spawn(async move {
            if let Err(e) = admin.await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    let options = WorkloadApiOptions {
        trust_domain: Some(config.trust_domain.clone()),
        allowed_foreign_jwt_claims: config.allowed_foreign_jwt_claims.iter().cloned().collect(),
        allow_unauthenticated_verifiers: config.allow_unauthenticated_verifiers,
        metrics: metrics.clone(),
        sds: config.sds.clone(),
        disable_sds_api: config.disable_sds_api,
        disable_workload_api: config.disable_workload_api,
        log_selectors: config.log_selectors.clone(),
        rate_limiter,
    };
    let workload_task = if config.disable_sds_api && config.disable_workload_api {
        tracing::info!(
            apis = "Workload and SDS APIs",
            "Skipping agent APIs because public endpoint is disabled"
        );
        drop((manager, attestors, options));
        tokio::spawn(async {
            std::future::pending::<Result<(), workload::WorkloadApiError>>().await
        })
    } else {
        tokio::spawn(workload::serve_with_options(
            manager,
            attestors,
            options,
            config.socket_path.clone(),
            cancel.clone(),
        ))
    };

    let result = tokio::select! {
        () = shutdown.as_mut() => {
            tracing::info!("stopping spire-agent");
            Ok(())
        }
        served = workload_task => match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("Workload API stopped")),
            Err(e) => Err(anyhow::anyhow!("Workload API failed: {e}")),
        },
        kept = svid_keeper => match kept {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the agent cannot continue")),
            Err(e) => Err(anyhow::anyhow!("agent SVID keeper failed: {e}")),
        },
        needed = trust_watch => match needed {
            Ok(needed) => Err(anyhow::Error::new(needed)),
            Err(e) => Err(anyhow::anyhow!("server trust watch failed: {e}")),
        },
    };
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

/// One attempt to obtain the agent SVID: the trust bundle (stored, else from the bootstrap
/// source), a client for the server, and the stored SVID or a new one from node
/// attestation. Returns the client, the SVID and whether it may be re-attested.
async fn bootstrap_attempt(
    config: &ResolvedAgentConfig,
    address: &ServerAddress,
    state: &BootstrapState,
    storage: &AgentStorage,
    attestor: &dyn NodeAttestor,
    key_manager: &dyn KeyManager,
) -> anyhow::Result<((ServerClient, AgentSvid, bool), bool)> {
    let stored = storage.load_bundle();
    if stored.is_none() {
        state.bundle_read();
    }
    let trust =
        attestation::bootstrap_trust(stored, &config.bootstrap_bundle, &config.trust_domain)
            .await?;
    let insecure = matches!(trust, ServerTrust::InsecureBootstrap);
    let client = ServerClient::new(address, trust, None)?;
    let (svid, reattestable) = agent_svid(attestor, &client, storage, key_manager)
        .await
        .context("cannot obtain an agent SVID")?;
    if insecure || client.bundle().is_none() {
        let roots = attestation::fetch_bundle(&client).await?;
        client.set_bundle(roots.clone())?;
    }
    Ok(((client, svid, reattestable), reattestable))
}

/// The host services the agent offers to its external plugins, as upstream: `Metrics`, into
/// the process's telemetry.
fn host_services() -> spire_common::plugin_host::HostServices {
    use spire_common::plugin_host::hostservice::metrics::MetricsHostService;
    spire_common::plugin_host::HostServices::none()
        .with(MetricsHostService::new(telemetry::global()).server())
}

/// Starts, initializes and configures an external plugin; a failure stops start-up naming
/// the plugin and the reason.
async fn load_external(
    plugin: &spire_core::config::plugins::ExternalPlugin,
    service: &str,
    config: &ResolvedAgentConfig,
    loaded_plugins: &mut Vec<Arc<spire_common::plugin_host::LoadedPlugin>>,
) -> anyhow::Result<Arc<spire_common::plugin_host::LoadedPlugin>> {
    let loaded = spire_common::plugin_host::LoadedPlugin::load(
        plugin,
        service,
        config.trust_domain.name(),
        &host_services(),
    )
    .await?;
    let loaded = Arc::new(loaded);
    loaded_plugins.push(Arc::clone(&loaded));
    Ok(loaded)
}

/// The configured node attestor, used at start and for re-attestation.
async fn node_attestor(
    config: &ResolvedAgentConfig,
    loaded: &mut Vec<Arc<spire_common::plugin_host::LoadedPlugin>>,
) -> anyhow::Result<Arc<dyn NodeAttestor>> {
    use crate::plugins::nodeattestor::external::{ExternalNodeAttestor, SERVICE};
    Ok(match &config.plugins.node_attestor {
        NodeAttestorChoice::External(plugin) => Arc::new(ExternalNodeAttestor::new(
            load_external(plugin, SERVICE, config, loaded).await?,
        )),
        NodeAttestorChoice::JoinToken => {
            Arc::new(JoinTokenAttestor::new(config.join_token.clone()))
        }
        NodeAttestorChoice::K8sPsat(psat) => Arc::new(K8sPsatAttestor::new(psat.clone())),
        NodeAttestorChoice::X509Pop(c) => Arc::new(
            crate::plugins::nodeattestor::x509pop::X509PopAttestor::new(c.clone()),
        ),
        NodeAttestorChoice::SshPop(c) => Arc::new(
            crate::plugins::nodeattestor::sshpop::SshPopAttestor::new(c.clone()),
        ),
        NodeAttestorChoice::GcpIit(c) => Arc::new(
            crate::plugins::nodeattestor::gcp_iit::GcpIitAttestor::new(c.clone()),
        ),
        NodeAttestorChoice::AzureMsi(c) => {
            Arc::new(crate::plugins::nodeattestor::azure_msi::AzureMsiAttestor::new(c.clone()))
        }
        NodeAttestorChoice::AzureImds(c) => {
            Arc::new(crate::plugins::nodeattestor::azure_imds::AzureImdsAttestor::new(c.clone()))
        }
        NodeAttestorChoice::AwsIid(c) => Arc::new(
            crate::plugins::nodeattestor::aws_iid::AwsIidAttestor::new(c),
        ),
    })
}

/// The stored agent SVID when it is still valid and its key is in the key manager (no
/// re-attestation after a restart), otherwise a new one from node attestation. An expired
/// stored SVID is never reused.
async fn agent_svid(
    attestor: &dyn NodeAttestor,
    client: &ServerClient,
    storage: &AgentStorage,
    key_manager: &dyn KeyManager,
) -> anyhow::Result<(AgentSvid, bool)> {
    let now = time::OffsetDateTime::now_utc();
    if let Some((chain, reattestable)) = storage.load_svid()
        && let Some(leaf) = chain.first()
        && spire_core::x509::certificate_not_after(leaf).is_ok_and(|t| t > now)
        && let Some((key_id, key)) = find_agent_svid_key(key_manager, leaf).await?
    {
        tracing::info!("using the agent SVID stored in data_dir; no attestation needed");
        return Ok((AgentSvid { chain, key, key_id }, reattestable));
    }
    let key_id = next_agent_svid_key_id(None);
    let key = key_manager
        .generate_key(key_id, AGENT_SVID_KEY_TYPE)
        .await?;
    let attested = attestation::attest(client, attestor, &key).await?;
    storage.store_svid(&attested.svid_chain, attested.reattestable)?;
    tracing::info!("node attestation succeeded");
    Ok((
        AgentSvid {
            chain: attested.svid_chain,
            key,
            key_id: key_id.to_owned(),
        },
        attested.reattestable,
    ))
}

/// The configured workload attestors, in config order. The `k8s` attestor reads its kubelet
/// credentials now, so a missing file stops the start with its name.
async fn workload_attestors(
    config: &ResolvedAgentConfig,
    loaded: &mut Vec<Arc<spire_common::plugin_host::LoadedPlugin>>,
) -> anyhow::Result<Vec<Arc<dyn WorkloadAttestor>>> {
    use crate::plugins::workloadattestor::external::{ExternalWorkloadAttestor, SERVICE};
    let mut attestors: Vec<Arc<dyn WorkloadAttestor>> = Vec::new();
    for choice in &config.plugins.workload_attestors {
        attestors.push(match choice {
            WorkloadAttestorChoice::External(plugin) => Arc::new(ExternalWorkloadAttestor::new(
                load_external(plugin, SERVICE, config, loaded).await?,
            )),
            WorkloadAttestorChoice::Unix(unix) => Arc::new(UnixAttestor::new(UnixAttestorConfig {
                discover_workload_path: unix.discover_workload_path,
                workload_size_limit: unix.workload_size_limit,
            })),
            WorkloadAttestorChoice::K8s(k8s) => Arc::new(
                K8sAttestor::new(k8s.clone())
                    .map_err(|e| anyhow::anyhow!("plugins.WorkloadAttestor.k8s: {e}"))?,
            ),
            WorkloadAttestorChoice::Docker(docker) => Arc::new(
                DockerAttestor::new(docker.clone())
                    .map_err(|e| anyhow::anyhow!("plugins.WorkloadAttestor.docker: {e}"))?,
            ),
        });
    }
    Ok(attestors)
}

/// The configured SVIDStores (external plugins and `aws_secretsmanager`), by name.
async fn svid_stores(
    config: &ResolvedAgentConfig,
    loaded: &mut Vec<Arc<spire_common::plugin_host::LoadedPlugin>>,
) -> anyhow::Result<crate::plugins::svidstore::SvidStores> {
    use crate::plugins::svidstore::external::{ExternalSvidStore, SERVICE};
    let mut stores = crate::plugins::svidstore::SvidStores::default();
    for plugin in &config.plugins.svid_stores {
        stores.insert(Arc::new(ExternalSvidStore::new(
            load_external(plugin, SERVICE, config, loaded).await?,
        )));
    }
    if let Some(aws) = &config.plugins.aws_secretsmanager {
        use crate::plugins::svidstore::aws_secretsmanager::{AwsSecretsManager, NAME};
        stores.insert(Arc::new(
            AwsSecretsManager::new(NAME, aws, None).map_err(|e| anyhow::anyhow!(e))?,
        ));
    }
    Ok(stores)
}

/// Keeps the server connection's trust and `data_dir` in step with the bundle the manager
/// syncs, so a CA rotation never strands the agent.
async fn keep_bundle(
    manager: Arc<Manager>,
    client: ServerClient,
    storage: Arc<AgentStorage>,
    trust_domain: String,
    cancel: CancellationToken,
) {
    let mut bundles = manager.bundles();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = bundles.changed() => if changed.is_err() { return },
        }
        let roots = bundles
            .borrow()
            .get(&trust_domain)
            .map(|b| b.x509_authorities.clone());
        if let Some(roots) = roots.filter(|r| !r.is_empty())
            && client.bundle().as_ref() != Some(&roots)
        {
            if let Err(e) = client.set_bundle(roots.clone()) {
                tracing::warn!(error = %e, "cannot use the new trust bundle for the server connection");
            }
            if let Err(e) = storage.store_bundle(&roots) {
                tracing::warn!(error = %e, "cannot store the new trust bundle in data_dir");
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
