//! The `config` object of a stream run's record: the options it ran with and what its
//! publisher and consumers counted. Later versions add keys and never remove or rename one.

use crate::cutover::SwitchOutcome;
use crate::notifications::NotificationsReport;
use crate::publisher::Deliveries;
use crate::run::{FleetCounters, StreamOptions};
use crate::service::{Phase, SeenKind};
use crate::timeline::TopicLayout;
use std::sync::atomic::Ordering;

/// The record's `config` for a run.
pub(crate) fn config(
    options: &StreamOptions,
    layout: &TopicLayout,
    deliveries: &Deliveries,
    counters: &FleetCounters,
    switched: Option<&SwitchOutcome>,
    rebalances_before: u64,
    notifications: Option<&NotificationsReport>,
) -> serde_json::Value {
    let crashed = counters.crashed();
    let mut config = serde_json::json!({
        "topic": options.topic,
        "partitions": options.partitions,
        "consumers": options.consumers,
        "linger_ms": options.publisher.linger_ms,
        "batch_max": options.publisher.batch_max,
        "batch_size": options.batch_size,
        "fill_wait_ms": options.fill_wait.as_millis() as u64,
        "acks": options.publisher.acks.as_str(),
        "replication_factor": layout.replication_factor,
        "topic_configs": serde_json::Value::Object(layout.configs.iter().map(|(key, value)| (key.clone(), value.clone().into())).collect()),
        "delivery_errors": deliveries.failure_reasons(),
        "enable_idempotence": options.publisher.idempotence,
        "max_in_flight": options.publisher.in_flight_max,
        "commit_policy": options.scenario.commit.as_str(),
        "dead_letter": options.scenario.dead_letter,
        "accounts": options.workload.accounts,
        "rate_per_s": options.workload.rate_per_s,
        "profile": options.workload.profile.as_str(),
        "acknowledged": deliveries.acked(),
        "delivery_failed": deliveries.failed(),
        "message_bytes_mean": deliveries.message_bytes_mean(),
        "dead_lettered": counters.sum(|counters| counters.dead_lettered.load(Ordering::Relaxed)),
        "redelivered": counters.sum(|counters| counters.duplicates.load(Ordering::Relaxed)),
        "crashes": counters.sum(|counters| counters.crashes.load(Ordering::Relaxed)),
        "poison_retries": counters.sum(|counters| counters.poison_retries.load(Ordering::Relaxed)),
        "skipped_by_broker": counters.sum(|counters| counters.skipped.load(Ordering::Relaxed)),
        "rebalances": counters.sum(|counters| counters.rebalances.load(Ordering::Relaxed)),
        "assignments": counters.assignments,
        // Rebalances once every consumer had its first partitions and before they left at
        // the end: what faults caused.
        "rebalances_in_run": counters.rebalances_at_end.saturating_sub(rebalances_before),
        "cutover": options.scenario.cutover.as_ref().map(|cutover| serde_json::json!({
            "topic": cutover.topic,
            "partitions": cutover.partitions,
            "at_event": cutover.at_event,
            "runbook": cutover.runbook,
            "switched_at_ms": switched.map(|switched| switched.read().0),
            "drain_wait_ms": switched.map(|switched| switched.read().1),
            "second_cluster": cutover.second_cluster,
            // Events published to the old topic and not applied when the publisher moved.
            "old_unapplied_at_switch": switched.map(SwitchOutcome::old_unapplied),
            // When the new group started, for a runbook that makes it wait for the old
            // group's lag to reach zero, and how long after the switch.
            "new_group_started_at_ms": counters.moved_at_ms,
            "new_group_waited_ms": counters.moved_at_ms.zip(switched).map(|(moved, switched)| moved.saturating_sub(switched.read().0)),
        })),
        // What a cutover put at stake, where an experiment's expectations read it.
        "cutover_old_unapplied": switched.map_or(0, SwitchOutcome::old_unapplied),
        "plan": options.scenario.plan,
        "service_processes": options.scenario.processes.is_some(),
        "apply_delay_ms": options.scenario.apply_delay.as_millis() as u64,
        "fencing": options.scenario.fencing,
        "fenced": counters.sum(|counters| counters.fenced.load(Ordering::Relaxed)),
        "dedup": match options.scenario.dedup {
            tradeflow_store::Dedup::ApplyLog => "apply_log",
            tradeflow_store::Dedup::None => "none",
            tradeflow_store::Dedup::Exercise => "exercise",
        },
        // What the crashes caught: messages received and not applied, and of those the
        // ones whose offsets the broker had confirmed committed (known for processes only).
        "crashed_holding": crashed.iter().filter(|seen| seen.kind == SeenKind::Crash).map(|crash| crash.messages as u64).sum::<u64>(),
        "crashed_holding_committed": crashed.iter().filter_map(|crash| crash.committed).sum::<u64>(),
        "frozen_holding": crashed.iter().filter(|seen| seen.kind == SeenKind::Freeze).map(|frozen| frozen.messages as u64).sum::<u64>(),
        // Of those, the messages of freezes during which the group moved partitions to the
        // other members: a zombie's batch that another member may apply too.
        "frozen_holding_moved": crashed
            .iter()
            .filter(|seen| seen.kind == SeenKind::Freeze && seen.partitions_moved.is_some_and(|moved| moved > 0))
            .map(|frozen| frozen.messages as u64)
            .sum::<u64>(),
    });
    if let Some(object) = config.as_object_mut() {
        // Beside `fill_wait_ms` (outside the literal above, which is at the macro's
        // recursion limit).
        object.insert("fetch_wait_max_ms".into(), options.fetch_wait_max_ms.into());
        object.insert("commit_interval_ms".into(), (options.commit_interval.as_millis() as u64).into());
        object.insert("pipeline".into(), options.pipeline.into());
        object.insert("group_commit".into(), options.group_commit.into());
        object.insert("skew".into(), options.workload.skew.into());
        // Where the consumers of this process spent their time, summed over them; null
        // when they ran in processes of their own, whose counters this one does not see.
        let phases: Vec<(Phase, u64)> = Phase::ALL
            .iter()
            .map(|phase| {
                (
                    *phase,
                    counters.sum(|counters| counters.phase_us[*phase as usize].load(Ordering::Relaxed)),
                )
            })
            .collect();
        // Only consumers in this process add to its counters.
        let in_process = phases.iter().any(|(_, us)| *us > 0);
        object.insert(
            "consumer_time_s".into(),
            if !in_process {
                serde_json::Value::Null
            } else {
                phases
                    .iter()
                    .map(|(phase, us)| (phase.as_str().to_owned(), serde_json::Value::from(*us as f64 / 1e6)))
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            },
        );
        // Messages read ahead while a batch was applied (pipelining); null when the
        // consumers ran in processes of their own, whose counters this one does not see.
        object.insert(
            "prefetched".into(),
            if in_process {
                counters.sum(|counters| counters.prefetched.load(Ordering::Relaxed)).into()
            } else {
                serde_json::Value::Null
            },
        );
        // Batch transactions that committed (calls less those that failed): the events
        // applied per transaction, against the raw store apply's full batches.
        object.insert(
            "batches_applied".into(),
            counters
                .sum(|counters| {
                    counters
                        .database_attempts
                        .load(Ordering::Relaxed)
                        .saturating_sub(counters.database_failures.load(Ordering::Relaxed))
                })
                .into(),
        );
        // The after-database offset commit requests the consumers sent (in-process
        // consumers): against `batches_applied`, how many batches each gathered.
        object.insert(
            "offset_commits".into(),
            counters.sum(|counters| counters.offset_commits.load(Ordering::Relaxed)).into(),
        );
        // Messages chapter 17's tolerant reader passed over.
        object.insert(
            "passed_over".into(),
            counters.sum(|counters| counters.passed_over.load(Ordering::Relaxed)).into(),
        );
        // Messages a batch still filling dropped when a rebalance took the assignment they
        // were read under (in-process consumers; a process's are in its log).
        object.insert(
            "dropped_at_rebalance".into(),
            counters
                .sum(|counters| counters.dropped_at_rebalance.load(Ordering::Relaxed))
                .into(),
        );
        // The consumers' fetching ahead and, for members that are processes, their peak
        // resident set; with a backlog first, how fast they drained it.
        object.insert("prefetch".into(), options.scenario.prefetch.as_str().into());
        // The publisher's buffer, and the most it held queued, where that was measured.
        object.insert("publisher_buffer_kbytes".into(), options.publisher.buffer_kbytes.into());
        let queued = deliveries.queued_peak_bytes();
        object.insert(
            "publisher_queued_peak_mib".into(),
            (options.publisher.queue_stats && queued > 0)
                .then(|| queued as f64 / (1_024.0 * 1_024.0))
                .into(),
        );
        let peak_kb = counters.peak_rss_kb();
        object.insert("service_peak_rss_mb".into(), (peak_kb > 0).then(|| peak_kb as f64 / 1_024.0).into());
        if let Some(started) = counters.backlog_started_at_ms {
            object.insert("backlog_started_at_ms".into(), started.into());
        }
        // Dead letters per error kind: how many, and the first one's reason.
        let kinds = counters.dead_letter_kinds();
        object.insert(
            "dead_letters_by_kind".into(),
            serde_json::Value::Object(
                kinds
                    .into_iter()
                    .map(|(kind, (count, reason))| (kind, serde_json::json!({ "count": count, "reason": reason })))
                    .collect(),
            ),
        );
        object.insert(
            "schema".into(),
            serde_json::to_value(options.scenario.schema.map(|change| {
                serde_json::json!({
                    "from_event": change.from_event,
                    "producer_writes": change.write,
                    "fees_every": change.fees_every,
                    "consumers_read_at_start": change.consumers_read,
                })
            }))
            .unwrap_or_default(),
        );
        // Dead letters that could not be sent: their partitions waited and read them again.
        object.insert(
            "dead_letter_failures".into(),
            counters
                .sum(|counters| counters.dead_letter_failures.load(Ordering::Relaxed))
                .into(),
        );
    }
    if let Some(object) = config.as_object_mut() {
        // From each event's intended time to the broker's acknowledgement: about how much of
        // the run's latency passed before a consumer could read the event.
        object.insert(
            "acked_latency_ms".into(),
            serde_json::to_value(deliveries.acked_latency()).unwrap_or_default(),
        );
    }
    if let (Some(report), Some(object)) = (notifications, config.as_object_mut()) {
        // The second group's counts, where an experiment's expectations read them.
        object.insert("notifications_formed".into(), u64::from(report.formed).into());
        object.insert("notifications_peak_lag".into(), report.peak_lag.into());
        object.insert("notifications_caught_up".into(), u64::from(report.caught_up).into());
        object.insert("notifications_consumed".into(), report.consumed.into());
        object.insert("notifications".into(), serde_json::to_value(report).unwrap_or_default());
    }
    config
}

/// What a run with a database outage adds to its record's `config`: how the service met
/// it, the outage's window, the service's database calls during it, whether it was taken
/// out of its group, and how long its lag took to drain once the database was back (the
/// first lag sample after the return whose oldest unapplied event is under
/// [`DRAINED_TIME_LAG_MS`] old).
pub(crate) fn database_into(
    config: &mut serde_json::Value,
    options: &StreamOptions,
    counters: &FleetCounters,
    outage: &crate::outage::DatabaseOutage,
    lag: &[tradeflow_check::LagSample],
) {
    let window = outage.window;
    let outage_ms = window.from_ms.zip(window.to_ms).map(|(from, to)| to.saturating_sub(from));
    let during = window.attempts.1.saturating_sub(window.attempts.0);
    let resumed_ms = window.to_ms.and_then(|back| resumed_ms_after(lag, back));
    let drained_at_ms = window.to_ms.and_then(|back| {
        lag.iter()
            .map(|sample| ((sample.t_s * 1_000.0) as u64, sample.time_lag_ms))
            .find(|(at_ms, time_lag_ms)| *at_ms >= back && *time_lag_ms < DRAINED_TIME_LAG_MS)
            .map(|(at_ms, _)| at_ms)
    });
    let sum = |read: fn(&crate::service::ServiceCounters) -> &std::sync::atomic::AtomicU64| {
        counters.sum(|counters| read(counters).load(Ordering::Relaxed))
    };
    let Some(object) = config.as_object_mut() else { return };
    object.insert("database_retry".into(), options.scenario.database_retry.as_str().into());
    object.insert("database_attempts".into(), sum(|counters| &counters.database_attempts).into());
    object.insert("database_failures".into(), sum(|counters| &counters.database_failures).into());
    object.insert("breaker_opened".into(), sum(|counters| &counters.breaker_opened).into());
    object.insert("max_poll_exceeded".into(), sum(|counters| &counters.max_poll_exceeded).into());
    object.insert(
        "database".into(),
        serde_json::json!({
            "retry": options.scenario.database_retry.as_str(),
            "max_poll_interval_ms": options.scenario.max_poll_interval_ms,
            "outage_from_ms": window.from_ms,
            "outage_ms": outage_ms,
            "calls_during_outage": during,
            "calls_per_s_during_outage": outage_ms.filter(|ms| *ms > 0).map(|ms| during as f64 * 1_000.0 / ms as f64),
            "resumed_ms_after_return": resumed_ms,
            "drained_ms_after_return": drained_at_ms.zip(window.to_ms).map(|(drained, back)| drained - back),
        }),
    );
}

/// How long after `back_ms` (the database's return) the group first committed an offset
/// past where it stood at the return: the first lag sample from `back_ms` on in which some
/// partition's committed offset is ahead of the last sample before it. Read from the
/// broker's committed offsets, which the service moves only after a database commit, so it
/// times the service's first successful call after the return (its wait between tries
/// included), apart from how fast the machine then drains the backlog.
pub(crate) fn resumed_ms_after(lag: &[tradeflow_check::LagSample], back_ms: u64) -> Option<u64> {
    let at_ms = |sample: &tradeflow_check::LagSample| (sample.t_s * 1_000.0) as u64;
    let before = lag.iter().rev().find(|sample| at_ms(sample) < back_ms)?;
    let committed = |sample: &tradeflow_check::LagSample, partition: i32| {
        sample
            .partitions
            .iter()
            .find(|lag| lag.partition == partition)
            .map_or(0, |lag| lag.committed)
    };
    lag.iter()
        .filter(|sample| at_ms(sample) >= back_ms)
        .find(|sample| sample.partitions.iter().any(|lag| lag.committed > committed(before, lag.partition)))
        .map(|sample| at_ms(sample) - back_ms)
}

/// A time lag under which the balance service counts as caught up after an outage, in ms.
pub(crate) const DRAINED_TIME_LAG_MS: f64 = 1_000.0;

/// For a run with a consumer process frozen (stuck): what it owned, whether its last log
/// line named the batch it held, how its partitions' offset lag moved against the others'
/// while it was frozen, and what the other members saw after it was restarted.
///
/// - `stuck_lag_sampled`: 1 when the group's lag was sampled at least twice, a second
///   apart, inside the freeze (see [`stuck_lag`]); without it the run cannot show the lag.
/// - `stuck_lag_apart`: 1 when, over those samples, every partition it owned kept its
///   committed offset while its lag grew, and every other partition's committed offset
///   moved on ([`StuckLag::apart`]).
/// - `log_named_held`: 1 when its last "batch received" log line named the run's topic and
///   exactly the offsets of the batch it held.
/// - `others_changes_after_restart`: assignment changes the other members saw from its
///   restart to the end of the run (before they left).
pub(crate) fn stuck_into(
    config: &mut serde_json::Value,
    options: &StreamOptions,
    counters: &FleetCounters,
    crashed: &[crate::service::FaultSeen],
    lag: &[tradeflow_check::LagSample],
    start: std::time::Instant,
) {
    let Some((name, stuck)) = crashed
        .iter()
        .find_map(|seen| seen.stuck.as_ref().map(|stuck| (seen.consumer.as_str(), stuck)))
    else {
        return;
    };
    let Some(object) = config.as_object_mut() else { return };
    let at_s = |instant: std::time::Instant| instant.saturating_duration_since(start).as_secs_f64();
    let mut apart = 0;
    let mut sampled = 0;
    if let Some(moved) = stuck_lag(lag, &stuck.owned, at_s(stuck.from), at_s(stuck.to)) {
        sampled = 1;
        apart = u64::from(moved.apart());
        object.insert(
            "stuck_lag".into(),
            serde_json::json!({
                "from_s": moved.from_s,
                "to_s": moved.to_s,
                "own_committed_moved_by_at_most": moved.own_committed_moved,
                "own_grew_by_at_least": moved.own_grew,
                "others_committed_moved_by_at_least": moved.others_committed_moved,
                "own_lag_at_least": moved.own_lag,
                "others_lag_at_most": moved.others_lag,
            }),
        );
    }
    object.insert("stuck_lag_sampled".into(), sampled.into());
    object.insert("stuck_consumer".into(), name.into());
    object.insert("stuck_partitions".into(), serde_json::json!(stuck.owned));
    object.insert("stuck_held".into(), stuck.held.clone().into());
    object.insert(
        "stuck_logged".into(),
        stuck
            .logged
            .as_ref()
            .map(|(topic, offsets)| serde_json::json!({ "topic": topic, "offsets": offsets }))
            .unwrap_or_default(),
    );
    object.insert("stuck_lag_apart".into(), apart.into());
    let named = stuck
        .logged
        .as_ref()
        .is_some_and(|(topic, offsets)| *topic == options.topic && *offsets == stuck.held && !offsets.is_empty());
    object.insert("log_named_held".into(), u64::from(named).into());
    object.insert("static_membership".into(), options.scenario.static_membership.into());
    let marks = counters.restart_marks();
    if let Some((_, mark)) = marks.iter().find(|(restarted, _)| restarted == name) {
        let others: u64 = counters
            .changes_at_end
            .iter()
            .filter(|(member, _)| *member != name)
            .map(|(member, at_end)| at_end.saturating_sub(mark.get(member).copied().unwrap_or(0)))
            .sum();
        object.insert("restarted".into(), 1.into());
        object.insert("others_changes_after_restart".into(), others.into());
    }
}

/// How the group's offsets moved while one member was frozen, between the first lag sample
/// half a second into the freeze (a commit it sent just before it stopped has landed by
/// then) and the last one before it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StuckLag {
    pub from_s: f64,
    pub to_s: f64,
    /// The most any of its partitions' committed offsets moved.
    pub own_committed_moved: i64,
    /// The least any of its partitions' lag grew.
    pub own_grew: i64,
    /// The least any other partition's committed offset moved (0 when there is none).
    pub others_committed_moved: i64,
    /// Its partitions' lowest lag, and the others' highest, at the last sample: the levels,
    /// for the reader (a busy partition's consumer may trail a stuck one's and still move).
    pub own_lag: i64,
    pub others_lag: i64,
}

impl StuckLag {
    /// What an operator reads off the lag: the stuck member's partitions stood still and
    /// fell behind, while every other partition's consumer went on committing.
    pub fn apart(&self) -> bool {
        self.own_committed_moved == 0 && self.own_grew > 0 && self.others_committed_moved > 0
    }
}

/// [`StuckLag`] for a member that owned `owned` and was frozen from `from_s` to `to_s`
/// (seconds since the start of the run); `None` when the samples inside the freeze are
/// fewer than two or span less than a second, which shows nothing.
pub(crate) fn stuck_lag(lag: &[tradeflow_check::LagSample], owned: &[i32], from_s: f64, to_s: f64) -> Option<StuckLag> {
    let settle_s = crate::run::LAG_INTERVAL.as_secs_f64();
    let first = lag.iter().find(|sample| sample.t_s >= from_s + settle_s)?;
    let last = lag.iter().rev().find(|sample| sample.t_s <= to_s)?;
    if owned.is_empty() || last.t_s - first.t_s < 1.0 {
        return None;
    }
    fn of(sample: &tradeflow_check::LagSample, partition: i32) -> Option<&tradeflow_check::PartitionLag> {
        sample.partitions.iter().find(|lag| lag.partition == partition)
    }
    let moved = |partition: i32, field: fn(&tradeflow_check::PartitionLag) -> i64| {
        let at = |sample| of(sample, partition).map_or(0, field);
        at(last) - at(first)
    };
    let others: Vec<i32> = last
        .partitions
        .iter()
        .map(|lag| lag.partition)
        .filter(|partition| !owned.contains(partition))
        .collect();
    let level = |partition: i32| of(last, partition).map_or(0, |lag| lag.offset_lag);
    Some(StuckLag {
        from_s: first.t_s,
        to_s: last.t_s,
        own_committed_moved: owned
            .iter()
            .map(|&partition| moved(partition, |lag| lag.committed).abs())
            .max()
            .unwrap_or(0),
        own_grew: owned
            .iter()
            .map(|&partition| moved(partition, |lag| lag.offset_lag))
            .min()
            .unwrap_or(0),
        others_committed_moved: others
            .iter()
            .map(|&partition| moved(partition, |lag| lag.committed))
            .min()
            .unwrap_or(0),
        own_lag: owned.iter().map(|&partition| level(partition)).min().unwrap_or(0),
        others_lag: others.iter().map(|&partition| level(partition)).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::{resumed_ms_after, stuck_lag};
    use tradeflow_check::{LagSample, PartitionLag};

    fn sample(t_s: f64, committed: &[i64]) -> LagSample {
        let partitions: Vec<PartitionLag> = committed
            .iter()
            .enumerate()
            .map(|(partition, &committed)| PartitionLag {
                partition: partition as i32,
                log_end: 1_000,
                committed,
                offset_lag: 1_000 - committed,
            })
            .collect();
        LagSample {
            t_s,
            offset_lag_total: partitions.iter().map(|lag| lag.offset_lag).sum(),
            time_lag_ms: 0.0,
            partitions,
        }
    }

    #[test]
    fn resumes_at_the_first_sample_after_the_return_with_an_offset_moved() {
        let lag = [
            sample(1.0, &[10, 20]),
            sample(1.5, &[10, 20]),
            sample(2.0, &[10, 20]),
            sample(2.5, &[10, 20]),
            sample(3.0, &[10, 21]),
        ];
        // Back at 1.6 s: the 2.0 and 2.5 s samples show nothing moved, 3.0 s does.
        assert_eq!(resumed_ms_after(&lag, 1_600), Some(1_400));
        // Nothing moved after a return at 3.1 s, and no sample precedes one at 0.5 s.
        assert_eq!(resumed_ms_after(&lag, 3_100), None);
        assert_eq!(resumed_ms_after(&lag, 500), None);
    }

    #[test]
    fn a_stuck_member_stands_apart_by_its_still_offsets_not_by_its_lag_level() {
        // Partitions 0 and 1 are the frozen member's (frozen 10.0 s to 13.0 s); partition 2
        // is a busy one whose consumer trails further behind but keeps committing.
        let at = |t_s: f64, committed: &[i64], log_end: &[i64]| {
            let mut sample = sample(t_s, committed);
            for (lag, &end) in sample.partitions.iter_mut().zip(log_end) {
                lag.log_end = end;
                lag.offset_lag = end - lag.committed;
            }
            sample
        };
        let lag = [
            at(10.2, &[100, 200, 300], &[110, 230, 900]),
            at(10.7, &[100, 200, 350], &[150, 260, 1_000]),
            at(12.7, &[100, 200, 500], &[300, 420, 1_400]),
            at(13.2, &[100, 200, 600], &[320, 440, 1_450]),
        ];
        let moved = stuck_lag(&lag, &[0, 1], 10.0, 13.0).expect("two samples a second apart inside the freeze");
        // The 10.2 s sample is inside the first half second (a commit may still land) and
        // 13.2 s is after the freeze: the window is 10.7 s to 12.7 s.
        assert_eq!((moved.from_s, moved.to_s), (10.7, 12.7));
        assert_eq!(
            (moved.own_committed_moved, moved.own_grew, moved.others_committed_moved),
            (0, 150, 150)
        );
        assert_eq!((moved.own_lag, moved.others_lag), (200, 900));
        assert!(moved.apart(), "{moved:?}");

        // Its own offset moved: not stuck.
        let mut moving = lag.clone();
        moving[2].partitions[1].committed = 260;
        moving[2].partitions[1].offset_lag = 160;
        assert_eq!(stuck_lag(&moving, &[0, 1], 10.0, 13.0).map(|moved| moved.apart()), Some(false));
        // Another partition stood still too: the stall is not the member's alone.
        let mut stalled = lag.clone();
        stalled[2].partitions[2].committed = 350;
        assert_eq!(stuck_lag(&stalled, &[0, 1], 10.0, 13.0).map(|moved| moved.apart()), Some(false));
        // A freeze with samples less than a second apart inside it shows nothing.
        assert_eq!(stuck_lag(&lag, &[0, 1], 10.0, 11.5), None);
    }
}
