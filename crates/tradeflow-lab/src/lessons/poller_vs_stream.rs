//! Lesson: the event-driven rewrite keeps each account's order while consumers work in
//! parallel, where a poller is bounded by its poll interval.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021), poller to Kafka.
//!
//! Variants: one poller must pass; the stream on 12 partitions with 3 consumers must pass.

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};

/// The experiment's name.
pub const NAME: &str = "poller-vs-stream";
/// What it shows.
pub const WHAT: &str =
    "the compare run: the same seed through both architectures, with throughput, latency, statements per event, CPU and memory";

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Vec<Variant> {
    vec![
        Variant {
            label: "poller".into(),
            run: VariantRun::Poller(setup.poller(setup.workload())),
            expected: Expected::pass("one poller keeps order; its latency is bounded below by the poll interval"),
        },
        Variant {
            label: "stream".into(),
            run: VariantRun::Stream(Box::new(setup.stream(12, 3))),
            expected: Expected::pass("keyed partitions keep each account's order while consumers work in parallel"),
        },
    ]
}
