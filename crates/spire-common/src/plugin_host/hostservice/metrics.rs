//! The `Metrics` host service (`spire.hostservice.common.metrics.v1`): what a plugin emits
//! goes to our telemetry sinks, under the plugin's own key, as upstream's `metricsservice`
//! forwards it to go-metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spire_proto::spire::hostservice::common::metrics::v1::metrics_server::{
    Metrics as MetricsService, MetricsServer,
};
use spire_proto::spire::hostservice::common::metrics::v1::{
    AddSampleRequest, EmitKeyRequest, IncrCounterRequest, Label, MeasureSinceRequest,
    SetGaugeRequest,
};
use tonic::{Request, Response, Status};

use crate::telemetry::{Kind, Metrics};

/// Forwards a plugin's metrics into the process's [`Metrics`].
#[derive(Debug, Clone)]
pub struct MetricsHostService {
    metrics: Metrics,
}

impl MetricsHostService {
    /// The service over `metrics` (the process's sinks).
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }

    /// The gRPC server to offer in [`super::super::HostServices`].
    pub fn server(self) -> MetricsServer<Self> {
        MetricsServer::new(self)
    }

    fn emit(&self, kind: Kind, key: &[String], labels: &[Label], value: f64) {
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        let labels: Vec<(&str, String)> = labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.clone()))
            .collect();
        self.metrics.emit(kind, &key, &labels, value);
    }
}

type Empty = Result<Response<pbjson_types::Empty>, Status>;

fn ok() -> Empty {
    Ok(Response::new(pbjson_types::Empty {}))
}

#[tonic::async_trait]
impl MetricsService for MetricsHostService {
    async fn set_gauge(&self, request: Request<SetGaugeRequest>) -> Empty {
        let r = request.into_inner();
        self.emit(Kind::Gauge, &r.key, &r.labels, f64::from(r.val));
        ok()
    }

    /// go-metrics' `EmitKey` has no Prometheus form; we record it as a gauge.
    async fn emit_key(&self, request: Request<EmitKeyRequest>) -> Empty {
        let r = request.into_inner();
        self.emit(Kind::Gauge, &r.key, &[], f64::from(r.val));
        ok()
    }

    async fn incr_counter(&self, request: Request<IncrCounterRequest>) -> Empty {
        let r = request.into_inner();
        self.emit(Kind::Counter, &r.key, &r.labels, f64::from(r.val));
        ok()
    }

    async fn add_sample(&self, request: Request<AddSampleRequest>) -> Empty {
        let r = request.into_inner();
        self.emit(Kind::Sample, &r.key, &r.labels, f64::from(r.val));
        ok()
    }

    /// `time` is the start in Unix nanoseconds; the sample is the milliseconds since then,
    /// under the key as given (go-metrics' `MeasureSinceWithLabels`).
    async fn measure_since(&self, request: Request<MeasureSinceRequest>) -> Empty {
        let r = request.into_inner();
        let start = u64::try_from(r.time)
            .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
            .unwrap_or(UNIX_EPOCH);
        let elapsed = SystemTime::now()
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        self.emit(
            Kind::Sample,
            &r.key,
            &r.labels,
            elapsed.as_secs_f64() * 1000.0,
        );
        ok()
    }
}
