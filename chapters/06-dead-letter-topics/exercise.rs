//! Chapter 06, your turn: the balance service calls `on_unprocessable` each time a message
//! of its partition cannot be processed (it does not decode, or its key is not its
//! account), with how many times that message has failed so far (1 the first time). Decide
//! what happens to it. `cargo run -q --bin tradeflow -- chapter check 06` checks your answer.

use crate::Unprocessable;

/// What to do with a message that failed for the `attempt`-th time.
pub fn on_unprocessable(attempt: u32) -> Unprocessable {
    // It may work next time: a hiccup, a deploy, a database that was down.
    let _ = attempt;
    Unprocessable::RetryLater
}
