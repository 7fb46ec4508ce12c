//! Checker tests: a faithful history passes, and each kind of damage is counted.

use super::*;
use tradeflow_domain::{Workload, WorkloadConfig};

struct Fixture {
    events: Vec<Event>,
    oracle: Oracle,
}

fn fixture() -> Fixture {
    let config = WorkloadConfig {
        seed: 11,
        events: 400,
        accounts: 5,
        rate_per_s: 1_000.0,
        profile: Default::default(),
        skew: tradeflow_domain::workload::ACCOUNT_SKEW,
        mix: tradeflow_domain::EventMix::default(),
    };
    let events: Vec<Event> = Workload::generate(&config).expect("valid config").plain_events().collect();
    let oracle = Oracle::from_events(&events);
    Fixture { events, oracle }
}

/// A store that applied `order` (indexes into the events), blindly, in that order.
fn store_history(events: &[Event], order: &[usize]) -> (Vec<Applied>, BTreeMap<AccountId, AccountState>) {
    let mut ledger = Ledger::new();
    let mut counts: HashMap<AccountId, u64> = HashMap::new();
    let applied = order
        .iter()
        .map(|index| {
            let event = &events[*index];
            ledger.apply_blind(event);
            let count = counts.entry(event.account_id.clone()).or_insert(0);
            *count += 1;
            Applied {
                event_id: event.event_id,
                account_id: event.account_id.clone(),
                account_apply_index: *count,
            }
        })
        .collect();
    let final_state = ledger.accounts().map(|(id, state)| (id.clone(), state.clone())).collect();
    (applied, final_state)
}

/// The checker over a history held in memory.
fn check_history(
    fixture: &Fixture,
    must_apply: &HashSet<EventId>,
    applied: &[Applied],
    final_state: &BTreeMap<AccountId, AccountState>,
) -> CheckReport {
    check(&CheckInput {
        events: &fixture.events,
        must_apply,
        applied,
        final_state,
        oracle: &fixture.oracle,
    })
}

fn run_check(fixture: &Fixture, order: &[usize]) -> CheckReport {
    let must_apply: HashSet<EventId> = fixture.events.iter().map(|event| event.event_id).collect();
    let (applied, final_state) = store_history(&fixture.events, order);
    check_history(fixture, &must_apply, &applied, &final_state)
}

#[test]
fn a_faithful_history_passes() {
    let fixture = fixture();
    let order: Vec<usize> = (0..fixture.events.len()).collect();
    let report = run_check(&fixture, &order);
    assert_eq!(
        report,
        CheckReport {
            lost: 0,
            duplicated: 0,
            reordered: 0,
            bad_balances: 0,
            mismatched_accounts: 0,
            misnumbered_accounts: 0,
            verdict: Verdict::Pass
        }
    );
}

#[test]
fn a_missing_apply_is_lost_and_mismatches_its_account() {
    let fixture = fixture();
    let order: Vec<usize> = (1..fixture.events.len()).collect();
    let report = run_check(&fixture, &order);
    assert_eq!(report.lost, 1);
    assert_eq!(report.mismatched_accounts, 1);
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn an_apply_twice_is_duplicated() {
    let fixture = fixture();
    let mut order: Vec<usize> = (0..fixture.events.len()).collect();
    order.push(0);
    let report = run_check(&fixture, &order);
    assert_eq!(report.duplicated, 1);
    assert_eq!(report.lost, 0);
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn a_first_deposit_applied_last_shows_reordering_and_bad_balances() {
    let fixture = fixture();
    // The first event of every account is a deposit that funds what follows; applying it
    // after the rest makes the account go negative in between, though the final sum is right.
    let first = 0;
    let account = fixture.events[first].account_id.clone();
    let mut order: Vec<usize> = (1..fixture.events.len()).collect();
    let last_of_account = order
        .iter()
        .rposition(|index| fixture.events[*index].account_id == account)
        .expect("account has later events");
    order.insert(last_of_account + 1, first);
    let report = run_check(&fixture, &order);
    assert!(report.reordered >= 1, "{report:?}");
    assert_eq!(report.bad_balances, 1, "{report:?}");
    assert_eq!(
        report.mismatched_accounts, 0,
        "cash deltas commute, so the end state matches: {report:?}"
    );
    assert_eq!(report.lost, 0);
}

#[test]
fn applies_numbered_with_a_gap_or_twice_are_misnumbered() {
    let fixture = fixture();
    let must_apply: HashSet<EventId> = fixture.events.iter().map(|event| event.event_id).collect();
    let order: Vec<usize> = (0..fixture.events.len()).collect();
    let (mut applied, final_state) = store_history(&fixture.events, &order);
    let account = applied[0].account_id.clone();
    // The account's second apply takes the number of its first: one number twice, one gap.
    let second = applied
        .iter()
        .position(|apply| apply.account_id == account && apply.account_apply_index == 2)
        .expect("the account has two applies");
    applied[second].account_apply_index = 1;
    let report = check_history(&fixture, &must_apply, &applied, &final_state);
    assert_eq!(report.misnumbered_accounts, 1, "{report:?}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report:?}");
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn an_apply_repeated_at_once_is_duplicated_not_reordered() {
    let fixture = fixture();
    // The first event applied twice in a row: the second apply carries the same sequence as
    // the highest so far, which is a duplicate and no step backwards.
    let mut order: Vec<usize> = vec![0, 0];
    order.extend(1..fixture.events.len());
    let report = run_check(&fixture, &order);
    assert_eq!(report.duplicated, 1, "{report:?}");
    assert_eq!(report.reordered, 0, "{report:?}");
}

#[test]
fn an_apply_is_placed_by_the_workloads_account_not_the_one_the_history_gives() {
    let fixture = fixture();
    let order: Vec<usize> = (0..fixture.events.len()).collect();
    let (mut applied, final_state) = store_history(&fixture.events, &order);
    // The store's copy of the first apply names another account: the checker still
    // numbers and orders it within its event's own account, so nothing is misnumbered.
    let other = fixture
        .events
        .iter()
        .map(|event| event.account_id.clone())
        .find(|account| *account != applied[0].account_id)
        .expect("two accounts");
    applied[0].account_id = other;
    let must_apply: HashSet<EventId> = fixture.events.iter().map(|event| event.event_id).collect();
    let report = check_history(&fixture, &must_apply, &applied, &final_state);
    assert_eq!(report.verdict, Verdict::Pass, "{report:?}");
}

#[test]
fn an_event_the_workload_never_generated_applied_twice_is_duplicated_and_lost_if_required() {
    let fixture = fixture();
    let order: Vec<usize> = (0..fixture.events.len()).collect();
    let (mut applied, final_state) = store_history(&fixture.events, &order);
    let stranger = EventId::parse("0190b7c4-8f3e-7b2a-9c1d-2e3f4a5b6c7d").expect("uuid");
    let account = applied[0].account_id.clone();
    for _ in 0..2 {
        applied.push(Applied {
            event_id: stranger,
            account_id: account.clone(),
            account_apply_index: 0,
        });
    }
    let mut must_apply: HashSet<EventId> = fixture.events.iter().map(|event| event.event_id).collect();
    let report = check_history(&fixture, &must_apply, &applied, &final_state);
    // Numbered 0 twice beside the account's 1..n: misnumbered; applied twice: duplicated.
    assert_eq!(
        (report.duplicated, report.misnumbered_accounts, report.lost),
        (1, 1, 0),
        "{report:?}"
    );
    // An id that had to be applied, outside the workload and never applied, is lost.
    must_apply.insert(EventId::parse("0190b7c4-8f3e-7b2a-9c1d-2e3f4a5b6c7e").expect("uuid"));
    let report = check_history(&fixture, &must_apply, &applied, &final_state);
    assert_eq!(report.lost, 1, "{report:?}");
}
