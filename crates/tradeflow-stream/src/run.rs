//! A whole stream run: topics, the balance service's consumers, the open-loop publisher,
//! the fault plan, lag sampling, the checker and the record.

use crate::StreamError;
use crate::cutover::{Switch, publish};
use crate::fleet::{Fleet, FleetConfig};
use crate::lag::{self, LagProbe};
use crate::notifications::NotificationGroup;
use crate::outage::DatabaseOutage;
use crate::publisher::{Deliveries, Publisher, PublisherConfig};
use crate::service::{CommitPolicy, ServiceCounters};
use crate::timeline::{FaultTimeline, PoisonTarget, TopicLayout, ensure_topics};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::orders::OrdersDuringRun;
use tradeflow_check::{Drain, DrainWatch, LagSample, ProcessStats, RunProgress, RunRecord, check_workload, duration_and_throughput};
use tradeflow_cluster::plan::FaultPlan;
use tradeflow_cluster::{Cluster, MOCK_PARTITION_RETAINED_MB};
use tradeflow_domain::WorkloadConfig;
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
    /// How long a consumer lets applied batches' offsets gather before it commits them
    /// (`crate::service::COMMIT_INTERVAL_DEFAULT`; zero: after every batch).
    pub commit_interval: Duration,
    /// Whether each consumer fills its next batch while it applies one (pipelining; off by
    /// default, see `ServiceConfig::pipeline`).
    pub pipeline: bool,
    /// Whether the consumers of this process hand their batches to one group-commit writer,
    /// which applies those waiting together in one transaction (see
    /// `Store::group_committing`); off by default: each consumer runs its own.
    pub group_commit: bool,
    /// Each consumer's `fetch.wait.max.ms` ([`crate::FETCH_WAIT_MAX_MS`] by default).
    pub fetch_wait_max_ms: u32,
    /// How long the run waits, once every event is published, for lag that does not
    /// shrink before it gives up; what is unapplied then counts as lost.
    pub stall_timeout: Duration,
    /// Where to publish lag as Prometheus text, if anywhere.
    pub metrics: Option<crate::metrics::MetricsText>,
    /// Who judges each partition's lag status.
    pub lag_rule: crate::lag::LagRule,
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
    /// A pause before each batch's database transaction: a database under load, so that a
    /// fault lands while a batch is held (zero: none).
    pub apply_delay: Duration,
    /// Whether the balance service skips what the apply log holds; `Dedup::None` is the
    /// naive consumer of the idempotence lesson.
    pub dedup: tradeflow_store::Dedup,
    /// Whether the balance service drops a batch held while its partitions were revoked
    /// (off only for the lesson that shows what a zombie does without it).
    pub fencing: bool,
    /// The balance service's consumers as processes of their own, so that a crash is a
    /// SIGKILL from outside; `None`: tasks in this process.
    pub processes: Option<crate::process::ServiceProcesses>,
    /// The least time a kill waits after its process received the batch it dies holding (a
    /// seeded jitter is added; a kill asked for mid-batch waits for the next batch): long
    /// enough for an early commit to land, short of the database commit. Zero: at once if
    /// the process holds a batch.
    pub kill_after: Duration,
    /// Whether the balance service refuses a message not keyed by its account (off only
    /// for chapter 02, to show what a wrong key does to order).
    pub key_check: bool,
    /// Whether chapter 06's exercise decides what happens to a message that cannot be
    /// processed (instead of `dead_letter`).
    pub poison_exercise: bool,
    /// A second consumer group on the trades topic beside the balance service (the
    /// loose-coupling lesson); `None`: the balance service alone.
    pub notifications: Option<crate::notifications::Notifications>,
    /// Order requests a second asked of the balances table while the run goes (the
    /// order-placement lesson); `None`: none.
    pub orders_per_s: Option<f64>,
    /// How the order desk decides (chapter 14's exercise, or at once on the balance read).
    pub order_desk: tradeflow_check::orders::Desk,
    /// Events written to the store's outbox and relayed to Kafka, instead of published from
    /// memory (the outbox-relay lesson, `compare --source outbox`); `None`: from memory.
    pub outbox: Option<crate::outbox::Outbox>,
    /// How the balance service meets a failing database (the naive way only in the
    /// database-outage lesson).
    pub database_retry: crate::service::DatabaseRetry,
    /// The consumers' `max.poll.interval.ms`; `None`: the service's default.
    pub max_poll_interval_ms: Option<u32>,
    /// The `tradeflow` executable that holds a SQLite file's lock during a planned database
    /// outage (a process of its own); PostgreSQL's outage needs none.
    pub lock_holder: Option<std::path::PathBuf>,
    /// A producer upgraded to a new schema partway through (the schema-evolution lesson);
    /// `None`: every event in the oldest version that carries it, read by consumers of
    /// the newest.
    pub schema: Option<SchemaChange>,
    /// How much the consumers fetch ahead (bounded but in the consumer-memory lesson).
    pub prefetch: crate::service::Prefetch,
    /// Whether the consumers start only once every event is published and acknowledged:
    /// a backlog waiting for them (the consumer-memory lesson).
    pub backlog_first: bool,
    /// Whether chapter 17's exercise decides what the consumers do with a message of a
    /// newer version than they read.
    pub schema_exercise: bool,
    /// Whether each consumer has a `group.instance.id` (static membership: the
    /// stuck-consumer lesson).
    pub static_membership: bool,
    /// The consumers' `session.timeout.ms`; `None`: the fleet's default
    /// ([`crate::fleet::FLEET_SESSION_TIMEOUT_MS`]).
    pub session_timeout_ms: Option<u32>,
    /// Whether the run reads its topic back once it is over and counts what the log holds
    /// twice or out of order as duplicated and reordered (the producer-retries lesson on a
    /// broker that checks sequences): the producer's doing, whatever the consumers did.
    /// The balance service should then deduplicate (`Dedup::ApplyLog`), so that a consumer's
    /// redelivery after a rebalance is not counted as the producer's copy.
    pub audit_log: bool,
    /// Whether chapter 19's exercise says which partitions and offsets each "batch
    /// received" log line names.
    pub held_exercise: bool,
}

/// A schema change during a run: from the event at `from_event` on, the system of record
/// records every `fees_every`-th withdrawal as a `fee_charged` (version 2's new type) and
/// the producer writes `write`; the consumers read versions up to `consumers_read` until
/// a planned upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaChange {
    /// The first event the upgraded producer writes.
    pub from_event: usize,
    /// What it writes.
    pub write: crate::publisher::SchemaWrite,
    /// Every how many withdrawals from then on one is a fee instead.
    pub fees_every: usize,
    /// The newest version the consumers read at the start.
    pub consumers_read: u64,
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
            apply_delay: Duration::ZERO,
            processes: None,
            dedup: tradeflow_store::Dedup::ApplyLog,
            fencing: true,
            kill_after: Duration::ZERO,
            key_check: true,
            poison_exercise: false,
            notifications: None,
            orders_per_s: None,
            order_desk: tradeflow_check::orders::Desk::Plain,
            outbox: None,
            database_retry: crate::service::DatabaseRetry::Backoff,
            max_poll_interval_ms: None,
            lock_holder: None,
            schema: None,
            prefetch: crate::service::Prefetch::Bounded,
            backlog_first: false,
            schema_exercise: false,
            static_membership: false,
            session_timeout_ms: None,
            audit_log: false,
            held_exercise: false,
        }
    }
}

/// A move of the publisher to another topic before the event `at_event`: one with more
/// partitions on the same cluster (so that accounts map to other partitions), or a topic on
/// a second cluster (a migration). A second consumer group consumes the new topic, running
/// from the start or moved there as the runbook says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutover {
    /// The new topic.
    pub topic: String,
    /// Whether the new topic is on a second cluster of the run's backend, started for the
    /// run (mock and tansu only): the publisher and the new group connect to its bootstrap
    /// servers while the old group reads the first cluster.
    pub second_cluster: bool,
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
    /// Stop publishing, then switch when the learner's chapter 08 exercise says so.
    Exercise,
    /// Switch the publisher at once; the new group starts only once the old group's offset
    /// lag is zero after the switch (it read and applied the old topic's tail), and the old
    /// group stops then. The cost is a pause in applying, not in publishing.
    ProducerFirst,
    /// Switch the publisher at once; at the same moment the old group's members leave for
    /// the new topic and temporary consumers join the old group to drain it. The new group
    /// starts once the old group's offset lag is zero, and the temporary consumers stop.
    DrainConsumer,
    /// Switch the publisher at once; the new group starts, and the old one stops, when the
    /// learner's chapter 12 exercise says so (asked after each lag sample, from the start).
    MoveExercise,
}

impl Runbook {
    /// Whether the publisher stops and waits for the old topic before it switches.
    pub fn publisher_waits(self) -> bool {
        matches!(self, Runbook::DrainThenSwitch | Runbook::Exercise)
    }

    /// Whether the new group waits for the old group's lag to reach zero before it starts.
    pub fn new_group_waits(self) -> bool {
        matches!(self, Runbook::ProducerFirst | Runbook::DrainConsumer | Runbook::MoveExercise)
    }
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
            commit_interval: crate::service::COMMIT_INTERVAL_DEFAULT,
            pipeline: false,
            group_commit: false,
            fetch_wait_max_ms: crate::FETCH_WAIT_MAX_MS,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
            metrics: None,
            lag_rule: crate::lag::LagRule::Monitor,
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
        } else if let Some(cutover) = self.scenario.cutover.as_ref().filter(|cutover| {
            (cutover.topic == self.topic && !cutover.second_cluster) || !(1..=PARTITIONS_MAX).contains(&cutover.partitions)
        }) {
            format!(
                "a cutover needs another topic (or one on a second cluster) with 1..={PARTITIONS_MAX} partitions, got {} with {}",
                cutover.topic, cutover.partitions
            )
        } else if self.group_commit && self.scenario.processes.is_some() {
            "group commit merges the batches of consumers inside one process; consumers in processes of their own have nothing to merge"
                .to_owned()
        } else if let Some(outbox) = self.scenario.outbox
            && (self.scenario.cutover.is_some() || !(1..=crate::outbox::WRITERS_MAX).contains(&outbox.writers))
        {
            format!(
                "an outbox needs 1..={} writers and no cutover, got {} writers{}",
                crate::outbox::WRITERS_MAX,
                outbox.writers,
                if self.scenario.cutover.is_some() { " and a cutover" } else { "" }
            )
        } else {
            return Ok(());
        };
        Err(StreamError::Config { reason })
    }

    /// A short description, for tables and records.
    pub fn label(&self) -> String {
        format!(
            "stream partitions={} consumers={} linger={}ms batch={}{}{}",
            self.partitions,
            self.consumers,
            self.publisher.linger_ms,
            self.batch_size,
            match self.scenario.outbox {
                Some(outbox) => format!(" source=outbox writers={}", outbox.writers),
                None => String::new(),
            },
            if self.group_commit { " group-commit" } else { "" }
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
    for fault in options.scenario.plan.broker_faults() {
        cluster.supports(&fault)?;
    }
    let mut workload = tradeflow_store::spill::generate(&options.workload)?;
    if let Some(change) = options.scenario.schema {
        let fees = workload.charge_fees_from(change.from_event, change.fees_every);
        tracing::info!(
            from_event = change.from_event,
            fees,
            "the system of record records fees from here on (schema_version 2)"
        );
    }
    let workload = Arc::new(workload);
    store.reset().await?;
    let layout = TopicLayout::of(options, cluster).await?;
    ensure_topics(cluster, &layout).await?;
    let second = second_cluster(options, cluster, &layout).await?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let next_bootstrap = second.as_ref().map_or(bootstrap.as_str(), Cluster::bootstrap_servers).to_owned();
    let group = format!("tradeflow-balances-{}", uuid_like());
    start_group_at_end(&bootstrap, &options.topic, &group, options.partitions).await?;
    // The publisher comes up while the group forms: an idempotent producer sends nothing
    // until it has its producer id, and made after the group it held the first events of
    // every run back by up to half a second (a p99 of 500 ms on short runs).
    let deliveries = Arc::new(Deliveries::new(workload.events.len()));
    let mut publisher = Publisher::new(&bootstrap, &options.topic, &options.publisher, deliveries.clone())?;
    if let Some(change) = options.scenario.schema {
        publisher = publisher.writing(change.from_event, change.write);
    }
    let elsewhere = match (&second, &options.scenario.cutover) {
        (Some(second), Some(cutover)) => Some(Publisher::elsewhere(
            second.bootstrap_servers(),
            &cutover.topic,
            &options.publisher,
            deliveries.clone(),
        )?),
        _ => None,
    };
    let outage = if options.scenario.plan.has_database_faults() {
        Some(DatabaseOutage::prepare(store, options.scenario.lock_holder.as_ref(), options.workload.seed).await?)
    } else {
        None
    };
    let service_store = outage.as_ref().map_or_else(|| store.clone(), DatabaseOutage::service_store);
    let service_store = if options.group_commit {
        service_store.group_committing()
    } else {
        service_store
    };
    let before = (store.statements(), ProcessStats::current());
    let mut fleets = Fleets::start(&service_store, options, &bootstrap, &next_bootstrap, &group).await?;
    // The partitions of the groups running now (a new group that waits for the old one's
    // lag is not among them).
    let wanted = i64::from(options.partitions)
        + options
            .scenario
            .cutover
            .as_ref()
            .filter(|_| fleets.next.is_some())
            .map_or(0, |cutover| i64::from(cutover.partitions));
    if !options.scenario.backlog_first {
        wait_for_assignment(wanted, || {
            fleets.sum(|counters| counters.assigned_partitions.load(Ordering::Relaxed) as u64) as i64
        })
        .await;
    }
    // The first assignments are no evidence of a fault: rebalances are counted from here.
    let rebalances_before = fleets.sum(|counters| counters.rebalances.load(Ordering::Relaxed));
    let mut notifications = match options.scenario.notifications {
        Some(settings) => Some(NotificationGroup::start(&bootstrap, &options.topic, &group, options.partitions, settings).await?),
        None => None,
    };

    let (start, start_ns) = (Instant::now(), now_ns());
    if let Some(notifications) = &mut notifications {
        notifications.sample_from(start);
    }
    let intended_at = |partition: i32, offset: i64| {
        let scheduled = workload.events.get(deliveries.event_at_committed(partition, offset)?)?;
        Some(start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX)))
    };
    let switch = options
        .scenario
        .cutover
        .clone()
        .map(|cutover| Switch::new(cutover, fleets.main.counters.clone(), elsewhere));
    let switched = switch.as_ref().map(Switch::outcome);
    let outbox_counters = Arc::new(crate::outbox::OutboxCounters::default());
    let publishing = match options.scenario.outbox {
        Some(outbox) => tokio::spawn(crate::outbox::run(
            store.clone(),
            publisher,
            workload.clone(),
            (start, start_ns),
            outbox,
            outbox_counters.clone(),
        )),
        None => tokio::spawn(publish(publisher, workload.clone(), start, start_ns, switch)),
    };
    let orders = options
        .scenario
        .orders_per_s
        .map(|per_s| OrdersDuringRun::start(store.clone(), &workload, per_s, start, options.scenario.order_desk));
    let mut lag = LagSampler::new(LagProbe::new(&bootstrap, &options.topic, &group, options.partitions)?);
    let poison = PoisonTarget {
        bootstrap: bootstrap.clone(),
        topic: options.topic.clone(),
        key: workload
            .accounts
            .first()
            .map(|account| account.id.as_str().to_owned())
            .unwrap_or_default(),
    };
    let mut faults = FaultTimeline::new(&options.scenario.plan, poison, outage);
    let watching = Watching {
        options,
        cluster,
        layout: &layout,
        group: &group,
        deliveries: &deliveries,
        total: workload.events.len() as u64,
        start,
        switched: switched.as_ref(),
    };
    let ended = drive(&watching, &mut fleets, &mut faults, &mut lag, publishing, &intended_at, progress).await?;
    let orders = match orders {
        Some(orders) => Some(orders.finish(&workload).await),
        None => None,
    };
    // The slower group catches up on its own time, bounded like the balance service's.
    let notifications = match notifications {
        Some(group) => Some(group.finish(options.stall_timeout).await),
        None => None,
    };
    let counters = fleets.counters();
    counters.report_skipped();
    let latency = fleets.finish().await?;
    let crashed = counters.crashed();
    let (faults, outage) = faults.finish(cluster, &crashed).await;
    let lag = lag.finish(start, &intended_at).await;
    let (db_statements, process) = (
        store.statements() + outage.as_ref().map_or(0, DatabaseOutage::own_statements) - before.0,
        ProcessStats::current().since(&before.1),
    );
    // What the broker acknowledged had to be applied; what it never acknowledged did not.
    // From an outbox, every event had to be: each was committed to the system of record
    // (a write that failed ends the run), and the relay owes it to Kafka.
    let (mut check, applied) = check_workload(store, &workload, |index| {
        options.scenario.outbox.is_some() || deliveries.is_acked(index)
    })
    .await?;
    let log = if options.scenario.audit_log {
        let log = crate::log_audit::audit(&bootstrap, &options.topic, options.partitions).await?;
        check.duplicated += log.copies;
        check.reordered += log.out_of_order;
        if log.copies + log.out_of_order > 0 {
            check.verdict = tradeflow_check::history::Verdict::Fail;
        }
        Some(log)
    } else {
        None
    };
    let last_commit_ns = counters.max(|counters| counters.last_commit_ns.load(Ordering::Relaxed) as u64) as i64;
    let (duration_s, throughput_per_s) = duration_and_throughput(start_ns, last_commit_ns, applied);
    let mut config = crate::run_record::config(
        options,
        &layout,
        &deliveries,
        &counters,
        switched.as_ref(),
        rebalances_before,
        notifications.as_ref(),
    );
    if let Some(object) = config.as_object_mut() {
        object.insert("ended".into(), ended.as_str().into());
        // Acknowledged events at or past the log end the broker served at the last lag
        // sample: not in the log it serves, so not lost by the pipeline (see
        // `acked_past_log_end`).
        object.insert(
            "acked_past_log_end".into(),
            acked_past_log_end(&deliveries, options, lag.last()).into(),
        );
        // The group-commit writer's transactions and the batches they held (null without one).
        object.insert(
            "group_commits".into(),
            service_store
                .group_commits()
                .map(|commits| {
                    serde_json::json!({ "transactions": commits.transactions, "batches": commits.batches, "failed": commits.failed })
                })
                .into(),
        );
    }
    if let Some(orders) = &orders {
        orders.record_into(&mut config);
    }
    if let Some(outbox) = &options.scenario.outbox {
        outbox_counters.record_into(outbox, &mut config);
    }
    if let Some(outage) = &outage {
        crate::run_record::database_into(&mut config, options, &counters, outage, &lag);
    }
    crate::run_record::stuck_into(&mut config, options, &counters, &crashed, &lag, start);
    if let (Some(log), Some(object)) = (log, config.as_object_mut()) {
        object.insert("log_records".into(), log.records.into());
        object.insert("log_copies".into(), log.copies.into());
        object.insert("log_out_of_order".into(), log.out_of_order.into());
        object.insert("log_unreadable".into(), log.unreadable.into());
    }
    if let (Some(started_ms), Some(object)) = (counters.backlog_started_at_ms, config.as_object_mut()) {
        // How fast the consumers drained the backlog: from their start to the last commit.
        let draining_s = ((last_commit_ns - start_ns) as f64 / 1e9 - started_ms as f64 / 1e3).max(1e-3);
        object.insert("backlog_drain_per_s".into(), (applied as f64 / draining_s).into());
    }
    Ok(RunRecord {
        seed: options.workload.seed,
        architecture: "stream".into(),
        label: options.label(),
        store: store.kind().as_str().into(),
        broker: Some(cluster.backend().into()),
        config,
        events: workload.events.len() as u64,
        applied,
        duration_s,
        throughput_per_s,
        latency_ms: latency.summary(),
        db_statements,
        process,
        check,
        lag,
        backlog: Vec::new(),
        faults,
    })
}

/// What the run loop watches and steers.
struct Watching<'a> {
    options: &'a StreamOptions,
    cluster: &'a Cluster,
    layout: &'a TopicLayout,
    group: &'a str,
    deliveries: &'a Deliveries,
    total: u64,
    start: Instant,
    /// When the publisher switched, during a cutover.
    switched: Option<&'a crate::cutover::SwitchOutcome>,
}

/// Lag samples in a row (one every [`LAG_INTERVAL`]) that must show the group at the end of
/// every partition's log, with nothing applied meanwhile, before a run stops waiting for
/// events the log does not hold.
const LOG_READ_SAMPLES: u32 = 3;

/// Whether the log holds nothing more for the group: `at_log_end` lag samples in a row have
/// shown it at the end of every partition, and nothing was applied for `quiet`. The group
/// has then applied all the log holds, and what is still unapplied is not in it: waiting
/// out the stall timeout would not bring it. Under the default policy a committed offset
/// comes after the database commit; the lessons' policies may commit first, and the quiet
/// spell (longer than a batch's apply, the lessons' 400 ms delay included) covers a batch
/// between its commit and its apply (a chapter's exercise resolves to one of the two).
/// Not during a cutover: the probe watches the first topic only.
fn holds_no_more(options: &StreamOptions, at_log_end: u32, quiet: Duration) -> bool {
    at_log_end >= LOG_READ_SAMPLES && quiet >= LAG_INTERVAL * LOG_READ_SAMPLES && options.scenario.cutover.is_none()
}

/// The events the broker acknowledged on the main topic at or past the log end `sample`
/// read on each partition (`None`: the sample misses a partition). While there are any,
/// the log the group reads is not the whole log: the mock cluster, after a broker-down,
/// was seen serving a partition's end 2 offsets short of the events it had acknowledged
/// there for several seconds (a run that ended then counted them lost, 2026-12-02), so a
/// run waits for them, up to its stall timeout.
fn acked_past_log_end(deliveries: &Deliveries, options: &StreamOptions, sample: Option<&LagSample>) -> Option<u64> {
    let sample = sample.filter(|sample| sample.partitions.len() == usize::try_from(options.partitions).unwrap_or(0))?;
    let log_end = sample
        .partitions
        .iter()
        .map(|partition| (partition.partition, partition.log_end))
        .collect();
    Some(deliveries.acked_past_log_end(&log_end))
}

/// How a run's loop ended, as its record says (`config.ended`): a run that ended stalled or
/// at the log's end with events unapplied reports them lost, and which of the two it was
/// tells a group that stood still from one that read past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Everything acknowledged was applied (or deleted by retention before it was read).
    Drained,
    /// Nothing was applied for the stall timeout.
    Stalled,
    /// The group had committed the end of every partition's log and applied nothing more.
    LogEnd,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Drained => "drained",
            Ended::Stalled => "stalled",
            Ended::LogEnd => "log_end",
        }
    }
}

/// The run loop: applies the fault plan at its times, publishes progress, samples lag, and
/// returns once the source is done and everything it got acknowledged is applied, or once
/// the lag stops shrinking for the stall timeout (what is unapplied then counts as lost).
async fn drive(
    watching: &Watching<'_>,
    fleets: &mut Fleets,
    faults: &mut FaultTimeline,
    lag: &mut LagSampler,
    publishing: JoinHandle<Result<(), StreamError>>,
    intended_at: &impl Fn(i32, i64) -> Option<i64>,
    progress: &watch::Sender<RunProgress>,
) -> Result<Ended, StreamError> {
    let Watching { options, start, .. } = *watching;
    let mut publishing = Some(publishing);
    let mut watch = DrainWatch::new(options.stall_timeout);
    loop {
        faults.tick(start).await;
        faults
            .apply_due(
                start,
                watching.cluster,
                watching.layout,
                &mut fleets.main,
                watching.deliveries.acked(),
                |since| lag.at_log_end_since(start, since),
            )
            .await;
        fleets
            .main
            .observe_assignment(start.elapsed().as_secs_f64(), watching.layout.partitions());
        let (acked, applied) = (
            watching.deliveries.acked(),
            fleets.sum(|counters| counters.applied.load(Ordering::Relaxed)),
        );
        progress.send_replace(RunProgress {
            total: watching.total,
            emitted: acked,
            applied,
            backlog: acked.saturating_sub(applied),
        });
        if lag.step(start, intended_at).await?.is_some() {
            publish_metrics(options, watching.group, &lag.samples);
        }
        if let (Some(cutover), Some(switched)) = (&options.scenario.cutover, watching.switched) {
            fleets.follow(cutover.runbook, switched.read().0, lag, start)?;
        }
        fleets.main.check_processes()?;
        if publishing.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = publishing.take()
        {
            handle.await.map_err(|error| task_error("publisher", error))??;
            if options.scenario.backlog_first {
                tracing::info!(
                    backlog = watching.deliveries.acked(),
                    "every event published: the consumers start on the backlog"
                );
                fleets.backlog_started_at_ms = Some(start.elapsed().as_millis() as u64);
                for _ in 0..options.consumers {
                    fleets.main.join();
                }
            }
        }
        // Unique events applied, not messages processed: redeliveries and dead letters
        // would otherwise count towards "everything acknowledged is applied". Messages the
        // broker deleted before they were read will never come: waiting for them would
        // only end in the stall timeout.
        let skipped = fleets.sum(|counters| counters.skipped.load(Ordering::Relaxed));
        let source_done = publishing.is_none() && faults.done();
        match watch.observe(source_done, acked, applied + skipped) {
            Drain::Running
                if source_done
                    && holds_no_more(options, lag.at_log_end, watch.quiet_for())
                    && acked_past_log_end(watching.deliveries, options, lag.samples.last()) == Some(0) =>
            {
                tracing::warn!(
                    applied,
                    acked,
                    "the group has committed the end of every partition's log for {LOG_READ_SAMPLES} lag samples and applied nothing meanwhile: the acknowledged events the service has not counted as applied are not in the log, or were applied by a database commit whose answer was lost; stopping, and the checker counts from the store what is missing"
                );
                return Ok(Ended::LogEnd);
            }
            Drain::Running => {}
            Drain::Drained => return Ok(Ended::Drained),
            Drain::Stalled => {
                tracing::warn!(
                    applied,
                    acked,
                    "lag did not shrink for {:?}; stopping and reporting what is unapplied as lost",
                    options.stall_timeout
                );
                return Ok(Ended::Stalled);
            }
        }
    }
}

fn task_error(task: &str, error: impl std::fmt::Display) -> StreamError {
    StreamError::Task {
        task: task.into(),
        reason: error.to_string(),
    }
}

/// Serves the last lag sample and each partition's lag status as Prometheus text, when the
/// run has somewhere to serve it.
fn publish_metrics(options: &StreamOptions, group: &str, samples: &[LagSample]) {
    if let Some(metrics) = &options.metrics
        && let Some(sample) = samples.last()
        && let Ok(mut text) = metrics.lock()
    {
        *text = lag::prometheus(sample, &options.topic, group);
        text.push_str(&lag::prometheus_status(samples, options.lag_rule, &options.topic, group));
    }
}

/// The balance service's consumers: the run's group, and during a cutover a second group
/// on the new topic, already running.
struct Fleets {
    main: Fleet,
    next: Option<Fleet>,
    /// The new group of a runbook that starts it once the old group's lag is zero: its
    /// configuration until then.
    waiting: Option<(Store, FleetConfig, u32)>,
    /// How far the drain consumer's temporary members have replaced the old group's.
    drain: DrainStep,
    /// When the new group started, for a runbook that makes it wait, ms since the start.
    moved_at_ms: Option<u64>,
    /// The lag samples there were when chapter 12's exercise was last asked.
    asked_after_samples: Option<usize>,
    /// With a backlog first, when the consumers started on it, ms since the start.
    backlog_started_at_ms: Option<u64>,
}

/// The drain consumer's steps on the old cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainStep {
    /// Before the switch.
    Before,
    /// The old group's members (this many) are leaving.
    Leaving(usize),
    /// The temporary members have joined.
    Draining,
}

/// Starts the second cluster of a migration (a cutover to a topic on another cluster) and
/// creates its topic; `None` for every other run.
async fn second_cluster(options: &StreamOptions, cluster: &Cluster, layout: &TopicLayout) -> Result<Option<Cluster>, StreamError> {
    let Some(cutover) = options.scenario.cutover.as_ref().filter(|cutover| cutover.second_cluster) else {
        return Ok(None);
    };
    let backend = cluster.kind();
    if !matches!(backend, tradeflow_cluster::Backend::Mock | tradeflow_cluster::Backend::Tansu) {
        return Err(StreamError::Config {
            reason: format!(
                "a migration starts a second cluster of the run's backend, which only mock and tansu can do here, not {backend}"
            ),
        });
    }
    let second = backend.start(None)?;
    ensure_topics(&second, &layout.elsewhere(cutover)).await?;
    tracing::info!(bootstrap = second.bootstrap_servers(), topic = %cutover.topic, "second cluster up for the migration");
    Ok(Some(second))
}

impl Fleets {
    async fn start(
        store: &Store,
        options: &StreamOptions,
        bootstrap: &str,
        next_bootstrap: &str,
        group: &str,
    ) -> Result<Fleets, StreamError> {
        let config = |bootstrap: &str, topic: &str, group: String| FleetConfig {
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            group,
            batch_size: options.batch_size,
            fill_wait: options.fill_wait,
            pipeline: options.pipeline,
            fetch_wait_max_ms: options.fetch_wait_max_ms,
            commit: options.scenario.commit,
            commit_interval: options.commit_interval,
            dead_letter: options.scenario.dead_letter,
            apply_delay: options.scenario.apply_delay,
            dedup: options.scenario.dedup,
            fencing: options.scenario.fencing,
            processes: options.scenario.processes.clone(),
            kill_after: options.scenario.kill_after,
            key_check: options.scenario.key_check,
            poison_exercise: options.scenario.poison_exercise,
            database_retry: options.scenario.database_retry,
            max_poll_interval_ms: options.scenario.max_poll_interval_ms,
            schema_newest: options
                .scenario
                .schema
                .map_or(tradeflow_domain::SCHEMA_VERSION, |change| change.consumers_read),
            prefetch: options.scenario.prefetch,
            schema_exercise: options.scenario.schema_exercise,
            held_exercise: options.scenario.held_exercise,
            static_membership: options.scenario.static_membership,
            session_timeout_ms: options
                .scenario
                .session_timeout_ms
                .unwrap_or(crate::fleet::FLEET_SESSION_TIMEOUT_MS),
            seed: options.workload.seed,
        };
        // With a backlog first, the consumers join once publishing is done (see `drive`).
        let main = Fleet::start(
            store.clone(),
            config(bootstrap, &options.topic, group.to_owned()),
            if options.scenario.backlog_first { 0 } else { options.consumers },
        )?;
        let mut fleets = Fleets {
            main,
            next: None,
            waiting: None,
            drain: DrainStep::Before,
            moved_at_ms: None,
            asked_after_samples: None,
            backlog_started_at_ms: None,
        };
        if let Some(cutover) = &options.scenario.cutover {
            let next_group = format!("{group}-next");
            start_group_at_end(next_bootstrap, &cutover.topic, &next_group, cutover.partitions).await?;
            let next = config(next_bootstrap, &cutover.topic, next_group);
            if cutover.runbook.new_group_waits() {
                fleets.waiting = Some((store.clone(), next, options.consumers));
            } else {
                fleets.next = Some(Fleet::start(store.clone(), next, options.consumers)?);
            }
        }
        Ok(fleets)
    }

    /// The runbook's moves of the balance service once the publisher has switched (at
    /// `switched_at_ms`, 0 before): the drain consumer's temporary members replace the old
    /// group's at once; a waiting new group starts, and the old group stops, once a lag
    /// sample taken a second after the switch shows the old group at the end of every
    /// partition (what was published to the old topic is in its log by then).
    fn follow(&mut self, runbook: Runbook, switched_at_ms: u64, lag: &LagSampler, start: Instant) -> Result<(), StreamError> {
        if runbook == Runbook::MoveExercise {
            if self.waiting.is_some() && self.asked_after_samples != Some(lag.samples.len()) {
                self.asked_after_samples = Some(lag.samples.len());
                let state = lag.migration_state(switched_at_ms);
                if tradeflow_exercises::may_move_consumers::may_move_consumers(&state) {
                    self.start_waiting_group(switched_at_ms, start)?;
                }
            }
            return Ok(());
        }
        if switched_at_ms == 0 {
            return Ok(());
        }
        match (runbook, self.drain) {
            (Runbook::DrainConsumer, DrainStep::Before) => {
                let leaving = self.main.running_members();
                self.drain = DrainStep::Leaving(leaving.len());
                for index in leaving {
                    self.main.leave(index).map_err(|reason| StreamError::Task {
                        task: format!("moving consumer-{index} off the old cluster"),
                        reason,
                    })?;
                }
            }
            // The temporary members join once the old ones have left: joining while they
            // were leaving left tansu's group without an assignment for seconds.
            (Runbook::DrainConsumer, DrainStep::Leaving(members)) if self.main.gone() => {
                let joined = (0..members).filter_map(|_| self.main.join()).count();
                self.drain = DrainStep::Draining;
                tracing::info!(
                    joined,
                    "the old group's members left for the new cluster; temporary consumers drain the old topic"
                );
            }
            _ => {}
        }
        let settled = Duration::from_millis(switched_at_ms) + LAG_INTERVAL * 2;
        if self.waiting.is_some() && lag.at_log_end_since(start, settled) {
            self.start_waiting_group(switched_at_ms, start)?;
        }
        Ok(())
    }

    /// Stops the old group and starts the new one that waited.
    fn start_waiting_group(&mut self, switched_at_ms: u64, start: Instant) -> Result<(), StreamError> {
        let Some((store, config, consumers)) = self.waiting.take() else {
            return Ok(());
        };
        self.main.stop_all();
        self.next = Some(Fleet::start(store, config, consumers)?);
        let now_ms = start.elapsed().as_millis() as u64;
        self.moved_at_ms = Some(now_ms);
        tracing::info!(
            at_ms = now_ms,
            after_the_switch_ms = (switched_at_ms > 0).then(|| now_ms.saturating_sub(switched_at_ms)),
            "the new group starts and the old one stops"
        );
        Ok(())
    }

    /// A counter summed over both groups.
    fn sum(&self, read: impl Fn(&ServiceCounters) -> u64) -> u64 {
        self.counters().sum(read)
    }

    fn counters(&self) -> FleetCounters {
        let mut counters = FleetCounters {
            main: self.main.counters.clone(),
            next: self.next.as_ref().map(|next| next.counters.clone()),
            assignments: self.main.assignments().to_vec(),
            moved_at_ms: self.moved_at_ms,
            backlog_started_at_ms: self.backlog_started_at_ms,
            rebalances_at_end: 0,
            changes_at_end: self.main.counters.changes_by_member(),
        };
        counters.rebalances_at_end = counters.sum(|counters| counters.rebalances.load(Ordering::Relaxed));
        counters
    }

    /// Stops every consumer; their latency histograms merged.
    async fn finish(self) -> Result<tradeflow_check::LatencyRecorder, StreamError> {
        let mut latency = self.main.finish().await?;
        if let Some(next) = self.next {
            latency.merge(&next.finish().await?);
        }
        Ok(latency)
    }
}

/// The counters of a run's groups, readable after the consumers are gone.
pub(crate) struct FleetCounters {
    main: Arc<ServiceCounters>,
    next: Option<Arc<ServiceCounters>>,
    /// The run's group's settled assignments so far.
    pub(crate) assignments: Vec<crate::fleet::SettledAssignment>,
    /// When a waiting new group started (ms since the start), if it did.
    pub(crate) moved_at_ms: Option<u64>,
    /// Rebalances seen by the end of the run, before the consumers left (their leaving is
    /// a revocation each, and no fault's doing).
    pub(crate) rebalances_at_end: u64,
    /// The assignment changes each member of the main group had seen by then, by name.
    pub(crate) changes_at_end: std::collections::BTreeMap<String, u64>,
    /// With a backlog first, when the consumers started on it, ms since the start.
    pub(crate) backlog_started_at_ms: Option<u64>,
}

impl FleetCounters {
    /// A counter summed over both groups.
    pub(crate) fn sum(&self, read: impl Fn(&ServiceCounters) -> u64) -> u64 {
        read(&self.main) + self.next.as_deref().map_or(0, &read)
    }

    /// The highest peak resident set of the members that were processes, in kB (0: none).
    pub(crate) fn peak_rss_kb(&self) -> u64 {
        self.max(|counters| counters.peak_rss_kb.load(Ordering::Relaxed))
    }

    /// Dead letters sent per error kind over both groups: count and the first reason.
    pub(crate) fn dead_letter_kinds(&self) -> std::collections::BTreeMap<String, (u64, String)> {
        let mut kinds = std::collections::BTreeMap::new();
        for counters in std::iter::once(&self.main).chain(self.next.as_ref()) {
            if let Ok(seen) = counters.dead_letter_kinds.lock() {
                for (kind, (count, reason)) in seen.iter() {
                    kinds.entry(kind.clone()).or_insert((0, reason.clone())).0 += count;
                }
            }
        }
        kinds
    }

    /// Says loudly when the broker deleted messages before they were read.
    pub(crate) fn report_skipped(&self) {
        let skipped = self.sum(|counters| counters.skipped.load(Ordering::Relaxed));
        if skipped > 0 {
            tracing::error!(
                skipped,
                "the broker deleted {skipped} messages before the balance service read them (retention; librdkafka's mock cluster keeps {MOCK_PARTITION_RETAINED_MB} MB per partition); the checker counts their events as lost. Lower the offered rate or add consumers, so that the lag stays below retention"
            );
        }
    }

    /// The crashes of the group the fault plan steers (the main one).
    /// Each restart of a main-group member, with what every member had seen before it.
    pub(crate) fn restart_marks(&self) -> Vec<(String, std::collections::BTreeMap<String, u64>)> {
        self.main.restart_marks.lock().map(|marks| marks.clone()).unwrap_or_default()
    }

    pub(crate) fn crashed(&self) -> Vec<crate::service::FaultSeen> {
        self.main.fault_log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// A counter's highest value over both groups.
    pub(crate) fn max(&self, read: impl Fn(&ServiceCounters) -> u64) -> u64 {
        read(&self.main).max(self.next.as_deref().map_or(0, &read))
    }
}

/// Lag sampled beside the run loop: against a broker that is down a probe waits its whole
/// timeout, and the fault plan must not wait with it.
struct LagSampler {
    probe: Arc<LagProbe>,
    samples: Vec<LagSample>,
    /// Partitions the probe reads.
    partitions: usize,
    /// Samples in a row, up to the last, in which the group had committed the end of every
    /// partition's log (no lag, no partition missing).
    at_log_end: u32,
    last: Instant,
    probing: Option<JoinHandle<Result<Vec<tradeflow_check::PartitionLag>, StreamError>>>,
    /// When the probe of the last sample started: what it read is no older than that.
    last_sample_probed: Option<Instant>,
}

impl LagSampler {
    fn new(probe: LagProbe) -> LagSampler {
        LagSampler {
            partitions: usize::try_from(probe.partitions()).unwrap_or(0),
            probe: Arc::new(probe),
            samples: Vec::new(),
            at_log_end: 0,
            last: Instant::now(),
            probing: None,
            last_sample_probed: None,
        }
    }

    /// Starts a probe when one is due, and takes the sample of one that ended.
    async fn step(&mut self, start: Instant, intended_at: &impl Fn(i32, i64) -> Option<i64>) -> Result<Option<LagSample>, StreamError> {
        if self.probing.is_none() && self.last.elapsed() >= LAG_INTERVAL {
            self.last = Instant::now();
            let probe = self.probe.clone();
            self.probing = Some(tokio::task::spawn_blocking(move || probe.probe()));
        }
        if !self.probing.as_ref().is_some_and(JoinHandle::is_finished) {
            return Ok(None);
        }
        let Some(probing) = self.probing.take() else { return Ok(None) };
        match probing.await.map_err(|error| task_error("lag probe", error))? {
            Ok(partitions) => {
                let sample = lag::sample(start.elapsed().as_secs_f64(), partitions, intended_at, now_ns());
                let at_end = sample.offset_lag_total == 0 && sample.partitions.len() == self.partitions;
                self.at_log_end = if at_end { self.at_log_end + 1 } else { 0 };
                self.last_sample_probed = Some(self.last);
                self.samples.push(sample.clone());
                Ok(Some(sample))
            }
            Err(error) => {
                tracing::warn!(%error, "lag probe failed");
                Ok(None)
            }
        }
    }

    /// Whether the last sample's probe started after `since` (counted from the run's
    /// `start`) and showed the group at the end of every partition's log.
    fn at_log_end_since(&self, start: Instant, since: Duration) -> bool {
        self.at_log_end > 0
            && self
                .last_sample_probed
                .is_some_and(|probed| probed.saturating_duration_since(start) > since)
    }

    /// What chapter 12's exercise is told: whether the publisher has switched (at
    /// `switched_at_ms`, 0 before), and the latest sample's lag and when it was taken.
    fn migration_state(&self, switched_at_ms: u64) -> tradeflow_exercises::MigrationState {
        let last = self.samples.last();
        let sampled_ms = last.map_or(0, |sample| (sample.t_s.max(0.0) * 1_000.0) as u64);
        tradeflow_exercises::MigrationState {
            producer_moved: switched_at_ms > 0,
            old_offset_lag: last
                .filter(|sample| sample.partitions.len() == self.partitions)
                .map(|sample| sample.offset_lag_total),
            sampled_ms_after_producer_moved: if switched_at_ms > 0 {
                sampled_ms.saturating_sub(switched_at_ms)
            } else {
                0
            },
        }
    }

    /// The samples, with a last one taken now.
    async fn finish(mut self, start: Instant, intended_at: &impl Fn(i32, i64) -> Option<i64>) -> Vec<LagSample> {
        let probe = self.probe.clone();
        if let Ok(Ok(partitions)) = tokio::task::spawn_blocking(move || probe.probe()).await {
            self.samples
                .push(lag::sample(start.elapsed().as_secs_f64(), partitions, intended_at, now_ns()));
        }
        self.samples
    }
}

/// Commits the topic's current end offsets for a new group, so that it starts there.
pub(crate) async fn start_group_at_end(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> Result<(), StreamError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_domain::workload::{ACCOUNT_SKEW, RateProfile};

    fn options() -> StreamOptions {
        StreamOptions::new(WorkloadConfig {
            seed: 1,
            events: 100,
            accounts: 10,
            rate_per_s: 1_000.0,
            profile: RateProfile::Steady,
            skew: ACCOUNT_SKEW,
            mix: tradeflow_domain::EventMix::default(),
        })
    }

    #[test]
    fn a_run_stops_waiting_for_the_log_only_after_three_samples_at_its_end_and_a_quiet_spell() {
        let quiet = LAG_INTERVAL * LOG_READ_SAMPLES;
        let mut options = options();
        assert!(holds_no_more(&options, LOG_READ_SAMPLES, quiet));
        assert!(
            !holds_no_more(&options, LOG_READ_SAMPLES - 1, quiet),
            "two samples at the end are not enough"
        );
        assert!(
            !holds_no_more(&options, LOG_READ_SAMPLES, quiet - Duration::from_millis(1)),
            "an apply within the window means the group is still at work"
        );
        options.scenario.cutover = Some(Cutover {
            topic: "trades.v2".into(),
            second_cluster: false,
            partitions: 8,
            at_event: 50,
            runbook: Runbook::Naive,
        });
        assert!(
            !holds_no_more(&options, LOG_READ_SAMPLES + 5, quiet * 2),
            "the probe watches the old topic only"
        );
    }
}
