//! `tradeflow run stream`.

use crate::args::{StoreArgs, WorkloadArgs, finish};
use crate::progress;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_cluster::{Backend, Cluster};
use tradeflow_store::Store;
use tradeflow_stream::StreamOptions;
use tradeflow_stream::publisher::PublisherConfig;

/// Parses `--broker`: one of the backends, by name.
pub fn backend_parser() -> impl clap::builder::TypedValueParser<Value = Backend> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Backend::ALL.map(Backend::as_str)).try_map(|name| name.parse::<Backend>())
}

/// Starts or names the broker a backend stands for. `--bootstrap` alone (with the default
/// mock) means an external cluster, unless `strict`, where the backend must say external.
pub fn cluster(backend: Backend, bootstrap: Option<&str>, strict: bool) -> anyhow::Result<Cluster> {
    let backend = match (backend, bootstrap) {
        (Backend::Mock, Some(_)) if !strict => Backend::External,
        _ => backend,
    };
    backend.start(bootstrap).with_context(|| match backend {
        Backend::Mock => "starting the embedded mock cluster".to_owned(),
        Backend::External => "checking the external cluster's bootstrap servers (--bootstrap or KAFKA_BOOTSTRAP_SERVERS)".to_owned(),
        Backend::Kafka => "starting Apache Kafka (three nodes)".to_owned(),
        other => format!("starting the {other} broker"),
    })
}

/// The stream's own knobs (shared by `run stream` and `compare`).
#[derive(Args, Clone)]
pub struct StreamKnobs {
    /// Partitions of the trades topic (created if missing).
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Consumers of the balance service in this process (one consumer group).
    #[arg(long, default_value_t = 3)]
    pub consumers: u32,
    /// Producer linger: how long to wait to fill a batch before sending it.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u32,
    /// Producer batch: most messages in one produce batch.
    #[arg(long, default_value_t = 10_000)]
    pub batch_max: u32,
    /// Balance service batch: most messages applied in one database transaction.
    #[arg(long = "stream-batch-size", default_value_t = 500)]
    pub stream_batch_size: usize,
    /// Balance service: how long a consumer waits to fill a batch once its first message
    /// is in, in ms (0: it takes what librdkafka has fetched ahead, and waits for nothing).
    /// Longer waits make fewer, larger transactions.
    #[arg(long, default_value_t = tradeflow_stream::run::FILL_WAIT_DEFAULT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub fill_wait_ms: u64,
    /// Balance service: how long, in ms, a consumer lets the offsets of the batches it
    /// applied gather before it commits them in one request (also once due while it waits
    /// for messages, and at once when it stops). 0: a commit after every batch. Fewer commits are fewer
    /// requests to the group coordinator, which answers heartbeats too; a crash redelivers
    /// up to this much more (the apply log skips it).
    #[arg(long, default_value_t = tradeflow_stream::service::COMMIT_INTERVAL_DEFAULT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub commit_interval_ms: u64,
    /// Balance service: each consumer fills its next batch while it triages and applies
    /// one (pipelining; batches are still applied one after another, so each partition's
    /// order holds). Off by default: the consumer applies each batch before fetching the
    /// next.
    #[arg(long)]
    pub pipeline: bool,
    /// Balance service: the consumers hand their batches to one writer, which applies the
    /// batches waiting together in one transaction and commits once (group commit); off
    /// by default: each consumer runs its own transaction (on SQLite they take the one
    /// connection in turn). The run record's `group_commits` says how many transactions
    /// held how many batches.
    #[arg(long)]
    pub group_commit: bool,
    /// Balance service: how long a fetch waits at the broker for messages before it is
    /// answered empty (librdkafka's `fetch.wait.max.ms`), in ms. The mock cluster waits all
    /// of it on an empty fetch, so there it adds up to this much to an event's latency.
    #[arg(long, default_value_t = tradeflow_stream::FETCH_WAIT_MAX_MS, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub fetch_wait_max_ms: u32,
    /// The broker: mock (librdkafka's mock cluster, three brokers in this process), tansu (a
    /// tansu process from TANSU_BIN or PATH, started on a free port), kafka (Apache Kafka,
    /// three JVM nodes, RF 3, from KAFKA_HOME), container, external (any Kafka at
    /// --bootstrap or KAFKA_BOOTSTRAP_SERVERS).
    #[arg(long, default_value_t = Backend::Mock, value_parser = backend_parser())]
    pub broker: Backend,
    /// Kafka bootstrap servers (HOST:PORT,...); implies --broker external.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// The topic of trade events.
    #[arg(long, default_value = "trades")]
    pub topic: String,
}

impl StreamKnobs {
    /// Starts the mock cluster or names the external one.
    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        cluster(self.broker, self.bootstrap.as_deref(), false)
    }

    /// The run options for a workload.
    pub fn options(&self, workload: tradeflow_domain::WorkloadConfig, stall_timeout: Duration) -> StreamOptions {
        StreamOptions {
            topic: self.topic.clone(),
            partitions: self.partitions,
            consumers: self.consumers,
            publisher: PublisherConfig {
                linger_ms: self.linger_ms,
                batch_max: self.batch_max,
                ..PublisherConfig::default()
            },
            batch_size: self.stream_batch_size,
            fill_wait: Duration::from_millis(self.fill_wait_ms),
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            pipeline: self.pipeline,
            group_commit: self.group_commit,
            fetch_wait_max_ms: self.fetch_wait_max_ms,
            stall_timeout,
            ..StreamOptions::new(workload)
        }
    }
}

/// Arguments of `tradeflow run stream`.
#[derive(Args)]
pub struct StreamArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    knobs: StreamKnobs,
    /// Give up when lag has not shrunk for this many seconds after the last event was
    /// published; what is unapplied then counts as lost.
    #[arg(long, default_value_t = 30)]
    stall_timeout_s: u64,
    /// Serve offset lag and time lag as Prometheus text on this address (HOST:PORT).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Write the run record (JSON) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the stream; returns whether the checker passed.
pub async fn run(arguments: StreamArgs) -> anyhow::Result<bool> {
    let workload = arguments.workload.config()?;
    println!("seed: {}", workload.seed);
    if let Some(path) = &arguments.json {
        crate::args::ensure_writable_file(path, "--json")?;
    }
    let mut options = arguments.knobs.options(workload, Duration::from_secs(arguments.stall_timeout_s));
    options.validate().context("checking the stream options")?;
    // The cluster next: a broker that does not answer must not leave a new store behind.
    let cluster = arguments.knobs.cluster()?;
    let store = arguments.store.open().await?;
    let _server = match &arguments.metrics_addr {
        Some(address) => {
            let text = tradeflow_stream::metrics::MetricsText::default();
            let (bound, server) = tradeflow_stream::metrics::serve(address, text.clone()).await?;
            println!("metrics: http://{bound}/metrics");
            options.metrics = Some(text);
            Some(AbortOnDrop(server))
        }
        None => None,
    };
    let record = run_once(&store, &cluster, &options).await?;
    finish(&record, arguments.json.as_deref(), &store).await
}

/// Prints what a stream run is about to do: its options, store and broker.
pub fn announce(store: &Store, cluster: &Cluster, options: &StreamOptions) {
    println!(
        "{} on {} ({}) via {} ({}), {} events at {}/s ({})",
        options.label(),
        store.kind(),
        store.url_redacted(),
        cluster.backend(),
        cluster.bootstrap_servers(),
        options.workload.events,
        options.workload.rate_per_s,
        options.workload.profile.as_str()
    );
}

/// One stream run with progress on standard error.
pub async fn run_once(store: &Store, cluster: &Cluster, options: &StreamOptions) -> anyhow::Result<RunRecord> {
    announce(store, cluster, options);
    let (sender, receiver) = watch::channel(RunProgress::default());
    let drawing = progress::spawn("stream".into(), receiver);
    let outcome = tradeflow_stream::run(store, cluster, options, &sender).await;
    drop(sender);
    let _ = drawing.await;
    outcome.context("running the stream")
}

/// Stops a background task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
