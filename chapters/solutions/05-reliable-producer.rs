//! Chapter 05, a solution: the idempotent producer. `acks=all` (idempotence needs it), up
//! to five requests in flight (the most idempotence keeps in order), and a few
//! milliseconds of linger so requests carry batches. A request sent again after a reset
//! carries the same producer id and sequence, and the broker drops the copy.

use crate::{Acks, ProducerSettings};

/// The publisher's producer settings.
pub fn producer_settings() -> ProducerSettings {
    ProducerSettings {
        acks: Acks::All,
        idempotence: true,
        in_flight_max: 5,
        linger_ms: 5,
    }
}
