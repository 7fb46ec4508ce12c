//! Chapter 14, a solution: read your own writes. The customer's confirmed trades are known
//! by their sequence; until the balance reflects them, it is an older balance than the one
//! the customer sees, so wait for it (a bounded time), then decide.

use crate::{OrderDecision, OrderView};

/// How long an order may wait for its customer's trades to be applied.
const WAIT_MAX_MS: u64 = 2_000;

/// What the order desk does with an order.
pub fn decide_order(view: &OrderView) -> OrderDecision {
    if view.applied_seq < view.confirmed_seq && view.waited_ms < WAIT_MAX_MS {
        OrderDecision::ReadAgain
    } else if view.cash_seen >= view.amount {
        OrderDecision::Accept
    } else {
        OrderDecision::Refuse
    }
}
