//! Lesson: an outbox relay must claim its rows, not remember the last id it saw. Writers
//! draw ids when they insert and commit in another order, so a row can become visible
//! after a higher id was already read: a relay that reads "ids above the last one I
//! published" never reads it again.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021) replaced a poller over the
//! balance updates with Kafka; a system of record that keeps its table and feeds Kafka from
//! it needs a relay, which the write-ups do not cover: this lesson is the project's own,
//! the outbox pattern's best-known failure.
//!
//! The run: the system of record writes each event into its outbox table (`trade_events`),
//! one transaction per event held open a seeded moment (up to 3 ms) after the insert, from
//! eight writers each owning a shard of the accounts; a relay publishes the table to the
//! `trades` topic and the balance service consumes it as usual. Every event written must be
//! applied. Under each row: rows written and relayed, and the rows that committed after a
//! higher id had been relayed (`outbox_late_commits`: for the naive relay, the rows it
//! never read).
//!
//! Variants:
//! - naive relay, "rows with an id above the last one published": the late rows are never
//!   published, **fail, lost**;
//! - claiming relay, "rows not yet marked relayed, in id order", marked once acknowledged:
//!   **pass**, the late rows published when they appear.
//!
//! Either row whose run had no late commit showed nothing: unknown. Chapter 15's run is the
//! same outbox with the learner's `next_read` choosing each read of the relay. Needs PostgreSQL:
//! SQLite takes one writer at a time, so ids commit in their order and the naive relay
//! cannot skip (the experiment says so and exits 4). Runs on every backend's brokers; CI
//! runs it on the mock and tansu, with PostgreSQL.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun};
use std::time::Duration;
use tradeflow_store::StoreKind;
use tradeflow_stream::outbox::{Outbox, Relay};

/// The experiment's name.
pub const NAME: &str = "outbox-relay";
/// What it shows.
pub const WHAT: &str = "an outbox relayed by \"ids above the last one seen\" skips rows that commit out of id order (lost); a relay that claims unrelayed rows loses nothing (PostgreSQL)";

/// The outbox's writers, and how long a write transaction may stay open after its insert.
const WRITERS: u32 = 8;
const HOLD_MAX: Duration = Duration::from_millis(3);
/// The offered rate and the events of each row: a transaction per event, committed to
/// disk, held open up to 3 ms: on the project's two-core machine eight writers on
/// PostgreSQL keep up with about 1,000 a second, not with the experiments' 2,000.
const RATE_PER_S: f64 = 1_000.0;
const EVENTS: u64 = 5_000;

/// The outbox of a relay: the lesson's writers, and `relay`.
pub fn outbox(relay: Relay) -> Outbox {
    Outbox {
        writers: WRITERS,
        hold_max: HOLD_MAX,
        relay,
    }
}

/// Why the lesson cannot run on a store other than PostgreSQL.
const NEEDS_POSTGRES: &str = "it needs PostgreSQL (--store postgres, DATABASE_URL): SQLite takes one writer at a time, so outbox ids commit in their order and the naive relay cannot skip one";

/// A run of the lesson's outbox with `relay`.
fn variant(setup: &Setup, relay: Relay, label: &str, expected: Expected) -> Variant {
    let mut options = setup.stream(6, 2);
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.events = EVENTS;
    options.scenario.outbox = Some(outbox(relay));
    Variant {
        label: label.into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: expected.shown_by("outbox_late_commits"),
    }
}

/// Chapter 15's run: the lesson's outbox, the learner's `next_read` choosing each read.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if setup.store != StoreKind::Postgres {
        return Err(NEEDS_POSTGRES.into());
    }
    Ok(variant(
        setup,
        Relay::Exercise,
        "your next_read: an outbox written by eight writers, relayed to Kafka",
        Expected::pass("every row written to the outbox published and applied"),
    ))
}

/// The lesson's variants for a setup, or why its store cannot show them.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if setup.store != StoreKind::Postgres {
        return Err(NEEDS_POSTGRES.into());
    }
    let variant = |relay: Relay, label: &str, expected: Expected| variant(setup, relay, label, expected);
    Ok(vec![
        variant(
            Relay::AfterLastId,
            "naive relay: rows with an id above the last one published",
            Expected::fail(
                Violation::Lost,
                "a row that commits after a higher id was read is never read again: written to the system of record, never applied",
            ),
        ),
        variant(
            Relay::Claiming,
            "claiming relay: rows not yet marked relayed, marked once acknowledged",
            Expected::pass("a row that commits late is still unmarked, so the next read takes it"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_cluster::Backend;

    fn setup(store: StoreKind) -> Setup {
        Setup {
            seed: 1,
            events: 6_000,
            rate: 2_000.0,
            broker: Backend::Mock,
            store,
            service: None,
        }
    }

    #[test]
    fn the_naive_and_the_claiming_relay_on_postgres_and_not_on_sqlite() {
        let reason = variants(&setup(StoreKind::Sqlite)).err().expect("refused on SQLite");
        assert!(reason.contains("one writer at a time"), "{reason}");
        let relays: Vec<Relay> = variants(&setup(StoreKind::Postgres))
            .expect("PostgreSQL can show it")
            .iter()
            .map(|variant| match &variant.run {
                VariantRun::Stream(options) => options.scenario.outbox.expect("an outbox").relay,
                VariantRun::Poller(_) => panic!("the relay feeds the stream"),
            })
            .collect();
        assert_eq!(relays, [Relay::AfterLastId, Relay::Claiming]);
    }
}
