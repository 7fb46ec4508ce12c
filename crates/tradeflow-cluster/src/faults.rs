//! The fault vocabulary, and which backend can inject what. A fault a backend cannot
//! inject is refused with a message, never silently ignored.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Kafka APIs whose requests the mock cluster can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Produce requests.
    Produce,
    /// Fetch requests.
    Fetch,
    /// Offset commits.
    OffsetCommit,
    /// Group joins.
    JoinGroup,
    /// Metadata requests.
    Metadata,
}

/// Errors the mock cluster can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestError {
    /// NOT_LEADER_OR_FOLLOWER: retriable, the client refreshes metadata.
    NotLeader,
    /// REQUEST_TIMED_OUT: retriable.
    RequestTimedOut,
    /// The broker drops the connection.
    Disconnect,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Mock: a broker stops answering (its data survives: the mock has no disk to lose).
    BrokerDown {
        /// Broker id (1..=N).
        broker: i32,
    },
    /// Mock: the broker answers again.
    BrokerUp {
        /// Broker id.
        broker: i32,
    },
    /// Mock: every answer of a broker is delayed.
    RoundTripTime {
        /// Broker id.
        broker: i32,
        /// Added delay.
        delay_ms: u64,
    },
    /// Mock: the next `count` requests of one API fail with `error`.
    RequestErrors {
        /// Which API.
        api: Api,
        /// Which error.
        error: RequestError,
        /// How many requests.
        count: usize,
    },
    /// Mock: a partition's leadership moves to another broker.
    LeaderMove {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// New leader.
        broker: i32,
    },
    /// Process backends: SIGKILL (tansu with memory storage loses every message).
    Kill,
    /// Process backends: SIGSTOP, the broker freezes.
    Pause,
    /// Process backends: SIGCONT.
    Resume,
    /// Process backends: start again on the same address (killing first if running).
    Restart,
}

impl Fault {
    /// The fault's name, as `supported_faults` lists it.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::BrokerDown { .. } => "broker_down",
            Fault::BrokerUp { .. } => "broker_up",
            Fault::RoundTripTime { .. } => "round_trip_time",
            Fault::RequestErrors { .. } => "request_errors",
            Fault::LeaderMove { .. } => "leader_move",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Resume => "resume",
            Fault::Restart => "restart",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::BrokerDown { broker } => write!(f, "broker {broker} down"),
            Fault::BrokerUp { broker } => write!(f, "broker {broker} up"),
            Fault::RoundTripTime { broker, delay_ms } => write!(f, "broker {broker} round trip +{delay_ms} ms"),
            Fault::RequestErrors { api, error, count } => write!(f, "next {count} {api:?} requests fail with {error:?}"),
            Fault::LeaderMove { topic, partition, broker } => write!(f, "{topic}[{partition}] leader moves to broker {broker}"),
            Fault::Kill => f.write_str("SIGKILL the broker"),
            Fault::Pause => f.write_str("SIGSTOP the broker"),
            Fault::Resume => f.write_str("SIGCONT the broker"),
            Fault::Restart => f.write_str("restart the broker"),
        }
    }
}

/// Faults the mock cluster can inject.
pub const MOCK_FAULTS: &[&str] = &["broker_down", "broker_up", "round_trip_time", "request_errors", "leader_move"];
/// Faults a tansu process can take.
pub const TANSU_FAULTS: &[&str] = &["kill", "pause", "resume", "restart"];
/// Faults an external cluster can take from here: none.
pub const EXTERNAL_FAULTS: &[&str] = &[];
