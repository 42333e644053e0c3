//! Request decoding on every socket: the Workload API, Envoy SDS, the agent's Delegated
//! Identity API and the server's entry and agent APIs. Any bytes decode to an error or a
//! message, and what decodes goes through the same validation the handlers run (entry
//! conversion, selectors, SPIFFE IDs, JWT-SVID parsing) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use spire_proto::sds::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use spire_proto::spire::api::agent::delegatedidentity::v1 as delegated;
use spire_proto::spire::api::server::{agent::v1 as agent, entry::v1 as entry};
use spire_proto::workload;
use spire_server::api::convert;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let Ok(td) = spire_core::TrustDomain::new("example.org") else { return };
    match selector % 12 {
        0 => drop(workload::X509svidRequest::decode(bytes)),
        1 => drop(workload::X509BundlesRequest::decode(bytes)),
        2 => {
            if let Ok(request) = workload::JwtsvidRequest::decode(bytes) {
                let _ = spire_core::SpiffeId::parse(&request.spiffe_id);
            }
        }
        3 => drop(workload::JwtBundlesRequest::decode(bytes)),
        4 => {
            if let Ok(request) = workload::ValidateJwtsvidRequest::decode(bytes) {
                let _ = spire_core::jwt::parse_jwt_svid_insecure(&request.svid);
            }
        }
        5 => {
            if let Ok(request) = DiscoveryRequest::decode(bytes) {
                for name in &request.resource_names {
                    let _ = spire_core::SpiffeId::parse(name);
                    let _ = spire_core::TrustDomain::new(name);
                }
            }
        }
        6 => drop(DeltaDiscoveryRequest::decode(bytes)),
        7 => {
            if let Ok(request) = delegated::SubscribeToX509sviDsRequest::decode(bytes) {
                let _ = convert::selectors_from_proto(&request.selectors);
            }
        }
        8 => {
            if let Ok(request) = delegated::FetchJwtsviDsRequest::decode(bytes) {
                let _ = convert::selectors_from_proto(&request.selectors);
            }
        }
        9 => {
            if let Ok(request) = entry::BatchCreateEntryRequest::decode(bytes) {
                for entry in &request.entries {
                    if let Ok(converted) = convert::entry_from_proto(&td, entry, None) {
                        let _ = convert::entry_to_proto(&converted);
                    }
                }
            }
        }
        10 => {
            if let Ok(request) = entry::BatchUpdateEntryRequest::decode(bytes) {
                for entry in &request.entries {
                    let _ = convert::entry_from_proto(&td, entry, request.input_mask.as_ref());
                }
            }
        }
        _ => {
            if let Ok(request) = agent::AttestAgentRequest::decode(bytes) {
                drop(request);
            }
        }
    }
});
