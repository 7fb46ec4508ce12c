//! Helpers shared by the integration tests (the `it` test binary): stores on real
//! databases, each test with its own, and the rule for servers that cannot be found.
//!
//! A test that needs a server it cannot find says so on standard error and skips, unless
//! `TRADEFLOW_REQUIRE_BACKENDS` names it (`mock,tansu,kafka,postgres,container`): then it
//! fails, so CI really runs it. CI names what it installs; what it cannot have (a Docker
//! engine on a machine without one) skips loudly.

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

/// Reports a server that cannot be found: panics when `TRADEFLOW_REQUIRE_BACKENDS` names
/// it, otherwise says loudly that the test is skipped.
pub fn server_missing(test: &str, backend: &str, what: &str, detail: &str) {
    if required(backend) {
        panic!("{test}: {what} is required ({REQUIRE_VARIABLE} names {backend}) but unavailable: {detail}");
    }
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
    (store, directory)
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
    Some((store, url))
}

/// A tansu broker process for a test, or `None` (outside CI) when there is no binary.
pub fn tansu_cluster(test: &str) -> Option<tradeflow_cluster::Cluster> {
    init_logs();
    match tradeflow_cluster::Cluster::tansu() {
        Ok(cluster) => Some(cluster),
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
        Ok(cluster) => Some(cluster),
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
        Ok(cluster) => Some(cluster),
        Err(error) => {
            server_missing(test, "kafka", "Apache Kafka (three nodes)", &error.to_string());
            None
        }
    }
}
