//! Lesson: move a running pipeline to a new cluster producer first. Consumers moved first
//! leave behind what the producer still writes to the old cluster; producer and consumers
//! moved at once apply an account's new events before its old tail; the producer moved
//! first, with the consumers following once the old cluster's lag is zero, costs a pause
//! in applying and loses nothing, as does a temporary consumer draining the old cluster.
//!
//! From the field: Wealthsimple, "New Kafka Tier, No Kafka Tears" (2022): for services that
//! could not stop, "we created new topics on the destination cluster and migrated the
//! producer first, followed by the consumers"; elsewhere "temporary containers to consume
//! the data from the source cluster while the existing containers were migrated"; and
//! "building support into our services to connect to different brokers at the same time".
//!
//! The run: a second cluster of the same backend is started beside the first, with the
//! topic `trades` on each; the publisher moves to the new cluster half-way through the
//! workload, while trades keep coming; the balance service's group on the old cluster and a
//! group on the new one (the service connected to both clusters) are moved as each runbook
//! says. Where the old cluster must hold a tail at the switch, its consumers stall from a
//! second before the switch to half a second after (a slow moment, as in the repartition
//! lesson); the record counts what the old topic held unapplied at the switch.
//!
//! Variants:
//! - consumers first: the old group's members leave a second before the producer moves,
//!   the new group reads the new cluster from the start: what was published to the old
//!   cluster meanwhile is stranded, **fail, lost**;
//! - producer and consumers at once: both groups run throughout and the old group lags at
//!   the switch: **fail, reordered / bad balances**;
//! - producer first: the new group starts once a lag sample taken after the switch shows
//!   the old group at the end of every partition; the old group stops then: **pass**, with
//!   the wait reported (`new_group_waited_ms`) and the latency it cost in the row's p99;
//! - drain consumer: at the switch the old group's members leave and as many temporary
//!   members join the old group to drain it; the new group starts once its lag is zero:
//!   **pass**.
//!
//! A passing row whose old topic held nothing unapplied at the switch showed nothing:
//! unknown.
//!
//! Chapter 12's run is the producer-first variant with the learner's `may_move_consumers`
//! deciding when the consumers move; as shipped it moves them at once (consumers first).
//!
//! The service built for it: `tradeflow balance-service --move-to NEW_BOOTSTRAP` connects
//! to both clusters and makes the producer-first move itself (it leaves the old cluster once
//! the new cluster's topic grew and its lag on the old one is zero); a test in
//! `tests/it/stream.rs` runs it across two mock clusters.
//!
//! Runs on the mock cluster and tansu, which can start a second cluster beside the first.
//! On tansu without the drain-consumer row: there the temporary members that joined the old
//! group once its own members had left got no partitions for the rest of the run (tansu
//! 0.1.2's group coordinator; the same run on the mock drains in a few seconds), so the row
//! would show tansu, not the runbook. Not on Apache Kafka here: a second three-node cluster is three more JVMs on this
//! two-core machine, and the lesson is about the clients' move, which a single broker
//! shows as well; not on a container or an external cluster, which this run cannot start
//! twice.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_cluster::Backend;
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep, ServiceFault};
use tradeflow_stream::{Cutover, Runbook};

/// The experiment's name.
pub const NAME: &str = "cluster-migration";
/// What it shows.
pub const WHAT: &str = "moving to a new cluster while trades flow: consumers first strands events, both at once reorders, producer first (or a temporary drain consumer) loses nothing";

/// Partitions of the topic on each cluster, and the balance service's consumers.
const PARTITIONS: i32 = 4;
const CONSUMERS: u32 = 2;
/// How long before the switch the old group stalls (or, consumers first, leaves).
const BEFORE_SWITCH_MS: u64 = 1_000;
/// How long the stall lasts.
const STALL_MS: u64 = 1_500;

/// How a migration is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The consumers move first, the producer after.
    ConsumersFirst,
    /// Producer and consumers at once.
    AtOnce,
    /// The producer first, the consumers once the old cluster's lag is zero.
    ProducerFirst,
    /// The producer and the service at once, a temporary consumer draining the old cluster.
    DrainConsumer,
}

impl Move {
    /// Every move, in the table's order.
    pub const ALL: [Move; 4] = [Move::ConsumersFirst, Move::AtOnce, Move::ProducerFirst, Move::DrainConsumer];

    fn label(self) -> &'static str {
        match self {
            Move::ConsumersFirst => "consumers first, producer after",
            Move::AtOnce => "producer and consumers at once",
            Move::ProducerFirst => "producer first, consumers once the old lag is zero",
            Move::DrainConsumer => "producer and service at once, a temporary consumer drains the old cluster",
        }
    }

    fn runbook(self) -> Runbook {
        match self {
            Move::ConsumersFirst | Move::AtOnce => Runbook::Naive,
            Move::ProducerFirst => Runbook::ProducerFirst,
            Move::DrainConsumer => Runbook::DrainConsumer,
        }
    }

    fn expected(self) -> Expected {
        match self {
            Move::ConsumersFirst => Expected::fail(
                Violation::Lost,
                "the old group is gone when the producer still writes to the old cluster: those events are never read",
            ),
            Move::AtOnce => Expected::fail(
                Violation::Reordered,
                "the new cluster's events of an account are applied while its older ones still wait on the old cluster",
            ),
            Move::ProducerFirst => {
                Expected::pass("the new group waits until the old group's lag is zero: order kept, at the cost of a pause in applying")
                    .shown_by("cutover_old_unapplied")
            }
            Move::DrainConsumer => {
                Expected::pass("temporary consumers drain the old cluster; the new group starts once they are done: order kept")
                    .shown_by("cutover_old_unapplied")
            }
        }
    }
}

/// Chapter 12's run: the producer-first variant's migration (the old group stalled from a
/// second before the switch), with the learner's `may_move_consumers` deciding when the
/// consumers move. It must pass.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let mut variant = variant(setup, Move::ProducerFirst);
    if let VariantRun::Stream(options) = &mut variant.run
        && let Some(cutover) = &mut options.scenario.cutover
    {
        cutover.runbook = Runbook::MoveExercise;
    }
    variant.label = "your may_move_consumers, a move to a new cluster while trades flow".into();
    variant.expected = Expected::pass("nothing stranded on the old cluster, no account's new events before its old ones")
        .shown_by("cutover_old_unapplied");
    Ok(variant)
}

/// The migration's variant for `step` on `setup`: the switch half-way, and the old group
/// stalled (or gone) from a second before it.
pub fn variant(setup: &Setup, step: Move) -> Variant {
    let at_event = (setup.events / 2) as usize;
    let switch_ms = (at_event as f64 / setup.rate * 1_000.0) as u64;
    let before = switch_ms.saturating_sub(BEFORE_SWITCH_MS);
    let steps = match step {
        Move::ConsumersFirst => (0..CONSUMERS)
            .map(|consumer| PlanStep {
                at_ms: before,
                for_ms: None,
                action: Action::Service(ServiceFault::Leave { consumer }),
            })
            .collect(),
        Move::AtOnce | Move::ProducerFirst | Move::DrainConsumer => vec![PlanStep {
            at_ms: before,
            for_ms: Some(STALL_MS),
            action: Action::Service(ServiceFault::HoldAll),
        }],
    };
    let mut options = setup.stream(PARTITIONS, CONSUMERS);
    options.scenario.plan = FaultPlan { seed: setup.seed, steps };
    options.scenario.cutover = Some(Cutover {
        topic: options.topic.clone(),
        second_cluster: true,
        partitions: PARTITIONS,
        at_event,
        runbook: step.runbook(),
    });
    Variant {
        label: step.label().into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: step.expected(),
    }
}

/// Why the drain-consumer row is left out on tansu.
const DRAIN_NOT_ON_TANSU: &str = "tansu 0.1.2's group coordinator gave the temporary members that joined the old group, once its own members had left, no partitions for the rest of the run (the same run on the mock drains in a few seconds): the row would show tansu, not the runbook";

/// The rows left out on a setup's backend, with why.
pub fn left_out(setup: &Setup) -> Vec<String> {
    match setup.broker {
        Backend::Tansu => vec![format!("{}: {DRAIN_NOT_ON_TANSU}", Move::DrainConsumer.label())],
        _ => Vec::new(),
    }
}

/// The lesson's variants for a setup, or why its backend cannot show them.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    match setup.broker {
        Backend::Mock => Ok(Move::ALL.into_iter().map(|step| variant(setup, step)).collect()),
        Backend::Tansu => Ok(Move::ALL
            .into_iter()
            .filter(|step| *step != Move::DrainConsumer)
            .map(|step| variant(setup, step))
            .collect()),
        Backend::Kafka => Err("a second three-node Apache Kafka cluster is three more JVMs on this two-core machine; the lesson is the clients' move, which mock and tansu show with a second cluster each".into()),
        Backend::Container | Backend::External => Err("the run starts a second cluster of its backend, which it can do for mock and tansu only".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(broker: Backend) -> Setup {
        Setup {
            seed: 1,
            events: 6_000,
            rate: 2_000.0,
            broker,
            store: tradeflow_store::StoreKind::Sqlite,
            service: None,
        }
    }

    #[test]
    fn each_move_switches_half_way_to_the_second_cluster_with_its_own_runbook() {
        let variants = variants(&setup(Backend::Mock)).expect("the mock can show it");
        assert_eq!(variants.len(), 4);
        let runbooks: Vec<Runbook> = variants
            .iter()
            .map(|variant| match &variant.run {
                VariantRun::Stream(options) => {
                    let cutover = options.scenario.cutover.as_ref().expect("a migration");
                    assert!(cutover.second_cluster);
                    assert_eq!(cutover.at_event, 3_000);
                    cutover.runbook
                }
                VariantRun::Poller(_) => panic!("a migration runs the stream"),
            })
            .collect();
        assert_eq!(
            runbooks,
            [Runbook::Naive, Runbook::Naive, Runbook::ProducerFirst, Runbook::DrainConsumer]
        );
        // Consumers first: every member of the old group leaves before the switch (1.5 s).
        let first = variants[0].plan().expect("a plan");
        assert_eq!(first.steps.len(), CONSUMERS as usize);
        assert!(first.steps.iter().all(|step| step.at_ms == 500));
    }

    #[test]
    fn tansu_runs_every_move_but_the_drain_consumer() {
        let labels: Vec<String> = variants(&setup(Backend::Tansu))
            .expect("tansu can show it")
            .into_iter()
            .map(|variant| variant.label)
            .collect();
        assert_eq!(labels.len(), 3);
        assert!(!labels.iter().any(|label| label.contains("temporary")), "{labels:?}");
        let left = left_out(&setup(Backend::Tansu));
        assert!(
            left.len() == 1 && left[0].contains("temporary") && left[0].contains("tansu"),
            "{left:?}"
        );
        assert!(left_out(&setup(Backend::Mock)).is_empty());
    }

    #[test]
    fn not_on_kafka_or_a_container_with_the_reason() {
        for broker in [Backend::Kafka, Backend::Container, Backend::External] {
            let reason = variants(&setup(broker)).err().expect("refused");
            assert!(reason.contains("second"), "{reason}");
        }
    }
}
