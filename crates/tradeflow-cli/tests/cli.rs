//! The `tradeflow` binary as a user runs it: the main job writes a valid results file, bad
//! input is a one-line error, and a password shows on no command line and in nothing a run
//! prints or writes.

use std::process::Command;

use tradeflow_tests::processes;

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
    tradeflow_tests::exercised("mock");
    tradeflow_tests::exercised("sqlite");
    (out, stdout)
}

#[test]
fn compare_writes_a_valid_results_file_and_report() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let (out, stdout) = compare(
        directory.path(),
        &[
            "--rate",
            "20000",
            "--partitions",
            "4",
            "--consumers",
            "2",
            "--fill-wait-ms",
            "2",
            "--fetch-wait-max-ms",
            "3",
            "--no-ceilings",
        ],
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
    // The balance service's waits reached the stream's own process and its record.
    assert_eq!(
        (&runs[1]["config"]["fill_wait_ms"], &runs[1]["config"]["fetch_wait_max_ms"]),
        (&serde_json::json!(2), &serde_json::json!(3)),
        "{}",
        runs[1]["config"]
    );
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
            && report.contains("| all applied after the last send (ms) |")
            && report.contains("a batch fill wait of 2 ms and a fetch wait of up to 3 ms"),
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
                || last["throughput_per_s"].as_f64() < last["offered_per_s"].as_f64().map(|offered| 0.95 * offered)
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

#[test]
#[ignore = "needs tansu: TANSU_BIN, or tansu on PATH (bash .ci/install-tansu)"]
fn a_topic_with_another_partition_count_is_refused_with_what_to_do() {
    let test = "a_topic_with_another_partition_count_is_refused_with_what_to_do";
    let Some(cluster) = tradeflow_tests::tansu_cluster(test) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime
        .block_on(cluster.ensure_topic("trades", 2, 1))
        .expect("the topic is created with 2 partitions");
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = directory.path().join("balances.db");
    let output = tradeflow()
        .args([
            "run",
            "stream",
            "--bootstrap",
            cluster.bootstrap_servers(),
            "--partitions",
            "6",
            "--events",
            "100",
        ])
        .arg("--database-url")
        .arg(&store)
        .output()
        .expect("tradeflow runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("it exists with 2 partitions and this run counts on 6: pass --partitions 2"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs Apache Kafka: Java 17 and KAFKA_HOME (bash .ci/install-kafka)"]
fn the_readmes_topics_apply_creates_replicated_topics_on_kafka_and_refuses_too_few_replicas() {
    let test = "the_readmes_topics_apply_creates_replicated_topics_on_kafka_and_refuses_too_few_replicas";
    let Some(cluster) = tradeflow_tests::kafka_cluster(test) else {
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
    let Some(probe) = tradeflow_tests::kafka_cluster(test) else {
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

/// The Kafka security variables, removed from every run below that sets some of them, so
/// that a developer's own settings do not change what the run sees.
const KAFKA_SECURITY_VARIABLES: [&str; 5] = [
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
];

#[test]
fn invalid_kafka_security_settings_stop_every_command_that_builds_a_client_before_it_connects() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    // Where the commands that take bootstrap servers are sent: a connection here would be a
    // client that went ahead in plaintext.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.set_nonblocking(true).expect("a non-blocking listener");
    let bootstrap = listener.local_addr().expect("its address").to_string();
    let database = directory.path().join("store.db").display().to_string();
    let out = directory.path().join("out").display().to_string();
    let commands: [&[&str]; 6] = [
        &["run", "stream", "--seed", "1", "--events", "100", "--database-url", &database],
        &[
            "compare",
            "--seed",
            "1",
            "--events",
            "100",
            "--no-ceilings",
            "--database-url",
            &database,
            "--out",
            &out,
        ],
        &["balance-service", "--bootstrap", &bootstrap, "--database-url", &database],
        &["topics", "plan", "--bootstrap", &bootstrap],
        &["dlq", "replay", "--bootstrap", &bootstrap],
        &[
            "experiment",
            "poison-message",
            "--broker",
            "external",
            "--bootstrap",
            &bootstrap,
            "--database-url",
            &database,
            "--out",
            &out,
        ],
    ];
    let password = "kafka-pw-5d1c0e9a";
    // What each setting must be refused for: the variable the message names.
    let settings: [(&[(&str, &str)], &str); 2] = [
        (
            &[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
                ("KAFKA_SASL_USERNAME", "alice"),
            ],
            "KAFKA_SASL_PASSWORD not set",
        ),
        // Credentials with no protocol: librdkafka would connect in plaintext and send none.
        (
            &[
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
                ("KAFKA_SASL_USERNAME", "alice"),
                ("KAFKA_SASL_PASSWORD", password),
            ],
            "but KAFKA_SECURITY_PROTOCOL is plaintext",
        ),
    ];
    for (variables, reason) in settings {
        for arguments in commands {
            let mut command = tradeflow();
            command.current_dir(directory.path()).args(arguments).env("RUST_LOG", "debug");
            for variable in KAFKA_SECURITY_VARIABLES {
                command.env_remove(variable);
            }
            let output = command.envs(variables.iter().copied()).output().expect("tradeflow runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let shown = format!("tradeflow {arguments:?} with {variables:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}");
            assert_eq!(output.status.code(), Some(1), "{shown}");
            assert!(
                stderr.starts_with("error: invalid Kafka security settings in the environment: ")
                    && stderr.contains(reason)
                    && stderr.lines().count() == 1,
                "one line with the reason: {shown}"
            );
            assert!(stdout.is_empty(), "refused before it started anything: {shown}");
            assert!(
                !stdout.contains(password) && !stderr.contains(password),
                "the password was printed: {shown}"
            );
        }
    }
    assert!(
        matches!(listener.accept(), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "a refused command connected to the bootstrap servers"
    );
    assert!(!directory.path().join("store.db").exists(), "a refused command opened its store");
}

/// A PostgreSQL role and database of their own, for a test that must find a password in
/// nothing a run shows: the CI role's password is its own name, which every redacted URL
/// shows, so this role's is random. Dropped with this value, also when the test fails.
struct SecretDatabase {
    /// The test server's URL, as the test role (which has CREATEDB and CREATEROLE).
    admin_url: String,
    /// The role, which owns the database of the same name.
    role: String,
    /// The role's password: 32 random hex digits.
    password: String,
    /// The database's URL, as the role, password included.
    url: String,
}

/// 32 hex digits from the standard library's randomly keyed hasher: different in every test
/// process and unlikely anywhere else.
fn random_hex() -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    format!("{:016x}{:016x}", state.hash_one(1_u8), state.hash_one(2_u8))
}

impl SecretDatabase {
    /// Creates the role and its database, or returns `None` when there is no PostgreSQL
    /// server (a failure instead when `TRADEFLOW_REQUIRE_BACKENDS` names postgres): the rule
    /// `tests/lib.rs` keeps for every server.
    async fn create(test: &str) -> Option<SecretDatabase> {
        use sqlx::Connection;
        let admin_url = tradeflow_tests::postgres_base_url();
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(connection) => connection,
            Err(error) => {
                let detail = format!("{}: {error}", tradeflow_store::connect::redact(&admin_url));
                tradeflow_tests::server_missing(test, "postgres", "PostgreSQL", &detail);
                return None;
            }
        };
        let role = format!("tradeflow_secret_{}", &random_hex()[..16]);
        let password = random_hex();
        let host = admin_url
            .split_once("://")
            .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
            .and_then(|rest| rest.split(['/', '?']).next())
            .unwrap_or_else(|| panic!("DATABASE_URL {} names no host", tradeflow_store::connect::redact(&admin_url)));
        let database = SecretDatabase {
            url: format!("postgres://{role}:{password}@{host}/{role}"),
            admin_url,
            role,
            password,
        };
        // The test role joins the new one, so that it may make it the database's owner and
        // drop both afterwards.
        for statement in [
            format!("CREATE ROLE {} LOGIN PASSWORD '{}'", database.role, database.password),
            format!("GRANT {} TO CURRENT_USER", database.role),
            format!("CREATE DATABASE {0} OWNER {0}", database.role),
        ] {
            if let Err(error) = sqlx::query(&statement).execute(&mut admin).await {
                let shown = statement.replace(&database.password, "<password>");
                panic!(
                    "{test}: `{shown}` failed ({error}): the test role needs CREATEROLE and CREATEDB (.ci/run gives them: ALTER ROLE tradeflow CREATEDB CREATEROLE)"
                );
            }
        }
        let _ = admin.close().await;
        tradeflow_tests::exercised("postgres");
        Some(database)
    }

    /// Drops the database and the role; says on standard error what it could not drop.
    async fn remove(&self) {
        use sqlx::Connection;
        let mut admin = match sqlx::PgConnection::connect(&self.admin_url).await {
            Ok(connection) => connection,
            Err(error) => {
                eprintln!("could not drop role and database {}: {error}", self.role);
                return;
            }
        };
        for statement in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.role),
            format!("DROP ROLE IF EXISTS {}", self.role),
        ] {
            if let Err(error) = sqlx::query(&statement).execute(&mut admin).await {
                eprintln!("`{statement}` failed: {error}");
            }
        }
        let _ = admin.close().await;
    }
}

impl Drop for SecretDatabase {
    fn drop(&mut self) {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(self.remove()),
            Err(error) => eprintln!("could not drop role and database {}: {error}", self.role),
        }
    }
}

/// What the process table showed while a run went on.
#[derive(Default)]
struct ProcessTable {
    /// Passes over `/proc`.
    samples: u64,
    /// Command lines that held the password (with it masked), by pid.
    leaks: std::collections::BTreeMap<u32, String>,
    /// The run's child processes whose command line names tradeflow.
    children: std::collections::BTreeSet<u32>,
}

/// How often the process table is read while a run goes on.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl ProcessTable {
    /// One pass over every process's command line.
    fn sample(&mut self, needle: &str, run: u32) {
        self.samples += 1;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                self.leaks.insert(pid, text.replace(needle, "<password>"));
            }
        }
        self.children.extend(processes::pids_with_command_line("tradeflow", Some(run)));
    }
}

/// Runs `command` to its end while reading every process's command line every
/// [`SAMPLE_EVERY`]; returns its output and what the process table showed.
fn run_watching_the_process_table(mut command: Command, needle: &str) -> (std::process::Output, ProcessTable) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tradeflow starts");
    let run = child.id();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, needle) = (done.clone(), needle.to_owned());
        std::thread::spawn(move || {
            let mut table = ProcessTable::default();
            while !done.load(Ordering::Relaxed) {
                table.sample(&needle, run);
                std::thread::sleep(SAMPLE_EVERY);
            }
            table
        })
    };
    let output = child.wait_with_output().expect("tradeflow runs");
    done.store(true, Ordering::Relaxed);
    (output, sampler.join().expect("the sampler ends"))
}

/// The files under `directory` (recursively) whose bytes hold `needle`.
fn files_holding(directory: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

#[test]
#[ignore = "needs PostgreSQL at DATABASE_URL (default: the server .ci/run starts)"]
fn a_database_password_reaches_no_command_line_and_nothing_a_run_prints_or_writes() {
    let test = "a_database_password_reaches_no_command_line_and_nothing_a_run_prints_or_writes";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("an async runtime");
    let Some(database) = runtime.block_on(SecretDatabase::create(test)) else {
        return;
    };
    let directory = tempfile::tempdir().expect("a temporary directory");
    // compare runs each side as a child process of its own: the cheapest run that hands a
    // PostgreSQL URL to children. It gets the URL as users are told to give it, in
    // DATABASE_URL; with every log line there is.
    let mut command = tradeflow();
    command
        .current_dir(directory.path())
        .env("DATABASE_URL", &database.url)
        .env("RUST_LOG", "debug")
        .args([
            "compare",
            "--store",
            "postgres",
            "--no-ceilings",
            "--seed",
            "7",
            "--events",
            "3000",
            "--out",
            "out",
        ]);
    let (output, table) = run_watching_the_process_table(command, &database.password);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let masked = |text: &str| text.replace(&database.password, "<password>");
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        masked(&stdout),
        masked(&stderr)
    );
    eprintln!(
        "{} passes over the process table, {} child tradeflow processes seen, {} bytes of output",
        table.samples,
        table.children.len(),
        output.stdout.len() + output.stderr.len()
    );
    assert!(
        !table.children.is_empty(),
        "the sampling saw no child tradeflow process in {} passes: it could not have seen a leak",
        table.samples
    );
    assert!(
        stdout.contains(&format!("{}:***@", database.role)),
        "the run shows the secret role's URL, redacted: it used it\n{}",
        masked(&stdout)
    );
    assert!(table.leaks.is_empty(), "the password is on command lines: {:?}", table.leaks);
    assert!(
        !stdout.contains(&database.password),
        "the password is on standard output:\n{}",
        masked(&stdout)
    );
    assert!(
        !stderr.contains(&database.password),
        "the password is in the logs:\n{}",
        masked(&stderr)
    );
    assert!(
        directory.path().join("out/report.md").is_file() && directory.path().join("out/results.json").is_file(),
        "the run wrote report.md and results.json, for the search below"
    );
    let files = files_holding(directory.path(), &database.password);
    assert!(files.is_empty(), "the password is in files the run wrote: {files:?}");
}
