//! Lesson: a producer with several requests in flight and retries needs idempotence, or a
//! retried request lands behind a later one (reordering) or twice (duplicates).
//!
//! From the field: Scalescape, "Building High Scale Backend Systems With Kafka" (2023),
//! acks=all, idempotence over exactly-once.
//!
//! Variants: idempotence off with 5 requests in flight must **reorder** on the mock (slow
//! brokers, `NotLeader` on some produce requests); on the proxied backends (tansu,
//! container, kafka) resets fail every request in flight at once, so it must pass, the
//! resent duplicates skipped by the idempotent service. Idempotence on: on the mock only
//! order is judged (it does not check sequences; whether it loses events depends on
//! timing), elsewhere it must pass.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate, node_action};
use tradeflow_cluster::faults::{Api, NodeFault, NodeTarget, RequestError};
use tradeflow_cluster::kafka::KAFKA_NODES;
use tradeflow_cluster::plan::{Action, Candidate, FaultPlan, PlanStep};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Backend, Fault, MOCK_BROKERS};
use tradeflow_stream::publisher::PublisherConfig;

/// The experiment's name.
pub const NAME: &str = "producer-retries";
/// What it shows.
pub const WHAT: &str = "produce requests fail while several are in flight: without idempotence a retried request lands behind a later one (reordering) or twice (duplicates)";

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
    let publishing = setup.publishing_ms();
    let (plan, off_expected, on_expected) = match setup.broker {
        Backend::Mock => {
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
            let mut plan = FaultPlan::fixed(steps);
            plan.seed = setup.seed;
            (
                plan,
                Expected::fail(
                    Violation::Reordered,
                    "a failed request is retried after later requests to the same partition succeeded: an account's events land out of order",
                ),
                Expected::either(
                    "the mock does not check producer sequences (librdkafka 2.12 checks them only for transactional producers), so it cannot show what idempotence prevents: when a later request succeeds first, the client takes that as proof that the failed one was written and reports it delivered, and those events are lost. Whether that happens depends on timing (some runs lose hundreds, some none), so this row is not judged on its verdict, only on order: the client keeps the sequence, so nothing is reordered or duplicated. Run this on a broker that enforces sequences (tansu, container) for the idempotent row to pass",
                ),
            )
        }
        Backend::Tansu | Backend::Container | Backend::Kafka => {
            // The proxy (each node's, on Kafka) delays answers so several requests are in
            // flight, then resets the connections: requests the broker wrote but whose
            // answers were lost are sent again.
            let latency = Chaos {
                latency_ms: 30,
                ..Chaos::default()
            };
            let (delays, resets): (Vec<Action>, Vec<Candidate>) = if setup.broker == Backend::Kafka {
                (1..=KAFKA_NODES)
                    .map(|id| {
                        (
                            node_action(NodeTarget::Id { id }, NodeFault::ProxyChaos { chaos: latency }),
                            candidate(node_action(NodeTarget::Id { id }, NodeFault::ProxyReset), (0, 0)),
                        )
                    })
                    .unzip()
            } else {
                (
                    vec![Action::Broker(Fault::ProxyChaos { chaos: latency })],
                    vec![candidate(Action::Broker(Fault::ProxyReset), (0, 0))],
                )
            };
            let mut steps: Vec<PlanStep> = delays
                .into_iter()
                .map(|action| PlanStep {
                    at_ms: 0,
                    for_ms: Some(publishing),
                    action,
                })
                .collect();
            steps.extend(setup.plan(&resets, 6).steps);
            let mut plan = FaultPlan::fixed(steps);
            plan.seed = setup.seed;
            (
                plan,
                Expected::pass(
                    "a reset fails every request in flight on the connection at once, and the client sends them again in order: no reordering; a request the broker had written comes twice, and the idempotent balance service skips it (see `redelivered`). The proxy cannot fail one request and pass the next, which is what reorders on the mock",
                ),
                Expected::pass("the broker discards the resent requests by their producer sequence: no duplicates, no reordering"),
            )
        }
        Backend::External => {
            return Err("no faults can be injected into an external cluster from here".into());
        }
    };
    let variant = |idempotence: bool, expected: Expected| {
        let mut options = setup.stream(6, 2);
        options.publisher = publisher(idempotence);
        options.scenario.plan = plan.clone();
        Variant {
            label: format!("idempotence {}, 5 requests in flight", if idempotence { "on" } else { "off" }),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    Ok(vec![variant(false, off_expected), variant(true, on_expected)])
}
