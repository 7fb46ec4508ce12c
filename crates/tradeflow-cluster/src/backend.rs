//! The broker backends, one enum for the whole workspace: the command line parses it, the
//! bench and the experiments branch on it, the tests draw from it, and it says which faults
//! each backend can inject.

use crate::faults::Fault;
use crate::{Cluster, ClusterError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Brokers of the embedded mock cluster a backend choice starts.
pub const MOCK_BROKERS: i32 = 3;

/// Where a stream run's brokers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// librdkafka's mock cluster, three brokers in this process (the embedded default): no
    /// replication, no disk.
    Mock,
    /// A tansu broker process (memory storage, one broker).
    Tansu,
    /// Apache Kafka: three JVM nodes in KRaft mode, RF 3, `min.insync.replicas=2`.
    Kafka,
    /// One broker in a Docker container (testcontainers).
    Container,
    /// Any Kafka by its bootstrap servers; no faults from here.
    External,
}

impl Backend {
    /// Every backend, in the order help texts list them.
    pub const ALL: [Backend; 5] = [Backend::Mock, Backend::Tansu, Backend::Kafka, Backend::Container, Backend::External];

    /// The name records, reports and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Mock => "mock",
            Backend::Tansu => "tansu",
            Backend::Kafka => "kafka",
            Backend::Container => "container",
            Backend::External => "external",
        }
    }

    /// Whether this backend starts its own brokers (every one but `external`).
    pub fn starts_its_own(self) -> bool {
        self != Backend::External
    }

    /// Starts the backend's brokers, or names the external cluster (`bootstrap`, else
    /// `KAFKA_BOOTSTRAP_SERVERS`). A bootstrap given to a backend that starts its own is
    /// refused.
    pub fn start(self, bootstrap: Option<&str>) -> Result<Cluster, ClusterError> {
        if let (true, Some(_)) = (self.starts_its_own(), bootstrap) {
            return Err(ClusterError::Unsupported {
                backend: self.as_str(),
                reason: "this backend starts its own brokers; drop the bootstrap servers, or use the external backend".into(),
            });
        }
        match self {
            Backend::Mock => Cluster::mock(MOCK_BROKERS),
            Backend::Tansu => Cluster::tansu(),
            Backend::Kafka => Cluster::kafka(),
            Backend::Container => Cluster::container(&crate::container::ContainerConfig::from_env()?),
            Backend::External => match bootstrap
                .map(str::to_owned)
                .or_else(|| std::env::var("KAFKA_BOOTSTRAP_SERVERS").ok().filter(|servers| !servers.is_empty()))
            {
                Some(bootstrap) => Cluster::external(&bootstrap),
                None => Err(ClusterError::Unsupported {
                    backend: "external",
                    reason: "needs bootstrap servers: --bootstrap or KAFKA_BOOTSTRAP_SERVERS".into(),
                }),
            },
        }
    }

    /// Whether this backend can inject `fault`.
    pub fn supports(self, fault: &Fault) -> bool {
        let proxy = matches!(fault, Fault::ProxyChaos { .. } | Fault::ProxyReset | Fault::ProxyHeal);
        match self {
            Backend::Mock => matches!(
                fault,
                Fault::BrokerDown { .. }
                    | Fault::BrokerUp { .. }
                    | Fault::RoundTripTime { .. }
                    | Fault::RequestErrors { .. }
                    | Fault::LeaderMove { .. }
            ),
            Backend::Tansu => proxy || matches!(fault, Fault::Kill | Fault::Pause | Fault::Resume | Fault::Restart),
            Backend::Container => {
                proxy
                    || matches!(
                        fault,
                        Fault::Kill
                            | Fault::Restart
                            | Fault::Stop
                            | Fault::Start
                            | Fault::Pause
                            | Fault::Resume
                            | Fault::Disconnect
                            | Fault::Connect
                    )
            }
            Backend::Kafka => matches!(fault, Fault::Node { .. }),
            Backend::External => false,
        }
    }

    /// The names of the faults this backend can inject, for messages.
    pub fn fault_names(self) -> Vec<&'static str> {
        use crate::faults::{CONTAINER_FAULTS, KAFKA_FAULTS, MOCK_FAULTS, PROXY_FAULTS, TANSU_FAULTS};
        let (own, proxy): (&[&str], bool) = match self {
            Backend::Mock => (MOCK_FAULTS, false),
            Backend::Tansu => (TANSU_FAULTS, true),
            Backend::Container => (CONTAINER_FAULTS, true),
            Backend::Kafka => (KAFKA_FAULTS, false),
            Backend::External => (&[], false),
        };
        own.iter().chain(if proxy { PROXY_FAULTS } else { &[] }).copied().collect()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = ClusterError;

    fn from_str(name: &str) -> Result<Backend, ClusterError> {
        Backend::ALL
            .into_iter()
            .find(|backend| backend.as_str() == name)
            .ok_or_else(|| ClusterError::Unsupported {
                backend: "none",
                reason: format!(
                    "no backend named {name:?}; these exist: {}",
                    Backend::ALL.map(Backend::as_str).join(", ")
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_reads_back_from_its_name_and_a_typo_names_them_all() {
        for backend in Backend::ALL {
            assert_eq!(backend.as_str().parse::<Backend>().ok(), Some(backend));
        }
        let error = "kafak".parse::<Backend>().expect_err("a typo");
        assert!(error.to_string().contains("mock, tansu, kafka, container, external"), "{error}");
    }

    #[test]
    fn each_fault_name_a_backend_lists_is_one_it_supports_and_the_rest_are_refused() {
        let examples = [
            Fault::BrokerDown { broker: 1 },
            Fault::Kill,
            Fault::Stop,
            Fault::ProxyReset,
            Fault::Node {
                node: crate::faults::NodeTarget::Controller,
                action: crate::faults::NodeFault::Kill,
            },
        ];
        for backend in Backend::ALL {
            for fault in &examples {
                assert_eq!(
                    backend.supports(fault),
                    backend.fault_names().contains(&fault.name()),
                    "{backend} and {fault}"
                );
            }
        }
        assert!(Backend::External.fault_names().is_empty());
    }
}
