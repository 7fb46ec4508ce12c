//! Dead letters: a message the balance service cannot process goes to `<topic>.dlq`, as it
//! was (key and payload untouched), with headers saying why, where it came from and when.
//! The source partition keeps flowing. `replay` sends dead letters back to their source
//! topic after a fix.
//!
//! Delivery guarantee: a dead letter is acknowledged (`acks=all`) before the source offset
//! is committed, and a replayed letter is acknowledged before the dead-letter offset is
//! committed: at least once, never lost.

use crate::{StreamError, base_config};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::Duration;

/// Header: a short, stable name of the error (`not_json`, `missing_field`, `key_mismatch`...).
pub const HEADER_ERROR_KIND: &str = "dlq.error.kind";
/// Header: the full reason, in words.
pub const HEADER_ERROR_REASON: &str = "dlq.error.reason";
/// Header: the topic the message came from.
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
/// Header: its partition.
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
/// Header: its offset.
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";
/// Header: when it was dead-lettered, ns since the epoch.
pub const HEADER_FAILED_AT_NS: &str = "dlq.failed_at_ns";
/// How long one dead letter or replayed message may take to be acknowledged.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long replay waits for a further dead letter before it decides it has them all.
pub const REPLAY_IDLE: Duration = Duration::from_secs(3);

/// The dead-letter topic of a topic.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// How long a dead letter may take to be acknowledged (`message.timeout.ms`): below the
/// balance service's `max.poll.interval.ms`.
pub const DEAD_LETTER_TIMEOUT_MS: u32 = 10_000;

/// A producer for dead letters and replays.
pub fn producer(bootstrap: &str) -> Result<FutureProducer, StreamError> {
    base_config(bootstrap)
        // A dead letter must survive the loss of a broker before its source is committed.
        .set("acks", "all")
        // Retries must not duplicate a dead letter.
        .set("enable.idempotence", "true")
        // A dead letter the broker does not take in this time fails the batch, well before
        // the consumer's max.poll.interval.ms (20 s) would throw it out of its group
        // (librdkafka's default is 5 minutes).
        .set("message.timeout.ms", DEAD_LETTER_TIMEOUT_MS.to_string())
        .create()
        .map_err(|error| StreamError::kafka("creating the dead-letter producer", error))
}

/// Publishes `count` messages that no balance service can process, under `key` (a hot
/// account, so that they sit among that account's events): alternately not JSON at all,
/// and a well-formed envelope of an unknown schema version.
pub async fn publish_poison(bootstrap: &str, topic: &str, key: &str, count: u32) -> Result<(), StreamError> {
    let producer = producer(bootstrap)?;
    for index in 0..count {
        let payload = if index % 2 == 0 {
            format!("poison {index}: not JSON").into_bytes()
        } else {
            format!(r#"{{"schema_version":99,"event_id":"poison-{index}","account_id":"{key}"}}"#).into_bytes()
        };
        producer
            .send(FutureRecord::to(topic).key(key).payload(&payload), SEND_TIMEOUT)
            .await
            .map_err(|(error, _)| StreamError::kafka(format!("publishing poison message {index} to {topic}"), error))?;
    }
    Ok(())
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Short stable name.
    pub kind: String,
    /// The reason in words.
    pub reason: String,
}

/// Sends `message` to the dead-letter topic of its topic and waits for the acknowledgement.
pub async fn send(producer: &FutureProducer, message: &OwnedMessage, rejection: &Rejection, failed_at_ns: i64) -> Result<(), StreamError> {
    let dlq = dlq_topic(message.topic());
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let failed_at = failed_at_ns.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_ERROR_KIND,
            value: Some(rejection.kind.as_bytes()),
        })
        .insert(Header {
            key: HEADER_ERROR_REASON,
            value: Some(rejection.reason.as_bytes()),
        })
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(message.topic().as_bytes()),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(offset.as_bytes()),
        })
        .insert(Header {
            key: HEADER_FAILED_AT_NS,
            value: Some(failed_at.as_bytes()),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, SEND_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(error, _)| StreamError::DeadLetter {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            dlq_topic: dlq.clone(),
            reason: error.to_string(),
        })
}

/// The value of the first header named `name`, as text; `None` when there is none or its
/// value is null.
///
/// Any producer may write a header key that is not UTF-8, and rdkafka 0.39 panics reading
/// one (it unwraps the conversion, `message.rs` line 284), on every path to the headers.
/// Found by fuzzing (`docs/fuzzing.md`): one such message would have panicked the balance
/// service's batch loop on every restart. So each header is read on its own, and one whose
/// key cannot be read is passed over: it is no header this code looks for. (The panic
/// message still reaches standard error once per such header.)
pub fn header(message: &impl Message, name: &str) -> Option<String> {
    let headers = message.headers()?;
    (0..headers.count())
        .find_map(|index| {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| headers.try_get(index)));
            let header = read.ok().flatten()?;
            (header.key == name).then(|| header.value.map(|value| String::from_utf8_lossy(value).into_owned()))
        })
        .flatten()
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters sent back to their source topic.
    pub moved: u64,
    /// Per reason kind, how many were moved.
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

/// Sends every dead letter of `dlq_topic` not yet replayed by `group` back to the topic
/// named in its `dlq.source.topic` header (key and payload as they were), then commits.
/// Only the letters present when the replay starts are moved: a letter that fails again
/// comes back to the dead-letter topic, and must wait for the next replay rather than loop.
/// Stops at that end, or when no letter arrives for [`REPLAY_IDLE`].
pub async fn replay(bootstrap: &str, dlq_topic: &str, group: &str) -> Result<ReplayReport, StreamError> {
    let ends = partition_ends(bootstrap, dlq_topic).await?;
    let consumer = replay_consumer(bootstrap, dlq_topic, group)?;
    let producer = producer(bootstrap)?;
    let mut report = ReplayReport::default();
    let mut first_wait = true;
    let mut remaining: std::collections::BTreeMap<i32, i64> = ends.clone();
    while !remaining.is_empty() {
        // The first message may take a group join (seconds on some brokers).
        let idle = if first_wait { REPLAY_IDLE * 5 } else { REPLAY_IDLE };
        let message = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => {
                return Err(StreamError::kafka(format!("reading {dlq_topic}"), error));
            }
            Ok(Ok(message)) => message.detach(),
        };
        first_wait = false;
        let Some(end) = ends.get(&message.partition()).copied() else {
            continue;
        };
        if message.offset() >= end {
            // Arrived after the replay started (perhaps a replayed letter that failed again).
            remaining.remove(&message.partition());
            continue;
        }
        if message.offset() + 1 >= end {
            remaining.remove(&message.partition());
        }
        let Some(source) = header(&message, HEADER_SOURCE_TOPIC) else {
            tracing::warn!(
                messaging.destination.name = dlq_topic,
                messaging.destination.partition.id = message.partition(),
                messaging.kafka.offset = message.offset(),
                "dead letter without a source topic header; left in place"
            );
            continue;
        };
        send_back(&producer, &consumer, dlq_topic, &message, &source).await?;
        report.moved += 1;
        *report
            .by_kind
            .entry(header(&message, HEADER_ERROR_KIND).unwrap_or_else(|| "unknown".into()))
            .or_insert(0) += 1;
        tracing::info!(messaging.destination.name = dlq_topic, messaging.destination.partition.id = message.partition(), messaging.kafka.offset = message.offset(), to = %source, "replayed a dead letter");
    }
    Ok(report)
}

/// The end offset of each partition of `dlq_topic` that holds anything, read when the
/// replay starts: the letters before it are the ones to move.
async fn partition_ends(bootstrap: &str, dlq_topic: &str) -> Result<std::collections::BTreeMap<i32, i64>, StreamError> {
    let partitions = crate::topic_partitions(bootstrap, dlq_topic).await?;
    let end_reader: rdkafka::consumer::BaseConsumer = base_config(bootstrap)
        .create()
        .map_err(|error| StreamError::kafka("creating a watermark reader", error))?;
    let topic = dlq_topic.to_owned();
    let mut ends: std::collections::BTreeMap<i32, i64> = tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|partition| {
                end_reader
                    .fetch_watermarks(&topic, partition, crate::lag::PROBE_TIMEOUT)
                    .map(|(_, high)| (partition, high))
                    .map_err(|error| StreamError::kafka(format!("reading the end of {topic}[{partition}]"), error))
            })
            .collect::<Result<_, _>>()
    })
    .await
    .map_err(|error| StreamError::Task {
        task: "watermark reader".into(),
        reason: error.to_string(),
    })??;
    ends.retain(|_, end| *end > 0);
    Ok(ends)
}

/// The replay group's consumer, subscribed to `dlq_topic`; it commits only by hand.
fn replay_consumer(bootstrap: &str, dlq_topic: &str, group: &str) -> Result<StreamConsumer, StreamError> {
    let consumer: StreamConsumer = base_config(bootstrap)
        .set("group.id", group)
        // Offsets are committed only after the replayed message is acknowledged.
        .set("enable.auto.commit", "false")
        // A replay group that never ran starts from the first dead letter.
        .set("auto.offset.reset", "earliest")
        // The mock cluster waits the whole fetch.wait.max.ms on an empty fetch.
        .set("fetch.wait.max.ms", "50")
        // A group that ran before is re-joined after about this long on some brokers (the
        // mock cluster waits session.timeout.ms minus one second): keep it short.
        .set("session.timeout.ms", "6000")
        .create()
        .map_err(|error| StreamError::kafka("creating the replay consumer", error))?;
    consumer
        .subscribe(&[dlq_topic])
        .map_err(|error| StreamError::kafka(format!("subscribing to {dlq_topic}"), error))?;
    Ok(consumer)
}

/// Sends one dead letter back to its `source` topic (key and payload as they were), and
/// once it is acknowledged commits the offset after it.
async fn send_back(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    dlq_topic: &str,
    message: &OwnedMessage,
    source: &str,
) -> Result<(), StreamError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(source);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    producer.send(record, SEND_TIMEOUT).await.map_err(|(error, _)| {
        StreamError::kafka(
            format!("replaying {dlq_topic}[{}]@{} to {source}", message.partition(), message.offset()),
            error,
        )
    })?;
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(dlq_topic, message.partition(), Offset::Offset(message.offset() + 1))
        .map_err(|error| StreamError::kafka("building the offset list", error))?;
    consumer
        .commit(&offsets, CommitMode::Sync)
        .map_err(|error| StreamError::kafka(format!("committing {dlq_topic}[{}]", message.partition()), error))
}
