//! Lesson: lag is what customers see. An order service answers "can this customer buy
//! this?" from the balances table while trades are applied; a balance that is behind the
//! trades that already happened refuses orders the customer could afford, or accepts ones
//! the cash does not cover.
//!
//! From the field: Wealthsimple, "Kafka in production" (2021): the poller fell behind at
//! market open, and "it would prevent customers from placing orders due to bad balances".
//!
//! The poller and the stream each run the same seeded trades (10,000 at 1,000/s, 50
//! accounts, the busiest trading every few ms), at a steady rate and with a market-open
//! burst (the workload's burst profile: the events from 40% to 50% of the run at ten times
//! the rate, here 1,000 events in 0.1 s), while an order desk asks 200 requests a second,
//! drawn from the same seed: each an order like one in the workload (a random trade or
//! withdrawal that takes cash, among those whose time has come), asked again for the same
//! account and amount. The checker judges each answer against the truth at the moment of
//! the read (every trade whose time had come, applied in order) and counts wrong answers
//! per thousand, and how stale the stale reads were (`tradeflow-check`'s `orders`).
//!
//! Variants: every row must pass (nothing lost: the answers come from a correct pipeline
//! that is only late) with its orders answered (`orders_answered` > 0). The lesson is in
//! the numbers the report prints under each row, side by side: wrong answers per thousand
//! follow the staleness of the balances, and which architecture is staler depends on the
//! setup (the poller's floor is its poll interval; the stream's is its end-to-end latency,
//! which three Kafka JVMs on two cores push past the poller's). No row claims a winner.

use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_cluster::Backend;
use tradeflow_domain::RateProfile;

/// The experiment's name.
pub const NAME: &str = "order-placement";
/// What it shows.
pub const WHAT: &str = "an order service reading balances while trades are applied: how many answers are wrong per thousand, poller vs stream, steady and at a 10x market-open burst";

/// The offered rate and the events of every variant: ten seconds of trades.
const RATE_PER_S: f64 = 1_000.0;
const EVENTS: u64 = 10_000;
/// Order requests a second.
pub const ORDERS_PER_S: f64 = 200.0;

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if setup.broker == Backend::External {
        return Err(
            "the lesson times trades and orders on a cluster it starts; an external cluster's other traffic would be in its lag".into(),
        );
    }
    let mut rows = Vec::new();
    for profile in [RateProfile::Steady, RateProfile::Burst] {
        let mut workload = setup.workload();
        workload.rate_per_s = RATE_PER_S;
        workload.events = EVENTS;
        workload.profile = profile;
        let mut poller = setup.poller(workload.clone());
        poller.orders_per_s = Some(ORDERS_PER_S);
        let mut stream = setup.stream(12, 3);
        stream.workload = workload;
        stream.scenario.orders_per_s = Some(ORDERS_PER_S);
        let expected =
            || Expected::pass("answers from a pipeline that loses nothing; some are wrong because it is late").observing("orders_answered");
        rows.push(Variant {
            label: format!("poller, {}", profile.as_str()),
            run: VariantRun::Poller(poller),
            expected: expected(),
        });
        rows.push(Variant {
            label: format!("stream, {}", profile.as_str()),
            run: VariantRun::Stream(Box::new(stream)),
            expected: expected(),
        });
    }
    Ok(rows)
}
