//! Reading a history back from a store and checking it.

use crate::history::{Applied, CheckInput, CheckReport, check};
use std::collections::{HashMap, HashSet};
use tradeflow_domain::{AccountId, Event, EventId, Oracle, Workload};
use tradeflow_store::{Store, StoreError};

/// Reads the apply journal (every apply, a repeated one included: the apply log's unique
/// event id would hide a double apply) and the final balances from `store`, and checks
/// them against the events and the oracle. Each apply is placed by the workload's own
/// account and `account_seq` of its event, not the database's copy of them. Returns the
/// report and the number of applies.
pub async fn check_store(
    store: &Store,
    events: &[Event],
    must_apply: &HashSet<EventId>,
    oracle: &Oracle,
) -> Result<(CheckReport, u64), StoreError> {
    let rows = store.apply_journal().await?;
    let final_state = store.balances().await?;
    let by_id: HashMap<EventId, &Event> = events.iter().map(|event| (event.event_id, event)).collect();
    let corrupt = |row: &str, reason: String| StoreError::Corrupt {
        operation: "checking the apply journal",
        row: row.to_owned(),
        reason,
    };
    let applied = rows
        .iter()
        .map(|row| {
            let event_id = EventId::parse(&row.event_id).map_err(|error| corrupt(&row.event_id, error.to_string()))?;
            let (account_id, account_seq) = match by_id.get(&event_id) {
                Some(event) => (event.account_id.clone(), event.account_seq),
                // An event the workload never generated: its account as the row says, and
                // no place in the account's order (the final-state check sees what it did).
                None => (
                    AccountId::new(row.account_id.clone()).map_err(|error| corrupt(&row.event_id, error.to_string()))?,
                    0,
                ),
            };
            Ok(Applied {
                event_id,
                account_id,
                account_seq,
                account_apply_index: u64::try_from(row.account_apply_index).map_err(|error| corrupt(&row.event_id, error.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let report = check(&CheckInput {
        events,
        must_apply,
        applied: &applied,
        final_state: &final_state,
        oracle,
    });
    Ok((report, applied.len() as u64))
}

/// Checks a whole run of `workload` on `store`: the oracle folds every generated event,
/// and `must_apply` says which of them the source got into the system (inserted, or
/// acknowledged by the broker). Returns the report and the number of apply-log rows.
pub async fn check_workload(
    store: &Store,
    workload: &Workload,
    must_apply: impl Fn(usize) -> bool,
) -> Result<(CheckReport, u64), StoreError> {
    let events: Vec<Event> = workload.plain_events().cloned().collect();
    let must_apply: HashSet<EventId> = events
        .iter()
        .enumerate()
        .filter(|(index, _)| must_apply(*index))
        .map(|(_, event)| event.event_id)
        .collect();
    check_store(store, &events, &must_apply, &Oracle::from_events(&events)).await
}
