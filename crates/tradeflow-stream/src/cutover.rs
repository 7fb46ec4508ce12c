//! A cutover: the publisher moves to another topic (with more partitions, so accounts map
//! to other partitions) before a given event, at once (naive) or after the old topic is
//! applied (drain-then-switch).

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
    switched_at_ms: Arc<AtomicU64>,
    drain_wait_ms: Arc<AtomicU64>,
}

impl Switch {
    /// The switch to `cutover`, watching the old topic's consumers through `old_applied`.
    pub(crate) fn new(cutover: Cutover, old_applied: Arc<ServiceCounters>) -> Switch {
        Switch {
            cutover,
            old_applied,
            switched_at_ms: Arc::new(AtomicU64::new(0)),
            drain_wait_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// When the switch came and how long it waited for the drain, ms, readable after the
    /// publisher owns the switch.
    pub(crate) fn outcome(&self) -> SwitchOutcome {
        SwitchOutcome {
            switched_at_ms: self.switched_at_ms.clone(),
            drain_wait_ms: self.drain_wait_ms.clone(),
        }
    }
}

/// When a switch came and how long it waited for the drain.
pub(crate) struct SwitchOutcome {
    switched_at_ms: Arc<AtomicU64>,
    drain_wait_ms: Arc<AtomicU64>,
}

impl SwitchOutcome {
    /// (switched at, drain wait), ms.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.switched_at_ms.load(Ordering::Relaxed),
            self.drain_wait_ms.load(Ordering::Relaxed),
        )
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
    for (index, scheduled) in workload.events.iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_nanos(scheduled.intended_offset_ns)).into()).await;
        if let Some(switch) = switch.as_ref().filter(|switch| switch.cutover.at_event == index) {
            if switch.cutover.runbook != Runbook::Naive {
                let waiting = Instant::now();
                publisher.wait_for_reports(DRAIN_TIMEOUT).await?;
                let acked = publisher.deliveries().acked();
                let must_wait = |applied: u64, paused: Duration| match switch.cutover.runbook {
                    Runbook::Exercise => !tradeflow_exercises::ready_to_switch::ready_to_switch(&tradeflow_exercises::CutoverState {
                        acknowledged_on_old: acked,
                        applied_from_old: applied,
                        paused_ms: paused.as_millis() as u64,
                    }),
                    Runbook::DrainThenSwitch | Runbook::Naive => applied < acked,
                };
                while must_wait(switch.old_applied.applied.load(Ordering::Relaxed), waiting.elapsed()) && waiting.elapsed() < DRAIN_TIMEOUT
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                switch.drain_wait_ms.store(waiting.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            switch.switched_at_ms.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            tracing::info!(event = index, topic = %switch.cutover.topic, runbook = ?switch.cutover.runbook, "publisher cuts over");
            topic = Some(switch.cutover.topic.clone());
        }
        let intended_at_ns = start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX));
        publisher
            .publish_to(topic.as_deref(), index, &scheduled.event, intended_at_ns)
            .await?;
    }
    publisher.flush().await.map(|_| ())
}
