//! The outbox source: the system of record writes each event into its own table
//! (`trade_events`) in the same transaction as its business data, and a relay publishes the
//! table to Kafka. The usual way to avoid the dual write (a database commit and a Kafka
//! send, either of which can fail alone), and the way to compare the stream with the poller
//! with both paying the system of record's write.
//!
//! Writers: one task per shard of the accounts (so that an account's events commit in its
//! order), each writing the events due at once in one transaction held open a seeded
//! moment after the insert (the rest of the business transaction). On PostgreSQL a row's id is drawn at the
//! insert, so the writers commit ids out of order; SQLite takes one writer at a time.
//!
//! Relays: the naive one reads "rows with an id above the last one I published" and skips
//! for ever a row that commits after a higher id was read; the claiming one reads the rows
//! not yet marked relayed, in id order, and marks them once the broker acknowledged them.

use crate::StreamError;
use crate::process::jitter;
use crate::publisher::{FLUSH_TIMEOUT, Publisher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tradeflow_domain::{ScheduledEvent, Workload, decode};
use tradeflow_store::{Shard, SourceRow, Store};

/// How the relay reads the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relay {
    /// Rows with an id above the last one it published (lesson-only: it skips a row whose
    /// id was drawn before a published one's and that committed after it).
    AfterLastId,
    /// Rows not yet marked relayed, in id order, marked once the broker acknowledged them.
    Claiming,
    /// What the learner's chapter 15 exercise says, asked before each read.
    Exercise,
}

/// The outbox source of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbox {
    /// Writer tasks, each owning a shard of the accounts.
    pub writers: u32,
    /// The most a write transaction stays open after its insert (a seeded share of it).
    pub hold_max: Duration,
    /// How the relay reads the table.
    pub relay: Relay,
}

/// How long the relay waits when the outbox has nothing new.
pub const RELAY_INTERVAL: Duration = Duration::from_millis(10);
/// Most rows the relay reads at once.
pub const RELAY_BATCH: usize = 1_000;
/// Most writer tasks.
pub const WRITERS_MAX: u32 = 64;
/// Most events one write transaction inserts (those due together).
pub const WRITE_BATCH_MAX: usize = 1_000;

/// What the outbox did.
#[derive(Debug, Default)]
pub struct OutboxCounters {
    written: AtomicU64,
    relayed: AtomicU64,
    late: AtomicU64,
}

impl OutboxCounters {
    /// Adds the outbox's counts to a record's `config`: rows written and relayed, and the
    /// rows that committed after a higher id had been relayed (what the naive relay never
    /// reads: for it, the rows written and never relayed).
    pub(crate) fn record_into(&self, outbox: &Outbox, config: &mut serde_json::Value) {
        let (written, relayed) = (self.written.load(Ordering::Relaxed), self.relayed.load(Ordering::Relaxed));
        // Late rows the relay read, and those it never read (a row read twice after a
        // failed delivery counts once in `written`, twice in `relayed`).
        let late = self.late.load(Ordering::Relaxed) + written.saturating_sub(relayed);
        if let Some(object) = config.as_object_mut() {
            object.insert(
                "outbox".into(),
                serde_json::json!({
                    "writers": outbox.writers,
                    "hold_max_ms": outbox.hold_max.as_secs_f64() * 1_000.0,
                    "relay": outbox.relay,
                    "written": written,
                    "relayed": relayed,
                }),
            );
            object.insert("outbox_late_commits".into(), late.into());
        }
    }
}

/// Writes the workload into the outbox at its intended times and relays the table to
/// Kafka until every row written is relayed (or, for the naive relay, until it reads
/// nothing above its last id once the writers are done); then flushes the publisher.
pub(crate) async fn run(
    store: Store,
    publisher: Publisher,
    workload: Arc<Workload>,
    (start, start_ns): (Instant, i64),
    outbox: Outbox,
    counters: Arc<OutboxCounters>,
) -> Result<(), StreamError> {
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..outbox.writers)
        .map(|index| {
            let shard = Shard {
                index,
                count: outbox.writers,
            };
            tokio::spawn(write(
                store.clone(),
                workload.clone(),
                shard,
                outbox.hold_max,
                (start, start_ns),
                counters.clone(),
            ))
        })
        .collect();
    let relaying = relay(&store, &publisher, &workload, outbox.relay, &done, &counters);
    let writing = async {
        let mut outcome = Ok(());
        for writer in writers {
            let ended = writer.await.map_err(|error| StreamError::Task {
                task: "an outbox writer".into(),
                reason: error.to_string(),
            });
            if let Err(error) = ended.and_then(|written| written) {
                outcome = outcome.and(Err(error));
            }
        }
        done.store(true, Ordering::Release);
        outcome
    };
    let (written, relayed) = tokio::join!(writing, relaying);
    written?;
    relayed?;
    publisher.flush().await.map(|_| ())
}

/// One writer: its shard's events at their intended times, those due together in one
/// transaction (as the poller's system of record writes), held open a seeded moment after
/// the insert.
async fn write(
    store: Store,
    workload: Arc<Workload>,
    shard: Shard,
    hold_max: Duration,
    (start, start_ns): (Instant, i64),
    counters: Arc<OutboxCounters>,
) -> Result<(), StreamError> {
    let seed = workload.config.seed;
    // The shard's events, read in order as they come due (not gathered first: a run of
    // millions of events would hold them all).
    let mut mine = workload
        .events
        .iter()
        .enumerate()
        .filter(|(_, scheduled)| shard.owns(&scheduled.event.account_id))
        .peekable();
    while let Some((first, first_event)) = mine.peek() {
        let (first, due_ns) = (*first, first_event.intended_offset_ns);
        let elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if due_ns > elapsed_ns {
            tokio::time::sleep_until((start + Duration::from_nanos(due_ns)).into()).await;
            continue;
        }
        let mut due: Vec<(usize, ScheduledEvent)> = Vec::new();
        while due.len() < WRITE_BATCH_MAX
            && let Some(next) = mine.next_if(|(_, scheduled)| scheduled.intended_offset_ns <= elapsed_ns)
        {
            due.push(next);
        }
        let rows: Vec<SourceRow<'_>> = due
            .iter()
            .map(|(index, scheduled)| SourceRow {
                event: &scheduled.event,
                event_index: *index as u64,
                intended_at_ns: start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX)),
            })
            .collect();
        let hold = if hold_max.is_zero() {
            Duration::ZERO
        } else {
            jitter(seed, first as u64, hold_max)
        };
        store.insert_source_events_holding(&rows, hold).await?;
        counters.written.fetch_add(due.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The relay: reads the outbox as `relay` says and publishes each row, until the writers
/// are done and a read finds nothing.
async fn relay(
    store: &Store,
    publisher: &Publisher,
    workload: &Workload,
    relay: Relay,
    writers_done: &AtomicBool,
    counters: &OutboxCounters,
) -> Result<(), StreamError> {
    let (mut last, mut highest) = (0_i64, 0_i64);
    // Rows published by a read above an id, so that a read that returns only those (an
    // exercise that asks for the same ids again) ends like an empty one instead of
    // publishing them for ever.
    let mut published_ids = std::collections::HashSet::new();
    loop {
        // Read "done" before the table: a read that comes after every write finds them all.
        let done = writers_done.load(Ordering::Acquire);
        let after = match relay {
            Relay::AfterLastId => Some(last),
            Relay::Claiming => None,
            Relay::Exercise => match tradeflow_exercises::next_read::next_read(last) {
                tradeflow_exercises::OutboxRead::IdsAbove(id) => Some(id),
                tradeflow_exercises::OutboxRead::NotYetRelayed => None,
            },
        };
        let mut rows = store.outbox_rows(after, RELAY_BATCH).await?;
        if after.is_some() {
            rows.retain(|row| published_ids.insert(row.id));
        }
        if rows.is_empty() {
            if done {
                return Ok(());
            }
            tokio::time::sleep(RELAY_INTERVAL).await;
            continue;
        }
        let mut published = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = decode(row.payload.as_bytes()).map_err(|error| StreamError::Config {
                reason: format!("outbox row {} does not decode: {error}", row.id),
            })?;
            // The row says which of the workload's events it is; the event there must be
            // the one the row holds.
            let index = row.event_index.and_then(|index| usize::try_from(index).ok()).filter(|index| {
                workload
                    .events
                    .get(*index)
                    .is_some_and(|scheduled| scheduled.event.event_id == event.event_id)
            });
            let Some(index) = index else {
                return Err(StreamError::Config {
                    reason: format!(
                        "outbox row {} holds event {}, which is not the run's workload's event {:?}",
                        row.id, event.event_id, row.event_index
                    ),
                });
            };
            if row.id < highest {
                counters.late.fetch_add(1, Ordering::Relaxed);
            }
            highest = highest.max(row.id);
            publisher.publish(index, &event, row.intended_at_ns).await?;
            published.push((row.id, index));
            counters.relayed.fetch_add(1, Ordering::Relaxed);
        }
        last = last.max(rows.last().map_or(last, |row| row.id));
        if after.is_none() {
            // Marked once acknowledged: a relay that dies before the mark publishes the rows
            // again (the balance service's apply log skips the copies).
            // A row whose delivery failed stays unmarked and is read again.
            publisher.wait_for_reports(FLUSH_TIMEOUT).await?;
            let deliveries = publisher.deliveries();
            let ids: Vec<i64> = published
                .iter()
                .filter(|(_, index)| deliveries.is_acked(*index))
                .map(|(id, _)| *id)
                .collect();
            store.mark_relayed(&ids).await?;
        }
    }
}
