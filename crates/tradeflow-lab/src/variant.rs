//! A variant: one run of an experiment and what it must show; the setup every lesson
//! builds its variants from (seed, size, rate, backend); and the runner, which starts a fresh
//! broker for each stream variant so one variant's faults cannot leak into the next.

use crate::LabError;
use crate::expect::Expected;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_cluster::plan::{Action, Candidate, FaultPlan, PlanStep};
use tradeflow_cluster::{Backend, Cluster};
use tradeflow_domain::{RateProfile, WorkloadConfig};
use tradeflow_poller::RunOptions;
use tradeflow_store::Store;
use tradeflow_stream::StreamOptions;
use tradeflow_stream::process::ServiceProcesses;

/// One variant: a run and what it must show.
pub struct Variant {
    /// Its name in the table.
    pub label: String,
    /// What runs.
    pub run: VariantRun,
    /// What it must show.
    pub expected: Expected,
}

/// The run of a variant.
pub enum VariantRun {
    /// The event-driven pipeline.
    Stream(Box<StreamOptions>),
    /// The poller baseline.
    Poller(RunOptions),
}

impl Variant {
    /// How many fault records a run of this variant must have: every step and every undo.
    pub fn planned_faults(&self) -> usize {
        match &self.run {
            VariantRun::Stream(options) => options.scenario.plan.timeline().len(),
            VariantRun::Poller(_) => 0,
        }
    }

    /// Judges a run of this variant: unknown when its faults did not all fire or caught
    /// nothing the lesson is about, else whether it came out as it must.
    pub fn verdict(&self, record: &tradeflow_check::RunRecord) -> crate::RowVerdict {
        crate::RowVerdict::of(&self.expected, self.planned_faults(), record)
    }
}

/// What every lesson builds its variants from.
pub struct Setup {
    /// Seed of the workload and of the fault plans' timings.
    pub seed: u64,
    /// Events per variant.
    pub events: u64,
    /// Offered rate, events per second.
    pub rate: f64,
    /// Where the brokers come from.
    pub broker: Backend,
    /// The store the variants run on (a lesson may need PostgreSQL's concurrent writers).
    pub store: tradeflow_store::StoreKind,
    /// How to start the balance service as processes of their own, for the lessons whose
    /// fault is a kill from outside; `None` where no `tradeflow` executable is at hand.
    pub service: Option<ServiceProcesses>,
}

impl Setup {
    /// The workload of every variant.
    pub fn workload(&self) -> WorkloadConfig {
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
    pub fn publishing_ms(&self) -> u64 {
        (self.events as f64 / self.rate * 1_000.0) as u64
    }

    /// Stream options with the experiments' defaults.
    pub fn stream(&self, partitions: i32, consumers: u32) -> StreamOptions {
        StreamOptions {
            partitions,
            consumers,
            batch_size: 200,
            stall_timeout: Duration::from_secs(10),
            ..StreamOptions::new(self.workload())
        }
    }

    /// Poller options with the experiments' defaults (one poller every 100 ms, batches of up
    /// to 500, a 30 s stall timeout) for `workload`.
    pub fn poller(&self, workload: WorkloadConfig) -> RunOptions {
        RunOptions {
            workload,
            poller: tradeflow_poller::PollerConfig {
                poll_interval: Duration::from_millis(100),
                batch_size: 500,
                pollers: 1,
                shard_by_account: false,
            },
            stall_timeout: Duration::from_secs(30),
            orders_per_s: None,
        }
    }

    /// A plan of exactly these steps, under the setup's seed.
    pub fn fixed_plan(&self, steps: Vec<PlanStep>) -> FaultPlan {
        let mut plan = FaultPlan::fixed(steps);
        plan.seed = self.seed;
        plan
    }

    /// A plan of one step drawn from `candidates`, somewhere in the middle third of
    /// publishing.
    pub fn plan(&self, candidates: &[Candidate], steps: usize) -> FaultPlan {
        let publishing = self.publishing_ms();
        FaultPlan::random(self.seed, candidates, steps, (publishing / 3, publishing / 2))
    }
}

/// A fault on one node of the Kafka cluster, as a plan's action.
pub fn node_action(node: tradeflow_cluster::faults::NodeTarget, action: tradeflow_cluster::faults::NodeFault) -> Action {
    Action::Broker(tradeflow_cluster::Fault::Node { node, action })
}

/// A candidate step for a seeded plan.
pub fn candidate(action: Action, for_ms: (u64, u64)) -> Candidate {
    Candidate { action, for_ms }
}

impl Variant {
    /// A fresh broker for a stream variant (none for the poller).
    pub fn start_cluster(&self, backend: Backend, bootstrap: Option<&str>) -> Result<Option<Cluster>, LabError> {
        match &self.run {
            VariantRun::Poller(_) => Ok(None),
            VariantRun::Stream(_) => Ok(Some(backend.start(bootstrap)?)),
        }
    }

    /// The variant's fault plan, if it runs the stream.
    pub fn plan(&self) -> Option<&FaultPlan> {
        match &self.run {
            VariantRun::Stream(options) => Some(&options.scenario.plan),
            VariantRun::Poller(_) => None,
        }
    }

    /// Runs the variant on `store` (and on `cluster`, for the stream), with progress on
    /// `progress`.
    pub async fn run_on(
        &self,
        store: &Store,
        cluster: Option<&Cluster>,
        progress: &watch::Sender<RunProgress>,
    ) -> Result<RunRecord, LabError> {
        match (&self.run, cluster) {
            (VariantRun::Poller(options), _) => Ok(tradeflow_poller::run(store, options, progress).await?),
            (VariantRun::Stream(options), Some(cluster)) => Ok(tradeflow_stream::run(store, cluster, options, progress).await?),
            (VariantRun::Stream(_), None) => Err(LabError::Setup {
                reason: format!("variant {:?} runs the stream and needs a cluster", self.label),
            }),
        }
    }
}
