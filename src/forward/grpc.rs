//! One OTLP/gRPC exporter: `TraceService/Export` over a lazily connected
//! tonic channel (rustls, gzip when asked), and the status read into a
//! [`Verdict`] by the OTLP specification's table of retryable codes.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::error::ForwardError;
use super::retry::Verdict;
use crate::config::{Compression, ForwardConfig};

pub struct OtlpGrpc {
    client: TraceServiceClient<Channel>,
    metadata: MetadataMap,
}

impl OtlpGrpc {
    pub fn new(cfg: &ForwardConfig) -> Result<Self, ForwardError> {
        let setup =
            |e: &dyn std::fmt::Display| ForwardError::Setup(format!("{}: {e}", cfg.endpoint));
        let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| setup(&e))?
            .timeout(cfg.timeout_ms.duration())
            .connect_timeout(cfg.timeout_ms.duration());
        if cfg.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &cfg.tls_ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| setup(&e))?;
        }
        let mut client = TraceServiceClient::new(endpoint.connect_lazy());
        if cfg.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = MetadataMap::new();
        for (k, v) in &cfg.headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| ForwardError::Setup(format!("header `{k}`: {e}")))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|e| ForwardError::Setup(format!("header `{k}`: {e}")))?;
            metadata.insert(key, value);
        }
        Ok(Self { client, metadata })
    }

    /// Sends one batch: `request` is an encoded `ExportTraceServiceRequest`.
    pub async fn export(&self, request: &[u8]) -> Verdict {
        let decoded = match ExportTraceServiceRequest::decode(request) {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Reject {
                    reason: format!("undecodable batch: {e}"),
                    status: 0,
                }
            }
        };
        let mut req = tonic::Request::new(decoded);
        *req.metadata_mut() = self.metadata.clone();
        match self.client.clone().export(req).await {
            Ok(resp) => {
                let partial = resp.into_inner().partial_success;
                Verdict::Accepted {
                    rejected_spans: partial.as_ref().map_or(0, |p| p.rejected_spans),
                    message: partial.map(|p| p.error_message).unwrap_or_default(),
                }
            }
            Err(status) => classify(&status),
        }
    }
}

fn read(path: &str) -> Result<Vec<u8>, ForwardError> {
    std::fs::read(path).map_err(|e| ForwardError::Setup(format!("reading {path}: {e}")))
}

/// The OTLP specification's retryable gRPC codes; `RESOURCE_EXHAUSTED`
/// only when the server says when to come back (`RetryInfo`).
pub fn classify(status: &Status) -> Verdict {
    let retry_info: Option<Duration> = status.get_details_retry_info().and_then(|r| r.retry_delay);
    // tonic reports its own deadline as CANCELLED and a refused connection
    // as UNAVAILABLE, each with the cause as the status's source.
    let reason =
        if status.code() == Code::DeadlineExceeded || caused_by::<tonic::TimeoutExpired>(status) {
            "timeout".to_string()
        } else if caused_by::<tonic::ConnectError>(status) {
            "connect".to_string()
        } else {
            format!("grpc_{}", format!("{:?}", status.code()).to_lowercase())
        };
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_info.is_some(),
        _ => false,
    };
    if retryable {
        Verdict::Retry {
            reason,
            after: retry_info,
        }
    } else {
        Verdict::Reject {
            reason: format!("{reason}: {}", status.message()),
            status: status.code() as u16,
        }
    }
}

fn caused_by<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn codes_are_classified_as_the_specification_says() {
        let unavailable = Status::new(Code::Unavailable, "down");
        assert!(matches!(
            classify(&unavailable),
            Verdict::Retry { after: None, .. }
        ));
        let exhausted = Status::new(Code::ResourceExhausted, "slow down");
        assert!(
            matches!(classify(&exhausted), Verdict::Reject { .. }),
            "RESOURCE_EXHAUSTED without RetryInfo is not retried"
        );
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(
            classify(&with_info),
            Verdict::Retry {
                reason: "grpc_resourceexhausted".into(),
                after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(&Status::new(Code::InvalidArgument, "bad span")),
            Verdict::Reject { ref reason, .. } if reason.contains("bad span")
        ));
        assert!(matches!(
            classify(&Status::new(Code::DeadlineExceeded, "")),
            Verdict::Retry { ref reason, .. } if reason == "timeout"
        ));
    }
}
