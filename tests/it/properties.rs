//! Properties of the whole pipeline (publisher → broker → balance service → store), with
//! proptest generating the workload and the fault schedule of each case and
//! `tradeflow-check` judging every run:
//!
//! - per-account order: `account_seq` increases in apply order (`reordered` = 0);
//! - nothing acknowledged is lost (`lost` = 0);
//! - nothing is applied twice (`duplicated` = 0);
//! - the final state equals the oracle's (no mismatched account, no bad balance);
//! - committed offsets only move forward (as the lag probe reads them from the broker,
//!   outside the consumers: a zombie's stale commit would move one back); held on the mock,
//!   tansu and Kafka, printed but not claimed in a container (see
//!   `Property::WITHOUT_FORWARD_COMMITS`).
//!
//! They hold on the mock cluster (many cases), the tansu process and a broker container
//! (fewer cases) under broker faults, consumer crashes and restarts, consumers joining and
//! leaving, and poison messages. Three lessons are properties that must FAIL: each of those
//! tests passes only when proptest finds the counterexample (idempotence off with requests
//! in flight and produce errors; a naive cutover to more partitions; offsets committed
//! before the database commit under a crash).
//!
//! Knobs (environment): `TRADEFLOW_PROPERTY_CASES` (or proptest's `PROPTEST_CASES`) sets
//! the number of cases of every property; `TRADEFLOW_PROPERTY_SEED` replays a run's cases
//! (each test prints the seed it used); `TRADEFLOW_PROPERTY_SHRINK_ITERS` bounds shrinking
//! (each shrink step is a real run of a few seconds). Failing cases are saved under
//! `tests/it/regressions/` (committed) and replayed first on the next run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::fmt;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_cluster::faults::{Api, NodeFault, NodeTarget, RequestError};
use tradeflow_cluster::plan::{Action, FaultPlan, PlanStep, ServiceFault};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Backend, Fault, MOCK_BROKERS};
use tradeflow_domain::{EventMix, RateProfile, WorkloadConfig};
use tradeflow_lab::lessons::{auto_commit_crash, producer_retries, repartition_cutover};
use tradeflow_store::Store;
use tradeflow_stream::process::ServiceProcesses;
use tradeflow_stream::{CommitPolicy, Runbook, Scenario, StreamOptions};

/// Cases of every property; overrides the per-backend defaults below.
const CASES_VAR: &str = "TRADEFLOW_PROPERTY_CASES";
/// Seed of the case generator (printed by every test).
const SEED_VAR: &str = "TRADEFLOW_PROPERTY_SEED";
/// Most shrink steps after a failure.
const SHRINK_VAR: &str = "TRADEFLOW_PROPERTY_SHRINK_ITERS";
/// Default shrink steps: each is a whole run, so a handful keeps a failing test to minutes.
const SHRINK_ITERS_DEFAULT: u32 = 8;
/// Default cases: a mock case takes a few seconds, a tansu or container case several
/// times that (process or container start, slower group joins), a Kafka case starts three
/// JVMs and its faults take failovers.
fn default_cases(backend: Backend) -> u32 {
    match backend {
        Backend::Mock => 8,
        Backend::Tansu => 5,
        Backend::Kafka | Backend::Container | Backend::External => 3,
    }
}

/// How long a run may go without applying anything before what is unapplied counts as
/// lost: longer than a group can stand still without losing anything. On every backend a
/// member whose coordinator connection goes deaf after a broker fault notices it only when
/// its request times out (`socket.timeout.ms`, 10 s); meanwhile its session runs out at the
/// broker (6 s) and the rebalance waits up to `max.poll.interval.ms` (20 s) for the members
/// to rejoin: some 36 s in which the group applies nothing. The mock had 20 s, and CI's run
/// of 2026-12-01 failed the pipeline property on its saved case of broker 3 (the group's
/// coordinator) down while a consumer joins (consumer-0 timed out of its session after 6 s
/// without an answer from the coordinator); the log CI kept did not name the property.
/// Replayed here the same day (property seed 13094043769413327861, that case first, beside
/// two busy loops): with the timeout cut to 16 s it came out "lost 2" in 1 of 4 runs, one
/// where both first members timed out of their sessions, and so did its shrunk case; at
/// 40 s it drained in 8 of 8, two of them with both sessions timed out. The record now says
/// how a run ended (`ended`: drained, stalled or at the log's end), and a failure names it.
/// tansu takes several seconds per rebalance, and a failover on Kafka waits out
/// broker.session.timeout.ms as well.
const STALL_TIMEOUT: Duration = Duration::from_secs(40);

/// The workload half of a case: what is sent, how fast, and the shape of the pipeline.
#[derive(Debug, Clone)]
struct Shape {
    seed: u64,
    events: u64,
    accounts: u32,
    rate_per_s: f64,
    skew: f64,
    mix: EventMix,
    partitions: i32,
    consumers: u32,
}

impl Shape {
    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            seed: self.seed,
            events: self.events,
            accounts: self.accounts,
            rate_per_s: self.rate_per_s,
            profile: RateProfile::Steady,
            skew: self.skew,
            mix: self.mix,
        }
    }

    fn publishing_ms(&self) -> u64 {
        (self.events as f64 / self.rate_per_s * 1_000.0) as u64
    }
}

/// One step of a fault schedule, timed as a fraction of the publishing time so that it
/// shrinks independently of the workload.
#[derive(Debug, Clone)]
struct Step {
    at_permille: u64,
    for_ms: Option<u64>,
    action: Action,
}

/// A whole case: a workload and a fault schedule.
#[derive(Debug, Clone)]
struct Case {
    shape: Shape,
    schedule: Vec<Step>,
}

impl Case {
    /// The fault plan this case runs: steps placed on the publishing time, each
    /// consumer fault aimed at a consumer that is running then (the drawn index picks
    /// among them), steps with no such consumer dropped, and leaves dropped where they
    /// would leave the group empty (a property about an empty group says nothing).
    fn plan(&self) -> FaultPlan {
        let publishing = self.shape.publishing_ms();
        let mut members = Members::new(self.shape.consumers);
        let mut steps: Vec<PlanStep> = Vec::new();
        let mut ordered = self.schedule.clone();
        ordered.sort_by_key(|step| step.at_permille);
        for step in ordered {
            let at_ms = publishing * step.at_permille / 1_000;
            let action = match step.action {
                Action::Service(ServiceFault::Join) => {
                    members.join();
                    step.action
                }
                Action::Service(ServiceFault::Leave { consumer }) => match members.take(consumer, at_ms, None, 2) {
                    Some(consumer) => Action::Service(ServiceFault::Leave { consumer }),
                    None => continue,
                },
                Action::Service(ServiceFault::Crash { consumer }) => match members.take(consumer, at_ms, step.for_ms, 1) {
                    Some(consumer) => Action::Service(ServiceFault::Crash { consumer }),
                    None => continue,
                },
                action => action,
            };
            steps.push(PlanStep {
                at_ms,
                for_ms: step.for_ms,
                action,
            });
        }
        let mut plan = FaultPlan::fixed(steps);
        plan.seed = self.shape.seed;
        plan
    }
}

/// The consumers of a case's fleet over its plan, by index as the fleet numbers them: for
/// aiming each consumer fault at one that exists and runs.
struct Members {
    /// Per index: running from this time on (ms), or `None` once it left for good.
    back_at: Vec<Option<u64>>,
}

impl Members {
    fn new(consumers: u32) -> Members {
        Members {
            back_at: vec![Some(0); consumers as usize],
        }
    }

    fn join(&mut self) {
        self.back_at.push(Some(0));
    }

    /// Takes a consumer running at `at_ms`, the `drawn`th of them (modulo their count), out
    /// until `at_ms + for_ms` (for good without `for_ms`); `None` when fewer than
    /// `at_least` are running.
    fn take(&mut self, drawn: u32, at_ms: u64, for_ms: Option<u64>, at_least: usize) -> Option<u32> {
        let running: Vec<usize> = (0..self.back_at.len())
            .filter(|index| self.back_at[*index].is_some_and(|back| back <= at_ms))
            .collect();
        if running.len() < at_least {
            return None;
        }
        let index = running[drawn as usize % running.len()];
        self.back_at[index] = for_ms.map(|down| at_ms + down);
        u32::try_from(index).ok()
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = &self.shape;
        writeln!(
            f,
            "workload seed {} events {} accounts {} rate {}/s skew {:.2} mix (withdrawal {:.2}, buy {:.2}, sell {:.2}); {} partitions, {} consumers",
            shape.seed,
            shape.events,
            shape.accounts,
            shape.rate_per_s,
            shape.skew,
            shape.mix.withdrawal,
            shape.mix.buy,
            shape.mix.sell,
            shape.partitions,
            shape.consumers
        )?;
        write!(f, "{}", self.plan())
    }
}

fn mix() -> impl Strategy<Value = EventMix> {
    (0.0..=0.3_f64, 0.0..=0.5_f64, 0.0..=0.4_f64).prop_map(|(withdrawal, buy, sell)| EventMix {
        withdrawal,
        buy,
        sell: sell.min(1.0 - withdrawal - buy),
    })
}

/// Workloads: any seed, a few hundred to a couple of thousand events, one hot account to
/// many, uniform to steeply skewed keys, varied event mixes and rates, 2 to 8 partitions,
/// 1 to 3 consumers. Shrinking works on the sizes (events first, then accounts, partitions,
/// consumers: each step is a whole run, so the budget goes where it makes the case
/// smaller); the seed, rate, skew and mix stay as drawn.
fn shape(events: std::ops::RangeInclusive<u64>, rates: &'static [f64]) -> impl Strategy<Value = Shape> {
    (
        events,
        1_u32..=60,
        2_i32..=8,
        1_u32..=3,
        any::<u64>().no_shrink(),
        proptest::sample::select(rates).no_shrink(),
        (0.0..=2.5_f64).no_shrink(),
        mix().no_shrink(),
    )
        .prop_map(|(events, accounts, partitions, consumers, seed, rate_per_s, skew, mix)| Shape {
            seed,
            events,
            accounts,
            rate_per_s,
            skew,
            mix,
            partitions,
            consumers,
        })
}

fn step(action: impl Strategy<Value = (Action, Option<u64>)>) -> impl Strategy<Value = Step> {
    (0_u64..=900, action).prop_map(|(at_permille, (action, for_ms))| Step {
        at_permille,
        for_ms,
        action,
    })
}

/// Balance-service faults: a crash mid-batch and a restart, a consumer joining, the first
/// consumer leaving, poison messages. No leave on tansu (process or container): its group
/// coordinator can lose a member that leaves while a rebalance is going, and the group
/// then never settles (seen in CI on the consumer-scaling experiment), which would test
/// tansu rather than the pipeline.
fn service_action(backend: Backend) -> BoxedStrategy<(Action, Option<u64>)> {
    let crash = (0_u32..=2, 200_u64..=1_500).prop_map(|(consumer, down)| (Action::Service(ServiceFault::Crash { consumer }), Some(down)));
    let join = Just((Action::Service(ServiceFault::Join), None));
    let poison = (1_u32..=3).prop_map(|count| (Action::Service(ServiceFault::Poison { count }), None));
    match backend {
        Backend::Mock | Backend::Kafka | Backend::External => prop_oneof![
            crash,
            join,
            Just((Action::Service(ServiceFault::Leave { consumer: 0 }), None)),
            poison
        ]
        .boxed(),
        Backend::Tansu | Backend::Container => prop_oneof![crash, join, poison].boxed(),
    }
}

/// Broker faults the backend supports and that a correct pipeline survives. Produce
/// request errors are left out on the mock: it does not check an idempotent producer's
/// sequences, so an error there can lose an acknowledged event (the producer-retries
/// experiment shows it), which would be the mock's flaw and not the pipeline's.
fn broker_action(backend: Backend) -> BoxedStrategy<(Action, Option<u64>)> {
    let proxy = || {
        prop_oneof![
            (5_u64..=60, 0_u64..=20, 300_u64..=2_000).prop_map(|(latency_ms, jitter_ms, span)| (
                Action::Broker(Fault::ProxyChaos {
                    chaos: Chaos {
                        latency_ms,
                        jitter_ms,
                        ..Chaos::default()
                    }
                }),
                Some(span)
            )),
            Just((Action::Broker(Fault::ProxyReset), None)),
        ]
    };
    match backend {
        Backend::Mock => prop_oneof![
            (1..=MOCK_BROKERS, 300_u64..=2_000).prop_map(|(broker, span)| (Action::Broker(Fault::BrokerDown { broker }), Some(span))),
            (1..=MOCK_BROKERS, 5_u64..=300, 300_u64..=2_000)
                .prop_map(|(broker, delay_ms, span)| (Action::Broker(Fault::RoundTripTime { broker, delay_ms }), Some(span))),
            (0_i32..=1, 1..=MOCK_BROKERS).prop_map(|(partition, broker)| (
                Action::Broker(Fault::LeaderMove {
                    topic: "trades".into(),
                    partition,
                    broker
                }),
                None
            )),
        ]
        .boxed(),
        Backend::Tansu => prop_oneof![
            (300_u64..=1_500).prop_map(|span| (Action::Broker(Fault::Pause), Some(span))),
            proxy()
        ]
        .boxed(),
        Backend::Container => prop_oneof![
            (300_u64..=1_500).prop_map(|span| (Action::Broker(Fault::Pause), Some(span))),
            (300_u64..=1_500).prop_map(|span| (Action::Broker(Fault::Disconnect), Some(span))),
            proxy(),
        ]
        .boxed(),
        Backend::Kafka => kafka_node_action(),
        // No broker faults can be injected into an external cluster from here.
        Backend::External => service_action(backend),
    }
}

/// One node of the three-node Kafka cluster, by role (a partition's leader or follower,
/// the active controller) or by id: killed and restarted with its data, paused, or slowed
/// or reset at its client proxy. With RF 3 and min.insync.replicas 2 a correct pipeline
/// survives any one of them.
fn kafka_node_action() -> BoxedStrategy<(Action, Option<u64>)> {
    let target = prop_oneof![
        (0_i32..=1).prop_map(|partition| NodeTarget::Leader {
            topic: "trades".into(),
            partition: Some(partition)
        }),
        (0_i32..=1, 0_usize..=1).prop_map(|(partition, index)| NodeTarget::Follower {
            topic: "trades".into(),
            partition: Some(partition),
            index
        }),
        Just(NodeTarget::Controller),
        (1_i32..=3).prop_map(|id| NodeTarget::Id { id }),
    ];
    let action = prop_oneof![
        (1_000_u64..=4_000).prop_map(|span| (NodeFault::Kill, Some(span))),
        (300_u64..=2_000).prop_map(|span| (NodeFault::Pause, Some(span))),
        (5_u64..=60, 300_u64..=2_000).prop_map(|(latency_ms, span)| (
            NodeFault::ProxyChaos {
                chaos: Chaos {
                    latency_ms,
                    ..Chaos::default()
                }
            },
            Some(span)
        )),
        Just((NodeFault::ProxyReset, None)),
    ];
    (target, action)
        .prop_map(|(node, (action, span))| (Action::Broker(Fault::Node { node, action }), span))
        .boxed()
}

/// Cases for the properties that must hold: any workload, up to four faults of either kind.
fn any_case(backend: Backend) -> impl Strategy<Value = Case> {
    (
        shape(200..=2_000, &[1_000.0, 2_000.0, 4_000.0]),
        proptest::collection::vec(step(prop_oneof![broker_action(backend), service_action(backend)]), 0..=4),
    )
        .prop_map(|(shape, schedule)| Case { shape, schedule })
}

fn options(case: &Case) -> StreamOptions {
    StreamOptions {
        partitions: case.shape.partitions,
        consumers: case.shape.consumers,
        batch_size: 100,
        stall_timeout: STALL_TIMEOUT,
        scenario: Scenario {
            plan: case.plan(),
            ..Scenario::default()
        },
        ..StreamOptions::new(case.shape.workload())
    }
}

fn env_u32(name: &str) -> Option<u32> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(_) => panic!("{name}={value:?} is not a whole number"),
    }
}

/// A runner with the case count, seed, shrink bound and regression file of one property.
/// Prints the seed first, so any run can be replayed.
fn runner(name: &str, backend: Backend, default_cases: u32, default_shrink_iters: u32) -> TestRunner {
    let cases = env_u32(CASES_VAR).or_else(|| env_u32("PROPTEST_CASES")).unwrap_or(default_cases);
    let seed = std::env::var(SEED_VAR)
        .ok()
        .map(|value| {
            value
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{SEED_VAR}={value:?} is not a u64"))
        })
        .unwrap_or_else(rand_seed);
    let max_shrink_iters = env_u32(SHRINK_VAR).unwrap_or(default_shrink_iters);
    eprintln!("{name} on {backend:?}: {cases} cases, seed {seed} (replay with {SEED_VAR}={seed}), at most {max_shrink_iters} shrink steps");
    let regressions: &'static str = Box::leak(format!("it/regressions/{name}.txt").into_boxed_str());
    let config = Config {
        cases,
        max_shrink_iters,
        // A case whose faults did not fire is rejected and another drawn; a property that
        // keeps drawing such cases is broken, and says so instead of running for hours.
        max_global_rejects: cases * 2,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    };
    let mut bytes = [0_u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

/// A fresh broker of the backend, or `None` (outside CI) when it cannot be found.
fn cluster(backend: Backend, test: &str) -> Option<tradeflow_cluster::Cluster> {
    match backend {
        Backend::Mock => Some(tradeflow_tests::mock_cluster(MOCK_BROKERS)),
        Backend::Tansu => tradeflow_tests::tansu_cluster(test),
        Backend::Kafka => tradeflow_tests::kafka_cluster(test),
        Backend::Container => tradeflow_tests::container_cluster(test),
        Backend::External => match Backend::External.start(None) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                tradeflow_tests::server_missing(test, "external", "an external cluster", &error.to_string());
                None
            }
        },
    }
}

/// Runs one case on a fresh broker and a fresh SQLite store, the balance service's
/// consumers as `tradeflow balance-service` processes (a crash is a SIGKILL from outside;
/// a case that holds every consumer runs them in the run instead); `None` when the backend
/// is missing (outside CI).
async fn run_case(backend: Backend, test: &str, options: &StreamOptions) -> Option<RunRecord> {
    let cluster = cluster(backend, test)?;
    let (store, directory): (Store, _) = tradeflow_tests::sqlite_store().await;
    let mut options = options.clone();
    // A hold (every consumer stops reading but stays in its group) is a stall, not a
    // crash: only consumers inside the run can do it, so such a case runs them there.
    let holds = options
        .scenario
        .plan
        .steps
        .iter()
        .any(|step| matches!(step.action, Action::Service(ServiceFault::HoldAll | ServiceFault::ReleaseAll)));
    if !holds {
        options.scenario.processes = Some(ServiceProcesses {
            executable: tradeflow_tests::tradeflow_executable(),
            store: tradeflow_tests::sqlite_config(directory.path()),
        });
    }
    let (progress, _receiver) = watch::channel(RunProgress::default());
    let record = tradeflow_stream::run(&store, &cluster, &options, &progress)
        .await
        .unwrap_or_else(|error| panic!("the run completes: {error:#}"));
    Some(record)
}

/// A case whose planned faults did not all fire (or whose crash caught nothing) says
/// nothing about the property: it is rejected and another case drawn, never passed.
fn fired(options: &StreamOptions, record: &RunRecord) -> Result<(), TestCaseError> {
    if tradeflow_lab::faults_fired(options.scenario.plan.timeline().len(), record) {
        return Ok(());
    }
    let why: Vec<String> = record
        .faults
        .iter()
        .map(|fault| format!("{}: {}", fault.fault, fault.error.as_deref().unwrap_or("applied")))
        .collect();
    eprintln!("  -> rejected: a planned fault did not fire ({})", why.join("; "));
    Err(TestCaseError::reject("a planned fault did not fire"))
}

/// Whether every event a run on the mock cluster lost was lost by the broker itself: it
/// acknowledged them at offsets past the end of the log it still served when the run
/// ended (`config.acked_past_log_end`), so no consumer could read them. The mock has no
/// replication and no disk; after a broker-down it was seen serving a partition's end two
/// offsets short of what it had acknowledged there for seconds (the saved case of workload
/// seed 2390823530616803027, 2026-12-02, in about one run in four beside two other runs of
/// it, pipelining on or off, on the code of the stop before too). A run now waits for
/// such events up to its stall timeout, and they came each time since; a case whose
/// broker never served them cannot show that the pipeline loses nothing, nor that its
/// balances match the oracle: it is rejected, not passed. A run that also lost an event its
/// broker's log held is judged as any other. On the other backends a broker that did this
/// would be losing acknowledged writes, which the properties exist to catch.
fn lost_by_the_mock(backend: Backend, record: &RunRecord) -> bool {
    let past_log_end = record.config["acked_past_log_end"].as_u64().unwrap_or(0);
    matches!(backend, Backend::Mock) && record.check.lost > 0 && record.check.lost <= past_log_end
}

/// Which property a check looks at.
#[derive(Debug, Clone, Copy)]
enum Property {
    PerAccountOrder,
    NothingLost,
    NothingTwice,
    MatchesOracle,
    CommittedForward,
}

impl Property {
    const ALL: [Property; 5] = [
        Property::PerAccountOrder,
        Property::NothingLost,
        Property::NothingTwice,
        Property::MatchesOracle,
        Property::CommittedForward,
    ];

    /// In a container (one Kafka broker, where there is Docker) the committed offsets are
    /// not held to moving forward: that backend has not been run since the fix below.
    ///
    /// On three Kafka brokers CI once saw the group's committed offsets of two partitions go
    /// back (139 to 1, 309 to 156) by the end of a run whose follower of trades[0] was
    /// SIGKILLed for 3.6 s, with every event applied once (property seed
    /// 17971411837427491161, workload seed 4621552154312786239; the same case held when
    /// replayed). The likely cause: a consumer whose position librdkafka reset to the start
    /// (`auto.offset.reset`) while the group's coordinator moved, and which could not read
    /// the committed offset either, committed the offset of what it read again. The balance
    /// service now never commits below the offset it knows committed, and holds back a
    /// partition's commit until it has read that offset (`forward_only`). Since then the
    /// property held on Kafka in 22 cases (`TRADEFLOW_PROPERTY_CASES=6` with that seed, and
    /// 16 with seed 6304616456485398056, 10 of them with faults), and CI claims it there.
    const WITHOUT_FORWARD_COMMITS: [Property; 4] = [
        Property::PerAccountOrder,
        Property::NothingLost,
        Property::NothingTwice,
        Property::MatchesOracle,
    ];

    /// The property on a run's record: `Err` names what falsified it.
    fn check(self, record: &RunRecord) -> Result<(), String> {
        let check = &record.check;
        let (holds, what) = match self {
            Property::PerAccountOrder => (
                check.reordered == 0,
                format!("per-account order: {} applies out of order", check.reordered),
            ),
            Property::NothingLost => (check.lost == 0, format!("nothing acknowledged lost: {} lost", check.lost)),
            Property::NothingTwice => (
                check.duplicated == 0,
                format!("nothing applied twice: {} duplicated", check.duplicated),
            ),
            Property::MatchesOracle => (
                check.mismatched_accounts == 0 && check.bad_balances == 0,
                format!(
                    "final state equals the oracle's: {} accounts differ, {} bad balances",
                    check.mismatched_accounts, check.bad_balances
                ),
            ),
            Property::CommittedForward => {
                let backward = tradeflow_check::backward_commits(&record.lag);
                (backward.is_empty(), format!("committed offsets only move forward: {backward:?}"))
            }
        };
        if holds { Ok(()) } else { Err(format!("falsified {what}")) }
    }
}

/// Checks `properties` on every case drawn from `strategy`. Fails with the shrunk case
/// and the seed when one is falsified.
fn holds(name: &str, backend: Backend, strategy: impl Strategy<Value = Case>, properties: &[Property]) {
    if cluster(backend, name).is_none() {
        return; // said loudly (and a failure in CI) by the helper
    }
    let runtime = runtime();
    let mut runner = runner(name, backend, default_cases(backend), SHRINK_ITERS_DEFAULT);
    let result = runner.run(&strategy, |case| {
        eprintln!("case: {case}");
        let options = options(&case);
        let record = runtime
            .block_on(run_case(backend, name, &options))
            .expect("the backend was there a moment ago");
        eprintln!("  -> {}", summary(&record));
        fired(&options, &record)?;
        let broker_lost = lost_by_the_mock(backend, &record);
        for property in properties {
            if broker_lost && matches!(property, Property::NothingLost | Property::MatchesOracle) {
                continue;
            }
            property
                .check(&record)
                .map_err(|reason| TestCaseError::fail(format!("{reason}\n{}", record.table())))?;
        }
        if broker_lost {
            eprintln!(
                "  -> rejected: the mock cluster acknowledged {} events past the end of the log it served (its broker-down loses them); every event in its log was applied, and the other properties held, but this case cannot show that nothing is lost",
                record.check.lost
            );
            return Err(TestCaseError::reject("the mock cluster lost acknowledged events itself"));
        }
        Ok(())
    });
    match result {
        Ok(()) => eprintln!("{name} on {backend:?}: every property held in {} cases", runner.config().cases),
        Err(TestError::Abort(reason)) => panic!("{name}: {reason}"),
        Err(TestError::Fail(reason, case)) => {
            // The falsified property comes again on the last line: a CI log cut to its
            // tail keeps it.
            let falsified = reason.message().lines().next().unwrap_or_default().to_owned();
            panic!(
                "{name} on {backend:?} FAILED: {reason}\nminimal case (replay with the seed printed above):\n{case}\n{name} on {backend:?} {falsified}"
            )
        }
    }
}

/// Runs cases built by `options` until `property` is falsified; passes only then, and
/// prints the shrunk counterexample.
fn must_fail(name: &str, strategy: impl Strategy<Value = Case>, options: impl Fn(&Case) -> StreamOptions, property: Property) {
    let runtime = runtime();
    // No shrinking by default: the counterexample is the lesson, and each shrink step is a
    // whole run that ends in the stall timeout (what was lost never comes).
    let mut runner = runner(name, Backend::Mock, 6, 0);
    let result = runner.run(&strategy, |case| {
        eprintln!("case: {case}");
        let options = options(&case);
        let record = runtime
            .block_on(run_case(Backend::Mock, name, &options))
            .expect("the mock cluster is always there");
        eprintln!("  -> {}", summary(&record));
        fired(&options, &record)?;
        property.check(&record).map_err(TestCaseError::fail)
    });
    match result {
        Err(TestError::Fail(reason, case)) => {
            eprintln!(
                "{name}: counterexample found, as the lesson says: {reason}\nminimal case (replay with the seed printed above):\n{case}"
            );
        }
        Err(TestError::Abort(reason)) => panic!("{name}: {reason}"),
        Ok(()) => panic!(
            "{name}: no counterexample in {} cases: the property held where the lesson says it breaks",
            runner.config().cases
        ),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn summary(record: &RunRecord) -> String {
    let check = &record.check;
    format!(
        "applied {}/{}, lost {}, duplicated {}, reordered {}, bad balances {}, mismatched {}, faults {}, committed offsets moved back {:?}, ended {}",
        record.applied,
        record.events,
        check.lost,
        check.duplicated,
        check.reordered,
        check.bad_balances,
        check.mismatched_accounts,
        record.faults.len(),
        tradeflow_check::backward_commits(&record.lag)
            .iter()
            .map(|moved| format!("p{} {}->{} at {:.1} s", moved.partition, moved.from, moved.to, moved.t_s))
            .collect::<Vec<_>>(),
        record.config.get("ended").and_then(serde_json::Value::as_str).unwrap_or("-")
    )
}

#[test]
fn the_pipeline_keeps_order_loses_nothing_applies_once_and_matches_the_oracle_on_the_mock() {
    holds("pipeline_on_mock", Backend::Mock, any_case(Backend::Mock), &Property::ALL);
}

#[test]
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
fn the_pipeline_keeps_order_loses_nothing_applies_once_and_matches_the_oracle_on_tansu() {
    holds("pipeline_on_tansu", Backend::Tansu, any_case(Backend::Tansu), &Property::ALL);
}

#[test]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
fn the_pipeline_keeps_order_loses_nothing_applies_once_and_matches_the_oracle_on_kafka() {
    holds("pipeline_on_kafka", Backend::Kafka, any_case(Backend::Kafka), &Property::ALL);
}

#[test]
#[ignore = "needs a Docker engine with the local tansu image (just image)"]
fn the_pipeline_keeps_order_loses_nothing_applies_once_and_matches_the_oracle_in_a_container() {
    holds(
        "pipeline_in_container",
        Backend::Container,
        any_case(Backend::Container),
        &Property::WITHOUT_FORWARD_COMMITS,
    );
}

/// Lesson: without idempotence, a produce request that fails and is retried lands behind
/// the later requests in flight that succeeded. Slow answers (50 ms on every broker) keep
/// several requests in flight; `NotLeader` errors hit some of them.
#[test]
fn idempotence_off_with_requests_in_flight_and_produce_errors_breaks_per_account_order() {
    let strategy = (
        shape(1_500..=3_000, &[2_000.0, 4_000.0]),
        proptest::collection::vec(
            step((1_usize..=3).prop_map(|count| {
                (
                    Action::Broker(Fault::RequestErrors {
                        api: Api::Produce,
                        error: RequestError::NotLeader,
                        count,
                    }),
                    None,
                )
            })),
            1..=8,
        ),
    )
        .prop_map(|(shape, schedule)| Case { shape, schedule });
    must_fail(
        "idempotence_off_reorders",
        strategy,
        |case| {
            let mut options = options(case);
            let publishing = case.shape.publishing_ms();
            options.scenario.plan.steps.extend(producer_retries::slow_mock_brokers(publishing));
            options.scenario.plan.steps.sort_by_key(|step| step.at_ms);
            options.publisher = producer_retries::publisher(false);
            options
        },
        Property::PerAccountOrder,
    );
}

/// Lesson: moving a keyed topic to more partitions without draining the old one first
/// applies an account's new events (new topic) before its older ones (still in the old
/// topic, whose consumers are behind: held from a second before the switch).
#[test]
fn a_naive_cutover_to_more_partitions_breaks_per_account_order() {
    let strategy = (shape(1_000..=3_000, &[2_000.0]), 300_u64..=700).prop_map(|(shape, at_permille)| Case {
        schedule: vec![Step {
            at_permille,
            for_ms: Some(1_500),
            action: Action::Service(ServiceFault::HoldAll),
        }],
        shape,
    });
    must_fail(
        "naive_cutover_reorders",
        strategy,
        |case| {
            let mut options = options(case);
            let hold_at_ms = options.scenario.plan.steps.first().map_or(0, |step| step.at_ms);
            // The switch comes a second after the old consumers stopped reading.
            let switch_ms = hold_at_ms + 1_000;
            let at_event = ((switch_ms as f64 / 1_000.0 * case.shape.rate_per_s) as usize).min(case.shape.events as usize - 1);
            options.scenario.cutover = Some(repartition_cutover::cutover(case.shape.partitions * 2, at_event, Runbook::Naive));
            options
        },
        Property::PerAccountOrder,
    );
}

/// Lesson: a consumer that commits offsets before its database commit and dies in between
/// skips that batch on restart. One consumer with large batches, so the dead one holds a
/// lot.
#[test]
fn committing_offsets_before_the_database_commit_loses_events_under_a_crash() {
    // Late enough in publishing (3,000+ events at 2,000/s) that the consumer holds a batch.
    let strategy = (shape(3_000..=6_000, &[2_000.0]), 400_u64..=700, 800_u64..=1_500).prop_map(|(shape, at_permille, down)| Case {
        shape: Shape { consumers: 1, ..shape },
        schedule: vec![Step {
            at_permille,
            for_ms: Some(down),
            action: Action::Service(ServiceFault::Crash { consumer: 0 }),
        }],
    });
    must_fail(
        "commit_before_database_loses",
        strategy,
        |case| {
            let mut options = options(case);
            auto_commit_crash::configure(&mut options, CommitPolicy::BeforeDatabase);
            options
        },
        Property::NothingLost,
    );
}
