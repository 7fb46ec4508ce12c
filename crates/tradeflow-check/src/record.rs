//! The JSON run record, latency histograms and process figures.
//!
//! Every run writes the same record; later versions add fields and never remove or rename
//! one.

use crate::history::CheckReport;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Highest latency the histogram holds: one hour, in microseconds. Longer values are
/// clamped to it (and the run has bigger problems).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// One run, as written to `--json` and to `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The workload seed.
    pub seed: u64,
    /// `poller` or `stream`.
    pub architecture: String,
    /// A short description of the configuration.
    pub label: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The broker backend, for stream runs.
    pub broker: Option<String>,
    /// Every knob of the run.
    pub config: serde_json::Value,
    /// Events generated.
    pub events: u64,
    /// Events applied.
    pub applied: u64,
    /// From the first intended send time to the last commit.
    pub duration_s: f64,
    /// `applied / duration_s`.
    pub throughput_per_s: f64,
    /// From each event's intended send time to the commit of its balance update.
    pub latency_ms: LatencySummary,
    /// Statements sent to the database.
    pub db_statements: u64,
    /// CPU and memory of this process.
    pub process: ProcessStats,
    /// The checker's verdicts.
    pub check: CheckReport,
    /// Stream runs: offset lag and time lag over time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lag: Vec<LagSample>,
    /// Poller runs: unprocessed rows and the age of the oldest over time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backlog: Vec<BacklogSample>,
    /// Faults applied during the run, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultRecord>,
}

/// A fault as it was applied during a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// When, in ms from the start of publishing.
    pub at_ms: u64,
    /// What was done, to which target.
    pub fault: String,
    /// `None` when it was applied; otherwise why it was not.
    pub error: Option<String>,
    /// What it did, where the backend can tell (which node a role named, how the process
    /// ended, how long a failover took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// Lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    /// Partition.
    pub partition: i32,
    /// Log end offset (high watermark).
    pub log_end: i64,
    /// The group's committed offset (0 when none).
    pub committed: i64,
    /// `log_end - committed`.
    pub offset_lag: i64,
}

/// A stream's lag at one moment of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LagSample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Sum of the partitions' offset lag.
    pub offset_lag_total: i64,
    /// Age of the oldest event not yet applied, in ms (0 when none waits).
    pub time_lag_ms: f64,
    /// Per partition.
    pub partitions: Vec<PartitionLag>,
}

/// The poller's backlog at one moment of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogSample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Rows inserted and not yet processed.
    pub rows: i64,
    /// Age of the oldest unprocessed row, in ms (0 when none waits).
    pub oldest_age_ms: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// A latency histogram (HDR, 3 significant digits, microseconds).
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    /// An empty histogram.
    pub fn new() -> LatencyRecorder {
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|_| unreachable!("the bounds are valid constants"));
        LatencyRecorder { histogram }
    }

    /// Records one latency in nanoseconds (negative values, from clock steps, count as 0).
    pub fn record_ns(&mut self, latency_ns: i64) {
        let micros = u64::try_from(latency_ns / 1_000).unwrap_or(0).clamp(1, LATENCY_US_MAX);
        self.histogram.saturating_record(micros);
    }

    /// Adds another recorder's values.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles.
    pub fn summary(&self) -> LatencySummary {
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1_000.0;
        LatencySummary {
            p50: ms(self.histogram.value_at_quantile(0.50)),
            p90: ms(self.histogram.value_at_quantile(0.90)),
            p99: ms(self.histogram.value_at_quantile(0.99)),
            p999: ms(self.histogram.value_at_quantile(0.999)),
            max: ms(self.histogram.max()),
        }
    }
}

/// Where a run stands, published while it runs so that a front end can draw progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunProgress {
    /// Events the workload holds.
    pub total: u64,
    /// Events the source has emitted (inserted, or published and acknowledged).
    pub emitted: u64,
    /// Events applied to balances.
    pub applied: u64,
    /// Emitted but not yet processed: the poller's backlog or the stream's lag.
    pub backlog: u64,
}

/// Decides when a run is over: once the source is done, when everything it emitted has
/// been processed (drained), or when nothing has been processed for the stall timeout
/// (stalled: what is unapplied then is reported as lost).
#[derive(Debug)]
pub struct DrainWatch {
    stall_timeout: std::time::Duration,
    last_processed: u64,
    last_change: std::time::Instant,
}

/// What [`DrainWatch::observe`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Keep going.
    Running,
    /// Everything emitted was processed.
    Drained,
    /// Nothing moved for the stall timeout.
    Stalled,
}

impl DrainWatch {
    /// A watch that gives up after `stall_timeout` without progress.
    pub fn new(stall_timeout: std::time::Duration) -> DrainWatch {
        DrainWatch {
            stall_timeout,
            last_processed: 0,
            last_change: std::time::Instant::now(),
        }
    }

    /// How long the processed count has not moved.
    pub fn quiet_for(&self) -> std::time::Duration {
        self.last_change.elapsed()
    }

    /// Takes one observation.
    pub fn observe(&mut self, source_done: bool, emitted: u64, processed: u64) -> Drain {
        if processed != self.last_processed {
            self.last_processed = processed;
            self.last_change = std::time::Instant::now();
        }
        match source_done {
            true if processed >= emitted => Drain::Drained,
            true if self.last_change.elapsed() > self.stall_timeout => Drain::Stalled,
            _ => Drain::Running,
        }
    }
}

/// CPU time and peak memory of the current process.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessStats {
    /// User plus system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size in MB.
    pub rss_max_mb: f64,
}

impl ProcessStats {
    /// Reads them from the kernel (`getrusage`); zeros where it is not available.
    pub fn current() -> ProcessStats {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a complete `rusage` into the pointer it is given, which
        // points to memory of that type owned by this frame; RUSAGE_SELF is always valid.
        #[allow(unsafe_code)]
        let usage = unsafe {
            if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
                return ProcessStats::default();
            }
            usage.assume_init()
        };
        let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
        ProcessStats {
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            // Linux reports ru_maxrss in KiB.
            rss_max_mb: usage.ru_maxrss as f64 / 1024.0,
        }
    }

    /// CPU used since an earlier reading (peak memory is the process's, not a difference).
    pub fn since(&self, earlier: &ProcessStats) -> ProcessStats {
        ProcessStats {
            cpu_s: (self.cpu_s - earlier.cpu_s).max(0.0),
            rss_max_mb: self.rss_max_mb,
        }
    }
}

/// From the first intended send time (`start_ns`) to the last commit, and `applied`
/// divided by it: a run's `duration_s` and `throughput_per_s`.
pub fn duration_and_throughput(start_ns: i64, last_commit_ns: i64, applied: u64) -> (f64, f64) {
    let duration_s = (last_commit_ns.max(start_ns) - start_ns) as f64 / 1e9;
    (duration_s, if duration_s > 0.0 { applied as f64 / duration_s } else { 0.0 })
}

/// A partition's committed offset read lower than an earlier lag sample had read it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackwardCommit {
    /// Partition.
    pub partition: i32,
    /// When the lower offset was read, seconds since the start of the run.
    pub t_s: f64,
    /// The highest offset read before.
    pub from: i64,
    /// The lower offset read then.
    pub to: i64,
}

/// Committed offsets that moved backwards over a run, as the lag probe read them from the
/// broker (outside the consumers). A sample that read no committed offset (0) is not a
/// move: a probe against a coordinator that is down reads none.
pub fn backward_commits(lag: &[LagSample]) -> Vec<BackwardCommit> {
    let mut highest: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    let mut backward = Vec::new();
    for sample in lag {
        for partition in sample.partitions.iter().filter(|partition| partition.committed > 0) {
            let seen = highest.entry(partition.partition).or_insert(partition.committed);
            if partition.committed < *seen {
                backward.push(BackwardCommit {
                    partition: partition.partition,
                    t_s: sample.t_s,
                    from: *seen,
                    to: partition.committed,
                });
            }
            *seen = (*seen).max(partition.committed);
        }
    }
    backward
}

impl RunRecord {
    /// A stream run's acknowledgement latency (`config.acked_latency_ms`): from each event's
    /// intended time to the broker's acknowledgement; `None` for a run without it.
    pub fn acked_latency(&self) -> Option<LatencySummary> {
        serde_json::from_value(self.config.get("acked_latency_ms")?.clone()).ok()
    }

    /// The largest offset lag (stream) or backlog (poller) seen, with its time lag.
    pub fn worst_lag(&self) -> String {
        if let Some(worst) = self.lag.iter().max_by_key(|sample| sample.offset_lag_total) {
            let time_lag_ms = self.lag.iter().map(|sample| sample.time_lag_ms).fold(0.0, f64::max);
            format!("{} messages, {time_lag_ms:.0} ms", worst.offset_lag_total)
        } else if let Some(worst) = self.backlog.iter().max_by_key(|sample| sample.rows) {
            let age_ms = self.backlog.iter().map(|sample| sample.oldest_age_ms).fold(0.0, f64::max);
            format!("{} rows, {age_ms:.0} ms", worst.rows)
        } else {
            "-".into()
        }
    }

    /// The lost count, and for a stream run that ended with events unapplied how it ended:
    /// a group that stood still for the stall timeout, or one that had committed the end of
    /// its log (`config.ended`, from the run loop).
    fn lost_and_how_the_run_ended(&self) -> String {
        let ended = match self.config.get("ended").and_then(serde_json::Value::as_str) {
            Some("stalled") => " (the run ended stalled: nothing was applied for its stall timeout)",
            Some("log_end") => " (the run ended with the group at the end of every partition's log)",
            _ => "",
        };
        // Of those, the ones the broker acknowledged past the end of the log it served.
        let past_log_end = match self.config.get("acked_past_log_end").and_then(serde_json::Value::as_u64) {
            Some(past) if past > 0 => {
                format!("; {past} of them acknowledged by the broker past the end of the log it served when the run ended")
            }
            _ => String::new(),
        };
        if self.check.lost == 0 {
            "0".into()
        } else {
            format!("{}{ended}{past_log_end}", self.check.lost)
        }
    }

    /// The human table printed at the end of a run.
    pub fn table(&self) -> String {
        let check = &self.check;
        let mut rows: Vec<(&str, String)> = vec![
            ("run", self.label.clone()),
            ("seed", self.seed.to_string()),
            ("store", self.store.clone()),
            ("broker", self.broker.clone().unwrap_or_else(|| "-".into())),
            ("events applied", format!("{} of {}", self.applied, self.events)),
            ("duration", format!("{:.2} s", self.duration_s)),
            ("throughput", format!("{:.0} events/s", self.throughput_per_s)),
            (
                "latency p50 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.max
                ),
            ),
            (
                "database statements",
                format!(
                    "{} ({:.2} per event)",
                    self.db_statements,
                    self.db_statements as f64 / self.events.max(1) as f64
                ),
            ),
            ("worst lag / backlog", self.worst_lag()),
            (
                "cpu / peak rss",
                format!("{:.2} s / {:.1} MB", self.process.cpu_s, self.process.rss_max_mb),
            ),
            ("lost", self.lost_and_how_the_run_ended()),
            ("duplicated", check.duplicated.to_string()),
            ("reordered", check.reordered.to_string()),
            ("bad balances", check.bad_balances.to_string()),
            ("mismatched accounts", check.mismatched_accounts.to_string()),
            ("misnumbered accounts", check.misnumbered_accounts.to_string()),
            ("verdict", format!("{:?}", check.verdict).to_uppercase()),
        ];
        // A run that read its topic back: what the log held, counted into duplicated and
        // reordered above.
        let log = |key: &str| self.config.get(key).and_then(serde_json::Value::as_u64);
        if let (Some(records), Some(copies), Some(out_of_order)) = (log("log_records"), log("log_copies"), log("log_out_of_order")) {
            rows.insert(
                5,
                (
                    "the log, read back",
                    format!("{records} records: {copies} copies of an earlier one, {out_of_order} out of their account's order"),
                ),
            );
        }
        // A stream run: how much of each event's latency passed before the broker
        // acknowledged it (about when a consumer could first read it).
        if let Some(acked) = self.acked_latency() {
            let after_latency = rows
                .iter()
                .position(|(name, _)| name.starts_with("latency"))
                .map_or(rows.len(), |at| at + 1);
            rows.insert(
                after_latency,
                (
                    "acknowledged p50 / p99 / max",
                    format!("{:.1} / {:.1} / {:.1} ms", acked.p50, acked.p99, acked.max),
                ),
            );
        }
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut text = String::new();
        for (name, value) in rows {
            let _ = writeln!(text, "  {name:<width$}  {value}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream run of 10 events with `lost` of them lost, this configuration record and
    /// these latency percentiles (p50, p99, max).
    fn stream_record(lost: u64, config: serde_json::Value, (p50, p99, max): (f64, f64, f64)) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "seed": 1, "architecture": "stream", "label": "stream", "store": "sqlite", "broker": "mock",
            "config": config, "events": 10, "applied": 10 - lost, "duration_s": 1.0,
            "throughput_per_s": 10.0,
            "latency_ms": { "p50": p50, "p90": 0.0, "p99": p99, "p999": 0.0, "max": max },
            "db_statements": 0, "process": { "cpu_s": 0.0, "rss_max_mb": 0.0 },
            "check": { "lost": lost, "duplicated": 0, "reordered": 0, "bad_balances": 0,
                       "mismatched_accounts": 0, "verdict": if lost > 0 { "fail" } else { "pass" } }
        }))
        .expect("a record")
    }

    #[test]
    fn the_table_says_how_a_run_with_events_lost_ended() {
        let record = |lost: u64, ended: &str| stream_record(lost, serde_json::json!({ "ended": ended }), (0.0, 0.0, 0.0));
        let lost_row = |record: RunRecord| {
            record
                .table()
                .lines()
                .find(|line| line.trim_start().starts_with("lost "))
                .map(|line| line.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .expect("a lost row")
        };
        assert!(lost_row(record(2, "stalled")).starts_with("2 (the run ended stalled"));
        assert!(lost_row(record(2, "log_end")).starts_with("2 (the run ended with the group at the end"));
        assert_eq!(lost_row(record(2, "drained")), "2");
        assert_eq!(lost_row(record(0, "stalled")), "0");
        // Events the broker acknowledged past the end of the log it served are named.
        let mut past = record(2, "stalled");
        past.config["acked_past_log_end"] = 2.into();
        assert!(lost_row(past).ends_with("; 2 of them acknowledged by the broker past the end of the log it served when the run ended"));
    }

    #[test]
    fn the_table_gives_the_acknowledgement_latency_right_under_the_apply_latency_when_the_record_has_it() {
        let mut record = stream_record(0, serde_json::json!({}), (9.0, 30.0, 40.0));
        assert!(
            !record.table().contains("acknowledged"),
            "a record without it (a poller run) has no such row"
        );
        record.config["acked_latency_ms"] = serde_json::json!({ "p50": 2.5, "p90": 0.0, "p99": 12.0, "p999": 0.0, "max": 20.0 });
        let table = record.table();
        let lines: Vec<&str> = table.lines().map(str::trim_start).collect();
        let latency = lines
            .iter()
            .position(|line| line.starts_with("latency p50"))
            .expect("a latency row");
        assert!(lines[latency].ends_with("9.0 / 30.0 / 40.0 ms"), "{table}");
        assert!(lines[latency + 1].starts_with("acknowledged p50 / p99 / max"), "{table}");
        assert!(lines[latency + 1].ends_with("2.5 / 12.0 / 20.0 ms"), "{table}");
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut recorder = LatencyRecorder::new();
        for millis in 1..=1_000_i64 {
            recorder.record_ns(millis * 1_000_000);
        }
        let summary = recorder.summary();
        assert!((summary.p50 - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99 - 990.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max - 1_000.0).abs() < 1.0, "{summary:?}");
    }

    #[test]
    fn throughput_is_applied_events_over_the_time_to_the_last_commit() {
        assert_eq!(duration_and_throughput(1_000_000_000, 3_000_000_000, 500), (2.0, 250.0));
        assert_eq!(
            duration_and_throughput(5, 1, 10),
            (0.0, 0.0),
            "no commit yet: no throughput, not infinity"
        );
    }

    #[test]
    fn a_run_drains_or_stalls_only_once_its_source_is_done() {
        let mut watch = DrainWatch::new(std::time::Duration::from_millis(30));
        assert_eq!(watch.observe(false, 10, 10), Drain::Running, "the source may still emit");
        assert_eq!(watch.observe(true, 10, 8), Drain::Running);
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(watch.observe(true, 10, 9), Drain::Running, "progress restarts the stall clock");
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(watch.observe(true, 10, 9), Drain::Stalled);
        assert_eq!(watch.observe(true, 10, 10), Drain::Drained);
    }

    fn lag_at(t_s: f64, committed: &[i64]) -> LagSample {
        LagSample {
            t_s,
            offset_lag_total: 0,
            time_lag_ms: 0.0,
            partitions: committed
                .iter()
                .enumerate()
                .map(|(partition, committed)| PartitionLag {
                    partition: partition as i32,
                    log_end: 100,
                    committed: *committed,
                    offset_lag: 100 - committed,
                })
                .collect(),
        }
    }

    #[test]
    fn a_committed_offset_read_lower_than_before_is_a_backward_commit() {
        let lag = [
            lag_at(0.1, &[5, 7]),
            lag_at(0.2, &[9, 7]),
            lag_at(0.3, &[6, 8]),
            lag_at(0.4, &[9, 8]),
        ];
        assert_eq!(
            backward_commits(&lag),
            vec![BackwardCommit {
                partition: 0,
                t_s: 0.3,
                from: 9,
                to: 6
            }],
            "partition 0 went from 9 back to 6; back at 9 later is no new move"
        );
        let none_read = [lag_at(0.1, &[5]), lag_at(0.2, &[0]), lag_at(0.3, &[5])];
        assert!(
            backward_commits(&none_read).is_empty(),
            "a probe that read no committed offset is no move"
        );
    }

    #[test]
    fn process_stats_are_read_from_the_kernel() {
        let stats = ProcessStats::current();
        assert!(stats.rss_max_mb > 1.0, "{stats:?}");
    }
}
