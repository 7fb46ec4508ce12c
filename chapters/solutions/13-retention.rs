//! Chapter 13, a solution: the backlog the outage leaves (the time down plus the time to
//! rejoin, at the topic's rate) must fit in what the broker keeps, with room to spare.

use crate::RetentionBudget;

/// How long, in ms, a deployment may keep the balance service down.
pub fn deploy_window_ms(budget: &RetentionBudget) -> u64 {
    let bytes_per_s = (budget.rate_per_s * budget.message_bytes).max(1);
    let kept_ms = budget.retained_bytes * 1_000 / bytes_per_s;
    // Half of what retention covers once the rejoin is paid: the rate will not stay where
    // it is today.
    kept_ms.saturating_sub(budget.rejoin_ms) / 2
}
