//! Reading a store back: final balances and positions, the apply log, the backlog.

use crate::{Store, StoreError};
use sqlx::Row;
use std::collections::BTreeMap;
use tradeflow_domain::{AccountId, AccountState, Money, Symbol};

/// One row of the apply log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRow {
    /// The event id, as text.
    pub event_id: String,
    /// The account.
    pub account_id: String,
    /// The event's `account_seq`.
    pub account_seq: i64,
    /// 1, 2, 3, ...: the order in which the account saw its events.
    pub account_apply_index: i64,
    /// Intended send time, ns since the epoch.
    pub intended_at_ns: i64,
    /// When the applying transaction ran, ns since the epoch (before its commit).
    pub applied_at_ns: i64,
    /// Who applied it (poller or consumer name).
    pub applier: String,
}

/// One row of the apply journal: one apply, a repeated one included, as it is read (the
/// text borrowed from the row, not copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRow<'a> {
    /// The event id, as text.
    pub event_id: &'a str,
    /// The account the apply touched.
    pub account_id: &'a str,
    /// 1, 2, 3, ...: the order in which the account saw its applies.
    pub account_apply_index: i64,
}

/// Unprocessed rows of the poller's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// How many rows wait.
    pub rows: i64,
    /// Intended send time of the oldest waiting row, ns since the epoch.
    pub oldest_intended_at_ns: Option<i64>,
}

impl Store {
    /// One account's cash as the balances table holds it now (zero for an account it has
    /// not seen): what an order service reads to decide whether a customer can buy.
    pub async fn cash_of(&self, account: &AccountId) -> Result<Money, StoreError> {
        const OPERATION: &str = "reading an account's cash";
        self.count(1);
        let sql = format!("SELECT cash FROM balances WHERE account_id = {}", crate::placeholder(self.kind, 1));
        let row = sqlx::query(&sql)
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        match row {
            Some(row) => Ok(Money::from_minor(row.try_get(0).map_err(self.query_error(OPERATION))?)),
            None => Ok(Money::from_minor(0)),
        }
    }

    /// One account's cash and the highest `account_seq` applied to it (0 when none), read
    /// in one statement so that the two agree: what an order service that waits for the
    /// trades it knows of reads.
    pub async fn cash_and_applied_seq(&self, account: &AccountId) -> Result<(Money, u64), StoreError> {
        const OPERATION: &str = "reading an account's cash and applied sequence";
        self.count(1);
        // `$1` twice, bound once: on SQLite a named parameter is one parameter wherever it
        // appears.
        let sql = "SELECT COALESCE((SELECT cash FROM balances WHERE account_id = $1), 0), \
                   COALESCE((SELECT MAX(account_seq) FROM apply_log WHERE account_id = $1), 0)";
        let row = sqlx::query(sql)
            .bind(account.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        let cash: i64 = row.try_get(0).map_err(self.query_error(OPERATION))?;
        let seq: i64 = row.try_get(1).map_err(self.query_error(OPERATION))?;
        Ok((Money::from_minor(cash), u64::try_from(seq).unwrap_or(0)))
    }

    /// Every account's cash and positions.
    pub async fn balances(&self) -> Result<BTreeMap<AccountId, AccountState>, StoreError> {
        const OPERATION: &str = "reading balances";
        self.count(2);
        let mut accounts: BTreeMap<AccountId, AccountState> = BTreeMap::new();
        let rows = sqlx::query("SELECT account_id, cash FROM balances")
            .fetch_all(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        for row in rows {
            let account_id = self.account(&row, OPERATION)?;
            let cash: i64 = row.try_get(1).map_err(self.query_error(OPERATION))?;
            accounts.entry(account_id).or_default().cash = Money::from_minor(cash);
        }
        let rows = sqlx::query("SELECT account_id, symbol, shares FROM positions")
            .fetch_all(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        for row in rows {
            let account_id = self.account(&row, OPERATION)?;
            let symbol_text: String = row.try_get(1).map_err(self.query_error(OPERATION))?;
            let symbol = Symbol::new(symbol_text.clone()).map_err(|error| StoreError::Corrupt {
                operation: OPERATION,
                row: symbol_text,
                reason: error.to_string(),
            })?;
            let shares: i64 = row.try_get(2).map_err(self.query_error(OPERATION))?;
            accounts.entry(account_id).or_default().positions.insert(symbol, shares);
        }
        Ok(accounts)
    }

    /// The apply log in apply order.
    pub async fn apply_log(&self) -> Result<Vec<AppliedRow>, StoreError> {
        const OPERATION: &str = "reading the apply log";
        self.count(1);
        let rows = sqlx::query("SELECT event_id, account_id, account_seq, account_apply_index, intended_at_ns, applied_at_ns, applier FROM apply_log ORDER BY apply_id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        rows.iter()
            .map(|row| {
                Ok(AppliedRow {
                    event_id: row.try_get(0)?,
                    account_id: row.try_get(1)?,
                    account_seq: row.try_get(2)?,
                    account_apply_index: row.try_get(3)?,
                    intended_at_ns: row.try_get(4)?,
                    applied_at_ns: row.try_get(5)?,
                    applier: row.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(self.query_error(OPERATION))
    }

    /// The apply journal in apply order: every apply, a repeated one included, handed to
    /// `each` one row at a time as the database streams it (a checker of millions of
    /// applies keeps what it needs of each row, not the rows). Returns the rows read; an
    /// error from `each` stops the read and is returned.
    pub async fn each_journal_row(&self, mut each: impl FnMut(JournalRow<'_>) -> Result<(), StoreError>) -> Result<u64, StoreError> {
        use futures_util::TryStreamExt;
        const OPERATION: &str = "reading the apply journal";
        self.count(1);
        let mut rows =
            sqlx::query("SELECT event_id, account_id, account_apply_index FROM apply_journal ORDER BY journal_id").fetch(&self.pool);
        let mut read = 0;
        while let Some(row) = rows.try_next().await.map_err(self.query_error(OPERATION))? {
            let event_id: &str = row.try_get(0).map_err(self.query_error(OPERATION))?;
            let account_id: &str = row.try_get(1).map_err(self.query_error(OPERATION))?;
            let account_apply_index: i64 = row.try_get(2).map_err(self.query_error(OPERATION))?;
            each(JournalRow {
                event_id,
                account_id,
                account_apply_index,
            })?;
            read += 1;
        }
        Ok(read)
    }

    /// Rows of `trade_events` not yet processed, and the oldest one's intended send time.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        const OPERATION: &str = "measuring the backlog";
        self.count(1);
        let row = sqlx::query("SELECT COUNT(*), MIN(intended_at_ns) FROM trade_events WHERE processed_at_ns IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        Ok(Backlog {
            rows: row.try_get(0).map_err(self.query_error(OPERATION))?,
            oldest_intended_at_ns: row.try_get(1).map_err(self.query_error(OPERATION))?,
        })
    }

    /// Rows the poller refused, with their reasons.
    pub async fn failed_source_rows(&self) -> Result<Vec<(String, String)>, StoreError> {
        const OPERATION: &str = "reading refused rows";
        self.count(1);
        let rows = sqlx::query("SELECT event_id, error FROM trade_events WHERE error IS NOT NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.query_error(OPERATION))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(self.query_error(OPERATION))
    }

    fn account(&self, row: &sqlx::any::AnyRow, operation: &'static str) -> Result<AccountId, StoreError> {
        let text: String = row.try_get(0).map_err(self.query_error(operation))?;
        AccountId::new(text.clone()).map_err(|error| StoreError::Corrupt {
            operation,
            row: text,
            reason: error.to_string(),
        })
    }
}
