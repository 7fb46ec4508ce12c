//! Lesson: consumers scale up to the partition count and no further (the extra sit idle),
//! and rebalances move partitions without losing or repeating an event when offsets are
//! committed after the database commit.
//!
//! From the field: Scalescape (2023), consumers ≤ partitions; Wealthsimple (2021).
//!
//! Variants: 1, 3, 6 and 9 consumers on 6 partitions must pass; 2 consumers, one joining
//! and one leaving mid-run, must pass with `rebalances` > 0.

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use std::time::Duration;
use tradeflow_cluster::Backend;
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep, ServiceFault};

/// The experiment's name.
pub const NAME: &str = "consumer-scaling";
/// What it shows.
pub const WHAT: &str =
    "1..P consumers on P partitions, more consumers than partitions (the extra sit idle), and consumers joining and leaving mid-run";

/// How long after a join the consumer-scaling row lets tansu's rebalance settle before a
/// member leaves.
const TANSU_REBALANCE_SETTLE_MS: u64 = 10_000;

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    let partitions = 6;
    let mut variants: Vec<Variant> = [1_u32, 3, 6, 9]
        .into_iter()
        .map(|consumers| Variant {
            label: format!("{consumers} consumers on {partitions} partitions"),
            run: VariantRun::Stream(Box::new(setup.stream(partitions, consumers))),
            expected: Expected::pass(if consumers as i32 > partitions {
                format!("{} consumers get no partition and sit idle", consumers as i32 - partitions)
            } else {
                "each partition has one consumer; more consumers share the work".to_owned()
            }),
        })
        .collect();
    let publishing = setup.publishing_ms();
    let mut options = setup.stream(partitions, 2);
    // tansu takes several seconds per rebalance (about session.timeout.ms / 2).
    options.stall_timeout = Duration::from_secs(30);
    // On tansu a member that leaves while the join's rebalance is still going can leave the
    // group unsettled for good (seen in CI: 2,651 and 3,090 events never applied, the
    // survivors never got the partitions back), so there the leave waits until the join's
    // rebalance is long over. The mock takes both mid-publishing.
    let leave_at_ms = match setup.broker {
        Backend::Tansu | Backend::Container => publishing / 4 + TANSU_REBALANCE_SETTLE_MS,
        Backend::Mock | Backend::Kafka | Backend::External => publishing / 2,
    };
    options.scenario.plan = FaultPlan::fixed(vec![
        PlanStep {
            at_ms: publishing / 4,
            for_ms: None,
            action: Action::Service(ServiceFault::Join),
        },
        PlanStep {
            at_ms: leave_at_ms,
            for_ms: None,
            action: Action::Service(ServiceFault::Leave { consumer: 0 }),
        },
    ]);
    variants.push(Variant {
        label: "2 consumers, one joins, one leaves".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("rebalances move partitions; offsets committed after the database commit keep every event applied once")
            .observing("rebalances_in_run"),
    });
    variants
}
