//! The tansu broker (Apache-2.0, a real Kafka-compatible server, memory storage) as a
//! child process: started on a free port, checked for readiness, its log captured, and
//! killed, stopped, resumed or restarted on demand.
//!
//! Limits (tansu 0.6): one broker, memory storage (SIGKILL loses every message), no
//! CreatePartitions, no transactions end to end.

use crate::ClusterError;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the broker may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running tansu process.
pub(crate) struct TansuProcess {
    binary: PathBuf,
    port: u16,
    /// What the broker tells clients to connect to: its own port, or a chaos proxy's.
    advertised: String,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    _directory: tempfile::TempDir,
}

/// Finds the tansu binary: `TANSU_BIN`, else `tansu` on `PATH`.
pub fn find_binary() -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("TANSU_BIN").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(unavailable(format!("TANSU_BIN={} is not a file", path.display())))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|directory| directory.join("tansu"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| unavailable("no tansu binary: set TANSU_BIN or put tansu on PATH (`bash .ci/install-tansu` fetches it)".into()))
}

fn unavailable(reason: String) -> ClusterError {
    ClusterError::Unsupported { backend: "tansu", reason }
}

impl TansuProcess {
    /// Starts tansu listening on `port`, telling clients to connect to `advertised`
    /// (`HOST:PORT`).
    pub(crate) fn start(binary: &Path, port: u16, advertised: String) -> Result<TansuProcess, ClusterError> {
        let directory = tempfile::tempdir().map_err(|error| unavailable(format!("creating a log directory: {error}")))?;
        let process = TansuProcess {
            binary: binary.to_owned(),
            port,
            advertised,
            log_path: directory.path().join("tansu.log"),
            child: Mutex::new(None),
            _directory: directory,
        };
        process.spawn()?;
        Ok(process)
    }

    pub(crate) fn bootstrap(&self) -> String {
        self.advertised.clone()
    }

    /// The broker's captured log (stdout and stderr).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn spawn(&self) -> Result<(), ClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|error| unavailable(format!("opening {}: {error}", self.log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|error| unavailable(format!("opening the log twice: {error}")))?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.advertised);
        let child = Command::new(&self.binary)
            .arg("broker")
            // Listen on IPv4 loopback (`localhost` may resolve to ::1 first) and advertise the
            // address clients must use: the chaos proxy's, when there is one.
            .args(["--listener-url", &listener, "--advertised-listener-url", &advertised])
            // Memory storage: fast and disposable; a SIGKILL loses everything (a stated limit).
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| unavailable(format!("starting {}: {error}", self.binary.display())))?;
        let pid = child.id();
        if let Ok(mut slot) = self.child.lock() {
            *slot = Some(child);
        }
        self.wait_ready().map_err(|reason| {
            unavailable(format!(
                "tansu (pid {pid}) on port {}: {reason}; its log:\n{}",
                self.port,
                self.log()
            ))
        })?;
        tracing::info!(pid, bootstrap = %self.bootstrap(), "tansu started");
        Ok(())
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(mut slot) = self.child.lock()
                && let Some(child) = slot.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited at start with {status}"));
            }
            if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not listening after {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) -> Result<(), ClusterError> {
        let pid = self
            .child
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(Child::id))
            .ok_or_else(|| unavailable("the broker is not running".into()))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|error| unavailable(format!("sending SIG{signal} to {pid}: {error}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(unavailable(format!("kill -{signal} {pid} failed: {status}")))
        }
    }

    /// SIGKILL: the process dies at once and, with memory storage, every message is gone.
    pub(crate) fn kill(&self) -> Result<(), ClusterError> {
        self.signal("KILL")?;
        if let Ok(mut slot) = self.child.lock()
            && let Some(mut child) = slot.take()
        {
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes; connections stay open and time out.
    pub(crate) fn pause(&self) -> Result<(), ClusterError> {
        self.signal("STOP")
    }

    /// SIGCONT.
    pub(crate) fn resume(&self) -> Result<(), ClusterError> {
        self.signal("CONT")
    }

    /// Starts the broker again on the same port (after a kill, or kills it first).
    pub(crate) fn restart(&self) -> Result<(), ClusterError> {
        let running = self.child.lock().ok().is_some_and(|slot| slot.is_some());
        if running {
            self.kill()?;
        }
        self.spawn()
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.child.lock()
            && let Some(mut child) = slot.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (free now; the caller binds it soon after).
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| unavailable(format!("finding a free port: {error}")))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| unavailable(format!("finding a free port: {error}")))
}
