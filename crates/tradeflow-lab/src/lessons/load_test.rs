//! Lesson: load test at ten times today's peak before production does it for you, and tune
//! from what the test shows; a pipeline that applies one event per database transaction
//! keeps up today and falls seconds behind at 10x, while the same code batching its
//! transactions carries the load with lag to spare.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021): tuning Kafka is tricky, so
//! have a load-testing setup; Scalescape, "Building High Scale Backend Systems With Kafka"
//! (2023): load tests at 10x.
//!
//! Chapter 10's run: 5,000 events a second (ten times a peak of 500) for 8 s to 6
//! partitions, the balance service run with the learner's `tune` settings. It must keep
//! up: the consumers' time lag (how long ago the oldest unapplied event was due) stays
//! within [`LAG_BOUND_MS`], and the checker finds nothing lost, duplicated or reordered.
//! A run in which the publisher itself could not offer the rate (the broker's log grew
//! slower than [`OFFERED_LEAST`] of it) is unknown: it tested the machine, not the
//! pipeline. The full search for the highest sustainable rate is `tradeflow bench`.

use crate::chapters::{Judgement, judge_counts};
use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_check::RunRecord;
use tradeflow_exercises::{LoadTest, Tuning};

/// The load chapter 10 offers.
pub const LOAD: LoadTest = LoadTest {
    today_per_s: 500.0,
    target_per_s: 5_000.0,
    partitions: 6,
};
/// How long the chapter publishes at the target rate, s.
const PUBLISHING_S: f64 = 8.0;
/// The most time lag a pipeline that keeps up may show, ms: a few batches' worth.
pub const LAG_BOUND_MS: f64 = 2_000.0;
/// The least share of the target rate the publisher must have offered for the run to say
/// anything about the consumers.
pub const OFFERED_LEAST: f64 = 0.85;
/// Bounds of the learner's settings.
const BATCH_SIZE_MAX: usize = 10_000;
const LINGER_MS_MAX: u32 = 1_000;

/// Chapter 10's run with the learner's settings, or why they cannot run.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let tuning = tradeflow_exercises::tune::tune(&LOAD);
    check_tuning(&tuning)?;
    let mut options = setup.stream(LOAD.partitions, tuning.consumers);
    options.workload.rate_per_s = LOAD.target_per_s;
    options.workload.events = (LOAD.target_per_s * PUBLISHING_S) as u64;
    options.batch_size = tuning.batch_size;
    options.publisher.linger_ms = tuning.linger_ms;
    // A consumer of one event per transaction drains 40,000 events slowly but steadily:
    // the run waits for it (a stall is no progress for this long).
    options.stall_timeout = std::time::Duration::from_secs(30);
    Ok(Variant {
        label: format!(
            "your tune: batch {}, linger {} ms, {} consumer(s) on {} partitions, {} events/s (10x {})",
            tuning.batch_size, tuning.linger_ms, tuning.consumers, LOAD.partitions, LOAD.target_per_s, LOAD.today_per_s
        ),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass(
            "the consumers keep up with ten times today's peak: lag within a couple of seconds, nothing lost, duplicated or reordered",
        ),
    })
}

/// Refuses settings outside what the run takes, saying which and why.
fn check_tuning(tuning: &Tuning) -> Result<(), String> {
    if !(1..=BATCH_SIZE_MAX).contains(&tuning.batch_size) {
        return Err(format!(
            "tune returned batch_size {}: it must be 1..={BATCH_SIZE_MAX}",
            tuning.batch_size
        ));
    }
    if tuning.linger_ms > LINGER_MS_MAX {
        return Err(format!(
            "tune returned linger_ms {}: at most {LINGER_MS_MAX} here (every event would wait that long before it is even sent)",
            tuning.linger_ms
        ));
    }
    if tuning.consumers == 0 || tuning.consumers as i32 > LOAD.partitions {
        return Err(format!(
            "tune returned {} consumers: 1..={} (the topic's partitions; a consumer past them sits idle, chapter 07)",
            tuning.consumers, LOAD.partitions
        ));
    }
    Ok(())
}

/// The rate the broker's log grew at while publishing: events over the time of the first
/// lag sample that saw all of them in the log (the probe samples every 500 ms).
fn offered_per_s(record: &RunRecord) -> Option<f64> {
    let events = record.events as i64;
    record
        .lag
        .iter()
        .find(|sample| sample.partitions.iter().map(|partition| partition.log_end).sum::<i64>() >= events)
        .map(|sample| record.events as f64 / sample.t_s.max(f64::EPSILON))
}

/// Judges chapter 10's run: unknown when the publisher could not offer the load, fell
/// behind when the lag outgrew [`LAG_BOUND_MS`], then the checker's counts.
pub fn judge(runs: &[(Variant, RunRecord)]) -> Judgement {
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let offered = offered_per_s(record);
    if offered.is_none_or(|offered| offered < LOAD.target_per_s * OFFERED_LEAST) {
        return Judgement::Unknown(format!(
            "the publisher offered {} events/s of the {} asked: this run tested the machine, not your settings; run the check again on a quieter machine",
            offered.map_or(
                "no measurable rate (the log never held every event while sampled)".to_owned(),
                |offered| format!("{offered:.0}")
            ),
            LOAD.target_per_s
        ));
    }
    let worst_ms = record.lag.iter().map(|sample| sample.time_lag_ms).fold(0.0, f64::max);
    if worst_ms > LAG_BOUND_MS {
        return Judgement::Fail {
            violation: "fell behind",
            detail: format!(
                "fell behind by {worst_ms:.0} ms at worst (want at most {LAG_BOUND_MS:.0} ms); applied {:.0} events/s while the log grew at {:.0}/s, {:.2} database statements per event",
                record.throughput_per_s,
                offered.unwrap_or_default(),
                record.db_statements as f64 / record.events.max(1) as f64
            ),
        };
    }
    match judge_counts(variant, record, &crate::chapters::EVERY_COUNT) {
        Judgement::Pass(evidence) => Judgement::Pass(format!(
            "kept up with 10x today's peak ({:.0} events/s asked, the log grew at {:.0}/s): worst lag {worst_ms:.0} ms; {evidence}",
            LOAD.target_per_s,
            offered.unwrap_or_default()
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_outside_the_runs_bounds_are_refused_with_the_setting_named() {
        let good = Tuning {
            batch_size: 500,
            linger_ms: 5,
            consumers: 3,
        };
        assert_eq!(check_tuning(&good), Ok(()));
        for (bad, named) in [
            (Tuning { batch_size: 0, ..good }, "batch_size 0"),
            (
                Tuning {
                    batch_size: BATCH_SIZE_MAX + 1,
                    ..good
                },
                "batch_size 10001",
            ),
            (
                Tuning {
                    linger_ms: LINGER_MS_MAX + 1,
                    ..good
                },
                "linger_ms 1001",
            ),
            (Tuning { consumers: 0, ..good }, "0 consumers"),
            (Tuning { consumers: 7, ..good }, "7 consumers"),
        ] {
            let refused = check_tuning(&bad).expect_err("out of bounds");
            assert!(refused.contains(named), "{refused}");
        }
    }
}
