//! Reading a history back from a store and checking it.

use crate::history::{CheckReport, Counted, OrderCheck, finish_report};
use tradeflow_domain::{AccountId, Events, Oracle, Workload};
use tradeflow_store::{ExpectedRow, Store, StoreError};

/// Checks what `store` holds against the workload's `events` (the index of each says,
/// through `must_apply`, whether it had to be applied) and the oracle. Nothing grows
/// with the run here: the checker writes its copy of the workload into the store
/// (`check_expected`: id, index, account, must-apply), and the database joins the apply
/// journal to it (every apply, a repeated one included: the apply log's unique event id
/// would hide a double apply) and hands the applies back account by account, in apply
/// order. Each apply is placed by the workload's own account and `account_seq` of its
/// event, not the database's copy of them. Returns the report and the number of applies.
pub async fn check_store(
    store: &Store,
    events: &Events,
    must_apply: impl Fn(usize) -> bool,
    oracle: &Oracle,
) -> Result<(CheckReport, u64), StoreError> {
    let written = store
        .write_expected(events.iter().enumerate().map(|(index, scheduled)| ExpectedRow {
            event_id: scheduled.event.event_id.to_string(),
            event_index: index as u64,
            account_id: scheduled.event.account_id.as_str().to_owned(),
            must_apply: must_apply(index),
        }))
        .await?;
    // A copy short of the workload would check fewer events than were sent.
    if written != events.len() as u64 {
        return Err(StoreError::Corrupt {
            operation: "writing the checker's copy of the workload",
            row: format!("{written} rows written"),
            reason: format!("the workload has {} events", events.len()),
        });
    }
    let counts = store.journal_counts().await?;
    let mut order = OrderCheck::default();
    let mut current: Option<String> = None;
    let applies = store
        .each_apply_in_account_order(|apply| {
            if current.as_deref() != Some(apply.account_id) {
                let account_id = AccountId::new(apply.account_id).map_err(|error| StoreError::Corrupt {
                    operation: "checking the apply journal",
                    row: apply.account_id.to_owned(),
                    reason: error.to_string(),
                })?;
                order.start_account(account_id);
                current = Some(apply.account_id.to_owned());
            }
            let event = match apply.event_index {
                Some(index) => Some(
                    events
                        .get(usize::try_from(index).unwrap_or(usize::MAX))
                        .ok_or_else(|| StoreError::Corrupt {
                            operation: "checking the apply journal",
                            row: format!("event index {index}"),
                            reason: format!("the workload has {} events", events.len()),
                        })?,
                ),
                None => None,
            };
            order.apply(
                u64::try_from(apply.account_apply_index).unwrap_or(0),
                event.as_ref().map(|scheduled| &scheduled.event),
            );
            Ok(())
        })
        .await?;
    let (reordered, misnumbered_accounts, went_negative) = order.finish();
    let final_state = store.balances().await?;
    let counted = Counted {
        lost: counts.must_apply - counts.must_apply_applied,
        duplicated: counts.applies - counts.distinct_applied,
        reordered,
        misnumbered_accounts,
        went_negative,
    };
    Ok((finish_report(counted, &final_state, oracle), applies))
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
