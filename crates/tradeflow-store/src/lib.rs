//! The stores: balances, positions, the poller's event table and the apply log, on a real
//! SQLite file (the embedded default, WAL mode) or a real PostgreSQL server.
//!
//! Both backends hold the same schema (migrations embedded in the binary, one folder per
//! backend) and share every SQL statement but the poller's `FOR UPDATE SKIP LOCKED`.
//!
//! - [`connect`]: URLs, pools, migrations, and the errors a person can act on.
//! - [`apply`]: a batch of events applied in one transaction with its apply-log rows;
//!   applying an event already in the apply log changes nothing.
//! - [`source`]: the system of record's writes to `trade_events` and the poller's claim.
//! - [`read`]: what the checker and the reports read back.
//!
//! Architecture invariant: nothing in this crate knows about Kafka or about pollers'
//! scheduling; it only turns batches into transactions.

pub mod apply;
pub mod connect;
pub mod expected;
mod group;
pub mod read;
pub mod source;
pub mod spill;

pub use apply::{ApplyInput, ApplySummary, Dedup};
pub use connect::{StoreConfig, StoreKind};
pub use expected::{AccountApply, ExpectedRow, JournalCounts};
pub use group::GroupCommits;
pub use read::{AppliedRow, Backlog, JournalRow};
pub use source::{OutboxRow, PollOutcome, PolledFailure, Shard, SourceRow};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most rows one multi-row statement carries: keeps every statement under SQLite's and
/// PostgreSQL's bind-parameter limits.
pub const ROWS_PER_STATEMENT_MAX: usize = 1_000;
/// Most events one batch may hold.
pub const BATCH_EVENTS_MAX: usize = 100_000;
/// How many times a transaction that lost a race (deadlock, serialization failure, a
/// concurrent insert of the same event, SQLite busy) is tried before giving up.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 8;
/// Backoff after the first lost race; doubled on each further attempt.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(2);

/// A store error, with what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("bad database URL {url:?}: {reason}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The server or file cannot be reached.
    #[error("cannot open {kind} database at {url}: {error}; {hint}")]
    Connect {
        /// Which backend.
        kind: StoreKind,
        /// The URL, password removed.
        url: String,
        /// What to check.
        hint: &'static str,
        /// The driver's error.
        error: sqlx::Error,
    },
    /// The database was migrated by a newer build.
    #[error(
        "the {kind} database at {url} has schema migration {found}, which this build does not know (it knows up to {known}); use the tradeflow build that wrote it, or an empty database"
    )]
    UnknownSchema {
        /// Which backend.
        kind: StoreKind,
        /// The URL, password removed.
        url: String,
        /// The unknown migration version.
        found: i64,
        /// The newest migration this build has.
        known: i64,
    },
    /// Migrating failed for another reason (for example a table of the same name that is
    /// not tradeflow's).
    #[error("migrating the {kind} database at {url}: {error}")]
    Migrate {
        /// Which backend.
        kind: StoreKind,
        /// The URL, password removed.
        url: String,
        /// The migrator's error.
        error: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("{operation} on {kind}: {error}")]
    Query {
        /// Which backend.
        kind: StoreKind,
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        error: sqlx::Error,
    },
    /// The group-commit writer ended before it answered (its runtime ended).
    #[error("{operation}: the group-commit writer is gone (its runtime ended) before it answered")]
    GroupWriterGone {
        /// What was being done.
        operation: &'static str,
    },
    /// A transaction kept losing races.
    #[error("{operation} on {kind} lost {attempts} races in a row; last: {error}")]
    RetriesExhausted {
        /// Which backend.
        kind: StoreKind,
        /// What was being done.
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: sqlx::Error,
    },
    /// The caller asked for something out of bounds.
    #[error("{operation}: {reason}")]
    Invalid {
        /// What was being done.
        operation: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A row read back does not hold what tradeflow wrote (edited by hand?).
    #[error("{operation}: row {row} is corrupt: {reason}")]
    Corrupt {
        /// What was being done.
        operation: &'static str,
        /// The row's key.
        row: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A connected store. Cheap to clone: clones share the pool and the statement counter.
#[derive(Clone, Debug)]
pub struct Store {
    pool: sqlx::AnyPool,
    kind: StoreKind,
    url_redacted: String,
    /// The URL as given, password included: for a second pool to the same database (a
    /// lesson's path through a chaos proxy); never printed.
    url: connect::SecretUrl,
    statements: Arc<AtomicU64>,
    /// The group-commit writer its batches go to, if it has one.
    group: Option<group::GroupWriter>,
}

impl StoreError {
    /// Whether the error says the database could not be reached or could not answer (a
    /// connection refused, reset or timed out, the server shutting down or refusing
    /// connections, a SQLite file locked by another process for longer than the busy
    /// timeout), as against a statement the database refused: the first is worth trying
    /// again later; the second would fail the same way.
    pub fn is_unavailable(&self) -> bool {
        let error = match self {
            StoreError::Query { error, .. } | StoreError::Connect { error, .. } => error,
            StoreError::RetriesExhausted { error, .. } => return is_lost_race(error) || unavailable(error),
            _ => return false,
        };
        unavailable(error) || is_lost_race(error)
    }
}

/// Whether a driver error means the database is out of reach (see
/// [`StoreError::is_unavailable`]).
fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
            true
        }
        // Connection exceptions (08xxx), the server shutting down or starting (57P01..57P03),
        // too many connections (53300).
        sqlx::Error::Database(database_error) => database_error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0") || code == "53300"),
        _ => false,
    }
}

impl Store {
    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The URL with any password removed, for logs and reports.
    pub fn url_redacted(&self) -> &str {
        &self.url_redacted
    }

    /// Statements sent to the database so far (transaction control included) by this
    /// store and its clones.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// The pool, for tests that reach into the database directly (to install a failing
    /// trigger, say).
    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    /// This store with a group-commit writer (see [`group`]): the batches its clones apply
    /// through [`Store::apply_batch_as`] go to one writer, which applies those waiting
    /// together in one transaction. Starts the writer on the current tokio runtime; it ends
    /// when the last clone of the returned store is dropped. A store that has one already
    /// is returned as it is.
    pub fn group_committing(&self) -> Store {
        if self.group.is_some() {
            return self.clone();
        }
        Store {
            group: Some(group::GroupWriter::start(self.clone())),
            ..self.clone()
        }
    }

    /// With a group-commit writer, what it did so far; `None` without one.
    pub fn group_commits(&self) -> Option<GroupCommits> {
        self.group.as_ref().map(|writer| writer.stats.read())
    }

    fn count(&self, statements: u64) {
        self.statements.fetch_add(statements, Ordering::Relaxed);
    }

    fn query_error(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        move |error| StoreError::Query {
            kind: self.kind,
            operation,
            error,
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first cannot upgrade to a writer when
    /// another connection wrote in between.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.count(1);
        match self.kind {
            StoreKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            StoreKind::Postgres => self.pool.begin().await,
        }
    }

    /// Runs `attempt` until it succeeds, fails for a reason other than a lost race, or has
    /// lost [`TRANSACTION_ATTEMPTS_MAX`] races.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = RETRY_BACKOFF_MIN;
        for attempt_number in 1..=TRANSACTION_ATTEMPTS_MAX {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if is_lost_race(&error) && attempt_number < TRANSACTION_ATTEMPTS_MAX => {
                    tracing::debug!(operation, attempt = attempt_number, %error, "transaction lost a race; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(error) if is_lost_race(&error) => {
                    return Err(StoreError::RetriesExhausted {
                        kind: self.kind,
                        operation,
                        attempts: attempt_number,
                        error,
                    });
                }
                Err(error) => {
                    return Err(StoreError::Query {
                        kind: self.kind,
                        operation,
                        error,
                    });
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

/// Whether an error means "another transaction got there first; try again": PostgreSQL
/// serialization failure, deadlock or unique violation (a concurrent apply of the same
/// event), SQLite busy or locked.
fn is_lost_race(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database_error) = error else {
        return false;
    };
    let code = database_error.code();
    matches!(
        code.as_deref(),
        Some("40001" | "40P01" | "23505" | "5" | "6" | "517" | "261" | "2067" | "1555")
    )
}

/// Nanoseconds since the Unix epoch, by the wall clock (shared by every process on the
/// machine, so latencies can be measured across processes).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
}

/// Placeholders of one multi-row `VALUES` list, numbered row by row from 1: `($1,$2),($3,$4)`
/// on PostgreSQL, plain `?` on SQLite. Every statement binds its values in the order the
/// placeholders appear, so both mean the same; SQLite resolves each numbered placeholder
/// by name with a linear scan, so a batch of 1000 rows with `?N` spent most of its time
/// there (131 ms against 5 ms for 100 rows: quadratic), and plain `?` removes that.
fn value_rows(kind: StoreKind, rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            text.push(',');
        }
        text.push('(');
        for column in 0..columns {
            if column > 0 {
                text.push(',');
            }
            text.push_str(&placeholder(kind, row * columns + column + 1));
        }
        text.push(')');
    }
    text
}

/// `$first,...,$(first+count-1)` (plain `?` on SQLite): an `IN (...)` list.
fn list(kind: StoreKind, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|index| placeholder(kind, index))
        .collect::<Vec<_>>()
        .join(",")
}

/// Placeholder number `index` (from 1) in the store's dialect.
fn placeholder(kind: StoreKind, index: usize) -> String {
    match kind {
        StoreKind::Sqlite => "?".to_owned(),
        StoreKind::Postgres => format!("${index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(value_rows(StoreKind::Postgres, 2, 3), "($1,$2,$3),($4,$5,$6)");
        assert_eq!(list(StoreKind::Postgres, 3, 3), "$3,$4,$5");
        assert_eq!(value_rows(StoreKind::Sqlite, 2, 2), "(?,?),(?,?)");
        assert_eq!(list(StoreKind::Sqlite, 2, 3), "?,?,?");
    }
}
