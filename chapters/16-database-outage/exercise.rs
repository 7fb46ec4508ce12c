//! Chapter 16, your turn: the balance service's database goes away for 12 to 14 s while
//! trades keep coming. Each time a database call fails (a refused connection, or no
//! answer within 3 s), the service asks `after_database_failure` what to do, with the
//! number of calls that have failed in a row for the batch in hand, and does it; the batch
//! stays in hand until the database takes it. `cargo run -q --bin tradeflow -- chapter
//! check 16 --store postgres` checks your answer.

use crate::DatabaseWait;

/// What to do after `failures` database calls in a row have failed (1 after the first).
pub fn after_database_failure(failures: u32) -> DatabaseWait {
    // The database will be back in a moment: the sooner the batch is tried again, the
    // sooner the balances are right.
    let _ = failures;
    DatabaseWait::AtOnce
}
