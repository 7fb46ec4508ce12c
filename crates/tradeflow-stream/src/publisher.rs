//! The trade publisher: the system of record's side of the stream.
//!
//! Delivery guarantee: `acks=all` and idempotence on, so an acknowledged event is on every
//! in-sync replica and retries neither duplicate nor reorder it within its partition.
//! Every delivery report is recorded, so the checker can tell "acknowledged and lost"
//! from "never acknowledged".

use crate::{HEADER_INTENDED_AT_NS, StreamError, base_config};
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tradeflow_check::{LatencyRecorder, LatencySummary};
use tradeflow_domain::{Event, encode};
use tradeflow_store::now_ns;

/// How long the publisher waits for outstanding deliveries at the end.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a message may wait for delivery (retries included) before it is reported
/// failed.
pub const MESSAGE_TIMEOUT_MS: u32 = 30_000;
/// Pause when the producer's local queue is full (backpressure).
pub const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// The producer's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// How long to wait to fill a batch before sending it.
    pub linger_ms: u32,
    /// Most messages in one batch.
    pub batch_max: u32,
    /// `enable.idempotence`. Only experiments turn it off, to show what it prevents.
    pub idempotence: bool,
    /// `max.in.flight.requests.per.connection`: produce requests sent before the first is
    /// answered (at most 5 with idempotence).
    pub in_flight_max: u32,
    /// `acks`: all in-sync replicas (the pipeline's), or the leader alone (experiments, to
    /// show what a leader's death then loses). Idempotence needs `all`.
    pub acks: Acks,
    /// How each message's key is chosen.
    pub key: MessageKey,
    /// `queue.buffering.max.kbytes`: the most data the producer holds before the broker has
    /// it (a send past it waits); `None`: librdkafka's default, 1 GiB.
    pub buffer_kbytes: Option<u32>,
    /// Whether the producer's queued bytes are sampled (librdkafka's statistics every
    /// [`QUEUE_STATS_INTERVAL_MS`]) for [`Deliveries::queued_peak_bytes`].
    pub queue_stats: bool,
}

/// How often the producer's statistics are read when its queue is measured.
pub const QUEUE_STATS_INTERVAL_MS: u32 = 100;

/// How the publisher keys an event's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageKey {
    /// The account: one account's events on one partition, in order (the pipeline's).
    #[default]
    Account,
    /// What the learner's chapter 02 exercise returns.
    Exercise,
}

impl MessageKey {
    /// The key of `event`'s message.
    fn of(self, event: &Event) -> std::borrow::Cow<'_, str> {
        match self {
            MessageKey::Account => std::borrow::Cow::Borrowed(event.account_id.as_str()),
            MessageKey::Exercise => std::borrow::Cow::Owned(tradeflow_exercises::message_key::message_key(event)),
        }
    }
}

/// Which replicas must have a write before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// `acks=all`: every in-sync replica, at least `min.insync.replicas` of them.
    #[default]
    All,
    /// `acks=1`: the leader alone; what its followers had not copied dies with it.
    Leader,
}

impl From<tradeflow_exercises::Acks> for Acks {
    /// The `acks` a chapter's exercise chose.
    fn from(acks: tradeflow_exercises::Acks) -> Acks {
        match acks {
            tradeflow_exercises::Acks::All => Acks::All,
            tradeflow_exercises::Acks::Leader => Acks::Leader,
        }
    }
}

impl Acks {
    /// The value of librdkafka's `acks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
        }
    }
}

impl Default for PublisherConfig {
    /// The pipeline's defaults: 5 ms linger (librdkafka's own), 10,000 messages a batch,
    /// idempotence on and 5 requests in flight (librdkafka's defaults are idempotence off
    /// and 1,000,000 requests in flight).
    fn default() -> Self {
        PublisherConfig {
            linger_ms: 5,
            batch_max: 10_000,
            idempotence: true,
            in_flight_max: 5,
            acks: Acks::All,
            key: MessageKey::Account,
            buffer_kbytes: None,
            queue_stats: false,
        }
    }
}

/// Where one published event ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Acknowledged at this partition and offset.
    Acked {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Not acknowledged, with the reason.
    Failed {
        /// What the producer said.
        reason: String,
    },
}

/// The delivery reports of a run, indexed like the events: a byte an event for what became
/// of it, and four for where its main-topic copy sits, so that a run of millions of events
/// keeps them in a few megabytes.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Per event: [`PENDING`], [`ACKED`] or [`FAILED`].
    states: Box<[AtomicU8]>,
    /// Per partition of the main topic, the event acknowledged at each offset, so that the
    /// lag sampler can age the oldest unapplied event without scanning every report.
    by_offset: Mutex<HashMap<i32, OffsetIndex>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// How many failed deliveries gave each reason.
    failure_reasons: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Messages handed to the producer, and their bytes (key, payload and headers).
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    /// The most bytes the producer held queued (not yet acknowledged) at one statistics
    /// sample, where its queue is measured.
    queued_peak: AtomicU64,
    /// From each event's intended time to its acknowledgement, measured from the same
    /// point as the balance service's apply latency: about the share of an event's latency
    /// spent before a consumer could read it (with `acks=all` a broker makes a write
    /// readable when it has it on every in-sync replica, which is when it acknowledges it).
    acked_latency: Mutex<LatencyRecorder>,
}

/// What the producer carries with each message to its delivery report.
#[derive(Debug)]
pub struct Sent {
    /// The event's index in the workload.
    index: usize,
    /// When the event was due to be published, in ns since the Unix epoch.
    intended_at_ns: i64,
}

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const FAILED: u8 = 2;

/// One partition's offsets from `first` on, each with its event's index ([`NO_EVENT`] where
/// no event of the run sits: a failed send's gap, a transaction marker). What lies below
/// the group's committed offset is forgotten as the lag sampler passes it (nothing asks
/// for it again), so the index holds the backlog, not the run.
#[derive(Debug)]
struct OffsetIndex {
    /// The offset of the first entry held.
    first: i64,
    events: std::collections::VecDeque<u32>,
    /// Offsets below this were forgotten.
    forgotten: i64,
}

impl Default for OffsetIndex {
    fn default() -> OffsetIndex {
        OffsetIndex {
            first: 0,
            events: std::collections::VecDeque::new(),
            forgotten: i64::MIN,
        }
    }
}

const NO_EVENT: u32 = u32::MAX;

impl OffsetIndex {
    fn insert(&mut self, offset: i64, index: usize) {
        if offset < self.forgotten {
            return;
        }
        if self.events.is_empty() {
            self.first = offset;
        } else if offset < self.first {
            // Acknowledged out of order, below the first held.
            for _ in offset..self.first {
                self.events.push_front(NO_EVENT);
            }
            self.first = offset;
        }
        let at = usize::try_from(offset - self.first).unwrap_or(0);
        if at >= self.events.len() {
            self.events.resize(at + 1, NO_EVENT);
        }
        self.events[at] = u32::try_from(index).unwrap_or(NO_EVENT);
    }

    fn get(&self, offset: i64) -> Option<usize> {
        let at = usize::try_from(offset.checked_sub(self.first)?).ok()?;
        self.events.get(at).filter(|index| **index != NO_EVENT).map(|index| *index as usize)
    }

    /// Events held at `offset` or after.
    fn events_from(&self, offset: i64) -> u64 {
        let skip = usize::try_from(offset.saturating_sub(self.first)).unwrap_or(0);
        self.events.iter().skip(skip).filter(|index| **index != NO_EVENT).count() as u64
    }

    /// Forgets the offsets below `offset`.
    fn forget_below(&mut self, offset: i64) {
        self.forgotten = self.forgotten.max(offset);
        let drop = usize::try_from(offset.saturating_sub(self.first))
            .unwrap_or(0)
            .min(self.events.len());
        self.events.drain(..drop);
        self.first += drop as i64;
    }
}

impl Deliveries {
    /// Room for `events` reports.
    pub fn new(events: usize) -> Deliveries {
        Deliveries {
            states: (0..events).map(|_| AtomicU8::new(PENDING)).collect(),
            ..Deliveries::default()
        }
    }

    /// The most bytes the producer held queued at once (librdkafka's `msg_size`), where
    /// its queue was measured; 0 otherwise.
    pub fn queued_peak_bytes(&self) -> u64 {
        self.queued_peak.load(Ordering::Relaxed)
    }

    /// From intended time to acknowledgement, over every acknowledged send so far.
    pub fn acked_latency(&self) -> LatencySummary {
        self.acked_latency.lock().map(|recorder| recorder.summary()).unwrap_or_default()
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Events whose delivery failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The mean size of the messages handed to the producer (key, payload and headers, not
    /// the record batch's framing), in bytes; 0 before the first.
    pub fn message_bytes_mean(&self) -> u64 {
        let sent = self.sent.load(Ordering::Relaxed);
        self.sent_bytes.load(Ordering::Relaxed).checked_div(sent).unwrap_or(0)
    }

    /// How many failed deliveries gave each reason (NOT_ENOUGH_REPLICAS, a timeout, ...).
    pub fn failure_reasons(&self) -> std::collections::BTreeMap<String, u64> {
        self.failure_reasons.lock().map(|reasons| reasons.clone()).unwrap_or_default()
    }

    /// Whether the event at `index` was acknowledged (its last report, when it was sent
    /// more than once).
    pub fn is_acked(&self, index: usize) -> bool {
        self.states.get(index).is_some_and(|state| state.load(Ordering::Relaxed) == ACKED)
    }

    /// The index of the event at the group's committed offset of a partition, the offsets
    /// below it forgotten: the lag sampler's question, asked with offsets that only move
    /// forward.
    pub fn event_at_committed(&self, partition: i32, committed: i64) -> Option<usize> {
        let mut by_offset = self.by_offset.lock().ok()?;
        let offsets = by_offset.get_mut(&partition)?;
        offsets.forget_below(committed);
        offsets.get(committed)
    }

    /// Events the broker acknowledged on the main topic at offsets at or past each
    /// partition's log end in `log_end` (partition -> high watermark): acknowledged, yet
    /// not in the log the broker serves, so no consumer could ever read them. A real broker
    /// with `acks=all` never does this; librdkafka's mock cluster did, after a broker-down
    /// fault (seen 2026-12-02: two events acknowledged at offsets 3 and 4 of a partition
    /// whose log ended at 3).
    pub fn acked_past_log_end(&self, log_end: &std::collections::BTreeMap<i32, i64>) -> u64 {
        let Ok(by_offset) = self.by_offset.lock() else { return 0 };
        log_end
            .iter()
            .filter_map(|(partition, end)| by_offset.get(partition).map(|offsets| offsets.events_from(*end)))
            .sum()
    }

    fn record(&self, index: usize, delivery: Delivery, indexed: bool) {
        let state = match delivery {
            Delivery::Acked { partition, offset } => {
                if indexed && let Ok(mut by_offset) = self.by_offset.lock() {
                    by_offset.entry(partition).or_default().insert(offset, index);
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
                ACKED
            }
            Delivery::Failed { ref reason } => {
                if let Ok(mut reasons) = self.failure_reasons.lock() {
                    *reasons.entry(reason.clone()).or_default() += 1;
                }
                self.failed.fetch_add(1, Ordering::Relaxed);
                FAILED
            }
        };
        if let Some(slot) = self.states.get(index) {
            slot.store(state, Ordering::Relaxed);
        }
    }
}

/// Receives delivery reports on the producer's thread.
pub struct PublishContext {
    deliveries: Arc<Deliveries>,
    /// The run's main topic: only its offsets are indexed for the lag sampler (empty: none).
    topic: String,
}

impl ClientContext for PublishContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.deliveries.queued_peak.fetch_max(statistics.msg_size, Ordering::Relaxed);
    }
}

impl ProducerContext for PublishContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let index = sent.index;
        match result {
            Ok(message) => {
                if let Ok(mut recorder) = self.deliveries.acked_latency.lock() {
                    recorder.record_ns(now_ns() - sent.intended_at_ns);
                }
                self.deliveries.record(
                    index,
                    Delivery::Acked {
                        partition: message.partition(),
                        offset: message.offset(),
                    },
                    message.topic() == self.topic,
                );
            }
            Err((error, message)) => {
                tracing::warn!(messaging.destination.name = message.topic(), messaging.destination.partition.id = message.partition(), %error, "delivery failed");
                self.deliveries.record(index, Delivery::Failed { reason: error.to_string() }, false);
            }
        }
    }
}

/// The publisher.
pub struct Publisher {
    producer: ThreadedProducer<PublishContext>,
    topic: String,
    deliveries: Arc<Deliveries>,
    key: MessageKey,
    /// From which event on (its index in the workload) the publisher writes another schema
    /// than the oldest that carries each event (the schema-evolution lesson's upgraded
    /// producer).
    schema: Option<(usize, SchemaWrite)>,
}

/// What a producer upgraded to a new schema writes (the schema-evolution lesson).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaWrite {
    /// schema_version 2 on every message, with a `client_order_id` on each trade.
    V2,
    /// A breaking change shipped as version 2: `amount` renamed `value`, `quantity`
    /// renamed `shares`.
    V2Renamed,
}

impl SchemaWrite {
    /// An event's message as this producer writes it.
    pub fn encode(self, event: &Event) -> Vec<u8> {
        let client_order_id = format!("order-{}-{}", event.account_id.as_str(), event.account_seq);
        let bytes = tradeflow_domain::encode_as(event, 2, Some(&client_order_id))
            .unwrap_or_else(|_| unreachable!("version 2 carries every event this build knows"));
        match self {
            SchemaWrite::V2 => bytes,
            SchemaWrite::V2Renamed => {
                let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    return bytes;
                };
                for (from, to) in [("amount", "value"), ("quantity", "shares")] {
                    if let Some(value) = object.remove(from) {
                        object.insert(to.into(), value);
                    }
                }
                serde_json::to_vec(&object).unwrap_or(bytes)
            }
        }
    }
}

impl Publisher {
    /// A publisher to `topic` whose delivery reports go to `deliveries`.
    pub fn new(bootstrap: &str, topic: &str, config: &PublisherConfig, deliveries: Arc<Deliveries>) -> Result<Publisher, StreamError> {
        Publisher::build(bootstrap, topic, config, deliveries, true)
    }

    /// The same publisher, writing `write` from the event at index `from` on.
    pub fn writing(mut self, from: usize, write: SchemaWrite) -> Publisher {
        self.schema = Some((from, write));
        self
    }

    /// A publisher to `topic` on a second cluster (a migration's), whose delivery reports go
    /// to `deliveries` too but whose offsets are not indexed for the lag sampler: the
    /// sampler reads the first cluster, where the same partition and offset name another
    /// event.
    pub fn elsewhere(
        bootstrap: &str,
        topic: &str,
        config: &PublisherConfig,
        deliveries: Arc<Deliveries>,
    ) -> Result<Publisher, StreamError> {
        Publisher::build(bootstrap, topic, config, deliveries, false)
    }

    fn build(
        bootstrap: &str,
        topic: &str,
        config: &PublisherConfig,
        deliveries: Arc<Deliveries>,
        indexed: bool,
    ) -> Result<Publisher, StreamError> {
        let mut client = base_config(bootstrap);
        if let Some(kbytes) = config.buffer_kbytes {
            client.set("queue.buffering.max.kbytes", kbytes.to_string());
        }
        if config.queue_stats {
            client.set("statistics.interval.ms", QUEUE_STATS_INTERVAL_MS.to_string());
        }
        let producer = client
            // Acknowledged only once every in-sync replica has the write (experiments may ask
            // for the leader alone, to show what that loses).
            .set("acks", config.acks.as_str())
            // Retries cannot duplicate or reorder messages within a partition (on by default;
            // experiments turn it off to show why).
            .set("enable.idempotence", config.idempotence.to_string())
            // With idempotence on, the broker's sequence checks keep order across the
            // requests in flight; without it, a retried request can land behind a later one.
            .set("max.in.flight.requests.per.connection", config.in_flight_max.to_string())
            // The knobs: how long to wait to fill a batch, and how large a batch may be.
            .set("linger.ms", config.linger_ms.to_string())
            .set("batch.num.messages", config.batch_max.to_string())
            // A bounded time to deliver, so a dead broker shows up as failed reports.
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
            // The default partitioner (murmur2 of the key, as the Java client): an
            // account's events land on one partition.
            .set("partitioner", "murmur2_random")
            .create_with_context(PublishContext {
                deliveries: deliveries.clone(),
                topic: if indexed { topic.to_owned() } else { String::new() },
            })
            .map_err(|error| StreamError::kafka("creating the producer", error))?;
        Ok(Publisher {
            producer,
            topic: topic.to_owned(),
            deliveries,
            key: config.key,
            schema: None,
        })
    }

    /// The delivery reports.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// Enqueues one event (the report arrives later); waits while the local queue is full.
    pub async fn publish(&self, index: usize, event: &Event, intended_at_ns: i64) -> Result<(), StreamError> {
        self.publish_to(None, index, event, intended_at_ns).await
    }

    /// Like [`Publisher::publish`], to `topic` instead of the publisher's own when given.
    pub async fn publish_to(&self, topic: Option<&str>, index: usize, event: &Event, intended_at_ns: i64) -> Result<(), StreamError> {
        let topic = topic.unwrap_or(&self.topic);
        let payload = match self.schema {
            Some((from, write)) if index >= from => write.encode(event),
            _ => encode(event),
        };
        let intended = intended_at_ns.to_string();
        let key = self.key.of(event);
        let bytes = key.as_ref().len() + payload.len() + HEADER_INTENDED_AT_NS.len() + intended.len();
        self.deliveries.sent.fetch_add(1, Ordering::Relaxed);
        self.deliveries.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(Sent { index, intended_at_ns }))
            .key(key.as_ref())
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: HEADER_INTENDED_AT_NS,
                value: Some(intended.as_bytes()),
            }));
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => {
                    return Err(StreamError::kafka(format!("publishing event {} to {topic}", event.event_id), error));
                }
            }
        }
    }

    /// Waits until every message sent so far has its delivery report, or `timeout`.
    pub async fn wait_for_reports(&self, timeout: Duration) -> Result<(), StreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(StreamError::kafka(
                    format!("waiting for delivery reports on {}", self.topic),
                    format!(
                        "{} messages still unacknowledged after {timeout:?}",
                        self.producer.in_flight_count()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits for every outstanding delivery report.
    pub async fn flush(self) -> Result<Arc<Deliveries>, StreamError> {
        let deliveries = self.deliveries.clone();
        tokio::task::spawn_blocking(move || self.producer.flush(FLUSH_TIMEOUT))
            .await
            .map_err(|error| StreamError::Task {
                task: "publisher flush".into(),
                reason: error.to_string(),
            })?
            .map_err(|error| StreamError::kafka("flushing the producer", error))?;
        Ok(deliveries)
    }
}

#[cfg(test)]
mod offset_index_tests {
    use super::OffsetIndex;

    #[test]
    fn offsets_acknowledged_in_any_order_are_found_until_forgotten_below_the_committed_offset() {
        let mut index = OffsetIndex::default();
        for (offset, event) in [(10, 0), (11, 1), (13, 3), (12, 2), (8, 7)] {
            index.insert(offset, event);
        }
        assert_eq!(
            (8..=14).map(|offset| index.get(offset)).collect::<Vec<_>>(),
            [Some(7), None, Some(0), Some(1), Some(2), Some(3), None]
        );
        index.forget_below(12);
        assert_eq!(
            (10..=13).map(|offset| index.get(offset)).collect::<Vec<_>>(),
            [None, None, Some(2), Some(3)]
        );
        assert_eq!(index.events.len(), 2, "the forgotten offsets are no longer held");
        // A late acknowledgement below what was forgotten is not kept; above it, it is.
        index.insert(11, 9);
        index.insert(20, 20);
        assert_eq!((index.get(11), index.get(20)), (None, Some(20)));
        // Forgetting past everything held, then acknowledging again.
        index.forget_below(30);
        assert!(index.events.is_empty());
        index.insert(31, 31);
        index.insert(30, 30);
        assert_eq!((index.get(29), index.get(30), index.get(31)), (None, Some(30), Some(31)));
    }

    #[test]
    fn events_acknowledged_at_or_past_a_partitions_log_end_are_counted() {
        let deliveries = super::Deliveries::new(8);
        for (event, partition, offset) in [(0, 2, 0), (1, 2, 1), (2, 2, 2), (3, 2, 3), (4, 2, 4), (5, 1, 0)] {
            deliveries.record(event, super::Delivery::Acked { partition, offset }, true);
        }
        let ends = |ends: &[(i32, i64)]| ends.iter().copied().collect::<std::collections::BTreeMap<_, _>>();
        // The broker serves partition 2 up to offset 3: events 3 and 4 are past its end.
        assert_eq!(deliveries.acked_past_log_end(&ends(&[(1, 1), (2, 3)])), 2);
        // The lag sampler forgets what lies below the committed offset; the count holds.
        assert_eq!(deliveries.event_at_committed(2, 3), Some(3));
        assert_eq!(deliveries.acked_past_log_end(&ends(&[(1, 1), (2, 3)])), 2);
        // Once the log holds them, none is past its end.
        assert_eq!(deliveries.acked_past_log_end(&ends(&[(1, 1), (2, 5)])), 0);
        assert_eq!(deliveries.acked_past_log_end(&ends(&[(1, 0), (2, 5)])), 1);
    }
}
