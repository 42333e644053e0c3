//! SPIFFE building blocks shared by `spire-server` and `spire-agent`, with no I/O: SPIFFE IDs
//! and trust domains, selectors, private keys, X509-SVIDs and CAs, JWT-SVIDs, SPIFFE bundles,
//! Go-style durations, HCL/JSON configuration loading and Go-style CLI flags.
//!
//! Everything here is pure: callers read files and sockets, this crate parses, builds and
//! verifies. Each module has one error enum describing what was wrong with the input.

#![forbid(unsafe_code)]

pub mod agent_path_template;
pub mod aws_iid;
pub mod azure_imds;
pub mod bundle;
pub mod config;
pub mod duration;
pub mod goflags;
pub mod jws;
pub mod jwt;
pub mod keys;
pub mod pem;
pub mod selector;
pub mod spiffe_id;
pub mod sshpop;
pub mod x509;
pub mod x509pop;

pub use keys::{KeyType, PrivateKey};
pub use selector::{Selector, SelectorSet};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
