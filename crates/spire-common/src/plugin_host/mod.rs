//! Hosting external plugins (`plugin_cmd`) the way upstream SPIRE does, so any plugin binary
//! built with spire-plugin-sdk runs under us unchanged.
//!
//! Loading follows upstream's `pkg/common/catalog`: the binary's sha256 is checked against
//! `plugin_checksum` before it runs; it is started with go-plugin's handshake environment
//! (the plugin type as magic cookie key and value, protocol version 1); its handshake line on
//! stdout names the unix socket its gRPC server listens on; SPIRE's private `Init` service
//! exchanges host and plugin service names; `Config.Configure` gives it the trust domain and its
//! `plugin_data` text. The resulting gRPC channel backs the plugin type's client in the server
//! or agent, behind the same trait as the built-ins. Dropping a [`LoadedPlugin`] kills the
//! process; [`LoadedPlugin::shutdown`] ends it gracefully first.

mod broker;
mod hclog;
pub mod hostservice;
pub mod keymanager;
mod process;

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use spire_proto::goplugin::grpc_controller_client::GrpcControllerClient;
use spire_proto::spire::service::common::config::v1::config_client::ConfigClient;
use spire_proto::spire::service::common::config::v1::{ConfigureRequest, CoreConfiguration};
use spire_proto::spire::service::private::init::v1::init_client::InitClient;
use spire_proto::spire::service::private::init::v1::{DeinitRequest, InitRequest};

pub use broker::{HOST_SERVICE_PROVIDER_ID, HostServices};
pub use process::kill_all;
use process::{PluginAddress, PluginProcess};

/// The gRPC service every configurable plugin implements.
pub const CONFIG_SERVICE: &str = "spire.service.common.config.v1.Config";

/// How long a plugin may take to print its handshake line (go-plugin's default start timeout).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Init` and `Configure` (also on SIGUSR1) may take before we give up on the plugin.
/// Upstream sets no limit, so a plugin that never answers hangs its start-up for good; we stop
/// with an error instead. 60 s (go-plugin's start timeout) leaves room for plugins that reach
/// a cloud API or a device while configuring.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Deinit` may take when the plugin is unloaded (upstream's `deinitTimeout`).
const DEINIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin has to exit after `Shutdown` before it is killed (go-plugin's client).
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub use spire_core::config::plugins::{ExternalPlugin, PluginData};

/// How long loading a plugin may take, step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTimeouts {
    /// For the handshake line on stdout.
    pub start: Duration,
    /// For each of `Init` and `Configure`.
    pub call: Duration,
}

impl Default for LoadTimeouts {
    /// [`START_TIMEOUT`] and [`CALL_TIMEOUT`].
    fn default() -> Self {
        Self {
            start: START_TIMEOUT,
            call: CALL_TIMEOUT,
        }
    }
}

/// Why an external plugin could not be loaded, naming the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to load plugin {kind} {name:?}: {reason}")]
pub struct PluginLoadError {
    /// The plugin type.
    pub kind: String,
    /// The plugin name.
    pub name: String,
    /// What went wrong, worded for the operator.
    pub reason: String,
}

impl PluginLoadError {
    fn new(plugin: &ExternalPlugin, reason: impl Into<String>) -> Self {
        Self {
            kind: plugin.kind.clone(),
            name: plugin.name.clone(),
            reason: reason.into(),
        }
    }
}

/// A running, initialized and configured external plugin.
pub struct LoadedPlugin {
    plugin: ExternalPlugin,
    channel: Channel,
    address: PluginAddress,
    services: Vec<String>,
    trust_domain: String,
    call_timeout: Duration,
    last_data: Mutex<String>,
    // Dropped before the process: the host services stop with the plugin.
    _host_server: Option<broker::HostServer>,
    process: PluginProcess,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("kind", &self.plugin.kind)
            .field("name", &self.plugin.name)
            .field("pid", &self.process.pid)
            .finish()
    }
}

impl LoadedPlugin {
    /// Checks, starts, initializes and configures `plugin`, which must implement the gRPC
    /// service `service` (e.g. `spire.plugin.server.nodeattestor.v1.NodeAttestor`).
    /// `host_services` are offered to it through go-plugin's broker, as upstream does.
    pub async fn load(
        plugin: &ExternalPlugin,
        service: &str,
        trust_domain: &str,
        host_services: &HostServices,
    ) -> Result<Self, PluginLoadError> {
        Self::load_with_timeouts(
            plugin,
            service,
            trust_domain,
            host_services,
            LoadTimeouts::default(),
        )
        .await
    }

    /// [`Self::load`] with other timeouts (tests of plugins that hang).
    pub async fn load_with_timeouts(
        plugin: &ExternalPlugin,
        service: &str,
        trust_domain: &str,
        host_services: &HostServices,
        timeouts: LoadTimeouts,
    ) -> Result<Self, PluginLoadError> {
        let fail = |reason: String| PluginLoadError::new(plugin, reason);
        let path = std::path::absolute(&plugin.cmd)
            .map_err(|e| fail(format!("cannot resolve plugin_cmd {:?}: {e}", plugin.cmd)))?;
        match &plugin.checksum {
            Some(checksum) => verify_checksum(&path, checksum).map_err(fail)?,
            None => tracing::warn!(
                plugin_type = %plugin.kind,
                plugin_name = %plugin.name,
                "Plugin checksum not configured"
            ),
        }
        let data = plugin
            .data
            .load()
            .map_err(|e| fail(format!("failed to load plugin data: {e}")))?;

        let (process, address) = process::start(plugin, &path, timeouts.start).await?;
        let channel = connect(&address)
            .await
            .map_err(|e| fail(format!("cannot connect to the plugin's gRPC server: {e}")))?;
        let mut loaded = Self {
            plugin: plugin.clone(),
            channel,
            address,
            services: Vec::new(),
            trust_domain: trust_domain.to_owned(),
            call_timeout: timeouts.call,
            last_data: Mutex::new(data.clone()),
            _host_server: None,
            process,
        };
        loaded._host_server = Some(
            broker::serve(loaded.channel.clone(), host_services, &plugin.name)
                .await
                .map_err(fail)?,
        );

        let mut client = InitClient::new(loaded.channel.clone());
        let init = client.init(InitRequest {
            host_service_names: host_services.names().to_vec(),
        });
        let services = match tokio::time::timeout(timeouts.call, init).await {
            Ok(Ok(response)) => response.into_inner().plugin_service_names,
            Ok(Err(status)) => {
                return Err(fail(
                    loaded
                        .died_or(format!("failed to initialize plugin: {}", status.message()))
                        .await,
                ));
            }
            Err(_) => {
                return Err(fail(format!(
                    "timed out after {}s waiting for the plugin to answer Init (it completed the \
                     handshake); the plugin process was killed",
                    timeouts.call.as_secs()
                )));
            }
        };
        if !services.iter().any(|s| s == service) {
            return Err(fail(format!(
                "the plugin does not implement {service}; it implements {services:?} (is it \
                 a plugin of another type or for the other of server and agent?)"
            )));
        }
        loaded.services = services;

        let configurable = loaded.services.iter().any(|s| s == CONFIG_SERVICE);
        if configurable {
            loaded.configure(&data).await.map_err(fail)?;
        } else if !data.trim().is_empty() {
            return Err(fail(
                "no supported configuration interface found, but plugin_data is set".to_owned(),
            ));
        }
        tracing::info!(
            plugin_type = %plugin.kind,
            plugin_name = %plugin.name,
            external = true,
            reconfigurable = matches!(plugin.data, PluginData::File(_)),
            "Configured plugin"
        );
        Ok(loaded)
    }

    /// The plugin's type.
    pub fn kind(&self) -> &str {
        &self.plugin.kind
    }

    /// The plugin's configured name.
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// The gRPC channel to the plugin's services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A new connection to the plugin's gRPC server, driven by the runtime this is awaited
    /// on: a thread with its own runtime (the agent's TLS signer) must not depend on the
    /// tasks of the runtime behind [`Self::channel`], which may be waiting on it.
    pub async fn connect_again(&self) -> Result<Channel, String> {
        connect(&self.address)
            .await
            .map_err(|e| match self.exit_status() {
                Some(exit) => format!("cannot connect to the plugin: plugin exited ({exit}): {e}"),
                None => format!("cannot connect to the plugin: {e}"),
            })
    }

    /// The gRPC service names the plugin reported in `Init`.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The plugin's process id (tests check that it is gone after a failure).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid
    }

    /// How the process ended, once it has (a plugin that died at run time).
    pub fn exit_status(&self) -> Option<String> {
        self.process.exit()
    }

    /// Reads `plugin_data_file` again and calls `Configure` when its content changed, as
    /// upstream does on SIGUSR1. Fixed `plugin_data` is never re-sent.
    pub async fn reconfigure(&self) -> Result<bool, String> {
        let PluginData::File(path) = &self.plugin.data else {
            return Ok(false);
        };
        let data = std::fs::read_to_string(path)
            .map_err(|e| format!("failed to load plugin data from {}: {e}", path.display()))?;
        let mut last = self.last_data.lock().await;
        if *last == data {
            tracing::info!(
                plugin_type = %self.plugin.kind,
                plugin_name = %self.plugin.name,
                "Plugin not reconfigured since the config is unchanged"
            );
            return Ok(false);
        }
        self.configure(&data).await?;
        *last = data;
        tracing::info!(
            plugin_type = %self.plugin.kind,
            plugin_name = %self.plugin.name,
            "Plugin reconfigured"
        );
        Ok(true)
    }

    async fn configure(&self, data: &str) -> Result<(), String> {
        let mut client = ConfigClient::new(self.channel.clone());
        let call = client.configure(ConfigureRequest {
            core_configuration: Some(CoreConfiguration {
                trust_domain: self.trust_domain.clone(),
            }),
            hcl_configuration: data.to_owned(),
        });
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(self
                .died_or(format!("failed to configure plugin: {}", status.message()))
                .await),
            Err(_) => Err(format!(
                "timed out after {}s waiting for the plugin to answer Configure",
                self.call_timeout.as_secs()
            )),
        }
    }

    /// The message of a failed call to the plugin, saying when its process has died and how
    /// (a broken connection is all the call itself sees), e.g.
    /// `plugin exited (exit status 3): transport error`.
    pub async fn call_failure(&self, status: &tonic::Status) -> String {
        let broken = matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
        );
        // The call may fail a moment before the exit is seen: wait a little for it then.
        let exit = if broken {
            self.process.exited_within(Duration::from_millis(500)).await
        } else {
            self.exit_status()
        };
        match exit {
            Some(exit) => format!("plugin exited ({exit}): {}", status.message()),
            None => status.message().to_owned(),
        }
    }

    /// `reason`, or that the process died (with its status) when it has: a plugin crashing
    /// in a call shows as a broken connection, which says less.
    async fn died_or(&self, reason: String) -> String {
        match self.process.exited_within(Duration::from_secs(1)).await {
            Some(status) => format!("{reason} (the plugin process exited: {status})"),
            None => reason,
        }
    }

    /// Unloads the plugin as upstream does: `Deinit`, go-plugin's `Shutdown`, a short wait for
    /// the process to exit, then a kill.
    pub async fn shutdown(self) {
        if self.process.exit().is_none() {
            let mut client = InitClient::new(self.channel.clone());
            let deinit = client.deinit(DeinitRequest {});
            match tokio::time::timeout(DEINIT_TIMEOUT, deinit).await {
                Ok(Ok(_)) => {
                    tracing::debug!(plugin_name = %self.plugin.name, "Plugin deinitialized")
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {}
                Ok(Err(status)) => tracing::error!(
                    plugin_name = %self.plugin.name,
                    error = %status.message(),
                    "Failed to deinitialize plugin"
                ),
                Err(_) => {
                    tracing::error!(plugin_name = %self.plugin.name, "Timed out deinitializing plugin")
                }
            }
            let mut controller = GrpcControllerClient::new(self.channel.clone());
            let shutdown = controller.shutdown(spire_proto::goplugin::Empty {});
            let _ = tokio::time::timeout(EXIT_GRACE, shutdown).await;
        }
        self.process.stop(EXIT_GRACE).await;
    }
}

/// Reconfigures `plugins` configured with `plugin_data_file` from their files on every SIGUSR1
/// until `cancel`, as upstream's `ReconfigureOnSignal`. Returns at once (installing no
/// handler) when none reads a file. A failed reconfiguration is logged and the plugin keeps
/// its previous configuration.
pub async fn reconfigure_on_signal(
    plugins: Vec<std::sync::Arc<LoadedPlugin>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let plugins: Vec<_> = plugins
        .into_iter()
        .filter(|p| matches!(p.plugin.data, PluginData::File(_)))
        .collect();
    if plugins.is_empty() {
        return;
    }
    let kind = tokio::signal::unix::SignalKind::user_defined1();
    let mut signals = match tokio::signal::unix::signal(kind) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGUSR1; plugins will not be reconfigured");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = signals.recv() => if received.is_none() { return },
        }
        tracing::info!("Reconfigure signal received");
        for plugin in &plugins {
            if let Err(e) = plugin.reconfigure().await {
                tracing::error!(
                    plugin_type = %plugin.kind(),
                    plugin_name = %plugin.name(),
                    error = %e,
                    "Failed to reconfigure plugin"
                );
            }
        }
    }
}

/// Compares the binary's sha256 with `plugin_checksum` before anything runs.
fn verify_checksum(path: &Path, expected: &str) -> Result<(), String> {
    let want = hex::decode(expected)
        .map_err(|_| "plugin_checksum is not a valid hex string".to_owned())?;
    if want.len() != 32 {
        return Err(format!(
            "plugin_checksum must be a sha256 of 64 hex digits; got {} digits",
            expected.len()
        ));
    }
    let binary = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read plugin_cmd {} to check its checksum: {e}",
            path.display()
        )
    })?;
    let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &binary);
    if got.as_ref() != want.as_slice() {
        return Err(format!(
            "checksums did not match: {} has sha256 {}, plugin_checksum is {expected}",
            path.display(),
            hex::encode(got.as_ref())
        ));
    }
    Ok(())
}

/// Dials the plugin's gRPC server (plaintext HTTP/2 over its socket, as go-plugin without TLS).
async fn connect(address: &PluginAddress) -> Result<Channel, tonic::transport::Error> {
    // The URI is never used for routing: the connector always dials the plugin's address.
    let endpoint = Endpoint::from_static("http://plugin").connect_timeout(Duration::from_secs(10));
    match address.clone() {
        PluginAddress::Unix(path) => {
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
        PluginAddress::Tcp(addr) => {
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let addr = addr.clone();
                    async move {
                        let stream = TcpStream::connect(addr).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_must_be_sha256_hex_and_match() {
        let dir = std::env::temp_dir().join(format!("plugin-checksum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("bin");
        std::fs::write(&file, b"abc").ok();
        let sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(verify_checksum(&file, sha_abc), Ok(()));
        let wrong = verify_checksum(&file, &"00".repeat(32)).unwrap_err();
        assert!(wrong.contains("checksums did not match"), "{wrong}");
        assert!(verify_checksum(&file, "zz").unwrap_err().contains("hex"));
        assert!(
            verify_checksum(&file, "abcd")
                .unwrap_err()
                .contains("64 hex digits")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
