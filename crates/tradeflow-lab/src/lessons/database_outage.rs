//! Lesson: a consumer is only as available as its database. When the database goes away,
//! retrying at once, for ever, with no timeout, hammers it (or hangs on it) and stops the
//! consumer polling, so the group takes it out for exceeding `max.poll.interval.ms` and
//! rebalances; bounded retries with exponential backoff and jitter, a timeout on every
//! call and a circuit breaker that pauses the partitions keep the member in its group, make
//! few calls while the database is away, and drain the lag once it is back.
//!
//! From the field: Scalescape, "Building High Scale Backend Systems With Kafka" (2023):
//! sensible timeouts, retries with a limit and exponential backoff, a circuit breaker
//! against cascading failure, consumers scaled to their dependencies.
//!
//! The fault comes from outside the balance service: on PostgreSQL its pool reaches the
//! server through a chaos proxy, and the outage resets every connection and refuses new
//! ones; on SQLite another process (`tradeflow hold-sqlite-lock`) takes the file's write
//! lock. The run's own store (the checker's) keeps its direct connection. The outage starts
//! at a seeded moment in the middle of publishing and lasts 12 to 14 s, twice the
//! consumers' `max.poll.interval.ms` (6 s, the least librdkafka allows beside a 6 s session).
//!
//! Variants, both with two consumers in the run:
//! - **at once, for ever**: must pass the checker (the apply log skips what the evicted
//!   member's batch had applied) and must show the member taken out of its group
//!   (`max_poll_exceeded` > 0, which librdkafka reports when the member polls again);
//! - **backoff and breaker** (the service's defaults): must pass with its breaker seen open
//!   (`breaker_opened` > 0) and no rebalance after the first assignment
//!   (`rebalances_in_run` = 0).
//!
//! Both rows need the outage applied (its effect recorded) and, for the second, the service
//! to have met it (`database_failures` > 0): a run whose outage reached nobody is unknown.
//! Each row reports the calls the service made during the outage, per second, and how long
//! after the database's return its time lag was under a second again.

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun, candidate};
use std::time::Duration;
use tradeflow_cluster::plan::{Action, DatabaseFault};
use tradeflow_stream::service::DatabaseRetry;

/// The experiment's name.
pub const NAME: &str = "database-outage";
/// What it shows.
pub const WHAT: &str = "the database goes away for 12-14 s: retrying at once with no timeout gets the consumer taken out of its group; backoff, timeouts and a breaker that pauses the partitions keep it in, with few calls, and drain the lag after";

/// The offered rate and the events: twenty seconds of publishing, which hold the outage.
const RATE_PER_S: f64 = 2_000.0;
const EVENTS: u64 = 40_000;
/// The outage's length, drawn with the seed.
const OUTAGE_MS: (u64, u64) = (12_000, 14_000);
/// The consumers' `max.poll.interval.ms`: librdkafka's least beside the fleet's session
/// timeout, half the shortest outage.
pub const MAX_POLL_INTERVAL_MS: u32 = tradeflow_stream::fleet::FLEET_SESSION_TIMEOUT_MS;
/// Words every outage's recorded effect holds: the proof that it was applied.
pub const EFFECT: &str = "database unreachable";

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if setup.store == tradeflow_store::StoreKind::Sqlite && setup.service.is_none() {
        return Err(
            "on SQLite the outage is a lock held by another tradeflow process, and no tradeflow executable was given to start it".into(),
        );
    }
    Ok(vec![
        variant(
            setup,
            DatabaseRetry::AtOnce,
            Expected::pass("nothing lost (the apply log skips what is applied twice), but the consumer stopped polling while it retried and was taken out of its group")
                .showing(EFFECT)
                .observing("max_poll_exceeded"),
        ),
        variant(
            setup,
            DatabaseRetry::Backoff,
            Expected::pass("the breaker paused the partitions: the member polled on, stayed in its group, made few calls, and drained its lag once the database was back")
                .showing(EFFECT)
                .observing("breaker_opened")
                .never("rebalances_in_run")
                .shown_by("database_failures"),
        ),
    ])
}

/// In chapter 16, the most database calls a second the two consumers may make while the
/// database is away: the defaults make about one and a half (tried through PostgreSQL's
/// proxy, seed 1); a consumer that tries again at once makes thousands.
pub const CHAPTER_CALLS_PER_S_MAX: f64 = 10.0;
/// In chapter 16, how soon after the database's return the group must commit again (its
/// first successful call, the wait between tries included): the solution's waits are
/// capped at 3 s. The time the lag then takes to drain is reported, not judged: it is the
/// machine's apply rate (5.2 s on one machine, 16.5 s on another under load, seed 1).
pub const CHAPTER_RESUME_MS_MAX: u64 = 8_000;

/// Chapter 16's run: the lesson's outage, the learner's `after_database_failure` deciding
/// what the service does after each failed call. Needs PostgreSQL, where a failed call
/// fails at once (the proxy refuses it) and a consumer that tries again at once shows.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if setup.store != tradeflow_store::StoreKind::Postgres {
        return Err("chapter 16 needs PostgreSQL (--store postgres, DATABASE_URL): there a call fails at once while the database is away, so how often your service calls it shows; on SQLite every call waits out the lock".into());
    }
    Ok(variant(
        setup,
        DatabaseRetry::Exercise,
        Expected::pass("the balance service stays in its group, spares the database and catches up once it is back")
            .showing(EFFECT)
            .shown_by("database_failures"),
    ))
}

/// Chapter 16's judge: the checker's counts first; then taken out of the group (a
/// rebalance, or librdkafka's max.poll.interval.ms error) fails as `evicted`, more than
/// [`CHAPTER_CALLS_PER_S_MAX`] calls a second during the outage as `hammered`, and no
/// offset committed within [`CHAPTER_RESUME_MS_MAX`] of the return (or a time lag never back
/// under a second) as `slow recovery`. A service that had not resumed when the run stopped
/// waiting leaves events unapplied: that is named `slow recovery` too, with the count.
pub fn chapter_judge(runs: &[(Variant, tradeflow_check::RunRecord)]) -> crate::chapters::Judgement {
    use crate::chapters::Judgement;
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let count = |key: &str| record.config.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let database = record.config.get("database").cloned().unwrap_or_default();
    let (evicted, rebalances) = (count("max_poll_exceeded"), count("rebalances_in_run"));
    let calls_per_s = database["calls_per_s_during_outage"].as_f64().unwrap_or(0.0);
    let calls = database["calls_during_outage"].as_u64().unwrap_or(0);
    let drained = database["drained_ms_after_return"].as_u64();
    let resumed = database["resumed_ms_after_return"].as_u64();
    let judged = crate::chapters::judge_counts(variant, record, &crate::chapters::EVERY_COUNT);
    let resumed_late = !matches!(resumed, Some(ms) if ms <= CHAPTER_RESUME_MS_MAX);
    let seconds = |ms: u64| format!("{:.1} s", ms as f64 / 1e3);
    let resumed_text = resumed.map_or("no offset committed after the database's return".to_owned(), |ms| {
        format!("the first offset committed {} after the database's return", seconds(ms))
    });
    if resumed_late && evicted == 0 && record.check.lost > 0 && matches!(judged, Judgement::Fail { .. }) {
        return Judgement::Fail {
            violation: "slow recovery after the outage",
            detail: format!(
                "slow recovery after the outage: {resumed_text} when the run stopped waiting ({:.0} s without progress), so {} events were never applied; waits between tries too long?",
                OUTAGE_MS.1 as f64 / 1e3 + STALL_AFTER_OUTAGE_S as f64,
                record.check.lost
            ),
        };
    }
    let Judgement::Pass(evidence) = judged else {
        return judged;
    };
    if evicted > 0 || rebalances > 0 {
        return Judgement::Fail {
            violation: "evicted",
            detail: format!(
                "evicted {evicted} times: the group took a consumer out for not polling within max.poll.interval.ms ({MAX_POLL_INTERVAL_MS} ms), {rebalances} rebalances; {calls} database calls during the outage"
            ),
        };
    }
    if calls_per_s > CHAPTER_CALLS_PER_S_MAX {
        return Judgement::Fail {
            violation: "hammered the database",
            detail: format!(
                "hammered the database: {calls} calls during the outage, {calls_per_s:.1} a second (at most {CHAPTER_CALLS_PER_S_MAX:.0}): a database coming back meets them all"
            ),
        };
    }
    match (resumed, drained) {
        (Some(resumed), Some(drained)) if !resumed_late => Judgement::Pass(format!(
            "no rebalance, {calls} database calls during the outage ({calls_per_s:.1}/s), first commit {} after the return, time lag under 1 s {} after it; {evidence}",
            seconds(resumed),
            seconds(drained)
        )),
        _ => Judgement::Fail {
            violation: "slow recovery after the outage",
            detail: format!(
                "slow recovery after the outage: {resumed_text}, at most {} allowed; the time lag was {}: waits between tries too long?",
                seconds(CHAPTER_RESUME_MS_MAX),
                drained.map_or("never under 1 s again".to_owned(), |ms| format!(
                    "under 1 s {} after the return",
                    seconds(ms)
                )),
            ),
        },
    }
}

/// How long the run waits for progress beyond the longest outage before it stops and
/// counts what is unapplied as lost, in seconds.
const STALL_AFTER_OUTAGE_S: u64 = 15;

/// One run: two consumers on four partitions, the outage at a seeded moment.
fn variant(setup: &Setup, retry: DatabaseRetry, expected: Expected) -> Variant {
    let mut options = setup.stream(4, 2);
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.events = EVENTS;
    options.scenario.database_retry = retry;
    options.scenario.max_poll_interval_ms = Some(MAX_POLL_INTERVAL_MS);
    options.scenario.lock_holder = setup.service.as_ref().map(|service| service.executable.clone());
    // The outage is no stall: nothing is applied while it lasts.
    options.stall_timeout = Duration::from_millis(OUTAGE_MS.1 + STALL_AFTER_OUTAGE_S * 1_000);
    let publishing_ms = (EVENTS as f64 / RATE_PER_S * 1_000.0) as u64;
    options.scenario.plan = tradeflow_cluster::plan::FaultPlan::random(
        setup.seed,
        &[candidate(Action::Database(DatabaseFault::Outage), OUTAGE_MS)],
        1,
        (publishing_ms / 5, publishing_ms / 4),
    );
    Variant {
        label: match retry {
            DatabaseRetry::AtOnce => "at once, for ever, no timeout".into(),
            DatabaseRetry::Backoff => "backoff, timeouts, breaker".into(),
            DatabaseRetry::Exercise => "your after_database_failure: the database away for 12-14 s".into(),
        },
        run: VariantRun::Stream(Box::new(options)),
        expected,
    }
}
