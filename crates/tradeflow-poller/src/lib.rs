//! The poller baseline: the system of record inserts trade events into a table, and
//! pollers claim unprocessed rows and apply them to balances in the same transaction.
//!
//! - [`PollerConfig`]: the knobs (poll interval, batch size, number of pollers, sharding).
//! - [`poll_loop`]: one poller.
//! - [`run`]: a whole seeded run: the open-loop source, the pollers, the checker, the
//!   record.
//!
//! With several pollers on PostgreSQL, each claims rows with `FOR UPDATE SKIP LOCKED`.
//! Unsharded, two pollers can hold consecutive events of one account in two transactions
//! and commit them in either order: per-account order is lost, and the checker shows it.
//! Sharded (`shard_by_account`), each poller owns a disjoint set of accounts and order
//! holds. On SQLite the single writer serializes pollers, so order holds either way.

pub mod run;

pub use run::{RunOptions, run};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::LatencyRecorder;
use tradeflow_store::{Shard, Store, StoreError};

/// Most pollers one run may start.
pub const POLLERS_MAX: u32 = 64;
/// Largest batch one poll may claim.
pub const POLL_BATCH_MAX: usize = 10_000;
/// Longest poll interval accepted.
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// A poller error.
#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    /// The configuration is out of bounds.
    #[error("invalid poller configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The workload could not be generated.
    #[error(transparent)]
    Workload(#[from] tradeflow_domain::WorkloadError),
    /// A poller or the source task panicked or was cancelled.
    #[error("{task} stopped unexpectedly: {reason}")]
    Task {
        /// Which task.
        task: String,
        /// What the runtime said.
        reason: String,
    },
}

/// The poller's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerConfig {
    /// How long a poller sleeps after a poll that found less than a full batch.
    pub poll_interval: Duration,
    /// Most rows one poll claims.
    pub batch_size: usize,
    /// Number of pollers.
    pub pollers: u32,
    /// Whether each poller owns a disjoint set of accounts.
    pub shard_by_account: bool,
}

impl Default for PollerConfig {
    /// 100 ms and 500 rows: a common outbox-poller setting (short enough that the poll
    /// interval does not dominate latency, large enough to amortize a transaction).
    fn default() -> Self {
        PollerConfig {
            poll_interval: Duration::from_millis(100),
            batch_size: 500,
            pollers: 1,
            shard_by_account: false,
        }
    }
}

impl PollerConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), PollerError> {
        let reason = if self.pollers == 0 || self.pollers > POLLERS_MAX {
            format!("pollers must be 1..={POLLERS_MAX}, got {}", self.pollers)
        } else if self.batch_size == 0 || self.batch_size > POLL_BATCH_MAX {
            format!("batch size must be 1..={POLL_BATCH_MAX}, got {}", self.batch_size)
        } else if self.poll_interval > POLL_INTERVAL_MAX {
            format!(
                "poll interval must be at most {} s, got {:?}",
                POLL_INTERVAL_MAX.as_secs(),
                self.poll_interval
            )
        } else {
            return Ok(());
        };
        Err(PollerError::Config { reason })
    }

    /// A short description, for tables and records.
    pub fn label(&self) -> String {
        let sharding = if self.pollers > 1 {
            if self.shard_by_account { " sharded" } else { " unsharded" }
        } else {
            ""
        };
        format!(
            "poller interval={}ms batch={} pollers={}{sharding}",
            self.poll_interval.as_millis(),
            self.batch_size,
            self.pollers
        )
    }

    /// The shard poller `index` owns, if sharding is on.
    pub fn shard(&self, index: u32) -> Option<Shard> {
        self.shard_by_account.then_some(Shard {
            index,
            count: self.pollers,
        })
    }
}

/// Counters shared by the pollers of a run.
#[derive(Debug, Default)]
pub struct PollerCounters {
    /// Events applied.
    pub applied: AtomicU64,
    /// Rows processed: applied, skipped as duplicates, or refused.
    pub processed: AtomicU64,
    /// Rows refused (undecodable payloads).
    pub refused: AtomicU64,
    /// Latest commit, ns since the epoch.
    pub last_commit_ns: AtomicU64,
}

/// One poller: polls until `stop` turns true, sleeping `poll_interval` after any poll that
/// claimed less than a full batch. Returns the latencies it measured, from each event's
/// intended send time to the commit of its balance update.
#[tracing::instrument(skip_all, fields(poller = %name))]
pub async fn poll_loop(
    store: Store,
    config: PollerConfig,
    shard: Option<Shard>,
    name: String,
    mut stop: watch::Receiver<bool>,
    counters: Arc<PollerCounters>,
) -> Result<LatencyRecorder, PollerError> {
    let mut latency = LatencyRecorder::new();
    while !*stop.borrow() {
        let outcome = store.poll_once(config.batch_size, shard, &name).await?;
        for intended_at_ns in &outcome.intended_at_ns {
            latency.record_ns(outcome.committed_at_ns - intended_at_ns);
        }
        for failure in &outcome.failed {
            tracing::warn!(row_id = failure.row_id, trade.event_id = %failure.event_id, reason = %failure.reason, "refused an undecodable row; kept in trade_events with its reason");
        }
        counters.applied.fetch_add(outcome.applied as u64, Ordering::Relaxed);
        counters.refused.fetch_add(outcome.failed.len() as u64, Ordering::Relaxed);
        counters.processed.fetch_add(outcome.claimed as u64, Ordering::Relaxed);
        if outcome.claimed > 0 {
            counters
                .last_commit_ns
                .fetch_max(u64::try_from(outcome.committed_at_ns).unwrap_or(0), Ordering::Relaxed);
        }
        if outcome.claimed < config.batch_size {
            // A short poll means the table is drained: wait for the interval or for stop.
            let _ = tokio::time::timeout(config.poll_interval, stop.changed()).await;
        }
    }
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_enforced() {
        let config = |pollers, batch_size| PollerConfig {
            pollers,
            batch_size,
            ..PollerConfig::default()
        };
        assert!(config(0, 10).validate().is_err());
        assert!(config(POLLERS_MAX + 1, 10).validate().is_err());
        assert!(config(1, 0).validate().is_err());
        assert!(config(2, POLL_BATCH_MAX).validate().is_ok());
    }

    #[test]
    fn labels_say_how_pollers_share_the_table() {
        let sharded = PollerConfig {
            pollers: 2,
            shard_by_account: true,
            ..PollerConfig::default()
        };
        assert_eq!(sharded.label(), "poller interval=100ms batch=500 pollers=2 sharded");
        assert_eq!(sharded.shard(1), Some(Shard { index: 1, count: 2 }));
        assert_eq!(PollerConfig::default().shard(0), None);
    }
}
