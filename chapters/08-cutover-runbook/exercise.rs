//! Chapter 08, your turn: the trades move to a new topic with more partitions. At the
//! cutover the publisher stops sending to the old topic, waits until every send is
//! answered, then calls `ready_to_switch` every 10 ms (for at most a minute) and moves to
//! the new topic as soon as it returns true. Consumers of the new topic start at once.
//! Decide when it is safe to move. `cargo run -q --bin tradeflow -- chapter check 08`
//! checks your answer.

use crate::CutoverState;

/// Whether the publisher may switch to the new topic now.
pub fn ready_to_switch(state: &CutoverState) -> bool {
    // Every send was acknowledged: the old topic has it all. Move on, no downtime.
    let _ = state;
    true
}
