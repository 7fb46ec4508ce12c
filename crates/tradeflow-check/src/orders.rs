//! Orders placed while trades are applied: a synchronous "can this customer buy this?"
//! answered from the balances table, as an order service would, judged against the truth
//! at the moment of the read (every trade whose time had come, applied in order by the
//! oracle's rule). What customers see of lag: a refusal of an order they could afford, or
//! an order accepted that their cash does not cover.
//!
//! The requests are drawn from the workload and a seed before the run: at a steady rate
//! over the publishing window, each an order like one the workload holds: a random trade
//! or withdrawal that takes cash, among those whose time has come (busy accounts are asked
//! about more), asked again for the same account and the same amount.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tradeflow_domain::{AccountId, Effect, Ledger, Money, Workload};
use tradeflow_store::Store;

/// One planned request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// When to ask, in ns after the start of the run.
    pub at_offset_ns: u64,
    /// Whose cash.
    pub account: AccountId,
    /// How much the order needs.
    pub amount: Money,
    /// The `account_seq` of the account's last trade executed before the order was placed
    /// (0: none): what its confirmations told the customer.
    pub confirmed_seq: u64,
}

/// What the order service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderAnswer {
    /// The request (an index into the plan).
    pub request: usize,
    /// When the balance was read, in ns after the start of the run.
    pub read_at_offset_ns: u64,
    /// The cash the balances table held then.
    pub seen_cash: Money,
    /// Whether the desk accepted the order.
    pub accepted: bool,
}

/// How the order desk decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Desk {
    /// Reads the balance once and accepts when the cash covers the order.
    #[default]
    Plain,
    /// Chapter 14's exercise decides, and may read again (every 10 ms, for at most
    /// [`DESK_WAIT_MAX`]).
    Exercise,
}

/// How long the exercise's desk reads again before it answers on what it has.
pub const DESK_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long it waits between reads.
pub const DESK_READ_AGAIN: Duration = Duration::from_millis(10);

/// Plans `per_s` requests a second over the workload's publishing window.
pub fn plan(workload: &Workload, seed: u64, per_s: f64) -> Vec<OrderRequest> {
    let Some(last) = workload.events.last() else { return Vec::new() };
    let step_ns = (1e9 / per_s.max(1.0)) as u64;
    let mut random = SplitMix(seed ^ 0x6f72_6465_7273);
    let mut truth = Truth::new(workload);
    let mut requests = Vec::new();
    let mut at = step_ns;
    while at <= last.intended_offset_ns {
        truth.advance_to(at);
        if truth.reached > 0 {
            // The first event that takes cash at or after a random one whose time has come.
            let from = random.below(truth.reached);
            let taking = workload
                .events
                .range(from, truth.reached)
                .chain(workload.events.range(0, from))
                .map(|scheduled| {
                    let delta = Effect::of(&scheduled.event.kind).cash_delta;
                    (scheduled.event, delta)
                })
                .find(|(_, delta)| delta.is_negative());
            if let Some((event, delta)) = taking {
                requests.push(OrderRequest {
                    at_offset_ns: at,
                    account: event.account_id.clone(),
                    amount: delta.negated(),
                    confirmed_seq: truth.last_seq.get(&event.account_id).copied().unwrap_or(0),
                });
            }
        }
        at += step_ns;
    }
    requests
}

/// The order service of a run: plans its requests from the workload, asks the balances
/// table each at its time, one at a time (a request whose moment passed while an earlier
/// read ran is asked at once), and judges the answers when the run is over; the report goes
/// into the run's record (`orders` and flat counts).
pub struct OrdersDuringRun {
    plan: Arc<Vec<OrderRequest>>,
    stop: tokio::sync::watch::Sender<bool>,
    asking: tokio::task::JoinHandle<Vec<OrderAnswer>>,
}

impl OrdersDuringRun {
    /// Plans `per_s` requests a second for `workload` and starts asking, timed from `start`
    /// (the run's clock), deciding as `desk` says.
    pub fn start(store: Store, workload: &Workload, per_s: f64, start: Instant, desk: Desk) -> OrdersDuringRun {
        let plan = Arc::new(plan(workload, workload.config.seed, per_s));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let asked = plan.clone();
        let asking = tokio::spawn(async move {
            let mut answers = Vec::with_capacity(asked.len());
            for (index, request) in asked.iter().enumerate() {
                let due = start + Duration::from_nanos(request.at_offset_ns);
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep_until(due.into()) => {}
                }
                match answer(&store, desk, index, request, start).await {
                    Ok(answer) => answers.push(answer),
                    // An order service that cannot read answers nothing: not counted.
                    Err(error) => tracing::warn!(%error, "the order desk could not read a balance"),
                }
            }
            answers
        });
        OrdersDuringRun { plan, stop, asking }
    }

    /// Stops asking; the answers judged.
    pub async fn finish(self, workload: &Workload) -> OrdersReport {
        self.stop.send_replace(true);
        let answers = self.asking.await.unwrap_or_default();
        score(workload, &self.plan, &answers)
    }
}

impl OrdersReport {
    /// Writes the report into a run record's `config` (a JSON object): `orders`, and the
    /// flat counts `orders_answered` and `orders_wrong`.
    pub fn record_into(&self, config: &mut serde_json::Value) {
        if let Some(object) = config.as_object_mut() {
            object.insert("orders_answered".into(), self.answered.into());
            object.insert("orders_wrong".into(), self.wrong().into());
            object.insert("orders".into(), serde_json::to_value(self).unwrap_or_default());
        }
    }
}

/// One order answered: read, decide, and for the exercise's desk read again while it says
/// so (bounded by [`DESK_WAIT_MAX`]).
async fn answer(
    store: &Store,
    desk: Desk,
    index: usize,
    request: &OrderRequest,
    start: Instant,
) -> Result<OrderAnswer, tradeflow_store::StoreError> {
    let asked = Instant::now();
    loop {
        let read_at = start.elapsed();
        let (seen_cash, accepted) = match desk {
            Desk::Plain => {
                let cash = store.cash_of(&request.account).await?;
                (cash, cash.minor() >= request.amount.minor())
            }
            Desk::Exercise => {
                let (cash, applied_seq) = store.cash_and_applied_seq(&request.account).await?;
                let view = tradeflow_exercises::OrderView {
                    cash_seen: cash.minor(),
                    amount: request.amount.minor(),
                    applied_seq,
                    confirmed_seq: request.confirmed_seq,
                    waited_ms: asked.elapsed().as_millis() as u64,
                };
                match tradeflow_exercises::decide_order::decide_order(&view) {
                    tradeflow_exercises::OrderDecision::Accept => (cash, true),
                    tradeflow_exercises::OrderDecision::Refuse => (cash, false),
                    tradeflow_exercises::OrderDecision::ReadAgain if asked.elapsed() < DESK_WAIT_MAX => {
                        tokio::time::sleep(DESK_READ_AGAIN).await;
                        continue;
                    }
                    // Waited its most: the desk answers on what it has.
                    tradeflow_exercises::OrderDecision::ReadAgain => (cash, cash.minor() >= request.amount.minor()),
                }
            }
        };
        return Ok(OrderAnswer {
            request: index,
            read_at_offset_ns: u64::try_from(read_at.as_nanos()).unwrap_or(u64::MAX),
            seen_cash,
            accepted,
        });
    }
}

/// The answers judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OrdersReport {
    /// Requests answered.
    pub answered: u64,
    /// Refused, though the true cash covered the order.
    pub refused_affordable: u64,
    /// Accepted, though the true cash did not cover it.
    pub accepted_unaffordable: u64,
    /// Wrong answers per thousand answered.
    pub wrong_per_thousand: f64,
    /// Reads whose cash was not the true cash (a wrong answer needs one; most are not).
    pub stale_reads: u64,
    /// Of the stale reads, how long the account's first unreflected trade had been due,
    /// in ms, the median (a read whose cash matched no earlier true cash of its account is
    /// left out).
    pub staleness_ms_p50: f64,
    /// Its 99th percentile.
    pub staleness_ms_p99: f64,
    /// Its worst.
    pub staleness_ms_max: f64,
    /// How long after the order was placed the desk answered, ms, the median.
    pub answer_ms_p50: f64,
    /// Its 99th percentile.
    pub answer_ms_p99: f64,
}

impl OrdersReport {
    /// Wrong answers.
    pub fn wrong(&self) -> u64 {
        self.refused_affordable + self.accepted_unaffordable
    }
}

/// Judges `answers` to `plan`. An answer is right when it is right for some balance the
/// account held between the moment the order was placed and the moment the desk read it:
/// the balance then (every trade executed before the order, applied in order), or one a
/// later trade of the account left before the read. A desk that reads at once is judged on
/// the balance at the order; one that waits for the customer's trades may also answer on
/// the trades that came while it waited.
pub fn score(workload: &Workload, plan: &[OrderRequest], answers: &[OrderAnswer]) -> OrdersReport {
    let mut truth = Truth::new(workload);
    truth.advance_to(u64::MAX);
    let mut report = OrdersReport::default();
    let mut staleness = Vec::new();
    let mut answer_ms = Vec::new();
    for answer in answers.iter().filter(|answer| answer.request < plan.len()) {
        let request = &plan[answer.request];
        let read_at = answer.read_at_offset_ns.max(request.at_offset_ns);
        answer_ms.push(read_at.saturating_sub(request.at_offset_ns) as f64 / 1e6);
        let held = truth.held_between(&request.account, request.at_offset_ns, read_at);
        let affordable = |cash: &Money| cash.minor() >= request.amount.minor();
        report.answered += 1;
        if !held.iter().any(|cash| affordable(cash) == answer.accepted) {
            if answer.accepted {
                report.accepted_unaffordable += 1;
            } else {
                report.refused_affordable += 1;
            }
        }
        if !held.contains(&answer.seen_cash) {
            report.stale_reads += 1;
            if let Some(due_ns) = truth.first_unreflected(&request.account, answer.seen_cash, request.at_offset_ns) {
                staleness.push(read_at.saturating_sub(due_ns) as f64 / 1e6);
            }
        }
    }
    report.wrong_per_thousand = if report.answered == 0 {
        0.0
    } else {
        report.wrong() as f64 * 1_000.0 / report.answered as f64
    };
    staleness.sort_by(f64::total_cmp);
    answer_ms.sort_by(f64::total_cmp);
    let at = |values: &[f64], quantile: f64| {
        if values.is_empty() {
            0.0
        } else {
            values[((values.len() - 1) as f64 * quantile).round() as usize]
        }
    };
    (report.staleness_ms_p50, report.staleness_ms_p99, report.staleness_ms_max) =
        (at(&staleness, 0.5), at(&staleness, 0.99), at(&staleness, 1.0));
    (report.answer_ms_p50, report.answer_ms_p99) = (at(&answer_ms, 0.5), at(&answer_ms, 0.99));
    report
}

/// The oracle walked forward in time: every event whose intended time has come, applied in
/// order, and each account's cash after each of its events.
struct Truth<'a> {
    workload: &'a Workload,
    ledger: Ledger,
    /// Events applied so far (a prefix of the workload).
    reached: usize,
    /// Per account: the `account_seq` of its last event so far.
    last_seq: HashMap<AccountId, u64>,
    /// Per account: `(intended offset, cash after)` of each of its events so far.
    history: HashMap<AccountId, Vec<(u64, Money)>>,
}

impl<'a> Truth<'a> {
    fn new(workload: &'a Workload) -> Truth<'a> {
        Truth {
            workload,
            ledger: Ledger::new(),
            reached: 0,
            last_seq: HashMap::new(),
            history: HashMap::new(),
        }
    }

    fn advance_to(&mut self, offset_ns: u64) {
        while let Some(scheduled) = self.workload.events.get(self.reached)
            && scheduled.intended_offset_ns <= offset_ns
        {
            self.ledger.apply_checked(&scheduled.event);
            let cash = self.cash(&scheduled.event.account_id);
            self.history
                .entry(scheduled.event.account_id.clone())
                .or_default()
                .push((scheduled.intended_offset_ns, cash));
            self.last_seq
                .insert(scheduled.event.account_id.clone(), scheduled.event.account_seq);
            self.reached += 1;
        }
    }

    fn cash(&self, account: &AccountId) -> Money {
        self.ledger.account(account).map_or(Money::from_minor(0), |state| state.cash)
    }

    /// The account's cash at `from` and after each of its events due up to `to` (advanced
    /// past `to` first).
    fn held_between(&self, account: &AccountId, from: u64, to: u64) -> Vec<Money> {
        let history = self.history.get(account).map_or(&[][..], Vec::as_slice);
        let before = history.partition_point(|(due, _)| *due <= from);
        let until = history.partition_point(|(due, _)| *due <= to);
        let at_from = before.checked_sub(1).map_or(Money::from_minor(0), |index| history[index].1);
        std::iter::once(at_from)
            .chain(history[before..until].iter().map(|(_, cash)| *cash))
            .collect()
    }

    /// When the first of the account's events up to `until` that a read of `seen` did not
    /// reflect was due: the event after the latest one whose cash was `seen` (the account's
    /// first event when `seen` is the opening zero). `None` when `seen` was never its true
    /// cash by then.
    fn first_unreflected(&self, account: &AccountId, seen: Money, until: u64) -> Option<u64> {
        let history = self.history.get(account)?;
        let history = &history[..history.partition_point(|(due, _)| *due <= until)];
        let matched = history.iter().rposition(|(_, cash)| *cash == seen);
        match matched {
            Some(index) => history.get(index + 1).map(|(due, _)| *due),
            None if seen.minor() == 0 => history.first().map(|(due, _)| *due),
            None => None,
        }
    }
}

/// A small seeded generator (SplitMix64), so that a seed replays the same requests.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_domain::{RateProfile, WorkloadConfig};

    fn workload() -> Workload {
        Workload::generate(&WorkloadConfig {
            seed: 3,
            events: 2_000,
            accounts: 10,
            rate_per_s: 1_000.0,
            profile: RateProfile::Steady,
            skew: tradeflow_domain::workload::ACCOUNT_SKEW,
            mix: tradeflow_domain::EventMix::default(),
        })
        .expect("a workload")
    }

    /// Answers read at the planned moment, from the truth `delay_ns` earlier.
    fn answers(workload: &Workload, plan: &[OrderRequest], delay_ns: u64) -> Vec<OrderAnswer> {
        plan.iter()
            .enumerate()
            .map(|(index, request)| {
                let mut truth = Truth::new(workload);
                truth.advance_to(request.at_offset_ns.saturating_sub(delay_ns));
                let seen_cash = truth.cash(&request.account);
                OrderAnswer {
                    request: index,
                    read_at_offset_ns: request.at_offset_ns,
                    seen_cash,
                    accepted: seen_cash.minor() >= request.amount.minor(),
                }
            })
            .collect()
    }

    #[test]
    fn the_plan_is_seeded_and_spans_the_publishing_window() {
        let workload = workload();
        let plan = plan(&workload, 9, 200.0);
        assert_eq!(plan, super::plan(&workload, 9, 200.0), "a seed replays the requests");
        assert_ne!(plan, super::plan(&workload, 10, 200.0));
        // Two seconds of publishing at 200 requests a second.
        assert!((395..=400).contains(&plan.len()), "{}", plan.len());
        assert!(plan.iter().all(|request| request.amount.minor() >= 1));
    }

    #[test]
    fn an_answer_read_later_is_right_on_any_balance_the_account_held_since_the_order() {
        let workload = workload();
        let plan = plan(&workload, 9, 200.0);
        // Each read 300 ms after its order, of the balance as it was then: right, though
        // the balance moved since the order (it is one the account held in between).
        let later: Vec<OrderAnswer> = answers(&workload, &plan, 0)
            .into_iter()
            .map(|mut answer| {
                let request = &plan[answer.request];
                let mut truth = Truth::new(&workload);
                truth.advance_to(request.at_offset_ns + 300_000_000);
                answer.read_at_offset_ns = request.at_offset_ns + 300_000_000;
                answer.seen_cash = truth.cash(&request.account);
                answer.accepted = answer.seen_cash.minor() >= request.amount.minor();
                answer
            })
            .collect();
        let report = score(&workload, &plan, &later);
        assert_eq!((report.wrong(), report.stale_reads), (0, 0), "{report:?}");
        assert!((report.answer_ms_p50 - 300.0).abs() < 1e-6, "{report:?}");
        // The same reads answered the other way round are all wrong.
        let flipped: Vec<OrderAnswer> = later
            .iter()
            .cloned()
            .map(|mut answer| {
                answer.accepted = !answer.accepted;
                answer
            })
            .collect();
        assert!(score(&workload, &plan, &flipped).wrong() > 0);
    }

    #[test]
    fn an_up_to_date_balance_answers_every_order_right_and_a_late_one_does_not() {
        let workload = workload();
        let plan = plan(&workload, 9, 200.0);
        let current = score(&workload, &plan, &answers(&workload, &plan, 0));
        assert_eq!((current.answered, current.wrong(), current.stale_reads), (plan.len() as u64, 0, 0));
        // Balances 300 ms behind: some answers are wrong, every wrong one from a stale read,
        // and the staleness is what the delay makes it (at most 300 ms).
        let late = score(&workload, &plan, &answers(&workload, &plan, 300_000_000));
        assert!(late.wrong() > 0, "{late:?}");
        assert!(late.stale_reads >= late.wrong(), "{late:?}");
        assert!(late.staleness_ms_max <= 300.0 && late.staleness_ms_p50 > 0.0, "{late:?}");
        assert!((late.wrong_per_thousand - late.wrong() as f64 * 1e3 / late.answered as f64).abs() < 1e-9);
    }
}
