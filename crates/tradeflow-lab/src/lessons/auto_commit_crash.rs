//! Lesson: commit offsets only after the database commit; a consumer that dies between
//! receiving a batch and applying it then gets the batch again, and the apply log skips what
//! was already applied.
//!
//! From the field: Scalescape, "Building High Scale Backend Systems With Kafka" (2023),
//! explicit commits; Wealthsimple, "Kafka in production" (2021).
//!
//! Variants: auto commit must **lose** the dead consumer's batch (the timer committed what
//! was delivered); commit-before-DB must **lose** it (skipped on restart); commit-after-DB
//! must pass with the crash seen (`crashes` > 0).

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate};
use std::time::Duration;
use tradeflow_cluster::plan::{Action, ServiceFault};
use tradeflow_stream::{CommitPolicy, StreamOptions};

/// The experiment's name.
pub const NAME: &str = "auto-commit-crash";
/// What it shows.
pub const WHAT: &str = "a consumer killed mid-batch: auto commit and commit-before-DB lose the batch; commit-after-DB redelivers it and the apply log skips what was applied";

/// The lesson's configuration: large batches filled slowly (so the consumer that dies holds
/// a lot) and the commit policy under test. The must-fail property uses it too.
pub fn configure(options: &mut StreamOptions, commit: CommitPolicy) {
    options.fill_wait = Duration::from_millis(100);
    options.batch_size = 2_000;
    options.scenario.commit = commit;
}

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    // One consumer, so the crashed one holds every partition's batch; a long fill wait, so
    // the batch in its hands when it dies is large.
    let plan = setup.plan(
        &[candidate(Action::Service(ServiceFault::Crash { consumer: 0 }), (1_000, 1_500))],
        1,
    );
    let variant = |commit: CommitPolicy, expected: Expected| {
        let mut options = setup.stream(4, 1);
        configure(&mut options, commit);
        options.scenario.plan = plan.clone();
        Variant {
            label: format!("commit {}", commit.as_str().replace('_', " ")),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            CommitPolicy::Auto,
            Expected::fail(
                Violation::Lost,
                "the auto-commit timer commits what was delivered, applied or not: the batch in the dead consumer's hands is never applied",
            ),
        ),
        variant(
            CommitPolicy::BeforeDatabase,
            Expected::fail(
                Violation::Lost,
                "offsets committed before the database commit: the batch is skipped on restart",
            ),
        ),
        variant(
            CommitPolicy::AfterDatabase,
            Expected::pass(
                "offsets committed after the database commit: the batch is redelivered and the apply log skips what was applied",
            )
            .observing("crashes"),
        ),
    ]
}
