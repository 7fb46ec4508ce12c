//! The workshop's exercises: one function per chapter, in the file the learner edits
//! (`chapters/NN-slug/exercise.rs`), compiled here so that the real pipeline can call it.
//! The pipeline calls an exercise only when a run selects it (a chapter's run does); its
//! own behaviour never depends on what a learner has written.
//!
//! With the `solutions` feature the chapters' solutions (`chapters/solutions/`) stand in
//! for the learner's files: that build exists only to prove that every solution passes.

/// One reading of a partition by the lag monitor: where the group's committed offset was
/// and where the log ended, at a moment of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffsetSample {
    /// Seconds since the start of the run.
    pub at_s: f64,
    /// The group's committed offset: the next message the group will read.
    pub committed: i64,
    /// The log end offset: the offset the next message written will get.
    pub log_end: i64,
}

impl OffsetSample {
    /// Messages written and not yet committed by the group (never below zero).
    pub fn lag(&self) -> i64 {
        (self.log_end - self.committed).max(0)
    }
}

/// What the lag of a partition says about its consumer over a window of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LagStatus {
    /// Keeping up.
    Ok,
    /// Committing, but falling behind.
    Warn,
    /// Not committing while messages arrive.
    Stall,
    /// Not committing, and nothing arrives either: a consumer that is gone.
    Stop,
}

impl LagStatus {
    /// Its name, as the monitor shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "OK",
            LagStatus::Warn => "WARN",
            LagStatus::Stall => "STALL",
            LagStatus::Stop => "STOP",
        }
    }
}

/// One of the two things the balance service does with each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStep {
    /// Apply the batch's events to the balances in one database transaction.
    ApplyToDatabase,
    /// Commit the batch's offsets to Kafka: the group will not read these messages again.
    CommitOffsets,
}

/// What the balance service does with a message it cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprocessable {
    /// Read it again after a pause; nothing behind it in its partition is applied meanwhile.
    RetryLater,
    /// Send it, with the reason, to the dead-letter topic and go on with the partition.
    DeadLetter,
}

/// Where a cutover to a new topic stands, as the publisher sees it each time it asks whether
/// to switch (publishing to the old topic has stopped; every send was answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoverState {
    /// Events the old topic acknowledged.
    pub acknowledged_on_old: u64,
    /// Of those, events the old topic's consumers have applied.
    pub applied_from_old: u64,
    /// How long publishing has been paused, ms.
    pub paused_ms: u64,
}

/// Where a move to a new cluster stands, as the balance service sees it each time it asks
/// whether to move its consumers (chapter 12): the producer moves to the new cluster on its
/// own schedule, and the service samples its group's offset lag on the old cluster twice a
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationState {
    /// Whether the producer writes to the new cluster now (the new cluster's topic has
    /// started to grow).
    pub producer_moved: bool,
    /// The group's offset lag on the old cluster, summed over its partitions, at the latest
    /// lag sample; `None` before the first sample that saw every partition.
    pub old_offset_lag: Option<i64>,
    /// How long after the producer moved that sample was taken, ms (0 when it was taken
    /// before, or the producer has not moved).
    pub sampled_ms_after_producer_moved: u64,
}

/// What chapter 13's exercise knows when it sets how long a deployment may keep the
/// balance service down: the topic's traffic and what its broker keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionBudget {
    /// Trades a second on the topic (one partition).
    pub rate_per_s: u64,
    /// The mean message's size in bytes (key, value and headers), as measured on this
    /// workload.
    pub message_bytes: u64,
    /// Bytes the broker keeps per partition; it deletes the oldest messages past that.
    pub retained_bytes: u64,
    /// How long a restarted consumer takes to read again (its group's join), ms.
    pub rejoin_ms: u64,
}

/// What the order desk of chapter 14 knows when a customer places an order: the balance it
/// read, and how far the balances table has got with the customer's trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderView {
    /// The customer's cash as the balances table holds it, minor units.
    pub cash_seen: i64,
    /// What the order needs, minor units.
    pub amount: i64,
    /// The customer's trades applied to that balance: the highest `account_seq` applied.
    pub applied_seq: u64,
    /// The customer's trades executed before the order was placed: the `account_seq` of
    /// the last one (its confirmation carries it).
    pub confirmed_seq: u64,
    /// How long this order has waited so far, ms.
    pub waited_ms: u64,
}

/// What the order desk does with an order (chapter 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderDecision {
    /// Accept it: the cash covers it.
    Accept,
    /// Refuse it.
    Refuse,
    /// Read the balance again in 10 ms, and decide then.
    ReadAgain,
}

/// What the outbox relay reads next (chapter 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxRead {
    /// The rows with an id above this one, in id order.
    IdsAbove(i64),
    /// The rows not yet marked relayed, in id order; the relay marks them relayed once the
    /// broker has acknowledged them.
    NotYetRelayed,
}

/// What a consumer does with a message of a schema version newer than it reads
/// (chapter 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewerVersion {
    /// Refuse it whole: it goes to the dead-letter topic, to be replayed once the consumer
    /// reads that version.
    Refuse,
    /// Read what it knows of it (the tolerant reader): the fields it does not know are
    /// left out, and a message whose type it does not know is passed over.
    ReadWhatYouKnow,
}

/// How much a consumer of the balance service fetches ahead of the batch in hand
/// (chapter 18): librdkafka's `queued.max.messages.kbytes` and `fetch.max.bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchLimits {
    /// Most data librdkafka queues ahead of the application, in KiB
    /// (`queued.max.messages.kbytes`, 1 to 2,097,151; librdkafka's default 65,536).
    pub queued_max_messages_kbytes: u32,
    /// Most data one fetch response may bring, in bytes (`fetch.max.bytes`, at least
    /// `message.max.bytes`, 1,000,000 here; librdkafka's default 52,428,800).
    pub fetch_max_bytes: u32,
}

/// A message of a batch, where it sits in the log (chapter 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Its partition of the trades topic.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// Offsets of one partition a log line names as held (chapter 19): `first` to `last`, both
/// included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldRange {
    /// The partition.
    pub partition: i32,
    /// Its first offset in the batch.
    pub first: i64,
    /// Its last offset in the batch.
    pub last: i64,
}

/// What the balance service does after a database call failed (chapter 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseWait {
    /// Try the batch again at once, without polling Kafka meanwhile.
    AtOnce,
    /// Pause the partitions (nothing more is fetched), go on polling Kafka, and try the
    /// batch again after this long.
    PausedFor(std::time::Duration),
}

/// How the balance service will grow, as chapter 07's exercise is told it when the topic is
/// created: the consumers it runs today, then the counts it will run as the load grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowthPlan {
    /// Consumers the balance service runs today.
    pub consumers_today: u32,
    /// The consumer counts it will run later, in order; the last is the peak.
    pub consumers_later: &'static [u32],
}

impl GrowthPlan {
    /// Every consumer count of the plan, today's first.
    pub fn stages(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.consumers_today).chain(self.consumers_later.iter().copied())
    }
}

/// Which replicas must have a write before the broker acknowledges it: the producer's
/// `acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=1`: the partition's leader alone.
    Leader,
    /// `acks=all`: every in-sync replica, and at least the topic's `min.insync.replicas`.
    All,
}

/// The publisher's producer settings chapter 05's exercise chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSettings {
    /// `acks`.
    pub acks: Acks,
    /// `enable.idempotence`: the broker discards a resent copy of a write by its producer
    /// sequence (needs `acks` all and at most 5 requests in flight).
    pub idempotence: bool,
    /// `max.in.flight.requests.per.connection`: produce requests sent before the first is
    /// answered (1..=5 here).
    pub in_flight_max: u32,
    /// `linger.ms`: how long to wait to fill a produce request (0..=1,000).
    pub linger_ms: u32,
}

/// The load chapter 10's test offers: ten times today's peak, on a topic of `partitions`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadTest {
    /// Today's peak rate, events per second.
    pub today_per_s: f64,
    /// The rate the test offers: ten times today's peak.
    pub target_per_s: f64,
    /// Partitions of the topic.
    pub partitions: i32,
}

/// The pipeline's settings chapter 10's exercise chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Most messages the balance service applies in one database transaction, and commits
    /// the offsets of at once (1..=10,000).
    pub batch_size: usize,
    /// How long the publisher waits to fill a produce request, ms (0..=1,000).
    pub linger_ms: u32,
    /// Consumers in the balance service's group (1..=the topic's partitions).
    pub consumers: u32,
}

/// Chapter 01: the lag status of a partition over a window of samples.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/01-offset-lag/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/01-offset-lag.rs")]
pub mod lag_status;

/// Chapter 02: the key of an event's message.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/02-keys-keep-order/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/02-keys-keep-order.rs")]
pub mod message_key;

/// Chapter 04: which events of a batch to apply.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/04-idempotent-consumer/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/04-idempotent-consumer.rs")]
pub mod events_to_apply;

/// Chapter 03: the order of a batch's two steps.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/03-commit-after-database/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/03-commit-after-database.rs")]
pub mod batch_steps;

/// Chapter 05: the publisher's producer settings.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/05-reliable-producer/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/05-reliable-producer.rs")]
pub mod producer_settings;

/// Chapter 06: what to do with a message that cannot be processed.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/06-dead-letter-topics/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/06-dead-letter-topics.rs")]
pub mod on_unprocessable;

/// Chapter 07: how many partitions the topic is created with.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/07-overpartition/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/07-overpartition.rs")]
pub mod partitions_for;

/// Chapter 09: the producer's acks on three brokers.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/09-replication/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/09-replication.rs")]
pub mod acks;

/// Chapter 10: the pipeline's settings for ten times today's load.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/10-load-test/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/10-load-test.rs")]
pub mod tune;

/// Chapter 11: the consumer group of a second service on the trades topic.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/11-consumer-groups/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/11-consumer-groups.rs")]
pub mod notification_group;

/// Chapter 08: when the publisher may move to the new topic.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/08-cutover-runbook/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/08-cutover-runbook.rs")]
pub mod ready_to_switch;

/// Chapter 12: when the balance service moves its consumers to the new cluster.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/12-cluster-migration/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/12-cluster-migration.rs")]
pub mod may_move_consumers;

/// Chapter 13: how long a deployment may keep the balance service down.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/13-retention/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/13-retention.rs")]
pub mod deploy_window_ms;

/// Chapter 14: what the order desk does with an order.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/14-order-placement/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/14-order-placement.rs")]
pub mod decide_order;

/// Chapter 15: what the outbox relay reads next.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/15-outbox-relay/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/15-outbox-relay.rs")]
pub mod next_read;

/// Chapter 16: what the balance service does after a database call failed.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/16-database-outage/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/16-database-outage.rs")]
pub mod after_database_failure;

/// Chapter 17: what a consumer does with a message of a newer schema version.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/17-schema-evolution/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/17-schema-evolution.rs")]
pub mod on_newer_version;

/// Chapter 18: how much the balance service's consumer fetches ahead.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/18-consumer-memory/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/18-consumer-memory.rs")]
pub mod prefetch_limits;

/// Chapter 19: the partitions and offsets a "batch received" log line names.
#[cfg_attr(not(feature = "solutions"), path = "../../../chapters/19-stuck-consumer/exercise.rs")]
#[cfg_attr(feature = "solutions", path = "../../../chapters/solutions/19-stuck-consumer.rs")]
pub mod held_ranges;
