//! The ledger rules: what an event does to an account's cash and positions.
//!
//! A buy takes `quantity * price` from cash and adds `quantity` to the position; a sell
//! does the reverse; a deposit adds cash and a withdrawal takes it. Applied in
//! `account_seq` order to events from the generator, no balance ever goes negative. Two
//! ways to apply exist: [`Ledger::apply_checked`] refuses an event that would go negative
//! (a rejected trade is a domain outcome, not an error), and [`Ledger::apply_blind`]
//! applies it anyway, as a store that trusts its input order does; the checker replays a
//! store's apply order with the blind rule to find the negative balances customers saw.

use crate::event::{Event, EventKind, Side};
use crate::ids::{AccountId, Symbol};
use crate::money::Money;
use std::collections::BTreeMap;

/// What one event changes: a cash delta and at most one position delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// Signed change of cash.
    pub cash_delta: Money,
    /// Signed change of one position, in shares.
    pub position_delta: Option<(Symbol, i64)>,
}

impl Effect {
    /// The effect of an event. Event construction bounds `quantity * price`, so the
    /// notional of a decoded or generated trade always fits.
    pub fn of(kind: &EventKind) -> Effect {
        match kind {
            EventKind::Deposit { amount } => Effect {
                cash_delta: *amount,
                position_delta: None,
            },
            EventKind::Withdrawal { amount } | EventKind::FeeCharged { amount } => Effect {
                cash_delta: amount.negated(),
                position_delta: None,
            },
            EventKind::TradeExecuted {
                side,
                symbol,
                quantity,
                price,
            } => {
                let notional = Money::from_minor(quantity.shares().saturating_mul(price.minor()));
                match side {
                    Side::Buy => Effect {
                        cash_delta: notional.negated(),
                        position_delta: Some((symbol.clone(), quantity.shares())),
                    },
                    Side::Sell => Effect {
                        cash_delta: notional,
                        position_delta: Some((symbol.clone(), -quantity.shares())),
                    },
                }
            }
        }
    }
}

/// Cash and positions of one account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountState {
    /// Cash in minor units.
    pub cash: Money,
    /// Shares held per symbol. A symbol whose position returns to zero stays listed with 0,
    /// as a store's row does; comparisons treat a missing symbol and 0 alike.
    pub positions: BTreeMap<Symbol, i64>,
}

impl AccountState {
    /// The position in one symbol (0 when none).
    pub fn position(&self, symbol: &Symbol) -> i64 {
        self.positions.get(symbol).copied().unwrap_or(0)
    }

    /// Whether cash or any position is below zero.
    pub fn is_negative(&self) -> bool {
        self.cash.is_negative() || self.positions.values().any(|shares| *shares < 0)
    }

    /// Equality that treats a zero position and a missing one alike.
    pub fn same_holdings(&self, other: &AccountState) -> bool {
        self.cash == other.cash
            && self
                .positions
                .iter()
                .chain(other.positions.iter())
                .all(|(symbol, _)| self.position(symbol) == other.position(symbol))
    }

    fn apply_effect(&mut self, effect: &Effect) {
        self.cash = self.cash.saturating_add(effect.cash_delta);
        if let Some((symbol, delta)) = &effect.position_delta {
            let shares = self.positions.entry(symbol.clone()).or_insert(0);
            *shares = shares.saturating_add(*delta);
        }
    }
}

/// Why the checked rule refused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Cash would go below zero.
    InsufficientCash {
        /// Cash before the event.
        available: Money,
        /// Cash the event needs.
        needed: Money,
    },
    /// A position would go below zero.
    InsufficientPosition {
        /// The symbol.
        symbol: Symbol,
        /// Shares before the event.
        available: i64,
        /// Shares the event needs.
        needed: i64,
    },
}

/// The outcome of applying one event under the checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed the account.
    Applied,
    /// The event would have made the account negative and changed nothing.
    Rejected(Rejection),
}

/// The state of every account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    accounts: BTreeMap<AccountId, AccountState>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies an event unless it would make cash or a position negative.
    pub fn apply_checked(&mut self, event: &Event) -> Outcome {
        let effect = Effect::of(&event.kind);
        let account = self.accounts.entry(event.account_id.clone()).or_default();
        let cash_after = account.cash.saturating_add(effect.cash_delta);
        if cash_after.is_negative() {
            return Outcome::Rejected(Rejection::InsufficientCash {
                available: account.cash,
                needed: effect.cash_delta.negated(),
            });
        }
        if let Some((symbol, delta)) = &effect.position_delta {
            let available = account.position(symbol);
            if available.saturating_add(*delta) < 0 {
                return Outcome::Rejected(Rejection::InsufficientPosition {
                    symbol: symbol.clone(),
                    available,
                    needed: -delta,
                });
            }
        }
        account.apply_effect(&effect);
        Outcome::Applied
    }

    /// Applies an event whatever it does to the balance, and returns the account after it.
    pub fn apply_blind(&mut self, event: &Event) -> &AccountState {
        let account = self.accounts.entry(event.account_id.clone()).or_default();
        account.apply_effect(&Effect::of(&event.kind));
        account
    }

    /// One account's state, if the ledger has seen it.
    pub fn account(&self, account_id: &AccountId) -> Option<&AccountState> {
        self.accounts.get(account_id)
    }

    /// Every account, ordered by id.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &AccountState)> {
        self.accounts.iter()
    }

    /// Number of accounts seen.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account has been seen.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventId;
    use crate::money::Quantity;

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            event_id: EventId::from_uuid(uuid::Uuid::from_u128(u128::from(seq))),
            account_id: AccountId::new("acct-1").expect("valid id"),
            account_seq: seq,
            occurred_at_ns: 0,
            kind,
        }
    }

    fn buy(seq: u64, quantity: i64, price: i64) -> Event {
        let kind = EventKind::TradeExecuted {
            side: Side::Buy,
            symbol: Symbol::new("ACME").expect("valid symbol"),
            quantity: Quantity::new(quantity).expect("valid quantity"),
            price: Money::from_minor(price),
        };
        event(seq, kind)
    }

    #[test]
    fn a_buy_moves_cash_into_the_position() {
        let mut ledger = Ledger::new();
        assert_eq!(
            ledger.apply_checked(&event(
                1,
                EventKind::Deposit {
                    amount: Money::from_minor(1_000)
                }
            )),
            Outcome::Applied
        );
        assert_eq!(ledger.apply_checked(&buy(2, 3, 300)), Outcome::Applied);
        let account = ledger
            .account(&AccountId::new("acct-1").expect("valid id"))
            .expect("account exists");
        assert_eq!(account.cash, Money::from_minor(100));
        assert_eq!(account.position(&Symbol::new("ACME").expect("valid symbol")), 3);
    }

    #[test]
    fn the_checked_rule_rejects_and_the_blind_rule_goes_negative() {
        let mut checked = Ledger::new();
        let outcome = checked.apply_checked(&buy(1, 1, 500));
        assert_eq!(
            outcome,
            Outcome::Rejected(Rejection::InsufficientCash {
                available: Money::ZERO,
                needed: Money::from_minor(500)
            })
        );
        assert!(
            checked
                .account(&AccountId::new("acct-1").expect("valid id"))
                .is_some_and(|account| !account.is_negative())
        );

        let mut blind = Ledger::new();
        assert!(blind.apply_blind(&buy(1, 1, 500)).is_negative());
    }

    #[test]
    fn zero_positions_compare_equal_to_missing_ones() {
        let mut with_zero = AccountState::default();
        with_zero.positions.insert(Symbol::new("ACME").expect("valid symbol"), 0);
        assert!(with_zero.same_holdings(&AccountState::default()));
        assert!(AccountState::default().same_holdings(&with_zero));
    }
}
