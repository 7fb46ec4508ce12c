//! librdkafka's mock cluster, owned by a thread of its own.

use crate::ClusterError;
use crate::faults::{Api, Fault, RequestError};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;

/// Most request errors one fault may queue.
const REQUEST_ERRORS_MAX: usize = 10_000;
/// What librdkafka's mock cluster keeps of a partition, in MB (`max_size` in
/// `rdkafka_mock.c`, not configurable): beyond it, it deletes the oldest messages, read or
/// not, as retention would. A consumer lagging further behind loses messages.
pub const MOCK_PARTITION_RETAINED_MB: u32 = 5;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::sync::mpsc;
use std::thread::JoinHandle;

type MockWork = Box<dyn FnOnce(&MockCluster<'static, DefaultProducerContext>) + Send>;

/// Sends work to the thread that owns the mock cluster; dropping it stops the cluster.
pub(crate) struct MockHandle {
    bootstrap: String,
    work: Option<mpsc::Sender<MockWork>>,
    thread: Option<JoinHandle<()>>,
}

impl MockHandle {
    pub(crate) fn start(brokers: i32) -> Result<MockHandle, ClusterError> {
        let (work_sender, work_receiver) = mpsc::channel::<MockWork>();
        let (ready_sender, ready_receiver) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("mock-cluster".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_sender.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = ready_sender.send(Ok(cluster.bootstrap_servers()));
                // Runs work until every handle is gone, then drops the cluster here, on
                // the thread that created it.
                while let Ok(work) = work_receiver.recv() {
                    work(&cluster);
                }
            })
            .map_err(|error| ClusterError::Mock {
                operation: "starting its thread".into(),
                reason: error.to_string(),
            })?;
        let bootstrap = ready_receiver
            .recv()
            .map_err(|_| ClusterError::Mock {
                operation: "starting".into(),
                reason: "the mock thread stopped".into(),
            })?
            .map_err(|reason| ClusterError::Mock {
                operation: "starting".into(),
                reason,
            })?;
        tracing::info!(bootstrap = %bootstrap, brokers, "mock cluster started");
        Ok(MockHandle {
            bootstrap,
            work: Some(work_sender),
            thread: Some(thread),
        })
    }

    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Runs `work` on the cluster's thread and returns its result.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        operation: &str,
        work: impl FnOnce(&MockCluster<'static, DefaultProducerContext>) -> T + Send + 'static,
    ) -> Result<T, ClusterError> {
        let (reply_sender, reply_receiver) = tokio::sync::oneshot::channel();
        let stopped = || ClusterError::Mock {
            operation: operation.to_owned(),
            reason: "the mock thread stopped".into(),
        };
        self.work
            .as_ref()
            .ok_or_else(stopped)?
            .send(Box::new(move |cluster| {
                let _ = reply_sender.send(work(cluster));
            }))
            .map_err(|_| stopped())?;
        reply_receiver.await.map_err(|_| stopped())
    }

    pub(crate) async fn create_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<(), ClusterError> {
        let topic = name.to_owned();
        let operation = format!("creating topic {name}");
        self.with(&operation, move |cluster| cluster.create_topic(&topic, partitions, replication))
            .await?
            .map_err(|error| ClusterError::Mock {
                operation,
                reason: error.to_string(),
            })
    }
}

impl MockHandle {
    /// Injects a mock fault; `Ok(false)` when the fault is not one the mock has.
    pub(crate) async fn inject(&self, fault: &Fault) -> Result<bool, ClusterError> {
        let fault = fault.clone();
        let operation = format!("injecting {fault}");
        let result = self
            .with(&operation, move |cluster| match fault {
                Fault::BrokerDown { broker } => Some(cluster.broker_down(broker)),
                Fault::BrokerUp { broker } => Some(cluster.broker_up(broker)),
                Fault::RoundTripTime { broker, delay_ms } => Some(cluster.broker_round_trip_time(broker, Duration::from_millis(delay_ms))),
                Fault::RequestErrors { api, error, count } => {
                    let api = match api {
                        Api::Produce => RDKafkaApiKey::Produce,
                        Api::Fetch => RDKafkaApiKey::Fetch,
                        Api::OffsetCommit => RDKafkaApiKey::OffsetCommit,
                        Api::JoinGroup => RDKafkaApiKey::JoinGroup,
                        Api::Metadata => RDKafkaApiKey::Metadata,
                    };
                    let error = match error {
                        RequestError::NotLeader => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                        RequestError::RequestTimedOut => RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                        RequestError::Disconnect => RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
                    };
                    cluster.request_errors(api, &vec![error; count.min(REQUEST_ERRORS_MAX)]);
                    Some(Ok(()))
                }
                Fault::LeaderMove { topic, partition, broker } => Some(cluster.partition_leader(&topic, partition, Some(broker))),
                _ => None,
            })
            .await?;
        match result {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(error)) => Err(ClusterError::Mock {
                operation,
                reason: error.to_string(),
            }),
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        drop(self.work.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
