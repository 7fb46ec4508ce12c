//! Chapter 11, a solution: a group of its own. Every group reads every message of the
//! topic, with its own committed offsets and its own lag; within a group the partitions
//! are split between its members.

/// The group id of the notification service, given the balance service's group id.
pub fn notification_group(balance_group: &str) -> String {
    format!("{balance_group}-notifications")
}
