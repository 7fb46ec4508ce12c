//! Lesson: loose coupling. Each service that reads a topic does so in its own consumer
//! group, with its own offsets and its own lag: a slow reader falls behind on its own and
//! holds nobody else back, and catches up when it can. Lag is per group.
//!
//! From the field: Parcel Perform, "Initial experience with Kafka" (loose-coupling
//! services: several services consume the same messages, each at its own pace);
//! Wealthsimple, "Kafka in production" (2021): offset lag per consumer group is the health
//! signal.
//!
//! A notification service (a second group on `trades`, two consumers, 4 ms of work per
//! message: at most 500 messages/s) runs beside the balance service while trades come at
//! 1,000/s. Its lag is sampled apart from the balance service's.
//!
//! Variants: the balance service alone, and the balance service with the notification group
//! beside it, must both pass with the balance service's worst time lag under 3 s (the slow
//! group does not hold it back); the notification group must have fallen behind and caught
//! up by the end (`notifications_peak_lag` > 0, `notifications_caught_up`). The coupled
//! design, the same notification work inside the balance service (40 ms per batch of at
//! most 10 messages before the database transaction, so at most 500/s), must show the
//! balance service falling behind: worst time lag over 3 s, nothing lost. A row whose
//! notification group never got its partitions before the run (`notifications_formed` 0)
//! or never fell behind could not show the lesson: unknown.
//!
//! Chapter 11's run: the notification service in the group the learner's
//! `notification_group` names. The balance service's own group is one group with it: the
//! two split the partitions, the trades of the notification service's share never reach
//! the balances, and the checker counts them lost. A run whose notification service got
//! no partitions before it started is unknown, whatever it counted.

use crate::expect::{Expected, TimeLag};
use crate::variant::{Setup, Variant, VariantRun};
use std::time::Duration;
use tradeflow_cluster::Backend;
use tradeflow_stream::{Notifications, NotifierGroup};

/// The experiment's name.
pub const NAME: &str = "consumer-groups";
/// What it shows.
pub const WHAT: &str = "a slow notification service in its own group falls behind and catches up without holding the balance service back; the same work inside the balance service makes balances lag";

/// The offered rate and the events of every variant: six seconds of publishing.
const RATE_PER_S: f64 = 1_000.0;
const EVENTS: u64 = 6_000;
/// The notification group: two consumers, each notification 4 ms of work.
const NOTIFICATIONS: Notifications = Notifications {
    consumers: 2,
    per_message: Duration::from_millis(4),
    group: NotifierGroup::Own,
};
/// The coupled design: the same 4 ms a message, as 40 ms before each batch of at most 10.
const COUPLED_BATCH: usize = 10;
const COUPLED_DELAY: Duration = Duration::from_millis(40);
/// The balance service keeps up when its oldest unapplied event is never older than this
/// (alone it stayed under 1.3 s on three Kafka nodes on a loaded 2-core machine; coupled
/// it went past 8 s on every backend).
const KEEPS_UP_MS: f64 = 3_000.0;

/// Chapter 11's run: the notification service beside the balance service, in the group the
/// learner's `notification_group` names. Judged by the checker's counts: a group shared
/// with the balance service takes its share of the partitions away from it, and the
/// trades there are never applied to balances (lost).
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let mut options = setup.stream(4, 2);
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.events = EVENTS;
    options.scenario.notifications = Some(Notifications {
        group: NotifierGroup::Exercise,
        ..NOTIFICATIONS
    });
    options.stall_timeout = Duration::from_secs(30);
    Ok(Variant {
        label: "your notification_group: a notification service beside the balance service".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("every trade reaches the balances; the notification service reads them all too, at its own pace")
            .shown_by("notifications_formed"),
    })
}

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if setup.broker == Backend::External {
        return Err(
            "the lesson compares runs of two groups it starts and times; an external cluster's other traffic would be in its lags".into(),
        );
    }
    let options = || {
        let mut options = setup.stream(4, 2);
        options.workload.rate_per_s = RATE_PER_S;
        options.workload.events = EVENTS;
        options
    };
    let alone = options();
    let mut beside = options();
    beside.scenario.notifications = Some(NOTIFICATIONS);
    // The notification group gets as long to catch up once the balance service is done.
    beside.stall_timeout = Duration::from_secs(30);
    let mut coupled = options();
    coupled.batch_size = COUPLED_BATCH;
    coupled.scenario.apply_delay = COUPLED_DELAY;
    Ok(vec![
        Variant {
            label: "the balance service alone".into(),
            run: VariantRun::Stream(Box::new(alone)),
            expected: Expected::pass("the baseline: the balance service keeps up with the offered rate").time_lag(TimeLag::AtMost(KEEPS_UP_MS)),
        },
        Variant {
            label: "a slow notification group beside it".into(),
            run: VariantRun::Stream(Box::new(beside)),
            expected: Expected::pass(
                "the notification group falls behind in its own group and catches up after publishing ends; the balance service keeps up as if alone",
            )
            .time_lag(TimeLag::AtMost(KEEPS_UP_MS))
            .shown_by("notifications_formed")
            .shown_by("notifications_peak_lag")
            .observing("notifications_caught_up"),
        },
        Variant {
            label: "notifications inside the balance service".into(),
            run: VariantRun::Stream(Box::new(coupled)),
            expected: Expected::pass(
                "nothing is lost, but every balance waits behind the notifications: customers see stale balances",
            )
            .time_lag(TimeLag::Over(KEEPS_UP_MS)),
        },
    ])
}
