//! Chapter 08, a solution: drain, then switch. An account's older events must be applied
//! before its newer ones can start on another partition of another topic.

use crate::CutoverState;

/// Whether the publisher may switch to the new topic now.
pub fn ready_to_switch(state: &CutoverState) -> bool {
    state.applied_from_old >= state.acknowledged_on_old
}
