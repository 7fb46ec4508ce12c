//! Chapter 05, your turn: choose the publisher's producer settings. The chapter delays
//! every broker's answers so that several produce requests are in flight at once, then
//! resets the client connections a few times: requests the broker had already written
//! are sent again. `cargo run -q --bin tradeflow -- chapter check 05` checks your answer
//! (it runs Apache Kafka: Java 17 or later and `export KAFKA_HOME=$(bash .ci/install-kafka)`).

use crate::{Acks, ProducerSettings};

/// The publisher's producer settings.
pub fn producer_settings() -> ProducerSettings {
    // Fast: the leader's acknowledgement, five requests in flight, nothing held back,
    // and no bookkeeping of sequences.
    ProducerSettings {
        acks: Acks::Leader,
        idempotence: false,
        in_flight_max: 5,
        linger_ms: 0,
    }
}
