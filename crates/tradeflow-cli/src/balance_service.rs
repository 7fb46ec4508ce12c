//! `tradeflow balance-service` and `tradeflow balances`.

use crate::args::StoreArgs;
use crate::run_stream::AbortOnDrop;
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_stream::journal::Journal;
use tradeflow_stream::lag::{self, LagProbe};
use tradeflow_stream::metrics::{self, MetricsText};
use tradeflow_stream::{ServiceConfig, ServiceCounters, run_service};

/// How long the consumers have to leave their group after SIGTERM or Ctrl-C.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);
/// How often the service reports what it did and samples lag.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Arguments of `tradeflow balance-service`.
#[derive(Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    bootstrap: String,
    /// The topic of trade events (see docs/wire-format.md for what it must hold).
    #[arg(long, default_value = "trades")]
    topic: String,
    /// Move to this cluster, producer first (HOST:PORT[,HOST:PORT...]): the service reads
    /// --bootstrap until the topic on this cluster grows (the producer has moved there) and
    /// a lag sample taken a second later shows the group's offset lag on the old cluster at
    /// zero (its tail is applied); then its consumers leave the old cluster and read the
    /// same topic, in the same group, on this one. The topic must exist on both.
    #[arg(long, value_name = "BOOTSTRAP")]
    move_to: Option<String>,
    /// The consumer group; run several processes with the same group to share partitions.
    #[arg(long, default_value = "tradeflow-balances")]
    group: String,
    /// Consumers in this process.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Most messages applied in one database transaction.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// How long the group waits for a silent member before moving its partitions.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u32,
    /// Serve offset lag and time lag as Prometheus text on this address (HOST:PORT).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// This process's consumer name, in the apply log (default GROUP-PID; with several
    /// consumers, NAME-INDEX).
    #[arg(long)]
    name: Option<String>,
    /// Static membership: the group knows this process by this id (`group.instance.id`;
    /// with several consumers, ID-INDEX). Restarted under the same id within
    /// --session-timeout-ms, it gets its partitions back and the other members are not
    /// rebalanced; without it, every restart rebalances the whole group. Letters, digits,
    /// '.', '_' and '-'.
    #[arg(long, value_name = "ID")]
    group_instance_id: Option<String>,
    /// Write what the consumers do as JSON lines on standard output (batches received,
    /// commits the broker confirmed, batches applied), for a host that watches this process
    /// and may kill it; the service's own lines go to standard error.
    #[arg(long)]
    journal: bool,
    /// How long a consumer waits to fill a batch once its first message is in, in ms.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    fill_wait_ms: u64,
    /// How long, in ms, a consumer lets the offsets of the batches it applied gather before
    /// it commits them in one request (also once due while it waits for messages, and at
    /// once when it stops); 0: after every batch. With --commit after-database only.
    #[arg(long, default_value_t = tradeflow_stream::service::COMMIT_INTERVAL_DEFAULT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    commit_interval_ms: u64,
    /// Fill the next batch while one is triaged and applied (pipelining), instead of
    /// applying each batch before fetching the next (the default).
    #[arg(long)]
    pipeline: bool,
    /// How long a fetch waits at the broker for messages before it is answered empty
    /// (librdkafka's `fetch.wait.max.ms`), in ms. Librdkafka's mock cluster waits all of
    /// it on an empty fetch, so on the mock it adds up to this much to an event's latency.
    #[arg(long, default_value_t = tradeflow_stream::FETCH_WAIT_MAX_MS, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    fetch_wait_max_ms: u32,
    /// Lesson-only: when offsets are committed. Only after-database is safe; the others
    /// exist for the experiments that show what they lose.
    #[arg(long, value_enum, default_value_t = CommitChoice::AfterDatabase, hide = true)]
    commit: CommitChoice,
    /// Lesson-only: a pause before each batch's database transaction (a database under
    /// load), in ms.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000), hide = true)]
    apply_delay_ms: u64,
    /// Lesson-only: no dead-letter topic; a message that cannot be processed is retried
    /// forever and its partition waits behind it.
    #[arg(long, hide = true)]
    no_dead_letter: bool,
    /// Lesson-only: apply every event handed over, again if it was applied before (the
    /// naive consumer of the idempotence lesson; it corrupts balances on a redelivery).
    #[arg(long, hide = true)]
    naive_apply: bool,
    /// Lesson-only: apply a batch held while its partitions were revoked (a zombie's)
    /// instead of dropping it.
    #[arg(long, hide = true)]
    no_fencing: bool,
    /// Lesson-only (chapter 02): apply a message whatever its key, instead of refusing one
    /// not keyed by its account.
    #[arg(long, hide = true)]
    no_key_check: bool,
    /// Chapter 06: its exercise decides what happens to a message that cannot be processed.
    #[arg(long, hide = true)]
    poison_exercise: bool,
    /// Chapter 04: its exercise decides which events of a batch are applied.
    #[arg(long, hide = true)]
    dedup_exercise: bool,
    /// Chapter 19: its exercise says which partitions and offsets each "batch received"
    /// log line names.
    #[arg(long, hide = true)]
    held_exercise: bool,
    /// How much each consumer fetches ahead of the batch in hand: bounded (4 MiB queued,
    /// fetches of at most 2 MiB: the default) or librdkafka-defaults (64 MiB queued,
    /// fetches of up to 50 MB: the consumer-memory lesson's comparison).
    #[arg(long, value_enum, default_value_t = PrefetchChoice::Bounded)]
    prefetch: PrefetchChoice,
}

/// How much a consumer fetches ahead (`--prefetch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrefetchChoice {
    /// 4 MiB queued ahead (`queued.max.messages.kbytes` 4096), fetches of at most 2 MiB.
    Bounded,
    /// librdkafka's own defaults (`queued.max.messages.kbytes` 65536).
    LibrdkafkaDefaults,
    /// What chapter 18's exercise (`chapters/18-consumer-memory/exercise.rs`) returns.
    Exercise,
}

/// When the consumers commit offsets (`--commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CommitChoice {
    /// After the batch's database transaction (the only safe one).
    AfterDatabase,
    /// librdkafka's auto commit timer.
    Auto,
    /// As soon as a batch is received.
    BeforeDatabase,
    /// In the order chapter 03's exercise (chapters/03-commit-after-database) returns.
    Exercise,
}

impl From<CommitChoice> for tradeflow_stream::CommitPolicy {
    fn from(choice: CommitChoice) -> Self {
        match choice {
            CommitChoice::AfterDatabase => tradeflow_stream::CommitPolicy::AfterDatabase,
            CommitChoice::Auto => tradeflow_stream::CommitPolicy::Auto,
            CommitChoice::BeforeDatabase => tradeflow_stream::CommitPolicy::BeforeDatabase,
            CommitChoice::Exercise => tradeflow_stream::CommitPolicy::Exercise,
        }
    }
}

/// How long the service waits at startup for a broker that does not answer (paused,
/// restarting) before it gives up with the last error.
const BROKER_WAIT_AT_START: Duration = Duration::from_secs(15);

/// The topic's partition count, read from the brokers. A broker that does not answer is
/// asked again every half second for up to [`BROKER_WAIT_AT_START`] (a member started while
/// its broker is paused or restarting joins once it is back, as librdkafka's own clients
/// would); a topic that does not exist is an error at once.
async fn wait_for_topic(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let deadline = tokio::time::Instant::now() + BROKER_WAIT_AT_START;
    loop {
        match tradeflow_stream::topic_partitions(bootstrap, topic).await {
            Ok(partitions) => return Ok(partitions),
            Err(error @ tradeflow_stream::StreamError::Kafka { .. }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "the brokers did not answer; asking again (for up to {BROKER_WAIT_AT_START:?} in all)");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("checking the topic"),
        }
    }
}

/// Runs the balance service until Ctrl-C or SIGTERM.
pub async fn run(arguments: ServiceArgs) -> anyhow::Result<bool> {
    // Listening starts first and once: a SIGTERM during startup (a host that stops the
    // process soon after starting it) or between two turns of the report loop is kept for
    // the loop, instead of killing the process or being lost.
    let shutdown = Shutdown::listen().context("listening for SIGTERM and Ctrl-C")?;
    if arguments.journal {
        Journal::stdout().write(&tradeflow_stream::journal::JournalEntry::Listening);
    }
    // Bad settings are refused before anything is opened or created.
    tradeflow_cluster::external::check_bootstrap(&arguments.bootstrap).context("checking --bootstrap")?;
    consumer_configs(&arguments, &arguments.bootstrap)?;
    // The topic before the store: brokers that do not answer must not leave a new store.
    let partitions = wait_for_topic(&arguments.bootstrap, &arguments.topic).await?;
    let store = arguments.store.open().await?;
    let metrics_text = MetricsText::default();
    let _server = match &arguments.metrics_addr {
        Some(address) => {
            let (bound, server) = metrics::serve(address, metrics_text.clone()).await?;
            println!("metrics: http://{bound}/metrics");
            Some(AbortOnDrop(server))
        }
        None => None,
    };
    // With a journal, standard output carries only the journal, and the host that reads
    // it knows what it started: the service's own lines are left out.
    let say = |line: String| {
        if !arguments.journal {
            println!("{line}");
        }
    };
    say(format!(
        "balance service: {} consumer(s) of group {} on {} ({partitions} partitions) at {}, applying into {} ({})",
        arguments.consumers,
        arguments.group,
        arguments.topic,
        arguments.bootstrap,
        store.kind(),
        store.url_redacted()
    ));
    let counters = Arc::new(ServiceCounters::default());
    let mut shutdown = shutdown;
    let mut bootstrap = arguments.bootstrap.as_str();
    let mut partitions = partitions;
    if let Some(move_to) = &arguments.move_to {
        let mut migration = Migration::new(&arguments, partitions, move_to).await?;
        let (stop_old, stop_old_receiver) = watch::channel(false);
        let mut old = spawn_consumers(&store, consumer_configs(&arguments, bootstrap)?, &stop_old_receiver, &counters);
        let moving = migration.wait(&mut shutdown, &mut old).await;
        stop_old.send_replace(true);
        stop_consumers(old).await?;
        match moving? {
            true => {
                say(format!(
                    "balance service: the producer moved and the old cluster's tail is applied; group {} now reads {} at {move_to} ({} partitions)",
                    arguments.group, arguments.topic, migration.new_partitions
                ));
                (bootstrap, partitions) = (move_to.as_str(), migration.new_partitions);
            }
            false => {
                store.close().await;
                return Ok(true);
            }
        }
    }
    let (stop, stop_receiver) = watch::channel(false);
    let mut consumers = spawn_consumers(&store, consumer_configs(&arguments, bootstrap)?, &stop_receiver, &counters);
    let probe = Arc::new(LagProbe::new(bootstrap, &arguments.topic, &arguments.group, partitions)?);
    let failed = report_until_shutdown(shutdown, &arguments, &mut consumers, &counters, &probe, &metrics_text).await?;
    stop.send_replace(true);
    consumers.extend(failed);
    stop_consumers(consumers).await?;
    say(format!(
        "stopped: applied {}, dead-lettered {}",
        counters.applied.load(Ordering::Relaxed),
        counters.dead_lettered.load(Ordering::Relaxed)
    ));
    store.close().await;
    Ok(true)
}

/// Starts the service's consumers.
fn spawn_consumers(
    store: &tradeflow_store::Store,
    configs: Vec<ServiceConfig>,
    stop: &watch::Receiver<bool>,
    counters: &Arc<ServiceCounters>,
) -> Consumers {
    configs
        .into_iter()
        .map(|config| tokio::spawn(run_service(store.clone(), config, stop.clone(), counters.clone())))
        .collect()
}

/// How often a moving service checks whether it may move.
const MOVE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long after the new cluster's topic grew a lag sample of the old cluster must be
/// taken to count: what the producer sent the old cluster before it moved is in its log by
/// then.
const MOVE_SETTLE: Duration = Duration::from_secs(1);

/// A producer-first move to another cluster (`--move-to`): the old cluster's lag, and the
/// new cluster's topic, watched until the service may move.
struct Migration {
    old: Arc<LagProbe>,
    new: Arc<LagProbe>,
    old_partitions: i32,
    new_partitions: i32,
    /// The new topic's log end offsets, summed, when the service started.
    new_end_at_start: i64,
    /// When the new topic was first seen to grow.
    grew_at: Option<std::time::Instant>,
}

impl Migration {
    async fn new(arguments: &ServiceArgs, old_partitions: i32, move_to: &str) -> anyhow::Result<Migration> {
        let new_partitions = tradeflow_stream::topic_partitions(move_to, &arguments.topic)
            .await
            .with_context(|| format!("checking the topic on the cluster to move to ({move_to})"))?;
        let old = Arc::new(LagProbe::new(
            &arguments.bootstrap,
            &arguments.topic,
            &arguments.group,
            old_partitions,
        )?);
        let new = Arc::new(LagProbe::new(move_to, &arguments.topic, &arguments.group, new_partitions)?);
        let mut migration = Migration {
            old,
            new,
            old_partitions,
            new_partitions,
            new_end_at_start: 0,
            grew_at: None,
        };
        migration.new_end_at_start = migration
            .new_end()
            .await
            .context("reading the end of the topic on the cluster to move to")?;
        Ok(migration)
    }

    /// The new topic's log end offsets, summed.
    async fn new_end(&self) -> anyhow::Result<i64> {
        let probe = self.new.clone();
        let partitions = tokio::task::spawn_blocking(move || probe.probe()).await??;
        Ok(partitions.iter().map(|partition| partition.log_end).sum())
    }

    /// Whether the old cluster's log is applied to its end: every partition read, no lag.
    async fn old_drained(&self) -> anyhow::Result<bool> {
        let probe = self.old.clone();
        let partitions = tokio::task::spawn_blocking(move || probe.probe()).await??;
        Ok(partitions.len() == usize::try_from(self.old_partitions).unwrap_or(0)
            && partitions.iter().all(|partition| partition.offset_lag == 0))
    }

    /// Waits until the service may move (true), or for a shutdown signal (false); a
    /// consumer that ends on its own meanwhile is an error.
    async fn wait(&mut self, shutdown: &mut Shutdown, consumers: &mut Consumers) -> anyhow::Result<bool> {
        let mut interval = tokio::time::interval(MOVE_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.recv() => return Ok(false),
                _ = interval.tick() => {}
            }
            if let Some(finished) = consumers.iter().position(tokio::task::JoinHandle::is_finished) {
                let ended = consumers.swap_remove(finished).await.context("a consumer task")?;
                ended.context("a consumer on the old cluster stopped")?;
                anyhow::bail!("a consumer on the old cluster stopped on its own before the move");
            }
            match self.grew_at {
                None => {
                    // A probe that fails (a broker away for a moment) is tried again.
                    if self.new_end().await.is_ok_and(|end| end > self.new_end_at_start) {
                        tracing::info!("the topic on the cluster to move to grew: the producer has moved");
                        self.grew_at = Some(std::time::Instant::now());
                    }
                }
                Some(grew_at) if grew_at.elapsed() >= MOVE_SETTLE => {
                    if self.old_drained().await.unwrap_or(false) {
                        return Ok(true);
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// A consumer task of the service.
type ConsumerTask = tokio::task::JoinHandle<Result<tradeflow_check::LatencyRecorder, tradeflow_stream::StreamError>>;
/// The service's consumer tasks.
type Consumers = Vec<ConsumerTask>;

/// Reports progress and lag every few seconds (and serves lag as metrics) until SIGTERM or
/// Ctrl-C, or until a consumer ends on its own: returns that one, taken out of `consumers`.
async fn report_until_shutdown(
    mut shutdown: Shutdown,
    arguments: &ServiceArgs,
    consumers: &mut Consumers,
    counters: &ServiceCounters,
    probe: &Arc<LagProbe>,
    metrics_text: &MetricsText,
) -> anyhow::Result<Option<ConsumerTask>> {
    let started = std::time::Instant::now();
    let mut interval = tokio::time::interval(REPORT_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return Ok(None),
            _ = interval.tick() => {}
        }
        if let Some(finished) = consumers.iter().position(tokio::task::JoinHandle::is_finished) {
            return Ok(Some(consumers.swap_remove(finished)));
        }
        if arguments.journal {
            // The host that reads the journal samples lag itself.
            continue;
        }
        let probe = probe.clone();
        if let Ok(Ok(partitions)) = tokio::task::spawn_blocking(move || probe.probe()).await {
            let sample = lag::sample(started.elapsed().as_secs_f64(), partitions, |_, _| None, 0);
            if let Ok(mut text) = metrics_text.lock() {
                *text = lag::prometheus(&sample, &arguments.topic, &arguments.group);
            }
            eprintln!(
                "applied {}, duplicates skipped {}, dead-lettered {}, offset lag {}",
                counters.applied.load(Ordering::Relaxed),
                counters.duplicates.load(Ordering::Relaxed),
                counters.dead_lettered.load(Ordering::Relaxed),
                sample.offset_lag_total
            );
        }
    }
}

/// Each consumer's configuration: the service as it must be run unless a lesson-only flag
/// says otherwise (offsets after the database commit, bad messages to the dead-letter
/// topic, the apply log, the fence).
fn consumer_configs(arguments: &ServiceArgs, bootstrap: &str) -> anyhow::Result<Vec<ServiceConfig>> {
    let journal = arguments.journal.then(|| Arc::new(Journal::stdout()));
    let base_name = arguments
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", arguments.group, std::process::id()));
    (0..arguments.consumers)
        .map(|index| {
            let config = ServiceConfig {
                bootstrap: bootstrap.to_owned(),
                topic: arguments.topic.clone(),
                group: arguments.group.clone(),
                name: if arguments.consumers == 1 {
                    base_name.clone()
                } else {
                    format!("{base_name}-{index}")
                },
                batch_size: arguments.batch_size,
                fill_wait: Duration::from_millis(arguments.fill_wait_ms),
                pipeline: arguments.pipeline,
                fetch_wait_max_ms: arguments.fetch_wait_max_ms,
                session_timeout_ms: arguments.session_timeout_ms,
                commit: arguments.commit.into(),
                commit_interval: Duration::from_millis(arguments.commit_interval_ms),
                dead_letter: !arguments.no_dead_letter,
                journal: journal.clone(),
                apply_delay: Duration::from_millis(arguments.apply_delay_ms),
                dedup: match (arguments.naive_apply, arguments.dedup_exercise) {
                    (true, _) => tradeflow_store::Dedup::None,
                    (false, true) => tradeflow_store::Dedup::Exercise,
                    (false, false) => tradeflow_store::Dedup::ApplyLog,
                },
                fencing: !arguments.no_fencing,
                key_check: !arguments.no_key_check,
                poison_exercise: arguments.poison_exercise,
                database_retry: tradeflow_stream::service::DatabaseRetry::Backoff,
                max_poll_interval_ms: None,
                schema_newest: tradeflow_domain::SCHEMA_VERSION,
                schema_exercise: false,
                held_exercise: arguments.held_exercise,
                instance_id: arguments.group_instance_id.as_ref().map(|id| {
                    if arguments.consumers == 1 {
                        id.clone()
                    } else {
                        format!("{id}-{index}")
                    }
                }),
                prefetch: match arguments.prefetch {
                    PrefetchChoice::Bounded => tradeflow_stream::service::Prefetch::Bounded,
                    PrefetchChoice::LibrdkafkaDefaults => tradeflow_stream::service::Prefetch::LibrdkafkaDefaults,
                    PrefetchChoice::Exercise => tradeflow_stream::service::Prefetch::Exercise,
                },
            };
            config.validate()?;
            Ok(config)
        })
        .collect()
}

/// Waits for the consumers, told to stop, to leave their group; a consumer that cannot
/// (a rebalance that never completes) must not keep the process alive past what an
/// orchestrator would wait anyway.
async fn stop_consumers(consumers: Consumers) -> anyhow::Result<()> {
    let stopping = async {
        for handle in consumers {
            handle.await.context("a consumer task")?.context("a consumer stopped")?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(SHUTDOWN_DEADLINE, stopping)
        .await
        .map_err(|_| anyhow::anyhow!("the consumers did not stop within {SHUTDOWN_DEADLINE:?} of the shutdown signal; exiting without them (their uncommitted batches will be redelivered)"))?
}

/// SIGTERM and Ctrl-C (SIGINT), listened for from the start.
struct Shutdown {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn listen() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Arguments of `tradeflow balances`.
#[derive(Args)]
pub struct BalancesArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this account.
    #[arg(long)]
    account: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the balances and positions a store holds.
pub async fn balances(arguments: BalancesArgs) -> anyhow::Result<bool> {
    let account = match &arguments.account {
        Some(text) => Some(tradeflow_domain::AccountId::new(text.clone()).with_context(|| format!("--account {text:?}"))?),
        None => None,
    };
    let store = arguments.store.open().await?;
    let accounts = store.balances().await.context("reading balances")?;
    let selected: Vec<_> = accounts
        .iter()
        .filter(|(id, _)| account.as_ref().is_none_or(|wanted| wanted == *id))
        .collect();
    if let Some(wanted) = &account
        && selected.is_empty()
    {
        anyhow::bail!("account {wanted} has no balance in this store");
    }
    if arguments.json {
        let rows: Vec<_> = selected
            .iter()
            .map(|(id, state)| {
                let positions: serde_json::Map<String, serde_json::Value> = state
                    .positions
                    .iter()
                    .map(|(symbol, shares)| (symbol.to_string(), (*shares).into()))
                    .collect();
                serde_json::json!({ "account_id": id.as_str(), "cash": state.cash.minor(), "positions": positions })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).context("encoding JSON")?);
    } else {
        println!("{:<12} {:>16}  positions", "account", "cash");
        for (id, state) in selected {
            let positions: Vec<String> = state
                .positions
                .iter()
                .filter(|(_, shares)| **shares != 0)
                .map(|(symbol, shares)| format!("{symbol}:{shares}"))
                .collect();
            println!("{:<12} {:>16}  {}", id.as_str(), state.cash.to_string(), positions.join(" "));
        }
    }
    store.close().await;
    Ok(true)
}
