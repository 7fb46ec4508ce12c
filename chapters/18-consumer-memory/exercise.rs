//! Chapter 18, your turn: a backlog of 100,000 trades (some 26 MB) waits on eight
//! partitions when one balance service process starts. How much may its consumer fetch
//! ahead of the batch it is applying? librdkafka fetches in the background into a queue;
//! what you return bounds that queue and each fetch.
//! `cargo run -q --bin tradeflow -- chapter check 18` checks your answer.

use crate::PrefetchLimits;

/// How much the balance service's consumer fetches ahead.
pub fn prefetch_limits() -> PrefetchLimits {
    // librdkafka's defaults: it knows best how much to fetch.
    PrefetchLimits {
        queued_max_messages_kbytes: 65_536,
        fetch_max_bytes: 52_428_800,
    }
}
