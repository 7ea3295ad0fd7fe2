//! Why the forward stage failed: the error its parts share.

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forwarder setup: {0}")]
    Setup(String),
    #[error("kafka: {0}")]
    Kafka(rdkafka::error::KafkaError),
}

impl From<rdkafka::error::KafkaError> for ForwardError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        ForwardError::Kafka(e)
    }
}
