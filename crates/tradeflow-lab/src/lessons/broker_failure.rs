//! Lesson: what a broker failure costs depends on replication: with three brokers,
//! replication factor 3, `min.insync.replicas=2` and `acks=all`, losing a node loses no
//! acknowledged event; `acks=1` does, and a single replica makes its partitions unavailable.
//!
//! From the field: Parcel Perform, "Initial experience with Kafka" (3 brokers, RF ≥ 2);
//! Scalescape (2023), acks=all, chaos testing.
//!
//! Variants per backend: the mock (no replication) and tansu/container (one broker) show
//! only what survives a pause, a slow network or a leader move, each must pass. On `kafka`:
//! the busiest partition's leader killed with acks=all must pass, its new leader seen; acks=1
//! with the followers stopped and the leader killed must **lose** acknowledged events; two of
//! three nodes killed must pass; the leader's replication cut must pass with its ISR seen
//! below min ISR (NOT_ENOUGH_REPLICAS); replication factor 1 must pass with its partition
//! seen leaderless; the active controller killed must pass with a new controller seen.
//!
//! Chapter 09 (on `kafka`): the `acks=1` row's faults with the learner's `acks`. A loss
//! counts only once the consumers have read everything the log still holds (the run's
//! last lag sample, taken after every fault's undo, shows no lag): the unapplied events are
//! then gone from the log, not merely unread. Otherwise the run is unknown.

use crate::expect::{Expected, Violation};
use crate::variant::{Setup, Variant, VariantRun, candidate, node_action};
use std::time::Duration;
use tradeflow_cluster::faults::{NodeFault, NodeTarget};
use tradeflow_cluster::plan::{Action, Candidate, PlanStep, ServiceFault};
use tradeflow_cluster::proxy::Chaos;
use tradeflow_cluster::{Backend, Fault};
use tradeflow_stream::StreamOptions;
use tradeflow_stream::publisher::Acks;

/// The experiment's name.
pub const NAME: &str = "broker-failure";
/// What it shows.
pub const WHAT: &str = "a broker down, paused, cut off or killed, per backend, with what each backend can and cannot promise";

/// The lesson's variants for a setup.
pub fn variants(setup: &Setup) -> Result<Vec<Variant>, String> {
    let cases: Vec<(Candidate, Expected)> = match setup.broker {
        Backend::Mock => mock_cases(),
        // No SIGKILL row: tansu keeps messages in memory, so a kill loses them (one broker,
        // no replicas) and a restarted tansu's metadata crashed librdkafka 2.12 in
        // rd_kafka_metadata_cache_find (SIGSEGV, seen here), while a broker killed for good
        // leaves the consumers' close waiting on a dead coordinator for minutes. The kill
        // lesson needs the three-broker cluster (docker-compose.yml, --broker external).
        Backend::Tansu | Backend::Container => tansu_cases(setup),
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

/// The mock's rows: a broker down, a slow broker, a leader move.
fn mock_cases() -> Vec<(Candidate, Expected)> {
    let pass = |note: &str| Expected::pass(note);
    vec![
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
    ]
}

/// tansu's rows (process or container): a frozen broker, a slow narrow network, and on the
/// container a network disconnect.
fn tansu_cases(setup: &Setup) -> Vec<(Candidate, Expected)> {
    let pass = |note: &str| Expected::pass(note);
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

/// One row of the replication lessons: its plan (seeded), what it must show, and what it
/// changes in the experiments' options.
fn replication_row(setup: &Setup, label: &str, plan: Vec<PlanStep>, expected: Expected, change: &dyn Fn(&mut StreamOptions)) -> Variant {
    let mut options = setup.stream(6, 2);
    // Failovers and a lost quorum take seconds: the lag must be given time to drain.
    options.stall_timeout = Duration::from_secs(30);
    options.scenario.plan = setup.fixed_plan(plan);
    change(&mut options);
    Variant {
        label: label.to_owned(),
        run: VariantRun::Stream(Box::new(options)),
        expected,
    }
}

/// A step of a node fault at `at_ms` lasting `for_ms`.
fn node_step(at_ms: u64, for_ms: u64, node: NodeTarget, action: NodeFault) -> PlanStep {
    PlanStep {
        at_ms,
        for_ms: Some(for_ms),
        action: node_action(node, action),
    }
}

/// The acks=1 row's faults from `at_ms`: the busiest partition's followers stopped for
/// 4.5 s, its leader killed 2.5 s in (for 8 s), so the leader is alone with what it is sent.
fn followers_stopped_leader_killed(at_ms: u64) -> Vec<PlanStep> {
    vec![
        node_step(at_ms, 4_500, follower_of_busiest(0), NodeFault::Pause),
        node_step(at_ms, 4_500, follower_of_busiest(1), NodeFault::Pause),
        node_step(at_ms + 2_500, 8_000, leader_of_busiest(), NodeFault::Kill),
    ]
}

/// The replication-factor-1 row's topic: one replica, and a min.insync.replicas it can
/// meet (the cluster's 2 it cannot).
fn one_replica(options: &mut StreamOptions) {
    options.scenario.replication_factor = Some(1);
    options.scenario.topic_configs = vec![("min.insync.replicas".into(), "1".into())];
}

/// The acks=1 row's producer and topic: the leader acknowledges alone, and a follower that
/// never had the writes may become leader.
fn acks_leader_only(options: &mut StreamOptions) {
    options.publisher.acks = Acks::Leader;
    options.publisher.idempotence = false;
    options.scenario.topic_configs = vec![("unclean.leader.election.enable".into(), "true".into())];
    // What the dead leader acknowledged alone never arrives: the run stops waiting for it.
    options.stall_timeout = Duration::from_secs(15);
}

/// When chapter 09's faults begin, ms into publishing.
const CHAPTER_FAULT_AT_MS: u64 = 1_500;

/// Chapter 09's run on Apache Kafka with the learner's `acks`: the `acks=1` row's faults
/// (the busiest partition's followers stopped, its leader killed 2.5 s later, unclean
/// leader election allowed on the topic).
pub fn chapter(setup: &Setup) -> Result<Variant, String> {
    if setup.broker != Backend::Kafka {
        return Err(format!(
            "chapter 09 needs three replicas: it runs on kafka, not on {}",
            setup.broker
        ));
    }
    let acks = Acks::from(tradeflow_exercises::acks::acks());
    let mut variant = replication_row(
        setup,
        "",
        followers_stopped_leader_killed(CHAPTER_FAULT_AT_MS),
        Expected::pass(
            "what the producer was told is written survives the leader's death: nothing acknowledged is lost, duplicated or reordered",
        ),
        &acks_leader_only,
    );
    variant.label = format!("your acks: acks={}; followers stopped, leader killed", acks.as_str());
    if let VariantRun::Stream(options) = &mut variant.run {
        options.publisher.acks = acks;
        // Idempotence needs acks=all (the pipeline's setting); with acks=1 it is off.
        options.publisher.idempotence = acks == Acks::All;
        // For a while all three nodes are down or stopped, the group's coordinator among
        // them: the group takes up to about 20 s to form again (seen: 15 s was too short),
        // and what is unapplied when the run gives up must be gone, not late.
        options.stall_timeout = Duration::from_secs(30);
    }
    Ok(variant)
}

/// Judges chapter 09's run: a loss counts only when the consumers had read everything the
/// log still held at the end (no lag in the last sample, taken after every fault's undo):
/// the events are then gone from the log. A loss with lag left is unknown.
pub fn chapter_judge(runs: &[(Variant, tradeflow_check::RunRecord)]) -> crate::chapters::Judgement {
    use crate::chapters::{Judgement, judge_counts};
    let Some((variant, record)) = runs.first() else {
        return Judgement::Unknown("the chapter ran nothing".into());
    };
    let judged = judge_counts(variant, record, &crate::chapters::EVERY_COUNT);
    if !matches!(&judged, Judgement::Fail { violation, .. } if *violation == Violation::Lost.key()) {
        return judged;
    }
    let last_fault_s = record.faults.iter().map(|fault| fault.at_ms).max().unwrap_or(0) as f64 / 1_000.0;
    match record.lag.last() {
        Some(last) if last.t_s >= last_fault_s && last.offset_lag_total == 0 => match judged {
            Judgement::Fail { violation, detail } => Judgement::Fail {
                violation,
                detail: format!("{detail}; the consumers had read everything the log still held: these events are gone from it"),
            },
            other => other,
        },
        last => Judgement::Unknown(format!(
            "{} acknowledged events were never applied, but the consumers had not read everything the log held when the run ended ({}): they may be late, not lost; run the check again",
            record.check.lost,
            last.map_or("no lag sample".to_owned(), |last| format!(
                "lag {} messages at {:.1} s",
                last.offset_lag_total, last.t_s
            ))
        )),
    }
}

/// `broker-failure` on Apache Kafka: the replication lessons, each on a fresh three-node
/// cluster (RF 3, min.insync.replicas 2 unless the row says otherwise).
fn replication_lessons(setup: &Setup) -> Vec<Variant> {
    // Every row's first fault falls at the same seeded moment in the middle of publishing.
    let at_ms = setup.plan(&[candidate(Action::Service(ServiceFault::Join), (0, 0))], 1).steps[0].at_ms;
    let step = |offset_ms: u64, for_ms: u64, node: NodeTarget, action: NodeFault| node_step(at_ms + offset_ms, for_ms, node, action);
    let row = |label: &str, plan: Vec<PlanStep>, expected: Expected, change: &dyn Fn(&mut StreamOptions)| {
        replication_row(setup, label, plan, expected, change)
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
            followers_stopped_leader_killed(at_ms),
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
                "with two of three nodes down no acks=all write is acknowledged by one copy: while both are down, in combined mode the controller quorum is gone too, so the ISR cannot shrink and writes time out; once a node is back the ISR may shrink to the leader alone, and writes are refused (NOT_ENOUGH_REPLICAS) until the followers catch up. Nothing acknowledged is lost and the lag drains once they return",
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
            &one_replica,
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
