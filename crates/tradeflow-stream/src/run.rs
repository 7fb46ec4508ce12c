//! A whole stream run: topics, the balance service's consumers, the open-loop publisher,
//! the fault plan, lag sampling, the checker and the record.

use crate::fleet::{Fleet, FleetConfig};
use crate::lag::{self, LagProbe};
use crate::publisher::{Deliveries, Delivery, Publisher, PublisherConfig};
use crate::service::{CommitPolicy, ServiceCounters};
use crate::{StreamError, dlq};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::{
    Drain, DrainWatch, FaultRecord, LagSample, ProcessStats, RunProgress, RunRecord, check_workload, duration_and_throughput,
};
use tradeflow_cluster::plan::{Action, FaultPlan, ServiceFault};
use tradeflow_cluster::{Cluster, ClusterError, Fault, MOCK_PARTITION_RETAINED_MB};
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
    /// What experiments change: the service's policies, faults, a cutover.
    pub scenario: Scenario,
}

/// What experiments and property tests change about a run. The default is the pipeline
/// as it should be built, with no faults.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// When the balance service commits offsets.
    pub commit: CommitPolicy,
    /// Whether bad messages go to the dead-letter topic.
    pub dead_letter: bool,
    /// Faults to apply, at times counted from the start of publishing.
    pub plan: FaultPlan,
    /// A switch to another topic partway through the workload.
    pub cutover: Option<Cutover>,
    /// Replication factor of the run's topics; `None`: the cluster's own (3 on the
    /// three-node Kafka cluster, 1 elsewhere).
    pub replication_factor: Option<i32>,
    /// Configs of the run's trades topics (an experiment's `unclean.leader.election.enable`).
    pub topic_configs: Vec<(String, String)>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            commit: CommitPolicy::AfterDatabase,
            dead_letter: true,
            plan: FaultPlan::none(),
            cutover: None,
            replication_factor: None,
            topic_configs: Vec::new(),
        }
    }
}

/// A move of the publisher to another topic (with more partitions, so that accounts map
/// to other partitions) before the event `at_event`. A second consumer group, already
/// running, consumes the new topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutover {
    /// The new topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Index of the first event published to the new topic.
    pub at_event: usize,
    /// How the switch is made.
    pub runbook: Runbook,
}

/// How a cutover is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runbook {
    /// Switch the publisher at once; whatever the old topic still holds is applied
    /// whenever its consumers get to it, possibly after newer events of the same account.
    Naive,
    /// Stop publishing, wait until the old topic is fully applied, then switch.
    DrainThenSwitch,
}

/// Default partitions of the trades topic (overpartitioned from the start).
pub const PARTITIONS_DEFAULT: i32 = 12;
/// Default consumers of the balance service.
pub const CONSUMERS_DEFAULT: u32 = 3;
/// Default most messages applied in one database transaction.
pub const BATCH_SIZE_DEFAULT: usize = 500;
/// Default time a consumer waits to fill a batch.
pub const FILL_WAIT_DEFAULT: Duration = Duration::from_millis(5);
/// Default time the run waits for a lag that does not shrink.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl StreamOptions {
    /// The pipeline as it should be built, for `workload`: topic `trades` with 12
    /// partitions, 3 consumers, the publisher's defaults, batches of up to 500 filled for at
    /// most 5 ms, a 30 s stall timeout, no metrics, no faults. Callers change what differs.
    pub fn new(workload: WorkloadConfig) -> StreamOptions {
        StreamOptions {
            workload,
            topic: "trades".into(),
            partitions: PARTITIONS_DEFAULT,
            consumers: CONSUMERS_DEFAULT,
            publisher: PublisherConfig::default(),
            batch_size: BATCH_SIZE_DEFAULT,
            fill_wait: FILL_WAIT_DEFAULT,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
            metrics: None,
            scenario: Scenario::default(),
        }
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), StreamError> {
        let reason = if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            format!("partitions must be 1..={PARTITIONS_MAX}, got {}", self.partitions)
        } else if self.consumers == 0 || self.consumers > CONSUMERS_MAX {
            format!("consumers must be 1..={CONSUMERS_MAX}, got {}", self.consumers)
        } else if self.publisher.batch_max == 0 {
            "the producer batch must hold at least one message".to_owned()
        } else if self.publisher.in_flight_max == 0 || (self.publisher.idempotence && self.publisher.in_flight_max > 5) {
            format!(
                "requests in flight must be 1..=5 with idempotence (1 or more without), got {}",
                self.publisher.in_flight_max
            )
        } else if self.publisher.idempotence && self.publisher.acks != crate::publisher::Acks::All {
            "idempotence needs acks=all; turn it off to publish with acks=1".to_owned()
        } else if self.scenario.replication_factor.is_some_and(|factor| !(1..=5).contains(&factor)) {
            format!("the replication factor must be 1..=5, got {:?}", self.scenario.replication_factor)
        } else if let Some(cutover) = self
            .scenario
            .cutover
            .as_ref()
            .filter(|cutover| cutover.topic == self.topic || !(1..=PARTITIONS_MAX).contains(&cutover.partitions))
        {
            format!(
                "a cutover needs another topic with 1..={PARTITIONS_MAX} partitions, got {} with {}",
                cutover.topic, cutover.partitions
            )
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

/// Runs the workload through Kafka on `cluster` into `store` (emptied first), applies the
/// scenario's faults, and checks the result. Each consumer group is new for the run and
/// starts at its topic's current end, so a topic that already holds messages does not
/// leak into the run.
pub async fn run(
    store: &Store,
    cluster: &Cluster,
    options: &StreamOptions,
    progress: &watch::Sender<RunProgress>,
) -> Result<RunRecord, StreamError> {
    options.validate()?;
    let scenario = &options.scenario;
    for fault in scenario.plan.broker_faults() {
        cluster.supports(&fault)?;
    }
    let workload = Arc::new(Workload::generate(&options.workload)?);
    store.reset().await?;
    let mut topics = vec![(options.topic.clone(), options.partitions)];
    if let Some(cutover) = &scenario.cutover {
        topics.push((cutover.topic.clone(), cutover.partitions));
    }
    let layout = TopicLayout {
        topics: topics.clone(),
        replication_factor: scenario.replication_factor.unwrap_or_else(|| cluster.replication_factor()),
        configs: scenario.topic_configs.clone(),
    };
    ensure_topics(cluster, &layout).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let run_id = uuid_like();
    let fleet_config = |topic: &str, group: String| FleetConfig {
        bootstrap: bootstrap.clone(),
        topic: topic.to_owned(),
        group,
        batch_size: options.batch_size,
        fill_wait: options.fill_wait,
        commit: scenario.commit,
        dead_letter: scenario.dead_letter,
    };
    let group = format!("tradeflow-balances-{run_id}");
    start_group_at_end(&bootstrap, &options.topic, &group, options.partitions).await?;
    // The publisher comes up while the group forms: an idempotent producer sends nothing
    // until it has its producer id, and made after the group it held the first events of
    // every run back by up to half a second (a p99 of 500 ms on short runs).
    let deliveries = Arc::new(Deliveries::new(workload.events.len()));
    let publisher = Publisher::new(&bootstrap, &options.topic, &options.publisher, deliveries.clone())?;
    let statements_before = store.statements();
    let process_before = ProcessStats::current();
    let mut fleet = Fleet::start(store.clone(), fleet_config(&options.topic, group.clone()), options.consumers);
    let next_fleet = match &scenario.cutover {
        Some(cutover) => {
            let next_group = format!("tradeflow-balances-{run_id}-next");
            start_group_at_end(&bootstrap, &cutover.topic, &next_group, cutover.partitions).await?;
            Some(Fleet::start(
                store.clone(),
                fleet_config(&cutover.topic, next_group),
                options.consumers,
            ))
        }
        None => None,
    };
    let wanted = topics.iter().map(|(_, partitions)| i64::from(*partitions)).sum();
    wait_for_assignment(wanted, || {
        fleet.counters.assigned_partitions.load(Ordering::Relaxed)
            + next_fleet
                .as_ref()
                .map_or(0, |next| next.counters.assigned_partitions.load(Ordering::Relaxed))
    })
    .await;

    let start = Instant::now();
    let start_ns = now_ns();
    let intended_at = |partition: i32, offset: i64| {
        let scheduled = workload.events.get(deliveries.event_at(partition, offset)?)?;
        Some(start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX)))
    };
    let switch = scenario.cutover.clone().map(|cutover| Switch {
        cutover,
        old_applied: fleet.counters.clone(),
        switched_at_ms: Arc::new(AtomicU64::new(0)),
        drain_wait_ms: Arc::new(AtomicU64::new(0)),
    });
    let switched = switch
        .as_ref()
        .map(|switch| (switch.switched_at_ms.clone(), switch.drain_wait_ms.clone()));
    let publishing = tokio::spawn(publish(publisher, workload.clone(), start, start_ns, switch));

    let probe = Arc::new(LagProbe::new(&bootstrap, &options.topic, &group, options.partitions)?);
    let total = workload.events.len() as u64;
    let mut publishing = Some(publishing);
    let mut lag_samples: Vec<LagSample> = Vec::new();
    let mut last_lag_sample = Instant::now();
    let mut lag_probing: Option<JoinHandle<Result<Vec<tradeflow_check::PartitionLag>, StreamError>>> = None;
    let mut watch = DrainWatch::new(options.stall_timeout);
    let timeline = scenario.plan.timeline();
    let mut next_step = 0;
    let mut faults: Vec<FaultRecord> = Vec::new();
    // Poison is published beside the loop (index into `faults`, task): its delivery waits
    // for a broker that may be paused by an earlier step, whose undo must not wait with it.
    let mut poisoning: Vec<(usize, JoinHandle<Result<(), String>>)> = Vec::new();
    let poison_key = workload
        .accounts
        .first()
        .map(|account| account.id.as_str().to_owned())
        .unwrap_or_default();
    // A counter over both fleets (the second exists during a cutover).
    let fleets_sum = |fleet: &Fleet, next_fleet: &Option<Fleet>, read: fn(&ServiceCounters) -> u64| {
        read(&fleet.counters) + next_fleet.as_ref().map_or(0, |next| read(&next.counters))
    };
    loop {
        let tick = tokio::time::sleep(PROGRESS_INTERVAL);
        match timeline.get(next_step) {
            Some((at, _)) => {
                tokio::select! {
                    _ = tick => {}
                    _ = tokio::time::sleep_until((start + *at).into()) => {}
                }
            }
            None => tick.await,
        }
        while let Some((at, action)) = timeline.get(next_step).filter(|(at, _)| start.elapsed() >= *at) {
            next_step += 1;
            tracing::info!(at_ms = at.as_millis() as u64, %action, "applying a planned fault");
            let outcome = match action {
                Action::Broker(fault) => apply_broker_fault(cluster, fault, &layout).await,
                Action::Service(ServiceFault::Poison { count }) => {
                    let (bootstrap, topic, key, count) = (bootstrap.clone(), options.topic.clone(), poison_key.clone(), *count);
                    let task = tokio::spawn(async move {
                        dlq::publish_poison(&bootstrap, &topic, &key, count)
                            .await
                            .map_err(|error| error.to_string())
                    });
                    poisoning.push((faults.len(), task));
                    Ok(None)
                }
                Action::Service(fault) => apply_service_fault(fault, &mut fleet).map(|()| None),
            };
            if let Err(error) = &outcome {
                tracing::warn!(%action, %error, "a planned fault could not be applied");
            }
            let (effect, error) = match outcome {
                Ok(effect) => (effect, None),
                Err(error) => (None, Some(error)),
            };
            faults.push(FaultRecord {
                at_ms: start.elapsed().as_millis() as u64,
                fault: action.to_string(),
                error,
                effect,
            });
        }
        let acked = deliveries.acked();
        let applied = fleets_sum(&fleet, &next_fleet, |counters| counters.applied.load(Ordering::Relaxed));
        progress.send_replace(RunProgress {
            total,
            emitted: acked,
            applied,
            backlog: acked.saturating_sub(applied),
        });
        // The probe runs beside the loop: against a broker that is down it waits its whole
        // timeout, and the fault plan must not wait with it.
        if lag_probing.is_none() && last_lag_sample.elapsed() >= LAG_INTERVAL {
            last_lag_sample = Instant::now();
            let probe = probe.clone();
            lag_probing = Some(tokio::task::spawn_blocking(move || probe.probe()));
        }
        if lag_probing.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(probing) = lag_probing.take()
        {
            let partitions = probing.await.map_err(|error| StreamError::Task {
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
        // Unique events applied, not messages processed: redeliveries and dead letters
        // would otherwise count towards "everything acknowledged is applied". Messages the
        // broker deleted before they were read will never come: waiting for them would
        // only end in the stall timeout.
        let source_done = publishing.is_none() && next_step >= timeline.len() && poisoning.iter().all(|(_, task)| task.is_finished());
        match watch.observe(
            source_done,
            acked,
            applied + fleets_sum(&fleet, &next_fleet, |counters| counters.skipped.load(Ordering::Relaxed)),
        ) {
            Drain::Running => {}
            Drain::Drained => break,
            Drain::Stalled => {
                tracing::warn!(
                    applied,
                    acked,
                    "lag did not shrink for {:?}; stopping and reporting what is unapplied as lost",
                    options.stall_timeout
                );
                break;
            }
        }
    }
    for (index, task) in poisoning {
        let outcome = task.await.unwrap_or_else(|error| Err(format!("poison task: {error}")));
        if let (Err(error), Some(record)) = (outcome, faults.get_mut(index)) {
            tracing::warn!(fault = %record.fault, %error, "a planned fault could not be applied");
            record.error = Some(error);
        }
    }
    attach_observations(&mut faults, cluster.observations());
    let counters = fleet.counters.clone();
    let mut latency = fleet.finish().await?;
    let next_counters = next_fleet.as_ref().map(|next| next.counters.clone());
    if let Some(next) = next_fleet {
        latency.merge(&next.finish().await?);
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

    let last_commit_ns = counters
        .last_commit_ns
        .load(Ordering::Relaxed)
        .max(next_counters.as_ref().map_or(0, |next| next.last_commit_ns.load(Ordering::Relaxed)));
    let (duration_s, throughput_per_s) = duration_and_throughput(start_ns, last_commit_ns, applied);
    let sum = |read: fn(&ServiceCounters) -> u64| read(&counters) + next_counters.as_deref().map_or(0, read);
    let skipped = sum(|counters| counters.skipped.load(Ordering::Relaxed));
    if skipped > 0 {
        tracing::error!(
            skipped,
            "the broker deleted {skipped} messages before the balance service read them (retention; librdkafka's mock cluster keeps {MOCK_PARTITION_RETAINED_MB} MB per partition); the checker counts their events as lost. Lower the offered rate or add consumers, so that the lag stays below retention"
        );
    }
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
            "acks": options.publisher.acks.as_str(),
            "replication_factor": layout.replication_factor,
            "topic_configs": serde_json::Value::Object(layout.configs.iter().map(|(key, value)| (key.clone(), value.clone().into())).collect()),
            "delivery_errors": deliveries.failure_reasons(),
            "enable_idempotence": options.publisher.idempotence,
            "max_in_flight": options.publisher.in_flight_max,
            "commit_policy": scenario.commit.as_str(),
            "dead_letter": scenario.dead_letter,
            "accounts": workload_config.accounts,
            "rate_per_s": workload_config.rate_per_s,
            "profile": workload_config.profile.as_str(),
            "acknowledged": deliveries.acked(),
            "delivery_failed": deliveries.failed(),
            "dead_lettered": sum(|counters| counters.dead_lettered.load(Ordering::Relaxed)),
            "redelivered": sum(|counters| counters.duplicates.load(Ordering::Relaxed)),
            "crashes": sum(|counters| counters.crashes.load(Ordering::Relaxed)),
            "poison_retries": sum(|counters| counters.poison_retries.load(Ordering::Relaxed)),
            "skipped_by_broker": skipped,
            "rebalances": sum(|counters| counters.rebalances.load(Ordering::Relaxed)),
            "cutover": scenario.cutover.as_ref().map(|cutover| serde_json::json!({
                "topic": cutover.topic,
                "partitions": cutover.partitions,
                "at_event": cutover.at_event,
                "runbook": cutover.runbook,
                "switched_at_ms": switched.as_ref().map(|(at, _)| at.load(Ordering::Relaxed)),
                "drain_wait_ms": switched.as_ref().map(|(_, wait)| wait.load(Ordering::Relaxed)),
            })),
            "plan": scenario.plan,
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
        faults,
    })
}

/// The run's topics (name, partitions), their replication factor and configs.
struct TopicLayout {
    topics: Vec<(String, i32)>,
    replication_factor: i32,
    configs: Vec<(String, String)>,
}

/// Creates the run's topics and their dead-letter topics (again after a broker restart:
/// a broker with memory storage comes back empty).
async fn ensure_topics(cluster: &Cluster, layout: &TopicLayout) -> Result<(), ClusterError> {
    let own_min_insync = layout
        .configs
        .iter()
        .find(|(key, _)| key == tradeflow_cluster::topics::MIN_INSYNC_REPLICAS)
        .and_then(|(_, value)| value.parse::<i32>().ok());
    if let Some(min_insync) = own_min_insync
        .or(cluster.min_insync_replicas())
        .filter(|min| layout.replication_factor < *min)
    {
        return Err(ClusterError::Unsupported {
            backend: cluster.backend(),
            reason: format!(
                "replication factor {} is below min.insync.replicas {min_insync}: every acks=all write would fail with NOT_ENOUGH_REPLICAS; set min.insync.replicas on the topic",
                layout.replication_factor
            ),
        });
    }
    for (topic, partitions) in &layout.topics {
        cluster
            .ensure_topic_with(topic, *partitions, layout.replication_factor, &layout.configs)
            .await?;
        cluster
            .ensure_topic(&dlq::dlq_topic(topic), 1, cluster.replication_factor())
            .await?;
    }
    Ok(())
}

/// Injects a broker fault; returns what it did, where the backend can tell.
async fn apply_broker_fault(cluster: &Cluster, fault: &Fault, layout: &TopicLayout) -> Result<Option<String>, String> {
    let effect = cluster.inject(fault).await.map_err(|error| error.to_string())?;
    if fault.restarts_broker() {
        ensure_topics(cluster, layout).await.map_err(|error| error.to_string())?;
    }
    Ok(effect)
}

/// Adds what the backend saw a fault lead to (a failover it waited for beside the run) to
/// the effect of the first applied fault of that name still without one.
fn attach_observations(faults: &mut [FaultRecord], observations: Vec<(String, String)>) {
    let mut observed = vec![false; faults.len()];
    for (fault, seen) in observations {
        // A broker step is recorded as its action: "broker: " and the fault.
        let is_it = |record: &FaultRecord| record.error.is_none() && record.fault.strip_prefix("broker: ") == Some(fault.as_str());
        if let Some((index, record)) = faults
            .iter_mut()
            .enumerate()
            .find(|(index, record)| !observed[*index] && is_it(record))
        {
            observed[index] = true;
            record.effect = Some(match record.effect.take() {
                Some(effect) => format!("{effect}; {seen}"),
                None => seen,
            });
        }
    }
}

/// Applies a service fault to the fleet (poison is published by the caller, beside the
/// run loop).
fn apply_service_fault(fault: &ServiceFault, fleet: &mut Fleet) -> Result<(), String> {
    let done = match fault {
        ServiceFault::Crash { consumer } => fleet.crash(*consumer),
        ServiceFault::Restart { consumer } => fleet.restart(*consumer),
        ServiceFault::Leave { consumer } => fleet.leave(*consumer),
        ServiceFault::Join => fleet.join().is_some(),
        ServiceFault::HoldAll => {
            fleet.hold_all(true);
            true
        }
        ServiceFault::ReleaseAll => {
            fleet.hold_all(false);
            true
        }
        ServiceFault::Poison { .. } => return Err("poison is published by the run loop".into()),
    };
    if done {
        Ok(())
    } else {
        Err(format!("no consumer in the state \"{fault}\" needs ({} running)", fleet.running()))
    }
}

/// The publisher's side of a cutover.
struct Switch {
    cutover: Cutover,
    /// The old topic's consumers, to see when they have applied everything.
    old_applied: Arc<ServiceCounters>,
    switched_at_ms: Arc<AtomicU64>,
    drain_wait_ms: Arc<AtomicU64>,
}

/// Most time the drain-then-switch runbook waits for the old topic to be applied.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The publisher: sends each event at its intended send time (open loop), then waits for
/// every delivery report. With a cutover, it moves to the new topic before the cutover's
/// event, after draining the old one if the runbook says so.
async fn publish(
    publisher: Publisher,
    workload: Arc<Workload>,
    start: Instant,
    start_ns: i64,
    switch: Option<Switch>,
) -> Result<(), StreamError> {
    let mut topic: Option<String> = None;
    for (index, scheduled) in workload.events.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_nanos(scheduled.intended_offset_ns)).into()).await;
        if let Some(switch) = switch.as_ref().filter(|switch| switch.cutover.at_event == index) {
            if switch.cutover.runbook == Runbook::DrainThenSwitch {
                let waiting = Instant::now();
                publisher.wait_for_reports(DRAIN_TIMEOUT).await?;
                let acked = publisher.deliveries().acked();
                while switch.old_applied.applied.load(Ordering::Relaxed) < acked && waiting.elapsed() < DRAIN_TIMEOUT {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                switch.drain_wait_ms.store(waiting.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            switch.switched_at_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            tracing::info!(event = index, topic = %switch.cutover.topic, runbook = ?switch.cutover.runbook, "publisher cuts over");
            topic = Some(switch.cutover.topic.clone());
        }
        let intended_at_ns = start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX));
        publisher
            .publish_to(topic.as_deref(), index, &scheduled.event, intended_at_ns)
            .await?;
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

/// Waits until the groups have handed out every partition (`wanted` in all), so that the
/// group join is not charged to the first events' latency.
async fn wait_for_assignment(wanted: i64, assigned: impl Fn() -> i64) {
    let deadline = Instant::now() + ASSIGNMENT_TIMEOUT;
    while assigned() < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Consumers beyond the partition count stay idle; a rebalance settles in a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A unique suffix for group names: time and process id.
fn uuid_like() -> String {
    format!("{:x}-{:x}", now_ns(), std::process::id())
}
