//! Chapter 19, a solution: a batch holds messages of every partition the consumer owns,
//! interleaved; each partition's offsets are a range of their own, so the line names each
//! partition with its first and last offset.

use std::collections::BTreeMap;

use crate::{HeldRange, Received};

/// The offsets the "batch received" log line names for `batch`.
pub fn held_ranges(batch: &[Received]) -> Vec<HeldRange> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for message in batch {
        let range = ranges.entry(message.partition).or_insert((message.offset, message.offset));
        range.0 = range.0.min(message.offset);
        range.1 = range.1.max(message.offset);
    }
    ranges
        .into_iter()
        .map(|(partition, (first, last))| HeldRange { partition, first, last })
        .collect()
}
