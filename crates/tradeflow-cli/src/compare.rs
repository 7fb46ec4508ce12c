//! `tradeflow compare`: the main job. The same seeded workload through the poller and the
//! stream, on the same store, then a side-by-side table, `results.json` and `report.md`.

use crate::args::{PollerKnobs, StoreArgs, WorkloadArgs, write_json};
use crate::run_stream::StreamKnobs;
use crate::{ceilings, progress, run_stream};
use anyhow::Context;
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{RunProgress, RunRecord};
use tradeflow_poller::{PollerConfig, RunOptions};

/// Arguments of `tradeflow compare`.
#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    poller: PollerKnobs,
    #[command(flatten)]
    knobs: StreamKnobs,
    /// Where the stream's events come from. `outbox` (the default, the fair pairing): the
    /// system of record inserts the events into its table as the poller's does (one writer,
    /// the events due together in one transaction) and a relay publishes the table (rows
    /// not yet marked relayed, marked once acknowledged): both architectures pay the system
    /// of record's write. `memory`: the publisher sends the workload as it comes due, and
    /// the stream pays no write of its own (cheaper than the poller by that write).
    #[arg(long, value_enum, default_value_t = Source::Outbox)]
    source: Source,
    /// Give up on a run whose backlog or lag has not shrunk for this many seconds.
    #[arg(long, default_value_t = 30)]
    stall_timeout_s: u64,
    /// Where to write results.json and report.md (and each side's record,
    /// poller.json and stream.json).
    #[arg(long, default_value = "tradeflow-compare")]
    out: PathBuf,
    /// Skip the ceiling search: only the fixed-rate table.
    #[arg(long)]
    no_ceilings: bool,
    /// The p99 SLOs of the ceiling search, ms, comma separated: each architecture's highest
    /// sustainable rate is searched under each, and the headline is their ratio.
    #[arg(long, value_delimiter = ',', default_values_t = [100.0, 500.0])]
    slo_p99_ms: Vec<f64>,
    /// The first rate the ceiling search offers, events/s; it doubles from there.
    #[arg(long, default_value_t = 2_000.0)]
    ceiling_start_rate: f64,
    /// Seconds of events per ceiling probe.
    #[arg(long, default_value_t = 4.0)]
    probe_seconds: f64,
    /// Bisection steps per SLO after the doubling.
    #[arg(long, default_value_t = 2)]
    bisect_steps: u32,
    /// Run one side only, writing its record to --record: how compare runs each side, in a
    /// process of its own.
    #[arg(long, value_enum, hide = true, requires = "record")]
    side: Option<Side>,
    /// Where --side writes its record.
    #[arg(long, hide = true)]
    record: Option<PathBuf>,
}

/// One side of the comparison (`--side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Side {
    /// The poller.
    Poller,
    /// The stream.
    Stream,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Poller => "poller",
            Side::Stream => "stream",
        }
    }
}

/// Where the stream's events come from (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// Published from memory as they come due.
    Memory,
    /// Written to the system of record's outbox table, then relayed.
    Outbox,
}

/// Runs both architectures, each in a process of its own (this executable with `--side`),
/// so that each one's CPU and peak RSS are its own; returns whether both passed the checker.
pub async fn run(mut arguments: CompareArgs) -> anyhow::Result<bool> {
    if let (Some(side), Some(record)) = (arguments.side, &arguments.record) {
        return run_side(&arguments, side, record).await;
    }
    let workload = arguments.workload.config()?;
    // One seed for every side and probe, drawn here when none was given.
    arguments.workload.seed = Some(workload.seed);
    // Bad settings and a missing store are refused here, before any side starts.
    drop(side_options(&arguments)?);
    if !arguments.no_ceilings {
        check_ceiling_settings(&arguments)?;
    }
    crate::args::ensure_writable_dir(&arguments.out, "--out")?;
    arguments.store.open().await?.close().await;
    println!("seed: {}", workload.seed);
    let mut runs = Vec::new();
    for side in [Side::Poller, Side::Stream] {
        runs.push(run_in_own_process(&arguments, side, None).await?);
    }
    // When the last event was due: what a side applies after it is its drain.
    let last_send_s = tradeflow_domain::Workload::generate(&workload)
        .context("the workload")?
        .events
        .last()
        .map_or(0.0, |last| last.intended_offset_ns as f64 / 1e9);
    print!("{}", side_by_side(&runs, last_send_s));
    let ceilings = if arguments.no_ceilings {
        None
    } else {
        Some(search_ceilings(&arguments, workload.seed).await?)
    };
    if let Some(ceilings) = &ceilings {
        print!("{}", ceilings_text(ceilings));
    }
    let results = arguments.out.join("results.json");
    write_json(
        &results,
        &serde_json::json!({ "seed": runs[0].seed, "runs": runs, "ceilings": ceilings }),
    )?;
    let report = arguments.out.join("report.md");
    let mut markdown = report_markdown(&runs, &arguments, last_send_s);
    if let Some(ceilings) = &ceilings {
        markdown.push_str(&ceilings_markdown(ceilings, &arguments, workload.seed));
    }
    std::fs::write(&report, markdown).with_context(|| format!("writing {}", report.display()))?;
    println!("written: {} and {}", results.display(), report.display());
    Ok(runs.iter().all(|record| record.check.verdict == Verdict::Pass))
}

/// Flags a side's process gets from compare itself, not from compare's command line.
const SET_FOR_THE_SIDE: [&str; 5] = ["--database-url", "--seed", "--rate", "--events", "--record"];

/// The arguments this process was started with, for a side's process: `--database-url`
/// left out (the side reads it from `DATABASE_URL`, so that no password is on a command
/// line); the seed, the rate and the events set (a probe's `rate` and `events` when given);
/// `--side` and `--record` added.
fn side_command(
    arguments: &CompareArgs,
    side: Side,
    record: &std::path::Path,
    probe: Option<(f64, u64)>,
) -> anyhow::Result<std::process::Command> {
    let executable = std::env::current_exe().context("finding this executable, to run each side in a process of its own")?;
    let mut command = std::process::Command::new(executable);
    let mut skip_value = false;
    for argument in std::env::args_os().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        match argument.to_str() {
            Some(text) if SET_FOR_THE_SIDE.contains(&text) => skip_value = true,
            Some(text) if SET_FOR_THE_SIDE.iter().any(|flag| text.starts_with(&format!("{flag}="))) => {}
            _ => {
                command.arg(argument);
            }
        }
    }
    let workload = arguments.workload.config()?;
    let (rate, events) = probe.unwrap_or((workload.rate_per_s, workload.events));
    command
        .args(["--seed", &workload.seed.to_string()])
        .args(["--rate", &rate.to_string(), "--events", &events.to_string()]);
    command.args(["--side", side.as_str(), "--record"]).arg(record);
    if let Some(url) = &arguments.store.database_url {
        match arguments.store.store {
            crate::args::StoreChoice::Postgres => {
                command.env("DATABASE_URL", url);
            }
            crate::args::StoreChoice::Sqlite => {
                command.arg("--database-url").arg(url);
            }
        }
    }
    Ok(command)
}

/// Runs one side in a process of its own (at a probe's rate and events, when given) and
/// reads back its record.
async fn run_in_own_process(arguments: &CompareArgs, side: Side, probe: Option<(f64, u64)>) -> anyhow::Result<RunRecord> {
    let record = match probe {
        None => arguments.out.join(format!("{}.json", side.as_str())),
        Some(_) => arguments.out.join(format!("{}-probe.json", side.as_str())),
    };
    let _ = std::fs::remove_file(&record);
    let mut command = side_command(arguments, side, &record, probe)?;
    if probe.is_some() {
        // A probe's own lines would bury the search's: it says what it found in its record.
        command.stdout(std::process::Stdio::null());
    }
    let status = tokio::task::spawn_blocking(move || command.status())
        .await
        .context("waiting for a side's process")?
        .with_context(|| format!("starting the {} side's process", side.as_str()))?;
    // 0: it passed; 3: it finished and the checker found something (the table shows what).
    if !matches!(status.code(), Some(0 | 3)) {
        anyhow::bail!("the {} side's process failed ({status}); its error is above", side.as_str());
    }
    let text = std::fs::read(&record).with_context(|| format!("reading the {} side's record {}", side.as_str(), record.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing the {} side's record {}", side.as_str(), record.display()))
}

/// Both sides' ceilings under each SLO, and their ratio.
#[derive(Debug, Clone, serde::Serialize)]
struct Ceilings {
    slos_ms: Vec<f64>,
    probe_seconds: f64,
    poller: ceilings::SideCeilings,
    stream: ceilings::SideCeilings,
    /// What each side's settings alone let an event wait before its transaction.
    waits: ConfiguredWaits,
}

/// How long each side's settings alone let an event wait before the transaction that
/// applies it, in ms: a side whose wait reaches an SLO cannot meet it at any rate, and the
/// headline says so instead of a bare 0/s.
#[derive(Debug, Clone, serde::Serialize)]
struct ConfiguredWaits {
    /// The poll interval: a row that lands just after a poll waits all of it.
    poller_ms: u64,
    /// What sets it, to name in the headline.
    poller_settings: &'static str,
    /// The relay's interval (with the outbox source), the producer's linger, the batch fill
    /// wait and the fetch wait (the mock broker waits all of it on an empty fetch).
    stream_ms: u64,
    stream_settings: &'static str,
}

impl ConfiguredWaits {
    fn of(arguments: &CompareArgs) -> ConfiguredWaits {
        let relay_ms = match arguments.source {
            Source::Outbox => tradeflow_stream::outbox::RELAY_INTERVAL.as_millis() as u64,
            Source::Memory => 0,
        };
        ConfiguredWaits {
            poller_ms: arguments.poller.poll_interval_ms,
            poller_settings: "--poll-interval-ms",
            stream_ms: relay_ms
                + u64::from(arguments.knobs.linger_ms)
                + arguments.knobs.fill_wait_ms
                + u64::from(arguments.knobs.fetch_wait_max_ms),
            stream_settings: match arguments.source {
                Source::Outbox => "the outbox relay's interval, --linger-ms, --fill-wait-ms, --fetch-wait-max-ms",
                Source::Memory => "--linger-ms, --fill-wait-ms, --fetch-wait-max-ms",
            },
        }
    }
}

/// The ceiling search's settings, refused with the reason before anything runs; returns
/// the SLOs.
fn check_ceiling_settings(arguments: &CompareArgs) -> anyhow::Result<Vec<f64>> {
    let slos_ms = arguments.slo_p99_ms.clone();
    if slos_ms.is_empty() || slos_ms.iter().any(|slo| !slo.is_finite() || *slo <= 0.0) {
        anyhow::bail!("--slo-p99-ms wants positive numbers of ms, comma separated, got {slos_ms:?}");
    }
    if !(arguments.probe_seconds > 0.0 && arguments.ceiling_start_rate > 0.0) {
        anyhow::bail!("--probe-seconds and --ceiling-start-rate must be above zero");
    }
    Ok(slos_ms)
}

/// Searches each side's highest sustainable rate under each SLO, every probe a process of
/// its own.
async fn search_ceilings(arguments: &CompareArgs, seed: u64) -> anyhow::Result<Ceilings> {
    let mut slos_ms = check_ceiling_settings(arguments)?;
    slos_ms.sort_by(|a, b| b.total_cmp(a));
    let search = ceilings::Search {
        start_rate: arguments.ceiling_start_rate,
        probe_seconds: arguments.probe_seconds,
        bisect_steps: arguments.bisect_steps,
        slos_ms: slos_ms.clone(),
    };
    println!(
        "
ceilings (seed {seed}): the highest sustainable rate of each under p99 ≤ {} ms, {} s probes doubling from {:.0}/s, {} bisection steps per SLO, each probe a process of its own",
        slos_ms.iter().map(|slo| format!("{slo:.0}")).collect::<Vec<_>>().join(" and "),
        arguments.probe_seconds,
        arguments.ceiling_start_rate,
        arguments.bisect_steps
    );
    let mut found = Vec::new();
    for side in [Side::Poller, Side::Stream] {
        println!("{}:", side.as_str());
        found.push(
            ceilings::search(
                &search,
                |rate, events| run_in_own_process(arguments, side, Some((rate, events))),
                |line| println!("{line}"),
            )
            .await?,
        );
    }
    let stream = found.pop().unwrap_or_else(|| unreachable!("two sides searched"));
    let poller = found.pop().unwrap_or_else(|| unreachable!("two sides searched"));
    Ok(Ceilings {
        slos_ms,
        probe_seconds: arguments.probe_seconds,
        poller,
        stream,
        waits: ConfiguredWaits::of(arguments),
    })
}

/// What the field reported: the rewrite's gain in throughput over the poller it replaced.
const FIELD_GAIN: &str = "the field reported 5x (Wealthsimple, \"Kafka in production\", March 2021 edition) and 8x (its other edition)";

/// The headline lines: each SLO's ceilings and their ratio.
fn headline(ceilings: &Ceilings) -> Vec<String> {
    ceilings
        .slos_ms
        .iter()
        .map(|slo| {
            let (poller, stream) = (ceilings.poller.at(*slo).unwrap_or(0.0), ceilings.stream.at(*slo).unwrap_or(0.0));
            let ratio = ceilings::ratio(poller, stream).map_or("no ratio: a side sustained no rate tried".to_owned(), |ratio| {
                format!("{ratio:.2}x")
            });
            let waits = &ceilings.waits;
            let mut line = format!("at p99 ≤ {slo:.0} ms: poller {poller:.0}/s, stream {stream:.0}/s: stream/poller {ratio}");
            for (name, ceiling, wait_ms, settings) in [
                ("poller", poller, waits.poller_ms, waits.poller_settings),
                ("stream", stream, waits.stream_ms, waits.stream_settings),
            ] {
                if ceiling == 0.0 && wait_ms as f64 >= *slo {
                    let _ = write!(
                        line,
                        "; the {name}'s settings alone let an event wait up to {wait_ms} ms before its transaction ({settings}), so no rate could meet this SLO: shorten them to search it"
                    );
                }
            }
            line
        })
        .collect()
}

fn ceilings_text(ceilings: &Ceilings) -> String {
    let mut text = String::from(
        "
highest sustainable rates, each side in processes of its own:
",
    );
    for line in headline(ceilings) {
        let _ = writeln!(text, "  {line}");
    }
    let _ = writeln!(
        text,
        "  ({FIELD_GAIN}; this machine, this seed and these settings measured the above)"
    );
    text
}

fn ceilings_markdown(ceilings: &Ceilings, arguments: &CompareArgs, seed: u64) -> String {
    let mut text = format!(
        "
## Ceilings: how much more can the new system take?

Each side's highest sustainable rate (checker passes, p99 within the SLO, everything applied within the SLO of the last send, 95% of the offered rate achieved), searched by doubling from {:.0}/s then {} bisection steps per SLO, with {} s of events per probe, seed {seed}, every probe a process of its own. The {} lines below are this machine's; {FIELD_GAIN}.

",
        arguments.ceiling_start_rate,
        arguments.bisect_steps,
        arguments.probe_seconds,
        ceilings.slos_ms.len()
    );
    for line in headline(ceilings) {
        let _ = writeln!(text, "- {line}");
    }
    for (name, side) in [("poller", &ceilings.poller), ("stream", &ceilings.stream)] {
        let _ = writeln!(
            text,
            "
{name}'s probes (offered → applied, p99, drain after the last send):
"
        );
        for probe in &side.probes {
            let _ = writeln!(
                text,
                "- {:.0}/s → {:.0}/s, p99 {:.1} ms, drain {:.0} ms, checker {}",
                probe.offered_per_s, probe.throughput_per_s, probe.p99_ms, probe.drain_ms, probe.verdict
            );
        }
    }
    text
}

/// The poller's configuration and the stream's options these arguments give.
fn side_options(arguments: &CompareArgs) -> anyhow::Result<(PollerConfig, tradeflow_stream::StreamOptions)> {
    let workload = arguments.workload.config()?;
    let stall_timeout = Duration::from_secs(arguments.stall_timeout_s);
    let poller = PollerConfig {
        poll_interval: Duration::from_millis(arguments.poller.poll_interval_ms),
        batch_size: arguments.poller.batch_size,
        pollers: 1,
        shard_by_account: false,
    };
    poller.validate().context("checking the poller options")?;
    let mut stream_options = arguments.knobs.options(workload, stall_timeout);
    if arguments.source == Source::Outbox {
        stream_options.scenario.outbox = Some(tradeflow_stream::outbox::Outbox {
            writers: 1,
            hold_max: Duration::ZERO,
            relay: tradeflow_stream::outbox::Relay::Claiming,
        });
    }
    stream_options.validate().context("checking the stream options")?;
    Ok((poller, stream_options))
}

/// One side, in this process: its run, its record written to `record`; returns whether it
/// passed the checker.
async fn run_side(arguments: &CompareArgs, side: Side, record: &std::path::Path) -> anyhow::Result<bool> {
    let (poller, stream_options) = side_options(arguments)?;
    // The workload and stall timeout the stream's options were built from serve the poller too.
    let (workload, stall_timeout) = (stream_options.workload.clone(), stream_options.stall_timeout);
    let store = arguments.store.open().await?;
    let run = match side {
        Side::Poller => {
            println!("[1/2] {} on {} ({})", poller.label(), store.kind(), store.url_redacted());
            let (sender, receiver) = watch::channel(RunProgress::default());
            let drawing = progress::spawn("poller".into(), receiver);
            let run = tradeflow_poller::run(
                &store,
                &RunOptions {
                    workload,
                    poller,
                    stall_timeout,
                    orders_per_s: None,
                },
                &sender,
            )
            .await;
            drop(sender);
            let _ = drawing.await;
            run.context("running the poller")?
        }
        Side::Stream => {
            print!("[2/2] ");
            let cluster = arguments.knobs.cluster()?;
            run_stream::run_once(&store, &cluster, &stream_options).await?
        }
    };
    store.close().await;
    write_json(record, &run)?;
    Ok(run.check.verdict == Verdict::Pass)
}

/// The table's rows; `last_send_s`: when the last event was due, from the start.
fn rows(runs: &[RunRecord], last_send_s: f64) -> Vec<(String, Vec<String>)> {
    let row = |name: &str, value: &dyn Fn(&RunRecord) -> String| (name.to_owned(), runs.iter().map(value).collect());
    vec![
        row("configuration", &|r| r.label.clone()),
        row("store / broker", &|r| {
            format!("{} / {}", r.store, r.broker.clone().unwrap_or_else(|| "-".into()))
        }),
        row("events come from", &source_of),
        row("events applied", &|r| format!("{} of {}", r.applied, r.events)),
        row("throughput (events/s)", &|r| format!("{:.0}", r.throughput_per_s)),
        row("latency p50 (ms)", &|r| format!("{:.1}", r.latency_ms.p50)),
        row("latency p99 (ms)", &|r| format!("{:.1}", r.latency_ms.p99)),
        row("latency p999 (ms)", &|r| format!("{:.1}", r.latency_ms.p999)),
        row("latency max (ms)", &|r| format!("{:.1}", r.latency_ms.max)),
        row("db statements per event", &|r| {
            format!("{:.3}", r.db_statements as f64 / r.events.max(1) as f64)
        }),
        row("cpu (s)", &|r| format!("{:.2}", r.process.cpu_s)),
        row("peak rss (MB)", &|r| format!("{:.1}", r.process.rss_max_mb)),
        row("worst lag / backlog", &|r| r.worst_lag()),
        // How long after the last event was due the side had applied everything: with
        // `--profile burst`, how long the market-open spike took to drain.
        row("all applied after the last send (ms)", &|r| {
            format!("{:.0}", ((r.duration_s - last_send_s) * 1_000.0).max(0.0))
        }),
        row("lost / dup / reordered", &|r| {
            format!("{} / {} / {}", r.check.lost, r.check.duplicated, r.check.reordered)
        }),
        row("bad balances / mismatched", &|r| {
            format!("{} / {}", r.check.bad_balances, r.check.mismatched_accounts)
        }),
        row("verdict", &|r| format!("{:?}", r.check.verdict).to_uppercase()),
    ]
}

/// Where a run's events came from, and whether its system of record paid a durable write
/// for each: the poller's table always; the stream's outbox, or memory (no write).
fn source_of(record: &RunRecord) -> String {
    if record.architecture == "poller" {
        "its table: a durable insert per event".to_owned()
    } else if record.config.get("outbox").is_some_and(|outbox| !outbox.is_null()) {
        "an outbox table and a relay: a durable insert per event".to_owned()
    } else {
        "memory: no write of its own".to_owned()
    }
}

fn side_by_side(runs: &[RunRecord], last_send_s: f64) -> String {
    let rows = rows(runs, last_send_s);
    let name_width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .flat_map(|(_, values)| values.iter().map(String::len))
        .max()
        .unwrap_or(0);
    let mut text = format!("\n  {:<name_width$}  {:<value_width$}  {}\n", "", "poller", "stream");
    for (name, values) in rows {
        let _ = writeln!(
            text,
            "  {name:<name_width$}  {}",
            values
                .iter()
                .map(|value| format!("{value:<value_width$}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
    }
    text
}

fn report_markdown(runs: &[RunRecord], arguments: &CompareArgs, last_send_s: f64) -> String {
    let mut text = format!(
        "# tradeflow compare, seed {}\n\nThe same {} events (seed {}, {} accounts, {} events/s offered, {} profile) through the poller and \
         the stream, on the same {} store. Reproduce with:\n\n```sh\ncargo run --release --bin tradeflow -- compare --seed {} --events {} --rate {} --store {}\n```\n\n",
        runs[0].seed,
        runs[0].events,
        runs[0].seed,
        arguments.workload.accounts,
        arguments.workload.rate,
        arguments.workload.profile.as_str(),
        runs[0].store,
        runs[0].seed,
        runs[0].events,
        arguments.workload.rate,
        runs[0].store,
    );
    text.push_str("| | poller | stream |\n|---|---|---|\n");
    for (name, values) in rows(runs, last_send_s) {
        let _ = writeln!(text, "| {name} | {} |", values.join(" | "));
    }
    let _ = write!(
        text,
        "\n## How to read it\n\n\
         Each side ran in a process of its own (`poller.json` and `stream.json` beside this report are their records), so \
         its CPU and peak RSS are its own; the stream's process also holds the mock cluster when the broker is `mock`, and \
         each side's process holds the whole workload and its checker. \
         Latency runs from each event's **intended** send time (open-loop load) to the commit of its balance update, so a \
         system that falls behind shows it in its percentiles instead of hiding it. The checker reads the apply log and the \
         balances back from the database and compares them with an oracle computed from the workload alone.\n\n\
         ## The poller's settings, and what depends on them\n\n\
         The poller polls every {} ms when the table is drained and immediately again after a full batch of {} rows, applying \
         each batch in one transaction, as production outbox pollers commonly do: an interval of about a tenth of a second \
         keeps the idle cost of polling low while bounding the wait of a new row, and a few hundred rows per transaction \
         amortize its commit. These are not tuned against the stream.\n\n\
         - **Latency** depends on the interval: while the poller keeps up, a new row waits on average half an interval \
           before it is claimed, so the poller's p50 moves with `--poll-interval-ms`.\n\
         - **Throughput ceiling** depends on the batch size and the store: one poller applies at most one batch per \
           transaction round trip. Below that ceiling both architectures apply what is offered, so their throughput is the \
           offered rate.\n\
         - **Database statements per event** depend on the batch size for the poller (per-batch statements are shared by \
           more events) and on the batch a consumer gathers for the stream.\n\
         - **Ordering**: one poller keeps per-account order; several unsharded pollers on PostgreSQL do not \
           (`tradeflow run poller --pollers 2`), which the stream avoids by keying each account to one partition.\n\n\
         The stream ran with {} partitions and {} consumers, producer linger {} ms, {} messages per transaction, a batch \
         fill wait of {} ms and a fetch wait of up to {} ms, {}, {}{}, on the `{}` broker{}.\n",
        arguments.poller.poll_interval_ms,
        arguments.poller.batch_size,
        arguments.knobs.partitions,
        arguments.knobs.consumers,
        arguments.knobs.linger_ms,
        arguments.knobs.stream_batch_size,
        arguments.knobs.fill_wait_ms,
        arguments.knobs.fetch_wait_max_ms,
        match arguments.knobs.commit_interval_ms {
            0 => "offsets committed after every batch".to_owned(),
            ms => format!("the offsets applied committed every {ms} ms at most"),
        },
        if arguments.knobs.pipeline {
            "each consumer filling its next batch while it applied one (--pipeline)"
        } else {
            "each batch applied before the next was fetched"
        },
        if arguments.knobs.group_commit {
            ", the consumers' batches group-committed by one writer (--group-commit)"
        } else {
            ""
        },
        runs[1].broker.clone().unwrap_or_default(),
        if runs[1].broker.as_deref() == Some("mock") {
            " (librdkafka's in-process mock cluster: the real protocol, but no replication and no disk, so broker costs are lower than \
             a production cluster's)"
        } else {
            ""
        },
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(ceilings: &[(f64, f64)]) -> ceilings::SideCeilings {
        ceilings::SideCeilings {
            ceilings: ceilings.to_vec(),
            probes: Vec::new(),
        }
    }

    fn ceilings(poller: &[(f64, f64)], stream: &[(f64, f64)], poller_ms: u64, stream_ms: u64) -> Ceilings {
        Ceilings {
            slos_ms: vec![500.0, 100.0],
            probe_seconds: 4.0,
            poller: side(poller),
            stream: side(stream),
            waits: ConfiguredWaits {
                poller_ms,
                poller_settings: "--poll-interval-ms",
                stream_ms,
                stream_settings: "--linger-ms",
            },
        }
    }

    #[test]
    fn a_side_whose_settings_alone_reach_the_slo_is_named_with_them_not_left_at_zero() {
        // A compare run's case: the poller polling every 100 ms sustains nothing under
        // p99 ≤ 100 ms.
        let lines = headline(&ceilings(
            &[(500.0, 32_000.0), (100.0, 0.0)],
            &[(500.0, 22_000.0), (100.0, 20_000.0)],
            100,
            25,
        ));
        assert_eq!(lines[0], "at p99 ≤ 500 ms: poller 32000/s, stream 22000/s: stream/poller 0.69x");
        assert_eq!(
            lines[1],
            "at p99 ≤ 100 ms: poller 0/s, stream 20000/s: stream/poller no ratio: a side sustained no rate tried; \
             the poller's settings alone let an event wait up to 100 ms before its transaction (--poll-interval-ms), \
             so no rate could meet this SLO: shorten them to search it"
        );
        // A side at 0/s whose settings stay under the SLO: no such reason is claimed.
        let lines = headline(&ceilings(
            &[(500.0, 32_000.0), (100.0, 0.0)],
            &[(500.0, 22_000.0), (100.0, 20_000.0)],
            20,
            25,
        ));
        assert!(!lines[1].contains("settings alone"), "{}", lines[1]);
    }
}
