//! The oracle: every generated event applied in order with the checked ledger rule. Its
//! final state is what every run of the same seed must end with.

use crate::event::Event;
use crate::ledger::{Ledger, Outcome};

/// The expected state of a run.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    ledger: Ledger,
    rejected: u64,
    events: u64,
}

impl Oracle {
    /// Folds the events, in the order given, with the checked rule.
    pub fn from_events<E: AsRef<Event>>(events: impl IntoIterator<Item = E>) -> Oracle {
        let mut oracle = Oracle::default();
        for event in events {
            oracle.events += 1;
            if let Outcome::Rejected(_) = oracle.ledger.apply_checked(event.as_ref()) {
                oracle.rejected += 1;
            }
        }
        oracle
    }

    /// The expected final state.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// How many events the checked rule refused: zero for any workload the generator emits.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// How many events were folded.
    pub fn events(&self) -> u64 {
        self.events
    }
}
