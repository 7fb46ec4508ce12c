//! A cutover: the publisher moves to another topic (with more partitions, so accounts map
//! to other partitions, or on a second cluster) before a given event, at once (naive,
//! producer first, drain consumer) or after the old topic is applied (drain-then-switch).

use crate::StreamError;
use crate::publisher::Publisher;
use crate::run::{Cutover, Runbook};
use crate::service::ServiceCounters;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tradeflow_domain::Workload;

/// The publisher's side of a cutover.
pub(crate) struct Switch {
    cutover: Cutover,
    /// The old topic's consumers, to see when they have applied everything.
    old_applied: Arc<ServiceCounters>,
    /// The publisher to the second cluster, for a migration; `None`: the new topic is on
    /// the first publisher's cluster.
    elsewhere: Option<Publisher>,
    outcome: SwitchOutcome,
}

impl Switch {
    /// The switch to `cutover`, watching the old topic's consumers through `old_applied`,
    /// publishing through `elsewhere` after it when the new topic is on a second cluster.
    pub(crate) fn new(cutover: Cutover, old_applied: Arc<ServiceCounters>, elsewhere: Option<Publisher>) -> Switch {
        Switch {
            cutover,
            old_applied,
            elsewhere,
            outcome: SwitchOutcome::default(),
        }
    }

    /// When the switch came, how long it waited for the drain, and what the old topic
    /// still held unapplied then, readable after the publisher owns the switch.
    pub(crate) fn outcome(&self) -> SwitchOutcome {
        self.outcome.clone()
    }
}

/// When a switch came (0: not yet), how long it waited for the drain, and how many events
/// published to the old topic its consumers had not applied at the switch.
#[derive(Clone, Default)]
pub(crate) struct SwitchOutcome {
    switched_at_ms: Arc<AtomicU64>,
    drain_wait_ms: Arc<AtomicU64>,
    old_unapplied: Arc<AtomicU64>,
}

impl SwitchOutcome {
    /// (switched at, drain wait), ms.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.switched_at_ms.load(Ordering::Relaxed),
            self.drain_wait_ms.load(Ordering::Relaxed),
        )
    }

    /// Events published to the old topic and not applied when the publisher switched: what
    /// a cutover puts at stake.
    pub(crate) fn old_unapplied(&self) -> u64 {
        self.old_unapplied.load(Ordering::Relaxed)
    }
}

/// Most time the drain-then-switch runbook waits for the old topic to be applied.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The publisher: sends each event at its intended send time (open loop), then waits for
/// every delivery report. With a cutover, it moves to the new topic before the cutover's
/// event, after draining the old one if the runbook says so.
pub(crate) async fn publish(
    publisher: Publisher,
    workload: Arc<Workload>,
    start: Instant,
    start_ns: i64,
    switch: Option<Switch>,
) -> Result<(), StreamError> {
    let mut topic: Option<String> = None;
    let mut moved = false;
    for (index, scheduled) in workload.events.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_nanos(scheduled.intended_offset_ns)).into()).await;
        if let Some(switch) = switch.as_ref().filter(|switch| switch.cutover.at_event == index) {
            if switch.cutover.runbook.publisher_waits() {
                let waiting = Instant::now();
                publisher.wait_for_reports(DRAIN_TIMEOUT).await?;
                let acked = publisher.deliveries().acked();
                let must_wait = |applied: u64, paused: Duration| match switch.cutover.runbook {
                    Runbook::Exercise => !tradeflow_exercises::ready_to_switch::ready_to_switch(&tradeflow_exercises::CutoverState {
                        acknowledged_on_old: acked,
                        applied_from_old: applied,
                        paused_ms: paused.as_millis() as u64,
                    }),
                    _ => applied < acked,
                };
                while must_wait(switch.old_applied.applied.load(Ordering::Relaxed), waiting.elapsed()) && waiting.elapsed() < DRAIN_TIMEOUT
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                switch
                    .outcome
                    .drain_wait_ms
                    .store(waiting.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            let old_applied = switch.old_applied.applied.load(Ordering::Relaxed);
            switch
                .outcome
                .old_unapplied
                .store((index as u64).saturating_sub(old_applied), Ordering::Relaxed);
            switch
                .outcome
                .switched_at_ms
                .store(start.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
            tracing::info!(event = index, topic = %switch.cutover.topic, second_cluster = switch.cutover.second_cluster, runbook = ?switch.cutover.runbook, "publisher cuts over");
            topic = Some(switch.cutover.topic.clone());
            moved = switch.elsewhere.is_some();
        }
        let intended_at_ns = start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX));
        match switch.as_ref().and_then(|switch| switch.elsewhere.as_ref()).filter(|_| moved) {
            Some(elsewhere) => elsewhere.publish(index, &scheduled.event, intended_at_ns).await?,
            None => {
                publisher
                    .publish_to(topic.as_deref(), index, &scheduled.event, intended_at_ns)
                    .await?
            }
        }
    }
    publisher.flush().await?;
    if let Some(elsewhere) = switch.and_then(|switch| switch.elsewhere) {
        elsewhere.flush().await?;
    }
    Ok(())
}
