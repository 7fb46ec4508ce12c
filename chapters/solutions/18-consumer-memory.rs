//! Chapter 18, a solution: bound the queue at a few MiB (a handful of batches of 500 events
//! of some 260 bytes each) and each fetch at 2 MiB, so that one response cannot land a
//! large part of the backlog in memory at once.

use crate::PrefetchLimits;

/// How much the balance service's consumer fetches ahead.
pub fn prefetch_limits() -> PrefetchLimits {
    PrefetchLimits {
        queued_max_messages_kbytes: 4_096,
        fetch_max_bytes: 2 * 1_024 * 1_024,
    }
}
