//! Chapter 10, your turn: the pipeline must carry ten times today's peak. The chapter
//! publishes `load.target_per_s` events a second to a topic of `load.partitions`
//! partitions and runs the balance service with the settings you return. Run it, read
//! where it falls behind, tune, run again. `cargo run -q --bin tradeflow -- chapter check 10`
//! checks your answer.

use crate::{LoadTest, Tuning};

/// The settings to run the load test with.
pub fn tune(load: &LoadTest) -> Tuning {
    let _ = load;
    // As the poller did it: one event, one database transaction, one offset commit; one
    // consumer, and every produce request sent at once.
    Tuning {
        batch_size: 1,
        linger_ms: 0,
        consumers: 1,
    }
}
