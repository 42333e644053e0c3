//! Federation: the bundle endpoint server that publishes this trust domain's bundle, and the
//! refresher that fetches the bundles of the trust domains we federate with (see
//! `docs/federation.md`).

pub use spire_common::acme;
pub mod client;
pub mod endpoint;
pub mod refresher;
pub use spire_common::serving_cert;
