//! The `tradeflow` binary as a user runs it: the main job writes a valid results file, and
//! bad input is a one-line error.

use std::process::Command;

fn tradeflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tradeflow"));
    command.env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    command
}

#[test]
fn compare_writes_a_valid_results_file_and_report() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let out = directory.path().join("out");
    let output = tradeflow()
        .current_dir(directory.path())
        .args([
            "compare",
            "--seed",
            "7",
            "--events",
            "2000",
            "--rate",
            "20000",
            "--partitions",
            "4",
            "--consumers",
            "2",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("tradeflow runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
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
        report.contains("seed 7") && report.contains("| throughput (events/s) |"),
        "{report}"
    );
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
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot run honestly on the external backend") && stderr.contains("no faults can be injected"),
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
