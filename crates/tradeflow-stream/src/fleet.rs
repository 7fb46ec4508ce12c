//! The balance service's consumers inside a run: started, stopped, crashed and restarted
//! as a fault plan says, and joined at the end. A member is a task in this process, or,
//! when the run asks for [`ServiceProcesses`], a `tradeflow balance-service` process of its
//! own that a fault can kill from outside.

use crate::StreamError;
use crate::process::{KILL_JITTER_MAX, ProcessArgs, ServiceProcess, ServiceProcesses, jitter};
use crate::service::{CommitPolicy, Control, ServiceConfig, ServiceCounters, run_controlled};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::LatencyRecorder;
use tradeflow_store::Store;

/// Most consumers one fleet may start over a run, restarts and joins included.
pub const FLEET_MEMBERS_MAX: usize = 256;
/// The members' `session.timeout.ms`: Apache Kafka's smallest by default
/// (`group.min.session.timeout.ms`), so that a killed member's partitions move soon.
pub const FLEET_SESSION_TIMEOUT_MS: u32 = 6_000;

/// What every consumer of a fleet shares.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long a consumer waits to fill a batch.
    pub fill_wait: Duration,
    /// Whether each consumer fills its next batch while it applies one (see [`ServiceConfig`]).
    pub pipeline: bool,
    /// Each consumer's `fetch.wait.max.ms`.
    pub fetch_wait_max_ms: u32,
    /// When offsets are committed.
    pub commit: CommitPolicy,
    /// How long applied offsets gather before they are committed.
    pub commit_interval: Duration,
    /// Whether bad messages go to the dead-letter topic.
    pub dead_letter: bool,
    /// A pause before each batch's database transaction (see [`ServiceConfig`]).
    pub apply_delay: Duration,
    /// Whether applying skips what the apply log holds (see [`ServiceConfig`]).
    pub dedup: tradeflow_store::Dedup,
    /// Whether a batch held while its partitions were revoked is dropped.
    pub fencing: bool,
    /// Whether a message whose key is not its account is refused.
    pub key_check: bool,
    /// Whether chapter 06's exercise decides what happens to a message that cannot be
    /// processed.
    pub poison_exercise: bool,
    /// Members as processes of their own; `None`: as tasks in this process.
    pub processes: Option<ServiceProcesses>,
    /// The least time a kill waits after the receipt of the batch its process dies holding
    /// (see [`crate::run::Scenario`]'s `kill_after`).
    pub kill_after: Duration,
    /// How a failing database is met (see [`ServiceConfig`]); members inside the run only
    /// may meet it the naive way.
    pub database_retry: crate::service::DatabaseRetry,
    /// The members' `max.poll.interval.ms`; `None`: the service's default.
    pub max_poll_interval_ms: Option<u32>,
    /// The newest schema version the members read (see [`ServiceConfig`]).
    pub schema_newest: u64,
    /// How much the members fetch ahead (see [`ServiceConfig`]).
    pub prefetch: crate::service::Prefetch,
    /// Whether chapter 17's exercise decides what happens to a newer version's message.
    pub schema_exercise: bool,
    /// Whether chapter 19's exercise says what each "batch received" log line names.
    pub held_exercise: bool,
    /// Whether each member has a `group.instance.id` (`<group>.<name>`): static
    /// membership, so that a member restarted under its name within its session timeout
    /// gets its partitions back without a rebalance.
    pub static_membership: bool,
    /// The members' `session.timeout.ms` ([`FLEET_SESSION_TIMEOUT_MS`] unless a lesson
    /// needs a longer one).
    pub session_timeout_ms: u32,
    /// Seed of the kills' timing.
    pub seed: u64,
}

/// A running member.
enum Member {
    /// A task in this process, steered through its control channel.
    Task {
        control: watch::Sender<Control>,
        handle: JoinHandle<Result<LatencyRecorder, StreamError>>,
    },
    /// A process of its own.
    Process(Box<ServiceProcess>),
}

/// A member that was told to go, and how to wait for it.
enum Leaving {
    /// A task told to crash or stop. Its control stays open: a closed channel reads as
    /// "stop", and a consumer told to crash while it waited for messages left cleanly
    /// instead of crashing with its next batch.
    Task {
        control: watch::Sender<Control>,
        handle: JoinHandle<Result<LatencyRecorder, StreamError>>,
    },
    /// A process being killed or stopped.
    Process(JoinHandle<Result<(), StreamError>>),
}

/// The consumers of one group.
pub struct Fleet {
    store: Store,
    config: FleetConfig,
    /// Shared by every member, restarts included.
    pub counters: Arc<ServiceCounters>,
    members: Vec<Option<Member>>,
    /// Members told to go, by slot.
    leaving: Vec<(usize, Leaving)>,
    started: usize,
    kills: u64,
    /// The group's assignment each time it settled after a change.
    assignments: Vec<SettledAssignment>,
}

/// The group's assignment once a rebalance settled: when, and how many partitions each
/// running member held, most first (a 0 is a member with none: idle).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SettledAssignment {
    /// Seconds since the run's start.
    pub at_s: f64,
    /// Partitions per running member, most first.
    pub partitions_per_member: Vec<i64>,
}

impl Fleet {
    /// A fleet with `consumers` members started.
    pub fn start(store: Store, config: FleetConfig, consumers: u32) -> Result<Fleet, StreamError> {
        if config.processes.is_some()
            && (config.database_retry != crate::service::DatabaseRetry::Backoff
                || config.max_poll_interval_ms.is_some()
                || config.schema_newest != tradeflow_domain::SCHEMA_VERSION
                || config.schema_exercise)
        {
            return Err(StreamError::Config {
                reason: "the naive database retries, a max.poll.interval.ms of the run's own and consumers of an older schema are for consumers inside the run, not processes".into(),
            });
        }
        let mut fleet = Fleet {
            store,
            config,
            counters: Arc::new(ServiceCounters::default()),
            members: Vec::new(),
            leaving: Vec::new(),
            started: 0,
            kills: 0,
            assignments: Vec::new(),
        };
        for _ in 0..consumers {
            fleet.members.push(None);
            fleet.spawn(fleet.members.len() - 1)?;
        }
        Ok(fleet)
    }

    /// Starts a new member; returns its index.
    pub fn join(&mut self) -> Option<u32> {
        let index = self.members.len();
        self.members.push(None);
        match self.spawn(index) {
            Ok(true) => Some(index as u32),
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(%error, "starting a consumer");
                None
            }
        }
    }

    fn spawn(&mut self, index: usize) -> Result<bool, StreamError> {
        if self.started >= FLEET_MEMBERS_MAX {
            tracing::warn!(index, "not starting a consumer: the fleet started {FLEET_MEMBERS_MAX} already");
            return Ok(false);
        }
        self.started += 1;
        let name = format!("consumer-{index}");
        let member = match &self.config.processes {
            Some(processes) => Member::Process(Box::new(ServiceProcess::spawn(
                processes,
                &self.process_args(),
                &name,
                self.counters.clone(),
            )?)),
            None => {
                let (control, receiver) = watch::channel(Control::Run);
                let handle = tokio::spawn(run_controlled(
                    self.store.clone(),
                    self.service_config(name),
                    receiver,
                    self.counters.clone(),
                ));
                Member::Task { control, handle }
            }
        };
        if let Some(slot) = self.members.get_mut(index) {
            *slot = Some(member);
        }
        Ok(true)
    }

    fn service_config(&self, name: String) -> ServiceConfig {
        let instance_id = self.config.static_membership.then(|| format!("{}.{name}", self.config.group));
        ServiceConfig {
            bootstrap: self.config.bootstrap.clone(),
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            name,
            batch_size: self.config.batch_size,
            fill_wait: self.config.fill_wait,
            pipeline: self.config.pipeline,
            fetch_wait_max_ms: self.config.fetch_wait_max_ms,
            session_timeout_ms: self.config.session_timeout_ms,
            commit: self.config.commit,
            commit_interval: self.config.commit_interval,
            dead_letter: self.config.dead_letter,
            journal: None,
            apply_delay: self.config.apply_delay,
            dedup: self.config.dedup,
            fencing: self.config.fencing,
            key_check: self.config.key_check,
            poison_exercise: self.config.poison_exercise,
            database_retry: self.config.database_retry,
            max_poll_interval_ms: self.config.max_poll_interval_ms,
            schema_newest: self.config.schema_newest,
            prefetch: self.config.prefetch,
            schema_exercise: self.config.schema_exercise,
            instance_id,
            held_exercise: self.config.held_exercise,
        }
    }

    fn process_args(&self) -> ProcessArgs {
        ProcessArgs {
            bootstrap: self.config.bootstrap.clone(),
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            batch_size: self.config.batch_size,
            fill_wait: self.config.fill_wait,
            pipeline: self.config.pipeline,
            fetch_wait_max_ms: self.config.fetch_wait_max_ms,
            session_timeout_ms: self.config.session_timeout_ms,
            commit: self.config.commit,
            commit_interval: self.config.commit_interval,
            dead_letter: self.config.dead_letter,
            apply_delay: self.config.apply_delay,
            dedup: self.config.dedup,
            fencing: self.config.fencing,
            key_check: self.config.key_check,
            poison_exercise: self.config.poison_exercise,
            prefetch: self.config.prefetch,
            static_membership: self.config.static_membership,
            held_exercise: self.config.held_exercise,
        }
    }

    /// Takes a member out of its slot and tells it to go: a task through its control, a
    /// process by SIGKILL (`Control::CrashMidBatch`) or SIGTERM (`Control::Stop`).
    fn retire(&mut self, index: usize, control: Control) -> Result<(), String> {
        let Some(member) = self.members.get_mut(index).and_then(Option::take) else {
            return Err(format!("consumer-{index} is not running"));
        };
        let leaving = match (member, control) {
            (Member::Task { control: sender, handle }, control) => {
                sender.send_replace(control);
                Leaving::Task { control: sender, handle }
            }
            (Member::Process(process), Control::CrashMidBatch) => {
                self.kills += 1;
                let jitter = self.config.kill_after + jitter(self.config.seed, self.kills, KILL_JITTER_MAX);
                // A least wait after the batch in hand counts from that batch's receipt.
                let fresh = !self.config.kill_after.is_zero();
                let counters = self.counters.clone();
                Leaving::Process(tokio::spawn(async move {
                    process.kill(jitter, fresh, &counters).await;
                    Ok(())
                }))
            }
            (Member::Process(process), _) => Leaving::Process(tokio::spawn(process.stop())),
        };
        self.leaving.push((index, leaving));
        Ok(())
    }

    /// Kills a member: a process with SIGKILL while it holds a batch (at once if it holds
    /// one, else once it receives one, a seeded moment after); a task dies after its next
    /// batch is received, before its database commit (the cooperative crash, for the
    /// in-process tests).
    pub fn crash(&mut self, index: u32) -> Result<(), String> {
        self.retire(index as usize, Control::CrashMidBatch)
    }

    /// Freezes a member's process with SIGSTOP while it holds a batch (processes only).
    pub fn freeze(&mut self, index: u32) -> Result<(), String> {
        self.kills += 1;
        let jitter = jitter(self.config.seed, self.kills, KILL_JITTER_MAX);
        match self.members.get_mut(index as usize).and_then(Option::as_mut) {
            Some(Member::Process(process)) => process.freeze(jitter),
            Some(Member::Task { .. }) => Err("a consumer inside the run cannot be frozen; run the service as processes".into()),
            None => Err(format!("consumer-{index} is not running")),
        }
    }

    /// Wakes a frozen member's process with SIGCONT.
    pub fn wake(&mut self, index: u32) -> Result<(), String> {
        match self.members.get_mut(index as usize).and_then(Option::as_mut) {
            Some(Member::Process(process)) => process.wake(self.counters.clone()),
            Some(Member::Task { .. }) => Err("a consumer inside the run cannot be frozen".into()),
            None => Err(format!("consumer-{index} is not running")),
        }
    }

    /// Whether members are processes of their own.
    pub fn processes(&self) -> bool {
        self.config.processes.is_some()
    }

    /// Tells a member to leave the group cleanly.
    pub fn leave(&mut self, index: u32) -> Result<(), String> {
        self.retire(index as usize, Control::Stop)
    }

    /// Starts a member again in its old slot (a restarted process, same name), once the
    /// process it replaces is gone (a kill waits for its target to hold a batch).
    pub async fn restart(&mut self, index: u32) -> Result<(), String> {
        let index = index as usize;
        let mut still = Vec::new();
        for (slot, leaving) in std::mem::take(&mut self.leaving) {
            match leaving {
                Leaving::Process(handle) if slot == index && !handle.is_finished() => {
                    if let Ok(Err(error)) = handle.await {
                        tracing::warn!(%error, "the consumer being replaced");
                    }
                }
                leaving => still.push((slot, leaving)),
            }
        }
        self.leaving = still;
        match self.members.get(index) {
            Some(None) => {
                // What every member had seen before the restart, to tell what it changed.
                self.counters.mark_restart(&format!("consumer-{index}"));
                self.spawned(index)
            }
            Some(Some(_)) => Err(format!("consumer-{index} is running")),
            None => Err(format!("there is no consumer-{index}")),
        }
    }

    /// Starts a member in slot `index`, as [`Fleet::restart`] says it did.
    fn spawned(&mut self, index: usize) -> Result<(), String> {
        match self.spawn(index) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("the fleet started {FLEET_MEMBERS_MAX} consumers already")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// A rolling upgrade: every running member leaves and a new one joins in its place,
    /// reading the newest schema version this build knows. Returns how many were replaced.
    pub fn upgrade(&mut self) -> Result<usize, String> {
        self.config.schema_newest = tradeflow_domain::SCHEMA_VERSION;
        let running = self.running_members();
        for index in &running {
            self.leave(*index)?;
        }
        for _ in &running {
            self.join().ok_or("no upgraded consumer could join")?;
        }
        Ok(running.len())
    }

    /// Tells every running member to stop reading (`Control::Hold`) or to read again.
    /// Members that are processes cannot be held.
    pub fn hold_all(&mut self, hold: bool) -> Result<(), String> {
        if self.processes() {
            return Err("consumers in processes of their own cannot be held".into());
        }
        for member in self.members.iter().flatten() {
            if let Member::Task { control, .. } = member {
                control.send_replace(if hold { Control::Hold } else { Control::Run });
            }
        }
        Ok(())
    }

    /// Stops every member still running.
    pub fn stop_all(&mut self) {
        for index in 0..self.members.len() {
            let _ = self.retire(index, Control::Stop);
        }
    }

    /// An error for the first member process that ended on its own: the run cannot go on
    /// as planned without it, and waiting for its work would only end in the stall timeout.
    pub fn check_processes(&mut self) -> Result<(), StreamError> {
        for member in self.members.iter_mut().flatten() {
            if let Member::Process(process) = member
                && let Some(ended) = process.ended()
            {
                return Err(StreamError::Task {
                    task: process.who(),
                    reason: format!("it {ended} on its own (its standard error above says why)"),
                });
            }
        }
        Ok(())
    }

    /// Whether every member told to go has gone (its task returned, its process ended).
    pub fn gone(&self) -> bool {
        self.leaving.iter().all(|(_, leaving)| match leaving {
            Leaving::Task { handle, .. } => handle.is_finished(),
            Leaving::Process(handle) => handle.is_finished(),
        })
    }

    /// The indexes of the members running now.
    pub fn running_members(&self) -> Vec<u32> {
        (0..self.members.len())
            .filter(|index| self.members.get(*index).is_some_and(Option::is_some))
            .map(|index| index as u32)
            .collect()
    }

    /// Members running now.
    pub fn running(&self) -> usize {
        self.members.iter().filter(|member| member.is_some()).count()
    }

    /// Notes the group's assignment if it has settled on one it did not hold at the last
    /// settling: every running member assigned, all `partitions` held.
    pub fn observe_assignment(&mut self, at_s: f64, partitions: i64) {
        let Some(held) = self.counters.settled_assignment(self.running(), partitions) else {
            return;
        };
        if self.assignments.last().map(|last| &last.partitions_per_member) != Some(&held) {
            self.assignments.push(SettledAssignment {
                at_s,
                partitions_per_member: held,
            });
        }
    }

    /// The group's assignment each time it settled after a change, first to last.
    pub fn assignments(&self) -> &[SettledAssignment] {
        &self.assignments
    }

    /// Stops every member and waits for all of them (crashed ones included; one told to
    /// crash that never received a batch to crash with is stopped); returns the latencies
    /// the in-process members measured.
    pub async fn finish(mut self) -> Result<LatencyRecorder, StreamError> {
        self.stop_all();
        let mut latency = LatencyRecorder::new();
        let group = self.config.group.clone();
        let task = |reason: String| StreamError::Task {
            task: format!("a consumer of {group}"),
            reason,
        };
        for (_, leaving) in std::mem::take(&mut self.leaving) {
            match leaving {
                Leaving::Task { control, handle } => {
                    control.send_replace(Control::Stop);
                    let recorder = handle.await.map_err(|error| task(error.to_string()))??;
                    latency.merge(&recorder);
                }
                Leaving::Process(handle) => handle.await.map_err(|error| task(error.to_string()))??,
            }
        }
        Ok(latency)
    }
}

/// A fleet dropped without [`Fleet::finish`] (a run that failed early) stops its
/// consumers: tasks are aborted (a consumer is not left reading on its own), processes are
/// killed (`kill_on_drop`).
impl Drop for Fleet {
    fn drop(&mut self) {
        for member in self.members.iter_mut().filter_map(Option::take) {
            if let Member::Task { handle, .. } = member {
                handle.abort();
            }
        }
        for (_, leaving) in self.leaving.drain(..) {
            match leaving {
                Leaving::Task { handle, .. } => handle.abort(),
                Leaving::Process(handle) => handle.abort(),
            }
        }
    }
}
