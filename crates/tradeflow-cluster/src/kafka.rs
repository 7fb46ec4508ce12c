//! Apache Kafka as three JVM processes on loopback: KRaft combined mode (each node is a
//! broker and a controller, a static quorum of three voters), replication factor 3,
//! `min.insync.replicas=2`, unclean leader election off.
//!
//! Each node has its own data directory under one temporary directory (prefix
//! `tradeflow-kafka-`), formatted with Kafka's storage tool and a shared cluster id, and
//! three listeners: `CLIENT` (advertised as its chaos proxy, so every client byte passes a
//! proxy that can delay, throttle or blackhole it), `INTERNAL` (replication between brokers,
//! advertised as a second proxy, so a node can be cut off from the other brokers too) and
//! `CONTROLLER` (the quorum, direct). One JVM per node, so a node can be SIGKILLed,
//! SIGSTOPped or restarted alone, with its data kept.
//!
//! The jars come from `KAFKA_HOME/libs` (an Apache Kafka distribution) or from the cache
//! `.ci/install-kafka` fills from Maven Central. The cluster is ready when its metadata lists
//! three brokers; a node that fails to start shows its log. Every process is killed and the
//! directory removed when the cluster is dropped; [`kill_every_node`] does the same from a
//! Ctrl-C handler, where no destructor runs.

use crate::faults::{NodeFault, NodeTarget};
use crate::proxy::{Chaos, ChaosProxy};
use crate::{ClusterError, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// The Apache Kafka version of the whole repository: this backend's jars
/// (`.ci/kafka/pom.xml`), the container backend's default image and docker-compose.yml.
pub const KAFKA_VERSION: &str = "4.1.1";
/// Nodes of the cluster.
pub const KAFKA_NODES: i32 = 3;
/// Replication factor of the topics a run creates on this cluster.
pub const KAFKA_REPLICATION_FACTOR: i32 = 3;
/// `min.insync.replicas` of the cluster.
pub const KAFKA_MIN_INSYNC_REPLICAS: i32 = 2;
/// The variable that replaces the nodes' JVM flags (for example
/// `-XX:+UseG1GC -XX:MaxGCPauseMillis=20` for the server compiler and G1).
pub const JVM_FLAGS_VARIABLE: &str = "TRADEFLOW_KAFKA_JVM_FLAGS";
/// The nodes' JVM flags: three JVMs on two cores start in about half the CPU time with the
/// client compiler alone (no C2 compiler threads) and the serial collector (no GC threads);
/// a few hundred MB of heap keep the serial collector's pauses short. Measured on this
/// 2-core machine, G1 with the server compiler gave no lower latency (a 10,000-event run at
/// 2,000/s: p99 927 and 451 ms with G1, 671 and 745 ms with these).
pub const JVM_FLAGS_DEFAULT: &str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC";
/// Most attempts at starting the cluster when a port was taken before a node bound it.
pub const START_ATTEMPTS_MAX: u32 = 3;
/// Heap of each JVM: three of them share a 2-core, 24 GiB machine with the run.
pub const HEAP_MB: u32 = 384;
/// How long the cluster may take to list every broker.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fault waits to see its effect (a new leader, a new controller).
pub const EFFECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of the cluster's temporary directory, which names every JVM's command line
/// (`pkill -f tradeflow-kafka-` finds the ones a killed run left behind).
pub const DIRECTORY_PREFIX: &str = "tradeflow-kafka-";
/// What a node logs once it serves (kafka.server.KafkaRaftServer, at INFO).
const STARTED_LINE: &str = "Kafka Server started";
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 60;

/// Process ids of every node this process started and has not yet reaped, for
/// [`kill_every_node`].
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// SIGKILLs every Kafka node this process started (for a Ctrl-C handler: the process is
/// about to exit and no destructor will run). Their directories are left to the OS's
/// temporary-file cleanup.
pub fn kill_every_node() {
    if let Ok(pids) = LIVE_PIDS.lock() {
        for pid in pids.iter() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

fn unavailable(reason: impl Into<String>) -> ClusterError {
    ClusterError::Unsupported {
        backend: "kafka",
        reason: reason.into(),
    }
}

/// Where the Kafka jars are: `KAFKA_HOME/libs`, else the cache of `.ci/install-kafka`.
pub fn find_libs() -> Result<PathBuf, ClusterError> {
    let how = "set KAFKA_HOME to an Apache Kafka distribution, or run `export KAFKA_HOME=$(bash .ci/install-kafka)` (Maven Central)";
    if let Some(home) = std::env::var_os("KAFKA_HOME").filter(|home| !home.is_empty()) {
        let libs = PathBuf::from(home).join("libs");
        return if has_kafka_jar(&libs) {
            Ok(libs)
        } else {
            Err(unavailable(format!(
                "KAFKA_HOME has no libs/kafka_2.13-*.jar ({}): {how}",
                libs.display()
            )))
        };
    }
    let cached = std::env::var_os("HOME")
        .map(PathBuf::from)
        .map(|home| home.join(".cache/tradeflow").join(format!("kafka-{KAFKA_VERSION}")).join("libs"));
    match cached {
        Some(libs) if has_kafka_jar(&libs) => Ok(libs),
        _ => Err(unavailable(format!("no Apache Kafka jars: {how}"))),
    }
}

fn has_kafka_jar(libs: &Path) -> bool {
    std::fs::read_dir(libs).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().starts_with("kafka_2.13-"))
    })
}

/// The `java` to run: `JAVA_HOME/bin/java`, else `java` on `PATH`; checked to be 17 or later.
pub fn find_java() -> Result<PathBuf, ClusterError> {
    let java = std::env::var_os("JAVA_HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join("bin/java"))
        .unwrap_or_else(|| PathBuf::from("java"));
    let output = Command::new(&java).arg("-version").output().map_err(|error| {
        unavailable(format!(
            "no Java ({}: {error}): Apache Kafka 4 needs Java 17 or later (Debian: apt-get install openjdk-17-jre-headless, or set JAVA_HOME)",
            java.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&output.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|version| version.split(['.', '-', '+']).next())
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= 17 => Ok(java),
        _ => Err(unavailable(format!(
            "{} is not Java 17 or later ({}): Apache Kafka 4 needs it; set JAVA_HOME",
            java.display(),
            text.lines().next().unwrap_or("no version printed")
        ))),
    }
}

/// One node: its ports, proxies and process.
struct Node {
    id: i32,
    client_port: u16,
    /// Clients reach the node through this proxy (its advertised `CLIENT` listener).
    client_proxy: ChaosProxy,
    /// Other brokers replicate from the node through this proxy (its advertised `INTERNAL`
    /// listener).
    internal_proxy: ChaosProxy,
    directory: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.directory.join("kafka.log")
    }

    fn config_path(&self) -> PathBuf {
        self.directory.join("server.properties")
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().ok().and_then(|slot| slot.as_ref().map(Child::id))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// How many times the node's log says it started.
    fn starts_logged(&self) -> usize {
        std::fs::read_to_string(self.log_path()).map_or(0, |text| text.matches(STARTED_LINE).count())
    }

    fn exited(&self) -> Option<String> {
        let mut slot = self.child.lock().ok()?;
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

/// A running three-node Apache Kafka cluster.
pub struct KafkaCluster {
    java: PathBuf,
    classpath: String,
    nodes: Vec<Node>,
    /// Roles looked up when a fault first fired, by target (so an undo reaches the node
    /// its fault hit).
    resolved: Mutex<HashMap<NodeTarget, i32>>,
    /// Leader and replicas of partitions looked up by a fault, by (topic, partition asked).
    roles: Mutex<HashMap<(String, Option<i32>), PartitionRoles>>,
    /// What faults were seen to do after they returned (a failover waited for beside the
    /// run): (the fault as displayed, what happened).
    observations: Mutex<Vec<(String, String)>>,
    /// Removed last (fields drop in order): the processes are killed first, in `Drop`.
    directory: tempfile::TempDir,
}

/// A partition's leader and replicas, when a fault looked them up.
#[derive(Debug, Clone)]
struct PartitionRoles {
    partition: i32,
    leader: i32,
    replicas: Vec<i32>,
}

impl KafkaCluster {
    /// Formats three data directories and starts the three nodes; returns once the cluster's
    /// metadata lists every broker.
    pub(crate) fn start() -> Result<KafkaCluster, ClusterError> {
        let java = find_java()?;
        let libs = find_libs()?;
        let classpath = format!("{}/*", libs.display());
        let directory = tempfile::Builder::new()
            .prefix(DIRECTORY_PREFIX)
            .tempdir()
            .map_err(|error| unavailable(format!("creating the cluster's directory: {error}")))?;
        std::fs::write(directory.path().join("log4j2.properties"), LOG4J2_CONFIG)
            .map_err(|error| unavailable(format!("writing the logging config: {error}")))?;
        let mut nodes = Vec::with_capacity(KAFKA_NODES as usize);
        let mut controller_ports = Vec::with_capacity(KAFKA_NODES as usize);
        let mut internal_ports = Vec::with_capacity(KAFKA_NODES as usize);
        let mut ports = ListenPorts::default();
        for id in 1..=KAFKA_NODES {
            let client_port = ports.next()?;
            let internal_port = ports.next()?;
            controller_ports.push(ports.next()?);
            internal_ports.push(internal_port);
            let node_directory = directory.path().join(format!("node-{id}"));
            std::fs::create_dir_all(node_directory.join("data"))
                .map_err(|error| unavailable(format!("creating {}: {error}", node_directory.display())))?;
            nodes.push(Node {
                id,
                client_port,
                client_proxy: start_proxy(client_port)?,
                internal_proxy: start_proxy(internal_port)?,
                directory: node_directory,
                child: Mutex::new(None),
            });
        }
        let voters = controller_ports
            .iter()
            .zip(1..)
            .map(|(port, id)| format!("{id}@127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        for (index, node) in nodes.iter().enumerate() {
            let config = node_config(node, internal_ports[index], controller_ports[index], &voters);
            std::fs::write(node.config_path(), config)
                .map_err(|error| unavailable(format!("writing {}: {error}", node.config_path().display())))?;
        }
        let cluster = KafkaCluster {
            java,
            classpath,
            nodes,
            resolved: Mutex::new(HashMap::new()),
            roles: Mutex::new(HashMap::new()),
            observations: Mutex::new(Vec::new()),
            directory,
        };
        cluster.format()?;
        for node in &cluster.nodes {
            cluster.spawn(node)?;
        }
        cluster.wait_for_brokers(KAFKA_NODES as usize, READY_TIMEOUT)?;
        tracing::info!(bootstrap = %cluster.bootstrap(), directory = %cluster.directory.path().display(), "Apache Kafka {KAFKA_VERSION} started: three nodes");
        Ok(cluster)
    }

    /// Every node's client proxy: what clients bootstrap from.
    pub(crate) fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.client_proxy.address().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's log, each under a heading.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let _ = writeln!(
                text,
                "--- node {} ({}) ---\n{}",
                node.id,
                node.log_path().display(),
                node.log_tail()
            );
        }
        text
    }

    /// Formats every node's data directory with one new cluster id, the three formats at
    /// once (each is a JVM start).
    fn format(&self) -> Result<(), ClusterError> {
        let cluster_id = new_cluster_id();
        let formats: Vec<(i32, std::io::Result<Child>)> = self
            .nodes
            .iter()
            .map(|node| {
                let child = Command::new(&self.java)
                    .args([
                        "-Xmx128m",
                        "-cp",
                        &self.classpath,
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        &cluster_id,
                        "-c",
                    ])
                    .arg(node.config_path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn();
                (node.id, child)
            })
            .collect();
        for (id, child) in formats {
            let output = child
                .and_then(Child::wait_with_output)
                .map_err(|error| unavailable(format!("running Kafka's storage tool for node {id}: {error}")))?;
            if !output.status.success() {
                return Err(unavailable(format!(
                    "formatting node {id}'s data directory failed ({}):\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )));
            }
        }
        Ok(())
    }

    fn spawn(&self, node: &Node) -> Result<(), ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .map_err(|error| unavailable(format!("opening {}: {error}", node.log_path().display())))?;
        let log_err = log
            .try_clone()
            .map_err(|error| unavailable(format!("opening the log twice: {error}")))?;
        let child = Command::new(&self.java)
            .arg(format!("-Xmx{HEAP_MB}m"))
            .arg("-Xms128m")
            // See JVM_FLAGS_DEFAULT.
            .args(
                std::env::var(JVM_FLAGS_VARIABLE)
                    .unwrap_or_else(|_| JVM_FLAGS_DEFAULT.to_owned())
                    .split_whitespace(),
            )
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.directory.path().join("log4j2.properties").display()
            ))
            .args(["-cp", &self.classpath, "kafka.Kafka"])
            .arg(node.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| unavailable(format!("starting node {}: {error}", node.id)))?;
        let pid = child.id();
        if let Ok(mut pids) = LIVE_PIDS.lock() {
            pids.push(pid);
        }
        if let Ok(mut slot) = node.child.lock() {
            *slot = Some(child);
        }
        tracing::debug!(node = node.id, pid, "kafka node started");
        Ok(())
    }

    /// Waits until the metadata lists `brokers` brokers; on failure, every node's log.
    fn wait_for_brokers(&self, brokers: usize, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let client = self.metadata_client()?;
        let mut last;
        loop {
            if let Some((id, status)) = self.nodes.iter().find_map(|node| node.exited().map(|status| (node.id, status))) {
                return Err(unavailable(format!(
                    "node {id} exited at start with {status}; the logs:\n{}",
                    self.logs()
                )));
            }
            match client.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) if metadata.brokers().len() >= brokers => return Ok(()),
                Ok(metadata) => last = format!("{} of {brokers} brokers listed", metadata.brokers().len()),
                Err(error) => last = error.to_string(),
            }
            if Instant::now() > deadline {
                return Err(unavailable(format!(
                    "the cluster did not list {brokers} brokers within {timeout:?} ({last}); the logs:\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn metadata_client(&self) -> Result<BaseConsumer, ClusterError> {
        topics::client_config(&self.bootstrap())
            .create()
            .map_err(|error| unavailable(format!("creating a metadata client: {error}")))
    }

    fn node(&self, id: i32) -> Result<&Node, ClusterError> {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .ok_or_else(|| unavailable(format!("no node {id} (nodes are 1..={KAFKA_NODES})")))
    }

    /// What faults were seen to do after they returned, each with the fault as displayed.
    pub fn observations(&self) -> Vec<(String, String)> {
        self.observations.lock().map(|seen| seen.clone()).unwrap_or_default()
    }

    /// Injects a fault on one node; returns what it did, as the run's record shows it. What a
    /// kill leads to (a new leader, a leaderless partition, a new controller, an ISR below
    /// `min.insync.replicas`) is awaited on a thread of its own, so the rest of the fault plan
    /// keeps its times, and lands in [`KafkaCluster::observations`].
    pub(crate) fn inject(self: &std::sync::Arc<Self>, target: &NodeTarget, fault: NodeFault) -> Result<String, ClusterError> {
        let (id, role) = self.resolve(target)?;
        let node = self.node(id)?;
        let who = format!("node {id}{role}");
        match fault {
            NodeFault::Kill => {
                let pid = node.pid().ok_or_else(|| unavailable(format!("{who} is not running")))?;
                let controller_before = self.controller().ok();
                let status = self.kill(node)?;
                let awaited = target.clone();
                self.observe(target, fault, move |cluster| {
                    effect_of_kill(cluster, &awaited, id, controller_before)
                });
                Ok(format!("{who} (pid {pid}) SIGKILLed: {status}"))
            }
            NodeFault::CutReplication => {
                node.internal_proxy.set(Chaos {
                    blackhole: true,
                    ..Chaos::default()
                });
                let reset = node.internal_proxy.reset_connections();
                self.observe(target, fault, move |cluster| effect_of_cut(cluster, id));
                Ok(format!("{who}: its followers cannot fetch from it ({reset} connections reset)"))
            }
            NodeFault::Pause => signal(node, "STOP").map(|pid| format!("{who} (pid {pid}) SIGSTOPped")),
            NodeFault::Resume => signal(node, "CONT").map(|pid| format!("{who} (pid {pid}) SIGCONTinued")),
            NodeFault::Restart => self.restart(node, &who),
            proxy @ (NodeFault::ProxyChaos { .. }
            | NodeFault::ProxyHeal
            | NodeFault::ProxyReset
            | NodeFault::Isolate
            | NodeFault::Rejoin
            | NodeFault::RestoreReplication) => Ok(proxy_fault(node, proxy, &who)),
        }
    }

    /// Starts a node again with its data (killing it first if it runs) and waits until its
    /// log says it serves.
    fn restart(&self, node: &Node, who: &str) -> Result<String, ClusterError> {
        if node.pid().is_some() {
            self.kill(node)?;
        }
        let started = Instant::now();
        let starts_before = node.starts_logged();
        self.spawn(node)?;
        // The metadata may still list a node killed moments ago (it is fenced only
        // after broker.session.timeout.ms): its own log says when it is back.
        while node.starts_logged() <= starts_before {
            if let Some(status) = node.exited() {
                return Err(unavailable(format!(
                    "{who} exited at restart with {status}; its log:\n{}",
                    node.log_tail()
                )));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(unavailable(format!(
                    "{who} not started within {READY_TIMEOUT:?}; its log:\n{}",
                    node.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(format!(
            "{who} restarted with its data; serving again after {} ms",
            started.elapsed().as_millis()
        ))
    }

    /// SIGKILLs a node and reaps it; returns how it ended.
    fn kill(&self, node: &Node) -> Result<String, ClusterError> {
        let mut slot = node
            .child
            .lock()
            .map_err(|_| unavailable(format!("node {}'s process handle is poisoned", node.id)))?;
        let Some(mut child) = slot.take() else {
            return Err(unavailable(format!("node {} is not running", node.id)));
        };
        let pid = child.id();
        // SIGCONT first: a stopped process dies on SIGKILL too, but reaping it is clearer.
        let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        child
            .kill()
            .map_err(|error| unavailable(format!("SIGKILL to node {} (pid {pid}): {error}", node.id)))?;
        let status = child
            .wait()
            .map_err(|error| unavailable(format!("reaping node {} (pid {pid}): {error}", node.id)))?;
        if let Ok(mut pids) = LIVE_PIDS.lock() {
            pids.retain(|live| *live != pid);
        }
        Ok(status.to_string())
    }

    /// Runs `watch` on a thread of its own and records what it saw, under the fault's
    /// name. The thread holds the cluster weakly: dropping the cluster ends the watch.
    fn observe(
        self: &std::sync::Arc<Self>,
        target: &NodeTarget,
        action: NodeFault,
        watch: impl FnOnce(&Weak<KafkaCluster>) -> Option<String> + Send + 'static,
    ) {
        let fault = crate::Fault::Node {
            node: target.clone(),
            action,
        }
        .to_string();
        let cluster = std::sync::Arc::downgrade(self);
        std::thread::spawn(move || {
            if let Some(seen) = watch(&cluster)
                && let Some(cluster) = cluster.upgrade()
                && let Ok(mut observations) = cluster.observations.lock()
            {
                tracing::info!(%fault, %seen, "fault observed");
                observations.push((fault, seen));
            }
        });
    }

    /// The node a target names now, or the one it named when a fault first fired on it;
    /// with a description of its role.
    fn resolve(&self, target: &NodeTarget) -> Result<(i32, String), ClusterError> {
        if let NodeTarget::Id { id } = target {
            return Ok((*id, String::new()));
        }
        let remembered = self.resolved.lock().ok().and_then(|resolved| resolved.get(target).copied());
        let id = match (remembered, target) {
            (Some(id), _) => id,
            (None, NodeTarget::Id { id }) => *id,
            (None, NodeTarget::Controller) => self.controller()?.0,
            (None, NodeTarget::Leader { topic, partition }) => self.partition_roles(topic, *partition)?.leader,
            (None, NodeTarget::Follower { topic, partition, index }) => {
                let roles = self.partition_roles(topic, *partition)?;
                let followers: Vec<i32> = roles.replicas.iter().copied().filter(|replica| *replica != roles.leader).collect();
                *followers.get(*index).ok_or_else(|| {
                    unavailable(format!(
                        "{topic}[{}] has {} followers (replicas {:?}, leader {}): no follower {}",
                        roles.partition,
                        followers.len(),
                        roles.replicas,
                        roles.leader,
                        index + 1
                    ))
                })?
            }
        };
        if let Ok(mut resolved) = self.resolved.lock() {
            resolved.insert(target.clone(), id);
        }
        let role = match target {
            NodeTarget::Leader { topic, partition } | NodeTarget::Follower { topic, partition, .. } => {
                let chosen = self
                    .roles
                    .lock()
                    .ok()
                    .and_then(|roles| roles.get(&(topic.clone(), *partition)).map(|roles| roles.partition));
                format!(" ({}, {topic}[{}])", target_role(target), chosen.unwrap_or(-1))
            }
            _ => format!(" ({target})"),
        };
        Ok((id, role))
    }

    /// The leader and replicas of a partition (the busiest when `partition` is `None`),
    /// looked up once and remembered, so a leader and its followers come from one picture.
    fn partition_roles(&self, topic: &str, partition: Option<i32>) -> Result<PartitionRoles, ClusterError> {
        let key = (topic.to_owned(), partition);
        if let Some(roles) = self.roles.lock().ok().and_then(|roles| roles.get(&key).cloned()) {
            return Ok(roles);
        }
        let client = self.metadata_client()?;
        let chosen = match partition {
            Some(partition) => partition,
            None => busiest_partition(&client, topic)?,
        };
        let (leader, replicas, _) = partition_state(&client, topic, chosen)?;
        let roles = PartitionRoles {
            partition: chosen,
            leader,
            replicas,
        };
        if let Ok(mut cache) = self.roles.lock() {
            cache.insert(key, roles.clone());
        }
        Ok(roles)
    }

    /// The active controller and its epoch, from the quorum state the live nodes keep on disk
    /// (the Metadata API names a random broker in KRaft, not the active controller).
    pub fn controller(&self) -> Result<(i32, i64), ClusterError> {
        self.nodes
            .iter()
            .filter(|node| node.pid().is_some())
            .filter_map(|node| {
                let path = node.directory.join("data/__cluster_metadata-0/quorum-state");
                let text = std::fs::read_to_string(path).ok()?;
                let state: serde_json::Value = serde_json::from_str(&text).ok()?;
                let leader = state.get("leaderId")?.as_i64()?;
                let epoch = state.get("leaderEpoch")?.as_i64()?;
                (leader > 0).then_some((leader as i32, epoch))
            })
            .max_by_key(|(_, epoch)| *epoch)
            .ok_or_else(|| unavailable("no live node knows an active controller"))
    }

    /// Process ids of the nodes that run.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(Node::pid).collect()
    }

    /// The cluster's directory.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if node.pid().is_some() {
                let _ = self.kill(node);
            }
        }
    }
}

/// Polls `check` on the cluster every 100 ms until it answers or `EFFECT_TIMEOUT` passes;
/// `None` once the cluster is gone.
fn poll_until(cluster: &Weak<KafkaCluster>, mut check: impl FnMut(&KafkaCluster, Duration) -> Option<String>) -> Option<String> {
    let started = Instant::now();
    loop {
        let answer = check(&*cluster.upgrade()?, started.elapsed());
        if answer.is_some() {
            return answer;
        }
        if started.elapsed() > EFFECT_TIMEOUT {
            return Some(format!("nothing changed within {EFFECT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a kill led to: a partition's new leader (or none, with a single replica), or a new
/// active controller.
fn effect_of_kill(cluster: &Weak<KafkaCluster>, target: &NodeTarget, killed: i32, controller_before: Option<(i32, i64)>) -> Option<String> {
    match target {
        NodeTarget::Controller => controller_moved(cluster, killed, controller_before),
        NodeTarget::Follower { topic, partition, .. } => follower_dropped(cluster, topic, *partition, killed),
        NodeTarget::Leader { topic, partition } => leader_moved(cluster, topic, *partition, killed),
        NodeTarget::Id { .. } => None,
    }
}

/// A kill of the active controller: which node took over, and when (a newer epoch than
/// `controller_before`, on another node than the one killed).
fn controller_moved(cluster: &Weak<KafkaCluster>, killed: i32, controller_before: Option<(i32, i64)>) -> Option<String> {
    poll_until(cluster, |cluster, waited| match cluster.controller() {
        Ok((leader, epoch)) if leader != killed && controller_before.is_none_or(|(_, before)| epoch > before) => Some(format!(
            "node {leader} became the active controller after {} ms (epoch {epoch})",
            waited.as_millis()
        )),
        _ => None,
    })
}

/// A kill of a follower: when the partition's in-sync replicas dropped it, or that they
/// still list it once the wait is over.
fn follower_dropped(cluster: &Weak<KafkaCluster>, topic: &str, partition: Option<i32>, killed: i32) -> Option<String> {
    let chosen = cluster
        .upgrade()?
        .roles
        .lock()
        .ok()
        .and_then(|roles| roles.get(&(topic.to_owned(), partition)).map(|roles| roles.partition))?;
    let client = cluster.upgrade()?.metadata_client().ok()?;
    let seen = poll_until(cluster, |_, waited| {
        let (_, _, isr) = partition_state(&client, topic, chosen).ok()?;
        (!isr.contains(&killed)).then(|| {
            format!(
                "{topic}[{chosen}]'s in-sync replicas dropped node {killed} after {} ms: {isr:?}",
                waited.as_millis()
            )
        })
    });
    seen.filter(|seen| !seen.starts_with("nothing changed")).or_else(|| {
        Some(format!(
            "{topic}[{chosen}]'s in-sync replicas still list node {killed} after {EFFECT_TIMEOUT:?}: no controller quorum to shrink them, or the node came back"
        ))
    })
}

/// A kill of a partition's leader: which node leads it next and when, or, for a single
/// replica, how long it had no leader.
fn leader_moved(cluster: &Weak<KafkaCluster>, topic: &str, partition: Option<i32>, killed: i32) -> Option<String> {
    let roles = cluster
        .upgrade()?
        .roles
        .lock()
        .ok()
        .and_then(|roles| roles.get(&(topic.to_owned(), partition)).cloned())?;
    let client = cluster.upgrade()?.metadata_client().ok()?;
    let mut leaderless_since: Option<Duration> = None;
    poll_until(cluster, |_, waited| {
        let (leader, _, isr) = partition_state(&client, topic, roles.partition).ok()?;
        match leader {
            -1 if roles.replicas.len() == 1 && leaderless_since.is_none() => {
                leaderless_since = Some(waited);
                None
            }
            -1 => None,
            leader if leader != killed => Some(match leaderless_since {
                Some(since) => format!(
                    "{topic}[{}] (one replica, on node {killed}) had no leader from {} ms to {} ms after the kill: unavailable while its only broker was down",
                    roles.partition,
                    since.as_millis(),
                    waited.as_millis()
                ),
                None => format!(
                    "{topic}[{}] led by node {leader} after {} ms, in sync: {isr:?}",
                    roles.partition,
                    waited.as_millis()
                ),
            }),
            // The same node again: a single replica whose node came back.
            leader if leaderless_since.is_some() => Some(format!(
                "{topic}[{}] (one replica) had no leader from {} ms to {} ms after the kill, then node {leader} came back",
                roles.partition,
                leaderless_since.unwrap_or_default().as_millis(),
                waited.as_millis()
            )),
            _ => None,
        }
    })
}

/// What cutting a leader's replication led to: the partitions it leads shrink their
/// in-sync replicas to the leader alone, below `min.insync.replicas`.
fn effect_of_cut(cluster: &Weak<KafkaCluster>, leader: i32) -> Option<String> {
    let client = cluster.upgrade()?.metadata_client().ok()?;
    poll_until(cluster, |_, waited| {
        let metadata = client.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        let shrunk: Vec<String> = metadata
            .topics()
            .iter()
            .filter(|topic| !topic.name().starts_with("__"))
            .flat_map(|topic| {
                topic
                    .partitions()
                    .iter()
                    .filter(|partition| partition.leader() == leader && partition.isr() == [leader] && partition.replicas().len() > 1)
                    .map(move |partition| format!("{}[{}]", topic.name(), partition.id()))
            })
            .collect();
        (!shrunk.is_empty()).then(|| {
            format!(
                "in-sync replicas of {} shrank to node {leader} alone after {} ms: below the cluster's min.insync.replicas={KAFKA_MIN_INSYNC_REPLICAS}, acks=all writes there are refused (NOT_ENOUGH_REPLICAS) unless the topic lowers it",
                shrunk.join(", "),
                waited.as_millis()
            )
        })
    })
}

fn target_role(target: &NodeTarget) -> String {
    match target {
        NodeTarget::Leader { .. } => "leader".into(),
        NodeTarget::Follower { index, .. } => format!("follower {}", index + 1),
        other => other.to_string(),
    }
}

/// A fault at a node's proxies: its client listener slowed, reset or healed; its
/// replication or everything cut off or restored. Returns what it did.
fn proxy_fault(node: &Node, fault: NodeFault, who: &str) -> String {
    match fault {
        NodeFault::RestoreReplication => {
            node.internal_proxy.heal();
            // A connection whose bytes were swallowed is out of step: its fetcher would
            // wait out replica.socket.timeout.ms (30 s) before reconnecting.
            let reset = node.internal_proxy.reset_connections();
            format!("{who}: its followers fetch from it again ({reset} stale connections reset)")
        }
        NodeFault::ProxyReset => {
            let reset = node.client_proxy.reset_connections();
            format!("{who}'s client proxy reset {reset} connections")
        }
        NodeFault::ProxyChaos { chaos } => {
            node.client_proxy.set(chaos);
            format!("{who}'s client proxy: {}", crate::Fault::ProxyChaos { chaos })
        }
        NodeFault::ProxyHeal => {
            node.client_proxy.heal();
            format!("{who}'s client proxy healed")
        }
        NodeFault::Isolate => {
            let blackhole = Chaos {
                blackhole: true,
                ..Chaos::default()
            };
            node.client_proxy.set(blackhole);
            node.internal_proxy.set(blackhole);
            let reset = node.client_proxy.reset_connections() + node.internal_proxy.reset_connections();
            format!("{who} cut off from clients and replication ({reset} connections reset)")
        }
        NodeFault::Rejoin => {
            node.client_proxy.heal();
            node.internal_proxy.heal();
            // Connections whose bytes were swallowed are out of step: reset, not resumed.
            let reset = node.client_proxy.reset_connections() + node.internal_proxy.reset_connections();
            format!("{who} reachable again ({reset} stale connections reset)")
        }
        // `inject` passes only the faults above: anything else is a programmer error.
        other => unreachable!("{other} is not a proxy fault"),
    }
}

/// Sends a signal to a node's process; returns its pid.
fn signal(node: &Node, name: &str) -> Result<u32, ClusterError> {
    let pid = node.pid().ok_or_else(|| unavailable(format!("node {} is not running", node.id)))?;
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .map_err(|error| unavailable(format!("SIG{name} to node {} (pid {pid}): {error}", node.id)))?;
    if status.success() {
        Ok(pid)
    } else {
        Err(unavailable(format!("kill -{name} {pid} (node {}) failed: {status}", node.id)))
    }
}

/// Leader, replicas and in-sync replicas of one partition.
pub(crate) fn partition_state(client: &BaseConsumer, topic: &str, partition: i32) -> Result<(i32, Vec<i32>, Vec<i32>), ClusterError> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|error| unavailable(format!("reading the metadata of {topic}: {error}")))?;
    let found = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .and_then(|found| found.partitions().iter().find(|p| p.id() == partition))
        .ok_or_else(|| unavailable(format!("{topic}[{partition}] is not in the cluster's metadata")))?;
    Ok((found.leader(), found.replicas().to_vec(), found.isr().to_vec()))
}

/// The partition of `topic` holding the most messages (its high watermark).
fn busiest_partition(client: &BaseConsumer, topic: &str) -> Result<i32, ClusterError> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|error| unavailable(format!("reading the metadata of {topic}: {error}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions().iter().map(|p| p.id()))
        .collect();
    partitions
        .into_iter()
        .filter_map(|partition| {
            client
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .ok()
                .map(|(_, high)| (partition, high))
        })
        .max_by_key(|(partition, high)| (*high, -partition))
        .map(|(partition, _)| partition)
        .ok_or_else(|| unavailable(format!("no partition of {topic} answered with its offsets")))
}

/// Ports for the JVMs to listen on, free when picked. They are bound only when the JVM
/// starts, seconds later, so they come from below the kernel's range of ephemeral ports:
/// an outgoing connection (there are many on a busy test machine) cannot take one in
/// between, as it could a port the kernel handed out for `bind(0)`.
#[derive(Default)]
struct ListenPorts {
    taken: Vec<u16>,
}

/// Where the ports come from: below Linux's default ephemeral range (32768-60999).
const LISTEN_PORTS: std::ops::Range<u16> = 20_000..32_000;
/// Most ports tried for one free port.
const LISTEN_PORT_TRIES_MAX: usize = 200;

impl ListenPorts {
    fn next(&mut self) -> Result<u16, ClusterError> {
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..LISTEN_PORT_TRIES_MAX {
            let port = rng.random_range(LISTEN_PORTS);
            if !self.taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.taken.push(port);
                return Ok(port);
            }
        }
        Err(unavailable(format!(
            "no free port in {LISTEN_PORTS:?} after {LISTEN_PORT_TRIES_MAX} tries"
        )))
    }
}

fn start_proxy(port: u16) -> Result<ChaosProxy, ClusterError> {
    ChaosProxy::start(0, SocketAddr::from(([127, 0, 0, 1], port)), u64::from(port))
        .map_err(|error| unavailable(format!("starting a chaos proxy for port {port}: {error}")))
}

/// A KRaft cluster id: 16 random bytes, base64url without padding, never starting with
/// `-` (what `kafka-storage.sh random-uuid` prints: Kafka draws again in that case, and the
/// storage tool would read such an id as an option; 1 run in 64 failed that way here).
fn new_cluster_id() -> String {
    loop {
        let id = random_base64url_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_base64url_id() -> String {
    use rand::RngCore;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0_u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut id = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            id.push(char::from(ALPHABET[((bits >> count) & 63) as usize]));
        }
    }
    if count > 0 {
        id.push(char::from(ALPHABET[((bits << (6 - count)) & 63) as usize]));
    }
    id
}

/// One node's `server.properties`. Every setting says why.
fn node_config(node: &Node, internal_port: u16, controller_port: u16, voters: &str) -> String {
    let id = node.id;
    let client_port = node.client_port;
    let client_proxy = node.client_proxy.address();
    let internal_proxy = node.internal_proxy.address();
    let data = node.directory.join("data").display().to_string();
    format!(
        "# Node {id} of a three-node KRaft cluster started by tradeflow.
# Broker and controller in one process (combined mode), one of three static voters.
process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
# CLIENT is advertised as its chaos proxy, INTERNAL (replication) as a second one, so a
# node can be slowed or cut off from clients and from the other brokers; the quorum is direct.
listeners=CLIENT://127.0.0.1:{client_port},INTERNAL://127.0.0.1:{internal_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=CLIENT://{client_proxy},INTERNAL://{internal_proxy}
listener.security.protocol.map=CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
log.dirs={data}
# Every write on three brokers, acknowledged (acks=all) once two have it: one node may fail
# without losing an acknowledged event or refusing writes.
default.replication.factor={KAFKA_REPLICATION_FACTOR}
min.insync.replicas={KAFKA_MIN_INSYNC_REPLICAS}
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# A replica that missed writes never becomes leader (a topic may say otherwise).
unclean.leader.election.enable=false
# Topics come from the run or topics.toml, never from a typo.
auto.create.topics.enable=false
# Groups form at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
# Fewer offsets partitions than the default 50: the first group starts in a moment on 2 cores.
offsets.topic.num.partitions=6
# A dead node is fenced after 4 s instead of 9, and a follower that stops fetching leaves
# the ISR after 6 to 9 s instead of 30 to 45 (the leader checks every half of it):
# failovers a test can wait for.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
replica.lag.time.max.ms=6000
# Retention (a topic's retention.bytes or retention.ms) is enforced within a second instead
# of five minutes, from a second after start instead of thirty (the log manager's first
# run; Kafka calls the setting one for testing): a run lasts seconds (the retention lesson).
log.retention.check.interval.ms=1000
log.initial.task.delay.ms=1000
# The log cleaner's dedupe buffer is 128 MiB of heap by default; the heap is {HEAP_MB} MiB.
log.cleaner.dedupe.buffer.size=2097152
# Small thread pools for a 2-core machine with three nodes on it.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
"
    )
}

/// Logging: warnings and the start and shutdown lines, on standard output (the node's log).
const LOG4J2_CONFIG: &str = "status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.raft.name = org.apache.kafka.raft.QuorumState
logger.raft.level = INFO
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_22_characters_of_base64url_never_read_as_an_option() {
        // One id in 64 would start with '-' if nothing prevented it: 2,000 draws see it.
        for _ in 0..2_000 {
            let id = new_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(
                id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
                "{id}"
            );
            assert!(!id.starts_with('-'), "{id}");
        }
        assert_ne!(new_cluster_id(), new_cluster_id());
    }

    #[test]
    fn one_kafka_version_for_the_whole_repository() {
        let pom = include_str!("../../../.ci/kafka/pom.xml");
        assert!(
            pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")),
            "the pom pins another version"
        );
        let compose = include_str!("../../../docker-compose.yml");
        assert!(
            compose.contains(&format!("image: apache/kafka:{KAFKA_VERSION}")),
            "docker-compose.yml pins another version"
        );
        assert_eq!(crate::container::DEFAULT_IMAGE, format!("apache/kafka-native:{KAFKA_VERSION}"));
    }
}
