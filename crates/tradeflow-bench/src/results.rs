//! The bench's results: what was measured (configurations, setups, points, series, raw
//! limits, the SLO), shared by the harness that measures them and the report that writes
//! them, so that neither imports the other.

use crate::limits::RawRate;
use crate::threads::ThreadShare;
use serde::Serialize;
use tradeflow_cluster::Backend;
use tradeflow_store::StoreConfig;

/// A broker and a store the stream runs on (the poller needs only the store).
#[derive(Debug, Clone)]
pub struct Setup {
    /// The broker.
    pub broker: Backend,
    /// The store.
    pub store: StoreConfig,
}

impl Setup {
    /// `mock+sqlite` and the like.
    pub fn label(&self) -> String {
        format!("{}+{}", self.broker.as_str(), self.store.kind.as_str())
    }
}

/// One configuration of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "architecture", rename_all = "lowercase")]
pub enum Knobs {
    /// The poller: interval × batch size × pollers (sharded by account when more than one).
    Poller {
        /// Poll interval, ms.
        interval_ms: u64,
        /// Rows per poll.
        batch_size: usize,
        /// Pollers.
        pollers: u32,
    },
    /// The stream: partitions × consumers × linger × apply batch × fill wait.
    Stream {
        /// Partitions of the topic.
        partitions: i32,
        /// Consumers in the group.
        consumers: u32,
        /// Producer linger, ms.
        linger_ms: u32,
        /// Most messages applied in one transaction.
        batch_size: usize,
        /// How long a consumer waits to fill a batch once its first message is in, ms.
        fill_wait_ms: u32,
    },
}

impl Knobs {
    /// A short label: `poller i20 b500 x1`, `stream p6 c2 l5 b500 f20`.
    pub fn label(&self) -> String {
        match self {
            Knobs::Poller {
                interval_ms,
                batch_size,
                pollers,
            } => format!("poller i{interval_ms} b{batch_size} x{pollers}"),
            Knobs::Stream {
                partitions,
                consumers,
                linger_ms,
                batch_size,
                fill_wait_ms,
            } => format!("stream p{partitions} c{consumers} l{linger_ms} b{batch_size} f{fill_wait_ms}"),
        }
    }
}

/// One probe or fraction run, as it goes into results.json.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Offered rate, events/s.
    pub offered_per_s: f64,
    /// Achieved rate, events/s (applied / duration).
    pub throughput_per_s: f64,
    /// Latency percentiles, ms.
    pub latency_ms: tradeflow_check::LatencySummary,
    /// The stream's: from each event's intended time to the broker's acknowledgement, ms
    /// (about the part of the latency before a consumer could read the event).
    pub acked_latency_ms: Option<tradeflow_check::LatencySummary>,
    /// Whether the run met the SLO.
    pub sustainable: bool,
    /// Why not, when it did not.
    pub reason: Option<String>,
    /// CPU seconds of the bench process during the run.
    pub cpu_s: f64,
    /// Peak RSS of the bench process so far, MB (broker mock, publisher and service share it).
    pub rss_max_mb: f64,
    /// Checker verdict.
    pub verdict: String,
    /// CPU per kind of thread while the run went, busiest first (the bench process holds
    /// the publisher, the mock broker and the balance service).
    pub threads: Vec<ThreadShare>,
    /// The machine's busy cores meanwhile (tansu and the database server included).
    pub machine_busy_cores: Option<f64>,
    /// Where the stream's consumers spent their time, wall-clock seconds summed over
    /// consumers, by phase of their loop (the run record's `config.consumer_time_s`).
    pub consumer_time_s: Option<std::collections::BTreeMap<String, f64>>,
    /// Events per batch transaction on average (applied and skipped as already applied,
    /// over the batches that committed; the stream's, where the record says).
    pub mean_batch: Option<f64>,
    /// Microseconds an event spent inside its batch's transaction, summed over the
    /// consumers (their `applying` time over the events of those batches; the wait for the
    /// connection is `queued`, left out): what the raw store apply's
    /// [`StoreApplyAt::in_transaction_us_per_event`] is compared with.
    pub in_transaction_us_per_event: Option<f64>,
}

/// Throughput and lag over time of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// `(seconds, events applied per second)`, sampled every half second.
    pub throughput: Vec<(f64, f64)>,
    /// `(seconds, events emitted per second)`: acknowledged by the broker (stream) or
    /// inserted into the table (poller), sampled with `throughput`.
    pub published: Vec<(f64, f64)>,
    /// `(seconds, offset lag or backlog rows)`.
    pub lag: Vec<(f64, f64)>,
}

/// Everything measured for one configuration on one setup.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    /// `poller i20 b500 x1` and the like.
    pub label: String,
    /// `mock+sqlite`, or the store alone for the poller.
    pub setup: String,
    /// The knobs.
    pub knobs: Knobs,
    /// The highest sustainable rate found (0 when no probe was, down to the lowest the
    /// bisection tried).
    pub max_sustainable_per_s: f64,
    /// Every search probe, in order.
    pub probes: Vec<Point>,
    /// Runs at fractions of the maximum, as `(fraction, point)`.
    pub at_fraction: Vec<(f64, Point)>,
    /// Runs at the maximum again after the search (`--repeats`): its spread.
    pub repeats: Vec<Point>,
    /// Rates the search found sustainable that did not hold when run again (most of their
    /// runs were not sustainable), highest first: the maximum stepped down from each.
    pub unheld: Vec<Unheld>,
    /// Time series of the run at half the maximum (or the last probe).
    pub series: Series,
    /// Stream only: max / min(raw produce, raw consume, raw apply at this configuration's
    /// batch size and consumers).
    pub efficiency: Option<f64>,
    /// Stream only: that minimum, the raw rate the efficiency divides by, events/s.
    pub slowest_limit_per_s: Option<f64>,
    /// Stream only: the raw store apply this configuration is read against: its batch
    /// size, one writer per consumer.
    pub store_apply: Option<StoreApplyAt>,
    /// Stream only: which raw limit is the slowest (`produce`, `consume`, `store apply`).
    pub bounded_by: Option<String>,
}

/// A rate the search found sustainable that did not hold: run again, most of its runs
/// (the search's probe and the repeats) were not sustainable.
#[derive(Debug, Clone, Serialize)]
pub struct Unheld {
    /// The offered rate, events/s.
    pub offered_per_s: f64,
    /// Its runs after the search's probe.
    pub repeats: Vec<Point>,
}

impl Unheld {
    /// `(sustainable runs, runs)`, the search's probe (sustainable) included.
    pub fn sustained(&self) -> (usize, usize) {
        (
            1 + self.repeats.iter().filter(|point| point.sustainable).count(),
            1 + self.repeats.len(),
        )
    }
}

/// The raw store apply at one batch size and number of writers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoreApplyAt {
    /// Events per batch.
    pub batch_size: usize,
    /// Concurrent writers, each with its share of the accounts.
    pub writers: usize,
    /// Events applied per second.
    pub per_s: f64,
    /// Microseconds an event spent inside its batch's transaction, summed over the
    /// writers, each one's wait for a connection left out.
    pub in_transaction_us_per_event: Option<f64>,
}

/// Raw limits of one setup.
#[derive(Debug, Clone, Serialize)]
pub struct SetupLimits {
    /// `mock+sqlite` and the like.
    pub setup: String,
    /// Raw produce (acks=all, idempotent).
    pub produce: Option<RawRate>,
    /// Raw consume, no processing.
    pub consume: Option<RawRate>,
    /// Raw store batch apply (batches of the stream's batch size), one task.
    pub store_apply: RawRate,
    /// Batch size of the store-apply limit.
    pub store_apply_batch: usize,
    /// The raw store apply at each stream configuration's batch size and consumers.
    pub store_apply_by_config: Vec<StoreApplyAt>,
    /// Peak RSS of `tradeflow balance-service` as its own process, MB.
    pub balance_service_rss_mb: Option<f64>,
    /// Why a limit is missing.
    pub notes: Vec<String>,
}

/// The whole result, `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// Workload seed.
    pub seed: u64,
    /// `quick` or `full`.
    pub matrix: String,
    /// The SLO.
    pub slo: Slo,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds the whole run took.
    pub duration_s: f64,
    /// The machine: cores and the OS.
    pub machine: serde_json::Value,
    /// Raw limits per setup.
    pub limits: Vec<SetupLimits>,
    /// Per configuration.
    pub configurations: Vec<ConfigResult>,
    /// Setups that could not run, with the reason.
    pub skipped: Vec<String>,
}

/// The latency SLO of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Slo {
    /// p99 at most this, ms.
    pub p99_ms: f64,
    /// And everything applied within this of the last intended send, ms.
    pub drain_ms: f64,
    /// And achieved at least this share of the offered rate over the probe.
    pub achieved_min: f64,
    /// Seconds of events per probe: the span over which each rate is decided.
    pub probe_seconds: f64,
    /// Runs at the highest sustainable rate after the search, for its spread.
    pub repeats: u32,
}

/// Whether a fraction is the half at which latency targets and series are taken.
pub fn is_half(fraction: f64) -> bool {
    (fraction - 0.5).abs() < 1e-9
}
