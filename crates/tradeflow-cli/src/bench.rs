//! `tradeflow bench`: the macro benchmark. Finds each configuration's highest sustainable
//! rate, measures latency at fractions of it and the raw limits of the same broker and
//! store, and writes results.json, report.md and SVG charts (see `tradeflow_bench`).

use crate::progress;
use anyhow::Context;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use tokio::sync::watch;
use tradeflow_bench::harness::{self, BenchConfig, Reporter};
use tradeflow_bench::results::Setup;
use tradeflow_check::RunProgress;
use tradeflow_cluster::Backend;
use tradeflow_store::{StoreConfig, StoreKind};

/// Arguments of `tradeflow bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The whole matrix (poller: 2 intervals × 2 batch sizes × 1-2 pollers; stream: 3
    /// partition counts × 2 consumer counts × 2 lingers × 2 batch sizes × 2 fill waits, 5
    /// and 20 ms) instead of one configuration of each architecture (the stream's fills its
    /// batches for up to 20 ms). Takes hours on 2 cores.
    #[arg(long)]
    full: bool,
    /// Workload seed of every run.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The SLO: a rate is sustainable when p99 stays at most this (ms) and everything is
    /// applied within this of the last send.
    #[arg(long, default_value_t = 500.0)]
    slo_p99_ms: f64,
    /// Where results go: DIR/<date-time>/ and DIR/latest/.
    #[arg(long, default_value = "target/tradeflow-bench")]
    out: PathBuf,
    /// Setups the stream runs on, comma separated BROKER+STORE: mock+sqlite, tansu+postgres,
    /// kafka+postgres (Apache Kafka, three nodes), and any other pairing of a backend (mock,
    /// tansu, kafka, container, external) with sqlite or postgres. A setup whose broker or database is missing is skipped
    /// with the reason in the report.
    #[arg(long, value_delimiter = ',', default_value = "mock+sqlite,tansu+postgres")]
    setups: Vec<String>,
    /// Seconds of events per probe run: the span over which a rate is decided (at least 95%
    /// of it achieved, p99 and the drain within the SLO). Shorter than 15 s is a smoke test,
    /// and the report says so.
    #[arg(long, default_value_t = tradeflow_bench::harness::DECIDING_PROBE_S)]
    probe_seconds: f64,
    /// Runs at each configuration's highest sustainable rate after its search, to report
    /// the spread of its throughput and p99. A rate that most of its runs (the search's
    /// probe and these) did not sustain does not hold: the highest sustainable rate steps
    /// down to the next one the search found (at most twice), and the report says so.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    repeats: u32,
    /// Bisection steps after the doubling search (default 2 quick, 4 full).
    #[arg(long)]
    bisect_steps: Option<u32>,
    /// The first rate each search offers, events/s; it doubles from there.
    #[arg(long, default_value_t = 2_000.0)]
    start_rate: f64,
    /// Fractions of the highest sustainable rate at which latency is measured, comma
    /// separated (default 0.25,0.5,0.75 quick; 0.1,0.25,0.5,0.75,0.9 full).
    #[arg(long, value_delimiter = ',')]
    fractions: Option<Vec<f64>>,
    /// PostgreSQL for the +postgres setups (default: DATABASE_URL, then the local server
    /// `.ci/run` starts).
    #[arg(long)]
    database_url: Option<String>,
}

struct Lines {
    terminal: bool,
}

impl Reporter for Lines {
    fn line(&self, text: &str) {
        eprintln!("{text}");
    }

    fn run(&self, label: &str, updates: watch::Receiver<RunProgress>) {
        if self.terminal {
            drop(progress::spawn(label.to_owned(), updates));
        }
    }
}

fn setup(name: &str, database_url: &str, directory: &std::path::Path) -> anyhow::Result<Setup> {
    let (broker, store) = name
        .split_once('+')
        .ok_or_else(|| anyhow::anyhow!("setup {name:?} is not BROKER+STORE (e.g. mock+sqlite)"))?;
    let broker: Backend = broker.parse().with_context(|| format!("setup {name:?}"))?;
    let store = match store {
        "sqlite" => StoreConfig::sqlite_file(&directory.join(format!("bench-{}.db", broker.as_str()))),
        "postgres" => StoreConfig {
            kind: StoreKind::Postgres,
            url: database_url.to_owned(),
        },
        other => anyhow::bail!("unknown store {other:?} in setup {name:?} (sqlite or postgres)"),
    };
    Ok(Setup { broker, store })
}

/// Runs the bench; true when it wrote its results.
pub async fn run(arguments: BenchArgs) -> anyhow::Result<bool> {
    let database_url = arguments
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|url| !url.is_empty()))
        .unwrap_or_else(|| "postgres://tradeflow:tradeflow@127.0.0.1:5432/tradeflow".to_owned());
    // SQLite files of the runs: beside the results, emptied by every run.
    let scratch = arguments.out.join("stores");
    crate::args::ensure_writable_dir(&scratch, "--out")?;
    let setups = arguments
        .setups
        .iter()
        .map(|name| setup(name.trim(), &database_url, &scratch))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quick = !arguments.full;
    if arguments.slo_p99_ms.is_nan() || arguments.slo_p99_ms <= 0.0 {
        anyhow::bail!(
            "--slo-p99-ms must be a positive number of milliseconds, got {}",
            arguments.slo_p99_ms
        );
    }
    if !(arguments.probe_seconds > 0.0 && arguments.probe_seconds <= 600.0) {
        anyhow::bail!("--probe-seconds must be in (0, 600]");
    }
    if let Some(fraction) = arguments
        .fractions
        .iter()
        .flatten()
        .find(|fraction| !(**fraction > 0.0 && **fraction <= 1.0))
    {
        anyhow::bail!("--fractions must each be in (0, 1], got {fraction}");
    }
    if !(arguments.start_rate.is_finite() && arguments.start_rate >= 1.0) {
        anyhow::bail!("--start-rate must be at least 1 event/s, got {}", arguments.start_rate);
    }
    let config = BenchConfig {
        quick,
        seed: arguments.seed,
        slo_p99_ms: arguments.slo_p99_ms,
        start_rate: arguments.start_rate,
        probe_seconds: arguments.probe_seconds,
        repeats: arguments.repeats,
        bisect_steps: arguments.bisect_steps.unwrap_or(if quick { 2 } else { 4 }),
        fractions: arguments.fractions.clone().unwrap_or_else(|| {
            if quick {
                vec![0.25, 0.5, 0.75]
            } else {
                vec![0.1, 0.25, 0.5, 0.75, 0.9]
            }
        }),
        setups,
        service_binary: std::env::current_exe().ok(),
    };
    eprintln!(
        "seed {}: tradeflow bench, {} matrix, SLO p99 ≤ {} ms, setups {}",
        config.seed,
        if quick { "quick" } else { "full" },
        config.slo_p99_ms,
        arguments.setups.join(", ")
    );
    let reporter = Lines {
        terminal: std::io::stderr().is_terminal(),
    };
    let results = harness::run(&config, &reporter).await?;
    let dated = tradeflow_bench::report::write(&arguments.out, &results)?;
    println!("{}", tradeflow_bench::report::markdown(&results));
    println!("written: {} (and {})", dated.display(), arguments.out.join("latest").display());
    Ok(true)
}
