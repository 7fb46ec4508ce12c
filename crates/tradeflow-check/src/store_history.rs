//! Reading a history back from a store and checking it.

use crate::history::{Applied, CheckInput, CheckReport, check};
use std::collections::HashSet;
use tradeflow_domain::{AccountId, Event, EventId, Oracle, Workload};
use tradeflow_store::{Store, StoreError};

/// Reads the apply log and the final balances from `store` and checks them against the
/// events and the oracle. Returns the report and the number of apply-log rows.
pub async fn check_store(
    store: &Store,
    events: &[Event],
    must_apply: &HashSet<EventId>,
    oracle: &Oracle,
) -> Result<(CheckReport, u64), StoreError> {
    let rows = store.apply_log().await?;
    let final_state = store.balances().await?;
    let corrupt = |row: &str, reason: String| StoreError::Corrupt {
        operation: "checking the apply log",
        row: row.to_owned(),
        reason,
    };
    let applied = rows
        .iter()
        .map(|row| {
            Ok(Applied {
                event_id: EventId::parse(&row.event_id).map_err(|error| corrupt(&row.event_id, error.to_string()))?,
                account_id: AccountId::new(row.account_id.clone()).map_err(|error| corrupt(&row.event_id, error.to_string()))?,
                account_seq: u64::try_from(row.account_seq).map_err(|error| corrupt(&row.event_id, error.to_string()))?,
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
