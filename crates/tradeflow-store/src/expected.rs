//! The checker's side of the store: a copy of what the workload emitted (`check_expected`)
//! written after a run, and the apply journal read back joined to it, in the database, so
//! that checking millions of applies holds none of them in memory.

use crate::{Store, StoreError, value_rows};
use sqlx::{Executor, Row};

/// Rows of `check_expected` written by one statement.
const EXPECTED_ROWS_PER_STATEMENT: usize = 500;

/// One event the workload emitted, as the checker writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRow {
    /// The event id, as text (as the journal holds it).
    pub event_id: String,
    /// Its index in the workload.
    pub event_index: u64,
    /// The workload's account of the event.
    pub account_id: String,
    /// Whether it had to be applied.
    pub must_apply: bool,
}

/// What the apply journal says against the checker's copy of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalCounts {
    /// Rows of the journal: every apply, a repeated one included.
    pub applies: u64,
    /// Distinct events among them.
    pub distinct_applied: u64,
    /// Events that had to be applied.
    pub must_apply: u64,
    /// Distinct events that had to be applied and were.
    pub must_apply_applied: u64,
}

/// One apply, in its account's apply order (accounts one after another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountApply<'a> {
    /// The workload's account of the event, or the journal's for an event the workload
    /// never emitted.
    pub account_id: &'a str,
    /// The apply's number in that account's order.
    pub account_apply_index: i64,
    /// The event's index in the workload; none for an event it never emitted.
    pub event_index: Option<u64>,
}

impl Store {
    /// Replaces the checker's copy of the workload with `rows` (one transaction); returns
    /// the rows the database says it inserted.
    pub async fn write_expected(&self, rows: impl IntoIterator<Item = ExpectedRow>) -> Result<u64, StoreError> {
        const OPERATION: &str = "writing the checker's copy of the workload";
        let mut transaction = self.begin_write().await.map_err(self.query_error(OPERATION))?;
        self.count(1);
        transaction
            .execute("DELETE FROM check_expected")
            .await
            .map_err(self.query_error(OPERATION))?;
        let mut written = 0;
        let mut chunk = Vec::with_capacity(EXPECTED_ROWS_PER_STATEMENT);
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            chunk.clear();
            chunk.extend(rows.by_ref().take(EXPECTED_ROWS_PER_STATEMENT));
            let sql = format!(
                "INSERT INTO check_expected (event_id, event_index, account_id, must_apply) VALUES {}",
                value_rows(self.kind, chunk.len(), 4)
            );
            let mut query = sqlx::query(&sql);
            for row in &chunk {
                query = query
                    .bind(row.event_id.as_str())
                    .bind(i64::try_from(row.event_index).unwrap_or(i64::MAX))
                    .bind(row.account_id.as_str())
                    .bind(i32::from(row.must_apply));
            }
            self.count(1);
            written += query
                .execute(&mut *transaction)
                .await
                .map_err(self.query_error(OPERATION))?
                .rows_affected();
        }
        self.count(1);
        transaction.commit().await.map_err(self.query_error(OPERATION))?;
        Ok(written)
    }

    /// Counts of the apply journal against the checker's copy of the workload.
    pub async fn journal_counts(&self) -> Result<JournalCounts, StoreError> {
        const OPERATION: &str = "counting the apply journal against the workload";
        let count = |sql: &'static str| async move {
            self.count(1);
            let row = sqlx::query(sql).fetch_one(&self.pool).await.map_err(self.query_error(OPERATION))?;
            let found: i64 = row.try_get(0).map_err(self.query_error(OPERATION))?;
            Ok::<u64, StoreError>(u64::try_from(found).unwrap_or(0))
        };
        Ok(JournalCounts {
            applies: count("SELECT COUNT(*) FROM apply_journal").await?,
            distinct_applied: count("SELECT COUNT(DISTINCT event_id) FROM apply_journal").await?,
            must_apply: count("SELECT COUNT(*) FROM check_expected WHERE must_apply = 1").await?,
            must_apply_applied: count(
                "SELECT COUNT(DISTINCT j.event_id) FROM apply_journal j JOIN check_expected e ON e.event_id = j.event_id WHERE e.must_apply = 1",
            )
            .await?,
        })
    }

    /// Every apply of the journal, account after account, each account's in its apply
    /// order (ties in the order they were journalled). An apply is placed under the
    /// workload's account of its event (the checker's copy), not the journal's, unless the
    /// workload never emitted it. Returns how many were read.
    pub async fn each_apply_in_account_order(
        &self,
        mut each: impl FnMut(AccountApply<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        use futures_util::TryStreamExt;
        const OPERATION: &str = "reading the apply journal in account order";
        self.count(1);
        // The database sorts (SQLite's sorter and PostgreSQL's spill to temporary files
        // past their memory budget): the read holds one row at a time here.
        let mut rows = sqlx::query(
            "SELECT COALESCE(e.account_id, j.account_id) AS account, j.account_apply_index, e.event_index \
             FROM apply_journal j LEFT JOIN check_expected e ON e.event_id = j.event_id \
             ORDER BY account, j.account_apply_index, j.journal_id",
        )
        .fetch(&self.pool);
        let mut read = 0;
        while let Some(row) = rows.try_next().await.map_err(self.query_error(OPERATION))? {
            let account_id: &str = row.try_get(0).map_err(self.query_error(OPERATION))?;
            let account_apply_index: i64 = row.try_get(1).map_err(self.query_error(OPERATION))?;
            let event_index: Option<i64> = row.try_get(2).map_err(self.query_error(OPERATION))?;
            each(AccountApply {
                account_id,
                account_apply_index,
                event_index: event_index.and_then(|index| u64::try_from(index).ok()),
            })?;
            read += 1;
        }
        Ok(read)
    }
}
