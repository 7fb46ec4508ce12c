//! Group commit: one writer applies, in one transaction, the batches that several
//! consumers of a process hand it while it is busy.
//!
//! Without it each consumer runs its own transaction, and on SQLite they take the process's
//! one connection in turn. With it ([`Store::group_committing`]) a consumer hands its
//! batch to the writer and waits for the answer; the writer takes every batch waiting when
//! it is free and applies them one after another inside one transaction, each with its
//! own apply-log rows and its own applier, then commits once. A consumer has at most one
//! batch with the writer (it waits for the answer before it hands over the next), so each
//! partition's order holds. A later batch of the group sees the apply-log rows of the
//! earlier ones, so an event handed over twice (a zombie's batch and its new owner's) is
//! applied once.
//!
//! If the group's transaction fails, the writer applies each of its batches again in a
//! transaction of its own: each consumer gets its own batch's answer, error included, and
//! one bad batch costs the others nothing. A consumer that stops waiting (its call timed
//! out) before the writer began its batch is left out; one that stops waiting later may
//! find its batch applied, which the apply log makes harmless when it is handed over again.

use crate::{ApplyInput, ApplySummary, BATCH_EVENTS_MAX, Dedup, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tradeflow_domain::Event;

/// The handle consumers hand their batches to; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct GroupWriter {
    requests: mpsc::UnboundedSender<Request>,
    pub(crate) stats: Arc<GroupStats>,
}

/// What the writer did so far (see [`GroupCommits`]).
#[derive(Debug, Default)]
pub(crate) struct GroupStats {
    transactions: AtomicU64,
    batches: AtomicU64,
    failed: AtomicU64,
}

/// What a group-commit writer did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommits {
    /// Transactions it committed.
    pub transactions: u64,
    /// Batches they held.
    pub batches: u64,
    /// Groups of several batches whose transaction failed, so that their batches were
    /// applied again one by one.
    pub failed: u64,
}

impl GroupStats {
    fn committed(&self, batches: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(batches as u64, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> GroupCommits {
        GroupCommits {
            transactions: self.transactions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A batch handed to the writer.
#[derive(Debug)]
struct Request {
    /// The events and their intended send times (owned: the writer outlives no call, but
    /// a channel carries only owned values).
    events: Vec<(Event, i64)>,
    applier: String,
    dedup: Dedup,
    /// When the consumer handed it over: its queued time runs from then.
    asked: Instant,
    answer: oneshot::Sender<Result<ApplySummary, StoreError>>,
}

impl Request {
    fn inputs(&self) -> Vec<ApplyInput<'_>> {
        self.events
            .iter()
            .map(|(event, intended_at_ns)| ApplyInput {
                event,
                intended_at_ns: *intended_at_ns,
            })
            .collect()
    }
}

impl GroupWriter {
    /// Starts the writer on `store` (a store without a writer of its own), on the current
    /// tokio runtime. It ends when the last handle is dropped.
    pub(crate) fn start(store: Store) -> GroupWriter {
        let (requests, waiting) = mpsc::unbounded_channel();
        let stats = Arc::new(GroupStats::default());
        tokio::spawn(write(store, waiting, stats.clone()));
        GroupWriter { requests, stats }
    }

    /// Hands a batch to the writer and waits for its answer.
    pub(crate) async fn apply(&self, events: &[ApplyInput<'_>], applier: &str, dedup: Dedup) -> Result<ApplySummary, StoreError> {
        let (answer, answered) = oneshot::channel();
        let request = Request {
            events: events.iter().map(|input| (input.event.clone(), input.intended_at_ns)).collect(),
            applier: applier.to_owned(),
            dedup,
            asked: Instant::now(),
            answer,
        };
        let gone = || StoreError::GroupWriterGone {
            operation: "applying a batch through the group-commit writer",
        };
        self.requests.send(request).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// The writer's loop: takes every batch waiting, applies them together, answers each.
async fn write(store: Store, mut waiting: mpsc::UnboundedReceiver<Request>, stats: Arc<GroupStats>) {
    while let Some(first) = waiting.recv().await {
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < BATCH_EVENTS_MAX {
            let Ok(next) = waiting.try_recv() else { break };
            events += next.events.len();
            group.push(next);
        }
        // A consumer that stopped waiting has given its batch up.
        group.retain(|request| !request.answer.is_closed());
        if group.len() > 1 {
            match store.apply_group(&group).await {
                Ok(summaries) => {
                    stats.committed(group.len());
                    for (request, summary) in group.into_iter().zip(summaries) {
                        let _ = request.answer.send(Ok(summary));
                    }
                    continue;
                }
                Err(error) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, batches = group.len(), "a group commit failed; applying its batches one by one");
                }
            }
        }
        for request in group {
            let inputs = request.inputs();
            let handed = request.asked.elapsed();
            let answer = store
                .apply_alone(&inputs, &request.applier, request.dedup)
                .await
                .map(|summary| ApplySummary {
                    queued: handed + summary.queued,
                    ..summary
                });
            if answer.is_ok() {
                stats.committed(1);
            }
            let _ = request.answer.send(answer);
        }
    }
}

impl Store {
    /// Applies the group's batches in one transaction, in order; returns each one's
    /// summary (its queued time: from its hand-over to the transaction's start).
    async fn apply_group(&self, group: &[Request]) -> Result<Vec<ApplySummary>, StoreError> {
        self.retrying("applying a group of batches", || async move {
            let mut transaction = self.begin_write().await?;
            let began = Instant::now();
            let mut summaries = Vec::with_capacity(group.len());
            for request in group {
                let summary = self
                    .apply_in(&mut transaction, &request.inputs(), &request.applier, request.dedup)
                    .await?;
                summaries.push(ApplySummary {
                    queued: began.saturating_duration_since(request.asked),
                    ..summary
                });
            }
            self.count(1);
            transaction.commit().await?;
            Ok(summaries)
        })
        .await
    }
}
