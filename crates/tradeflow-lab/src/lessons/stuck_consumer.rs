//! Lesson: log which partitions and offsets each consumer holds, so that a stuck one can be
//! found and restarted alone; with static membership the restart does not disturb the
//! rest of the group.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021): a consumer owns particular
//! partitions, so its logs must say which partition each message it handles came from;
//! when one consumer gets stuck, that is what lets you restart just that one without
//! upsetting its group. Static membership (`group.instance.id`, KIP-345, Kafka 2.3) is how
//! Kafka lets a member come back under the same identity within its session timeout
//! without the group rebalancing.
//!
//! Three `tradeflow balance-service` processes share the group, on 6 partitions, with a
//! session timeout of 12 s (6 s on the mock: [`timing`]). At a seeded moment one of them
//! hangs (SIGSTOP, while it holds a batch) for 5 s (3 s on the mock): it stops
//! heartbeating, but not for long enough for the group to give its partitions away. Then it is restarted the way an operator would: SIGKILL and a new
//! process under the same name, half a second later. The run records:
//! - what the stuck process's last "batch received" log line (JSON, on its standard error)
//!   named, against the batch its journal says it held (`log_named_held`);
//! - how the group's offsets moved while it was frozen (`stuck_lag_apart`: each of its
//!   partitions kept its committed offset while its lag grew, and every other partition's
//!   committed offset moved on; not the lag's level, which a busy partition's healthy
//!   consumer can exceed on a loaded machine while it keeps committing);
//! - the assignment changes the other members saw from the restart to the end of the run
//!   (`others_changes_after_restart`).
//!
//! Variants:
//! - **dynamic members** (no `group.instance.id`): must pass, with the log naming the held
//!   batch, its lag apart, and the other members rebalanced by the restart (the new process
//!   is a new member; the group revokes every partition, and waits for the dead one);
//! - **static membership** (`group.instance.id` = `<group>.<consumer>`): must pass, with the
//!   log and lag as above and no assignment change at any other member.
//!
//! A run whose freeze caught no batch, whose restart did not happen, or whose lag was not
//! sampled twice a second apart inside the freeze (`stuck_lag_sampled`), is unknown.
//!
//! Where it cannot be shown, it says so: the static row needs a broker that implements
//! static membership ([`left_out`]). librdkafka's mock cluster does not (it finds a joining
//! member by its member id only, and a member that rejoins under its instance id is a new
//! member there, seen rebalancing the others); Apache Kafka (`--broker kafka`) does. Not run
//! on tansu at all ([`NOT_SHOWN_ON_TANSU`]).

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun, candidate};
use tradeflow_cluster::Backend;
use tradeflow_cluster::plan::{Action, PlanStep, ServiceFault};

/// The experiment's name.
pub const NAME: &str = "stuck-consumer";
/// What it shows.
pub const WHAT: &str = "one consumer process of three hangs (SIGSTOP) and is restarted alone: its logs name the partitions and offsets it holds, its partitions' lag grows while the others' does not, and with static membership (group.instance.id) the restart rebalances no other member";

/// The members' session timeout, and how long the consumer is stuck before it is killed:
/// the hang and the restart together within the session, so that the group keeps the
/// stuck member's partitions for it.
///
/// On the mock, 6 s and 3 s: its group coordinator holds the members' rejoin for up to the
/// session timeout while it waits for the dead member, and blocks their connections
/// meanwhile. With 12 s, the members' other requests timed out behind it, and a member's
/// second rejoin hit an assertion in librdkafka 2.12's mock cluster that ended the process
/// (`rd_kafka_mock_cgrp_classic_member_add: Assertion '!member->resp'`, seed 1, 1 run of 3).
pub fn timing(backend: Backend) -> (u32, u64) {
    match backend {
        Backend::Mock => (6_000, 3_000),
        _ => (12_000, 5_000),
    }
}
/// How long after the kill its replacement starts.
pub const RESTART_AFTER_MS: u64 = 500;
/// The stuck consumer.
const STUCK: u32 = 1;
/// The pause before each batch's transaction: each consumer can still apply 1,000 events
/// a second (batches of up to 200), and holds a batch most of the time.
const APPLY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// Events and rate: 20 s of publishing, so that events keep coming while the consumer is
/// stuck and after it is restarted.
const EVENTS: u64 = 20_000;
const RATE_PER_S: f64 = 1_000.0;

/// Why the lesson does not run on tansu (or the container, which runs tansu).
pub const NOT_SHOWN_ON_TANSU: &str = "tansu cannot show it: after the stuck member was killed and a new one joined, tansu 0.1.2's group coordinator left part of the topic unread for the rest of the run (5,395 of 20,000 events lost, worst time lag 33 s, seed 1), so the dynamic row would show tansu, not the restart; and it does not implement static membership (a member rejoining under its instance id rebalanced the others). Run it on the mock or kafka";

/// Whether a backend implements static membership (a member rejoining under its
/// `group.instance.id` within its session keeps its partitions without a rebalance).
pub fn has_static_membership(backend: Backend) -> bool {
    matches!(backend, Backend::Kafka | Backend::External)
}

/// What the lesson cannot show on a setup's backend, and why.
pub fn left_out(setup: &Setup) -> Vec<String> {
    if has_static_membership(setup.broker) {
        return Vec::new();
    }
    vec![format!(
        "static membership (group.instance.id): {} does not implement it (a member rejoining under its instance id is a new member there, and the group rebalances); run it with --broker kafka",
        setup.broker
    )]
}

/// One run: three processes, consumer 1 stuck then restarted, with or without static
/// membership.
fn variant(setup: &Setup, label: &str, static_membership: bool, expected: Expected) -> Result<Variant, String> {
    let Some(service) = &setup.service else {
        return Err("the lesson freezes and restarts a balance service process, and no tradeflow executable was given to start it".into());
    };
    let mut options = setup.stream(6, 3);
    options.workload.events = EVENTS;
    options.workload.rate_per_s = RATE_PER_S;
    let publishing_ms = (EVENTS as f64 / RATE_PER_S * 1_000.0) as u64;
    // The hang starts at a seeded moment in the second third of publishing.
    let drawn = tradeflow_cluster::plan::FaultPlan::random(
        setup.seed,
        &[candidate(Action::Service(ServiceFault::Pause { consumer: STUCK }), (0, 0))],
        1,
        (publishing_ms / 3, publishing_ms / 2),
    );
    let at_ms = drawn.steps.first().map_or(publishing_ms / 3, |step| step.at_ms);
    let (session_timeout_ms, stuck_for_ms) = timing(setup.broker);
    options.scenario.plan = setup.fixed_plan(vec![
        // Stuck, and never woken: the operator kills it.
        PlanStep {
            at_ms,
            for_ms: None,
            action: Action::Service(ServiceFault::Pause { consumer: STUCK }),
        },
        PlanStep {
            at_ms: at_ms + stuck_for_ms,
            for_ms: Some(RESTART_AFTER_MS),
            action: Action::Service(ServiceFault::Crash { consumer: STUCK }),
        },
    ]);
    // Each batch waits a while before its transaction (a database under load), so that
    // the hang catches the consumer holding one, as a consumer stuck in a call would.
    options.scenario.apply_delay = APPLY_DELAY;
    options.scenario.processes = Some(service.clone());
    options.scenario.static_membership = static_membership;
    options.scenario.session_timeout_ms = Some(session_timeout_ms);
    // A dynamic member's restart waits for the dead member's session to expire before
    // the group settles: the drain may pause that long.
    options.stall_timeout = std::time::Duration::from_millis(u64::from(session_timeout_ms) * 2);
    Ok(Variant {
        label: label.into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: expected
            .observing("log_named_held")
            .observing("stuck_lag_apart")
            .showing("SIGSTOP")
            .shown_by("frozen_holding")
            .shown_by("stuck_lag_sampled"),
    })
}

/// The lesson's variants for a setup: the service as processes; the static row where the
/// backend implements static membership.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if matches!(setup.broker, Backend::Tansu | Backend::Container) {
        return Err(NOT_SHOWN_ON_TANSU.into());
    }
    let mut rows = vec![variant(
        setup,
        "dynamic members (no group.instance.id)",
        false,
        Expected::pass("the restarted process is a new member: the whole group is rebalanced (every partition revoked, and the group waits for the dead member's session to end)")
            .observing("others_changes_after_restart"),
    )?];
    if has_static_membership(setup.broker) {
        rows.push(variant(
            setup,
            "static membership (group.instance.id)",
            true,
            Expected::pass("the restarted process rejoins under its instance id within its session: it gets its partitions back and no other member's assignment changes")
                .never("others_changes_after_restart"),
        )?);
    }
    Ok(rows)
}

/// Chapter 19's run: the dynamic row, with the learner's `held_ranges` saying what each
/// "batch received" log line names (on the mock: the log line, not static membership, is
/// the chapter's; the experiment shows static membership on kafka).
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if matches!(setup.broker, Backend::Tansu | Backend::Container) {
        return Err(NOT_SHOWN_ON_TANSU.into());
    }
    let mut row = variant(
        setup,
        "your held_ranges: one of three processes stuck (SIGSTOP) holding a batch, then restarted",
        false,
        Expected::pass("the stuck process's last log line names the partitions and offsets it holds"),
    )?;
    if let VariantRun::Stream(options) = &mut row.run {
        options.scenario.held_exercise = true;
    }
    Ok(row)
}

/// Chapter 19's judge: unknown when the freeze caught no batch, the restart did not happen
/// or the lag was not sampled inside the freeze; a failure named `log` when the stuck
/// process's last "batch received" line did not name exactly what its journal says it
/// held, one named `lag` when its partitions' offsets did not stand apart from the others'
/// (with how they moved); then the checker's counts.
pub fn chapter_judge(runs: &[(Variant, tradeflow_check::RunRecord)]) -> crate::chapters::Judgement {
    use crate::chapters::Judgement;
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    if variant.verdict(record) == crate::RowVerdict::Unknown {
        return Judgement::Unknown(
            "the freeze caught no batch in hand, a planned fault did not fire, or the lag was not sampled twice inside the freeze; run the check again".into(),
        );
    }
    let text = |key: &str| {
        record
            .config
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("nothing")
            .to_owned()
    };
    let held = text("stuck_held");
    let logged = record.config.get("stuck_logged").map_or_else(
        || "nothing".to_owned(),
        |line| {
            let field = |key: &str| line.get(key).and_then(serde_json::Value::as_str).unwrap_or("nothing");
            format!("topic {}, offsets {}", field("topic"), field("offsets"))
        },
    );
    let named = record.config.get("log_named_held").and_then(serde_json::Value::as_u64) == Some(1);
    if !named {
        return Judgement::Fail {
            violation: "log",
            detail: format!(
                "log the stuck process, {}, last logged {logged}, and it held {held}: where it stopped cannot be read from its logs",
                text("stuck_consumer")
            ),
        };
    }
    if record.config.get("stuck_lag_apart").and_then(serde_json::Value::as_u64) != Some(1) {
        let moved = record
            .config
            .get("stuck_lag")
            .map_or_else(|| "no samples".to_owned(), ToString::to_string);
        return Judgement::Fail {
            violation: "lag",
            detail: format!(
                "lag the stuck process's partitions {} did not stand apart while it was frozen (its committed offsets still, its lag growing, every other partition's committed offset moving): {moved}",
                record.config.get("stuck_partitions").map_or_else(String::new, ToString::to_string)
            ),
        };
    }
    let judged = crate::chapters::judge_counts(variant, record, &crate::chapters::EVERY_COUNT);
    match judged {
        Judgement::Pass(evidence) => Judgement::Pass(format!("the stuck process's last log line named what it held ({held}); {evidence}")),
        other => other,
    }
}
