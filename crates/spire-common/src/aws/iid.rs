//! The `aws_iid` attestation data, as upstream's agent sends it and its server reads it.

use serde::{Deserialize, Serialize};

/// The node attestor's name in configs, attestation data and selectors.
pub const PLUGIN_NAME: &str = "aws_iid";

/// The attestation payload: the instance identity document and its signatures, exactly as
/// IMDS served them (JSON field names are upstream's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IidAttestationData {
    /// `dynamic/instance-identity/document`.
    #[serde(default)]
    pub document: String,
    /// `dynamic/instance-identity/signature`: base64 RSA-SHA256 signature (legacy).
    #[serde(default)]
    pub signature: String,
    /// `dynamic/instance-identity/rsa2048`: base64 PKCS#7 signed data.
    #[serde(default, rename = "rsa2048")]
    pub signature_rsa2048: String,
}

/// The document fields the server reads (names as AWS writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentityDocument {
    /// `i-...`.
    #[serde(default)]
    pub instance_id: String,
    /// The 12-digit account.
    #[serde(default)]
    pub account_id: String,
    /// e.g. `us-east-1`.
    #[serde(default)]
    pub region: String,
    /// e.g. `us-east-1a`.
    #[serde(default)]
    pub availability_zone: String,
    /// `ami-...`.
    #[serde(default)]
    pub image_id: String,
    /// When the instance was launched (RFC 3339), informational.
    #[serde(default)]
    pub pending_time: String,
}
