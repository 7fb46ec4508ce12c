//! `tradeflow experiment`: the lessons of running Kafka in production, as seeded runs.
//!
//! Each experiment runs variants of one configuration under one fault plan (printed before
//! the run) and prints a verdict table: variant, configuration, faults applied, lost /
//! duplicated / reordered / bad balances, the expected outcome and whether it happened.
//! `OUT/experiment.json` holds the same, with every run's check. Each variant gets a fresh
//! broker, so one variant's faults cannot leak into the next.

use crate::args::{StoreArgs, write_json};
use crate::progress;
use crate::run_stream;
use anyhow::{Context, bail};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use tokio::sync::watch;
use tradeflow_check::history::Verdict;
use tradeflow_check::{CheckReport, RunProgress, RunRecord};
use tradeflow_cluster::Backend;
use tradeflow_lab::{LESSONS, RowVerdict, Setup, Variant, VariantRun};
use tradeflow_store::Store;

/// Arguments of `tradeflow experiment`.
#[derive(Args)]
pub struct ExperimentArgs {
    /// The experiment to run, or `list` to see them all.
    name: String,
    /// Seed of the workload and of the fault plan's timings; random when omitted (and
    /// printed first).
    #[arg(long)]
    seed: Option<u64>,
    /// The broker: mock, tansu, kafka (Apache Kafka, three nodes: the replication lessons),
    /// container (TRADEFLOW_CONTAINER_IMAGE chooses the image) or external (--bootstrap or
    /// KAFKA_BOOTSTRAP_SERVERS).
    #[arg(long, default_value_t = Backend::Mock, value_parser = run_stream::backend_parser())]
    broker: Backend,
    /// Bootstrap servers for --broker external.
    #[arg(long)]
    bootstrap: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Events per variant.
    #[arg(long, default_value_t = 6_000)]
    events: u64,
    /// Offered rate per variant, events per second.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Where to write experiment.json.
    #[arg(long, default_value = "tradeflow-experiment")]
    out: PathBuf,
}

/// One variant's outcome, as experiment.json holds it.
#[derive(serde::Serialize)]
struct VariantOutcome {
    label: String,
    config: serde_json::Value,
    faults: Vec<tradeflow_check::FaultRecord>,
    check: CheckReport,
    expected: &'static str,
    expected_detail: String,
    note: String,
    /// When the broker deleted messages before they were read: what retention would have
    /// covered the run.
    retention: Option<String>,
    /// Every planned fault fired (otherwise the row is unknown).
    faults_fired: bool,
    as_expected: bool,
    applied: u64,
    events: u64,
    throughput_per_s: f64,
    latency_p99_ms: f64,
    worst_lag: String,
}

/// Runs an experiment (or lists them); returns whether every variant came out as expected.
pub async fn run(arguments: ExperimentArgs) -> anyhow::Result<bool> {
    if arguments.name == "list" {
        for lesson in LESSONS {
            println!("{:<20} {}", lesson.name, lesson.what);
        }
        return Ok(true);
    }
    let Some(lesson) = tradeflow_lab::find(&arguments.name) else {
        bail!(
            "no experiment named {:?}; these exist: {}",
            arguments.name,
            LESSONS.iter().map(|lesson| lesson.name).collect::<Vec<_>>().join(", ")
        );
    };
    let seed = arguments.seed.unwrap_or_else(crate::args::random_seed);
    println!("seed: {seed}");
    println!("experiment {}: {}", lesson.name, lesson.what);
    crate::args::ensure_writable_dir(&arguments.out, "--out")?;
    let broker = arguments.broker.as_str();
    let setup = Setup {
        seed,
        events: arguments.events,
        rate: arguments.rate,
        broker: arguments.broker,
        store: arguments.store.config()?.kind,
        service: Some(tradeflow_stream::process::ServiceProcesses {
            executable: std::env::current_exe().context("finding this tradeflow executable, to start the balance service as processes")?,
            store: arguments.store.config()?,
        }),
    };
    anyhow::ensure!(
        setup.events >= 1_000,
        "--events must be at least 1000 for the faults to land mid-run"
    );
    anyhow::ensure!(setup.rate >= 100.0, "--rate must be at least 100 events/s");
    let variants = match (lesson.variants)(&setup) {
        Ok(variants) => variants,
        Err(reason) => {
            return Err(NotHere {
                experiment: lesson.name,
                broker: broker.to_owned(),
                store: setup.store.as_str(),
                reason,
            }
            .into());
        }
    };
    let store = arguments.store.open().await?;
    let mut outcomes = Vec::with_capacity(variants.len());
    for (index, variant) in variants.iter().enumerate() {
        println!("\n[{}/{}] {}", index + 1, variants.len(), variant.label);
        let record = run_variant(&store, arguments.broker, arguments.bootstrap.as_deref(), variant).await?;
        outcomes.push(outcome(variant, &record));
    }
    store.close().await;
    let left_out = (lesson.left_out)(&setup);
    println!("\n{}", verdict_table(lesson.name, seed, broker, &outcomes));
    for row in &left_out {
        println!("left out on {broker}: {row}");
    }
    let path = arguments.out.join("experiment.json");
    write_json(
        &path,
        &serde_json::json!({
            "experiment": lesson.name,
            "seed": seed,
            "broker": broker,
            "store": arguments.store.config()?.kind.as_str(),
            "variants": outcomes,
            "left_out": left_out,
        }),
    )?;
    println!("written: {}", path.display());
    let wrong = outcomes
        .iter()
        .filter(|outcome| outcome.faults_fired && !outcome.as_expected)
        .count();
    let unknown = outcomes.iter().filter(|outcome| !outcome.faults_fired).count();
    if wrong == 0 && unknown > 0 {
        return Err(Unknown { rows: unknown }.into());
    }
    Ok(wrong == 0)
}

/// An experiment none of whose rows came out wrong, but some of whose rows could not show
/// their lesson (exit code 2): neither a pass nor a failure.
#[derive(Debug)]
pub struct Unknown {
    rows: usize,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UNKNOWN: {} row(s) could not show the lesson (a planned fault did not fire, or caught nothing the lesson is about); run it again, or with another seed",
            self.rows
        )
    }
}

impl std::error::Error for Unknown {}

/// An experiment that cannot run honestly on the backend or store it was given (exit code 4).
#[derive(Debug)]
pub struct NotHere {
    experiment: &'static str,
    broker: String,
    store: &'static str,
    reason: String,
}

impl std::fmt::Display for NotHere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "experiment {} cannot run honestly on the {} backend with the {} store: {}",
            self.experiment, self.broker, self.store, self.reason
        )
    }
}

impl std::error::Error for NotHere {}

/// Judges one variant's run, prints the line under it and returns its outcome.
fn outcome(variant: &Variant, record: &RunRecord) -> VariantOutcome {
    let verdict = variant.verdict(record);
    let fired = verdict != RowVerdict::Unknown;
    let as_expected = verdict == RowVerdict::AsExpected;
    println!(
        "  -> lost {}, duplicated {}, reordered {}, bad balances {}: expected {}, {}",
        record.check.lost,
        record.check.duplicated,
        record.check.reordered,
        record.check.bad_balances,
        variant.expected.describe(),
        match (fired, as_expected) {
            (false, _) => "UNKNOWN: a planned fault did not fire, or caught nothing the lesson is about",
            (true, true) => "as expected",
            (true, false) => "NOT as expected",
        }
    );
    VariantOutcome {
        label: variant.label.clone(),
        config: record.config.clone(),
        faults: record.faults.clone(),
        check: record.check.clone(),
        expected: match variant.expected.verdict {
            Some(Verdict::Pass) => "pass",
            Some(Verdict::Fail) => "fail",
            None => "either",
        },
        expected_detail: variant.expected.describe(),
        note: variant.expected.note.clone(),
        retention: tradeflow_lab::lessons::retention::covering(record),
        faults_fired: fired,
        as_expected,
        applied: record.applied,
        events: record.events,
        throughput_per_s: record.throughput_per_s,
        latency_p99_ms: record.latency_ms.p99,
        worst_lag: record.worst_lag(),
    }
}

/// Runs one variant on a fresh broker, with its plan and progress shown (an experiment's
/// rows and a chapter's run).
pub async fn run_variant(store: &Store, broker: Backend, bootstrap: Option<&str>, variant: &Variant) -> anyhow::Result<RunRecord> {
    let cluster = variant
        .start_cluster(broker, bootstrap)
        .context("starting a fresh broker for the variant")?;
    let label = match (&variant.run, &cluster) {
        (VariantRun::Stream(options), Some(cluster)) => {
            print!("{}", options.scenario.plan);
            run_stream::announce(store, cluster, options);
            "stream"
        }
        _ => "poller",
    };
    let (sender, receiver) = watch::channel(RunProgress::default());
    let drawing = progress::spawn(label.into(), receiver);
    let record = variant.run_on(store, cluster.as_ref(), &sender).await;
    drop(sender);
    let _ = drawing.await;
    record.with_context(|| format!("running the {label}"))
}

/// The verdict table: a row per variant, columns padded to their widest cell, then each
/// variant's note and the faults it met, with what each did.
fn verdict_table(name: &str, seed: u64, broker: &str, outcomes: &[VariantOutcome]) -> String {
    let header = [
        "variant",
        "configuration",
        "faults applied",
        "lost",
        "dup",
        "reord",
        "bad bal",
        "expected",
        "as expected",
    ];
    let rows: Vec<[String; 9]> = outcomes.iter().map(verdict_row).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = format!("experiment {name}, seed {seed}, broker {broker}\n");
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(text, "{}", line(header.to_vec()));
    let _ = writeln!(
        text,
        "{}",
        widths.iter().map(|width| "-".repeat(*width)).collect::<Vec<_>>().join("-+-")
    );
    for row in &rows {
        let _ = writeln!(text, "{}", line(row.iter().map(String::as_str).collect()));
    }
    for outcome in outcomes {
        write_faults(&mut text, outcome);
    }
    text
}

/// One variant's row of the verdict table: its label, the configuration that matters to
/// the lessons, the faults applied, the checker's counts and the verdict.
fn verdict_row(outcome: &VariantOutcome) -> [String; 9] {
    let config = &outcome.config;
    let get = |key: &str| {
        config
            .get(key)
            .map(|value| value.to_string().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    [
        outcome.label.clone(),
        format!(
            "p={} c={} rf={} acks={} idem={} commit={} dlq={}",
            get("partitions"),
            get("consumers"),
            get("replication_factor"),
            get("acks"),
            get("enable_idempotence"),
            get("commit_policy"),
            get("dead_letter")
        ),
        outcome.faults.iter().filter(|fault| fault.error.is_none()).count().to_string(),
        outcome.check.lost.to_string(),
        outcome.check.duplicated.to_string(),
        outcome.check.reordered.to_string(),
        outcome.check.bad_balances.to_string(),
        outcome.expected_detail.clone(),
        match (outcome.faults_fired, outcome.as_expected) {
            (false, _) => "UNKNOWN",
            (true, true) => "yes",
            (true, false) => "NO",
        }
        .to_owned(),
    ]
}

/// A variant's note under the table, and each fault it met: when, what, why it was not
/// applied and what it did.
fn write_faults(text: &mut String, outcome: &VariantOutcome) {
    let _ = writeln!(text, "- {}: {}", outcome.label, outcome.note);
    if let Some(retention) = &outcome.retention {
        let _ = writeln!(text, "    retention: {retention}");
    }
    let _ = writeln!(text, "    worst lag {}", outcome.worst_lag);
    if let Some(orders) = outcome.config.get("orders") {
        let _ = writeln!(
            text,
            "    orders: {} answered, {} wrong ({:.1} per thousand: {} refused though affordable, {} accepted though not); {} stale reads, staleness p50 {:.0} ms, p99 {:.0} ms, worst {:.0} ms; answered {:.0} ms after the order at the median, {:.0} ms at p99",
            orders["answered"],
            outcome.config["orders_wrong"],
            orders["wrong_per_thousand"].as_f64().unwrap_or(0.0),
            orders["refused_affordable"],
            orders["accepted_unaffordable"],
            orders["stale_reads"],
            orders["staleness_ms_p50"].as_f64().unwrap_or(0.0),
            orders["staleness_ms_p99"].as_f64().unwrap_or(0.0),
            orders["staleness_ms_max"].as_f64().unwrap_or(0.0),
            orders["answer_ms_p50"].as_f64().unwrap_or(0.0),
            orders["answer_ms_p99"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(cutover) = outcome.config.get("cutover").filter(|cutover| !cutover.is_null()) {
        let _ = writeln!(
            text,
            "    cutover ({}{}): publisher moved at {:.2} s after a drain wait of {} ms, {} events published to the old topic not yet applied then{}",
            cutover["runbook"].as_str().unwrap_or("?"),
            if cutover["second_cluster"].as_bool() == Some(true) {
                ", to a second cluster"
            } else {
                ""
            },
            cutover["switched_at_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            cutover["drain_wait_ms"],
            cutover["old_unapplied_at_switch"],
            match (cutover["new_group_started_at_ms"].as_f64(), cutover["new_group_waited_ms"].as_u64()) {
                (Some(at), Some(waited)) => format!("; the new group started at {:.2} s, {waited} ms after the switch", at / 1000.0),
                _ => String::new(),
            }
        );
    }
    if let Some(outbox) = outcome.config.get("outbox") {
        let _ = writeln!(
            text,
            "    outbox: {} rows written by {} writers, {} relayed ({} relay); {} committed after a higher id had been relayed",
            outbox["written"],
            outbox["writers"],
            outbox["relayed"],
            outbox["relay"].as_str().unwrap_or("?"),
            outcome.config["outbox_late_commits"]
        );
    }
    if let Some(mb) = outcome.config.get("service_peak_rss_mb").and_then(serde_json::Value::as_f64) {
        let _ = writeln!(
            text,
            "    balance service process: peak RSS {mb:.1} MB (prefetch {}){}",
            outcome.config["prefetch"].as_str().unwrap_or("?"),
            outcome.config["backlog_drain_per_s"]
                .as_f64()
                .map(|rate| format!(", drained the backlog at {rate:.0} events/s"))
                .unwrap_or_default()
        );
    }
    if let Some(schema) = outcome.config.get("schema").filter(|schema| !schema.is_null()) {
        let _ = writeln!(
            text,
            "    schema: the producer writes {} from event {}, consumers read up to version {} at the start",
            schema["producer_writes"].as_str().unwrap_or("?"),
            schema["from_event"],
            schema["consumers_read_at_start"],
        );
    }
    if let Some(kinds) = outcome.config.get("dead_letters_by_kind").and_then(serde_json::Value::as_object) {
        for (kind, seen) in kinds {
            let _ = writeln!(
                text,
                "    dead letters {kind}: {}, the first because: {}",
                seen["count"],
                seen["reason"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(database) = outcome.config.get("database") {
        let _ = writeln!(
            text,
            "    database ({} retries, max.poll.interval.ms {}): out {:.1} s; {} calls during the outage ({:.1}/s), {} failed in all; breaker opened {} times; taken out of the group {} times; {}; {}",
            database["retry"].as_str().unwrap_or("?"),
            database["max_poll_interval_ms"],
            database["outage_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            database["calls_during_outage"],
            database["calls_per_s_during_outage"].as_f64().unwrap_or(0.0),
            outcome.config["database_failures"],
            outcome.config["breaker_opened"],
            outcome.config["max_poll_exceeded"],
            match database["resumed_ms_after_return"].as_u64() {
                Some(ms) => format!("first offset committed {:.1} s after the return", ms as f64 / 1000.0),
                None => "NO offset committed after the return".into(),
            },
            match database["drained_ms_after_return"].as_u64() {
                Some(ms) => format!("time lag under 1 s again {:.1} s after the return", ms as f64 / 1000.0),
                None => "time lag NOT under 1 s again by the end of the run".into(),
            }
        );
    }
    if let Some(notifications) = outcome.config.get("notifications") {
        let _ = writeln!(
            text,
            "    notification group (its own lag): peak {} messages, {}, {} consumed",
            notifications["peak_lag"],
            match notifications["caught_up_at_s"].as_f64() {
                Some(at) => format!("caught up at {at:.1} s"),
                None => "NOT caught up by the end of the run".into(),
            },
            notifications["consumed"]
        );
    }
    for fault in &outcome.faults {
        let _ = writeln!(
            text,
            "    at {:.2} s: {}{}{}",
            fault.at_ms as f64 / 1000.0,
            fault.fault,
            fault
                .error
                .as_ref()
                .map(|error| format!(" (not applied: {error})"))
                .unwrap_or_default(),
            fault
                .effect
                .as_ref()
                .map(|effect| format!("\n      -> {effect}"))
                .unwrap_or_default()
        );
    }
}
