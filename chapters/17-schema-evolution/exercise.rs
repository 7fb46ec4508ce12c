//! Chapter 17, your turn: the producer has been upgraded to schema_version 2 (a new event
//! type, `fee_charged`, and an optional `client_order_id` on trades); the balance service's
//! consumers still read version 1 until they are upgraded, after publishing. Each time one
//! meets a message of a version it does not read, it asks `on_newer_version` what to do.
//! After the upgrade the dead-letter topic is replayed.
//! `cargo run -q --bin tradeflow -- chapter check 17` checks your answer.

use crate::NewerVersion;

/// What a consumer that reads versions up to `reads` does with a message of `version`.
pub fn on_newer_version(version: u64, reads: u64) -> NewerVersion {
    // Be liberal in what you accept: a newer version mostly adds things, and what this
    // consumer knows of the message is all it needs.
    let _ = (version, reads);
    NewerVersion::ReadWhatYouKnow
}
