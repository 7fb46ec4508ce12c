//! The stream on each local backend, with the faults each can inject, and the refusal of
//! faults a backend cannot inject.

use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_cluster::faults::{Api, RequestError};
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Cluster, ClusterError, Fault};
use tradeflow_domain::{RateProfile, WorkloadConfig};
use tradeflow_store::Store;
use tradeflow_stream::StreamOptions;

pub(crate) fn options(seed: u64, events: u64, partitions: i32) -> StreamOptions {
    eprintln!("seed: {seed}");
    StreamOptions {
        partitions,
        consumers: 2,
        batch_size: 100,
        ..StreamOptions::new(WorkloadConfig {
            seed,
            events,
            accounts: 40,
            rate_per_s: 2_000.0,
            profile: RateProfile::Steady,
            skew: tradeflow_domain::workload::ACCOUNT_SKEW,
            mix: tradeflow_domain::EventMix::default(),
        })
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
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
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
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
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
    let cluster = tradeflow_tests::mock_cluster(3);
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
    let mock = tradeflow_tests::mock_cluster(1);
    let error = mock.inject(&Fault::Kill).await.expect_err("the mock is not a process");
    assert!(matches!(&error, ClusterError::Unsupported { backend: "mock", .. }), "{error}");
    assert!(
        error.to_string().contains("broker_down"),
        "the refusal lists what is supported: {error}"
    );

    let external = Cluster::external(mock.bootstrap_servers()).expect("the mock answers as an external cluster");
    let error = external
        .inject(&Fault::BrokerDown { broker: 1 })
        .await
        .expect_err("nothing can be injected from here");
    assert!(error.to_string().contains("supports: none"), "{error}");
}

/// The tansu part of the refusals above, apart so that the mock's part needs no server.
#[tokio::test]
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
async fn faults_tansu_cannot_inject_are_refused_with_the_reason() {
    let Some(tansu) = tradeflow_tests::tansu_cluster("faults_tansu_cannot_inject_are_refused_with_the_reason") else {
        return;
    };
    let error = tansu
        .inject(&Fault::BrokerDown { broker: 1 })
        .await
        .expect_err("tansu has one broker and no mock API");
    assert!(error.to_string().contains("kill, pause, resume, restart"), "{error}");
}

/// Runs the stream with a fault plan (printed first, as the command line does).
async fn run_with_plan(store: &Store, cluster: &Cluster, mut options: StreamOptions, plan: FaultPlan) -> RunRecord {
    eprint!("{plan}");
    options.scenario.plan = plan;
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let record = tradeflow_stream::run(store, cluster, &options, &progress)
        .await
        .expect("the run completes");
    for fault in &record.faults {
        assert_eq!(fault.error, None, "every planned fault is applied: {fault:?}");
    }
    record
}

fn step(at_ms: u64, for_ms: u64, fault: Fault) -> PlanStep {
    PlanStep {
        at_ms,
        for_ms: Some(for_ms),
        action: Action::Broker(fault),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with the local tansu image (just image)"]
async fn a_container_broker_paused_and_cut_off_its_network_loses_nothing() {
    let Some(cluster) = tradeflow_tests::container_cluster("a_container_broker_paused_and_cut_off_its_network_loses_nothing") else {
        return;
    };
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let plan = FaultPlan::fixed(vec![step(500, 1_500, Fault::Pause), step(2_500, 1_500, Fault::Disconnect)]);
    let record = run_with_plan(&store, &cluster, options(61, 8_000, 4), plan).await;
    assert_eq!(record.broker.as_deref(), Some("container"));
    assert_eq!(record.faults.len(), 4, "pause, resume, disconnect, connect");
    assert_correct(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine with the local tansu image (just image)"]
async fn a_container_broker_keeps_its_host_port_across_stop_and_start() {
    let Some(cluster) = tradeflow_tests::container_cluster("a_container_broker_keeps_its_host_port_across_stop_and_start") else {
        return;
    };
    let bootstrap = cluster.bootstrap_servers().to_owned();
    cluster.ensure_topic("before", 2, 1).await.expect("topic created");
    cluster.inject(&Fault::Stop).await.expect("docker stop");
    let stopped = tradeflow_stream::topic_partitions(&bootstrap, "before").await;
    assert!(stopped.is_err(), "a stopped broker does not answer: {stopped:?}");
    cluster.inject(&Fault::Start).await.expect("docker start");
    assert_eq!(cluster.bootstrap_servers(), bootstrap, "the advertised address does not change");
    cluster
        .ensure_topic("after", 3, 1)
        .await
        .expect("the broker answers on the same port");
    assert_eq!(tradeflow_stream::topic_partitions(&bootstrap, "after").await.expect("metadata"), 3);
    if cluster.loses_data_on_restart() {
        let gone = tradeflow_stream::topic_partitions(&bootstrap, "before").await;
        assert!(gone.is_err(), "memory storage forgets topics across a restart: {gone:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
async fn the_chaos_proxy_in_front_of_tansu_delays_resets_and_throttles_without_loss() {
    let Some(cluster) = tradeflow_tests::tansu_cluster("the_chaos_proxy_in_front_of_tansu_delays_resets_and_throttles_without_loss") else {
        return;
    };
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let slow = Chaos {
        latency_ms: 40,
        jitter_ms: 20,
        ..Chaos::default()
    };
    // Not a blackhole: bytes it swallows cost a whole request timeout, after which
    // librdkafka bumps the idempotent producer's epoch, and tansu 0.6 answers that with
    // ProducerFenced (seen here: every later delivery failed).
    let narrow = Chaos {
        bandwidth_bytes_per_s: Some(200_000),
        ..Chaos::default()
    };
    let plan = FaultPlan::fixed(vec![
        step(300, 1_000, Fault::ProxyChaos { chaos: slow }),
        PlanStep {
            at_ms: 1_500,
            for_ms: None,
            action: Action::Broker(Fault::ProxyReset),
        },
        step(2_000, 1_500, Fault::ProxyChaos { chaos: narrow }),
    ]);
    let record = run_with_plan(&store, &cluster, options(62, 8_000, 4), plan).await;
    assert_correct(&record);
    let proxy = cluster.proxy().expect("tansu runs behind a proxy").stats();
    assert!(proxy.connections_reset > 0, "{proxy:?}");
    assert!(
        record.latency_ms.max >= 40.0,
        "the proxy's latency shows in the worst latency: {}",
        record.table()
    );
}

#[tokio::test]
async fn a_plan_with_a_fault_the_backend_cannot_inject_is_refused_before_the_run() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let cluster = tradeflow_tests::mock_cluster(1);
    let mut options = options(63, 1_000, 2);
    options.scenario.plan = FaultPlan::fixed(vec![step(100, 100, Fault::Pause)]);
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let error = tradeflow_stream::run(&store, &cluster, &options, &progress)
        .await
        .expect_err("the mock cannot pause a process");
    assert!(error.to_string().contains("cannot inject pause"), "{error}");
    assert_eq!(store.balances().await.expect("balances read").len(), 0, "nothing ran");
}
