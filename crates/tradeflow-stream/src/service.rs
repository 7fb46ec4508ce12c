//! The balance service: one consumer of a consumer group.
//!
//! Delivery guarantee: at least once from the broker, exactly once on balances. A batch
//! (at most `batch_size` messages) is decoded, its bad messages are dead-lettered and
//! acknowledged, its events are applied in one database transaction with their apply-log
//! rows, and only then are its offsets committed. A crash anywhere before the offset
//! commit redelivers the batch, and the apply log skips what was already applied. On a
//! rebalance nothing is committed for work that was not applied, because commits only
//! ever follow an apply. In-flight work is bounded by the batch.

use crate::dlq::{self, Rejection};
use crate::{HEADER_INTENDED_AT_NS, StreamError, base_config};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::LatencyRecorder;
use tradeflow_domain::{Event, decode};
use tradeflow_store::{ApplyInput, Store, now_ns};

/// Largest batch one transaction may hold.
pub const SERVICE_BATCH_MAX: usize = 10_000;
/// Pause after a consumer error before reading again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The balance service's knobs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// The topic of trade events.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name (the applier in the apply log).
    pub name: String,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long to wait to fill a batch once its first message is in.
    pub fill_wait: Duration,
    /// `session.timeout.ms`: how long the group waits for a silent member.
    pub session_timeout_ms: u32,
}

impl ServiceConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), StreamError> {
        if self.batch_size == 0 || self.batch_size > SERVICE_BATCH_MAX {
            return Err(StreamError::Config {
                reason: format!("batch size must be 1..={SERVICE_BATCH_MAX}, got {}", self.batch_size),
            });
        }
        if self.topic.is_empty() || self.group.is_empty() {
            return Err(StreamError::Config {
                reason: "topic and group must not be empty".into(),
            });
        }
        Ok(())
    }

    fn consumer(&self, counters: Arc<ServiceCounters>) -> Result<StreamConsumer<ServiceContext>, StreamError> {
        base_config(&self.bootstrap)
            .set("group.id", &self.group)
            .set("client.id", &self.name)
            // Offsets are committed by hand, after the database commit.
            .set("enable.auto.commit", "false")
            // Only the offsets this service passes to commit are committed.
            .set("enable.auto.offset.store", "false")
            // A group that never committed starts from the first event: nothing is skipped.
            .set("auto.offset.reset", "earliest")
            // How long the group waits for a silent member before moving its partitions.
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.session_timeout_ms / 3).max(100).to_string())
            // The rebalance timeout: how long a rebalance waits for members to rejoin. This
            // loop polls between batches, and a batch takes far less, so a member silent this
            // long is gone; the default (5 minutes) would stall the group that long.
            .set("max.poll.interval.ms", (self.session_timeout_ms * 3).max(20_000).to_string())
            // The mock cluster waits the whole fetch.wait.max.ms on an empty fetch.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ServiceContext {
                name: self.name.clone(),
                group: self.group.clone(),
                counters,
            })
            .map_err(|error| StreamError::kafka(format!("creating consumer {} of group {}", self.name, self.group), error))
    }
}

/// Counters shared by the consumers of a run.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Events applied.
    pub applied: AtomicU64,
    /// Messages skipped because the apply log already held their event.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Messages whose offsets were committed.
    pub committed: AtomicU64,
    /// Partitions currently assigned, summed over consumers.
    pub assigned_partitions: AtomicI64,
    /// Rebalances seen.
    pub rebalances: AtomicU64,
    /// Latest commit, ns since the epoch.
    pub last_commit_ns: AtomicI64,
}

impl ServiceCounters {
    /// Messages processed: applied, skipped as duplicates, or dead-lettered.
    pub fn processed(&self) -> u64 {
        self.applied.load(Ordering::Relaxed) + self.duplicates.load(Ordering::Relaxed) + self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// Logs rebalances and keeps the assignment count.
pub struct ServiceContext {
    name: String,
    group: String,
    counters: Arc<ServiceCounters>,
}

impl ClientContext for ServiceContext {}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Nothing to commit here: this consumer commits right after each apply, so a
            // revoked partition has no applied-but-uncommitted work.
            self.counters
                .assigned_partitions
                .fetch_sub(i64::from(partitions.count() as i32), Ordering::Relaxed);
            tracing::info!(consumer = %self.name, messaging.consumer.group.name = %self.group, partitions = ?partition_numbers(partitions), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.counters.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.counters
                    .assigned_partitions
                    .fetch_add(i64::from(partitions.count() as i32), Ordering::Relaxed);
                tracing::info!(consumer = %self.name, messaging.consumer.group.name = %self.group, partitions = ?partition_numbers(partitions), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.name, messaging.consumer.group.name = %self.group, %error, "rebalance error")
            }
        }
    }
}

fn partition_numbers(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions.elements().iter().map(|element| element.partition()).collect()
}

/// Runs one consumer of the balance service until `stop` turns true (or an error that
/// must not be skipped). Returns the latencies it measured, from each event's intended
/// send time to the commit of its balance update.
#[tracing::instrument(skip_all, fields(consumer = %config.name, messaging.consumer.group.name = %config.group))]
pub async fn run_service(
    store: Store,
    config: ServiceConfig,
    mut stop: watch::Receiver<bool>,
    counters: Arc<ServiceCounters>,
) -> Result<LatencyRecorder, StreamError> {
    config.validate()?;
    let consumer = config.consumer(counters.clone())?;
    consumer
        .subscribe(&[&config.topic])
        .map_err(|error| StreamError::kafka(format!("subscribing to {}", config.topic), error))?;
    let dead_letters = dlq::producer(&config.bootstrap)?;
    let mut latency = LatencyRecorder::new();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(config.batch_size);
    while !*stop.borrow() {
        let first = tokio::select! {
            _ = stop.changed() => break,
            received = consumer.recv() => received,
        };
        match first {
            Ok(message) => batch.push(message.detach()),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + config.fill_wait;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(error)) => tracing::warn!(%error, "consumer error"),
                Err(_) => break,
            }
        }
        process(&store, &consumer, &dead_letters, &config, &batch, &counters, &mut latency).await?;
        batch.clear();
    }
    Ok(latency)
}

/// One batch: dead-letter what cannot be applied, apply the rest in one transaction, then
/// commit the offsets.
async fn process(
    store: &Store,
    consumer: &StreamConsumer<ServiceContext>,
    dead_letters: &rdkafka::producer::FutureProducer,
    config: &ServiceConfig,
    batch: &[OwnedMessage],
    counters: &ServiceCounters,
    latency: &mut LatencyRecorder,
) -> Result<(), StreamError> {
    let mut events: Vec<(Event, i64)> = Vec::with_capacity(batch.len());
    let mut dead_lettered = 0;
    let mut accepted_offsets: std::collections::HashSet<(i32, i64)> = std::collections::HashSet::with_capacity(batch.len());
    for message in batch {
        match accept(message) {
            Ok(accepted) => {
                accepted_offsets.insert((message.partition(), message.offset()));
                events.push(accepted);
            }
            Err(rejection) => {
                tracing::warn!(
                    messaging.destination.name = message.topic(),
                    messaging.destination.partition.id = message.partition(),
                    messaging.kafka.offset = message.offset(),
                    error.kind = %rejection.kind,
                    reason = %rejection.reason,
                    "dead-lettering a message"
                );
                dlq::send(dead_letters, message, &rejection, now_ns()).await?;
                dead_lettered += 1;
            }
        }
    }
    let inputs: Vec<ApplyInput<'_>> = events
        .iter()
        .map(|(event, intended_at_ns)| ApplyInput {
            event,
            intended_at_ns: *intended_at_ns,
        })
        .collect();
    let summary = store.apply_batch(&inputs, &config.name).await?;
    let committed_at_ns = now_ns();
    for (_, intended_at_ns) in &events {
        if *intended_at_ns > 0 {
            latency.record_ns(committed_at_ns - intended_at_ns);
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (message, (event, _)) in batch
            .iter()
            .filter(|message| accepted_offsets.contains(&(message.partition(), message.offset())))
            .zip(&events)
        {
            tracing::debug!(
                messaging.destination.name = message.topic(),
                messaging.destination.partition.id = message.partition(),
                messaging.kafka.offset = message.offset(),
                trade.event_id = %event.event_id,
                account.id = %event.account_id,
                "applied; committing its offset"
            );
        }
    }
    // The database commit is done: now, and only now, the offsets.
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = next.entry((message.topic().to_owned(), message.partition())).or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &next {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|error| StreamError::kafka("building the offset list", error))?;
    }
    // Asynchronous: a synchronous commit would block this consumer's thread, and during a
    // rebalance the coordinator holds the commit until this very consumer rejoins, which
    // it cannot do while blocked. A commit that fails or is lost in a crash only means a
    // redelivery, which the apply log skips.
    match consumer.commit(&offsets, CommitMode::Async) {
        Ok(()) => {
            counters.committed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(error) => {
            tracing::warn!(%error, offsets = ?next, "offset commit refused; the events are applied and a redelivery will be skipped")
        }
    }
    counters.applied.fetch_add(summary.applied as u64, Ordering::Relaxed);
    counters.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
    counters.dead_lettered.fetch_add(dead_lettered, Ordering::Relaxed);
    counters.last_commit_ns.fetch_max(committed_at_ns, Ordering::Relaxed);
    Ok(())
}

/// Decodes a message and checks that its key is its account (the key routes an account's
/// events to one partition; a message under another key would break that account's order).
fn accept(message: &OwnedMessage) -> Result<(Event, i64), Rejection> {
    let Some(payload) = message.payload() else {
        return Err(Rejection {
            kind: "empty_payload".into(),
            reason: "the message has no payload".into(),
        });
    };
    let event = decode(payload).map_err(|error| Rejection {
        kind: error.kind().into(),
        reason: error.to_string(),
    })?;
    let key = message.key().map(String::from_utf8_lossy);
    if key.as_deref() != Some(event.account_id.as_str()) {
        return Err(Rejection {
            kind: "key_mismatch".into(),
            reason: format!(
                "the key must be the account id {:?}, got {:?}",
                event.account_id.as_str(),
                key.as_deref().unwrap_or("<none>")
            ),
        });
    }
    let intended_at_ns = dlq::header(message, HEADER_INTENDED_AT_NS)
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    Ok((event, intended_at_ns))
}
