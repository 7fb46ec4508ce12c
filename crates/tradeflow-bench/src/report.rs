//! What a bench run writes: `results.json` (shaped like the OpenMessaging Benchmark's
//! result files: per configuration its settings, rates, latency percentiles and time
//! series), `report.md` with the tables and the targets, and the SVG charts. A run writes
//! into `ROOT/<date>-<time>/` and copies the files to `ROOT/latest/`.

use crate::results::{BenchResults, ConfigResult, Knobs, Point, is_half};
use crate::svg::{self, Chart, Series};
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tradeflow_stream::FETCH_WAIT_MAX_MS;

/// The setups whose every stream configuration is judged against [`TARGET_EFFICIENCY`].
pub const EFFICIENCY_SETUPS: [&str; 3] = ["mock+sqlite", "tansu+postgres", "kafka+postgres"];
/// Target: stream efficiency at least this on every configuration of [`EFFICIENCY_SETUPS`]
/// (issue 16's target; 0.7 on the best configuration before).
pub const TARGET_EFFICIENCY: f64 = 0.8;
/// Target: balance-service peak RSS at most this, MB.
pub const TARGET_SERVICE_RSS_MB: f64 = 64.0;
/// Target: stream p99 at most this at half its highest sustainable rate, ms (issue 16's
/// target; 20 ms before).
pub const TARGET_STREAM_P99_MS: f64 = 15.0;

/// Writes everything into a dated directory under `root` and into `root/latest`; returns
/// the dated directory.
pub fn write(root: &Path, results: &BenchResults) -> anyhow::Result<PathBuf> {
    let stamp = results
        .started_at
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_owned();
    let dated = root.join(&stamp);
    let latest = root.join("latest");
    for directory in [&dated, &latest] {
        std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    }
    let mut files: Vec<(String, String)> = vec![
        ("results.json".into(), serde_json::to_string_pretty(&omb_shape(results))?),
        ("report.md".into(), markdown(results)),
    ];
    files.extend(charts(results).into_iter().map(|(name, chart)| (name, svg::render(&chart))));
    // `latest` holds only this run's files.
    if let Ok(entries) = std::fs::read_dir(&latest) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for (name, text) in &files {
        for directory in [&dated, &latest] {
            let path = directory.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(dated)
}

/// results.json: the run's metadata and, per configuration, OMB-like fields
/// (`publishRate`, `consumeRate`, `aggregatedEndToEndLatency*`, `backlog`) next to
/// tradeflow's own (`max_sustainable_per_s`, `efficiency`, probes, repeats, fractions).
pub fn omb_shape(results: &BenchResults) -> serde_json::Value {
    let configurations: Vec<serde_json::Value> = results
        .configurations
        .iter()
        .map(|config| {
            let reference = half_point(config);
            serde_json::json!({
                "workload": config.label,
                "driver": config.setup,
                "settings": config.knobs,
                "max_sustainable_per_s": config.max_sustainable_per_s,
                "efficiency": config.efficiency,
                "bounded_by": config.bounded_by,
                "publishRate": config.series.published.iter().map(|(_, rate)| rate).collect::<Vec<_>>(),
                "consumeRate": config.series.throughput.iter().map(|(_, rate)| rate).collect::<Vec<_>>(),
                "backlog": config.series.lag.iter().map(|(_, lag)| lag).collect::<Vec<_>>(),
                "series": config.series,
                "aggregatedEndToEndLatency50pct": reference.map(|point| point.latency_ms.p50),
                "aggregatedEndToEndLatency99pct": reference.map(|point| point.latency_ms.p99),
                "aggregatedEndToEndLatency999pct": reference.map(|point| point.latency_ms.p999),
                "aggregatedEndToEndLatencyMax": reference.map(|point| point.latency_ms.max),
                "probes": config.probes,
                "repeats": config.repeats,
                "unheld": config.unheld,
                "at_fraction": config.at_fraction.iter().map(|(fraction, point)| serde_json::json!({"fraction": fraction, "point": point})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "seed": results.seed,
        "matrix": results.matrix,
        "slo": results.slo,
        "started_at": results.started_at,
        "duration_s": results.duration_s,
        "machine": results.machine,
        "limits": results.limits,
        "configurations": configurations,
        "skipped": results.skipped,
    })
}

fn half_point(config: &ConfigResult) -> Option<&Point> {
    config
        .at_fraction
        .iter()
        .find(|(fraction, _)| is_half(*fraction))
        .map(|(_, point)| point)
}

/// The sustainable probe at the highest offered rate: the run at the ceiling.
fn top_point(config: &ConfigResult) -> Option<&Point> {
    config
        .probes
        .iter()
        .filter(|point| point.sustainable)
        .max_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s))
}

/// What the thread profile of a configuration's top run says bounds it.
fn profile_verdict(results: &BenchResults, config: &ConfigResult) -> Option<String> {
    let point = top_point(config)?;
    if point.threads.is_empty() {
        return None;
    }
    let cores = results.machine["cores"].as_u64().unwrap_or(1) as usize;
    let waiting = match (&config.knobs, config.setup.ends_with("sqlite")) {
        (Knobs::Poller { .. }, _) => {
            "each poller waits out its interval, then runs its claim-and-apply transaction, one poll after the other"
        }
        (Knobs::Stream { .. }, true) => {
            "each consumer fills a batch, runs its transaction on SQLite's one connection (shared by the consumers of the process) and commits its offsets in turn"
        }
        (Knobs::Stream { .. }, false) => {
            "each consumer fills a batch, runs its transaction and commits its offsets in turn, waiting on round trips to the broker and to the database server"
        }
    };
    Some(format!(
        "at {:.0}/s, {}{}",
        point.offered_per_s,
        crate::threads::verdict(&point.threads, point.machine_busy_cores, cores, waiting),
        point.consumer_time_s.as_ref().map(consumer_time).unwrap_or_default()
    ))
}

/// What an event cost inside the store's transactions at a stream configuration's top run,
/// against the raw store apply it is read against: the efficiency's denominator assumes
/// the raw apply's cost. On SQLite the consumers share one connection, so that cost also
/// says how busy the connection was and the most it could take at that cost.
fn transaction_cost(config: &ConfigResult) -> Option<String> {
    let point = top_point(config)?;
    let cost = point.in_transaction_us_per_event?;
    let mut text = format!(
        "at {:.0}/s an event spent {cost:.1} µs inside its batch's transaction (summed over the consumers, their wait for the connection left out)",
        point.offered_per_s
    );
    if let Some(mean) = point.mean_batch {
        text.push_str(&format!(", in batches of {mean:.0} events on average"));
    }
    if let Some(at) = config.store_apply
        && let Some(raw_cost) = at.in_transaction_us_per_event
    {
        text.push_str(&format!(
            "; in the raw store apply, {raw_cost:.1} µs in batches of {} ({:.1}x as much an event in the pipeline)",
            at.batch_size,
            cost / raw_cost
        ));
    }
    if config.setup.ends_with("+sqlite") {
        text.push_str(&format!(
            "; SQLite's one connection was inside a transaction {:.0}% of the run, and at that cost it could take at most {:.0} events/s",
            cost * point.throughput_per_s / 1e4,
            1e6 / cost
        ));
    }
    Some(text)
}

/// The probe that failed at the lowest offered rate above the highest sustainable one:
/// where the configuration first fell short.
fn first_miss(config: &ConfigResult) -> Option<&Point> {
    config
        .probes
        .iter()
        .filter(|point| !point.sustainable && point.offered_per_s > config.max_sustainable_per_s)
        .min_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s))
}

/// A failed probe: its rate, why it failed, where the consumers' time went, and what that
/// says. Consumers that spent more time waiting for messages (a batch's first one, then
/// the rest) than on the database (queued for its connection, then in their transaction)
/// were handed less than they could apply: what feeds them (the publisher, the broker's
/// fetch) bounds the run, not the database.
fn fell_short(point: &Point) -> String {
    let mut text = format!(
        "at {:.0}/s offered, {}",
        point.offered_per_s,
        point.reason.clone().unwrap_or_else(|| "not sustainable".into())
    );
    if let Some(mean) = point.mean_batch {
        text.push_str(&format!(", in batches of {mean:.0} events on average"));
    }
    let Some(phases) = point.consumer_time_s.as_ref() else {
        return text;
    };
    text.push_str(&consumer_time(phases));
    let seconds = |phase: &str| phases.get(phase).copied().unwrap_or(0.0);
    let waiting = seconds("waiting") + seconds("filling");
    let database = seconds("queued") + seconds("applying");
    if waiting + database > 0.0 {
        text.push_str(if waiting > database {
            ": the consumers waited for messages longer than for the database while the run fell behind, so what feeds them (the publisher, the broker's fetch) bounds it, not the database"
        } else {
            ": the consumers spent more of their time on the database (queued for its connection, then in their transaction) than waiting for messages, so the apply bounds it"
        });
    }
    text
}

/// Where the consumers' time went, largest share first: `; the consumers' time (20.1 s,
/// summed over them): applying 75%, filling 12%, ...`.
fn consumer_time(phases: &std::collections::BTreeMap<String, f64>) -> String {
    let total: f64 = phases.values().sum();
    if total <= 0.0 {
        return String::new();
    }
    let mut shares: Vec<(&String, f64)> = phases.iter().map(|(phase, seconds)| (phase, seconds / total)).collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = shares
        .iter()
        .map(|(phase, share)| format!("{phase} {:.0}%", share * 100.0))
        .collect();
    format!("; the consumers' time ({total:.1} s, summed over them): {}", list.join(", "))
}

/// report.md: the SLO, the limits, the configurations, the targets and what bounds each.
pub fn markdown(results: &BenchResults) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; the writers ignore the results for that reason.
    let _ = writeln!(text, "# tradeflow bench ({} matrix, seed {})\n", results.matrix, results.seed);
    let _ = writeln!(
        text,
        "Started {} and took {:.0} s on {} cores. SLO: p99 (intended send → balance commit) ≤ {:.0} ms, everything applied within {:.0} ms of the last send (the backlog does not grow), and at least {:.0}% of the offered rate achieved over the probe. Probes of {:.0} s of events; the highest sustainable rate of each configuration run {} more time(s) for its spread, and one that most of its runs did not sustain stepped down to the next rate the search found sustainable (at most {} times). Open loop: events leave at their intended times.\n",
        results.started_at,
        results.duration_s,
        results.machine["cores"],
        results.slo.p99_ms,
        results.slo.drain_ms,
        results.slo.achieved_min * 100.0,
        results.slo.probe_seconds,
        results.slo.repeats,
        crate::harness::STEP_DOWNS_MAX
    );
    if results.slo.probe_seconds < crate::harness::DECIDING_PROBE_S {
        let _ = writeln!(
            text,
            "**Probes of {:.0} s are shorter than the {:.0} s over which a rate is decided: these numbers are a smoke test, not a measurement.**\n",
            results.slo.probe_seconds,
            crate::harness::DECIDING_PROBE_S
        );
    }
    write_summary(&mut text, results);
    write_limits(&mut text, results);
    write_configurations(&mut text, results);
    write_probes(&mut text, results);
    write_profiles(&mut text, results);
    let _ = writeln!(text, "\n## Targets\n");
    for line in targets(results) {
        let _ = writeln!(text, "- {line}");
    }
    let _ = writeln!(
        text,
        "\nEfficiency = the stream's highest sustainable rate / min(raw produce, raw consume, raw store apply at its batch size and consumers) of the same setup: how close the pipeline gets to the slowest of the things it cannot go faster than. \"bounded by\" names that slowest limit. Peak RSS of the bench process itself (mock broker, publisher and service together) is in results.json per point; the balance service's own is measured as a separate `tradeflow balance-service` process.\n"
    );
    let _ = writeln!(
        text,
        "Charts: `latency-throughput.svg` (p99 against achieved rate, every run), `lag.svg` (offset lag or poller backlog over the run at half the maximum), `throughput-partitions.svg` (highest sustainable rate against partitions × consumers)."
    );
    text
}

/// What a backend cannot show, stated where its numbers are quoted.
fn backend_limits(setup: &str) -> &'static str {
    match setup.split('+').next().unwrap_or_default() {
        "mock" => {
            "librdkafka's mock cluster: three brokers inside the bench process, no disk and no replication traffic, so broker costs are lower than a production cluster's, except that its fetch walks a partition's log from the start (it keeps no index; the README has a profile); and it keeps 5 MB a partition, so a partition that falls about a second behind at these rates loses events"
        }
        "tansu" => "tansu: one broker with memory storage, no replication",
        "kafka" => {
            "Apache Kafka: three brokers (combined mode) on this one machine, RF 3, min.insync.replicas 2: replication costs CPU here, not network"
        }
        "container" => "tansu in a container: one broker, memory storage, no replication",
        _ => "a cluster this bench did not start: its limits are its own",
    }
}

/// The summary a reviewer can paste into a decision record: machine, seed, setups, each
/// store's poller ceiling against each setup's best stream ceiling and their ratio, latency
/// at half load, every efficiency, and what each backend cannot show.
fn write_summary(text: &mut String, results: &BenchResults) {
    let machine = &results.machine;
    let field = |key: &str| machine[key].as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        text,
        "## Summary
"
    );
    let _ = writeln!(
        text,
        "- machine: {} cores ({}), {} memory, {} {}, {} build; seed {}, {} matrix; SLO p99 ≤ {:.0} ms",
        machine["cores"],
        field("cpu"),
        field("memory"),
        field("os"),
        field("arch"),
        field("build"),
        results.seed,
        results.matrix,
        results.slo.p99_ms
    );
    let best = |architecture: &str, on: &str| {
        results
            .configurations
            .iter()
            .filter(|config| config.setup == on && config.label.starts_with(architecture))
            .max_by(|a, b| a.max_sustainable_per_s.total_cmp(&b.max_sustainable_per_s))
    };
    for limits in &results.limits {
        let setup = limits.setup.as_str();
        let store = setup.split('+').nth(1).unwrap_or_default();
        let (poller, stream) = (best("poller", store), best("stream", setup));
        let at_half = |config: Option<&ConfigResult>| {
            config
                .and_then(half_point)
                .map_or("-".to_owned(), |point| format!("{:.1} ms", point.latency_ms.p99))
        };
        let ratio = match (poller, stream) {
            (Some(poller), Some(stream)) if poller.max_sustainable_per_s > 0.0 => {
                format!("{:.2}x", stream.max_sustainable_per_s / poller.max_sustainable_per_s)
            }
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            text,
            "- {setup}: highest sustainable poller {} /s ({}), stream {} /s ({}): stream/poller {ratio}; p99 at half load poller {}, stream {}",
            poller.map_or("-".to_owned(), |config| format!("{:.0}", config.max_sustainable_per_s)),
            poller.map_or("-".to_owned(), |config| format!("{}{}", config.label, unheld_note(config))),
            stream.map_or("-".to_owned(), |config| format!("{:.0}", config.max_sustainable_per_s)),
            stream.map_or("-".to_owned(), |config| format!("{}{}", config.label, unheld_note(config))),
            at_half(poller),
            at_half(stream),
        );
        let efficiencies: Vec<String> = results
            .configurations
            .iter()
            .filter(|config| config.setup == setup)
            .filter_map(|config| config.efficiency.map(|efficiency| format!("{} {efficiency:.2}", config.label)))
            .collect();
        if !efficiencies.is_empty() {
            let _ = writeln!(text, "  - efficiency: {}", efficiencies.join(", "));
        }
        let _ = writeln!(text, "  - what it cannot show: {}", backend_limits(setup));
    }
    for skipped in &results.skipped {
        let _ = writeln!(text, "- skipped: {skipped}");
    }
    let _ = writeln!(
        text,
        "- the field reported 5x and 8x (Wealthsimple, \"Kafka in production\", 2021, its two editions) for their rewrite over their poller\n"
    );
}

/// The raw limits section: a row per setup, and its notes on what could not be measured.
fn write_limits(text: &mut String, results: &BenchResults) {
    let _ = writeln!(text, "## Raw limits (same run, same broker and store)\n");
    let _ = writeln!(
        text,
        "| setup | raw produce /s | raw consume /s | raw store apply /s | balance-service peak RSS |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|");
    for limits in &results.limits {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.0} (batches of {}) | {} |",
            limits.setup,
            limits.produce.map_or("-".into(), |rate| format!("{:.0}", rate.per_s)),
            limits.consume.map_or("-".into(), |rate| format!("{:.0}", rate.per_s)),
            limits.store_apply.per_s,
            limits.store_apply_batch,
            limits.balance_service_rss_mb.map_or("-".into(), |mb| format!("{mb:.1} MB")),
        );
        for note in &limits.notes {
            let _ = writeln!(text, "\n> {}: {note}", limits.setup);
        }
    }
}

/// The configurations section: a row per configuration, with its figures at half its
/// highest sustainable rate.
fn write_configurations(text: &mut String, results: &BenchResults) {
    let _ = writeln!(text, "\n## Configurations\n");
    let _ = writeln!(
        text,
        "| configuration | on | highest sustainable /s | p50 / p99 / p99.9 at half (ms) | raw store apply /s at its batch and writers | efficiency | bounded by | CPU s at half |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|");
    for config in &results.configurations {
        let half = half_point(config);
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            config.label,
            config.setup,
            config.max_sustainable_per_s,
            half.map_or("-".into(), |point| format!(
                "{:.1} / {:.1} / {:.1}",
                point.latency_ms.p50, point.latency_ms.p99, point.latency_ms.p999
            )),
            config.store_apply.map_or("-".into(), |apply| format!(
                "{:.0} (batches of {}, {} writers)",
                apply.per_s, apply.batch_size, apply.writers
            )),
            config.efficiency.map_or("-".into(), |efficiency| format!("{efficiency:.2}")),
            config.bounded_by.clone().unwrap_or_else(|| "-".into()),
            half.map_or("-".into(), |point| format!("{:.1}", point.cpu_s)),
        );
    }
}

/// Every probe of every configuration's search, in the order it ran.
fn write_probes(text: &mut String, results: &BenchResults) {
    let _ = writeln!(text, "\nEvery probe of the search (offered → achieved, p99, verdict):\n");
    for config in &results.configurations {
        let _ = writeln!(text, "- {} on {}:", config.label, config.setup);
        for point in &config.probes {
            let _ = writeln!(
                text,
                "  - {:.0}/s → {:.0}/s, p99 {:.1} ms: {}",
                point.offered_per_s,
                point.throughput_per_s,
                point.latency_ms.p99,
                point.reason.clone().unwrap_or_else(|| "sustainable".into())
            );
        }
        for unheld in &config.unheld {
            let (sustained, runs) = unheld.sustained();
            let achieved = unheld.repeats.iter().map(|point| point.throughput_per_s);
            let _ = writeln!(
                text,
                "  - {:.0}/s, sustainable in the search, held in {sustained} of {runs} runs (run again: achieved {:.0} to {:.0}/s): the highest sustainable rate stepped down from it",
                unheld.offered_per_s,
                achieved.clone().fold(f64::INFINITY, f64::min),
                achieved.fold(f64::NEG_INFINITY, f64::max),
            );
        }
        if let Some(spread) = ceiling_spread(config) {
            let _ = writeln!(text, "  - {spread}");
        }
    }
}

/// `; 56000/s held in 1 of 3 runs` for each rate the search found sustainable that did not
/// hold when run again, so that a summary's ceiling is read with what it stepped down from.
fn unheld_note(config: &ConfigResult) -> String {
    config
        .unheld
        .iter()
        .map(|unheld| {
            let (sustained, runs) = unheld.sustained();
            format!("; {:.0}/s held in {sustained} of {runs} runs", unheld.offered_per_s)
        })
        .collect()
}

/// The spread of the runs at a configuration's highest sustainable rate: the search's probe
/// there and the repeats. `None` when it was not run again.
pub fn ceiling_spread(config: &ConfigResult) -> Option<String> {
    if config.repeats.is_empty() {
        return None;
    }
    let at_max = config
        .probes
        .iter()
        .filter(|point| point.sustainable && point.offered_per_s == config.max_sustainable_per_s)
        .take(1)
        .chain(&config.repeats)
        .collect::<Vec<_>>();
    let range = |values: Vec<f64>| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    };
    let (achieved_low, achieved_high) = range(at_max.iter().map(|point| point.throughput_per_s).collect());
    let (p99_low, p99_high) = range(at_max.iter().map(|point| point.latency_ms.p99).collect());
    let sustained = at_max.iter().filter(|point| point.sustainable).count();
    Some(format!(
        "{} runs at {:.0}/s: achieved {achieved_low:.0} to {achieved_high:.0}/s, p99 {p99_low:.1} to {p99_high:.1} ms; {sustained} of {} sustainable",
        at_max.len(),
        config.max_sustainable_per_s,
        at_max.len()
    ))
}

/// The profile section: per configuration with a thread profile, what bounds its top run.
fn write_profiles(text: &mut String, results: &BenchResults) {
    let _ = writeln!(
        text,
        "\n## Profile at the highest sustainable rate\n\nThe machine's busy cores, and CPU per kind of thread of the bench process (publisher, mock broker and balance service run in it; tansu and PostgreSQL are other processes, counted in the machine's figure), in cores, from the first event sent to the last applied:\n"
    );
    for config in &results.configurations {
        if let Some(verdict) = profile_verdict(results, config) {
            let _ = writeln!(text, "- {} on {}: {verdict}", config.label, config.setup);
        }
    }
}

/// The targets, each met or missed with the figure and, when missed, what bounds it.
pub fn targets(results: &BenchResults) -> Vec<String> {
    let mut lines = Vec::new();
    // Every stream configuration is judged, each against the raw store apply at its own
    // batch size and consumers: the best one alone would hide the others.
    for setup in EFFICIENCY_SETUPS {
        let judged: Vec<&ConfigResult> = results
            .configurations
            .iter()
            .filter(|config| config.setup == setup && config.efficiency.is_some())
            .collect();
        if judged.is_empty() {
            lines.push(format!(
                "stream efficiency on {setup}: not measured (not in this run's setups, or skipped: see `skipped` in results.json)"
            ));
        }
        for config in judged {
            let efficiency = config.efficiency.unwrap_or(0.0);
            let against = match (&config.bounded_by, config.slowest_limit_per_s) {
                (Some(limit), Some(rate)) => format!(" against its slowest raw limit, {limit} at {rate:.0}/s"),
                _ => String::new(),
            };
            let apply = config.store_apply.map_or(String::new(), |apply| {
                format!(
                    "; the raw store apply at its batch size and consumers: {:.0}/s in batches of {} from {} writers",
                    apply.per_s, apply.batch_size, apply.writers
                )
            });
            lines.push(format!(
                "stream efficiency ≥ {TARGET_EFFICIENCY} on {setup}, {}: {} ({efficiency:.2}{against}{apply})",
                config.label,
                if efficiency >= TARGET_EFFICIENCY { "met" } else { "MISSED" },
            ));
            if efficiency < TARGET_EFFICIENCY {
                if let Some(verdict) = profile_verdict(results, config) {
                    lines.push(format!("  what bounds it: {verdict}"));
                }
                if let Some(cost) = transaction_cost(config) {
                    lines.push(format!("  its transactions: {cost}"));
                }
                if let Some(miss) = first_miss(config) {
                    lines.push(format!("  where it fell short: {}", fell_short(miss)));
                }
            }
        }
    }
    for limits in &results.limits {
        if let Some(mb) = limits.balance_service_rss_mb {
            lines.push(format!(
                "balance-service peak RSS ≤ {TARGET_SERVICE_RSS_MB} MB on {}: {} ({mb:.1} MB)",
                limits.setup,
                if mb <= TARGET_SERVICE_RSS_MB { "met" } else { "MISSED" }
            ));
        }
    }
    for config in results
        .configurations
        .iter()
        .filter(|config| matches!(config.knobs, Knobs::Stream { .. }))
    {
        if let Some(point) = half_point(config) {
            lines.push(format!(
                "stream p99 ≤ {TARGET_STREAM_P99_MS} ms at half its highest sustainable rate ({}, {}): {} ({:.1} ms at {:.0}/s)",
                config.label,
                config.setup,
                if point.latency_ms.p99 <= TARGET_STREAM_P99_MS {
                    "met"
                } else {
                    "MISSED"
                },
                point.latency_ms.p99,
                point.offered_per_s
            ));
            if let (
                true,
                Knobs::Stream {
                    linger_ms, fill_wait_ms, ..
                },
            ) = (point.latency_ms.p99 > TARGET_STREAM_P99_MS, &config.knobs)
            {
                let acked = point.acked_latency_ms.map_or(String::new(), |acked| {
                    format!(
                        "; the broker acknowledged them at p50 {:.1} ms, p99 {:.1} ms of the same clock (an event becomes readable about when its acknowledgement goes out)",
                        acked.p50, acked.p99
                    )
                });
                lines.push(format!(
                    "  what bounds it: before its database transaction an event waits up to {} ms by configuration alone (producer linger {linger_ms} ms, batch fill wait {fill_wait_ms} ms, consumer fetch wait up to {FETCH_WAIT_MAX_MS} ms); the median is {:.1} ms, and the batch transaction and its commit take the rest{acked}",
                    linger_ms + fill_wait_ms + FETCH_WAIT_MAX_MS,
                    point.latency_ms.p50
                ));
            }
        }
    }
    lines
}

/// The charts, by file name.
pub fn charts(results: &BenchResults) -> Vec<(String, Chart)> {
    let latency = Chart {
        title: "p99 latency against throughput".into(),
        x_label: "achieved events/s".into(),
        y_label: "p99 ms".into(),
        series: results
            .configurations
            .iter()
            .map(|config| {
                // svg::render sorts each series by x.
                let points: Vec<(f64, f64)> = config
                    .probes
                    .iter()
                    .chain(config.at_fraction.iter().map(|(_, point)| point))
                    .map(|point| (point.throughput_per_s, point.latency_ms.p99))
                    .collect();
                Series {
                    name: format!("{} on {}", config.label, config.setup),
                    points,
                }
            })
            .collect(),
        log_x: false,
    };
    let lag = Chart {
        title: "lag over the run at half the highest sustainable rate".into(),
        x_label: "seconds".into(),
        y_label: "offset lag (stream) or backlog rows (poller)".into(),
        series: results
            .configurations
            .iter()
            .map(|config| Series {
                name: format!("{} on {}", config.label, config.setup),
                points: config.series.lag.clone(),
            })
            .collect(),
        log_x: false,
    };
    let mut by_setup: Vec<Series> = Vec::new();
    for config in &results.configurations {
        if let Knobs::Stream {
            partitions,
            consumers,
            linger_ms,
            batch_size,
            fill_wait_ms,
        } = config.knobs
        {
            let name = format!("{} c{consumers} l{linger_ms} b{batch_size} f{fill_wait_ms}", config.setup);
            let point = (f64::from(partitions), config.max_sustainable_per_s);
            match by_setup.iter_mut().find(|series| series.name == name) {
                Some(series) => series.points.push(point),
                None => by_setup.push(Series { name, points: vec![point] }),
            }
        }
    }
    let partitions = Chart {
        title: "highest sustainable rate against partitions (one line per consumers × linger × batch)".into(),
        x_label: "partitions".into(),
        y_label: "events/s".into(),
        series: by_setup,
        log_x: false,
    };
    vec![
        ("latency-throughput.svg".into(), latency),
        ("lag.svg".into(), lag),
        ("throughput-partitions.svg".into(), partitions),
    ]
}

#[cfg(test)]
mod tests {
    use super::{consumer_time, fell_short, markdown, targets, transaction_cost, unheld_note};
    use crate::results::{BenchResults, ConfigResult, Knobs, Point};
    use std::collections::BTreeMap;

    #[test]
    fn the_consumers_time_is_given_in_shares_largest_first() {
        let phases: BTreeMap<String, f64> = [("waiting", 1.0), ("filling", 2.0), ("triage", 1.0), ("applying", 16.0)]
            .into_iter()
            .map(|(phase, seconds)| (phase.to_owned(), seconds))
            .collect();
        assert_eq!(
            consumer_time(&phases),
            "; the consumers' time (20.0 s, summed over them): applying 80%, filling 10%, triage 5%, waiting 5%"
        );
        // A run whose consumers were never timed (other processes) says nothing.
        let nothing: BTreeMap<String, f64> = [("applying".to_owned(), 0.0)].into_iter().collect();
        assert_eq!(consumer_time(&nothing), "");
    }

    /// A quick bench's results holding `configurations` alone.
    fn quick_results(configurations: Vec<ConfigResult>) -> BenchResults {
        BenchResults {
            seed: 7,
            matrix: "quick".into(),
            slo: crate::results::Slo {
                p99_ms: 500.0,
                drain_ms: 500.0,
                achieved_min: 0.95,
                probe_seconds: 15.0,
                repeats: 0,
            },
            started_at: String::new(),
            duration_s: 0.0,
            machine: serde_json::Value::Null,
            limits: Vec::new(),
            configurations,
            skipped: Vec::new(),
        }
    }

    /// The quick matrix's stream configuration on `setup`, with nothing measured.
    fn quick_stream(setup: &str) -> ConfigResult {
        ConfigResult {
            label: "stream p6 c2 l5 b500 f20".into(),
            setup: setup.into(),
            knobs: Knobs::Stream {
                partitions: 6,
                consumers: 2,
                linger_ms: 5,
                batch_size: 500,
                fill_wait_ms: 20,
            },
            max_sustainable_per_s: 0.0,
            probes: Vec::new(),
            at_fraction: Vec::new(),
            repeats: Vec::new(),
            unheld: Vec::new(),
            series: crate::results::Series::default(),
            efficiency: None,
            slowest_limit_per_s: None,
            store_apply: None,
            bounded_by: None,
        }
    }

    #[test]
    fn a_ceiling_that_stepped_down_says_from_what() {
        let failed = |achieved: f64| Point {
            offered_per_s: 56_000.0,
            throughput_per_s: achieved,
            ..failed_probe(&[])
        };
        let config = ConfigResult {
            max_sustainable_per_s: 48_000.0,
            unheld: vec![crate::results::Unheld {
                offered_per_s: 56_000.0,
                repeats: vec![failed(37_524.0), failed(52_114.0)],
            }],
            ..quick_stream("mock+sqlite")
        };
        assert_eq!(unheld_note(&config), "; 56000/s held in 1 of 3 runs");
        assert_eq!(unheld_note(&quick_stream("mock+sqlite")), "");
        let report = markdown(&quick_results(vec![config]));
        assert!(
            report.contains(
                "  - 56000/s, sustainable in the search, held in 1 of 3 runs (run again: achieved 37524 to 52114/s): the highest sustainable rate stepped down from it"
            ),
            "{report}"
        );
    }

    fn failed_probe(phases: &[(&str, f64)]) -> Point {
        Point {
            offered_per_s: 48_000.0,
            throughput_per_s: 34_000.0,
            latency_ms: tradeflow_check::LatencySummary::default(),
            acked_latency_ms: None,
            sustainable: false,
            reason: Some("achieved 34000/s, under 95% of the 48000/s offered".into()),
            cpu_s: 0.0,
            rss_max_mb: 0.0,
            verdict: "pass".into(),
            threads: Vec::new(),
            machine_busy_cores: None,
            consumer_time_s: Some(phases.iter().map(|(phase, seconds)| ((*phase).to_owned(), *seconds)).collect()),
            mean_batch: Some(250.0),
            in_transaction_us_per_event: None,
        }
    }

    #[test]
    fn a_missed_latency_target_gives_the_brokers_acknowledgement_latency_where_the_run_measured_it() {
        let at_half = |acked: Option<tradeflow_check::LatencySummary>| Point {
            offered_per_s: 20_000.0,
            throughput_per_s: 20_000.0,
            latency_ms: tradeflow_check::LatencySummary {
                p50: 12.0,
                p99: 40.0,
                ..tradeflow_check::LatencySummary::default()
            },
            acked_latency_ms: acked,
            sustainable: true,
            reason: None,
            ..failed_probe(&[])
        };
        let results = |acked| {
            quick_results(vec![ConfigResult {
                max_sustainable_per_s: 40_000.0,
                at_fraction: vec![(0.5, at_half(acked))],
                ..quick_stream("mock+sqlite")
            }])
        };
        let acked = tradeflow_check::LatencySummary {
            p50: 6.5,
            p99: 31.0,
            ..tradeflow_check::LatencySummary::default()
        };
        let lines = targets(&results(Some(acked))).join("\n");
        assert!(
            lines.contains("(stream p6 c2 l5 b500 f20, mock+sqlite): MISSED (40.0 ms at 20000/s)"),
            "{lines}"
        );
        assert!(lines.contains("the broker acknowledged them at p50 6.5 ms, p99 31.0 ms"), "{lines}");
        let without = targets(&results(None)).join("\n");
        assert!(without.contains("what bounds it") && !without.contains("acknowledged"), "{without}");
    }

    #[test]
    fn a_missed_efficiency_says_what_an_event_cost_in_the_transactions_against_the_raw_apply() {
        let top = Point {
            offered_per_s: 48_000.0,
            throughput_per_s: 47_500.0,
            sustainable: true,
            reason: None,
            mean_batch: Some(302.0),
            in_transaction_us_per_event: Some(13.4),
            ..failed_probe(&[("applying", 9.6)])
        };
        let config = |setup: &str, raw_cost: Option<f64>| ConfigResult {
            max_sustainable_per_s: 48_000.0,
            probes: vec![top.clone(), failed_probe(&[("applying", 12.0)])],
            efficiency: Some(0.37),
            slowest_limit_per_s: Some(128_000.0),
            store_apply: Some(crate::results::StoreApplyAt {
                batch_size: 500,
                writers: 2,
                per_s: 128_000.0,
                in_transaction_us_per_event: raw_cost,
            }),
            bounded_by: Some("store apply".into()),
            ..quick_stream(setup)
        };
        let sqlite = transaction_cost(&config("mock+sqlite", Some(7.8))).expect("a top run with its cost");
        assert_eq!(
            sqlite,
            "at 48000/s an event spent 13.4 µs inside its batch's transaction (summed over the consumers, their wait for the connection left out), in batches of 302 events on average; in the raw store apply, 7.8 µs in batches of 500 (1.7x as much an event in the pipeline); SQLite's one connection was inside a transaction 64% of the run, and at that cost it could take at most 74627 events/s"
        );
        // A server's connections run side by side: no one connection's share; a raw apply
        // that did not time its transactions is not compared.
        let postgres = transaction_cost(&config("tansu+postgres", None)).expect("a top run with its cost");
        assert!(postgres.ends_with("in batches of 302 events on average"), "{postgres}");
        // Without a sustainable probe, or with consumers that were not timed, nothing.
        let mut none_sustainable = config("mock+sqlite", Some(7.8));
        none_sustainable.probes.retain(|point| !point.sustainable);
        assert_eq!(transaction_cost(&none_sustainable), None);
        // The targets give it under the missed efficiency.
        let results = quick_results(vec![config("mock+sqlite", Some(7.8))]);
        let lines = targets(&results);
        let missed = lines
            .iter()
            .position(|line| {
                line == "stream efficiency ≥ 0.8 on mock+sqlite, stream p6 c2 l5 b500 f20: MISSED (0.37 against its slowest raw limit, store apply at 128000/s; the raw store apply at its batch size and consumers: 128000/s in batches of 500 from 2 writers)"
            })
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert!(
            lines[missed + 1..]
                .iter()
                .any(|line| *line == format!("  its transactions: {sqlite}")),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_shortfall_names_the_apply_or_what_feeds_the_consumers_by_where_their_time_went() {
        let fed = fell_short(&failed_probe(&[
            ("waiting", 8.0),
            ("filling", 6.0),
            ("triage", 2.0),
            ("applying", 12.0),
        ]));
        assert!(fed.starts_with("at 48000/s offered, achieved 34000/s"), "{fed}");
        assert!(
            fed.contains("offered, in batches of 250 events on average; the consumers' time"),
            "{fed}"
        );
        assert!(fed.contains("waiting 29%") && fed.contains("what feeds them"), "{fed}");
        let applying = fell_short(&failed_probe(&[
            ("waiting", 2.0),
            ("filling", 3.0),
            ("triage", 1.0),
            ("applying", 20.0),
        ]));
        assert!(applying.ends_with("so the apply bounds it"), "{applying}");
        // Queued for the connection counts on the database's side.
        let queued = fell_short(&failed_probe(&[
            ("waiting", 4.0),
            ("filling", 3.0),
            ("queued", 5.0),
            ("applying", 4.0),
        ]));
        assert!(
            queued.contains("queued 31%") && queued.ends_with("so the apply bounds it"),
            "{queued}"
        );
        // A probe whose consumers were not timed gives its reason alone.
        let mut untimed = failed_probe(&[]);
        untimed.consumer_time_s = None;
        untimed.mean_batch = None;
        assert_eq!(
            fell_short(&untimed),
            "at 48000/s offered, achieved 34000/s, under 95% of the 48000/s offered"
        );
    }
}
