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

/// One apply, as the store's apply journal records it (event and index), placed by the
/// workload's account and sequence of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The event.
    pub event_id: EventId,
    /// Its account.
    pub account_id: AccountId,
    /// Its `account_seq`.
    pub account_seq: u64,
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

/// Checks a history.
pub fn check(input: &CheckInput<'_>) -> CheckReport {
    let events_by_id: HashMap<EventId, &Event> = input.events.iter().map(|event| (event.event_id, event)).collect();

    let mut applies_per_event: HashMap<EventId, u64> = HashMap::with_capacity(input.applied.len());
    for applied in input.applied {
        *applies_per_event.entry(applied.event_id).or_insert(0) += 1;
    }
    let lost = input
        .must_apply
        .iter()
        .filter(|event_id| !applies_per_event.contains_key(event_id))
        .count() as u64;
    let duplicated = applies_per_event.values().map(|count| count - 1).sum();

    let mut per_account: BTreeMap<&AccountId, Vec<&Applied>> = BTreeMap::new();
    for applied in input.applied {
        per_account.entry(&applied.account_id).or_default().push(applied);
    }
    let mut reordered = 0;
    let mut misnumbered_accounts = 0;
    let mut went_negative: HashSet<&AccountId> = HashSet::new();
    let mut replay = Ledger::new();
    for (account_id, applies) in &mut per_account {
        applies.sort_by_key(|applied| applied.account_apply_index);
        if !applies
            .iter()
            .enumerate()
            .all(|(position, applied)| applied.account_apply_index == position as u64 + 1)
        {
            misnumbered_accounts += 1;
        }
        let mut highest_seq = 0;
        for applied in applies.iter() {
            if applied.account_seq < highest_seq {
                reordered += 1;
            }
            highest_seq = highest_seq.max(applied.account_seq);
            // An apply of an event the workload never generated cannot be replayed; the
            // final-state comparison still catches what it did.
            if let Some(event) = events_by_id.get(&applied.event_id)
                && replay.apply_blind(event).is_negative()
            {
                went_negative.insert(*account_id);
            }
        }
    }
    for (account_id, state) in input.final_state {
        if state.is_negative() {
            went_negative.insert(account_id);
        }
    }

    let mismatched_accounts = mismatched_accounts(input);

    let bad_balances = went_negative.len() as u64;
    let all_zero =
        lost == 0 && duplicated == 0 && reordered == 0 && bad_balances == 0 && mismatched_accounts == 0 && misnumbered_accounts == 0;
    CheckReport {
        lost,
        duplicated,
        reordered,
        bad_balances,
        mismatched_accounts,
        misnumbered_accounts,
        verdict: if all_zero { Verdict::Pass } else { Verdict::Fail },
    }
}

/// Accounts whose final state differs from the oracle's (an account missing on one side
/// counts as empty there).
fn mismatched_accounts(input: &CheckInput<'_>) -> u64 {
    let empty = AccountState::default();
    let expected = input.oracle.ledger();
    let mut accounts: HashSet<&AccountId> = input.final_state.keys().collect();
    accounts.extend(expected.accounts().map(|(account_id, _)| account_id));
    accounts
        .into_iter()
        .filter(|account_id| {
            let actual = input.final_state.get(*account_id).unwrap_or(&empty);
            let wanted = expected.account(account_id).unwrap_or(&empty);
            !actual.same_holdings(wanted)
        })
        .count() as u64
}

#[cfg(test)]
mod tests;
