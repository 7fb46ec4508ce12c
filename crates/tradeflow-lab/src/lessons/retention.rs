//! Lesson: retention buys time, no more. A group that stops reading for longer than the
//! topic keeps its messages comes back to a log whose oldest part the broker has deleted:
//! those events are lost to it, whatever its offsets say.
//!
//! From the field: Parcel Perform, "Initial experience with Kafka": "the log retention can
//! buy us some time but if the rate of consuming message is way below producing, ... the
//! message could be lost".
//!
//! The balance service (one `tradeflow balance-service` process, one partition) is down
//! for a while, as for a deployment: stopped (SIGTERM: it leaves its group), started again
//! later, while trades keep coming. The broker deletes what is past the partition's retention: the restarted
//! consumer's committed offset is before the log's start, librdkafka resets its position to
//! the earliest message left, and the service counts the messages it jumped over
//! (`skipped_by_broker`); the checker counts their events as lost. Under each row that lost
//! messages, the report says what retention would have covered the outage: the deepest
//! backlog of a partition, in bytes.
//!
//! A process that is down, not one that only stops reading: a consumer that stays up keeps
//! fetching into its prefetch queue (4 MiB, `queued.max.messages.kbytes`) while it does not
//! process, and what is in the queue survives the broker's deletion.
//!
//! Variants: an outage longer than retention must **lose** events (`skipped_by_broker` >
//! 0); a variant that retention covers must pass. On the mock cluster retention cannot be
//! set (librdkafka's mock keeps 5 MB per partition), so the covering variant is a shorter
//! outage; on Apache Kafka both variants are down for the same time and differ only in the
//! topic's `retention.bytes`. Not run on tansu or a container: this project has not seen tansu's
//! memory storage delete by retention, and a container's broker checks retention every five
//! minutes (`log.retention.check.interval.ms`), longer than a run.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_check::{LagSample, RunRecord};
use tradeflow_cluster::plan::{Action, PlanStep, ServiceFault};
use tradeflow_cluster::{Backend, MOCK_PARTITION_RETAINED_MB};

/// The experiment's name.
pub const NAME: &str = "retention";
/// What it shows.
pub const WHAT: &str = "a group that stops reading for longer than the topic's retention comes back to deleted messages: lost to it; retention that covers the outage loses nothing";

/// The offered rate and the events of every variant: twenty-two seconds of publishing,
/// which outlast the longer outage and the restart after it.
const RATE_PER_S: f64 = 2_000.0;
const EVENTS: u64 = 44_000;
/// When the service goes down, from the start of publishing: late enough for it to have
/// committed offsets, which is where its restart resumes, and what shows the jump over
/// deleted messages.
const STOP_AT_MS: u64 = 2_000;
/// The long outage. The restarted member reads again some 3.5 s after it starts (on the
/// mock, a new group's first join waits 3 s), so some 33,000 events of about 260 bytes,
/// 8.5 MB, pile up in the partition.
const LONG_STOP_MS: u64 = 13_000;
/// The short outage on the mock: some 11,000 events with the restart's wait, 3 MB, within
/// the 5 MB it keeps. (On the mock a partition's oldest messages go at every append past
/// 5 MB, so a consumer behind that edge keeps falling off it: the margin is wide.)
const SHORT_STOP_MS: u64 = 2_000;
/// On Apache Kafka: segments of 1 MiB (the smallest Kafka 4 allows), and a partition that
/// keeps 1 MiB past its active segment, or 256 MiB.
const SEGMENT_BYTES: u64 = 1 << 20;
const SHORT_RETENTION_BYTES: u64 = 1 << 20;
const LONG_RETENTION_BYTES: u64 = 256 << 20;

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    let Some(service) = &setup.service else {
        return Err("the lesson stops the balance service's process, and no tradeflow executable was given to start it".into());
    };
    let losing = Expected::fail(
        Violation::Lost,
        "the broker deleted messages the group had not read while it was down; they are lost to it",
    )
    .observing("skipped_by_broker");
    let covered = |why: &str| Expected::pass(format!("{why}: nothing deleted before it was read"));
    let variant = |label: String, stop_ms: u64, retention_bytes: Option<u64>, expected: Expected| {
        let mut variant = variant(setup, label, stop_ms, retention_bytes, expected);
        if let VariantRun::Stream(options) = &mut variant.run {
            options.scenario.processes = Some(service.clone());
        }
        variant
    };
    match setup.broker {
        Backend::Mock => Ok(vec![
            variant(
                format!("down {} s: past the {MOCK_PARTITION_RETAINED_MB} MB the mock keeps", LONG_STOP_MS / 1_000),
                LONG_STOP_MS,
                None,
                losing,
            ),
            variant(
                format!("down {:.1} s: within the {MOCK_PARTITION_RETAINED_MB} MB", SHORT_STOP_MS as f64 / 1e3),
                SHORT_STOP_MS,
                None,
                covered("the backlog fits in what the partition keeps"),
            ),
        ]),
        Backend::Kafka => Ok(vec![
            variant(
                format!("down {} s, retention.bytes {} MiB", LONG_STOP_MS / 1_000, SHORT_RETENTION_BYTES >> 20),
                LONG_STOP_MS,
                Some(SHORT_RETENTION_BYTES),
                losing,
            ),
            variant(
                format!("down {} s, retention.bytes {} MiB", LONG_STOP_MS / 1_000, LONG_RETENTION_BYTES >> 20),
                LONG_STOP_MS,
                Some(LONG_RETENTION_BYTES),
                covered("retention covers the backlog"),
            ),
        ]),
        Backend::Tansu => Err("this project has not seen tansu's memory storage delete a message by retention, so neither row could fail honestly; run it on mock or kafka".into()),
        Backend::Container | Backend::External => Err(
            "the broker's retention check runs every log.retention.check.interval.ms (five minutes by default), longer than a run; run it on mock or kafka, whose brokers this project configures".into(),
        ),
    }
}

/// The most chapter 13's run keeps the service down, whatever the exercise says: the stop
/// and the restart stay within the publishing.
const CHAPTER_WINDOW_MAX_MS: u64 = 18_000;
/// How long a restarted consumer takes to read again on the mock: its group's first join
/// waits 3 s, and the process starts.
const MOCK_REJOIN_MS: u64 = 3_500;
/// The mean message of the lessons' workload, measured (`message_bytes_mean`).
const MESSAGE_BYTES: u64 = 261;

/// What chapter 13's exercise is told: the lesson's traffic and what the mock keeps.
pub fn chapter_budget() -> tradeflow_exercises::RetentionBudget {
    tradeflow_exercises::RetentionBudget {
        rate_per_s: RATE_PER_S as u64,
        message_bytes: MESSAGE_BYTES,
        retained_bytes: u64::from(MOCK_PARTITION_RETAINED_MB) << 20,
        rejoin_ms: MOCK_REJOIN_MS,
    }
}

/// The window the learner's `deploy_window_ms` gives, and the one retention allows: the
/// time the partition keeps at the lesson's rate, less the rejoin.
fn chapter_windows() -> (u64, u64) {
    let budget = chapter_budget();
    let window = tradeflow_exercises::deploy_window_ms::deploy_window_ms(&budget);
    let allowed = (budget.retained_bytes * 1_000 / (budget.rate_per_s * budget.message_bytes).max(1)).saturating_sub(budget.rejoin_ms);
    (window, allowed)
}

/// Chapter 13's run: the lesson's outage on the mock, as long as the learner's window.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let Some(service) = &setup.service else {
        return Err("the chapter stops the balance service's process, and no tradeflow executable was given to start it".into());
    };
    let (window, _) = chapter_windows();
    let stop_ms = window.min(CHAPTER_WINDOW_MAX_MS);
    let mut variant = variant(
        setup,
        format!(
            "your deploy_window_ms: the balance service down {:.1} s for a deployment",
            stop_ms as f64 / 1e3
        ),
        stop_ms,
        None,
        Expected::pass("nothing deleted before it was read"),
    );
    if let VariantRun::Stream(options) = &mut variant.run {
        options.scenario.processes = Some(service.clone());
    }
    Ok(variant)
}

/// Chapter 13's judge: lost as the checker counts it; a window under a quarter of what
/// retention allows fails too (a deployment needs time: zero passes nothing).
pub fn chapter_judge(runs: &[(Variant, RunRecord)]) -> crate::chapters::Judgement {
    use crate::chapters::Judgement;
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let (window, allowed) = chapter_windows();
    window_verdict(
        window,
        allowed,
        crate::chapters::judge_counts(variant, record, &crate::chapters::EVERY_COUNT),
    )
}

/// A counts verdict, turned into a failure when the window that passed was too cautious.
fn window_verdict(window: u64, allowed: u64, judged: crate::chapters::Judgement) -> crate::chapters::Judgement {
    use crate::chapters::Judgement;
    match judged {
        Judgement::Pass(_) if window.saturating_mul(4) < allowed => Judgement::Fail {
            violation: "too cautious",
            detail: format!(
                "too cautious: a window of {window} ms is under a quarter of the {allowed} ms retention allows at this rate: deployments would have no time; nothing was lost"
            ),
        },
        Judgement::Pass(evidence) => Judgement::Pass(format!(
            "down {:.1} s of the {:.1} s retention allows: {evidence}",
            window.min(CHAPTER_WINDOW_MAX_MS) as f64 / 1e3,
            allowed as f64 / 1e3
        )),
        other => other,
    }
}

/// One run: a partition, a consumer, the outage, and on Kafka the topic's retention.
fn variant(setup: &Setup, label: String, stop_ms: u64, retention_bytes: Option<u64>, expected: Expected) -> Variant {
    let mut options = setup.stream(1, 1);
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.events = EVENTS;
    // What the broker deleted never comes: the run ends once nothing more arrives, and the
    // outage itself is no stall.
    options.stall_timeout = std::time::Duration::from_millis(stop_ms + 10_000);
    if let Some(bytes) = retention_bytes {
        options.scenario.topic_configs = vec![
            ("retention.bytes".into(), bytes.to_string()),
            ("segment.bytes".into(), SEGMENT_BYTES.to_string()),
        ];
    }
    options.scenario.plan = setup.fixed_plan(vec![
        PlanStep {
            at_ms: STOP_AT_MS,
            for_ms: None,
            action: Action::Service(ServiceFault::Leave { consumer: 0 }),
        },
        PlanStep {
            at_ms: STOP_AT_MS + stop_ms,
            for_ms: None,
            action: Action::Service(ServiceFault::Restart { consumer: 0 }),
        },
    ]);
    Variant {
        label,
        run: VariantRun::Stream(Box::new(options)),
        expected,
    }
}

/// What retention would have covered a run whose consumers the broker's retention
/// overtook (`None` when it deleted nothing unread): the deepest backlog a partition held,
/// in messages and in bytes (the mean message's key, value and headers, before the record
/// batch's framing, so a lower bound).
pub fn covering(record: &RunRecord) -> Option<String> {
    covering_of(&record.config, &record.lag)
}

fn covering_of(config: &serde_json::Value, lag: &[LagSample]) -> Option<String> {
    let count = |key: &str| config.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let skipped = count("skipped_by_broker");
    if skipped == 0 {
        return None;
    }
    let deepest = lag
        .iter()
        .flat_map(|sample| sample.partitions.iter().map(|partition| partition.offset_lag))
        .max()
        .unwrap_or(0);
    let mean = count("message_bytes_mean");
    let bytes = u64::try_from(deepest).unwrap_or(0) * mean;
    Some(format!(
        "the broker deleted {skipped} messages before they were read; a retention that keeps at least the deepest backlog of a partition would have covered the outage: retention.bytes >= {:.1} MiB per partition ({deepest} messages of {mean} bytes on average, before the record batches' framing)",
        bytes as f64 / f64::from(1 << 20)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_check::PartitionLag;

    fn said(skipped: u64, lags: &[i64]) -> Option<String> {
        let config = serde_json::json!({"skipped_by_broker": skipped, "message_bytes_mean": 200});
        let lag: Vec<LagSample> = lags
            .iter()
            .enumerate()
            .map(|(at, lag)| LagSample {
                t_s: at as f64,
                offset_lag_total: *lag,
                time_lag_ms: 0.0,
                partitions: vec![PartitionLag {
                    partition: 0,
                    log_end: *lag,
                    committed: 0,
                    offset_lag: *lag,
                }],
            })
            .collect();
        covering_of(&config, &lag)
    }

    #[test]
    fn a_window_that_passed_fails_when_it_is_under_a_quarter_of_what_retention_allows() {
        use crate::chapters::Judgement;
        let passed = || Judgement::Pass("nothing lost".into());
        assert!(matches!(
            window_verdict(0, 6_500, passed()),
            Judgement::Fail {
                violation: "too cautious",
                ..
            }
        ));
        assert!(matches!(
            window_verdict(1_600, 6_500, passed()),
            Judgement::Fail {
                violation: "too cautious",
                ..
            }
        ));
        assert!(matches!(window_verdict(1_700, 6_500, passed()), Judgement::Pass(_)));
        let lost = Judgement::Fail {
            violation: "lost",
            detail: "lost 9".into(),
        };
        assert!(matches!(
            window_verdict(15_000, 6_500, lost),
            Judgement::Fail { violation: "lost", .. }
        ));
        // The budget the learner is given: about 10 s kept at 2,000 messages of 261 bytes a
        // second, 6.5 s once the rejoin is paid.
        assert_eq!(chapter_windows().1, 6_543);
    }

    #[test]
    fn the_covering_retention_is_the_deepest_backlog_in_bytes() {
        let text = said(9_000, &[10, 40_000, 30_000, 0]).expect("messages were deleted");
        assert!(text.contains("deleted 9000 messages"), "{text}");
        // 40,000 messages of 200 bytes: 7.6 MiB.
        assert!(text.contains("retention.bytes >= 7.6 MiB"), "{text}");
        assert!(said(0, &[10, 40_000]).is_none(), "nothing deleted, nothing to say");
    }
}
