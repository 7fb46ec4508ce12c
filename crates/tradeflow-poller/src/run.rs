//! A whole poller run: the open-loop source, the pollers, the checker and the record.

use crate::{PollerConfig, PollerCounters, PollerError, poll_loop};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tradeflow_check::orders::OrdersDuringRun;
use tradeflow_check::{
    BacklogSample, Drain, DrainWatch, LatencyRecorder, ProcessStats, RunProgress, RunRecord, check_workload, duration_and_throughput,
};
use tradeflow_domain::{ScheduledEvent, Workload, WorkloadConfig};
use tradeflow_store::{SourceRow, Store, now_ns};

/// Most events the source inserts in one transaction when it has fallen behind.
pub const SOURCE_BATCH_MAX: usize = 1_000;
/// How often progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The workload.
    pub workload: WorkloadConfig,
    /// The pollers.
    pub poller: PollerConfig,
    /// How long the run waits, once the source is done, for a backlog that does not
    /// shrink before it gives up; what is still unapplied then is reported as lost.
    pub stall_timeout: Duration,
    /// Order requests a second asked of the balances table while the run goes (the
    /// order-placement lesson); `None`: none.
    pub orders_per_s: Option<f64>,
}

/// Runs the workload through the pollers on `store` (emptied first) and checks the result.
/// Progress goes to `progress` while it runs.
pub async fn run(store: &Store, options: &RunOptions, progress: &watch::Sender<RunProgress>) -> Result<RunRecord, PollerError> {
    options.poller.validate()?;
    let workload = Arc::new(tradeflow_store::spill::generate(&options.workload)?);
    store.reset().await?;
    let statements_before = store.statements();
    let process_before = ProcessStats::current();
    let counters = Arc::new(PollerCounters::default());
    let (stop, stop_receiver) = watch::channel(false);
    let pollers = spawn_pollers(store, &options.poller, &stop_receiver, &counters);

    let start = Instant::now();
    let start_ns = now_ns();
    let emitted = Arc::new(AtomicU64::new(0));
    let source = tokio::spawn(source(store.clone(), workload.clone(), start, start_ns, emitted.clone()));
    let orders = options
        .orders_per_s
        .map(|per_s| OrdersDuringRun::start(store.clone(), &workload, per_s, start, tradeflow_check::orders::Desk::Plain));
    let watching = Watching {
        workload: &workload,
        counters: &counters,
        emitted: &emitted,
        start,
        start_ns,
        stall_timeout: options.stall_timeout,
    };
    let backlog = drive(&watching, source, progress).await?;
    let mut config = record_config(options);
    if let Some(orders) = orders {
        orders.finish(&workload).await.record_into(&mut config);
    }
    stop.send_replace(true);
    let mut latency = LatencyRecorder::new();
    for (index, handle) in pollers.into_iter().enumerate() {
        latency.merge(&join(&format!("poller-{index}"), handle).await??);
    }

    let db_statements = store.statements() - statements_before;
    let process = ProcessStats::current().since(&process_before);
    let emitted_count = usize::try_from(emitted.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    // The source inserts in order, so the first `emitted_count` events are the inserted ones.
    let (check, applied) = check_workload(store, &workload, |index| index < emitted_count).await?;

    let last_commit_ns = i64::try_from(counters.last_commit_ns.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    let (duration_s, throughput_per_s) = duration_and_throughput(start_ns, last_commit_ns, applied);
    Ok(RunRecord {
        seed: options.workload.seed,
        architecture: "poller".into(),
        label: options.poller.label(),
        store: store.kind().as_str().into(),
        broker: None,
        config,
        events: workload.events.len() as u64,
        applied,
        duration_s,
        throughput_per_s,
        latency_ms: latency.summary(),
        db_statements,
        process,
        check,
        lag: Vec::new(),
        backlog,
        faults: Vec::new(),
    })
}

/// Starts the configured number of pollers, each on its shard, until `stop` turns true.
fn spawn_pollers(
    store: &Store,
    config: &PollerConfig,
    stop: &watch::Receiver<bool>,
    counters: &Arc<PollerCounters>,
) -> Vec<JoinHandle<Result<LatencyRecorder, PollerError>>> {
    (0..config.pollers)
        .map(|index| {
            let name = format!("poller-{index}");
            tokio::spawn(poll_loop(
                store.clone(),
                config.clone(),
                config.shard(index),
                name,
                stop.clone(),
                counters.clone(),
            ))
        })
        .collect()
}

/// What the run loop reads: the workload, what the source emitted and the pollers did,
/// and the clock the run started on.
struct Watching<'a> {
    workload: &'a Workload,
    counters: &'a PollerCounters,
    emitted: &'a AtomicU64,
    start: Instant,
    start_ns: i64,
    stall_timeout: Duration,
}

/// The run loop: publishes progress and samples the backlog every [`PROGRESS_INTERVAL`],
/// and returns the samples once the source is done and everything it inserted is
/// processed, or once the backlog stops shrinking for the stall timeout (what is
/// unprocessed then counts as lost).
async fn drive(
    watching: &Watching<'_>,
    source: JoinHandle<Result<(), PollerError>>,
    progress: &watch::Sender<RunProgress>,
) -> Result<Vec<BacklogSample>, PollerError> {
    let Watching {
        workload,
        counters,
        emitted,
        start,
        start_ns,
        stall_timeout,
    } = *watching;
    let total = workload.events.len() as u64;
    let mut source = Some(source);
    let mut watch = DrainWatch::new(stall_timeout);
    let mut backlog = Vec::new();
    loop {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let emitted_now = emitted.load(Ordering::Relaxed);
        let processed = counters.processed.load(Ordering::Relaxed);
        backlog.push(backlog_sample(workload, start, start_ns, emitted_now, processed));
        progress.send_replace(RunProgress {
            total,
            emitted: emitted_now,
            applied: counters.applied.load(Ordering::Relaxed),
            backlog: emitted_now.saturating_sub(processed),
        });
        if source.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = source.take()
        {
            join("the source", handle).await??;
        }
        match watch.observe(source.is_none(), emitted_now, processed) {
            Drain::Running => {}
            Drain::Drained => return Ok(backlog),
            Drain::Stalled => {
                tracing::warn!(
                    processed,
                    emitted = emitted_now,
                    "the backlog did not shrink for {:?}; stopping and reporting what is unapplied as lost",
                    stall_timeout
                );
                return Ok(backlog);
            }
        }
    }
}

/// The run's configuration as the record holds it: the pollers' knobs and the workload's
/// shape.
fn record_config(options: &RunOptions) -> serde_json::Value {
    let config = &options.poller;
    let workload_config = &options.workload;
    serde_json::json!({
        "poll_interval_ms": config.poll_interval.as_millis() as u64,
        "batch_size": config.batch_size,
        "pollers": config.pollers,
        "shard_by_account": config.shard_by_account,
        "accounts": workload_config.accounts,
        "skew": workload_config.skew,
        "rate_per_s": workload_config.rate_per_s,
        "profile": workload_config.profile.as_str(),
    })
}

/// The system of record: inserts each event into `trade_events` at its intended send time
/// (open loop: a slow database delays inserts but not the schedule latency is measured
/// from).
async fn source(store: Store, workload: Arc<Workload>, start: Instant, start_ns: i64, emitted: Arc<AtomicU64>) -> Result<(), PollerError> {
    let mut next = 0;
    while next < workload.events.len() {
        let elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let end = workload.due(next, elapsed_ns, SOURCE_BATCH_MAX);
        if end == next {
            let due_ns = workload.events.get(next).map_or(0, |scheduled| scheduled.intended_offset_ns);
            tokio::time::sleep_until((start + Duration::from_nanos(due_ns)).into()).await;
            continue;
        }
        let due: Vec<ScheduledEvent> = workload.events.range(next, end).collect();
        let rows: Vec<SourceRow<'_>> = due
            .iter()
            .zip(next as u64..)
            .map(|(scheduled, event_index)| SourceRow {
                event_index,
                event: &scheduled.event,
                intended_at_ns: start_ns.saturating_add(i64::try_from(scheduled.intended_offset_ns).unwrap_or(i64::MAX)),
            })
            .collect();
        store.insert_source_events(&rows).await?;
        emitted.fetch_add((end - next) as u64, Ordering::Relaxed);
        next = end;
    }
    Ok(())
}

/// The backlog now. Rows are claimed in insertion order, so the oldest unprocessed row is
/// the first event not yet processed (exactly with one poller, nearly with several).
fn backlog_sample(workload: &Workload, start: Instant, start_ns: i64, emitted: u64, processed: u64) -> BacklogSample {
    let rows = emitted.saturating_sub(processed);
    let oldest_age_ms = match workload.events.get(usize::try_from(processed).unwrap_or(usize::MAX)) {
        Some(oldest) if rows > 0 => {
            let intended_at_ns = start_ns.saturating_add(i64::try_from(oldest.intended_offset_ns).unwrap_or(i64::MAX));
            (now_ns() - intended_at_ns).max(0) as f64 / 1e6
        }
        _ => 0.0,
    };
    BacklogSample {
        t_s: start.elapsed().as_secs_f64(),
        rows: i64::try_from(rows).unwrap_or(i64::MAX),
        oldest_age_ms,
    }
}

async fn join<T>(task: &str, handle: JoinHandle<T>) -> Result<T, PollerError> {
    handle.await.map_err(|error| PollerError::Task {
        task: task.to_owned(),
        reason: error.to_string(),
    })
}
