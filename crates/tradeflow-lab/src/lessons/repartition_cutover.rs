//! Lesson: overpartition from the start; moving keyed events to a topic with more
//! partitions while the old one still has lag applies an account's newer events first,
//! unless the old topic is drained before the switch.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021), overpartition; Parcel
//! Perform, "Initial experience with Kafka", partitions only go up.
//!
//! Variants: a naive switch to 8 partitions must **reorder** (bad balances);
//! drain-then-switch must pass.
//!
//! Chapter 08's run: the same lagging cutover, and the learner's `ready_to_switch` says
//! when the publisher moves. It must pass (nothing reordered, no bad balance).

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep, ServiceFault};
use tradeflow_stream::{Cutover, Runbook};

/// The experiment's name.
pub const NAME: &str = "repartition-cutover";
/// What it shows.
pub const WHAT: &str = "moving to a topic with more partitions while the old one has lag: a naive switch applies newer events first; drain-then-switch does not";

/// The move to `trades.v2` with `partitions` partitions before event `at_event`. The
/// must-fail property uses it too.
pub fn cutover(partitions: i32, at_event: usize, runbook: Runbook) -> Cutover {
    Cutover {
        topic: "trades.v2".into(),
        second_cluster: false,
        partitions,
        at_event,
        runbook,
    }
}

/// The cutover's event (half-way) and the plan that leaves the old topic behind at it: its
/// consumers stall a second before and read again half a second after.
fn lagging_cutover(setup: &Setup) -> (usize, FaultPlan) {
    let at_event = (setup.events / 2) as usize;
    let cutover_ms = (at_event as f64 / setup.rate * 1_000.0) as u64;
    let plan = FaultPlan {
        seed: setup.seed,
        steps: vec![PlanStep {
            at_ms: cutover_ms.saturating_sub(1_000),
            for_ms: Some(1_500),
            action: Action::Service(ServiceFault::HoldAll),
        }],
    };
    (at_event, plan)
}

/// Chapter 08's run: the lesson's lagging cutover, the learner's moment to switch.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let (at_event, plan) = lagging_cutover(setup);
    let mut options = setup.stream(4, 2);
    options.scenario.plan = plan;
    options.scenario.cutover = Some(cutover(8, at_event, Runbook::Exercise));
    Ok(Variant {
        label: "your ready_to_switch, a cutover to 8 partitions while the old topic lags".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("every account's older events applied before its newer ones"),
    })
}

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    let (at_event, plan) = lagging_cutover(setup);
    let variant = |runbook: Runbook, expected: Expected| {
        let mut options = setup.stream(4, 2);
        options.scenario.plan = plan.clone();
        options.scenario.cutover = Some(cutover(8, at_event, runbook));
        Variant {
            label: match runbook {
                Runbook::Naive => "naive switch to 8 partitions".into(),
                _ => "drain, then switch to 8 partitions".into(),
            },
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            Runbook::Naive,
            Expected::fail(
                Violation::Reordered,
                "new events of an account are applied from the new topic while its older ones still wait in the old topic",
            ),
        ),
        variant(
            Runbook::DrainThenSwitch,
            Expected::pass("publishing pauses until the old topic is applied, then moves: order kept, at the cost of a pause"),
        ),
    ]
}
