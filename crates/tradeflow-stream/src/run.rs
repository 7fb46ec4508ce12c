//! A whole stream run: topics, the balance service's consumers, the open-loop publisher,
//! lag sampling, the checker and the record.

use crate::lag::{self, LagProbe};
use crate::publisher::{Deliveries, Delivery, Publisher, PublisherConfig};
use crate::service::{ServiceConfig, ServiceCounters, run_service};
use crate::{StreamError, dlq};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::{
    Drain, DrainWatch, LagSample, LatencyRecorder, ProcessStats, RunProgress, RunRecord, check_workload, duration_and_throughput,
};
use tradeflow_cluster::Cluster;
use tradeflow_domain::{Workload, WorkloadConfig};
use tradeflow_store::{Store, now_ns};

/// How often progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How often lag is sampled.
pub const LAG_INTERVAL: Duration = Duration::from_millis(500);
/// How long the run waits for every consumer to get partitions before it starts the clock.
pub const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most partitions a run may create.
pub const PARTITIONS_MAX: i32 = 1_024;
/// Most consumers a run may start.
pub const CONSUMERS_MAX: u32 = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The workload.
    pub workload: WorkloadConfig,
    /// The topic of trade events.
    pub topic: String,
    /// Its partitions (created if missing).
    pub partitions: i32,
    /// Consumers of the balance service, in this process.
    pub consumers: u32,
    /// The producer's knobs.
    pub publisher: PublisherConfig,
    /// Most messages per database transaction in the balance service.
    pub batch_size: usize,
    /// How long a consumer waits to fill a batch.
    pub fill_wait: Duration,
    /// How long the run waits, once every event is published, for lag that does not
    /// shrink before it gives up; what is unapplied then counts as lost.
    pub stall_timeout: Duration,
    /// Where to publish lag as Prometheus text, if anywhere.
    pub metrics: Option<crate::metrics::MetricsText>,
}

impl StreamOptions {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), StreamError> {
        let reason = if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            format!("partitions must be 1..={PARTITIONS_MAX}, got {}", self.partitions)
        } else if self.consumers == 0 || self.consumers > CONSUMERS_MAX {
            format!("consumers must be 1..={CONSUMERS_MAX}, got {}", self.consumers)
        } else if self.publisher.batch_max == 0 {
            "the producer batch must hold at least one message".to_owned()
        } else {
            return Ok(());
        };
        Err(StreamError::Config { reason })
    }

    /// A short description, for tables and records.
    pub fn label(&self) -> String {
        format!(
            "stream partitions={} consumers={} linger={}ms batch={}",
            self.partitions, self.consumers, self.publisher.linger_ms, self.batch_size
        )
    }
}

/// Runs the workload through Kafka on `cluster` into `store` (emptied first) and checks
/// the result. The consumer group is new for each run and starts at the topic's current
/// end, so a topic that already holds messages does not leak into the run.
pub async fn run(
    store: &Store,
    cluster: &Cluster,
    options: &StreamOptions,
    progress: &watch::Sender<RunProgress>,
) -> Result<RunRecord, StreamError> {
    options.validate()?;
    let workload = Arc::new(Workload::generate(&options.workload)?);
    store.reset().await?;
    cluster.ensure_topic(&options.topic, options.partitions, 1).await?;
    cluster.ensure_topic(&dlq::dlq_topic(&options.topic), 1, 1).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let group = format!("tradeflow-balances-{}", uuid_like());
    start_group_at_end(&bootstrap, &options.topic, &group, options.partitions).await?;

    let statements_before = store.statements();
    let process_before = ProcessStats::current();
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let consumers: Vec<JoinHandle<Result<LatencyRecorder, StreamError>>> = (0..options.consumers)
        .map(|index| {
            let config = ServiceConfig {
                bootstrap: bootstrap.clone(),
                topic: options.topic.clone(),
                group: group.clone(),
                name: format!("consumer-{index}"),
                batch_size: options.batch_size,
                fill_wait: options.fill_wait,
                session_timeout_ms: 6_000,
            };
            tokio::spawn(run_service(store.clone(), config, stop_receiver.clone(), counters.clone()))
        })
        .collect();
    wait_for_assignment(&counters, options).await;

    let deliveries = Arc::new(Deliveries::new(workload.events.len()));
    let publisher = Publisher::new(&bootstrap, &options.topic, &options.publisher, deliveries.clone())?;
    let start = Instant::now();
    let start_ns = now_ns();
    let intended_at = |partition: i32, offset: i64| {
        let scheduled = workload.events.get(deliveries.event_at(partition, offset)?)?;
        Some(start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX)))
    };
    let publishing = tokio::spawn(publish(publisher, workload.clone(), start, start_ns));

    let probe = Arc::new(LagProbe::new(&bootstrap, &options.topic, &group, options.partitions)?);
    let total = workload.events.len() as u64;
    let mut publishing = Some(publishing);
    let mut lag_samples: Vec<LagSample> = Vec::new();
    let mut last_lag_sample = Instant::now();
    let mut watch = DrainWatch::new(options.stall_timeout);
    loop {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let acked = deliveries.acked();
        let processed = counters.processed();
        progress.send_replace(RunProgress {
            total,
            emitted: acked,
            applied: counters.applied.load(Ordering::Relaxed),
            backlog: acked.saturating_sub(processed),
        });
        if last_lag_sample.elapsed() >= LAG_INTERVAL {
            last_lag_sample = Instant::now();
            let probe = probe.clone();
            let partitions = tokio::task::spawn_blocking(move || probe.probe())
                .await
                .map_err(|error| StreamError::Task {
                    task: "lag probe".into(),
                    reason: error.to_string(),
                })?;
            match partitions {
                Ok(partitions) => {
                    let sample = lag::sample(start.elapsed().as_secs_f64(), partitions, intended_at, now_ns());
                    if let Some(metrics) = &options.metrics
                        && let Ok(mut text) = metrics.lock()
                    {
                        *text = lag::prometheus(&sample, &options.topic, &group);
                    }
                    lag_samples.push(sample);
                }
                Err(error) => tracing::warn!(%error, "lag probe failed"),
            }
        }
        if publishing.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = publishing.take()
        {
            handle.await.map_err(|error| StreamError::Task {
                task: "publisher".into(),
                reason: error.to_string(),
            })??;
        }
        match watch.observe(publishing.is_none(), acked, processed) {
            Drain::Running => {}
            Drain::Drained => break,
            Drain::Stalled => {
                tracing::warn!(
                    processed,
                    acked,
                    "lag did not shrink for {:?}; stopping and reporting what is unapplied as lost",
                    options.stall_timeout
                );
                break;
            }
        }
    }
    stop.send_replace(true);
    let mut latency = LatencyRecorder::new();
    for (index, handle) in consumers.into_iter().enumerate() {
        let recorder = handle.await.map_err(|error| StreamError::Task {
            task: format!("consumer-{index}"),
            reason: error.to_string(),
        })??;
        latency.merge(&recorder);
    }
    if let Ok(Ok(partitions)) = tokio::task::spawn_blocking(move || probe.probe()).await {
        lag_samples.push(lag::sample(start.elapsed().as_secs_f64(), partitions, intended_at, now_ns()));
    }

    let db_statements = store.statements() - statements_before;
    let process = ProcessStats::current().since(&process_before);
    // What the broker acknowledged had to be applied; what it never acknowledged did not.
    let reports = deliveries.reports();
    let (check, applied) = check_workload(store, &workload, |index| {
        matches!(reports.get(index), Some(Some(Delivery::Acked { .. })))
    })
    .await?;

    let last_commit_ns = counters.last_commit_ns.load(Ordering::Relaxed);
    let (duration_s, throughput_per_s) = duration_and_throughput(start_ns, last_commit_ns, applied);
    let workload_config = &options.workload;
    Ok(RunRecord {
        seed: workload_config.seed,
        architecture: "stream".into(),
        label: options.label(),
        store: store.kind().as_str().into(),
        broker: Some(cluster.backend().into()),
        config: serde_json::json!({
            "topic": options.topic,
            "partitions": options.partitions,
            "consumers": options.consumers,
            "linger_ms": options.publisher.linger_ms,
            "batch_max": options.publisher.batch_max,
            "batch_size": options.batch_size,
            "fill_wait_ms": options.fill_wait.as_millis() as u64,
            "acks": "all",
            "enable_idempotence": true,
            "accounts": workload_config.accounts,
            "rate_per_s": workload_config.rate_per_s,
            "profile": workload_config.profile.as_str(),
            "acknowledged": deliveries.acked(),
            "delivery_failed": deliveries.failed(),
            "dead_lettered": counters.dead_lettered.load(Ordering::Relaxed),
            "rebalances": counters.rebalances.load(Ordering::Relaxed),
        }),
        events: total,
        applied,
        duration_s,
        throughput_per_s,
        latency_ms: latency.summary(),
        db_statements,
        process,
        check,
        lag: lag_samples,
        backlog: Vec::new(),
    })
}

/// The publisher: sends each event at its intended send time (open loop), then waits for
/// every delivery report.
async fn publish(publisher: Publisher, workload: Arc<Workload>, start: Instant, start_ns: i64) -> Result<(), StreamError> {
    for (index, scheduled) in workload.events.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_nanos(scheduled.intended_offset_ns)).into()).await;
        let intended_at_ns = start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX));
        publisher.publish(index, &scheduled.event, intended_at_ns).await?;
    }
    publisher.flush().await.map(|_| ())
}

/// Commits the topic's current end offsets for a new group, so that it starts there.
async fn start_group_at_end(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> Result<(), StreamError> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = crate::base_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|error| StreamError::kafka("creating the offset initializer", error))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut offsets = TopicPartitionList::new();
        for partition in 0..partitions {
            let (_, end) = consumer
                .fetch_watermarks(&topic, partition, lag::PROBE_TIMEOUT)
                .map_err(|error| StreamError::kafka(format!("reading the end of {topic}[{partition}]"), error))?;
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(end))
                .map_err(|error| StreamError::kafka("building the offset list", error))?;
        }
        consumer
            .assign(&offsets)
            .map_err(|error| StreamError::kafka("assigning partitions", error))?;
        consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|error| StreamError::kafka(format!("committing start offsets of {topic}"), error))
    })
    .await
    .map_err(|error| StreamError::Task {
        task: "offset initializer".into(),
        reason: error.to_string(),
    })?
}

/// Waits until the group has handed out every partition (or every consumer has one), so
/// that the group join is not charged to the first events' latency.
async fn wait_for_assignment(counters: &ServiceCounters, options: &StreamOptions) {
    let wanted = i64::from(options.partitions);
    let deadline = Instant::now() + ASSIGNMENT_TIMEOUT;
    while counters.assigned_partitions.load(Ordering::Relaxed) < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Consumers beyond the partition count stay idle; a rebalance settles in a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A unique suffix for group names: time and process id.
fn uuid_like() -> String {
    format!("{:x}-{:x}", now_ns(), std::process::id())
}
