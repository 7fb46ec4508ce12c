//! Trade events as the system of record emits them.

use crate::ids::{AccountId, EventId, Symbol};
use crate::money::{Money, Quantity};

/// One fact about one account, numbered by the system of record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique across all events; what makes applying idempotent.
    pub event_id: EventId,
    /// The account the event belongs to; the Kafka key.
    pub account_id: AccountId,
    /// 1, 2, 3, ... per account, assigned by the system of record. Events of one account
    /// must be applied in this order.
    pub account_seq: u64,
    /// When the fact happened, in nanoseconds since the Unix epoch.
    pub occurred_at_ns: i64,
    /// What happened.
    pub kind: EventKind,
}

impl AsRef<Event> for Event {
    fn as_ref(&self) -> &Event {
        self
    }
}

/// Which way a trade goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Cash becomes shares.
    Buy,
    /// Shares become cash.
    Sell,
}

impl Side {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// The kinds of event: three since schema_version 1, `FeeCharged` since 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Cash paid in.
    Deposit {
        /// Positive amount.
        amount: Money,
    },
    /// Cash paid out.
    Withdrawal {
        /// Positive amount.
        amount: Money,
    },
    /// A trade executed on the market.
    TradeExecuted {
        /// Buy or sell.
        side: Side,
        /// The instrument.
        symbol: Symbol,
        /// Positive number of shares.
        quantity: Quantity,
        /// Positive price per share, in minor units.
        price: Money,
    },
    /// A fee the broker charged the account (schema_version 2 and later).
    FeeCharged {
        /// Positive amount.
        amount: Money,
    },
}

impl EventKind {
    /// The wire name of the kind (`type` in the envelope).
    pub const fn type_name(&self) -> &'static str {
        match self {
            EventKind::Deposit { .. } => "deposit",
            EventKind::Withdrawal { .. } => "withdrawal",
            EventKind::TradeExecuted { .. } => "trade_executed",
            EventKind::FeeCharged { .. } => "fee_charged",
        }
    }

    /// The oldest schema version that can carry the kind.
    pub const fn since_schema_version(&self) -> u64 {
        match self {
            EventKind::FeeCharged { .. } => 2,
            _ => 1,
        }
    }
}
