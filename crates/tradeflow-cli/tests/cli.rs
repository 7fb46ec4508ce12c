//! The `tradeflow` binary as a user runs it: the main job writes a valid results file, and
//! bad input is a one-line error.

use std::process::Command;

#[path = "../../../tests/processes.rs"]
mod processes;

fn tradeflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tradeflow"));
    command.env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    command
}

/// Runs `tradeflow compare --seed 7 --events 2000` with `extra` arguments in `directory`;
/// asserts it succeeded; returns its output directory and standard output.
fn compare(directory: &std::path::Path, extra: &[&str]) -> (std::path::PathBuf, String) {
    let out = directory.join("out");
    let output = tradeflow()
        .current_dir(directory)
        .args(["compare", "--seed", "7", "--events", "2000"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("tradeflow runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The embedded default ran: the mock cluster and a SQLite file.
    record_backend("exercised", "mock", "");
    record_backend("exercised", "sqlite", "");
    (out, stdout)
}

/// Appends one line of evidence for `scripts/test`'s last line when
/// `TRADEFLOW_TEST_BACKENDS_DIR` is set: `OUTCOME<TAB>BACKEND<TAB>TEST<TAB>DETAIL` in its
/// `backends.tsv`, the format `tradeflow_tests::BACKENDS_FILE` (`tests/lib.rs`) documents
/// and the integration tests write (this crate does not depend on them). The test is named
/// by its thread, which the test harness names after it.
fn record_backend(outcome: &str, backend: &str, detail: &str) {
    use std::io::Write;
    let Some(directory) = std::env::var_os("TRADEFLOW_TEST_BACKENDS_DIR") else {
        return;
    };
    let one_field = |text: &str| text.replace(['\t', '\n', '\r'], " ");
    let test = std::thread::current().name().unwrap_or("unnamed").to_owned();
    let line = format!("{outcome}\t{backend}\t{}\t{}\n", one_field(&test), one_field(detail));
    let path = std::path::Path::new(&directory).join("backends.tsv");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .unwrap_or_else(|error| panic!("recording backend {backend} in {}: {error}", path.display()));
}

#[test]
fn compare_writes_a_valid_results_file_and_report() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let (out, stdout) = compare(
        directory.path(),
        &["--rate", "20000", "--partitions", "4", "--consumers", "2", "--no-ceilings"],
    );
    assert!(stdout.starts_with("seed: 7\n"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("valid JSON");
    assert_eq!(results["seed"], 7);
    let runs = results["runs"].as_array().expect("runs");
    assert_eq!(
        runs.iter()
            .map(|run| run["architecture"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["poller", "stream"]
    );
    for run in runs {
        assert_eq!(run["events"], 2000, "{run}");
        assert_eq!(run["applied"], 2000, "{run}");
        assert_eq!(run["check"]["verdict"], "pass", "{run}");
        for field in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                run["latency_ms"][field].as_f64().is_some_and(|value| value >= 0.0),
                "{field} in {run}"
            );
        }
        assert!(run["db_statements"].as_u64().is_some_and(|count| count > 0), "{run}");
    }
    assert_eq!(runs[1]["broker"], "mock");
    assert!(
        runs[1]["lag"].as_array().is_some_and(|lag| !lag.is_empty()),
        "the stream record keeps its lag series"
    );
    assert!(
        runs[0]["backlog"].as_array().is_some_and(|backlog| !backlog.is_empty()),
        "the poller record keeps its backlog series"
    );
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(
        report.contains("seed 7")
            && report.contains("| throughput (events/s) |")
            && report.contains("| all applied after the last send (ms) |"),
        "{report}"
    );
    // Each side ran in a process of its own and left its record beside the results.
    for side in ["poller", "stream"] {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{side}.json"))).expect("a side's record")).expect("valid JSON");
        assert_eq!(record["architecture"], side);
    }
    // The fair pairing by default: the stream's system of record pays the poller's write.
    assert!(
        runs[1]["config"]["outbox"]["written"] == 2000,
        "the stream's events went through the outbox: {}",
        runs[1]["config"]
    );
    assert!(
        report.contains(
            "| events come from | its table: a durable insert per event | an outbox table and a relay: a durable insert per event |"
        ),
        "{report}"
    );
}

#[test]
fn compare_searches_each_sides_ceiling_under_each_slo_in_processes_of_their_own() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let (out, stdout) = compare(
        directory.path(),
        &[
            "--rate",
            "8000",
            "--slo-p99-ms",
            "500",
            "--ceiling-start-rate",
            "16000",
            "--probe-seconds",
            "0.5",
            "--bisect-steps",
            "0",
        ],
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json")).expect("valid JSON");
    let ceilings = &results["ceilings"];
    for side in ["poller", "stream"] {
        let probes = ceilings[side]["probes"].as_array().expect("probes");
        assert!(!probes.is_empty(), "{side} probed: {ceilings}");
        assert_eq!(probes[0]["offered_per_s"], 16000.0, "the search starts where asked");
        // Doubling until a probe fails under the SLO: the last one did, unless the search
        // reached the highest rate it offers.
        let last = probes.last().expect("a probe");
        assert!(
            last["verdict"] != "pass"
                || last["p99_ms"].as_f64() > Some(500.0)
                || last["drain_ms"].as_f64() > Some(500.0)
                || last["offered_per_s"].as_f64() >= Some(256_000.0),
            "{side}'s search ends at a failing rate: {probes:?}"
        );
        let ceiling = ceilings[side]["ceilings"][0].as_array().expect("(slo, rate)");
        assert_eq!(ceiling[0], 500.0);
    }
    assert!(stdout.contains("at p99 ≤ 500 ms: poller "), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(report.contains("## Ceilings") && report.contains("5x"), "{report}");
}

#[test]
fn a_missing_server_is_one_line_without_the_password() {
    let output = tradeflow()
        .args([
            "run",
            "poller",
            "--store",
            "postgres",
            "--database-url",
            "postgres://tradeflow:hunter2@127.0.0.1:1/tradeflow",
            "--events",
            "10",
        ])
        .output()
        .expect("tradeflow runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: opening the postgres store") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[test]
fn a_topic_that_does_not_exist_is_a_clear_error() {
    let output = tradeflow()
        .args(["dlq", "replay", "--bootstrap", "127.0.0.1:1", "--topic", "nope"])
        .output()
        .expect("tradeflow runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope.dlq") && stderr.contains("127.0.0.1:1"), "{stderr}");
}

#[test]
fn a_bad_group_instance_id_is_refused_before_anything_is_opened() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let database = directory.path().join("balances.db");
    let output = tradeflow()
        .args([
            "balance-service",
            "--bootstrap",
            "127.0.0.1:1",
            "--group-instance-id",
            "bad id!",
            "--database-url",
        ])
        .arg(&database)
        .output()
        .expect("tradeflow runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("group instance id \"bad id!\"") && stderr.contains("letters, digits"),
        "{stderr}"
    );
    assert!(!database.exists(), "no store created for a refused configuration");
}

#[test]
fn experiment_list_names_every_experiment_and_an_unknown_one_is_refused_with_the_list() {
    let output = tradeflow().args(["experiment", "list"]).output().expect("tradeflow runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let names = [
        "auto-commit-crash",
        "producer-retries",
        "poison-message",
        "repartition-cutover",
        "consumer-scaling",
        "broker-failure",
        "stuck-consumer",
        "poller-vs-stream",
    ];
    for name in names {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
    let output = tradeflow().args(["experiment", "chaos-monkey"]).output().expect("tradeflow runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no experiment named \"chaos-monkey\"") && stderr.contains("broker-failure"),
        "{stderr}"
    );
}

#[test]
fn an_experiment_that_needs_faults_says_it_cannot_run_on_an_external_cluster() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let output = tradeflow()
        .current_dir(directory.path())
        .args([
            "experiment",
            "broker-failure",
            "--seed",
            "1",
            "--broker",
            "external",
            "--bootstrap",
            "127.0.0.1:1",
        ])
        .output()
        .expect("tradeflow runs");
    assert_eq!(
        output.status.code(),
        Some(4),
        "exit code 4: not here (a loop over experiments skips it)"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot run honestly on the external backend with the sqlite store")
            && stderr.contains("no faults can be injected"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("seed: 1"),
        "the seed comes first"
    );
}

#[test]
fn external_security_settings_are_checked_and_the_password_never_printed() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let output = tradeflow()
        .current_dir(directory.path())
        .args(["run", "stream", "--broker", "external", "--bootstrap", "127.0.0.1:1", "--seed", "1"])
        .env("KAFKA_SASL_MECHANISM", "PLAIN")
        .env("KAFKA_SASL_USERNAME", "alice")
        .env("KAFKA_SASL_PASSWORD", "hunter2-secret")
        .env("KAFKA_SECURITY_PROTOCOL", "tls")
        .env("RUST_LOG", "debug")
        .output()
        .expect("tradeflow runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KAFKA_SECURITY_PROTOCOL must be one of"), "{stderr}");
    let everything = format!("{stderr}{}", String::from_utf8_lossy(&output.stdout));
    assert!(!everything.contains("hunter2-secret"), "the password leaked:\n{everything}");
}

/// A three-node Apache Kafka cluster, or `None` (said loudly) when there is no Java or no
/// Kafka jars and `TRADEFLOW_REQUIRE_BACKENDS` does not name `kafka`.
fn kafka(test: &str) -> Option<tradeflow_cluster::Cluster> {
    match tradeflow_cluster::Cluster::kafka() {
        Ok(cluster) => {
            record_backend("exercised", "kafka", "");
            Some(cluster)
        }
        Err(error) => {
            let required = std::env::var("TRADEFLOW_REQUIRE_BACKENDS").is_ok_and(|list| list.split(',').any(|name| name.trim() == "kafka"));
            let outcome = if required { "failed" } else { "skipped" };
            record_backend(outcome, "kafka", &format!("Apache Kafka (three nodes) unavailable: {error}"));
            assert!(
                !required,
                "{test}: Apache Kafka is required (TRADEFLOW_REQUIRE_BACKENDS) but unavailable: {error}"
            );
            eprintln!("\n*** SKIPPED {test}: Apache Kafka unavailable ({error}) ***\n");
            None
        }
    }
}

#[test]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
fn the_readmes_topics_apply_creates_replicated_topics_on_kafka_and_refuses_too_few_replicas() {
    let test = "the_readmes_topics_apply_creates_replicated_topics_on_kafka_and_refuses_too_few_replicas";
    let Some(cluster) = kafka(test) else {
        return;
    };
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // As the README gives it: KAFKA_BOOTSTRAP_SERVERS exported, the repository's topics.toml.
    let run = |arguments: &[&str], directory: &std::path::Path| {
        let output = tradeflow()
            .current_dir(directory)
            .env("KAFKA_BOOTSTRAP_SERVERS", cluster.bootstrap_servers())
            .args(arguments)
            .output()
            .expect("tradeflow runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!("tradeflow {arguments:?}:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
        (output.status.code(), stdout)
    };
    let (code, stdout) = run(&["topics", "apply"], &workspace);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("trades ") && stdout.contains("created"), "{stdout}");
    let (code, stdout) = run(&["topics", "plan"], &workspace);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("12 partitions, replication 3") && !stdout.contains("note:"),
        "{stdout}"
    );

    let directory = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        directory.path().join("topics.toml"),
        "[[topic]]\nname = \"unsafe\"\npartitions = 3\nreplication_factor = 1\n",
    )
    .expect("a topics file");
    let (code, stdout) = run(&["topics", "apply"], directory.path());
    assert_eq!(code, Some(3), "a refused topic is not a clean apply: {stdout}");
    assert!(stdout.contains("refused") && stdout.contains("NOT_ENOUGH_REPLICAS"), "{stdout}");
}

#[test]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
fn ctrl_c_stops_every_kafka_node_a_run_started() {
    use std::io::{BufRead, BufReader};
    let test = "ctrl_c_stops_every_kafka_node_a_run_started";
    // Only to learn whether Kafka can start here (and to say so loudly when it cannot).
    let Some(probe) = kafka(test) else {
        return;
    };
    drop(probe);
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut child = tradeflow()
        .current_dir(directory.path())
        .args([
            "run", "stream", "--broker", "kafka", "--seed", "3", "--events", "200000", "--rate", "1000",
        ])
        .args(["--database-url"])
        .arg(directory.path().join("run.db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tradeflow starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    // The run line names the backend once the three nodes are up.
    let started = lines.by_ref().map_while(Result::ok).any(|line| line.contains("via kafka"));
    assert!(started, "the run never said it was on kafka");
    let nodes = processes::pids_with_command_line("tradeflow-kafka-", Some(child.id()));
    assert_eq!(nodes.len(), 3, "three JVM nodes are children of the run: {nodes:?}");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("the run exits");
    assert!(!exit.success(), "an interrupted run does not report success: {exit}");
    let left: Vec<u32> = nodes.into_iter().filter(|pid| processes::alive(*pid)).collect();
    assert!(left.is_empty(), "JVMs left behind after Ctrl-C: {left:?}");
}
