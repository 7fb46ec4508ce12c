//! Arguments shared by several commands, and logging setup.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tradeflow_domain::{RateProfile, WorkloadConfig};
use tradeflow_store::{Store, StoreConfig, StoreKind};

/// Where logs go and how they look.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` on standard error, filtered by `RUST_LOG` (default: warnings).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The store backends, as the command line names them.
#[derive(Clone, Copy, ValueEnum)]
pub enum StoreChoice {
    /// A SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server at --database-url.
    Postgres,
}

/// Which database to use.
#[derive(Args)]
pub struct StoreArgs {
    /// The database backend.
    #[arg(long, value_enum, default_value_t = StoreChoice::Sqlite)]
    pub store: StoreChoice,
    /// Where the database is: a file path for SQLite (default tradeflow.db in the current
    /// directory), postgres://USER:PASSWORD@HOST:PORT/DB for PostgreSQL (default: the
    /// DATABASE_URL environment variable). The run empties tradeflow's tables first.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// `--store`'s value, as the command line spells it.
    pub fn choice_name(&self) -> &'static str {
        match self.store {
            StoreChoice::Sqlite => "sqlite",
            StoreChoice::Postgres => "postgres",
        }
    }

    /// The store configuration these arguments name.
    pub fn config(&self) -> anyhow::Result<StoreConfig> {
        Ok(match (self.store, &self.database_url) {
            (StoreChoice::Sqlite, None) => StoreConfig::sqlite_file(&PathBuf::from("tradeflow.db")),
            (StoreChoice::Sqlite, Some(url)) if url.starts_with("postgres") => {
                bail!(
                    "--store sqlite was given a PostgreSQL URL ({}); pass --store postgres, or unset DATABASE_URL",
                    tradeflow_store::connect::redact(url)
                )
            }
            (StoreChoice::Sqlite, Some(url)) => StoreConfig {
                kind: StoreKind::Sqlite,
                url: url.clone(),
            },
            (StoreChoice::Postgres, Some(url)) => StoreConfig {
                kind: StoreKind::Postgres,
                url: url.clone(),
            },
            (StoreChoice::Postgres, None) => match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => StoreConfig {
                    kind: StoreKind::Postgres,
                    url,
                },
                _ => bail!(
                    "--store postgres needs --database-url or DATABASE_URL, for example postgres://tradeflow:tradeflow@127.0.0.1:5432/tradeflow"
                ),
            },
        })
    }

    /// Opens and migrates the store.
    pub async fn open(&self) -> anyhow::Result<Store> {
        let config = self.config()?;
        Store::connect(&config)
            .await
            .with_context(|| format!("opening the {} store", config.kind))
    }
}

/// The seeded workload.
#[derive(Args)]
pub struct WorkloadArgs {
    /// Seed of the workload; the same seed gives the same events. Random when omitted
    /// (and printed first, so the run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of events.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Number of accounts (activity is skewed: a few hot accounts trade most).
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u32,
    /// How skewed account activity is: the Zipf exponent of an account's share by its rank,
    /// 0 (every account alike) to 4. At the default 1.1 over 1,000 accounts the hottest
    /// account makes about 18% of the events, and its partition carries them all: the
    /// hot key that no partition count spreads.
    #[arg(long, default_value_t = tradeflow_domain::workload::ACCOUNT_SKEW)]
    pub skew: f64,
    /// Offered rate, events per second (open loop: events are due at their intended time
    /// whether or not the system keeps up).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// How the rate changes: steady, ramp (10% to 100%), burst (a 10x spike at 40-50%).
    #[arg(long, default_value = "steady", value_parser = parse_profile)]
    pub profile: RateProfile,
}

fn parse_profile(text: &str) -> Result<RateProfile, String> {
    text.parse().map_err(|error: tradeflow_domain::WorkloadError| error.to_string())
}

impl WorkloadArgs {
    /// The workload configuration, with the seed chosen if none was given.
    pub fn config(&self) -> anyhow::Result<WorkloadConfig> {
        let seed = self.seed.unwrap_or_else(random_seed);
        let config = WorkloadConfig {
            seed,
            events: self.events,
            accounts: self.accounts,
            rate_per_s: self.rate,
            profile: self.profile,
            skew: self.skew,
            mix: tradeflow_domain::EventMix::default(),
        };
        config.validate().context("checking the workload")?;
        Ok(config)
    }
}

/// A seed from the clock and the process id, for runs given none.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// Checks, before a run, that `directory` can be created and written (a file made in it and
/// removed again), so that an unwritable output path fails at once instead of after the run
/// it was to hold. `flag` names the option in the error.
pub fn ensure_writable_dir(directory: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(directory).with_context(|| format!("creating the output directory {} ({flag})", directory.display()))?;
    let probe = directory.join(format!(".tradeflow-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("writing in the output directory {} ({flag})", directory.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks, before a run, that the file `path` can be written: its directory as
/// [`ensure_writable_dir`] checks it.
pub fn ensure_writable_file(path: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    match path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        Some(parent) => ensure_writable_dir(parent, flag),
        None => ensure_writable_dir(std::path::Path::new("."), flag),
    }
}

/// Writes a JSON value to a file, creating its directory.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Ends a single run: prints its table, writes its record if asked, closes the store, and
/// says whether the checker passed.
pub async fn finish(record: &tradeflow_check::RunRecord, json: Option<&std::path::Path>, store: &Store) -> anyhow::Result<bool> {
    print!("{}", record.table());
    if let Some(path) = json {
        write_json(path, record)?;
        println!("record written to {}", path.display());
    }
    store.close().await;
    Ok(record.check.verdict == tradeflow_check::history::Verdict::Pass)
}

/// The poller's knobs shared by `run poller` and `compare`.
#[derive(Args)]
pub struct PollerKnobs {
    /// How long a poller sleeps after a poll that found less than a full batch.
    #[arg(long, default_value_t = 100)]
    pub poll_interval_ms: u64,
    /// Most rows one poll claims and applies in one transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
}
