//! Lesson: offset lag is the metric, and its trend says more than its size. A consumer
//! group that stops reading shows as a committed offset that no longer moves while the log
//! grows (STALL), long before any backlog threshold trips; a busy group that keeps up shows
//! a moving offset (OK), one falling behind a lag that grows at every step (WARN).
//!
//! From the field: Wealthsimple, "Kafka in production" (2021), offset lag as the health
//! signal; the rules follow LinkedIn's Burrow, adapted to what a probe of offsets sees.
//!
//! Chapter 01's run: every consumer stops reading (staying in its group) for a few seconds
//! mid-publishing while the lag monitor samples offsets every 500 ms; the learner's
//! `lag_status` judges each window of samples, and the judge compares it with what the run
//! did: inside the stop, a window with lag all along must be STALL or STOP; while the
//! consumers read, no window may be. A run whose stop never came, or that sampled no window
//! of either kind, is unknown.

use crate::chapters::Judgement;
use crate::variant::{Setup, Variant, VariantRun};
use crate::{Expected, faults_fired};
use std::time::Duration;
use tradeflow_check::{LagSample, RunRecord};
use tradeflow_cluster::plan::{Action, PlanStep, ServiceFault};
use tradeflow_stream::lag::{LagRule, LagStatus, OffsetSample, STATUS_WINDOW, partition_samples};

/// When the consumers stop reading, from the start of publishing.
pub const STOP_AT: Duration = Duration::from_secs(3);
/// How long they stay stopped.
pub const STOP_FOR: Duration = Duration::from_secs(4);
/// The run's offered rate and its events: eleven seconds of publishing, so that the
/// monitor sees full windows before the stop, inside it and after the consumers caught up.
const RATE_PER_S: f64 = 1_000.0;
const EVENTS: u64 = 11_000;
/// After the stop begins, how long before a window counts as inside it (the consumers
/// finish the batch in hand).
const SETTLE: Duration = Duration::from_millis(500);
/// After the stop ends, how long the consumers get to read again before a window counts
/// as a reading one.
const RECOVER: Duration = Duration::from_secs(2);

/// The chapter's run: four partitions, two consumers in this process, the stop mid-run,
/// and the lag status judged by `rule`.
pub fn chapter(setup: &Setup, rule: LagRule) -> Result<Variant, String> {
    let mut options = setup.stream(4, 2);
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.events = EVENTS;
    options.lag_rule = rule;
    options.stall_timeout = Duration::from_secs(20);
    options.scenario.plan = setup.fixed_plan(vec![PlanStep {
        at_ms: STOP_AT.as_millis() as u64,
        for_ms: Some(STOP_FOR.as_millis() as u64),
        action: Action::Service(ServiceFault::HoldAll),
    }]);
    Ok(Variant {
        label: format!("every consumer stops reading for {} s", STOP_FOR.as_secs()),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("inside the stop the status says STALL or STOP; while the consumers read, never"),
    })
}

/// Judges a run of [`chapter`]: each window of each partition's samples against what the
/// consumers were doing then.
pub fn judge(variant: &Variant, record: &RunRecord) -> Judgement {
    let VariantRun::Stream(options) = &variant.run else {
        return Judgement::Unknown("the chapter's run is a stream run".into());
    };
    if !faults_fired(variant.planned_faults(), record) {
        return Judgement::Unknown("the consumers were never stopped and started again: no stop to see".into());
    }
    let stopped_s = |name: &str| {
        record
            .faults
            .iter()
            .find(|fault| fault.fault.contains(name))
            .map(|fault| fault.at_ms as f64 / 1e3)
    };
    let (Some(stop), Some(resume)) = (stopped_s("stops reading"), stopped_s("reads again")) else {
        return Judgement::Unknown("the run's record does not say when the consumers stopped and read again".into());
    };
    let rule = options.lag_rule;
    let tally = tally(
        &record.lag,
        |window| rule.status(window),
        (stop + SETTLE.as_secs_f64(), resume),
        resume + RECOVER.as_secs_f64(),
    );
    if tally.stopped == 0 || tally.reading == 0 {
        return Judgement::Unknown(format!(
            "the monitor sampled {} window(s) inside the stop and {} while reading: too few to judge",
            tally.stopped, tally.reading
        ));
    }
    if tally.missed > 0 {
        return Judgement::Fail {
            violation: "missed stall",
            detail: format!(
                "missed stall {} (want 0): {} of {} windows inside the stop said {} (want STALL or STOP)",
                tally.missed,
                tally.missed,
                tally.stopped,
                tally.missed_as.join("/")
            ),
        };
    }
    if tally.false_alarms > 0 {
        return Judgement::Fail {
            violation: "false alarm",
            detail: format!(
                "false alarm {} (want 0): {} of {} windows while the consumers read said STALL or STOP",
                tally.false_alarms, tally.false_alarms, tally.reading
            ),
        };
    }
    Judgement::Pass(format!(
        "{} windows inside the stop said STALL or STOP; {} windows while the consumers read raised no alarm",
        tally.stopped, tally.reading
    ))
}

/// Windows counted by what the consumers were doing and what the status said.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    stopped: u64,
    missed: u64,
    missed_as: Vec<&'static str>,
    reading: u64,
    false_alarms: u64,
}

/// Counts each partition's windows: inside `stopped` (with lag all along, ending before the
/// consumers read again) they must alarm; before its start or after `reading_again_s` they
/// must not.
fn tally(lag: &[LagSample], rule: impl Fn(&[OffsetSample]) -> LagStatus, stopped: (f64, f64), reading_again_s: f64) -> Tally {
    let mut tally = Tally::default();
    let partitions: Vec<i32> = lag
        .last()
        .map(|sample| sample.partitions.iter().map(|lag| lag.partition).collect())
        .unwrap_or_default();
    for partition in partitions {
        let series = partition_samples(lag, partition);
        for window in series.windows(STATUS_WINDOW) {
            let (from, to) = (window[0].at_s, window[STATUS_WINDOW - 1].at_s);
            let status = rule(window);
            let alarm = matches!(status, LagStatus::Stall | LagStatus::Stop);
            if from >= stopped.0 && to < stopped.1 && window.iter().all(|sample| sample.lag() > 0) {
                tally.stopped += 1;
                if !alarm {
                    tally.missed += 1;
                    let said = status.as_str();
                    if !tally.missed_as.contains(&said) {
                        tally.missed_as.push(said);
                    }
                }
            } else if to < stopped.0 - SETTLE.as_secs_f64() || from > reading_again_s {
                tally.reading += 1;
                tally.false_alarms += u64::from(alarm);
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_stream::lag::monitor_status;

    fn window(points: &[(i64, i64)]) -> Vec<OffsetSample> {
        points
            .iter()
            .enumerate()
            .map(|(index, (committed, log_end))| OffsetSample {
                at_s: index as f64 * 0.5,
                committed: *committed,
                log_end: *log_end,
            })
            .collect()
    }

    /// One partition sampled every 500 ms: reading (committed follows the log) until 3 s,
    /// stopped (committed frozen, the log growing) until 7 s, reading again after.
    fn run_with_a_stop() -> Vec<LagSample> {
        (1..=24)
            .map(|step| {
                let t_s = f64::from(step) * 0.5;
                let log_end = i64::from(step) * 100;
                let committed = if (3.0..7.0).contains(&t_s) { 250 } else { log_end - 10 };
                LagSample {
                    t_s,
                    offset_lag_total: log_end - committed,
                    time_lag_ms: 0.0,
                    partitions: vec![tradeflow_check::PartitionLag {
                        partition: 0,
                        log_end,
                        committed,
                        offset_lag: log_end - committed,
                    }],
                }
            })
            .collect()
    }

    #[test]
    fn windows_inside_the_stop_must_alarm_and_windows_while_reading_must_not() {
        let lag = run_with_a_stop();
        let judged = tally(&lag, monitor_status, (3.5, 7.0), 9.0);
        assert!(judged.stopped > 0 && judged.reading > 0, "{judged:?}");
        assert_eq!((judged.missed, judged.false_alarms), (0, 0), "the monitor's rules: {judged:?}");
        // A rule that never alarms misses every stopped window; one that always does
        // raises an alarm in every reading window. Both must show.
        let never = tally(&lag, |_| LagStatus::Ok, (3.5, 7.0), 9.0);
        assert_eq!(never.missed, never.stopped, "{never:?}");
        let always = tally(&lag, |_| LagStatus::Stall, (3.5, 7.0), 9.0);
        assert_eq!(always.false_alarms, always.reading, "{always:?}");
    }

    #[test]
    fn the_monitor_tells_a_stopped_group_from_a_busy_one() {
        assert_eq!(
            monitor_status(&window(&[(10, 20), (30, 40), (50, 60), (70, 80)])),
            LagStatus::Ok,
            "moving, lag steady"
        );
        assert_eq!(
            monitor_status(&window(&[(10, 20), (15, 30), (20, 40), (25, 50)])),
            LagStatus::Warn,
            "moving, lag growing"
        );
        assert_eq!(
            monitor_status(&window(&[(10, 20), (10, 30), (10, 40), (10, 50)])),
            LagStatus::Stall,
            "stuck while the log grows"
        );
        assert_eq!(
            monitor_status(&window(&[(10, 50), (10, 50), (10, 50), (10, 50)])),
            LagStatus::Stop,
            "stuck, nothing arrives"
        );
        assert_eq!(
            monitor_status(&window(&[(10, 50), (10, 50), (50, 50), (50, 50)])),
            LagStatus::Ok,
            "caught up"
        );
    }
}
