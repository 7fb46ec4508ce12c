//! The expectation framework: what a variant must show (a verdict, the violation behind
//! it, a count from the run's record, an effect its fault must be seen to have), and the
//! rule that a run whose planned faults did not all fire could not show its lesson: its
//! outcome is unknown, never as expected.

use std::fmt::Write as _;
use tradeflow_check::history::Verdict;
use tradeflow_check::{CheckReport, RunRecord};

/// What a variant must show.
#[derive(Debug, Clone)]
pub struct Expected {
    /// `None`: the verdict depends on timing the experiment cannot pin, so either one is as
    /// expected, but nothing may come out of order or twice.
    pub verdict: Option<Verdict>,
    /// The checker's count that must be above zero when the verdict is a failure.
    pub violation: Option<Violation>,
    /// A count from the run's configuration record that must be above zero (for example
    /// `redelivered`), whatever the verdict.
    pub observed: Vec<&'static str>,
    /// A count from the run's configuration record that must be zero (for example
    /// `rebalances_in_run`: what the row's way of meeting the fault must avoid).
    pub never: Option<&'static str>,
    /// Words a fault's recorded effect must contain: the proof that the fault did what the
    /// row is about (a new leader, an ISR below min.insync.replicas).
    pub effect: Option<&'static str>,
    /// Counts from the run's configuration record that must each be above zero for the run
    /// to have been able to show the lesson at all (a kill that caught a batch in hand); a
    /// run without one that does not meet the expectation is unknown, not a counterexample.
    pub shown_by: Vec<&'static str>,
    /// A count from the run's configuration record the violation must reach: what the
    /// faults were seen to put at stake (messages a kill caught committed and unapplied).
    pub at_least: Option<&'static str>,
    /// A bound on the balance service's worst time lag (the age of its oldest unapplied
    /// event, as the lag samples saw it): what customers see of a service that falls behind.
    pub time_lag: Option<TimeLag>,
    /// A bound on the peak resident set of the balance service's processes, in MB
    /// (`service_peak_rss_mb`); a run without the figure could not show it.
    pub rss_mb: Option<Bound>,
    /// A bound on the most the publisher held queued, in MiB
    /// (`publisher_queued_peak_mib`); a run without the figure could not show it.
    pub queued_mib: Option<Bound>,
    /// Why, in words.
    pub note: String,
}

/// The checker's count a failing variant must show.
#[derive(Debug, Clone, Copy)]
pub enum Violation {
    /// Acknowledged (or inserted) and never applied.
    Lost,
    /// Applied out of order, or a balance gone negative (proof of it).
    Reordered,
    /// Applied more than once (counted from the apply journal, which has no unique key).
    Duplicated,
}

impl Violation {
    /// The violation's count in a check.
    pub fn count(self, check: &CheckReport) -> u64 {
        match self {
            Violation::Lost => check.lost,
            Violation::Reordered => check.reordered + check.bad_balances,
            Violation::Duplicated => check.duplicated,
        }
    }

    /// Its one-word name, as a chapter declares it.
    pub fn key(self) -> &'static str {
        match self {
            Violation::Lost => "lost",
            Violation::Reordered => "reordered",
            Violation::Duplicated => "duplicated",
        }
    }

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Violation::Lost => "lost",
            Violation::Reordered => "reordered or bad balances",
            Violation::Duplicated => "duplicated",
        }
    }
}

impl Expected {
    /// The run must pass.
    pub fn pass(note: impl Into<String>) -> Expected {
        Expected {
            verdict: Some(Verdict::Pass),
            violation: None,
            observed: Vec::new(),
            never: None,
            effect: None,
            shown_by: Vec::new(),
            at_least: None,
            time_lag: None,
            rss_mb: None,
            queued_mib: None,
            note: note.into(),
        }
    }

    /// The run must fail with `violation` above zero.
    pub fn fail(violation: Violation, note: impl Into<String>) -> Expected {
        Expected {
            verdict: Some(Verdict::Fail),
            violation: Some(violation),
            observed: Vec::new(),
            never: None,
            effect: None,
            shown_by: Vec::new(),
            at_least: None,
            time_lag: None,
            rss_mb: None,
            queued_mib: None,
            note: note.into(),
        }
    }

    /// Either verdict, as long as nothing is reordered or duplicated: for a row whose losses
    /// come from a flaw of the backend and show up only on some runs.
    pub fn either(note: impl Into<String>) -> Expected {
        Expected {
            verdict: None,
            violation: None,
            observed: Vec::new(),
            never: None,
            effect: None,
            shown_by: Vec::new(),
            at_least: None,
            time_lag: None,
            rss_mb: None,
            queued_mib: None,
            note: note.into(),
        }
    }

    /// A count of the run's record that must be above zero too (each one so named).
    pub fn observing(mut self, count: &'static str) -> Expected {
        self.observed.push(count);
        self
    }

    /// A count of the run's record that must be zero too.
    pub fn never(mut self, count: &'static str) -> Expected {
        self.never = Some(count);
        self
    }

    /// Words a fault's recorded effect must contain too.
    pub fn showing(mut self, effect: &'static str) -> Expected {
        self.effect = Some(effect);
        self
    }

    /// A count of the run's record without which the run could not show the lesson (each
    /// one given must be above zero).
    pub fn shown_by(mut self, count: &'static str) -> Expected {
        self.shown_by.push(count);
        self
    }

    /// A bound the balance service's worst time lag must keep to too.
    pub fn time_lag(mut self, bound: TimeLag) -> Expected {
        self.time_lag = Some(bound);
        self
    }

    /// A bound the balance service's processes' peak resident set must keep to, in MB.
    pub fn rss_mb(mut self, bound: Bound) -> Expected {
        self.rss_mb = Some(bound);
        self
    }

    /// A bound the publisher's peak queued bytes must keep to, in MiB.
    pub fn queued_mib(mut self, bound: Bound) -> Expected {
        self.queued_mib = Some(bound);
        self
    }

    /// A count of the run's record the violation must reach.
    pub fn at_least(mut self, count: &'static str) -> Expected {
        self.at_least = Some(count);
        self
    }

    /// Whether the run could show the lesson: its faults put something at stake (the
    /// `shown_by` counts are above zero), or it shows the failure it must show, which is
    /// proof enough. A pass without the stake proves nothing: unknown.
    pub fn could_show(&self, record: &RunRecord) -> bool {
        let at_stake = self.shown_by.iter().all(|count| config_count(record, count) > 0)
            && (self.rss_mb.is_none() || peak_rss_mb(record).is_some())
            && (self.queued_mib.is_none() || queued_peak_mib(record).is_some());
        at_stake || (self.verdict == Some(Verdict::Fail) && self.met_by(record))
    }

    /// The expectation in words, for the table.
    pub fn describe(&self) -> String {
        let mut text = match (self.verdict, self.violation) {
            (None, _) => "pass or lost, never reordered or duplicated".to_owned(),
            (Some(Verdict::Pass), _) => "pass".to_owned(),
            (Some(Verdict::Fail), Some(violation)) => format!("fail ({})", violation.name()),
            (Some(Verdict::Fail), None) => "fail".to_owned(),
        };
        for count in &self.observed {
            let _ = write!(text, ", {count} > 0");
        }
        if let Some(count) = self.never {
            let _ = write!(text, ", {count} = 0");
        }
        if let Some(effect) = self.effect {
            let _ = write!(text, ", a fault's effect shows \"{effect}\"");
        }
        if let (Some(violation), Some(count)) = (self.violation, self.at_least) {
            let _ = write!(text, ", {} >= {count}", violation.name());
        }
        for (bound, figure, unit) in [
            (self.rss_mb, "peak RSS", "MB"),
            (self.queued_mib, "publisher's peak queued", "MiB"),
            (self.time_lag, "worst time lag", "ms"),
        ] {
            match bound {
                Some(Bound::AtMost(limit)) => {
                    let _ = write!(text, ", {figure} <= {limit:.0} {unit}");
                }
                Some(Bound::Over(limit)) => {
                    let _ = write!(text, ", {figure} > {limit:.0} {unit}");
                }
                None => {}
            }
        }
        text
    }

    /// Whether a run's record shows what is expected.
    pub fn met_by(&self, record: &RunRecord) -> bool {
        let verdict = match self.verdict {
            Some(verdict) => record.check.verdict == verdict,
            None => record.check.reordered == 0 && record.check.duplicated == 0,
        };
        let violation = self.violation.is_none_or(|violation| {
            let count = violation.count(&record.check);
            count > 0 && self.at_least.is_none_or(|stake| count >= config_count(record, stake))
        });
        let observed = self.observed.iter().all(|count| config_count(record, count) > 0)
            && self.never.is_none_or(|count| config_count(record, count) == 0);
        let time_lag = self.time_lag.is_none_or(|bound| bound.met_by(worst_time_lag_ms(record)));
        let rss = self
            .rss_mb
            .is_none_or(|bound| peak_rss_mb(record).is_some_and(|mb| bound.met_by(mb)));
        let queued = self
            .queued_mib
            .is_none_or(|bound| queued_peak_mib(record).is_some_and(|mib| bound.met_by(mib)));
        verdict && violation && observed && time_lag && rss && queued && self.effect_shown(record)
    }

    fn effect_shown(&self, record: &RunRecord) -> bool {
        self.effect.is_none_or(|needle| {
            record
                .faults
                .iter()
                .any(|fault| fault.effect.as_deref().is_some_and(|effect| effect.contains(needle)))
        })
    }
}

/// A bound on a figure of a run (a time lag in ms, a resident set in MB): at most, or over.
pub type Bound = TimeLag;

/// A bound on the balance service's worst time lag, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeLag {
    /// It keeps up: never older than this.
    AtMost(f64),
    /// It falls behind: at some point older than this.
    Over(f64),
}

impl TimeLag {
    fn met_by(self, worst_ms: f64) -> bool {
        match self {
            TimeLag::AtMost(bound) => worst_ms <= bound,
            TimeLag::Over(bound) => worst_ms > bound,
        }
    }
}

/// The balance service's worst time lag in a run's lag samples, in ms (0 without samples).
pub fn worst_time_lag_ms(record: &RunRecord) -> f64 {
    record.lag.iter().map(|sample| sample.time_lag_ms).fold(0.0, f64::max)
}

/// The peak resident set of the balance service's processes, in MB, when measured.
pub fn peak_rss_mb(record: &RunRecord) -> Option<f64> {
    record.config.get("service_peak_rss_mb").and_then(serde_json::Value::as_f64)
}

/// The most the publisher held queued, in MiB, when measured.
pub fn queued_peak_mib(record: &RunRecord) -> Option<f64> {
    record.config.get("publisher_queued_peak_mib").and_then(serde_json::Value::as_f64)
}

/// A count of the run's configuration record (0 when absent).
fn config_count(record: &RunRecord, count: &str) -> u64 {
    record.config.get(count).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

/// Whether every planned fault fired: each step and undo of the plan recorded, none refused.
/// A run whose faults did not fire could not show its lesson: its row is unknown, never
/// as expected.
pub fn faults_fired(planned: usize, record: &RunRecord) -> bool {
    record.faults.len() == planned && record.faults.iter().all(|fault| fault.error.is_none())
}

/// What a variant's run showed, against what the variant must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowVerdict {
    /// Its faults fired, put at stake what the lesson is about, and it came out as it must.
    AsExpected,
    /// Its faults fired and it did not come out as it must.
    NotAsExpected,
    /// A planned fault did not fire, or caught nothing the lesson is about: the run could not
    /// show the lesson either way.
    Unknown,
}

impl RowVerdict {
    /// Judges `record`, a run of a variant with `planned` faults that must show `expected`.
    pub fn of(expected: &Expected, planned: usize, record: &RunRecord) -> RowVerdict {
        if !faults_fired(planned, record) || !expected.could_show(record) {
            RowVerdict::Unknown
        } else if expected.met_by(record) {
            RowVerdict::AsExpected
        } else {
            RowVerdict::NotAsExpected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A passing run whose configuration record holds `config`.
    fn passing_run(config: serde_json::Value) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "seed": 1, "architecture": "stream", "label": "test", "store": "sqlite", "broker": "mock",
            "config": config, "events": 10, "applied": 10, "duration_s": 1.0, "throughput_per_s": 10.0,
            "latency_ms": { "p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 3.0, "max": 3.0 },
            "db_statements": 0, "process": { "cpu_s": 0.0, "rss_max_mb": 0.0 },
            "check": { "lost": 0, "duplicated": 0, "reordered": 0, "bad_balances": 0, "mismatched_accounts": 0, "verdict": "pass" }
        }))
        .expect("a record")
    }

    #[test]
    fn a_pass_is_as_expected_only_when_every_count_it_is_shown_by_is_above_zero() {
        let expected = Expected::pass("the group formed and fell behind")
            .shown_by("notifications_formed")
            .shown_by("notifications_peak_lag");
        let verdict = |formed: u64, peak_lag: u64| {
            RowVerdict::of(
                &expected,
                0,
                &passing_run(serde_json::json!({ "notifications_formed": formed, "notifications_peak_lag": peak_lag })),
            )
        };
        assert_eq!(verdict(1, 40), RowVerdict::AsExpected);
        assert_eq!(verdict(0, 40), RowVerdict::Unknown, "a group that never formed shows nothing");
        assert_eq!(verdict(1, 0), RowVerdict::Unknown, "a group that never fell behind shows nothing");
        assert_eq!(
            RowVerdict::of(&expected, 0, &passing_run(serde_json::json!({}))),
            RowVerdict::Unknown,
            "a record without the counts shows nothing"
        );
    }
}
