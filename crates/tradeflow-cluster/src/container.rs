//! The `container` backend: one broker in a Docker container, on a fixed host port, behind
//! a chaos proxy, with kill, stop/start, pause/unpause and network disconnect.
//!
//! The image is configurable (`TRADEFLOW_CONTAINER_IMAGE`): `apache/kafka-native` (a
//! single-node KRaft broker) is the default wherever images can be pulled; `tansu` selects
//! the local image that `.ci/build-tansu-image` builds from the tansu binary without any
//! registry.
//!
//! The container is driven through the `docker` command line, which negotiates the API
//! version with the engine. The testcontainers crate (0.27/0.28, through bollard 0.20/0.21)
//! asks for Docker API 1.52 or newer without negotiating, and Docker Engine 20.10 (API 1.41),
//! as on the development machines, refuses every request; this module does what a
//! testcontainers container does (fixed host port, readiness by log line, removal on drop)
//! with the engine that is there.
//!
//! The host port is chosen once and kept across stop/start, so the advertised listener
//! stays valid. Clients connect to the chaos proxy, which the broker advertises.

use crate::{Cluster, ClusterError, proxy, start_proxy};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a broker container may take to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Grace period of `docker stop` before SIGKILL.
pub const STOP_GRACE_S: u32 = 2;
/// The image `TRADEFLOW_CONTAINER_IMAGE=tansu` stands for (built by `.ci/build-tansu-image`).
pub const LOCAL_TANSU_IMAGE: &str = "tradeflow/tansu:0.1.2-local";
/// The default image, where images can be pulled.
pub const DEFAULT_IMAGE: &str = "apache/kafka-native:4.1.1";
/// The broker's port inside the container.
const BROKER_PORT: u16 = 9092;

/// Which broker an image holds: it decides the settings and the readiness line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Apache Kafka (JVM or native), single node in KRaft mode.
    ApacheKafka,
    /// tansu, memory storage: a stop, kill or restart loses every message.
    Tansu,
}

/// Which image the container backend runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The image reference.
    pub image: String,
    /// What it holds.
    pub kind: ImageKind,
}

impl ContainerConfig {
    /// From `TRADEFLOW_CONTAINER_IMAGE`: unset for `apache/kafka-native`, `tansu` for the
    /// local tansu image, or any image reference (one whose name contains `tansu` is
    /// treated as tansu, any other as Apache Kafka).
    pub fn from_env() -> Result<ContainerConfig, ClusterError> {
        Ok(ContainerConfig::named(std::env::var("TRADEFLOW_CONTAINER_IMAGE").ok().as_deref()))
    }

    /// The configuration a name stands for (see [`ContainerConfig::from_env`]).
    pub fn named(name: Option<&str>) -> ContainerConfig {
        match name.map(str::trim).filter(|name| !name.is_empty()) {
            None => ContainerConfig {
                image: DEFAULT_IMAGE.to_owned(),
                kind: ImageKind::ApacheKafka,
            },
            Some("tansu") => ContainerConfig {
                image: LOCAL_TANSU_IMAGE.to_owned(),
                kind: ImageKind::Tansu,
            },
            Some(image) => ContainerConfig {
                image: image.to_owned(),
                kind: if image.contains("tansu") {
                    ImageKind::Tansu
                } else {
                    ImageKind::ApacheKafka
                },
            },
        }
    }

    fn ready_line(&self) -> &'static str {
        match self.kind {
            ImageKind::Tansu => "ready in",
            ImageKind::ApacheKafka => "Kafka Server started",
        }
    }

    /// `-e` settings: listen on the container's port, advertise the address clients use.
    fn environment(&self, advertised: &str) -> Vec<String> {
        match self.kind {
            ImageKind::Tansu => vec![
                format!("ADVERTISED_LISTENER_URL=tcp://{advertised}"),
                format!("LISTENER_URL=tcp://0.0.0.0:{BROKER_PORT}"),
                "STORAGE_ENGINE=memory://tansu/".to_owned(),
            ],
            ImageKind::ApacheKafka => vec![
                "KAFKA_NODE_ID=1".to_owned(),
                "KAFKA_PROCESS_ROLES=broker,controller".to_owned(),
                format!("KAFKA_LISTENERS=PLAINTEXT://0.0.0.0:{BROKER_PORT},CONTROLLER://localhost:9093"),
                format!("KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{advertised}"),
                "KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER".to_owned(),
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned(),
                "KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093".to_owned(),
                // One broker: internal topics cannot have more replicas than that.
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1".to_owned(),
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1".to_owned(),
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1".to_owned(),
                // Tests start groups often: do not wait 3 s for more members.
                "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0".to_owned(),
            ],
        }
    }
}

/// A running broker container, removed on drop.
pub(crate) struct BrokerContainer {
    config: ContainerConfig,
    id: String,
}

fn unavailable(reason: String) -> ClusterError {
    ClusterError::Unsupported {
        backend: "container",
        reason,
    }
}

/// Runs `docker ARGS`, returning its standard output, or an error naming the command and
/// what docker said.
fn docker(args: &[&str]) -> Result<String, ClusterError> {
    let output: Output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|error| unavailable(format!("running `docker {}`: {error} (is Docker installed?)", args.join(" "))))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(unavailable(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Whether a Docker engine answers, with its version or what went wrong.
pub fn engine_version() -> Result<String, ClusterError> {
    docker(&["version", "--format", "{{.Server.Version}}"])
}

impl BrokerContainer {
    fn start(config: &ContainerConfig, host_port: u16, advertised: &str) -> Result<BrokerContainer, ClusterError> {
        engine_version().map_err(|error| unavailable(format!("no Docker engine answers: {error}")))?;
        if docker(&["image", "inspect", "--format", "{{.Id}}", &config.image]).is_err() {
            let hint = match config.kind {
                ImageKind::Tansu => "build it with `bash .ci/build-tansu-image`".to_owned(),
                ImageKind::ApacheKafka => format!(
                    "pull it (`docker pull {}`), or where no registry is reachable build the local tansu image (`bash .ci/build-tansu-image`) and set TRADEFLOW_CONTAINER_IMAGE=tansu",
                    config.image
                ),
            };
            if config.kind == ImageKind::Tansu || docker(&["pull", &config.image]).is_err() {
                return Err(unavailable(format!("image {} is not on this machine: {hint}", config.image)));
            }
        }
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "tradeflow-broker-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let publish = format!("127.0.0.1:{host_port}:{BROKER_PORT}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            name.clone(),
            // Lets a cleanup find containers a killed test run left behind.
            "--label".into(),
            "tradeflow.broker=1".into(),
            "--publish".into(),
            publish,
        ];
        for setting in config.environment(advertised) {
            args.push("--env".into());
            args.push(setting);
        }
        args.push(config.image.clone());
        let arguments: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = match docker(&arguments) {
            Ok(id) => id,
            Err(error) => {
                // A failed `docker run` can leave a created container behind.
                let _ = docker(&["rm", "--force", &name]);
                return Err(error);
            }
        };
        let container = BrokerContainer {
            config: config.clone(),
            id,
        };
        container.wait_ready(0)?;
        tracing::info!(id = %container.short_id(), image = %config.image, host_port, advertised, "broker container started");
        Ok(container)
    }

    fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// The container's log (stdout and stderr).
    pub(crate) fn log(&self) -> String {
        let output = Command::new("docker").args(["logs", &self.id]).output();
        match output {
            Ok(output) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => format!("(docker logs failed: {error})"),
        }
    }

    fn ready_lines(&self) -> usize {
        self.log().matches(self.config.ready_line()).count()
    }

    /// Waits until the readiness line has appeared more than `seen` times: the published
    /// port accepts connections (docker-proxy) before the broker listens, so a connect
    /// proves nothing.
    fn wait_ready(&self, seen: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ready_lines() > seen {
                return Ok(());
            }
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &self.id]).unwrap_or_default();
            if running == "false" || Instant::now() > deadline {
                return Err(unavailable(format!(
                    "broker container {} ({}) is not ready within {READY_TIMEOUT:?} (running: {running}); its log:\n{}",
                    self.short_id(),
                    self.config.image,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.id]).is_ok_and(|running| running == "true")
    }

    /// `docker kill`: SIGKILL, the container stops at once.
    pub(crate) fn kill(&self) -> Result<(), ClusterError> {
        docker(&["kill", &self.id]).map(|_| ())
    }

    /// `docker stop`: SIGTERM, then SIGKILL after the grace period.
    pub(crate) fn stop(&self) -> Result<(), ClusterError> {
        docker(&["stop", "--time", &STOP_GRACE_S.to_string(), &self.id]).map(|_| ())
    }

    /// `docker start`, on the same host port, and waits for readiness.
    pub(crate) fn start_again(&self) -> Result<(), ClusterError> {
        let seen = self.ready_lines();
        docker(&["start", &self.id])?;
        self.wait_ready(seen)
    }

    /// Starts the container again, killing it first if it runs.
    pub(crate) fn restart(&self) -> Result<(), ClusterError> {
        if self.running() {
            self.kill()?;
        }
        self.start_again()
    }

    /// `docker pause`: the cgroup freezer stops every process; connections stay open.
    pub(crate) fn pause(&self) -> Result<(), ClusterError> {
        docker(&["pause", &self.id]).map(|_| ())
    }

    /// `docker unpause`.
    pub(crate) fn unpause(&self) -> Result<(), ClusterError> {
        docker(&["unpause", &self.id]).map(|_| ())
    }

    /// The container leaves the bridge network: its published port goes with it, and
    /// clients are refused until it is back.
    pub(crate) fn disconnect(&self) -> Result<(), ClusterError> {
        docker(&["network", "disconnect", "bridge", &self.id]).map(|_| ())
    }

    /// The container joins the bridge network again; the same host port comes back.
    pub(crate) fn connect(&self) -> Result<(), ClusterError> {
        docker(&["network", "connect", "bridge", &self.id]).map(|_| ())
    }
}

impl Drop for BrokerContainer {
    fn drop(&mut self) {
        if let Err(error) = docker(&["rm", "--force", "--volumes", &self.id]) {
            tracing::warn!(%error, id = %self.short_id(), "removing the broker container");
        }
    }
}

impl Cluster {
    /// Starts a broker container from `config`'s image on a free, fixed host port, behind a
    /// chaos proxy that the broker advertises, and waits until it is ready.
    pub fn container(config: &ContainerConfig) -> Result<Cluster, ClusterError> {
        let host_port = crate::tansu::free_port()?;
        let proxy: proxy::ChaosProxy = start_proxy("container", host_port)?;
        let advertised = proxy.address().to_string();
        let container = BrokerContainer::start(config, host_port, &advertised)?;
        Ok(Cluster {
            backend: crate::Backend::Container,
            bootstrap: advertised,
            mock: None,
            tansu: None,
            container: Some(container),
            kafka: None,
            proxy: Some(proxy),
        })
    }

    /// The image of a container backend.
    pub fn container_image(&self) -> Option<&str> {
        self.container.as_ref().map(|container| container.config.image.as_str())
    }

    /// Whether the broker loses its messages when it stops (tansu's memory storage).
    pub fn loses_data_on_restart(&self) -> bool {
        self.tansu.is_some()
            || self
                .container
                .as_ref()
                .is_some_and(|container| container.config.kind == ImageKind::Tansu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_setting_chooses_image_and_kind() {
        assert_eq!(ContainerConfig::named(None).image, DEFAULT_IMAGE);
        assert_eq!(ContainerConfig::named(None).kind, ImageKind::ApacheKafka);
        assert_eq!(ContainerConfig::named(Some("tansu")).image, LOCAL_TANSU_IMAGE);
        assert_eq!(ContainerConfig::named(Some("tansu")).kind, ImageKind::Tansu);
        assert_eq!(ContainerConfig::named(Some("my/tansu:1")).kind, ImageKind::Tansu);
        assert_eq!(ContainerConfig::named(Some("apache/kafka:3.8.0")).kind, ImageKind::ApacheKafka);
        assert_eq!(ContainerConfig::named(Some("  ")).image, DEFAULT_IMAGE);
    }

    #[test]
    fn each_image_kind_advertises_the_address_clients_use() {
        let tansu = ContainerConfig::named(Some("tansu")).environment("127.0.0.1:4000");
        assert!(
            tansu.contains(&"ADVERTISED_LISTENER_URL=tcp://127.0.0.1:4000".to_owned()),
            "{tansu:?}"
        );
        let kafka = ContainerConfig::named(None).environment("127.0.0.1:4000");
        assert!(
            kafka.contains(&"KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:4000".to_owned()),
            "{kafka:?}"
        );
    }
}
