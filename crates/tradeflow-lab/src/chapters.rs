//! The workshop's chapters: for each, the claim, the file the learner edits, the run that
//! checks it (built by its lesson's file) and the judge of that run. As shipped every
//! exercise fails with its chapter's declared violation; its solution passes.

use crate::RowVerdict;
use crate::expect::Violation;
use crate::lessons::{
    auto_commit_crash, broker_failure, cluster_migration, consumer_groups, consumer_memory, consumer_scaling, database_outage,
    idempotent_consumer, keys_keep_order, lag_status, load_test, order_placement, outbox_relay, poison_message, producer_retries,
    repartition_cutover, retention, schema_evolution, stuck_consumer,
};
use crate::variant::{Setup, Variant};
use tradeflow_check::RunRecord;
use tradeflow_cluster::Backend;
use tradeflow_store::StoreKind;
use tradeflow_stream::lag::LagRule;

/// One chapter.
pub struct Chapter {
    /// Its number, two digits (`01`).
    pub number: &'static str,
    /// Its folder under `chapters/`.
    pub folder: &'static str,
    /// Its title.
    pub title: &'static str,
    /// What the field learned, and where.
    pub claim: &'static str,
    /// The violation the exercise as shipped fails with.
    pub violation: &'static str,
    /// The backend its runs need: the mock cluster, or Apache Kafka where the lesson needs
    /// what only a real broker does (sequence checks, replication).
    pub backend: Backend,
    /// The function the learner writes, in `chapters/<folder>/exercise.rs`.
    pub function: &'static str,
    /// The chapter's runs on a setup, in order (or why it cannot run there); most chapters
    /// have one.
    pub run: fn(&Setup) -> Result<Vec<Variant>, String>,
    /// The judge of that run.
    pub judge: Judge,
    /// The store it needs (SQLite, the embedded default, unless its lesson needs
    /// PostgreSQL's concurrent writers).
    pub store: StoreKind,
}

/// How a chapter's run is judged.
pub enum Judge {
    /// By the checker's counts, these violations first to last ([`judge_counts`]), run by
    /// run: the first run that does not pass decides.
    Counts(&'static [Violation]),
    /// By the chapter's own judge, over every run.
    Own(fn(&[(Variant, RunRecord)]) -> Judgement),
}

impl Chapter {
    /// Judges the chapter's runs (each variant of its `run`, with its record).
    pub fn judge(&self, runs: &[(Variant, RunRecord)]) -> Judgement {
        if runs.is_empty() {
            return Judgement::Unknown("the chapter ran nothing".into());
        }
        match self.judge {
            Judge::Counts(violations) => {
                let mut evidence = Vec::new();
                for (variant, record) in runs {
                    match judge_counts(variant, record, violations) {
                        Judgement::Pass(seen) => evidence.push(seen),
                        other => return other,
                    }
                }
                Judgement::Pass(evidence.join("; "))
            }
            Judge::Own(judge) => judge(runs),
        }
    }
}

/// A chapter with one run: `chapter`'s variant alone.
fn one(variant: Result<Variant, String>) -> Result<Vec<Variant>, String> {
    variant.map(|variant| vec![variant])
}

/// What a chapter's run shows about the learner's code.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// It does what the chapter asks; the evidence in words.
    Pass(String),
    /// It does not: the violation (as the chapter declares it) and the numbers.
    Fail {
        /// The violation's name.
        violation: &'static str,
        /// The numbers behind it.
        detail: String,
    },
    /// The run could not show either (its fault did not fire, it caught nothing).
    Unknown(String),
}

impl Judgement {
    /// The process exit code of a check: 0 pass, 1 fail, 2 unknown.
    pub fn exit_code(&self) -> i32 {
        match self {
            Judgement::Pass(_) => 0,
            Judgement::Fail { .. } => 1,
            Judgement::Unknown(_) => 2,
        }
    }
}

/// Every chapter, in the workshop's order.
pub const CHAPTERS: &[Chapter] = &[
    Chapter {
        number: "01",
        folder: "01-offset-lag",
        title: "Offset lag is the metric",
        claim: "Offset lag is the metric that matters (Wealthsimple, \"Kafka in production\", 2021), and how it moves says more than its size: a group that stops reading shows as a committed offset that no longer moves while the log grows, long before a threshold trips (the rules follow LinkedIn's Burrow).",
        violation: "missed stall",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "lag_status",
        run: |setup| one(lag_status::chapter(setup, LagRule::Exercise)),
        judge: Judge::Own(|runs| lag_status::judge(&runs[0].0, &runs[0].1)),
    },
    Chapter {
        number: "02",
        folder: "02-keys-keep-order",
        title: "Keys keep order",
        claim: "Kafka keeps order within a partition only: key each message by the entity whose order matters, the account, and let the default partitioner hash it (Parcel Perform, \"Initial experience with Kafka\"; Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023).",
        violation: "reordered",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "message_key",
        run: |setup| one(keys_keep_order::chapter(setup)),
        judge: Judge::Counts(&[Violation::Reordered, Violation::Lost, Violation::Duplicated]),
    },
    Chapter {
        number: "03",
        folder: "03-commit-after-database",
        title: "Commit offsets after the database commit",
        claim: "Commit offsets explicitly, not on the client's timer (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023), and a restarted consumer resumes after the last committed message (Parcel Perform, \"Initial experience with Kafka\"): so commit only once the database transaction has committed, or the batch a process dies holding is lost.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "batch_steps",
        run: |setup| one(auto_commit_crash::chapter(setup)),
        judge: Judge::Counts(&crate::chapters::EVERY_COUNT),
    },
    Chapter {
        number: "04",
        folder: "04-idempotent-consumer",
        title: "Be idempotent, do not chase exactly-once",
        claim: "Kafka delivers at least once: a rebalance, a crash or a paused process hands a message over again. Make applying it twice harmless instead of chasing exactly-once (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023).",
        violation: "duplicated",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "events_to_apply",
        run: |setup| one(idempotent_consumer::chapter(setup)),
        judge: Judge::Counts(&[Violation::Duplicated, Violation::Lost, Violation::Reordered]),
    },
    Chapter {
        number: "05",
        folder: "05-reliable-producer",
        title: "The reliable producer",
        claim: "Set the producer for reliability, not for the benchmark: acks=all, and idempotence rather than exactly-once (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023). A producer retries whatever it was not told succeeded, and a connection that breaks with requests in flight leaves it unable to tell; without idempotence the broker writes the resent copies too.",
        violation: "duplicated",
        backend: Backend::Kafka,
        store: StoreKind::Sqlite,
        function: "producer_settings",
        run: |setup| one(producer_retries::chapter(setup)),
        judge: Judge::Counts(&[Violation::Duplicated, Violation::Reordered, Violation::Lost]),
    },
    Chapter {
        number: "06",
        folder: "06-dead-letter-topics",
        title: "Dead-letter topics and replay",
        claim: "A message that cannot be processed must not hold up its partition: retry it a bounded number of times, then set it aside on a dead-letter topic and go on (Wealthsimple, \"Kafka in production\", 2021; Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023: retries with limits).",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "on_unprocessable",
        run: |setup| one(poison_message::chapter(setup)),
        judge: Judge::Counts(&crate::chapters::EVERY_COUNT),
    },
    Chapter {
        number: "07",
        folder: "07-overpartition",
        title: "Overpartition from the start: consumers ≤ partitions",
        claim: "Partitions are what consumers share out: a group runs at most one consumer per partition, so the partition count caps how far the service can grow, and it can only be raised later at the price of order (chapter 08). Overpartition from the very start, but not past a couple of hundred (Wealthsimple, \"Kafka in production\", 2021; Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023: consumers ≤ partitions).",
        violation: "idle consumers",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "partitions_for",
        run: consumer_scaling::chapter,
        judge: Judge::Own(consumer_scaling::judge),
    },
    Chapter {
        number: "08",
        folder: "08-cutover-runbook",
        title: "Repartitioning breaks order: the cutover runbook",
        claim: "Partitions only go up, and adding them moves keys to other partitions: overpartition from the start (Wealthsimple, \"Kafka in production\", 2021; Parcel Perform, \"Initial experience with Kafka\"). When you must move to more, drain the old topic before the new one starts, or an account's newer events overtake its older ones.",
        violation: "reordered",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "ready_to_switch",
        run: |setup| one(repartition_cutover::chapter(setup)),
        judge: Judge::Counts(&[Violation::Reordered, Violation::Lost, Violation::Duplicated]),
    },
    Chapter {
        number: "09",
        folder: "09-replication",
        title: "Three brokers and replication",
        claim: "Run three brokers with a replication factor of at least 2 (Parcel Perform, \"Initial experience with Kafka\"), and have the producer wait for the replicas: acks=all (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023). Replicas protect only what they received before the producer was told the write was safe.",
        violation: "lost",
        backend: Backend::Kafka,
        store: StoreKind::Sqlite,
        function: "acks",
        run: |setup| one(broker_failure::chapter(setup)),
        judge: Judge::Own(broker_failure::chapter_judge),
    },
    Chapter {
        number: "10",
        folder: "10-load-test",
        title: "Load test at 10x and tune",
        claim: "Tuning Kafka is tricky, so have a load-testing setup and use it before production does (Wealthsimple, \"Kafka in production\", 2021); test at ten times today's load (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023). A pipeline that keeps up today can fall seconds behind at 10x, and the settings that fix it are found by measuring, not by guessing.",
        violation: "fell behind",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "tune",
        run: |setup| one(load_test::chapter(setup)),
        judge: Judge::Own(load_test::judge),
    },
    Chapter {
        number: "11",
        folder: "11-consumer-groups",
        title: "A consumer group per service",
        claim: "Several services can read the same topic, each in its own consumer group with its own offsets and its own lag: a slow one falls behind alone and holds no one back (Parcel Perform, \"Initial experience with Kafka\", loose-coupling services). Two services in one group are one consumer group: they split the partitions, and each reads only its share of the messages.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "notification_group",
        run: |setup| one(consumer_groups::chapter(setup)),
        judge: Judge::Counts(&crate::chapters::EVERY_COUNT),
    },
    Chapter {
        number: "12",
        folder: "12-cluster-migration",
        title: "Moving to a new cluster: producer first",
        claim: "To move a service that cannot stop to a new cluster, create the topics there, move the producer first, then the consumers (Wealthsimple, \"New Kafka Tier, No Kafka Tears\", 2022), and build services that can connect to both clusters at once. Consumers that move first leave behind whatever the producer still sends to the old cluster.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "may_move_consumers",
        run: |setup| one(cluster_migration::chapter(setup)),
        judge: Judge::Counts(&[Violation::Lost, Violation::Reordered, Violation::Duplicated]),
    },
    Chapter {
        number: "13",
        folder: "13-retention",
        title: "Retention buys time, no more",
        claim: "The log's retention lets a consumer that stopped pick up where it left off, but only for as long as the broker keeps the messages: if consuming falls far enough behind producing, they are deleted unread (Parcel Perform, \"Initial experience with Kafka\"). A committed offset is a position, not a promise that the messages are still there.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "deploy_window_ms",
        run: |setup| one(retention::chapter(setup)),
        judge: Judge::Own(retention::chapter_judge),
    },
    Chapter {
        number: "14",
        folder: "14-order-placement",
        title: "Lag is what customers see: read your own writes",
        claim: "The first team moved off the poller because of customers: at market open the balances fell behind the trades and \"it would prevent customers from placing orders due to bad balances\" (Wealthsimple, \"Kafka in production\", 2021). Any asynchronous pipeline has a lag; a synchronous answer read from its output inherits it, unless it knows what it must wait for.",
        violation: "wrong answers",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "decide_order",
        run: |setup| one(order_placement::chapter(setup)),
        judge: Judge::Own(order_placement::chapter_judge),
    },
    Chapter {
        number: "15",
        folder: "15-outbox-relay",
        title: "The outbox relay: claim rows, do not remember an id",
        claim: "A system of record that feeds Kafka writes each event into an outbox table in the same transaction as its data, and a relay publishes the table (Wealthsimple, \"Kafka in production\", 2021, replaced a poller over such a table). Writers draw ids when they insert and commit in another order: a relay that remembers the last id it published skips for ever the rows that commit late.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Postgres,
        function: "next_read",
        run: |setup| one(outbox_relay::chapter(setup)),
        judge: Judge::Counts(&crate::chapters::EVERY_COUNT),
    },
    Chapter {
        number: "16",
        folder: "16-database-outage",
        title: "When the database goes away: back off, pause, stay in the group",
        claim: "A production consumer needs sensible timeouts, retries with a limit and exponential backoff, and a circuit breaker against cascading failure, and must be scaled to its dependencies, the database first (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023). A consumer that retries its database at once, for ever, stops polling Kafka: the group takes it out for exceeding max.poll.interval.ms, and the database that comes back meets every retry at once.",
        violation: "evicted",
        backend: Backend::Mock,
        store: StoreKind::Postgres,
        function: "after_database_failure",
        run: |setup| one(database_outage::chapter(setup)),
        judge: Judge::Own(database_outage::chapter_judge),
    },
    Chapter {
        number: "17",
        folder: "17-schema-evolution",
        title: "Schema changes: refuse what you cannot read, whole",
        claim: "Events outlive the code that reads them, so changes to their schema must stay backward compatible (Scalescape, \"Building High Scale Backend Systems With Kafka\", 2023): additions go into a new version that readers learn first. A reader that meets a version it does not know must not guess: reading only the fields it knows passes over what the new version added, and a new kind of event can move money.",
        violation: "lost",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "on_newer_version",
        run: |setup| one(schema_evolution::chapter(setup)),
        judge: Judge::Counts(&[Violation::Lost, Violation::Reordered, Violation::Duplicated]),
    },
    Chapter {
        number: "18",
        folder: "18-consumer-memory",
        title: "A consumer's memory is what it fetches ahead: bound it",
        claim: "A Kafka consumer or producer seemed to need about 1.5 GB of extra memory (Wealthsimple, \"Kafka in production\", 2021). Much of a consumer's memory is what its client fetches ahead of the application: librdkafka queues up to 64 MiB, and a fetch response of up to 50 MB lands whole. A service that starts on a backlog takes all of it it can.",
        violation: "memory",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "prefetch_limits",
        run: |setup| one(consumer_memory::chapter(setup)),
        judge: Judge::Own(consumer_memory::chapter_judge),
    },
    Chapter {
        number: "19",
        folder: "19-stuck-consumer",
        title: "A stuck consumer: log what you hold, restart only that one",
        claim: "A consumer owns particular partitions, so its logs must say which partition and offset each message it handles came from: when one consumer gets stuck, that is what lets you find it and restart just that one, without touching the rest of its group (Wealthsimple, \"Kafka in production\", 2021).",
        violation: "log",
        backend: Backend::Mock,
        store: StoreKind::Sqlite,
        function: "held_ranges",
        run: |setup| one(stuck_consumer::chapter(setup)),
        judge: Judge::Own(stuck_consumer::chapter_judge),
    },
];

/// The chapter numbered `number` (`3`, `03` or its folder name).
pub fn find(number: &str) -> Option<&'static Chapter> {
    let wanted = number.trim();
    CHAPTERS.iter().find(|chapter| {
        chapter.folder == wanted
            || chapter.number == wanted
            || wanted.parse::<u32>().ok() == chapter.number.parse::<u32>().ok() && wanted.parse::<u32>().is_ok()
    })
}

/// Every count of the checker a chapter's run must keep at zero, in the order a failure
/// names them: lost, duplicated, reordered.
pub const EVERY_COUNT: [Violation; 3] = [Violation::Lost, Violation::Duplicated, Violation::Reordered];

/// Judges a run by the checker's counts: unknown when its faults did not all fire or put
/// nothing at stake, a failure naming the first of `violations` above zero, else a pass.
pub fn judge_counts(variant: &Variant, record: &RunRecord, violations: &[Violation]) -> Judgement {
    let verdict = variant.verdict(record);
    if verdict == RowVerdict::Unknown {
        return Judgement::Unknown("a planned fault did not fire, or caught nothing the chapter is about; run the check again".into());
    }
    let check = &record.check;
    if let Some(violation) = violations.iter().find(|violation| violation.count(check) > 0) {
        let counted = match violation {
            Violation::Reordered => format!("reordered {}, bad balances {}", check.reordered, check.bad_balances),
            _ => format!("{} {}", violation.key(), violation.count(check)),
        };
        return Judgement::Fail {
            violation: violation.key(),
            detail: format!(
                "{counted} (want 0); lost {}, duplicated {}, reordered {}, bad balances {}, mismatched accounts {}",
                check.lost, check.duplicated, check.reordered, check.bad_balances, check.mismatched_accounts
            ),
        };
    }
    if verdict == RowVerdict::NotAsExpected {
        return Judgement::Fail {
            violation: "mismatched",
            detail: format!(
                "the final balances differ from the oracle's in {} account(s), or the run did not show what it must ({})",
                check.mismatched_accounts,
                variant.expected.describe()
            ),
        };
    }
    Judgement::Pass(format!(
        "{} of {} events applied, nothing lost, duplicated or reordered, every balance as the oracle's",
        record.applied, record.events
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chapter_is_found_by_number_or_folder() {
        assert_eq!(find("3").map(|chapter| chapter.folder), Some("03-commit-after-database"));
        assert_eq!(find("03").map(|chapter| chapter.folder), Some("03-commit-after-database"));
        assert_eq!(find("01-offset-lag").map(|chapter| chapter.number), Some("01"));
        assert!(find("42").is_none());
        assert!(find("lag").is_none());
    }

    #[test]
    fn every_chapter_has_its_folder_exercise_and_solution() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../chapters");
        for chapter in CHAPTERS {
            let folder = root.join(chapter.folder);
            for file in ["README.md", "exercise.rs", "hint.md"] {
                assert!(folder.join(file).is_file(), "chapter {} has no {file}", chapter.number);
            }
            let exercise = std::fs::read_to_string(folder.join("exercise.rs")).unwrap_or_default();
            assert!(
                exercise.contains(&format!("pub fn {}", chapter.function)),
                "chapter {}'s exercise defines {}",
                chapter.number,
                chapter.function
            );
            assert!(
                root.join("solutions").join(format!("{}.rs", chapter.folder)).is_file(),
                "chapter {} has a solution",
                chapter.number
            );
        }
    }
}
