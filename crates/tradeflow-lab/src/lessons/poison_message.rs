//! Lesson: a message no one can process must go to a dead-letter topic, or its partition
//! stops and the lag behind it grows.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021), DLQ; Scalescape (2023).
//!
//! Variants: no dead-letter topic must **lose** the events behind the poison (retried
//! forever: `poison_retries` > 0); a dead-letter topic must pass (`dead_lettered` > 0).
//!
//! Chapter 06's run: the same poison, and the learner's `on_unprocessable` decides, at each
//! failed attempt, whether to retry the message later or dead-letter it. It must pass with
//! the poison dead-lettered; a run whose poison was never sent is unknown.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate};
use std::time::Duration;
use tradeflow_cluster::plan::{Action, ServiceFault};

/// The experiment's name.
pub const NAME: &str = "poison-message";
/// What it shows.
pub const WHAT: &str =
    "a message no one can process: without a dead-letter topic its partition is stuck and lag grows; with one, everything else flows";

/// Chapter 06's run: the lesson's poison, the learner's rule for it.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let mut options = setup.stream(4, 2);
    options.stall_timeout = Duration::from_secs(5);
    options.scenario.poison_exercise = true;
    options.scenario.plan = setup.plan(&[candidate(Action::Service(ServiceFault::Poison { count: 2 }), (0, 0))], 1);
    Ok(Variant {
        label: "your on_unprocessable, two poison messages mid-run".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("the poison goes to the dead-letter topic; everything behind it is applied").observing("dead_lettered"),
    })
}

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    let plan = setup.plan(&[candidate(Action::Service(ServiceFault::Poison { count: 2 }), (0, 0))], 1);
    let variant = |dead_letter: bool, expected: Expected| {
        let mut options = setup.stream(4, 2);
        options.stall_timeout = Duration::from_secs(5);
        options.scenario.dead_letter = dead_letter;
        options.scenario.plan = plan.clone();
        Variant {
            label: if dead_letter { "dead-letter topic" } else { "no dead-letter topic" }.into(),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            false,
            Expected::fail(
                Violation::Lost,
                "the consumer retries the poison forever: its partition is stuck, lag grows, and the events behind it are never applied",
            )
            .observing("poison_retries"),
        ),
        variant(
            true,
            Expected::pass("the poison goes to trades.dlq with its reason; its partition keeps flowing").observing("dead_lettered"),
        ),
    ]
}
