//! OTLP on the wire: a zero-copy protobuf reader, the decoding of one Kafka
//! message into span records, and how OTLP values are formatted as strings.
//!
//! Part of the shared core: the consumer decodes with it, the storage writer
//! reads kept spans with it and force rules format attribute values with it.

pub mod decode;
pub mod encode;
pub mod fields;
pub mod format;
pub mod wire;
