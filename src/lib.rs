//! tail-sampling-selector: reads OTLP traces from Kafka, keeps the traces worth
//! keeping, and stores them in an Apache Iceberg table served over SQL.
//!
//! Data flow, one module per stage: [`ingest`] → [`buffer`] → [`sampling`] →
//! [`storage`], with [`query`], [`api`], [`config`] and [`metrics`] beside them.
//! [`app`] wires the stages together.

pub mod api;
pub mod app;
pub mod buffer;
pub mod config;
pub mod health;
pub mod ingest;
pub mod loadgen;
pub mod metrics;
pub mod query;
pub mod rules;
pub mod sampling;
pub mod state;
pub mod storage;
pub mod synth;
