//! Lesson: a producer with several requests in flight and retries needs idempotence, or a
//! retried request lands behind a later one (reordering) or twice (duplicates).
//!
//! From the field: Scalescape, "Building High Scale Backend Systems With Kafka" (2023),
//! acks=all, idempotence over exactly-once.
//!
//! Variants: idempotence off with 5 requests in flight must **reorder** on the mock (slow
//! brokers, `NotLeader` on some produce requests). On Apache Kafka, which checks producer
//! sequences, the nodes' proxies reset connections while requests are in flight: with
//! idempotence off a request the broker had written is sent again and sits in the log
//! twice: **duplicated**, counted by reading the topic back once the run is over; with
//! idempotence on the broker drops the resent copies: pass. The resets reach the consumers'
//! connections too, and a consumer may read a batch again after a rebalance: that is the
//! consumer's redelivery, not the producer's copy, so the balance service deduplicates here
//! and only what the log holds twice (or out of order) is counted. Resets fail every request on a
//! connection at once, so they are resent in order: reordering is shown on the mock only.
//! Idempotence on, on the mock: only order is judged (it does not check sequences; whether
//! it loses events depends on timing). Not run on tansu: it could not show either row.
//!
//! Chapter 05 (on `kafka`): the Kafka row's faults with the learner's producer settings,
//! judged on the log read back: a resent copy the broker keeps is in it twice (duplicated).
//! Only the broker can drop the copy, so only idempotence passes.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate, node_action};
use tradeflow_cluster::faults::{Api, NodeFault, NodeTarget, RequestError};
use tradeflow_cluster::kafka::KAFKA_NODES;
use tradeflow_cluster::plan::{Action, Candidate, FaultPlan, PlanStep};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Backend, Fault, MOCK_BROKERS};
use tradeflow_stream::publisher::{Acks, PublisherConfig};

/// The experiment's name.
pub const NAME: &str = "producer-retries";
/// What it shows.
pub const WHAT: &str = "produce requests fail while several are in flight: without idempotence a retried request lands behind a later one (reordering) or twice (duplicates)";

/// Connection resets in the experiment's Kafka rows.
const EXPERIMENT_RESETS: usize = 6;
/// Connection resets in chapter 05's run: more than the experiment's, so that even a seed
/// whose resets catch few requests in flight writes some twice (6 resets gave 1, 10 and 29
/// duplicates on seeds 1-3).
const CHAPTER_RESETS: usize = 16;

/// Why the lesson is not run on tansu (process or container).
pub const NOT_SHOWN_ON_TANSU: &str = "tansu cannot show it: with idempotence off, connection resets through its proxy left no written request to be resent (0 duplicates in its log, read back by the naive consumer, seed 1), and whether it checks producer sequences is not known, so neither row could show what idempotence prevents; run it on kafka (or the mock, for reordering)";

/// The lesson's producer: small batches sent at once, five requests in flight, idempotence
/// on or off. The must-fail property uses it too.
pub fn publisher(idempotence: bool) -> PublisherConfig {
    PublisherConfig {
        linger_ms: 1,
        batch_max: 50,
        idempotence,
        in_flight_max: 5,
        ..PublisherConfig::default()
    }
}

/// Every mock broker answers 50 ms late while publishing lasts, so several produce requests
/// are in flight when one fails.
pub fn slow_mock_brokers(publishing_ms: u64) -> Vec<PlanStep> {
    (1..=MOCK_BROKERS)
        .map(|broker| PlanStep {
            at_ms: 0,
            for_ms: Some(publishing_ms),
            action: Action::Broker(Fault::RoundTripTime { broker, delay_ms: 50 }),
        })
        .collect()
}

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    let (plan, off_expected, on_expected) = match setup.broker {
        Backend::Mock => mock_rows(setup),
        Backend::Tansu | Backend::Container => {
            return Err(NOT_SHOWN_ON_TANSU.into());
        }
        Backend::Kafka => kafka_rows(setup, EXPERIMENT_RESETS),
        Backend::External => {
            return Err("no faults can be injected into an external cluster from here".into());
        }
    };
    // Where the broker checks producer sequences, the log itself is the evidence: it is
    // read back once the run is over (the consumers deduplicate, so that a redelivery of
    // theirs is not taken for a copy the producer wrote).
    let audit_log = setup.broker == Backend::Kafka;
    let variant = |idempotence: bool, expected: Expected| {
        let mut options = setup.stream(6, 2);
        options.publisher = publisher(idempotence);
        options.scenario.plan = plan.clone();
        options.scenario.audit_log = audit_log;
        Variant {
            label: format!("idempotence {}, 5 requests in flight", if idempotence { "on" } else { "off" }),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    Ok(vec![variant(false, off_expected), variant(true, on_expected)])
}

/// On the mock: slow answers keep several produce requests in flight, and `NotLeader` on
/// some of them; the plan and what each row must show.
fn mock_rows(setup: &Setup) -> (FaultPlan, Expected, Expected) {
    let publishing = setup.publishing_ms();
    // Slow answers keep several produce requests in flight; errors on some of them
    // make the client retry those behind the later ones that succeeded.
    let mut steps = slow_mock_brokers(publishing);
    let errors = setup.plan(
        &[candidate(
            Action::Broker(Fault::RequestErrors {
                api: Api::Produce,
                error: RequestError::NotLeader,
                count: 2,
            }),
            (0, 0),
        )],
        8,
    );
    steps.extend(errors.steps);
    (
        setup.fixed_plan(steps),
        Expected::fail(
            Violation::Reordered,
            "a failed request is retried after later requests to the same partition succeeded: an account's events land out of order",
        ),
        Expected::either(
            "the mock does not check producer sequences (librdkafka 2.12 checks them only for transactional producers), so it cannot show what idempotence prevents: when a later request succeeds first, the client takes that as proof that the failed one was written and reports it delivered, and those events are lost. Whether that happens depends on timing (some runs lose hundreds, some none), so this row is not judged on its verdict, only on order: the client keeps the sequence, so nothing is reordered or duplicated. Run this on a broker that enforces sequences (kafka) for the idempotent row to be judged on its verdict",
        ),
    )
}

/// On Apache Kafka: each node's proxy delays answers and resets connections; the plan and
/// what each row must show.
fn kafka_rows(setup: &Setup, resets_planned: usize) -> (FaultPlan, Expected, Expected) {
    let publishing = setup.publishing_ms();
    // Each node's proxy delays answers so several requests are in flight, then resets the
    // connections: requests the broker wrote but whose answers were lost are sent again.
    let latency = Chaos {
        latency_ms: 30,
        ..Chaos::default()
    };
    let (delays, resets): (Vec<Action>, Vec<Candidate>) = (1..=KAFKA_NODES)
        .map(|id| {
            (
                node_action(NodeTarget::Id { id }, NodeFault::ProxyChaos { chaos: latency }),
                candidate(node_action(NodeTarget::Id { id }, NodeFault::ProxyReset), (0, 0)),
            )
        })
        .unzip();
    let mut steps: Vec<PlanStep> = delays
        .into_iter()
        .map(|action| PlanStep {
            at_ms: 0,
            for_ms: Some(publishing),
            action,
        })
        .collect();
    steps.extend(setup.plan(&resets, resets_planned).steps);
    (
        setup.fixed_plan(steps),
        Expected::fail(
            Violation::Duplicated,
            "a reset fails every request in flight on the connection at once and the client sends them again: a request the broker had written is in the log twice (read back once the run is over), and a consumer that applies every record applies it twice. They are resent in order, so nothing is reordered: the proxy cannot fail one request and pass the next, which is what reorders on the mock",
        ),
        Expected::pass(
            "the broker discards the resent requests by their producer sequence: the log, read back, holds each event once, in each account's order",
        ),
    )
}

/// Chapter 05's run on Apache Kafka: the learner's producer settings, the Kafka row's
/// delays and resets, judged on the log read back once the run is over.
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if setup.broker != Backend::Kafka {
        return Err(format!(
            "chapter 05 needs a broker that checks producer sequences: it runs on kafka, not on {}",
            setup.broker
        ));
    }
    let settings = tradeflow_exercises::producer_settings::producer_settings();
    let acks = Acks::from(settings.acks);
    check_settings(&settings, acks)?;
    let (plan, _, _) = kafka_rows(setup, CHAPTER_RESETS);
    let mut options = setup.stream(6, 2);
    options.publisher = PublisherConfig {
        linger_ms: settings.linger_ms,
        batch_max: 50,
        idempotence: settings.idempotence,
        in_flight_max: settings.in_flight_max,
        acks,
        ..PublisherConfig::default()
    };
    options.scenario.plan = plan;
    options.scenario.audit_log = true;
    Ok(Variant {
        label: format!(
            "your producer_settings: acks={}, idempotence {}, {} in flight, linger {} ms; connections reset mid-flight",
            acks.as_str(),
            if settings.idempotence { "on" } else { "off" },
            settings.in_flight_max,
            settings.linger_ms
        ),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("every event is in the log once: nothing applied twice, lost or reordered"),
    })
}

/// Refuses producer settings the client or the run would not take, saying why.
fn check_settings(settings: &tradeflow_exercises::ProducerSettings, acks: Acks) -> Result<(), String> {
    if !(1..=5).contains(&settings.in_flight_max) {
        return Err(format!(
            "producer_settings returned {} requests in flight: 1..=5 here (5 is the most idempotence keeps in order)",
            settings.in_flight_max
        ));
    }
    if settings.linger_ms > 1_000 {
        return Err(format!(
            "producer_settings returned linger_ms {}: at most 1000 here",
            settings.linger_ms
        ));
    }
    if settings.idempotence && acks != Acks::All {
        return Err("producer_settings asks for idempotence with acks=1: librdkafka refuses it (idempotence needs acks=all: a write the leader alone had could be lost with its sequence)".into());
    }
    Ok(())
}
