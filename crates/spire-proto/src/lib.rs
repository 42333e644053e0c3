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
}

/// Well-known types as the generated code uses them (with proto3 JSON support).
pub use pbjson_types as wkt;
