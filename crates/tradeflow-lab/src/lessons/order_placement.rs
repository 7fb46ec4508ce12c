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
//! account and amount. The checker judges each answer right when it is right for some
//! balance the account held between the order and the desk's read (the truth: every trade
//! whose time had come, applied in order; for a desk that reads at once, the balance at
//! the order) and counts wrong answers per thousand, how stale the stale reads were, and how long after the order the
//! desk answered (`tradeflow-check`'s `orders`).
//!
//! Chapter 14's run: the stream at the steady rate, the desk deciding with the learner's
//! `decide_order`, told the balance it read, the customer's trades applied to it and the
//! ones confirmed before the order. As shipped it answers at once on the balance read; it
//! passes with at most 10 wrong answers per thousand, answered within a second at p99.
//!
//! Variants: every row must pass (nothing lost: the answers come from a correct pipeline
//! that is only late) with its orders answered (`orders_answered` > 0). The lesson is in
//! the numbers the report prints under each row, side by side: wrong answers per thousand
//! follow the staleness of the balances, and which architecture is staler depends on the
//! setup (the poller's floor is its poll interval; the stream's is its end-to-end latency,
//! which three Kafka JVMs on two cores push past the poller's). No row claims a winner.

use crate::chapters::{Judgement, judge_counts};
use crate::expect::Expected;
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_check::RunRecord;
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

/// The most wrong answers per thousand chapter 14's run may give.
pub const CHAPTER_WRONG_PER_THOUSAND_MAX: f64 = 10.0;
/// The slowest its desk may answer, at p99, ms: a desk that makes every customer wait has
/// not solved anything.
pub const CHAPTER_ANSWER_P99_MAX_MS: f64 = 1_000.0;

/// Chapter 14's run: the stream at the lesson's steady rate, the desk deciding with the
/// learner's `decide_order`.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    let mut stream = setup.stream(12, 3);
    stream.workload.rate_per_s = RATE_PER_S;
    stream.workload.events = EVENTS / 2;
    stream.scenario.orders_per_s = Some(ORDERS_PER_S);
    stream.scenario.order_desk = tradeflow_check::orders::Desk::Exercise;
    Ok(Variant {
        label: "your decide_order: an order desk beside the stream, 200 orders a second".into(),
        run: VariantRun::Stream(Box::new(stream)),
        expected: Expected::pass("nothing lost; the desk's answers right").observing("orders_answered"),
    })
}

/// Chapter 14's judge: the checker's counts first, then the desk's wrong answers per
/// thousand against [`CHAPTER_WRONG_PER_THOUSAND_MAX`].
pub fn chapter_judge(runs: &[(Variant, RunRecord)]) -> Judgement {
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let orders = record.config.get("orders").cloned().unwrap_or_default();
    let number = |key: &str| orders.get(key).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    desk_verdict(
        judge_counts(variant, record, &crate::chapters::EVERY_COUNT),
        number("wrong_per_thousand"),
        (number("refused_affordable"), number("accepted_unaffordable")),
        (number("answer_ms_p50"), number("answer_ms_p99")),
    )
}

/// A counts verdict, turned into a failure when the desk answered too many orders wrong.
fn desk_verdict(judged: Judgement, wrong_per_thousand: f64, (refused, accepted): (f64, f64), (p50, p99): (f64, f64)) -> Judgement {
    match judged {
        Judgement::Pass(_) if wrong_per_thousand > CHAPTER_WRONG_PER_THOUSAND_MAX => Judgement::Fail {
            violation: "wrong answers",
            detail: format!(
                "wrong answers {wrong_per_thousand:.1} per thousand (want at most {CHAPTER_WRONG_PER_THOUSAND_MAX:.0}): {refused:.0} refused though affordable, {accepted:.0} accepted though not; answered {p50:.0} ms after the order at the median, {p99:.0} ms at p99"
            ),
        },
        Judgement::Pass(_) if p99 > CHAPTER_ANSWER_P99_MAX_MS => Judgement::Fail {
            violation: "slow answers",
            detail: format!(
                "slow answers: the desk answered {p99:.0} ms after the order at p99 (want at most {CHAPTER_ANSWER_P99_MAX_MS:.0}), {p50:.0} ms at the median; {wrong_per_thousand:.1} wrong answers per thousand"
            ),
        },
        Judgement::Pass(evidence) => Judgement::Pass(format!(
            "{wrong_per_thousand:.1} wrong answers per thousand, answered {p50:.0} ms after the order at the median, {p99:.0} ms at p99; {evidence}"
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_desk_that_passed_the_counts_fails_on_too_many_wrong_answers() {
        let passed = || Judgement::Pass("nothing lost".into());
        assert!(matches!(
            desk_verdict(passed(), 10.5, (9.0, 2.0), (1.0, 2.0)),
            Judgement::Fail {
                violation: "wrong answers",
                ..
            }
        ));
        assert!(matches!(desk_verdict(passed(), 10.0, (8.0, 2.0), (1.0, 2.0)), Judgement::Pass(_)));
        assert!(matches!(
            desk_verdict(passed(), 0.0, (0.0, 0.0), (900.0, 2_000.0)),
            Judgement::Fail {
                violation: "slow answers",
                ..
            }
        ));
        let lost = Judgement::Fail {
            violation: "lost",
            detail: "lost 3".into(),
        };
        assert!(matches!(
            desk_verdict(lost, 0.0, (0.0, 0.0), (0.0, 0.0)),
            Judgement::Fail { violation: "lost", .. }
        ));
    }
}
