//! Chapter 02, a solution: key by the entity whose order matters.

use tradeflow_domain::Event;

/// The key of `event`'s message.
pub fn message_key(event: &Event) -> String {
    // One account, one key, one partition: Kafka keeps order within a partition.
    event.account_id.as_str().to_owned()
}
