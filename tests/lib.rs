//! Helpers shared by the integration tests (the `it` test binary): stores on real
//! databases, each test with its own, and the rule for servers that cannot be found.
//!
//! A test that needs a server is `#[ignore]`d, with a reason that names the server and how
//! to supply it (one of [`IGNORE_REASON_PREFIXES`]), so a plain `cargo test --workspace`
//! counts it as ignored, not passed. Run with `--include-ignored`, a test that cannot find
//! its server says so on standard error and skips, unless `TRADEFLOW_REQUIRE_BACKENDS`
//! names it (`mock,tansu,kafka,postgres,container`): then it fails, so CI really runs it.
//! CI names what it installs; what it cannot have (a Docker engine on a machine without
//! one) skips loudly.
//!
//! Every helper that hands a test a backend (a mock cluster, a store, a broker) records
//! that it did, and [`server_missing`] records what it skipped, in
//! `$TRADEFLOW_TEST_BACKENDS_DIR` when that is set: `scripts/test` reads it back to say on
//! its last line which backends the run exercised.

pub mod processes;

use std::sync::Once;
use tradeflow_store::{Store, StoreConfig, StoreKind};

/// The PostgreSQL server used when `DATABASE_URL` is not set: the one `.ci/run` starts.
pub const DEFAULT_DATABASE_URL: &str = "postgres://tradeflow:tradeflow@127.0.0.1:5432/tradeflow";

/// Logs are silent unless `TEST_LOG=1`.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
            tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().init();
        }
    });
}

/// The servers a missing one of which fails a test instead of skipping it.
pub const REQUIRE_VARIABLE: &str = "TRADEFLOW_REQUIRE_BACKENDS";

/// Whether `TRADEFLOW_REQUIRE_BACKENDS` names `backend` (a comma-separated list).
pub fn required(backend: &str) -> bool {
    std::env::var(REQUIRE_VARIABLE).is_ok_and(|list| list.split(',').any(|name| name.trim() == backend))
}

/// How the `#[ignore = "..."]` reason of a test that needs a server begins, by backend:
/// `scripts/test` reads these from the test output to name the backends whose tests were
/// ignored, and an architecture test holds every such attribute to one of them.
pub const IGNORE_REASON_PREFIXES: [(&str, &str); 4] = [
    ("postgres", "needs PostgreSQL"),
    ("tansu", "needs tansu"),
    ("kafka", "needs Apache Kafka"),
    ("container", "needs a Docker engine"),
];

/// The directory `scripts/test` names for the evidence of which backends the tests used.
pub const BACKENDS_DIR_VARIABLE: &str = "TRADEFLOW_TEST_BACKENDS_DIR";

/// The file in [`BACKENDS_DIR_VARIABLE`]'s directory that the evidence is appended to: a
/// line per backend a test got (or did not), `OUTCOME<TAB>BACKEND<TAB>TEST<TAB>DETAIL`,
/// with OUTCOME `exercised`, `skipped` (missing, not required) or `failed` (missing and
/// required). `scripts/test` reads this format; the CLI's tests write it too.
pub const BACKENDS_FILE: &str = "backends.tsv";

/// Records that the running test got `backend` (`mock`, `sqlite`, `postgres`, `tansu`,
/// `kafka`, `container`): evidence for `scripts/test`'s last line.
pub fn exercised(backend: &str) {
    record_backend("exercised", backend, "");
}

/// Appends one line of evidence to [`BACKENDS_FILE`] when `TRADEFLOW_TEST_BACKENDS_DIR` is
/// set (nothing otherwise). The test is named by its thread, which the test harness names
/// after it. Panics when the line cannot be written: the script's account would be wrong.
fn record_backend(outcome: &str, backend: &str, detail: &str) {
    use std::io::Write;
    let Some(directory) = std::env::var_os(BACKENDS_DIR_VARIABLE) else {
        return;
    };
    let one_field = |text: &str| text.replace(['\t', '\n', '\r'], " ");
    let test = std::thread::current().name().unwrap_or("unnamed").to_owned();
    // One write of the whole line, appended: lines from tests running side by side stay whole.
    let line = format!("{outcome}\t{backend}\t{}\t{}\n", one_field(&test), one_field(detail));
    let path = std::path::Path::new(&directory).join(BACKENDS_FILE);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .unwrap_or_else(|error| panic!("recording backend {backend} in {}: {error}", path.display()));
}

/// Reports a server that cannot be found: panics when `TRADEFLOW_REQUIRE_BACKENDS` names
/// it, otherwise says loudly that the test is skipped. Either way it is recorded for
/// `scripts/test`.
pub fn server_missing(test: &str, backend: &str, what: &str, detail: &str) {
    let unavailable = format!("{what} unavailable: {detail}");
    if required(backend) {
        record_backend("failed", backend, &unavailable);
        panic!("{test}: {what} is required ({REQUIRE_VARIABLE} names {backend}) but unavailable: {detail}");
    }
    record_backend("skipped", backend, &unavailable);
    eprintln!(
        "\n*** SKIPPED {test}: {what} unavailable ({detail}). Run `bash .ci/run` or set it up as it does; {REQUIRE_VARIABLE}={backend} makes this a failure. ***\n"
    );
}

/// The `tradeflow` executable the tests start the balance service from:
/// `TRADEFLOW_BIN`, else the one beside this test binary (`target/<profile>/tradeflow`),
/// which `cargo test --workspace` builds with the tests. Panics with what to do when it is
/// missing: a property that kills the service's process cannot run without it.
pub fn tradeflow_executable() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TRADEFLOW_BIN") {
        return path.into();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.join("tradeflow")));
    match beside {
        Some(path) if path.is_file() => path,
        other => panic!(
            "no tradeflow executable at {other:?}: the tests start the balance service as its processes. Run the tests with `cargo test --workspace` (which builds it), or `cargo build --bin tradeflow` first, or set TRADEFLOW_BIN"
        ),
    }
}

/// The SQLite store [`sqlite_store`] made in `directory`, for a process to open too.
pub fn sqlite_config(directory: &std::path::Path) -> StoreConfig {
    StoreConfig::sqlite_file(&directory.join("test.db"))
}

/// A fresh SQLite store in a temporary directory (kept alive by the returned guard).
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    init_logs();
    let directory = tempfile::tempdir().expect("a temporary directory");
    let store = Store::connect(&sqlite_config(directory.path())).await.expect("SQLite store opens");
    exercised("sqlite");
    (store, directory)
}

/// librdkafka's mock cluster with `brokers` brokers, in this process: always there.
pub fn mock_cluster(brokers: i32) -> tradeflow_cluster::Cluster {
    init_logs();
    let cluster = tradeflow_cluster::Cluster::mock(brokers).expect("mock cluster starts");
    exercised("mock");
    cluster
}

/// The URL of the PostgreSQL server for tests.
pub fn postgres_base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A fresh database on the test PostgreSQL server, or `None` (outside CI) when there is no
/// server. Returns the store and its URL.
pub async fn postgres_database(test: &str) -> Option<(Store, String)> {
    use sqlx::Connection;
    init_logs();
    let base = postgres_base_url();
    let mut admin = match sqlx::PgConnection::connect(&base).await {
        Ok(connection) => connection,
        Err(error) => {
            server_missing(
                test,
                "postgres",
                "PostgreSQL",
                &format!("{}: {error}", tradeflow_store::connect::redact(&base)),
            );
            return None;
        }
    };
    let name = format!("tradeflow_test_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("the test role may create databases (CREATEDB)");
    let _ = admin.close().await;
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("DATABASE_URL {base} names no database"),
    };
    let store = Store::connect(&StoreConfig {
        kind: StoreKind::Postgres,
        url: url.clone(),
    })
    .await
    .expect("PostgreSQL store opens");
    exercised("postgres");
    Some((store, url))
}

/// A tansu broker process for a test, or `None` (outside CI) when there is no binary.
pub fn tansu_cluster(test: &str) -> Option<tradeflow_cluster::Cluster> {
    init_logs();
    match tradeflow_cluster::Cluster::tansu() {
        Ok(cluster) => {
            exercised("tansu");
            Some(cluster)
        }
        Err(error) => {
            server_missing(test, "tansu", "the tansu broker", &error.to_string());
            None
        }
    }
}

/// A broker container for a test (the image of `TRADEFLOW_CONTAINER_IMAGE`, or the local
/// tansu image, which needs no registry), or `None` (outside CI) when there is no Docker
/// engine or no image.
pub fn container_cluster(test: &str) -> Option<tradeflow_cluster::Cluster> {
    use tradeflow_cluster::container::ContainerConfig;
    init_logs();
    let image = std::env::var("TRADEFLOW_CONTAINER_IMAGE").unwrap_or_else(|_| "tansu".to_owned());
    match tradeflow_cluster::Cluster::container(&ContainerConfig::named(Some(&image))) {
        Ok(cluster) => {
            exercised("container");
            Some(cluster)
        }
        Err(error) => {
            server_missing(test, "container", "a broker container", &error.to_string());
            None
        }
    }
}

/// A three-node Apache Kafka cluster for a test, or `None` when there is no Java or no
/// Kafka jars and `TRADEFLOW_REQUIRE_BACKENDS` does not name `kafka`.
pub fn kafka_cluster(test: &str) -> Option<tradeflow_cluster::Cluster> {
    init_logs();
    match tradeflow_cluster::Cluster::kafka() {
        Ok(cluster) => {
            exercised("kafka");
            Some(cluster)
        }
        Err(error) => {
            server_missing(test, "kafka", "Apache Kafka (three nodes)", &error.to_string());
            None
        }
    }
}
