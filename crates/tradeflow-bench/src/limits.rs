//! The raw limits of a broker and a store: how fast messages go into a topic and come back
//! out, and how fast batches of events go into a store, with no pipeline in between (no
//! decoding, no checks, no per-event bookkeeping). A pipeline's throughput is read against
//! these ceilings.
//!
//! Delivery guarantee of [`raw_produce`]: the trade publisher's, `acks=all` with idempotence,
//! so the ceiling is that of the guarantee the pipeline pays for. [`raw_consume`] commits
//! nothing and leaves no consumer group behind: it reads, counts and forgets.
//! [`raw_store_apply`] applies from as many tasks as the stream configuration has consumers,
//! each with its own share of the accounts, in batches of that configuration's size: the
//! store as the pipeline uses it.
//!
//! Clients start from the pipeline's own settings ([`tradeflow_stream::base_config`]:
//! bootstrap servers, the environment's SASL/SSL settings, reconnect backoff).

use anyhow::{Context as _, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tradeflow_domain::Event;
use tradeflow_store::{ApplyInput, BATCH_EVENTS_MAX, Store, now_ns};
use tradeflow_stream::publisher::{MESSAGE_TIMEOUT_MS, QUEUE_FULL_BACKOFF};

/// How long [`raw_produce`] waits for the last delivery reports once everything is sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`raw_produce`] waits for the idempotent producer to get its producer id.
pub const PRODUCER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the producer reports its statistics, which say when it has its producer id.
const STATISTICS_INTERVAL_MS: u32 = 100;
/// How long [`raw_consume`] waits for a message, first or next, before giving up.
pub const CONSUME_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one poll of the consumer waits.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long reading a topic's partitions may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// The applier name raw store applies leave in the apply log.
pub const RAW_APPLIER: &str = "raw-limit";

/// A measured rate: how many items in how long.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RawRate {
    /// Items (messages or events) counted.
    pub items: u64,
    /// Seconds the items took.
    pub seconds: f64,
    /// Items per second (0 when no time could be measured, as for a single item).
    pub per_s: f64,
    /// Payload bytes per second, where bytes mean something (messages, not store applies).
    pub bytes_per_s: Option<f64>,
    /// A store apply's: microseconds an item spent inside its batch's transaction, summed
    /// over the writers, each one's wait for a connection left out (what the pipeline's
    /// consumers count as applying, for the same comparison).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_transaction_us_per_item: Option<f64>,
}

impl RawRate {
    /// The rate of `items` (and `bytes`) over `seconds`; a zero span gives rates of 0
    /// rather than infinity.
    pub fn new(items: u64, seconds: f64, bytes: Option<u64>) -> RawRate {
        let per = |count: u64| if seconds > 0.0 { count as f64 / seconds } else { 0.0 };
        RawRate {
            items,
            seconds,
            per_s: per(items),
            bytes_per_s: bytes.map(per),
            in_transaction_us_per_item: None,
        }
    }
}

/// The settings every raw client shares with the pipeline's clients: the pipeline's own.
fn base_config(bootstrap: &str) -> ClientConfig {
    tradeflow_stream::base_config(bootstrap)
}

/// Counts delivery reports on the producer's thread, notes when the last one arrived, and
/// when the idempotent producer has its producer id.
struct CountingContext {
    acked: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
    idempotence_ready: AtomicBool,
    /// What report times are measured from.
    origin: Instant,
    /// When the latest delivery report arrived, in ns after `origin`.
    last_report_ns: AtomicU64,
}

impl CountingContext {
    fn new() -> CountingContext {
        CountingContext {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            idempotence_ready: AtomicBool::new(false),
            origin: Instant::now(),
            last_report_ns: AtomicU64::new(0),
        }
    }

    fn since_origin_ns(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl ClientContext for CountingContext {
    fn stats(&self, statistics: Statistics) {
        if statistics.eos.is_some_and(|eos| eos.idemp_state == "Assigned") {
            self.idempotence_ready.store(true, Ordering::Relaxed);
        }
    }
}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.last_report_ns
            .fetch_max(self.since_origin_ns(Instant::now()), Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0
                    && let Ok(mut first) = self.first_failure.lock()
                {
                    *first = Some(format!("partition {}: {error}", message.partition()));
                }
            }
        }
    }
}

/// Sends every payload to `topic` as fast as the producer takes them, waits for every
/// delivery report, and returns the rate from the first send to the last report. The clock
/// starts once the producer is connected and has its idempotent producer id.
///
/// `keys` is either empty (unkeyed messages) or holds one key per payload (the account id,
/// as the publisher uses). The topic must exist. Any failed delivery is an error naming how
/// many failed and the first reason: a ceiling measured while losing messages is no ceiling.
#[tracing::instrument(skip_all, fields(messaging.destination.name = topic, messages = payloads.len()))]
pub async fn raw_produce(bootstrap: &str, topic: &str, payloads: &[Vec<u8>], keys: &[String]) -> anyhow::Result<RawRate> {
    ensure!(
        keys.is_empty() || keys.len() == payloads.len(),
        "raw_produce: {} keys for {} payloads; give one key per payload or none",
        keys.len(),
        payloads.len()
    );
    let producer = counting_producer(bootstrap, topic)?;
    ensure_topic_known(&producer, bootstrap, topic).await?;
    wait_for_producer_id(&producer, bootstrap).await?;

    let bytes: u64 = payloads.iter().map(|payload| payload.len() as u64).sum();
    let started = Instant::now();
    send_all(&producer, bootstrap, topic, payloads, keys).await?;
    flush(&producer, bootstrap, topic).await?;
    // The end is the last report itself: the flush notices it up to 100 ms later.
    let context = producer.context();
    let started_ns = context.since_origin_ns(started);
    let seconds = context.last_report_ns.load(Ordering::Relaxed).saturating_sub(started_ns) as f64 / 1e9;
    let acked = every_message_delivered(context, bootstrap, topic, payloads.len())?;
    let rate = RawRate::new(acked, seconds, Some(bytes));
    tracing::info!(per_s = rate.per_s, seconds, "raw produce done");
    Ok(rate)
}

/// The raw producer: the publisher's delivery guarantee, counting its delivery reports.
fn counting_producer(bootstrap: &str, topic: &str) -> anyhow::Result<ThreadedProducer<CountingContext>> {
    base_config(bootstrap)
        // Acknowledged only once every in-sync replica has the write, as the publisher.
        .set("acks", "all")
        // Retries neither duplicate nor reorder, as the publisher; the broker's sequence
        // checks are part of the cost being measured.
        .set("enable.idempotence", "true")
        // linger.ms and batch.num.messages are left at librdkafka's defaults, which are
        // the publisher's defaults too.
        // A bounded time to deliver, so a dead broker shows up as failed reports.
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
        // The publisher's partitioner (murmur2 of the key, as the Java client).
        .set("partitioner", "murmur2_random")
        // Statistics say when the producer id is assigned (see `wait_for_producer_id`);
        // parsing them every 100 ms costs the producer's thread little.
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
        .create_with_context(CountingContext::new())
        .with_context(|| format!("creating a producer for {topic} on {bootstrap}"))
}

/// Fetches the connection and the topic's metadata before the clock starts, so the rate is
/// that of producing, not of starting a client; a missing topic fails here.
async fn ensure_topic_known(producer: &ThreadedProducer<CountingContext>, bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let probe = producer.clone();
    let owned_topic = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || probe.client().fetch_metadata(Some(&owned_topic), METADATA_TIMEOUT))
        .await
        .context("the metadata task panicked")?
        .with_context(|| format!("reading the metadata of {topic} from {bootstrap} (is a broker there?)"))?;
    if !metadata
        .topics()
        .first()
        .is_some_and(|found| found.error().is_none() && !found.partitions().is_empty())
    {
        bail!("topic {topic} does not exist on {bootstrap}; create it before measuring");
    }
    Ok(())
}

/// Waits for the idempotent producer's id, at most [`PRODUCER_READY_TIMEOUT`].
///
/// librdkafka asks for it up to 500 ms after the producer is created
/// (rdkafka_idempotence.c) and holds every message until it has one: a startup cost a
/// long-running publisher pays once, kept out of the ceiling.
async fn wait_for_producer_id(producer: &ThreadedProducer<CountingContext>, bootstrap: &str) -> anyhow::Result<()> {
    let waiting_since = Instant::now();
    while !producer.context().idempotence_ready.load(Ordering::Relaxed) {
        ensure!(
            waiting_since.elapsed() < PRODUCER_READY_TIMEOUT,
            "the producer got no idempotent producer id from {bootstrap} within {PRODUCER_READY_TIMEOUT:?} (does the broker support idempotence?)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Hands every payload (with its key, if any) to the producer, backing off while its queue
/// is full.
async fn send_all(
    producer: &ThreadedProducer<CountingContext>,
    bootstrap: &str,
    topic: &str,
    payloads: &[Vec<u8>],
    keys: &[String],
) -> anyhow::Result<()> {
    for (index, payload) in payloads.iter().enumerate() {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload.as_slice());
        if let Some(key) = keys.get(index) {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((error, _)) => bail!("sending message {index} of {} to {topic} on {bootstrap}: {error}", payloads.len()),
            }
        }
    }
    Ok(())
}

/// Waits up to [`FLUSH_TIMEOUT`] for the delivery report of every message sent.
async fn flush(producer: &ThreadedProducer<CountingContext>, bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let flushing = producer.clone();
    tokio::task::spawn_blocking(move || flushing.flush(FLUSH_TIMEOUT))
        .await
        .context("the flush task panicked")?
        .with_context(|| {
            format!(
                "waiting {FLUSH_TIMEOUT:?} for delivery reports from {topic} on {bootstrap}: {} messages still unacknowledged",
                producer.in_flight_count()
            )
        })
}

/// The number of messages acknowledged, once every one of the `sent` was; an error naming
/// how many failed and the first reason otherwise.
fn every_message_delivered(context: &CountingContext, bootstrap: &str, topic: &str, sent: usize) -> anyhow::Result<u64> {
    let acked = context.acked.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = context
            .first_failure
            .lock()
            .ok()
            .and_then(|first| first.clone())
            .unwrap_or_default();
        bail!("{failed} of {sent} messages to {topic} on {bootstrap} were not delivered; first failure: {first}");
    }
    ensure!(
        acked == sent as u64,
        "{acked} of {sent} messages to {topic} on {bootstrap} were acknowledged after the flush"
    );
    Ok(acked)
}

/// Reads `expected` messages from every partition of `topic`, from the beginning, with no
/// processing, and returns the rate from the first message to the last.
///
/// The consumer is assigned the partitions directly: it joins no group and commits
/// nothing. If no message arrives for [`CONSUME_IDLE_TIMEOUT`], the error says how many of
/// the expected messages were read.
#[tracing::instrument(skip_all, fields(messaging.destination.name = topic, expected))]
pub async fn raw_consume(bootstrap: &str, topic: &str, expected: usize) -> anyhow::Result<RawRate> {
    if expected == 0 {
        return Ok(RawRate::new(0, 0.0, Some(0)));
    }
    let consumer: BaseConsumer = base_config(bootstrap)
        // A group id no one else has: even if something committed, nothing would be found.
        .set("group.id", format!("tradeflow-raw-consume-{}-{}", std::process::id(), now_ns()))
        // Nothing is committed: the raw reader leaves no trace on the cluster.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // From the first message still held, should an assigned offset be out of range.
        .set("auto.offset.reset", "earliest")
        // End of partition is not an event worth a poll result here.
        .set("enable.partition.eof", "false")
        .create()
        .with_context(|| format!("creating a consumer for {topic} on {bootstrap}"))?;
    let topic = topic.to_owned();
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || consume_blocking(&consumer, &bootstrap, &topic, expected))
        .await
        .context("the consume task panicked")?
}

fn consume_blocking(consumer: &BaseConsumer, bootstrap: &str, topic: &str, expected: usize) -> anyhow::Result<RawRate> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("reading the partitions of {topic} from {bootstrap} (is a broker there?)"))?;
    let partitions = match metadata.topics().first() {
        Some(found) if found.error().is_none() && !found.partitions().is_empty() => found.partitions().len(),
        _ => bail!("topic {topic} does not exist on {bootstrap}; create it before measuring"),
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).context("partition number")?;
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .with_context(|| format!("assigning partition {partition} of {topic}"))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the {partitions} partitions of {topic}"))?;

    let mut read: u64 = 0;
    let mut bytes: u64 = 0;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut last_error: Option<KafkaError> = None;
    while read < expected as u64 {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                read += 1;
                bytes += message.payload_len() as u64;
            }
            Some(Err(error)) => {
                tracing::warn!(messaging.destination.name = topic, %error, "consumer error");
                last_error = Some(error);
            }
            None => {}
        }
        if last.elapsed() > CONSUME_IDLE_TIMEOUT {
            let cause = last_error.map_or_else(String::new, |error| format!("; last error: {error}"));
            bail!("read {read} of {expected} messages from {topic} on {bootstrap}, then nothing for {CONSUME_IDLE_TIMEOUT:?}{cause}");
        }
    }
    let seconds = first.map_or(0.0, |first| last.duration_since(first).as_secs_f64());
    let rate = RawRate::new(read, seconds, Some(bytes));
    tracing::info!(per_s = rate.per_s, seconds, "raw consume done");
    Ok(rate)
}

/// Applies `events` to `store` from `writers` tasks at once, each applying its share of
/// the accounts (an account's events stay in one task, in order, as a partition keeps
/// them for one consumer) in batches of `batch_size`, one after the other; returns events
/// applied per second over the whole, and the time an event spent inside its transaction.
///
/// The events must be new to the store (an empty store, or one reset): an event the apply
/// log already holds is an error, because deduplicating is not applying.
#[tracing::instrument(skip_all, fields(store = %store.kind(), events = events.len(), batch_size, writers))]
pub async fn raw_store_apply(store: &Store, events: &[Event], batch_size: usize, writers: usize) -> anyhow::Result<RawRate> {
    ensure!(
        (1..=BATCH_EVENTS_MAX).contains(&batch_size),
        "batch size must be 1..={BATCH_EVENTS_MAX}, got {batch_size}"
    );
    ensure!(
        (1..=RAW_WRITERS_MAX).contains(&writers),
        "writers must be 1..={RAW_WRITERS_MAX}, got {writers}"
    );
    let mut shares: Vec<Vec<Event>> = vec![Vec::new(); writers];
    for event in events {
        let share = account_share(event.account_id.as_str(), writers);
        shares[share].push(event.clone());
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(writer, share)| {
            let store = store.clone();
            tokio::spawn(async move { apply_share(&store, &share, batch_size, writer).await })
        })
        .collect();
    let (mut applied, mut in_transaction) = (0_u64, Duration::ZERO);
    for task in tasks {
        let (events, time) = task.await.context("a raw store-apply writer")??;
        applied += events;
        in_transaction += time;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = RawRate {
        in_transaction_us_per_item: (applied > 0).then(|| in_transaction.as_secs_f64() * 1e6 / applied as f64),
        ..RawRate::new(applied, seconds, None)
    };
    tracing::info!(per_s = rate.per_s, seconds, "raw store apply done");
    Ok(rate)
}

/// Most concurrent writers [`raw_store_apply`] starts.
pub const RAW_WRITERS_MAX: usize = 64;

/// Which of `writers` shares an account's events go to (FNV-1a of its id).
fn account_share(account: &str, writers: usize) -> usize {
    let hash = account.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % writers as u64) as usize
}

/// One writer of [`raw_store_apply`]: its share, batch after batch; returns events applied
/// and the time its batches spent inside their transactions (the wait for a connection
/// left out, as the pipeline's consumers count it).
async fn apply_share(store: &Store, events: &[Event], batch_size: usize, writer: usize) -> anyhow::Result<(u64, Duration)> {
    let applier = format!("{RAW_APPLIER}-{writer}");
    let (mut applied, mut in_transaction) = (0, Duration::ZERO);
    for (batch, chunk) in events.chunks(batch_size).enumerate() {
        let intended_at_ns = now_ns();
        let inputs: Vec<ApplyInput<'_>> = chunk.iter().map(|event| ApplyInput { event, intended_at_ns }).collect();
        let asked = Instant::now();
        let summary = store.apply_batch(&inputs, &applier).await.with_context(|| {
            format!(
                "writer {writer} applying batch {batch} ({} events) to {}",
                chunk.len(),
                store.url_redacted()
            )
        })?;
        ensure!(
            summary.duplicates == 0,
            "writer {writer}, batch {batch}: {} events were already in the apply log of {}; measure on an empty (reset) store",
            summary.duplicates,
            store.url_redacted()
        );
        in_transaction += asked.elapsed().saturating_sub(summary.queued);
        applied += summary.applied as u64;
    }
    Ok((applied, in_transaction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_of_nothing_are_zero_not_infinite() {
        let none = RawRate::new(1, 0.0, Some(10));
        assert_eq!((none.per_s, none.bytes_per_s), (0.0, Some(0.0)));
        let some = RawRate::new(500, 0.5, None);
        assert_eq!((some.per_s, some.bytes_per_s), (1_000.0, None));
    }

    #[test]
    fn rates_serialize_with_their_field_names() {
        let json = serde_json::to_value(RawRate::new(10, 2.0, Some(100))).expect("serializes");
        assert_eq!(json["per_s"], 5.0);
        assert_eq!(json["bytes_per_s"], 50.0);
    }
}
