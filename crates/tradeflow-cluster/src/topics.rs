//! Topics as code: `topics.toml` says which topics exist, with how many partitions, which
//! replication factor and which configs; [`plan`] compares it with a cluster and [`apply`]
//! creates what is missing.
//!
//! The file declares topics for a production cluster (replication factor 3,
//! `min.insync.replicas` 2). Against a smaller cluster (one broker: tansu, a container) the
//! plan fits them to it, and says so: replication factor at most the brokers there are, and
//! `min.insync.replicas` at most the replication factor. A topic whose replication factor is
//! below the `min.insync.replicas` it would get (its own, or the cluster's default) is
//! refused: every `acks=all` write to it would fail with NOT_ENOUGH_REPLICAS.
//!
//! Kafka cannot remove partitions, so fewer partitions than the cluster has is refused.
//! More partitions on a keyed topic moves keys to other partitions: while producers and
//! consumers switch over, two events of one account can sit on two partitions and be
//! applied out of order. That change needs `--allow-reorder` (and the drain-then-switch
//! runbook).

use crate::{ADMIN_TIMEOUT, ClusterError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Most partitions a topic may declare.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// The file: a list of topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// The topics.
    #[serde(rename = "topic")]
    pub topics: Vec<TopicSpec>,
}

/// One topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Whether messages are keyed and per-key order matters (then adding partitions
    /// reorders).
    #[serde(default)]
    pub keyed: bool,
    /// Topic configs set at creation (`retention.ms`, `min.insync.replicas`...).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl TopicsFile {
    /// Parses and checks a file's text.
    pub fn parse(text: &str, origin: &str) -> Result<TopicsFile, ClusterError> {
        let file: TopicsFile = toml::from_str(text).map_err(|error| ClusterError::Unsupported {
            backend: "topics",
            reason: format!("{origin}: {error}"),
        })?;
        for topic in &file.topics {
            if topic.name.is_empty() || !(1..=TOPIC_PARTITIONS_MAX).contains(&topic.partitions) || topic.replication_factor < 1 {
                return Err(ClusterError::Unsupported {
                    backend: "topics",
                    reason: format!(
                        "{origin}: topic {:?} needs a name, 1..={TOPIC_PARTITIONS_MAX} partitions and a replication factor of at least 1",
                        topic.name
                    ),
                });
            }
        }
        Ok(file)
    }
}

/// What a topic is on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicState {
    /// Partitions.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
}

/// What the plan knows of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterFacts {
    /// Brokers its metadata lists.
    pub brokers: i32,
    /// Its default `min.insync.replicas`, when a broker told (tansu does not).
    pub min_insync_replicas: Option<i32>,
}

/// The topic config that sets how many in-sync replicas an `acks=all` write needs.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// One topic of a plan: as declared, as fitted to the cluster (with why, when they differ),
/// as it is, and what `apply` would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTopic {
    /// As the file declares it.
    pub declared: TopicSpec,
    /// As fitted to the cluster: what `apply` creates.
    pub spec: TopicSpec,
    /// Why `spec` differs from `declared`, when it does.
    pub fitted: Option<String>,
    /// As it is on the cluster.
    pub state: Option<TopicState>,
    /// What `apply` would do.
    pub action: Action,
}

impl TopicSpec {
    /// Its `min.insync.replicas`, when it declares one.
    pub fn min_insync_replicas(&self) -> Option<i32> {
        self.configs.get(MIN_INSYNC_REPLICAS).and_then(|value| value.parse().ok())
    }

    /// The topic fitted to a cluster with fewer brokers than its replication factor:
    /// replication factor at most the brokers, `min.insync.replicas` at most that. Returns
    /// the fitted topic and why it differs, when it does.
    pub fn fit(&self, facts: ClusterFacts) -> (TopicSpec, Option<String>) {
        if facts.brokers < 1 || self.replication_factor <= facts.brokers {
            return (self.clone(), None);
        }
        let mut fitted = self.clone();
        fitted.replication_factor = facts.brokers;
        let mut why = format!(
            "the cluster has {} broker(s): replication factor {} instead of {}",
            facts.brokers, fitted.replication_factor, self.replication_factor
        );
        if let Some(declared) = self.min_insync_replicas().filter(|min| *min > fitted.replication_factor) {
            fitted
                .configs
                .insert(MIN_INSYNC_REPLICAS.to_owned(), fitted.replication_factor.to_string());
            let _ = std::fmt::Write::write_fmt(
                &mut why,
                format_args!(", {MIN_INSYNC_REPLICAS} {} instead of {declared}", fitted.replication_factor),
            );
        }
        (fitted, Some(why))
    }
}

/// What `apply` would do for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the cluster matches.
    Keep,
    /// Create it.
    Create,
    /// Add partitions (unkeyed topic: safe).
    AddPartitions {
        /// Partitions now.
        from: i32,
        /// Partitions wanted.
        to: i32,
    },
    /// Add partitions to a keyed topic: needs `--allow-reorder`.
    AddPartitionsReorders {
        /// Partitions now.
        from: i32,
        /// Partitions wanted.
        to: i32,
    },
    /// A change this tool will not make, with the reason.
    Refuse {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Keep => f.write_str("up to date"),
            Action::Create => f.write_str("create"),
            Action::AddPartitions { from, to } => write!(f, "add partitions {from} -> {to}"),
            Action::AddPartitionsReorders { from, to } => write!(
                f,
                "add partitions {from} -> {to}: WARNING keys move to other partitions, so one account's events can be applied out of order \
                 while producers and consumers switch over; needs --allow-reorder (drain the topic first: see the repartition runbook)"
            ),
            Action::Refuse { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// Decides what to do for one topic (already fitted to the cluster).
pub fn decide(spec: &TopicSpec, state: Option<TopicState>, facts: ClusterFacts) -> Action {
    let min_insync = spec.min_insync_replicas().or(facts.min_insync_replicas);
    if let Some(min_insync) = min_insync.filter(|min| spec.replication_factor < *min) {
        let whose = if spec.min_insync_replicas().is_some() {
            "its own"
        } else {
            "the cluster's default"
        };
        return Action::Refuse {
            reason: format!(
                "{} has replication factor {} but {MIN_INSYNC_REPLICAS} {min_insync} ({whose}): every acks=all write to it would fail with NOT_ENOUGH_REPLICAS; raise its replication factor or set {MIN_INSYNC_REPLICAS} <= {} in its configs",
                spec.name, spec.replication_factor, spec.replication_factor
            ),
        };
    }
    let Some(state) = state else { return Action::Create };
    if spec.partitions < state.partitions {
        return Action::Refuse {
            reason: format!(
                "{} has {} partitions and Kafka cannot remove partitions; create a new topic with {} and migrate to it",
                spec.name, state.partitions, spec.partitions
            ),
        };
    }
    if spec.replication_factor != state.replication_factor {
        return Action::Refuse {
            reason: format!(
                "{} has replication factor {}, not {}; changing it needs a partition reassignment, which this tool does not do",
                spec.name, state.replication_factor, spec.replication_factor
            ),
        };
    }
    match (spec.partitions > state.partitions, spec.keyed) {
        (false, _) => Action::Keep,
        (true, false) => Action::AddPartitions {
            from: state.partitions,
            to: spec.partitions,
        },
        (true, true) => Action::AddPartitionsReorders {
            from: state.partitions,
            to: spec.partitions,
        },
    }
}

/// A client of `bootstrap`, with the environment's SASL/SSL settings.
pub(crate) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    // Invalid settings make creating the client fail with the reason, never fall back to
    // plaintext.
    crate::external::apply_env_security(&mut config);
    config
}

/// The cluster's default `min.insync.replicas`, from a broker's configs; `None` when the
/// broker does not answer DescribeConfigs (tansu).
async fn default_min_insync_replicas(bootstrap: &str, broker: i32) -> Option<i32> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create().ok()?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.describe_configs([&ResourceSpecifier::Broker(broker)], &options).await.ok()?;
    results.into_iter().find_map(|result| {
        result
            .ok()?
            .entries
            .into_iter()
            .find(|entry| entry.name == MIN_INSYNC_REPLICAS)?
            .value?
            .parse()
            .ok()
    })
}

/// Reads the cluster's metadata, with what it says of the cluster.
async fn read_cluster(bootstrap: &str) -> Result<(ClusterFacts, rdkafka::metadata::Metadata), ClusterError> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .create()
        .map_err(|error| admin_error(bootstrap, "creating a metadata client", error))?;
    let owned_bootstrap = bootstrap.to_owned();
    let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, ADMIN_TIMEOUT))
        .await
        .map_err(|error| admin_error(&owned_bootstrap, "reading metadata", error))?
        .map_err(|error| admin_error(bootstrap, "reading metadata (is a broker there?)", error))?;
    let facts = ClusterFacts {
        brokers: metadata.brokers().len() as i32,
        min_insync_replicas: match metadata.brokers().first() {
            Some(broker) => default_min_insync_replicas(bootstrap, broker.id()).await,
            None => None,
        },
    };
    Ok((facts, metadata))
}

/// How many brokers a cluster lists, and its default `min.insync.replicas` when a broker
/// tells.
pub async fn cluster_facts(bootstrap: &str) -> Result<ClusterFacts, ClusterError> {
    read_cluster(bootstrap).await.map(|(facts, _)| facts)
}

/// Reads the cluster and the current state of every topic in the file, fits each topic to
/// the cluster and decides what `apply` would do.
pub async fn plan(bootstrap: &str, file: &TopicsFile) -> Result<Vec<PlannedTopic>, ClusterError> {
    let (facts, metadata) = read_cluster(bootstrap).await?;
    Ok(file
        .topics
        .iter()
        .map(|declared| {
            let (spec, fitted) = declared.fit(facts);
            let state = metadata
                .topics()
                .iter()
                .find(|topic| topic.name() == spec.name && topic.error().is_none())
                .map(|topic| TopicState {
                    partitions: topic.partitions().len() as i32,
                    replication_factor: topic.partitions().first().map_or(0, |partition| partition.replicas().len() as i32),
                });
            let action = decide(&spec, state, facts);
            PlannedTopic {
                declared: declared.clone(),
                spec,
                fitted,
                state,
                action,
            }
        })
        .collect())
}

/// Applies a plan: creates missing topics and adds partitions where allowed. Refused
/// changes and reordering changes without `allow_reorder` are reported and skipped; the
/// result says whether every topic is as the file says.
pub async fn apply(bootstrap: &str, file: &TopicsFile, allow_reorder: bool) -> Result<Vec<(String, String)>, ClusterError> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .map_err(|error| admin_error(bootstrap, "creating an admin client", error))?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let mut outcomes = Vec::new();
    for PlannedTopic { spec, action, .. } in plan(bootstrap, file).await? {
        let outcome = match action {
            Action::Keep => "up to date".to_owned(),
            Action::Create => {
                let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
                for (key, value) in &spec.configs {
                    topic = topic.set(key, value);
                }
                match admin
                    .create_topics([&topic], &options)
                    .await
                    .map_err(|error| admin_error(bootstrap, &format!("creating {}", spec.name), error))?
                    .pop()
                {
                    Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => "created".to_owned(),
                    Some(Err((_, code))) => return Err(admin_error(bootstrap, &format!("creating {}", spec.name), code)),
                    None => "created".to_owned(),
                }
            }
            Action::AddPartitionsReorders { .. } if !allow_reorder => format!("skipped: {action}"),
            Action::AddPartitions { to, .. } | Action::AddPartitionsReorders { to, .. } => {
                let partitions = NewPartitions::new(&spec.name, usize::try_from(to).unwrap_or(0));
                match admin
                    .create_partitions([&partitions], &options)
                    .await
                    .map_err(|error| admin_error(bootstrap, &format!("adding partitions to {}", spec.name), error))?
                    .pop()
                {
                    Some(Err((_, code))) => {
                        return Err(admin_error(
                            bootstrap,
                            &format!(
                                "adding partitions to {} (some brokers, such as tansu 0.6, have no CreatePartitions)",
                                spec.name
                            ),
                            code,
                        ));
                    }
                    _ => format!("partitions now {to}"),
                }
            }
            Action::Refuse { reason } => format!("refused: {reason}"),
        };
        outcomes.push((spec.name.clone(), outcome));
    }
    Ok(outcomes)
}

fn admin_error(bootstrap: &str, operation: &str, error: impl fmt::Display) -> ClusterError {
    ClusterError::Admin {
        backend: "external",
        bootstrap: bootstrap.to_owned(),
        operation: operation.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: i32, keyed: bool) -> TopicSpec {
        TopicSpec {
            name: "trades".into(),
            partitions,
            replication_factor: 1,
            keyed,
            configs: BTreeMap::new(),
        }
    }

    const ONE_BROKER: ClusterFacts = ClusterFacts {
        brokers: 1,
        min_insync_replicas: Some(1),
    };
    const THREE_BROKERS: ClusterFacts = ClusterFacts {
        brokers: 3,
        min_insync_replicas: Some(2),
    };

    fn decide(spec: &TopicSpec, state: Option<TopicState>) -> Action {
        super::decide(spec, state, ONE_BROKER)
    }

    fn state(partitions: i32) -> Option<TopicState> {
        Some(TopicState {
            partitions,
            replication_factor: 1,
        })
    }

    #[test]
    fn missing_topics_are_created_and_matching_ones_kept() {
        assert_eq!(decide(&spec(12, true), None), Action::Create);
        assert_eq!(decide(&spec(12, true), state(12)), Action::Keep);
    }

    #[test]
    fn fewer_partitions_and_another_replication_factor_are_refused() {
        assert!(matches!(decide(&spec(6, true), state(12)), Action::Refuse { reason } if reason.contains("cannot remove partitions")));
        let mut three = spec(12, true);
        three.replication_factor = 3;
        assert!(matches!(decide(&three, state(12)), Action::Refuse { reason } if reason.contains("replication factor")));
    }

    #[test]
    fn more_partitions_on_a_keyed_topic_warn_about_ordering() {
        assert_eq!(
            decide(&spec(24, true), state(12)),
            Action::AddPartitionsReorders { from: 12, to: 24 }
        );
        assert!(
            Action::AddPartitionsReorders { from: 12, to: 24 }
                .to_string()
                .contains("--allow-reorder")
        );
        assert_eq!(decide(&spec(24, false), state(12)), Action::AddPartitions { from: 12, to: 24 });
    }

    #[test]
    fn a_topic_for_three_brokers_is_fitted_to_one_and_says_so() {
        let mut declared = spec(12, true);
        declared.replication_factor = 3;
        declared.configs.insert(MIN_INSYNC_REPLICAS.into(), "2".into());
        let (fitted, why) = declared.fit(ONE_BROKER);
        assert_eq!((fitted.replication_factor, fitted.min_insync_replicas()), (1, Some(1)));
        assert!(why.is_some_and(|why| why.contains("1 broker(s)")));
        assert_eq!(declared.fit(THREE_BROKERS), (declared.clone(), None));
        assert_eq!(super::decide(&declared, None, THREE_BROKERS), Action::Create);
        assert_eq!(super::decide(&fitted, None, ONE_BROKER), Action::Create);
    }

    #[test]
    fn a_replication_factor_below_min_insync_replicas_is_refused() {
        // RF 1 on a cluster whose default min.insync.replicas is 2: acks=all could never pass.
        let refused = super::decide(&spec(12, true), None, THREE_BROKERS);
        assert!(
            matches!(&refused, Action::Refuse { reason } if reason.contains("NOT_ENOUGH_REPLICAS") && reason.contains("cluster's default")),
            "{refused:?}"
        );
        let mut own = spec(12, true);
        own.replication_factor = 2;
        own.configs.insert(MIN_INSYNC_REPLICAS.into(), "3".into());
        assert!(matches!(super::decide(&own, None, THREE_BROKERS), Action::Refuse { reason } if reason.contains("its own")));
        own.configs.insert(MIN_INSYNC_REPLICAS.into(), "1".into());
        assert_eq!(super::decide(&own, None, THREE_BROKERS), Action::Create);
    }

    #[test]
    fn the_file_is_checked() {
        let text = "[[topic]]\nname = \"trades\"\npartitions = 12\nreplication_factor = 1\nkeyed = true\n[topic.configs]\n\"retention.ms\" = \"604800000\"\n";
        let file = TopicsFile::parse(text, "topics.toml").expect("valid file");
        assert_eq!(file.topics[0].configs.get("retention.ms").map(String::as_str), Some("604800000"));
        assert!(TopicsFile::parse("[[topic]]\nname = \"t\"\npartitions = 0\nreplication_factor = 1\n", "x").is_err());
        assert!(TopicsFile::parse("[[topic]]\nname = \"t\"\npartitons = 3\nreplication_factor = 1\n", "x").is_err());
    }
}
