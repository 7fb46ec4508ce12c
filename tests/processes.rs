//! Processes as Linux shows them under `/proc`: whether one still exists, and which run a
//! command line naming something (children of a given process, if asked).
//!
//! One file for two test binaries: the integration tests reach it as
//! `tradeflow_tests::processes`; the CLI's tests, which do not depend on this crate,
//! include it with `#[path]`.

use std::path::Path;

/// Whether a process with this pid still exists (a reaped child does not).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of the processes whose command line contains `needle` and, when `parent` is given,
/// whose parent is that process.
pub fn pids_with_command_line(needle: &str, parent: Option<u32>) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter(|pid| parent.is_none_or(|parent| parent_of(*pid) == Some(parent)))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle)))
        .collect()
}

/// The parent pid of a process: the second field after the command name in
/// `/proc/PID/stat` (the name is in parentheses and may hold spaces, so the fields are
/// read after its closing one).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
}
