//! Lesson: make the consumer idempotent; Kafka delivers at least once, and a message comes
//! again whenever a consumer goes away between applying a batch and the group's taking
//! note of it.
//!
//! From the field: Confluent, "Exactly-once semantics is possible: here's how Kafka does
//! it" (2017) and the idempotent-consumer pattern (Richardson, "Microservices Patterns",
//! 2018); Wealthsimple, "Kafka in production" (2021), on deduplicating by event id.
//!
//! Two `tradeflow balance-service` processes share the group. One is frozen with SIGSTOP
//! while it holds a batch, for longer than its session timeout: the group gives its
//! partitions to the other member, which reads them again from the committed offsets and
//! applies the frozen batch's events. Then the frozen one wakes up (SIGCONT), still holding
//! its batch, and applies it too: a zombie. The checker counts applies from the apply
//! journal, which has no unique key, so a double apply shows whatever the service does.
//!
//! Two defences, each enough: the apply log (a second apply of an event id is skipped) and
//! the fence (a consumer drops a batch whose partitions were revoked while it held it:
//! librdkafka marks the assignment lost when the session times out, and the consumer checks
//! before its database transaction; Kafka itself refuses the zombie's offset commit).
//!
//! Variants: the naive consumer without the fence must show **duplicated** applies; the
//! naive consumer with the fence must pass with the zombie's batch dropped (`fenced` > 0);
//! the apply log without the fence must pass with the redelivery skipped (`redelivered` >
//! 0). A run whose freeze did not catch a batch while the group moved its partitions is
//! **unknown**. The fence is checked by the client before the transaction: a zombie that
//! wakes between the check and its commit still applies, which only the apply log (or a
//! fencing token checked inside the transaction) stops.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate};
use tradeflow_cluster::plan::{Action, ServiceFault};
use tradeflow_store::Dedup;

/// The experiment's name.
pub const NAME: &str = "idempotent-consumer";
/// What it shows.
pub const WHAT: &str = "a consumer process frozen (SIGSTOP) past its session holding a batch wakes up and applies it after the group gave it to another member: the naive consumer applies twice; the apply log skips the redelivery";

/// How long the zombie stays frozen: past the members' session timeout (6 s) and the
/// rebalance that follows, so that the other member has its batch by then.
pub const FROZEN_FOR_MS: u64 = 12_000;

/// The lesson's variants for a setup: it needs the service as processes.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    let Some(service) = &setup.service else {
        return Err("the lesson freezes a balance service process, and no tradeflow executable was given to start it".into());
    };
    let plan = setup.plan(
        &[candidate(
            Action::Service(ServiceFault::Pause { consumer: 0 }),
            (FROZEN_FOR_MS, FROZEN_FOR_MS),
        )],
        1,
    );
    let variant = |label: &str, dedup: Dedup, fencing: bool, expected: Expected| {
        let mut options = setup.stream(4, 2);
        crate::lessons::auto_commit_crash::configure(&mut options, tradeflow_stream::CommitPolicy::AfterDatabase);
        options.scenario.plan = plan.clone();
        options.scenario.processes = Some(service.clone());
        options.scenario.dedup = dedup;
        options.scenario.fencing = fencing;
        options.stall_timeout = crate::lessons::auto_commit_crash::KILLED_SESSION_WAIT;
        Variant {
            label: label.into(),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    Ok(vec![
        variant(
            "naive consumer, no fence",
            Dedup::None,
            false,
            Expected::fail(
                Violation::Duplicated,
                "the naive consumer applies what it is handed: the zombie's batch, applied by the member that took its partitions, is applied again when it wakes",
            )
            .showing("SIGSTOP")
            .shown_by("frozen_holding_moved"),
        ),
        variant(
            "naive consumer, fence",
            Dedup::None,
            true,
            Expected::pass("the zombie finds its assignment lost when it wakes and drops the batch it held: nothing is applied twice, even by a consumer that does not deduplicate")
                .observing("fenced")
                .showing("SIGSTOP")
                .shown_by("frozen_holding_moved"),
        ),
        variant(
            "apply log, no fence",
            Dedup::ApplyLog,
            false,
            Expected::pass("the apply log holds every applied event id: the zombie's second apply of each is skipped")
                .observing("redelivered")
                .showing("SIGSTOP")
                .shown_by("frozen_holding_moved"),
        ),
    ])
}
