//! gRPC messages, client stubs and server stubs for every API SPIRE speaks: the server APIs
//! (`spire.api.server.*`), the agent APIs (`spire.api.agent.*`, `spire.agent.debug.v1`), the
//! shared types (`spire.api.types`), the SPIFFE Workload API, `grpc.health.v1` and Envoy SDS v3.
//!
//! The `.proto` files live in the workspace's `proto/` folder and are wire-identical to
//! upstream's (a test compares them). `proto/spire_rs/` holds services of our own
//! (`spire_rs.*`, e.g. the server's sync hints to agents), never changes to upstream's. Messages also implement serde with the proto3 JSON
//! mapping (camelCase names, enums as strings, int64 as strings), which is what upstream's
//! `-output json` prints.
//!
//! Nothing here has behaviour: it is generated code plus re-exports.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "generated code"
)]

/// The encoded `FileDescriptorSet` of every file in `proto/`, for reflection and tests.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

macro_rules! include_package {
    ($name:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $name, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $name, ".serde.rs"));
    };
}

/// `spire.api.*`: upstream's spire-api-sdk.
pub mod spire {
    /// The server and agent APIs and their shared types.
    pub mod api {
        /// `spire.api.types`: messages shared by every SPIRE API.
        pub mod types {
            include_package!("spire.api.types");
        }
        /// Server APIs, served by `spire-server`.
        pub mod server {
            /// `spire.api.server.agent.v1`.
            pub mod agent {
                pub mod v1 {
                    include_package!("spire.api.server.agent.v1");
                }
            }
            /// `spire.api.server.bundle.v1`.
            pub mod bundle {
                pub mod v1 {
                    include_package!("spire.api.server.bundle.v1");
                }
            }
            /// `spire.api.server.debug.v1`.
            pub mod debug {
                pub mod v1 {
                    include_package!("spire.api.server.debug.v1");
                }
            }
            /// `spire.api.server.entry.v1`.
            pub mod entry {
                pub mod v1 {
                    include_package!("spire.api.server.entry.v1");
                }
            }
            /// `spire.api.server.localauthority.v1`.
            pub mod localauthority {
                pub mod v1 {
                    include_package!("spire.api.server.localauthority.v1");
                }
            }
            /// `spire.api.server.logger.v1`.
            pub mod logger {
                pub mod v1 {
                    include_package!("spire.api.server.logger.v1");
                }
            }
            /// `spire.api.server.svid.v1`.
            pub mod svid {
                pub mod v1 {
                    include_package!("spire.api.server.svid.v1");
                }
            }
            /// `spire.api.server.trustdomain.v1`.
            pub mod trustdomain {
                pub mod v1 {
                    include_package!("spire.api.server.trustdomain.v1");
                }
            }
        }
        /// Agent admin APIs, served by `spire-agent` on its admin socket.
        pub mod agent {
            /// `spire.api.agent.delegatedidentity.v1`.
            pub mod delegatedidentity {
                pub mod v1 {
                    include_package!("spire.api.agent.delegatedidentity.v1");
                }
            }
            /// `spire.api.agent.logger.v1`.
            pub mod logger {
                pub mod v1 {
                    include_package!("spire.api.agent.logger.v1");
                }
            }
        }
    }
    /// `spire.plugin.*`: the plugin interfaces of spire-plugin-sdk v1.4.4, which external
    /// plugins (`plugin_cmd`) implement.
    pub mod plugin {
        /// `spire.plugin.types`: messages shared by the plugin interfaces.
        pub mod types {
            include_package!("spire.plugin.types");
        }
        /// Server plugin interfaces.
        pub mod server {
            /// `spire.plugin.server.bundlepublisher.v1`.
            pub mod bundlepublisher {
                pub mod v1 {
                    include_package!("spire.plugin.server.bundlepublisher.v1");
                }
            }
            /// `spire.plugin.server.credentialcomposer.v1`.
            pub mod credentialcomposer {
                pub mod v1 {
                    include_package!("spire.plugin.server.credentialcomposer.v1");
                }
            }
            /// `spire.plugin.server.keymanager.v1`.
            pub mod keymanager {
                pub mod v1 {
                    include_package!("spire.plugin.server.keymanager.v1");
                }
            }
            /// `spire.plugin.server.nodeattestor.v1`.
            pub mod nodeattestor {
                pub mod v1 {
                    include_package!("spire.plugin.server.nodeattestor.v1");
                }
            }
            /// `spire.plugin.server.noderesolver.v1`.
            pub mod noderesolver {
                pub mod v1 {
                    include_package!("spire.plugin.server.noderesolver.v1");
                }
            }
            /// `spire.plugin.server.notifier.v1`.
            pub mod notifier {
                pub mod v1 {
                    include_package!("spire.plugin.server.notifier.v1");
                }
            }
            /// `spire.plugin.server.upstreamauthority.v1`.
            pub mod upstreamauthority {
                pub mod v1 {
                    include_package!("spire.plugin.server.upstreamauthority.v1");
                }
            }
        }
        /// Agent plugin interfaces.
        pub mod agent {
            /// `spire.plugin.agent.keymanager.v1`.
            pub mod keymanager {
                pub mod v1 {
                    include_package!("spire.plugin.agent.keymanager.v1");
                }
            }
            /// `spire.plugin.agent.nodeattestor.v1`.
            pub mod nodeattestor {
                pub mod v1 {
                    include_package!("spire.plugin.agent.nodeattestor.v1");
                }
            }
            /// `spire.plugin.agent.svidstore.v1`.
            pub mod svidstore {
                pub mod v1 {
                    include_package!("spire.plugin.agent.svidstore.v1");
                }
            }
            /// `spire.plugin.agent.workloadattestor.v1`.
            pub mod workloadattestor {
                pub mod v1 {
                    include_package!("spire.plugin.agent.workloadattestor.v1");
                }
            }
        }
    }
    /// `spire.service.*`: services every plugin may implement (`Config`) and the SDK's
    /// internal `Init` handshake.
    pub mod service {
        /// Services common to server and agent plugins.
        pub mod common {
            /// `spire.service.common.config.v1`: `Configure`.
            pub mod config {
                pub mod v1 {
                    include_package!("spire.service.common.config.v1");
                }
            }
        }
        /// Services internal to the plugin framework.
        pub mod private {
            /// `spire.service.private.init.v1`: `Init`/`Deinit`.
            pub mod init {
                pub mod v1 {
                    include_package!("spire.service.private.init.v1");
                }
            }
        }
    }
    /// `spire.hostservice.*`: services SPIRE offers to external plugins.
    pub mod hostservice {
        /// Host services of both server and agent.
        pub mod common {
            /// `spire.hostservice.common.metrics.v1`.
            pub mod metrics {
                pub mod v1 {
                    include_package!("spire.hostservice.common.metrics.v1");
                }
            }
        }
        /// Host services of the server.
        pub mod server {
            /// `spire.hostservice.server.agentstore.v1`.
            pub mod agentstore {
                pub mod v1 {
                    include_package!("spire.hostservice.server.agentstore.v1");
                }
            }
            /// `spire.hostservice.server.identityprovider.v1`.
            pub mod identityprovider {
                pub mod v1 {
                    include_package!("spire.hostservice.server.identityprovider.v1");
                }
            }
        }
    }
    /// `spire.agent.debug.v1`: upstream names this package without `api`.
    pub mod agent {
        pub mod debug {
            pub mod v1 {
                include_package!("spire.agent.debug.v1");
            }
        }
    }
}

/// `spire_rs.*`: services of this implementation that upstream SPIRE does not have.
pub mod spire_rs {
    /// Services of the admin sockets.
    pub mod admin {
        /// `spire_rs.admin.config.v1`: live configuration reload (`config reload`).
        pub mod config {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/spire_rs.admin.config.v1.rs"));
            }
        }
    }
    /// Services agents call, and the agent's own admin services.
    pub mod agent {
        /// `spire_rs.agent.explain.v1`: why a process gets no identity (`api explain`).
        pub mod explain {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/spire_rs.agent.explain.v1.rs"));
            }
        }
        /// `spire_rs.agent.notify.v1`: the server's sync hints to connected agents.
        pub mod notify {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/spire_rs.agent.notify.v1.rs"));
            }
        }
    }
}

/// `plugin`: hashicorp go-plugin's own services (`GRPCBroker`, `GRPCController`), which
/// every external plugin serves next to its SPIRE services.
pub mod goplugin {
    include!(concat!(env!("OUT_DIR"), "/plugin.rs"));
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`; upstream's file has no package).
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// `grpc.health.v1`, served with tonic-health.
pub use tonic_health as health;

/// Envoy's Secret Discovery Service v3 and the resources it carries.
pub mod sds {
    pub use envoy_types::pb::envoy::config::core::v3 as core;
    pub use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;
    pub use envoy_types::pb::envoy::service::secret::v3 as secret;
    /// Envoy's common types (`SemanticVersion` of a node's build version).
    pub use envoy_types::pb::envoy::r#type::v3 as types;
    /// The well-known types as the Envoy messages use them (`Any`, `Struct`).
    pub use envoy_types::pb::google::protobuf;
    /// `google.rpc.Status`, the `error_detail` of a NACK.
    pub use envoy_types::pb::google::rpc;
}

/// Well-known types as the generated code uses them (with proto3 JSON support).
pub use pbjson_types as wkt;
