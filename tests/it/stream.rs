//! The stream end to end on librdkafka's mock cluster: correct with one and with several
//! consumers, safe across consumer crashes, and dead letters for what cannot be applied.

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{RunProgress, RunRecord, check_workload};
use tradeflow_cluster::Cluster;
use tradeflow_domain::{RateProfile, Workload, WorkloadConfig, encode};
use tradeflow_store::Store;
use tradeflow_stream::dlq;
use tradeflow_stream::publisher::{Deliveries, Publisher, PublisherConfig};
use tradeflow_stream::{ServiceConfig, ServiceCounters, StreamOptions, run_service};

fn workload(seed: u64, events: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        events,
        accounts: 40,
        rate_per_s: 20_000.0,
        profile: RateProfile::Steady,
        skew: tradeflow_domain::workload::ACCOUNT_SKEW,
        mix: tradeflow_domain::EventMix::default(),
    }
}

async fn run(store: &Store, seed: u64, partitions: i32, consumers: u32) -> RunRecord {
    run_with(store, seed, partitions, consumers, false).await
}

async fn run_with(store: &Store, seed: u64, partitions: i32, consumers: u32, group_commit: bool) -> RunRecord {
    eprintln!("seed: {seed}, group commit: {group_commit}");
    let cluster = tradeflow_tests::mock_cluster(3);
    let options = StreamOptions {
        partitions,
        consumers,
        batch_size: 100,
        group_commit,
        stall_timeout: Duration::from_secs(20),
        ..StreamOptions::new(workload(seed, 3_000))
    };
    let (progress, _receiver) = watch::channel(RunProgress::default());
    tradeflow_stream::run(store, &cluster, &options, &progress)
        .await
        .expect("the run completes")
}

fn assert_correct(record: &RunRecord) {
    assert_eq!(record.applied, record.events, "{}", record.table());
    assert_eq!(record.check.verdict, Verdict::Pass, "{}", record.table());
    assert!(!record.lag.is_empty(), "lag was sampled");
    // Each applied event's latency (its intended send to its database commit) was
    // recorded, and reads as one: a tenth of a millisecond or more (a producer linger, a
    // fetch and a transaction lie between), below the run's own length.
    let latency = record.latency_ms;
    assert!(latency.p50 >= 0.1 && latency.max < 60_000.0, "latency recorded: {latency:?}");
    // So was each acknowledgement's, from the same intended send: the producer lingers
    // (5 ms by default) before a batch goes out, so none comes back in under a millisecond.
    let acked = record.acked_latency().expect("the record has the acknowledgement latency");
    assert!(
        acked.p50 >= 1.0 && acked.max < 60_000.0,
        "acknowledgement latency recorded: {acked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_on_the_mock_cluster_matches_the_oracle() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let record = run(&store, 21, 4, 1).await;
    assert_correct(&record);
    // The record says the run ended with everything applied, not by a stall or at the log's end.
    assert_eq!(record.config["ended"], "drained", "{}", record.config);
    // Where the consumer's time went: every batch ran a transaction, so applying took time.
    let applying = record.config["consumer_time_s"]["applying"].as_f64().unwrap_or(0.0);
    assert!(applying > 0.0, "no time applying: {}", record.config["consumer_time_s"]);
    // Every event went through a batch transaction that committed, none of them empty.
    let batches = record.config["batches_applied"].as_u64().unwrap_or(0);
    assert!(
        (1..=record.applied).contains(&batches),
        "{batches} batches for {} events",
        record.applied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_consumers_on_the_mock_cluster_match_the_oracle() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let record = run(&store, 22, 6, 3).await;
    assert_correct(&record);
    assert!(
        record.config["group_commits"].is_null(),
        "no writer, no group commits: {}",
        record.config
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_hand_their_batches_to_one_group_commit_writer_match_the_oracle() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let record = run_with(&store, 24, 6, 3, true).await;
    assert_correct(&record);
    // Every batch the consumers applied went through the writer, in as many transactions
    // as it committed (fewer when batches waited for it together).
    let commits = &record.config["group_commits"];
    let batches = record.config["batches_applied"].as_u64().unwrap_or(0);
    assert_eq!(commits["batches"].as_u64(), Some(batches), "{}", record.config);
    let transactions = commits["transactions"].as_u64().unwrap_or(0);
    assert!(
        (1..=batches).contains(&transactions),
        "{transactions} transactions for {batches} batches"
    );
    assert_eq!(record.config["group_commit"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at DATABASE_URL (default: the server .ci/run starts)"]
async fn several_consumers_into_postgres_match_the_oracle() {
    let Some((store, _url)) = tradeflow_tests::postgres_database("several_consumers_into_postgres_match_the_oracle").await else {
        return;
    };
    assert_correct(&run(&store, 23, 6, 3).await);
}

fn service_config(bootstrap: &str, name: &str, batch_size: usize) -> ServiceConfig {
    ServiceConfig {
        bootstrap: bootstrap.to_owned(),
        topic: "trades".into(),
        group: "balances".into(),
        name: name.to_owned(),
        batch_size,
        fill_wait: Duration::from_millis(5),
        fetch_wait_max_ms: tradeflow_stream::FETCH_WAIT_MAX_MS,
        session_timeout_ms: 6_000,
        commit: tradeflow_stream::CommitPolicy::AfterDatabase,
        commit_interval: tradeflow_stream::service::COMMIT_INTERVAL_DEFAULT,
        dead_letter: true,
        journal: None,
        apply_delay: Duration::ZERO,
        dedup: tradeflow_store::Dedup::ApplyLog,
        fencing: true,
        key_check: true,
        poison_exercise: false,
        database_retry: tradeflow_stream::service::DatabaseRetry::Backoff,
        max_poll_interval_ms: None,
        schema_newest: tradeflow_domain::SCHEMA_VERSION,
        prefetch: tradeflow_stream::service::Prefetch::Bounded,
        schema_exercise: false,
        instance_id: None,
        held_exercise: false,
        pipeline: true,
    }
}

/// A balance service running in this process: its stop switch, its task, its counters.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<tradeflow_check::LatencyRecorder, tradeflow_stream::StreamError>>,
    counters: Arc<ServiceCounters>,
}

/// Starts a balance service on `store` with `config` and `max.poll.interval.ms` 6 s unless
/// it says otherwise: a member of the database-outage tests.
fn start_member(store: &Store, mut config: ServiceConfig) -> Running {
    config.max_poll_interval_ms.get_or_insert(6_000);
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let task = tokio::spawn(run_service(store.clone(), config, stop_receiver, counters.clone()));
    Running { stop, task, counters }
}

impl Running {
    /// Tells it to stop and waits until it has.
    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.expect("join").expect("the service stops cleanly");
    }
}

/// A counter's value.
fn read(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at DATABASE_URL (default: the server .ci/run starts)"]
async fn a_balance_service_killed_mid_batch_and_restarted_loses_nothing_and_applies_nothing_twice() {
    let seed = 31;
    eprintln!("seed: {seed}");
    // Killing a task is how this test crashes the service, so the store must survive a
    // connection dropped in the middle of a transaction the way a server does for a killed
    // process: PostgreSQL rolls it back at once. (A SQLite connection dropped by a killed
    // task can keep the file's write lock while its worker thread finishes; a killed
    // process releases it with the file.)
    let Some((store, _url)) = tradeflow_tests::postgres_database("a_balance_service_killed_mid_batch").await else {
        return;
    };
    let cluster = tradeflow_tests::mock_cluster(3);
    cluster.ensure_topic("trades", 4, 1).await.expect("topic");
    cluster.ensure_topic("trades.dlq", 1, 1).await.expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let workload = Workload::generate(&workload(seed, 4_000)).expect("workload");

    let deliveries = Arc::new(Deliveries::new(workload.events.len()));
    let publisher = Publisher::new(&bootstrap, "trades", &PublisherConfig::default(), deliveries.clone()).expect("publisher");
    for (index, scheduled) in workload.events.iter().enumerate() {
        publisher.publish(index, &scheduled.event, 0).await.expect("publish");
    }
    publisher.flush().await.expect("flush");
    assert_eq!(deliveries.acked(), 4_000);

    // Kill the service (drop its task wherever it is: mid-transaction, or between the
    // database commit and the offset commit) three times, restarting it each time.
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    for round in 0..3_u64 {
        let before = counters.applied.load(std::sync::atomic::Ordering::Relaxed);
        let service = tokio::spawn(run_service(
            store.clone(),
            service_config(&bootstrap, &format!("victim-{round}"), 50),
            stop_receiver.clone(),
            counters.clone(),
        ));
        wait_until("the service to apply something", Duration::from_secs(60), || {
            service.is_finished() || counters.applied.load(std::sync::atomic::Ordering::Relaxed) > before + 200
        })
        .await;
        assert!(!service.is_finished(), "the service stopped by itself: {:?}", service.await);
        service.abort();
        let _ = service.await;
        eprintln!(
            "killed the service after {} applied events",
            counters.applied.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    // The worst crash of all lands after a database commit and before its offset commit.
    // A survivor in a group that never committed (as if every offset commit so far had
    // been lost) makes that certain for every batch applied so far: all of it is
    // redelivered, and the apply log must skip all of it.
    let applied_before_rewind = counters.applied.load(std::sync::atomic::Ordering::Relaxed);
    let mut survivor_config = service_config(&bootstrap, "survivor", 50);
    survivor_config.group = "balances-offsets-lost".into();
    let survivor_counters = Arc::new(ServiceCounters::default());
    let survivor = tokio::spawn(run_service(
        store.clone(),
        survivor_config,
        stop_receiver.clone(),
        survivor_counters.clone(),
    ));
    wait_until("the survivor to process every message", Duration::from_secs(120), || {
        survivor_counters.processed() >= 4_000
    })
    .await;
    stop.send_replace(true);
    survivor.await.expect("join").expect("the survivor stops cleanly");

    assert_every_event_applied_once(&store, &workload, 4_000).await;
    let skipped = survivor_counters.duplicates.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("redelivered and skipped: {skipped}");
    assert!(
        skipped >= applied_before_rewind,
        "every event applied before the rewind is redelivered and skipped ({skipped} < {applied_before_rewind})"
    );
}

/// A poison message: the error kind it must be dead-lettered with, its key, its payload.
type Poison<'a> = (&'a str, Option<&'a str>, Option<Vec<u8>>);

async fn produce_raw(producer: &FutureProducer, key: Option<&str>, payload: Option<&[u8]>) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to("trades");
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer.send(record, Duration::from_secs(10)).await.expect("raw produce");
}

async fn read_dead_letters(bootstrap: &str, expected: usize) -> Vec<BTreeMap<String, String>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    consumer.subscribe(&["trades.dlq"]).expect("subscribe");
    let mut letters = Vec::new();
    while letters.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a dead letter arrives")
            .expect("read");
        let mut headers = BTreeMap::new();
        for name in [
            dlq::HEADER_ERROR_KIND,
            dlq::HEADER_ERROR_REASON,
            dlq::HEADER_SOURCE_TOPIC,
            dlq::HEADER_SOURCE_PARTITION,
            dlq::HEADER_SOURCE_OFFSET,
            dlq::HEADER_FAILED_AT_NS,
        ] {
            headers.insert(name.to_owned(), dlq::header(&message, name).unwrap_or_default());
        }
        headers.insert(
            "payload".into(),
            String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        );
        letters.push(headers);
    }
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_with_their_reason_while_the_rest_flows_and_replay_sends_them_back() {
    let seed = 41;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let cluster = tradeflow_tests::mock_cluster(3);
    cluster.ensure_topic("trades", 3, 1).await.expect("topic");
    cluster.ensure_topic("trades.dlq", 1, 1).await.expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let workload = Workload::generate(&workload(seed, 500)).expect("workload");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");

    let valid = workload.events.get(0).expect("an event").event;
    let valid_json: serde_json::Value = serde_json::from_slice(&encode(&valid)).expect("json");
    let with = |field: &str, value: serde_json::Value| {
        let mut changed = valid_json.clone();
        changed[field] = value;
        serde_json::to_vec(&changed).expect("json")
    };
    let key = Some(valid.account_id.as_str());
    let poison: Vec<Poison<'_>> = vec![
        ("not_json", key, Some(b"{\"schema_version\": 1, ".to_vec())),
        ("unknown_schema_version", key, Some(with("schema_version", 3.into()))),
        ("invalid_value", key, Some(with("type", "refund".into()))),
        (
            "missing_field",
            key,
            Some({
                let mut changed = valid_json.clone();
                changed.as_object_mut().expect("object").remove("account_seq");
                serde_json::to_vec(&changed).expect("json")
            }),
        ),
        ("key_mismatch", Some("acct-99999"), Some(encode(&valid))),
        ("empty_payload", key, None),
        ("empty_payload", key, Some(Vec::new())),
    ];
    // Half the valid events, the poison, then the other half: the partitions must keep flowing.
    let mut publishing = Vec::new();
    for scheduled in workload.events.range(0, 250) {
        publishing.push((Some(scheduled.event.account_id.as_str().to_owned()), Some(encode(&scheduled.event))));
    }
    for (_, key, payload) in &poison {
        publishing.push((key.map(str::to_owned), payload.clone()));
    }
    for scheduled in workload.events.iter_from(250) {
        publishing.push((Some(scheduled.event.account_id.as_str().to_owned()), Some(encode(&scheduled.event))));
    }
    for (key, payload) in &publishing {
        produce_raw(&producer, key.as_deref(), payload.as_deref()).await;
    }

    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let service = tokio::spawn(run_service(
        store.clone(),
        service_config(&bootstrap, "service", 100),
        stop_receiver.clone(),
        counters.clone(),
    ));
    wait_until(
        "the valid events to be applied and the poison dead-lettered",
        Duration::from_secs(60),
        || counters.processed() >= publishing.len() as u64,
    )
    .await;

    assert_every_event_applied_once(&store, &workload, 500).await;
    assert_eq!(
        counters.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        poison.len() as u64
    );
    // Counted per error kind too (the run record's dead letters by kind).
    let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, _, _) in &poison {
        *per_kind.entry((*kind).to_owned()).or_default() += 1;
    }
    let counted: BTreeMap<String, u64> = counters
        .dead_letter_kinds
        .lock()
        .expect("the kinds")
        .iter()
        .map(|(kind, (count, _))| (kind.clone(), *count))
        .collect();
    assert_eq!(counted, per_kind, "dead letters counted per error kind");

    let letters = read_dead_letters(&bootstrap, poison.len()).await;
    let kinds: HashSet<&str> = letters.iter().map(|letter| letter[dlq::HEADER_ERROR_KIND].as_str()).collect();
    let expected: HashSet<&str> = poison.iter().map(|(kind, _, _)| *kind).collect();
    assert_eq!(kinds, expected, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter[dlq::HEADER_SOURCE_TOPIC], "trades");
        assert!(
            letter[dlq::HEADER_SOURCE_PARTITION]
                .parse::<i32>()
                .is_ok_and(|partition| (0..3).contains(&partition)),
            "{letter:?}"
        );
        assert!(letter[dlq::HEADER_SOURCE_OFFSET].parse::<i64>().is_ok(), "{letter:?}");
        assert!(letter[dlq::HEADER_FAILED_AT_NS].parse::<i64>().is_ok_and(|at| at > 0), "{letter:?}");
        assert!(!letter[dlq::HEADER_ERROR_REASON].is_empty(), "{letter:?}");
    }
    let schema = letters
        .iter()
        .find(|letter| letter[dlq::HEADER_ERROR_KIND] == "unknown_schema_version")
        .expect("schema letter");
    assert!(schema[dlq::HEADER_ERROR_REASON].contains("unknown schema_version 3"), "{schema:?}");

    // Replay sends every dead letter back to `trades`; the service, unchanged, refuses them
    // again, so each comes back to the dead-letter topic: nothing is lost either way.
    let replayed = dlq::replay(&bootstrap, "trades.dlq", "replayer").await.expect("replay");
    assert_eq!(replayed.moved, poison.len() as u64);
    wait_until("the replayed letters to be refused again", Duration::from_secs(60), || {
        counters.dead_lettered.load(std::sync::atomic::Ordering::Relaxed) >= 2 * poison.len() as u64
    })
    .await;
    let again = dlq::replay(&bootstrap, "trades.dlq", "replayer").await.expect("second replay");
    assert_eq!(
        again.moved,
        poison.len() as u64,
        "the replay group resumes after what it already moved"
    );
    stop.send_replace(true);
    service.await.expect("join").expect("the service stops cleanly");
}

/// The group's committed offset of `trades` partition 0 (0 when it has none), read by the
/// lag probe as another member would.
fn committed_offset(bootstrap: &str, group: &str) -> Option<i64> {
    let probe = tradeflow_stream::lag::LagProbe::new(bootstrap, "trades", group, 1).ok()?;
    Some(probe.probe().ok()?.first()?.committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_broker_deleted_before_they_were_read_are_counted_not_silently_skipped() {
    let seed = 47;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let cluster = tradeflow_tests::mock_cluster(1);
    cluster.ensure_topic("trades", 1, 1).await.expect("topic");
    cluster.ensure_topic("trades.dlq", 1, 1).await.expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let workload = Workload::generate(&workload(seed, 30_000)).expect("workload");
    let deliveries = Arc::new(Deliveries::new(workload.events.len()));
    let publisher = Publisher::new(&bootstrap, "trades", &PublisherConfig::default(), deliveries.clone()).expect("publisher");
    let first = 1_000_usize;

    // The first events are applied and their offsets committed.
    for (index, scheduled) in workload.events.iter().enumerate().take(first) {
        publisher.publish(index, &scheduled.event, 0).await.expect("publish");
    }
    publisher.flush().await.expect("flush");
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let service = tokio::spawn(run_service(
        store.clone(),
        service_config(&bootstrap, "before", 500),
        stop_receiver,
        counters.clone(),
    ));
    wait_until("the first events to be applied and committed", Duration::from_secs(60), || {
        committed_offset(&bootstrap, "balances") == Some(first as i64)
    })
    .await;
    stop.send_replace(true);
    service.await.expect("join").expect("the service stops cleanly");

    // While no one reads, the rest: more than the mock keeps of a partition, so it deletes
    // the oldest of them, unread, as retention would.
    let publisher = Publisher::new(&bootstrap, "trades", &PublisherConfig::default(), deliveries.clone()).expect("publisher");
    for (index, scheduled) in workload.events.iter().enumerate().skip(first) {
        publisher.publish(index, &scheduled.event, 0).await.expect("publish");
    }
    publisher.flush().await.expect("flush");
    let watermarks: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("consumer");
    let (low, high) = watermarks
        .fetch_watermarks("trades", 0, Duration::from_secs(5))
        .expect("watermarks");
    eprintln!("log kept: offsets {low}..{high}");
    assert_eq!(high, workload.events.len() as i64);
    assert!(low > first as i64, "the mock deleted unread messages (log starts at {low})");

    // The group resumes at its committed offset, which the broker no longer has:
    // librdkafka resets to the log's start, and the service must say what that skipped.
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let service = tokio::spawn(run_service(
        store.clone(),
        service_config(&bootstrap, "after", 500),
        stop_receiver,
        counters.clone(),
    ));
    let remaining = (high - first as i64) as u64;
    wait_until("every remaining offset to be accounted for", Duration::from_secs(120), || {
        counters.processed() >= remaining
    })
    .await;
    stop.send_replace(true);
    service.await.expect("join").expect("the service stops cleanly");
    let skipped = counters.skipped.load(std::sync::atomic::Ordering::Relaxed);
    let applied = counters.applied.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("skipped {skipped}, applied {applied}");
    assert_eq!(
        skipped,
        (low - first as i64) as u64,
        "the gap between the committed offset and the log's start"
    );
    assert_eq!(applied, (high - low) as u64, "everything the broker still had is applied");
}

/// Checks the store against the workload's oracle: `count` events applied, each once, in
/// order, with the right balances.
async fn assert_every_event_applied_once(store: &Store, workload: &Workload, count: usize) {
    let (report, applied) = check_workload(store, workload, |_| true).await.expect("check");
    assert_eq!(applied, count as u64);
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
}

/// A one-broker mock cluster with `trades` (`partitions`) and its dead-letter topic; its
/// bootstrap servers.
async fn trades_on_one_broker(partitions: i32) -> (Cluster, String) {
    let cluster = tradeflow_tests::mock_cluster(1);
    cluster.ensure_topic("trades", partitions, 1).await.expect("topic");
    cluster.ensure_topic("trades.dlq", 1, 1).await.expect("dlq topic");
    let bootstrap = cluster.bootstrap_servers().to_owned();
    (cluster, bootstrap)
}

/// A workload's events with their indexes, as `publish_to` takes them.
fn indexed(workload: &Workload) -> Vec<(usize, tradeflow_domain::Event)> {
    workload
        .events
        .iter()
        .enumerate()
        .map(|(index, scheduled)| (index, scheduled.event))
        .collect()
}

/// Publishes `events` (their indexes in the workload) to `trades` at `bootstrap`.
async fn publish_to(bootstrap: &str, events: &[(usize, tradeflow_domain::Event)]) {
    let deliveries = Arc::new(Deliveries::new(events.iter().map(|(index, _)| index + 1).max().unwrap_or(0)));
    let publisher = Publisher::new(bootstrap, "trades", &PublisherConfig::default(), deliveries.clone()).expect("publisher");
    for (index, event) in events {
        publisher.publish(*index, event, 0).await.expect("publish");
    }
    publisher.flush().await.expect("flush");
    assert_eq!(deliveries.acked(), events.len() as u64, "every event acknowledged");
}

/// Events the store has applied.
async fn applied(store: &Store) -> usize {
    store.apply_log().await.expect("read the apply log").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_service_told_to_move_follows_the_producer_to_the_new_cluster_after_the_old_tail() {
    let seed = 41;
    eprintln!("seed: {seed}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    let (old, new) = (tradeflow_tests::mock_cluster(1), tradeflow_tests::mock_cluster(1));
    for cluster in [&old, &new] {
        cluster.ensure_topic("trades", 3, 1).await.expect("topic");
        cluster.ensure_topic("trades.dlq", 1, 1).await.expect("dlq topic");
    }
    let workload = Workload::generate(&workload(seed, 3_000)).expect("workload");
    let events = indexed(&workload);
    let (before, rest) = events.split_at(1_500);
    let (later, after) = rest.split_at(500);
    // The old cluster's share is there before the service starts: its tail is what the
    // service must apply before it moves.
    publish_to(old.bootstrap_servers(), before).await;
    let service = tokio::process::Command::new(tradeflow_tests::tradeflow_executable())
        .args([
            "balance-service",
            "--bootstrap",
            old.bootstrap_servers(),
            "--move-to",
            new.bootstrap_servers(),
        ])
        .args([
            "--group",
            "balances",
            "--database-url",
            &tradeflow_tests::sqlite_config(directory.path()).url,
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the service starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while applied(&store).await < before.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old cluster's events were not applied in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With nothing new on the new cluster, the service stays where it is however long the
    // old one is quiet (its lag zero): the producer has not moved, and what it still writes
    // to the old cluster is applied. A service that moved on a zero lag alone would strand
    // these.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_to(old.bootstrap_servers(), later).await;
    publish_to(new.bootstrap_servers(), after).await;
    while applied(&store).await < events.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new cluster's events were not applied in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = service.id().expect("the service runs");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(30), service.wait_with_output())
        .await
        .expect("the service stops within 30 s of SIGTERM")
        .expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("now reads trades at {}", new.bootstrap_servers())),
        "the service says it moved: {stdout}"
    );
    assert_every_event_applied_once(&store, &workload, 3_000).await;
}

/// A `Write` into a shared buffer, for a journal a test reads back.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// A consumer's journal written into this buffer.
    fn journal(&self) -> Option<Arc<tradeflow_stream::journal::Journal>> {
        Some(Arc::new(tradeflow_stream::journal::Journal::to(Box::new(self.clone()))))
    }

    /// What was written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("the buffer").clone()).expect("UTF-8")
    }

    /// The journal entries written so far, in order.
    fn entries(&self) -> Vec<tradeflow_stream::journal::JournalEntry> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a journal line"))
            .collect()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A one-partition mock cluster whose `trades` already holds `events` of a seeded
/// workload; its bootstrap servers, and the workload.
async fn published(seed: u64, events: u64) -> (Cluster, String, Workload) {
    let (cluster, bootstrap) = trades_on_one_broker(1).await;
    let workload = Workload::generate(&workload(seed, events)).expect("workload");
    let events = indexed(&workload);
    publish_to(&bootstrap, &events).await;
    (cluster, bootstrap, workload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fills_to_its_size_and_no_further_and_the_journal_numbers_what_each_received_and_applied() {
    let seed = 51;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, _workload) = published(seed, 1_000).await;
    let buffer = SharedBuffer::default();
    let mut config = service_config(&bootstrap, "batches", 100);
    // A fill wait long enough for every batch to fill from what the partition holds.
    config.fill_wait = Duration::from_millis(500);
    config.journal = buffer.journal();
    let counters = Arc::new(ServiceCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let service = tokio::spawn(run_service(store.clone(), config, stop_receiver, counters.clone()));
    wait_until("every event to be applied", Duration::from_secs(60), || {
        counters.applied.load(std::sync::atomic::Ordering::Relaxed) >= 1_000
    })
    .await;
    stop.send_replace(true);
    service.await.expect("join").expect("the service stops cleanly");

    // Batches, as the apply log has them: one transaction's rows share their apply time.
    let mut sizes: BTreeMap<i64, usize> = BTreeMap::new();
    for row in store.apply_log().await.expect("apply log") {
        *sizes.entry(row.applied_at_ns).or_default() += 1;
    }
    let sizes: Vec<usize> = sizes.into_values().collect();
    eprintln!("batch sizes: {sizes:?}");
    assert!(sizes.iter().all(|size| *size <= 100), "no batch past its size: {sizes:?}");
    assert!(
        sizes.iter().filter(|size| **size == 100).count() >= 8,
        "the batches fill from a partition that holds a thousand messages: {sizes:?}"
    );

    // The journal: batches numbered 1, 2, 3, ... as received, their offsets contiguous
    // from 0 to 999, each applied under its own number before the next is received.
    let entries = buffer.entries();
    let (mut next_offset, mut expected_batch, mut open) = (0_i64, 1_u64, None);
    for entry in &entries {
        match entry {
            tradeflow_stream::journal::JournalEntry::Received { batch, messages, ranges } => {
                assert_eq!(open, None, "a batch received before the last one was applied: {entry:?}");
                assert_eq!(*batch, expected_batch, "batches are numbered as received");
                assert_eq!(ranges, &vec![(0, next_offset, next_offset + *messages as i64 - 1)], "{entry:?}");
                next_offset += *messages as i64;
                open = Some(*batch);
            }
            tradeflow_stream::journal::JournalEntry::Applied { batch, applied, .. } => {
                assert_eq!(open, Some(*batch), "applied under the number it was received with: {entry:?}");
                assert!(*applied > 0, "{entry:?}");
                expected_batch += 1;
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(next_offset, 1_000, "the journal says every message was received");
    assert_eq!(expected_batch as usize - 1, sizes.len(), "a journal batch for each transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_commits_before_the_database_and_crashes_mid_batch_loses_the_batch() {
    let seed = 53;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, _workload) = published(seed, 300).await;
    let mut config = service_config(&bootstrap, "commits-first", 100);
    config.commit = tradeflow_stream::CommitPolicy::BeforeDatabase;
    let counters = Arc::new(ServiceCounters::default());
    // Told to crash before it reads anything: it dies with its first batch, after the
    // policy's early commit and before the database transaction.
    let (_control, receiver) = watch::channel(tradeflow_stream::Control::CrashMidBatch);
    tradeflow_stream::run_controlled(store.clone(), config, receiver, counters.clone())
        .await
        .expect("the consumer returns at its crash");
    let log = counters.fault_log.lock().expect("the fault log").clone();
    assert_eq!(counters.crashes.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(log.len(), 1, "{log:?}");
    let held = log[0].messages;
    assert!(held > 0, "the crash held a batch: {log:?}");
    assert!(store.apply_log().await.expect("apply log").is_empty(), "nothing applied");
    assert_eq!(
        committed_offset(&bootstrap, "balances"),
        Some(held as i64),
        "the batch's offsets were committed before the crash: a restart skips it (lost)"
    );
}

/// The group's offset lag on `trades`, summed over `partitions` (None while unreadable).
fn group_lag(bootstrap: &str, group: &str, partitions: i32) -> Option<i64> {
    let probe = tradeflow_stream::lag::LagProbe::new(bootstrap, "trades", group, partitions).ok()?;
    let read = probe.probe().ok()?;
    (read.len() == partitions as usize).then(|| read.iter().map(|partition| partition.offset_lag).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_comes_back_after_another_member_read_it_is_not_counted_as_skipped() {
    let seed = 57;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap) = trades_on_one_broker(2).await;
    let workload = Workload::generate(&workload(seed, 1_500)).expect("workload");
    let events = indexed(&workload);
    let applied = |counters: &ServiceCounters| counters.applied.load(std::sync::atomic::Ordering::Relaxed);
    let assigned = |counters: &ServiceCounters| counters.assigned_partitions.load(std::sync::atomic::Ordering::Relaxed);
    // The first member reads both partitions alone.
    publish_to(&bootstrap, &events[..500]).await;
    let first_counters = Arc::new(ServiceCounters::default());
    let (stop_first, receiver) = watch::channel(false);
    let first_task = tokio::spawn(run_service(
        store.clone(),
        service_config(&bootstrap, "first", 100),
        receiver,
        first_counters.clone(),
    ));
    wait_until(
        "the first member to apply and commit what is there",
        Duration::from_secs(60),
        || applied(&first_counters) >= 500 && group_lag(&bootstrap, "balances", 2) == Some(0),
    )
    .await;
    // A second member joins and takes one of the two partitions, and reads on in it.
    let second_counters = Arc::new(ServiceCounters::default());
    let (stop_second, receiver) = watch::channel(false);
    let second_task = tokio::spawn(run_service(
        store.clone(),
        service_config(&bootstrap, "second", 100),
        receiver,
        second_counters.clone(),
    ));
    wait_until("a partition to move to the second member", Duration::from_secs(60), || {
        assigned(&second_counters) == 1 && assigned(&first_counters) == 1
    })
    .await;
    publish_to(&bootstrap, &events[500..1_000]).await;
    wait_until("both members to apply and commit what came", Duration::from_secs(60), || {
        applied(&first_counters) + applied(&second_counters) >= 1_000 && group_lag(&bootstrap, "balances", 2) == Some(0)
    })
    .await;
    assert!(applied(&second_counters) > 0, "the second member read its partition");
    // It leaves: its partition goes back to the first member, which must resume from the
    // committed offset, not from where it had itself got to before.
    stop_second.send_replace(true);
    second_task.await.expect("join").expect("the second member stops cleanly");
    publish_to(&bootstrap, &events[1_000..]).await;
    wait_until("the first member to apply the rest", Duration::from_secs(60), || {
        applied(&first_counters) + applied(&second_counters) >= 1_500
    })
    .await;
    stop_first.send_replace(true);
    first_task.await.expect("join").expect("the first member stops cleanly");
    assert_eq!(
        first_counters.skipped.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing was deleted: what the other member read is not a gap"
    );
    assert_every_event_applied_once(&store, &workload, 1_500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_pauses_the_partitions_and_keeps_the_member_in_its_group_until_it_is_back() {
    let seed = 61;
    eprintln!("seed: {seed}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, workload) = published(seed, 1_000).await;
    // Another process takes the store's write lock before the service starts: every batch
    // it receives meets a database that does not answer.
    let mut holder = hold_sqlite_lock(directory.path()).await;

    let patient = start_member(&store, service_config(&bootstrap, "patient", 100));
    let counters = patient.counters.clone();
    wait_until("the breaker to open", Duration::from_secs(60), || {
        patient.task.is_finished() || read(&counters.breaker_opened) > 0
    })
    .await;
    let opened_after = read(&counters.database_failures);
    assert!(
        opened_after >= u64::from(tradeflow_stream::service::BREAKER_OPENS_AFTER),
        "the breaker opens after {} failed calls in a row, not after {opened_after}",
        tradeflow_stream::service::BREAKER_OPENS_AFTER
    );
    // Past max.poll.interval.ms with the database still away: a member that stopped polling
    // would be out of its group by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !patient.task.is_finished(),
        "the service stopped by itself: {:?}",
        patient.task.await
    );
    let failures = read(&counters.database_failures);
    eprintln!(
        "while the database was away: {} calls, {failures} failed, breaker opened {} times, {} rebalances",
        read(&counters.database_attempts),
        read(&counters.breaker_opened),
        read(&counters.rebalances)
    );
    assert_eq!(read(&counters.applied), 0, "nothing applies while the file is locked");
    assert!(failures >= 3, "every call failed: {failures}");
    assert!(failures <= 12, "calls a backoff apart, not at once: {failures} in some 14 s");
    assert_eq!(read(&counters.max_poll_exceeded), 0, "the member polled on");
    assert_eq!(read(&counters.rebalances), 1, "its first assignment and nothing since");

    holder.kill().await.expect("the lock holder dies");
    wait_until("every event to be applied and committed", Duration::from_secs(60), || {
        read(&counters.applied) >= 1_000 && committed_offset(&bootstrap, "balances") == Some(1_000)
    })
    .await;
    patient.stop().await;
    assert_every_event_applied_once(&store, &workload, 1_000).await;
    // The batch that waited out the outage (longer than the session timeout, its
    // partition kept all along) was committed once applied: its lease started again when
    // the database answered, so the fence did not take it for a zombie's. (The group's
    // offset alone would not show it: the next batch's commit covers it.)
    assert_eq!(
        read(&counters.committed),
        1_000,
        "every message applied was handed to a commit, the batch held through the outage included"
    );
}

/// Starts a `tradeflow hold-sqlite-lock` process on the test store in `directory` and
/// waits until it holds the file's write lock: the database is away for the balance
/// service until the process is killed.
async fn hold_sqlite_lock(directory: &std::path::Path) -> tokio::process::Child {
    let mut holder = tokio::process::Command::new(tradeflow_tests::tradeflow_executable())
        .arg("hold-sqlite-lock")
        .arg(directory.join("test.db"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the lock holder starts");
    let mut said = tokio::io::BufReader::new(holder.stdout.take().expect("its stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut said, &mut line).await.expect("it says");
    assert_eq!(line.trim(), "locked");
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_partitions_handed_over_while_the_database_is_away_are_applied_once_it_is_back() {
    let seed = 67;
    eprintln!("seed: {seed}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap) = trades_on_one_broker(4).await;
    let workload = Workload::generate(&workload(seed, 2_000)).expect("workload");
    publish_to(&bootstrap, &indexed(&workload)).await;
    let mut holder = hold_sqlite_lock(directory.path()).await;
    // Two members, each with a batch in hand, each breaker open.
    let patient = start_member(&store, service_config(&bootstrap, "patient", 100));
    let leaver = start_member(&store, service_config(&bootstrap, "leaver", 100));
    wait_until("both breakers to open", Duration::from_secs(60), || {
        [&patient, &leaver]
            .iter()
            .all(|member| member.task.is_finished() || read(&member.counters.breaker_opened) > 0)
    })
    .await;
    // Once the waits between tries are long (a second or more), one member leaves with its
    // batch unapplied: its partitions go to the other while that one waits with its own
    // paused, so their messages reach it between two tries (kept for its next batch).
    wait_until("longer waits between tries", Duration::from_secs(60), || {
        patient.task.is_finished() || read(&patient.counters.database_failures) >= 6
    })
    .await;
    leaver.stop().await;
    let counters = patient.counters.clone();
    wait_until("the patient member to take the partitions over", Duration::from_secs(30), || {
        read(&counters.rebalances) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(read(&counters.applied), 0, "nothing applies while the file is locked");
    assert!(
        read(&counters.fenced) > 0,
        "the batch it held when the partitions changed hands was dropped (fenced), not tried again"
    );
    holder.kill().await.expect("the lock holder dies");
    // Before librdkafka's pause was undone on assignment, the partitions this member had
    // paused came back to it paused and were never read again: 856 of 2,000 applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !patient.task.is_finished() && read(&counters.applied) < 2_000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "after the database came back: applied {}, redelivered {}, skipped {}, rebalances {}, fenced {}",
        read(&counters.applied),
        read(&counters.duplicates),
        read(&counters.skipped),
        read(&counters.rebalances),
        read(&counters.fenced)
    );
    patient.stop().await;
    assert_eq!(read(&counters.skipped), 0, "no offset was jumped over");
    assert_every_event_applied_once(&store, &workload, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_retries_its_database_at_once_is_taken_out_of_its_group_and_says_so() {
    let seed = 73;
    eprintln!("seed: {seed}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    // One batch's worth, read whole into the first batch (a fill wait long enough for
    // it): the partition is then empty while the batch meets the database's outage, so
    // that a pipeline reading ahead would poll the whole outage if it did not stop.
    let (_cluster, bootstrap, workload) = published(seed, 100).await;
    let mut holder = hold_sqlite_lock(directory.path()).await;
    let mut config = service_config(&bootstrap, "hasty", 100);
    config.fill_wait = Duration::from_millis(500);
    config.database_retry = tradeflow_stream::service::DatabaseRetry::AtOnce;
    let hasty = start_member(&store, config);
    let counters = hasty.counters.clone();
    wait_until("a failed call", Duration::from_secs(60), || {
        hasty.task.is_finished() || read(&counters.database_failures) > 0
    })
    .await;
    // Past max.poll.interval.ms without a poll: librdkafka takes the member out, and says
    // so at its next poll, once the database is back.
    tokio::time::sleep(Duration::from_secs(9)).await;
    holder.kill().await.expect("the lock holder dies");
    wait_until("every event to be applied", Duration::from_secs(60), || {
        hasty.task.is_finished() || read(&counters.applied) >= 100
    })
    .await;
    wait_until("the eviction to be reported", Duration::from_secs(30), || {
        hasty.task.is_finished() || read(&counters.max_poll_exceeded) > 0
    })
    .await;
    hasty.stop().await;
    assert!(read(&counters.max_poll_exceeded) > 0, "taken out of the group for not polling");
    assert_every_event_applied_once(&store, &workload, 100).await;
}

/// The last JSON log line of a process whose message is "batch received": its fields.
fn last_batch_received(logs: &str) -> Option<serde_json::Value> {
    logs.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == tradeflow_stream::service::BATCH_RECEIVED)
        .map(|line| line["fields"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_balance_service_process_has_logged_the_topic_partitions_and_offsets_it_holds() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let seed = 61;
    eprintln!("seed: {seed}");
    let directory = tempfile::tempdir().expect("a temporary directory");
    let (_cluster, bootstrap) = trades_on_one_broker(2).await;
    let workload = Workload::generate(&workload(seed, 2_000)).expect("workload");
    publish_to(&bootstrap, &indexed(&workload)).await;
    // The service as an operator runs it: JSON logs, each batch received at `info`. A pause
    // before each transaction keeps each batch in hand long enough to be caught holding it.
    let mut child = tokio::process::Command::new(tradeflow_tests::tradeflow_executable())
        .args([
            "--log-format",
            "json",
            "balance-service",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "trades",
        ])
        .args(["--group", "stuck-test", "--name", "stuck", "--journal", "--batch-size", "100"])
        .args(["--apply-delay-ms", "400", "--database-url"])
        .arg(tradeflow_tests::sqlite_config(directory.path()).url)
        .env("RUST_LOG", "warn,tradeflow_stream::service=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the balance service starts");
    let pid = child.id().expect("a pid");
    let mut journal = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The third batch received (the first two applied): it is stuck from here on.
    let mut received = 0;
    let held = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), journal.next_line())
            .await
            .expect("a journal line within a minute")
            .expect("reading the journal")
            .expect("the process runs on");
        if let Ok(tradeflow_stream::journal::JournalEntry::Received { ranges, .. }) = serde_json::from_str(&line) {
            received += 1;
            if received == 3 {
                break ranges;
            }
        }
    };
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status();
    assert!(stopped.is_ok_and(|status| status.success()), "SIGSTOP sent");
    // Frozen within the pause before its transaction: nothing after the receipt.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest = tokio::time::timeout(Duration::from_millis(500), journal.next_line()).await;
    assert!(rest.is_err(), "the frozen process wrote nothing after the batch it holds: {rest:?}");
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .await
        .expect("reading the logs");
    let last = last_batch_received(&logs).unwrap_or_else(|| panic!("a batch-received log line among:\n{logs}"));
    eprintln!("held {held:?}; last log line's fields: {last}");
    assert_eq!(last["messaging.destination.name"], "trades", "the line names the topic: {last}");
    assert_eq!(last["consumer"], "stuck", "the line names the consumer: {last}");
    assert_eq!(
        last["offsets"],
        tradeflow_stream::service::held_offsets(&held),
        "the line names the partitions and offsets of the batch the stuck process holds: {last}"
    );
    assert!(!held.is_empty());
}

/// One consumer applies 2,000 events of one partition, in batches of 100 that each wait
/// 50 ms before their transaction; what the pipeline read ahead, what it applied, and its
/// journal's batches.
async fn one_partition_applied(seed: u64, pipeline: bool) -> (u64, Applied) {
    eprintln!("seed: {seed}, pipeline: {pipeline}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, workload) = published(seed, 2_000).await;
    let buffer = SharedBuffer::default();
    let mut config = service_config(&bootstrap, "pipelined", 100);
    config.pipeline = pipeline;
    // A transaction that takes a while: time for the next batch to be read meanwhile.
    config.apply_delay = Duration::from_millis(50);
    config.journal = buffer.journal();
    let member = start_member(&store, config);
    let counters = member.counters.clone();
    wait_until("every event to be applied", Duration::from_secs(90), || {
        member.task.is_finished() || read(&counters.applied) >= 2_000
    })
    .await;
    member.stop().await;
    (
        read(&counters.prefetched),
        Applied {
            store,
            _directory: directory,
            workload,
            entries: buffer.entries(),
        },
    )
}

/// What a run applied: its store (and the directory that holds the file), its workload,
/// its consumer's journal.
struct Applied {
    store: Store,
    _directory: tempfile::TempDir,
    workload: Workload,
    entries: Vec<tradeflow_stream::journal::JournalEntry>,
}

/// The journal's batches, checked: numbered as received, each applied before the next is
/// received, their offsets contiguous from 0; the offsets received in all.
fn contiguous_batches(entries: &[tradeflow_stream::journal::JournalEntry]) -> i64 {
    let (mut next_offset, mut open) = (0_i64, None);
    for entry in entries {
        match entry {
            tradeflow_stream::journal::JournalEntry::Received { batch, messages, ranges } => {
                assert_eq!(open, None, "a batch received before the last one was applied: {entry:?}");
                assert_eq!(ranges, &vec![(0, next_offset, next_offset + *messages as i64 - 1)], "{entry:?}");
                next_offset += *messages as i64;
                open = Some(*batch);
            }
            tradeflow_stream::journal::JournalEntry::Applied { batch, .. } => {
                assert_eq!(open, Some(*batch), "applied under the number it was received with: {entry:?}");
                open = None;
            }
            _ => {}
        }
    }
    next_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_consumer_reads_its_next_batch_while_one_is_applied_and_applies_them_in_order() {
    let (prefetched, run) = one_partition_applied(83, true).await;
    // Each batch after the first can be read whole during the 50 ms before the transaction
    // of the one before it.
    assert!(
        prefetched >= 1_000,
        "{prefetched} of 2,000 messages were read while a batch was applied: the pipeline does not read ahead"
    );
    assert_eq!(
        contiguous_batches(&run.entries),
        2_000,
        "the journal says every message was received"
    );
    assert_every_event_applied_once(&run.store, &run.workload, 2_000).await;

    let (prefetched, run) = one_partition_applied(83, false).await;
    assert_eq!(prefetched, 0, "without pipelining nothing is read while a batch is applied");
    assert_eq!(contiguous_batches(&run.entries), 2_000);
    assert_every_event_applied_once(&run.store, &run.workload, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_partition_waits_at_its_poison_and_its_offset_is_never_committed_past_it() {
    let seed = 79;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap) = trades_on_one_broker(1).await;
    let workload = Workload::generate(&workload(seed, 300)).expect("workload");
    let events = indexed(&workload);
    // One partition: offsets 0..=99 valid, 100 a message that is not an event, then 200
    // valid ones. Batches of 40: the one that holds the poison (80..=119) applies up to
    // it while the pipeline reads ahead past it; what it read ahead must not be applied.
    publish_to(&bootstrap, &events[..100]).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let key = events[0].1.account_id.as_str().to_owned();
    producer
        .send(
            FutureRecord::to("trades").key(&key).payload("{\"schema_version\": 1, "),
            Duration::from_secs(10),
        )
        .await
        .expect("the poison is in the log");
    publish_to(&bootstrap, &events[100..]).await;
    let mut config = service_config(&bootstrap, "waiting", 40);
    config.dead_letter = false;
    let member = start_member(&store, config);
    let counters = member.counters.clone();
    wait_until("the first 100 applied and the poison read twice", Duration::from_secs(60), || {
        member.task.is_finished() || (read(&counters.applied) >= 100 && read(&counters.poison_retries) >= 2)
    })
    .await;
    // It goes back to the poison at most once per backoff (a busy machine only lowers the
    // count): a partition stuck at a message does not spin on it.
    let (before, started) = (read(&counters.poison_retries), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retries = read(&counters.poison_retries) - before;
    let bound = started.elapsed().as_millis() / tradeflow_stream::service::POISON_RETRY_BACKOFF.as_millis() + 2;
    let committed = committed_offset(&bootstrap, "balances");
    member.stop().await;
    assert!(
        retries as u128 <= bound,
        "{retries} retries of the poison in 2 s: at most one per {:?} ({bound})",
        tradeflow_stream::service::POISON_RETRY_BACKOFF
    );
    assert_eq!(read(&counters.applied), 100, "nothing behind the poison is applied");
    assert_eq!(
        committed,
        Some(100),
        "the group's offset stops at the message it could not process (100), never past it: a restart would skip it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_batch_is_applied_the_group_has_committed_the_offset_after_it() {
    let seed = 83;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap) = trades_on_one_broker(1).await;
    let workload = Workload::generate(&workload(seed, 300)).expect("workload");
    publish_to(&bootstrap, &indexed(&workload)).await;
    let member = start_member(&store, service_config(&bootstrap, "committing", 100));
    let counters = member.counters.clone();
    // The commit follows the database commit (the default interval is 0: at once).
    let committed = applied_then_committed(&member, &bootstrap, 300, Duration::from_secs(5)).await;
    member.stop().await;
    assert_eq!(read(&counters.applied), 300);
    assert_eq!(committed, Some(300), "the group's offset is the one after the last message applied");
}

/// Waits (up to a minute) until `member` has applied `events`, then up to `within` until
/// group `balances` has committed offset `events` on the one partition; the offset read last.
async fn applied_then_committed(member: &Running, bootstrap: &str, events: u64, within: Duration) -> Option<i64> {
    wait_until("every event applied", Duration::from_secs(60), || {
        member.task.is_finished() || read(&member.counters.applied) >= events
    })
    .await;
    let deadline = std::time::Instant::now() + within;
    loop {
        let committed = committed_offset(bootstrap, "balances");
        if committed == i64::try_from(events).ok() || std::time::Instant::now() >= deadline {
            return committed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applied offsets gather for the commit interval: with none, one commit request per batch
/// applied; with 2 s, a few requests for the 40 or more batches of 2,000 events in batches
/// of up to 50, and the last offsets are committed once due although nothing more comes to
/// read. Seed 84, one partition, a SQLite store of its own each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_offsets_gather_for_the_commit_interval_and_the_last_are_committed_once_due() {
    let seed = 84;
    eprintln!("seed: {seed}");
    for interval in [Duration::ZERO, Duration::from_secs(2)] {
        let (store, _directory) = tradeflow_tests::sqlite_store().await;
        let (_cluster, bootstrap, _workload) = published(seed, 2_000).await;
        let mut config = service_config(&bootstrap, "gathering", 50);
        config.commit_interval = interval;
        let member = start_member(&store, config);
        let counters = member.counters.clone();
        // Nothing more comes: the last offsets go once due, from the idle wait.
        let committed = applied_then_committed(&member, &bootstrap, 2_000, Duration::from_secs(10)).await;
        let batches = read(&counters.database_attempts) - read(&counters.database_failures);
        let requests = read(&counters.offset_commits);
        member.stop().await;
        eprintln!("interval {interval:?}: {batches} batches, {requests} commit requests");
        assert_eq!(read(&counters.applied), 2_000);
        assert_eq!(
            committed,
            Some(2_000),
            "interval {interval:?}: the offset after the last message applied is committed"
        );
        assert!(batches >= 40, "batches of up to 50: {batches}");
        if interval.is_zero() {
            assert_eq!(requests, batches, "with no interval, one commit request per batch");
        } else {
            assert!(
                requests >= 1 && requests * 4 < batches,
                "with 2 s, a few requests for {batches} batches, not {requests}"
            );
        }
    }
}

/// Offsets still gathering when the consumer stops are committed before it leaves: with a
/// commit interval of an hour, nothing is committed while it runs, and the group's offset
/// is the end of the topic once it has stopped. Seed 85, one partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_still_gathering_when_the_consumer_stops_are_committed_before_it_leaves() {
    let seed = 85;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, _workload) = published(seed, 500).await;
    let mut config = service_config(&bootstrap, "leaving", 100);
    config.commit_interval = Duration::from_secs(3600);
    let member = start_member(&store, config);
    let counters = member.counters.clone();
    let running = applied_then_committed(&member, &bootstrap, 500, Duration::from_millis(500)).await;
    member.stop().await;
    assert_eq!(read(&counters.applied), 500);
    assert_eq!(running, Some(0), "nothing committed within the hour (the probe reads 0 for none)");
    assert_eq!(read(&counters.offset_commits), 1, "one request, at the stop");
    assert_eq!(
        committed_offset(&bootstrap, "balances"),
        Some(500),
        "the stop committed the offset after the last message applied before the member left"
    );
}

/// An upgrade of the consumers waits until the group has committed what the old ones
/// handled, not only until they handled it. The schema-evolution lesson's producer-first row
/// (the old consumers dead-letter version 2, the upgraded ones replay it) with offsets
/// gathering for 5 s, so that the old consumers have handled everything while their last
/// offsets still gather. Before the upgrade waited for the commits, those offsets left with
/// the old consumers (dropped as an earlier assignment's once the new members' rebalance
/// had begun), and the upgraded consumers, starting from the older committed offsets,
/// applied version-2 events straight from the topic ahead of the replay of the same
/// accounts' earlier ones. Seed 86, the lesson's 6,000 events at 2,000/s, SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_waits_until_the_group_has_committed_what_the_old_consumers_handled() {
    use tradeflow_lab::RowVerdict;
    use tradeflow_lab::lessons::schema_evolution;
    use tradeflow_lab::variant::{Setup, VariantRun};
    let seed = 86;
    eprintln!("seed: {seed}");
    let setup = Setup {
        seed,
        events: 6_000,
        rate: 2_000.0,
        broker: tradeflow_cluster::Backend::Mock,
        store: tradeflow_store::StoreKind::Sqlite,
        service: None,
    };
    let mut variant = schema_evolution::variants(&setup).expect("the lesson runs on the mock").remove(0);
    let VariantRun::Stream(options) = &mut variant.run else {
        panic!("the producer-first row runs the stream")
    };
    options.commit_interval = Duration::from_secs(5);
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let cluster = tradeflow_tests::mock_cluster(3);
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let record = variant.run_on(&store, Some(&cluster), &progress).await.expect("the run completes");
    let count = |name: &str| record.config.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let (requests, batches) = (count("offset_commits"), count("batches_applied"));
    eprintln!("{}\n{batches} batches, {requests} commit requests", record.table());
    assert!(
        requests * 4 < batches,
        "the offsets gathered: {requests} commit requests for {batches} batches"
    );
    // The lag sample the upgrade waited for: the last one before it found the group's
    // offsets at the end of every partition (without the wait, the last 5 s of what the old
    // consumers handled were still gathering then).
    let upgrade = record
        .faults
        .iter()
        .find(|fault| fault.fault.contains("upgraded"))
        .expect("the upgrade is recorded");
    let upgraded_s = upgrade.at_ms as f64 / 1_000.0;
    let before = record
        .lag
        .iter()
        .rfind(|sample| sample.t_s <= upgraded_s)
        .expect("a lag sample before the upgrade");
    assert!(
        before.offset_lag_total == 0 && before.partitions.len() == 4,
        "upgraded at {upgraded_s:.2} s while the last lag sample ({:.2} s) had {} messages uncommitted",
        before.t_s,
        before.offset_lag_total
    );
    assert_eq!(
        variant.verdict(&record),
        RowVerdict::AsExpected,
        "dead letters, the upgrade and the replay, every event applied once and in order:\n{}",
        record.table()
    );
}

/// A rebalance landing in a fill: a member filling one batch larger than the topic, with a
/// fill wait far longer than the topic takes to read, over four partitions; a second
/// member joins while it fills, and the rebalance (its callbacks run inside the receive)
/// lands in that fill. Returns the messages the first member dropped mid-fill and, from
/// its journal in the order it happened, the batches it received holding a message of a
/// partition it did not own by then. Seed 89, 2,000 events, a SQLite store of its own.
async fn rebalance_mid_fill(fencing: bool) -> MidFill {
    let seed = 89;
    eprintln!("seed: {seed}");
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    let workload = Workload::generate(&workload(seed, 2_000)).expect("workload");
    let (_cluster, bootstrap) = trades_on_one_broker(4).await;
    publish_to(&bootstrap, &indexed(&workload)).await;
    let buffer = SharedBuffer::default();
    let mut config = service_config(&bootstrap, "filling", 10_000);
    config.fill_wait = Duration::from_secs(10);
    config.fencing = fencing;
    config.journal = buffer.journal();
    let first = start_member(&store, config);
    let assigned = |counters: &ServiceCounters| counters.assigned_partitions.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("the first member to own the four partitions", Duration::from_secs(30), || {
        assigned(&first.counters) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(read(&first.counters.applied), 0, "the first batch is still filling");
    let mut joining = service_config(&bootstrap, "joining", 100);
    joining.fencing = fencing;
    let second = start_member(&store, joining);
    wait_until("the partitions to be shared", Duration::from_secs(30), || {
        assigned(&first.counters) == 2 && assigned(&second.counters) == 2
    })
    .await;
    let events = workload.events.len() as u64;
    wait_until("every event applied and committed", Duration::from_secs(60), || {
        read(&first.counters.applied) + read(&second.counters.applied) >= events && group_lag(&bootstrap, "balances", 4) == Some(0)
    })
    .await;
    let dropped = read(&first.counters.dropped_at_rebalance);
    first.stop().await;
    second.stop().await;
    let mut owned: Vec<i32> = Vec::new();
    let (mut batches, mut rebalances, mut foreign) = (0, 0, 0);
    for entry in buffer.entries() {
        match entry {
            tradeflow_stream::journal::JournalEntry::Assigned { owned: now, .. } => {
                owned = now;
                rebalances += 1;
            }
            tradeflow_stream::journal::JournalEntry::Received { ranges, .. } => {
                batches += 1;
                if ranges.iter().any(|(partition, ..)| !owned.contains(partition)) {
                    foreign += 1;
                }
            }
            _ => {}
        }
    }
    eprintln!(
        "first member (fencing {fencing}): {batches} batches, {foreign} holding a partition not owned, {rebalances} assignment changes, {dropped} messages dropped mid-fill"
    );
    assert!(
        rebalances >= 3,
        "the first member was assigned, revoked and assigned again: {}",
        buffer.text()
    );
    MidFill {
        dropped,
        foreign,
        store,
        workload,
        _directory: directory,
    }
}

/// What [`rebalance_mid_fill`] saw, and the store and workload it ran.
struct MidFill {
    /// Messages the first member dropped mid-fill.
    dropped: u64,
    /// Batches it received holding a partition it did not own by then.
    foreign: usize,
    store: Store,
    workload: Workload,
    _directory: tempfile::TempDir,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_still_filling_when_its_partitions_are_revoked_keeps_none_of_their_messages() {
    let MidFill {
        dropped,
        foreign,
        store,
        workload,
        // Kept to the end: the SQLite file lives in it.
        _directory: _kept,
    } = rebalance_mid_fill(true).await;
    // No batch holds a message of a partition the member no longer owns, so none is
    // applied or committed by it (a batch's commit is of its own partitions).
    assert_eq!(foreign, 0, "no batch holds a partition its member did not own");
    assert!(
        dropped > 0,
        "the rebalance landed in the fill, with messages of the first assignment in hand"
    );
    assert_every_event_applied_once(&store, &workload, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_a_batch_still_filling_keeps_messages_of_partitions_revoked_meanwhile() {
    // The lesson-only configuration keeps what the fence would drop: that is what it shows.
    let MidFill { dropped, foreign, .. } = rebalance_mid_fill(false).await;
    assert_eq!(dropped, 0, "nothing dropped without the fence");
    assert!(foreign > 0, "a batch holds messages of a partition its member no longer owned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_past_the_session_timeout_is_dropped_neither_applied_nor_committed() {
    let seed = 97;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap, _workload) = published(seed, 100).await;
    let buffer = SharedBuffer::default();
    // Each batch is held a second longer than the session timeout (6 s) before its
    // database transaction: the group may have given its partitions to another member
    // meanwhile, so the consumer must drop it (the zombie's fence).
    let mut config = service_config(&bootstrap, "holding", 100);
    config.apply_delay = Duration::from_secs(7);
    config.journal = buffer.journal();
    let member = start_member(&store, config);
    wait_until("a batch fenced or applied", Duration::from_secs(30), || {
        member.task.is_finished() || read(&member.counters.fenced) > 0 || read(&member.counters.applied) > 0
    })
    .await;
    let fenced = read(&member.counters.fenced);
    let applied = read(&member.counters.applied);
    let committed = committed_offset(&bootstrap, "balances");
    member.stop().await;
    assert_eq!(fenced, 100, "the whole batch was dropped");
    assert_eq!(applied, 0, "nothing of it applied");
    assert!(store.apply_log().await.expect("apply log").is_empty(), "the apply log is empty");
    assert_eq!(committed, Some(0), "no offset committed for it (the probe reads 0 for none)");
    assert!(
        buffer
            .entries()
            .iter()
            .any(|entry| matches!(entry, tradeflow_stream::journal::JournalEntry::Fenced { batch: 1, messages: 100 })),
        "the journal a host reads says batch 1 was fenced: {}",
        buffer.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_that_is_not_an_outage_stops_the_consumer_with_it_instead_of_retrying() {
    let seed = 101;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    // A failure the database raises itself on every apply: not the database out of
    // reach, so retrying cannot help, and the consumer must stop and say why.
    sqlx::raw_sql("CREATE TRIGGER refuse_every_apply BEFORE INSERT ON apply_log BEGIN SELECT RAISE(ABORT, 'injected refusal'); END")
        .execute(store.pool())
        .await
        .expect("trigger installs");
    let (_cluster, bootstrap, _workload) = published(seed, 100).await;
    let member = start_member(&store, service_config(&bootstrap, "refused", 100));
    wait_until("the consumer to stop or retry", Duration::from_secs(30), || {
        member.task.is_finished() || read(&member.counters.database_failures) > 0
    })
    .await;
    assert_eq!(
        read(&member.counters.database_failures),
        0,
        "a refusal is not counted as an outage and not retried"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), member.task)
        .await
        .expect("the consumer stops")
        .expect("join");
    let error = outcome.expect_err("the consumer ends with the store's error");
    assert!(error.to_string().contains("injected refusal"), "{error}");
    assert!(store.apply_log().await.expect("apply log").is_empty(), "nothing applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_transaction_ends_after_its_lease_ran_out_is_applied_but_not_committed() {
    // The window is 3 s wide (the call timeout), split in three 1 s margins: a machine so
    // busy that one is missed (the fence fires before the transaction, or the call times
    // out) cannot show the point, and the case is run again, up to three times.
    for attempt in 1..=3 {
        let seed = 103 + attempt;
        eprintln!("seed: {seed}");
        let (store, directory) = tradeflow_tests::sqlite_store().await;
        let (_cluster, bootstrap, _workload) = published(seed, 100).await;
        // The store's write lock is held by another process: the batch's transaction waits
        // for it. The batch is held 5 s before its transaction (within the 6 s session
        // timeout, so the fence lets it through), and the lock is let go 7 s after the
        // batch was received: the transaction answers (in about 2 s, within the 3 s call
        // timeout, so no failure) after the lease ran out. The partitions may have been
        // given to another member meanwhile: the batch is applied (the apply log makes
        // that safe) but its offsets must not be committed.
        let mut holder = hold_sqlite_lock(directory.path()).await;
        let buffer = SharedBuffer::default();
        let mut config = service_config(&bootstrap, "outlasting", 100);
        config.apply_delay = Duration::from_secs(5);
        config.journal = buffer.journal();
        // Polling may stop for the 7 s without leaving the group (6 s would take the
        // member out, and the assignment lost would keep the commit back by itself).
        config.max_poll_interval_ms = Some(20_000);
        let member = start_member(&store, config);
        wait_until("a batch received", Duration::from_secs(30), || {
            member.task.is_finished() || buffer.text().contains("\"received\"")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(7)).await;
        holder.kill().await.expect("the lock holder dies");
        wait_until("the batch applied", Duration::from_secs(30), || {
            member.task.is_finished() || read(&member.counters.applied) >= 100
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (failures, fenced, committed) = (
            read(&member.counters.database_failures),
            read(&member.counters.fenced),
            read(&member.counters.committed),
        );
        member.stop().await;
        if failures > 0 || fenced > 0 {
            eprintln!("attempt {attempt}: the timing window was missed ({failures} call failures, {fenced} fenced): again");
            continue;
        }
        assert_eq!(
            committed, 0,
            "the transaction ended after the lease ran out: no offset committed for the batch"
        );
        assert_eq!(applied(&store).await, 100, "the batch was applied");
        return;
    }
    panic!("three attempts missed the 3 s window: this machine is too busy for the test to show its point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_an_intended_send_time_is_applied_and_adds_no_latency() {
    let seed = 107;
    eprintln!("seed: {seed}");
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let (_cluster, bootstrap) = trades_on_one_broker(1).await;
    let workload = Workload::generate(&workload(seed, 20)).expect("workload");
    // Written by something other than the publisher: no intended-send-time header. Its
    // latency cannot be known, so it is applied and not counted (counting it from time 0
    // would read as decades).
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for (_, event) in indexed(&workload) {
        produce_raw(&producer, Some(event.account_id.as_str()), Some(&encode(&event))).await;
    }
    let member = start_member(&store, service_config(&bootstrap, "headerless", 100));
    wait_until("the events applied", Duration::from_secs(30), || {
        member.task.is_finished() || read(&member.counters.applied) >= 20
    })
    .await;
    member.stop.send_replace(true);
    let latency = member.task.await.expect("join").expect("the service stops cleanly").summary();
    assert_eq!(applied(&store).await, 20);
    assert_eq!(
        latency.max, 0.0,
        "no latency recorded for events without an intended send time: {latency:?}"
    );
}
