//! Sends seed traces to Kafka as OTLP protobuf, keyed by trace id.
//!
//! By default: 10 traces, every 3rd with an error (4 in all), 3 spans each.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use prost::Message;
use rand::RngCore;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tail_sampling_selector::ingest::{self, client};
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

#[derive(Debug, Parser)]
#[command(version, about = "Send seed OTLP traces to the selector's Kafka topic")]
struct Args {
    #[command(flatten)]
    kafka: ingest::client::ToolArgs,
    /// Number of traces to send.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Every Nth trace (from trace 0) has an error span; 0 disables.
    #[arg(long, default_value_t = 3)]
    error_every: usize,
    /// Every Nth trace (from trace N-1) lasts longer than the latency threshold; 0 disables.
    #[arg(long, default_value_t = 0)]
    slow_every: usize,
    /// Duration of a slow trace, in milliseconds.
    #[arg(long, default_value_t = 6000)]
    slow_ms: u64,
    #[arg(long, default_value_t = 3)]
    spans_per_trace: usize,
    #[arg(long, default_value = "demo-service")]
    service_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (kafka, topic) = args.kafka.resolve()?;
    let producer: FutureProducer = client::client_config(&kafka)
        .set("message.timeout.ms", "15000")
        .create()
        .context("creating the Kafka producer")?;
    let mut rng = rand::rng();
    let mut errors = 0usize;
    for i in 0..args.count {
        let error = args.error_every > 0 && i % args.error_every == 0;
        let slow = args.slow_every > 0 && (i + 1) % args.slow_every == 0;
        let mut trace_id = [0u8; 16];
        rng.fill_bytes(&mut trace_id);
        let duration_ms = if slow {
            args.slow_ms
        } else {
            20 + (i as u64 * 37) % 180
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
        let spec = TraceSpec {
            trace_id,
            service: args.service_name.clone(),
            spans: args.spans_per_trace,
            error,
            start_unix_nano: now - duration_ms * 1_000_000,
            duration_ms,
        };
        let request = synth::request(vec![ResourceDef::new(&spec.service, synth::trace(&spec))]);
        let key = hex::encode(trace_id);
        let payload = request.encode_to_vec();
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("sending trace {i} to {topic} at {}", kafka.brokers))?;
        let (partition, offset) = (delivery.partition, delivery.offset);
        let tag = if error {
            "ERROR"
        } else if slow {
            "SLOW"
        } else {
            "OK"
        };
        errors += usize::from(error);
        println!("[{tag}] Trace {i} -> partition {partition}, offset {offset} (trace_id {key})");
    }
    println!("Done! Sent {} traces ({errors} with errors)", args.count);
    Ok(())
}
