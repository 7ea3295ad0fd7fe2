//! The baseline of the end-to-end benchmark: a plain rdkafka consumer that
//! reads a topic from the beginning to its current end and does nothing with
//! the messages. The selector's drain rate is compared with this one, on the
//! same broker, in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Drain a Kafka topic without processing, and print the rate"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "otel-traces-raw")]
    topic: String,
    /// Stop after this many messages (by default: the topic's message count).
    #[arg(long)]
    messages: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("drain-baseline-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the consumer")?;
    let total = match args.messages {
        Some(n) => n,
        None => topic_size(&consumer, &args.topic)?,
    };
    consumer.subscribe(&[&args.topic]).context("subscribing")?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    while n < total {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message for 30 s")??;
        first.get_or_insert_with(Instant::now);
        bytes += m.payload_len() as u64;
        n += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64()).max(1e-9);
    println!(
        "drain_baseline messages={n} bytes={bytes} seconds={secs:.3} messages_per_sec={:.0} mb_per_sec={:.1}",
        n as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}

/// Messages in the topic now: the sum over partitions of high − low watermark.
fn topic_size(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<u64> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("topic not found")?;
    let mut total = 0u64;
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of partition {p}"))?;
        total += (high - low).max(0) as u64;
    }
    Ok(total)
}
