//! Lesson: Kafka keeps order within a partition and nowhere else, so the key must be the
//! entity whose order matters (here, the account), hashed by the default partitioner. Key
//! by anything finer and one account's events spread over partitions that different
//! consumers read at different speeds: they are applied out of order, and a withdrawal
//! can land before the deposit that funds it.
//!
//! From the field: Parcel Perform, "Initial experience with Kafka" (keys and ordering);
//! Scalescape, "Building High Scale Backend Systems With Kafka" (2023): no custom
//! partitioner.
//!
//! Chapter 02's run: six partitions, three consumers, the learner's `message_key` for every
//! message; it must pass the checker (nothing reordered, no bad balance, nothing lost).

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_stream::publisher::MessageKey;

/// The chapter's run with the learner's key.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let mut options = setup.stream(6, 3);
    options.publisher.key = MessageKey::Exercise;
    // The service refuses a message not keyed by its account (it would break the
    // account's order): off here, so that what a wrong key does is seen, not refused.
    options.scenario.key_check = false;
    Ok(Variant {
        label: "your message_key, 6 partitions, 3 consumers".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("one account's events in one partition: applied in order"),
    })
}
