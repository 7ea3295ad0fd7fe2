//! One OTLP/HTTP exporter: `POST {endpoint}` with the batch as protobuf or
//! OTLP/JSON, gzipped when asked, and the response read into a
//! [`Verdict`].

use std::io::Write;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use reqwest_catalog as reqwest;

use super::error::ForwardError;
use super::retry::{is_retryable_status, parse_retry_after, Verdict};
use crate::config::{Compression, ForwardConfig, OtlpProtocol};

pub struct OtlpHttp {
    http: reqwest::Client,
    endpoint: String,
    protocol: OtlpProtocol,
    compression: Compression,
}

impl OtlpHttp {
    pub fn new(cfg: &ForwardConfig) -> Result<Self, ForwardError> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ForwardError::Setup(format!("header `{k}`: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| ForwardError::Setup(format!("header `{k}`: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                "tail-sampling-selector/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(cfg.timeout_ms.duration())
            .connect_timeout(cfg.timeout_ms.duration());
        if let Some(ca) = &cfg.tls_ca_file {
            let pem = read(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ForwardError::Setup(format!("tls_ca_file {ca}: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
            let mut pem = read(cert)?;
            pem.extend(read(key)?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ForwardError::Setup(format!("tls_cert_file {cert}: {e}")))?;
            builder = builder.identity(id);
        }
        let http = builder
            .build()
            .map_err(|e| ForwardError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            endpoint: cfg.endpoint.clone(),
            protocol: cfg.protocol,
            compression: cfg.compression,
        })
    }

    /// Sends one batch: `request` is an encoded `ExportTraceServiceRequest`.
    pub async fn export(&self, request: &[u8]) -> Verdict {
        let (body, content_type) = match self.body(request) {
            Ok(b) => b,
            Err(reason) => return Verdict::Reject { reason, status: 0 },
        };
        let mut req = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, content_type);
        let body = match self.compression {
            Compression::None => body,
            Compression::Gzip => {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                gzip(&body)
            }
        };
        let response = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Retry {
                    reason: transport_reason(&e).to_string(),
                    after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let bytes = response.bytes().await.unwrap_or_default();
        classify(status, retry_after, &bytes, json)
    }

    fn body(&self, request: &[u8]) -> Result<(Vec<u8>, &'static str), String> {
        match self.protocol {
            OtlpProtocol::HttpProtobuf | OtlpProtocol::Grpc => {
                Ok((request.to_vec(), "application/x-protobuf"))
            }
            OtlpProtocol::HttpJson => {
                let decoded = ExportTraceServiceRequest::decode(request)
                    .map_err(|e| format!("undecodable batch: {e}"))?;
                let json = serde_json::to_vec(&decoded).map_err(|e| e.to_string())?;
                Ok((json, "application/json"))
            }
        }
    }
}

fn read(path: &str) -> Result<Vec<u8>, ForwardError> {
    std::fs::read(path).map_err(|e| ForwardError::Setup(format!("reading {path}: {e}")))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// The `reason` label of a request that got no answer.
fn transport_reason(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

/// What an HTTP answer means, by the OTLP specification.
pub fn classify(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
    json: bool,
) -> Verdict {
    if (200..300).contains(&status) {
        let (rejected_spans, message) = if json {
            json_partial_success(body)
        } else {
            ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or((0, String::new()), |p| (p.rejected_spans, p.error_message))
        };
        return Verdict::Accepted {
            rejected_spans,
            message,
        };
    }
    let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if is_retryable_status(status) {
        return Verdict::Retry {
            reason: format!("http_{status}"),
            after: retry_after,
        };
    }
    Verdict::Reject {
        reason: format!("http_{status}: {}", detail.trim()),
        status,
    }
}

/// `partialSuccess` of an OTLP/JSON answer; int64 fields may come as
/// strings or numbers (the protobuf JSON mapping allows both).
fn json_partial_success(body: &[u8]) -> (i64, String) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, String::new());
    };
    let partial = &doc["partialSuccess"];
    let rejected = match &partial["rejectedSpans"] {
        serde_json::Value::Number(n) => n.as_i64().unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    };
    let message = partial["errorMessage"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (rejected, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
    use std::time::Duration;

    #[test]
    fn answers_are_classified_as_the_specification_says() {
        assert_eq!(
            classify(200, None, b"", false),
            Verdict::Accepted {
                rejected_spans: 0,
                message: String::new()
            }
        );
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(
            classify(200, None, &partial.encode_to_vec(), false),
            Verdict::Accepted {
                rejected_spans: 3,
                message: "too old".into()
            }
        );
        for json in [
            &br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x"}}"#[..],
            br#"{"partialSuccess":{"rejectedSpans":2}}"#,
        ] {
            assert!(matches!(
                classify(200, None, json, true),
                Verdict::Accepted {
                    rejected_spans: 2,
                    ..
                }
            ));
        }
        assert_eq!(
            classify(429, Some(Duration::from_secs(3)), b"", false),
            Verdict::Retry {
                reason: "http_429".into(),
                after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            classify(503, None, b"", false),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(400, None, b"bad span", false),
            Verdict::Reject { status: 400, ref reason } if reason.contains("bad span")
        ));
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"hello hello hello hello".repeat(20);
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gzip(&body).as_slice()),
            &mut out,
        )
        .expect("gunzip");
        assert_eq!(out, body);
    }
}
