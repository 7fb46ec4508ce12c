//! Where a run's CPU goes, thread by thread: the profile behind "what bounds it".
//!
//! The bench runs the publisher, the broker (the mock cluster is in the process) and the
//! balance service in one process, so `/proc/self/task` tells how busy each kind of thread
//! was: a thread near one core is saturated; a process near the machine's cores is
//! CPU-bound; neither means the pipeline is waiting (on round trips, timers, or a lock such
//! as SQLite's single writer), not computing.

use serde::Serialize;
use std::collections::BTreeMap;

/// CPU ticks per thread, by thread id, with the thread's group name; and the machine's
/// busy ticks over all its cores (`/proc/stat`), which also count the broker and database
/// when they are other processes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    ticks: BTreeMap<u32, (String, u64)>,
    machine_busy: Option<u64>,
}

/// How busy one kind of thread was over a span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadShare {
    /// The thread name without its number (`tokio-rt-worker`, `rdk:broker`, `sqlx-sqlite-wor`).
    pub name: String,
    /// Threads of that name that ran.
    pub threads: usize,
    /// CPU used, in cores (CPU seconds per second of the span), all those threads together.
    pub cores: f64,
    /// The busiest single thread of that name, in cores.
    pub busiest: f64,
}

/// Reads this process's threads' CPU ticks (empty where `/proc` is missing).
pub fn snapshot() -> Snapshot {
    let mut ticks = BTreeMap::new();
    let machine_busy = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| machine_busy(&stat));
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Snapshot { ticks, machine_busy };
    };
    for task in tasks.flatten() {
        let Some(id) = task.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
            && let Some((name, used)) = parse_stat(&stat)
        {
            ticks.insert(id, (name, used));
        }
    }
    Snapshot { ticks, machine_busy }
}

/// Busy ticks of all cores from `/proc/stat`'s first line: user, nice, system, irq,
/// softirq and steal (not idle, not iowait).
fn machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|index| fields.get(*index)).sum())
}

/// The machine's busy cores between two snapshots `seconds` apart.
pub fn machine_cores(before: &Snapshot, after: &Snapshot, seconds: f64) -> Option<f64> {
    let (before, after) = (before.machine_busy?, after.machine_busy?);
    (seconds > 0.0).then(|| after.saturating_sub(before) as f64 / ticks_per_second() / seconds)
}

/// `(group name, utime + stime)` from a `/proc/.../stat` line. The name sits in
/// parentheses and may hold spaces; the fields after it are numbered from 3.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((group(name), utime + stime))
}

/// A thread name without its trailing number and separators: `rdk:broker12` and
/// `rdk:broker-1` are both `rdk:broker`.
fn group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_owned()
}

/// Clock ticks per second of `/proc`'s CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The CPU each kind of thread used between two snapshots `seconds` apart, busiest
/// first. Threads that ended in between are not counted.
pub fn shares(before: &Snapshot, after: &Snapshot, seconds: f64) -> Vec<ThreadShare> {
    if seconds <= 0.0 {
        return Vec::new();
    }
    let per_second = ticks_per_second();
    let mut by_name: BTreeMap<&str, ThreadShare> = BTreeMap::new();
    for (id, (name, used)) in &after.ticks {
        let earlier = before.ticks.get(id).map_or(0, |(_, used)| *used);
        let cores = used.saturating_sub(earlier) as f64 / per_second / seconds;
        if cores <= 0.0 {
            continue;
        }
        let share = by_name.entry(name).or_insert_with(|| ThreadShare {
            name: name.clone(),
            threads: 0,
            cores: 0.0,
            busiest: 0.0,
        });
        share.threads += 1;
        share.cores += cores;
        share.busiest = share.busiest.max(cores);
    }
    let mut shares: Vec<ThreadShare> = by_name.into_values().collect();
    shares.sort_by(|a, b| b.cores.total_cmp(&a.cores));
    shares
}

/// What the profile says bounds the run, in one sentence. `waiting` says what the run
/// waits on when nothing is saturated (it depends on the architecture and the store).
pub fn verdict(shares: &[ThreadShare], machine: Option<f64>, cores: usize, waiting: &str) -> String {
    let total: f64 = shares.iter().map(|share| share.cores).sum();
    let top: Vec<String> = shares
        .iter()
        .take(4)
        .map(|share| format!("{} {:.2} ({}×)", share.name, share.cores, share.threads))
        .collect();
    let busiest = shares.iter().max_by(|a, b| a.busiest.total_cmp(&b.busiest));
    let machine_text = machine.map_or(String::new(), |busy| format!("the machine {busy:.2} of {cores} cores busy, "));
    let profile = format!("{machine_text}this process {total:.2} ({})", top.join(", "));
    let saturated = 0.85 * cores as f64;
    if total.max(machine.unwrap_or(0.0)) >= saturated {
        format!("the CPU: {profile}; publisher, broker, balance service and database share the machine's cores")
    } else if let Some(thread) = busiest.filter(|share| share.busiest >= 0.85) {
        format!(
            "one thread: a {} thread is busy {:.2} of a core; {profile}",
            thread.name, thread.busiest
        )
    } else {
        format!("waiting, not computing: {profile}; neither the CPU nor any one thread is saturated: {waiting}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_group_and_cpu_ticks() {
        let stat = "4242 (rdk:broker12) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some(("rdk:broker".to_owned(), 150)));
        let spaced = "7 (producer pollin) R 1 2 3 4 5 6 7 8 9 10 5 6 0 0";
        assert_eq!(parse_stat(spaced), Some(("producer pollin".to_owned(), 11)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn shares_are_grouped_per_name_and_sorted_and_the_verdict_follows_them() {
        let hz = ticks_per_second();
        let ticks = |pairs: &[(u32, &str, f64)]| Snapshot {
            ticks: pairs
                .iter()
                .map(|(id, name, seconds)| (*id, ((*name).to_owned(), (seconds * hz) as u64)))
                .collect(),
            machine_busy: None,
        };
        let before = ticks(&[
            (1, "tokio-rt-worker", 0.0),
            (2, "tokio-rt-worker", 0.0),
            (3, "sqlx-sqlite-wor", 1.0),
        ]);
        let after = ticks(&[
            (1, "tokio-rt-worker", 0.5),
            (2, "tokio-rt-worker", 0.3),
            (3, "sqlx-sqlite-wor", 2.9),
            (4, "rdk:mock", 0.2),
        ]);
        let shares = shares(&before, &after, 2.0);
        let names: Vec<&str> = shares.iter().map(|share| share.name.as_str()).collect();
        assert_eq!(names, ["sqlx-sqlite-wor", "tokio-rt-worker", "rdk:mock"]);
        assert!((shares[0].cores - 0.95).abs() < 0.01, "{shares:?}");
        assert_eq!(shares[1].threads, 2);
        assert!(
            (shares[1].cores - 0.4).abs() < 0.01 && (shares[1].busiest - 0.25).abs() < 0.01,
            "{shares:?}"
        );
        let verdict_of = |shares: &[ThreadShare], machine, cores| verdict(shares, machine, cores, "the poll interval");
        let one = verdict_of(&shares, None, 2);
        assert!(one.starts_with("one thread: a sqlx-sqlite-wor"), "{one}");
        let cpu = verdict_of(&shares, None, 1);
        assert!(cpu.starts_with("the CPU"), "{cpu}");
        // The database in another process can fill the machine while this one idles.
        let elsewhere = verdict_of(&shares[1..], Some(1.9), 2);
        assert!(elsewhere.starts_with("the CPU"), "{elsewhere}");
        let waiting = verdict_of(&shares[1..], Some(0.7), 4);
        assert!(
            waiting.starts_with("waiting") && waiting.ends_with("the poll interval"),
            "{waiting}"
        );
    }

    #[test]
    fn the_machine_line_counts_busy_time_but_not_idle_or_io_wait() {
        let stat = "cpu  100 5 50 1000 30 7 3 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_busy(stat), Some(100 + 5 + 50 + 7 + 3 + 2));
        assert_eq!(machine_busy("intr 1 2 3"), None);
        let hz = ticks_per_second();
        let at = |busy: f64| Snapshot {
            ticks: BTreeMap::new(),
            machine_busy: Some((busy * hz) as u64),
        };
        let cores = machine_cores(&at(10.0), &at(13.0), 2.0).expect("both have the machine");
        assert!((cores - 1.5).abs() < 0.01, "{cores}");
    }
}
