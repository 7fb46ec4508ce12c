//! The event-driven rewrite: the system of record publishes trade events to Kafka, keyed by
//! account, and a balance service in a consumer group applies them.
//!
//! - [`publisher`]: `acks=all`, idempotence on, key = account id, default partitioner;
//!   every delivery report (partition and offset, or the error) goes into the history.
//! - [`service`]: the balance service. `enable.auto.commit=false`; a batch is applied in one
//!   database transaction with its apply-log rows, and offsets are committed only after
//!   that commit, so redelivery after a crash is harmless (the apply log skips it).
//! - [`dlq`]: a message that cannot be decoded, or whose key is not its account, goes to
//!   `<topic>.dlq` with headers saying why, where from and when; replay sends it back.
//! - [`lag`]: offset lag per partition (log end minus committed) and time lag.
//! - [`metrics`]: lag as Prometheus text on a TCP port.
//! - [`run`]: a whole seeded run on a cluster, checked and recorded.
//!
//! Delivery guarantee: at least once from the broker, exactly once on balances (the apply
//! log makes applying idempotent). Per-account order holds because the key routes an
//! account to one partition and a partition is applied in offset order.

mod cutover;
pub mod dlq;
pub mod fleet;
pub mod journal;
pub mod lag;
pub mod log_audit;
pub mod metrics;
pub mod notifications;
mod outage;
pub mod outbox;
pub mod process;
pub mod publisher;
pub mod run;
mod run_record;
pub mod service;
mod timeline;

pub use notifications::{Notifications, NotifierGroup};
pub use run::{Cutover, Runbook, Scenario, StreamOptions, run};
pub use service::{CommitPolicy, Control, FETCH_WAIT_MAX_MS, ServiceConfig, ServiceCounters, run_controlled, run_service};

use rdkafka::ClientConfig;
use tradeflow_cluster::ClusterError;
use tradeflow_store::StoreError;

/// The header that carries an event's intended send time (ns since the epoch), so that
/// the balance service can measure latency from it. Optional for other producers.
pub const HEADER_INTENDED_AT_NS: &str = "tradeflow.intended_at_ns";

/// A stream error, with the topic, partition and offset where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A Kafka client could not be created or a request failed.
    #[error("kafka: {operation}: {reason}")]
    Kafka {
        /// What was being done.
        operation: String,
        /// What librdkafka said.
        reason: String,
    },
    /// A dead letter could not be written, so its source offset is not committed.
    #[error("dead-lettering {topic}[{partition}]@{offset} to {dlq_topic}: {reason}")]
    DeadLetter {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// The dead-letter topic.
        dlq_topic: String,
        /// What the producer said.
        reason: String,
    },
    /// The cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workload could not be generated.
    #[error(transparent)]
    Workload(#[from] tradeflow_domain::WorkloadError),
    /// A configuration value is out of bounds.
    #[error("invalid stream configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A task panicked or was cancelled.
    #[error("{task} stopped unexpectedly: {reason}")]
    Task {
        /// Which task.
        task: String,
        /// What the runtime said.
        reason: String,
    },
}

impl StreamError {
    pub(crate) fn kafka(operation: impl Into<String>, error: impl std::fmt::Display) -> StreamError {
        StreamError::Kafka {
            operation: operation.into(),
            reason: error.to_string(),
        }
    }
}

/// The number of partitions of a topic, or a clear error if the topic does not exist.
pub async fn topic_partitions(bootstrap: &str, topic: &str) -> Result<i32, StreamError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = base_config(bootstrap)
        .create()
        .map_err(|error| StreamError::kafka("creating a metadata client", error))?;
    let name = topic.to_owned();
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&name), lag::PROBE_TIMEOUT)
            .map_err(|error| StreamError::kafka(format!("reading metadata of {name} from {bootstrap} (is a broker there?)"), error))?;
        match metadata.topics().first() {
            Some(found) if found.error().is_none() && !found.partitions().is_empty() => Ok(found.partitions().len() as i32),
            _ => Err(StreamError::Config {
                reason: format!(
                    "topic {name} does not exist on {bootstrap}; create it (tradeflow topics apply) or name another with --topic"
                ),
            }),
        }
    })
    .await
    .map_err(|error| StreamError::Task {
        task: "metadata".into(),
        reason: error.to_string(),
    })?
}

/// How long [`leave_group`] gives a consumer to leave its group and close.
pub const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes `consumer` (named `name` in logs) out of its group and closes it, without letting
/// librdkafka's close hang the caller.
///
/// Dropping a consumer closes it, and the close serves the group's last rebalance inside
/// it, where `rd_kafka_assign` can wait forever for the group's thread (librdkafka issue
/// 4884, open for 2.12; seen here at the end of a pipelined run, a consumer task stuck in
/// its drop while the rest of the run waited for it). So a dynamic member first
/// unsubscribes and serves its own revocation in receives of its own, until it owns no
/// partition, which is the order that workaround gives; only then is it closed. A
/// static member (`group.instance.id`, `unsubscribe` false) skips that: unsubscribing sends
/// the LeaveGroup that a static member's close must not send, and its partitions would move
/// before its restart. Messages received meanwhile are neither applied nor committed: the
/// partitions' next owners read them from the committed offsets.
///
/// The close itself runs on a thread of its own. If it has not ended within
/// [`LEAVE_TIMEOUT`] (counted from the start), the caller goes on with a warning and the
/// thread is left to it: the group takes the member out after its session timeout, and the
/// process's exit ends the thread.
pub async fn leave_group<C>(consumer: std::sync::Arc<rdkafka::consumer::StreamConsumer<C>>, name: &str, unsubscribe: bool)
where
    C: rdkafka::consumer::ConsumerContext + 'static,
{
    use rdkafka::consumer::Consumer;
    let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
    if unsubscribe {
        consumer.unsubscribe();
        while consumer.assignment().is_ok_and(|assigned| assigned.count() > 0) && tokio::time::Instant::now() < deadline {
            // A revocation's callbacks run inside a receive; what it hands out is dropped.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), consumer.recv()).await;
        }
    }
    let (closed, done) = tokio::sync::oneshot::channel();
    let closing = std::thread::Builder::new().name(format!("close-{name}")).spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    if let Err(error) = closing {
        tracing::warn!(consumer = %name, %error, "starting the thread that closes the consumer; it was dropped on this one");
        return;
    }
    if tokio::time::timeout_at(deadline, done).await.is_err() {
        tracing::warn!(consumer = %name, timeout = ?LEAVE_TIMEOUT, "the consumer's close did not end in time (librdkafka waiting inside a rebalance); going on without it");
    }
}

/// How long a client waits for a broker's answer to a request before it gives up on the
/// connection and reconnects.
pub const SOCKET_TIMEOUT_MS: u32 = 10_000;

/// How often a client refreshes the cluster's metadata in full.
pub const METADATA_REFRESH_MS: u32 = 2_000;

/// Settings every client of this crate shares (and the bench's raw clients, so that the
/// limits are measured with the pipeline's own client settings).
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    // SASL/SSL settings of an external cluster, from the environment (never logged). Invalid
    // ones make creating the client fail with the reason, never fall back to plaintext.
    tradeflow_cluster::external::apply_env_security(&mut config);
    config
        .set("bootstrap.servers", bootstrap)
        // Loopback brokers answer fast; a short reconnect backoff makes broker restarts
        // cost little in experiments.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        // A request a broker never answers (a paused broker; after the mock cluster's
        // broker-down, a connection seen staying up but never answered) fails after this
        // long and the client reconnects. librdkafka's default, 60 s, outlasts the runs' stall timeout, so a
        // client that would have recovered was counted as losing what it had in flight.
        .set("socket.timeout.ms", SOCKET_TIMEOUT_MS.to_string())
        // A broker the cluster stops listing (the mock cluster leaves a broker that is down
        // out of its metadata, and librdkafka then forgets it) is learnt again on the next
        // full metadata refresh: every few seconds here, not librdkafka's 5 minutes.
        .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS.to_string());
    // librdkafka's own debug contexts (for example `cgrp,topic`), for chasing broker
    // behaviour; its lines arrive as logs of target `librdkafka`.
    if let Ok(contexts) = std::env::var("TRADEFLOW_KAFKA_DEBUG")
        && !contexts.is_empty()
    {
        config.set("debug", contexts);
    }
    config
}
