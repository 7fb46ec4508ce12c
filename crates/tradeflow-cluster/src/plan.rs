//! Fault plans: seeded schedules of faults ("at t, fault f on target x for d"), printed
//! before a run starts and reproducible from the seed.
//!
//! A step names its target: the broker (the backend injects it, or refuses it) or the
//! balance service (the run applies it at the service's process boundary: a consumer
//! dies mid-batch, leaves or joins its group, or poison arrives). A step with a duration
//! is undone when the duration is over (a paused broker resumes, a crashed consumer
//! restarts).

use crate::Fault;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Most steps a plan may hold.
pub const PLAN_STEPS_MAX: usize = 64;

/// Faults of the balance service, applied by the run that hosts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum ServiceFault {
    /// A consumer dies while it holds a batch received and not applied: a process of its
    /// own is killed with SIGKILL (at once if it holds a batch, else when it next receives
    /// one, a seeded moment after); a consumer inside the run returns before its database
    /// commit (the cooperative crash of the in-process tests).
    Crash {
        /// Which consumer (its index in the run).
        consumer: u32,
    },
    /// The consumer that crashed starts again in the same group.
    Restart {
        /// Which consumer.
        consumer: u32,
    },
    /// A consumer's process is frozen with SIGSTOP while it holds a batch: it stops
    /// heartbeating, the group moves its partitions when its session times out, and it
    /// wakes up (SIGCONT) still holding the batch: a zombie. Processes only.
    Pause {
        /// Which consumer.
        consumer: u32,
    },
    /// The frozen consumer's process is woken with SIGCONT.
    Resume {
        /// Which consumer.
        consumer: u32,
    },
    /// Every consumer stops reading but stays in its group (a stall: a slow dependency, a
    /// long pause): the service falls behind without a rebalance.
    HoldAll,
    /// The held consumers read again.
    ReleaseAll,
    /// A new consumer joins the group (a rebalance).
    Join,
    /// A consumer leaves the group cleanly (a rebalance).
    Leave {
        /// Which consumer.
        consumer: u32,
    },
    /// Messages that cannot be decoded are published under a hot account's key, so they
    /// sit in that account's partition among its events.
    Poison {
        /// How many.
        count: u32,
    },
    /// Every running consumer is replaced by one that reads the newest schema version this
    /// build knows (a rolling upgrade of the balance service).
    Upgrade,
    /// The dead-letter topic is replayed to the trades topic (`tradeflow dlq replay`).
    ReplayDeadLetters,
}

impl ServiceFault {
    /// The fault that ends this one, when it lasts.
    pub fn undo(&self) -> Option<ServiceFault> {
        match self {
            ServiceFault::Crash { consumer } => Some(ServiceFault::Restart { consumer: *consumer }),
            ServiceFault::Pause { consumer } => Some(ServiceFault::Resume { consumer: *consumer }),
            ServiceFault::HoldAll => Some(ServiceFault::ReleaseAll),
            _ => None,
        }
    }
}

impl fmt::Display for ServiceFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceFault::Crash { consumer } => write!(f, "consumer-{consumer} dies mid-batch"),
            ServiceFault::Restart { consumer } => write!(f, "consumer-{consumer} restarts"),
            ServiceFault::Pause { consumer } => write!(f, "consumer-{consumer} is frozen (SIGSTOP) holding a batch"),
            ServiceFault::Resume { consumer } => write!(f, "consumer-{consumer} wakes up (SIGCONT)"),
            ServiceFault::HoldAll => f.write_str("every consumer stops reading"),
            ServiceFault::ReleaseAll => f.write_str("every consumer reads again"),
            ServiceFault::Join => f.write_str("a consumer joins the group"),
            ServiceFault::Leave { consumer } => write!(f, "consumer-{consumer} leaves the group"),
            ServiceFault::Poison { count } => write!(f, "{count} poison messages under a hot account's key"),
            ServiceFault::Upgrade => f.write_str("every consumer is upgraded to read the newest schema version"),
            ServiceFault::ReplayDeadLetters => f.write_str("the dead letters are replayed to the trades topic"),
        }
    }
}

/// Faults of the database the balance service writes to, applied from outside its
/// process by the run (through a chaos proxy in front of PostgreSQL, or a lock another
/// process holds on the SQLite file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum DatabaseFault {
    /// The database becomes unreachable: PostgreSQL's connections are reset and new ones
    /// refused; the SQLite file is locked by another process.
    Outage,
    /// The database is reachable again.
    Back,
}

impl fmt::Display for DatabaseFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseFault::Outage => f.write_str("the balance service's database becomes unreachable"),
            DatabaseFault::Back => f.write_str("the balance service's database is reachable again"),
        }
    }
}

/// What a step does, and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Action {
    /// A broker fault, injected through the backend.
    Broker(Fault),
    /// A balance-service fault, applied by the run.
    Service(ServiceFault),
    /// A fault of the balance service's database, applied by the run.
    Database(DatabaseFault),
}

impl Action {
    /// The action that ends this one, when it lasts.
    pub fn undo(&self) -> Option<Action> {
        match self {
            Action::Broker(fault) => fault.undo().map(Action::Broker),
            Action::Service(fault) => fault.undo().map(Action::Service),
            Action::Database(DatabaseFault::Outage) => Some(Action::Database(DatabaseFault::Back)),
            Action::Database(DatabaseFault::Back) => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Broker(fault) => write!(f, "broker: {fault}"),
            Action::Service(fault) => write!(f, "balance service: {fault}"),
            Action::Database(fault) => write!(f, "database: {fault}"),
        }
    }
}

/// One step: at `at_ms` after the run's clock starts, do `action`; undo it `for_ms` later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// When, in ms from the start of publishing.
    pub at_ms: u64,
    /// How long it lasts, for actions that can be undone.
    pub for_ms: Option<u64>,
    /// What happens.
    pub action: Action,
}

/// A schedule of faults, with the seed it was drawn from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// The seed the timings were drawn from (0 for a plan written by hand).
    pub seed: u64,
    /// The steps, in time order.
    pub steps: Vec<PlanStep>,
}

/// A candidate step for [`FaultPlan::random`]: the action and the range of its duration.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// What may happen.
    pub action: Action,
    /// Shortest and longest duration (ignored for actions that cannot be undone).
    pub for_ms: (u64, u64),
}

impl FaultPlan {
    /// A plan with no faults.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// A plan written by hand.
    pub fn fixed(steps: Vec<PlanStep>) -> FaultPlan {
        let mut plan = FaultPlan { seed: 0, steps };
        plan.steps.sort_by_key(|step| step.at_ms);
        plan
    }

    /// `steps` steps drawn from `candidates` with the seed: each starts at a uniform time
    /// within `window_ms` and lasts a uniform time within its candidate's range. The same
    /// seed and arguments give the same plan.
    pub fn random(seed: u64, candidates: &[Candidate], steps: usize, window_ms: (u64, u64)) -> FaultPlan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut plan = FaultPlan { seed, steps: Vec::new() };
        if candidates.is_empty() {
            return plan;
        }
        let (window_start, window_end) = (window_ms.0, window_ms.1.max(window_ms.0));
        for _ in 0..steps.min(PLAN_STEPS_MAX) {
            let candidate = &candidates[rng.random_range(0..candidates.len())];
            let at_ms = rng.random_range(window_start..=window_end);
            let (shortest, longest) = (candidate.for_ms.0, candidate.for_ms.1.max(candidate.for_ms.0));
            let for_ms = candidate.action.undo().map(|_| rng.random_range(shortest..=longest));
            plan.steps.push(PlanStep {
                at_ms,
                for_ms,
                action: candidate.action.clone(),
            });
        }
        plan.steps.sort_by_key(|step| step.at_ms);
        plan
    }

    /// Every action in time order, undos included, each with its time from the start.
    pub fn timeline(&self) -> Vec<(Duration, Action)> {
        let mut timeline: Vec<(Duration, Action)> = Vec::with_capacity(self.steps.len() * 2);
        for step in &self.steps {
            timeline.push((Duration::from_millis(step.at_ms), step.action.clone()));
            if let (Some(for_ms), Some(undo)) = (step.for_ms, step.action.undo()) {
                timeline.push((Duration::from_millis(step.at_ms + for_ms), undo));
            }
        }
        // A stable sort keeps an undo after its fault when both fall on the same instant.
        timeline.sort_by_key(|(at, _)| *at);
        timeline
    }

    /// The broker faults the plan injects, so a backend can refuse the plan before the run
    /// starts instead of halfway through.
    pub fn broker_faults(&self) -> impl Iterator<Item = Fault> + '_ {
        self.timeline().into_iter().filter_map(|(_, action)| match action {
            Action::Broker(fault) => Some(fault),
            Action::Service(_) | Action::Database(_) => None,
        })
    }

    /// Whether the plan takes the balance service's database away at some point.
    pub fn has_database_faults(&self) -> bool {
        self.steps.iter().any(|step| matches!(step.action, Action::Database(_)))
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "fault plan: none");
        }
        writeln!(f, "fault plan (seed {}):", self.seed)?;
        for step in &self.steps {
            write!(f, "  at {:>6.2} s  {}", step.at_ms as f64 / 1000.0, step.action)?;
            match (step.for_ms, step.action.undo()) {
                (Some(for_ms), Some(_)) => writeln!(f, "  for {:.2} s", for_ms as f64 / 1000.0)?,
                _ => writeln!(f)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<Candidate> {
        vec![
            Candidate {
                action: Action::Broker(Fault::Pause),
                for_ms: (500, 2_000),
            },
            Candidate {
                action: Action::Service(ServiceFault::Crash { consumer: 0 }),
                for_ms: (100, 300),
            },
            Candidate {
                action: Action::Service(ServiceFault::Join),
                for_ms: (0, 0),
            },
        ]
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let first = FaultPlan::random(7, &candidates(), 5, (1_000, 4_000));
        assert_eq!(first, FaultPlan::random(7, &candidates(), 5, (1_000, 4_000)));
        assert_ne!(first, FaultPlan::random(8, &candidates(), 5, (1_000, 4_000)));
        assert_eq!(first.steps.len(), 5);
        assert!(first.steps.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms));
        assert!(first.steps.iter().all(|step| (1_000..=4_000).contains(&step.at_ms)));
    }

    #[test]
    fn the_timeline_undoes_each_lasting_fault_after_its_duration() {
        let plan = FaultPlan::fixed(vec![
            PlanStep {
                at_ms: 2_000,
                for_ms: Some(500),
                action: Action::Broker(Fault::Pause),
            },
            PlanStep {
                at_ms: 1_000,
                for_ms: Some(5_000),
                action: Action::Service(ServiceFault::Join),
            },
        ]);
        let timeline: Vec<(u128, String)> = plan
            .timeline()
            .into_iter()
            .map(|(at, action)| (at.as_millis(), action.to_string()))
            .collect();
        assert_eq!(
            timeline,
            vec![
                (1_000, "balance service: a consumer joins the group".to_owned()),
                (2_000, "broker: SIGSTOP the broker".to_owned()),
                (2_500, "broker: SIGCONT the broker".to_owned()),
            ]
        );
        let printed = plan.to_string();
        assert!(printed.contains("at   2.00 s  broker: SIGSTOP the broker  for 0.50 s"), "{printed}");
    }

    #[test]
    fn a_plan_reads_back_from_its_json() {
        let plan = FaultPlan::random(3, &candidates(), 4, (0, 1_000));
        let text = serde_json::to_string(&plan).expect("a plan encodes");
        assert!(
            text.contains(r#""target":"broker""#) || text.contains(r#""target":"service""#),
            "{text}"
        );
        let back: FaultPlan = serde_json::from_str(&text).expect("a plan decodes");
        assert_eq!(back, plan);
    }
}
