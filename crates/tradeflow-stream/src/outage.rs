//! A database outage from outside the balance service, for the database-outage lesson.
//!
//! - **PostgreSQL**: the service's own pool reaches the server through a chaos proxy. The
//!   outage resets every connection open through it and points it at a port nobody
//!   listens on, so each new connection is closed at once (the proxy counts those refusals);
//!   the end points it back at the server.
//! - **SQLite**: another process (`tradeflow hold-sqlite-lock FILE`) takes the file's write
//!   lock and holds it; every writer waits out its busy timeout and answers busy. The end
//!   kills that process (SIGKILL), which lets the lock go.
//!
//! The run's own store (the reset, the checker) keeps its direct connection: only the
//! balance service loses its database.

use crate::StreamError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tradeflow_cluster::proxy::ChaosProxy;
use tradeflow_store::{Store, StoreKind};

/// How long the lock-holding process may take to say it holds the lock.
pub const LOCK_TAKEN_WITHIN: Duration = Duration::from_secs(15);

/// What the outage did, for the run's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutageWindow {
    /// When the database went away, ms from the start of publishing.
    pub from_ms: Option<u64>,
    /// When it came back.
    pub to_ms: Option<u64>,
    /// The balance service's database calls when it went away, and when it came back.
    pub attempts: (u64, u64),
}

/// The means of taking the balance service's database away and giving it back.
pub(crate) struct DatabaseOutage {
    means: Means,
    /// The store the balance service uses: through the proxy, or the run's own.
    service_store: Store,
    /// When the outage started and ended.
    pub(crate) window: OutageWindow,
}

enum Means {
    Proxy {
        proxy: ChaosProxy,
        upstream: SocketAddr,
        refused_before: u64,
    },
    Lock {
        executable: PathBuf,
        file: PathBuf,
        holder: Option<tokio::process::Child>,
    },
}

impl DatabaseOutage {
    /// Sets up the means for the run's store: a proxy and a pool through it for
    /// PostgreSQL; for SQLite, the executable that will hold the lock.
    pub(crate) async fn prepare(store: &Store, lock_holder: Option<&PathBuf>, seed: u64) -> Result<DatabaseOutage, StreamError> {
        let config = |reason: String| StreamError::Config { reason };
        match store.kind() {
            StoreKind::Postgres => {
                let address = store
                    .postgres_address()
                    .ok_or_else(|| config(format!("the store's URL {} names no server", store.url_redacted())))?;
                let upstream = tokio::net::lookup_host(&address)
                    .await
                    .ok()
                    .and_then(|mut addresses| addresses.next())
                    .ok_or_else(|| config(format!("cannot resolve the database server {address}")))?;
                let proxy = ChaosProxy::start(0, upstream, seed).map_err(|error| config(error.to_string()))?;
                let service_store = store.through(proxy.address()).await?;
                tracing::info!(proxy = %proxy.address(), %upstream, "the balance service reaches PostgreSQL through a chaos proxy");
                Ok(DatabaseOutage {
                    means: Means::Proxy {
                        proxy,
                        upstream,
                        refused_before: 0,
                    },
                    service_store,
                    window: OutageWindow::default(),
                })
            }
            StoreKind::Sqlite => {
                let executable = lock_holder.cloned().ok_or_else(|| {
                    config(
                        "a database outage on SQLite is a lock held by another process, and no tradeflow executable was given to hold it"
                            .into(),
                    )
                })?;
                let file = store
                    .sqlite_path()
                    .ok_or_else(|| config("the SQLite store has no file path".into()))?;
                Ok(DatabaseOutage {
                    means: Means::Lock {
                        executable,
                        file,
                        holder: None,
                    },
                    service_store: store.clone(),
                    window: OutageWindow::default(),
                })
            }
        }
    }

    /// The store the balance service is to use.
    pub(crate) fn service_store(&self) -> Store {
        self.service_store.clone()
    }

    /// Statements of the balance service's own pool, when it has one (PostgreSQL through
    /// the proxy); on SQLite the service shares the run's store and its count.
    pub(crate) fn own_statements(&self) -> u64 {
        match self.means {
            Means::Proxy { .. } => self.service_store.statements(),
            Means::Lock { .. } => 0,
        }
    }

    /// Takes the database away; returns what that did.
    pub(crate) async fn cut(&mut self, at_ms: u64, attempts: u64) -> Result<String, String> {
        let effect = match &mut self.means {
            Means::Proxy { proxy, refused_before, .. } => {
                // A port just freed: nothing listens there, so the proxy's connections to it
                // are refused and it closes each client connection at once.
                let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|listener| listener.local_addr())
                    .map_err(|error| format!("finding a closed port: {error}"))?;
                proxy.set_upstream(nowhere);
                *refused_before = proxy.stats().upstream_connect_failures;
                let reset = proxy.reset_connections();
                format!("database unreachable: PostgreSQL cut off at the proxy, {reset} open connections reset, new ones closed at once")
            }
            Means::Lock { executable, file, holder } => {
                let mut child = tokio::process::Command::new(&*executable)
                    .arg("hold-sqlite-lock")
                    .arg(&*file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|error| format!("starting {} hold-sqlite-lock: {error}", executable.display()))?;
                let pid = child.id().unwrap_or(0);
                let stdout = child.stdout.take().ok_or("the lock holder has no stdout")?;
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let said = tokio::time::timeout(LOCK_TAKEN_WITHIN, lines.next_line()).await;
                match said {
                    Ok(Ok(Some(line))) if line.trim() == "locked" => {}
                    other => {
                        let _ = child.start_kill();
                        return Err(format!(
                            "the lock holder (pid {pid}) did not say it holds the lock within {LOCK_TAKEN_WITHIN:?}: {other:?}"
                        ));
                    }
                }
                *holder = Some(child);
                format!(
                    "database unreachable: SQLite file {} locked (BEGIN EXCLUSIVE) by process {pid}",
                    file.display()
                )
            }
        };
        self.window.from_ms = Some(at_ms);
        self.window.attempts.0 = attempts;
        Ok(effect)
    }

    /// Gives the database back; returns what the outage was seen to do meanwhile.
    pub(crate) async fn restore(&mut self, at_ms: u64, attempts: u64) -> Result<String, String> {
        let effect = match &mut self.means {
            Means::Proxy {
                proxy,
                upstream,
                refused_before,
            } => {
                proxy.set_upstream(*upstream);
                let refused = proxy.stats().upstream_connect_failures.saturating_sub(*refused_before);
                format!("PostgreSQL reachable again through the proxy; {refused} connections were refused meanwhile")
            }
            Means::Lock { holder, .. } => {
                let mut child = holder.take().ok_or("no process holds the lock")?;
                let pid = child.id().unwrap_or(0);
                child
                    .start_kill()
                    .map_err(|error| format!("killing the lock holder {pid}: {error}"))?;
                let status = child
                    .wait()
                    .await
                    .map_err(|error| format!("waiting for the lock holder {pid}: {error}"))?;
                format!("the lock holder (pid {pid}) was killed ({status}): the file is free")
            }
        };
        self.window.to_ms = Some(at_ms);
        self.window.attempts.1 = attempts;
        Ok(effect)
    }
}
