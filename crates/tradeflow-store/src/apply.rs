//! Applying a batch of events in one transaction, together with its apply-log rows.
//!
//! The apply is set-based: per batch, one read of the apply log (to drop events already
//! applied), one upsert of every touched balance, one of every touched position and one
//! insert into the apply log. Rows are upserted in account order, so two transactions
//! always take row locks in the same order and cannot deadlock each other. The balance
//! upsert returns each account's `apply_count`, taken under the row lock, and the apply log
//! records from it the order in which each account saw its events: the checker's evidence
//! of reordering. Deltas are applied blindly, as a projection that trusts its input order
//! does: a reordering then shows as the negative balance a customer would see.

use crate::{ROWS_PER_STATEMENT_MAX, Store, StoreError, list, now_ns, value_rows};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use tradeflow_domain::{AccountId, Effect, Event, Symbol};

/// One event to apply and the time it was meant to be sent (ns since the epoch), kept in
/// the apply log so that latency can be read back from any process.
#[derive(Debug, Clone, Copy)]
pub struct ApplyInput<'a> {
    /// The event.
    pub event: &'a Event,
    /// Its intended send time.
    pub intended_at_ns: i64,
}

/// Whether an apply skips events it applied before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dedup {
    /// Events the apply log holds are skipped: applying is idempotent.
    #[default]
    ApplyLog,
    /// Every event handed over is applied, again if it was before: the naive consumer
    /// of the idempotence lesson. Never for anything else.
    None,
    /// The events the learner's chapter 04 exercise returns, given the apply log.
    Exercise,
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Events that changed balances, in batch order.
    pub applied: usize,
    /// Events skipped because the apply log already held them (or the batch held them
    /// twice).
    pub duplicates: usize,
    /// How long the transaction that committed waited for a connection that could write:
    /// SQLite's one connection (shared by every task of the process) or a pool's.
    pub queued: std::time::Duration,
}

/// Per account, the net cash delta of a batch and its number of events, in account order.
type BalanceChanges<'a> = BTreeMap<&'a AccountId, (i64, i64)>;

/// Per account and symbol, the net change of shares of a batch, in account order.
type PositionChanges<'a> = BTreeMap<(&'a AccountId, &'a Symbol), i64>;

impl Store {
    /// Applies a batch in one transaction. Events already in the apply log are skipped;
    /// either every other event is applied and logged, or (on error) none is.
    pub async fn apply_batch(&self, events: &[ApplyInput<'_>], applier: &str) -> Result<ApplySummary, StoreError> {
        self.apply_batch_as(events, applier, Dedup::ApplyLog).await
    }

    /// Applies a batch in one transaction, deduplicated or not: [`Dedup::None`] is the
    /// naive consumer of the idempotence lesson, which applies every event it is handed.
    /// With a group-commit writer ([`Store::group_committing`]), the batch is handed to it.
    pub async fn apply_batch_as(&self, events: &[ApplyInput<'_>], applier: &str, dedup: Dedup) -> Result<ApplySummary, StoreError> {
        check_batch_size("applying a batch", events.len())?;
        match &self.group {
            Some(writer) => writer.apply(events, applier, dedup).await,
            None => self.apply_alone(events, applier, dedup).await,
        }
    }

    /// Applies a batch in a transaction of its own.
    pub(crate) async fn apply_alone(&self, events: &[ApplyInput<'_>], applier: &str, dedup: Dedup) -> Result<ApplySummary, StoreError> {
        self.retrying("applying a batch", || async move {
            let asked = std::time::Instant::now();
            let mut transaction = self.begin_write().await?;
            let queued = asked.elapsed();
            let summary = self.apply_in(&mut transaction, events, applier, dedup).await?;
            self.count(1);
            transaction.commit().await?;
            Ok(ApplySummary { queued, ..summary })
        })
        .await
    }

    /// The body of an apply, inside a transaction the caller owns and commits.
    pub(crate) async fn apply_in(
        &self,
        connection: &mut AnyConnection,
        events: &[ApplyInput<'_>],
        applier: &str,
        dedup: Dedup,
    ) -> Result<ApplySummary, sqlx::Error> {
        let fresh = match dedup {
            Dedup::ApplyLog => fresh_events(&self.already_applied(connection, events).await?, events),
            Dedup::None => events.iter().map(|input| (input.event.event_id.to_string(), input)).collect(),
            Dedup::Exercise => exercise_events(&self.already_applied(connection, events).await?, events),
        };
        let summary = ApplySummary {
            applied: fresh.len(),
            duplicates: events.len() - fresh.len(),
            queued: std::time::Duration::ZERO,
        };
        if fresh.is_empty() {
            return Ok(summary);
        }
        let effects: Vec<Effect> = fresh.iter().map(|(_, input)| Effect::of(&input.event.kind)).collect();
        let (balances, positions) = net_changes(&fresh, &effects);
        let counts = self.upsert_balances(connection, &balances).await?;
        self.upsert_positions(connection, &positions).await?;
        self.insert_apply_log(connection, &fresh, &balances, &counts, applier, dedup)
            .await?;
        Ok(summary)
    }

    /// Logs each applied event in the apply log and the apply journal with its index in
    /// its account's order of applies: each account's events take the indexes after the
    /// count it had before this batch (`counts`, read back from the balance upsert), in
    /// batch order. Without dedup, an event the apply log holds already keeps its first
    /// row there; the journal gets every apply.
    async fn insert_apply_log(
        &self,
        connection: &mut AnyConnection,
        fresh: &[(String, &ApplyInput<'_>)],
        balances: &BalanceChanges<'_>,
        counts: &HashMap<String, i64>,
        applier: &str,
        dedup: Dedup,
    ) -> Result<(), sqlx::Error> {
        let mut next_index: HashMap<&AccountId, i64> = balances
            .iter()
            .map(|(account, (_, applied))| (*account, counts.get(account.as_str()).copied().unwrap_or(*applied) - applied + 1))
            .collect();
        let indexes: Vec<i64> = fresh
            .iter()
            .map(|(_, input)| {
                let index = next_index.entry(&input.event.account_id).or_insert(1);
                *index += 1;
                *index - 1
            })
            .collect();
        let applied_at_ns = now_ns();
        let on_conflict = match dedup {
            Dedup::ApplyLog => "",
            Dedup::None | Dedup::Exercise => " ON CONFLICT (event_id) DO NOTHING",
        };
        for (chunk, indexes) in fresh.chunks(ROWS_PER_STATEMENT_MAX).zip(indexes.chunks(ROWS_PER_STATEMENT_MAX)) {
            let sql = format!(
                "INSERT INTO apply_log (event_id, account_id, account_seq, account_apply_index, intended_at_ns, applied_at_ns, applier) VALUES {}{on_conflict}",
                value_rows(self.kind, chunk.len(), 7)
            );
            let mut query = sqlx::query(&sql);
            for ((event_id, input), index) in chunk.iter().zip(indexes) {
                query = query
                    .bind(event_id.as_str())
                    .bind(input.event.account_id.as_str())
                    .bind(i64::try_from(input.event.account_seq).unwrap_or(i64::MAX))
                    .bind(*index)
                    .bind(input.intended_at_ns)
                    .bind(applied_at_ns)
                    .bind(applier);
            }
            self.count(1);
            query.execute(&mut *connection).await?;
            let sql = format!(
                "INSERT INTO apply_journal (event_id, account_id, account_apply_index, applier) VALUES {}",
                value_rows(self.kind, chunk.len(), 4)
            );
            let mut query = sqlx::query(&sql);
            for ((event_id, input), index) in chunk.iter().zip(indexes) {
                query = query
                    .bind(event_id.as_str())
                    .bind(input.event.account_id.as_str())
                    .bind(*index)
                    .bind(applier);
            }
            self.count(1);
            query.execute(&mut *connection).await?;
        }
        Ok(())
    }

    async fn already_applied(&self, connection: &mut AnyConnection, events: &[ApplyInput<'_>]) -> Result<HashSet<String>, sqlx::Error> {
        let mut already = HashSet::new();
        for chunk in events.chunks(ROWS_PER_STATEMENT_MAX) {
            let sql = format!(
                "SELECT event_id FROM apply_log WHERE event_id IN ({})",
                list(self.kind, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for input in chunk {
                query = query.bind(input.event.event_id.to_string());
            }
            self.count(1);
            for row in query.fetch_all(&mut *connection).await? {
                already.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(already)
    }

    /// Adds each account's net cash delta and event count; returns the new counts.
    async fn upsert_balances(
        &self,
        connection: &mut AnyConnection,
        balances: &BTreeMap<&AccountId, (i64, i64)>,
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows: Vec<_> = balances.iter().collect();
        let mut counts = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(ROWS_PER_STATEMENT_MAX) {
            let sql = format!(
                "INSERT INTO balances (account_id, cash, apply_count) VALUES {} \
                 ON CONFLICT (account_id) DO UPDATE SET cash = balances.cash + excluded.cash, apply_count = balances.apply_count + excluded.apply_count \
                 RETURNING account_id, apply_count",
                value_rows(self.kind, chunk.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for (account, (cash, applied)) in chunk {
                query = query.bind(account.as_str()).bind(*cash).bind(*applied);
            }
            self.count(1);
            for row in query.fetch_all(&mut *connection).await? {
                counts.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
        Ok(counts)
    }

    async fn upsert_positions(
        &self,
        connection: &mut AnyConnection,
        positions: &BTreeMap<(&AccountId, &Symbol), i64>,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<_> = positions.iter().filter(|(_, shares)| **shares != 0).collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT_MAX) {
            let sql = format!(
                "INSERT INTO positions (account_id, symbol, shares) VALUES {} \
                 ON CONFLICT (account_id, symbol) DO UPDATE SET shares = positions.shares + excluded.shares",
                value_rows(self.kind, chunk.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for ((account, symbol), shares) in chunk {
                query = query.bind(account.as_str()).bind(symbol.as_str()).bind(**shares);
            }
            self.count(1);
            query.execute(&mut *connection).await?;
        }
        Ok(())
    }
}

/// The events of a batch to apply, with their ids: those the apply log does not hold
/// (`already`), each once, in batch order.
fn fresh_events<'e, 'a>(already: &HashSet<String>, events: &'e [ApplyInput<'a>]) -> Vec<(String, &'e ApplyInput<'a>)> {
    let mut seen: HashSet<String> = HashSet::with_capacity(events.len());
    let mut fresh: Vec<(String, &ApplyInput<'_>)> = Vec::with_capacity(events.len());
    for input in events {
        let event_id = input.event.event_id.to_string();
        if !already.contains(&event_id) && seen.insert(event_id.clone()) {
            fresh.push((event_id, input));
        }
    }
    fresh
}

/// The events the chapter 04 exercise says to apply, in its order; an id it returns that is
/// not in the batch is ignored.
fn exercise_events<'e, 'a>(already: &HashSet<String>, events: &'e [ApplyInput<'a>]) -> Vec<(String, &'e ApplyInput<'a>)> {
    let ids: Vec<tradeflow_domain::EventId> = events.iter().map(|input| input.event.event_id).collect();
    let by_id: HashMap<tradeflow_domain::EventId, &ApplyInput<'a>> = events.iter().map(|input| (input.event.event_id, input)).collect();
    tradeflow_exercises::events_to_apply::events_to_apply(&ids, &|event_id| already.contains(&event_id.to_string()))
        .into_iter()
        .filter_map(|event_id| Some((event_id.to_string(), *by_id.get(&event_id)?)))
        .collect()
}

/// The net change the fresh events make: per account its cash delta and event count, per
/// account and symbol its shares, both in account order.
fn net_changes<'e>(fresh: &'e [(String, &ApplyInput<'_>)], effects: &'e [Effect]) -> (BalanceChanges<'e>, PositionChanges<'e>) {
    let mut balances: BalanceChanges<'_> = BTreeMap::new();
    let mut positions: PositionChanges<'_> = BTreeMap::new();
    for ((_, input), effect) in fresh.iter().zip(effects) {
        let balance = balances.entry(&input.event.account_id).or_insert((0, 0));
        balance.0 = balance.0.saturating_add(effect.cash_delta.minor());
        balance.1 += 1;
        if let Some((symbol, shares)) = &effect.position_delta {
            let position = positions.entry((&input.event.account_id, symbol)).or_insert(0);
            *position = position.saturating_add(*shares);
        }
    }
    (balances, positions)
}

pub(crate) fn check_batch_size(operation: &'static str, len: usize) -> Result<(), StoreError> {
    if len > crate::BATCH_EVENTS_MAX {
        return Err(StoreError::Invalid {
            operation,
            reason: format!("a batch holds at most {} events, got {len}", crate::BATCH_EVENTS_MAX),
        });
    }
    Ok(())
}
