//! The balance service: one consumer of a consumer group.
//!
//! Delivery guarantee: at least once from the broker, exactly once on balances. A batch
//! (at most `batch_size` messages) is decoded, its bad messages are dead-lettered and
//! acknowledged, its events are applied in one database transaction with their apply-log
//! rows, and only then are its offsets committed. A crash anywhere before the offset
//! commit redelivers the batch, and the apply log skips what was already applied. On a
//! rebalance nothing is committed for work that was not applied, because commits only
//! ever follow an apply. In-flight work is bounded by the batch.

use crate::dlq::{self, Rejection};
use crate::journal::{Journal, JournalEntry};
use crate::{HEADER_INTENDED_AT_NS, StreamError, base_config, lag};
use rand::SeedableRng;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::LatencyRecorder;
use tradeflow_domain::{Event, decode_up_to};
use tradeflow_store::{ApplyInput, Dedup, Store, now_ns};

/// The consumer's `fetch.wait.max.ms`: the longest a fetch waits for data (the mock cluster
/// waits all of it on an empty fetch), and so part of every event's latency.
pub const FETCH_WAIT_MAX_MS: u32 = 10;

/// The consumer's prefetch bound, `queued.max.messages.kbytes`. With [`FETCH_MAX_BYTES`]
/// it kept the balance service's process at 47 to 58 MB draining a backlog, where
/// librdkafka's defaults took it to 85 to 107 MB, at a cost: the backlog drained some 20%
/// slower (`experiment consumer-memory`, debug build, SQLite, mock and tansu, seeds 1 and
/// 2). Measured beside it: 6 MiB queued gave 55 to 62 MB within 8% of the defaults' rate,
/// 8 MiB 58 to 64 MB at their rate, 16 MiB 83 to 86 MB.
pub const QUEUED_MAX_KBYTES: u32 = 4_096;
/// The most one fetch response may carry, `fetch.max.bytes` (librdkafka's default is
/// 50 MB): a response lands in the queue whole, overshooting its bound by up to this.
pub const FETCH_MAX_BYTES: u32 = 2 << 20;

/// How much a consumer fetches ahead of the batch in hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefetch {
    /// The service's bound: [`QUEUED_MAX_KBYTES`] queued, fetches of at most
    /// [`FETCH_MAX_BYTES`].
    #[default]
    Bounded,
    /// librdkafka's defaults (`queued.max.messages.kbytes` 65536, `fetch.max.bytes` 50 MB):
    /// the consumer-memory lesson's comparison.
    LibrdkafkaDefaults,
    /// Chapter 18's exercise decides (`tradeflow_exercises::prefetch_limits`).
    Exercise,
}

impl Prefetch {
    /// The name the command line and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefetch::Bounded => "bounded",
            Prefetch::LibrdkafkaDefaults => "librdkafka_defaults",
            Prefetch::Exercise => "exercise",
        }
    }
}

/// Largest batch one transaction may hold.
pub const SERVICE_BATCH_MAX: usize = 10_000;
/// Pause after a consumer error before reading again.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Without a dead-letter topic, how long a consumer waits before it reads a message it
/// could not process again.
pub const POISON_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a consumer told to crash lives on after it received its batch: the time its
/// database transaction would have taken. Offsets that the policy commits early (the
/// auto-commit timer, a commit sent before the database commit) land meanwhile, as they
/// would in a real crash.
pub const CRASH_LINGER: Duration = Duration::from_millis(300);
/// How long a consumer waits for its group's committed offset of a newly assigned
/// partition (once per partition and assignment), blocking its loop meanwhile.
pub const COMMITTED_TIMEOUT: Duration = Duration::from_secs(2);
/// The auto-commit interval of the `auto` policy: short, so that the crash experiment
/// shows its effect in seconds.
pub const AUTO_COMMIT_INTERVAL_MS: u32 = 100;
/// How long, at most, a consumer lets the offsets of batches it applied gather before it
/// commits them (after-database policy): one OffsetCommit for every batch applied in that
/// time instead of one per batch: fewer requests to the group coordinator, which answers
/// the members' heartbeats too (the README's Kafka tail). Zero: commit after every batch.
///
/// A consumer that leaves while a new member's rebalance has begun loses what still
/// gathers (its last commit is refused, or dropped as an earlier assignment's), so whatever
/// hands its partitions over on purpose waits for the group's committed offsets first (the
/// schema-evolution upgrade: see `timeline.rs`); a crash redelivers up to this much more,
/// which the apply log skips.
///
/// Zero by default, gathering opt-in: with 100 ms (and the upgrade fixed), a CI rehearsal
/// of 2026-12-03 failed chapter 19's solution on the mock (seed 1: the frozen member's
/// partitions' lag did not come out above every other's; the others' commits had been
/// refused with REBALANCE_IN_PROGRESS). Run again by hand with 100 ms (seed 1, three side
/// by side) it passed 3 of 3, so whether gathering caused it is not known: opt-in until a
/// whole CI rehearsal passes with it.
pub const COMMIT_INTERVAL_DEFAULT: Duration = Duration::ZERO;

/// How long one database call of the balance service may take before it is given up and
/// counted as a failure (a blackholed connection, a lock that is not let go). Long against
/// a batch's transaction on a loaded machine; a batch given up this way that did commit is
/// skipped by the apply log when it is tried again.
pub const DATABASE_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The wait after a batch's first failed database call; doubled after each further one,
/// up to [`DATABASE_RETRY_MAX`], each wait drawn uniformly between half and all of it
/// (jitter, so that the consumers of a group do not come back in step).
pub const DATABASE_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a batch while the database is away.
pub const DATABASE_RETRY_MAX: Duration = Duration::from_secs(3);
/// Failed database calls in a row after which the circuit breaker opens. From the first
/// failure the consumer pauses its partitions (it fetches nothing more, and goes on
/// polling, so it stays in its group); once open, it tries the batch in hand once per
/// backoff until the database answers.
pub const BREAKER_OPENS_AFTER: u32 = 3;

/// The longest pause chapter 16's exercise may ask for between two tries.
pub const EXERCISE_WAIT_MAX: Duration = Duration::from_secs(60);

/// How the balance service meets a database that fails or does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRetry {
    /// A timeout on every call, retries with exponential backoff and jitter, and a circuit
    /// breaker that pauses the partitions after [`BREAKER_OPENS_AFTER`] failures in a row:
    /// few calls while the database is away, no rebalance, the batch applied when it is back.
    #[default]
    Backoff,
    /// The database-outage lesson's naive consumer: tries the batch again at once, for
    /// ever, with no timeout, and polls nothing meanwhile.
    AtOnce,
    /// Chapter 16's exercise decides after each failure: again at once, or paused for a
    /// while (each call keeps its timeout).
    Exercise,
}

impl DatabaseRetry {
    /// The name the records use.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseRetry::Backoff => "backoff",
            DatabaseRetry::AtOnce => "at_once",
            DatabaseRetry::Exercise => "exercise",
        }
    }
}

/// When a consumer commits its offsets. Only `AfterDatabase` is safe; the others exist
/// for the experiments and property tests that show why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitPolicy {
    /// After the batch's database transaction commits: a crash means a redelivery, which
    /// the apply log skips.
    #[default]
    AfterDatabase,
    /// `enable.auto.commit=true`: librdkafka commits the offsets of delivered messages on
    /// a timer, applied or not. A crash loses what was delivered but not applied.
    Auto,
    /// Offsets committed as soon as a batch is received, before its database transaction.
    /// A crash loses the batch.
    BeforeDatabase,
    /// In the order the learner's chapter 03 exercise returns.
    Exercise,
}

impl CommitPolicy {
    /// The name the command line and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitPolicy::AfterDatabase => "after_database",
            CommitPolicy::Auto => "auto",
            CommitPolicy::BeforeDatabase => "before_database",
            CommitPolicy::Exercise => "exercise",
        }
    }

    /// The policy a consumer follows: the exercise's order of a batch's two steps as the
    /// policy it amounts to; any other policy as it is.
    pub fn resolved(self) -> Result<CommitPolicy, StreamError> {
        use tradeflow_exercises::BatchStep::{ApplyToDatabase, CommitOffsets};
        match (self, tradeflow_exercises::batch_steps::batch_steps()) {
            (CommitPolicy::Exercise, [ApplyToDatabase, CommitOffsets]) => Ok(CommitPolicy::AfterDatabase),
            (CommitPolicy::Exercise, [CommitOffsets, ApplyToDatabase]) => Ok(CommitPolicy::BeforeDatabase),
            (CommitPolicy::Exercise, steps) => Err(StreamError::Config {
                reason: format!("chapter 03's batch_steps must name each step once, in some order; it returned {steps:?}"),
            }),
            (policy, _) => Ok(policy),
        }
    }
}

/// What the host asks of a running consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep consuming.
    Run,
    /// Stop reading but stay in the group (heartbeats go on in librdkafka's thread).
    Hold,
    /// Leave the group cleanly and return.
    Stop,
    /// Die after receiving the next batch, before its database commit (an experiment's
    /// crash; the host starts a new consumer to play the restarted process).
    CrashMidBatch,
}

/// The balance service's knobs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// The topic of trade events.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// This consumer's name (the applier in the apply log).
    pub name: String,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long to wait to fill a batch once its first message is in.
    pub fill_wait: Duration,
    /// `fetch.wait.max.ms`: how long a fetch waits for messages before the broker answers
    /// it empty ([`FETCH_WAIT_MAX_MS`] unless a run says otherwise).
    pub fetch_wait_max_ms: u32,
    /// `session.timeout.ms`: how long the group waits for a silent member.
    pub session_timeout_ms: u32,
    /// When offsets are committed (experiments change it; nothing else should).
    pub commit: CommitPolicy,
    /// How long applied batches' offsets may gather before they are committed
    /// ([`COMMIT_INTERVAL_DEFAULT`]; zero: after every batch). After-database policy only.
    pub commit_interval: Duration,
    /// Whether a message that cannot be processed goes to the dead-letter topic. Without
    /// one, the consumer retries it forever and its partition is stuck behind it.
    pub dead_letter: bool,
    /// Where to write what the consumer does, for a host watching the process from
    /// outside (see [`crate::journal`]); `None` for consumers inside the host.
    pub journal: Option<Arc<Journal>>,
    /// A pause before each batch's database transaction: a database under load, for the
    /// lessons whose fault must land while a batch is held (zero elsewhere).
    pub apply_delay: Duration,
    /// Whether applying skips what the apply log holds (always, but for the naive consumer
    /// of the idempotence lesson).
    pub dedup: Dedup,
    /// Whether a batch whose partitions were revoked while it was held is dropped (and its
    /// offsets never committed) instead of applied: always, but for the lesson that shows
    /// what a zombie does without it.
    pub fencing: bool,
    /// Whether a message whose key is not its account is refused (dead-lettered): always,
    /// but for chapter 02, which shows what a wrong key does to order.
    pub key_check: bool,
    /// Whether chapter 06's exercise decides what happens to a message that cannot be
    /// processed (retry it later, or dead-letter it), instead of `dead_letter`.
    pub poison_exercise: bool,
    /// How a failing database is met (the naive way only in the database-outage lesson).
    pub database_retry: DatabaseRetry,
    /// `max.poll.interval.ms`; `None`: three session timeouts, at least 20 s.
    pub max_poll_interval_ms: Option<u32>,
    /// The newest schema version the consumer reads ([`tradeflow_domain::SCHEMA_VERSION`]
    /// but in the schema-evolution lesson, whose consumers not yet upgraded read 1).
    pub schema_newest: u64,
    /// How much the consumer fetches ahead (bounded but in the consumer-memory lesson).
    pub prefetch: Prefetch,
    /// Whether chapter 17's exercise decides what happens to a message of a version newer
    /// than `schema_newest` (instead of refusing it).
    pub schema_exercise: bool,
    /// `group.instance.id`: static membership. A member that comes back under the same id
    /// within its session timeout gets its partitions back without a rebalance of the
    /// group; `None`: a dynamic member, whose every (re)join rebalances the whole group.
    pub instance_id: Option<String>,
    /// Whether chapter 19's exercise says which partitions and offsets each "batch
    /// received" log line names (instead of each partition's first and last offset).
    pub held_exercise: bool,
    /// Pipelining: whether the consumer fills its next batch while the batch in hand is
    /// triaged and applied (see [`prefetch`]). Off by default in runs and processes (it
    /// fetches only between batches): on SQLite it lowered the ceiling (the README's table:
    /// at 48,000/s no pipelined run kept up, against 3 of 3 without), its consumers queueing
    /// for the one connection instead of filling.
    pub pipeline: bool,
}

impl ServiceConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), StreamError> {
        if self.batch_size == 0 || self.batch_size > SERVICE_BATCH_MAX {
            return Err(StreamError::Config {
                reason: format!("batch size must be 1..={SERVICE_BATCH_MAX}, got {}", self.batch_size),
            });
        }
        if self.topic.is_empty() || self.group.is_empty() {
            return Err(StreamError::Config {
                reason: "topic and group must not be empty".into(),
            });
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.len() > INSTANCE_ID_MAX || id.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))))
        {
            return Err(StreamError::Config {
                reason: format!("group instance id {id:?} must be 1..={INSTANCE_ID_MAX} characters of letters, digits, '.', '_' and '-'"),
            });
        }
        Ok(())
    }

    /// The consumer's `max.poll.interval.ms`: a member that polls less often than this is
    /// taken out of its group.
    pub fn max_poll_interval_ms(&self) -> u32 {
        self.max_poll_interval_ms
            .unwrap_or((self.session_timeout_ms * 3).max(20_000))
            .max(self.session_timeout_ms)
    }

    fn consumer(&self, counters: Arc<ServiceCounters>) -> Result<StreamConsumer<ServiceContext>, StreamError> {
        let auto = self.commit == CommitPolicy::Auto;
        let mut config = base_config(&self.bootstrap);
        let limits = match self.prefetch {
            // Bounded prefetch: librdkafka queues at most this much ahead of the batch in
            // hand (its default is 64 MB), so in-flight work is bounded in memory too.
            Prefetch::Bounded => Some((QUEUED_MAX_KBYTES, FETCH_MAX_BYTES)),
            Prefetch::LibrdkafkaDefaults => None,
            Prefetch::Exercise => {
                let limits = tradeflow_exercises::prefetch_limits::prefetch_limits();
                Some((limits.queued_max_messages_kbytes, limits.fetch_max_bytes))
            }
        };
        if let Some((queued_kbytes, fetch_bytes)) = limits {
            config
                .set("queued.max.messages.kbytes", queued_kbytes.to_string())
                .set("fetch.max.bytes", fetch_bytes.to_string());
        }
        if let Some(id) = &self.instance_id {
            // Static membership: the broker knows this member by the id across restarts.
            config.set("group.instance.id", id);
        }
        config
            .set("group.id", &self.group)
            .set("client.id", &self.name)
            // Offsets are committed by hand, after the database commit (the `auto` policy
            // exists only to show what goes wrong otherwise).
            .set("enable.auto.commit", auto.to_string())
            .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS.to_string())
            // Only the offsets this service passes to commit are committed; with auto commit,
            // every message handed to the service is, applied or not.
            .set("enable.auto.offset.store", auto.to_string())
            // A group that never committed starts from the first event: nothing is skipped.
            .set("auto.offset.reset", "earliest")
            // How long the group waits for a silent member before moving its partitions.
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.session_timeout_ms / 3).max(100).to_string())
            // The rebalance timeout: how long a rebalance waits for members to rejoin. This
            // loop polls between batches, and a batch takes far less, so a member silent this
            // long is gone; the default (5 minutes) would stall the group that long.
            .set("max.poll.interval.ms", self.max_poll_interval_ms().to_string())
            // The mock cluster waits the whole fetch.wait.max.ms on an empty fetch.
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .create_with_context(ServiceContext {
                name: self.name.clone(),
                group: self.group.clone(),
                counters,
                generation: AtomicU64::new(0),
                journal: self.journal.clone(),
                owned: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            })
            .map_err(|error| StreamError::kafka(format!("creating consumer {} of group {}", self.name, self.group), error))
    }
}

/// Counters shared by the consumers of a run.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Events applied.
    pub applied: AtomicU64,
    /// Messages skipped because the apply log already held their event.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Messages whose offsets were committed.
    pub committed: AtomicU64,
    /// Offset commit requests sent after the database (one per commit interval at most).
    pub offset_commits: AtomicU64,
    /// Partitions currently assigned, summed over consumers.
    pub assigned_partitions: AtomicI64,
    /// Rebalances seen.
    pub rebalances: AtomicU64,
    /// Latest commit, ns since the epoch.
    pub last_commit_ns: AtomicI64,
    /// Consumers that crashed mid-batch.
    pub crashes: AtomicU64,
    /// Where the consumers' time went, in µs summed over consumers (see [`Phase`]).
    pub phase_us: [AtomicU64; Phase::ALL.len()],
    /// Messages dropped by the fence: held while their partitions were revoked.
    pub fenced: AtomicU64,
    /// Messages dropped from a batch still filling when a rebalance changed the
    /// consumer's partitions: they were read under the assignment before it.
    pub dropped_at_rebalance: AtomicU64,
    /// Each crash or freeze of a consumer as it happened: which consumer, holding what.
    pub fault_log: std::sync::Mutex<Vec<FaultSeen>>,
    /// Times a consumer without a dead-letter topic went back to a message it could not
    /// process.
    pub poison_retries: AtomicU64,
    /// Messages the broker no longer had when a consumer got to them: offsets between the
    /// one a consumer was to read next (its committed offset after an assignment, or the
    /// message after its last one) and the one it was handed. On a topic without
    /// transactions or compaction, such a gap is retention deleting messages before they
    /// were applied; librdkafka's `auto.offset.reset` then skips them with only a log line.
    pub skipped: AtomicU64,
    /// Failed attempts per message (partition, offset) that cannot be processed, for the
    /// rule that decides when to give up on one; at most [`POISON_TRACKED_MAX`] messages.
    pub poison_attempts: std::sync::Mutex<BTreeMap<(i32, i64), u32>>,
    /// Partitions each running member holds, by its name: set at each assignment,
    /// lowered at each revocation, forgotten when the member ends.
    pub partitions_by_member: std::sync::Mutex<BTreeMap<String, i64>>,
    /// Which partitions each member running in a process of its own holds, by its name, as
    /// its journal last said, and since when (the journal line that changed them);
    /// forgotten when the member ends.
    pub owned_by_member: std::sync::Mutex<BTreeMap<String, (Vec<i32>, std::time::Instant)>>,
    /// Database calls made to apply a batch (each try counts, the failed ones included).
    pub database_attempts: AtomicU64,
    /// Of those, the ones that failed or timed out because the database was out of reach.
    pub database_failures: AtomicU64,
    /// Times a consumer's circuit breaker opened (it paused its partitions).
    pub breaker_opened: AtomicU64,
    /// Messages a pipelined consumer received while the batch before them was being
    /// triaged and applied (see [`prefetch`]).
    pub prefetched: AtomicU64,
    /// Times a consumer heard from librdkafka that it had not polled within
    /// `max.poll.interval.ms` and had been taken out of its group.
    pub max_poll_exceeded: AtomicU64,
    /// Messages whose dead letter could not be sent: their partition waited at them and
    /// read them again.
    pub dead_letter_failures: AtomicU64,
    /// Dead letters sent, per error kind: how many, and the first one's reason.
    pub dead_letter_kinds: std::sync::Mutex<BTreeMap<String, (u64, String)>>,
    /// The highest peak resident set (`VmHWM`) of the members that are processes of their
    /// own, read as each was stopped, in kB.
    pub peak_rss_kb: AtomicU64,
    /// Messages passed over by chapter 17's tolerant reader: their type unknown to it.
    pub passed_over: AtomicU64,
    /// Assignment changes (assignments and revocations) each member saw, by its name.
    pub changes_by_member: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Each restart of a member: its name, and `changes_by_member` just before it.
    pub restart_marks: std::sync::Mutex<Vec<(String, BTreeMap<String, u64>)>>,
}

/// Longest `group.instance.id` accepted (Kafka's limit for a group member's id is far
/// higher; a longer one here is a mistake).
pub const INSTANCE_ID_MAX: usize = 249;

/// Most messages whose failed attempts are remembered at once; past it, the count starts
/// over (a message retried then gets a few more attempts, never fewer).
pub const POISON_TRACKED_MAX: usize = 10_000;

impl ServiceCounters {
    /// Counts one more failed attempt at a message and returns how many there were.
    fn failed_attempt(&self, partition: i32, offset: i64) -> u32 {
        let Ok(mut attempts) = self.poison_attempts.lock() else { return 1 };
        if attempts.len() >= POISON_TRACKED_MAX && !attempts.contains_key(&(partition, offset)) {
            attempts.clear();
        }
        let attempt = attempts.entry((partition, offset)).or_insert(0);
        *attempt += 1;
        *attempt
    }
}

/// What happened to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenKind {
    /// It crashed (or its process was killed).
    Crash,
    /// Its process was frozen.
    Freeze,
}

/// A consumer that crashed or was frozen, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSeen {
    /// What happened.
    pub kind: SeenKind,
    /// The consumer's name (`consumer-0`).
    pub consumer: String,
    /// Messages it held, received and not applied.
    pub messages: usize,
    /// What the crash was, in words, where the host saw more than the count (a process's
    /// exit signal, what of its batch was committed).
    pub effect: Option<String>,
    /// Of the messages held, those whose offsets the broker had confirmed committed (lost
    /// to a consumer that resumes from the committed offsets); known for processes only.
    pub committed: Option<u64>,
    /// For a freeze: partitions the group gave the other members while it lasted.
    pub partitions_moved: Option<i64>,
    /// For a freeze: what the frozen process owned and had last logged.
    pub stuck: Option<Stuck>,
}

/// A consumer process frozen (stuck): what it owned, when, and what its logs said it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The partitions it owned when it froze.
    pub owned: Vec<i32>,
    /// When it froze, and when it was woken or killed.
    pub from: std::time::Instant,
    /// See `from`.
    pub to: std::time::Instant,
    /// The offsets of the batch it held, per partition ([`held_offsets`]).
    pub held: String,
    /// The topic and offsets its last "batch received" log line named, if it wrote one.
    pub logged: Option<(String, String)>,
}

impl ServiceCounters {
    /// `member` was assigned `partitions` more (an assignment) or, with a negative count,
    /// lost them (a revocation). A revocation after the member was forgotten changes
    /// nothing: a consumer closing after its loop ended is no member any more.
    pub fn member_assigned(&self, member: &str, partitions: i64) {
        let Ok(mut members) = self.partitions_by_member.lock() else {
            return;
        };
        match members.get_mut(member) {
            Some(held) => *held += partitions,
            None if partitions >= 0 => {
                members.insert(member.to_owned(), partitions);
            }
            None => {}
        }
    }

    /// `member` (running in a process of its own) owns `partitions` now, as its journal says.
    pub fn member_owns(&self, member: &str, partitions: &[i32]) {
        if let Ok(mut owned) = self.owned_by_member.lock()
            && owned.get(member).is_none_or(|(held, _)| held.as_slice() != partitions)
        {
            owned.insert(member.to_owned(), (partitions.to_vec(), std::time::Instant::now()));
        }
    }

    /// What each member other than `member` holds, and since when, by its name.
    pub fn others_owning(&self, member: &str) -> Vec<(String, Vec<i32>, std::time::Instant)> {
        let Ok(owned) = self.owned_by_member.lock() else {
            return Vec::new();
        };
        owned
            .iter()
            .filter(|(name, _)| name.as_str() != member)
            .map(|(name, (held, since))| (name.clone(), held.clone(), *since))
            .collect()
    }

    /// How many of `partitions` members other than `member` own now.
    pub fn owned_by_others(&self, member: &str, partitions: &[i32]) -> i64 {
        let Ok(owned) = self.owned_by_member.lock() else { return 0 };
        let others: std::collections::BTreeSet<i32> = owned
            .iter()
            .filter(|(name, _)| name.as_str() != member)
            .flat_map(|(_, (held, _))| held.iter().copied())
            .collect();
        partitions.iter().filter(|partition| others.contains(partition)).count() as i64
    }

    /// `member` saw its assignment change (an assignment or a revocation).
    pub fn member_changed(&self, member: &str) {
        if let Ok(mut changes) = self.changes_by_member.lock() {
            *changes.entry(member.to_owned()).or_insert(0) += 1;
        }
    }

    /// The assignment changes each member saw so far, by its name.
    pub fn changes_by_member(&self) -> BTreeMap<String, u64> {
        self.changes_by_member.lock().map(|changes| changes.clone()).unwrap_or_default()
    }

    /// `member` is about to be started again: marks what every member had seen by then.
    pub fn mark_restart(&self, member: &str) {
        let seen = self.changes_by_member();
        if let Ok(mut marks) = self.restart_marks.lock() {
            marks.push((member.to_owned(), seen));
        }
    }

    /// `member` ended: it holds nothing any more.
    pub fn member_gone(&self, member: &str) {
        if let Ok(mut members) = self.partitions_by_member.lock() {
            members.remove(member);
        }
        if let Ok(mut owned) = self.owned_by_member.lock() {
            owned.remove(member);
        }
    }

    /// The partitions each of `running` members holds, most first, once the group has
    /// settled: every running member has had its assignment and together they hold all
    /// `partitions`. `None` while a rebalance is going on.
    pub fn settled_assignment(&self, running: usize, partitions: i64) -> Option<Vec<i64>> {
        let members = self.partitions_by_member.lock().ok()?;
        if members.len() != running || members.values().sum::<i64>() != partitions {
            return None;
        }
        let mut held: Vec<i64> = members.values().copied().collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        Some(held)
    }

    /// Messages accounted for: applied, skipped as duplicates, dead-lettered, or gone from
    /// the broker before they were read (`skipped`, which the checker counts as lost).
    pub fn processed(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
    }
}

/// Logs rebalances and keeps the assignment count.
pub struct ServiceContext {
    name: String,
    group: String,
    counters: Arc<ServiceCounters>,
    /// Assignments and revocations this consumer has seen: a change tells the loop that
    /// its partitions' read positions came from the committed offsets again.
    generation: AtomicU64,
    journal: Option<Arc<Journal>>,
    /// The partitions this consumer owns now.
    owned: std::sync::Mutex<std::collections::BTreeSet<i32>>,
}

impl ServiceContext {
    /// Takes note of an assignment (`assigned`) or a revocation of `partitions`.
    fn own(&self, partitions: &TopicPartitionList, assigned: bool) {
        if let Ok(mut owned) = self.owned.lock() {
            for partition in partition_numbers(partitions) {
                if assigned {
                    owned.insert(partition);
                } else {
                    owned.remove(&partition);
                }
            }
        }
    }

    fn journal_assignment(&self) {
        if let Some(journal) = &self.journal {
            journal.write(&JournalEntry::Assigned {
                partitions: self.counters.assigned_partitions.load(Ordering::Relaxed),
                owned: self.owned.lock().map(|owned| owned.iter().copied().collect()).unwrap_or_default(),
            });
        }
    }
}

impl ClientContext for ServiceContext {}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.generation.fetch_add(1, Ordering::Relaxed);
            // Nothing to commit here: this consumer commits right after each apply, so a
            // revoked partition has no applied-but-uncommitted work.
            self.counters
                .assigned_partitions
                .fetch_sub(i64::from(partitions.count() as i32), Ordering::Relaxed);
            self.counters.member_assigned(&self.name, -i64::from(partitions.count() as i32));
            self.own(partitions, false);
            self.counters.member_changed(&self.name);
            tracing::info!(consumer = %self.name, messaging.consumer.group.name = %self.group, partitions = ?partition_numbers(partitions), "partitions revoked");
            self.journal_assignment();
        }
    }

    /// Journals the commits the broker confirmed. librdkafka reports here the auto-commit
    /// timer's commits; the asynchronous commit after each batch was never reported here
    /// (seen 2026-12-01 on the mock: no call in a run of ten batches), so a journal's
    /// `Committed` entries are those of the auto and before-database policies, which are
    /// what a crash's "held and committed" count needs.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        let Some(journal) = &self.journal else { return };
        if result.is_err() {
            return;
        }
        journal.write(&JournalEntry::Committed {
            offsets: committed_offsets(offsets),
        });
    }

    fn post_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.counters.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.generation.fetch_add(1, Ordering::Relaxed);
                // librdkafka keeps a partition this client paused paused through a revoke
                // and a new assignment of it (unlike Java's consumer): one paused while the
                // database was away and handed back by a rebalance would never be fetched
                // again. An assigned partition starts fetching; a breaker still holding
                // pauses it again after its wait.
                if let Err(error) = consumer.resume(partitions) {
                    tracing::warn!(consumer = %self.name, %error, "resuming the partitions just assigned");
                }
                self.counters
                    .assigned_partitions
                    .fetch_add(i64::from(partitions.count() as i32), Ordering::Relaxed);
                self.counters.member_assigned(&self.name, i64::from(partitions.count() as i32));
                self.own(partitions, true);
                self.counters.member_changed(&self.name);
                tracing::info!(consumer = %self.name, messaging.consumer.group.name = %self.group, partitions = ?partition_numbers(partitions), "partitions assigned");
                self.journal_assignment();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.name, messaging.consumer.group.name = %self.group, %error, "rebalance error")
            }
        }
    }
}

/// The offsets of a commit that the broker took, per partition.
fn committed_offsets(offsets: &TopicPartitionList) -> Vec<(i32, i64)> {
    offsets
        .elements()
        .iter()
        .filter(|element| element.error().is_ok())
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect()
}

fn partition_numbers(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions.elements().iter().map(|element| element.partition()).collect()
}

/// Runs one consumer of the balance service until `stop` turns true (or an error that
/// must not be skipped). Returns the latencies it measured, from each event's intended
/// send time to the commit of its balance update.
#[tracing::instrument(skip_all, fields(consumer = %config.name, messaging.consumer.group.name = %config.group))]
pub async fn run_service(
    store: Store,
    config: ServiceConfig,
    mut stop: watch::Receiver<bool>,
    counters: Arc<ServiceCounters>,
) -> Result<LatencyRecorder, StreamError> {
    let (control, control_receiver) = watch::channel(Control::Run);
    let service = run_controlled(store, config, control_receiver, counters);
    tokio::pin!(service);
    loop {
        tokio::select! {
            result = &mut service => return result,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    control.send_replace(Control::Stop);
                    return service.await;
                }
            }
        }
    }
}

/// Forgets a member's partitions when its loop ends, however it ends.
struct Membership {
    counters: Arc<ServiceCounters>,
    name: String,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.counters.member_gone(&self.name);
    }
}

/// A consumer of the group, as [`join`] makes it.
struct Joined {
    /// Subscribed to the topic. Shared with the blocking pool: librdkafka's blocking calls
    /// (committed offsets, seek, a synchronous commit) run there, never on an async worker.
    consumer: Arc<StreamConsumer<ServiceContext>>,
    /// Where messages that cannot be processed go.
    dead_letters: rdkafka::producer::FutureProducer,
    /// However the consumer's loop ends, the member holds nothing once it is gone.
    _membership: Membership,
}

/// Makes the consumer, subscribes it and makes its dead-letter producer.
fn join(config: &ServiceConfig, counters: &Arc<ServiceCounters>) -> Result<Joined, StreamError> {
    let _membership = Membership {
        counters: counters.clone(),
        name: config.name.clone(),
    };
    let consumer = Arc::new(config.consumer(counters.clone())?);
    consumer
        .subscribe(&[&config.topic])
        .map_err(|error| StreamError::kafka(format!("subscribing to {}", config.topic), error))?;
    Ok(Joined {
        consumer,
        dead_letters: dlq::producer(&config.bootstrap)?,
        _membership,
    })
}

/// A part of a consumer's loop, timed by wall clock so that a run can say where the
/// consumers' time went: waiting (on a partition or the database) shows as time, not CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a batch's first message: nothing to do (the wait for the consumer's
    /// very first message, its group's join, is not counted).
    Waiting,
    /// Filling a batch after its first message, up to the fill wait.
    Filling,
    /// Decoding the batch's messages and dead-lettering those that cannot be applied.
    Triage,
    /// Waiting for a connection that can write, before the batch's transaction: on SQLite
    /// the process's one connection, which its consumers take in turn.
    Queued,
    /// The batch's database transaction (and its retries while the database is away).
    Applying,
}

impl Phase {
    /// Every phase, in the order of [`ServiceCounters::phase_us`].
    pub const ALL: [Phase; 5] = [Phase::Waiting, Phase::Filling, Phase::Triage, Phase::Queued, Phase::Applying];

    /// The phase's name in the run record.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Filling => "filling",
            Phase::Triage => "triage",
            Phase::Queued => "queued",
            Phase::Applying => "applying",
        }
    }

    /// Adds the time since `since` to this phase and returns now.
    fn add(self, counters: &ServiceCounters, since: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.add_time(counters, now - since);
        now
    }

    fn add_time(self, counters: &ServiceCounters, time: Duration) {
        counters.phase_us[self as usize].fetch_add(time.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Runs one consumer of the balance service under a host's [`Control`]: until it is told
/// to stop, or until it crashes mid-batch when told to.
#[tracing::instrument(skip_all, fields(consumer = %config.name, messaging.consumer.group.name = %config.group))]
pub async fn run_controlled(
    store: Store,
    mut config: ServiceConfig,
    mut control: watch::Receiver<Control>,
    counters: Arc<ServiceCounters>,
) -> Result<LatencyRecorder, StreamError> {
    config.validate()?;
    config.commit = config.commit.resolved()?;
    let Joined {
        consumer,
        dead_letters,
        _membership,
    } = join(&config, &counters)?;
    let mut latency = LatencyRecorder::new();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(config.batch_size);
    let mut positions = Positions::default();
    // Messages received for the next batch while the one in hand was processed (by the
    // prefetch, and while waiting for the database): shared by the two, which run
    // together in this task and never hold the lock across an await.
    let carried = std::sync::Mutex::new(Carried::default());
    // Set by the batch in hand when its first database call fails (the prefetch stops,
    // and the breaker's wait, which pauses the partitions, does the polling from then
    // on) or before it seeks a partition back to a message it could not process.
    let (stop_prefetch, _) = watch::channel(false);
    let mut uncommitted = Uncommitted::default();
    let mut batches = 0;
    while *control.borrow() != Control::Stop {
        if *control.borrow() == Control::Hold {
            // What it applied is committed before it stops reading.
            uncommitted.flush_before_leaving(&consumer, &config, &counters).await;
            if control.changed().await.is_err() {
                break;
            }
            continue;
        }
        // The assignment the batch's messages are read under; a rebalance during a
        // receive ends it (see `receive`).
        let mut generation = consumer.context().generation.load(Ordering::Relaxed);
        let waiting_since = std::time::Instant::now();
        // When the batch's first message came in: its fill wait runs from then.
        let mut first_at = lock(&carried).take_into(&consumer, &mut batch, config.batch_size);
        if batch.is_empty() {
            let first = tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Stop leaves at once; a crash waits for the next batch, so that it
                    // lands mid-batch.
                    continue;
                }
                () = uncommitted.due(config.commit_interval) => {
                    // Idle: what the last batches applied is committed now, not when the
                    // next message comes.
                    uncommitted.flush(&consumer, &config, &counters);
                    continue;
                }
                received = consumer.recv() => received,
            };
            match first {
                Ok(message) => {
                    first_at = Some(tokio::time::Instant::now());
                    receive(&consumer, &config, &mut batch, &mut generation, message.detach(), &counters);
                }
                Err(error) => {
                    consumer_error(&error, &counters);
                    tokio::time::sleep(ERROR_BACKOFF).await;
                    continue;
                }
            }
        }
        // The wait for the very first message is the group's join and the publisher's
        // start, not the pipeline's: it is left out.
        let filling_since = if batches > 0 {
            Phase::Waiting.add(&counters, waiting_since)
        } else {
            std::time::Instant::now()
        };
        let fill_until = first_at.unwrap_or_else(tokio::time::Instant::now) + config.fill_wait;
        fill(&consumer, &config, &mut batch, &mut generation, fill_until, &counters).await;
        Phase::Filling.add(&counters, filling_since);
        if batch.is_empty() {
            // Dropped at a rebalance at the end of its fill.
            continue;
        }
        positions.check(&consumer, &config, &batch, &counters).await;
        batches += 1;
        journal_received(&config, batches, &batch);
        if config.commit == CommitPolicy::BeforeDatabase {
            commit_first(&consumer, &config, &batch, &counters).await;
        }
        if *control.borrow() == Control::CrashMidBatch {
            crash(&config, &batch, &counters).await;
            // Closing the consumer commits nothing more than the policy already did.
            crate::leave_group(consumer, &config.name, false).await;
            return Ok(latency);
        }
        // The generation every message of the batch was handed out under (`fill` dropped
        // any read under an earlier one; rebalance callbacks run only inside recv, which
        // the prefetch calls while the batch is processed). A batch dropped by the fence
        // later is read again: a revoked partition's next owner, this consumer included,
        // starts from the committed offset.
        let held = Held {
            number: batches,
            messages: &batch,
            generation,
            received_at: tokio::time::Instant::now(),
            lease: Duration::from_millis(u64::from(config.session_timeout_ms)),
            floor: &mut positions.floor,
        };
        stop_prefetch.send_replace(false);
        let steer = Steer {
            control: &control,
            carried: &carried,
            latency: &mut latency,
            stop_prefetch: &stop_prefetch,
            uncommitted: &mut uncommitted,
        };
        let processing = process(&store, &consumer, &dead_letters, &config, held, &counters, steer);
        if config.pipeline {
            // The next batch fills while this one is triaged and applied; it is applied
            // only after this one, so a partition's events keep their order.
            tokio::pin!(processing);
            tokio::select! {
                processed = &mut processing => processed?,
                () = prefetch(&consumer, &config, &carried, stop_prefetch.subscribe(), &counters) => processing.await?,
            }
        } else {
            processing.await?;
        }
        batch.clear();
    }
    // Stopped: what was applied is committed before the consumer leaves (a crash, above,
    // leaves it uncommitted, as a killed process would).
    uncommitted.flush_before_leaving(&consumer, &config, &counters).await;
    // A static member keeps its partitions until its session ends (see `leave_group`).
    crate::leave_group(consumer, &config.name, config.instance_id.is_none()).await;
    Ok(latency)
}

/// Fills a batch whose first message is in, until it is full or the fill wait is over
/// (`deadline`: the fill wait after the batch's first message came in).
async fn fill(
    consumer: &StreamConsumer<ServiceContext>,
    config: &ServiceConfig,
    batch: &mut Vec<OwnedMessage>,
    generation: &mut u64,
    deadline: tokio::time::Instant,
    counters: &ServiceCounters,
) {
    while batch.len() < config.batch_size {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => receive(consumer, config, batch, generation, message.detach(), counters),
            Ok(Err(error)) => consumer_error(&error, counters),
            Err(_) => break,
        }
    }
    // A rebalance also runs inside a receive that hands out nothing before the deadline.
    fence_filling(consumer, config, batch, generation, counters);
}

/// Adds a message just received to the batch. `generation` is the assignment the batch's
/// messages were read under: if a rebalance ran inside the receive (its callbacks do),
/// those messages are dropped. A partition revoked is another member's now, and its
/// messages held here would be applied and their offsets committed by a consumer that no
/// longer owns it, behind its new owner's back; a partition kept is read again from its
/// committed offset, so they come again. The batch starts again from this message,
/// handed out under the new assignment. This is the fence of a batch still filling; a
/// batch filled is fenced by [`Held::revoked`].
fn receive(
    consumer: &StreamConsumer<ServiceContext>,
    config: &ServiceConfig,
    batch: &mut Vec<OwnedMessage>,
    generation: &mut u64,
    message: OwnedMessage,
    counters: &ServiceCounters,
) {
    fence_filling(consumer, config, batch, generation, counters);
    batch.push(message);
}

/// Drops what a batch still filling holds when the consumer's partitions changed since
/// `generation` (see [`receive`]), and moves `generation` to the assignment now.
fn fence_filling(
    consumer: &StreamConsumer<ServiceContext>,
    config: &ServiceConfig,
    batch: &mut Vec<OwnedMessage>,
    generation: &mut u64,
    counters: &ServiceCounters,
) {
    let now = consumer.context().generation.load(Ordering::Relaxed);
    if now != *generation {
        *generation = now;
        // Without fencing (lesson-only), they are kept, to show what that costs.
        if config.fencing && !batch.is_empty() {
            tracing::warn!(
                consumer = %config.name,
                messages = batch.len(),
                partitions = ?offset_ranges(batch),
                "the partitions changed while this batch filled: dropping what was read before (a kept partition is read again from its committed offset)"
            );
            counters.dropped_at_rebalance.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        }
    }
}

/// Pipelining: receives the next batch's messages into `carried` while the batch in hand
/// is triaged and applied, as [`fill`] would after it: until a batch is full or the fill
/// wait after its first message is over. It stops early, before it takes another message,
/// when the batch in hand says so (`stop_prefetch`): when it meets a failing database (the
/// consumer then holds its batch with its partitions paused, and only the breaker's wait
/// polls, so that a consumer that retries without polling, the naive database-outage
/// policy, is still seen by its group as stuck), and before it seeks a partition back
/// (what was read ahead of that partition is dropped once the seek is done, and nothing
/// read after it may be). The host drops it when the batch in hand is done. Messages of a
/// partition reassigned meanwhile are dropped by [`Carried::keep`], as a batch filling
/// drops them.
async fn prefetch(
    consumer: &StreamConsumer<ServiceContext>,
    config: &ServiceConfig,
    carried: &std::sync::Mutex<Carried>,
    mut stop_prefetch: watch::Receiver<bool>,
    counters: &ServiceCounters,
) {
    loop {
        let (held, first_at) = {
            let carried = lock(carried);
            (carried.messages.len(), carried.first_at)
        };
        if held >= config.batch_size {
            return;
        }
        let deadline = first_at.map(|at| at + config.fill_wait);
        let received = tokio::select! {
            biased;
            _ = stop_prefetch.wait_for(|stop_prefetch| *stop_prefetch) => return,
            received = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, consumer.recv()).await.ok(),
                    None => Some(consumer.recv().await),
                }
            } => received,
        };
        match received {
            Some(Ok(message)) => {
                lock(carried).keep(consumer, message.detach());
                counters.prefetched.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(error)) => consumer_error(&error, counters),
            None => return,
        }
    }
}

/// Locks the carried messages (a panic elsewhere leaves them usable: each change is whole).
fn lock(carried: &std::sync::Mutex<Carried>) -> std::sync::MutexGuard<'_, Carried> {
    carried.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Logs an error the consumer handed out instead of a message, and counts the one that
/// says the member was taken out of its group for not polling in time.
fn consumer_error(error: &KafkaError, counters: &ServiceCounters) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PollExceeded) {
        counters.max_poll_exceeded.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "this consumer did not poll within max.poll.interval.ms and was taken out of its group: its partitions went to the others");
    } else {
        tracing::warn!(%error, "consumer error");
    }
}

/// Messages a consumer received for its next batch while it processed the one in hand:
/// read ahead by the pipeline's [`prefetch`], or received while it waited for its database
/// with the circuit breaker open (from partitions assigned to it meanwhile, before it
/// paused them too), in the order received. They start its next batch, unless its
/// partitions changed hands since, in which case every partition is read again from its
/// committed offset and they are dropped.
#[derive(Default)]
struct Carried {
    messages: Vec<OwnedMessage>,
    generation: u64,
    /// When the first of `messages` came in.
    first_at: Option<tokio::time::Instant>,
}

impl Carried {
    fn keep(&mut self, consumer: &StreamConsumer<ServiceContext>, message: OwnedMessage) {
        let generation = consumer.context().generation.load(Ordering::Relaxed);
        if generation != self.generation {
            self.messages.clear();
            self.generation = generation;
        }
        if self.messages.is_empty() {
            self.first_at = Some(tokio::time::Instant::now());
        }
        self.messages.push(message);
    }

    /// Moves up to `room` carried messages of the current generation into `batch`, and
    /// says when the first of them came in (`None`: none moved).
    fn take_into(
        &mut self,
        consumer: &StreamConsumer<ServiceContext>,
        batch: &mut Vec<OwnedMessage>,
        room: usize,
    ) -> Option<tokio::time::Instant> {
        if self.generation != consumer.context().generation.load(Ordering::Relaxed) {
            self.messages.clear();
            self.first_at = None;
        }
        let taken = self.messages.len().min(room.saturating_sub(batch.len()));
        if taken == 0 {
            return None;
        }
        let first_at = self.first_at;
        batch.extend(self.messages.drain(..taken));
        // What is left came in after the messages taken: its wait starts now.
        self.first_at = (!self.messages.is_empty()).then(tokio::time::Instant::now);
        first_at
    }

    /// Drops the messages of `partition` at or after `offset`: the consumer went back
    /// there, and will receive them again in order.
    fn forget_from(&mut self, partition: i32, offset: i64) {
        self.messages
            .retain(|message| message.partition() != partition || message.offset() < offset);
        if self.messages.is_empty() {
            self.first_at = None;
        }
    }
}

/// What a batch's processing needs of the loop around it: the host's control (a consumer
/// told to stop while it waits for the database leaves with the batch unapplied) and where
/// messages received meanwhile go.
struct Steer<'a> {
    control: &'a watch::Receiver<Control>,
    carried: &'a std::sync::Mutex<Carried>,
    /// The consumer's latencies: each applied event's, from its intended send time.
    latency: &'a mut LatencyRecorder,
    /// Stops the [`prefetch`]: set when the batch's first database call fails, and before
    /// a partition is sought back.
    stop_prefetch: &'a watch::Sender<bool>,
    /// The offsets applied and not yet committed.
    uncommitted: &'a mut Uncommitted,
}

/// The cooperative crash of the in-process tests: lingers as long as a transaction would
/// (so that what the policy commits early lands) and records the crash.
async fn crash(config: &ServiceConfig, batch: &[OwnedMessage], counters: &ServiceCounters) {
    tracing::warn!(
        messages = batch.len(),
        commit = config.commit.as_str(),
        "crashing mid-batch, before the database commit"
    );
    tokio::time::sleep(CRASH_LINGER).await;
    counters.crashes.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut log) = counters.fault_log.lock() {
        log.push(FaultSeen {
            kind: SeenKind::Crash,
            consumer: config.name.clone(),
            messages: batch.len(),
            effect: None,
            committed: None,
            partitions_moved: None,
            stuck: None,
        });
    }
}

/// Logs and journals a batch received: its topic and, per partition, its first and last
/// offset. The log line (at `info`) is what names a stuck consumer's partitions and
/// offsets to whoever must restart it: the last one it wrote is what it holds.
fn journal_received(config: &ServiceConfig, batch_number: u64, batch: &[OwnedMessage]) {
    if config.journal.is_none() && !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let ranges = offset_ranges(batch);
    let named = if config.held_exercise {
        exercise_ranges(batch)
    } else {
        ranges.clone()
    };
    tracing::info!(
        consumer = %config.name,
        messaging.destination.name = %config.topic,
        batch = batch_number,
        messages = batch.len(),
        offsets = %held_offsets(&named),
        "{BATCH_RECEIVED}"
    );
    let Some(journal) = &config.journal else { return };
    journal.write(&JournalEntry::Received {
        batch: batch_number,
        messages: batch.len(),
        ranges,
    });
}

/// The message of the log line written as each batch is received.
pub const BATCH_RECEIVED: &str = "batch received";

/// Per partition, an offset range as a log line writes it: `partition:first-last`, comma
/// separated (`0:120-180,3:55-99`).
pub fn held_offsets(ranges: &[(i32, i64, i64)]) -> String {
    ranges
        .iter()
        .map(|(partition, first, last)| format!("{partition}:{first}-{last}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What chapter 19's exercise names for a batch, in partition order.
fn exercise_ranges(batch: &[OwnedMessage]) -> Vec<(i32, i64, i64)> {
    if batch.is_empty() {
        return Vec::new();
    }
    let received: Vec<tradeflow_exercises::Received> = batch
        .iter()
        .map(|message| tradeflow_exercises::Received {
            partition: message.partition(),
            offset: message.offset(),
        })
        .collect();
    let mut ranges = tradeflow_exercises::held_ranges::held_ranges(&received);
    ranges.sort();
    ranges.into_iter().map(|range| (range.partition, range.first, range.last)).collect()
}

/// Per partition of a batch, its first and last offset: `(partition, first, last)`.
fn offset_ranges(batch: &[OwnedMessage]) -> Vec<(i32, i64, i64)> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for message in batch {
        let range = ranges.entry(message.partition()).or_insert((message.offset(), message.offset()));
        range.0 = range.0.min(message.offset());
        range.1 = range.1.max(message.offset());
    }
    ranges
        .into_iter()
        .map(|(partition, (first, last))| (partition, first, last))
        .collect()
}

/// The `before_database` policy (lesson-only): the batch's offsets committed, and
/// confirmed by the broker, before its database transaction starts.
async fn commit_first(
    consumer: &Arc<StreamConsumer<ServiceContext>>,
    config: &ServiceConfig,
    batch: &[OwnedMessage],
    counters: &ServiceCounters,
) {
    let next = next_offsets(batch, &BTreeMap::new());
    let Some(offsets) = offset_list(&next) else { return };
    let committing = consumer.clone();
    let outcome = tokio::task::spawn_blocking(move || committing.commit(&offsets, CommitMode::Sync))
        .await
        .unwrap_or_else(|error| Err(rdkafka::error::KafkaError::Canceled).inspect_err(|_| tracing::warn!(%error, "the commit task")));
    match outcome {
        Ok(()) => {
            counters.committed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(journal) = &config.journal {
                journal.write(&JournalEntry::Committed {
                    offsets: next.iter().map(|((_, partition), offset)| (*partition, *offset)).collect(),
                });
            }
        }
        Err(error) => tracing::warn!(%error, offsets = ?next, "offset commit before the database commit refused"),
    }
}

/// Where each partition of this consumer is to be read next, to notice messages the broker
/// deleted before they were read.
#[derive(Debug, Default)]
struct Positions {
    /// The consumer's generation (see [`ServiceContext`]) the positions belong to.
    generation: u64,
    /// Partition -> the offset to be read next.
    next: BTreeMap<i32, i64>,
    /// Partition -> the highest offset known committed for it in this generation (read
    /// from the group at the assignment, then each commit's; 0 when the group has none):
    /// no commit goes below it, and a partition without one is not committed until it is
    /// read (see [`forward_only`]).
    floor: BTreeMap<i32, i64>,
}

impl Positions {
    /// Counts and reports the offsets `batch` jumps over. After an assignment, a
    /// partition's first message is compared with its committed offset.
    async fn check(
        &mut self,
        consumer: &Arc<StreamConsumer<ServiceContext>>,
        config: &ServiceConfig,
        batch: &[OwnedMessage],
        counters: &ServiceCounters,
    ) {
        let generation = consumer.context().generation.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            self.next.clear();
            self.floor.clear();
        }
        // Only the committed offset says where reading was to resume; without one (a new
        // group), the first message is taken as the start. Read at once for every
        // partition of the batch without a floor (a new one, or one whose read failed),
        // off the async workers.
        let unknown: Vec<i32> = batch
            .iter()
            .map(Message::partition)
            .filter(|partition| !self.floor.contains_key(partition))
            .collect::<std::collections::BTreeSet<i32>>()
            .into_iter()
            .collect();
        let read = if unknown.is_empty() {
            BTreeMap::new()
        } else {
            let (reading, topic) = (consumer.clone(), config.topic.clone());
            tokio::task::spawn_blocking(move || committed_offsets_of(&reading, &topic, &unknown))
                .await
                .unwrap_or_default()
        };
        for (partition, committed) in &read {
            let floor = self.floor.entry(*partition).or_insert(0);
            *floor = (*floor).max(committed.unwrap_or(0));
        }
        let resume_at = |partition| read.get(&partition).copied().flatten();
        for gap in gaps(&mut self.next, batch, resume_at) {
            counters.skipped.fetch_add(gap.count(), Ordering::Relaxed);
            if let Some(journal) = &config.journal {
                journal.write(&JournalEntry::Skipped {
                    partition: gap.partition,
                    expected: gap.expected,
                    received: gap.received,
                });
            }
            tracing::error!(
                messaging.destination.name = %config.topic,
                messaging.destination.partition.id = gap.partition,
                expected_offset = gap.expected,
                received_offset = gap.received,
                skipped = gap.count(),
                "the broker no longer has these messages: retention deleted them before they were applied, and they are lost to this service (raise the topic's retention, or keep the lag below it)"
            );
        }
    }
}

/// Offsets a partition jumped over: `expected..received` were never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    partition: i32,
    expected: i64,
    received: i64,
}

impl Gap {
    fn count(self) -> u64 {
        u64::try_from(self.received - self.expected).unwrap_or(0)
    }
}

/// The gaps in `batch` against the positions in `next`, which it moves past the batch. A
/// partition without a position asks `resume_at` once (its first message then sets it). A
/// message behind its position (a redelivery, or a seek back) is no gap.
fn gaps(next: &mut BTreeMap<i32, i64>, batch: &[OwnedMessage], mut resume_at: impl FnMut(i32) -> Option<i64>) -> Vec<Gap> {
    let mut found = Vec::new();
    for message in batch {
        let (partition, offset) = (message.partition(), message.offset());
        let expected = match next.get(&partition) {
            Some(expected) => Some(*expected),
            None => resume_at(partition),
        };
        if let Some(expected) = expected
            && offset > expected
        {
            found.push(Gap {
                partition,
                expected,
                received: offset,
            });
        }
        next.insert(partition, offset + 1);
    }
    found
}

/// The group's committed offset of each of `partitions` (`None`: the group has none for
/// it); a partition it could not read is left out, and all are when the group could not be
/// read (blocking: call it off the async workers).
fn committed_offsets_of(consumer: &StreamConsumer<ServiceContext>, topic: &str, partitions: &[i32]) -> BTreeMap<i32, Option<i64>> {
    let mut wanted = TopicPartitionList::new();
    for partition in partitions {
        wanted.add_partition(topic, *partition);
    }
    match consumer.committed_offsets(wanted, COMMITTED_TIMEOUT) {
        // A partition the group answered with an error for is as unknown as an unread one.
        Ok(list) => list
            .elements()
            .iter()
            .filter(|element| element.error().is_ok())
            .map(|element| match element.offset() {
                Offset::Offset(offset) => (element.partition(), Some(offset)),
                _ => (element.partition(), None),
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, messaging.destination.name = %topic, partitions = ?partitions, "reading the committed offsets; a gap before these partitions' first messages goes unnoticed, and their offsets are not committed until the read succeeds");
            BTreeMap::new()
        }
    }
}

/// The next offset to read of each partition in `batch`, except that a partition listed
/// in `stuck_at` ends at that offset (the message there was not processed).
fn next_offsets(batch: &[OwnedMessage], stuck_at: &BTreeMap<i32, i64>) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let end = match stuck_at.get(&message.partition()) {
            Some(stuck) if message.offset() >= *stuck => *stuck,
            _ => message.offset() + 1,
        };
        let entry = next.entry((message.topic().to_owned(), message.partition())).or_insert(0);
        *entry = (*entry).max(end);
    }
    next
}

/// Commits offsets without waiting. Asynchronous: a synchronous commit would block this
/// consumer's thread, and during a rebalance the coordinator holds the commit until this
/// very consumer rejoins, which it cannot do while blocked. A commit that fails or is lost
/// in a crash only means a redelivery, which the apply log skips.
/// `next` without the partitions whose offset would move their committed offset back
/// (below `floor`), or whose committed offset is not known (no `floor`: its read failed,
/// as it does while the group's coordinator moves), each reported; `floor` raised to what
/// is left. A consumer reads behind its committed offset when librdkafka resets its
/// position (after a leader change it cannot validate, or an offset fetch that failed, by
/// `auto.offset.reset`): what it reads again is skipped by the apply log, and committing
/// it would move the group's offset back over applied events. Holding a commit back only
/// means a redelivery, which the apply log skips.
fn forward_only(mut next: BTreeMap<(String, i32), i64>, floor: &mut BTreeMap<i32, i64>, consumer: &str) -> BTreeMap<(String, i32), i64> {
    next.retain(|(topic, partition), offset| match floor.get(partition) {
        None => {
            tracing::warn!(
                consumer,
                messaging.destination.name = %topic,
                messaging.destination.partition.id = partition,
                offset,
                "not committing: this partition's committed offset could not be read, so this offset may be behind it (read again with the next batch)"
            );
            false
        }
        Some(committed) if *offset < *committed => {
            tracing::warn!(
                consumer,
                messaging.destination.name = %topic,
                messaging.destination.partition.id = partition,
                offset,
                committed,
                "not committing an offset behind the one already committed: this consumer is reading messages it had passed (its position was reset)"
            );
            false
        }
        _ => true,
    });
    for ((_, partition), offset) in &next {
        if let Some(committed) = floor.get_mut(partition) {
            *committed = (*committed).max(*offset);
        }
    }
    next
}

/// Per (topic, partition), the next offset to read: what a commit sends.
type NextOffsets = BTreeMap<(String, i32), i64>;

/// The offset list a commit sends; `None` (and a warning) when one cannot be added.
fn offset_list(next: &NextOffsets) -> Option<TopicPartitionList> {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(error) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(%error, messaging.destination.name = %topic, messaging.destination.partition.id = partition, "building the offset list");
            return None;
        }
    }
    Some(offsets)
}

fn commit(consumer: &StreamConsumer<ServiceContext>, next: &NextOffsets, counters: &ServiceCounters, messages: usize) {
    let Some(offsets) = offset_list(next) else { return };
    match consumer.commit(&offsets, CommitMode::Async) {
        Ok(()) => {
            counters.committed.fetch_add(messages as u64, Ordering::Relaxed);
            counters.offset_commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            tracing::warn!(%error, offsets = ?next, "offset commit refused; the events are applied and a redelivery will be skipped")
        }
    }
}

/// The offsets of batches applied (after-database policy) and not yet committed: each
/// partition's next offset, the messages they cover, and the assignment they were applied
/// under. They gather for at most the commit interval after the first of them, then go in
/// one asynchronous commit.
#[derive(Default)]
struct Uncommitted {
    next: NextOffsets,
    messages: usize,
    generation: u64,
    since: Option<tokio::time::Instant>,
}

impl Uncommitted {
    /// Adds a batch's next offsets (already forward-only), applied under `generation`. With
    /// fencing on, those of an earlier assignment still here are dropped (see
    /// [`Uncommitted::flush`]).
    fn add(&mut self, next: NextOffsets, messages: usize, generation: u64, fencing: bool) {
        if fencing && self.since.is_some() && self.generation != generation {
            self.clear();
        }
        for (partition, offset) in next {
            let at = self.next.entry(partition).or_insert(offset);
            *at = (*at).max(offset);
        }
        self.messages += messages;
        self.generation = generation;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Whether the oldest offsets here have waited the interval.
    fn is_due(&self, interval: Duration) -> bool {
        self.since.is_some_and(|since| since.elapsed() >= interval)
    }

    /// Resolves when the oldest offsets here have waited the interval; never when there are
    /// none.
    async fn due(&self, interval: Duration) {
        match self.since {
            Some(since) => tokio::time::sleep_until(since + interval).await,
            None => std::future::pending().await,
        }
    }

    /// Commits what is here, asynchronously. With fencing on, offsets applied under an
    /// assignment the consumer no longer has are dropped instead (see [`Uncommitted::take`]).
    fn flush(&mut self, consumer: &StreamConsumer<ServiceContext>, config: &ServiceConfig, counters: &ServiceCounters) {
        if let Some((next, messages)) = self.take(consumer, config) {
            commit(consumer, &next, counters, messages);
        }
    }

    /// Commits what is here and waits for the broker's answer: before the consumer stops
    /// reading or leaves its group. An asynchronous commit sent just before the member
    /// leaves can land after its LeaveGroup and be refused, and the next owner of its
    /// partitions then reads again what it applied (seen in the schema-evolution lesson on
    /// the mock: its upgraded consumers applied, straight from the topic, events the old
    /// ones had dead-lettered, ahead of the replay of the earlier ones).
    async fn flush_before_leaving(
        &mut self,
        consumer: &Arc<StreamConsumer<ServiceContext>>,
        config: &ServiceConfig,
        counters: &ServiceCounters,
    ) {
        let Some((next, messages)) = self.take(consumer, config) else {
            return;
        };
        let Some(offsets) = offset_list(&next) else { return };
        let committing = consumer.clone();
        match tokio::task::spawn_blocking(move || committing.commit(&offsets, CommitMode::Sync)).await {
            Ok(Ok(())) => {
                counters.committed.fetch_add(messages as u64, Ordering::Relaxed);
                counters.offset_commits.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::warn!(consumer = %config.name, %error, offsets = ?next, "the last offset commit before leaving was refused; the events are applied and a redelivery will be skipped")
            }
            Err(error) => tracing::warn!(%error, "the commit task"),
        }
    }

    /// What is here to commit, emptied. With fencing on, offsets applied under an
    /// assignment the consumer no longer has are dropped instead: their partitions may be
    /// another member's now, and committing for them could move its offsets backwards (the
    /// events are applied, and the apply log skips their redelivery).
    fn take(&mut self, consumer: &StreamConsumer<ServiceContext>, config: &ServiceConfig) -> Option<(NextOffsets, usize)> {
        let taken = (std::mem::take(&mut self.next), self.messages);
        let generation = self.generation;
        self.clear();
        if taken.0.is_empty() {
            // Nothing to commit (a batch all of whose partitions stopped at a message it
            // could not process moves no offset).
            return None;
        }
        if config.fencing && assignment_changed(consumer, generation) {
            tracing::info!(consumer = %config.name, offsets = ?taken.0, "the partitions changed since these offsets were applied: not committing them");
            return None;
        }
        Some(taken)
    }

    fn clear(&mut self) {
        self.next.clear();
        self.messages = 0;
        self.since = None;
    }
}

/// Whether the consumer's partitions changed since assignment `generation`: a rebalance it
/// took part in, or an assignment librdkafka gave up as lost.
fn assignment_changed(consumer: &StreamConsumer<ServiceContext>, generation: u64) -> bool {
    consumer.assignment_lost() || consumer.context().generation.load(Ordering::Relaxed) != generation
}

/// A batch in a consumer's hands: its number, its messages, the consumer's assignment
/// generation when it was received, and the lease on its partitions.
struct Held<'a> {
    number: u64,
    messages: &'a [OwnedMessage],
    generation: u64,
    /// When it was received (a monotonic clock: it runs on while the process is frozen).
    received_at: tokio::time::Instant,
    /// The session timeout: held longer than this, the partitions may have been given to
    /// another member without this consumer having heard of it yet.
    lease: Duration,
    /// The consumer's committed-offset floor per partition ([`Positions`]).
    floor: &'a mut BTreeMap<i32, i64>,
}

impl Held<'_> {
    /// The partitions and offset ranges the batch holds, for the logs of a consumer that is
    /// stuck with it.
    fn partitions(&self) -> Vec<(i32, i64, i64)> {
        offset_ranges(self.messages)
    }

    /// Whether the batch's partitions were, or may have been, revoked since it was
    /// received: a rebalance the consumer took part in, an assignment librdkafka gave up as
    /// lost, or a batch held past the session timeout (a process frozen that long wakes up
    /// before librdkafka notices its session is gone, so the flag alone comes too late).
    fn revoked(&self, consumer: &StreamConsumer<ServiceContext>) -> bool {
        assignment_changed(consumer, self.generation) || self.received_at.elapsed() >= self.lease
    }
}

/// Whether the batch is dropped by the [`fence`] now (with fencing on and its partitions
/// revoked, or possibly revoked, since it was received).
fn fenced(config: &ServiceConfig, held: &Held<'_>, consumer: &StreamConsumer<ServiceContext>, counters: &ServiceCounters) -> bool {
    let revoked = config.fencing && held.revoked(consumer);
    if revoked {
        fence(config, held, counters);
    }
    revoked
}

/// The fence: a batch held while its partitions were revoked is dropped, neither applied
/// nor committed; their new owner reads the messages again from the committed offsets.
fn fence(config: &ServiceConfig, held: &Held<'_>, counters: &ServiceCounters) {
    tracing::warn!(
        consumer = %config.name,
        batch = held.number,
        messages = held.messages.len(),
        "fenced: the batch's partitions were revoked while it was held; dropping it for their new owner"
    );
    counters.fenced.fetch_add(held.messages.len() as u64, Ordering::Relaxed);
    if let Some(journal) = &config.journal {
        journal.write(&JournalEntry::Fenced {
            batch: held.number,
            messages: held.messages.len(),
        });
    }
}

/// One batch: dead-letter what cannot be applied (or, without a dead-letter topic, stop
/// its partition there), apply the rest in one transaction, then commit the offsets.
async fn process(
    store: &Store,
    consumer: &Arc<StreamConsumer<ServiceContext>>,
    dead_letters: &rdkafka::producer::FutureProducer,
    config: &ServiceConfig,
    mut held: Held<'_>,
    counters: &ServiceCounters,
    mut steer: Steer<'_>,
) -> Result<(), StreamError> {
    let (batch_number, batch) = (held.number, held.messages);
    if !config.apply_delay.is_zero() {
        tokio::time::sleep(config.apply_delay).await;
    }
    if fenced(config, &held, consumer, counters) {
        return Ok(());
    }
    let triage_since = std::time::Instant::now();
    let Triage {
        accepted,
        dead_lettered,
        stuck_at,
    } = triage(dead_letters, config, batch, counters).await?;
    let applying_since = Phase::Triage.add(counters, triage_since);
    // The prefetch serves rebalances while the batch is triaged: fenced again, as late as
    // this loop can. (One that lands during the transaction is met after it: no offset is
    // committed, and the partition's next owner, reading from the committed offset, finds
    // the batch in the apply log.)
    if fenced(config, &held, consumer, counters) {
        return Ok(());
    }
    let inputs: Vec<ApplyInput<'_>> = accepted
        .iter()
        .map(|(_, event, intended_at_ns)| ApplyInput {
            event,
            intended_at_ns: *intended_at_ns,
        })
        .collect();
    let applied = apply(store, consumer, config, &mut held, &inputs, counters, &mut steer).await?;
    // The wait for the connection, out of the apply's time.
    let queued = applied.as_ref().map_or(Duration::ZERO, |summary| summary.queued);
    Phase::Queued.add_time(counters, queued);
    Phase::Applying.add_time(counters, applying_since.elapsed().saturating_sub(queued));
    let Some(summary) = applied else {
        return Ok(());
    };
    let committed_at_ns = now_ns();
    record_applied(&accepted, committed_at_ns, steer.latency);
    // The database commit is done: now, and only now, the offsets (the other policies
    // exist to show what goes wrong when they are committed at another time).
    if config.commit == CommitPolicy::AfterDatabase {
        if config.fencing && held.revoked(consumer) {
            // Revoked during the transaction: the partitions belong to another member now,
            // which reads them again from the committed offsets (the apply log skips what
            // this batch applied). Committing for them could move their offsets backwards.
            tracing::warn!(consumer = %config.name, batch = batch_number, "partitions revoked during the database transaction: not committing their offsets");
        } else {
            let next = forward_only(next_offsets(batch, &stuck_at), held.floor, &config.name);
            steer.uncommitted.add(next, batch.len(), held.generation, config.fencing);
            if steer.uncommitted.is_due(config.commit_interval) {
                steer.uncommitted.flush(consumer, config, counters);
            }
        }
    }
    if !stuck_at.is_empty() {
        steer.stop_prefetch.send_replace(true);
        let sought = seek_back(consumer, config, &stuck_at, counters).await;
        // Read ahead before the seek: those messages come again, in order, after the one
        // that failed. Where the seek failed the consumer reads on from where it was, so
        // what it read ahead is kept (dropping it would skip it).
        let mut carried = lock(steer.carried);
        for (partition, offset) in stuck_at.iter().filter(|(partition, _)| sought.contains(partition)) {
            carried.forget_from(*partition, *offset);
        }
    }
    counters.applied.fetch_add(summary.applied as u64, Ordering::Relaxed);
    counters.duplicates.fetch_add(summary.duplicates as u64, Ordering::Relaxed);
    counters.dead_lettered.fetch_add(dead_lettered, Ordering::Relaxed);
    counters.last_commit_ns.fetch_max(committed_at_ns, Ordering::Relaxed);
    if let Some(journal) = &config.journal {
        journal.write(&JournalEntry::Applied {
            batch: batch_number,
            applied: summary.applied as u64,
            duplicates: summary.duplicates as u64,
            dead_lettered,
            committed_at_ns,
        });
    }
    if !stuck_at.is_empty() {
        tokio::time::sleep(POISON_RETRY_BACKOFF).await;
    }
    Ok(())
}

/// Applies a batch's accepted events in one transaction, meeting a database that fails as
/// the configuration says. `None`: the batch was given up unapplied and nothing of it is
/// to be committed (its partitions changed hands while the database was away, or the host
/// told the consumer to stop).
async fn apply(
    store: &Store,
    consumer: &Arc<StreamConsumer<ServiceContext>>,
    config: &ServiceConfig,
    held: &mut Held<'_>,
    inputs: &[ApplyInput<'_>],
    counters: &ServiceCounters,
    steer: &mut Steer<'_>,
) -> Result<Option<tradeflow_store::apply::ApplySummary>, StreamError> {
    let mut failures: u32 = 0;
    let mut breaker = Breaker::Closed;
    let mut jitter = rand_chacha::ChaCha8Rng::seed_from_u64(held.number);
    loop {
        counters.database_attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = match config.database_retry {
            DatabaseRetry::AtOnce => store
                .apply_batch_as(inputs, &config.name, config.dedup)
                .await
                .map_err(Failure::Store),
            DatabaseRetry::Backoff | DatabaseRetry::Exercise => {
                tokio::time::timeout(DATABASE_CALL_TIMEOUT, store.apply_batch_as(inputs, &config.name, config.dedup))
                    .await
                    .map_err(|_| Failure::TimedOut)
                    .and_then(|applied| applied.map_err(Failure::Store))
            }
        };
        let failure = match attempt {
            Ok(summary) => {
                if failures > 0 {
                    tracing::info!(consumer = %config.name, batch = held.number, failures, "the database answers again: batch applied");
                    // The batch was held for the outage's length while this consumer kept
                    // its partitions (no rebalance reached it): its lease starts again.
                    held.received_at = tokio::time::Instant::now();
                }
                breaker.close(consumer, config);
                return Ok(Some(summary));
            }
            Err(Failure::Store(error)) if gives_up(config.database_retry, &error) => {
                breaker.close(consumer, config);
                return Err(error.into());
            }
            Err(failure) => failure,
        };
        failures += 1;
        steer.stop_prefetch.send_replace(true);
        counters.database_failures.fetch_add(1, Ordering::Relaxed);
        let wait = match config.database_retry {
            DatabaseRetry::AtOnce => None,
            DatabaseRetry::Backoff => Some(backoff(failures, &mut jitter)),
            DatabaseRetry::Exercise => match tradeflow_exercises::after_database_failure::after_database_failure(failures) {
                tradeflow_exercises::DatabaseWait::AtOnce => None,
                tradeflow_exercises::DatabaseWait::PausedFor(wait) => Some(wait.min(EXERCISE_WAIT_MAX)),
            },
        };
        let Some(wait) = wait else {
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(consumer = %config.name, batch = held.number, failures, error = %failure, "database call failed; trying again at once");
            }
            continue;
        };
        tracing::warn!(
            consumer = %config.name,
            batch = held.number,
            failures,
            error = %failure,
            partitions = ?held.partitions(),
            "database call failed; the batch is held and tried again after a backoff"
        );
        // The batch is held: nothing more is fetched while it waits, and polling with every
        // partition paused keeps the member in its group. A message of a partition assigned
        // meanwhile is kept for the next batch, and that partition paused too.
        breaker.hold(consumer, config);
        if failures == BREAKER_OPENS_AFTER {
            breaker.open(config, counters);
        }
        wait_polling(consumer, wait, steer.carried, counters).await;
        breaker.hold(consumer, config);
        if assignment_changed(consumer, held.generation) {
            breaker.close(consumer, config);
            fence(config, held, counters);
            return Ok(None);
        }
        if *steer.control.borrow() == Control::Stop {
            tracing::warn!(consumer = %config.name, batch = held.number, "told to stop while the database is away: leaving the batch unapplied and uncommitted");
            breaker.close(consumer, config);
            return Ok(None);
        }
    }
}

/// Whether a store error ends the consumer instead of being tried again: one that is not
/// the database out of reach (a refusal, a corrupt row) cannot be helped by retrying.
/// The lesson-only at-once policy retries everything.
fn gives_up(retry: DatabaseRetry, error: &tradeflow_store::StoreError) -> bool {
    retry != DatabaseRetry::AtOnce && !error.is_unavailable()
}

/// Why a database call failed.
enum Failure {
    /// The store said so.
    Store(tradeflow_store::StoreError),
    /// It did not answer within [`DATABASE_CALL_TIMEOUT`].
    TimedOut,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Store(error) => error.fmt(f),
            Failure::TimedOut => write!(f, "no answer within {DATABASE_CALL_TIMEOUT:?}"),
        }
    }
}

/// The wait before the next try after `failures` failures in a row: exponential from
/// [`DATABASE_RETRY_FIRST`], capped at [`DATABASE_RETRY_MAX`], drawn between half and all
/// of it.
fn backoff(failures: u32, jitter: &mut impl rand::Rng) -> Duration {
    let full = DATABASE_RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(DATABASE_RETRY_MAX);
    full.mul_f64(jitter.random_range(0.5..=1.0))
}

/// Waits `wait` while polling the consumer (its partitions paused): keeps `max.poll.interval.ms`
/// from running out and serves rebalances.
async fn wait_polling(
    consumer: &StreamConsumer<ServiceContext>,
    wait: Duration,
    carried: &std::sync::Mutex<Carried>,
    counters: &ServiceCounters,
) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => lock(carried).keep(consumer, message.detach()),
            Ok(Err(error)) => consumer_error(&error, counters),
            Err(_) => return,
        }
    }
}

/// A consumer's circuit breaker for its database. Closed: fetching. Holding: a database
/// call failed, the partitions are paused while the batch waits for its next try (bounded
/// retries, a backoff apart). Open: [`BREAKER_OPENS_AFTER`] calls failed in a row; the
/// partitions stay paused and the batch is tried once per backoff (at most
/// [`DATABASE_RETRY_MAX`] apart) until the database answers.
#[derive(PartialEq, Eq)]
enum Breaker {
    Closed,
    Holding,
    Open,
}

impl Breaker {
    /// Pauses every partition the consumer holds (again, for any assigned since).
    fn hold(&mut self, consumer: &StreamConsumer<ServiceContext>, config: &ServiceConfig) {
        let paused = pause_assignment(consumer, config);
        if *self == Breaker::Closed {
            *self = Breaker::Holding;
            tracing::info!(consumer = %config.name, partitions = ?paused, "partitions paused while the batch in hand waits for the database");
        }
    }

    /// Opens the breaker.
    fn open(&mut self, config: &ServiceConfig, counters: &ServiceCounters) {
        if *self == Breaker::Open {
            return;
        }
        *self = Breaker::Open;
        counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            consumer = %config.name,
            messaging.destination.name = %config.topic,
            "circuit breaker open: {BREAKER_OPENS_AFTER} database calls failed in a row; partitions stay paused, the member stays in its group, the batch is tried at most every {DATABASE_RETRY_MAX:?}"
        );
    }

    /// Closes the breaker: resumes the partitions the consumer holds now.
    fn close(&mut self, consumer: &StreamConsumer<ServiceContext>, config: &ServiceConfig) {
        if *self == Breaker::Closed {
            return;
        }
        *self = Breaker::Closed;
        match consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = consumer.resume(&assignment) {
                    tracing::warn!(consumer = %config.name, %error, "resuming partitions after the database came back");
                }
                tracing::info!(consumer = %config.name, partitions = ?partition_numbers(&assignment), "circuit breaker closed: partitions resumed");
            }
            Err(error) => tracing::warn!(consumer = %config.name, %error, "reading the assignment to resume it"),
        }
    }
}

/// Pauses every partition the consumer holds; returns their numbers.
fn pause_assignment(consumer: &StreamConsumer<ServiceContext>, config: &ServiceConfig) -> Vec<i32> {
    match consumer.assignment() {
        Ok(assignment) => {
            if let Err(error) = consumer.pause(&assignment) {
                tracing::warn!(consumer = %config.name, %error, "pausing partitions");
            }
            partition_numbers(&assignment)
        }
        Err(error) => {
            tracing::warn!(consumer = %config.name, %error, "reading the assignment to pause it");
            Vec::new()
        }
    }
}

/// What a batch holds once sorted: the events to apply (message, event, intended send
/// time), the messages dead-lettered, and, without a dead-letter topic, the first message of
/// each partition that could not be processed (nothing at or after it is applied or
/// committed).
struct Triage<'a> {
    accepted: Vec<(&'a OwnedMessage, Event, i64)>,
    dead_lettered: u64,
    stuck_at: BTreeMap<i32, i64>,
}

/// Sorts a batch: decodes each message, dead-letters what cannot be applied (or, without a
/// dead-letter topic, stops its partition there).
async fn triage<'a>(
    dead_letters: &rdkafka::producer::FutureProducer,
    config: &ServiceConfig,
    batch: &'a [OwnedMessage],
    counters: &ServiceCounters,
) -> Result<Triage<'a>, StreamError> {
    let mut accepted: Vec<(&OwnedMessage, Event, i64)> = Vec::with_capacity(batch.len());
    let mut dead_lettered = 0;
    // Without a dead-letter topic: the first message of each partition that could not be
    // processed. Nothing at or after it in its partition is applied or committed.
    let mut stuck_at: BTreeMap<i32, i64> = BTreeMap::new();
    for message in batch {
        if stuck_at.get(&message.partition()).is_some_and(|stuck| message.offset() > *stuck) {
            continue;
        }
        let outcome = match accept(message, config.key_check, config.schema_newest) {
            Err(rejection) if config.schema_exercise && rejection.kind == "unknown_schema_version" => {
                newer_version(message, config, rejection)
            }
            outcome => outcome.map(Some),
        };
        match outcome {
            Ok(Some((event, intended_at_ns))) => accepted.push((message, event, intended_at_ns)),
            Ok(None) => {
                counters.passed_over.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    messaging.destination.partition.id = message.partition(),
                    messaging.kafka.offset = message.offset(),
                    "passed over: a newer version's event type this consumer does not know"
                );
            }
            Err(rejection) => {
                tracing::warn!(
                    messaging.destination.name = message.topic(),
                    messaging.destination.partition.id = message.partition(),
                    messaging.kafka.offset = message.offset(),
                    error.kind = %rejection.kind,
                    reason = %rejection.reason,
                    dead_letter = config.dead_letter,
                    "cannot process a message: it goes to the dead-letter topic, or without one its partition waits"
                );
                let dead_letter = if config.poison_exercise {
                    let attempt = counters.failed_attempt(message.partition(), message.offset());
                    tradeflow_exercises::on_unprocessable::on_unprocessable(attempt) == tradeflow_exercises::Unprocessable::DeadLetter
                } else {
                    config.dead_letter
                };
                let sent = if dead_letter {
                    dlq::send(dead_letters, message, &rejection, now_ns())
                        .await
                        .inspect_err(|error| {
                            counters.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                %error,
                                messaging.destination.partition.id = message.partition(),
                                messaging.kafka.offset = message.offset(),
                                "the dead letter could not be sent: its partition waits at it and reads it again"
                            );
                        })
                        .is_ok()
                } else {
                    false
                };
                if sent {
                    dead_lettered += 1;
                    if let Ok(mut kinds) = counters.dead_letter_kinds.lock() {
                        kinds.entry(rejection.kind.clone()).or_insert((0, rejection.reason.clone())).0 += 1;
                    }
                } else {
                    // A partition's messages arrive in offset order, so what was accepted
                    // before this one stays accepted and what follows is skipped above.
                    stuck_at.insert(message.partition(), message.offset());
                }
            }
        }
    }
    Ok(Triage {
        accepted,
        dead_lettered,
        stuck_at,
    })
}

/// Records each applied event's latency (intended send to database commit) and, at debug
/// level, where it came from.
fn record_applied(accepted: &[(&OwnedMessage, Event, i64)], committed_at_ns: i64, latency: &mut LatencyRecorder) {
    for (_, _, intended_at_ns) in accepted {
        if *intended_at_ns > 0 {
            latency.record_ns(committed_at_ns - intended_at_ns);
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (message, event, _) in accepted {
            tracing::debug!(
                messaging.destination.name = message.topic(),
                messaging.destination.partition.id = message.partition(),
                messaging.kafka.offset = message.offset(),
                trade.event_id = %event.event_id,
                account.id = %event.account_id,
                "applied; committing its offset"
            );
        }
    }
}

/// Without a dead-letter topic: each stuck partition goes back to the message that failed,
/// to read it again after a pause (seeking blocks: off the async workers). Returns the
/// partitions the seek moved.
async fn seek_back(
    consumer: &Arc<StreamConsumer<ServiceContext>>,
    config: &ServiceConfig,
    stuck_at: &BTreeMap<i32, i64>,
    counters: &ServiceCounters,
) -> std::collections::BTreeSet<i32> {
    let mut done = std::collections::BTreeSet::new();
    for (partition, offset) in stuck_at {
        // Read the message again after a pause: it will fail again, and everything behind
        // it in the partition waits. That is what a dead-letter topic prevents. (Seeking
        // blocks: off the async workers.)
        let (seeking, topic, partition, offset) = (consumer.clone(), config.topic.clone(), *partition, *offset);
        let sought = tokio::task::spawn_blocking(move || seeking.seek(&topic, partition, Offset::Offset(offset), lag::PROBE_TIMEOUT)).await;
        match sought {
            Ok(Ok(())) => {
                done.insert(partition);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, messaging.destination.name = %config.topic, messaging.destination.partition.id = partition, messaging.kafka.offset = offset, "seeking back to a message that failed");
            }
            Err(error) => {
                tracing::warn!(%error, messaging.destination.partition.id = partition, "the seek back's task");
            }
        }
        counters.poison_retries.fetch_add(1, Ordering::Relaxed);
    }
    done
}

/// Chapter 17: what the learner's `on_newer_version` makes of a message of a version the
/// consumer does not read: refused as it was, or read for what the consumer knows of it
/// (`None`: its type unknown, passed over). Either way its key must be its account.
fn newer_version(message: &OwnedMessage, config: &ServiceConfig, refusal: Rejection) -> Result<Option<(Event, i64)>, Rejection> {
    let version = message
        .payload()
        .and_then(|payload| serde_json::from_slice::<serde_json::Value>(payload).ok())
        .and_then(|value| value.get("schema_version").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    match tradeflow_exercises::on_newer_version::on_newer_version(version, config.schema_newest) {
        tradeflow_exercises::NewerVersion::Refuse => Err(refusal),
        tradeflow_exercises::NewerVersion::ReadWhatYouKnow => {
            let payload = message.payload().unwrap_or_default();
            let read = tradeflow_domain::decode_tolerant(payload, config.schema_newest).map_err(refused)?;
            read.map(|event| keyed(message, event, config.key_check)).transpose()
        }
    }
}

/// Decodes a message and checks that its key is its account (the key routes an account's
/// events to one partition; a message under another key would break that account's order).
fn accept(message: &OwnedMessage, key_check: bool, schema_newest: u64) -> Result<(Event, i64), Rejection> {
    let Some(payload) = message.payload().filter(|payload| !payload.is_empty()) else {
        return Err(Rejection {
            kind: "empty_payload".into(),
            reason: "the message has no payload".into(),
        });
    };
    let event = decode_up_to(payload, schema_newest).map_err(refused)?;
    keyed(message, event, key_check)
}

/// A decoder's refusal as a dead letter's reason.
fn refused(error: tradeflow_domain::DecodeError) -> Rejection {
    Rejection {
        kind: error.kind().into(),
        reason: error.to_string(),
    }
}

/// A decoded event, once its message's key is checked to be its account, with its intended
/// send time (0 without the header).
fn keyed(message: &OwnedMessage, event: Event, key_check: bool) -> Result<(Event, i64), Rejection> {
    let key = message.key().map(String::from_utf8_lossy);
    if key_check && key.as_deref() != Some(event.account_id.as_str()) {
        return Err(Rejection {
            kind: "key_mismatch".into(),
            reason: format!(
                "the key must be the account id {:?}, got {:?}",
                event.account_id.as_str(),
                key.as_deref().unwrap_or("<none>")
            ),
        });
    }
    let intended_at_ns = dlq::header(message, HEADER_INTENDED_AT_NS)
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    Ok((event, intended_at_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer of `trades` on `bootstrap` with the service's defaults.
    fn test_config(bootstrap: &str) -> ServiceConfig {
        ServiceConfig {
            bootstrap: bootstrap.to_owned(),
            topic: "trades".into(),
            group: "unit".into(),
            name: "unit-0".into(),
            batch_size: 100,
            fill_wait: Duration::from_millis(5),
            fetch_wait_max_ms: FETCH_WAIT_MAX_MS,
            session_timeout_ms: 6_000,
            commit: CommitPolicy::AfterDatabase,
            commit_interval: COMMIT_INTERVAL_DEFAULT,
            dead_letter: true,
            journal: None,
            apply_delay: Duration::ZERO,
            dedup: Dedup::ApplyLog,
            fencing: true,
            key_check: true,
            poison_exercise: false,
            database_retry: DatabaseRetry::Backoff,
            max_poll_interval_ms: None,
            schema_newest: tradeflow_domain::SCHEMA_VERSION,
            prefetch: Prefetch::Bounded,
            schema_exercise: false,
            instance_id: None,
            held_exercise: false,
            pipeline: true,
        }
    }

    /// A mock cluster whose one-partition `trades` holds one message, and a consumer of
    /// the service assigned that partition from its start.
    async fn assigned_to_one_message() -> (tradeflow_cluster::Cluster, StreamConsumer<ServiceContext>, ServiceConfig) {
        let cluster = tradeflow_cluster::Cluster::mock(1).expect("mock cluster");
        cluster.ensure_topic("trades", 1, 1).await.expect("topic");
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        producer
            .send(
                rdkafka::producer::FutureRecord::to("trades").key("acct-00001").payload("x"),
                Duration::from_secs(10),
            )
            .await
            .expect("the message is in the log");
        let config = test_config(cluster.bootstrap_servers());
        let consumer = config.consumer(Arc::new(ServiceCounters::default())).expect("consumer");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset("trades", 0, Offset::Beginning).expect("partition");
        consumer.assign(&assignment).expect("assigned");
        (cluster, consumer, config)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_breaker_holding_pauses_the_partitions_and_closing_resumes_them() {
        let (_cluster, consumer, config) = assigned_to_one_message().await;
        let mut breaker = Breaker::Closed;
        breaker.hold(&consumer, &config);
        assert!(breaker == Breaker::Holding);
        // Paused: the message in the log is not fetched (a busy machine could only make a
        // consumer that is not paused look paused, never the other way round).
        let held = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
        assert!(held.is_err(), "a paused partition handed out a message");
        breaker.close(&consumer, &config);
        assert!(breaker == Breaker::Closed);
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the message once resumed")
            .expect("a message, not an error");
        assert_eq!(message.offset(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_the_database_polls_for_the_whole_wait_and_carries_what_it_receives() {
        let (_cluster, consumer, _config) = assigned_to_one_message().await;
        let (carried, counters) = (std::sync::Mutex::new(Carried::default()), ServiceCounters::default());
        let wait = Duration::from_millis(1_500);
        let started = tokio::time::Instant::now();
        wait_polling(&consumer, wait, &carried, &counters).await;
        assert!(
            started.elapsed() >= wait,
            "returned after {:?} of a {wait:?} wait",
            started.elapsed()
        );
        let mut batch = Vec::new();
        lock(&carried).take_into(&consumer, &mut batch, 100);
        assert_eq!(batch.len(), 1, "the message received during the wait is carried to the next batch");
    }

    #[test]
    fn a_database_out_of_reach_is_tried_again_and_a_refusal_ends_the_consumer() {
        let outage = tradeflow_store::StoreError::Query {
            kind: tradeflow_store::StoreKind::Postgres,
            operation: "applying a batch",
            error: sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        let refusal = tradeflow_store::StoreError::Corrupt {
            operation: "applying a batch",
            row: "acct-00001".into(),
            reason: "edited by hand".into(),
        };
        assert!(outage.is_unavailable() && !refusal.is_unavailable());
        for retry in [DatabaseRetry::Backoff, DatabaseRetry::Exercise] {
            assert!(!gives_up(retry, &outage), "{}: an outage is waited out", retry.as_str());
            assert!(gives_up(retry, &refusal), "{}: a refusal ends the consumer", retry.as_str());
        }
        assert!(!gives_up(DatabaseRetry::AtOnce, &outage) && !gives_up(DatabaseRetry::AtOnce, &refusal));
    }

    #[test]
    fn the_assignment_settles_once_every_running_member_holds_its_share() {
        let counters = ServiceCounters::default();
        counters.member_assigned("consumer-0", 2);
        assert_eq!(counters.settled_assignment(2, 2), None, "one of two members assigned");
        counters.member_assigned("consumer-1", 0);
        assert_eq!(
            counters.settled_assignment(2, 2),
            Some(vec![2, 0]),
            "an empty assignment is a member holding nothing"
        );
        // A rebalance: both revoke, then the partitions are shared again.
        counters.member_assigned("consumer-0", -2);
        assert_eq!(counters.settled_assignment(2, 2), None, "revoked: nobody holds the partitions");
        counters.member_assigned("consumer-0", 1);
        counters.member_assigned("consumer-1", 1);
        assert_eq!(counters.settled_assignment(2, 2), Some(vec![1, 1]));
        // A member that is gone holds nothing, and its late revocation changes nothing.
        counters.member_gone("consumer-1");
        counters.member_assigned("consumer-1", -1);
        assert_eq!(counters.settled_assignment(1, 2), None);
        assert_eq!(
            counters
                .partitions_by_member
                .lock()
                .map(|members| members.len())
                .unwrap_or_default(),
            1
        );
    }
    use rdkafka::Timestamp;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(None, None, "trades".into(), Timestamp::NotAvailable, partition, offset, None)
    }

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<(String, i32), i64> {
        pairs
            .iter()
            .map(|(partition, offset)| (("trades".to_owned(), *partition), *offset))
            .collect()
    }

    #[tokio::test]
    async fn applied_offsets_gather_each_partitions_highest_until_the_interval_from_the_first_is_over() {
        let hour = Duration::from_secs(3600);
        let mut uncommitted = Uncommitted::default();
        assert!(!uncommitted.is_due(Duration::ZERO), "nothing gathered is never due");
        uncommitted.add(offsets(&[(0, 10), (1, 5)]), 15, 3, true);
        assert!(
            uncommitted.is_due(Duration::ZERO),
            "with no interval a batch's offsets are due at once"
        );
        assert!(!uncommitted.is_due(hour));
        tokio::time::sleep(Duration::from_millis(30)).await;
        uncommitted.add(offsets(&[(0, 20), (2, 7)]), 12, 3, true);
        assert_eq!(uncommitted.next, offsets(&[(0, 20), (1, 5), (2, 7)]));
        assert_eq!(uncommitted.messages, 27);
        // The interval runs from the first batch gathered, not the last.
        assert!(uncommitted.is_due(Duration::from_millis(25)));
        tokio::time::timeout(Duration::from_secs(5), uncommitted.due(Duration::from_millis(25)))
            .await
            .expect("due resolves once the interval is over");
        uncommitted.clear();
        assert!(!uncommitted.is_due(Duration::ZERO) && uncommitted.next.is_empty() && uncommitted.messages == 0);
    }

    #[tokio::test]
    async fn offsets_of_an_earlier_assignment_are_dropped_with_fencing_and_kept_without() {
        let mut fenced = Uncommitted::default();
        fenced.add(offsets(&[(0, 10), (1, 5)]), 15, 3, true);
        fenced.add(offsets(&[(2, 7)]), 4, 4, true);
        assert_eq!(
            fenced.next,
            offsets(&[(2, 7)]),
            "the rebalance's other partitions may be another member's now"
        );
        assert_eq!((fenced.messages, fenced.generation), (4, 4));
        let mut naive = Uncommitted::default();
        naive.add(offsets(&[(0, 10), (1, 5)]), 15, 3, false);
        naive.add(offsets(&[(0, 8), (2, 7)]), 4, 4, false);
        assert_eq!(
            naive.next,
            offsets(&[(0, 10), (1, 5), (2, 7)]),
            "never moved back within what gathers"
        );
        let nothing = Uncommitted::default();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), nothing.due(Duration::ZERO))
                .await
                .is_err(),
            "nothing gathered never comes due"
        );
    }

    #[test]
    fn no_commit_moves_a_partitions_committed_offset_back() {
        // Partition 0 was committed at 139 (read from the group, or committed before);
        // its position was then reset and the batch ends at offset 2.
        let mut floor = BTreeMap::from([(0, 139), (1, 0)]);
        let next = BTreeMap::from([(("trades".to_owned(), 0), 2), (("trades".to_owned(), 1), 50)]);
        let kept = forward_only(next, &mut floor, "consumer-0");
        assert_eq!(
            kept,
            BTreeMap::from([(("trades".to_owned(), 1), 50)]),
            "partition 0 is not committed back"
        );
        assert_eq!(floor, BTreeMap::from([(0, 139), (1, 50)]), "the floor rises with what is committed");
        // At the floor, or past it, an offset is committed.
        let next = BTreeMap::from([(("trades".to_owned(), 0), 139), (("trades".to_owned(), 1), 51)]);
        assert_eq!(forward_only(next.clone(), &mut floor, "consumer-0"), next);
        assert_eq!(floor, BTreeMap::from([(0, 139), (1, 51)]));
    }

    #[test]
    fn no_commit_for_a_partition_whose_committed_offset_is_unknown() {
        // Partition 2's committed offset could not be read (the coordinator was moving):
        // the offset the batch reached may be behind it, so it is held back, and no floor
        // is made up for it; partition 0's is committed.
        let mut floor = BTreeMap::from([(0, 10)]);
        let next = BTreeMap::from([(("trades".to_owned(), 0), 12), (("trades".to_owned(), 2), 1)]);
        assert_eq!(
            forward_only(next, &mut floor, "consumer-0"),
            BTreeMap::from([(("trades".to_owned(), 0), 12)])
        );
        assert_eq!(floor, BTreeMap::from([(0, 12)]));
    }

    #[test]
    fn a_retry_waits_twice_as_long_as_the_one_before_up_to_the_cap_with_jitter_between_half_and_all() {
        let mut jitter = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut full = DATABASE_RETRY_FIRST;
        let mut below_full = 0;
        for failures in 1..=40 {
            let wait = backoff(failures, &mut jitter);
            assert!(
                wait >= full / 2 && wait <= full,
                "failure {failures}: {wait:?} outside {:?}..={full:?}",
                full / 2
            );
            below_full += u32::from(wait < full.mul_f64(0.95));
            full = (full * 2).min(DATABASE_RETRY_MAX);
        }
        assert_eq!(full, DATABASE_RETRY_MAX);
        assert!(
            below_full > 5,
            "the waits are jittered, not all the full backoff: {below_full} of 40 below it"
        );
    }

    #[test]
    fn failed_attempts_are_counted_per_message() {
        let counters = ServiceCounters::default();
        assert_eq!(counters.failed_attempt(0, 5), 1);
        assert_eq!(counters.failed_attempt(0, 5), 2);
        assert_eq!(
            counters.failed_attempt(1, 5),
            1,
            "another partition's message at the same offset is another message"
        );
        assert_eq!(counters.failed_attempt(0, 5), 3);
    }

    #[test]
    fn a_jump_past_the_expected_offset_is_a_gap_and_a_step_back_is_not() {
        let mut next = BTreeMap::from([(0, 10)]);
        let batch = [
            message(0, 10),
            message(0, 11),
            message(0, 15),
            message(1, 7),
            message(1, 8),
            message(0, 3),
        ];
        let found = gaps(&mut next, &batch, |_| None);
        assert_eq!(
            found,
            vec![Gap {
                partition: 0,
                expected: 12,
                received: 15
            }]
        );
        assert_eq!(found[0].count(), 3);
        // Partition 1 had no position: its first message sets it. Partition 0 stepped back
        // (a redelivery) and resumes from there.
        assert_eq!(next, BTreeMap::from([(0, 4), (1, 9)]));
        let later = gaps(&mut next, &[message(0, 4), message(1, 20)], |_| None);
        assert_eq!(
            later,
            vec![Gap {
                partition: 1,
                expected: 9,
                received: 20
            }]
        );
    }

    #[test]
    fn a_partition_without_a_position_resumes_at_its_committed_offset_asked_once() {
        let mut asked = 0;
        let mut next = BTreeMap::new();
        let found = gaps(&mut next, &[message(2, 30), message(2, 31)], |partition| {
            asked += 1;
            (partition == 2).then_some(25)
        });
        assert_eq!(asked, 1);
        assert_eq!(
            found,
            vec![Gap {
                partition: 2,
                expected: 25,
                received: 30
            }]
        );
        assert_eq!(found[0].count(), 5);
    }
}
