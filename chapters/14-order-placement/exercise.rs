//! Chapter 14, your turn: an order desk answers "can this customer buy this?" while the
//! balance service applies trades behind it. For each order it reads the customer's cash
//! and how far the balances table has got with the customer's trades, and calls
//! `decide_order`; asked to read again, it does so 10 ms later and calls it again.
//! `cargo run -q --bin tradeflow -- chapter check 14` checks your answer.

use crate::{OrderDecision, OrderView};

/// What the order desk does with an order.
pub fn decide_order(view: &OrderView) -> OrderDecision {
    // The balances table is the service's own state, and it answers in a millisecond:
    // trust what it says.
    if view.cash_seen >= view.amount {
        OrderDecision::Accept
    } else {
        OrderDecision::Refuse
    }
}
