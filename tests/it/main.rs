//! The integration tests, in one binary: each module tests one concern
//! against real services (the local Kafka-API broker, Redis, SeaweedFS,
//! PostgreSQL, pyiceberg, DuckDB, Chromium, the OpenTelemetry SDK), through the one shared [`harness`].
//! Nothing skips: a missing service fails the test.

mod harness;

mod compact;
mod deploy;
mod durability;
mod faults;
mod force_rules;
mod forward;
mod jaeger;
mod lookup;
mod maintenance;
mod memory;
mod object_store;
mod pipeline;
mod policies;
mod recovery;
mod secured;
mod stream_time;
mod ui;
