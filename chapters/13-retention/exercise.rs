//! Chapter 13, your turn: the balance service is deployed by stopping its process and
//! starting the new version, while trades keep coming. Your `deploy_window_ms` says how
//! long a deployment may keep it down; the run stops the service for that long (at most
//! 18 s) and starts it again. Decide from what the broker keeps.
//! `cargo run -q --bin tradeflow -- chapter check 13` checks your answer.

use crate::RetentionBudget;

/// How long, in ms, a deployment may keep the balance service down.
pub fn deploy_window_ms(budget: &RetentionBudget) -> u64 {
    // The topic keeps a week of messages by default, and the group remembers where the
    // service stopped: take the time a careful deployment needs.
    let _ = budget;
    15_000
}
