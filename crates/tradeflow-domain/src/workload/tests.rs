//! Workload tests: determinism, the never-negative guarantee and the oracle.

use super::*;
use crate::ledger::{Ledger, Outcome};
use crate::oracle::Oracle;
use proptest::prelude::*;

fn config(seed: u64, events: u64, accounts: u32, profile: RateProfile) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        events,
        accounts,
        rate_per_s: 1_000.0,
        profile,
        skew: ACCOUNT_SKEW,
        mix: EventMix::default(),
    }
}

fn profile() -> impl Strategy<Value = RateProfile> {
    prop_oneof![Just(RateProfile::Steady), Just(RateProfile::Ramp), Just(RateProfile::Burst)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn applied_in_order_nothing_goes_negative(
        seed in any::<u64>(),
        events in 1_u64..2_000,
        accounts in 1_u32..50,
        profile in profile(),
        skew in 0.0..=SKEW_MAX,
        (withdrawal, buy, sell) in (0.0..=0.5_f64, 0.0..=0.5_f64, 0.0..=0.5_f64),
    ) {
        let mut config = config(seed, events, accounts, profile);
        config.skew = skew;
        config.mix = EventMix { withdrawal, buy, sell: sell.min(1.0 - withdrawal - buy) };
        let workload = Workload::generate(&config).expect("valid config");
        let mut checked = Ledger::new();
        let mut blind = Ledger::new();
        for event in workload.plain_events() {
            prop_assert_eq!(checked.apply_checked(&event), Outcome::Applied, "seed {} event {:?}", seed, event);
            prop_assert!(!blind.apply_blind(&event).is_negative(), "seed {} went negative at {:?}", seed, event);
        }
    }

    #[test]
    fn the_oracle_is_a_fold_of_the_ledger_rules(seed in any::<u64>(), events in 1_u64..2_000, accounts in 1_u32..50) {
        let workload = Workload::generate(&config(seed, events, accounts, RateProfile::Steady)).expect("valid config");
        let oracle = Oracle::from_events(workload.plain_events());
        let folded = workload.plain_events().fold(Ledger::new(), |mut ledger, event| {
            ledger.apply_blind(&event);
            ledger
        });
        prop_assert_eq!(oracle.rejected(), 0);
        prop_assert_eq!(oracle.events(), events);
        prop_assert_eq!(oracle.ledger(), &folded);
    }

    #[test]
    fn account_seqs_count_up_from_one_and_send_times_never_go_back(seed in any::<u64>(), events in 1_u64..2_000, profile in profile()) {
        let workload = Workload::generate(&config(seed, events, 20, profile)).expect("valid config");
        let mut last_seq: BTreeMap<AccountId, u64> = BTreeMap::new();
        let mut last_offset = 0;
        for scheduled in &workload.events {
            let last = last_seq.entry(scheduled.event.account_id.clone()).or_insert(0);
            prop_assert_eq!(scheduled.event.account_seq, *last + 1);
            *last += 1;
            prop_assert!(scheduled.intended_offset_ns >= last_offset);
            last_offset = scheduled.intended_offset_ns;
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_events_and_another_seed_does_not() {
    let first = Workload::generate(&config(7, 500, 10, RateProfile::Burst)).expect("valid config");
    let again = Workload::generate(&config(7, 500, 10, RateProfile::Burst)).expect("valid config");
    let other = Workload::generate(&config(8, 500, 10, RateProfile::Burst)).expect("valid config");
    assert_eq!(first.events, again.events);
    assert_eq!(first.accounts, again.accounts);
    assert_ne!(first.events, other.events);
}

#[test]
fn a_few_hot_accounts_carry_most_of_the_traffic() {
    let workload = Workload::generate(&config(1, 20_000, 1_000, RateProfile::Steady)).expect("valid config");
    let hottest_ten = workload
        .plain_events()
        .filter(|event| workload.accounts[..10].iter().any(|account| account.id == event.account_id))
        .count();
    // Under a Zipf law with exponent 1.1 over 1,000 accounts the top 1% carry about 40%.
    assert!(
        hottest_ten > 20_000 / 4,
        "the 10 hottest accounts carried only {hottest_ten} of 20000 events"
    );
}

fn sent_at(workload: &Workload, index: usize) -> u64 {
    workload.events.get(index).expect("an event at that index").intended_offset_ns
}

#[test]
fn the_burst_profile_sends_the_middle_tenth_ten_times_faster() {
    let steady = Workload::generate(&config(3, 10_000, 10, RateProfile::Steady)).expect("valid config");
    let burst = Workload::generate(&config(3, 10_000, 10, RateProfile::Burst)).expect("valid config");
    let span = |workload: &Workload, from: usize, to: usize| sent_at(workload, to) - sent_at(workload, from);
    let ratio = span(&steady, 4_000, 4_999) as f64 / span(&burst, 4_000, 4_999) as f64;
    assert!((9.9..10.1).contains(&ratio), "spike ratio {ratio}");
    assert_eq!(span(&steady, 0, 3_999), span(&burst, 0, 3_999));
}

#[test]
fn bad_configurations_are_refused() {
    assert_eq!(
        Workload::generate(&config(1, 0, 10, RateProfile::Steady)).err(),
        Some(WorkloadError::Events { given: 0 })
    );
    assert_eq!(
        Workload::generate(&config(1, 10, 0, RateProfile::Steady)).err(),
        Some(WorkloadError::Accounts { given: 0 })
    );
    let mut nan_rate = config(1, 10, 10, RateProfile::Steady);
    nan_rate.rate_per_s = f64::NAN;
    assert!(matches!(Workload::generate(&nan_rate), Err(WorkloadError::Rate { .. })));
    let mut steep = config(1, 10, 10, RateProfile::Steady);
    steep.skew = SKEW_MAX + 1.0;
    assert_eq!(
        Workload::generate(&steep).err(),
        Some(WorkloadError::Skew { given: SKEW_MAX + 1.0 })
    );
    let mut overfull = config(1, 10, 10, RateProfile::Steady);
    overfull.mix = EventMix {
        withdrawal: 0.5,
        buy: 0.5,
        sell: 0.5,
    };
    assert_eq!(
        Workload::generate(&overfull).err(),
        Some(WorkloadError::Mix { given: overfull.mix })
    );
    assert_eq!(
        "sideways".parse::<RateProfile>(),
        Err(WorkloadError::Profile { given: "sideways".into() })
    );
}

#[test]
fn due_takes_the_events_whose_time_has_come_up_to_a_maximum() {
    let workload = Workload::generate(&config(5, 100, 3, RateProfile::Steady)).expect("valid config");
    // 1,000 events per second: event i is due at i ms.
    assert_eq!(workload.due(0, 0, 50), 1);
    assert_eq!(workload.due(0, 9_500_000, 50), 10);
    assert_eq!(workload.due(0, 9_500_000, 4), 4);
    assert_eq!(workload.due(10, 9_500_000, 50), 10);
    assert_eq!(workload.due(90, u64::MAX, 50), 100);
}

#[test]
fn fees_replace_withdrawals_from_an_index_on_and_leave_every_balance_as_it_was() {
    let plain = Workload::generate(&config(11, 3_000, 20, RateProfile::Steady)).expect("valid config");
    let mut upgraded = plain.clone();
    let turned = upgraded.charge_fees_from(1_500, 2);
    let fees = |workload: &Workload| {
        workload
            .events
            .iter()
            .enumerate()
            .filter(|(_, scheduled)| matches!(scheduled.event.kind, EventKind::FeeCharged { .. }))
            .map(|(index, _)| index)
            .collect::<Vec<_>>()
    };
    let at = fees(&upgraded);
    assert!(turned > 50, "some withdrawals became fees: {turned}");
    assert_eq!(at.len(), turned);
    assert!(at.iter().all(|index| *index >= 1_500), "none before the index: {at:?}");
    assert!(fees(&plain).is_empty());
    let oracle = |workload: &Workload| Oracle::from_events(workload.plain_events());
    assert_eq!(oracle(&upgraded).rejected(), 0);
    assert_eq!(oracle(&upgraded).ledger(), oracle(&plain).ledger());
}

#[test]
fn a_workload_kept_outside_the_process_reads_back_the_same_events_and_changes_the_same_way() {
    for (seed, profile) in [(21, RateProfile::Steady), (22, RateProfile::Burst)] {
        let config = config(seed, 9_000, 40, profile);
        let mut held = Workload::generate(&config).expect("valid config");
        let mut kept = Workload::generate_into(&config, Box::<MemoryTable>::default()).expect("valid config");
        assert!(kept.events.spilled() && !held.events.spilled());
        assert_eq!(kept.accounts, held.accounts);
        assert_eq!(kept.symbols, held.symbols);
        assert_eq!(kept.events.len(), 9_000);
        // In order (across read runs), one at a time, from an index on, and the last.
        assert!(kept.events == held.events, "seed {seed}: the events read back in order differ");
        for index in [0, 1, 1_023, 1_024, 1_025, 4_095, 4_096, 8_999] {
            assert_eq!(kept.events.get(index), held.events.get(index), "seed {seed}, event {index}");
        }
        assert_eq!(kept.events.get(9_000), None);
        assert!(kept.events.iter_from(5_000).eq(held.events.iter_from(5_000)));
        assert_eq!(kept.events.last(), held.events.last());
        for (from, elapsed_ns, max) in [
            (0, 0, 50),
            (0, 3_000_000_000, 100_000),
            (100, 1_000_000_000, 7),
            (8_990, u64::MAX, 50),
        ] {
            assert_eq!(
                kept.due(from, elapsed_ns, max),
                held.due(from, elapsed_ns, max),
                "due({from}, {elapsed_ns}, {max})"
            );
        }
        assert_eq!(kept.charge_fees_from(4_000, 3), held.charge_fees_from(4_000, 3));
        assert!(kept.events == held.events, "seed {seed}: the events after the fees differ");
        assert!(
            kept.events
                .iter()
                .any(|scheduled| matches!(scheduled.event.kind, EventKind::FeeCharged { .. }))
        );
    }
}
