//! AWS plumbing both binaries use: SigV4 signing, credentials, the instance metadata service
//! and a small client of the AWS APIs the `aws_iid`, `awssecret` and `aws_pca` plugins call.

pub mod client;
pub mod credentials;
pub mod iid;
pub mod imds;
pub mod sigv4;

pub use client::{AwsClient, AwsConfig, AwsError};
pub use credentials::Credentials;
pub use imds::Imds;
