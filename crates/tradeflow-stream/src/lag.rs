//! Offset lag: per partition, the log end offset minus the group's committed offset. The
//! metric that matters: it grows when the balance service falls behind, whatever the
//! reason. Time lag is the age of the oldest event not yet applied. A partition's lag
//! status (OK, WARN, STALL, STOP) reads how its offsets moved over the last few samples.

use crate::{StreamError, base_config};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
use tradeflow_check::{LagSample, PartitionLag};
pub use tradeflow_exercises::{LagStatus, OffsetSample};

/// How long one lag probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads log end and committed offsets of one group on one topic.
pub struct LagProbe {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl LagProbe {
    /// The partitions it reads.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// A probe for `group` on `topic` (it reads offsets; it never joins the group).
    pub fn new(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> Result<LagProbe, StreamError> {
        let consumer: BaseConsumer = base_config(bootstrap)
            // The group whose committed offsets are read; this client never subscribes.
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|error| StreamError::kafka("creating the lag probe", error))?;
        Ok(LagProbe {
            consumer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Reads every partition's offsets (blocking: call from a blocking thread).
    pub fn probe(&self) -> Result<Vec<PartitionLag>, StreamError> {
        let mut wanted = TopicPartitionList::new();
        for partition in 0..self.partitions {
            wanted.add_partition(&self.topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(wanted, PROBE_TIMEOUT)
            .map_err(|error| StreamError::kafka(format!("reading committed offsets of {}", self.topic), error))?;
        (0..self.partitions)
            .map(|partition| {
                let (_, log_end) = self
                    .consumer
                    .fetch_watermarks(&self.topic, partition, PROBE_TIMEOUT)
                    .map_err(|error| StreamError::kafka(format!("reading the log end of {}[{partition}]", self.topic), error))?;
                let committed = match committed.find_partition(&self.topic, partition).map(|element| element.offset()) {
                    Some(Offset::Offset(offset)) => offset,
                    _ => 0,
                };
                Ok(PartitionLag {
                    partition,
                    log_end,
                    committed,
                    offset_lag: (log_end - committed).max(0),
                })
            })
            .collect()
    }
}

/// Builds a sample: `intended_at(partition, offset)` is the intended send time of the event
/// at that offset (when known), so that the oldest unapplied event of each partition can
/// be aged.
pub fn sample(t_s: f64, partitions: Vec<PartitionLag>, intended_at: impl Fn(i32, i64) -> Option<i64>, now_ns: i64) -> LagSample {
    let oldest_ns = partitions
        .iter()
        .filter(|lag| lag.offset_lag > 0)
        .filter_map(|lag| intended_at(lag.partition, lag.committed))
        .min();
    LagSample {
        t_s,
        offset_lag_total: partitions.iter().map(|lag| lag.offset_lag).sum(),
        time_lag_ms: oldest_ns.map_or(0.0, |oldest| (now_ns - oldest).max(0) as f64 / 1e6),
        partitions,
    }
}

/// Samples in a lag status's window: two seconds at the run's sampling interval.
pub const STATUS_WINDOW: usize = 4;

/// Who judges a partition's lag status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagRule {
    /// The monitor's own rules ([`monitor_status`]).
    #[default]
    Monitor,
    /// The learner's chapter 01 exercise.
    Exercise,
}

impl LagRule {
    /// The status of one partition over `window` (oldest first).
    pub fn status(self, window: &[OffsetSample]) -> LagStatus {
        match self {
            LagRule::Monitor => monitor_status(window),
            LagRule::Exercise => tradeflow_exercises::lag_status::lag_status(window),
        }
    }
}

/// Burrow-style rules over what a probe of offsets can see: OK while some sample has no
/// lag or the committed offset moves without the lag growing at every step; WARN when it
/// moves but the lag grows at every step; STALL when it does not move while messages
/// arrive; STOP when it does not move and nothing arrives either.
pub fn monitor_status(window: &[OffsetSample]) -> LagStatus {
    let (Some(first), Some(last)) = (window.first(), window.last()) else {
        return LagStatus::Ok;
    };
    if window.iter().any(|sample| sample.lag() == 0) {
        return LagStatus::Ok;
    }
    if last.committed == first.committed {
        return if last.log_end > first.log_end {
            LagStatus::Stall
        } else {
            LagStatus::Stop
        };
    }
    if window.windows(2).all(|pair| pair[1].lag() > pair[0].lag()) {
        LagStatus::Warn
    } else {
        LagStatus::Ok
    }
}

/// One partition's samples, oldest first, as the status rules read them.
pub fn partition_samples(samples: &[LagSample], partition: i32) -> Vec<OffsetSample> {
    samples
        .iter()
        .filter_map(|sample| {
            sample
                .partitions
                .iter()
                .find(|lag| lag.partition == partition)
                .map(|lag| OffsetSample {
                    at_s: sample.t_s,
                    committed: lag.committed,
                    log_end: lag.log_end,
                })
        })
        .collect()
}

/// The sample in Prometheus text format.
pub fn prometheus(sample: &LagSample, topic: &str, group: &str) -> String {
    let mut text = String::from("# HELP tradeflow_offset_lag Log end offset minus committed offset.\n# TYPE tradeflow_offset_lag gauge\n");
    for lag in &sample.partitions {
        text.push_str(&format!(
            "tradeflow_offset_lag{{topic=\"{topic}\",group=\"{group}\",partition=\"{}\"}} {}\n",
            lag.partition, lag.offset_lag
        ));
    }
    text.push_str("# HELP tradeflow_time_lag_seconds Age of the oldest event not yet applied.\n# TYPE tradeflow_time_lag_seconds gauge\n");
    text.push_str(&format!(
        "tradeflow_time_lag_seconds{{topic=\"{topic}\",group=\"{group}\"}} {}\n",
        sample.time_lag_ms / 1e3
    ));
    text
}

/// Each partition's lag status over the last [`STATUS_WINDOW`] samples, in Prometheus text
/// format (one series per status, 1 for the current one); nothing until a window is full.
pub fn prometheus_status(samples: &[LagSample], rule: LagRule, topic: &str, group: &str) -> String {
    let Some(last) = samples.last() else { return String::new() };
    let mut text = String::from(
        "# HELP tradeflow_lag_status A partition's lag status over the last samples (OK, WARN, STALL, STOP).\n# TYPE tradeflow_lag_status gauge\n",
    );
    for partition in last.partitions.iter().map(|lag| lag.partition) {
        let series = partition_samples(samples, partition);
        if series.len() < STATUS_WINDOW {
            continue;
        }
        let status = rule.status(&series[series.len() - STATUS_WINDOW..]);
        for candidate in [LagStatus::Ok, LagStatus::Warn, LagStatus::Stall, LagStatus::Stop] {
            text.push_str(&format!(
                "tradeflow_lag_status{{topic=\"{topic}\",group=\"{group}\",partition=\"{partition}\",status=\"{}\"}} {}\n",
                candidate.as_str(),
                u8::from(candidate == status)
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn time_lag_ages_the_oldest_unapplied_event() {
        let partitions = vec![
            PartitionLag {
                partition: 0,
                log_end: 10,
                committed: 4,
                offset_lag: 6,
            },
            PartitionLag {
                partition: 1,
                log_end: 5,
                committed: 5,
                offset_lag: 0,
            },
        ];
        let intended_at = HashMap::from([((0, 4), 1_000_000_000), ((1, 5), 0)]);
        let sample = sample(
            1.0,
            partitions,
            |partition, offset| intended_at.get(&(partition, offset)).copied(),
            1_500_000_000,
        );
        assert_eq!(sample.offset_lag_total, 6);
        assert!((sample.time_lag_ms - 500.0).abs() < 1e-9, "{sample:?}");
        let text = prometheus(&sample, "trades", "balances");
        assert!(
            text.contains("tradeflow_offset_lag{topic=\"trades\",group=\"balances\",partition=\"0\"} 6"),
            "{text}"
        );
    }
}
