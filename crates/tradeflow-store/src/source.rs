//! The poller baseline's table: the system of record inserts events into `trade_events`,
//! and a poller claims unprocessed rows and applies them in the same transaction.

use crate::apply::{ApplyInput, check_batch_size};
use crate::{ROWS_PER_STATEMENT_MAX, Store, StoreError, StoreKind, list, now_ns, value_rows};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tradeflow_domain::{AccountId, Event, decode, encode};

/// One row for `trade_events`.
#[derive(Debug, Clone)]
pub struct SourceRow<'a> {
    /// The event, encoded with the wire format as the payload.
    pub event: &'a Event,
    /// Its index in the run's workload.
    pub event_index: u64,
    /// When it was meant to be sent, ns since the epoch.
    pub intended_at_ns: i64,
}

/// A row of the outbox (`trade_events`) as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row id.
    pub id: i64,
    /// The event, encoded with the wire format.
    pub payload: String,
    /// When it was meant to be sent, ns since the epoch.
    pub intended_at_ns: i64,
    /// Its index in the run's workload (none in a row written before the column was).
    pub event_index: Option<i64>,
}

/// Which accounts a poller owns: those whose shard key modulo `count` is `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This poller's shard, `0..count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

/// A row the poller could not decode: kept in the table with its reason, never applied,
/// never lost (the poller's dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledFailure {
    /// The row id.
    pub row_id: i64,
    /// The event id the row claims.
    pub event_id: String,
    /// Why it was refused.
    pub reason: String,
}

/// What one poll did, after its commit.
#[derive(Debug, Clone, Default)]
pub struct PollOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Events applied.
    pub applied: usize,
    /// Events already applied before (skipped).
    pub duplicates: usize,
    /// Rows refused.
    pub failed: Vec<PolledFailure>,
    /// Intended send times of the claimed events that were decoded, for latency.
    pub intended_at_ns: Vec<i64>,
    /// When the transaction committed, ns since the epoch.
    pub committed_at_ns: i64,
}

/// A stable shard key for an account: FNV-1a over its id, kept non-negative so that SQL's
/// `%` agrees with Rust's.
pub fn shard_key(account_id: &AccountId) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in account_id.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(hash >> 1).unwrap_or(0)
}

impl Shard {
    /// Whether this shard owns an account.
    pub fn owns(&self, account_id: &AccountId) -> bool {
        shard_key(account_id) % i64::from(self.count) == i64::from(self.index)
    }
}

impl Store {
    /// The system of record's write: inserts events into `trade_events` in one transaction.
    pub async fn insert_source_events(&self, rows: &[SourceRow<'_>]) -> Result<(), StoreError> {
        self.insert_source_events_holding(rows, std::time::Duration::ZERO).await
    }

    /// Like [`Store::insert_source_events`], with the transaction held open for `hold`
    /// after the insert, as a business transaction that does more work beside its outbox
    /// row would: on PostgreSQL the row's id is drawn at the insert, so concurrent writers
    /// commit ids out of order (SQLite's one writer at a time cannot).
    pub async fn insert_source_events_holding(&self, rows: &[SourceRow<'_>], hold: std::time::Duration) -> Result<(), StoreError> {
        check_batch_size("inserting source events", rows.len())?;
        let encoded: Vec<(String, String)> = rows
            .iter()
            .map(|row| {
                (
                    row.event.event_id.to_string(),
                    String::from_utf8_lossy(&encode(row.event)).into_owned(),
                )
            })
            .collect();
        self.retrying("inserting source events", || {
            let encoded = &encoded;
            async move {
                let mut transaction = self.begin_write().await?;
                let inserted_at_ns = now_ns();
                for (chunk, encoded_chunk) in rows.chunks(ROWS_PER_STATEMENT_MAX).zip(encoded.chunks(ROWS_PER_STATEMENT_MAX)) {
                    let sql = format!(
                        "INSERT INTO trade_events (event_id, account_id, account_seq, shard_key, payload, intended_at_ns, inserted_at_ns, event_index) VALUES {}",
                        value_rows(self.kind, chunk.len(), 8)
                    );
                    let mut query = sqlx::query(&sql);
                    for (row, (event_id, payload)) in chunk.iter().zip(encoded_chunk) {
                        query = query
                            .bind(event_id.as_str())
                            .bind(row.event.account_id.as_str())
                            .bind(i64::try_from(row.event.account_seq).unwrap_or(i64::MAX))
                            .bind(shard_key(&row.event.account_id))
                            .bind(payload.as_str())
                            .bind(row.intended_at_ns)
                            .bind(inserted_at_ns)
                            .bind(i64::try_from(row.event_index).unwrap_or(i64::MAX));
                    }
                    self.count(1);
                    query.execute(&mut *transaction).await?;
                }
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                self.count(1);
                transaction.commit().await
            }
        })
        .await
    }

    /// The outbox relay's read: up to `limit` rows of `trade_events` in id order, those
    /// with an id above `after` (the naive relay's "everything after the last id I saw"),
    /// or, with `after` `None`, those not yet marked relayed (the claiming relay's).
    pub async fn outbox_rows(&self, after: Option<i64>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        check_batch_size("reading the outbox", limit)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Placeholders in the order they appear: SQLite numbers `$N` by appearance.
        let query = match after {
            Some(after) => {
                sqlx::query("SELECT id, payload, intended_at_ns, event_index FROM trade_events WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after)
                    .bind(limit)
            }
            None => sqlx::query(
                "SELECT id, payload, intended_at_ns, event_index FROM trade_events WHERE processed_at_ns IS NULL ORDER BY id LIMIT $1",
            )
            .bind(limit),
        };
        self.count(1);
        let rows = query.fetch_all(&self.pool).await.map_err(self.query_error("reading the outbox"))?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: row.try_get(0)?,
                    payload: row.try_get(1)?,
                    intended_at_ns: row.try_get(2)?,
                    event_index: row.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(self.query_error("reading the outbox"))
    }

    /// Marks outbox rows relayed (the broker acknowledged them), so that the claiming
    /// relay does not read them again.
    pub async fn mark_relayed(&self, ids: &[i64]) -> Result<(), StoreError> {
        check_batch_size("marking outbox rows relayed", ids.len())?;
        self.retrying("marking outbox rows relayed", || async move {
            let mut transaction = self.begin_write().await?;
            self.mark_processed(&mut transaction, ids, &[]).await?;
            self.count(1);
            transaction.commit().await
        })
        .await
    }

    /// Inserts a row whose payload is whatever bytes a broken producer wrote, to show what
    /// the poller does with it.
    pub async fn insert_raw_source_row(
        &self,
        event_id: &str,
        account_id: &str,
        payload: &str,
        intended_at_ns: i64,
    ) -> Result<(), StoreError> {
        self.count(1);
        sqlx::query("INSERT INTO trade_events (event_id, account_id, account_seq, shard_key, payload, intended_at_ns, inserted_at_ns) VALUES ($1,$2,$3,$4,$5,$6,$7)")
            .bind(event_id)
            .bind(account_id)
            .bind(0_i64)
            .bind(0_i64)
            .bind(payload)
            .bind(intended_at_ns)
            .bind(now_ns())
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(self.query_error("inserting a raw source row"))
    }

    /// One poll: claims up to `batch_size` unprocessed rows (of one shard, if given), in id
    /// order, applies them and marks them processed, all in one transaction. On
    /// PostgreSQL the claim is `FOR UPDATE SKIP LOCKED`, so concurrent pollers take
    /// different rows; on SQLite the write lock serializes pollers.
    pub async fn poll_once(&self, batch_size: usize, shard: Option<Shard>, applier: &str) -> Result<PollOutcome, StoreError> {
        check_batch_size("polling", batch_size)?;
        if let Some(shard) = shard
            && (shard.count == 0 || shard.index >= shard.count)
        {
            return Err(StoreError::Invalid {
                operation: "polling",
                reason: format!("shard {} of {} does not exist", shard.index, shard.count),
            });
        }
        self.retrying("polling trade_events", || async move {
            let mut transaction = self.begin_write().await?;
            let rows = self.claim_rows(&mut transaction, batch_size, shard).await?;
            let claimed = Claimed::decode(&rows)?;
            let inputs: Vec<ApplyInput<'_>> = claimed
                .decoded
                .iter()
                .map(|(event, intended_at_ns)| ApplyInput {
                    event,
                    intended_at_ns: *intended_at_ns,
                })
                .collect();
            let summary = self
                .apply_in(&mut transaction, &inputs, applier, crate::apply::Dedup::ApplyLog)
                .await?;
            self.mark_processed(&mut transaction, &claimed.processed_ids, &claimed.failed)
                .await?;
            self.count(1);
            transaction.commit().await?;
            Ok(PollOutcome {
                claimed: rows.len(),
                applied: summary.applied,
                duplicates: summary.duplicates,
                intended_at_ns: claimed.decoded.iter().map(|(_, intended_at_ns)| *intended_at_ns).collect(),
                failed: claimed.failed,
                committed_at_ns: now_ns(),
            })
        })
        .await
    }

    /// Selects up to `batch_size` unprocessed rows (of one shard, if given) in id order,
    /// locking them on PostgreSQL and skipping rows another poller holds.
    async fn claim_rows(
        &self,
        connection: &mut AnyConnection,
        batch_size: usize,
        shard: Option<Shard>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let lock = match self.kind {
            StoreKind::Postgres => " FOR UPDATE SKIP LOCKED",
            StoreKind::Sqlite => "",
        };
        let filter = if shard.is_some() { " AND shard_key % $2 = $3" } else { "" };
        let sql = format!(
            "SELECT id, event_id, payload, intended_at_ns FROM trade_events WHERE processed_at_ns IS NULL{filter} ORDER BY id LIMIT $1{lock}"
        );
        let mut query = sqlx::query(&sql).bind(i64::try_from(batch_size).unwrap_or(i64::MAX));
        if let Some(shard) = shard {
            query = query.bind(i64::from(shard.count)).bind(i64::from(shard.index));
        }
        self.count(1);
        query.fetch_all(&mut *connection).await
    }

    /// Marks the claimed rows processed: those applied by id, in chunks, and each refused
    /// one with its reason.
    async fn mark_processed(
        &self,
        connection: &mut AnyConnection,
        processed_ids: &[i64],
        failed: &[PolledFailure],
    ) -> Result<(), sqlx::Error> {
        let processed_at_ns = now_ns();
        for chunk in processed_ids.chunks(ROWS_PER_STATEMENT_MAX) {
            // One placeholder style per statement: sqlx's SQLite driver does not number a
            // `?` after a `$1` the way SQLite does.
            let sql = format!(
                "UPDATE trade_events SET processed_at_ns = {} WHERE id IN ({})",
                crate::placeholder(self.kind, 1),
                list(self.kind, 2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(processed_at_ns);
            for id in chunk {
                query = query.bind(*id);
            }
            self.count(1);
            query.execute(&mut *connection).await?;
        }
        for failure in failed {
            self.count(1);
            sqlx::query("UPDATE trade_events SET processed_at_ns = $1, error = $2 WHERE id = $3")
                .bind(processed_at_ns)
                .bind(failure.reason.as_str())
                .bind(failure.row_id)
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

/// The rows one poll claimed, decoded.
struct Claimed {
    /// The events decoded, with their intended send times, in id order.
    decoded: Vec<(Event, i64)>,
    /// The ids of the rows decoded.
    processed_ids: Vec<i64>,
    /// The rows that could not be decoded, with why.
    failed: Vec<PolledFailure>,
}

impl Claimed {
    /// Decodes each claimed row's payload; a row that does not decode is refused, not lost.
    fn decode(rows: &[AnyRow]) -> Result<Claimed, sqlx::Error> {
        let mut claimed = Claimed {
            decoded: Vec::with_capacity(rows.len()),
            processed_ids: Vec::with_capacity(rows.len()),
            failed: Vec::new(),
        };
        for row in rows {
            let row_id: i64 = row.try_get(0)?;
            let payload: String = row.try_get(2)?;
            match decode(payload.as_bytes()) {
                Ok(event) => {
                    claimed.decoded.push((event, row.try_get::<i64, _>(3)?));
                    claimed.processed_ids.push(row_id);
                }
                Err(error) => claimed.failed.push(PolledFailure {
                    row_id,
                    event_id: row.try_get(1)?,
                    reason: error.to_string(),
                }),
            }
        }
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_accounts() {
        let accounts: Vec<AccountId> = (1..200)
            .map(|n| AccountId::new(format!("acct-{n:05}")).expect("valid id"))
            .collect();
        for account in &accounts {
            let owners = (0..3).filter(|index| Shard { index: *index, count: 3 }.owns(account)).count();
            assert_eq!(owners, 1, "{account} has {owners} owners");
        }
    }
}
