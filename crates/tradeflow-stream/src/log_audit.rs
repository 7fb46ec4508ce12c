//! Reading a run's topic back once the run is over: how many times the log holds each
//! event, and whether each account's events sit in its partition in the order they were
//! made. What the producer wrote, apart from what any consumer did with it: a consumer
//! that re-reads after a rebalance applies a message twice without the log holding it
//! twice, and only the log tells the two apart.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tradeflow_domain::{AccountId, EventId};

use crate::{StreamError, base_config};

/// How long the read-back waits for a broker's answer, and for the next message while
/// some partition is short of the end it was told of.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogAudit {
    /// Records read, from each partition's start to the end it had when the read began.
    pub records: u64,
    /// Records that repeat an event an earlier record of the log holds: what a consumer
    /// that applies every record applies twice, however well it commits.
    pub copies: u64,
    /// First copies of an account's events that come after a later event of the same
    /// account in its partition: what any consumer applies out of order.
    pub out_of_order: u64,
    /// Records that are not an event this build reads.
    pub unreadable: u64,
}

impl LogAudit {
    /// Counts a partition's records, in log order, into the audit.
    fn read(&mut self, record: Option<(EventId, AccountId, u64)>, seen: &mut HashSet<EventId>, newest: &mut HashMap<AccountId, u64>) {
        self.records += 1;
        let Some((event_id, account, account_seq)) = record else {
            self.unreadable += 1;
            return;
        };
        if !seen.insert(event_id) {
            self.copies += 1;
            return;
        }
        let latest = newest.entry(account).or_insert(0);
        if account_seq < *latest {
            self.out_of_order += 1;
        } else {
            *latest = account_seq;
        }
    }
}

/// Reads every partition of `topic` on `bootstrap` from its first record to the end it has
/// now, and counts what it holds (see [`LogAudit`]). An error when a broker does not answer
/// or a partition stops short of its end for [`READ_TIMEOUT`].
pub async fn audit(bootstrap: &str, topic: &str, partitions: i32) -> Result<LogAudit, StreamError> {
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", format!("tradeflow-log-audit-{}", std::process::id()))
        // It reads by assignment and commits nothing: it leaves no trace on the cluster.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|error| StreamError::kafka(format!("creating the consumer that reads {topic} back"), error))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_back(&consumer, &topic, partitions))
        .await
        .map_err(|error| StreamError::kafka("reading the log back", error))?
}

fn read_back(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<LogAudit, StreamError> {
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (start, end) = consumer
            .fetch_watermarks(topic, partition, READ_TIMEOUT)
            .map_err(|error| StreamError::kafka(format!("reading the offsets of {topic}[{partition}]"), error))?;
        if end > start {
            ends.insert(partition, end);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|error| StreamError::kafka(format!("assigning {topic}[{partition}]"), error))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|error| StreamError::kafka(format!("assigning the partitions of {topic}"), error))?;
    let (mut audit, mut seen, mut newest) = (LogAudit::default(), HashSet::new(), HashMap::new());
    let mut last_read = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_read = Instant::now();
                let Some(&end) = ends.get(&message.partition()) else {
                    continue;
                };
                if message.offset() >= end {
                    continue;
                }
                let record = message
                    .payload()
                    .and_then(|bytes| tradeflow_domain::codec::decode(bytes).ok())
                    .map(|event| (event.event_id, event.account_id, event.account_seq));
                audit.read(record, &mut seen, &mut newest);
                if message.offset() + 1 >= end {
                    ends.remove(&message.partition());
                }
            }
            Some(Err(error)) => tracing::warn!(messaging.destination.name = topic, %error, "reading the log back"),
            None => {}
        }
        if last_read.elapsed() > READ_TIMEOUT {
            let short: Vec<String> = ends.keys().map(|partition| format!("{topic}[{partition}]")).collect();
            return Err(StreamError::kafka(
                format!("reading {topic} back"),
                format!("nothing came for {READ_TIMEOUT:?} with {} short of their end", short.join(", ")),
            ));
        }
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_that_reads_its_log_back_counts_every_event_once() {
        let seed = 5;
        eprintln!("seed: {seed}");
        // The store's file, its write-ahead log and shared memory: all removed at the end.
        let path = std::env::temp_dir().join(format!("tradeflow-log-audit-{}.db", std::process::id()));
        let store = tradeflow_store::Store::connect(&tradeflow_store::StoreConfig::sqlite_file(&path))
            .await
            .expect("SQLite store opens");
        let cluster = tradeflow_cluster::Cluster::mock(3).expect("mock cluster starts");
        let mut options = crate::StreamOptions::new(tradeflow_domain::WorkloadConfig {
            seed,
            events: 1_500,
            accounts: 40,
            rate_per_s: 3_000.0,
            profile: tradeflow_domain::RateProfile::Steady,
            skew: tradeflow_domain::workload::ACCOUNT_SKEW,
            mix: tradeflow_domain::EventMix::default(),
        });
        options.partitions = 4;
        options.consumers = 2;
        options.scenario.audit_log = true;
        let (progress, _receiver) = tokio::sync::watch::channel(tradeflow_check::RunProgress::default());
        let record = crate::run(&store, &cluster, &options, &progress).await.expect("the run completes");
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let count = |key: &str| record.config.get(key).and_then(serde_json::Value::as_u64);
        assert_eq!(count("log_records"), Some(1_500), "{}", record.table());
        assert_eq!(count("log_copies"), Some(0), "{}", record.table());
        assert_eq!(count("log_out_of_order"), Some(0), "{}", record.table());
        assert_eq!(count("log_unreadable"), Some(0), "{}", record.table());
        assert!(record.table().contains("the log, read back"), "{}", record.table());
    }

    fn record(id: u128, account: &str, seq: u64) -> Option<(EventId, AccountId, u64)> {
        Some((
            EventId::parse(&format!("00000000-0000-7000-8000-{id:012}")).expect("an event id"),
            AccountId::new(account).expect("an account id"),
            seq,
        ))
    }

    #[test]
    fn a_copy_counts_once_and_only_first_copies_count_for_order() {
        let (mut audit, mut seen, mut newest) = (LogAudit::default(), HashSet::new(), HashMap::new());
        for entry in [
            record(1, "acct-1", 1),
            record(2, "acct-1", 2),
            // The resent request: a copy, and not out of order on its own account.
            record(1, "acct-1", 1),
            record(3, "acct-2", 2),
            // Made before the one above, written after it.
            record(4, "acct-2", 1),
            None,
        ] {
            audit.read(entry, &mut seen, &mut newest);
        }
        assert_eq!(
            audit,
            LogAudit {
                records: 6,
                copies: 1,
                out_of_order: 1,
                unreadable: 1,
            }
        );
    }
}
