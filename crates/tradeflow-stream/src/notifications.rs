//! A second consumer group on the trades topic, beside the balance service: a notification
//! service that tells customers about their trades, slower per message than the balance
//! service. It shares nothing with the balance service but the topic: its own group, its
//! own committed offsets, its own lag (sampled apart, outside its consumers). The lesson of
//! loose coupling (`consumer-groups`) runs it.

use crate::StreamError;
use crate::lag::LagProbe;
use crate::run::{ASSIGNMENT_TIMEOUT, LAG_INTERVAL, start_group_at_end};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The notification group of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifications {
    /// Its consumers.
    pub consumers: u32,
    /// The work of one notification (a call to a slow provider), done one message at a time.
    pub per_message: Duration,
    /// Whose choice its group id is.
    pub group: NotifierGroup,
}

/// Where the notification service's group id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierGroup {
    /// A group of its own, named after the balance service's.
    Own,
    /// Chapter 11's exercise, given the balance service's group.
    Exercise,
}

impl NotifierGroup {
    /// The notification service's group id beside the balance service's `balances`.
    pub fn name(self, balances: &str) -> String {
        match self {
            NotifierGroup::Own => format!("{balances}-notifications"),
            NotifierGroup::Exercise => tradeflow_exercises::notification_group::notification_group(balances),
        }
    }
}

/// What the notification group did in a run, for the record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotificationsReport {
    /// Its group id.
    pub group: String,
    /// Whether its consumers held partitions before the run started (each some, or all of
    /// them between them); a group that did not could not show what it does.
    pub formed: bool,
    /// Its consumers.
    pub consumers: u32,
    /// The work per message, in ms.
    pub per_message_ms: f64,
    /// Messages it processed.
    pub consumed: u64,
    /// Its offset lag over the run: `[seconds since the start, lag summed over partitions]`.
    pub lag: Vec<(f64, i64)>,
    /// Its deepest lag.
    pub peak_lag: i64,
    /// Whether it had caught up (lag 0 on every partition) by the end of the run.
    pub caught_up: bool,
    /// When it caught up for good, in seconds since the start.
    pub caught_up_at_s: Option<f64>,
}

/// The running group.
pub(crate) struct NotificationGroup {
    group: String,
    formed: bool,
    settings: Notifications,
    consumed: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    consumers: Vec<JoinHandle<()>>,
    probe: Arc<LagProbe>,
    sampler: Option<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<(f64, i64, bool)>>>,
}

impl NotificationGroup {
    /// Starts the group at the topic's end (like the balance service's, `balances`) and
    /// waits until its consumers hold every partition, or each holds some (a group id the
    /// balance service uses too is one group, whose partitions the two services split), for
    /// up to [`ASSIGNMENT_TIMEOUT`].
    pub(crate) async fn start(
        bootstrap: &str,
        topic: &str,
        balances: &str,
        partitions: i32,
        settings: Notifications,
    ) -> Result<NotificationGroup, StreamError> {
        let group = settings.group.name(balances);
        if group == balances {
            tracing::warn!(
                group,
                "the notification service joins the balance service's own group: the two split the partitions, and each reads only its share of the trades"
            );
        } else {
            start_group_at_end(bootstrap, topic, &group, partitions).await?;
        }
        let (stop, stopped) = watch::channel(false);
        let consumed = Arc::new(AtomicU64::new(0));
        let mut members = Vec::new();
        let mut consumers = Vec::new();
        for index in 0..settings.consumers {
            let consumer: StreamConsumer = crate::base_config(bootstrap)
                .set("group.id", &group)
                .set("client.id", format!("notifications-{index}"))
                // An offset is stored once its notification is sent, and committed by the
                // timer: at least once, which is all a notification needs.
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.commit.interval.ms", "200")
                .set("auto.offset.reset", "earliest")
                .create()
                .map_err(|error| StreamError::kafka("creating a notification consumer", error))?;
            consumer
                .subscribe(&[topic])
                .map_err(|error| StreamError::kafka(format!("subscribing the notification group to {topic}"), error))?;
            let consumer = Arc::new(consumer);
            members.push(consumer.clone());
            consumers.push(tokio::spawn(notify(
                consumer,
                settings.per_message,
                consumed.clone(),
                stopped.clone(),
            )));
        }
        // A group that never formed is no error: the run goes on, and its record says so
        // (`notifications_formed` 0), so that an experiment or chapter that needs the group
        // calls the run unknown. The mock cluster's coordinator answers a member whose
        // SyncGroup comes after the leader's with an error, and the member rejoins: on a
        // loaded machine that round can repeat for a minute.
        let deadline = Instant::now() + ASSIGNMENT_TIMEOUT;
        let formed = loop {
            let held: Vec<usize> = members
                .iter()
                .map(|member| member.assignment().map(|list| list.count()).unwrap_or(0))
                .collect();
            let assigned: usize = held.iter().sum();
            if assigned >= usize::try_from(partitions).unwrap_or(0) || held.iter().all(|count| *count > 0) {
                break true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    group,
                    assigned,
                    partitions,
                    "the notification group's consumers did not all get partitions within {ASSIGNMENT_TIMEOUT:?}: the run goes on, and cannot show what the group does"
                );
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(NotificationGroup {
            probe: Arc::new(LagProbe::new(bootstrap, topic, &group, partitions)?),
            group,
            formed,
            settings,
            consumed,
            stop,
            consumers,
            sampler: None,
            samples: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Samples the group's lag from now on, timed from `start` (the run's clock).
    pub(crate) fn sample_from(&mut self, start: Instant) {
        let stopped = self.stop.subscribe();
        self.sampler = Some(tokio::spawn(sample(self.probe.clone(), start, self.samples.clone(), stopped)));
    }

    /// Waits up to `patience` for the group to catch up (its lag sampled at 0 on every
    /// partition), stops it and reports.
    pub(crate) async fn finish(self, patience: Duration) -> NotificationsReport {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline && !self.samples.lock().is_ok_and(|samples| caught_up_at(&samples).is_some()) {
            tokio::time::sleep(LAG_INTERVAL).await;
        }
        self.stop.send_replace(true);
        for consumer in self.consumers {
            let _ = consumer.await;
        }
        if let Some(sampler) = self.sampler {
            let _ = sampler.await;
        }
        let samples = self.samples.lock().map(|samples| samples.clone()).unwrap_or_default();
        let caught_up_at_s = caught_up_at(&samples);
        NotificationsReport {
            group: self.group,
            formed: self.formed,
            consumers: self.settings.consumers,
            per_message_ms: self.settings.per_message.as_secs_f64() * 1e3,
            consumed: self.consumed.load(Ordering::Relaxed),
            peak_lag: samples.iter().map(|(_, lag, _)| *lag).max().unwrap_or(0),
            caught_up: caught_up_at_s.is_some(),
            caught_up_at_s,
            lag: samples.into_iter().map(|(at, lag, _)| (at, lag)).collect(),
        }
    }
}

/// When the group caught up for good: the first sample of the last run of samples at lag
/// 0 on every partition, if the last sample is one.
fn caught_up_at(samples: &[(f64, i64, bool)]) -> Option<f64> {
    let at_end = |(_, lag, complete): &(f64, i64, bool)| *lag == 0 && *complete;
    if !samples.last().is_some_and(at_end) {
        return None;
    }
    samples
        .iter()
        .rev()
        .take_while(|sample| at_end(sample))
        .last()
        .map(|(at, _, _)| *at)
}

/// One notification consumer: each message is one notification, its work done before its
/// offset is stored.
async fn notify(consumer: Arc<StreamConsumer>, per_message: Duration, consumed: Arc<AtomicU64>, mut stopped: watch::Receiver<bool>) {
    loop {
        let received = tokio::select! {
            _ = stopped.changed() => break,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                tokio::time::sleep(per_message).await;
                if let Err(error) = consumer.store_offset_from_message(&message) {
                    tracing::warn!(%error, partition = message.partition(), "storing a notification's offset");
                }
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, "notification consumer");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if *stopped.borrow() {
            break;
        }
    }
    crate::leave_group(consumer, "notifications", true).await;
}

/// Samples the group's lag every [`LAG_INTERVAL`] until stopped: `(seconds since start,
/// lag summed over partitions, whether every partition answered)`.
async fn sample(probe: Arc<LagProbe>, start: Instant, samples: Arc<Mutex<Vec<(f64, i64, bool)>>>, mut stopped: watch::Receiver<bool>) {
    let partitions = usize::try_from(probe.partitions()).unwrap_or(0);
    loop {
        let reading = probe.clone();
        match tokio::task::spawn_blocking(move || reading.probe()).await {
            Ok(Ok(lags)) => {
                let total = lags.iter().map(|lag| lag.offset_lag).sum();
                if let Ok(mut samples) = samples.lock() {
                    samples.push((start.elapsed().as_secs_f64(), total, lags.len() == partitions));
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "the notification group's lag probe"),
            Err(error) => tracing::warn!(%error, "the notification group's lag probe task"),
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_caught_up_when_its_last_samples_are_at_the_log_end() {
        let samples = [(0.5, 0, true), (1.0, 900, true), (1.5, 0, true), (2.0, 0, true)];
        assert_eq!(caught_up_at(&samples), Some(1.5));
        // Still behind at the end, or a partition that did not answer: not caught up.
        assert_eq!(caught_up_at(&[(0.5, 0, true), (1.0, 3, true)]), None);
        assert_eq!(caught_up_at(&[(0.5, 0, true), (1.0, 0, false)]), None);
        assert_eq!(caught_up_at(&[]), None);
    }
}
