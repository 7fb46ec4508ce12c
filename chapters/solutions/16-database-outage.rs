//! Chapter 16, a solution: pause the partitions so that the consumer can go on polling
//! (it stays in its group), and space the tries out exponentially, capped, so that a
//! database coming back is not met by every consumer at once and at full speed.

use crate::DatabaseWait;
use std::time::Duration;

/// What to do after `failures` database calls in a row have failed (1 after the first).
pub fn after_database_failure(failures: u32) -> DatabaseWait {
    let doublings = failures.saturating_sub(1).min(10);
    DatabaseWait::PausedFor((Duration::from_millis(200) * (1 << doublings)).min(Duration::from_secs(3)))
}
