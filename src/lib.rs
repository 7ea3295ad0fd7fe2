//! tail-sampling-selector: reads OTLP traces from Kafka, keeps the traces worth
//! keeping, and stores them in an Apache Iceberg table served over SQL.
//!
//! The stages, in data-flow order: [`ingest`] reads Kafka, [`decide`] groups
//! spans into traces and decides them (with force rules from [`rules`]),
//! [`storage`] writes the kept ones to the table, [`query`] serves SQL
//! over it, and [`maintenance`] keeps the table fast as it ages. Stages import only the shared core — [`model`], [`ack`],
//! [`otlp`], [`matching`], [`table`], [`redis_client`], [`config`],
//! [`metrics`] and [`health`] — never each other. [`api`] and [`app`] sit on top: the HTTP
//! surface and the start-up path that wires the stages together.

// The shared core.
pub mod ack;
pub mod config;
pub mod handoff;
pub mod health;
pub mod kafka_client;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod recovery;
pub mod redis_client;
pub mod supervise;
pub mod table;

// The stages.
pub mod decide;
pub mod forward;
pub mod ingest;
pub mod maintenance;
pub mod publish;
pub mod query;
pub mod reread;
pub mod rules;
pub mod storage;

// On top: the HTTP surface and the start-up path.
pub mod api;
pub mod app;

/// Test traffic: synthetic traces and the load generator's scenarios. Not
/// part of the service; the tools and the tests enable it.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

/// Who may import whom, and that no import goes round in a circle, checked
/// on the source.
#[cfg(test)]
mod layering;
