//! Opening a store: which backend, which URL, the pool, the pragmas and the migrations.

use crate::{Store, StoreError};
use sqlx::any::AnyPoolOptions;
use sqlx::{Connection, Executor};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Most connections a PostgreSQL pool opens: pollers, consumers, the source and the
/// samplers of one run, with room to spare.
pub const POSTGRES_CONNECTIONS_MAX: u32 = 32;
/// How long to wait for a connection (and for the server at startup).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits for another writer before answering busy.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// The two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// A SQLite file, the embedded default.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl StoreKind {
    /// The name used on the command line and in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The backend.
    pub kind: StoreKind,
    /// `sqlite://PATH` (or a bare path) for SQLite, `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// for PostgreSQL.
    pub url: String,
}

impl StoreConfig {
    /// A SQLite file at `path`.
    pub fn sqlite_file(path: &std::path::Path) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Sqlite,
            url: format!("sqlite://{}", path.display()),
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }

    /// Checks that the URL matches the backend and returns the URL to give the driver.
    fn driver_url(&self) -> Result<String, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: self.url_redacted(),
            reason,
        };
        match self.kind {
            StoreKind::Sqlite => {
                let path = self
                    .url
                    .strip_prefix("sqlite://")
                    .or_else(|| self.url.strip_prefix("sqlite:"))
                    .unwrap_or(&self.url);
                if path.is_empty() || path.contains("://") {
                    return Err(bad("expected sqlite://PATH or a file path".into()));
                }
                if path.contains('?') {
                    return Err(bad("query parameters are not supported; tradeflow sets the pragmas it needs".into()));
                }
                Ok(format!("sqlite://{path}?mode=rwc"))
            }
            StoreKind::Postgres => {
                let Some(rest) = self
                    .url
                    .strip_prefix("postgres://")
                    .or_else(|| self.url.strip_prefix("postgresql://"))
                else {
                    return Err(bad("expected postgres://USER:PASSWORD@HOST:PORT/DATABASE".into()));
                };
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(bad(
                        "the URL names no host; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE".into()
                    ));
                }
                Ok(self.url.clone())
            }
        }
    }
}

/// What to do about a failed connection, by what answered: nothing (refused), no answer
/// in time, a refusal of the credentials, a database that does not exist, or something
/// that does not speak PostgreSQL.
fn connect_hint(kind: StoreKind, error: &sqlx::Error) -> &'static str {
    if kind == StoreKind::Sqlite {
        return "check that the directory exists and is writable";
    }
    match error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens at that host and port; start the server, or fix the URL (`.ci/run` shows how to start one and create the role)"
        }
        sqlx::Error::PoolTimedOut => "no answer within 10 s: is that address reachable, and is what listens there a PostgreSQL server?",
        sqlx::Error::Database(database) => match database.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => "authentication failed: check the user and password in the URL (or DATABASE_URL)",
            // invalid_catalog_name
            Some("3D000") => "the database does not exist: create it (`CREATE DATABASE`, owned by the URL's user) or name another",
            _ => "the server refused the connection; its message is above",
        },
        sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => {
            "what answered does not speak PostgreSQL's protocol as expected: check the host and port"
        }
        _ => "is the server running and the URL right? (`.ci/run` shows how to start one and create the role)",
    }
}

impl Store {
    /// Opens the store, creating the SQLite file if needed, and migrates the schema.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = config.driver_url()?;
        let url_redacted = config.url_redacted();
        let options = AnyPoolOptions::new().acquire_timeout(CONNECT_TIMEOUT);
        let options = match config.kind {
            // SQLite has one writer at a time; one connection makes that explicit instead
            // of turning it into busy errors, and every writer in the process queues here.
            StoreKind::Sqlite => options.max_connections(1).after_connect(|connection, _| {
                Box::pin(async move {
                    // WAL: readers in other processes do not block the writer.
                    connection.execute("PRAGMA journal_mode = WAL").await?;
                    // NORMAL is durable across a process crash in WAL mode, which is the
                    // failure the experiments inject; FULL would only add power-loss safety.
                    connection.execute("PRAGMA synchronous = NORMAL").await?;
                    connection
                        .execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str())
                        .await?;
                    Ok(())
                })
            }),
            StoreKind::Postgres => options.max_connections(POSTGRES_CONNECTIONS_MAX),
        };
        let connect_error = |error| StoreError::Connect {
            kind: config.kind,
            url: url_redacted.clone(),
            hint: connect_hint(config.kind, &error),
            error,
        };
        // One direct attempt first: the pool would retry a refused connection until its
        // timeout and then report only "timed out", hiding the cause.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(&url))
            .await
            .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
            .map_err(connect_error)?;
        let _ = probe.close().await;
        let pool = options.connect(&url).await.map_err(connect_error)?;
        let migrator = match config.kind {
            StoreKind::Sqlite => &SQLITE_MIGRATIONS,
            StoreKind::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|error| match error {
            sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::UnknownSchema {
                kind: config.kind,
                url: url_redacted.clone(),
                found,
                known: migrator.iter().map(|migration| migration.version).max().unwrap_or(0),
            },
            error => StoreError::Migrate {
                kind: config.kind,
                url: url_redacted.clone(),
                error,
            },
        })?;
        tracing::debug!(store = %config.kind, url = %url_redacted, "store open and migrated");
        Ok(Store {
            pool,
            kind: config.kind,
            url_redacted,
            url: SecretUrl(config.url.clone()),
            statements: Arc::new(AtomicU64::new(0)),
            group: None,
        })
    }

    /// The SQLite file of a SQLite store.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        (self.kind == StoreKind::Sqlite).then(|| {
            let url = &self.url.0;
            std::path::PathBuf::from(url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url))
        })
    }

    /// `HOST:PORT` of a PostgreSQL store's server (port 5432 when the URL names none).
    pub fn postgres_address(&self) -> Option<String> {
        (self.kind == StoreKind::Postgres).then(|| server_address(&self.url.0)).flatten()
    }

    /// A second store on the same PostgreSQL database, reached through `address` (a proxy
    /// in front of the server) instead of the URL's host and port. Its own pool and
    /// statement counter.
    pub async fn through(&self, address: std::net::SocketAddr) -> Result<Store, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: self.url_redacted.clone(),
            reason: reason.into(),
        };
        if self.kind != StoreKind::Postgres {
            return Err(bad("only a PostgreSQL store can be reached through another address"));
        }
        let (scheme, rest) = self.url.0.split_once("://").ok_or_else(|| bad("the URL has no scheme"))?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let user_info = authority
            .rsplit_once('@')
            .map(|(user_info, _)| format!("{user_info}@"))
            .unwrap_or_default();
        Store::connect(&StoreConfig {
            kind: StoreKind::Postgres,
            url: format!("{scheme}://{user_info}{address}{path}"),
        })
        .await
    }

    /// Empties every tradeflow table, so that a run starts from nothing.
    pub async fn reset(&self) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await.map_err(self.query_error("starting the reset"))?;
        for table in [
            "apply_log",
            "apply_journal",
            "check_expected",
            "positions",
            "balances",
            "trade_events",
        ] {
            self.count(1);
            transaction
                .execute(format!("DELETE FROM {table}").as_str())
                .await
                .map_err(self.query_error("emptying tables"))?;
        }
        self.count(1);
        transaction.commit().await.map_err(self.query_error("committing the reset"))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Takes SQLite's write lock on the file at `path` (`BEGIN EXCLUSIVE` on a connection of
/// its own) and holds it as long as the returned connection lives: every writer of the
/// file waits, then answers busy. The database-outage lesson's fault on SQLite, held by a
/// process of its own.
pub async fn lock_sqlite_file(path: &std::path::Path) -> Result<sqlx::AnyConnection, StoreError> {
    sqlx::any::install_default_drivers();
    let config = StoreConfig::sqlite_file(path);
    let failed = |error| StoreError::Connect {
        kind: StoreKind::Sqlite,
        url: config.url_redacted(),
        hint: "check that the file exists and is a tradeflow store",
        error,
    };
    if !path.exists() {
        return Err(StoreError::Invalid {
            operation: "locking a SQLite file",
            reason: format!("{} does not exist", path.display()),
        });
    }
    let mut connection = sqlx::AnyConnection::connect(&config.driver_url()?).await.map_err(failed)?;
    connection
        .execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str())
        .await
        .map_err(failed)?;
    connection.execute("BEGIN EXCLUSIVE").await.map_err(failed)?;
    Ok(connection)
}

/// `HOST:PORT` of a server URL's authority (port 5432 when it names none).
fn server_address(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return None;
    }
    Some(if host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        host.to_owned()
    } else {
        format!("{host}:5432")
    })
}

/// A URL that may hold a password: its `Debug` shows it redacted.
#[derive(Clone)]
pub(crate) struct SecretUrl(String);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// Replaces the password of a URL's user-info, and the value of a `password=` query
/// parameter, with `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user-info ends at the last `@`, so a password holding `/`, `?` or `@` unencoded
    // is still masked whole; the host runs from there to the first `/` or `?`. (An `@` in
    // the query moves that cut: the URL is then shown mangled, never with its password.)
    let host_start = rest.rfind('@').map_or(0, |at| at + 1);
    let authority_end = rest[host_start..].find(['/', '?']).map_or(rest.len(), |end| host_start + end);
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_query(query)),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A query string with the value of every `password` parameter replaced by `***`.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_connection_says_what_answered() {
        assert_eq!(CONNECT_TIMEOUT, Duration::from_secs(10), "the timeout's hint says 10 s");
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(connect_hint(StoreKind::Postgres, &refused).starts_with("connection refused"));
        assert!(connect_hint(StoreKind::Postgres, &sqlx::Error::PoolTimedOut).starts_with("no answer within 10 s"));
        assert!(connect_hint(StoreKind::Postgres, &sqlx::Error::Protocol("x".into())).contains("protocol"));
        assert!(connect_hint(StoreKind::Sqlite, &refused).contains("writable"));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://tradeflow:secret@127.0.0.1:5432/db"),
            "postgres://tradeflow:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact("postgres://tradeflow@host/db"), "postgres://tradeflow@host/db");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(
            redact("postgres://tradeflow@127.0.0.1/db?sslmode=require&password=secret&application_name=x"),
            "postgres://tradeflow@127.0.0.1/db?sslmode=require&password=***&application_name=x"
        );
        assert_eq!(redact("postgres://u:pw@h/db?Password=pw"), "postgres://u:***@h/db?Password=***");
        // A password with `?` or `/` in it, not percent-encoded, is still the password.
        assert_eq!(redact("postgres://u:p?s/s@h:5432/db"), "postgres://u:***@h:5432/db");
    }

    #[test]
    fn a_stores_address_comes_from_its_url_and_its_debug_hides_the_password() {
        assert_eq!(
            format!("{:?}", SecretUrl("postgres://tradeflow:secret@127.0.0.1:5432/db".into())),
            "postgres://tradeflow:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            server_address("postgres://tradeflow:p@ss@127.0.0.1:6543/db").as_deref(),
            Some("127.0.0.1:6543")
        );
        assert_eq!(
            server_address("postgres://u@db.example/x?sslmode=require").as_deref(),
            Some("db.example:5432")
        );
        assert_eq!(server_address("postgres:///x"), None);
    }

    #[test]
    fn urls_must_match_the_backend() {
        let postgres = StoreConfig {
            kind: StoreKind::Postgres,
            url: "mysql://x@y/z".into(),
        };
        assert!(matches!(postgres.driver_url(), Err(StoreError::BadUrl { .. })));
        let sqlite = StoreConfig {
            kind: StoreKind::Sqlite,
            url: "postgres://x@y/z".into(),
        };
        assert!(matches!(sqlite.driver_url(), Err(StoreError::BadUrl { .. })));
        let sqlite = StoreConfig {
            kind: StoreKind::Sqlite,
            url: "run.db".into(),
        };
        assert_eq!(sqlite.driver_url().ok(), Some("sqlite://run.db?mode=rwc".to_owned()));
    }
}
