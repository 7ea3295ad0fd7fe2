//! Why the forward stage failed: the error its parts share.

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forwarder setup: {0}")]
    Setup(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}
