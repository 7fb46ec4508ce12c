//! `tradeflow experiment`: the lessons of running Kafka in production, as seeded runs.
//!
//! Each experiment runs variants of one configuration under one fault plan (printed before
//! the run) and prints a verdict table: variant, configuration, faults applied, lost /
//! duplicated / reordered / bad balances, the expected outcome and whether it happened.
//! `OUT/experiment.json` holds the same, with every run's check. Each variant gets a fresh
//! broker, so one variant's faults cannot leak into the next.

use crate::args::{StoreArgs, write_json};
use crate::progress;
use crate::run_stream;
use anyhow::{Context, bail};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{CheckReport, RunProgress, RunRecord};
use tradeflow_cluster::faults::{Api, NodeFault, NodeTarget, RequestError};
use tradeflow_cluster::kafka::KAFKA_NODES;
use tradeflow_cluster::plan::{Action, Candidate, FaultPlan, PlanStep, ServiceFault};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Backend, Cluster, Fault, MOCK_BROKERS};
use tradeflow_domain::{RateProfile, WorkloadConfig};
use tradeflow_poller::{PollerConfig, RunOptions};
use tradeflow_store::Store;
use tradeflow_stream::publisher::{Acks, PublisherConfig};
use tradeflow_stream::{CommitPolicy, Cutover, Runbook, Scenario, StreamOptions};

/// The experiments, with what each shows.
pub const EXPERIMENTS: &[(&str, &str)] = &[
    (
        "auto-commit-crash",
        "a consumer killed mid-batch: auto commit and commit-before-DB lose the batch; commit-after-DB redelivers it and the apply log skips what was applied",
    ),
    (
        "producer-retries",
        "produce requests fail while several are in flight: without idempotence a retried request lands behind a later one (reordering) or twice (duplicates)",
    ),
    (
        "poison-message",
        "a message no one can process: without a dead-letter topic its partition is stuck and lag grows; with one, everything else flows",
    ),
    (
        "repartition-cutover",
        "moving to a topic with more partitions while the old one has lag: a naive switch applies newer events first; drain-then-switch does not",
    ),
    (
        "consumer-scaling",
        "1..P consumers on P partitions, more consumers than partitions (the extra sit idle), and consumers joining and leaving mid-run",
    ),
    (
        "broker-failure",
        "a broker down, paused, cut off or killed, per backend, with what each backend can and cannot promise",
    ),
    (
        "poller-vs-stream",
        "the compare run: the same seed through both architectures, with throughput, latency, statements per event, CPU and memory",
    ),
];

/// Arguments of `tradeflow experiment`.
#[derive(Args)]
pub struct ExperimentArgs {
    /// The experiment to run, or `list` to see them all.
    name: String,
    /// Seed of the workload and of the fault plan's timings; random when omitted (and
    /// printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// The broker: mock, tansu, kafka (Apache Kafka, three nodes: the replication lessons),
    /// container (TRADEFLOW_CONTAINER_IMAGE chooses the image) or external (--bootstrap or
    /// KAFKA_BOOTSTRAP_SERVERS).
    #[arg(long, default_value_t = Backend::Mock, value_parser = run_stream::backend_parser())]
    broker: Backend,
    /// Bootstrap servers for --broker external.
    #[arg(long)]
    bootstrap: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Events per variant.
    #[arg(long, default_value_t = 6_000)]
    events: u64,
    /// Offered rate per variant, events per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Where to write experiment.json.
    #[arg(long, default_value = "tradeflow-experiment")]
    out: PathBuf,
}

/// What a variant must show.
#[derive(Debug, Clone)]
struct Expected {
    /// `None`: the verdict depends on timing the experiment cannot pin, so either one is as
    /// expected, but nothing may come out of order or twice.
    verdict: Option<Verdict>,
    /// The checker's count that must be above zero when the verdict is a failure.
    violation: Option<Violation>,
    /// A count from the run's configuration record that must be above zero (for example
    /// `redelivered`), whatever the verdict.
    observed: Option<&'static str>,
    /// Words a fault's recorded effect must contain: the proof that the fault did what the
    /// row is about (a new leader, an ISR below min.insync.replicas).
    effect: Option<&'static str>,
    /// Why, in words.
    note: String,
}

#[derive(Debug, Clone, Copy)]
enum Violation {
    Lost,
    Reordered,
}

impl Violation {
    fn count(self, check: &CheckReport) -> u64 {
        match self {
            Violation::Lost => check.lost,
            Violation::Reordered => check.reordered + check.bad_balances,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Violation::Lost => "lost",
            Violation::Reordered => "reordered or bad balances",
        }
    }
}

impl Expected {
    fn pass(note: impl Into<String>) -> Expected {
        Expected {
            verdict: Some(Verdict::Pass),
            violation: None,
            observed: None,
            effect: None,
            note: note.into(),
        }
    }

    fn fail(violation: Violation, note: impl Into<String>) -> Expected {
        Expected {
            verdict: Some(Verdict::Fail),
            violation: Some(violation),
            observed: None,
            effect: None,
            note: note.into(),
        }
    }

    /// Either verdict, as long as nothing is reordered or duplicated: for a row whose losses
    /// come from a flaw of the backend and show up only on some runs.
    fn either(note: impl Into<String>) -> Expected {
        Expected {
            verdict: None,
            violation: None,
            observed: None,
            effect: None,
            note: note.into(),
        }
    }

    fn observing(mut self, count: &'static str) -> Expected {
        self.observed = Some(count);
        self
    }

    fn showing(mut self, effect: &'static str) -> Expected {
        self.effect = Some(effect);
        self
    }

    fn describe(&self) -> String {
        let mut text = match (self.verdict, self.violation) {
            (None, _) => "pass or lost, never reordered or duplicated".to_owned(),
            (Some(Verdict::Pass), _) => "pass".to_owned(),
            (Some(Verdict::Fail), Some(violation)) => format!("fail ({})", violation.name()),
            (Some(Verdict::Fail), None) => "fail".to_owned(),
        };
        if let Some(count) = self.observed {
            let _ = write!(text, ", {count} > 0");
        }
        if let Some(effect) = self.effect {
            let _ = write!(text, ", a fault's effect shows \"{effect}\"");
        }
        text
    }

    fn met_by(&self, record: &RunRecord) -> bool {
        let verdict = match self.verdict {
            Some(verdict) => record.check.verdict == verdict,
            None => record.check.reordered == 0 && record.check.duplicated == 0,
        };
        let violation = self.violation.is_none_or(|violation| violation.count(&record.check) > 0);
        let observed = self
            .observed
            .is_none_or(|count| record.config.get(count).and_then(serde_json::Value::as_u64).unwrap_or(0) > 0);
        verdict && violation && observed && self.effect_shown(record)
    }

    fn effect_shown(&self, record: &RunRecord) -> bool {
        self.effect.is_none_or(|needle| {
            record
                .faults
                .iter()
                .any(|fault| fault.effect.as_deref().is_some_and(|effect| effect.contains(needle)))
        })
    }
}

/// Whether every planned fault fired: each step and undo of the plan recorded, none refused.
/// A run whose faults did not fire could not show its lesson: its row is unknown, never
/// as expected.
fn faults_fired(planned: usize, record: &RunRecord) -> bool {
    record.faults.len() == planned && record.faults.iter().all(|fault| fault.error.is_none())
}

/// One variant: a run and what it must show.
struct Variant {
    label: String,
    run: VariantRun,
    expected: Expected,
}

enum VariantRun {
    Stream(Box<StreamOptions>),
    Poller(RunOptions),
}

impl Variant {
    /// How many fault records a run of this variant must have: every step and every undo.
    fn planned_faults(&self) -> usize {
        match &self.run {
            VariantRun::Stream(options) => options.scenario.plan.timeline().len(),
            VariantRun::Poller(_) => 0,
        }
    }
}

/// One variant's outcome, as experiment.json holds it.
#[derive(serde::Serialize)]
struct VariantOutcome {
    label: String,
    config: serde_json::Value,
    faults: Vec<tradeflow_check::FaultRecord>,
    check: CheckReport,
    expected: &'static str,
    expected_detail: String,
    note: String,
    /// Every planned fault fired (otherwise the row is unknown).
    faults_fired: bool,
    as_expected: bool,
    applied: u64,
    events: u64,
    throughput_per_s: f64,
    latency_p99_ms: f64,
    worst_lag: String,
}

/// Runs an experiment (or lists them); returns whether every variant came out as expected.
pub async fn run(arguments: ExperimentArgs) -> anyhow::Result<bool> {
    if arguments.name == "list" {
        for (name, what) in EXPERIMENTS {
            println!("{name:<20} {what}");
        }
        return Ok(true);
    }
    let Some((name, what)) = EXPERIMENTS.iter().find(|(name, _)| *name == arguments.name) else {
        bail!(
            "no experiment named {:?}; these exist: {}",
            arguments.name,
            EXPERIMENTS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
        );
    };
    let seed = arguments.seed.unwrap_or_else(crate::args::random_seed);
    println!("seed: {seed}");
    println!("experiment {name}: {what}");
    let broker = arguments.broker.as_str();
    let setup = Setup {
        seed,
        events: arguments.events,
        rate: arguments.rate,
        broker: arguments.broker,
    };
    anyhow::ensure!(
        setup.events >= 1_000,
        "--events must be at least 1000 for the faults to land mid-run"
    );
    anyhow::ensure!(setup.rate >= 100.0, "--rate must be at least 100 events/s");
    let variants = match variants(name, &setup) {
        Ok(variants) => variants,
        Err(reason) => bail!("experiment {name} cannot run honestly on the {broker} backend: {reason}"),
    };
    let store = arguments.store.open().await?;
    let mut outcomes = Vec::with_capacity(variants.len());
    for (index, variant) in variants.iter().enumerate() {
        println!("\n[{}/{}] {}", index + 1, variants.len(), variant.label);
        let record = run_variant(&store, &arguments, variant).await?;
        let fired = faults_fired(variant.planned_faults(), &record);
        let as_expected = fired && variant.expected.met_by(&record);
        println!(
            "  -> lost {}, duplicated {}, reordered {}, bad balances {}: expected {}, {}",
            record.check.lost,
            record.check.duplicated,
            record.check.reordered,
            record.check.bad_balances,
            variant.expected.describe(),
            match (fired, as_expected) {
                (false, _) => "UNKNOWN: a planned fault did not fire",
                (true, true) => "as expected",
                (true, false) => "NOT as expected",
            }
        );
        outcomes.push(VariantOutcome {
            label: variant.label.clone(),
            config: record.config.clone(),
            faults: record.faults.clone(),
            check: record.check.clone(),
            expected: match variant.expected.verdict {
                Some(Verdict::Pass) => "pass",
                Some(Verdict::Fail) => "fail",
                None => "either",
            },
            expected_detail: variant.expected.describe(),
            note: variant.expected.note.clone(),
            faults_fired: fired,
            as_expected,
            applied: record.applied,
            events: record.events,
            throughput_per_s: record.throughput_per_s,
            latency_p99_ms: record.latency_ms.p99,
            worst_lag: record.worst_lag(),
        });
    }
    store.close().await;
    println!("\n{}", verdict_table(name, seed, broker, &outcomes));
    let path = arguments.out.join("experiment.json");
    write_json(
        &path,
        &serde_json::json!({
            "experiment": name,
            "seed": seed,
            "broker": broker,
            "store": arguments.store.config()?.kind.as_str(),
            "variants": outcomes,
        }),
    )?;
    println!("written: {}", path.display());
    Ok(outcomes.iter().all(|outcome| outcome.as_expected))
}

struct Setup {
    seed: u64,
    events: u64,
    rate: f64,
    broker: Backend,
}

impl Setup {
    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            seed: self.seed,
            events: self.events,
            accounts: 50,
            rate_per_s: self.rate,
            profile: RateProfile::Steady,
            skew: tradeflow_domain::workload::ACCOUNT_SKEW,
            mix: tradeflow_domain::EventMix::default(),
        }
    }

    /// How long publishing takes, in ms.
    fn publishing_ms(&self) -> u64 {
        (self.events as f64 / self.rate * 1_000.0) as u64
    }

    fn stream(&self, partitions: i32, consumers: u32) -> StreamOptions {
        StreamOptions {
            workload: self.workload(),
            topic: "trades".into(),
            partitions,
            consumers,
            publisher: PublisherConfig::default(),
            batch_size: 200,
            fill_wait: Duration::from_millis(5),
            stall_timeout: Duration::from_secs(10),
            metrics: None,
            scenario: Scenario::default(),
        }
    }

    /// A plan of one step drawn from `candidates`, somewhere in the middle third of
    /// publishing.
    fn plan(&self, candidates: &[Candidate], steps: usize) -> FaultPlan {
        let publishing = self.publishing_ms();
        FaultPlan::random(self.seed, candidates, steps, (publishing / 3, publishing / 2))
    }
}

fn candidate(action: Action, for_ms: (u64, u64)) -> Candidate {
    Candidate { action, for_ms }
}

fn variants(name: &str, setup: &Setup) -> Result<Vec<Variant>, String> {
    match name {
        "auto-commit-crash" => Ok(auto_commit_crash(setup)),
        "producer-retries" => producer_retries(setup),
        "poison-message" => Ok(poison_message(setup)),
        "repartition-cutover" => Ok(repartition_cutover(setup)),
        "consumer-scaling" => Ok(consumer_scaling(setup)),
        "broker-failure" => broker_failure(setup),
        "poller-vs-stream" => Ok(poller_vs_stream(setup)),
        _ => Err(format!("unknown experiment {name}")),
    }
}

fn auto_commit_crash(setup: &Setup) -> Vec<Variant> {
    // One consumer, so the crashed one holds every partition's batch; a long fill wait, so
    // the batch in its hands when it dies is large.
    let plan = setup.plan(
        &[candidate(Action::Service(ServiceFault::Crash { consumer: 0 }), (1_000, 1_500))],
        1,
    );
    let variant = |commit: CommitPolicy, expected: Expected| {
        let mut options = setup.stream(4, 1);
        options.fill_wait = Duration::from_millis(100);
        options.batch_size = 2_000;
        options.scenario.commit = commit;
        options.scenario.plan = plan.clone();
        Variant {
            label: format!("commit {}", commit.as_str().replace('_', " ")),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            CommitPolicy::Auto,
            Expected::fail(
                Violation::Lost,
                "the auto-commit timer commits what was delivered, applied or not: the batch in the dead consumer's hands is never applied",
            ),
        ),
        variant(
            CommitPolicy::BeforeDatabase,
            Expected::fail(
                Violation::Lost,
                "offsets committed before the database commit: the batch is skipped on restart",
            ),
        ),
        variant(
            CommitPolicy::AfterDatabase,
            Expected::pass(
                "offsets committed after the database commit: the batch is redelivered and the apply log skips what was applied",
            )
            .observing("crashes"),
        ),
    ]
}

fn producer_retries(setup: &Setup) -> Result<Vec<Variant>, String> {
    let publishing = setup.publishing_ms();
    let (plan, off_expected, on_expected) = match setup.broker {
        Backend::Mock => {
            // Slow answers keep several produce requests in flight; errors on some of them
            // make the client retry those behind the later ones that succeeded.
            let mut steps: Vec<PlanStep> = (1..=MOCK_BROKERS)
                .map(|broker| PlanStep {
                    at_ms: 0,
                    for_ms: Some(publishing),
                    action: Action::Broker(Fault::RoundTripTime { broker, delay_ms: 50 }),
                })
                .collect();
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
        options.publisher = PublisherConfig {
            linger_ms: 1,
            batch_max: 50,
            idempotence,
            in_flight_max: 5,
            ..PublisherConfig::default()
        };
        options.scenario.plan = plan.clone();
        Variant {
            label: format!("idempotence {}, 5 requests in flight", if idempotence { "on" } else { "off" }),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    Ok(vec![variant(false, off_expected), variant(true, on_expected)])
}

fn poison_message(setup: &Setup) -> Vec<Variant> {
    let plan = setup.plan(&[candidate(Action::Service(ServiceFault::Poison { count: 2 }), (0, 0))], 1);
    let variant = |dead_letter: bool, expected: Expected| {
        let mut options = setup.stream(4, 2);
        options.stall_timeout = Duration::from_secs(5);
        options.scenario.dead_letter = dead_letter;
        options.scenario.plan = plan.clone();
        Variant {
            label: if dead_letter { "dead-letter topic" } else { "no dead-letter topic" }.into(),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            false,
            Expected::fail(
                Violation::Lost,
                "the consumer retries the poison forever: its partition is stuck, lag grows, and the events behind it are never applied",
            )
            .observing("poison_retries"),
        ),
        variant(
            true,
            Expected::pass("the poison goes to trades.dlq with its reason; its partition keeps flowing").observing("dead_lettered"),
        ),
    ]
}

fn repartition_cutover(setup: &Setup) -> Vec<Variant> {
    let at_event = (setup.events / 2) as usize;
    let cutover_ms = (at_event as f64 / setup.rate * 1_000.0) as u64;
    // The old balance service is behind at the cutover: it stalled a second before and
    // reads again half a second after.
    let plan = FaultPlan {
        seed: setup.seed,
        steps: vec![PlanStep {
            at_ms: cutover_ms.saturating_sub(1_000),
            for_ms: Some(1_500),
            action: Action::Service(ServiceFault::HoldAll),
        }],
    };
    let variant = |runbook: Runbook, expected: Expected| {
        let mut options = setup.stream(4, 2);
        options.scenario.plan = plan.clone();
        options.scenario.cutover = Some(Cutover {
            topic: "trades.v2".into(),
            partitions: 8,
            at_event,
            runbook,
        });
        Variant {
            label: match runbook {
                Runbook::Naive => "naive switch to 8 partitions".into(),
                Runbook::DrainThenSwitch => "drain, then switch to 8 partitions".into(),
            },
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    vec![
        variant(
            Runbook::Naive,
            Expected::fail(
                Violation::Reordered,
                "new events of an account are applied from the new topic while its older ones still wait in the old topic",
            ),
        ),
        variant(
            Runbook::DrainThenSwitch,
            Expected::pass("publishing pauses until the old topic is applied, then moves: order kept, at the cost of a pause"),
        ),
    ]
}

/// How long after a join the consumer-scaling row lets tansu's rebalance settle before a
/// member leaves.
const TANSU_REBALANCE_SETTLE_MS: u64 = 10_000;

fn consumer_scaling(setup: &Setup) -> Vec<Variant> {
    let partitions = 6;
    let mut variants: Vec<Variant> = [1_u32, 3, 6, 9]
        .into_iter()
        .map(|consumers| Variant {
            label: format!("{consumers} consumers on {partitions} partitions"),
            run: VariantRun::Stream(Box::new(setup.stream(partitions, consumers))),
            expected: Expected::pass(if consumers as i32 > partitions {
                format!("{} consumers get no partition and sit idle", consumers as i32 - partitions)
            } else {
                "each partition has one consumer; more consumers share the work".to_owned()
            }),
        })
        .collect();
    let publishing = setup.publishing_ms();
    let mut options = setup.stream(partitions, 2);
    // tansu takes several seconds per rebalance (about session.timeout.ms / 2).
    options.stall_timeout = Duration::from_secs(30);
    // On tansu a member that leaves while the join's rebalance is still going can leave the
    // group unsettled for good (seen in CI: 2,651 and 3,090 events never applied, the
    // survivors never got the partitions back), so there the leave waits until the join's
    // rebalance is long over. The mock takes both mid-publishing.
    let leave_at_ms = match setup.broker {
        Backend::Tansu | Backend::Container => publishing / 4 + TANSU_REBALANCE_SETTLE_MS,
        Backend::Mock | Backend::Kafka | Backend::External => publishing / 2,
    };
    options.scenario.plan = FaultPlan::fixed(vec![
        PlanStep {
            at_ms: publishing / 4,
            for_ms: None,
            action: Action::Service(ServiceFault::Join),
        },
        PlanStep {
            at_ms: leave_at_ms,
            for_ms: None,
            action: Action::Service(ServiceFault::Leave { consumer: 0 }),
        },
    ]);
    variants.push(Variant {
        label: "2 consumers, one joins, one leaves".into(),
        run: VariantRun::Stream(Box::new(options)),
        expected: Expected::pass("rebalances move partitions; offsets committed after the database commit keep every event applied once")
            .observing("rebalances"),
    });
    variants
}

fn broker_failure(setup: &Setup) -> Result<Vec<Variant>, String> {
    let pass = |note: &str| Expected::pass(note);
    let cases: Vec<(Candidate, Expected)> = match setup.broker {
        Backend::Mock => vec![
            (
                candidate(Action::Broker(Fault::BrokerDown { broker: 2 }), (2_000, 3_000)),
                pass(
                    "the mock has no replication and no disk: its partitions wait for the broker and nothing is lost. A real cluster promises this only with replication factor 3 and min.insync.replicas=2 (docker-compose.yml, --broker external)",
                ),
            ),
            (
                candidate(Action::Broker(Fault::RoundTripTime { broker: 1, delay_ms: 500 }), (2_000, 3_000)),
                pass("a slow broker costs latency, not correctness"),
            ),
            (
                candidate(
                    Action::Broker(Fault::LeaderMove {
                        topic: "trades".into(),
                        partition: 0,
                        broker: 3,
                    }),
                    (0, 0),
                ),
                pass("a leader move makes clients refresh metadata and carry on"),
            ),
        ],
        // No SIGKILL row: tansu keeps messages in memory, so a kill loses them (one broker,
        // no replicas) and a restarted tansu's metadata crashed librdkafka 2.12 in
        // rd_kafka_metadata_cache_find (SIGSEGV, seen here), while a broker killed for good
        // leaves the consumers' close waiting on a dead coordinator for minutes. The kill
        // lesson needs the three-broker cluster (docker-compose.yml, --broker external).
        Backend::Tansu | Backend::Container => {
            let mut cases = vec![
                (
                    candidate(Action::Broker(Fault::Pause), (1_500, 2_500)),
                    pass("a frozen broker: requests time out and are retried when it resumes; nothing is lost"),
                ),
                (
                    candidate(
                        Action::Broker(Fault::ProxyChaos {
                            chaos: Chaos {
                                latency_ms: 200,
                                jitter_ms: 100,
                                bandwidth_bytes_per_s: Some(100_000),
                                blackhole: false,
                            },
                        }),
                        (1_500, 2_500),
                    ),
                    pass("a slow, narrow network for a while: latency grows, nothing is lost"),
                ),
            ];
            if setup.broker == Backend::Container {
                cases.push((
                    candidate(Action::Broker(Fault::Disconnect), (1_500, 2_500)),
                    pass("the container leaves its network: clients time out and reconnect when it is back; nothing is lost"),
                ));
            }
            cases
        }
        Backend::Kafka => return Ok(replication_lessons(setup)),
        Backend::External => return Err("no faults can be injected into an external cluster from here: stop a broker by hand (docker compose stop kafka-2) during `tradeflow run stream --broker external`".into()),
    };
    Ok(cases
        .into_iter()
        .map(|(candidate, expected)| {
            let mut options = setup.stream(6, 2);
            let label = candidate.action.to_string();
            options.scenario.plan = setup.plan(&[candidate], 1);
            Variant {
                label,
                run: VariantRun::Stream(Box::new(options)),
                expected,
            }
        })
        .collect())
}

fn node_action(node: NodeTarget, action: NodeFault) -> Action {
    Action::Broker(Fault::Node { node, action })
}

/// The leader of the run topic's busiest partition (most messages when a fault first
/// names it).
fn leader_of_busiest() -> NodeTarget {
    NodeTarget::Leader {
        topic: "trades".into(),
        partition: None,
    }
}

fn follower_of_busiest(index: usize) -> NodeTarget {
    NodeTarget::Follower {
        topic: "trades".into(),
        partition: None,
        index,
    }
}

/// `broker-failure` on Apache Kafka: the replication lessons, each on a fresh three-node
/// cluster (RF 3, min.insync.replicas 2 unless the row says otherwise).
fn replication_lessons(setup: &Setup) -> Vec<Variant> {
    // Every row's first fault falls at the same seeded moment in the middle of publishing.
    let at_ms = setup.plan(&[candidate(Action::Service(ServiceFault::Join), (0, 0))], 1).steps[0].at_ms;
    let step = |offset_ms: u64, for_ms: u64, node: NodeTarget, action: NodeFault| PlanStep {
        at_ms: at_ms + offset_ms,
        for_ms: Some(for_ms),
        action: node_action(node, action),
    };
    let row = |label: &str, plan: Vec<PlanStep>, expected: Expected, change: &dyn Fn(&mut StreamOptions)| {
        let mut options = setup.stream(6, 2);
        // Failovers and a lost quorum take seconds: the lag must be given time to drain.
        options.stall_timeout = Duration::from_secs(30);
        let mut plan = FaultPlan::fixed(plan);
        plan.seed = setup.seed;
        options.scenario.plan = plan;
        change(&mut options);
        Variant {
            label: label.to_owned(),
            run: VariantRun::Stream(Box::new(options)),
            expected,
        }
    };
    let acks_leader_only = |options: &mut StreamOptions| {
        options.publisher.acks = Acks::Leader;
        options.publisher.idempotence = false;
        options.scenario.topic_configs = vec![("unclean.leader.election.enable".into(), "true".into())];
        // What the dead leader acknowledged alone never arrives: the run stops waiting for it.
        options.stall_timeout = Duration::from_secs(15);
    };
    vec![
        row(
            "leader of the busiest partition killed, acks=all",
            vec![step(0, 4_000, leader_of_busiest(), NodeFault::Kill)],
            Expected::pass(
                "an acknowledged write is on at least two replicas (min.insync.replicas=2): a follower in sync takes over, nothing acknowledged is lost and order holds; the effect gives the time to a new leader",
            )
            .showing("led by node"),
            &|_| {},
        ),
        row(
            "acks=1, followers stopped, leader killed",
            vec![
                step(0, 4_500, follower_of_busiest(0), NodeFault::Pause),
                step(0, 4_500, follower_of_busiest(1), NodeFault::Pause),
                step(2_500, 8_000, leader_of_busiest(), NodeFault::Kill),
            ],
            Expected::fail(
                Violation::Lost,
                "with its followers stopped, the leader acknowledges writes alone (acks=1); it dies, a follower that never had them becomes leader (unclean leader election allowed on this topic) and the restarted old leader truncates them: acknowledged events are gone",
            ),
            &acks_leader_only,
        ),
        row(
            "two of three nodes killed, min.insync.replicas=2",
            vec![
                step(0, 9_000, follower_of_busiest(0), NodeFault::Kill),
                step(5_000, 4_000, follower_of_busiest(1), NodeFault::Kill),
            ],
            Expected::pass(
                "with two of three nodes down no acks=all write is acknowledged: the survivor cannot reach min.insync.replicas, and in combined mode the controller quorum is lost with them, so the ISR cannot even shrink (writes time out rather than fail with NOT_ENOUGH_REPLICAS; the next row shows that refusal). Nothing acknowledged is lost and the lag drains once they return",
            ),
            &|_| {},
        ),
        row(
            "leader's followers cut off from it, min.insync.replicas=2",
            // The ISR shrinks 6 to 9 s after the cut (replica.lag.time.max.ms=6000, checked
            // every 3 s): 16 s leave several seconds of refusals.
            vec![step(0, 16_000, leader_of_busiest(), NodeFault::CutReplication)],
            Expected::pass(
                "its followers stop fetching; after replica.lag.time.max.ms the leader shrinks the ISR to itself, below min.insync.replicas: acks=all writes are refused with NOT_ENOUGH_REPLICAS and retried, never acknowledged by one copy; once replication returns they are written and nothing is lost",
            )
            .showing("NOT_ENOUGH_REPLICAS"),
            &|_| {},
        ),
        row(
            "replication factor 1, the only replica's node killed",
            vec![step(0, 5_000, leader_of_busiest(), NodeFault::Kill)],
            Expected::pass(
                "a topic with one replica: its partitions on the dead node have no leader until it returns; their events wait in the producer (retried within message.timeout.ms) and arrive late. Had its disk died with it, they would be gone",
            )
            .showing("had no leader"),
            &|options| {
                options.scenario.replication_factor = Some(1);
                // One replica cannot satisfy the cluster's min.insync.replicas of 2.
                options.scenario.topic_configs = vec![("min.insync.replicas".into(), "1".into())];
            },
        ),
        row(
            "active controller killed",
            vec![step(0, 4_000, NodeTarget::Controller, NodeFault::Kill)],
            Expected::pass("the other two voters elect a new active controller; partitions the node led move; the run passes")
                .showing("became the active controller"),
            &|_| {},
        ),
    ]
}

fn poller_vs_stream(setup: &Setup) -> Vec<Variant> {
    vec![
        Variant {
            label: "poller".into(),
            run: VariantRun::Poller(RunOptions {
                workload: setup.workload(),
                poller: PollerConfig {
                    poll_interval: Duration::from_millis(100),
                    batch_size: 500,
                    pollers: 1,
                    shard_by_account: false,
                },
                stall_timeout: Duration::from_secs(30),
            }),
            expected: Expected::pass("one poller keeps order; its latency is bounded below by the poll interval"),
        },
        Variant {
            label: "stream".into(),
            run: VariantRun::Stream(Box::new(setup.stream(12, 3))),
            expected: Expected::pass("keyed partitions keep each account's order while consumers work in parallel"),
        },
    ]
}

async fn run_variant(store: &Store, arguments: &ExperimentArgs, variant: &Variant) -> anyhow::Result<RunRecord> {
    match &variant.run {
        VariantRun::Poller(options) => {
            let (sender, receiver) = watch::channel(RunProgress::default());
            let drawing = progress::spawn("poller".into(), receiver);
            let record = tradeflow_poller::run(store, options, &sender).await;
            drop(sender);
            let _ = drawing.await;
            record.context("running the poller")
        }
        VariantRun::Stream(options) => {
            let cluster = cluster(arguments)?;
            print!("{}", options.scenario.plan);
            run_stream::run_once(store, &cluster, options).await
        }
    }
}

/// A fresh broker for one variant.
fn cluster(arguments: &ExperimentArgs) -> anyhow::Result<Cluster> {
    run_stream::cluster(arguments.broker, arguments.bootstrap.as_deref(), true)
}

fn verdict_table(name: &str, seed: u64, broker: &str, outcomes: &[VariantOutcome]) -> String {
    let header = [
        "variant",
        "configuration",
        "faults applied",
        "lost",
        "dup",
        "reord",
        "bad bal",
        "expected",
        "as expected",
    ];
    let rows: Vec<[String; 9]> = outcomes
        .iter()
        .map(|outcome| {
            let config = &outcome.config;
            let get = |key: &str| {
                config
                    .get(key)
                    .map(|value| value.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            [
                outcome.label.clone(),
                format!(
                    "p={} c={} rf={} acks={} idem={} commit={} dlq={}",
                    get("partitions"),
                    get("consumers"),
                    get("replication_factor"),
                    get("acks"),
                    get("enable_idempotence"),
                    get("commit_policy"),
                    get("dead_letter")
                ),
                outcome.faults.iter().filter(|fault| fault.error.is_none()).count().to_string(),
                outcome.check.lost.to_string(),
                outcome.check.duplicated.to_string(),
                outcome.check.reordered.to_string(),
                outcome.check.bad_balances.to_string(),
                outcome.expected_detail.clone(),
                match (outcome.faults_fired, outcome.as_expected) {
                    (false, _) => "UNKNOWN",
                    (true, true) => "yes",
                    (true, false) => "NO",
                }
                .to_owned(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = format!("experiment {name}, seed {seed}, broker {broker}\n");
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(text, "{}", line(header.to_vec()));
    let _ = writeln!(
        text,
        "{}",
        widths.iter().map(|width| "-".repeat(*width)).collect::<Vec<_>>().join("-+-")
    );
    for row in &rows {
        let _ = writeln!(text, "{}", line(row.iter().map(String::as_str).collect()));
    }
    for outcome in outcomes {
        let _ = writeln!(text, "- {}: {}", outcome.label, outcome.note);
        for fault in &outcome.faults {
            let _ = writeln!(
                text,
                "    at {:.2} s: {}{}{}",
                fault.at_ms as f64 / 1000.0,
                fault.fault,
                fault
                    .error
                    .as_ref()
                    .map(|error| format!(" (not applied: {error})"))
                    .unwrap_or_default(),
                fault
                    .effect
                    .as_ref()
                    .map(|effect| format!("\n      -> {effect}"))
                    .unwrap_or_default()
            );
        }
    }
    text
}
