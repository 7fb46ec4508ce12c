//! The stream on each local backend, with the faults each can inject, and the refusal of
//! faults a backend cannot inject.

use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_cluster::faults::{Api, RequestError};
use tradeflow_cluster::{Cluster, ClusterError, Fault};
use tradeflow_domain::{RateProfile, WorkloadConfig};
use tradeflow_store::Store;
use tradeflow_stream::StreamOptions;
use tradeflow_stream::publisher::PublisherConfig;

fn options(seed: u64, events: u64, partitions: i32) -> StreamOptions {
    eprintln!("seed: {seed}");
    StreamOptions {
        workload: WorkloadConfig {
            seed,
            events,
            accounts: 40,
            rate_per_s: 2_000.0,
            profile: RateProfile::Steady,
        },
        topic: "trades".into(),
        partitions,
        consumers: 2,
        publisher: PublisherConfig::default(),
        batch_size: 100,
        fill_wait: Duration::from_millis(5),
        stall_timeout: Duration::from_secs(30),
        metrics: None,
    }
}

/// Runs the stream while `faults` are injected at their offsets from the start.
async fn run_with_faults(store: &Store, cluster: &Cluster, options: &StreamOptions, faults: &[(Duration, Fault)]) -> RunRecord {
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let injecting = async {
        // The run spends a few seconds on the group join before the clock starts.
        let start = tokio::time::Instant::now() + Duration::from_secs(4);
        for (at, fault) in faults {
            tokio::time::sleep_until(start + *at).await;
            cluster.inject(fault).await.expect("the backend supports the fault");
            eprintln!("injected: {fault}");
        }
    };
    let (record, ()) = tokio::join!(tradeflow_stream::run(store, cluster, options, &progress), injecting);
    record.expect("the run completes")
}

fn assert_correct(record: &RunRecord) {
    assert_eq!(record.applied, record.events, "{}", record.table());
    assert_eq!(record.check.verdict, Verdict::Pass, "{}", record.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_on_tansu_matches_the_oracle() {
    let Some(cluster) = tradeflow_tests::tansu_cluster("the_stream_on_tansu_matches_the_oracle") else {
        return;
    };
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let record = run_with_faults(&store, &cluster, &options(51, 3_000, 4), &[]).await;
    assert_eq!(record.broker.as_deref(), Some("tansu"));
    assert_correct(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_tansu_broker_delays_but_loses_nothing() {
    let Some(cluster) = tradeflow_tests::tansu_cluster("a_paused_tansu_broker_delays_but_loses_nothing") else {
        return;
    };
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let faults = [
        (Duration::from_millis(500), Fault::Pause),
        (Duration::from_millis(2_500), Fault::Resume),
    ];
    let record = run_with_faults(&store, &cluster, &options(52, 6_000, 4), &faults).await;
    assert_correct(&record);
    assert!(
        record.latency_ms.max >= 1_000.0,
        "a 2 s pause shows in the worst latency: {}",
        record.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_broker_down_and_failing_produce_requests_lose_nothing() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let cluster = Cluster::mock(3).expect("mock cluster starts");
    let faults = [
        (
            Duration::from_millis(300),
            Fault::RequestErrors {
                api: Api::Produce,
                error: RequestError::NotLeader,
                count: 5,
            },
        ),
        (Duration::from_millis(600), Fault::BrokerDown { broker: 2 }),
        (
            Duration::from_millis(900),
            Fault::LeaderMove {
                topic: "trades".into(),
                partition: 0,
                broker: 3,
            },
        ),
        (Duration::from_millis(1_800), Fault::BrokerUp { broker: 2 }),
    ];
    let record = run_with_faults(&store, &cluster, &options(53, 6_000, 6), &faults).await;
    assert_correct(&record);
}

#[tokio::test]
async fn faults_a_backend_cannot_inject_are_refused_with_the_reason() {
    let mock = Cluster::mock(1).expect("mock cluster starts");
    let error = mock.inject(&Fault::Kill).await.expect_err("the mock is not a process");
    assert!(matches!(&error, ClusterError::Unsupported { backend: "mock", .. }), "{error}");
    assert!(
        error.to_string().contains("broker_down"),
        "the refusal lists what is supported: {error}"
    );

    let external = Cluster::external("127.0.0.1:9092").expect("valid bootstrap");
    let error = external
        .inject(&Fault::BrokerDown { broker: 1 })
        .await
        .expect_err("nothing can be injected from here");
    assert!(error.to_string().contains("supports: none"), "{error}");

    if let Some(tansu) = tradeflow_tests::tansu_cluster("faults_a_backend_cannot_inject_are_refused_with_the_reason") {
        let error = tansu
            .inject(&Fault::BrokerDown { broker: 1 })
            .await
            .expect_err("tansu has one broker and no mock API");
        assert!(error.to_string().contains("kill, pause, resume, restart"), "{error}");
    }
}
