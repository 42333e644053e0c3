//! `spire-server run`: loads the config, builds the catalog, opens the datastore, starts the
//! CA manager, the authorized-entry index and the listeners, and stops them all on SIGINT or
//! SIGTERM.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use spire_common::telemetry::live::LiveTelemetry;
use spire_common::telemetry::{self, TelemetryConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiContext, ApiSettings, ratelimit::RateLimiters};
use crate::authorized::AuthorizedIndex;
use crate::ca::{CaConfig, CaManager};
use crate::catalog::{self, Catalog, DatabaseType, KeyManagerChoice, UpstreamAuthorityChoice};
use crate::cli::RunArgs;
use crate::config::{self, BundleEndpoint, BundleEndpointProfile, Overrides, ResolvedServerConfig};
use crate::datastore::DataStore;
use crate::datastore::sql::{SqlConfig, SqlDataStore, SqlOptions};
use crate::endpoints::health_http::{self, HealthChecksConfig};
use crate::endpoints::{self, EndpointsConfig};
use crate::federation::acme::{AcmeConfig, AcmeManager};
use crate::federation::endpoint::BundleEndpointServer;
use crate::federation::refresher::BundleRefresher;
use crate::federation::serving_cert::ServingCert;
use crate::plugins::bundlepublisher::BundlePublishers;
use crate::plugins::credentialcomposer::CredentialComposers;
use crate::plugins::keymanager::KeyManager;
use crate::plugins::keymanager::disk::DiskKeyManager;
use crate::plugins::keymanager::memory::MemoryKeyManager;
use crate::plugins::nodeattestor::NodeAttestors;
use crate::plugins::notifier::{BUNDLE_POLL_INTERVAL, Notifiers};
use crate::plugins::upstreamauthority::UpstreamAuthority;
use crate::plugins::upstreamauthority::disk::{DiskUpstreamAuthority, DiskUpstreamAuthorityConfig};
use crate::plugins::upstreamauthority::spire::SpireUpstreamAuthority;

/// How often expired join tokens, expired entries and old change events are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Loads the config named by the `run` flags, applies the flag overrides and runs the
/// server until a signal stops it.
pub async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    // Before anything is created, as upstream: nothing is group-writable or open to others.
    let loose_umask = spire_common::fs::set_minimum_umask();
    let overrides = Overrides {
        bind_address: args.bind_address,
        bind_port: args.server_port,
        socket_path: args.socket_path.map(|p| p.display().to_string()),
        trust_domain: args.trust_domain,
        log_level: args.log_level,
        log_format: args.log_format,
        log_file: args.log_file.map(|p| p.display().to_string()),
        log_source_location: args.log_source_location,
        data_dir: args.data_dir.map(|p| p.display().to_string()),
        config_path: Some(args.config.clone()),
        expand_env: args.expand_env,
    };
    let source = crate::reload::ReloadSource {
        path: args.config.clone(),
        expand_env: args.expand_env,
        overrides: overrides.clone(),
    };
    let mut file = config::load_file(&args.config, args.expand_env)?;
    file.apply_overrides(&overrides);
    let resolved = file.resolve()?;
    let catalog = catalog::from_config(&file)?;

    let log_level = crate::logging::init_with_source_location(
        &resolved.log_level,
        resolved.log_format.as_str(),
        resolved.log_file.as_deref(),
        resolved.log_source_location,
    )?;
    if let Some(previous) = loose_umask {
        tracing::warn!("{}", spire_common::fs::umask_warning(previous));
    }
    for warning in &resolved.warnings {
        tracing::warn!("{warning}");
    }
    run_with_reload(
        resolved,
        catalog,
        log_level,
        shutdown_signal(),
        Some(source),
    )
    .await
}

/// The `telemetry` block, refused with its name when this build cannot honour it.
pub(crate) fn telemetry_config(config: &ResolvedServerConfig) -> anyhow::Result<TelemetryConfig> {
    TelemetryConfig::from_section(
        &config.telemetry,
        "spire_server",
        config.trust_domain.name(),
    )
    .context("the telemetry block cannot be used")
}

/// Loads and checks a config file (syntax, keys, values and plugins) without starting.
pub fn validate_file(path: &Path, expand_env: bool) -> anyhow::Result<()> {
    let file = config::load_file(path, expand_env)?;
    let resolved = file.resolve()?;
    telemetry_config(&resolved)?;
    let catalog = catalog::from_config(&file)?;
    let (sql, options) = sql_settings(&catalog);
    SqlDataStore::check_connection_strings(&sql, &options)
        .context("plugins.DataStore \"sql\" is not valid")?;
    Ok(())
}

/// Runs a server with an already resolved config until `shutdown` completes.
pub async fn run(
    config: ResolvedServerConfig,
    catalog: Catalog,
    log_level: crate::logging::LogLevelHandle,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_reload(config, catalog, log_level, shutdown, None).await
}

/// Like [`run`]; with `reload`, SIGHUP and `spire-server config reload` read that file again
/// and apply what can change live ([`crate::reload`]).
pub async fn run_with_reload(
    config: ResolvedServerConfig,
    catalog: Catalog,
    log_level: crate::logging::LogLevelHandle,
    shutdown: impl std::future::Future<Output = ()>,
    reload: Option<crate::reload::ReloadSource>,
) -> anyhow::Result<()> {
    spire_common::fs::ensure_private_dir(&config.data_dir, spire_common::fs::DATA_DIR_MODE)
        .with_context(|| {
            format!(
                "cannot create data_dir {}; set server.data_dir to a writable directory",
                config.data_dir.display()
            )
        })?;
    tracing::info!(
        trust_domain = config.trust_domain.name(),
        data_dir = %config.data_dir.display(),
        "starting spire-server"
    );

    if config.disable_jwt_svids {
        tracing::info!("JWT-SVID profile is disabled");
    }
    // Before any TLS configuration is built: the API listener and federation client follow it.
    spire_common::tls::require_pq_kem(config.experimental.require_pq_kem);
    let telemetry = telemetry_config(&config)?;
    // Telemetry (and its Prometheus listener) stops when this function returns, however.
    let telemetry_stop = CancellationToken::new();
    let _telemetry_guard = telemetry_stop.clone().drop_guard();
    let live_telemetry = LiveTelemetry::start(telemetry, telemetry_stop).await?;
    let metrics = live_telemetry.metrics();

    let datastore: Arc<dyn DataStore> = Arc::new(crate::datastore::metered::MeteredDataStore::new(
        Arc::new(open_datastore(&catalog).await?),
    ));
    let host_services = crate::hostservice::ServerHostServices::new(
        config.trust_domain.clone(),
        datastore.clone(),
        metrics.clone(),
    );
    let (key_manager, key_manager_plugin) = key_manager(
        &catalog,
        &config.trust_domain,
        &host_services.host_services(),
    )
    .await?;
    let (upstream, upstream_plugin) =
        upstream_authority(&catalog, &config, &host_services.host_services()).await?;
    let notifiers = Notifiers::from_catalog(
        &catalog.notifiers,
        &config.trust_domain,
        &host_services.host_services(),
    )
    .await
    .context("cannot set up plugins.Notifier")?;
    let (bundle_publishers, publisher_plugins) = BundlePublishers::from_catalog(
        &catalog.bundle_publishers,
        &config.trust_domain,
        &host_services.host_services(),
    )
    .await
    .context("cannot set up plugins.BundlePublisher")?;

    let mut node_attestors = NodeAttestors::from_catalog(
        &catalog.node_attestors,
        datastore.clone(),
        &config.trust_domain,
    );
    let (credential_composers, composer_plugins) = CredentialComposers::from_catalog(
        &catalog.credential_composers,
        &config.trust_domain,
        &host_services.host_services(),
    )
    .await
    .context("cannot set up plugins.CredentialComposer")?;
    let mut external_plugins = node_attestors
        .load_external(
            &catalog.node_attestors,
            &config.trust_domain,
            &host_services.host_services(),
        )
        .await?;
    external_plugins.extend(key_manager_plugin);
    external_plugins.extend(upstream_plugin);
    external_plugins.extend(publisher_plugins);
    external_plugins.extend(composer_plugins);
    let mut ca_config = ca_config(&config);
    ca_config.credential_composers = credential_composers;

    let ca = CaManager::new(ca_config, key_manager, upstream, datastore.clone())
        .await
        .context("cannot start the CA")?;
    host_services.bind_ca(&ca);
    if config.experimental.events_based_cache {
        tracing::info!("Using events based cache");
    }
    let index = AuthorizedIndex::load_with(datastore.clone(), config.index_options())
        .await
        .context("cannot load registration entries and agents from the datastore")?;

    let cancel = CancellationToken::new();
    let bundle_refresher = BundleRefresher::new(
        datastore.clone(),
        config.trust_domain.clone(),
        &config.federation.federates_with,
        cancel.child_token(),
    );
    let ctx = Arc::new(ApiContext {
        trust_domain: config.trust_domain.clone(),
        datastore: datastore.clone(),
        ca: ca.clone(),
        index: index.clone(),
        settings: ApiSettings {
            default_x509_svid_ttl: config.default_x509_svid_ttl,
            default_jwt_svid_ttl: config.default_jwt_svid_ttl,
            agent_ttl: config.agent_ttl,
            admin_ids: config.admin_ids.clone(),
            rate_limit_attestation: config.rate_limit.attestation,
            rate_limit_signing: config.rate_limit.signing,
            audit_log_enabled: config.audit_log_enabled,
            disable_jwt_svids: config.disable_jwt_svids,
        },
        log_level,
        started_at: Instant::now(),
        rate_limits: RateLimiters::new(config.rate_limit.attestation, config.rate_limit.signing),
        node_attestors,
        bundle_refresher: bundle_refresher.clone(),
    });

    let reloader = match reload {
        Some(source) => Some(
            crate::reload::Reloader::new(
                source,
                config.clone(),
                &catalog,
                ctx.clone(),
                live_telemetry.clone(),
            )
            .context("cannot read the configuration file again for live reload")?,
        ),
        None => None,
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(bundle_refresher.run());
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
    if let Err(e) = start_notifiers(&notifiers, &config, &ca, &datastore, &cancel, &mut tasks).await
    {
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
        return Err(e);
    }
    if let Some(endpoint) = &config.federation.bundle_endpoint {
        start_bundle_endpoint(
            endpoint,
            &config,
            &ca,
            datastore.clone(),
            &cancel,
            &mut tasks,
        )
        .await?;
    }
    tasks.spawn(telemetry::report_process_gauges(
        metrics.clone(),
        env!("CARGO_PKG_VERSION"),
        config.trust_domain.name().to_owned(),
        cancel.clone(),
    ));
    tasks.spawn(crate::logging::reopen_log_file_on_sigusr2(
        ctx.log_level.clone(),
        cancel.clone(),
    ));
    tasks.spawn(ca.clone().run(cancel.clone()));
    tasks.spawn(bundle_publishers.run(
        datastore.clone(),
        config.trust_domain.clone(),
        ca.bundle_changes(),
        BUNDLE_POLL_INTERVAL,
        crate::plugins::bundlepublisher::REFRESH_INTERVAL,
        cancel.clone(),
    ));
    tasks.spawn(
        index
            .clone()
            .run(config.experimental.cache_reload_interval, cancel.clone()),
    );
    if let Some(expired_for) = config.prune_attested_nodes_expired_for {
        tasks.spawn(crate::node_prune::run(
            datastore.clone(),
            crate::node_prune::PruneNodes {
                expired_for,
                include_tofu: config.prune_tofu_nodes,
                batch_size: config.prune_attested_nodes_batch_size,
            },
            cancel.clone(),
        ));
    }
    tasks.spawn(prune_loop(
        datastore.clone(),
        config.experimental.prune_events_older_than,
        cancel.clone(),
    ));

    let bind_addr = resolve_bind_addr(&config)?;
    let endpoints_task = {
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        let endpoints_config = EndpointsConfig {
            bind_addr,
            socket_path: config.socket_path.clone(),
        };
        let metrics = metrics.clone();
        let proxy_trusted = config.proxy_protocol_trusted_cidrs.clone();
        tokio::spawn(async move {
            endpoints::serve(
                ctx,
                endpoints_config,
                metrics,
                reloader,
                proxy_trusted,
                cancel,
            )
            .await
        })
    };
    let health = HealthChecksConfig {
        listener_enabled: config.health_checks.listener_enabled,
        bind_address: config.health_checks.bind_address.clone(),
        bind_port: config.health_checks.bind_port,
        live_path: config.health_checks.live_path.clone(),
        ready_path: config.health_checks.ready_path.clone(),
    };
    let health_task = tokio::spawn(health_http::serve_health(
        health,
        health_http::server_checks(ctx, config.socket_path.clone()),
        cancel.clone(),
    ));

    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("stopping spire-server");
            Ok(())
        }
        served = endpoints_task => match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("server listeners stopped")),
            Err(e) => Err(anyhow::anyhow!("server listeners failed: {e}")),
        },
    };
    cancel.cancel();
    let _ = health_task.await;
    while tasks.join_next().await.is_some() {}
    result
}

/// Starts the notifiers' background work, sends them the bundle-loaded event (a failure
/// stops the start, as upstream's `NotifyAndAdviseBundleLoaded`), then keeps sending
/// bundle-updated events: at once when the CA manager changed the bundle, and whenever a
/// poll of the stored bundle finds it changed (bundle API, other servers on the database).
async fn start_notifiers(
    notifiers: &Notifiers,
    config: &ResolvedServerConfig,
    ca: &Arc<CaManager>,
    datastore: &Arc<dyn DataStore>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    if notifiers.is_empty() {
        return Ok(());
    }
    notifiers.spawn(tasks, cancel);
    // Subscribed before the bundle is read, so a rotation in between is not missed.
    let ca_changes = ca.bundle_changes();
    let loaded = notifiers
        .bundle_loaded(datastore.as_ref(), &config.trust_domain)
        .await
        .map_err(anyhow::Error::msg)
        .context("plugins.Notifier: the bundle-loaded event failed; fix the notifier's target (see the error) or remove the Notifier block")?;
    tasks.spawn(notifiers.clone().watch_bundle(
        datastore.clone(),
        config.trust_domain.clone(),
        ca_changes,
        loaded,
        BUNDLE_POLL_INTERVAL,
        cancel.clone(),
    ));
    Ok(())
}

/// Binds the bundle endpoint with its profile's certificate and starts serving it, plus the
/// task that keeps that certificate fresh (file watch or ACME); a bad certificate file or an
/// address in use stops the start.
async fn start_bundle_endpoint(
    endpoint: &BundleEndpoint,
    config: &ResolvedServerConfig,
    ca: &Arc<CaManager>,
    datastore: Arc<dyn DataStore>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    // Upstream's require_pq_kem policy does not cover the bundle endpoint (foreign servers
    // and browsers fetch it): the default key exchanges always.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("cannot build the bundle endpoint's TLS configuration")?
        .with_no_client_auth();
    let mut tls = match &endpoint.profile {
        BundleEndpointProfile::HttpsSpiffe => builder.with_cert_resolver(Arc::new(
            endpoints::tls::IdentityResolver::new(ca.server_identity(), provider),
        )),
        BundleEndpointProfile::HttpsWebServingCert {
            cert_file_path,
            key_file_path,
            file_sync_interval,
        } => {
            let cert = ServingCert::load(cert_file_path, key_file_path)
                .map_err(anyhow::Error::msg)
                .context(
                    "server.federation.bundle_endpoint.profile \"https_web\" serving_cert_file",
                )?;
            tasks.spawn(cert.clone().watch(*file_sync_interval, cancel.clone()));
            builder.with_cert_resolver(cert)
        }
        BundleEndpointProfile::HttpsWebAcme {
            directory_url,
            domain_name,
            email,
            tos_accepted,
            cache_dir,
        } => {
            let acme = AcmeManager::new(AcmeConfig {
                directory_url: directory_url.clone(),
                domain_name: domain_name.clone(),
                email: email.clone(),
                tos_accepted: *tos_accepted,
                cache_dir: cache_dir.clone(),
                extra_root_cas_pem: None,
            })
            .context("server.federation.bundle_endpoint acme")?;
            tasks.spawn(acme.clone().run(cancel.clone()));
            builder.with_cert_resolver(acme)
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if matches!(endpoint.profile, BundleEndpointProfile::HttpsWebAcme { .. }) {
        tls.alpn_protocols
            .push(crate::federation::acme::ACME_TLS_ALPN_PROTOCOL.to_vec());
    }
    let server = BundleEndpointServer::bind(
        &endpoint.address,
        endpoint.port,
        tls,
        datastore,
        config.trust_domain.clone(),
        endpoint.refresh_hint,
    )
    .await?;
    tracing::info!(
        addr = %server.local_addr().map_or_else(|_| format!("{}:{}", endpoint.address, endpoint.port), |a| a.to_string()),
        refresh_hint_secs = endpoint.refresh_hint.as_secs(),
        "Serving bundle endpoint"
    );
    tasks.spawn(server.serve(cancel.clone()));
    Ok(())
}

async fn open_datastore(catalog: &Catalog) -> anyhow::Result<SqlDataStore> {
    let (sql, options) = sql_settings(catalog);
    SqlDataStore::open_with_options(&sql, &options)
        .await
        .context("cannot open the datastore (plugins.DataStore \"sql\")")
}

/// The SQL datastore's settings from the catalog's `DataStore "sql"` block.
fn sql_settings(catalog: &Catalog) -> (SqlConfig, SqlOptions) {
    let ds = &catalog.datastore;
    let database_type = match ds.database_type {
        DatabaseType::Sqlite3 => "sqlite3",
        DatabaseType::Postgres => "postgres",
        DatabaseType::Mysql => "mysql",
    };
    let sql = SqlConfig {
        database_type: database_type.to_owned(),
        connection_string: ds.connection_string.clone(),
        max_open_conns: Some(ds.max_open_conns),
        disable_migration: ds.disable_migration,
    };
    let options = SqlOptions {
        ro_connection_string: ds.ro_connection_string.clone(),
        root_ca_path: ds.root_ca_path.clone(),
        client_cert_path: ds.client_cert_path.clone(),
        client_key_path: ds.client_key_path.clone(),
        max_idle_conns: Some(ds.max_idle_conns),
        conn_max_lifetime: ds.conn_max_lifetime,
        ..SqlOptions::default()
    };
    (sql, options)
}

/// The KeyManager, and its plugin process when it is external (for SIGUSR1 reconfiguration).
async fn key_manager(
    catalog: &Catalog,
    trust_domain: &spire_core::spiffe_id::TrustDomain,
    host_services: &spire_common::plugin_host::HostServices,
) -> anyhow::Result<(
    Arc<dyn KeyManager>,
    Option<Arc<spire_common::plugin_host::LoadedPlugin>>,
)> {
    use crate::plugins::keymanager::{aws_kms, external};
    let mut loaded = None;
    let plugin: Arc<dyn KeyManager> = match &catalog.key_manager {
        KeyManagerChoice::Memory => Arc::new(MemoryKeyManager::new()),
        KeyManagerChoice::Disk { keys_path } => Arc::new(
            DiskKeyManager::open(keys_path)
                .context("cannot open plugins.KeyManager \"disk\" keys_path")?,
        ),
        KeyManagerChoice::AwsKms(config) => Arc::new(
            aws_kms::AwsKmsKeyManager::open(config, trust_domain.name(), None)
                .await
                .context("cannot configure plugins.KeyManager \"aws_kms\"")?,
        ),
        KeyManagerChoice::External(plugin) => {
            let plugin = Arc::new(
                spire_common::plugin_host::LoadedPlugin::load(
                    plugin,
                    external::SERVICE,
                    trust_domain.name(),
                    host_services,
                )
                .await?,
            );
            loaded = Some(Arc::clone(&plugin));
            Arc::new(external::ExternalKeyManager::new(plugin))
        }
    };
    Ok((
        Arc::new(crate::plugins::keymanager::metered::MeteredKeyManager::new(
            plugin,
        )),
        loaded,
    ))
}

/// The configured UpstreamAuthority, and its plugin process when it is external (for
/// SIGUSR1 reconfiguration).
type UpstreamAuthoritySetup = (
    Option<Arc<dyn UpstreamAuthority>>,
    Option<Arc<spire_common::plugin_host::LoadedPlugin>>,
);

async fn upstream_authority(
    catalog: &Catalog,
    config: &ResolvedServerConfig,
    host_services: &spire_common::plugin_host::HostServices,
) -> anyhow::Result<UpstreamAuthoritySetup> {
    let Some(choice) = &catalog.upstream_authority else {
        return Ok((None, None));
    };
    if let UpstreamAuthorityChoice::External(plugin) = choice {
        let loaded = spire_common::plugin_host::LoadedPlugin::load(
            plugin,
            crate::plugins::upstreamauthority::external::SERVICE,
            config.trust_domain.name(),
            host_services,
        )
        .await
        .context("cannot set up plugins.UpstreamAuthority")?;
        let loaded = Arc::new(loaded);
        let upstream = crate::plugins::upstreamauthority::external::ExternalUpstreamAuthority::new(
            loaded.clone(),
        );
        return Ok((Some(Arc::new(upstream)), Some(loaded)));
    }
    let upstream = builtin_upstream_authority(choice, config).await?;
    Ok((Some(upstream), None))
}

async fn builtin_upstream_authority(
    choice: &UpstreamAuthorityChoice,
    config: &ResolvedServerConfig,
) -> anyhow::Result<Arc<dyn UpstreamAuthority>> {
    match choice {
        UpstreamAuthorityChoice::Disk {
            key_file_path,
            cert_file_path,
            bundle_file_path,
        } => {
            let disk = DiskUpstreamAuthority::new(
                DiskUpstreamAuthorityConfig {
                    key_file_path: key_file_path.clone(),
                    cert_file_path: cert_file_path.clone(),
                    bundle_file_path: bundle_file_path.clone(),
                    ttl: None,
                },
                config.trust_domain.clone(),
            )
            .context("cannot load plugins.UpstreamAuthority \"disk\"")?;
            Ok(Arc::new(disk))
        }
        UpstreamAuthorityChoice::Spire(spire) => {
            let spire = SpireUpstreamAuthority::new(spire.clone(), &config.trust_domain)
                .context("cannot load plugins.UpstreamAuthority \"spire\"")?;
            Ok(Arc::new(spire))
        }
        UpstreamAuthorityChoice::AwsSecret(c) => {
            let aws =
                crate::plugins::upstreamauthority::awssecret::AwsSecretUpstreamAuthority::load(
                    c,
                    &config.trust_domain,
                )
                .await
                .context("cannot load plugins.UpstreamAuthority \"awssecret\"")?;
            Ok(Arc::new(aws))
        }
        UpstreamAuthorityChoice::External(_) => {
            anyhow::bail!("an external UpstreamAuthority is not a built-in")
        }
        UpstreamAuthorityChoice::AwsPca(c) => {
            let pca = crate::plugins::upstreamauthority::aws_pca::AwsPcaUpstreamAuthority::load(c)
                .await
                .context("cannot load plugins.UpstreamAuthority \"aws_pca\"")?;
            Ok(Arc::new(pca))
        }
        UpstreamAuthorityChoice::Ejbca(c) => {
            let ejbca = crate::plugins::upstreamauthority::ejbca::EjbcaUpstreamAuthority::load(c)
                .context("cannot load plugins.UpstreamAuthority \"ejbca\"")?;
            Ok(Arc::new(ejbca))
        }
    }
}

fn ca_config(config: &ResolvedServerConfig) -> CaConfig {
    let mut ca = CaConfig::new(config.trust_domain.clone());
    ca.ca_ttl = config.ca_ttl;
    ca.ca_key_type = config.ca_key_type;
    ca.jwt_key_type = Some(config.jwt_key_type);
    ca.ca_subject = spire_core::x509::Subject {
        country: config.ca_subject.country.clone(),
        organization: config.ca_subject.organization.clone(),
        common_name: (!config.ca_subject.common_name.is_empty())
            .then(|| config.ca_subject.common_name.clone()),
        ..spire_core::x509::Subject::default()
    };
    ca.jwt_issuer = config.jwt_issuer.clone();
    ca.default_x509_svid_ttl = config.default_x509_svid_ttl;
    ca.default_jwt_svid_ttl = config.default_jwt_svid_ttl;
    ca.agent_ttl = config.agent_ttl;
    ca.disable_jwt_svids = config.disable_jwt_svids;
    ca
}

fn resolve_bind_addr(config: &ResolvedServerConfig) -> anyhow::Result<SocketAddr> {
    let host_port = config.bind_host_port();
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| {
            format!("server.bind_address {host_port:?} is not an address this host can bind")
        })
}

/// Prunes expired join tokens, expired entries and old change events, as upstream does on a
/// timer.
async fn prune_loop(
    datastore: Arc<dyn DataStore>,
    events_older_than: Duration,
    cancel: CancellationToken,
) {
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let events_cutoff = now - i64::try_from(events_older_than.as_secs()).unwrap_or(i64::MAX);
        let entries_started = std::time::Instant::now();
        let entries_pruned = datastore.prune_registration_entries(now).await;
        spire_common::telemetry::server::registration_entries_pruned(
            entries_pruned.is_ok(),
            entries_started,
        );
        let results = [
            datastore.prune_join_tokens(now).await,
            entries_pruned,
            datastore
                .prune_registration_entry_events(events_cutoff)
                .await,
            datastore.prune_attested_node_events(events_cutoff).await,
        ];
        for result in results {
            if let Err(e) = result {
                tracing::warn!(error = %e, "pruning the datastore failed");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
