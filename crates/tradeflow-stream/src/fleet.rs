//! The balance service's consumers inside a run: started, stopped, crashed and restarted
//! as a fault plan says, and joined at the end.

use crate::StreamError;
use crate::service::{CommitPolicy, Control, ServiceConfig, ServiceCounters, run_controlled};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::LatencyRecorder;
use tradeflow_store::Store;

/// Most consumers one fleet may start over a run, restarts and joins included.
pub const FLEET_MEMBERS_MAX: usize = 256;

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
    /// When offsets are committed.
    pub commit: CommitPolicy,
    /// Whether bad messages go to the dead-letter topic.
    pub dead_letter: bool,
}

struct Member {
    control: watch::Sender<Control>,
    handle: JoinHandle<Result<LatencyRecorder, StreamError>>,
}

/// The consumers of one group.
pub struct Fleet {
    store: Store,
    config: FleetConfig,
    /// Shared by every member, restarts included.
    pub counters: Arc<ServiceCounters>,
    members: Vec<Option<Member>>,
    finished: Vec<JoinHandle<Result<LatencyRecorder, StreamError>>>,
    started: usize,
}

impl Fleet {
    /// A fleet with `consumers` members started.
    pub fn start(store: Store, config: FleetConfig, consumers: u32) -> Fleet {
        let mut fleet = Fleet {
            store,
            config,
            counters: Arc::new(ServiceCounters::default()),
            members: Vec::new(),
            finished: Vec::new(),
            started: 0,
        };
        for _ in 0..consumers {
            fleet.join();
        }
        fleet
    }

    /// Starts a new member; returns its index.
    pub fn join(&mut self) -> Option<u32> {
        let index = self.members.len();
        self.members.push(None);
        self.spawn(index).then_some(index as u32)
    }

    fn spawn(&mut self, index: usize) -> bool {
        if self.started >= FLEET_MEMBERS_MAX {
            tracing::warn!(index, "not starting a consumer: the fleet started {FLEET_MEMBERS_MAX} already");
            return false;
        }
        self.started += 1;
        let config = ServiceConfig {
            bootstrap: self.config.bootstrap.clone(),
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            name: format!("consumer-{index}"),
            batch_size: self.config.batch_size,
            fill_wait: self.config.fill_wait,
            session_timeout_ms: 6_000,
            commit: self.config.commit,
            dead_letter: self.config.dead_letter,
        };
        let (control, receiver) = watch::channel(Control::Run);
        let handle = tokio::spawn(run_controlled(self.store.clone(), config, receiver, self.counters.clone()));
        if let Some(slot) = self.members.get_mut(index) {
            *slot = Some(Member { control, handle });
        }
        true
    }

    fn retire(&mut self, index: usize, control: Control) -> bool {
        match self.members.get_mut(index).and_then(Option::take) {
            Some(member) => {
                member.control.send_replace(control);
                self.finished.push(member.handle);
                true
            }
            None => false,
        }
    }

    /// Tells a member to die after its next batch is received, before its database commit.
    pub fn crash(&mut self, index: u32) -> bool {
        self.retire(index as usize, Control::CrashMidBatch)
    }

    /// Tells a member to leave the group cleanly.
    pub fn leave(&mut self, index: u32) -> bool {
        self.retire(index as usize, Control::Stop)
    }

    /// Starts a member again in its old slot (a restarted process, same name).
    pub fn restart(&mut self, index: u32) -> bool {
        let index = index as usize;
        match self.members.get(index) {
            Some(None) => self.spawn(index),
            _ => false,
        }
    }

    /// Tells every running member to stop reading (`Control::Hold`) or to read again.
    pub fn hold_all(&mut self, hold: bool) {
        for member in self.members.iter().flatten() {
            member.control.send_replace(if hold { Control::Hold } else { Control::Run });
        }
    }

    /// Stops every member still running.
    pub fn stop_all(&mut self) {
        for index in 0..self.members.len() {
            self.retire(index, Control::Stop);
        }
    }

    /// Members running now.
    pub fn running(&self) -> usize {
        self.members.iter().filter(|member| member.is_some()).count()
    }

    /// Stops every member and waits for all of them (crashed ones included); returns the
    /// latencies they measured.
    pub async fn finish(mut self) -> Result<LatencyRecorder, StreamError> {
        self.stop_all();
        let mut latency = LatencyRecorder::new();
        for handle in self.finished {
            let recorder = handle.await.map_err(|error| StreamError::Task {
                task: format!("a consumer of {}", self.config.group),
                reason: error.to_string(),
            })??;
            latency.merge(&recorder);
        }
        Ok(latency)
    }
}
