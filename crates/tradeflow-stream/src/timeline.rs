//! The fault timeline of a run: the plan's steps and undos applied at their times (broker
//! faults through the backend, service faults on the fleet, poison published beside the
//! loop), each recorded with what it did or why it could not be applied; and the run's
//! topics, which a broker restart may need created again.

use crate::dlq;
use crate::fleet::Fleet;
use crate::outage::DatabaseOutage;
use crate::run::{PROGRESS_INTERVAL, StreamOptions};
use crate::service::{FaultSeen, SeenKind};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tradeflow_check::FaultRecord;
use tradeflow_cluster::plan::{Action, DatabaseFault, FaultPlan, ServiceFault};
use tradeflow_cluster::{Cluster, ClusterError, Fault, TopicDefaults};

impl TopicLayout {
    /// The run's topics (its own and a cutover's), with the scenario's replication factor
    /// or else the cluster's, and the scenario's topic configs.
    pub(crate) async fn of(options: &StreamOptions, cluster: &Cluster) -> Result<TopicLayout, ClusterError> {
        let mut topics = vec![(options.topic.clone(), options.partitions)];
        if let Some(cutover) = options.scenario.cutover.as_ref().filter(|cutover| !cutover.second_cluster) {
            topics.push((cutover.topic.clone(), cutover.partitions));
        }
        let defaults = cluster.topic_defaults().await?;
        Ok(TopicLayout {
            topics,
            replication_factor: options.scenario.replication_factor.unwrap_or(defaults.replication_factor),
            configs: options.scenario.topic_configs.clone(),
            defaults,
        })
    }

    /// The same settings for a migration's topic on the second cluster (of the same
    /// backend, so with the same defaults).
    pub(crate) fn elsewhere(&self, cutover: &crate::run::Cutover) -> TopicLayout {
        TopicLayout {
            topics: vec![(cutover.topic.clone(), cutover.partitions)],
            replication_factor: self.replication_factor,
            configs: self.configs.clone(),
            defaults: self.defaults,
        }
    }

    /// Partitions of every topic of the layout.
    pub(crate) fn partitions(&self) -> i64 {
        self.topics.iter().map(|(_, partitions)| i64::from(*partitions)).sum()
    }
}

/// Where poison goes: the run's topic, under a hot account's key.
pub(crate) struct PoisonTarget {
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) key: String,
}

/// The plan's actions in time order and what became of each.
pub(crate) struct FaultTimeline {
    timeline: Vec<(Duration, Action)>,
    next_step: usize,
    records: Vec<FaultRecord>,
    /// Poison is published beside the loop (index into `records`, task): its delivery waits
    /// for a broker that may be paused by an earlier step, whose undo must not wait with it.
    poisoning: Vec<(usize, JoinHandle<Result<(), String>>)>,
    poison: PoisonTarget,
    /// Crashes and freezes told to a consumer (index into `records`, consumer, which): a
    /// consumer dies (or freezes) with its next batch, so whether it did is known only at
    /// the end.
    told: Vec<(usize, u32, SeenKind)>,
    /// The means of a planned database outage.
    database: Option<DatabaseOutage>,
    /// Replays of the dead-letter topic under way beside the loop (index into `records`,
    /// task saying what it moved).
    replaying: Vec<(usize, JoinHandle<Result<String, String>>)>,
    /// Since when (from the run's start) the consumers have handled every message the
    /// broker acknowledged, with that count: looked at while a step is due, and taken
    /// again whenever the count grows; `None` while they have not.
    handled_all_since: Option<(Duration, u64)>,
}

impl FaultTimeline {
    pub(crate) fn new(plan: &FaultPlan, poison: PoisonTarget, database: Option<DatabaseOutage>) -> FaultTimeline {
        FaultTimeline {
            timeline: plan.timeline(),
            next_step: 0,
            records: Vec::new(),
            poisoning: Vec::new(),
            poison,
            told: Vec::new(),
            database,
            replaying: Vec::new(),
            handled_all_since: None,
        }
    }

    /// Waits for the next progress tick, or for the next step's time if that comes first.
    pub(crate) async fn tick(&self, start: Instant) {
        let tick = tokio::time::sleep(PROGRESS_INTERVAL);
        // An upgrade or a replay past its time waits on the consumers (see
        // `consumers_ready`): it is looked at again at the next tick. Any other step past its
        // time is applied at once.
        let waiting = |(at, action): &&(Duration, Action)| start + *at <= Instant::now() && waits_for_the_consumers(action);
        match self.timeline.get(self.next_step).filter(|step| !waiting(step)) {
            Some((at, _)) => {
                tokio::select! {
                    _ = tick => {}
                    _ = tokio::time::sleep_until((start + *at).into()) => {}
                }
            }
            None => tick.await,
        }
    }

    /// Applies every step whose time has come, and records it.
    /// An upgrade of the consumers waits, past its time, until they have handled every
    /// message the broker acknowledged (`acked`): applied it or set it aside on the
    /// dead-letter topic; and until the group has committed them, which
    /// `committed_to_log_end_since(t)` answers (a lag sample taken after `t`, counted from
    /// the run's start, found the group's offsets at the end of every partition's log).
    /// Upgrading sooner would let the new consumers apply an account's newer events before
    /// the replay brings back its older ones: they start from the committed offsets, and
    /// offsets an old consumer had not committed yet (gathering for the commit interval)
    /// do not survive its leaving once the new members' rebalance has begun.
    pub(crate) async fn apply_due(
        &mut self,
        start: Instant,
        cluster: &Cluster,
        layout: &TopicLayout,
        fleet: &mut Fleet,
        acked: u64,
        committed_to_log_end_since: impl Fn(Duration) -> bool,
    ) {
        while let Some((at, action)) = self.timeline.get(self.next_step).filter(|(at, _)| start.elapsed() >= *at).cloned() {
            // Applied, set aside on the dead-letter topic, or (chapter 17's tolerant
            // reader) passed over: handled either way.
            let handled = fleet.counters.applied.load(std::sync::atomic::Ordering::Relaxed)
                + fleet.counters.dead_lettered.load(std::sync::atomic::Ordering::Relaxed)
                + fleet.counters.passed_over.load(std::sync::atomic::Ordering::Relaxed);
            // A lag sample at the log's end taken after every message acknowledged so far
            // was handled covers them all.
            self.handled_all_since = match self.handled_all_since {
                _ if handled < acked => None,
                Some((since, then)) if then == acked => Some((since, then)),
                _ => Some((start.elapsed(), acked)),
            };
            let committed = self.handled_all_since.is_some_and(|(since, _)| committed_to_log_end_since(since));
            if waits_for_the_consumers(&action) && !consumers_ready(&action, fleet, committed) {
                return;
            }
            self.next_step += 1;
            tracing::info!(at_ms = at.as_millis() as u64, %action, "applying a planned fault");
            let outcome = match &action {
                Action::Broker(fault) => apply_broker_fault(cluster, fault, layout).await,
                Action::Service(ServiceFault::Poison { count }) => {
                    self.publish_poison(*count);
                    Ok(None)
                }
                Action::Service(ServiceFault::ReplayDeadLetters) => {
                    self.replay_dead_letters();
                    Ok(None)
                }
                Action::Service(ServiceFault::Upgrade) => fleet.upgrade().map(|replaced| {
                    Some(format!(
                        "{replaced} consumers replaced by ones reading schema_version up to {}",
                        tradeflow_domain::SCHEMA_VERSION
                    ))
                }),
                Action::Service(fault) => apply_service_fault(fault, fleet).await.map(|()| None),
                Action::Database(fault) => {
                    let (at_ms, attempts) = (
                        start.elapsed().as_millis() as u64,
                        fleet.counters.database_attempts.load(std::sync::atomic::Ordering::Relaxed),
                    );
                    match (&mut self.database, fault) {
                        (None, _) => Err("the run has no means of taking its database away".to_owned()),
                        (Some(database), DatabaseFault::Outage) => database.cut(at_ms, attempts).await.map(Some),
                        (Some(database), DatabaseFault::Back) => database.restore(at_ms, attempts).await.map(Some),
                    }
                }
            };
            if let Err(error) = &outcome {
                tracing::warn!(%action, %error, "a planned fault could not be applied");
            } else if let Action::Service(ServiceFault::Crash { consumer }) = &action {
                self.told.push((self.records.len(), *consumer, SeenKind::Crash));
            } else if let Action::Service(ServiceFault::Pause { consumer }) = &action {
                self.told.push((self.records.len(), *consumer, SeenKind::Freeze));
            }
            let (effect, error) = match outcome {
                Ok(effect) => (effect, None),
                Err(error) => (None, Some(error)),
            };
            self.records.push(FaultRecord {
                at_ms: start.elapsed().as_millis() as u64,
                fault: action.to_string(),
                error,
                effect,
            });
        }
    }

    /// Replays the dead-letter topic beside the loop; its effect says how many it moved.
    fn replay_dead_letters(&mut self) {
        let (bootstrap, topic) = (self.poison.bootstrap.clone(), self.poison.topic.clone());
        let group = format!("tradeflow-replay-{}", std::process::id());
        let task = tokio::spawn(async move {
            dlq::replay(&bootstrap, &dlq::dlq_topic(&topic), &group)
                .await
                .map(|report| format!("replayed {} dead letters to {topic} ({:?})", report.moved, report.by_kind))
                .map_err(|error| error.to_string())
        });
        self.replaying.push((self.records.len(), task));
    }

    fn publish_poison(&mut self, count: u32) {
        let (bootstrap, topic, key) = (self.poison.bootstrap.clone(), self.poison.topic.clone(), self.poison.key.clone());
        let task = tokio::spawn(async move {
            dlq::publish_poison(&bootstrap, &topic, &key, count)
                .await
                .map_err(|error| error.to_string())
        });
        self.poisoning.push((self.records.len(), task));
    }

    /// Whether every step has been applied and every poison published.
    pub(crate) fn done(&self) -> bool {
        self.next_step >= self.timeline.len()
            && self.poisoning.iter().all(|(_, task)| task.is_finished())
            && self.replaying.iter().all(|(_, task)| task.is_finished())
    }

    /// The records, once the poison tasks have ended, with what the backend saw faults
    /// lead to and how each crash went (`crashed`: the fleet's crashes, once its consumers
    /// are gone; a crash no consumer carried out is recorded as not applied).
    pub(crate) async fn finish(mut self, cluster: &Cluster, crashed: &[FaultSeen]) -> (Vec<FaultRecord>, Option<DatabaseOutage>) {
        for (index, task) in std::mem::take(&mut self.poisoning) {
            let outcome = task.await.unwrap_or_else(|error| Err(format!("poison task: {error}")));
            if let (Err(error), Some(record)) = (outcome, self.records.get_mut(index)) {
                tracing::warn!(fault = %record.fault, %error, "a planned fault could not be applied");
                record.error = Some(error);
            }
        }
        for (index, task) in std::mem::take(&mut self.replaying) {
            let outcome = task.await.unwrap_or_else(|error| Err(format!("replay task: {error}")));
            if let Some(record) = self.records.get_mut(index) {
                match outcome {
                    Ok(effect) => record.effect = Some(effect),
                    Err(error) => record.error = Some(error),
                }
            }
        }
        attach_observations(&mut self.records, cluster.observations());
        attach_crashes(&mut self.records, &self.told, crashed);
        (self.records, self.database)
    }
}

/// Whether a step, once due, waits on the consumers: an upgrade until they have handled
/// every acknowledged message (see [`FaultTimeline::apply_due`]); a replay of the dead
/// letters until every consumer told to go (the old version's, at an upgrade) has gone.
fn waits_for_the_consumers(action: &Action) -> bool {
    matches!(action, Action::Service(ServiceFault::Upgrade | ServiceFault::ReplayDeadLetters))
}

/// Whether the consumers are ready for a step that waits on them. An upgrade waits until
/// they have handled every acknowledged message and the group has `committed` them since
/// (one answer: see [`FaultTimeline::apply_due`]). A replay that comes while a consumer of the old
/// version is still leaving can be read by it, refused again and committed: the dead
/// letters, replayed, would be lost for good (seen on tansu once, under CI's load: 3,000
/// of 6,000 events).
fn consumers_ready(action: &Action, fleet: &Fleet, committed: bool) -> bool {
    match action {
        Action::Service(ServiceFault::Upgrade) => committed,
        Action::Service(ServiceFault::ReplayDeadLetters) => fleet.gone(),
        _ => true,
    }
}

/// Gives each crash (or freeze) told to a consumer the one it led to, in order, or the
/// reason it did not fire: a consumer told to crash dies with its next batch, and one that
/// received no batch before the run ended never crashed.
fn attach_crashes(records: &mut [FaultRecord], told: &[(usize, u32, SeenKind)], crashed: &[FaultSeen]) {
    let mut used = vec![false; crashed.len()];
    for (index, consumer, kind) in told {
        let name = format!("consumer-{consumer}");
        let Some(record) = records.get_mut(*index) else { continue };
        match crashed
            .iter()
            .enumerate()
            .find(|(seen, crash)| !used[*seen] && crash.consumer == name && crash.kind == *kind)
        {
            Some((seen, crash)) => {
                used[seen] = true;
                record.effect = Some(
                    crash
                        .effect
                        .clone()
                        .unwrap_or_else(|| format!("{name} crashed holding {} received, unapplied messages", crash.messages)),
                );
            }
            None => {
                record.error = Some(format!(
                    "{name} never crashed: it received no batch to crash with before the run ended"
                ))
            }
        }
    }
}

/// The run's topics (name, partitions), their replication factor and configs.
pub(crate) struct TopicLayout {
    pub(crate) topics: Vec<(String, i32)>,
    pub(crate) replication_factor: i32,
    pub(crate) configs: Vec<(String, String)>,
    /// What the cluster gives topics: the dead-letter topics' replication factor, and the
    /// `min.insync.replicas` the run's topics must be able to meet.
    pub(crate) defaults: TopicDefaults,
}

/// Creates the run's topics and their dead-letter topics (again after a broker restart:
/// a broker with memory storage comes back empty).
pub(crate) async fn ensure_topics(cluster: &Cluster, layout: &TopicLayout) -> Result<(), ClusterError> {
    let own_min_insync = layout
        .configs
        .iter()
        .find(|(key, _)| key == tradeflow_cluster::topics::MIN_INSYNC_REPLICAS)
        .and_then(|(_, value)| value.parse::<i32>().ok());
    if let Some(min_insync) = own_min_insync
        .or(layout.defaults.min_insync_replicas)
        .filter(|min| layout.replication_factor < *min)
    {
        return Err(ClusterError::Unsupported {
            backend: cluster.backend(),
            reason: format!(
                "replication factor {} is below min.insync.replicas {min_insync}: every acks=all write would fail with NOT_ENOUGH_REPLICAS; set min.insync.replicas on the topic",
                layout.replication_factor
            ),
        });
    }
    for (topic, partitions) in &layout.topics {
        cluster
            .ensure_topic_with(topic, *partitions, layout.replication_factor, &layout.configs)
            .await?;
        cluster
            .ensure_topic(&dlq::dlq_topic(topic), 1, layout.defaults.replication_factor)
            .await?;
    }
    Ok(())
}

/// Injects a broker fault; returns what it did, where the backend can tell.
async fn apply_broker_fault(cluster: &Cluster, fault: &Fault, layout: &TopicLayout) -> Result<Option<String>, String> {
    let effect = cluster.inject(fault).await.map_err(|error| error.to_string())?;
    if fault.restarts_broker() {
        ensure_topics(cluster, layout).await.map_err(|error| error.to_string())?;
    }
    Ok(effect)
}

/// Adds what the backend saw a fault lead to (a failover it waited for beside the run) to
/// the effect of the first applied fault of that name still without one.
fn attach_observations(faults: &mut [FaultRecord], observations: Vec<(String, String)>) {
    let mut observed = vec![false; faults.len()];
    for (fault, seen) in observations {
        // A broker step is recorded as its action: "broker: " and the fault.
        let is_it = |record: &FaultRecord| record.error.is_none() && record.fault.strip_prefix("broker: ") == Some(fault.as_str());
        if let Some((index, record)) = faults
            .iter_mut()
            .enumerate()
            .find(|(index, record)| !observed[*index] && is_it(record))
        {
            observed[index] = true;
            record.effect = Some(match record.effect.take() {
                Some(effect) => format!("{effect}; {seen}"),
                None => seen,
            });
        }
    }
}

/// Applies a service fault to the fleet (poison is published beside the run loop).
async fn apply_service_fault(fault: &ServiceFault, fleet: &mut Fleet) -> Result<(), String> {
    match fault {
        ServiceFault::Crash { consumer } => fleet.crash(*consumer),
        ServiceFault::Restart { consumer } => fleet.restart(*consumer).await,
        ServiceFault::Pause { consumer } => fleet.freeze(*consumer),
        ServiceFault::Resume { consumer } => fleet.wake(*consumer),
        ServiceFault::Leave { consumer } => fleet.leave(*consumer),
        ServiceFault::Join => fleet
            .join()
            .map(|_| ())
            .ok_or_else(|| format!("no consumer could join ({} running)", fleet.running())),
        ServiceFault::HoldAll => fleet.hold_all(true),
        ServiceFault::ReleaseAll => fleet.hold_all(false),
        ServiceFault::Poison { .. } | ServiceFault::Upgrade | ServiceFault::ReplayDeadLetters => {
            Err("applied by the timeline itself".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fault: &str) -> FaultRecord {
        FaultRecord {
            at_ms: 0,
            fault: fault.into(),
            error: None,
            effect: None,
        }
    }

    fn seen(consumer: &str, messages: usize) -> FaultSeen {
        FaultSeen {
            kind: SeenKind::Crash,
            consumer: consumer.into(),
            messages,
            effect: None,
            committed: None,
            partitions_moved: None,
            stuck: None,
        }
    }

    #[test]
    fn a_crash_gets_the_crash_it_led_to_and_one_that_never_came_is_not_applied() {
        let mut records = vec![
            record("balance service: consumer-0 dies mid-batch"),
            record("balance service: consumer-0 restarts"),
            record("balance service: consumer-0 dies mid-batch"),
            record("balance service: consumer-1 dies mid-batch"),
        ];
        let told = [(0, 0, SeenKind::Crash), (2, 0, SeenKind::Crash), (3, 1, SeenKind::Crash)];
        attach_crashes(&mut records, &told, &[seen("consumer-1", 7), seen("consumer-0", 206)]);
        assert_eq!(
            records[0].effect.as_deref(),
            Some("consumer-0 crashed holding 206 received, unapplied messages")
        );
        assert_eq!(records[0].error, None);
        assert_eq!(records[1].effect, None);
        assert_eq!(records[1].error, None);
        // One crash of consumer-0 was seen, for two told: the second did not fire.
        assert_eq!(records[2].effect, None);
        assert!(records[2].error.as_deref().is_some_and(|error| error.contains("never crashed")));
        assert_eq!(
            records[3].effect.as_deref(),
            Some("consumer-1 crashed holding 7 received, unapplied messages")
        );
    }
}
