//! Apache Kafka as three JVM nodes: the cluster the harness starts (three brokers, RF 3,
//! min ISR 2), a stream run on it, a leader and the controller killed, and no JVM left
//! behind when the cluster is dropped, when a test fails or on Ctrl-C.

use std::path::Path;
use tokio::sync::watch;
use tradeflow_check::RunProgress;
use tradeflow_check::history::Verdict;
use tradeflow_cluster::Fault;
use tradeflow_cluster::faults::{NodeFault, NodeTarget};
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep};
use tradeflow_stream::StreamOptions;
use tradeflow_tests::processes::{alive, pids_with_command_line};

/// Pids of the JVMs whose command line names `directory`.
fn jvms_of(directory: &Path) -> Vec<u32> {
    pids_with_command_line(&directory.to_string_lossy(), None)
}

fn options(seed: u64, events: u64) -> StreamOptions {
    let mut options = crate::brokers::options(seed, events, 6);
    options.workload.rate_per_s = 1_000.0;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
async fn three_kafka_nodes_replicate_and_leave_no_jvm_behind() {
    let Some(cluster) = tradeflow_tests::kafka_cluster("three_kafka_nodes_replicate_and_leave_no_jvm_behind") else {
        return;
    };
    let nodes = cluster.kafka_nodes().expect("the kafka backend has nodes");
    let pids = nodes.pids();
    let directory = nodes.directory().to_owned();
    assert_eq!(pids.len(), 3, "three JVMs");
    assert_eq!(jvms_of(&directory).len(), 3, "three JVMs name the cluster's directory");
    let (controller, _) = nodes.controller().expect("an active controller");
    assert!((1..=3).contains(&controller), "{controller}");
    let defaults = cluster.topic_defaults().await.expect("the cluster's topic defaults");
    assert_eq!((defaults.replication_factor, defaults.min_insync_replicas), (3, Some(2)));
    cluster.ensure_topic("replicated", 3, 3).await.expect("a topic with RF 3");
    // The same cluster met as an external one: its defaults are read from it.
    let external = tradeflow_cluster::Cluster::external(cluster.bootstrap_servers()).expect("an external view");
    let read = external.topic_defaults().await.expect("read from the cluster");
    assert_eq!((read.replication_factor, read.min_insync_replicas), (3, Some(2)));
    drop(cluster);
    assert!(pids.iter().all(|pid| !alive(*pid)), "every JVM is gone: {pids:?}");
    assert!(!directory.exists(), "the cluster's directory is removed");
}

#[test]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
fn a_failing_test_leaves_no_jvm_behind() {
    let Some(cluster) = tradeflow_tests::kafka_cluster("a_failing_test_leaves_no_jvm_behind") else {
        return;
    };
    let nodes = cluster.kafka_nodes().expect("the kafka backend has nodes");
    let (pids, directory) = (nodes.pids(), nodes.directory().to_owned());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _owned = cluster;
        panic!("a test fails while it owns the cluster");
    }));
    assert!(outcome.is_err());
    assert!(pids.iter().all(|pid| !alive(*pid)), "every JVM is gone after the panic: {pids:?}");
    assert!(jvms_of(&directory).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
async fn the_leader_and_the_controller_killed_mid_run_lose_nothing_with_acks_all() {
    let test = "the_leader_and_the_controller_killed_mid_run_lose_nothing_with_acks_all";
    let Some(cluster) = tradeflow_tests::kafka_cluster(test) else {
        return;
    };
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let mut options = options(61, 6_000);
    let node = |target: NodeTarget, action: NodeFault| Action::Broker(Fault::Node { node: target, action });
    let leader = NodeTarget::Leader {
        topic: "trades".into(),
        partition: None,
    };
    options.scenario.plan = FaultPlan::fixed(vec![
        PlanStep {
            at_ms: 1_500,
            for_ms: Some(2_000),
            action: node(leader, NodeFault::Kill),
        },
        PlanStep {
            at_ms: 3_500,
            for_ms: Some(1_000),
            action: node(NodeTarget::Controller, NodeFault::Kill),
        },
    ]);
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let record = tradeflow_stream::run(&store, &cluster, &options, &progress)
        .await
        .expect("the run completes");
    eprintln!("{}", record.table());
    for fault in &record.faults {
        eprintln!("{} at {} ms: {:?} {:?}", fault.fault, fault.at_ms, fault.effect, fault.error);
    }
    assert_eq!(record.config["replication_factor"], 3);
    assert!(record.faults.iter().all(|fault| fault.error.is_none()), "{:?}", record.faults);
    let kill = &record.faults[0];
    let effect = kill.effect.as_deref().unwrap_or_default();
    assert!(effect.contains("SIGKILLed") && effect.contains("led by node"), "{effect}");
    assert_eq!(record.check.verdict, Verdict::Pass, "{}", record.table());
    assert_eq!(record.applied, record.events);
}
