//! Chapter 12, a solution: producer first, then the consumers once the old cluster is
//! drained. Until the producer has moved the old cluster still receives trades; once it
//! has, the consumers stay until their lag there is zero in a sample taken late enough to
//! include the producer's last sends.

use crate::MigrationState;

/// Whether the balance service may move its consumers to the new cluster now.
pub fn may_move_consumers(state: &MigrationState) -> bool {
    state.producer_moved && state.old_offset_lag == Some(0) && state.sampled_ms_after_producer_moved >= 1_000
}
