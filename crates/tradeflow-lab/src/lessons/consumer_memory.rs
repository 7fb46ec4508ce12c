//! Lesson: a consumer's memory is what it fetches ahead, so bound it.
//!
//! From the field: Wealthsimple, "Kafka in production" (March 2021 edition): each Kafka
//! consumer or producer needed some 1.5 GB more memory, and the consumer kept running out
//! of it until its container was given more. librdkafka fetches ahead of the application into a queue
//! bounded by `queued.max.messages.kbytes`: 64 MiB by default, which the high-level consumer
//! applies to its one queue whatever the number of partitions (librdkafka 2.12's
//! CONFIGURATION.md; the legacy consumer, and separate partition queues, apply it per
//! partition). The balance service bounds it at 4 MiB, and each fetch at 2 MiB
//! (`fetch.max.bytes`, 50 MB by default: a fetch response lands in the queue whole).
//!
//! The run publishes a backlog before the balance service starts (one `tradeflow
//! balance-service` process, its database SQLite or PostgreSQL), then lets it drain the
//! backlog. The process's peak resident set (`VmHWM`, read from `/proc` as it is stopped)
//! and its drain rate are recorded.
//!
//! Variants, on 8 partitions (100,000 events, 26 MB) and on 64 (400,000 events, 104 MB,
//! more than librdkafka's default queue):
//! - **librdkafka's defaults**: must pass, with the peak over 64 MB (the queue takes the
//!   whole 26 MB backlog on 8 partitions, 64 MiB of the 104 MB on 64);
//! - **the service's bound**: must pass, under 64 MB, on both.
//!
//! A run whose process's peak was not read is unknown. Each row reports the rate at which
//! the process drained the backlog: what the bound costs, if anything.
//!
//! The publisher's side, on the mock (its brokers answer 3 s late for 6 s) and on tansu
//! (paused with SIGSTOP for 5 s): 200,000 events offered at 100,000 a second to 16
//! partitions, and the most the producer held queued, not yet taken by the broker
//! (librdkafka's `msg_size` statistic, sampled every 100 ms):
//! - **librdkafka's default buffer** (`queue.buffering.max.kbytes` 1 GiB, and
//!   `queue.buffering.max.messages` 100,000): must pass with more than 16 MiB queued;
//! - **a 16 MiB buffer**: must pass with at most 16 MiB queued (a send past it waits).
//!
//! What it cannot show, and says so ([`left_out`]): the field's gigabyte. With librdkafka
//! 2.12's high-level consumer the default queue is bounded for the whole consumer, so
//! defaults and many partitions do not reach it here (the peak stayed near 100 MB on 64
//! partitions). The producer stops at 100,000 messages before its 1 GiB: some 25 MiB of
//! these events. The publisher rows run on the mock and tansu only.

use crate::expect::{Bound, Expected};
use crate::variant::{Setup, Variant, VariantRun};
use tradeflow_cluster::plan::{Action, PlanStep};
use tradeflow_cluster::{Backend, Fault};
use tradeflow_stream::service::Prefetch;

/// The experiment's name.
pub const NAME: &str = "consumer-memory";
/// What it shows.
pub const WHAT: &str = "the balance service's own peak RSS draining a backlog: librdkafka's default prefetch (64 MiB queued) against the service's bound (4 MiB), on 8 and 64 partitions; and the publisher's queued bytes while the broker is slow, with librdkafka's default buffer and a 16 MiB one";

/// The bound the service's defaults must keep it under, in MB.
pub const SERVICE_RSS_MB_MAX: f64 = 64.0;
/// The offered rate of the backlog's publishing, events per second.
const RATE_PER_S: f64 = 100_000.0;
/// Accounts of the workload, spread evenly: each partition holds about as much as the
/// others (the mock cluster keeps 5 MB per partition).
const ACCOUNTS: u32 = 2_000;

/// The publisher rows' bound on what the producer holds (`queue.buffering.max.kbytes`).
pub const PUBLISHER_BUFFER_KBYTES: u32 = 16_384;
/// The publisher rows' events: 200,000 of some 260 bytes (52 MB), offered at
/// [`RATE_PER_S`] to brokers that answer [`SLOW_BROKER_MS`] late (the mock) or not at all
/// for [`PAUSED_BROKER_MS`] (tansu, SIGSTOP).
const PUBLISHER_EVENTS: u64 = 200_000;
/// The mock brokers' added round trip while the publisher rows publish.
const SLOW_BROKER_MS: u64 = 3_000;
/// How long tansu is paused in the publisher rows.
const PAUSED_BROKER_MS: u64 = 5_000;

/// What the lesson cannot show, and why.
pub fn left_out(setup: &Setup) -> Vec<String> {
    let mut left = vec![
        "librdkafka's defaults with many partitions at a gigabyte (the field's 1.5 GB): librdkafka 2.12's high-level consumer bounds its one queue at 64 MiB (queued.max.messages.kbytes) whatever the partitions, so the default rows stay near 100 MB".into(),
        "the publisher at a gigabyte: librdkafka's producer also stops at queue.buffering.max.messages (100,000 by default), some 25 MiB of these 260-byte events; only events of some 10 KB would fill its default 1 GiB".into(),
    ];
    if !matches!(setup.broker, Backend::Mock | Backend::Tansu) {
        left.push(format!(
            "the publisher rows on {}: they slow the broker with the mock's round-trip delay or by pausing tansu",
            setup.broker
        ));
    }
    left
}

/// The publisher rows: 200,000 events offered at 100,000 a second while the broker is slow
/// (the mock's brokers answer 3 s late) or away (tansu paused 5 s); the producer's queued
/// bytes sampled from librdkafka's statistics, with its default buffer and with a 16 MiB
/// bound.
fn publisher_rows(setup: &Setup) -> Vec<Variant> {
    let slow = match setup.broker {
        Backend::Mock => (1..=tradeflow_cluster::MOCK_BROKERS)
            .map(|broker| PlanStep {
                at_ms: 0,
                for_ms: Some(SLOW_BROKER_MS * 2),
                action: Action::Broker(Fault::RoundTripTime {
                    broker,
                    delay_ms: SLOW_BROKER_MS,
                }),
            })
            .collect(),
        Backend::Tansu => vec![PlanStep {
            at_ms: 100,
            for_ms: Some(PAUSED_BROKER_MS),
            action: Action::Broker(Fault::Pause),
        }],
        _ => return Vec::new(),
    };
    let row = |buffer_kbytes: Option<u32>, expected: Expected| {
        // 16 partitions: 3.25 MB each, under what the mock keeps (5 MB a partition) while
        // the slow brokers hold the consumer back too.
        let mut options = setup.stream(16, 1);
        options.workload.events = PUBLISHER_EVENTS;
        options.workload.rate_per_s = RATE_PER_S;
        options.workload.accounts = ACCOUNTS;
        options.workload.skew = 0.0;
        options.batch_size = 500;
        options.publisher.buffer_kbytes = buffer_kbytes;
        options.publisher.queue_stats = true;
        options.scenario.plan = setup.fixed_plan(slow.clone());
        options.scenario.processes = setup.service.clone();
        options.stall_timeout = std::time::Duration::from_secs(30);
        Variant {
            label: format!(
                "publisher, {PUBLISHER_EVENTS} events to a slow broker, {}",
                match buffer_kbytes {
                    Some(kbytes) => format!("queue.buffering.max.kbytes {kbytes}"),
                    None => "librdkafka's default buffer".to_owned(),
                }
            ),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    let bound_mib = f64::from(PUBLISHER_BUFFER_KBYTES) / 1_024.0;
    vec![
        row(
            None,
            Expected::pass("librdkafka's producer holds what the broker has not taken, up to 100,000 messages or 1 GiB: past the 16 MiB the bound allows")
                .queued_mib(Bound::Over(bound_mib)),
        ),
        row(
            Some(PUBLISHER_BUFFER_KBYTES),
            Expected::pass("a send past the bound waits (QueueFull, then again): the producer holds at most 16 MiB, and nothing is lost")
                .queued_mib(Bound::AtMost(bound_mib)),
        ),
    ]
}

/// The lesson's variants for a setup: the service as a process of its own.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    if setup.service.is_none() {
        return Err("the lesson measures the balance service's own process, and no tradeflow executable was given to start it".into());
    }
    let mut variants = publisher_rows(setup);
    for (partitions, events) in [(8, 100_000), (64, 400_000)] {
        variants.push(variant(
            setup,
            partitions,
            events,
            Prefetch::LibrdkafkaDefaults,
            Expected::pass("librdkafka's default queue (64 MiB) takes as much of the backlog as it can: the process grows past 64 MB")
                .rss_mb(Bound::Over(SERVICE_RSS_MB_MAX)),
        ));
        variants.push(variant(
            setup,
            partitions,
            events,
            Prefetch::Bounded,
            Expected::pass("the service's bound (4 MiB queued, 2 MiB fetches) keeps the process under 64 MB whatever the backlog")
                .rss_mb(Bound::AtMost(SERVICE_RSS_MB_MAX)),
        ));
    }
    Ok(variants)
}

/// Chapter 18's run: the 8-partition backlog, drained by one process whose prefetch the
/// learner's `prefetch_limits` bounds.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if setup.service.is_none() {
        return Err("chapter 18 measures the balance service's own process, and no tradeflow executable was given to start it".into());
    }
    Ok(variant(
        setup,
        8,
        100_000,
        Prefetch::Exercise,
        Expected::pass("the balance service drains the backlog under 64 MB"),
    ))
}

/// Chapter 18's judge: the checker's counts first; then a peak resident set over
/// [`SERVICE_RSS_MB_MAX`] fails as `memory`; a peak not read is unknown. The evidence gives
/// the rate at which the process drained the backlog: what the bound cost.
pub fn chapter_judge(runs: &[(Variant, tradeflow_check::RunRecord)]) -> crate::chapters::Judgement {
    use crate::chapters::Judgement;
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let judged = crate::chapters::judge_counts(variant, record, &crate::chapters::EVERY_COUNT);
    let Judgement::Pass(evidence) = judged else {
        return judged;
    };
    let drained = record
        .config
        .get("backlog_drain_per_s")
        .and_then(serde_json::Value::as_f64)
        .map_or("not measured".to_owned(), |rate| format!("{rate:.0} events/s"));
    match crate::expect::peak_rss_mb(record) {
        None => Judgement::Unknown("the balance service process's peak resident set was not read; run the check again".into()),
        Some(mb) if mb > SERVICE_RSS_MB_MAX => Judgement::Fail {
            violation: "memory",
            detail: format!(
                "memory {mb:.1} MB at the balance service process's peak (at most {SERVICE_RSS_MB_MAX:.0} MB); it drained the backlog at {drained}"
            ),
        },
        Some(mb) => Judgement::Pass(format!(
            "peak RSS {mb:.1} MB (at most {SERVICE_RSS_MB_MAX:.0}), backlog drained at {drained}; {evidence}"
        )),
    }
}

/// One run: the backlog, then one consumer process with `prefetch`.
fn variant(setup: &Setup, partitions: i32, events: u64, prefetch: Prefetch, expected: Expected) -> Variant {
    let mut options = setup.stream(partitions, 1);
    options.workload.events = events;
    options.workload.rate_per_s = RATE_PER_S;
    options.workload.accounts = ACCOUNTS;
    options.workload.skew = 0.0;
    // The balance service's own defaults (`tradeflow balance-service`).
    options.batch_size = 500;
    options.fill_wait = std::time::Duration::from_millis(5);
    options.scenario.prefetch = prefetch;
    options.scenario.backlog_first = true;
    options.scenario.processes = setup.service.clone();
    options.stall_timeout = std::time::Duration::from_secs(30);
    Variant {
        label: format!(
            "{partitions} partitions, {} events waiting, {}",
            events,
            match prefetch {
                Prefetch::LibrdkafkaDefaults => "librdkafka's defaults",
                Prefetch::Bounded => "the service's bound",
                Prefetch::Exercise => "your prefetch_limits",
            }
        ),
        run: VariantRun::Stream(Box::new(options)),
        expected,
    }
}
