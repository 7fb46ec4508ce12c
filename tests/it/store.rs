//! Store tests on SQLite and on PostgreSQL: idempotent apply, atomic batches, refused rows,
//! and the errors a person sees for a missing server or a schema from a newer build.

use std::collections::BTreeMap;
use tradeflow_domain::{AccountId, AccountState, Event, Oracle, Workload, WorkloadConfig};
use tradeflow_store::{ApplyInput, SourceRow, Store, StoreConfig, StoreError, StoreKind};

/// Runs a test body once on a SQLite file and once on a fresh PostgreSQL database.
macro_rules! on_both_stores {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _directory) = tradeflow_tests::sqlite_store().await;
                super::$body(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL at DATABASE_URL (default: the server .ci/run starts)"]
            async fn postgres() {
                if let Some((store, _url)) = tradeflow_tests::postgres_database(module_path!()).await {
                    super::$body(store).await;
                }
            }
        }
    };
}

fn events(seed: u64, count: u64, accounts: u32) -> Vec<Event> {
    let config = WorkloadConfig {
        seed,
        events: count,
        accounts,
        rate_per_s: 1_000.0,
        profile: Default::default(),
        skew: tradeflow_domain::workload::ACCOUNT_SKEW,
        mix: tradeflow_domain::EventMix::default(),
    };
    Workload::generate(&config).expect("valid workload").plain_events().collect()
}

/// Events as a workload holds them (in memory), for the checker.
fn scheduled(events: &[Event]) -> tradeflow_domain::Events {
    tradeflow_domain::Events::in_memory(
        events
            .iter()
            .map(|event| tradeflow_domain::ScheduledEvent {
                event: event.clone(),
                intended_offset_ns: 0,
            })
            .collect(),
    )
}

fn inputs(events: &[Event]) -> Vec<ApplyInput<'_>> {
    events.iter().map(|event| ApplyInput { event, intended_at_ns: 0 }).collect()
}

fn expected(events: &[Event]) -> BTreeMap<AccountId, AccountState> {
    Oracle::from_events(events)
        .ledger()
        .accounts()
        .map(|(id, state)| (id.clone(), state.clone()))
        .collect()
}

fn same_state(left: &BTreeMap<AccountId, AccountState>, right: &BTreeMap<AccountId, AccountState>) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .all(|(id, state)| right.get(id).is_some_and(|other| state.same_holdings(other)))
}

on_both_stores!(applying_twice_changes_nothing);
async fn applying_twice_changes_nothing(store: Store) {
    let events = events(3, 300, 10);
    let first = store.apply_batch(&inputs(&events[..200]), "test").await.expect("first apply");
    assert_eq!((first.applied, first.duplicates), (200, 0));
    let after_first = store.balances().await.expect("balances");
    assert!(same_state(&after_first, &expected(&events[..200])));

    let again = store.apply_batch(&inputs(&events[..200]), "test").await.expect("second apply");
    assert_eq!((again.applied, again.duplicates), (0, 200));
    assert_eq!(store.balances().await.expect("balances"), after_first);
    assert_eq!(store.apply_log().await.expect("apply log").len(), 200);

    let overlapping = store.apply_batch(&inputs(&events[100..]), "test").await.expect("overlapping apply");
    assert_eq!((overlapping.applied, overlapping.duplicates), (100, 100));
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&events)));
    let log = store.apply_log().await.expect("apply log");
    assert_eq!(log.len(), 300);
    // Each account's apply indexes count 1, 2, 3, ... in account_seq order.
    let mut per_account: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for row in &log {
        per_account
            .entry(&row.account_id)
            .or_default()
            .push((row.account_apply_index, row.account_seq));
    }
    for (account, mut applies) in per_account {
        applies.sort();
        let indexes: Vec<i64> = applies.iter().map(|(index, _)| *index).collect();
        let seqs: Vec<i64> = applies.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(indexes, (1..=indexes.len() as i64).collect::<Vec<_>>(), "{account}");
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{account}");
    }
}

on_both_stores!(one_accounts_cash_reads_as_the_balances_table_holds_it);
async fn one_accounts_cash_reads_as_the_balances_table_holds_it(store: Store) {
    let events = events(5, 120, 4);
    store.apply_batch(&inputs(&events), "test").await.expect("apply");
    let balances = store.balances().await.expect("balances");
    assert!(!balances.is_empty());
    for (account, state) in &balances {
        assert_eq!(store.cash_of(account).await.expect("cash"), state.cash, "{account}");
    }
    let unseen = AccountId::new("acct-never-seen").expect("an account id");
    assert_eq!(
        store.cash_of(&unseen).await.expect("cash").minor(),
        0,
        "an account it has not seen has no cash"
    );
}

on_both_stores!(the_chapter_exercise_decides_what_a_fresh_batch_applies);
async fn the_chapter_exercise_decides_what_a_fresh_batch_applies(store: Store) {
    // A batch none of whose events were applied: the exercise as shipped and its solution
    // both apply every event once, and the balances are the oracle's.
    let events = events(6, 150, 5);
    let summary = store
        .apply_batch_as(&inputs(&events), "test", tradeflow_store::Dedup::Exercise)
        .await
        .expect("apply");
    assert_eq!((summary.applied, summary.duplicates), (150, 0));
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&events)));
    assert_eq!(store.apply_log().await.expect("apply log").len(), 150);
}

on_both_stores!(a_batch_is_bounded_and_a_batch_at_the_bound_is_taken);
async fn a_batch_is_bounded_and_a_batch_at_the_bound_is_taken(store: Store) {
    let max = tradeflow_store::BATCH_EVENTS_MAX;
    // A poll of exactly the bound is taken (the table is empty: it claims nothing).
    let outcome = store.poll_once(max, None, "test").await;
    assert!(outcome.is_ok(), "a poll of {max} rows is within the bound: {:?}", outcome.err());
    // One more is refused with the bound in the reason, before the database is touched.
    for refused in [
        store.poll_once(max + 1, None, "test").await.err(),
        store.apply_batch(&inputs(&events(7, 1, 1)).repeat(max + 1), "test").await.err(),
    ] {
        let reason = refused.map(|error| error.to_string()).unwrap_or_default();
        assert!(
            reason.contains(&format!("at most {max} events")),
            "want a refusal naming the bound, got {reason:?}"
        );
    }
    assert!(store.apply_log().await.expect("apply log").is_empty(), "nothing applied");
}

on_both_stores!(a_failure_in_the_middle_of_a_batch_leaves_nothing_applied);
async fn a_failure_in_the_middle_of_a_batch_leaves_nothing_applied(store: Store) {
    let events = events(5, 300, 6);
    store.apply_batch(&inputs(&events[..100]), "test").await.expect("first batch");
    let balances_before = store.balances().await.expect("balances");
    let log_before = store.apply_log().await.expect("apply log");

    // A real database failure, raised by the database itself while the batch's apply-log
    // insert reaches the third account: balances and positions have been updated by then.
    install_failing_trigger(&store).await;
    assert!(events[100..].iter().any(|event| event.account_id.as_str() == FAILING_ACCOUNT));
    assert!(events[100..].iter().any(|event| event.account_id.as_str() < "acct-00003"));

    let error = store
        .apply_batch(&inputs(&events[100..]), "test")
        .await
        .expect_err("the trigger fails the batch");
    assert!(error.to_string().contains("injected failure"), "{error}");
    assert_eq!(store.balances().await.expect("balances"), balances_before);
    assert_eq!(store.apply_log().await.expect("apply log"), log_before);

    drop_failing_trigger(&store).await;
    store
        .apply_batch(&inputs(&events[100..]), "test")
        .await
        .expect("the batch applies once the failure is gone");
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&events)));
}

/// The account whose apply-log rows [`install_failing_trigger`] refuses.
const FAILING_ACCOUNT: &str = "acct-00003";

/// Installs a trigger with which the database itself fails any transaction that inserts an
/// apply-log row of [`FAILING_ACCOUNT`] ("injected failure").
async fn install_failing_trigger(store: &Store) {
    let install = match store.kind() {
        StoreKind::Sqlite => {
            "CREATE TRIGGER fail_mid_batch BEFORE INSERT ON apply_log WHEN NEW.account_id = 'acct-00003' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        }
        StoreKind::Postgres => {
            "CREATE FUNCTION fail_mid_batch() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.account_id = 'acct-00003' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER fail_mid_batch BEFORE INSERT ON apply_log FOR EACH ROW EXECUTE FUNCTION fail_mid_batch()"
        }
    };
    sqlx::raw_sql(install).execute(store.pool()).await.expect("trigger installs");
}

async fn drop_failing_trigger(store: &Store) {
    sqlx::raw_sql("DROP TRIGGER fail_mid_batch ON apply_log")
        .execute(store.pool())
        .await
        .or(sqlx::raw_sql("DROP TRIGGER fail_mid_batch").execute(store.pool()).await)
        .expect("trigger drops");
}

on_both_stores!(a_group_commit_applies_the_batches_waiting_together_and_each_event_once);
async fn a_group_commit_applies_the_batches_waiting_together_and_each_event_once(store: Store) {
    let store = store.group_committing();
    let events = events(7, 1_200, 8);
    // Handed over together: the first batch's transaction is still running when the others
    // are handed over, so they wait for the writer and go in one transaction. The second
    // and third share 100 events (a zombie's batch and its new owner's, say).
    let batches = [&events[..600], &events[600..900], &events[800..1_100], &events[1_100..]].map(inputs);
    let (first, second, third, fourth) = tokio::join!(
        store.apply_batch(&batches[0], "first"),
        store.apply_batch(&batches[1], "second"),
        store.apply_batch(&batches[2], "third"),
        store.apply_batch(&batches[3], "fourth"),
    );
    let summaries = [first, second, third, fourth].map(|summary| summary.expect("each batch applies"));
    let applied: usize = summaries.iter().map(|summary| summary.applied).sum();
    let duplicates: usize = summaries.iter().map(|summary| summary.duplicates).sum();
    assert_eq!((applied, duplicates), (1_200, 100), "each event applied once: {summaries:?}");
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&events)));
    assert_eq!(store.apply_log().await.expect("apply log").len(), 1_200);
    let commits = store.group_commits().expect("a group-committing store counts its commits");
    eprintln!("{commits:?}");
    assert_eq!((commits.batches, commits.failed), (4, 0));
    assert!(
        commits.transactions < commits.batches,
        "the batches waiting were not committed together: {commits:?}"
    );
}

on_both_stores!(a_batch_that_fails_in_a_group_commit_fails_alone);
async fn a_batch_that_fails_in_a_group_commit_fails_alone(store: Store) {
    install_failing_trigger(&store).await;
    let store = store.group_committing();
    let (refused, others): (Vec<Event>, Vec<Event>) = events(9, 900, 6)
        .into_iter()
        .partition(|event| event.account_id.as_str() == FAILING_ACCOUNT);
    assert!(!refused.is_empty() && others.len() > 100);
    let half = others.len() / 2;
    let batches = [&others[..half], &refused[..], &others[half..]].map(inputs);
    let (before, failing, after) = tokio::join!(
        store.apply_batch(&batches[0], "before"),
        store.apply_batch(&batches[1], "failing"),
        store.apply_batch(&batches[2], "after"),
    );
    let error = failing.expect_err("the trigger fails its batch");
    assert!(error.to_string().contains("injected failure"), "{error}");
    assert_eq!(before.expect("the batch before applies").applied, half);
    assert_eq!(after.expect("the batch after applies").applied, others.len() - half);
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&others)));
    assert_eq!(store.apply_log().await.expect("apply log").len(), others.len());
    let commits = store.group_commits().expect("a group-committing store counts its commits");
    eprintln!("{commits:?}");
    // The failing batch went in a group (it was handed over while the first batch's
    // transaction ran), whose transaction failed; then each was applied alone.
    assert_eq!(commits.failed, 1, "the failing batch was never in a group: {commits:?}");
    assert_eq!(commits.batches, 2, "only the two batches that applied are counted: {commits:?}");
}

on_both_stores!(an_undecodable_row_is_refused_with_its_reason_and_the_rest_applied);
async fn an_undecodable_row_is_refused_with_its_reason_and_the_rest_applied(store: Store) {
    let events = events(9, 10, 3);
    let rows: Vec<SourceRow<'_>> = events
        .iter()
        .zip(0..)
        .map(|(event, event_index)| SourceRow {
            event,
            event_index,
            intended_at_ns: 0,
        })
        .collect();
    store.insert_source_events(&rows[..5]).await.expect("insert");
    store
        .insert_raw_source_row("poison-1", "acct-00001", "{\"schema_version\": 1, \"type\": \"deposit\"", 0)
        .await
        .expect("insert poison");
    store.insert_source_events(&rows[5..]).await.expect("insert");

    let outcome = store.poll_once(100, None, "test").await.expect("poll");
    assert_eq!((outcome.claimed, outcome.applied), (11, 10));
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].event_id, "poison-1");
    assert!(outcome.failed[0].reason.starts_with("not JSON"), "{}", outcome.failed[0].reason);
    let refused = store.failed_source_rows().await.expect("refused rows");
    assert_eq!(refused.len(), 1);
    assert_eq!(store.backlog().await.expect("backlog").rows, 0);
    assert!(same_state(&store.balances().await.expect("balances"), &expected(&events)));
}

#[tokio::test]
async fn a_missing_server_is_a_one_line_error_that_hides_the_password() {
    let config = StoreConfig {
        kind: StoreKind::Postgres,
        url: "postgres://tradeflow:secret@127.0.0.1:1/tradeflow".into(),
    };
    let error = Store::connect(&config).await.expect_err("nothing listens on port 1");
    let message = error.to_string();
    assert!(matches!(error, StoreError::Connect { .. }), "{message}");
    assert!(
        message.contains("127.0.0.1:1") && message.contains("connection refused: nothing listens at that host and port"),
        "{message}"
    );
    assert!(!message.contains("secret") && !message.contains('\n'), "{message}");
}

#[tokio::test]
async fn a_schema_from_a_newer_build_is_refused() {
    let (store, directory) = tradeflow_tests::sqlite_store().await;
    sqlx::raw_sql("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from a newer build', TRUE, X'00', 0)")
        .execute(store.pool())
        .await
        .expect("marker inserted");
    store.close().await;
    let error = Store::connect(&StoreConfig::sqlite_file(&directory.path().join("test.db")))
        .await
        .expect_err("unknown migration");
    assert!(matches!(error, StoreError::UnknownSchema { found: 99, known: 4, .. }), "{error}");
    assert!(error.to_string().contains("schema migration 99"), "{error}");
}

on_both_stores!(an_outbox_row_committed_after_a_higher_id_is_skipped_by_the_naive_read_and_taken_by_the_claiming_one);
async fn an_outbox_row_committed_after_a_higher_id_is_skipped_by_the_naive_read_and_taken_by_the_claiming_one(store: Store) {
    let events = events(11, 2, 2);
    // Writer one inserts and keeps its transaction open; writer two inserts after it and
    // commits at once.
    let slow = {
        let (store, event) = (store.clone(), events[0].clone());
        tokio::spawn(async move {
            store
                .insert_source_events_holding(
                    &[SourceRow {
                        event: &event,
                        event_index: 0,
                        intended_at_ns: 0,
                    }],
                    std::time::Duration::from_millis(800),
                )
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    store
        .insert_source_events(&[SourceRow {
            event: &events[1],
            event_index: 1,
            intended_at_ns: 0,
        }])
        .await
        .expect("writer two");
    let first_read = store.outbox_rows(Some(0), 100).await.expect("naive read");
    slow.await.expect("join").expect("writer one");
    let ids = |rows: &[tradeflow_store::OutboxRow]| rows.iter().map(|row| row.id).collect::<Vec<_>>();
    let all = store.outbox_rows(Some(0), 100).await.expect("every row");
    assert_eq!(all.len(), 2);
    let (low, high) = (all[0].id, all[1].id);
    match store.kind() {
        // PostgreSQL drew writer one's id first and committed it last: the naive relay saw
        // only the higher id, and reading above it never returns the lower one.
        StoreKind::Postgres => {
            assert_eq!(ids(&first_read), [high], "writer two's row is visible first");
            assert!(store.outbox_rows(Some(high), 100).await.expect("naive read").is_empty());
        }
        // SQLite's one writer at a time: writer two waited for writer one, so ids commit in
        // their order and nothing can be skipped.
        StoreKind::Sqlite => assert_eq!(ids(&first_read), [low, high]),
    }
    // The claiming read takes what is not marked, whatever the order of commits.
    store.mark_relayed(&[high]).await.expect("mark");
    assert_eq!(ids(&store.outbox_rows(None, 100).await.expect("claiming read")), [low]);
    store.mark_relayed(&[low]).await.expect("mark");
    assert!(store.outbox_rows(None, 100).await.expect("claiming read").is_empty());
}

on_both_stores!(the_checker_reads_the_journal_back_and_counts_a_naive_double_apply);
async fn the_checker_reads_the_journal_back_and_counts_a_naive_double_apply(store: Store) {
    use tradeflow_store::Dedup;
    let events = events(5, 300, 10);
    let oracle = Oracle::from_events(&events[..200]);
    store.apply_batch(&inputs(&events[..200]), "test").await.expect("apply");
    let (report, applies) = tradeflow_check::check_store(&store, &scheduled(&events[..200]), |_| true, &oracle)
        .await
        .expect("check");
    assert_eq!((applies, report.verdict), (200, tradeflow_check::Verdict::Pass), "{report:?}");
    // Fifty of them again, past the apply log: the journal holds 250 applies.
    store
        .apply_batch_as(&inputs(&events[..50]), "naive", Dedup::None)
        .await
        .expect("naive apply");
    let (report, applies) = tradeflow_check::check_store(&store, &scheduled(&events[..200]), |_| true, &oracle)
        .await
        .expect("check");
    assert_eq!((applies, report.duplicated, report.lost), (250, 50, 0), "{report:?}");
    assert!(report.mismatched_accounts > 0, "{report:?}");
    // Checked against all 300, of which the last 100 had to be applied and never were.
    let oracle = Oracle::from_events(&events);
    let (report, _) = tradeflow_check::check_store(&store, &scheduled(&events), |_| true, &oracle)
        .await
        .expect("check");
    assert_eq!(report.lost, 100, "{report:?}");
    let (report, _) = tradeflow_check::check_store(&store, &scheduled(&events), |index| index < 200, &oracle)
        .await
        .expect("check");
    assert_eq!(report.lost, 0, "only what had to be applied can be lost: {report:?}");
}

on_both_stores!(the_checker_in_the_database_counts_what_the_checker_in_memory_counts);
/// The checker that joins the journal to its copy of the workload in the database (what
/// every run uses) against the one that holds the history in memory, on seeded histories
/// with every kind of damage: applies lost, repeated, swapped within an account, numbered
/// twice, and an event the workload never generated.
async fn the_checker_in_the_database_counts_what_the_checker_in_memory_counts(store: Store) {
    use std::collections::{HashMap, HashSet};
    use tradeflow_check::{Applied, CheckInput};
    let events = events(17, 400, 12);
    let oracle = Oracle::from_events(&events);
    for seed in 1..=6_u64 {
        let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut roll = move |below: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % below
        };
        // The history: events in order, some dropped, some twice, some applied before the
        // account's previous event.
        let mut order: Vec<usize> = Vec::new();
        for index in 0..events.len() {
            let previous = order
                .iter()
                .rposition(|earlier| events[*earlier].account_id == events[index].account_id);
            match (roll(30), previous) {
                (0, _) => {}
                (1, _) => order.extend([index, index]),
                (2, Some(position)) => order.insert(position, index),
                _ => order.push(index),
            }
        }
        let mut next: HashMap<AccountId, u64> = HashMap::new();
        let mut applied: Vec<Applied> = order
            .iter()
            .map(|index| {
                let event = &events[*index];
                let number = next.entry(event.account_id.clone()).or_insert(0);
                *number += 1;
                // Now and then a number given twice.
                let account_apply_index = if roll(60) == 0 { (*number - 1).max(1) } else { *number };
                Applied {
                    event_id: event.event_id,
                    account_id: event.account_id.clone(),
                    account_apply_index,
                }
            })
            .collect();
        if seed % 2 == 0 {
            applied.push(Applied {
                event_id: tradeflow_domain::EventId::from_uuid(uuid::Uuid::from_u128(u128::from(seed))),
                account_id: events[0].account_id.clone(),
                account_apply_index: next.get(&events[0].account_id).copied().unwrap_or(0) + 1,
            });
        }
        let must: Vec<bool> = (0..events.len()).map(|_| roll(10) != 0).collect();
        store.reset().await.expect("reset");
        for chunk in applied.chunks(200) {
            let values: Vec<String> = chunk
                .iter()
                .map(|apply| {
                    format!(
                        "('{}', '{}', {}, 'test')",
                        apply.event_id, apply.account_id, apply.account_apply_index
                    )
                })
                .collect();
            sqlx::query(&format!(
                "INSERT INTO apply_journal (event_id, account_id, account_apply_index, applier) VALUES {}",
                values.join(",")
            ))
            .execute(store.pool())
            .await
            .expect("journal rows");
        }
        let final_state = store.balances().await.expect("balances");
        let must_apply: HashSet<_> = events
            .iter()
            .zip(&must)
            .filter(|(_, must)| **must)
            .map(|(event, _)| event.event_id)
            .collect();
        let held = tradeflow_check::check(&CheckInput {
            events: &events,
            must_apply: &must_apply,
            applied: &applied,
            final_state: &final_state,
            oracle: &oracle,
        });
        let (joined, applies) = tradeflow_check::check_store(&store, &scheduled(&events), |index| must[index], &oracle)
            .await
            .expect("check");
        assert_eq!(applies, applied.len() as u64, "history seed {seed}");
        assert_eq!(
            joined, held,
            "history seed {seed}: the database's checker and the in-memory one disagree"
        );
        assert!(
            held.lost > 0 && held.duplicated > 0 && held.reordered > 0,
            "history seed {seed} has every damage: {held:?}"
        );
    }
}

/// SQLite has one connection, which a process's consumers take in turn: a batch that had
/// to wait for it says how long, so a run can tell the queue for the connection from the
/// transaction's own work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_sqlites_one_connection_says_how_long_it_waited() {
    let (store, _directory) = tradeflow_tests::sqlite_store().await;
    let events = events(5, 100, 10);
    let held = store.pool().acquire().await.expect("SQLite's one connection");
    let hold = std::time::Duration::from_millis(300);
    let batch = inputs(&events);
    let (summary, ()) = tokio::join!(store.apply_batch(&batch, "test"), async move {
        tokio::time::sleep(hold).await;
        drop(held);
    });
    let summary = summary.expect("apply once the connection is free");
    assert_eq!(summary.applied, 100);
    assert!(
        summary.queued >= hold,
        "queued {:?} while the connection was held {hold:?}",
        summary.queued
    );
}
