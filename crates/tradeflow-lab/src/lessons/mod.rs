//! One file per lesson. Each opens with the lesson in one sentence, where it comes from in
//! the field, and what each of its variants must show; ARCHITECTURE.md's "Lessons → code"
//! table has a row for each (a test keeps the two in step).

pub mod auto_commit_crash;
pub mod broker_failure;
pub mod cluster_migration;
pub mod consumer_groups;
pub mod consumer_memory;
pub mod consumer_scaling;
pub mod database_outage;
pub mod idempotent_consumer;
pub mod keys_keep_order;
pub mod lag_status;
pub mod load_test;
pub mod order_placement;
pub mod outbox_relay;
pub mod poison_message;
pub mod poller_vs_stream;
pub mod producer_retries;
pub mod repartition_cutover;
pub mod retention;
pub mod schema_evolution;
pub mod stuck_consumer;

use crate::variant::{Setup, Variant};

/// A lesson as an experiment: its name, what it shows, and its variants for a setup (or
/// why it cannot run honestly on the setup's backend or store).
pub struct Lesson {
    /// The experiment's name (`tradeflow experiment NAME`).
    pub name: &'static str,
    /// What it shows, in one line.
    pub what: &'static str,
    /// Its variants.
    pub variants: fn(&Setup) -> Result<Vec<Variant>, String>,
    /// The rows it leaves out on a setup's backend, each with why (the report prints them
    /// under its table).
    pub left_out: fn(&Setup) -> Vec<String>,
}

/// No row left out.
fn none_left_out(_: &Setup) -> Vec<String> {
    Vec::new()
}

/// Every lesson, in the order `tradeflow experiment list` shows them.
pub const LESSONS: &[Lesson] = &[
    Lesson {
        name: auto_commit_crash::NAME,
        what: auto_commit_crash::WHAT,
        variants: auto_commit_crash::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: idempotent_consumer::NAME,
        what: idempotent_consumer::WHAT,
        variants: idempotent_consumer::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: producer_retries::NAME,
        what: producer_retries::WHAT,
        variants: producer_retries::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: poison_message::NAME,
        what: poison_message::WHAT,
        variants: |setup| Ok(poison_message::variants(setup)),
        left_out: none_left_out,
    },
    Lesson {
        name: repartition_cutover::NAME,
        what: repartition_cutover::WHAT,
        variants: |setup| Ok(repartition_cutover::variants(setup)),
        left_out: none_left_out,
    },
    Lesson {
        name: cluster_migration::NAME,
        what: cluster_migration::WHAT,
        variants: cluster_migration::variants,
        left_out: cluster_migration::left_out,
    },
    Lesson {
        name: consumer_scaling::NAME,
        what: consumer_scaling::WHAT,
        variants: |setup| Ok(consumer_scaling::variants(setup)),
        left_out: none_left_out,
    },
    Lesson {
        name: consumer_groups::NAME,
        what: consumer_groups::WHAT,
        variants: consumer_groups::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: broker_failure::NAME,
        what: broker_failure::WHAT,
        variants: broker_failure::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: retention::NAME,
        what: retention::WHAT,
        variants: retention::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: order_placement::NAME,
        what: order_placement::WHAT,
        variants: order_placement::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: outbox_relay::NAME,
        what: outbox_relay::WHAT,
        variants: outbox_relay::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: schema_evolution::NAME,
        what: schema_evolution::WHAT,
        variants: schema_evolution::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: database_outage::NAME,
        what: database_outage::WHAT,
        variants: database_outage::variants,
        left_out: none_left_out,
    },
    Lesson {
        name: consumer_memory::NAME,
        what: consumer_memory::WHAT,
        variants: consumer_memory::variants,
        left_out: consumer_memory::left_out,
    },
    Lesson {
        name: stuck_consumer::NAME,
        what: stuck_consumer::WHAT,
        variants: stuck_consumer::variants,
        left_out: stuck_consumer::left_out,
    },
    Lesson {
        name: poller_vs_stream::NAME,
        what: poller_vs_stream::WHAT,
        variants: |setup| Ok(poller_vs_stream::variants(setup)),
        left_out: none_left_out,
    },
];

/// The lesson of an experiment name.
pub fn find(name: &str) -> Option<&'static Lesson> {
    LESSONS.iter().find(|lesson| lesson.name == name)
}
