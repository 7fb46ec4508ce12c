//! Chapter 04, a solution: an event the apply log holds was applied already; so was one
//! seen earlier in the same batch.

use std::collections::HashSet;
use tradeflow_domain::EventId;

/// The events of `batch` to apply, in the order to apply them.
pub fn events_to_apply(batch: &[EventId], in_apply_log: &dyn Fn(&EventId) -> bool) -> Vec<EventId> {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .filter(|event_id| !in_apply_log(event_id) && seen.insert(**event_id))
        .copied()
        .collect()
}
