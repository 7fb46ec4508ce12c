//! The fault timeline of a run: the plan's steps and undos applied at their times (broker
//! faults through the backend, service faults on the fleet, poison published beside the
//! loop), each recorded with what it did or why it could not be applied; and the run's
//! topics, which a broker restart may need created again.

use crate::dlq;
use crate::fleet::Fleet;
use crate::run::{PROGRESS_INTERVAL, StreamOptions};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tradeflow_check::FaultRecord;
use tradeflow_cluster::plan::{Action, FaultPlan, ServiceFault};
use tradeflow_cluster::{Cluster, ClusterError, Fault, TopicDefaults};

impl TopicLayout {
    /// The run's topics (its own and a cutover's), with the scenario's replication factor
    /// or else the cluster's, and the scenario's topic configs.
    pub(crate) async fn of(options: &StreamOptions, cluster: &Cluster) -> Result<TopicLayout, ClusterError> {
        let mut topics = vec![(options.topic.clone(), options.partitions)];
        if let Some(cutover) = &options.scenario.cutover {
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

    /// Partitions of every topic of the run.
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
}

impl FaultTimeline {
    pub(crate) fn new(plan: &FaultPlan, poison: PoisonTarget) -> FaultTimeline {
        FaultTimeline {
            timeline: plan.timeline(),
            next_step: 0,
            records: Vec::new(),
            poisoning: Vec::new(),
            poison,
        }
    }

    /// Waits for the next progress tick, or for the next step's time if that comes first.
    pub(crate) async fn tick(&self, start: Instant) {
        let tick = tokio::time::sleep(PROGRESS_INTERVAL);
        match self.timeline.get(self.next_step) {
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
    pub(crate) async fn apply_due(&mut self, start: Instant, cluster: &Cluster, layout: &TopicLayout, fleet: &mut Fleet) {
        while let Some((at, action)) = self.timeline.get(self.next_step).filter(|(at, _)| start.elapsed() >= *at).cloned() {
            self.next_step += 1;
            tracing::info!(at_ms = at.as_millis() as u64, %action, "applying a planned fault");
            let outcome = match &action {
                Action::Broker(fault) => apply_broker_fault(cluster, fault, layout).await,
                Action::Service(ServiceFault::Poison { count }) => {
                    self.publish_poison(*count);
                    Ok(None)
                }
                Action::Service(fault) => apply_service_fault(fault, fleet).map(|()| None),
            };
            if let Err(error) = &outcome {
                tracing::warn!(%action, %error, "a planned fault could not be applied");
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
        self.next_step >= self.timeline.len() && self.poisoning.iter().all(|(_, task)| task.is_finished())
    }

    /// The records, once the poison tasks have ended, with what the backend saw faults
    /// lead to.
    pub(crate) async fn finish(mut self, cluster: &Cluster) -> Vec<FaultRecord> {
        for (index, task) in std::mem::take(&mut self.poisoning) {
            let outcome = task.await.unwrap_or_else(|error| Err(format!("poison task: {error}")));
            if let (Err(error), Some(record)) = (outcome, self.records.get_mut(index)) {
                tracing::warn!(fault = %record.fault, %error, "a planned fault could not be applied");
                record.error = Some(error);
            }
        }
        attach_observations(&mut self.records, cluster.observations());
        self.records
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
fn apply_service_fault(fault: &ServiceFault, fleet: &mut Fleet) -> Result<(), String> {
    let done = match fault {
        ServiceFault::Crash { consumer } => fleet.crash(*consumer),
        ServiceFault::Restart { consumer } => fleet.restart(*consumer),
        ServiceFault::Leave { consumer } => fleet.leave(*consumer),
        ServiceFault::Join => fleet.join().is_some(),
        ServiceFault::HoldAll => {
            fleet.hold_all(true);
            true
        }
        ServiceFault::ReleaseAll => {
            fleet.hold_all(false);
            true
        }
        ServiceFault::Poison { .. } => return Err("poison is published beside the run loop".into()),
    };
    if done {
        Ok(())
    } else {
        Err(format!("no consumer in the state \"{fault}\" needs ({} running)", fleet.running()))
    }
}
