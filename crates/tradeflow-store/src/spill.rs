//! A workload too large to hold, kept in a temporary file: its events packed in fixed-size
//! records (the domain's [`Record`]), written once as they are generated and read back
//! one at a time or a run at a time, so that a run of millions of events holds none of
//! them in memory. The file has no name (it is deleted when the run ends, however it
//! ends) and is read with positioned reads, not mapped: its pages stay out of the
//! process's resident memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use tradeflow_domain::workload::{RECORD_BYTES, Record, RecordTable};
use tradeflow_domain::{Workload, WorkloadConfig, WorkloadError};

/// Workloads of more events than this are kept in a temporary file; smaller ones in memory
/// (about 100 bytes an event there).
pub const SPILL_ABOVE_EVENTS: u64 = 250_000;

/// Generates the workload of `config`: in memory up to [`SPILL_ABOVE_EVENTS`] events, in a
/// temporary file above (in the system's temporary directory, `TMPDIR`).
pub fn generate(config: &WorkloadConfig) -> Result<Workload, WorkloadError> {
    generate_spilling_above(config, SPILL_ABOVE_EVENTS)
}

/// [`generate`] with another threshold (0: always in a file).
pub fn generate_spilling_above(config: &WorkloadConfig, threshold: u64) -> Result<Workload, WorkloadError> {
    if config.events <= threshold {
        return Workload::generate(config);
    }
    let file = tempfile::tempfile().map_err(|error| WorkloadError::Spill {
        reason: format!(
            "making a temporary file in {} for its {} events: {error}",
            std::env::temp_dir().display(),
            config.events
        ),
    })?;
    Workload::generate_into(config, Box::new(FileTable { file, len: 0 }))
}

/// Records in a file, one after another.
#[derive(Debug)]
struct FileTable {
    file: File,
    len: usize,
}

impl RecordTable for FileTable {
    fn append(&mut self, records: &[Record]) -> Result<(), String> {
        let bytes = records.as_flattened();
        self.file
            .write_all_at(bytes, (self.len * RECORD_BYTES) as u64)
            .map_err(|error| format!("writing {} records at record {}: {error}", records.len(), self.len))?;
        self.len += records.len();
        Ok(())
    }

    fn read(&self, first: usize, into: &mut [Record]) -> Result<(), String> {
        if first + into.len() > self.len {
            return Err(format!("records {first}..{} asked of {}", first + into.len(), self.len));
        }
        let count = into.len();
        self.file
            .read_exact_at(into.as_flattened_mut(), (first * RECORD_BYTES) as u64)
            .map_err(|error| format!("reading records {first}..{}: {error}", first + count))
    }

    fn write(&self, index: usize, record: &Record) -> Result<(), String> {
        if index >= self.len {
            return Err(format!("record {index} written of {}", self.len));
        }
        self.file
            .write_all_at(record, (index * RECORD_BYTES) as u64)
            .map_err(|error| format!("writing record {index}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeflow_domain::{EventKind, RateProfile};

    #[test]
    fn a_workload_kept_in_a_file_is_the_one_held_in_memory() {
        let config = WorkloadConfig {
            seed: 31,
            events: 20_000,
            accounts: 300,
            rate_per_s: 10_000.0,
            profile: RateProfile::Burst,
            skew: 1.1,
            mix: Default::default(),
        };
        let mut held = generate(&config).expect("valid config");
        let mut kept = generate_spilling_above(&config, 0).expect("valid config");
        assert!(kept.events.spilled() && !held.events.spilled());
        assert!(kept.events == held.events, "the events read back from the file differ");
        assert_eq!(kept.events.get(19_999), held.events.get(19_999));
        assert_eq!(kept.events.get(20_000), None);
        assert_eq!(kept.due(100, 1_000_000_000, 50_000), held.due(100, 1_000_000_000, 50_000));
        assert_eq!(kept.charge_fees_from(10_000, 2), held.charge_fees_from(10_000, 2));
        assert!(kept.events == held.events, "the events differ after the fees");
        assert!(
            kept.events
                .iter()
                .any(|scheduled| matches!(scheduled.event.kind, EventKind::FeeCharged { .. }))
        );
    }
}
