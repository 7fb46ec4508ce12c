//! `tradeflow run poller`.

use crate::args::{PollerKnobs, StoreArgs, WorkloadArgs, finish};
use crate::progress;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::RunProgress;
use tradeflow_poller::{PollerConfig, RunOptions};

/// Arguments of `tradeflow run poller`.
#[derive(Args)]
pub struct PollerArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    knobs: PollerKnobs,
    /// Number of pollers. On PostgreSQL they claim rows with FOR UPDATE SKIP LOCKED; on
    /// SQLite the single writer serializes them.
    #[arg(long, default_value_t = 1)]
    pollers: u32,
    /// Give each poller a disjoint set of accounts, so that per-account order holds with
    /// several pollers.
    #[arg(long)]
    shard_by_account: bool,
    /// Give up when the backlog has not shrunk for this many seconds after the last event
    /// was emitted; what is unapplied then counts as lost.
    #[arg(long, default_value_t = 30)]
    stall_timeout_s: u64,
    /// Write the run record (JSON) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the poller; returns whether the checker passed.
pub async fn run(arguments: PollerArgs) -> anyhow::Result<bool> {
    let workload = arguments.workload.config()?;
    println!("seed: {}", workload.seed);
    let poller = PollerConfig {
        poll_interval: Duration::from_millis(arguments.knobs.poll_interval_ms),
        batch_size: arguments.knobs.batch_size,
        pollers: arguments.pollers,
        shard_by_account: arguments.shard_by_account,
    };
    poller.validate().context("checking the poller options")?;
    if let Some(path) = &arguments.json {
        crate::args::ensure_writable_file(path, "--json")?;
    }
    let store = arguments.store.open().await?;
    println!(
        "{} on {} ({}), {} events at {}/s ({})",
        poller.label(),
        store.kind(),
        store.url_redacted(),
        workload.events,
        workload.rate_per_s,
        workload.profile.as_str()
    );
    let options = RunOptions {
        workload,
        poller,
        stall_timeout: Duration::from_secs(arguments.stall_timeout_s),
        orders_per_s: None,
    };
    let (sender, receiver) = watch::channel(RunProgress::default());
    let drawing = progress::spawn("poller".into(), receiver);
    let outcome = tradeflow_poller::run(&store, &options, &sender).await;
    drop(sender);
    let _ = drawing.await;
    let record = outcome.context("running the poller")?;
    finish(&record, arguments.json.as_deref(), &store).await
}
