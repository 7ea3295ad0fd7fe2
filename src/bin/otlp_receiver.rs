//! A local OTLP/HTTP trace receiver that prints every span it gets: a
//! stand-in backend for trying the forwarders (`[[forward]]`) without one.
//!
//! Accepts `POST /v1/traces` as protobuf or JSON, gzipped or not, answers
//! as the OTLP specification says (an empty `ExportTraceServiceResponse` in
//! the request's encoding), and prints one line per span:
//! `trace_id span_id service.name span name status`.

use std::io::Read;
use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Receive OTLP/HTTP traces and print one line per span"
)]
struct Args {
    /// Address to listen on; the forwarder's endpoint is http://ADDR/v1/traces.
    #[arg(long, default_value = "127.0.0.1:4318")]
    listen: SocketAddr,
    /// Largest request body accepted, in bytes, after decompression.
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = args.max_body_bytes;
    let app =
        axum::Router::new()
            .route(
                "/v1/traces",
                post(move |headers: HeaderMap, body: Bytes| async move {
                    export(&headers, &body, limit)
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(limit));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "otlp_receiver: listening on http://{}/v1/traces",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}

/// One `POST /v1/traces`: decode, print, answer in the request's encoding.
fn export(headers: &HeaderMap, body: &[u8], limit: usize) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let request = gunzip(headers, body, limit).and_then(|plain| decode(&plain, json));
    match request {
        Ok(request) => {
            print_spans(&request);
            let response = ExportTraceServiceResponse::default();
            if json {
                let body = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            } else {
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    response.encode_to_vec(),
                )
                    .into_response()
            }
        }
        Err(reason) => {
            eprintln!("otlp_receiver: rejected a request: {reason}");
            (StatusCode::BAD_REQUEST, reason).into_response()
        }
    }
}

fn gunzip(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| format!("gzip: {e}"))?;
    if plain.len() > limit {
        return Err(format!("body larger than {limit} bytes once decompressed"));
    }
    Ok(plain)
}

fn decode(body: &[u8], json: bool) -> Result<ExportTraceServiceRequest, String> {
    if json {
        serde_json::from_slice(body).map_err(|e| format!("OTLP/JSON: {e}"))
    } else {
        ExportTraceServiceRequest::decode(body).map_err(|e| format!("OTLP protobuf: {e}"))
    }
}

fn print_spans(request: &ExportTraceServiceRequest) {
    for rs in &request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map_or_else(
                || "-".to_string(),
                |v| match v {
                    any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                },
            );
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let status = match span.status.as_ref().map_or(0, |s| s.code) {
                1 => "OK",
                2 => "ERROR",
                _ => "UNSET",
            };
            println!(
                "{} {} {service} {:?} {status}",
                hex::encode(&span.trace_id),
                hex::encode(&span.span_id),
                span.name
            );
        }
    }
}
