//! Process plumbing that `spire-server` and `spire-agent` share and that does I/O, so it does
//! not belong in `spire-core`: log set-up and the run-time log level, the command-line
//! toolkit (Go-style flags, errors, `-output json`), private files and folders, the unix
//! sockets the gRPC APIs listen on, and one-shot HTTP GETs. The ACME client and the serving
//! certificate from files are shared with `oidc-discovery-provider` too.

pub mod acme;
pub mod aws;
pub mod cli;
pub mod cloud_http;
pub mod disk_keys;
pub mod fs;
pub mod grpc_status;
pub mod health;
pub mod http_get;
pub mod k8s;
pub mod logging;
pub mod plugin_host;
pub mod reload;
pub mod serving_cert;
pub mod socket;
pub mod telemetry;
pub mod tls;
