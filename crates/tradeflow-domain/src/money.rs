//! Money in minor units (cents) and share quantities. Never floats.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest amount one event may move: 10^13 cents (100 billion in major units).
/// Bounded so that sums over any realistic run cannot overflow an `i64`.
pub const AMOUNT_MAX: i64 = 10_000_000_000_000;
/// The largest quantity one trade may carry.
pub const QUANTITY_MAX: i64 = 1_000_000_000;
/// The largest price per share one trade may carry, in minor units.
pub const PRICE_MAX: i64 = 1_000_000_000;

/// Why a money or quantity value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Amounts, prices and quantities on events must be strictly positive.
    #[error("must be greater than zero, got {value}")]
    NotPositive {
        /// The refused value.
        value: i64,
    },
    /// The value is above the bound this workspace accepts for one event.
    #[error("must be at most {max}, got {value}")]
    TooLarge {
        /// The refused value.
        value: i64,
        /// The bound.
        max: i64,
    },
    /// `quantity * price` does not fit in an `i64`.
    #[error("quantity {quantity} * price {price} overflows")]
    Overflow {
        /// The quantity.
        quantity: i64,
        /// The price in minor units.
        price: i64,
    },
}

/// An amount of money in minor units (cents). Balances may be negative (that is how a
/// store shows a reordering); amounts carried by events are positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// Any signed amount in minor units, as a balance holds it.
    pub const fn from_minor(minor: i64) -> Money {
        Money(minor)
    }

    /// A positive amount an event may carry: `0 < minor <= max`.
    pub fn positive(minor: i64, max: i64) -> Result<Money, MoneyError> {
        if minor <= 0 {
            Err(MoneyError::NotPositive { value: minor })
        } else if minor > max {
            Err(MoneyError::TooLarge { value: minor, max })
        } else {
            Ok(Money(minor))
        }
    }

    /// The value in minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    /// Whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Sum, saturating: balances are bounded far below `i64::MAX` by the event limits.
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// The opposite amount.
    pub const fn negated(self) -> Money {
        Money(self.0.saturating_neg())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A strictly positive number of shares, at most [`QUANTITY_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(i64);

impl Quantity {
    /// Validates `0 < shares <= QUANTITY_MAX`.
    pub fn new(shares: i64) -> Result<Quantity, MoneyError> {
        if shares <= 0 {
            Err(MoneyError::NotPositive { value: shares })
        } else if shares > QUANTITY_MAX {
            Err(MoneyError::TooLarge {
                value: shares,
                max: QUANTITY_MAX,
            })
        } else {
            Ok(Quantity(shares))
        }
    }

    /// The number of shares.
    pub const fn shares(self) -> i64 {
        self.0
    }

    /// `quantity * price`, the cash a trade moves.
    pub fn notional(self, price: Money) -> Result<Money, MoneyError> {
        self.0.checked_mul(price.minor()).map(Money).ok_or(MoneyError::Overflow {
            quantity: self.0,
            price: price.minor(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_amounts_are_bounded_on_both_sides() {
        assert_eq!(Money::positive(0, AMOUNT_MAX), Err(MoneyError::NotPositive { value: 0 }));
        assert_eq!(Money::positive(-5, AMOUNT_MAX), Err(MoneyError::NotPositive { value: -5 }));
        assert!(matches!(
            Money::positive(AMOUNT_MAX + 1, AMOUNT_MAX),
            Err(MoneyError::TooLarge { .. })
        ));
        assert_eq!(Money::positive(1, AMOUNT_MAX).map(Money::minor), Ok(1));
    }

    #[test]
    fn money_displays_in_major_units() {
        assert_eq!(Money::from_minor(12345).to_string(), "123.45");
        assert_eq!(Money::from_minor(-5).to_string(), "-0.05");
    }

    #[test]
    fn notional_is_quantity_times_price() -> Result<(), MoneyError> {
        let quantity = Quantity::new(3)?;
        assert_eq!(quantity.notional(Money::from_minor(250))?, Money::from_minor(750));
        Ok(())
    }
}
