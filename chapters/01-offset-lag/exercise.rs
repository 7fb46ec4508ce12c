//! Chapter 01, your turn: the lag monitor calls `lag_status` for each partition with its
//! last few samples (one every 500 ms, oldest first) and shows what it returns. Make it tell
//! a consumer group that stopped reading (STALL, or STOP once nothing arrives either) from
//! one that is busy but keeping up (OK) or falling behind (WARN). The rules are in the
//! chapter's README; `cargo run -q --bin tradeflow -- chapter check 01` checks your answer.

use crate::{LagStatus, OffsetSample};

/// The status of one partition over `window` (oldest sample first, never empty).
pub fn lag_status(window: &[OffsetSample]) -> LagStatus {
    // The alarm the poller's dashboard had: a backlog above a threshold.
    let Some(last) = window.last() else {
        return LagStatus::Ok;
    };
    if last.lag() > 1_000 { LagStatus::Warn } else { LagStatus::Ok }
}
