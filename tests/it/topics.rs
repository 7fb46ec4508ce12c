//! Topics as code against a real Kafka protocol peer (the mock cluster, which has metadata
//! but no CreateTopics).

use tradeflow_cluster::topics::{Action, TopicsFile, plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reads_the_cluster_and_refuses_or_warns_where_it_must() {
    let cluster = tradeflow_tests::mock_cluster(1);
    cluster.ensure_topic("trades", 4, 1).await.expect("topic");
    cluster.ensure_topic("shrinking", 4, 1).await.expect("topic");
    let file = TopicsFile::parse(
        "[[topic]]\nname = \"trades\"\npartitions = 8\nreplication_factor = 1\nkeyed = true\n\
         [[topic]]\nname = \"shrinking\"\npartitions = 2\nreplication_factor = 1\n\
         [[topic]]\nname = \"absent\"\npartitions = 3\nreplication_factor = 1\n",
        "test",
    )
    .expect("valid file");
    let planned = plan(cluster.bootstrap_servers(), &file).await.expect("plan");
    let actions: Vec<(&str, &Action)> = planned.iter().map(|topic| (topic.spec.name.as_str(), &topic.action)).collect();
    assert_eq!(actions[0], ("trades", &Action::AddPartitionsReorders { from: 4, to: 8 }));
    assert!(matches!(actions[1], ("shrinking", Action::Refuse { .. })), "{actions:?}");
    // The mock cluster creates topics on a metadata request, so "absent" may already be
    // there with its default 4 partitions; either way the plan must not pretend it matches.
    assert!(
        matches!(actions[2], ("absent", Action::Create | Action::Refuse { .. })),
        "{actions:?}"
    );
}
