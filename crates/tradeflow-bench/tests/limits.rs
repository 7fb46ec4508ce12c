//! The raw limits measure what they claim: every message produced is read back, every
//! event handed to the store is applied. No timing is asserted beyond "some rate was seen";
//! the rates are printed for the curious (`cargo test -p tradeflow-bench -- --nocapture`).

use tradeflow_bench::limits::{raw_consume, raw_produce, raw_store_apply};
use tradeflow_cluster::Cluster;
use tradeflow_domain::{Event, EventMix, RateProfile, Workload, WorkloadConfig, encode};
use tradeflow_store::{Store, StoreConfig};

const SEED: u64 = 20_260_101;
const MESSAGES: u64 = 5_000;

fn events(count: u64) -> Vec<Event> {
    eprintln!("seed: {SEED}");
    let workload = Workload::generate(&WorkloadConfig {
        seed: SEED,
        events: count,
        accounts: 200,
        rate_per_s: 10_000.0,
        profile: RateProfile::Steady,
        skew: tradeflow_domain::workload::ACCOUNT_SKEW,
        mix: EventMix::default(),
    })
    .expect("a valid workload");
    workload.plain_events().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_produce_and_consume_move_every_message() {
    let cluster = Cluster::mock(3).expect("mock cluster starts");
    let topic = "raw-limits";
    cluster.ensure_topic(topic, 6, 3).await.expect("topic created");
    let events = events(MESSAGES);
    let payloads: Vec<Vec<u8>> = events.iter().map(encode).collect();
    let keys: Vec<String> = events.iter().map(|event| event.account_id.as_str().to_owned()).collect();

    let produced = raw_produce(cluster.bootstrap_servers(), topic, &payloads, &keys)
        .await
        .expect("every message is delivered");
    eprintln!("raw produce on the mock cluster: {produced:?}");
    assert_eq!(produced.items, MESSAGES);
    assert!(
        produced.per_s > 0.0 && produced.bytes_per_s.is_some_and(|bytes| bytes > 0.0),
        "{produced:?}"
    );

    let consumed = raw_consume(cluster.bootstrap_servers(), topic, payloads.len())
        .await
        .expect("every message is read back");
    eprintln!("raw consume on the mock cluster: {consumed:?}");
    assert_eq!(consumed.items, MESSAGES);
    assert!(consumed.per_s > 0.0, "{consumed:?}");
    let bytes_sent: usize = payloads.iter().map(Vec::len).sum();
    assert!(
        (consumed.bytes_per_s.unwrap_or(0.0) * consumed.seconds - bytes_sent as f64).abs() < 1.0,
        "every payload byte is read back once: {consumed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_consume_names_a_topic_that_does_not_exist() {
    let cluster = Cluster::mock(1).expect("mock cluster starts");
    let error = raw_consume(cluster.bootstrap_servers(), "no-such-topic", 10)
        .await
        .expect_err("nothing to read");
    assert!(error.to_string().contains("no-such-topic"), "{error:#}");
}

/// A fresh SQLite store in a temporary directory (kept while the guard lives).
async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::connect(&StoreConfig::sqlite_file(&directory.path().join("raw.db")))
        .await
        .expect("SQLite store opens");
    (store, directory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_store_apply_applies_every_event_once() {
    let (store, _directory) = sqlite_store().await;
    let events = events(MESSAGES);

    let rate = raw_store_apply(&store, &events, 100, 1).await.expect("every batch applies");
    eprintln!("raw store apply on SQLite, batches of 100, one writer: {rate:?}");
    assert_eq!(rate.items, MESSAGES);
    assert!(rate.per_s > 0.0 && rate.bytes_per_s.is_none(), "{rate:?}");
    // One writer never waits for the connection: its time inside the transactions is at
    // most the whole run's, and not nothing.
    let inside = rate.in_transaction_us_per_item.expect("a store apply times its transactions");
    assert!(inside > 0.0 && inside * rate.items as f64 <= rate.seconds * 1e6, "{rate:?}");
    let log = store.apply_log().await.expect("the apply log reads back");
    assert_eq!(log.len(), events.len());
    assert!(
        log.iter()
            .zip(&events)
            .all(|(row, event)| row.event_id == event.event_id.to_string())
    );

    let again = raw_store_apply(&store, &events[..10], 10, 1)
        .await
        .expect_err("applying known events again is deduplication, not a rate");
    assert!(again.to_string().contains("already in the apply log"), "{again:#}");
    let refused = raw_store_apply(&store, &events, 0, 1)
        .await
        .expect_err("a batch holds at least one event");
    assert!(refused.to_string().contains("batch size"), "{refused:#}");
    let refused = raw_store_apply(&store, &events, 10, 0).await.expect_err("at least one writer");
    assert!(refused.to_string().contains("writers"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_store_apply_from_several_writers_applies_every_event_once_in_each_accounts_order() {
    let (store, _directory) = sqlite_store().await;
    let events = events(MESSAGES);
    let rate = raw_store_apply(&store, &events, 50, 3).await.expect("every batch applies");
    eprintln!("raw store apply on SQLite, batches of 50, three writers: {rate:?}");
    assert_eq!(rate.items, MESSAGES);
    let log = store.apply_log().await.expect("the apply log reads back");
    assert_eq!(log.len(), events.len(), "each event once");
    let appliers: std::collections::BTreeSet<&str> = log.iter().map(|row| row.applier.as_str()).collect();
    assert_eq!(appliers.len(), 3, "three writers applied: {appliers:?}");
    // Each account's events in the workload's order: by the order in which the account
    // saw them, its sequence numbers only go up.
    let mut rows: Vec<_> = log.iter().collect();
    rows.sort_by_key(|row| (row.account_id.clone(), row.account_apply_index));
    for pair in rows.windows(2) {
        if pair[0].account_id == pair[1].account_id {
            assert!(
                pair[0].account_seq < pair[1].account_seq,
                "account {} applied out of order",
                pair[0].account_id
            );
        }
    }
}
