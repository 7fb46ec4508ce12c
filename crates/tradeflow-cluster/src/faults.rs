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
    /// Kafka (three processes): a fault on one node, chosen by its role when the fault
    /// fires (a partition's leader or follower, the active controller) or by its id.
    Node {
        /// Which node.
        node: NodeTarget,
        /// What happens to it.
        action: NodeFault,
    },
}

/// One node of a multi-node cluster, named by id or by its role. A role is looked up
/// when a fault on it first fires and remembered for the rest of the run, so the undo
/// (a restart, a resume) reaches the same node even after leadership has moved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum NodeTarget {
    /// The node with this id (1..=3).
    Id {
        /// Node id.
        id: i32,
    },
    /// The leader of a partition; `partition: None` means the partition holding the most
    /// messages when the fault fires (the busiest).
    Leader {
        /// Topic.
        topic: String,
        /// Partition, or the busiest.
        partition: Option<i32>,
    },
    /// A follower of a partition (its replicas other than the leader, by id order).
    Follower {
        /// Topic.
        topic: String,
        /// Partition, or the busiest.
        partition: Option<i32>,
        /// 0 for the first follower, 1 for the second.
        index: usize,
    },
    /// The active controller (the leader of the KRaft metadata quorum).
    Controller,
}

impl fmt::Display for NodeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let partition = |topic: &str, partition: &Option<i32>| match partition {
            Some(partition) => format!("{topic}[{partition}]"),
            None => format!("the busiest partition of {topic}"),
        };
        match self {
            NodeTarget::Id { id } => write!(f, "node {id}"),
            NodeTarget::Leader { topic, partition: p } => write!(f, "the leader of {}", partition(topic, p)),
            NodeTarget::Follower {
                topic,
                partition: p,
                index,
            } => write!(f, "follower {} of {}", index + 1, partition(topic, p)),
            NodeTarget::Controller => f.write_str("the active controller"),
        }
    }
}

/// What happens to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "node_fault", rename_all = "snake_case")]
pub enum NodeFault {
    /// SIGKILL: the JVM dies at once; its data directory stays.
    Kill,
    /// SIGSTOP: the node freezes, connections stay open.
    Pause,
    /// SIGCONT.
    Resume,
    /// Start again with its data (killing it first if it runs).
    Restart,
    /// The chaos proxy in front of its client listener: latency, bandwidth, blackhole.
    ProxyChaos {
        /// What the proxy does.
        chaos: crate::proxy::Chaos,
    },
    /// Its client proxy passes bytes untouched again.
    ProxyHeal,
    /// Its client proxy closes every open connection with a TCP reset.
    ProxyReset,
    /// Its followers cannot fetch from it: its replication proxy blackholes every byte,
    /// while clients and the controller quorum still reach it.
    CutReplication,
    /// Its followers fetch from it again.
    RestoreReplication,
    /// Cut off from clients and from the other brokers' replication: its client and
    /// replication proxies blackhole every byte (the controller quorum still reaches it).
    Isolate,
    /// Reachable again.
    Rejoin,
}

impl NodeFault {
    /// The fault that ends this one.
    pub fn undo(self) -> Option<NodeFault> {
        match self {
            NodeFault::Kill => Some(NodeFault::Restart),
            NodeFault::Pause => Some(NodeFault::Resume),
            NodeFault::ProxyChaos { .. } => Some(NodeFault::ProxyHeal),
            NodeFault::Isolate => Some(NodeFault::Rejoin),
            NodeFault::CutReplication => Some(NodeFault::RestoreReplication),
            _ => None,
        }
    }

    /// The name `supported_faults` lists.
    pub fn name(self) -> &'static str {
        match self {
            NodeFault::Kill => "node_kill",
            NodeFault::Pause => "node_pause",
            NodeFault::Resume => "node_resume",
            NodeFault::Restart => "node_restart",
            NodeFault::ProxyChaos { .. } => "node_proxy_chaos",
            NodeFault::ProxyHeal => "node_proxy_heal",
            NodeFault::ProxyReset => "node_proxy_reset",
            NodeFault::CutReplication => "node_cut_replication",
            NodeFault::RestoreReplication => "node_restore_replication",
            NodeFault::Isolate => "node_isolate",
            NodeFault::Rejoin => "node_rejoin",
        }
    }
}

impl fmt::Display for NodeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeFault::Kill => f.write_str("SIGKILL"),
            NodeFault::Pause => f.write_str("SIGSTOP"),
            NodeFault::Resume => f.write_str("SIGCONT"),
            NodeFault::Restart => f.write_str("restart (data kept)"),
            NodeFault::ProxyChaos { chaos } => write!(f, "{}", Fault::ProxyChaos { chaos: *chaos }),
            NodeFault::ProxyHeal => f.write_str("heal the proxy of"),
            NodeFault::ProxyReset => f.write_str("reset the client connections of"),
            NodeFault::CutReplication => f.write_str("cut replication from"),
            NodeFault::RestoreReplication => f.write_str("restore replication from"),
            NodeFault::Isolate => f.write_str("cut off"),
            NodeFault::Rejoin => f.write_str("reconnect"),
        }
    }
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
            Fault::Node { action, .. } => action.name(),
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
            Fault::Node { node, action } => action.undo().map(|action| Fault::Node {
                node: node.clone(),
                action,
            }),
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
            Fault::Node { node, action } => write!(f, "{action} {node}"),
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
/// Faults a three-process Apache Kafka cluster can take, each on one node.
pub const KAFKA_FAULTS: &[&str] = &[
    "node_kill",
    "node_pause",
    "node_resume",
    "node_restart",
    "node_proxy_chaos",
    "node_proxy_heal",
    "node_proxy_reset",
    "node_cut_replication",
    "node_restore_replication",
    "node_isolate",
    "node_rejoin",
];
