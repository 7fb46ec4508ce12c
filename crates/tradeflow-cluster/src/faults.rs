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
    /// Container: `docker stop` (SIGTERM, then SIGKILL after a grace period).
    Stop,
    /// Container: `docker start` on the same host port.
    Start,
    /// Container: the broker's container leaves its network; clients are refused until it
    /// is back.
    Disconnect,
    /// Container: the container joins its network again.
    Connect,
    /// Chaos proxy in front of the broker: latency, jitter, a bandwidth limit or a blackhole.
    ProxyChaos {
        /// What the proxy does to the bytes.
        chaos: crate::proxy::Chaos,
    },
    /// Chaos proxy: every open connection is closed with a TCP reset.
    ProxyReset,
    /// Chaos proxy: back to passing bytes untouched.
    ProxyHeal,
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
            Fault::Stop => "stop",
            Fault::Start => "start",
            Fault::Disconnect => "disconnect",
            Fault::Connect => "connect",
            Fault::ProxyChaos { .. } => "proxy_chaos",
            Fault::ProxyReset => "proxy_reset",
            Fault::ProxyHeal => "proxy_heal",
        }
    }

    /// The fault that ends this one, for faults that last: a plan applies it when the
    /// fault's duration is over.
    pub fn undo(&self) -> Option<Fault> {
        match self {
            Fault::BrokerDown { broker } => Some(Fault::BrokerUp { broker: *broker }),
            Fault::RoundTripTime { broker, .. } => Some(Fault::RoundTripTime {
                broker: *broker,
                delay_ms: 0,
            }),
            Fault::Kill => Some(Fault::Restart),
            Fault::Pause => Some(Fault::Resume),
            Fault::Stop => Some(Fault::Start),
            Fault::Disconnect => Some(Fault::Connect),
            Fault::ProxyChaos { .. } => Some(Fault::ProxyHeal),
            _ => None,
        }
    }

    /// Whether the broker comes back empty after this fault on a backend with memory
    /// storage (tansu): topics must then be created again.
    pub fn restarts_broker(&self) -> bool {
        matches!(self, Fault::Restart | Fault::Start)
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
            Fault::Stop => f.write_str("docker stop the broker"),
            Fault::Start => f.write_str("docker start the broker"),
            Fault::Disconnect => f.write_str("disconnect the broker from its network"),
            Fault::Connect => f.write_str("connect the broker to its network again"),
            Fault::ProxyChaos { chaos } => {
                write!(f, "proxy: latency {} ms, jitter {} ms", chaos.latency_ms, chaos.jitter_ms)?;
                if let Some(rate) = chaos.bandwidth_bytes_per_s {
                    write!(f, ", bandwidth {rate} B/s")?;
                }
                if chaos.blackhole {
                    f.write_str(", blackhole")?;
                }
                Ok(())
            }
            Fault::ProxyReset => f.write_str("proxy: reset every connection"),
            Fault::ProxyHeal => f.write_str("proxy: heal"),
        }
    }
}

/// Faults the mock cluster can inject.
pub const MOCK_FAULTS: &[&str] = &["broker_down", "broker_up", "round_trip_time", "request_errors", "leader_move"];
/// Faults a tansu process can take.
pub const TANSU_FAULTS: &[&str] = &["kill", "pause", "resume", "restart"];
/// Faults a broker container can take.
pub const CONTAINER_FAULTS: &[&str] = &["kill", "restart", "stop", "start", "pause", "resume", "disconnect", "connect"];
/// Faults the chaos proxy adds to a backend that runs one (tansu, container).
pub const PROXY_FAULTS: &[&str] = &["proxy_chaos", "proxy_reset", "proxy_heal"];
/// Faults an external cluster can take from here: none.
pub const EXTERNAL_FAULTS: &[&str] = &[];
