//! The trading domain of tradeflow: money, accounts, trade events, the ledger rules, the
//! oracle and the seeded workload generator.
//!
//! Architecture invariant: this crate does no I/O, spawns nothing and is not async. Every
//! other crate (stores, poller, stream, checker) applies the rules written here, so the
//! poller and the stream cannot disagree about what a trade does to a balance.
//!
//! - [`money`]: `Money` (minor units, `i64`) and `Quantity`.
//! - [`ids`]: `AccountId`, `EventId`, `Symbol`, validated at construction.
//! - [`event`]: the three event kinds and their envelope fields.
//! - [`codec`]: the versioned JSON wire format; decoding never panics and names the field.
//! - [`ledger`]: what an event does to an account, checked (the oracle) or blind (a store).
//! - [`oracle`]: the expected final state of a run.
//! - [`workload`]: the seeded generator, skewed accounts, rate profiles, intended send times.

pub mod codec;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod oracle;
pub mod workload;

pub use codec::{
    DecodeError, EncodeError, SCHEMA_VERSION, SCHEMA_VERSION_OLDEST, decode, decode_tolerant, decode_up_to, encode, encode_as,
};
pub use event::{Event, EventKind, Side};
pub use ids::{AccountId, EventId, IdError, Symbol};
pub use ledger::{AccountState, Effect, Ledger, Outcome, Rejection};
pub use money::{Money, MoneyError, Quantity};
pub use oracle::Oracle;
pub use workload::{EventMix, Events, RateProfile, RecordTable, ScheduledEvent, Workload, WorkloadConfig, WorkloadError};
