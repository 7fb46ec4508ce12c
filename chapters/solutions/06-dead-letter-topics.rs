//! Chapter 06, a solution: retry a few times (a passing hiccup), then set the message aside
//! on the dead-letter topic so that its partition flows again.

use crate::Unprocessable;

/// Attempts before a message goes to the dead-letter topic.
const ATTEMPTS_MAX: u32 = 3;

/// What to do with a message that failed for the `attempt`-th time.
pub fn on_unprocessable(attempt: u32) -> Unprocessable {
    if attempt >= ATTEMPTS_MAX {
        Unprocessable::DeadLetter
    } else {
        Unprocessable::RetryLater
    }
}
