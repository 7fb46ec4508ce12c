//! A consumer of the balance service in a process of its own (`tradeflow balance-service
//! --journal`), so that a fault can come from outside: SIGKILL at a seeded moment, with no
//! goodbye to the group and nothing flushed, the way a real process dies.
//!
//! The host reads the process's journal (see [`crate::journal`]) as it goes, for the run's
//! counters, and to its end once the process is dead, for what the kill caught it holding.

use crate::StreamError;
use crate::journal::{JournalEntry, JournalState};
use crate::service::{BATCH_RECEIVED, CommitPolicy, FaultSeen, SeenKind, ServiceCounters, Stuck, held_offsets};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tradeflow_store::StoreKind;
use tradeflow_store::connect::StoreConfig;

/// How long a kill waits for its target to hold a batch before it kills it anyway (a
/// fresh Kafka cluster can hold the first messages back for seconds while it sets up).
pub const KILL_WAIT_FOR_BATCH: Duration = Duration::from_secs(10);
/// Most time after a batch is received that a kill lands (drawn from the seed): within the
/// database transaction's time under the lesson's apply delay.
pub const KILL_JITTER_MAX: Duration = Duration::from_millis(40);
/// How long the host gives its reader to take in the journal lines a frozen process wrote
/// before it froze.
pub const JOURNAL_CATCH_UP: Duration = Duration::from_millis(250);
/// How long a process asked to stop (SIGTERM) has to leave its group before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the balance service as processes.
#[derive(Debug, Clone)]
pub struct ServiceProcesses {
    /// The `tradeflow` executable.
    pub executable: PathBuf,
    /// The store the processes apply into (the run's own store). A PostgreSQL URL goes to
    /// the process in `DATABASE_URL`, not on its command line, where `ps` would show it.
    pub store: StoreConfig,
}

/// What every process of a fleet is started with.
#[derive(Debug, Clone)]
pub(crate) struct ProcessArgs {
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) batch_size: usize,
    pub(crate) fill_wait: Duration,
    pub(crate) pipeline: bool,
    pub(crate) fetch_wait_max_ms: u32,
    pub(crate) session_timeout_ms: u32,
    pub(crate) commit: CommitPolicy,
    pub(crate) commit_interval: Duration,
    pub(crate) dead_letter: bool,
    pub(crate) apply_delay: Duration,
    pub(crate) dedup: tradeflow_store::Dedup,
    pub(crate) fencing: bool,
    pub(crate) key_check: bool,
    pub(crate) poison_exercise: bool,
    pub(crate) prefetch: crate::service::Prefetch,
    /// Whether each member has a `group.instance.id` (`<group>.<name>`): static membership.
    pub(crate) static_membership: bool,
    /// Whether chapter 19's exercise says what each "batch received" log line names.
    pub(crate) held_exercise: bool,
}

/// One running process.
pub(crate) struct ServiceProcess {
    /// The fleet's counters (the journal's reader feeds them; the stop adds the peak RSS).
    counters: Arc<ServiceCounters>,
    name: String,
    child: Child,
    pid: u32,
    state: Arc<Mutex<JournalState>>,
    reader: JoinHandle<()>,
    /// A freeze under way or done (SIGSTOP sent once it held a batch), until its SIGCONT.
    freezing: Option<JoinHandle<Frozen>>,
    /// The last "batch received" line of its JSON logs (standard error).
    last_received_log: Arc<Mutex<Option<serde_json::Value>>>,
    /// Its standard error's reader.
    log_reader: JoinHandle<()>,
}

/// What a freeze found when it was sent.
struct Frozen {
    at: std::time::Instant,
    /// Messages the process held.
    held: usize,
    /// Their offsets, per partition.
    held_offsets: String,
    /// Partitions it owned.
    owned: Vec<i32>,
    /// The topic and offsets its last "batch received" log line named.
    logged: Option<(String, String)>,
}

impl Frozen {
    /// Records the freeze in `counters`, ending now (woken or killed: `ended`); returns its
    /// effect in words.
    fn record(self, name: &str, pid: u32, ended: &str, counters: &ServiceCounters) -> String {
        // Its partitions another member holds now: what the group gave away while it was
        // frozen (read from the members' journals at the wake, not from a count taken at
        // the freeze, which a rebalance still being read could make stale).
        let moved = counters.owned_by_others(name, &self.owned);
        let logged = match &self.logged {
            Some((topic, offsets)) if *offsets == self.held_offsets => {
                format!("its last log line named topic {topic}, offsets {offsets}: the batch it held")
            }
            Some((topic, offsets)) => format!(
                "its last log line named topic {topic}, offsets {offsets}, NOT the batch it held ({})",
                self.held_offsets
            ),
            None => "it had written no batch-received log line".to_owned(),
        };
        // Each other member's assignment, and when it came relative to the freeze: a
        // freeze that ends before the group moved anything says how far the group got.
        let others = counters
            .others_owning(name)
            .iter()
            .map(|(other, held, since)| {
                let when = match since.checked_duration_since(self.at) {
                    Some(after) => format!("{:.1} s into the freeze", after.as_secs_f64()),
                    None => "before the freeze".to_owned(),
                };
                format!("{other} {held:?} from {when}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let effect = format!(
            "{name} (pid {pid}) was frozen (SIGSTOP) for {:.1} s until it was {ended}, owning partitions {:?} and holding {} received, unapplied messages; {logged}; meanwhile the other members gained {moved} partitions ({})",
            self.at.elapsed().as_secs_f64(),
            self.owned,
            self.held,
            if others.is_empty() {
                "no other member's journal named an assignment"
            } else {
                &others
            }
        );
        if let Ok(mut log) = counters.fault_log.lock() {
            log.push(FaultSeen {
                kind: SeenKind::Freeze,
                consumer: name.to_owned(),
                messages: self.held,
                effect: Some(effect.clone()),
                committed: None,
                partitions_moved: Some(moved),
                stuck: Some(Stuck {
                    owned: self.owned,
                    from: self.at,
                    to: std::time::Instant::now(),
                    held: self.held_offsets,
                    logged: self.logged,
                }),
            });
        }
        effect
    }
}

impl ServiceProcess {
    /// Starts `tradeflow balance-service` as consumer `name`; its journal feeds `counters`.
    pub(crate) fn spawn(
        spawn: &ServiceProcesses,
        args: &ProcessArgs,
        name: &str,
        counters: Arc<ServiceCounters>,
    ) -> Result<ServiceProcess, StreamError> {
        let mut command = Command::new(&spawn.executable);
        command
            .arg("balance-service")
            .args(["--store", spawn.store.kind.as_str()])
            .args(["--bootstrap", &args.bootstrap, "--topic", &args.topic, "--group", &args.group])
            .args(["--name", name, "--consumers", "1", "--journal"])
            .args(["--batch-size", &args.batch_size.to_string()])
            .args(["--fill-wait-ms", &args.fill_wait.as_millis().to_string()])
            .args(["--fetch-wait-max-ms", &args.fetch_wait_max_ms.to_string()])
            .args(["--session-timeout-ms", &args.session_timeout_ms.to_string()])
            .args(["--commit", &args.commit.as_str().replace('_', "-")])
            .args(["--commit-interval-ms", &args.commit_interval.as_millis().to_string()])
            .args(["--apply-delay-ms", &args.apply_delay.as_millis().to_string()])
            // JSON logs, with each batch received (its topic, partitions and offsets): the
            // host keeps the last such line and passes the others on.
            .args(["--log-format", "json"])
            .env("RUST_LOG", child_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if args.static_membership {
            command.args(["--group-instance-id", &format!("{}.{name}", args.group)]);
        }
        if !args.dead_letter {
            command.arg("--no-dead-letter");
        }
        match args.dedup {
            tradeflow_store::Dedup::None => {
                command.arg("--naive-apply");
            }
            tradeflow_store::Dedup::Exercise => {
                command.arg("--dedup-exercise");
            }
            tradeflow_store::Dedup::ApplyLog => {}
        }
        if !args.fencing {
            command.arg("--no-fencing");
        }
        if !args.key_check {
            command.arg("--no-key-check");
        }
        if args.poison_exercise {
            command.arg("--poison-exercise");
        }
        if args.held_exercise {
            command.arg("--held-exercise");
        }
        if args.pipeline {
            command.arg("--pipeline");
        }
        match args.prefetch {
            crate::service::Prefetch::Bounded => {}
            crate::service::Prefetch::LibrdkafkaDefaults => {
                command.args(["--prefetch", "librdkafka-defaults"]);
            }
            crate::service::Prefetch::Exercise => {
                command.args(["--prefetch", "exercise"]);
            }
        }
        match spawn.store.kind {
            StoreKind::Postgres => command.env("DATABASE_URL", &spawn.store.url),
            StoreKind::Sqlite => command.args(["--database-url", &spawn.store.url]),
        };
        let mut child = command.spawn().map_err(|error| StreamError::Config {
            reason: format!("starting the balance service process {}: {error}", spawn.executable.display()),
        })?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().ok_or_else(|| StreamError::Config {
            reason: "the balance service process has no standard output".into(),
        })?;
        let stderr = child.stderr.take().ok_or_else(|| StreamError::Config {
            reason: "the balance service process has no standard error".into(),
        })?;
        let state = Arc::new(Mutex::new(JournalState::default()));
        let reader = tokio::spawn(read_journal(name.to_owned(), stdout, state.clone(), counters.clone()));
        let last_received_log = Arc::new(Mutex::new(None));
        let log_reader = tokio::spawn(read_logs(name.to_owned(), stderr, last_received_log.clone()));
        Ok(ServiceProcess {
            counters,
            name: name.to_owned(),
            child,
            pid,
            state,
            reader,
            freezing: None,
            last_received_log,
            log_reader,
        })
    }

    /// How the process ended, if it ended on its own while it was to be running.
    pub(crate) fn ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(exit_description(status)),
            Ok(None) => None,
            Err(error) => Some(format!("could not be waited for ({error})")),
        }
    }

    /// Its name and pid, for messages.
    pub(crate) fn who(&self) -> String {
        format!("balance service process {} (pid {})", self.name, self.pid)
    }

    fn held(&self) -> usize {
        self.state.lock().map(|state| state.held_messages()).unwrap_or(0)
    }

    fn batches_received(&self) -> u64 {
        self.state.lock().map(|state| state.batches_received).unwrap_or(0)
    }

    /// Kills the process with SIGKILL, `jitter` after it holds a batch: at once if it holds
    /// one, else once it receives one; with `fresh`, once it receives its next one, so that
    /// `jitter` counts from the batch's receipt (a kill asked for late in a batch's life
    /// would otherwise land after its apply). Waits at most [`KILL_WAIT_FOR_BATCH`] for the
    /// batch. Waits for the process to die and reads its journal to the end; records the
    /// crash in `counters` and returns what the kill did.
    pub(crate) async fn kill(mut self, jitter: Duration, fresh: bool, counters: &ServiceCounters) -> String {
        if let Some(freezing) = self.freezing.take() {
            // A frozen process receives nothing more: it is killed as it is, and its freeze
            // ends here (recorded before the kill, while what it owned is still known).
            if let Ok(frozen) = freezing.await {
                frozen.record(&self.name, self.pid, "killed (SIGKILL)", counters);
            }
        } else {
            let deadline = tokio::time::Instant::now() + KILL_WAIT_FOR_BATCH;
            let received_before = self.batches_received();
            while !(self.held() > 0 && (!fresh || self.batches_received() > received_before)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(jitter).await;
        }
        // SIGKILL (tokio's kill sends it, to a child not yet reaped, whose pid cannot
        // have been reused).
        if let Err(error) = self.child.start_kill() {
            tracing::warn!(consumer = %self.name, pid = self.pid, %error, "sending SIGKILL");
        }
        let status = self.child.wait().await;
        let _ = (&mut self.reader).await;
        let _ = (&mut self.log_reader).await;
        let ended = match status {
            Ok(status) => exit_description(status),
            Err(error) => format!("could not be waited for ({error})"),
        };
        let state = self.state.lock().map(|state| state.clone()).unwrap_or_default();
        let (held, committed) = (state.held_messages(), state.held_and_committed());
        counters.crashes.fetch_add(1, Ordering::Relaxed);
        counters.assigned_partitions.fetch_sub(state.assigned, Ordering::Relaxed);
        let effect = format!(
            "{} (pid {}) {ended}, holding {held} received, unapplied messages, {committed} of them with offsets the broker had confirmed committed",
            self.name, self.pid
        );
        if let Ok(mut log) = counters.fault_log.lock() {
            log.push(FaultSeen {
                kind: SeenKind::Crash,
                consumer: self.name.clone(),
                messages: held,
                effect: Some(effect.clone()),
                committed: Some(committed),
                partitions_moved: None,
                stuck: None,
            });
        }
        effect
    }

    /// Freezes the process with SIGSTOP while it holds a batch (`jitter` after it receives
    /// its next one, waiting for it as a kill does), beside the caller. Refused while a
    /// freeze is under way.
    pub(crate) fn freeze(&mut self, jitter: Duration) -> Result<(), String> {
        if self.freezing.is_some() {
            return Err(format!("{} is frozen already", self.name));
        }
        let (pid, state, logs) = (self.pid, self.state.clone(), self.last_received_log.clone());
        let received_before = self.batches_received();
        self.freezing = Some(tokio::spawn(async move {
            let held = || state.lock().map(|state| state.held_messages()).unwrap_or(0);
            let received = || state.lock().map(|state| state.batches_received).unwrap_or(0);
            // A batch received after the freeze was asked for: the process has just begun
            // on it (one held for a while may be an instant from its apply).
            let deadline = tokio::time::Instant::now() + KILL_WAIT_FOR_BATCH;
            while !(held() > 0 && received() > received_before) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(jitter).await;
            signal(pid, "STOP");
            let at = std::time::Instant::now();
            // The journal and log lines the process wrote before it froze may still be in
            // the pipes: it writes nothing more now, so a moment later they are all read.
            tokio::time::sleep(JOURNAL_CATCH_UP).await;
            let (held_ranges, owned) = state
                .lock()
                .map(|state| {
                    (
                        state.held.as_ref().map(|(ranges, _)| ranges.clone()).unwrap_or_default(),
                        state.owned.clone(),
                    )
                })
                .unwrap_or_default();
            Frozen {
                at,
                held: held(),
                held_offsets: held_offsets(&held_ranges),
                owned,
                logged: logs.lock().ok().and_then(|line| line.as_ref().and_then(logged_batch)),
            }
        }));
        Ok(())
    }

    /// Wakes a frozen process (SIGCONT) once its freeze has been sent, beside the caller;
    /// records in `counters` what it held and how many partitions the group gave the
    /// other members meanwhile (a zombie wakes up holding a batch of partitions it no
    /// longer owns).
    pub(crate) fn wake(&mut self, counters: Arc<ServiceCounters>) -> Result<(), String> {
        let Some(freezing) = self.freezing.take() else {
            return Err(format!("{} is not frozen", self.name));
        };
        let (name, pid) = (self.name.clone(), self.pid);
        tokio::spawn(async move {
            let Ok(frozen) = freezing.await else { return };
            signal(pid, "CONT");
            frozen.record(&name, pid, "woken (SIGCONT)", &counters);
        });
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits for it to leave its group; kills it
    /// after [`STOP_TIMEOUT`].
    pub(crate) async fn stop(mut self) -> Result<(), StreamError> {
        if let Some(freezing) = self.freezing.take() {
            let _ = freezing.await;
            signal(self.pid, "CONT");
        }
        // A process asked to stop before it listens for SIGTERM would die of the signal's
        // default action: wait until it says it listens (or has ended).
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while !self.state.lock().map(|state| state.listening).unwrap_or(true)
            && matches!(self.child.try_wait(), Ok(None))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Its peak resident set, while it still has one to read.
        if let Some(peak_kb) = peak_rss_kb(self.pid) {
            self.counters.peak_rss_kb.fetch_max(peak_kb, Ordering::Relaxed);
        }
        signal(self.pid, "TERM");
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(consumer = %self.name, pid = self.pid, "the balance service process did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = self.child.start_kill();
                self.child.wait().await
            }
        };
        let _ = (&mut self.reader).await;
        let _ = (&mut self.log_reader).await;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(StreamError::Task {
                task: format!("balance service process {} (pid {})", self.name, self.pid),
                reason: exit_description(status),
            }),
            Err(error) => Err(StreamError::Task {
                task: format!("balance service process {} (pid {})", self.name, self.pid),
                reason: error.to_string(),
            }),
        }
    }
}

/// The peak resident set (`VmHWM`) of process `pid` so far, in kB; `None` once it is gone.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The processes' log filter: the host's (`RUST_LOG`, warnings by default), with the
/// balance service's `info` lines (each batch received, each assignment) on top.
fn child_log_filter() -> String {
    let own = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    format!("{own},tradeflow_stream::service=info")
}

/// Reads a process's JSON logs (its standard error) to their end: keeps the last "batch
/// received" line in `last`; passes every line that is not an `info` line on to this
/// process's standard error, as `name: LEVEL message key=value ...`.
async fn read_logs(name: String, stderr: tokio::process::ChildStderr, last: Arc<Mutex<Option<serde_json::Value>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("{name}: {line}");
            continue;
        };
        let level = entry.get("level").and_then(serde_json::Value::as_str).unwrap_or("");
        let fields = entry.get("fields");
        let message = fields
            .and_then(|fields| fields.get("message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if message == BATCH_RECEIVED {
            if let Ok(mut last) = last.lock() {
                *last = Some(entry);
            }
            continue;
        }
        if level == "INFO" || level == "DEBUG" || level == "TRACE" {
            continue;
        }
        let rest: Vec<String> = fields
            .and_then(serde_json::Value::as_object)
            .map(|fields| {
                fields
                    .iter()
                    .filter(|(key, _)| *key != "message")
                    .map(|(key, value)| format!("{key}={}", value.as_str().map_or_else(|| value.to_string(), str::to_owned)))
                    .collect()
            })
            .unwrap_or_default();
        eprintln!("{name}: {level} {message} {}", rest.join(" "));
    }
}

/// The topic and offsets a "batch received" log line names.
fn logged_batch(line: &serde_json::Value) -> Option<(String, String)> {
    let fields = line.get("fields")?;
    let text = |key: &str| fields.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
    Some((text("messaging.destination.name")?, text("offsets")?))
}

/// Reads a process's journal to its end, into `state` and the fleet's `counters`.
async fn read_journal(name: String, stdout: tokio::process::ChildStdout, state: Arc<Mutex<JournalState>>, counters: Arc<ServiceCounters>) {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(consumer = %name, %error, "reading the balance service's journal");
                break;
            }
        };
        let entry: JournalEntry = match serde_json::from_str(&line) {
            Ok(entry) => entry,
            Err(_) => {
                // Not a journal line: the service's own words, passed on.
                eprintln!("{name}: {line}");
                continue;
            }
        };
        let Ok(mut state) = state.lock() else { break };
        feed(&name, &mut state, &entry, &counters);
    }
    // The journal ends with the process: it holds nothing any more.
    counters.member_gone(&name);
}

/// Takes one journal entry into a process's state and the fleet's counters.
fn feed(name: &str, state: &mut JournalState, entry: &JournalEntry, counters: &ServiceCounters) {
    let assigned_before = state.assigned;
    state.take(entry);
    match entry {
        JournalEntry::Assigned { partitions, owned } => {
            counters
                .assigned_partitions
                .fetch_add(partitions - assigned_before, Ordering::Relaxed);
            counters.member_owns(name, owned);
            counters.member_assigned(name, partitions - assigned_before);
            counters.member_changed(name);
            counters.rebalances.fetch_add(1, Ordering::Relaxed);
        }
        JournalEntry::Applied {
            applied,
            duplicates,
            dead_lettered,
            committed_at_ns,
            ..
        } => {
            counters.applied.fetch_add(*applied, Ordering::Relaxed);
            counters.duplicates.fetch_add(*duplicates, Ordering::Relaxed);
            counters.dead_lettered.fetch_add(*dead_lettered, Ordering::Relaxed);
            counters.last_commit_ns.fetch_max(*committed_at_ns, Ordering::Relaxed);
        }
        JournalEntry::Fenced { messages, .. } => {
            counters.fenced.fetch_add(*messages as u64, Ordering::Relaxed);
        }
        JournalEntry::Skipped { expected, received, .. } => {
            counters
                .skipped
                .fetch_add(u64::try_from(received - expected).unwrap_or(0), Ordering::Relaxed);
        }
        JournalEntry::Listening | JournalEntry::Received { .. } | JournalEntry::Committed { .. } => {}
    }
}

/// Sends a signal by name (`TERM`, `STOP`, `CONT`) with kill(1).
fn signal(pid: u32, name: &str) {
    if let Err(error) = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
    {
        tracing::warn!(pid, signal = name, %error, "running kill");
    }
}

/// How a process ended, in words: its exit code, or the signal that killed it.
fn exit_description(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(libc::SIGKILL)) => "was killed by SIGKILL".to_owned(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

/// A seeded draw in `0..max`, for the `n`th kill of a run (splitmix64).
pub(crate) fn jitter(seed: u64, n: u64, max: Duration) -> Duration {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let max_us = max.as_micros().max(1) as u64;
    Duration::from_micros(z % max_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_seeded_and_bounded() {
        let max = Duration::from_millis(40);
        let draws: Vec<Duration> = (0..100).map(|n| jitter(7, n, max)).collect();
        assert!(draws.iter().all(|draw| *draw < max));
        assert_eq!(draws, (0..100).map(|n| jitter(7, n, max)).collect::<Vec<_>>());
        assert_ne!(draws, (0..100).map(|n| jitter(8, n, max)).collect::<Vec<_>>());
    }

    #[test]
    fn the_journal_feeds_the_fleet_counters() {
        let counters = ServiceCounters::default();
        let mut state = JournalState::default();
        feed(
            "consumer-0",
            &mut state,
            &JournalEntry::Assigned {
                partitions: 4,
                owned: vec![0, 1, 2, 3],
            },
            &counters,
        );
        feed(
            "consumer-0",
            &mut state,
            &JournalEntry::Assigned {
                partitions: 2,
                owned: vec![1, 3],
            },
            &counters,
        );
        feed(
            "consumer-0",
            &mut state,
            &JournalEntry::Applied {
                batch: 1,
                applied: 7,
                duplicates: 2,
                dead_lettered: 1,
                committed_at_ns: 99,
            },
            &counters,
        );
        feed(
            "consumer-0",
            &mut state,
            &JournalEntry::Skipped {
                partition: 0,
                expected: 10,
                received: 250,
            },
            &counters,
        );
        assert_eq!(counters.skipped.load(Ordering::Relaxed), 240, "what the broker deleted is counted");
        assert_eq!(counters.assigned_partitions.load(Ordering::Relaxed), 2);
        assert_eq!(counters.rebalances.load(Ordering::Relaxed), 2);
        assert_eq!(counters.applied.load(Ordering::Relaxed), 7);
        assert_eq!(counters.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 1);
        assert_eq!(counters.last_commit_ns.load(Ordering::Relaxed), 99);
    }

    #[test]
    fn a_frozen_members_partitions_count_as_moved_once_another_members_journal_names_them() {
        let counters = ServiceCounters::default();
        let (mut frozen, mut other) = (JournalState::default(), JournalState::default());
        let assigned = |owned: Vec<i32>| JournalEntry::Assigned {
            partitions: owned.len() as i64,
            owned,
        };
        feed("consumer-0", &mut frozen, &assigned(vec![0, 1, 2]), &counters);
        feed("consumer-1", &mut other, &assigned(vec![3, 4, 5]), &counters);
        assert_eq!(counters.owned_by_others("consumer-0", &[0, 1, 2]), 0, "nothing moved yet");
        // The group takes two of the frozen member's partitions away and gives them to the
        // other member (the frozen one writes nothing while it is stopped).
        let before_move = std::time::Instant::now();
        feed("consumer-1", &mut other, &assigned(vec![0, 2, 3, 4, 5]), &counters);
        assert_eq!(counters.owned_by_others("consumer-0", &[0, 1, 2]), 2);
        // When it came is kept, and the same assignment said again does not move it.
        let since = |counters: &ServiceCounters| {
            let others = counters.others_owning("consumer-0");
            assert_eq!(others.len(), 1, "{others:?}");
            assert_eq!(others[0].1, vec![0, 2, 3, 4, 5]);
            others[0].2
        };
        let moved_at = since(&counters);
        assert!(moved_at >= before_move);
        feed("consumer-1", &mut other, &assigned(vec![0, 2, 3, 4, 5]), &counters);
        assert_eq!(since(&counters), moved_at);
        // A member that ended owns nothing.
        counters.member_gone("consumer-1");
        assert_eq!(counters.owned_by_others("consumer-0", &[0, 1, 2]), 0);
    }
}
