//! The brokers a run can use, behind one interface.
//!
//! - `mock` (the embedded default): librdkafka's mock cluster, in this process, N brokers
//!   on loopback, speaking the real Kafka protocol. It has no replication (acks are
//!   ignored), no CreateTopics (topics are created through the mock API) and keeps about
//!   5 MiB or 100,000 batches per partition.
//! - `tansu`: a real Kafka-compatible broker process (tansu, memory storage) started from
//!   `TANSU_BIN` or `PATH` on a free port; SIGKILL, SIGSTOP/SIGCONT, restart. One broker,
//!   no CreatePartitions, and a SIGKILL loses every message.
//! - `container`: one broker in a Docker container ([`container`]): `apache/kafka-native` by
//!   default, or the local tansu image; kill, stop/start, pause/unpause, network disconnect,
//!   on a host port that stays fixed across a restart.
//! - `kafka`: Apache Kafka as three JVM processes in KRaft combined mode ([`kafka`]):
//!   replication factor 3, `min.insync.replicas=2`; SIGKILL, SIGSTOP/SIGCONT and restart of
//!   one node chosen by id or role (a partition's leader or follower, the active
//!   controller), and a chaos proxy in front of each node's client and replication
//!   listeners.
//! - `external`: any Kafka by its bootstrap servers (SASL/SSL settings from the
//!   environment, [`external`]); topics are created with the admin API.
//!
//! tansu and container clients go through a [`proxy::ChaosProxy`] that the broker
//! advertises: latency, jitter, a bandwidth limit, connection resets and a blackhole.
//! [`plan::FaultPlan`]s schedule faults from a seed.
//!
//! Every backend lists the [`faults::Fault`]s it can inject; [`Cluster::inject`] refuses
//! the others with a message.
//!
//! `MockCluster` is neither `Send` nor `Sync`, so [`Cluster`] owns it on a thread of its
//! own and sends it work over a channel.

mod backend;
pub mod container;
pub mod external;
pub mod faults;
pub mod kafka;
mod mock;
pub mod plan;
pub mod proxy;
mod tansu;
pub mod topics;

pub use backend::{Backend, MOCK_BROKERS};
pub use faults::Fault;
pub use mock::MOCK_PARTITION_RETAINED_MB;
pub use tansu::find_binary as find_tansu;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How long admin requests may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a topic's creation is asked for when it times out (see
/// [`Cluster::ensure_topic_with`]).
pub const CREATE_TOPIC_ATTEMPTS: u32 = 3;

/// Whether an admin error code says the request or the operation timed out (at the
/// client or at the broker), so that asking again may succeed.
fn timed_out(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut)
}

/// What an error adds about the attempts made, when there were several.
fn attempts(made: u32) -> String {
    if made > 1 {
        format!(", after {made} attempts")
    } else {
        String::new()
    }
}
/// Most brokers a mock cluster may have.
pub const MOCK_BROKERS_MAX: i32 = 16;

/// Most replicas a run gives a topic on a cluster with many brokers.
pub const REPLICATION_FACTOR_MAX: i32 = 3;

/// What topics a run creates get on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDefaults {
    /// Replicas of each partition.
    pub replication_factor: i32,
    /// In-sync replicas an `acks=all` write needs, where the cluster enforces and tells it.
    pub min_insync_replicas: Option<i32>,
}

/// A broker error, naming the backend and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The mock cluster could not be created or driven.
    #[error("mock cluster: {operation}: {reason}")]
    Mock {
        /// What was being done.
        operation: String,
        /// What librdkafka said.
        reason: String,
    },
    /// An admin request failed.
    #[error("{backend} cluster at {bootstrap}: {operation}: {reason}")]
    Admin {
        /// Which backend.
        backend: &'static str,
        /// The bootstrap servers.
        bootstrap: String,
        /// What was being done.
        operation: String,
        /// What the broker or the client said.
        reason: String,
    },
    /// A request that does not fit the backend.
    #[error("{backend} cluster: {reason}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// No broker answered at the bootstrap servers within the probe's time.
    #[error(
        "no Kafka broker answered at {bootstrap} within {waited_s} s ({reason}); check the address (--bootstrap or KAFKA_BOOTSTRAP_SERVERS), that the broker is up, and its security settings"
    )]
    Unreachable {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// How long the probe waited, in seconds.
        waited_s: u64,
        /// What the client saw: the last connection error, or that nothing answered.
        reason: String,
    },
}

/// A running or reachable Kafka cluster.
pub struct Cluster {
    backend: Backend,
    bootstrap: String,
    /// The chaos proxy clients go through, for backends whose advertised listener can
    /// point at it (tansu, container). Declared before the broker so it stops first
    /// (fields drop in declaration order).
    proxy: Option<proxy::ChaosProxy>,
    mock: Option<mock::MockHandle>,
    tansu: Option<tansu::TansuProcess>,
    container: Option<container::BrokerContainer>,
    kafka: Option<std::sync::Arc<kafka::KafkaCluster>>,
}

impl Cluster {
    /// Starts librdkafka's mock cluster with `brokers` brokers in this process.
    pub fn mock(brokers: i32) -> Result<Cluster, ClusterError> {
        if !(1..=MOCK_BROKERS_MAX).contains(&brokers) {
            return Err(ClusterError::Unsupported {
                backend: "mock",
                reason: format!("brokers must be 1..={MOCK_BROKERS_MAX}, got {brokers}"),
            });
        }
        let handle = mock::MockHandle::start(brokers)?;
        Ok(Cluster {
            backend: Backend::Mock,
            bootstrap: handle.bootstrap().to_owned(),
            mock: Some(handle),
            tansu: None,
            container: None,
            kafka: None,
            proxy: None,
        })
    }

    /// A cluster reached by its bootstrap servers (`HOST:PORT[,HOST:PORT...]`).
    pub fn external(bootstrap: &str) -> Result<Cluster, ClusterError> {
        let security = external::Security::from_env()?;
        if security.is_set() {
            tracing::info!(%security, "external cluster security settings");
        }
        external::check_bootstrap(bootstrap)?;
        external::probe(bootstrap, &security)?;
        Ok(Cluster {
            backend: Backend::External,
            bootstrap: bootstrap.to_owned(),
            mock: None,
            tansu: None,
            container: None,
            kafka: None,
            proxy: None,
        })
    }

    /// Starts a tansu broker process (from `TANSU_BIN` or `PATH`) on a free loopback port,
    /// behind a chaos proxy (which passes bytes untouched until a fault says otherwise), and
    /// waits until it accepts connections. The broker advertises the proxy, so every client
    /// connection goes through it.
    pub fn tansu() -> Result<Cluster, ClusterError> {
        let binary = tansu::find_binary()?;
        let port = tansu::free_port()?;
        let proxy = start_proxy("tansu", port)?;
        let process = tansu::TansuProcess::start(&binary, port, proxy.address().to_string())?;
        Ok(Cluster {
            backend: Backend::Tansu,
            bootstrap: process.bootstrap(),
            mock: None,
            tansu: Some(process),
            container: None,
            kafka: None,
            proxy: Some(proxy),
        })
    }

    /// Starts Apache Kafka: three JVM nodes in KRaft combined mode on free loopback ports,
    /// each behind chaos proxies, and waits until the metadata lists all three brokers.
    pub fn kafka() -> Result<Cluster, ClusterError> {
        let mut attempt = 1;
        let cluster = loop {
            match kafka::KafkaCluster::start() {
                Ok(cluster) => break cluster,
                // A port picked free can still be taken before the JVM binds it: pick again.
                Err(error) if attempt < kafka::START_ATTEMPTS_MAX && error.to_string().contains("Address already in use") => {
                    tracing::warn!(
                        attempt,
                        "a Kafka node could not bind its port; starting the cluster again on other ports"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Cluster {
            backend: Backend::Kafka,
            bootstrap: cluster.bootstrap(),
            mock: None,
            tansu: None,
            container: None,
            kafka: Some(std::sync::Arc::new(cluster)),
            proxy: None,
        })
    }

    /// The replication factor a run gives its topics here and the `min.insync.replicas`
    /// an `acks=all` write meets: 3 and 2 on the three-node Kafka cluster; 1 and none
    /// enforced on the mock (no replication), tansu and a container (one broker); on an
    /// external cluster, as many replicas as it has brokers up to 3, and its own default
    /// `min.insync.replicas` (read from a broker).
    pub async fn topic_defaults(&self) -> Result<TopicDefaults, ClusterError> {
        match self.backend {
            Backend::Kafka => Ok(TopicDefaults {
                replication_factor: kafka::KAFKA_REPLICATION_FACTOR,
                min_insync_replicas: Some(kafka::KAFKA_MIN_INSYNC_REPLICAS),
            }),
            Backend::External => {
                let facts = topics::cluster_facts(&self.bootstrap).await?;
                Ok(TopicDefaults {
                    replication_factor: facts.brokers.clamp(1, REPLICATION_FACTOR_MAX),
                    min_insync_replicas: facts.min_insync_replicas,
                })
            }
            Backend::Mock | Backend::Tansu | Backend::Container => Ok(TopicDefaults {
                replication_factor: 1,
                min_insync_replicas: None,
            }),
        }
    }

    /// The three-node Kafka cluster, on the `kafka` backend.
    pub fn kafka_nodes(&self) -> Option<&kafka::KafkaCluster> {
        self.kafka.as_deref()
    }

    /// What faults were seen to do after they returned (a failover the backend waited for
    /// beside the run), each with the fault as displayed. Empty on backends that do not watch.
    pub fn observations(&self) -> Vec<(String, String)> {
        self.kafka.as_deref().map(kafka::KafkaCluster::observations).unwrap_or_default()
    }

    /// The faults this backend can inject.
    pub fn supported_faults(&self) -> Vec<&'static str> {
        self.backend.fault_names()
    }

    /// The chaos proxy in front of the broker, if this backend has one.
    pub fn proxy(&self) -> Option<&proxy::ChaosProxy> {
        self.proxy.as_ref()
    }

    /// Whether this backend can inject `fault`: the refusal names what it supports.
    pub fn supports(&self, fault: &Fault) -> Result<(), ClusterError> {
        if self.backend.supports(fault) {
            Ok(())
        } else {
            Err(self.refusal(fault))
        }
    }

    fn refusal(&self, fault: &Fault) -> ClusterError {
        ClusterError::Unsupported {
            backend: self.backend.as_str(),
            reason: format!(
                "cannot inject {} ({}); this backend supports: {}",
                fault.name(),
                fault,
                if self.supported_faults().is_empty() {
                    "none".to_owned()
                } else {
                    self.supported_faults().join(", ")
                }
            ),
        }
    }

    /// Injects a fault, or refuses it with the reason when this backend cannot. Returns
    /// what the fault did, where the backend can tell more than its name (which node a role
    /// named, how it ended, how long a failover took).
    pub async fn inject(&self, fault: &Fault) -> Result<Option<String>, ClusterError> {
        self.supports(fault)?;
        tracing::info!(backend = %self.backend, %fault, "injecting a fault");
        if let (Some(cluster), Fault::Node { node, action }) = (&self.kafka, fault) {
            // Kills wait for a failover and restarts for the node to be listed: off the
            // async workers.
            let (cluster, node, action) = (cluster.clone(), node.clone(), *action);
            let effect = tokio::task::spawn_blocking(move || cluster.inject(&node, action))
                .await
                .map_err(|error| ClusterError::Unsupported {
                    backend: "kafka",
                    reason: format!("the fault's task failed: {error}"),
                })??;
            tracing::info!(%effect, "fault applied");
            return Ok(Some(effect));
        }
        self.inject_here(fault).await.map(|()| None)
    }

    async fn inject_here(&self, fault: &Fault) -> Result<(), ClusterError> {
        if let Some(proxy) = &self.proxy {
            match fault {
                Fault::ProxyChaos { chaos } => {
                    proxy.set(*chaos);
                    return Ok(());
                }
                Fault::ProxyHeal => {
                    proxy.heal();
                    return Ok(());
                }
                Fault::ProxyReset => {
                    let reset = proxy.reset_connections();
                    tracing::info!(reset, "chaos proxy reset its connections");
                    return Ok(());
                }
                _ => {}
            }
        }
        if let Some(mock) = &self.mock {
            return mock
                .inject(fault)
                .await
                .and_then(|supported| if supported { Ok(()) } else { Err(self.refusal(fault)) });
        }
        if let Some(process) = &self.tansu {
            return match fault {
                Fault::Kill => process.kill(),
                Fault::Pause => process.pause(),
                Fault::Resume => process.resume(),
                Fault::Restart => process.restart(),
                _ => Err(self.refusal(fault)),
            };
        }
        if let Some(container) = &self.container {
            return match fault {
                Fault::Kill => container.kill(),
                Fault::Restart => container.restart(),
                Fault::Stop => container.stop(),
                Fault::Start => container.start_again(),
                Fault::Pause => container.pause(),
                Fault::Resume => container.unpause(),
                Fault::Disconnect => container.disconnect(),
                Fault::Connect => container.connect(),
                _ => Err(self.refusal(fault)),
            };
        }
        Err(self.refusal(fault))
    }

    /// The broker's captured log, for process backends.
    pub fn broker_log(&self) -> Option<String> {
        self.tansu
            .as_ref()
            .map(tansu::TansuProcess::log)
            .or_else(|| self.container.as_ref().map(container::BrokerContainer::log))
            .or_else(|| self.kafka.as_deref().map(kafka::KafkaCluster::logs))
    }

    /// The backend's name, as records and reports show it.
    pub fn backend(&self) -> &'static str {
        self.backend.as_str()
    }

    /// The backend.
    pub fn kind(&self) -> Backend {
        self.backend
    }

    /// The bootstrap servers clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic, or does nothing if it exists. On the mock cluster this goes through
    /// the mock API (it has no CreateTopics); elsewhere through the admin API.
    pub async fn ensure_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<(), ClusterError> {
        self.ensure_topic_with(name, partitions, replication, &[]).await
    }

    /// Like [`Cluster::ensure_topic`], with topic configs (`min.insync.replicas`,
    /// `unclean.leader.election.enable`, ...) for a topic it creates. The mock takes none.
    pub async fn ensure_topic_with(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
        configs: &[(String, String)],
    ) -> Result<(), ClusterError> {
        if let Some(mock) = &self.mock {
            if !configs.is_empty() {
                return Err(ClusterError::Unsupported {
                    backend: "mock",
                    reason: format!("topic configs ({configs:?}) for {name}: the mock cluster keeps none"),
                });
            }
            return mock.create_topic(name, partitions, replication).await;
        }
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (key, value) in configs {
            topic = topic.set(key, value);
        }
        // A request that timed out here is sent again, from a new client (a new
        // connection), up to CREATE_TOPIC_ATTEMPTS times in all: creating a topic that the
        // first request did create answers "already exists", which is checked below. Seen
        // once in CI: tansu left a CreateTopics unanswered until the client gave up.
        let mut attempt = 1;
        let results = loop {
            let admin: AdminClient<DefaultClientContext> = topics::client_config(&self.bootstrap)
                .create()
                .map_err(|error| self.admin_error("creating an admin client", error.to_string()))?;
            let options = AdminOptions::new()
                .operation_timeout(Some(ADMIN_TIMEOUT))
                .request_timeout(Some(ADMIN_TIMEOUT));
            match admin.create_topics([&topic], &options).await {
                Err(KafkaError::AdminOp(code)) if timed_out(code) && attempt < CREATE_TOPIC_ATTEMPTS => {
                    tracing::warn!(backend = self.backend.as_str(), bootstrap = %self.bootstrap, topic = name, attempt, error = %code, "creating a topic timed out: asking again");
                    attempt += 1;
                }
                Ok(results)
                    if attempt < CREATE_TOPIC_ATTEMPTS
                        && results.iter().any(|result| matches!(result, Err((_, code)) if timed_out(*code))) =>
                {
                    tracing::warn!(backend = self.backend.as_str(), bootstrap = %self.bootstrap, topic = name, attempt, "the broker timed out creating a topic: asking again");
                    attempt += 1;
                }
                outcome => {
                    break outcome
                        .map_err(|error| self.admin_error(&format!("creating topic {name}{}", attempts(attempt)), error.to_string()))?;
                }
            }
        };
        for result in results {
            match result {
                Ok(_) => {}
                // A topic that exists must have the partitions the caller counts on: a run
                // that reads partitions it does not have, or misses some, measures nothing.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => self.check_partitions(name, partitions).await?,
                Err((topic, code)) => {
                    return Err(self.admin_error(
                        &format!(
                            "creating topic {topic} ({partitions} partitions, replication factor {replication}){}",
                            attempts(attempt)
                        ),
                        code.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Refuses an existing topic whose partition count is not `partitions`, saying what to do.
    async fn check_partitions(&self, name: &str, partitions: i32) -> Result<(), ClusterError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = topics::client_config(&self.bootstrap)
            .create()
            .map_err(|error| self.admin_error("creating a metadata client", error.to_string()))?;
        let topic = name.to_owned();
        let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), ADMIN_TIMEOUT))
            .await
            .map_err(|error| self.admin_error(&format!("reading the metadata of {name}"), error.to_string()))?
            .map_err(|error| self.admin_error(&format!("reading the metadata of {name}"), error.to_string()))?;
        let found = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name)
            .map(|topic| topic.partitions().len());
        match found {
            Some(found) if found != partitions as usize => Err(self.admin_error(
                &format!("using topic {name}"),
                format!(
                    "it exists with {found} partitions and this run counts on {partitions}: pass --partitions {found}, or delete the topic first (Kafka cannot take partitions away)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn admin_error(&self, operation: &str, reason: String) -> ClusterError {
        ClusterError::Admin {
            backend: self.backend.as_str(),
            bootstrap: self.bootstrap.clone(),
            operation: operation.to_owned(),
            reason,
        }
    }
}

/// Starts a chaos proxy on a free loopback port in front of `port`, its jitter seeded from
/// the port: the broker's port is free-picked, so jitter differs from run to run (the fault
/// plan's times and steps are what a seed reproduces).
fn start_proxy(backend: &'static str, port: u16) -> Result<proxy::ChaosProxy, ClusterError> {
    proxy::ChaosProxy::start(0, std::net::SocketAddr::from(([127, 0, 0, 1], port)), u64::from(port)).map_err(|error| {
        ClusterError::Unsupported {
            backend,
            reason: error.to_string(),
        }
    })
}
