//! Chapter 10, a solution: batch the database work (one transaction and one offset commit
//! per few hundred events instead of per event), let the producer fill its requests for a
//! few milliseconds, and spread the partitions over several consumers.

use crate::{LoadTest, Tuning};

/// The settings to run the load test with.
pub fn tune(load: &LoadTest) -> Tuning {
    Tuning {
        batch_size: 500,
        linger_ms: 5,
        consumers: (load.partitions / 2).max(1) as u32,
    }
}
