//! Verdicts over a run's history.
//!
//! - **lost**: had to be applied (inserted into the poller's table, or acknowledged by the
//!   broker) and never was;
//! - **duplicated**: applied more than once (counted per extra apply);
//! - **reordered**: applied after an event of the same account with a higher
//!   `account_seq`;
//! - **bad balances**: accounts whose cash or a position went below zero at any point of
//!   their apply order, or are below zero at the end: what a customer would have seen;
//! - **mismatched accounts**: accounts whose final state differs from the oracle's;
//! - **misnumbered accounts**: accounts whose applies are not numbered 1, 2, 3, ... each
//!   number once: the evidence of apply order is itself broken.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use tradeflow_domain::{AccountId, AccountState, Event, EventId, Ledger, Oracle};

/// One apply, as the store's apply journal records it: the event, the account the apply
/// touched, and its number in that account's apply order. The checker places it by the
/// workload's account and `account_seq` of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The event.
    pub event_id: EventId,
    /// The account the apply touched (the checker reads it only for an event the
    /// workload never generated).
    pub account_id: AccountId,
    /// Position in the account's apply order (1, 2, 3, ...).
    pub account_apply_index: u64,
}

/// Everything the checker needs.
#[derive(Debug)]
pub struct CheckInput<'a> {
    /// Every event the workload generated, in emission order.
    pub events: &'a [Event],
    /// The events that had to be applied: inserted, or acknowledged by the broker.
    pub must_apply: &'a HashSet<EventId>,
    /// The apply log, in any order (the checker orders by `account_apply_index`).
    pub applied: &'a [Applied],
    /// The store's final balances and positions.
    pub final_state: &'a BTreeMap<AccountId, AccountState>,
    /// The expected final state.
    pub oracle: &'a Oracle,
}

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every count is zero.
    Pass,
    /// At least one count is not.
    Fail,
}

/// The checker's counts, as they appear in the run record under `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Had to be applied, never was.
    pub lost: u64,
    /// Extra applies.
    pub duplicated: u64,
    /// Applies that came after a higher `account_seq` of the same account.
    pub reordered: u64,
    /// Accounts that were below zero at some point or at the end.
    pub bad_balances: u64,
    /// Accounts whose final state differs from the oracle.
    pub mismatched_accounts: u64,
    /// Accounts whose applies are not numbered 1..=n, each number once.
    #[serde(default)]
    pub misnumbered_accounts: u64,
    /// Pass when all counts are zero.
    pub verdict: Verdict,
}

/// Checks a history held in memory.
pub fn check(input: &CheckInput<'_>) -> CheckReport {
    let mut fold = HistoryFold::new(input.events);
    for applied in input.applied {
        fold.add(applied.event_id, &applied.account_id, applied.account_apply_index);
    }
    // What had to be applied but is not among the workload's events (none, from a run)
    // counts as lost unless the history applied it.
    let lost_outside = input
        .must_apply
        .iter()
        .filter(|event_id| fold.index_of(**event_id).is_none() && !fold.unknown.contains_key(*event_id))
        .count() as u64;
    let mut report = fold.finish(
        |index| input.must_apply.contains(&input.events[index].event_id),
        input.final_state,
        input.oracle,
    );
    report.lost += lost_outside;
    report.verdict = Verdict::of(&report);
    report
}

/// The checker's state while it reads a history held in memory one apply at a time, in
/// any order (a store's history is checked in the database instead:
/// [`crate::check_store`]). It keeps of each apply only the workload's index of its event
/// and the apply's number, and of each event its apply count. Each apply is placed by the
/// workload's account and `account_seq` of its event, not the history's copy of them; an
/// apply of an event the workload never generated goes by the account the history gives
/// it, with no place in that account's order.
pub struct HistoryFold<'a, E> {
    events: &'a [E],
    /// The workload's event indexes, sorted by event id.
    by_id: Vec<u32>,
    /// Per event index, how many times the history applied it.
    applies: Vec<u32>,
    /// Per account, its applies: (apply number, event index or [`UNKNOWN`]).
    per_account: HashMap<AccountId, Vec<(u64, u32)>>,
    /// Applies of events the workload never generated, per event id.
    unknown: HashMap<EventId, u64>,
}

/// The event index of an apply of an event the workload never generated.
const UNKNOWN: u32 = u32::MAX;

impl<'a, E: AsRef<Event>> HistoryFold<'a, E> {
    /// A fold over the workload's `events` (at most `u32::MAX - 1` of them).
    pub fn new(events: &'a [E]) -> HistoryFold<'a, E> {
        let mut by_id: Vec<u32> = (0..events.len() as u32).collect();
        by_id.sort_unstable_by_key(|index| events[*index as usize].as_ref().event_id);
        HistoryFold {
            events,
            by_id,
            applies: vec![0; events.len()],
            per_account: HashMap::new(),
            unknown: HashMap::new(),
        }
    }

    /// The workload's index of an event.
    pub fn index_of(&self, event_id: EventId) -> Option<usize> {
        self.by_id
            .binary_search_by_key(&event_id, |index| self.events[*index as usize].as_ref().event_id)
            .ok()
            .map(|position| self.by_id[position] as usize)
    }

    /// One apply: the event, the account the history says it touched, and its number in
    /// that account's apply order.
    pub fn add(&mut self, event_id: EventId, account_id: &AccountId, account_apply_index: u64) {
        match self.index_of(event_id) {
            Some(index) => {
                self.applies[index] = self.applies[index].saturating_add(1);
                let account = &self.events[index].as_ref().account_id;
                self.per_account
                    .entry(account.clone())
                    .or_default()
                    .push((account_apply_index, index as u32));
            }
            None => {
                *self.unknown.entry(event_id).or_insert(0) += 1;
                self.per_account
                    .entry(account_id.clone())
                    .or_default()
                    .push((account_apply_index, UNKNOWN));
            }
        }
    }

    /// The counts, given which of the workload's events had to be applied (by index), the
    /// store's final state and the oracle.
    pub fn finish(
        mut self,
        must_apply: impl Fn(usize) -> bool,
        final_state: &BTreeMap<AccountId, AccountState>,
        oracle: &Oracle,
    ) -> CheckReport {
        let lost = self
            .applies
            .iter()
            .enumerate()
            .filter(|(index, count)| **count == 0 && must_apply(*index))
            .count() as u64;
        let duplicated = self.applies.iter().map(|count| u64::from(count.saturating_sub(1))).sum::<u64>()
            + self.unknown.values().map(|count| count - 1).sum::<u64>();
        let mut order = OrderCheck::default();
        let mut accounts: Vec<(AccountId, Vec<(u64, u32)>)> = self.per_account.drain().collect();
        accounts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (account_id, mut applies) in accounts {
            applies.sort_by_key(|(account_apply_index, _)| *account_apply_index);
            order.start_account(account_id);
            for (account_apply_index, index) in applies {
                order.apply(account_apply_index, self.events.get(index as usize).map(AsRef::as_ref));
            }
        }
        let (reordered, misnumbered_accounts, went_negative) = order.finish();
        finish_report(
            Counted {
                lost,
                duplicated,
                reordered,
                misnumbered_accounts,
                went_negative,
            },
            final_state,
            oracle,
        )
    }
}

/// The checks of each account's applies, fed account after account, each in its apply
/// order: the numbering (1, 2, 3, ... each once), the order of `account_seq`, and the
/// balances replayed with the blind rule (what the store did).
#[derive(Default)]
pub(crate) struct OrderCheck {
    replay: Ledger,
    reordered: u64,
    misnumbered_accounts: u64,
    went_negative: HashSet<AccountId>,
    /// The account being read: its id, applies so far, whether they were numbered right,
    /// and the highest `account_seq` applied.
    current: Option<(AccountId, u64, bool, u64)>,
}

impl OrderCheck {
    /// The applies that follow are `account_id`'s.
    pub(crate) fn start_account(&mut self, account_id: AccountId) {
        self.end_account();
        self.current = Some((account_id, 0, true, 0));
    }

    /// The account's next apply: its number and its event (none for an event the
    /// workload never generated: it has no place in the order and cannot be replayed;
    /// the final-state comparison still catches what it did).
    pub(crate) fn apply(&mut self, account_apply_index: u64, event: Option<&Event>) {
        let Some((account_id, position, numbered, highest_seq)) = &mut self.current else {
            return;
        };
        *position += 1;
        *numbered &= account_apply_index == *position;
        let Some(event) = event else { return };
        if event.account_seq < *highest_seq {
            self.reordered += 1;
        }
        *highest_seq = (*highest_seq).max(event.account_seq);
        if self.replay.apply_blind(event).is_negative() {
            self.went_negative.insert(account_id.clone());
        }
    }

    fn end_account(&mut self) {
        if let Some((_, _, false, _)) = self.current.take() {
            self.misnumbered_accounts += 1;
        }
    }

    /// Reordered applies, misnumbered accounts, and the accounts that went below zero.
    pub(crate) fn finish(mut self) -> (u64, u64, HashSet<AccountId>) {
        self.end_account();
        (self.reordered, self.misnumbered_accounts, self.went_negative)
    }
}

/// What a checker counted from the history alone, before the final state is compared.
pub(crate) struct Counted {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) misnumbered_accounts: u64,
    /// Accounts that went below zero somewhere in their apply order.
    pub(crate) went_negative: HashSet<AccountId>,
}

/// The report: the counts, the accounts below zero at the end added to those that went
/// below on the way, and the accounts whose final state differs from the oracle's.
pub(crate) fn finish_report(counted: Counted, final_state: &BTreeMap<AccountId, AccountState>, oracle: &Oracle) -> CheckReport {
    let Counted {
        lost,
        duplicated,
        reordered,
        misnumbered_accounts,
        mut went_negative,
    } = counted;
    for (account_id, state) in final_state {
        if state.is_negative() {
            went_negative.insert(account_id.clone());
        }
    }
    let mut report = CheckReport {
        lost,
        duplicated,
        reordered,
        bad_balances: went_negative.len() as u64,
        mismatched_accounts: mismatched_accounts(final_state, oracle),
        misnumbered_accounts,
        verdict: Verdict::Pass,
    };
    report.verdict = Verdict::of(&report);
    report
}

impl Verdict {
    /// Pass when every count of `report` is zero.
    fn of(report: &CheckReport) -> Verdict {
        let all_zero = report.lost == 0
            && report.duplicated == 0
            && report.reordered == 0
            && report.bad_balances == 0
            && report.mismatched_accounts == 0
            && report.misnumbered_accounts == 0;
        if all_zero { Verdict::Pass } else { Verdict::Fail }
    }
}

/// Accounts whose final state differs from the oracle's (an account missing on one side
/// counts as empty there).
fn mismatched_accounts(final_state: &BTreeMap<AccountId, AccountState>, oracle: &Oracle) -> u64 {
    let empty = AccountState::default();
    let expected = oracle.ledger();
    let mut accounts: HashSet<&AccountId> = final_state.keys().collect();
    accounts.extend(expected.accounts().map(|(account_id, _)| account_id));
    accounts
        .into_iter()
        .filter(|account_id| {
            let actual = final_state.get(*account_id).unwrap_or(&empty);
            let wanted = expected.account(account_id).unwrap_or(&empty);
            !actual.same_holdings(wanted)
        })
        .count() as u64
}

#[cfg(test)]
mod tests;
