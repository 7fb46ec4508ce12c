//! Lesson: commit offsets only after the database commit; a consumer that dies between
//! receiving a batch and applying it then gets the batch again, and the apply log skips what
//! was already applied.
//!
//! From the field: Scalescape, "Building High Scale Backend Systems With Kafka" (2023),
//! explicit commits; Parcel Perform, "Initial experience with Kafka": a restarted consumer
//! resumes after the last committed message.
//!
//! The balance service runs as a `tradeflow balance-service` process, and the fault is a
//! SIGKILL from outside at a seeded moment while the process holds a batch (its database
//! is slowed so that a batch is in hand most of the time): no goodbye to the group, nothing
//! flushed. The process's journal says what the kill caught: messages received and not
//! applied, and of those the ones whose offsets the broker had confirmed committed.
//!
//! Variants: auto commit and commit-before-DB must **lose** at least the messages the kill
//! caught committed and unapplied; commit-after-DB must pass with the kill seen. A run whose
//! kill caught nothing the policy could lose is **unknown**, not a pass.
//!
//! Chapter 03's run is the same kill with the learner's order of a batch's two steps,
//! landing [`CHAPTER_KILL_AFTER`] or a little more after the batch is in hand: after an
//! early commit has landed, before the database commit. It must lose nothing; a kill that
//! caught no batch is unknown.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate};
use std::time::Duration;
use tradeflow_cluster::plan::{Action, ServiceFault};
use tradeflow_stream::{CommitPolicy, StreamOptions};

/// The experiment's name.
pub const NAME: &str = "auto-commit-crash";
/// What it shows.
pub const WHAT: &str = "a consumer process killed (SIGKILL) mid-batch: auto commit and commit-before-DB lose the batch; commit-after-DB redelivers it and the apply log skips what was applied";

/// The database's slowness in the lesson: each batch's transaction waits this long first,
/// so that a batch is in hand most of the time and a kill at a random moment lands there.
/// Long against the host's lag in reading the process's journal on a busy machine (three
/// Kafka JVMs on two cores), so that a kill aimed at a held batch lands while it is held.
pub const APPLY_DELAY: Duration = Duration::from_millis(400);

/// How long the run waits for lag that does not shrink: the killed member's session
/// timeout and a rebalance, with room.
pub const KILLED_SESSION_WAIT: Duration = Duration::from_secs(40);

/// In chapter 03, how long the kill waits once the process holds a batch: well after a
/// commit sent on receipt has landed, well before the database commit ([`APPLY_DELAY`]).
pub const CHAPTER_KILL_AFTER: Duration = Duration::from_millis(150);

/// In chapter 03, how long the run waits for lag that does not shrink.
pub const CHAPTER_STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Chapter 03's run: the lesson's kill, the learner's order of a batch's steps.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let Some(service) = &setup.service else {
        return Err("the chapter kills the balance service's process, and no tradeflow executable was given to start it".into());
    };
    let mut options = setup.stream(4, 1);
    configure(&mut options, CommitPolicy::Exercise);
    options.scenario.plan = setup.plan(
        &[candidate(Action::Service(ServiceFault::Crash { consumer: 0 }), (1_000, 1_500))],
        1,
    );
    options.scenario.processes = Some(service.clone());
    options.scenario.kill_after = CHAPTER_KILL_AFTER;
    // The mock cluster alone: the killed member's session (6 s) and a rebalance fit in
    // half the experiment's wait, and a learner waits less for what never comes.
    options.stall_timeout = CHAPTER_STALL_TIMEOUT;
    Ok(Variant {
        label: "your batch_steps, one consumer process killed (SIGKILL) mid-batch".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("the batch the process died holding is read again and applied")
            .showing("was killed by SIGKILL")
            .shown_by("crashed_holding"),
    })
}

/// The lesson's configuration: large batches filled slowly (so the consumer that dies holds
/// a lot), a slow database (so that it holds a batch most of the time) and the commit policy
/// under test. The must-fail property uses it too.
pub fn configure(options: &mut StreamOptions, commit: CommitPolicy) {
    options.fill_wait = Duration::from_millis(100);
    options.batch_size = 2_000;
    options.scenario.commit = commit;
    options.scenario.apply_delay = APPLY_DELAY;
}

/// The lesson's variants for a setup: it needs the service as processes.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    let Some(service) = &setup.service else {
        return Err("the lesson kills the balance service's process, and no tradeflow executable was given to start it".into());
    };
    // One consumer, so the killed one holds every partition's batch; a long fill wait, so
    // the batch in its hands when it dies is large.
    let plan = setup.plan(
        &[candidate(Action::Service(ServiceFault::Crash { consumer: 0 }), (1_000, 1_500))],
        1,
    );
    let variant = |commit: CommitPolicy, expected: Expected| {
        let mut options = setup.stream(4, 1);
        configure(&mut options, commit);
        options.scenario.plan = plan.clone();
        options.scenario.processes = Some(service.clone());
        // A killed member says no goodbye: the group moves its partitions only when its
        // session times out, and the restarted one waits until then.
        options.stall_timeout = KILLED_SESSION_WAIT;
        Variant {
            label: format!("commit {}", commit.as_str().replace('_', " ")),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    let killed = "was killed by SIGKILL";
    Ok(vec![
        variant(
            CommitPolicy::Auto,
            Expected::fail(
                Violation::Lost,
                "the auto-commit timer commits what was delivered, applied or not: the batch in the killed process's hands is never applied",
            )
            .showing(killed)
            .shown_by("crashed_holding_committed")
            .at_least("crashed_holding_committed"),
        ),
        variant(
            CommitPolicy::BeforeDatabase,
            Expected::fail(
                Violation::Lost,
                "offsets committed before the database commit: the batch is skipped on restart",
            )
            .showing(killed)
            .shown_by("crashed_holding_committed")
            .at_least("crashed_holding_committed"),
        ),
        variant(
            CommitPolicy::AfterDatabase,
            Expected::pass(
                "offsets committed after the database commit: the batch is redelivered and the apply log skips what was applied",
            )
            .observing("crashes")
            .showing(killed)
            .shown_by("crashed_holding"),
        ),
    ])
}
