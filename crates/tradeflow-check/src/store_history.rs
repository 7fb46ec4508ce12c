//! Reading a history back from a store and checking it.

use crate::history::{CheckReport, HistoryFold};
use tradeflow_domain::{AccountId, Event, EventId, Oracle, Workload};
use tradeflow_store::{Store, StoreError};

/// Reads the apply journal (every apply, a repeated one included: the apply log's unique
/// event id would hide a double apply) row by row, and the final balances, from `store`,
/// and checks them against the workload's `events` (the index of each says, through
/// `must_apply`, whether it had to be applied) and the oracle. Each apply is placed by the
/// workload's own account and `account_seq` of its event, not the database's copy of
/// them. Returns the report and the number of applies.
pub async fn check_store<E: AsRef<Event>>(
    store: &Store,
    events: &[E],
    must_apply: impl Fn(usize) -> bool,
    oracle: &Oracle,
) -> Result<(CheckReport, u64), StoreError> {
    let mut fold = HistoryFold::new(events);
    let corrupt = |row: &str, reason: String| StoreError::Corrupt {
        operation: "checking the apply journal",
        row: row.to_owned(),
        reason,
    };
    let applies = store
        .each_journal_row(|row| {
            let event_id = EventId::parse(row.event_id).map_err(|error| corrupt(row.event_id, error.to_string()))?;
            let account_id = AccountId::new(row.account_id).map_err(|error| corrupt(row.event_id, error.to_string()))?;
            let account_apply_index = u64::try_from(row.account_apply_index).map_err(|error| corrupt(row.event_id, error.to_string()))?;
            fold.add(event_id, &account_id, account_apply_index);
            Ok(())
        })
        .await?;
    let final_state = store.balances().await?;
    Ok((fold.finish(must_apply, &final_state, oracle), applies))
}

/// Checks a whole run of `workload` on `store`: the oracle folds every generated event,
/// and `must_apply` says which of them the source got into the system (inserted, or
/// acknowledged by the broker). Returns the report and the number of apply-log rows.
pub async fn check_workload(
    store: &Store,
    workload: &Workload,
    must_apply: impl Fn(usize) -> bool,
) -> Result<(CheckReport, u64), StoreError> {
    let oracle = Oracle::from_events(workload.plain_events());
    check_store(store, &workload.events, must_apply, &oracle).await
}
